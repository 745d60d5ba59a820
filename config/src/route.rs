//! The route model shared by the proxy and the control plane: what a route is once
//! configuration or the store has been validated. Values here are already normalised and
//! resolved; the proxy builds its lookup index from a [`RouteTable`] (static routes) and a
//! store [`Snapshot`], and keeps it current with [`Delta`]s.
//!
//! Invariants: a route id is unique in a table; no hostname pattern appears in two routes of
//! one source (static config or store). Deltas carry whole routes (upsert) or ids (remove), so
//! applying the same delta twice gives the same table.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::host::HostPattern;

/// One upstream of a route: a resolved socket address (never a name: name resolution must not
/// happen on the hot path).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    /// Resolved address of the backend.
    pub addr: SocketAddr,
}

/// A route: the hostnames one tenant answers on and where its backends listen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Stable identifier, unique in the table; used as the connection-pool key and, bounded,
    /// as a metrics label.
    pub id: String,
    /// Exact names and one-label wildcards served by this route.
    pub hostnames: Vec<HostPattern>,
    /// Backends, tried round robin.
    pub upstreams: Vec<Upstream>,
    /// Answer plain HTTP with a 308 to the https:// URL.
    #[serde(default)]
    pub https_redirect: bool,
    /// The tenant is suspended: the proxy answers its own 503 page, never the backends.
    #[serde(default)]
    pub suspended: bool,
    /// Path prefixes served by other backends than `upstreams` (e.g. `/store` to an API
    /// component); the longest prefix matching on a segment boundary wins, and everything
    /// else goes to `upstreams`. Empty for most routes (and then free).
    #[serde(default, skip_serializing_if = "<[PathRoute]>::is_empty")]
    pub paths: Box<[PathRoute]>,
    /// `Strict-Transport-Security` sent with every response over TLS (a value checked by
    /// [`valid_hsts`]); `None`: none is added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts: Option<String>,
    /// The tenant's traffic limits (resolved: its own over its plan's); `None`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<crate::Limits>,
    /// The tenant's containers sleep: the proxy holds its requests and asks control to wake
    /// it, never forwarding to `upstreams` (a stopped container's port may be someone
    /// else's by now). `None`: awake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asleep: Option<SleepLevel>,
}

/// How deeply a tenant's containers sleep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SleepLevel {
    /// Frozen (`docker pause`): memory kept, wakes in milliseconds.
    Paused,
    /// Stopped: memory freed, wakes in the containers' start and health time.
    Stopped,
}

impl SleepLevel {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SleepLevel::Paused => "paused",
            SleepLevel::Stopped => "stopped",
        }
    }

    /// Parse the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "paused" => Some(SleepLevel::Paused),
            "stopped" => Some(SleepLevel::Stopped),
            _ => None,
        }
    }
}

/// Whether `v` is a `Strict-Transport-Security` value this proxy sends: `max-age=<seconds>`
/// first, then optionally `includeSubDomains` and `preload` (RFC 6797 §6.1).
pub fn valid_hsts(v: &str) -> bool {
    let mut parts = v.split(';').map(str::trim);
    let age = parts.next().and_then(|p| p.strip_prefix("max-age="));
    if !age.is_some_and(|a| !a.is_empty() && a.len() <= 10 && a.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    let mut seen = Vec::new();
    parts.all(|p| {
        let known =
            p.eq_ignore_ascii_case("includeSubDomains") || p.eq_ignore_ascii_case("preload");
        let fresh = !seen.contains(&p.to_ascii_lowercase());
        seen.push(p.to_ascii_lowercase());
        known && fresh
    })
}

/// Backends serving one path prefix of a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathRoute {
    /// `/store`: matches `/store` and `/store/...`, not `/storefront`.
    pub prefix: String,
    /// Backends, tried round robin.
    pub upstreams: Vec<Upstream>,
}

/// Whether path prefix `prefix` covers `path`, on segment boundaries: `/store` covers
/// `/store` and `/store/x`, not `/storefront`; `/` covers everything. The one rule for path
/// routing, in the proxy and in blueprints.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// A complete, versioned set of routes, as the proxy sees it at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTable {
    /// Monotonic version of the table; 0 for a table built from static configuration.
    pub version: u64,
    /// The routes; no hostname pattern appears in two of them.
    pub routes: Vec<Route>,
}

/// One change to a route table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RouteChange {
    /// Add the route, or replace the route with the same id.
    Upsert(Route),
    /// Remove the route with this id (no-op when absent).
    Remove {
        /// Id of the route.
        id: String,
    },
}

/// A certificate as the store keeps it and hands it to proxies: the PEM chain and the private
/// key sealed with the fleet's encryption key (never in clear outside a node's memory).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCertificate {
    /// Id of the certificate in the store.
    pub id: String,
    /// PEM chain, leaf first.
    pub chain_pem: String,
    /// The PEM private key, sealed (see `tenantgate_certs::seal`).
    #[serde(with = "hex_bytes")]
    pub sealed_key: Vec<u8>,
}

impl std::fmt::Debug for StoredCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCertificate")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// One change to the stored certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CertificateChange {
    /// Add, or replace the certificate with the same id.
    Upsert(StoredCertificate),
    /// Remove the certificate with this id (no-op when absent).
    Remove {
        /// Id of the certificate.
        id: String,
    },
}

/// Everything the store publishes to proxies, at one version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Change-log version this snapshot reflects.
    pub version: u64,
    /// Every stored route.
    pub routes: Vec<Route>,
    /// Every stored certificate.
    pub certificates: Vec<StoredCertificate>,
    /// Every domain's live challenges (ACME HTTP-01 and ownership verification).
    #[serde(default)]
    pub challenges: Vec<ChallengeSet>,
}

/// The changes that take a proxy's state from one version to `version`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// Version once the changes are applied.
    pub version: u64,
    /// Route changes in commit order.
    pub routes: Vec<RouteChange>,
    /// Certificate changes in commit order.
    pub certificates: Vec<CertificateChange>,
    /// Domains whose challenges changed, each with its whole current set.
    #[serde(default)]
    pub challenges: Vec<ChallengeSet>,
}

/// An answer every proxy gives on the control plane's behalf, before any tenant routing: an
/// ACME HTTP-01 key authorisation or a domain's ownership-verification token, for one exact
/// hostname and path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// Normalised hostname the request must carry.
    pub hostname: String,
    /// Exact request path (`/.well-known/acme-challenge/<token>` or
    /// `/.well-known/tenantgate/<domain id>`).
    pub path: String,
    /// The response body.
    pub body: String,
}

/// The current challenges of one custom domain; an empty set withdraws them all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeSet {
    /// Id of the domain.
    pub domain_id: String,
    /// Its challenges.
    pub challenges: Vec<Challenge>,
}

/// Serde helper: bytes as a lowercase hex string.
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&b.iter().map(|x| format!("{x:02x}")).collect::<String>())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() % 2 != 0 {
            return Err(serde::de::Error::custom("odd number of hex digits"));
        }
        (0..s.len())
            .step_by(2)
            .map(|i| {
                s.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| serde::de::Error::custom("not hex"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(id: &str, host: &str) -> Route {
        Route {
            id: id.into(),
            hostnames: vec![HostPattern::Exact(host.into())],
            upstreams: vec![Upstream {
                addr: SocketAddr::from(([127, 0, 0, 1], 9000)),
            }],
            https_redirect: false,
            suspended: false,
            paths: Default::default(),
            hsts: None,
            limits: None,
            asleep: None,
        }
    }

    #[test]
    fn hsts_values_are_checked() {
        for ok in [
            "max-age=31536000",
            "max-age=0",
            "max-age=63072000; includeSubDomains; preload",
        ] {
            assert!(valid_hsts(ok), "{ok}");
        }
        for bad in [
            "",
            "max-age=",
            "max-age=x",
            "includeSubDomains",
            "max-age=1; foo",
            "max-age=1; preload; preload",
            "max-age=1\r\nx: y",
        ] {
            assert!(!valid_hsts(bad), "{bad}");
        }
    }

    #[test]
    fn sealed_keys_round_trip_as_hex() {
        let c = StoredCertificate {
            id: "c1".into(),
            chain_pem: "PEM".into(),
            sealed_key: vec![0, 1, 0xab, 0xff],
        };
        let text = serde_json::to_string(&c).expect("json");
        assert!(text.contains("\"0001abff\""), "{text}");
        assert_eq!(
            serde_json::from_str::<StoredCertificate>(&text).expect("back"),
            c
        );
        assert!(
            serde_json::from_str::<StoredCertificate>(&text.replace("0001abff", "0g")).is_err()
        );
    }

    #[test]
    fn routes_round_trip_through_json() {
        let mut r = route("a", "a.test");
        r.hostnames.push(HostPattern::Wildcard("w.test".into()));
        let text = serde_json::to_string(&r).expect("json");
        assert!(text.contains("\"*.w.test\""), "{text}");
        let back: Route = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, r);
        assert!(serde_json::from_str::<Route>(&text.replace("a.test", "a_b.test")).is_err());
    }
}
