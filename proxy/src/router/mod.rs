//! The routing table the hot path reads: hostname → route, with per-upstream passive health.
//!
//! Invariants: a lookup is at most two hash probes on `&str` keys and allocates nothing; the
//! table is an immutable snapshot behind `ArcSwap`, replaced whole, so a request sees one
//! consistent version. Health state (when an upstream may be tried again) lives in atomics on
//! the entry, shared by all threads without locks.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use tenantgate_config::host::wildcard_suffix;
use tenantgate_config::{HostPattern, RouteTable};

use crate::metrics::{Metrics, RouteMetrics};

type Map = HashMap<Box<str>, Arc<RouteEntry>, foldhash::fast::FixedState>;

/// One upstream and when it may next be tried.
#[derive(Debug)]
pub struct UpstreamState {
    /// The backend address.
    pub addr: SocketAddr,
    /// Milliseconds since the router's epoch before which the upstream is skipped.
    down_until_ms: AtomicU64,
}

/// A route as the hot path holds it.
#[derive(Debug)]
pub struct RouteEntry {
    /// The route's id.
    pub id: Box<str>,
    /// Key that separates this route's pooled upstream connections from other routes'.
    pub group_key: u64,
    /// Answer plain HTTP with 308 to https.
    pub https_redirect: bool,
    /// The tenant is suspended: answer our 503 page.
    pub suspended: bool,
    /// Backends in configured order.
    pub upstreams: Box<[UpstreamState]>,
    /// Pre-resolved metric children (shared by routes beyond the label budget).
    pub metrics: Arc<RouteMetrics>,
    next: AtomicUsize,
}

impl RouteEntry {
    /// Choose an upstream round robin: first one that is healthy and not yet tried for this
    /// request; failing that, any one not yet tried (so a route whose upstreams are all marked
    /// down still gets a chance to recover). `tried` is a bitmask of indexes (first 64).
    pub fn pick(&self, now_ms: u64, tried: u64) -> Option<usize> {
        let n = self.upstreams.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let untried = |i: usize| i >= 64 || tried & (1 << i) == 0;
        let mut fallback = None;
        for k in 0..n {
            let i = (start + k) % n;
            if !untried(i) {
                continue;
            }
            if self.upstreams[i].down_until_ms.load(Ordering::Relaxed) <= now_ms {
                return Some(i);
            }
            fallback.get_or_insert(i);
        }
        fallback
    }

    /// Take an upstream out of rotation until `until_ms`.
    pub fn mark_down(&self, i: usize, until_ms: u64) {
        if let Some(u) = self.upstreams.get(i) {
            u.down_until_ms.store(until_ms, Ordering::Relaxed);
        }
    }

    /// Whether any upstream has not been tried yet.
    pub fn has_untried(&self, tried: u64) -> bool {
        (0..self.upstreams.len()).any(|i| i >= 64 || tried & (1 << i) == 0)
    }
}

/// One immutable version of the table.
#[derive(Debug, Default)]
pub struct RouteIndex {
    exact: Map,
    wildcard: Map,
    /// Version of the [`RouteTable`] this index was built from.
    pub version: u64,
    /// Number of routes.
    pub routes: usize,
}

impl RouteIndex {
    /// The route serving a normalised hostname: exact match, then one-label wildcard.
    #[inline]
    pub fn lookup(&self, host: &str) -> Option<&Arc<RouteEntry>> {
        if let Some(r) = self.exact.get(host) {
            return Some(r);
        }
        self.wildcard.get(wildcard_suffix(host)?)
    }
}

/// The live routing table.
pub struct Router {
    index: ArcSwap<RouteIndex>,
    epoch: Instant,
    metrics: Arc<Metrics>,
}

impl Router {
    /// A router serving `table`.
    pub fn new(table: &RouteTable, metrics: Arc<Metrics>) -> Self {
        let r = Router {
            index: ArcSwap::from_pointee(RouteIndex::default()),
            epoch: Instant::now(),
            metrics,
        };
        r.replace(table);
        r
    }

    /// Swap in a new table. Requests in flight keep the entry they already hold.
    pub fn replace(&self, table: &RouteTable) {
        let mut idx = RouteIndex {
            version: table.version,
            routes: table.routes.len(),
            ..RouteIndex::default()
        };
        idx.exact.reserve(table.routes.len());
        for route in &table.routes {
            let entry = Arc::new(RouteEntry {
                id: route.id.as_str().into(),
                group_key: foldhash::fast::FixedState::with_seed(0x7465_6e61_6e74)
                    .hash_one(&route.id),
                https_redirect: route.https_redirect,
                suspended: route.suspended,
                upstreams: route
                    .upstreams
                    .iter()
                    .map(|u| UpstreamState {
                        addr: u.addr,
                        down_until_ms: AtomicU64::new(0),
                    })
                    .collect(),
                metrics: self.metrics.route(&route.id),
                next: AtomicUsize::new(0),
            });
            for pat in &route.hostnames {
                match pat {
                    HostPattern::Exact(h) => idx.exact.insert(h.as_str().into(), entry.clone()),
                    HostPattern::Wildcard(s) => {
                        idx.wildcard.insert(s.as_str().into(), entry.clone())
                    }
                };
            }
        }
        self.metrics.routes.set(idx.routes as i64);
        self.index.store(Arc::new(idx));
    }

    /// The current table, without touching a reference count.
    #[inline]
    pub fn load(&self) -> Guard<Arc<RouteIndex>> {
        self.index.load()
    }

    /// Milliseconds since this router was created; the clock of upstream health.
    #[inline]
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// `now_ms()` plus a cooldown, saturating (a huge configured cooldown means "until
    /// restart", not an overflow).
    pub fn until_ms(&self, cooldown: Duration) -> u64 {
        let cooldown = u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX);
        self.now_ms().saturating_add(cooldown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenantgate_config::{Route, Upstream};

    fn table() -> RouteTable {
        let up = |p| Upstream {
            addr: SocketAddr::from(([127, 0, 0, 1], p)),
        };
        RouteTable {
            version: 3,
            routes: vec![
                Route {
                    id: "a".into(),
                    hostnames: vec![HostPattern::Exact("a.test".into())],
                    upstreams: vec![up(1), up(2), up(3)],
                    https_redirect: false,
                    suspended: false,
                },
                Route {
                    id: "w".into(),
                    hostnames: vec![
                        HostPattern::Wildcard("w.test".into()),
                        HostPattern::Exact("x.w.test".into()),
                    ],
                    upstreams: vec![up(4)],
                    https_redirect: true,
                    suspended: false,
                },
            ],
        }
    }

    #[test]
    fn exact_beats_wildcard_and_wildcard_is_one_label() {
        let r = Router::new(&table(), Arc::new(Metrics::new(10)));
        let idx = r.load();
        assert_eq!(idx.version, 3);
        assert_eq!(&*idx.lookup("a.test").expect("a").id, "a");
        assert_eq!(&*idx.lookup("y.w.test").expect("w").id, "w");
        assert_eq!(&*idx.lookup("x.w.test").expect("x").id, "w");
        assert!(idx.lookup("w.test").is_none());
        assert!(idx.lookup("z.y.w.test").is_none());
        assert!(idx.lookup("b.test").is_none());
    }

    #[test]
    fn pick_rotates_skips_down_and_tried_and_falls_back() {
        let r = Router::new(&table(), Arc::new(Metrics::new(10)));
        let idx = r.load();
        let a = idx.lookup("a.test").expect("a");
        let picks: Vec<_> = (0..3).map(|_| a.pick(0, 0).expect("pick")).collect();
        assert_eq!(picks, vec![0, 1, 2]);
        a.mark_down(1, 1_000);
        for _ in 0..6 {
            assert_ne!(a.pick(10, 0), Some(1));
        }
        // Upstream 1 is down and 0, 2 tried: fail open to 1 rather than give up.
        assert_eq!(a.pick(10, 0b101), Some(1));
        assert_eq!(a.pick(10, 0b111), None);
        assert!(!a.has_untried(0b111));
        // After the cooldown it is back.
        assert!((0..3).any(|_| a.pick(2_000, 0) == Some(1)));
    }

    #[test]
    fn cooldown_deadline_saturates() {
        let r = Router::new(&table(), Arc::new(Metrics::new(10)));
        assert_eq!(r.until_ms(Duration::from_secs(u64::MAX)), u64::MAX);
        assert!(r.until_ms(Duration::from_secs(1)) >= 1_000);
    }

    #[test]
    fn replace_swaps_the_whole_table() {
        let r = Router::new(&table(), Arc::new(Metrics::new(10)));
        r.replace(&RouteTable::default());
        assert!(r.load().lookup("a.test").is_none());
        assert_eq!(r.load().routes, 0);
    }
}
