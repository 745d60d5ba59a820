//! The Pingora engine: the `ProxyHttp` phases a request goes through when the fast path does
//! not serve it (HTTP/2, request bodies, upgrades, and every answer of our own).
//!
//! Phase contract (see Pingora's `proxy_trait.rs` for the engine's side):
//! - `request_filter`: turns the request into facts and takes the verdict: the one the
//!   HTTP/1 loop already reached ([`Decided`], carried in the connection context), or the
//!   admission step's for an HTTP/2 request. Every answer of our own is written here or in
//!   `fail_to_proxy`, never by a tenant.
//! - `upstream_peer`: round robin over the verdict's upstreams, pooled per route.
//! - `fail_to_connect`: passive health — the upstream sits out a cooldown and the request is
//!   retried on another upstream (safe for any method: nothing was sent yet).
//! - `upstream_request_filter`: the header policy of [`super::forward`]: forwarding headers
//!   and our `Via` entry set, client copies replaced, underscore names dropped, one canonical
//!   `Content-Length`. Hop-by-hop and Connection-named headers are stripped by Pingora's
//!   standard upstream request policy, which keeps WebSocket upgrades intact.
//! - `response_filter`: request id, the route's HSTS on TLS; a refused upgrade closes the
//!   connection (the HTTP/1 loop never takes back a connection Pingora may have read from).
//! - `logging`: metrics and the access log, written once per request.

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora::ErrorSource;
use pingora::ErrorType;
use tenantgate_config::host::normalize_into;

use super::decide::{
    Answer, Coding, ConnectionFacts, HostFact, Malformed, RequestFacts, SniFact, Target, Verdict,
};
use super::forward::{self, tokens, ForwardedValues, Length, Name};
use super::tls::Sni;
use super::{hold, pages, AccessRecord, Decided, EdgeProxy, RequestContext};
use crate::limits::requests::Limit;
use crate::metrics::{Held, UpstreamErrorKind};
use crate::router::RouteEntry;
use std::sync::Arc;
use tenantgate_config::SleepLevel;

/// The header our own answer carries beside the usual ones.
enum Added {
    None,
    /// A redirect's `Location` (and no body).
    Location(String),
    /// `Retry-After`, in seconds.
    RetryAfter(u32),
}

impl EdgeProxy {
    /// Answer the request ourselves with our page for `answer`; `close` ends the connection
    /// after it.
    async fn answer(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
        answer: Answer,
        added: Added,
        close: bool,
    ) -> Result<bool> {
        let req = session.req_header();
        let html = pages::wants_html(req.headers.get(header::ACCEPT).map(HeaderValue::as_bytes));
        let (content_type, body) = pages::answer_body(answer, html);
        if close {
            session.set_keepalive(None);
        }
        self.respond(session, ctx, answer.status(), content_type, body, added)
            .await
    }

    /// Answer with our page for `status` (an error Pingora met reading the request) and
    /// close the connection.
    async fn status_page(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
        status: u16,
    ) -> Result<bool> {
        let req = session.req_header();
        let html = pages::wants_html(req.headers.get(header::ACCEPT).map(HeaderValue::as_bytes));
        let (content_type, body) = pages::body(status, html);
        session.set_keepalive(None);
        self.respond(session, ctx, status, content_type, body, Added::None)
            .await
    }

    /// Answer `308` to `location`, without a body.
    async fn redirect(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
        location: String,
    ) -> Result<bool> {
        let content_type = "text/plain; charset=utf-8";
        let added = Added::Location(location);
        self.respond(session, ctx, 308, content_type, Bytes::new(), added)
            .await
    }

    /// Answer a live challenge: its exact body as plain text.
    async fn challenge(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
        body: &str,
    ) -> Result<bool> {
        let body = Bytes::copy_from_slice(body.as_bytes());
        self.respond(session, ctx, 200, "text/plain", body, Added::None)
            .await
    }

    /// Write a complete response of our own (no body for HEAD).
    async fn respond(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
        status: u16,
        content_type: &'static str,
        body: Bytes,
        added: Added,
    ) -> Result<bool> {
        let head = session.req_header().method == http::Method::HEAD;
        let mut resp = ResponseHeader::build(status, Some(7))?;
        resp.insert_header(header::CONTENT_TYPE, content_type)?;
        resp.insert_header(header::CONTENT_LENGTH, body.len())?;
        resp.insert_header(header::CACHE_CONTROL, "no-store")?;
        match added {
            Added::None => {}
            Added::Location(l) => resp.insert_header(header::LOCATION, l)?,
            Added::RetryAfter(s) => resp.insert_header(header::RETRY_AFTER, s)?,
        }
        if let Some(id) = &ctx.request_id {
            resp.insert_header("x-request-id", id.clone())?;
        }
        if let Some(v) = self.hsts(ctx) {
            resp.insert_header(header::STRICT_TRANSPORT_SECURITY, v)?;
        }
        let end = head || body.is_empty();
        session.write_response_header(Box::new(resp), end).await?;
        if !end {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(true)
    }

    /// The route's `Strict-Transport-Security`, on TLS only (RFC 6797 §7.2).
    fn hsts<'c>(&self, ctx: &'c RequestContext) -> Option<&'c str> {
        ctx.route.as_ref().filter(|_| ctx.tls)?.hsts()
    }

    /// Read the request's facts into `ctx` and take its verdict: `handed` (the HTTP/1
    /// loop's), else the admission step's. Called again for a held request once the table
    /// changed.
    fn judge(
        &self,
        session: &Session,
        ctx: &mut RequestContext,
        handed: Option<Verdict>,
    ) -> Verdict {
        let ssl = session.digest().and_then(|d| d.ssl_digest.as_ref());
        ctx.tls = ssl.is_some();
        // Borrowed, not cloned: no allocation per TLS request.
        let sni = ssl
            .and_then(|s| s.extension.get::<Sni>())
            .and_then(|s| s.0.as_deref());
        let req = session.req_header();
        if let Some(id) = req
            .headers
            .get("x-request-id")
            .filter(|v| forward::valid_request_id(v.as_bytes()))
        {
            ctx.request_id = Some(id.clone());
        }
        let (mut count, mut bytes, mut hosts) = (0usize, 0usize, 0usize);
        let (mut looped, mut length, mut coding) = (false, Length::Absent, Coding::None);
        let mut forwarded_for = None;
        for (k, v) in &req.headers {
            count += 1;
            bytes += k.as_str().len() + v.len();
            match Name::of(k.as_str().as_bytes()) {
                Name::Host => hosts += 1,
                Name::Via => looped |= self.loop_mark().marks(v.as_bytes()),
                Name::ContentLength => length = forward::content_length(length, v.as_bytes()),
                Name::TransferEncoding => {
                    let mut t = tokens(v.as_bytes());
                    coding = match (coding, t.next(), t.next()) {
                        (Coding::None, Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => {
                            Coding::Chunked
                        }
                        _ => Coding::Invalid,
                    };
                }
                Name::Upgrade => ctx.upgrade = true,
                Name::XForwardedFor => forwarded_for = Some(v.as_bytes()),
                _ => {}
            }
        }
        ctx.length = length;
        // HTTP/2 `:authority` and HTTP/1 absolute-form targets carry the host in the URI.
        let raw = req
            .uri
            .authority()
            .map(|a| a.as_str().as_bytes())
            .or_else(|| req.headers.get(header::HOST).map(HeaderValue::as_bytes));
        let host = match (hosts, raw) {
            (n, _) if n > 1 => HostFact::Duplicate,
            (_, None) => HostFact::Missing,
            (_, Some(raw)) => match normalize_into(raw, &mut ctx.host) {
                Ok(h) => HostFact::Name(h),
                Err(_) => HostFact::Invalid,
            },
        };
        let path = req.uri.path();
        let target = if path.starts_with('/') {
            Target::Origin
        } else if path == "*" && req.method == http::Method::OPTIONS {
            Target::Asterisk
        } else {
            Target::Invalid
        };
        match handed {
            Some(v) => v,
            None => {
                let mut sni_buf = tenantgate_config::host::HostBuf::default();
                let sni = match sni {
                    None => SniFact::Absent,
                    Some(s) => match normalize_into(s.as_bytes(), &mut sni_buf) {
                        Ok(n) => SniFact::Name(n),
                        Err(_) => SniFact::Invalid,
                    },
                };
                let facts = RequestFacts {
                    method: req.method.as_str(),
                    host,
                    target,
                    path,
                    path_and_query: req.uri.path_and_query().map_or("/", |p| p.as_str()),
                    header_count: count,
                    header_bytes: bytes,
                    looped,
                    length,
                    coding,
                    forwarded_for,
                    at: Some(ctx.start),
                };
                let peer = session
                    .client_addr()
                    .and_then(|a| a.as_inet())
                    .map(|a| a.ip());
                self.decide(
                    &facts,
                    &ConnectionFacts {
                        tls: ctx.tls,
                        sni,
                        peer,
                    },
                )
            }
        }
    }

    /// Hold a request for a sleeping store: ask control to wake it, wait for the routing
    /// table to change and decide again. Returns the verdict once the store is awake (any
    /// verdict but another hold), or our answer: a crawler turned away from a stopped store,
    /// the waking page for a browser navigation past `wake_hold_ms`, 503 at the timeout.
    /// The request's body is not read meanwhile.
    async fn hold(
        &self,
        session: &Session,
        ctx: &mut RequestContext,
        mut route: Arc<RouteEntry>,
        level: SleepLevel,
    ) -> Verdict {
        let holds = self.holds();
        let metrics = self.metrics();
        let req = session.req_header();
        let ua = req
            .headers
            .get(header::USER_AGENT)
            .map(HeaderValue::as_bytes);
        let answer = |answer, route, retry_after| Verdict::Answer {
            answer,
            route: Some(route),
            retry_after,
        };
        if holds.turns_away(level, ua) {
            metrics.held(Held::Crawler);
            return answer(Answer::Asleep, route, hold::RETRY_CRAWLER);
        }
        let navigation = req.method == http::Method::GET
            && pages::wants_html(req.headers.get(header::ACCEPT).map(HeaderValue::as_bytes));
        let started = tokio::time::Instant::now();
        let give_up = started + holds.timeout;
        let page_at = navigation.then(|| started + holds.hold_html);
        // Subscribed before deciding again, so no swap falls between the two.
        let mut swaps = self.router().watch();
        loop {
            match self.judge(session, ctx, None) {
                Verdict::Hold { route: r, .. } => route = r,
                woken => {
                    metrics.held(Held::Woken);
                    metrics
                        .held_seconds
                        .observe(started.elapsed().as_secs_f64());
                    return woken;
                }
            }
            let now = tokio::time::Instant::now();
            if page_at.is_some_and(|p| now >= p) {
                metrics.held(Held::WakingPage);
                return answer(Answer::Waking, route, hold::RETRY_WAKING);
            }
            if now >= give_up {
                metrics.held(Held::Timeout);
                metrics
                    .held_seconds
                    .observe(started.elapsed().as_secs_f64());
                return answer(Answer::WakeTimeout, route, hold::RETRY_TIMEOUT);
            }
            if holds.ask(&route) {
                metrics.wakes_asked.inc();
            }
            let until = page_at
                .map_or(give_up, |p| p.min(give_up))
                .min(now + hold::ASK_AGAIN);
            tokio::select! {
                changed = swaps.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep_until(until).await;
                    }
                }
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }
}

/// `Via`'s spelling of the request's protocol.
fn via_version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        _ => "1.1",
    }
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestContext;

    fn new_ctx(&self) -> RequestContext {
        RequestContext::default()
    }

    /// The HTTP/1 loop hands each request over in a fresh session whose connection context
    /// carries the verdict ([`Decided`]); Pingora delivers it here.
    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        ctx: &mut RequestContext,
        prev: Box<dyn std::any::Any + Send + Sync>,
    ) {
        if let Ok(d) = prev.downcast::<Decided>() {
            ctx.handed = Some(d.verdict);
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> Result<bool> {
        let handed = ctx.handed.take();
        let mut verdict = self.judge(session, ctx, handed);
        if let Verdict::Hold { route, level } = verdict {
            // Boxed: its timers and waits would otherwise make every request's future
            // larger (moved and zeroed per request and per HTTP/2 stream), for a rare path.
            verdict = Box::pin(self.hold(session, ctx, route, level)).await;
        }
        match verdict {
            Verdict::Proxy {
                route,
                upstreams,
                client,
                permit,
                active,
            } => {
                ctx.route = Some(route);
                ctx.upstreams = upstreams;
                ctx.client = client;
                ctx.permit = permit;
                ctx.active = Some(active);
                Ok(false)
            }
            // `hold` decides again until the verdict is another.
            Verdict::Hold { route, .. } => {
                ctx.route = Some(route);
                ctx.answer = Some(Answer::Internal);
                ctx.outcome = Answer::Internal.name();
                self.answer(session, ctx, Answer::Internal, Added::None, false)
                    .await
            }
            Verdict::Challenge(body) => {
                ctx.outcome = "challenge";
                self.challenge(session, ctx, &body).await
            }
            Verdict::Answer {
                answer,
                route,
                retry_after,
            } => {
                self.count_answer(answer, route.as_deref());
                ctx.route = route;
                ctx.answer = Some(answer);
                ctx.outcome = answer.name();
                let added = if retry_after > 0 {
                    Added::RetryAfter(retry_after)
                } else {
                    Added::None
                };
                self.answer(session, ctx, answer, added, answer.closes())
                    .await
            }
            Verdict::Redirect { route, location } => {
                ctx.route = Some(route);
                ctx.outcome = "redirect";
                self.redirect(session, ctx, location).await
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestContext,
    ) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route chosen"))?;
        let router = self.router();
        let Some(i) = route.pick(router.now_ms(), ctx.tried, ctx.upstreams.clone()) else {
            let mut e = Error::explain(
                ErrorType::ConnectNoRoute,
                "every upstream of the route failed",
            );
            e.esource = ErrorSource::Upstream;
            return Err(e);
        };
        ctx.upstream = Some(i);
        if i < 64 {
            ctx.tried |= 1 << i;
        }
        let addr = route.upstream(i).ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "upstream index out of range")
        })?;
        if let Some(r) = router.reaches_own_listener(addr) {
            tracing::warn!(
                route = route.id(),
                rule = r.rule.as_str(),
                "upstream refused at connect: {}",
                r.reason
            );
            let mut e = Error::explain(ErrorType::ConnectProxyFailure, "forbidden upstream");
            e.esource = ErrorSource::Upstream;
            return Err(e);
        }
        let settings = self.settings();
        let mut peer = HttpPeer::new(addr, false, String::new());
        if settings.pool_per_route {
            peer.group_key = route.group_key;
        }
        let (connect, read) = route.timeouts(settings.connect_timeout, settings.read_timeout);
        let o = &mut peer.options;
        o.connection_timeout = Some(connect);
        o.total_connection_timeout = Some(connect);
        o.read_timeout = Some(read);
        o.write_timeout = Some(settings.write_timeout);
        o.idle_timeout = Some(settings.idle_timeout);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestContext,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(route), Some(i)) = (&ctx.route, ctx.upstream) {
            let router = self.router();
            route.mark_down(i, router.until_ms(self.settings().unhealthy_cooldown));
            route.metrics.upstream_error(UpstreamErrorKind::Connect);
            if route.has_untried(ctx.tried, ctx.upstreams.clone()) {
                e.set_retry(true);
            }
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        // `insert_header` replaces every value a client may have sent under the same name, so
        // client copies never survive. The three values share one buffer: one allocation.
        let values = ForwardedValues::new(ctx.client, ctx.host.as_str(), ctx.tls);
        match values.client() {
            Some(ip) => upstream_request.insert_header("x-forwarded-for", ip)?,
            None => {
                upstream_request.remove_header("x-forwarded-for");
            }
        }
        upstream_request.insert_header("forwarded", values.forwarded())?;
        upstream_request.insert_header("x-forwarded-host", values.host())?;
        upstream_request.insert_header("x-forwarded-proto", values.proto())?;
        let id = match &ctx.request_id {
            Some(id) => id.clone(),
            None => {
                let id = self.next_request_id();
                ctx.request_id = Some(id.clone());
                id
            }
        };
        upstream_request.insert_header("x-request-id", id)?;
        // Our Via entry after the client's.
        let mut previous: Vec<u8> = Vec::new();
        for v in upstream_request.headers.get_all(header::VIA) {
            if !previous.is_empty() {
                previous.extend_from_slice(b", ");
            }
            previous.extend_from_slice(v.as_bytes());
        }
        let via = self.loop_mark().value(
            (!previous.is_empty()).then_some(&previous[..]),
            via_version(session.req_header().version),
        );
        upstream_request.insert_header(header::VIA, via)?;
        if !self.settings().allow_underscores_in_headers {
            let dropped: Vec<http::HeaderName> = upstream_request
                .headers
                .keys()
                .filter(|k| k.as_str().contains('_'))
                .cloned()
                .collect();
            for name in dropped {
                upstream_request.remove_header(&name);
            }
        }
        if let Length::Exact(n) = ctx.length {
            upstream_request.insert_header(header::CONTENT_LENGTH, n)?;
        }
        Ok(())
    }

    /// The tenant's `max_body_bytes` for bodies whose size the head did not give (chunked,
    /// HTTP/2 without `content-length`): counted as they stream, 413 once beyond. The
    /// upstream then never gets the body's end, and its connection is not reused.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        let max = ctx
            .route
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.max_body);
        if let (Some(max), Some(b)) = (max, body.as_ref()) {
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > max {
                ctx.body_too_large = true;
                *body = None;
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body beyond the tenant's max_body_bytes",
                ));
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        if let Some(id) = &ctx.request_id {
            if upstream_response.headers.get("x-request-id").is_none() {
                upstream_response.insert_header("x-request-id", id.clone())?;
            }
        }
        if let Some(v) = self.hsts(ctx) {
            upstream_response.insert_header(header::STRICT_TRANSPORT_SECURITY, v)?;
        }
        if ctx.upgrade && upstream_response.status != http::StatusCode::SWITCHING_PROTOCOLS {
            // An upgrade that did not happen: the HTTP/1 loop does not take such a connection
            // back, so it ends with this response.
            session.set_keepalive(None);
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestContext,
    ) -> FailToProxy {
        let answer = match e.etype() {
            _ if ctx.body_too_large => Some(Answer::Limited(Limit::BodySize)),
            ErrorType::HTTPStatus(400) => Some(Answer::BadRequest(Malformed::Head)),
            ErrorType::HTTPStatus(_) => None,
            etype => match e.esource() {
                ErrorSource::Upstream => match etype {
                    ErrorType::ConnectTimedout
                    | ErrorType::ReadTimedout
                    | ErrorType::WriteTimedout => Some(Answer::GatewayTimeout),
                    _ => Some(Answer::BadGateway),
                },
                ErrorSource::Downstream => match etype {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                        None
                    }
                    _ => Some(Answer::BadRequest(Malformed::Head)),
                },
                ErrorSource::Internal | ErrorSource::Unset => Some(Answer::Internal),
            },
        };
        let code = match (answer, e.etype()) {
            (Some(a), _) => a.status(),
            (None, ErrorType::HTTPStatus(code)) => *code,
            (None, _) => 0,
        };
        ctx.outcome = answer.map_or("client_gone", Answer::name);
        if let Some(a) = answer.filter(|a| a.limit().is_some()) {
            self.count_answer(a, ctx.route.as_deref());
        }
        if code > 0 && session.response_written().is_none() {
            let sent = match answer {
                Some(a) => self.answer(session, ctx, a, Added::None, true).await,
                None => self.status_page(session, ctx, code).await,
            };
            if let Err(err) = sent {
                tracing::debug!("cannot send error page: {err}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestContext) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.start.elapsed();
        let metrics = ctx
            .route
            .as_ref()
            .map_or(self.unknown_metrics(), |r| &r.metrics);
        if status > 0 {
            match &ctx.route {
                Some(r) => r.observe(status, elapsed),
                None => metrics.observe(status, elapsed.as_secs_f64()),
            }
        }
        if let Some(e) = e.filter(|e| *e.esource() == ErrorSource::Upstream) {
            let kind = match e.etype() {
                ErrorType::ConnectTimedout
                | ErrorType::ConnectRefused
                | ErrorType::ConnectNoRoute => None,
                ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                    Some(UpstreamErrorKind::Timeout)
                }
                _ => Some(UpstreamErrorKind::Other),
            };
            // Connect failures were counted in `fail_to_connect`, once per attempt.
            if let Some(kind) = kind {
                metrics.upstream_error(kind);
            }
        }
        let req = session.req_header();
        let upstream = ctx
            .route
            .as_ref()
            .zip(ctx.upstream)
            .and_then(|(r, i)| r.upstream(i));
        // The names `http::Version`'s Debug gave the log before it had two writers.
        let version = match req.version {
            http::Version::HTTP_09 => "HTTP/0.9",
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_11 => "HTTP/1.1",
            http::Version::HTTP_2 => "HTTP/2.0",
            http::Version::HTTP_3 => "HTTP/3.0",
            _ => "HTTP",
        };
        self.access_log(&AccessRecord {
            client: session.client_addr(),
            method: req.method.as_str(),
            host: ctx.host.as_str(),
            path: req.uri.path(),
            version,
            tls: ctx.tls,
            status,
            elapsed,
            bytes_sent: session.body_bytes_sent(),
            route: ctx.route.as_ref().map_or("", |r| r.id()),
            upstream,
            request_id: ctx
                .request_id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
            error: e.map(|e| e.etype().as_str()).unwrap_or(""),
            outcome: ctx.outcome,
            engine: "pingora",
        });
    }
}
