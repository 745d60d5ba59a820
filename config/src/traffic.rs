//! Per-tenant traffic as the proxies count it and control folds it into the dashboard's
//! time series: requests by status class and a coarse latency histogram. The shape is
//! shared so that a proxy node reports into the store without knowing control.
//!
//! Invariants: a count is a plain sum, so counts from several proxies and several periods
//! add up field by field; latency buckets are fixed ([`LATENCY_BOUNDS_US`]), so a quantile
//! read from summed counts is the same wherever it is computed.

use serde::{Deserialize, Serialize};

/// Upper bounds (microseconds, inclusive) of the latency buckets; the last bucket holds
/// everything slower.
pub const LATENCY_BOUNDS_US: [u64; 9] = [
    5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
];

/// Number of latency buckets.
pub const BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

/// Requests counted over some period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficCounts {
    /// Answered requests by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub by_class: [u64; 5],
    /// Answered requests by latency bucket.
    pub latency: [u64; BUCKETS],
}

impl TrafficCounts {
    /// The bucket of a request that took `elapsed_us`.
    #[inline]
    pub fn bucket(elapsed_us: u64) -> usize {
        LATENCY_BOUNDS_US
            .iter()
            .position(|b| elapsed_us <= *b)
            .unwrap_or(BUCKETS - 1)
    }

    /// The class index (0 for 1xx .. 4 for 5xx) of `status`.
    #[inline]
    pub fn class(status: u16) -> usize {
        usize::from(status / 100).clamp(1, 5) - 1
    }

    /// All requests.
    pub fn requests(&self) -> u64 {
        self.by_class.iter().sum()
    }

    /// Requests answered 5xx.
    pub fn errors(&self) -> u64 {
        self.by_class[4]
    }

    /// Nothing counted.
    pub fn is_empty(&self) -> bool {
        self.requests() == 0
    }

    /// Add `other` to these counts.
    pub fn add(&mut self, other: &TrafficCounts) {
        for (a, b) in self.by_class.iter_mut().zip(other.by_class) {
            *a += b;
        }
        for (a, b) in self.latency.iter_mut().zip(other.latency) {
            *a += b;
        }
    }

    /// The latency (ms) within which a share `q` (0-1) of the requests finished: the upper
    /// bound of the bucket that reaches it (`None`: nothing counted; above the last bound:
    /// that bound).
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let want = (q.clamp(0.0, 1.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= want {
                let bound = LATENCY_BOUNDS_US
                    .get(i)
                    .or(LATENCY_BOUNDS_US.last())
                    .copied()
                    .unwrap_or(0);
                return Some(bound as f64 / 1000.0);
            }
        }
        None
    }

    /// The compact text form kept in the store: `c1,..,c5;l0,..,l9`.
    pub fn encode(&self) -> String {
        let join = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        format!("{};{}", join(&self.by_class), join(&self.latency))
    }

    /// Parse [`TrafficCounts::encode`]'s form (`None` when it is not that).
    pub fn decode(s: &str) -> Option<TrafficCounts> {
        let (classes, latency) = s.split_once(';')?;
        let mut c = TrafficCounts::default();
        let fill = |dst: &mut [u64], src: &str| -> Option<()> {
            let mut n = 0;
            for (d, v) in dst.iter_mut().zip(src.split(',')) {
                *d = v.parse().ok()?;
                n += 1;
            }
            (n == dst.len()).then_some(())
        };
        fill(&mut c.by_class, classes)?;
        fill(&mut c.latency, latency)?;
        Some(c)
    }
}

/// One route's traffic as a proxy reports it: what it answered since the last report and
/// what it has in flight now (a store with a request in flight never sleeps).
#[derive(Debug, Clone, Default)]
pub struct RouteReport {
    /// The route's id (the tenant's).
    pub id: String,
    /// Requests answered since the last report.
    pub counts: TrafficCounts,
    /// Requests (and upgraded connections) in flight now.
    pub in_flight: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_classes_and_quantiles() {
        assert_eq!(TrafficCounts::bucket(0), 0);
        assert_eq!(TrafficCounts::bucket(5_000), 0);
        assert_eq!(TrafficCounts::bucket(5_001), 1);
        assert_eq!(TrafficCounts::bucket(10_000_000), BUCKETS - 1);
        assert_eq!(TrafficCounts::class(204), 1);
        assert_eq!(TrafficCounts::class(503), 4);
        assert_eq!(TrafficCounts::class(99), 0);
        let mut c = TrafficCounts::default();
        assert_eq!(c.quantile_ms(0.95), None);
        c.latency[0] = 90;
        c.latency[3] = 10;
        assert_eq!(c.quantile_ms(0.5), Some(5.0));
        assert_eq!(c.quantile_ms(0.95), Some(50.0));
        c.latency[BUCKETS - 1] = 1000;
        assert_eq!(c.quantile_ms(0.99), Some(2500.0));
    }

    #[test]
    fn counts_add_and_round_trip_through_text() {
        let mut a = TrafficCounts::default();
        a.by_class[1] = 3;
        a.latency[2] = 3;
        let mut b = a;
        b.by_class[4] = 1;
        b.latency[9] = 1;
        a.add(&b);
        assert_eq!((a.requests(), a.errors()), (7, 1));
        assert_eq!(TrafficCounts::decode(&a.encode()), Some(a));
        assert_eq!(TrafficCounts::decode("1,2;3"), None);
        assert_eq!(TrafficCounts::decode("x"), None);
    }
}
