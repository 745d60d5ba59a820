//! The operators' dashboard: server-rendered HTML (maud) on the admin listener at `/`, one
//! stylesheet and one small hand-written script embedded in the binary, live parts over
//! Server-Sent Events. Nothing is loaded from elsewhere, so it works air-gapped.
//!
//! Invariants:
//! - every page but `/login` and `/assets/*` needs a signed-in operator; without one a page
//!   redirects to `/login`;
//! - every state-changing request (any method but GET/HEAD) carries the session's CSRF
//!   token, checked here once for all of them before any handler runs (forms: the `csrf`
//!   field; scripts: `X-CSRF-Token`);
//! - every answer carries `Content-Security-Policy: default-src 'self'; frame-ancestors
//!   'none'` (no inline script or style is ever needed) and is never cached;
//! - everything from the store or a tenant is escaped by the templates (maud escapes every
//!   interpolation);
//! - actions call the admin API's own handlers with the operator as the actor, so the
//!   dashboard and the API cannot disagree on a rule, and the audit trail names the operator.

mod chart;
mod layout;
mod live;
pub mod operators;
mod pages;
pub mod session;
mod stores;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Form, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::api::ApiState;
use crate::store::operators::{Session, SessionLimits};

/// What the dashboard needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long sessions live.
    pub sessions: SessionLimits,
    /// How a store's hostnames are linked: `http` or `https`.
    pub store_scheme: &'static str,
    /// The port in store links (`None`: the scheme's default).
    pub store_port: Option<u16>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            sessions: SessionLimits {
                idle_ms: 30 * 60_000,
                absolute_ms: 12 * 3_600_000,
            },
            store_scheme: "http",
            store_port: None,
        }
    }
}

impl Settings {
    /// Settings from the config: session limits from `[admin]`, store links to the plain
    /// HTTP listener's port.
    pub fn from_config(cfg: &tenantgate_config::Config) -> Self {
        let port = cfg
            .proxy
            .http_listen
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .filter(|p| *p != 80);
        Settings {
            sessions: SessionLimits {
                idle_ms: i64::try_from(cfg.admin.session_idle_minutes)
                    .unwrap_or(30)
                    .saturating_mul(60_000),
                absolute_ms: i64::try_from(cfg.admin.session_max_hours)
                    .unwrap_or(12)
                    .saturating_mul(3_600_000),
            },
            store_scheme: "http",
            store_port: port,
        }
    }

    /// The URL a browser opens `hostname` at, through the proxy.
    pub fn store_url(&self, hostname: &str) -> String {
        match self.store_port {
            Some(p) => format!("{}://{hostname}:{p}/", self.store_scheme),
            None => format!("{}://{hostname}/", self.store_scheme),
        }
    }
}

/// The dashboard's routes, to merge beside the API.
pub fn router(state: ApiState) -> axum::Router<ApiState> {
    let signed_in = axum::Router::new()
        .route("/", get(pages::overview))
        .route("/stores", get(stores::list))
        .route("/stores/new", get(stores::new_form).post(stores::create))
        .route("/stores/slug-check", get(stores::slug_check))
        .route("/stores/{id}", get(stores::detail))
        .route("/stores/{id}/live", get(live::store))
        .route("/live/traffic", get(live::traffic))
        .route("/stores/{id}/{action}", post(stores::act))
        .route("/domains", get(pages::domains))
        .route(
            "/certificates",
            get(pages::certificates).post(pages::upload_certificate),
        )
        .route("/certificates/{id}/delete", post(pages::delete_certificate))
        .route("/audit", get(pages::audit))
        .route("/fleet", get(pages::fleet))
        .route("/logout", post(logout))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_session,
        ));
    axum::Router::new()
        .merge(signed_in)
        .route("/login", get(login_form).post(login))
        .route("/assets/dashboard.css", get(css))
        .route("/assets/dashboard.js", get(js))
        .layer(axum::middleware::from_fn(security_headers))
}

/// Headers on every dashboard answer: a strict CSP, no framing, no sniffing, no caching.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// The signed-in operator, or a redirect to `/login`; and the CSRF check of every
/// state-changing request.
async fn require_session(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    let session = match session::of_request(&s.store, req.headers(), s.dashboard.sessions).await {
        Ok(Some(session)) => session,
        Ok(None) => {
            let back = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .filter(|p| *p != "/" && req.method() == Method::GET)
                .map(|p| format!("?next={}", urlencode(p)))
                .unwrap_or_default();
            return Redirect::to(&format!("/login{back}")).into_response();
        }
        Err(e) => return layout::error_page(&e.into()),
    };
    let mut req = req;
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let (parts, body) = req.into_parts();
        let bytes = match axum::body::to_bytes(body, MAX_FORM).await {
            Ok(b) => b,
            Err(_) => return (StatusCode::PAYLOAD_TOO_LARGE, "form too large").into_response(),
        };
        let from_header = parts
            .headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let from_form = form_field(&bytes, "csrf");
        let ok = from_header
            .or(from_form)
            .is_some_and(|t| session::same_token(&t, &session.csrf));
        if !ok {
            return layout::refusal(
                StatusCode::FORBIDDEN,
                "This form has expired or did not come from this dashboard (its CSRF token is missing or wrong). Nothing was changed. Reload the page and try again.",
            );
        }
        req = Request::from_parts(parts, Body::from(bytes));
    }
    req.extensions_mut().insert(session);
    next.run(req).await
}

/// The value of `name` in an urlencoded form body.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Percent-encode `s` for a query value.
pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Debug, Default, Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

/// Where to go after signing in: a local path only (never another site).
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n,
        _ => "/",
    }
}

async fn login_form(
    State(s): State<ApiState>,
    headers: axum::http::HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    let next = q.next;
    if let Ok(Some(_)) = session::of_request(&s.store, &headers, s.dashboard.sessions).await {
        return Redirect::to(safe_next(next.as_deref())).into_response();
    }
    layout::login_page(next.as_deref(), None, "", StatusCode::OK)
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    username: String,
    password: String,
    next: Option<String>,
}

async fn login(
    State(s): State<ApiState>,
    client: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    headers: axum::http::HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let client = client.map(|c| c.0 .0.ip());
    let name = f.username.trim().to_lowercase();
    let next = f.next.as_deref();
    let wait = s.throttle.wait(&name, client);
    if !wait.is_zero() {
        return layout::login_page(
            next,
            Some(&format!(
                "Too many failed sign-ins. Try again in {} s.",
                wait.as_secs().max(1)
            )),
            &name,
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let stored = match s.store.operator_password(&name).await {
        Ok(h) => h,
        Err(e) => return layout::error_page(&e.into()),
    };
    let password = f.password;
    let hash = stored
        .clone()
        .unwrap_or_else(|| session::decoy_hash().to_owned());
    // argon2 is deliberately slow: keep it off the event loop.
    let ok = tokio::task::spawn_blocking(move || session::verify_password(&password, &hash))
        .await
        .unwrap_or(false)
        && stored.is_some();
    if !ok {
        s.throttle.failed(&name, client);
        tracing::warn!(operator = %name, client = ?client, "dashboard sign-in failed");
        return layout::login_page(
            next,
            Some("The name or the password is wrong."),
            &name,
            StatusCode::UNAUTHORIZED,
        );
    }
    s.throttle.succeeded(&name, client);
    let (cookie, _) = match session::start(&s.store, &name).await {
        Ok(c) => c,
        Err(e) => return layout::error_page(&e.into()),
    };
    let secure = is_tls(&headers);
    let mut resp = Redirect::to(safe_next(next)).into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(
        Some(&cookie),
        secure,
        s.dashboard.sessions,
    )) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// Whether the page came over TLS (a TLS-terminating front sets `X-Forwarded-Proto`; the
/// admin listener itself is plain TCP on a private address).
fn is_tls(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

async fn logout(
    State(s): State<ApiState>,
    headers: axum::http::HeaderMap,
    axum::Extension(who): axum::Extension<Session>,
) -> Response {
    if let Some(v) = session::cookie_value(&headers) {
        if let Err(e) = s.store.end_session(&session::cookie_hash(v)).await {
            return layout::error_page(&e.into());
        }
    }
    tracing::info!(operator = %who.operator, "dashboard sign-out");
    let mut resp = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(
        None,
        is_tls(&headers),
        s.dashboard.sessions,
    )) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

const CSS: &str = include_str!("assets/dashboard.css");
const JS: &str = include_str!("assets/dashboard.js");

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// The largest form the dashboard reads (a certificate chain with its key fits many times).
const MAX_FORM: usize = 512 * 1024;

/// How long the live stream waits between looks at the store.
pub(crate) const LIVE_POLL: Duration = Duration::from_millis(400);

/// An HTML fragment rendered to a response (used by pages).
pub(crate) fn html_response(status: StatusCode, markup: maud::Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}
