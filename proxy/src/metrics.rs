//! Every Prometheus metric of the proxy, registered in one place.
//!
//! Invariants: label sets are bounded. Routes get their own `route` label up to a budget
//! (`proxy.max_route_metric_labels`); routes beyond it, and requests for unknown hosts, share
//! the labels `_other` and `_unknown`. Each route's counter children are resolved once when
//! the table is built, so the hot path increments an atomic and never hashes label values.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::limits::requests::Limit;
use crate::service::decide::Answer;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Status classes used as the `class` label.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// How a held request's hold ended (the `result` label of
/// `tenantgate_proxy_held_requests_total`).
#[derive(Debug, Clone, Copy)]
pub enum Held {
    /// Its store woke and it was decided again.
    Woken = 0,
    /// A browser navigation got the waking page.
    WakingPage = 1,
    /// Our 503 at the wake timeout.
    Timeout = 2,
    /// A crawler turned away from a stopped store.
    Crawler = 3,
}

const HELD: [&str; 4] = ["woken", "waking_page", "timeout", "crawler"];

/// Upstream error kinds used as the `kind` label.
#[derive(Debug, Clone, Copy)]
pub enum UpstreamErrorKind {
    /// TCP connect refused, unreachable or timed out.
    Connect = 0,
    /// Reading the response timed out.
    Timeout = 1,
    /// Any other error after connecting.
    Other = 2,
}

const KINDS: [&str; 3] = ["connect", "timeout", "other"];

/// Metric children of one route (or of the shared `_other` / `_unknown` buckets).
#[derive(Debug)]
pub struct RouteMetrics {
    requests: [IntCounter; 5],
    duration: Histogram,
    upstream_errors: [IntCounter; 3],
    /// The route's label, for children made when first needed.
    label: Box<str>,
    limited_vec: IntCounterVec,
    /// Requests refused by a limit, per [`Limit`]; made on the first refusal, so routes
    /// without limits add no series.
    limited: [std::sync::OnceLock<IntCounter>; 4],
}

impl RouteMetrics {
    /// Count one finished request.
    #[inline]
    pub fn observe(&self, status: u16, seconds: f64) {
        let class = (usize::from(status / 100)).clamp(1, 5) - 1;
        self.requests[class].inc();
        self.duration.observe(seconds);
    }

    /// Count one upstream error.
    #[inline]
    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors[kind as usize].inc();
    }

    /// Count one request refused by a limit.
    pub fn limited(&self, limit: Limit) {
        let i = Limit::ALL.iter().position(|l| *l == limit).unwrap_or(0);
        self.limited[i]
            .get_or_init(|| {
                self.limited_vec
                    .with_label_values(&[&*self.label, limit.as_str()])
            })
            .inc();
    }
}

/// The metric families with a `route` label, from which each route's children are made.
#[derive(Clone)]
struct RouteFamilies {
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_errors: IntCounterVec,
    limited: IntCounterVec,
}

impl RouteFamilies {
    /// The children labelled `label` (those of `limited` are made on first use).
    fn children(&self, label: &str) -> Arc<RouteMetrics> {
        Arc::new(RouteMetrics {
            requests: CLASSES.map(|c| self.requests.with_label_values(&[label, c])),
            duration: self.duration.with_label_values(&[label]),
            upstream_errors: KINDS.map(|k| self.upstream_errors.with_label_values(&[label, k])),
            label: label.into(),
            limited_vec: self.limited.clone(),
            limited: Default::default(),
        })
    }
}

/// The proxy's registry and metric families.
pub struct Metrics {
    registry: Registry,
    /// Our own answers by reason ([`Answer::name`]), children resolved once.
    answers: Vec<(&'static str, IntCounter)>,
    families: RouteFamilies,
    /// Routes in the current table.
    pub routes: IntGauge,
    /// Client connections: open now, and refused by a limit.
    pub connections: crate::limits::connections::ConnectionMetrics,
    /// TLS handshakes that failed, by reason (`timeout`, `error`).
    pub tls_handshake_failures: [IntCounter; 2],
    /// Certificates in the store.
    pub certificates: IntGauge,
    /// Access-log lines dropped because the writer fell behind.
    pub access_log_dropped: IntCounter,
    /// Requests held for a sleeping store, by how the hold ended ([`Held`]).
    held: [IntCounter; 4],
    /// Seconds requests were held while their store woke.
    pub held_seconds: Histogram,
    /// Wakes this proxy asked control for.
    pub wakes_asked: IntCounter,
    /// Requests whose Host matched no route.
    pub unknown: Arc<RouteMetrics>,
    budget: usize,
    labelled: Mutex<HashMap<String, Arc<RouteMetrics>>>,
    other: Arc<RouteMetrics>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("budget", &self.budget)
            .finish()
    }
}

impl Metrics {
    /// Register all families; `route_label_budget` routes get their own label.
    pub fn new(route_label_budget: usize) -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "tenantgate_proxy_requests_total",
                "Requests answered, by route and status class",
            ),
            &["route", "class"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "tenantgate_proxy_request_duration_seconds",
                "Time from request headers to the end of the response, by route",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["route"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "tenantgate_proxy_upstream_errors_total",
                "Failed attempts to reach or read an upstream, by route and kind",
            ),
            &["route", "kind"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let limited = IntCounterVec::new(
            Opts::new(
                "tenantgate_proxy_limited_total",
                "Requests refused by a tenant's limit (429, or 413 for the body size), by route and limit",
            ),
            &["route", "limit"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let answers_vec = IntCounterVec::new(
            Opts::new(
                "tenantgate_proxy_answers_total",
                "Requests the proxy answered itself instead of an upstream, by reason",
            ),
            &["reason"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let mut answers: Vec<(&'static str, IntCounter)> = Vec::new();
        for a in Answer::ALL {
            if !answers.iter().any(|(n, _)| *n == a.name()) {
                answers.push((a.name(), answers_vec.with_label_values(&[a.name()])));
            }
        }
        let open = IntGauge::new(
            "tenantgate_proxy_connections",
            "Client connections open on the proxy listeners",
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let refused = IntCounterVec::new(
            Opts::new(
                "tenantgate_proxy_connections_refused_total",
                "Client connections refused by max_connections (node) or max_connections_per_client (client)",
            ),
            &["reason"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let handshakes = IntCounterVec::new(
            Opts::new(
                "tenantgate_proxy_tls_handshake_failures_total",
                "TLS handshakes that did not complete, by reason",
            ),
            &["reason"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let connections = crate::limits::connections::ConnectionMetrics {
            open: open.clone(),
            refused_node: refused.with_label_values(&["node"]),
            refused_client: refused.with_label_values(&["client"]),
        };
        let tls_handshake_failures =
            ["timeout", "error"].map(|r| handshakes.with_label_values(&[r]));
        let routes = IntGauge::new("tenantgate_proxy_routes", "Routes in the routing table")
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let certificates =
            IntGauge::new("tenantgate_certs_certificates", "Certificates in the store")
                .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let access_log_dropped = IntCounter::new(
            "tenantgate_proxy_access_log_dropped_total",
            "Access-log lines dropped because the writer fell behind (requests never wait for it)",
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let held_vec = IntCounterVec::new(
            Opts::new(
                "tenantgate_proxy_held_requests_total",
                "Requests held for a sleeping store, by how the hold ended",
            ),
            &["result"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let held = HELD.map(|r| held_vec.with_label_values(&[r]));
        let held_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tenantgate_proxy_held_seconds",
                "Time requests were held while their store woke",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let wakes_asked = IntCounter::new(
            "tenantgate_proxy_wakes_asked_total",
            "Wakes of sleeping stores this proxy asked control for",
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(held_vec),
            Box::new(held_seconds.clone()),
            Box::new(wakes_asked.clone()),
            Box::new(access_log_dropped.clone()),
            Box::new(duration.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(limited.clone()),
            Box::new(answers_vec),
            Box::new(open),
            Box::new(refused),
            Box::new(handshakes),
            Box::new(routes.clone()),
            Box::new(certificates.clone()),
        ] {
            registry
                .register(c)
                .unwrap_or_else(|e| unreachable!("metric names are unique: {e}"));
        }
        let families = RouteFamilies {
            requests,
            duration,
            upstream_errors,
            limited,
        };
        let unknown = families.children("_unknown");
        let other = families.children("_other");
        Metrics {
            registry,
            answers,
            connections,
            tls_handshake_failures,
            families,
            routes,
            certificates,
            access_log_dropped,
            held,
            held_seconds,
            wakes_asked,
            unknown,
            budget: route_label_budget,
            labelled: Mutex::new(HashMap::new()),
            other,
        }
    }

    /// Count one held request by how its hold ended.
    pub fn held(&self, how: Held) {
        self.held[how as usize].inc();
    }

    /// Count one answer of our own.
    pub fn answer(&self, a: Answer) {
        if let Some((_, c)) = self.answers.iter().find(|(n, _)| *n == a.name()) {
            c.inc();
        }
    }

    /// The children for a route id: its own while the label budget lasts, `_other` after.
    pub fn route(&self, id: &str) -> Arc<RouteMetrics> {
        let mut labelled = self.labelled.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = labelled.get(id) {
            return m.clone();
        }
        if labelled.len() >= self.budget {
            return self.other.clone();
        }
        let m = self.families.children(id);
        labelled.insert(id.to_owned(), m.clone());
        m
    }

    /// The text exposition of this registry followed by the process-wide default registry
    /// (where Pingora registers its own metrics).
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let enc = TextEncoder::new();
        let _ = enc.encode(&self.registry.gather(), &mut out);
        let _ = enc.encode(&prometheus::gather(), &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_budget_bounds_cardinality() {
        let m = Metrics::new(2);
        let a = m.route("a");
        let b = m.route("b");
        let c = m.route("c");
        assert!(Arc::ptr_eq(&a, &m.route("a")));
        assert!(Arc::ptr_eq(&c, &m.other));
        a.observe(204, 0.001);
        b.observe(503, 0.001);
        c.observe(404, 0.001);
        let text = String::from_utf8(m.render()).expect("utf8");
        assert!(
            text.contains(r#"tenantgate_proxy_requests_total{class="2xx",route="a"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"tenantgate_proxy_requests_total{class="4xx",route="_other"} 1"#));
        assert!(!text.contains(r#"route="c""#));
    }
}
