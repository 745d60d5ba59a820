//! The HTTP/1.1 fast path: plain storefront requests proxied without Pingora's per-request
//! session machinery.
//!
//! Pingora's HTTP/1 proxy path costs ~80k instructions per request before any of our phases
//! run (benches/RESULTS.md); nginx spends ~29k on the whole request. This module serves the
//! requests that make up a storefront's traffic (`GET`, `HEAD` and `OPTIONS` without a body,
//! HTTP/1.1, for a live route) with one parse of the head, one copy into the upstream
//! request, pooled upstream connections and bodies relayed as they arrive.
//!
//! Everything else is handed to the full Pingora proxy ([`EdgeProxy`]) for the rest of the
//! connection, with the bytes read so far: request bodies, `Upgrade`, `Expect`,
//! `Transfer-Encoding`, HTTP/1.0, absolute-form targets, anything `httparse` refuses,
//! oversized heads, unknown hosts, challenges, redirects, suspended tenants, SNI/Host
//! mismatches and HTTP/2. So every answer of our own (400, 404, 421, 431, 308, 503) and every
//! unusual framing keeps exactly one implementation, and this path never has to be lenient.
//!
//! Invariants:
//! - A request is only proxied here when its head parsed completely and strictly and it has
//!   no body; the upstream request is rebuilt from parsed fields (never forwarded raw), with
//!   hop-by-hop and client-supplied forwarding headers removed and ours added.
//! - A response is relayed only when its end is known exactly (no body, `Content-Length`, or
//!   chunked, tracked byte by byte); an upstream connection is reused only when the response
//!   ended exactly at the end of what was read and the upstream did not ask to close.
//! - Upstream connections are pooled per route (or per address) exactly as for the Pingora
//!   path, in [`pool::UpstreamPool`].
//! - After a graceful stop begins, idle connections get the drain window for bytes already in
//!   flight, then close; responses carry `Connection: close`.

mod chunked;
pub mod pool;

use std::future::Future;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use pingora_timeout::fast_timeout::fast_timeout;
use tenantgate_certs::ChallengeStore;
use tenantgate_config::host::{normalize_into, HostBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use self::chunked::ChunkedTracker;
use self::pool::{PoolKey, UpstreamPool};
use super::tls::Sni;
use super::{pages, valid_request_id, AccessRecord, EdgeProxy};
use crate::metrics::UpstreamErrorKind;
use crate::router::RouteEntry;

/// Most headers a head may have to be parsed here (more: handed to Pingora, which applies
/// the configured limit).
const MAX_HEADERS: usize = 128;
/// Largest response head accepted from an upstream.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Read size for bodies.
const READ_CHUNK: usize = 16 * 1024;
/// How long a client may stay idle between requests.
const KEEPALIVE: Duration = Duration::from_secs(60);

/// Serves HTTP/1.1 connections, handing what it does not serve to `inner` (the Pingora
/// proxy, wrapped in [`super::drain::Draining`]).
pub struct Http1Service<A> {
    edge: EdgeProxy,
    enabled: bool,
    inner: Arc<A>,
    pool: UpstreamPool,
    window: Duration,
}

impl<A> Http1Service<A> {
    /// `edge` decides routes and writes metrics as the Pingora path does; `enabled: false`
    /// hands every connection to `inner`; `threads` sizes the upstream pool's shards, each
    /// keeping `per_thread` idle connections; `window` is the drain window of a graceful stop.
    pub fn new(
        edge: EdgeProxy,
        inner: A,
        enabled: bool,
        threads: usize,
        per_thread: usize,
        window: Duration,
    ) -> Self {
        let pool = UpstreamPool::new(threads, per_thread, edge.settings.idle_timeout);
        Http1Service {
            edge,
            enabled,
            inner: Arc::new(inner),
            pool,
            window,
        }
    }
}

#[async_trait]
impl<A> ServerApp for Http1Service<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if !self.enabled || matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.inner.process_new(stream, shutdown).await;
        }
        Conn::new(self, stream, shutdown).run().await
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.inner).await;
    }
}

/// What the head in the buffer asks for.
enum Prep {
    /// Not all of it has arrived.
    Partial,
    /// Not for this path: Pingora serves the connection from here.
    Fallback,
    /// Proxy it.
    Proxy(Plan),
}

/// A request the fast path proxies; its upstream head is already in `Conn::uhead`.
struct Plan {
    head_len: usize,
    route: Arc<RouteEntry>,
    upstreams: std::ops::Range<usize>,
    head_only: bool,
    /// The client asked to close after this response.
    close: bool,
    /// The client prefers HTML (for our own error pages).
    html: bool,
    /// Bytes of `uhead` that are the method and the target (for the access log).
    method_len: usize,
    target_end: usize,
}

/// Why a request could not be answered by an upstream.
#[derive(Debug, Clone, Copy)]
enum Failure {
    ConnectTimeout,
    ConnectRefused,
    ReadTimeout,
    WriteTimeout,
    /// A reused connection closed before answering: retry on a new one.
    Stale,
    /// Broken or unparseable answer, or an I/O error.
    Protocol,
    /// The client went away.
    Client,
    /// The upstream breaks the upstream policy (it became one of our own listeners).
    Forbidden,
}

impl Failure {
    fn status(self) -> u16 {
        match self {
            Failure::ConnectTimeout | Failure::ReadTimeout | Failure::WriteTimeout => 504,
            Failure::Client => 0,
            _ => 502,
        }
    }

    /// The same names as Pingora's error types, so access logs read alike on both paths.
    fn name(self) -> &'static str {
        match self {
            Failure::ConnectTimeout => "ConnectTimedout",
            Failure::ConnectRefused => "ConnectRefused",
            Failure::ReadTimeout => "ReadTimedout",
            Failure::WriteTimeout => "WriteTimedout",
            Failure::Stale | Failure::Protocol => "InvalidHTTPHeader",
            Failure::Forbidden => "ConnectProxyFailure",
            Failure::Client => "WriteError",
        }
    }
}

/// How a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the upstream closes; relayed as it is and the client connection closes too
    /// (the upstream named a transfer coding other than chunked).
    Close,
    /// Until the upstream closes, with no transfer coding: relayed to the client as chunked,
    /// so the client connection stays usable.
    CloseAsChunked,
}

/// Outcome of one proxied request.
struct Served {
    status: u16,
    bytes_sent: u64,
    upstream: Option<SocketAddr>,
    error: Option<Failure>,
    /// The client connection must be closed.
    close: bool,
}

struct Conn<'a, A> {
    app: &'a Arc<Http1Service<A>>,
    client: Stream,
    shutdown: ShutdownWatch,
    draining: bool,
    tls: bool,
    /// The SNI name, normalised (TLS only; `Some(None)`: sent but not a valid hostname, so
    /// every request of the connection goes to the Pingora path, which answers 421).
    sni: Option<Option<HostBuf>>,
    peer: Option<pingora::protocols::l4::socket::SocketAddr>,
    /// Closes an idle connection after [`KEEPALIVE`].
    idle: Deadline,
    /// Bounds each wait for the upstream (`read_timeout_ms`).
    upstream_wait: Deadline,
    /// Completes when a graceful stop begins (polled in place, never re-created).
    stopping: Pin<Box<dyn Future<Output = ()> + Send + Sync>>,
    /// When the last request finished (or the connection began): the idle timer's base.
    last: Instant,
    rbuf: BytesMut,
    ubuf: BytesMut,
    uhead: Vec<u8>,
    chead: Vec<u8>,
    host: HostBuf,
    request_id: Vec<u8>,
}

impl<'a, A> Conn<'a, A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    fn new(app: &'a Arc<Http1Service<A>>, client: Stream, shutdown: &ShutdownWatch) -> Self {
        let ssl = client.get_ssl_digest();
        let sni = ssl
            .as_ref()
            .and_then(|s| s.extension.get::<Sni>())
            .and_then(|s| s.0.as_deref())
            .map(|s| {
                let mut buf = HostBuf::default();
                normalize_into(s.as_bytes(), &mut buf).ok()?;
                Some(buf)
            });
        let peer = client
            .get_socket_digest()
            .and_then(|d| d.peer_addr().cloned());
        let draining = *shutdown.borrow();
        let mut watch = shutdown.clone();
        let now = Instant::now();
        Conn {
            idle: Deadline::new(now),
            upstream_wait: Deadline::new(now),
            stopping: Box::pin(async move {
                // A dropped sender means the server is going away too.
                let _ = watch.changed().await;
            }),
            last: now,
            app,
            client,
            shutdown: shutdown.clone(),
            draining,
            tls: ssl.is_some(),
            sni,
            peer,
            rbuf: BytesMut::with_capacity(4096),
            ubuf: BytesMut::new(),
            uhead: Vec::with_capacity(1024),
            chead: Vec::with_capacity(1024),
            host: HostBuf::default(),
            request_id: Vec::with_capacity(32),
        }
    }

    async fn run(mut self) -> Option<Stream> {
        loop {
            let plan = loop {
                match self.prepare() {
                    Prep::Proxy(plan) => break plan,
                    Prep::Fallback => return self.fallback().await,
                    Prep::Partial => {}
                }
                if self.rbuf.len() > self.app.edge.settings.max_header_bytes + 8192 {
                    return self.fallback().await;
                }
                match self.read_client().await {
                    Some(true) => {}
                    Some(false) if self.rbuf.is_empty() => return None,
                    // Partial head, then EOF or an error: let Pingora answer what it can.
                    Some(false) => return self.fallback().await,
                    None => return None,
                }
            };
            let start = Instant::now();
            self.rbuf.advance(plan.head_len);
            let served = self.proxy(&plan, start).await;
            self.last = self.finish(&plan, &served, start);
            if served.close || plan.close || self.draining {
                let _ = self.client.shutdown().await;
                return None;
            }
        }
    }

    /// Read more request bytes. `Some(true)`: got some; `Some(false)`: EOF or error;
    /// `None`: close now (idle timeout, or drained).
    async fn read_client(&mut self) -> Option<bool> {
        self.rbuf.reserve(4096);
        let idle = self.rbuf.is_empty();
        let read = if !self.draining {
            self.idle.arm(self.last, KEEPALIVE);
            tokio::select! {
                biased;
                r = self.client.read_buf(&mut self.rbuf) => r,
                _ = self.idle.expired() => return None,
                _ = &mut self.stopping => {
                    self.draining = true;
                    if !idle {
                        // A request under way is still read and answered (with close).
                        return Some(true);
                    }
                    // Bytes already in flight get the drain window; then the connection closes.
                    fast_timeout(self.app.window, self.client.read_buf(&mut self.rbuf)).await.ok()?
                }
            }
        } else {
            let wait = if idle { self.app.window } else { KEEPALIVE };
            fast_timeout(wait, self.client.read_buf(&mut self.rbuf))
                .await
                .ok()?
        };
        Some(matches!(read, Ok(n) if n > 0))
    }

    /// Hand the connection, with what was read of it, to the Pingora proxy.
    async fn fallback(self) -> Option<Stream> {
        let inner = &self.app.inner;
        let mut session = ServerSession::new_http1(self.client);
        session.set_keepalive(if self.draining {
            None
        } else {
            Some(KEEPALIVE.as_secs())
        });
        if !self.rbuf.is_empty() {
            session.set_pipelined_prefix(self.rbuf);
        }
        let mut result = inner.process_new_http(session, &self.shutdown).await;
        while let Some((stream, settings)) = result.map(|r| r.consume()) {
            let mut session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            result = inner.process_new_http(session, &self.shutdown).await;
        }
        None
    }

    /// Parse the head in `rbuf` and decide; for a request to proxy, write its upstream head
    /// into `uhead`.
    fn prepare(&mut self) -> Prep {
        if self.rbuf.is_empty() {
            return Prep::Partial;
        }
        let edge = &self.app.edge;
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let head_len = match req.parse_with_uninit_headers(&self.rbuf, &mut headers) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Prep::Partial,
            Err(_) => return Prep::Fallback,
        };
        let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
            return Prep::Fallback;
        };
        let head_only = match method {
            "GET" | "OPTIONS" => false,
            "HEAD" => true,
            _ => return Prep::Fallback,
        };
        if !target.starts_with('/') || !target.bytes().all(plain_target_byte) {
            return Prep::Fallback;
        }
        let path = target.split_once('?').map_or(target, |(p, _)| p);

        let uhead = &mut self.uhead;
        uhead.clear();
        uhead.extend_from_slice(method.as_bytes());
        uhead.push(b' ');
        let method_len = method.len();
        uhead.extend_from_slice(target.as_bytes());
        let target_end = uhead.len();
        uhead.extend_from_slice(b" HTTP/1.1\r\n");

        let (mut count, mut bytes) = (0usize, 0usize);
        let mut host = None;
        let mut close = false;
        let mut html = false;
        let (mut seen_accept, mut seen_id) = (false, false);
        self.request_id.clear();
        for h in req.headers.iter() {
            let (name, value) = (h.name.as_bytes(), h.value);
            count += 1;
            bytes += name.len() + value.len();
            match Name::of(name) {
                // A second Host: Pingora answers 400.
                Name::Host if host.is_some() => return Prep::Fallback,
                Name::Host => host = Some(value),
                // The first `Accept` and `X-Request-Id` count, as on the Pingora path.
                Name::Accept if !seen_accept => {
                    seen_accept = true;
                    html = pages::wants_html(Some(value));
                }
                Name::Connection => {
                    for token in tokens(value) {
                        if token.eq_ignore_ascii_case(b"close") {
                            close = true;
                        } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                            // Connection-named headers: rare, and Pingora strips them.
                            return Prep::Fallback;
                        }
                    }
                    continue;
                }
                // Ours replace them.
                Name::Forwarded
                | Name::XForwardedFor
                | Name::XForwardedHost
                | Name::XForwardedProto => continue,
                Name::RequestId => {
                    if !seen_id {
                        seen_id = true;
                        if valid_request_id(value) {
                            self.request_id.extend_from_slice(value);
                        }
                    }
                    continue;
                }
                // A body or a protocol change: not for this path.
                Name::ContentLength | Name::TransferEncoding | Name::Expect | Name::Upgrade => {
                    return Prep::Fallback
                }
                n if n.hop_by_hop() => continue,
                _ => {}
            }
            uhead.extend_from_slice(name);
            uhead.extend_from_slice(b": ");
            uhead.extend_from_slice(value);
            uhead.extend_from_slice(b"\r\n");
        }
        if count > edge.settings.max_headers || bytes > edge.settings.max_header_bytes {
            return Prep::Fallback;
        }
        let Some(raw_host) = host else {
            return Prep::Fallback;
        };
        let Ok(host) = normalize_into(raw_host, &mut self.host) else {
            return Prep::Fallback;
        };
        if ChallengeStore::is_reserved(path) {
            return Prep::Fallback;
        }
        let index = edge.router.load();
        let Some(route) = index.lookup(host) else {
            return Prep::Fallback;
        };
        if let Some(sni) = &self.sni {
            // The certificate was chosen for the SNI name: another route's Host on this
            // connection gets the Pingora path's 421.
            let same = sni
                .as_ref()
                .and_then(|s| index.lookup(s.as_str()))
                .is_some_and(|r| Arc::ptr_eq(r, route));
            if !same {
                return Prep::Fallback;
            }
        }
        if route.suspended
            || route.refused.is_some()
            || (route.https_redirect && !self.tls && edge.settings.https_port.is_some())
        {
            return Prep::Fallback;
        }
        let client_ip = self.peer.as_ref().and_then(|a| a.as_inet()).map(|a| a.ip());
        super::push_forwarding_headers(uhead, client_ip, host, self.tls);
        if self.request_id.is_empty() {
            self.request_id.extend_from_slice(&edge.request_id_bytes());
        }
        uhead.extend_from_slice(b"x-request-id: ");
        uhead.extend_from_slice(&self.request_id);
        uhead.extend_from_slice(b"\r\n\r\n");
        Prep::Proxy(Plan {
            head_len,
            upstreams: route.upstreams_for(path),
            route: route.clone(),
            head_only,
            close,
            html,
            method_len,
            target_end,
        })
    }

    /// Choose upstreams until one answers (passive health as in the Pingora path), relay its
    /// response, or answer our 502/504.
    async fn proxy(&mut self, plan: &Plan, start: Instant) -> Served {
        let edge = &self.app.edge;
        let route = &plan.route;
        let mut tried = 0u64;
        let mut failure = Failure::ConnectRefused;
        let mut upstream = None;
        let now_ms = edge.router.ms_at(start);
        while let Some(i) = route.pick(now_ms, tried, plan.upstreams.clone()) {
            if i < 64 {
                tried |= 1 << i;
            }
            let Some(addr) = route.upstream(i) else { break };
            upstream = Some(addr);
            let key = PoolKey {
                group: if edge.settings.pool_per_route {
                    route.group_key
                } else {
                    0
                },
                addr,
            };
            let mut pooled = self.app.pool.take(&key, start);
            loop {
                let reused = pooled.is_some();
                let conn = match pooled.take() {
                    Some(c) => c,
                    None => match self.connect(addr).await {
                        Ok(c) => c,
                        Err(f) => {
                            route.mark_down(
                                i,
                                edge.router.until_ms(edge.settings.unhealthy_cooldown),
                            );
                            route.metrics.upstream_error(UpstreamErrorKind::Connect);
                            failure = f;
                            break;
                        }
                    },
                };
                match self.exchange(conn, key, plan, reused, start).await {
                    Ok(mut served) => {
                        served.upstream = Some(addr);
                        return served;
                    }
                    // The upstream closed an idle connection as we reused it: nothing was
                    // answered, so the (bodiless, safe) request goes out again on a new one.
                    Err(Failure::Stale) if reused => continue,
                    Err(f) => return self.error_page(plan, f, Some(addr)).await,
                }
            }
            if !route.has_untried(tried, plan.upstreams.clone()) {
                break;
            }
        }
        self.error_page(plan, failure, upstream).await
    }

    async fn connect(&self, addr: SocketAddr) -> Result<TcpStream, Failure> {
        if let Some(r) = self.app.edge.router.reaches_own_listener(addr) {
            tracing::warn!(
                rule = r.rule.as_str(),
                "upstream refused at connect: {}",
                r.reason
            );
            return Err(Failure::Forbidden);
        }
        match fast_timeout(
            self.app.edge.settings.connect_timeout,
            TcpStream::connect(addr),
        )
        .await
        {
            Err(_) => Err(Failure::ConnectTimeout),
            Ok(Err(_)) => Err(Failure::ConnectRefused),
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(s)
            }
        }
    }

    /// Send the request on `conn` and relay the response. Errors before anything was written
    /// to the client are returned (the caller answers or retries); errors after that close
    /// the client connection.
    async fn exchange(
        &mut self,
        mut conn: TcpStream,
        key: PoolKey,
        plan: &Plan,
        reused: bool,
        start: Instant,
    ) -> Result<Served, Failure> {
        let settings = &self.app.edge.settings;
        // A request head fits an idle socket's send buffer: written at once, no timer needed.
        let sent = match conn.try_write(&self.uhead) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(_) => {
                return Err(if reused {
                    Failure::Stale
                } else {
                    Failure::Protocol
                })
            }
        };
        if sent < self.uhead.len() {
            let rest = &self.uhead[sent..];
            match fast_timeout(settings.write_timeout, conn.write_all(rest)).await {
                Err(_) => return Err(Failure::WriteTimeout),
                Ok(Err(_)) => {
                    return Err(if reused {
                        Failure::Stale
                    } else {
                        Failure::Protocol
                    })
                }
                Ok(Ok(())) => {}
            }
        }
        self.ubuf.clear();
        let (status, framing, upstream_keep, body_start) = loop {
            self.chead.clear();
            let force_close = plan.close || self.draining;
            match response_head(
                &self.ubuf,
                plan.head_only,
                &self.request_id,
                force_close,
                &mut self.chead,
            ) {
                Ok(Some(resp)) if (100..200).contains(&resp.status) => {
                    if resp.status == 101 {
                        return Err(Failure::Protocol);
                    }
                    // Interim answers (103 Early Hints) go on at once, rewritten like any head.
                    if write_all(&mut self.client, &self.chead).await.is_err() {
                        return Err(Failure::Client);
                    }
                    self.ubuf.advance(resp.head_len);
                    continue;
                }
                Ok(Some(resp)) => {
                    break (resp.status, resp.framing, resp.keep_alive, resp.head_len)
                }
                Ok(None) if self.ubuf.len() > MAX_RESPONSE_HEAD => return Err(Failure::Protocol),
                Ok(None) => {}
                Err(()) => return Err(Failure::Protocol),
            }
            self.ubuf.reserve(READ_CHUNK);
            // The first wait is timed from the request's start (no clock read); a head that
            // arrives in pieces re-arms from now.
            let at = if self.ubuf.is_empty() {
                start
            } else {
                Instant::now()
            };
            self.upstream_wait.arm(at, settings.read_timeout);
            match read_before(&mut conn, &mut self.ubuf, &mut self.upstream_wait).await {
                None => return Err(Failure::ReadTimeout),
                Some(Ok(0) | Err(_)) if reused && self.ubuf.is_empty() => {
                    return Err(Failure::Stale)
                }
                Some(Ok(0) | Err(_)) => return Err(Failure::Protocol),
                Some(Ok(_)) => {}
            }
        };
        self.ubuf.advance(body_start);

        // From here on the response is committed: failures can only close the connection.
        let mut served = Served {
            status,
            bytes_sent: 0,
            upstream: None,
            error: None,
            close: framing == Framing::Close,
        };
        let until_close = matches!(framing, Framing::Close | Framing::CloseAsChunked);
        let mut tracker = ChunkedTracker::default();
        let mut remaining = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        // Whether the body ended exactly at the end of the bytes read so far.
        let mut done = false;
        let mut first = true;
        loop {
            let avail = self.ubuf.len();
            let take = match framing {
                Framing::None => 0,
                Framing::Length(_) => usize::try_from(remaining).unwrap_or(usize::MAX).min(avail),
                Framing::Chunked => match tracker.feed(&self.ubuf) {
                    Ok(n) => n,
                    Err(_) => {
                        served.error = Some(Failure::Protocol);
                        served.close = true;
                        break;
                    }
                },
                Framing::Close | Framing::CloseAsChunked => avail,
            };
            if let Framing::Length(_) = framing {
                remaining -= take as u64;
            }
            let finished = match framing {
                Framing::None => true,
                Framing::Length(_) => remaining == 0,
                Framing::Chunked => tracker.is_done(),
                Framing::Close | Framing::CloseAsChunked => false,
            };
            let body = &self.ubuf[..take];
            let rechunk = framing == Framing::CloseAsChunked && take > 0;
            // The head and the first bytes of the body go out in one write; later reads are
            // written straight from the read buffer (re-chunked ones framed in `chead`).
            let wrote = if first || rechunk {
                if !first {
                    self.chead.clear();
                }
                first = false;
                if rechunk {
                    push_chunk(&mut self.chead, body);
                } else {
                    self.chead.extend_from_slice(body);
                }
                write_all(&mut self.client, &self.chead).await
            } else if take > 0 {
                write_all(&mut self.client, body).await
            } else {
                Ok(())
            };
            if wrote.is_err() {
                served.error = Some(Failure::Client);
                served.close = true;
                break;
            }
            served.bytes_sent += take as u64;
            // Bytes beyond the end mean the upstream sent more than it framed: not reusable.
            let exact = take == avail;
            self.ubuf.advance(take);
            if finished {
                done = exact;
                break;
            }
            self.ubuf.clear();
            self.ubuf.reserve(READ_CHUNK);
            self.upstream_wait
                .arm(Instant::now(), settings.read_timeout);
            match read_before(&mut conn, &mut self.ubuf, &mut self.upstream_wait).await {
                Some(Ok(0)) if framing == Framing::CloseAsChunked => {
                    // The upstream's close ends the body: the client gets the last chunk.
                    if write_all(&mut self.client, b"0\r\n\r\n").await.is_err() {
                        served.error = Some(Failure::Client);
                        served.close = true;
                    }
                    break;
                }
                Some(Ok(0)) if until_close => break,
                Some(Ok(n)) if n > 0 => {}
                None => {
                    served.error = Some(Failure::ReadTimeout);
                    served.close = true;
                    break;
                }
                Some(_) => {
                    served.error = Some(Failure::Protocol);
                    served.close = true;
                    break;
                }
            }
        }
        if done && upstream_keep && served.error.is_none() {
            self.app.pool.put(key, conn, start);
        }
        Ok(served)
    }

    /// Our own 502/504 page; the connection closes after it, as on the Pingora path.
    async fn error_page(
        &mut self,
        plan: &Plan,
        failure: Failure,
        upstream: Option<SocketAddr>,
    ) -> Served {
        let status = failure.status();
        let mut served = Served {
            status,
            bytes_sent: 0,
            upstream,
            error: Some(failure),
            close: true,
        };
        if status == 0 {
            served.status = 0;
            return served;
        }
        let (content_type, body) = pages::body(status, plan.html);
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let h = &mut self.chead;
        h.clear();
        h.extend_from_slice(b"HTTP/1.1 ");
        h.extend_from_slice(status.to_string().as_bytes());
        h.push(b' ');
        h.extend_from_slice(reason.as_bytes());
        h.extend_from_slice(b"\r\ncontent-type: ");
        h.extend_from_slice(content_type.as_bytes());
        h.extend_from_slice(b"\r\ncontent-length: ");
        h.extend_from_slice(body.len().to_string().as_bytes());
        h.extend_from_slice(b"\r\ncache-control: no-store\r\nx-request-id: ");
        h.extend_from_slice(&self.request_id);
        h.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
        if !plan.head_only {
            h.extend_from_slice(&body);
            served.bytes_sent = body.len() as u64;
        }
        if write_all(&mut self.client, &self.chead).await.is_err() {
            served.bytes_sent = 0;
        }
        served
    }

    /// Metrics and the access log, once per request, as `EdgeProxy::logging` writes them.
    /// Returns when the request ended.
    fn finish(&self, plan: &Plan, served: &Served, start: Instant) -> Instant {
        let edge = &self.app.edge;
        let end = Instant::now();
        let elapsed = end.saturating_duration_since(start);
        let metrics = &plan.route.metrics;
        if served.status > 0 {
            metrics.observe(served.status, elapsed.as_secs_f64());
        }
        match served.error {
            Some(Failure::ReadTimeout | Failure::WriteTimeout) => {
                metrics.upstream_error(UpstreamErrorKind::Timeout)
            }
            Some(Failure::Protocol | Failure::Stale) => {
                metrics.upstream_error(UpstreamErrorKind::Other)
            }
            // Connect failures were counted once per attempt.
            _ => {}
        }
        if edge.settings.access_log {
            let line = &self.uhead;
            edge.access_log(&AccessRecord {
                client: self.peer.as_ref(),
                method: std::str::from_utf8(&line[..plan.method_len]).unwrap_or(""),
                host: self.host.as_str(),
                path: std::str::from_utf8(&line[plan.method_len + 1..plan.target_end])
                    .unwrap_or("")
                    .split('?')
                    .next()
                    .unwrap_or(""),
                version: "HTTP/1.1",
                tls: self.tls,
                status: served.status,
                elapsed,
                bytes_sent: served.bytes_sent as usize,
                route: plan.route.id(),
                upstream: served.upstream,
                request_id: std::str::from_utf8(&self.request_id).unwrap_or(""),
                error: served.error.map_or("", Failure::name),
                engine: "http1",
            });
        }
        end
    }
}

/// A timer that is moved lazily: resetting a Tokio timer costs a lock and a wheel insert, so
/// arming it for `timeout` from `now` only resets it when its deadline is nearer than that
/// (or much further). It then fires between `timeout` and `timeout * 9/8` after the last
/// arming, never early, and a busy connection resets it about once per `timeout / 8`.
struct Deadline {
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Deadline {
    fn new(now: Instant) -> Self {
        Deadline {
            sleep: Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(
                now,
            ))),
        }
    }

    fn arm(&mut self, now: Instant, timeout: Duration) {
        let now = tokio::time::Instant::from_std(now);
        let deadline = self.sleep.deadline();
        if deadline < now + timeout || deadline > now + timeout + timeout / 8 {
            self.sleep.as_mut().reset(now + timeout + timeout / 8);
        }
    }

    fn expired(&mut self) -> &mut Pin<Box<tokio::time::Sleep>> {
        &mut self.sleep
    }
}

/// Read into `buf` unless `deadline` fires first (`None`).
async fn read_before(
    conn: &mut TcpStream,
    buf: &mut BytesMut,
    deadline: &mut Deadline,
) -> Option<std::io::Result<usize>> {
    tokio::select! {
        biased;
        r = conn.read_buf(buf) => Some(r),
        _ = deadline.expired() => None,
    }
}

/// Append `data` as one chunk of a chunked body.
fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = data.len();
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(HEX[(n >> (4 * i)) & 0xf]);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

async fn write_all(client: &mut Stream, bytes: &[u8]) -> std::io::Result<()> {
    client.write_all(bytes).await?;
    client.flush().await
}

/// Request target bytes this path accepts (the rest, legal or not, goes to Pingora, whose URI
/// parser decides).
fn plain_target_byte(b: u8) -> bool {
    b.is_ascii_graphic()
        && !matches!(
            b,
            b'#' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'}' | b'|' | b'"'
        )
}

/// The comma-separated tokens of a header value, trimmed, empty ones skipped.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// The header names either side of the fast path acts on; everything else is copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    Accept,
    Connection,
    ContentLength,
    Expect,
    Forwarded,
    Host,
    KeepAlive,
    ProxyConnection,
    RequestId,
    Te,
    TransferEncoding,
    Upgrade,
    XForwardedFor,
    XForwardedHost,
    XForwardedProto,
    Other,
}

impl Name {
    fn of(name: &[u8]) -> Name {
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        match name.len() {
            2 if is("te") => Name::Te,
            4 if is("host") => Name::Host,
            6 if is("accept") => Name::Accept,
            6 if is("expect") => Name::Expect,
            7 if is("upgrade") => Name::Upgrade,
            9 if is("forwarded") => Name::Forwarded,
            10 if is("connection") => Name::Connection,
            10 if is("keep-alive") => Name::KeepAlive,
            12 if is("x-request-id") => Name::RequestId,
            14 if is("content-length") => Name::ContentLength,
            15 if is("x-forwarded-for") => Name::XForwardedFor,
            16 if is("x-forwarded-host") => Name::XForwardedHost,
            16 if is("proxy-connection") => Name::ProxyConnection,
            17 if is("x-forwarded-proto") => Name::XForwardedProto,
            17 if is("transfer-encoding") => Name::TransferEncoding,
            _ => Name::Other,
        }
    }

    /// Meaningful for one hop only: never forwarded, in either direction.
    fn hop_by_hop(self) -> bool {
        matches!(self, Name::KeepAlive | Name::ProxyConnection | Name::Te)
    }
}

/// What the fast path needs of an upstream response head.
#[derive(Debug)]
struct ResponseHead {
    head_len: usize,
    status: u16,
    framing: Framing,
    /// The upstream connection may carry another request.
    keep_alive: bool,
}

/// Parse an upstream response head (`Ok(None)`: incomplete) and write the client's head into
/// `out`: the upstream's status and headers without hop-by-hop ones (including those its
/// `Connection` names), `Content-Length` dropped when `Transfer-Encoding` is present, our
/// `X-Request-Id` when the upstream sent none, `Transfer-Encoding: chunked` for a body that
/// only the close delimits (re-framed as chunks), and `Connection: close` when the client
/// connection ends after this response (`close`, or a close-delimited body under another
/// transfer coding).
///
/// Framing per RFC 9112 §6.3: no body for `HEAD` (`head_only`), 204 and 304;
/// `Transfer-Encoding` wins over `Content-Length` and is chunked only when chunked is its last
/// coding; differing `Content-Length` values are an error.
fn response_head(
    buf: &[u8],
    head_only: bool,
    request_id: &[u8],
    close: bool,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, ()> {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let status = resp.code.ok_or(())?;
    let mut keep_alive = resp.version == Some(1);
    let mut length: Option<u64> = None;
    let mut te: Option<bool> = None;
    let mut named: [&[u8]; 8] = [b""; 8];
    let mut n_named = 0;
    // Each name is classified once; the second pass copies by class.
    let mut classes = [Name::Other; MAX_HEADERS];
    for (h, class) in resp.headers.iter().zip(classes.iter_mut()) {
        *class = Name::of(h.name.as_bytes());
        match *class {
            Name::Connection => {
                for t in tokens(h.value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        keep_alive = false;
                    } else if !t.eq_ignore_ascii_case(b"keep-alive") {
                        *named.get_mut(n_named).ok_or(())? = t;
                        n_named += 1;
                    }
                }
            }
            Name::TransferEncoding => {
                te = Some(
                    tokens(h.value)
                        .last()
                        .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")),
                );
            }
            Name::ContentLength => {
                let v = parse_length(h.value)?;
                if length.replace(v).is_some_and(|old| old != v) {
                    return Err(());
                }
            }
            _ => {}
        }
    }
    let framing = if head_only || matches!(status, 204 | 304) || (100..200).contains(&status) {
        Framing::None
    } else {
        match (te, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::Close,
            (None, None) => Framing::CloseAsChunked,
            (None, Some(n)) => Framing::Length(n),
        }
    };
    if matches!(framing, Framing::Close | Framing::CloseAsChunked) {
        keep_alive = false;
    }
    let named = &named[..n_named];
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&[
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ]);
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut has_id = false;
    for (h, class) in resp.headers.iter().zip(classes) {
        let name = h.name.as_bytes();
        match class {
            Name::Connection | Name::Upgrade => continue,
            n if n.hop_by_hop() => continue,
            Name::ContentLength if te.is_some() => continue,
            Name::RequestId => has_id = true,
            _ => {}
        }
        if !named.is_empty() && named.iter().any(|t| t.eq_ignore_ascii_case(name)) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    // Interim heads (103 Early Hints) are passed on stripped of hop-by-hop headers, and get
    // nothing of ours: the final head carries the request id and the connection's fate.
    if (100..200).contains(&status) {
        out.extend_from_slice(b"\r\n");
        return Ok(Some(ResponseHead {
            head_len,
            status,
            framing,
            keep_alive,
        }));
    }
    if !has_id {
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(request_id);
        out.extend_from_slice(b"\r\n");
    }
    if framing == Framing::CloseAsChunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if close || framing == Framing::Close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(ResponseHead {
        head_len,
        status,
        framing,
        keep_alive,
    }))
}

fn parse_length(v: &[u8]) -> Result<u64, ()> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(());
    }
    Ok(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_with(raw: &str, head_only: bool, close: bool) -> (ResponseHead, String) {
        let mut out = Vec::new();
        let parsed = response_head(raw.as_bytes(), head_only, b"rid", close, &mut out)
            .expect("valid")
            .expect("complete");
        (parsed, String::from_utf8(out).expect("utf8"))
    }

    fn head(raw: &str) -> (ResponseHead, String) {
        head_with(raw, false, false)
    }

    fn parse_response(raw: &[u8]) -> Result<Option<ResponseHead>, ()> {
        response_head(raw, false, b"", false, &mut Vec::new())
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let (h, _) = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(
            (h.framing, h.keep_alive, h.head_len),
            (Framing::Length(5), true, 38)
        );
        let (h, out) =
            head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked);
        assert!(
            !out.to_ascii_lowercase().contains("content-length"),
            "{out}"
        );
        let (h, out) = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
        assert!(out.ends_with("connection: close\r\n\r\n"), "{out}");
        // No body, whatever the headers say: HEAD, 204, 304.
        let (h, out) = head_with("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true, false);
        assert_eq!((h.framing, h.keep_alive), (Framing::None, true));
        assert!(out.contains("Content-Length: 9\r\n"), "{out}");
        let (h, _) = head("HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::None);
        let (h, _) = head("HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::None, true));
        let (h, out) = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::CloseAsChunked, false));
        assert!(out.ends_with("transfer-encoding: chunked\r\n\r\n"), "{out}");
        let (h, _) = head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(1), false));
        let (h, _) = head("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n");
        assert!(!h.keep_alive);
        let (h, _) = head("HTTP/1.1 200 OK\r\nContent-Length: 7\r\ncontent-length: 7\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(7));
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 8\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1,1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
        ] {
            assert!(parse_response(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Le"),
            Ok(None)
        ));
    }

    #[test]
    fn response_heads_lose_hop_by_hop_headers_and_gain_a_request_id() {
        let (_, out) = head(
            "HTTP/1.1 404 Not Found\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\n\
             X-Secret: 1\r\nUpgrade: h2c\r\nServer: backend\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(
            out,
            "HTTP/1.1 404 Not Found\r\nServer: backend\r\nContent-Length: 0\r\nx-request-id: rid\r\n\r\n"
        );
        let (_, out) = head("HTTP/1.1 200 \r\nX-Request-Id: theirs\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(
            out,
            "HTTP/1.1 200 \r\nX-Request-Id: theirs\r\nContent-Length: 0\r\n\r\n"
        );
        let (_, out) = head_with("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false, true);
        assert!(out.ends_with("connection: close\r\n\r\n"), "{out}");
    }

    #[test]
    fn chunks_are_framed_in_lowercase_hex() {
        for (n, prefix) in [
            (1usize, "1\r\n"),
            (15, "f\r\n"),
            (16, "10\r\n"),
            (4096, "1000\r\n"),
        ] {
            let mut out = Vec::new();
            push_chunk(&mut out, &vec![b'x'; n]);
            assert!(out.starts_with(prefix.as_bytes()), "{n}");
            assert!(out.ends_with(b"x\r\n"));
            assert_eq!(out.len(), prefix.len() + n + 2);
        }
    }

    #[test]
    fn header_names_are_classified_case_insensitively() {
        assert_eq!(Name::of(b"HOST"), Name::Host);
        assert_eq!(Name::of(b"X-Forwarded-For"), Name::XForwardedFor);
        assert_eq!(Name::of(b"x-forwarded-proto"), Name::XForwardedProto);
        assert_eq!(Name::of(b"Transfer-Encoding"), Name::TransferEncoding);
        assert_eq!(Name::of(b"Content-Length"), Name::ContentLength);
        assert!(Name::of(b"Proxy-Connection").hop_by_hop());
        assert!(!Name::of(b"Connection").hop_by_hop());
        assert_eq!(Name::of(b"x-forwarded-hosts"), Name::Other);
        assert_eq!(
            tokens(b" close ,, Keep-Alive").collect::<Vec<_>>(),
            vec![&b"close"[..], b"Keep-Alive"]
        );
        assert!(plain_target_byte(b'/') && plain_target_byte(b'%') && plain_target_byte(b'?'));
        assert!(!plain_target_byte(b' ') && !plain_target_byte(b'#') && !plain_target_byte(0x80));
    }
}
