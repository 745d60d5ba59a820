//! Connections per node and per client address.
//!
//! Every connection the proxy listeners accept is admitted here first: [`ConnectionLimits`]
//! refuses it when the node already holds `max_connections`, or its client address
//! `max_connections_per_client` (an IPv6 client counts by its /64, which one host usually
//! owns whole). Refusing happens twice, cheaply: Pingora's accept loop asks
//! [`ConnectionLimits::would_refuse`] and drops the socket before any task, TLS or HTTP work;
//! the connection's task then takes a [`ConnectionGuard`], which counts it until it closes
//! (TLS handshake included). Clients in `trusted_proxies` (a load balancer in front) are
//! counted for the node only.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use prometheus::{IntCounter, IntGauge};
use tenantgate_config::IpNet;

/// Shards of the per-client counts (a power of two).
const SHARDS: usize = 64;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The node holds `max_connections`.
    Node,
    /// The client address holds `max_connections_per_client`.
    Client,
}

impl Refused {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Node => "node",
            Refused::Client => "client",
        }
    }
}

/// A client as the per-client limit counts it: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ClientKey {
    V4(u32),
    V6(u64),
}

impl ClientKey {
    pub(crate) fn of(ip: IpAddr) -> ClientKey {
        match tenantgate_config::net::canonical(ip) {
            IpAddr::V4(v4) => ClientKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => ClientKey::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

/// The metrics of connection admission.
#[derive(Debug, Clone)]
pub struct ConnectionMetrics {
    /// Connections open now.
    pub open: IntGauge,
    /// Refused because of the node limit.
    pub refused_node: IntCounter,
    /// Refused because of the per-client limit.
    pub refused_client: IntCounter,
}

/// The connection limits of one node.
pub struct ConnectionLimits {
    max_total: usize,
    max_per_client: usize,
    trusted: Vec<IpNet>,
    total: AtomicUsize,
    clients: Box<[Mutex<HashMap<ClientKey, u32, foldhash::fast::RandomState>>]>,
    metrics: ConnectionMetrics,
    /// Refusals since the last log line, and when that was (ms since `epoch`).
    unlogged: AtomicU64,
    logged_at: AtomicU64,
    epoch: Instant,
}

impl std::fmt::Debug for ConnectionLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionLimits")
            .field("max_total", &self.max_total)
            .field("max_per_client", &self.max_per_client)
            .field("open", &self.total.load(Ordering::Relaxed))
            .finish()
    }
}

impl ConnectionLimits {
    /// Limits of `max_total` connections and `max_per_client` per client (0: no limit);
    /// clients in `trusted` count for the node only.
    pub fn new(
        max_total: usize,
        max_per_client: usize,
        trusted: Vec<IpNet>,
        metrics: ConnectionMetrics,
    ) -> Self {
        ConnectionLimits {
            max_total,
            max_per_client,
            trusted,
            total: AtomicUsize::new(0),
            clients: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            metrics,
            unlogged: AtomicU64::new(0),
            logged_at: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn counted(&self, ip: Option<IpAddr>) -> Option<ClientKey> {
        if self.max_per_client == 0 {
            return None;
        }
        let ip = ip?;
        if self.trusted.iter().any(|n| n.contains(ip)) {
            return None;
        }
        Some(ClientKey::of(ip))
    }

    fn shard(
        &self,
        key: &ClientKey,
    ) -> std::sync::MutexGuard<'_, HashMap<ClientKey, u32, foldhash::fast::RandomState>> {
        let h = foldhash::fast::FixedState::with_seed(0x636f_6e6e).hash_one(key) as usize;
        self.clients[h & (SHARDS - 1)]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a connection from `ip` would be refused now (counts nothing): the accept
    /// loop's early check.
    pub fn would_refuse(&self, ip: Option<IpAddr>) -> Option<Refused> {
        if self.max_total > 0 && self.total.load(Ordering::Relaxed) >= self.max_total {
            return Some(Refused::Node);
        }
        let key = self.counted(ip)?;
        let n = self.shard(&key).get(&key).copied().unwrap_or(0);
        (n as usize >= self.max_per_client).then_some(Refused::Client)
    }

    /// Count a connection from `ip` until the guard drops, or refuse it.
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<ConnectionGuard, Refused> {
        let total = self.total.fetch_add(1, Ordering::Relaxed);
        if self.max_total > 0 && total >= self.max_total {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::Node);
        }
        let key = self.counted(ip);
        if let Some(k) = key {
            let mut shard = self.shard(&k);
            let n = shard.entry(k).or_insert(0);
            if *n as usize >= self.max_per_client {
                drop(shard);
                self.total.fetch_sub(1, Ordering::Relaxed);
                return Err(Refused::Client);
            }
            *n += 1;
        }
        self.metrics.open.inc();
        Ok(ConnectionGuard {
            limits: self.clone(),
            key,
        })
    }

    /// Count and (at most once a second) log a refusal.
    pub fn refused(&self, why: Refused, peer: Option<IpAddr>) {
        match why {
            Refused::Node => self.metrics.refused_node.inc(),
            Refused::Client => self.metrics.refused_client.inc(),
        }
        self.unlogged.fetch_add(1, Ordering::Relaxed);
        // Milliseconds since `epoch`, plus one: 0 means "never logged".
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.logged_at.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 1000)
            && self
                .logged_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let n = self.unlogged.swap(0, Ordering::Relaxed);
            tracing::warn!(
                reason = why.as_str(),
                client = %peer.map(|p| p.to_string()).unwrap_or_default(),
                refused = n,
                max_connections = self.max_total,
                max_connections_per_client = self.max_per_client,
                "connections refused: limit reached"
            );
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

/// Counts one admitted connection until it drops.
#[derive(Debug)]
pub struct ConnectionGuard {
    limits: Arc<ConnectionLimits>,
    key: Option<ClientKey>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let l = &self.limits;
        l.total.fetch_sub(1, Ordering::Relaxed);
        l.metrics.open.dec();
        if let Some(k) = self.key {
            let mut shard = l.shard(&k);
            if let Some(n) = shard.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    shard.remove(&k);
                }
            }
        }
    }
}

/// The accept loop's early check, before any task is spawned for the connection.
#[derive(Debug, Clone)]
pub struct EarlyRefusal(pub Arc<ConnectionLimits>);

#[async_trait]
impl pingora::listeners::ConnectionFilter for EarlyRefusal {
    async fn should_accept(&self, addr: Option<&SocketAddr>) -> bool {
        let ip = addr.map(SocketAddr::ip);
        match self.0.would_refuse(ip) {
            None => true,
            Some(why) => {
                self.0.refused(why, ip);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_client: usize, trusted: &[&str]) -> Arc<ConnectionLimits> {
        let metrics = ConnectionMetrics {
            open: IntGauge::new("o", "o").expect("gauge"),
            refused_node: IntCounter::new("n", "n").expect("counter"),
            refused_client: IntCounter::new("c", "c").expect("counter"),
        };
        Arc::new(ConnectionLimits::new(
            total,
            per_client,
            trusted.iter().map(|t| t.parse().expect("net")).collect(),
            metrics,
        ))
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("ip"))
    }

    #[test]
    fn per_client_and_node_limits_count_until_the_guard_drops() {
        let l = limits(4, 2, &["10.9.0.0/16"]);
        let a1 = l.admit(ip("192.0.2.1")).expect("first");
        let a2 = l
            .admit(ip("::ffff:192.0.2.1"))
            .expect("second, same client");
        assert_eq!(l.admit(ip("192.0.2.1")).err(), Some(Refused::Client));
        assert_eq!(l.would_refuse(ip("192.0.2.1")), Some(Refused::Client));
        // IPv6 clients count by /64.
        let b1 = l.admit(ip("2001:db8::1")).expect("v6");
        let b2 = l.admit(ip("2001:db8::2")).expect("same /64");
        assert_eq!(l.open(), 4);
        assert_eq!(l.admit(ip("203.0.113.9")).err(), Some(Refused::Node));
        assert_eq!(l.would_refuse(ip("203.0.113.9")), Some(Refused::Node));
        drop((a1, b1, b2));
        assert_eq!(l.open(), 1);
        assert_eq!(l.would_refuse(ip("192.0.2.1")), None);
        let _a3 = l.admit(ip("192.0.2.1")).expect("again after one closed");
        drop(a2);
        // A trusted load balancer is limited by the node total only.
        let lb: Vec<_> = (0..3)
            .map(|_| l.admit(ip("10.9.1.1")).expect("trusted"))
            .collect();
        assert_eq!(l.open(), 4);
        drop(lb);
        assert!(l.clients.iter().all(|s| s.lock().expect("lock").len() <= 1));
    }

    #[test]
    fn zero_means_no_limit() {
        let l = limits(0, 0, &[]);
        let guards: Vec<_> = (0..1000)
            .map(|_| l.admit(ip("192.0.2.1")).expect("unlimited"))
            .collect();
        assert_eq!(l.open(), 1000);
        drop(guards);
        assert_eq!(l.open(), 0);
    }
}
