//! Typed static configuration of tenantgate (one TOML file plus `TENANTGATE_*` environment
//! overrides) and the route model shared by the proxy and the control plane.
//!
//! Invariants: unknown keys are refused; [`Config::validate`] reports every problem at once,
//! each with the key it concerns and the reason; a [`Config`] that validated turns into a
//! [`RouteTable`] without further failure.

#![deny(clippy::unwrap_used)]

pub mod host;
pub mod limits;
pub mod net;
pub mod route;
pub mod traffic;

use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use host::{HostError, HostPattern};
pub use limits::Limits;
pub use net::{IpNet, Listener, UpstreamPolicy, UpstreamRule};
pub use route::{
    CertificateChange, Challenge, ChallengeSet, Delta, PathRoute, Route, RouteChange, RouteTable,
    SleepLevel, Snapshot, StoredCertificate, Upstream,
};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML did not parse or did not match the schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the key and line.
        message: String,
    },
    /// The configuration parsed but is not valid.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One validation problem: the key it concerns and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `routes[2].upstreams[0]`.
    pub key: String,
    /// Human-readable reason.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listeners, threads, timeouts and limits of the proxy.
    pub proxy: ProxyConfig,
    /// The admin listener (metrics, health, admin API).
    pub admin: AdminConfig,
    /// The platform: its domain and the names tenants may not take.
    pub platform: PlatformConfig,
    /// Where tenants, hostnames and certificates are kept.
    pub store: StoreConfig,
    /// Logging and the access log.
    pub log: LogConfig,
    /// Custom domains: ownership checks and "moved" detection.
    pub domains: DomainsConfig,
    /// The ACME certificate authority for custom domains.
    pub acme: AcmeConfig,
    /// Signed JSON events on every domain status change.
    pub webhooks: WebhooksConfig,
    /// Tenants created from blueprints: where blueprints are, how containers are run.
    pub provisioning: ProvisioningConfig,
    /// The PostgreSQL server holding tenants' own schemas and roles.
    pub tenant_db: TenantDbConfig,
    /// Requests for sleeping stores: how long they are held while the store wakes.
    pub sleep: SleepConfig,
    /// Static certificates.
    pub certificates: Vec<CertificateConfig>,
    /// Static routes.
    pub routes: Vec<RouteConfig>,
    /// Named sets of limits that tenants reference (`"plan": "NAME"`).
    pub plans: std::collections::BTreeMap<String, Limits>,
}

/// `[proxy]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Plain HTTP listener.
    pub http_listen: String,
    /// TLS listener; `None` disables TLS.
    pub https_listen: Option<String>,
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// Let idle worker threads steal tasks from busy ones (Tokio multi-thread scheduler);
    /// `false` runs one single-threaded runtime per thread.
    pub work_stealing: bool,
    /// Seconds between SIGTERM and closing listeners (in-flight requests finish meanwhile).
    pub grace_period_seconds: u64,
    /// Seconds the final step of a graceful stop may take.
    pub graceful_shutdown_timeout_seconds: u64,
    /// Unix socket used to hand listening sockets to a new binary (`serve --upgrade`).
    pub upgrade_sock: String,
    /// PID file written by the server.
    pub pid_file: String,
    /// TCP connect timeout to an upstream, milliseconds.
    pub connect_timeout_ms: u64,
    /// Timeout for each read from an upstream, milliseconds (504 when exceeded before headers).
    pub read_timeout_ms: u64,
    /// Timeout for each write to an upstream, milliseconds.
    pub write_timeout_ms: u64,
    /// How long an idle pooled upstream connection is kept, milliseconds.
    pub upstream_idle_timeout_ms: u64,
    /// Pooled keep-alive connections per thread to all upstreams.
    pub upstream_keepalive_pool_size: usize,
    /// How idle upstream connections are shared between routes.
    pub upstream_pool: UpstreamPool,
    /// Seconds an upstream is skipped after a connect failure (passive health).
    pub unhealthy_cooldown_seconds: u64,
    /// Serve HTTP/1.1 pipelined requests in order (RFC 9112 §9.3.2) instead of answering the
    /// first and closing the connection.
    pub http1_pipelining: bool,
    /// Serve plain HTTP/1.1 `GET`/`HEAD`/`OPTIONS` requests on tenantgate's own fast path
    /// (everything else goes through Pingora's proxy either way).
    pub http1_fast_path: bool,
    /// Largest total size of request header names and values, bytes (431 beyond).
    pub max_request_header_bytes: usize,
    /// Largest number of request headers (431 beyond).
    pub max_request_headers: usize,
    /// Forward request headers whose names contain `_` (dropped by default: CGI, WSGI and
    /// PHP backends read `X_Forwarded_For` as `X-Forwarded-For`).
    pub allow_underscores_in_headers: bool,
    /// Most client connections the node holds at once (refused beyond, before any TLS or
    /// HTTP work); 0: derived from the open-files limit (half of it, less a reserve: each
    /// proxied connection may hold an upstream connection too).
    pub max_connections: usize,
    /// Most connections one client address holds at once (an IPv6 client counts by its
    /// /64); 0: no limit. Clients in `trusted_proxies` are exempt.
    pub max_connections_per_client: usize,
    /// Networks (CIDR) of load balancers in front of the proxy: exempt from the per-client
    /// connection limit, and vouching for the client address in `X-Forwarded-For` (the hop
    /// they appended), which per-client request limits and our forwarding headers then use.
    pub trusted_proxies: Vec<String>,
    /// Divide each tenant's rate, burst and concurrency limits among the live proxy nodes
    /// the store knows (fleet mode); off: each node enforces the whole limit.
    pub fleet_share: bool,
    /// How long a client has to complete its TLS handshake, milliseconds.
    pub tls_handshake_timeout_ms: u64,
    /// Routes beyond this many are aggregated under the metrics label `_other`.
    pub max_route_metric_labels: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            http_listen: "0.0.0.0:80".into(),
            https_listen: None,
            threads: 2,
            work_stealing: true,
            grace_period_seconds: 5,
            graceful_shutdown_timeout_seconds: 5,
            upgrade_sock: "/tmp/tenantgate_upgrade.sock".into(),
            pid_file: "/tmp/tenantgate.pid".into(),
            connect_timeout_ms: 2_000,
            read_timeout_ms: 60_000,
            write_timeout_ms: 60_000,
            upstream_idle_timeout_ms: 60_000,
            upstream_keepalive_pool_size: 256,
            upstream_pool: UpstreamPool::Route,
            unhealthy_cooldown_seconds: 10,
            http1_pipelining: true,
            http1_fast_path: true,
            max_request_header_bytes: 32 * 1024,
            max_request_headers: 100,
            allow_underscores_in_headers: false,
            max_connections: 0,
            max_connections_per_client: 512,
            trusted_proxies: Vec::new(),
            fleet_share: false,
            tls_handshake_timeout_ms: 10_000,
            max_route_metric_labels: 1_000,
        }
    }
}

/// Scope of upstream keep-alive connection pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamPool {
    /// One pool per route: a connection is only ever reused for the route that opened it, so a
    /// desynchronised backend connection cannot carry one tenant's response to another.
    Route,
    /// One pool per upstream address, shared by every route pointing at it (what nginx and
    /// HAProxy do): fewer connections when many hostnames share backends.
    Address,
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Listener of `/metrics`, `/healthz`, `/readyz` and the admin API; never on the proxy's
    /// ports.
    pub listen: String,
    /// Bearer token of the admin API (or `TENANTGATE_ADMIN_TOKEN`, or `token_file`). When none
    /// is given, a random one is generated into `admin.token` beside the embedded store.
    pub token: Option<String>,
    /// File holding the bearer token (first line).
    pub token_file: Option<PathBuf>,
    /// Networks tenant upstreams may point into. Empty: any unicast address but this node's
    /// own listeners and the special-purpose ranges of [`net::UpstreamPolicy`] (cloud
    /// metadata, tunnels); an entry inside one of those ranges opens exactly that entry.
    pub upstream_networks: Vec<String>,
    /// A dashboard session without a request for this long ends (minutes).
    pub session_idle_minutes: u64,
    /// A dashboard session ends this long after sign-in, however active (hours).
    pub session_max_hours: u64,
    /// How often each proxy node reports its per-tenant traffic into the store (seconds):
    /// the resolution of the dashboard's charts; each report writes one row per tenant that
    /// had traffic.
    pub traffic_report_seconds: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:8081".into(),
            token: None,
            token_file: None,
            upstream_networks: Vec::new(),
            session_idle_minutes: 30,
            session_max_hours: 12,
            traffic_report_seconds: 10,
        }
    }
}

/// `[platform]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlatformConfig {
    /// Tenants get `<slug>.<domain>`.
    pub domain: String,
    /// Slugs (first labels under `domain`) no tenant may take; the apex is always refused.
    pub reserved: Vec<String>,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        PlatformConfig {
            domain: "localhost".into(),
            reserved: ["admin", "www", "api", "app", "dashboard", "mail", "status"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// File of the embedded (SQLite) store, used when `url` is not set.
    pub path: PathBuf,
    /// `postgres://...`: the shared store of a fleet.
    pub url: Option<String>,
    /// Connections in the PostgreSQL pool.
    pub pool_size: usize,
    /// Where a proxy keeps its last-known-good copy of the routes and certificates.
    pub snapshot_path: PathBuf,
    /// 64 hex digits: the key that encrypts certificate private keys at rest (or
    /// `TENANTGATE_ENCRYPTION_KEY`, or `encryption_key_file`). Every node of a fleet needs the
    /// same one. With the embedded store and none given, one is generated beside the file.
    pub encryption_key: Option<String>,
    /// File holding the encryption key.
    pub encryption_key_file: Option<PathBuf>,
    /// Change-log entries kept (newest versions); older ones are pruned every few minutes
    /// by control-plane nodes. A proxy further behind than this resynchronises fully.
    pub change_log_keep: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("./data/tenantgate.db"),
            url: None,
            pool_size: 8,
            snapshot_path: PathBuf::from("./data/routes.snapshot.json"),
            encryption_key: None,
            encryption_key_file: None,
            change_log_keep: 100_000,
        }
    }
}

impl StoreConfig {
    /// Directory of the node's own files (embedded store, generated token and key).
    pub fn data_dir(&self) -> &Path {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        }
    }
}

/// `[domains]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DomainsConfig {
    /// DNS servers (`ip:port`) for ownership and "moved" checks; empty: the system's.
    pub nameservers: Vec<String>,
    /// Port on which control fetches a domain's `http_url` (through the public name) to
    /// verify it: the port proxies' plain-HTTP listeners are reached on.
    pub http_port: u16,
    /// Addresses the platform's edge is reached on. With these (or `cname_target`) set,
    /// active domains are re-resolved every `moved_check_seconds`: one that no longer points
    /// here is marked `moved` and no longer renewed.
    pub edge_addresses: Vec<String>,
    /// A CNAME target that counts as pointing here (e.g. `edge.platform.test`).
    pub cname_target: Option<String>,
    /// First retry of an ownership check; retries back off from here...
    pub check_min_seconds: u64,
    /// ...up to this interval.
    pub check_max_seconds: u64,
    /// Give up verifying a domain this long after it was attached.
    pub verify_timeout_seconds: u64,
    /// How often active domains are checked for having moved away.
    pub moved_check_seconds: u64,
    /// Timeout of one DNS lookup or HTTP check.
    pub lookup_timeout_ms: u64,
}

impl Default for DomainsConfig {
    fn default() -> Self {
        DomainsConfig {
            nameservers: Vec::new(),
            http_port: 80,
            edge_addresses: Vec::new(),
            cname_target: None,
            check_min_seconds: 10,
            check_max_seconds: 3600,
            verify_timeout_seconds: 7 * 24 * 3600,
            moved_check_seconds: 3600,
            lookup_timeout_ms: 5_000,
        }
    }
}

/// `[acme]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeConfig {
    /// Directory URL of the CA; unset: custom domains are verified and routed over HTTP but
    /// get no certificate.
    pub directory_url: Option<String>,
    /// Root certificate (PEM) the CA's own endpoint is checked against, for private CAs;
    /// unset: the Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// Contact URLs of the account (`mailto:ops@example.com`).
    pub contact: Vec<String>,
    /// Renew when this fraction of a certificate's lifetime remains (jittered earlier by up
    /// to a tenth of it).
    pub renew_remaining_fraction: f64,
    /// New orders allowed per hour across the fleet; the rest wait their turn.
    pub orders_per_hour: u32,
    /// First retry after a failed order; doubles per failure...
    pub retry_min_seconds: u64,
    /// ...up to this.
    pub retry_max_seconds: u64,
    /// How long one order may take (validation, finalisation, download).
    pub order_timeout_seconds: u64,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            directory_url: None,
            ca_file: None,
            contact: Vec::new(),
            renew_remaining_fraction: 1.0 / 3.0,
            orders_per_hour: 250,
            retry_min_seconds: 60,
            retry_max_seconds: 24 * 3600,
            order_timeout_seconds: 120,
        }
    }
}

/// `[webhooks]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Where events are POSTed (`http://` or `https://`); unset: no webhooks.
    pub url: Option<String>,
    /// Key of the `X-Tenantgate-Signature` HMAC-SHA256 (or `TENANTGATE_WEBHOOK_SECRET`).
    pub secret: Option<String>,
}

/// `[provisioning]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvisioningConfig {
    /// Directory of blueprint files (`*.toml`); missing: provisioning is off.
    pub blueprints_dir: PathBuf,
    /// Seconds between reconcile passes (desired tenants against running containers).
    pub reconcile_seconds: u64,
    /// Seconds old containers keep serving after a redeploy switched the route away.
    pub drain_seconds: u64,
    /// What happens to a deleted tenant's schema and role: `drop` or `keep`.
    pub retention: Retention,
    /// IPv4 range tenant networks get their subnets from (the engine's default pools hold
    /// only about 30 networks); empty: the engine's defaults.
    pub network_pool: String,
    /// Prefix length of each tenant network's subnet (27: 30 addresses).
    pub network_prefix: u8,
}

impl Default for ProvisioningConfig {
    fn default() -> Self {
        ProvisioningConfig {
            blueprints_dir: "deploy/blueprints".into(),
            reconcile_seconds: 10,
            drain_seconds: 2,
            retention: Retention::Drop,
            network_pool: "10.213.0.0/16".into(),
            network_prefix: 27,
        }
    }
}

/// `[sleep]`: what a proxy does with a request for a store whose containers sleep.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SleepConfig {
    /// Longest a request is held while its store wakes; then our 503 with `Retry-After`.
    pub wake_timeout_seconds: u64,
    /// A browser navigation (GET asking for HTML) held this long gets the "waking up" page,
    /// which reloads itself, instead of a blank wait (milliseconds).
    pub wake_hold_ms: u64,
    /// `User-Agent` substrings (case-insensitive) of clients that never wake a stopped store:
    /// search crawlers and uptime checkers get 503 with `Retry-After` instead.
    pub crawler_user_agents: Vec<String>,
}

impl Default for SleepConfig {
    fn default() -> Self {
        SleepConfig {
            wake_timeout_seconds: 30,
            wake_hold_ms: 1000,
            crawler_user_agents: [
                "googlebot",
                "bingbot",
                "yandexbot",
                "baiduspider",
                "duckduckbot",
                "applebot",
                "ahrefsbot",
                "semrushbot",
                "uptimerobot",
                "pingdom",
                "statuscake",
                "site24x7",
                "better uptime",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// What happens to a deleted tenant's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    /// Schema (with its data) and role are dropped.
    Drop,
    /// Schema and role stay; the role can no longer log in.
    Keep,
}

/// `[tenant_db]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantDbConfig {
    /// `postgres://admin@host:port/db` with a role that may create roles and schemas (or
    /// `TENANTGATE_TENANT_DB_URL`); unset: blueprints that need a database are refused.
    pub url: Option<String>,
    /// Host name tenant containers reach that server by (default `host.docker.internal`,
    /// the Docker host).
    pub container_host: Option<String>,
    /// Port tenant containers reach it on (default: the port of `url`).
    pub container_port: Option<u16>,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `RUST_LOG`-style filter for the process log.
    pub level: String,
    /// Write one JSON access-log line per request (whatever `level` and `format` say).
    pub access_log: bool,
    /// The access log's file (appended to, created when missing); absent: standard error,
    /// beside the process log.
    pub access_log_path: Option<PathBuf>,
    /// `json` or `text` for all log lines.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            access_log: true,
            access_log_path: None,
            format: LogFormat::Json,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// `[[certificates]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// Served when SNI is absent or matches no certificate.
    #[serde(default)]
    pub default: bool,
    /// When set and the files do not exist yet, a self-signed certificate for these names is
    /// generated into them on start (quickstart and development only).
    #[serde(default)]
    pub self_signed_names: Vec<String>,
}

/// `[[routes]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Optional stable id; defaults to the first hostname.
    #[serde(default)]
    pub id: Option<String>,
    /// Exact names and `*.suffix` wildcards.
    pub hostnames: Vec<String>,
    /// `host:port` of the backends.
    pub upstreams: Vec<String>,
    /// Answer plain HTTP with 308 to https.
    #[serde(default)]
    pub https_redirect: bool,
    /// `Strict-Transport-Security` for responses over TLS, e.g.
    /// `"max-age=31536000; includeSubDomains"`; unset: none.
    #[serde(default)]
    pub hsts: Option<String>,
    /// Traffic limits of the route (`[routes.limits]`, the keys of `[plans.NAME]`).
    #[serde(default)]
    pub limits: Option<Limits>,
}

/// Environment variables that override file values, with the key each one sets.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("TENANTGATE_HTTP_LISTEN", "proxy.http_listen"),
    ("TENANTGATE_HTTPS_LISTEN", "proxy.https_listen"),
    ("TENANTGATE_THREADS", "proxy.threads"),
    ("TENANTGATE_ADMIN_LISTEN", "admin.listen"),
    ("TENANTGATE_LOG_LEVEL", "log.level"),
    ("TENANTGATE_ADMIN_TOKEN", "admin.token"),
    ("TENANTGATE_PLATFORM_DOMAIN", "platform.domain"),
    ("TENANTGATE_STORE_PATH", "store.path"),
    ("TENANTGATE_STORE_URL", "store.url"),
    ("TENANTGATE_SNAPSHOT_PATH", "store.snapshot_path"),
    ("TENANTGATE_ENCRYPTION_KEY", "store.encryption_key"),
    ("TENANTGATE_WEBHOOK_SECRET", "webhooks.secret"),
    ("TENANTGATE_TENANT_DB_URL", "tenant_db.url"),
];

impl Config {
    /// The `[domains]`, `[acme]` and `[webhooks]` sections.
    fn validate_domains(&self, p: &mut impl FnMut(String, String)) {
        let d = &self.domains;
        for (i, ns) in d.nameservers.iter().enumerate() {
            if ns.parse::<std::net::SocketAddr>().is_err() {
                p(
                    format!("domains.nameservers[{i}]"),
                    format!("{ns:?} is not an ip:port address"),
                );
            }
        }
        for (i, a) in d.edge_addresses.iter().enumerate() {
            if a.parse::<std::net::IpAddr>().is_err() {
                p(
                    format!("domains.edge_addresses[{i}]"),
                    format!("{a:?} is not an IP address"),
                );
            }
        }
        if let Some(t) = &d.cname_target {
            if !matches!(HostPattern::parse(t), Ok(HostPattern::Exact(_))) {
                p(
                    "domains.cname_target".into(),
                    format!("{t:?} is not a hostname"),
                );
            }
        }
        if d.http_port == 0 {
            p("domains.http_port".into(), "must not be 0".into());
        }
        for (key, v) in [
            ("domains.check_min_seconds", d.check_min_seconds),
            ("domains.moved_check_seconds", d.moved_check_seconds),
            ("domains.lookup_timeout_ms", d.lookup_timeout_ms),
            ("acme.retry_min_seconds", self.acme.retry_min_seconds),
            (
                "acme.order_timeout_seconds",
                self.acme.order_timeout_seconds,
            ),
        ] {
            if v == 0 {
                p(key.into(), "must be greater than 0".into());
            }
        }
        if d.check_max_seconds < d.check_min_seconds {
            p(
                "domains.check_max_seconds".into(),
                "must not be less than domains.check_min_seconds".into(),
            );
        }
        if d.verify_timeout_seconds < d.check_min_seconds {
            p(
                "domains.verify_timeout_seconds".into(),
                "must not be less than domains.check_min_seconds".into(),
            );
        }
        let a = &self.acme;
        if let Some(u) = &a.directory_url {
            if !(u.starts_with("https://") || u.starts_with("http://")) {
                p(
                    "acme.directory_url".into(),
                    format!("{u:?} is not an http(s) URL"),
                );
            }
        }
        if !(a.renew_remaining_fraction > 0.0 && a.renew_remaining_fraction <= 1.0) {
            p(
                "acme.renew_remaining_fraction".into(),
                "must be greater than 0 and at most 1".into(),
            );
        }
        if a.orders_per_hour == 0 {
            p(
                "acme.orders_per_hour".into(),
                "must be greater than 0".into(),
            );
        }
        if a.retry_max_seconds < a.retry_min_seconds {
            p(
                "acme.retry_max_seconds".into(),
                "must not be less than acme.retry_min_seconds".into(),
            );
        }
        if self.provisioning.reconcile_seconds == 0 {
            p(
                "provisioning.reconcile_seconds".into(),
                "must be greater than 0".into(),
            );
        }
        let pool = &self.provisioning.network_pool;
        if !pool.is_empty() {
            let len = pool.split_once('/').and_then(|(a, l)| {
                a.parse::<std::net::Ipv4Addr>().ok()?;
                l.parse::<u8>().ok()
            });
            match len {
                Some(l) if (8..=28).contains(&l) => {
                    if !(l < self.provisioning.network_prefix
                        && self.provisioning.network_prefix <= 29)
                    {
                        p(
                            "provisioning.network_prefix".into(),
                            format!("must be longer than the pool's /{l} and at most 29"),
                        );
                    }
                }
                _ => p(
                    "provisioning.network_pool".into(),
                    format!("{pool:?} is not an IPv4 range like \"10.213.0.0/16\" (/8 to /28)"),
                ),
            }
        }
        if let Some(u) = &self.tenant_db.url {
            if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) {
                p("tenant_db.url".into(), "must be a postgres:// URL".into());
            }
        }
        if self.tenant_db.container_port == Some(0) {
            p("tenant_db.container_port".into(), "must not be 0".into());
        }
        if let Some(u) = &self.webhooks.url {
            if !(u.starts_with("https://") || u.starts_with("http://")) {
                p(
                    "webhooks.url".into(),
                    format!("{u:?} is not an http(s) URL"),
                );
            }
            if self.webhooks.secret.as_deref().is_none_or(|s| s.len() < 16) {
                p(
                    "webhooks.secret".into(),
                    "is required with webhooks.url, at least 16 characters (or TENANTGATE_WEBHOOK_SECRET)".into(),
                );
            }
        }
    }

    /// The upstream policy of this node: `admin.upstream_networks` and its own listeners
    /// (those that parse; `validate` reports the rest).
    pub fn upstream_policy(&self) -> UpstreamPolicy {
        let own = [
            ("proxy.http_listen", Some(&self.proxy.http_listen)),
            ("proxy.https_listen", self.proxy.https_listen.as_ref()),
            ("admin.listen", Some(&self.admin.listen)),
        ]
        .into_iter()
        .filter_map(|(key, addr)| {
            Some(Listener {
                key: key.into(),
                addr: addr?.parse().ok()?,
            })
        })
        .collect();
        UpstreamPolicy {
            allow: self
                .admin
                .upstream_networks
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect(),
            own,
        }
    }

    /// Read and parse a file, then apply environment overrides. Does not validate.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg = Config::from_toml(&text).map_err(|message| Error::Parse {
            path: path.to_owned(),
            message,
        })?;
        cfg.apply_env(|k| std::env::var(k).ok())?;
        Ok(cfg)
    }

    /// The built-in defaults plus environment overrides (no file).
    pub fn from_env_only() -> Result<Config> {
        let mut cfg = Config::default();
        cfg.apply_env(|k| std::env::var(k).ok())?;
        Ok(cfg)
    }

    /// Parse TOML text; the error message names the offending key and line.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    /// Apply `TENANTGATE_*` overrides read through `get`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<()> {
        if let Some(v) = get("TENANTGATE_HTTP_LISTEN") {
            self.proxy.http_listen = v;
        }
        if let Some(v) = get("TENANTGATE_HTTPS_LISTEN") {
            self.proxy.https_listen = (!v.is_empty()).then_some(v);
        }
        if let Some(v) = get("TENANTGATE_THREADS") {
            self.proxy.threads = v.parse().map_err(|_| {
                Error::Invalid(vec![Problem {
                    key: "TENANTGATE_THREADS".into(),
                    reason: format!("{v:?} is not a whole number"),
                }])
            })?;
        }
        if let Some(v) = get("TENANTGATE_ADMIN_LISTEN") {
            self.admin.listen = v;
        }
        if let Some(v) = get("TENANTGATE_LOG_LEVEL") {
            self.log.level = v;
        }
        if let Some(v) = get("TENANTGATE_ADMIN_TOKEN") {
            self.admin.token = Some(v);
        }
        if let Some(v) = get("TENANTGATE_PLATFORM_DOMAIN") {
            self.platform.domain = v;
        }
        if let Some(v) = get("TENANTGATE_STORE_PATH") {
            self.store.path = v.into();
        }
        if let Some(v) = get("TENANTGATE_STORE_URL") {
            self.store.url = (!v.is_empty()).then_some(v);
        }
        if let Some(v) = get("TENANTGATE_SNAPSHOT_PATH") {
            self.store.snapshot_path = v.into();
        }
        if let Some(v) = get("TENANTGATE_ENCRYPTION_KEY") {
            self.store.encryption_key = Some(v);
        }
        if let Some(v) = get("TENANTGATE_WEBHOOK_SECRET") {
            self.webhooks.secret = Some(v);
        }
        if let Some(v) = get("TENANTGATE_TENANT_DB_URL") {
            self.tenant_db.url = (!v.is_empty()).then_some(v);
        }
        Ok(())
    }

    /// Check everything that can be checked without touching certificate files, and build the
    /// route table. Every problem is reported, not just the first.
    pub fn validate(&self) -> Result<RouteTable> {
        let mut problems = Vec::new();
        let mut p = |key: String, reason: String| problems.push(Problem { key, reason });

        let http = parse_listen(&self.proxy.http_listen);
        if let Err(r) = &http {
            p("proxy.http_listen".into(), r.clone());
        }
        let https = self.proxy.https_listen.as_deref().map(parse_listen);
        if let Some(Err(r)) = &https {
            p("proxy.https_listen".into(), r.clone());
        }
        if let (Ok(a), Some(Ok(b))) = (&http, &https) {
            if a == b {
                p(
                    "proxy.https_listen".into(),
                    "is the same address as proxy.http_listen".into(),
                );
            }
        }
        match parse_listen(&self.admin.listen) {
            Err(r) => p("admin.listen".into(), r),
            Ok(admin) => {
                let clash = [
                    http.as_ref().ok(),
                    https.as_ref().and_then(|r| r.as_ref().ok()),
                ]
                .into_iter()
                .flatten()
                .any(|a| {
                    a.port() == admin.port()
                        && (a.ip() == admin.ip()
                            || a.ip().is_unspecified()
                            || admin.ip().is_unspecified())
                });
                if clash || matches!(admin.port(), 80 | 443) {
                    p(
                        "admin.listen".into(),
                        "the admin listener must not share a port with the proxy listeners or use 80/443".into(),
                    );
                }
            }
        }
        if self.proxy.threads == 0 || self.proxy.threads > 1024 {
            p("proxy.threads".into(), "must be between 1 and 1024".into());
        }
        for (i, n) in self.proxy.trusted_proxies.iter().enumerate() {
            if let Err(e) = n.parse::<IpNet>() {
                p(format!("proxy.trusted_proxies[{i}]"), e);
            }
        }
        for (key, v) in [
            (
                "proxy.tls_handshake_timeout_ms",
                self.proxy.tls_handshake_timeout_ms,
            ),
            ("proxy.connect_timeout_ms", self.proxy.connect_timeout_ms),
            ("proxy.read_timeout_ms", self.proxy.read_timeout_ms),
            ("proxy.write_timeout_ms", self.proxy.write_timeout_ms),
            (
                "proxy.upstream_idle_timeout_ms",
                self.proxy.upstream_idle_timeout_ms,
            ),
        ] {
            if v == 0 {
                p(key.into(), "must be greater than 0".into());
            }
        }
        if self.proxy.max_request_headers == 0 || self.proxy.max_request_headers > 256 {
            p(
                "proxy.max_request_headers".into(),
                "must be between 1 and 256 (the HTTP/1 parser's own limit)".into(),
            );
        }
        if self.proxy.max_request_header_bytes < 1024 {
            p(
                "proxy.max_request_header_bytes".into(),
                "must be at least 1024".into(),
            );
        }
        if self.proxy.upgrade_sock.is_empty() {
            p("proxy.upgrade_sock".into(), "must not be empty".into());
        }
        if !matches!(
            self.log.level.as_str(),
            "trace" | "debug" | "info" | "warn" | "error" | "off"
        ) && !self.log.level.contains('=')
        {
            p(
                "log.level".into(),
                format!(
                    "{:?} is not one of trace, debug, info, warn, error, off (or a target=level filter)",
                    self.log.level
                ),
            );
        }

        match HostPattern::parse(&self.platform.domain) {
            Ok(HostPattern::Exact(_)) => {}
            Ok(HostPattern::Wildcard(_)) => p(
                "platform.domain".into(),
                "must be a domain name, not a wildcard".into(),
            ),
            Err(e) => p(
                "platform.domain".into(),
                format!("{:?}: {e}", self.platform.domain),
            ),
        }
        for (i, n) in self.admin.upstream_networks.iter().enumerate() {
            if let Err(e) = n.parse::<IpNet>() {
                p(format!("admin.upstream_networks[{i}]"), e);
            }
        }
        if !(1..=24 * 60).contains(&self.admin.session_idle_minutes) {
            p(
                "admin.session_idle_minutes".into(),
                "must be between 1 and 1440".into(),
            );
        }
        if !(1..=24 * 30).contains(&self.admin.session_max_hours) {
            p(
                "admin.session_max_hours".into(),
                "must be between 1 and 720".into(),
            );
        }
        if !(1..=600).contains(&self.sleep.wake_timeout_seconds) {
            p(
                "sleep.wake_timeout_seconds".into(),
                "must be between 1 and 600".into(),
            );
        }
        if self.sleep.wake_hold_ms > self.sleep.wake_timeout_seconds * 1000 {
            p(
                "sleep.wake_hold_ms".into(),
                "must not be longer than sleep.wake_timeout_seconds".into(),
            );
        }
        if self
            .sleep
            .crawler_user_agents
            .iter()
            .any(|u| u.trim().is_empty())
        {
            p(
                "sleep.crawler_user_agents".into(),
                "an entry is empty (it would match every client)".into(),
            );
        }
        if !(1..=60).contains(&self.admin.traffic_report_seconds) {
            p(
                "admin.traffic_report_seconds".into(),
                "must be between 1 and 60".into(),
            );
        }
        if let Some(t) = &self.admin.token {
            if t.len() < 16 {
                p(
                    "admin.token".into(),
                    "must be at least 16 characters (use a random value)".into(),
                );
            }
        }
        if let Some(url) = &self.store.url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                p(
                    "store.url".into(),
                    "must start with postgres:// or postgresql://".into(),
                );
            }
            if self.store.encryption_key.is_none() && self.store.encryption_key_file.is_none() {
                p(
                    "store.encryption_key".into(),
                    "is required with store.url: every node of a fleet must use the same key (or set encryption_key_file / TENANTGATE_ENCRYPTION_KEY)".into(),
                );
            }
        }
        self.validate_domains(&mut p);
        if self.store.change_log_keep < 100 {
            p(
                "store.change_log_keep".into(),
                "must be at least 100 (fewer sends proxies to full resyncs after short outages)"
                    .into(),
            );
        }
        if self.store.pool_size == 0 || self.store.pool_size > 1000 {
            p(
                "store.pool_size".into(),
                "must be between 1 and 1000".into(),
            );
        }
        if let Some(k) = &self.store.encryption_key {
            if k.len() != 64 || !k.bytes().all(|b| b.is_ascii_hexdigit()) {
                p(
                    "store.encryption_key".into(),
                    "must be 64 hex digits (32 bytes), e.g. from `openssl rand -hex 32`".into(),
                );
            }
        }

        let defaults = self.certificates.iter().filter(|c| c.default).count();
        if defaults > 1 {
            p(
                "certificates".into(),
                format!("{defaults} certificates have default = true; at most one may"),
            );
        }
        for (i, c) in self.certificates.iter().enumerate() {
            for (j, n) in c.self_signed_names.iter().enumerate() {
                if let Err(e) = HostPattern::parse(n) {
                    p(
                        format!("certificates[{i}].self_signed_names[{j}]"),
                        format!("{n:?}: {e}"),
                    );
                }
            }
        }

        for (name, l) in &self.plans {
            if !valid_plan_name(name) {
                p(
                    format!("plans.{name}"),
                    "a plan name is 1 to 63 of a-z, 0-9, '-' and '_'".into(),
                );
            }
            for (field, reason) in l.problems() {
                p(format!("plans.{name}.{field}"), reason);
            }
        }

        let policy = self.upstream_policy();
        let mut table = RouteTable::default();
        let mut owners: HashMap<HostPattern, usize> = HashMap::new();
        let mut ids: HashMap<String, usize> = HashMap::new();
        for (i, r) in self.routes.iter().enumerate() {
            if r.hostnames.is_empty() {
                p(
                    format!("routes[{i}].hostnames"),
                    "must list at least one hostname".into(),
                );
            }
            if r.upstreams.is_empty() {
                p(
                    format!("routes[{i}].upstreams"),
                    "must list at least one upstream".into(),
                );
            }
            if let Some(h) = &r.hsts {
                if !route::valid_hsts(h) {
                    p(
                        format!("routes[{i}].hsts"),
                        format!("{h:?} is not max-age=<seconds> optionally followed by ; includeSubDomains and ; preload"),
                    );
                }
            }
            for (field, reason) in r.limits.iter().flat_map(Limits::problems) {
                p(format!("routes[{i}].limits.{field}"), reason);
            }
            if r.https_redirect && self.proxy.https_listen.is_none() {
                p(
                    format!("routes[{i}].https_redirect"),
                    "needs proxy.https_listen to be set".into(),
                );
            }
            let mut hostnames = Vec::with_capacity(r.hostnames.len());
            for (j, h) in r.hostnames.iter().enumerate() {
                match HostPattern::parse(h) {
                    Err(e) => p(format!("routes[{i}].hostnames[{j}]"), format!("{h:?}: {e}")),
                    Ok(pat) => {
                        if let Some(prev) = owners.insert(pat.clone(), i) {
                            let whose = if prev == i {
                                "this route".to_string()
                            } else {
                                format!("routes[{prev}]")
                            };
                            p(
                                format!("routes[{i}].hostnames[{j}]"),
                                format!("{h:?} is already listed by {whose}"),
                            );
                        }
                        hostnames.push(pat);
                    }
                }
            }
            let mut upstreams = Vec::with_capacity(r.upstreams.len());
            for (j, u) in r.upstreams.iter().enumerate() {
                match resolve_upstream(u) {
                    Ok(addr) => match policy.check(addr, net::is_local_address) {
                        Ok(()) => upstreams.push(Upstream { addr }),
                        Err(refusal) => p(
                            format!("routes[{i}].upstreams[{j}]"),
                            format!("{u:?}: {refusal}"),
                        ),
                    },
                    Err(reason) => p(
                        format!("routes[{i}].upstreams[{j}]"),
                        format!("{u:?}: {reason}"),
                    ),
                }
            }
            let id =
                r.id.clone()
                    .or_else(|| hostnames.first().map(HostPattern::to_display))
                    .unwrap_or_else(|| format!("route-{i}"));
            if let Some(prev) = ids.insert(id.clone(), i) {
                p(
                    format!("routes[{i}].id"),
                    format!("{id:?} is already the id of routes[{prev}]"),
                );
            }
            table.routes.push(Route {
                id,
                hostnames,
                upstreams,
                https_redirect: r.https_redirect,
                suspended: false,
                paths: Default::default(),
                hsts: r.hsts.clone(),
                limits: r.limits.filter(|l| !l.is_empty()),
                asleep: None,
            });
        }
        if problems.is_empty() {
            Ok(table)
        } else {
            Err(Error::Invalid(problems))
        }
    }
}

/// Whether `name` may name a plan: what the API accepts in `"plan"`.
pub fn valid_plan_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .map_err(|_| format!("{s:?} is not an IP:port address (e.g. \"0.0.0.0:80\")"))
}

/// Resolve `host:port` once, at load time, so the hot path only ever sees addresses.
fn resolve_upstream(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        if a.port() == 0 {
            return Err("port 0 is not a valid upstream port".into());
        }
        return Ok(a);
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err("must be host:port".into());
    };
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err("must be host:port with a port between 1 and 65535".into());
    }
    (host, port.parse::<u16>().unwrap_or(0))
        .to_socket_addrs()
        .map_err(|e| format!("does not resolve: {e}"))?
        .next()
        .ok_or_else(|| "resolves to no address".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(toml: &str) -> Vec<Problem> {
        let cfg = Config::from_toml(toml).expect("parses");
        match cfg.validate() {
            Err(Error::Invalid(p)) => p,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn empty_file_is_valid_with_defaults() {
        let cfg = Config::from_toml("").expect("parses");
        let t = cfg.validate().expect("valid");
        assert!(t.routes.is_empty());
        assert_eq!(cfg.proxy.http_listen, "0.0.0.0:80");
        assert_eq!(cfg.proxy.https_listen, None);
        assert_eq!(cfg.proxy.threads, 2);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let e = Config::from_toml("[proxy]\nhttp_lisen = \"x\"").unwrap_err();
        assert!(e.contains("http_lisen"), "{e}");
        let e =
            Config::from_toml("[[routes]]\nhostnames=[\"a\"]\nupstreams=[]\nfoo=1").unwrap_err();
        assert!(e.contains("foo"), "{e}");
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let p = problems(
            r#"
            [proxy]
            http_listen = "nonsense"
            threads = 0
            [admin]
            listen = "127.0.0.1:443"
            [[routes]]
            hostnames = ["ok.test", "bad_name.test"]
            upstreams = ["127.0.0.1:0", "127.0.0.1:9001"]
            https_redirect = true
            [[routes]]
            hostnames = ["OK.test"]
            upstreams = []
            "#,
        );
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "proxy.http_listen",
            "proxy.threads",
            "admin.listen",
            "routes[0].hostnames[1]",
            "routes[0].upstreams[0]",
            "routes[0].https_redirect",
            "routes[1].hostnames[0]",
            "routes[1].upstreams",
        ] {
            assert!(keys.contains(&k), "missing {k} in {keys:?}");
        }
        let dup = p
            .iter()
            .find(|p| p.key == "routes[1].hostnames[0]")
            .expect("dup");
        assert!(dup.reason.contains("routes[0]"), "{}", dup.reason);
    }

    #[test]
    fn builds_a_route_table() {
        let cfg = Config::from_toml(
            r#"
            [[routes]]
            hostnames = ["Shop1.Platform.test", "*.shop2.platform.test"]
            upstreams = ["127.0.0.1:9001", "localhost:9002"]
            "#,
        )
        .expect("parses");
        let t = cfg.validate().expect("valid");
        assert_eq!(t.routes[0].id, "shop1.platform.test");
        assert_eq!(
            t.routes[0].hostnames[1],
            HostPattern::Wildcard("shop2.platform.test".into())
        );
        assert_eq!(t.routes[0].upstreams.len(), 2);
        assert_eq!(t.routes[0].upstreams[1].addr.port(), 9002);
    }

    #[test]
    fn env_overrides_apply_and_bad_values_are_named() {
        let mut cfg = Config::default();
        cfg.apply_env(|k| match k {
            "TENANTGATE_HTTP_LISTEN" => Some("127.0.0.1:8080".into()),
            "TENANTGATE_THREADS" => Some("4".into()),
            _ => None,
        })
        .expect("applies");
        assert_eq!(cfg.proxy.http_listen, "127.0.0.1:8080");
        assert_eq!(cfg.proxy.threads, 4);
        let e = cfg
            .apply_env(|k| (k == "TENANTGATE_THREADS").then(|| "many".into()))
            .unwrap_err();
        assert!(e.to_string().contains("TENANTGATE_THREADS"));
    }

    #[test]
    fn two_defaults_are_refused() {
        let p = problems(
            r#"
            [[certificates]]
            cert_file = "a.pem"
            key_file = "a.key"
            default = true
            [[certificates]]
            cert_file = "b.pem"
            key_file = "b.key"
            default = true
            "#,
        );
        assert_eq!(p[0].key, "certificates");
    }
}
