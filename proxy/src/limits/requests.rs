//! Request limits of one tenant, as its route carries them: request rate (for the tenant, and
//! for each client address within it), requests in flight, body size, upstream timeouts.
//!
//! The admission step asks [`TenantLimits::admit`] once per request that would reach the
//! tenant's upstream; both engines then hold the [`Permit`] it gives until the response
//! ends. A route without limits has no [`TenantLimits`] at all: it pays one branch.
//!
//! Rates are GCRA token buckets (one atomic "theoretical arrival time" per bucket, updated
//! by compare-and-swap): `burst` requests at once, then one each `1 / rate` seconds. The
//! state ([`LimitState`]) is kept across changes of the route, so re-publishing a route (a
//! new upstream, a changed limit) neither refills its buckets nor forgets requests in flight.
//!
//! Per-client buckets live in a small sharded map, made on the first request. Each shard
//! keeps at most [`CLIENTS_PER_SHARD`] clients: a full shard first forgets the clients whose
//! bucket is full again (they are as good as new), and when none is, a new client is not
//! tracked (the tenant's own limits still hold), so a flood of addresses cannot grow memory.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tenantgate_config::Limits;

use super::connections::ClientKey;

/// Shards of a tenant's per-client buckets.
const CLIENT_SHARDS: usize = 16;

/// Most clients tracked per shard.
pub const CLIENTS_PER_SHARD: usize = 4096;

/// Which limit refused a request: the `limit` label of `tenantgate_proxy_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// The tenant's request rate.
    Rate,
    /// The client address's request rate within the tenant.
    ClientRate,
    /// The tenant's requests in flight.
    Concurrency,
    /// The request body's size.
    BodySize,
}

impl Limit {
    /// Every limit, in label order.
    pub const ALL: [Limit; 4] = [
        Limit::Rate,
        Limit::ClientRate,
        Limit::Concurrency,
        Limit::BodySize,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Rate => "rate",
            Limit::ClientRate => "client_rate",
            Limit::Concurrency => "concurrency",
            Limit::BodySize => "body_size",
        }
    }
}

/// The clock of every bucket: nanoseconds since the first use.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// A rate and burst, as GCRA's emission interval and tolerance (nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Gcra {
    interval: u64,
    tolerance: u64,
}

impl Gcra {
    fn new(per_second: u32, burst: Option<u32>) -> Gcra {
        let interval = 1_000_000_000 / u64::from(per_second.max(1));
        let burst = u64::from(burst.unwrap_or(per_second).max(1));
        Gcra {
            interval: interval.max(1),
            tolerance: (burst - 1).saturating_mul(interval),
        }
    }

    /// Take one token from the bucket whose arrival time is `tat`; `Err(wait)` when empty.
    #[inline]
    fn take(&self, tat: &AtomicU64, now: u64) -> Result<(), u64> {
        let mut cur = tat.load(Ordering::Relaxed);
        loop {
            let base = cur.max(now);
            if base - now > self.tolerance {
                return Err(base - now - self.tolerance);
            }
            match tat.compare_exchange_weak(
                cur,
                base + self.interval,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(seen) => cur = seen,
            }
        }
    }

    /// [`Gcra::take`] on a plain value (the per-client map is behind a lock).
    #[inline]
    fn take_mut(&self, tat: &mut u64, now: u64) -> Result<(), u64> {
        let base = (*tat).max(now);
        if base - now > self.tolerance {
            return Err(base - now - self.tolerance);
        }
        *tat = base + self.interval;
        Ok(())
    }
}

type ClientMap = HashMap<ClientKey, u64, foldhash::fast::RandomState>;

/// What a tenant's limits remember between requests; shared by every version of its route.
#[derive(Default)]
pub struct LimitState {
    tat: AtomicU64,
    in_flight: AtomicU32,
    clients: OnceLock<Box<[Mutex<ClientMap>]>>,
}

impl std::fmt::Debug for LimitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitState")
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl LimitState {
    fn clients(&self) -> &[Mutex<ClientMap>] {
        self.clients.get_or_init(|| {
            (0..CLIENT_SHARDS)
                .map(|_| Mutex::new(ClientMap::default()))
                .collect()
        })
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// One request in flight against a tenant's concurrency limit, until dropped.
#[derive(Debug)]
pub struct Permit(Arc<LimitState>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a request was refused, and when it may be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The limit.
    pub limit: Limit,
    /// Whole seconds until a retry can succeed (at least 1; 0 for the body size).
    pub retry_after: u32,
}

/// A tenant's limits, ready for the hot path.
#[derive(Debug)]
pub struct TenantLimits {
    rate: Option<Gcra>,
    client_rate: Option<Gcra>,
    max_in_flight: u32,
    /// Largest request body (413 beyond).
    pub max_body: Option<u64>,
    /// Upstream connect timeout, overriding the node's.
    pub connect_timeout: Option<Duration>,
    /// Upstream read timeout, overriding the node's.
    pub read_timeout: Option<Duration>,
    state: Arc<LimitState>,
}

fn seconds(wait_ns: u64) -> u32 {
    u32::try_from(wait_ns.div_ceil(1_000_000_000))
        .unwrap_or(u32::MAX)
        .max(1)
}

impl TenantLimits {
    /// `limits` enforced with `state` (the previous version's, to carry it over).
    pub fn new(limits: &Limits, state: Option<Arc<LimitState>>) -> TenantLimits {
        let ms = |v: Option<u32>| v.map(|v| Duration::from_millis(u64::from(v)));
        TenantLimits {
            rate: limits
                .requests_per_second
                .map(|r| Gcra::new(r, limits.burst)),
            client_rate: limits
                .client_requests_per_second
                .map(|r| Gcra::new(r, limits.client_burst)),
            max_in_flight: limits.max_concurrent_requests.unwrap_or(0),
            max_body: limits.max_body_bytes,
            connect_timeout: ms(limits.upstream_connect_timeout_ms),
            read_timeout: ms(limits.upstream_read_timeout_ms),
            state: state.unwrap_or_default(),
        }
    }

    /// The state, to carry over to the route's next version.
    pub fn state(&self) -> &Arc<LimitState> {
        &self.state
    }

    /// Admit one request from `client` at `at` with a body of `length` bytes (if known):
    /// the body size first, then the client's rate, the tenant's rate, and a place among
    /// the requests in flight (held by the permit).
    #[inline]
    pub fn admit(
        &self,
        client: Option<IpAddr>,
        length: Option<u64>,
        at: Instant,
    ) -> Result<Option<Permit>, Refusal> {
        if let (Some(max), Some(n)) = (self.max_body, length) {
            if n > max {
                return Err(Refusal {
                    limit: Limit::BodySize,
                    retry_after: 0,
                });
            }
        }
        let now = nanos(at);
        if let (Some(g), Some(ip)) = (self.client_rate, client) {
            self.take_client(&g, ip, now).map_err(|wait| Refusal {
                limit: Limit::ClientRate,
                retry_after: seconds(wait),
            })?;
        }
        if let Some(g) = self.rate {
            g.take(&self.state.tat, now).map_err(|wait| Refusal {
                limit: Limit::Rate,
                retry_after: seconds(wait),
            })?;
        }
        if self.max_in_flight == 0 {
            return Ok(None);
        }
        let before = self.state.in_flight.fetch_add(1, Ordering::Relaxed);
        if before >= self.max_in_flight {
            self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal {
                limit: Limit::Concurrency,
                retry_after: 1,
            });
        }
        Ok(Some(Permit(self.state.clone())))
    }

    fn take_client(&self, g: &Gcra, ip: IpAddr, now: u64) -> Result<(), u64> {
        let key = ClientKey::of(ip);
        let shards = self.state.clients();
        let i = foldhash::fast::FixedState::with_seed(0x636c_6965_6e74).hash_one(key) as usize
            % shards.len();
        let mut map = shards[i].lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tat) = map.get_mut(&key) {
            return g.take_mut(tat, now);
        }
        if map.len() >= CLIENTS_PER_SHARD {
            // Clients whose bucket has refilled are as good as new: forget them.
            map.retain(|_, tat| *tat > now);
            if map.len() >= CLIENTS_PER_SHARD {
                return Ok(());
            }
        }
        let mut tat = 0;
        let r = g.take_mut(&mut tat, now);
        map.insert(key, tat);
        r
    }

    /// Clients tracked now (tests and the admin view).
    pub fn tracked_clients(&self) -> usize {
        self.state.clients.get().map_or(0, |s| {
            s.iter()
                .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()).len())
                .sum()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(f: impl FnOnce(&mut Limits)) -> TenantLimits {
        // The clock starts before the tests' instants (they are read after this).
        epoch();
        let mut l = Limits::default();
        f(&mut l);
        TenantLimits::new(&l, None)
    }

    const A: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)));
    const B: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2)));

    #[test]
    fn a_burst_then_one_per_interval() {
        let t = limits(|l| {
            l.requests_per_second = Some(10);
            l.burst = Some(3);
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(t.admit(A, None, t0).is_ok());
        }
        let r = t.admit(A, None, t0).expect_err("bucket empty");
        assert_eq!(
            r,
            Refusal {
                limit: Limit::Rate,
                retry_after: 1
            }
        );
        // One token back after 100 ms, not two.
        let t1 = t0 + Duration::from_millis(100);
        assert!(t.admit(A, None, t1).is_ok());
        assert!(t.admit(A, None, t1).is_err());
        // Full again after the burst's worth of time.
        let t2 = t1 + Duration::from_millis(300);
        for _ in 0..3 {
            assert!(t.admit(A, None, t2).is_ok());
        }
        assert!(t.admit(A, None, t2).is_err());
    }

    #[test]
    fn retry_after_says_when_a_token_comes_back() {
        let t = limits(|l| {
            l.requests_per_second = Some(1);
            l.burst = Some(1);
        });
        let t0 = Instant::now();
        assert!(t.admit(None, None, t0).is_ok());
        assert_eq!(t.admit(None, None, t0).expect_err("empty").retry_after, 1);
        let slow = limits(|l| {
            l.client_requests_per_second = Some(1);
            l.client_burst = Some(1);
        });
        assert!(slow.admit(A, None, t0).is_ok());
        let r = slow
            .admit(A, None, t0 + Duration::from_millis(1))
            .expect_err("empty");
        assert_eq!((r.limit, r.retry_after), (Limit::ClientRate, 1));
    }

    #[test]
    fn clients_are_limited_apart_and_the_map_is_bounded() {
        let t = limits(|l| {
            l.client_requests_per_second = Some(1);
            l.client_burst = Some(2);
        });
        let t0 = Instant::now();
        assert!(t.admit(A, None, t0).is_ok());
        assert!(t.admit(A, None, t0).is_ok());
        assert_eq!(
            t.admit(A, None, t0).expect_err("A is out").limit,
            Limit::ClientRate
        );
        assert!(t.admit(B, None, t0).is_ok(), "B has its own bucket");
        // Requests without a client address (a Unix socket) only meet the tenant's limits.
        assert!(t.admit(None, None, t0).is_ok());
        // A flood of addresses is tracked up to the bound, then not at all.
        for i in 0..(CLIENT_SHARDS * CLIENTS_PER_SHARD + 1000) as u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let _ = t.admit(Some(ip), None, t0);
        }
        assert!(t.tracked_clients() <= CLIENT_SHARDS * CLIENTS_PER_SHARD);
        // Once their buckets refill, they are forgotten as new ones come.
        let later = t0 + Duration::from_secs(5);
        for i in 0..20_000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            assert!(t.admit(Some(ip), None, later).is_ok());
        }
    }

    #[test]
    fn permits_bound_requests_in_flight() {
        let t = limits(|l| l.max_concurrent_requests = Some(2));
        let now = Instant::now();
        let a = t.admit(A, None, now).expect("first").expect("permit");
        let _b = t.admit(A, None, now).expect("second").expect("permit");
        let r = t.admit(B, None, now).expect_err("third");
        assert_eq!(
            r,
            Refusal {
                limit: Limit::Concurrency,
                retry_after: 1
            }
        );
        assert_eq!(t.state().in_flight(), 2);
        drop(a);
        assert!(t.admit(B, None, now).is_ok());
    }

    #[test]
    fn bodies_beyond_the_limit_are_refused_first() {
        let t = limits(|l| {
            l.max_body_bytes = Some(10);
            l.requests_per_second = Some(1);
        });
        let now = Instant::now();
        let r = t.admit(A, Some(11), now).expect_err("too large");
        assert_eq!(r.limit, Limit::BodySize);
        // The refused body took no token.
        assert!(t.admit(A, Some(10), now).is_ok());
    }

    #[test]
    fn state_survives_a_new_version_of_the_route() {
        let l = Limits {
            requests_per_second: Some(1),
            max_concurrent_requests: Some(1),
            ..Limits::default()
        };
        let v1 = TenantLimits::new(&l, None);
        let now = Instant::now();
        let held = v1.admit(A, None, now).expect("ok");
        let v2 = TenantLimits::new(&l, Some(v1.state().clone()));
        assert!(v2.admit(A, None, now).is_err(), "same bucket, same count");
        drop(held);
        assert_eq!(v2.state().in_flight(), 0);
    }
}
