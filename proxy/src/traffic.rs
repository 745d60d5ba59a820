//! Each tenant's traffic as this node serves it, for the dashboard (and, next, idle
//! detection): requests by status class and a latency histogram, per route.
//!
//! Invariants: a route's cell is made on its first answered request, so a route that never
//! gets traffic costs one empty slot; a new version of a route keeps its cell, so no count
//! is lost to a route change; counting is two relaxed atomic additions; the reporter takes
//! the counts with a swap, so each request is reported exactly once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tenantgate_config::traffic::{TrafficCounts, BUCKETS};

/// The counters of one route.
#[derive(Debug, Default)]
pub struct RouteTraffic {
    by_class: [AtomicU64; 5],
    latency: [AtomicU64; BUCKETS],
}

impl RouteTraffic {
    /// Count one answered request.
    #[inline]
    pub fn observe(&self, status: u16, elapsed: Duration) {
        self.by_class[TrafficCounts::class(status)].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.latency[TrafficCounts::bucket(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts since the last take, leaving zeros.
    pub fn take(&self) -> TrafficCounts {
        let mut c = TrafficCounts::default();
        for (d, s) in c.by_class.iter_mut().zip(&self.by_class) {
            *d = s.swap(0, Ordering::Relaxed);
        }
        for (d, s) in c.latency.iter_mut().zip(&self.latency) {
            *d = s.swap(0, Ordering::Relaxed);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_taken_once() {
        let t = RouteTraffic::default();
        t.observe(200, Duration::from_millis(3));
        t.observe(502, Duration::from_secs(5));
        let c = t.take();
        assert_eq!((c.requests(), c.errors()), (2, 1));
        assert_eq!(c.latency[0], 1);
        assert_eq!(c.latency[BUCKETS - 1], 1);
        assert!(t.take().is_empty());
    }
}
