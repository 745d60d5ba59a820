//! Each tenant's traffic as this node serves it, for the dashboard and idle detection:
//! requests by status class, a latency histogram and the requests in flight, per route.
//!
//! Invariants: a route's cell is made on its first answered request, so a route that never
//! gets traffic costs one empty slot; a new version of a route keeps its cell, so no count
//! is lost to a route change; counting is two relaxed atomic additions; the reporter takes
//! the counts with a swap, so each request is reported exactly once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tenantgate_config::traffic::{TrafficCounts, BUCKETS};

/// The counters of one route.
#[derive(Debug, Default)]
pub struct RouteTraffic {
    by_class: [AtomicU64; 5],
    latency: [AtomicU64; BUCKETS],
    in_flight: AtomicU64,
}

/// One request in flight for a route (an upgraded connection included), from the proxy
/// verdict to the end of its response: a store with one never sleeps.
#[derive(Debug)]
pub struct InFlight(Arc<RouteTraffic>);

impl InFlight {
    /// Count a request in flight on `t` until the guard is dropped.
    #[inline]
    pub fn new(t: &Arc<RouteTraffic>) -> Self {
        t.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(t.clone())
    }
}

impl Drop for InFlight {
    #[inline]
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RouteTraffic {
    /// Count one answered request.
    #[inline]
    pub fn observe(&self, status: u16, elapsed: Duration) {
        self.by_class[TrafficCounts::class(status)].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.latency[TrafficCounts::bucket(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
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

    #[test]
    fn requests_in_flight_are_counted_until_dropped() {
        let t = Arc::new(RouteTraffic::default());
        let a = InFlight::new(&t);
        let b = InFlight::new(&t);
        assert_eq!(t.in_flight(), 2);
        drop(a);
        assert_eq!(t.in_flight(), 1);
        t.take();
        assert_eq!(
            t.in_flight(),
            1,
            "taking the counts leaves requests in flight"
        );
        drop(b);
        assert_eq!(t.in_flight(), 0);
    }
}
