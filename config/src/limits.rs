//! Per-tenant traffic limits: one shape for the admin API (`PUT /v1/tenants/{id}/limits`),
//! named plans (`[plans.NAME]`), static routes (`[routes.limits]`) and the route model the
//! proxies receive.
//!
//! Invariants: every field is optional and absent means "no limit"; a [`Limits`] that
//! [`Limits::problems`] accepts is enforceable as it is (rates and bursts at least 1, a burst
//! only with its rate); limits hold per proxy node, and [`Limits::share`] divides them among
//! the nodes of a fleet.

use serde::{Deserialize, Serialize};

/// Traffic limits of one tenant. The JSON and TOML keys are a contract other tools rely on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests per second to the tenant (token bucket rate), per proxy node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u32>,
    /// Requests the tenant's bucket holds (default: one second's worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Requests per second from one client address to the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_requests_per_second: Option<u32>,
    /// Requests one client's bucket holds (default: one second's worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_burst: Option<u32>,
    /// Requests to the tenant in flight at once, per proxy node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests: Option<u32>,
    /// Largest request body, in bytes (413 beyond; chunked and `Content-Length` alike).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// TCP connect timeout to the tenant's upstreams, milliseconds (default:
    /// `proxy.connect_timeout_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_connect_timeout_ms: Option<u32>,
    /// Longest wait for the tenant's upstream to send (default: `proxy.read_timeout_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_read_timeout_ms: Option<u32>,
}

/// The longest upstream timeout a tenant may set (an hour).
pub const MAX_TIMEOUT_MS: u32 = 3_600_000;

impl Limits {
    /// No field set.
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// Every reason these limits cannot be enforced, as (field, reason).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut at_least_one = |field: &'static str, v: Option<u64>| {
            if v == Some(0) {
                out.push((
                    field,
                    "must be at least 1 (leave it out for no limit)".into(),
                ));
            }
        };
        at_least_one(
            "requests_per_second",
            self.requests_per_second.map(u64::from),
        );
        at_least_one("burst", self.burst.map(u64::from));
        at_least_one(
            "client_requests_per_second",
            self.client_requests_per_second.map(u64::from),
        );
        at_least_one("client_burst", self.client_burst.map(u64::from));
        at_least_one(
            "max_concurrent_requests",
            self.max_concurrent_requests.map(u64::from),
        );
        at_least_one(
            "upstream_connect_timeout_ms",
            self.upstream_connect_timeout_ms.map(u64::from),
        );
        at_least_one(
            "upstream_read_timeout_ms",
            self.upstream_read_timeout_ms.map(u64::from),
        );
        if self.burst.is_some() && self.requests_per_second.is_none() {
            out.push(("burst", "needs requests_per_second".into()));
        }
        if self.client_burst.is_some() && self.client_requests_per_second.is_none() {
            out.push(("client_burst", "needs client_requests_per_second".into()));
        }
        for (field, v) in [
            (
                "upstream_connect_timeout_ms",
                self.upstream_connect_timeout_ms,
            ),
            ("upstream_read_timeout_ms", self.upstream_read_timeout_ms),
        ] {
            if v.is_some_and(|v| v > MAX_TIMEOUT_MS) {
                out.push((field, format!("must be at most {MAX_TIMEOUT_MS} (an hour)")));
            }
        }
        out
    }

    /// `self`'s fields where set, `base`'s otherwise (a tenant's own limits over its plan's).
    pub fn over(self, base: Limits) -> Limits {
        Limits {
            requests_per_second: self.requests_per_second.or(base.requests_per_second),
            burst: self.burst.or(base.burst),
            client_requests_per_second: self
                .client_requests_per_second
                .or(base.client_requests_per_second),
            client_burst: self.client_burst.or(base.client_burst),
            max_concurrent_requests: self
                .max_concurrent_requests
                .or(base.max_concurrent_requests),
            max_body_bytes: self.max_body_bytes.or(base.max_body_bytes),
            upstream_connect_timeout_ms: self
                .upstream_connect_timeout_ms
                .or(base.upstream_connect_timeout_ms),
            upstream_read_timeout_ms: self
                .upstream_read_timeout_ms
                .or(base.upstream_read_timeout_ms),
        }
    }

    /// This node's share when `nodes` proxies serve the tenant: the tenant-wide rate, burst
    /// and concurrency divided among them (rounded up, at least 1). Per-client limits, body
    /// size and timeouts stay as they are (one client's requests reach one node at a time
    /// behind most balancers; a body or a timeout is not shared).
    pub fn share(self, nodes: usize) -> Limits {
        if nodes <= 1 {
            return self;
        }
        let n = u32::try_from(nodes).unwrap_or(u32::MAX);
        let part = |v: Option<u32>| v.map(|v| v.div_ceil(n).max(1));
        Limits {
            requests_per_second: part(self.requests_per_second),
            burst: part(self.burst.or(self.requests_per_second)),
            max_concurrent_requests: part(self.max_concurrent_requests),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_name_the_field() {
        let bad = Limits {
            requests_per_second: Some(0),
            client_burst: Some(5),
            upstream_read_timeout_ms: Some(MAX_TIMEOUT_MS + 1),
            ..Limits::default()
        };
        let fields: Vec<&str> = bad.problems().iter().map(|(f, _)| *f).collect();
        assert_eq!(
            fields,
            [
                "requests_per_second",
                "client_burst",
                "upstream_read_timeout_ms"
            ]
        );
        assert!(Limits::default().problems().is_empty());
    }

    #[test]
    fn own_fields_win_over_the_plan_and_shares_round_up() {
        let plan = Limits {
            requests_per_second: Some(50),
            max_body_bytes: Some(10),
            ..Limits::default()
        };
        let own = Limits {
            requests_per_second: Some(5),
            ..Limits::default()
        };
        let l = own.over(plan);
        assert_eq!(l.requests_per_second, Some(5));
        assert_eq!(l.max_body_bytes, Some(10));
        let s = plan.share(3);
        assert_eq!(s.requests_per_second, Some(17));
        assert_eq!(s.burst, Some(17));
        assert_eq!(s.max_body_bytes, Some(10));
        assert_eq!(plan.share(1), plan);
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(serde_json::from_str::<Limits>(r#"{"rps": 1}"#).is_err());
        let l: Limits =
            serde_json::from_str(r#"{"burst": 3, "requests_per_second": 2}"#).expect("parse");
        assert_eq!(l.burst, Some(3));
        assert_eq!(
            serde_json::to_string(&Limits::default()).expect("json"),
            "{}"
        );
    }
}
