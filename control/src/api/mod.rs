//! The admin API (axum, JSON, OpenAPI 3 from the code via utoipa): tenants, upstreams,
//! certificates, the route table as proxies see it, and the audit trail. It is served on
//! `[admin] listen` beside `/metrics` and `/healthz`, never on the proxy's ports.
//!
//! Invariants: every `/v1/` route except the OpenAPI document requires the bearer token,
//! compared in constant time, or an operator's dashboard session, which a state-changing
//! request must back with the session's CSRF token (`X-CSRF-Token`); the audit trail names
//! the operator of a session, `admin-api` for the token; the document is generated from the same router that serves
//! requests (`utoipa_axum::routes!`), so the two cannot drift; every error is
//! `{"error": {"code", "message"}}` with its status.

pub(crate) mod certificates;
pub(crate) mod domains;
pub mod error;
pub mod input;
pub(crate) mod tenants;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use tenantgate_certs::SealingKey;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::domains::Domains;
use crate::lifecycle::Lifecycle;
use crate::model::AuditEvent;
use crate::store::Store;
pub use error::{ApiError, ApiJson};
pub use input::InputRules;

/// Who the audit trail names for API calls made with the bearer token.
pub const ACTOR: &str = "admin-api";

/// Who makes a request: what the audit trail names for its changes. Set by the
/// authentication layer (`admin-api` for the bearer token, the operator's name for a
/// dashboard session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(pub String);

impl Actor {
    /// The name the audit trail records.
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Actor {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Actor>()
            .cloned()
            .unwrap_or_else(|| Actor(ACTOR.to_owned())))
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The store.
    pub store: Arc<Store>,
    /// Input rules of this deployment.
    pub rules: Arc<InputRules>,
    /// Seals uploaded private keys.
    pub sealing: Arc<SealingKey>,
    /// Custom domains.
    pub domains: Arc<Domains>,
    /// Tenants provisioned from blueprints.
    pub lifecycle: Arc<Lifecycle>,
    /// SHA-256 of the bearer token.
    token_digest: [u8; 32],
    /// The dashboard's settings (sessions, links to stores).
    pub dashboard: Arc<crate::dashboard::Settings>,
    /// Failed dashboard sign-ins.
    pub throttle: Arc<crate::dashboard::session::Throttle>,
}

impl ApiState {
    /// State for the API with this token.
    pub fn new(
        store: Arc<Store>,
        rules: InputRules,
        sealing: Arc<SealingKey>,
        domains: Arc<Domains>,
        lifecycle: Arc<Lifecycle>,
        token: &str,
    ) -> Self {
        ApiState {
            store,
            rules: Arc::new(rules),
            sealing,
            domains,
            lifecycle,
            token_digest: digest(token.as_bytes()),
            dashboard: Arc::new(crate::dashboard::Settings::default()),
            throttle: Arc::default(),
        }
    }

    /// The same state with these dashboard settings.
    pub fn with_dashboard(mut self, settings: crate::dashboard::Settings) -> Self {
        self.dashboard = Arc::new(settings);
        self
    }
}

fn digest(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Equal digests, in time independent of where they differ (the digests also hide the
/// token's length).
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_auth(State(s): State<ApiState>, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    match presented {
        Some(tok) if same(&digest(tok.trim().as_bytes()), &s.token_digest) => {
            req.extensions_mut().insert(Actor(ACTOR.to_owned()));
            return next.run(req).await;
        }
        Some(_) => return unauthorized("the bearer token is not valid"),
        None => {}
    }
    let session =
        match crate::dashboard::session::of_request(&s.store, req.headers(), s.dashboard.sessions)
            .await
        {
            Ok(Some(session)) => session,
            Ok(None) => return unauthorized("send Authorization: Bearer <admin token>"),
            Err(e) => return ApiError::from(e).into_response(),
        };
    let safe = matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    let csrf_ok = req
        .headers()
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| crate::dashboard::session::same_token(v, &session.csrf));
    if !safe && !csrf_ok {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf_failed",
            "a dashboard session changes nothing without its CSRF token (X-CSRF-Token)",
        )
        .into_response();
    }
    req.extensions_mut().insert(Actor(session.operator));
    next.run(req).await
}

fn unauthorized(message: &str) -> Response {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    r
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tenantgate admin API",
        description = "Tenants, hostnames, upstreams and certificates of a tenantgate edge. Every change reaches every proxy without a reload."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags((name = "tenants"), (name = "domains"), (name = "certificates"), (name = "routes"))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The API's routes and the OpenAPI document describing exactly them.
fn api_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(tenants::create_tenant, tenants::list_tenants))
        .routes(routes!(
            tenants::get_tenant,
            tenants::patch_tenant,
            tenants::delete_tenant
        ))
        .routes(routes!(tenants::put_upstreams))
        .routes(routes!(tenants::get_limits, tenants::put_limits))
        .routes(routes!(tenants::suspend_tenant))
        .routes(routes!(tenants::resume_tenant))
        .routes(routes!(tenants::redeploy_tenant))
        .routes(routes!(tenants::scale_tenant))
        .routes(routes!(
            domains::attach_domain,
            domains::list_tenant_domains
        ))
        .routes(routes!(domains::list_domains))
        .routes(routes!(domains::get_domain, domains::delete_domain))
        .routes(routes!(domains::refresh_domain))
        .routes(routes!(domains::block_domain))
        .routes(routes!(domains::unblock_domain))
        .routes(routes!(
            certificates::create_certificate,
            certificates::list_certificates
        ))
        .routes(routes!(certificates::delete_certificate))
        .routes(routes!(get_routes))
        .routes(routes!(list_audit))
        .routes(routes!(list_nodes))
}

/// The OpenAPI document of the admin API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_routes().into_openapi()
}

/// The admin API as an axum router (state applied), to merge into the admin listener.
pub fn router(state: ApiState) -> axum::Router {
    let (api, doc) = api_routes().split_for_parts();
    let doc = Arc::new(doc);
    let api = api.layer(axum::middleware::from_fn_with_state(
        state.clone(),
        require_auth,
    ));
    axum::Router::new()
        .merge(api)
        .route(
            "/v1/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { Json(doc.as_ref().clone()) }
            }),
        )
        .merge(crate::dashboard::router(state.clone()))
        .with_state(state)
}

/// A listing's query, or a 400 saying what is wrong with it.
fn listing_query<T>(
    query: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    query
        .map(|q| q.0)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))
}

/// A listing's page size: `limit` (1-500) or 50.
fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        Some(l) if !(1..=500).contains(&l) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("limit {l}: must be between 1 and 500"),
        )),
        l => Ok(l.unwrap_or(50)),
    }
}

/// The route table as proxies see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoutesView {
    /// Change-log version of this table.
    pub version: u64,
    /// Stored routes.
    pub routes: Vec<RouteView>,
}

/// One route.
#[derive(Debug, Serialize, ToSchema)]
pub struct RouteView {
    /// Route id (the tenant id).
    pub id: String,
    /// Hostnames it serves.
    pub hostnames: Vec<String>,
    /// Backends.
    pub upstreams: Vec<String>,
    /// Answered with the 503 page.
    pub suspended: bool,
    /// The limits every proxy enforces: the tenant's own over its plan's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<tenantgate_config::Limits>,
}

/// The stored route table, with its version.
#[utoipa::path(get, path = "/v1/routes", tag = "routes",
    responses((status = 200, body = RoutesView), (status = 401, body = error::ErrorBody), (status = 503, body = error::ErrorBody)))]
async fn get_routes(State(s): State<ApiState>) -> Result<Json<RoutesView>, ApiError> {
    let snap = s.store.snapshot().await?;
    Ok(Json(RoutesView {
        version: snap.version,
        routes: snap
            .routes
            .into_iter()
            .map(|r| RouteView {
                id: r.id,
                hostnames: r.hostnames.iter().map(|h| h.to_display()).collect(),
                upstreams: r.upstreams.iter().map(|u| u.addr.to_string()).collect(),
                suspended: r.suspended,
                limits: r.limits,
            })
            .collect(),
    }))
}

/// The nodes of the fleet as they last reported themselves (every node heartbeats every
/// 5 s; `live` when it did within 20 s; silent ones are forgotten after an hour).
#[utoipa::path(get, path = "/v1/nodes", tag = "routes",
    responses((status = 503, body = error::ErrorBody), (status = 200, body = Vec<crate::model::NodeInfo>), (status = 401, body = error::ErrorBody)))]
async fn list_nodes(
    State(s): State<ApiState>,
) -> Result<Json<Vec<crate::model::NodeInfo>>, ApiError> {
    let within = i64::try_from(crate::upkeep::LIVE_WITHIN.as_millis()).unwrap_or(i64::MAX);
    Ok(Json(s.store.nodes(within).await?))
}

/// The newest audit events.
#[utoipa::path(get, path = "/v1/audit", tag = "routes",
    responses((status = 503, body = error::ErrorBody), (status = 200, body = Vec<AuditEvent>), (status = 401, body = error::ErrorBody)))]
async fn list_audit(State(s): State<ApiState>) -> Result<Json<Vec<AuditEvent>>, ApiError> {
    Ok(Json(s.store.audit_events(100).await?))
}
