//! The admin listener's HTTP app: `/metrics` (Prometheus text), `/healthz`, `/readyz`, and,
//! on nodes that run the control plane, its admin API (an axum router handed in from outside,
//! so this crate never depends on control).
//!
//! It runs as its own Pingora service on `[admin] listen`, never on the proxy's ports, so it
//! takes part in graceful upgrades like the proxy listeners (the listening socket is handed
//! over with theirs). Requests are bridged into axum: the request body is read whole (at most
//! [`MAX_BODY`] bytes; 413 beyond); the answer is streamed frame by frame as axum produces it
//! (a body of known length with `Content-Length`, any other chunked), so Server-Sent Events
//! (the dashboard's live parts) reach the browser as they happen. Pingora's `ServeHttp` would
//! collect the whole answer first, so this app implements `HttpServerApp` itself. A stream
//! still open when the node begins to stop (graceful stop or upgrade) is ended at once; the
//! browser's `EventSource` reconnects, to the new process after an upgrade.
//!
//! A request that carries this platform's `Via` mark was forwarded by one of our proxies (a
//! tenant upstream that leads here, whatever the upstream policy missed): it is refused with
//! 403, never served.

use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Json;
use bytes::Bytes;
use http::{header, StatusCode};
use http_body_util::BodyExt;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use tenantgate_certs::CertificateStore;
use tower::ServiceExt;

use crate::metrics::Metrics;
use crate::router::Router;
use crate::service::forward::LoopMark;
use crate::sync::EdgeState;

/// Largest request body the admin listener accepts.
pub const MAX_BODY: usize = 1024 * 1024;

/// An extra readiness check: `Some(reason)` while the node is not ready (e.g. a control-plane
/// node whose store does not answer).
pub type ReadyProbe = Arc<dyn Fn() -> Option<String> + Send + Sync>;

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    router: Arc<Router>,
    certs: Arc<CertificateStore>,
    edge: Option<Arc<EdgeState>>,
    probe: Option<ReadyProbe>,
}

/// Serves the admin endpoints.
pub struct AdminApp {
    app: axum::Router,
    mark: LoopMark,
}

impl AdminApp {
    /// An app reporting on these components; `api` (the control plane's routes) is merged in;
    /// requests forwarded by the proxies of the platform at `platform_domain` are refused.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        platform_domain: &str,
        metrics: Arc<Metrics>,
        router: Arc<Router>,
        certs: Arc<CertificateStore>,
        edge: Option<Arc<EdgeState>>,
        probe: Option<ReadyProbe>,
        api: Option<axum::Router>,
    ) -> Self {
        let state = AdminState {
            metrics,
            router,
            certs,
            edge,
            probe,
        };
        let mut app = axum::Router::new()
            .route("/metrics", get(metrics_text))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(state);
        if let Some(api) = api {
            app = app.merge(api);
        }
        let app = app.fallback(|uri: http::Uri| async move {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no admin endpoint at {}", uri.path()),
            )
        });
        AdminApp {
            app,
            mark: LoopMark::new(platform_domain),
        }
    }
}

/// A JSON error body in the admin API's shape.
fn error(status: StatusCode, code: &str, message: &str) -> axum::response::Response {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    (status, Json(body)).into_response()
}

async fn metrics_text(State(s): State<AdminState>) -> impl IntoResponse {
    s.metrics.certificates.set(s.certs.len() as i64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn healthz(State(s): State<AdminState>) -> impl IntoResponse {
    let idx = s.router.load();
    Json(serde_json::json!({
        "status": "ok",
        "routes": idx.routes,
        "route_version": idx.version,
        "certificates": s.certs.len(),
    }))
}

/// Ready once a table is being served. A node serving its last-known-good snapshot because
/// the store is down stays ready (taking every proxy out of rotation when the database fails
/// would turn a control-plane outage into a traffic outage); the body says which. A node
/// with a probe (the control plane) is not ready while the probe reports a reason.
async fn readyz(State(s): State<AdminState>) -> axum::response::Response {
    if let Some(reason) = s.probe.as_ref().and_then(|p| p()) {
        let body = serde_json::json!({"ready": false, "store_error": reason});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    let body = match &s.edge {
        Some(edge) => {
            let st = edge.status();
            serde_json::json!({
                "ready": true,
                "source": st.source,
                "version": st.version,
                "snapshot_version": edge.snapshot_version(),
                "stored_routes": st.stored_routes,
                "stored_certificates": st.stored_certificates,
                "store_error": st.store_error,
            })
        }
        None => serde_json::json!({"ready": true, "source": "static", "version": 0}),
    };
    Json(body).into_response()
}

impl AdminApp {
    /// The answer to the request read into `session`.
    async fn answer(&self, session: &mut ServerSession) -> axum::response::Response {
        let head = session.req_header();
        if head
            .headers
            .get_all(header::VIA)
            .iter()
            .any(|v| self.mark.marks(v.as_bytes()))
        {
            session.set_keepalive(None);
            return error(
                StatusCode::FORBIDDEN,
                "forwarded_request",
                "the admin listener does not serve requests forwarded by the platform's proxy",
            );
        }
        let mut req = http::Request::builder()
            .method(head.method.clone())
            .uri(head.uri.clone());
        for (k, v) in &head.headers {
            req = req.header(k, v);
        }
        // The client's address, where axum handlers expect it (the dashboard slows failed
        // sign-ins per client address).
        if let Some(addr) = session.client_addr().and_then(|a| a.as_inet()) {
            req = req.extension(axum::extract::ConnectInfo(*addr));
        }
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_BODY {
                        session.set_keepalive(None);
                        return error(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "payload_too_large",
                            &format!("request bodies are limited to {MAX_BODY} bytes"),
                        );
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    session.set_keepalive(None);
                    return error(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        &format!("cannot read the request body: {e}"),
                    );
                }
            }
        }
        match req.body(Body::from(body)) {
            Ok(req) => match self.app.clone().oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            },
            Err(e) => error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
        }
    }
}

#[async_trait]
impl HttpServerApp for AdminApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match session.read_request().await {
            Ok(true) => {}
            Ok(false) | Err(_) => return None,
        }
        session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        let resp = self.answer(&mut session).await;
        let complete = write(&mut session, resp, shutdown.clone()).await;
        if !complete {
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(c) => c.map(|s| ReusedHttpStream::from_reusable_stream(s, settings)),
            Err(_) => None,
        }
    }
}

/// Write `resp` to the client, streaming its body; `false` when the answer could not be
/// written whole (the client left, the body failed, or the node began to stop during a
/// stream): the connection is then not reused.
async fn write(
    session: &mut ServerSession,
    resp: axum::response::Response,
    mut shutdown: ShutdownWatch,
) -> bool {
    let (parts, mut body) = resp.into_parts();
    let mut head: ResponseHeader = parts.into();
    let exact = axum::body::HttpBody::size_hint(&body).exact();
    let _ = head.remove_header(&header::TRANSFER_ENCODING);
    let _ = head.remove_header(&header::CONTENT_LENGTH);
    let framed = match exact {
        Some(len) => head.insert_header(header::CONTENT_LENGTH, len),
        None => head.insert_header(header::TRANSFER_ENCODING, "chunked"),
    };
    if framed.is_err() || session.write_response_header(Box::new(head)).await.is_err() {
        return false;
    }
    if exact == Some(0) {
        return session.finish_body().await.is_ok();
    }
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = shutdown.changed() => return false,
        };
        match frame {
            None => {
                return session
                    .write_response_body(Bytes::new(), true)
                    .await
                    .is_ok()
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if !data.is_empty() && session.write_response_body(data, false).await.is_err() {
                        return false;
                    }
                }
            }
            Some(Err(_)) => return false,
        }
    }
}
