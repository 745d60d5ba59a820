//! The admin listener's HTTP app: `/metrics` (Prometheus text) and `/healthz`. It runs as its
//! own Pingora service on `[admin] listen`, never on the proxy's ports. The control plane's
//! admin API joins this listener in a later step.

use std::sync::Arc;

use async_trait::async_trait;
use http::{header, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use tenantgate_certs::CertificateStore;

use crate::metrics::Metrics;
use crate::router::Router;

/// Serves the admin endpoints.
pub struct AdminApp {
    metrics: Arc<Metrics>,
    router: Arc<Router>,
    certs: Arc<CertificateStore>,
}

impl AdminApp {
    /// An app reporting on these components.
    pub fn new(metrics: Arc<Metrics>, router: Arc<Router>, certs: Arc<CertificateStore>) -> Self {
        AdminApp {
            metrics,
            router,
            certs,
        }
    }
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = r.body().len().to_string().parse() {
        r.headers_mut().insert(header::CONTENT_LENGTH, v);
    }
    r
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path();
        match path {
            "/metrics" => {
                self.metrics.certificates.set(self.certs.len() as i64);
                reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    self.metrics.render(),
                )
            }
            "/healthz" => {
                let idx = self.router.load();
                let body = serde_json::json!({
                    "status": "ok",
                    "routes": idx.routes,
                    "route_version": idx.version,
                    "certificates": self.certs.len(),
                });
                reply(
                    StatusCode::OK,
                    "application/json",
                    body.to_string().into_bytes(),
                )
            }
            _ => {
                let body = serde_json::json!({"error": {"code": "not_found", "message": format!("no admin endpoint at {path}")}});
                reply(
                    StatusCode::NOT_FOUND,
                    "application/json",
                    body.to_string().into_bytes(),
                )
            }
        }
    }
}
