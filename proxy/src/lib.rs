//! The Pingora hot path of tenantgate: host routing, TLS with SNI-selected certificates,
//! upstream choice with passive health, forwarding headers, our own error pages, metrics and
//! the access log.
//!
//! Invariants: nothing here awaits a store, DNS, Docker or ACME. Routes and certificates
//! arrive as snapshots ([`router::Router::replace`], [`CertificateStore::replace_all`]) or
//! as changes applied in place ([`router::Router::apply`], [`CertificateStore::apply`]); the
//! proxy never depends on the control plane.

#![deny(clippy::unwrap_used)]

pub mod access_log;
pub mod admin;
pub mod limits;
pub mod metrics;
pub mod router;
pub mod service;
pub mod sync;
pub mod traffic;

use std::sync::Arc;
use std::time::Duration;

use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;
use tenantgate_certs::{CertificateStore, SniResolver};
use tenantgate_config::Config;

use crate::admin::AdminApp;
use crate::limits::connections::{ConnectionLimits, EarlyRefusal};
use crate::metrics::Metrics;
use crate::router::Router;
use crate::service::drain::{drain_window, Draining};
use crate::service::http1::{Http1Service, TlsListener};
use crate::service::{EdgeProxy, ProxySettings};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be set up.
    #[error("cannot set up listener {addr}: {reason}")]
    Listener {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Pingora's server configuration, derived from ours (one source of truth).
pub fn server_conf(cfg: &Config) -> ServerConf {
    ServerConf {
        threads: cfg.proxy.threads,
        work_stealing: cfg.proxy.work_stealing,
        grace_period_seconds: Some(cfg.proxy.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(cfg.proxy.graceful_shutdown_timeout_seconds),
        upgrade_sock: cfg.proxy.upgrade_sock.clone(),
        pid_file: cfg.proxy.pid_file.clone(),
        upstream_keepalive_pool_size: cfg.proxy.upstream_keepalive_pool_size,
        ..ServerConf::default()
    }
}

/// Buffers of each client connection's TCP stream: none. Both engines read into buffers of
/// their own (the HTTP/1 loop's, rustls', h2's) and write whole heads at once, so Pingora's
/// default 64 KiB read and 1.4 KiB write buffers per connection would only copy bytes once
/// more and stay allocated on every idle connection (an idle keep-alive connection costs
/// ~16 KiB without them; benches/RESULTS.md).
fn client_buffers() -> L4BufferSettings {
    L4BufferSettings::unbuffered()
}

/// The shared pieces a running node is made of.
pub struct Edge {
    /// Routing table.
    pub router: Arc<Router>,
    /// Certificates served on the TLS listener.
    pub certs: Arc<CertificateStore>,
    /// ACME HTTP-01 and ownership-verification answers.
    pub challenges: Arc<tenantgate_certs::ChallengeStore>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Static plus stored state, when a store feeds this node.
    pub state: Option<Arc<sync::EdgeState>>,
    /// Extra readiness check for `/readyz`.
    pub probe: Option<admin::ReadyProbe>,
    /// Asks control to wake sleeping stores (`None`: held requests wait for a wake someone
    /// else asks for).
    pub waker: Option<Arc<dyn service::hold::Waker>>,
}

/// A task that runs beside the proxy in its own runtime (e.g. following the store) and is
/// dropped at shutdown.
pub struct BackgroundTask {
    task: std::sync::Mutex<Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>>,
}

impl BackgroundTask {
    /// Wrap a future; it is polled only once the server runs.
    pub fn new(fut: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        BackgroundTask {
            task: std::sync::Mutex::new(Some(Box::pin(fut))),
        }
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for BackgroundTask {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            tokio::select! {
                _ = task => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}

/// Add the admin listener alone (a control-plane node without proxy listeners).
pub fn add_admin_only(server: &mut Server, cfg: &Config, edge: &Edge, api: Option<axum::Router>) {
    let mut admin = Service::new(
        "tenantgate admin".to_string(),
        AdminApp::new(
            &cfg.platform.domain,
            edge.metrics.clone(),
            edge.router.clone(),
            edge.certs.clone(),
            edge.state.clone(),
            edge.probe.clone(),
            api,
        ),
    );
    admin.add_tcp(&cfg.admin.listen);
    server.add_service(admin);
}

/// Add the proxy (HTTP and, when configured, HTTPS) and admin services to `server`; `api`
/// (the control plane's admin API, if this node runs one) joins the admin listener.
pub fn add_services(
    server: &mut Server,
    cfg: &Config,
    edge: &Edge,
    api: Option<axum::Router>,
) -> Result<()> {
    let https_port = cfg
        .proxy
        .https_listen
        .as_deref()
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.port());
    let settings = ProxySettings {
        connect_timeout: Duration::from_millis(cfg.proxy.connect_timeout_ms),
        read_timeout: Duration::from_millis(cfg.proxy.read_timeout_ms),
        write_timeout: Duration::from_millis(cfg.proxy.write_timeout_ms),
        idle_timeout: Duration::from_millis(cfg.proxy.upstream_idle_timeout_ms),
        unhealthy_cooldown: Duration::from_secs(cfg.proxy.unhealthy_cooldown_seconds),
        max_header_bytes: cfg.proxy.max_request_header_bytes,
        max_headers: cfg.proxy.max_request_headers,
        https_port,
        access_log: cfg.log.access_log.then(|| match &cfg.log.access_log_path {
            Some(path) => access_log::Destination::File(path.clone()),
            None => access_log::Destination::Stderr,
        }),
        pool_per_route: cfg.proxy.upstream_pool == tenantgate_config::UpstreamPool::Route,
        http1_pipelining: cfg.proxy.http1_pipelining,
        allow_underscores_in_headers: cfg.proxy.allow_underscores_in_headers,
        trusted_proxies: cfg
            .proxy
            .trusted_proxies
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect(),
    };
    let proxy = EdgeProxy::new(
        edge.router.clone(),
        edge.challenges.clone(),
        settings,
        edge.metrics.clone(),
        &cfg.platform.domain,
    )
    .with_holds(service::hold::Holds::new(&cfg.sleep, edge.waker.clone()));
    let mut app = pingora::proxy::HttpProxy::new(proxy.clone(), server.configuration.clone());
    app.handle_init_modules();
    // HTTP/2 header blocks are bounded like HTTP/1 heads (RFC 9113 counts 32 bytes per field
    // beside its name and value), so a client cannot make us decode more than the admission
    // step would accept.
    let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
    h2.max_header_list_size(
        u32::try_from(cfg.proxy.max_request_header_bytes + 32 * cfg.proxy.max_request_headers)
            .unwrap_or(u32::MAX),
    );
    app.h2_options = Some(h2);
    let window = drain_window(cfg.proxy.grace_period_seconds);
    let app = Draining::new(app, window);
    let limits = Arc::new(ConnectionLimits::new(
        cfg.proxy.max_connections,
        cfg.proxy.max_connections_per_client,
        proxy.settings().trusted_proxies.to_vec(),
        edge.metrics.connections.clone(),
    ));
    // TLS connections arrive on a plain listener and get their handshake from our own app:
    // so they are counted (and refused) before it, and it is bounded in time.
    let tls = match &cfg.proxy.https_listen {
        Some(addr) => {
            let err = |reason: String| Error::Listener {
                addr: addr.clone(),
                reason,
            };
            let mut tls = TlsSettings::with_callbacks(Box::new(service::tls::SniCapture))
                .map_err(|e| err(e.to_string()))?;
            tls.set_cert_resolver(Arc::new(SniResolver::new(edge.certs.clone())));
            tls.enable_h2();
            Some(TlsListener {
                addr: addr
                    .parse()
                    .map_err(|_| err("not an ip:port address".into()))?,
                acceptor: Arc::new(tls.build()),
                timeout: Duration::from_millis(cfg.proxy.tls_handshake_timeout_ms),
            })
        }
        None => None,
    };
    // Plain HTTP/1.1 requests take the fast path (when enabled); it hands everything else,
    // and every request when disabled, to the Pingora proxy.
    let fast = Http1Service::new(
        proxy,
        app,
        cfg.proxy.http1_fast_path,
        cfg.proxy.threads,
        cfg.proxy.upstream_keepalive_pool_size,
        window,
    )
    .with_listeners(limits.clone(), tls);
    let mut svc = Service::new("tenantgate proxy".to_string(), fast);
    svc.add_listener(ListenerConfig::tcp(&cfg.proxy.http_listen).l4_buffer(client_buffers()));
    if let Some(addr) = &cfg.proxy.https_listen {
        svc.add_listener(ListenerConfig::tcp(addr).l4_buffer(client_buffers()));
    }
    svc.set_connection_filter(Arc::new(EarlyRefusal(limits)));
    server.add_service(svc);
    add_admin_only(server, cfg, edge, api);
    Ok(())
}
