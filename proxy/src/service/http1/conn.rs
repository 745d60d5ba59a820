//! The loop of one HTTP/1 connection: read a head (bounded), decide, serve it on the fast
//! path or hand it to Pingora, and again; idle timeouts and the drain of a graceful stop.
//!
//! Memory: an idle connection keeps only what it must (its small read buffer); the buffers
//! a request needs are taken for it and given back after.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use pingora::apps::HttpServerApp;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora_timeout::fast_timeout::fast_timeout;
use tenantgate_config::host::{normalize_into, HostBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::chunked::ChunkedTracker;
use super::handoff::OneRequest;
use super::request::{Body, Handoff, Line, Prep, Scratch};
use super::{write_all, Deadline, Http1Service, KEEPALIVE};
use crate::router::RouteEntry;
use crate::service::decide::{Answer, ConnectionFacts, Malformed, SniFact, Verdict};
use crate::service::tls::Sni;
use crate::service::{pages, AccessRecord, Decided};

/// An answer of ours the connection writes itself.
struct Own<'r> {
    answer: Answer,
    html: bool,
    head_only: bool,
    close: bool,
    /// Seconds for `Retry-After` (0: none).
    retry_after: u32,
    /// Whose answer it is (metrics, HSTS, the log's route); `None`: no route.
    route: Option<&'r RouteEntry>,
    /// The head's method and target in `uhead`, when it parsed.
    line: Option<Line>,
}

/// Capacity a connection's read buffer keeps between requests: most request heads fit.
const IDLE_READ_BUFFER: usize = 2048;

/// The buffers one request needs beyond the read buffer: the upstream's bytes, the upstream
/// head, the client's head.
struct Buffers {
    ubuf: BytesMut,
    uhead: Vec<u8>,
    chead: Vec<u8>,
}

/// Spare request buffers kept per worker thread.
const SPARES: usize = 64;

thread_local! {
    static SPARE: std::cell::RefCell<Vec<Buffers>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// How long a connection keeps its read buffer while no request comes.
const QUIET: std::time::Duration = std::time::Duration::from_secs(2);

pub(super) struct Conn<'a, A> {
    pub(super) app: &'a Arc<Http1Service<A>>,
    pub(super) client: Stream,
    shutdown: ShutdownWatch,
    pub(super) draining: bool,
    pub(super) tls: bool,
    /// The SNI name, normalised (TLS only; `Some(None)`: sent but not a valid hostname).
    sni: Option<Option<HostBuf>>,
    pub(super) peer: Option<pingora::protocols::l4::socket::SocketAddr>,
    /// Closes an idle connection after [`KEEPALIVE`].
    idle: Deadline,
    /// Bounds each wait for the upstream (`read_timeout_ms`).
    pub(super) upstream_wait: Deadline,
    /// Completes when a graceful stop begins (polled in place, never re-created).
    stopping: Pin<Box<dyn Future<Output = ()> + Send + Sync>>,
    /// When the last request finished (or the connection began): the idle timer's base.
    last: Instant,
    /// The connection was quiet long enough to give its read buffer back.
    rested: bool,
    pub(super) rbuf: BytesMut,
    pub(super) ubuf: BytesMut,
    pub(super) uhead: Vec<u8>,
    pub(super) chead: Vec<u8>,
    pub(super) scratch: Scratch,
}

impl<'a, A> Conn<'a, A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    pub(super) fn new(
        app: &'a Arc<Http1Service<A>>,
        client: Stream,
        shutdown: &ShutdownWatch,
    ) -> Self {
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
            rested: false,
            app,
            client,
            shutdown: shutdown.clone(),
            draining,
            tls: ssl.is_some(),
            sni,
            peer,
            rbuf: BytesMut::new(),
            ubuf: BytesMut::new(),
            uhead: Vec::new(),
            chead: Vec::new(),
            scratch: Scratch {
                host: HostBuf::default(),
                request_id: Vec::new(),
            },
        }
    }

    pub(super) fn client_ip(&self) -> Option<std::net::IpAddr> {
        self.peer.as_ref().and_then(|a| a.as_inet()).map(|a| a.ip())
    }

    pub(super) async fn run(mut self) -> Option<Stream> {
        let limit = self.app.edge.settings().max_header_bytes;
        loop {
            let prep = loop {
                if self.uhead.capacity() == 0 && !self.rbuf.is_empty() {
                    self.take_buffers();
                }
                let sni = match &self.sni {
                    None => SniFact::Absent,
                    Some(Some(h)) => SniFact::Name(h.as_str()),
                    Some(None) => SniFact::Invalid,
                };
                let facts = ConnectionFacts {
                    tls: self.tls,
                    sni,
                    peer: self.client_ip(),
                };
                match self
                    .app
                    .prepare(&self.rbuf, &facts, &mut self.scratch, &mut self.uhead)
                {
                    Prep::Partial => {}
                    prep => break prep,
                }
                if self.rbuf.len() > limit {
                    // The head never ended within the limit: what was read is dropped with
                    // the connection.
                    break Prep::Refuse {
                        answer: Answer::HeadersTooLarge,
                        html: false,
                    };
                }
                match self.read_client(limit + 1 - self.rbuf.len()).await {
                    Some(true) => {}
                    Some(false) if self.rbuf.is_empty() => return None,
                    // A partial head, then EOF or an error.
                    Some(false) => {
                        break Prep::Refuse {
                            answer: Answer::BadRequest(Malformed::Head),
                            html: false,
                        }
                    }
                    None => return None,
                }
            };
            match prep {
                Prep::Partial => return None,
                Prep::Refuse { answer, html } => {
                    Box::pin(self.refuse(answer, html)).await;
                    return None;
                }
                Prep::Proxy(plan) => {
                    let start = Instant::now();
                    self.rbuf.advance(plan.head_len);
                    let served = self.proxy(&plan, start).await;
                    self.last = self.finish(&plan, &served, start);
                    if served.close || plan.close || self.draining || self.early() {
                        let _ = self.client.shutdown().await;
                        return None;
                    }
                    self.rest();
                }
                Prep::Limited(l) => {
                    self.rbuf.advance(l.head_len);
                    // A plain request a tenant's limit refused: its 429 is written here, as
                    // Pingora's engine writes it, keeping the connection.
                    let ok = Box::pin(self.write_own(Own {
                        answer: l.answer,
                        html: l.html,
                        head_only: l.head_only,
                        close: l.close || self.draining,
                        retry_after: l.retry_after,
                        route: Some(&l.route),
                        line: Some(l.line),
                    }))
                    .await;
                    if !ok || l.close || self.draining || self.early() {
                        let _ = self.client.shutdown().await;
                        return None;
                    }
                    self.rest();
                }
                Prep::Handoff(h) => {
                    self = Box::pin(self.handoff(h, limit)).await?;
                    if self.draining || self.early() {
                        let _ = self.client.shutdown().await;
                        return None;
                    }
                    self.rest();
                }
            }
        }
    }

    /// A request arrived before the previous answer while pipelining is off: close.
    fn early(&self) -> bool {
        !self.app.edge.settings().http1_pipelining && !self.rbuf.is_empty()
    }

    /// A request begins: the buffers it needs come from this thread's spares.
    fn take_buffers(&mut self) {
        let b = SPARE
            .with(|s| s.borrow_mut().pop())
            .unwrap_or_else(|| Buffers {
                ubuf: BytesMut::with_capacity(super::READ_CHUNK),
                uhead: Vec::with_capacity(1024),
                chead: Vec::with_capacity(1024),
            });
        self.ubuf = b.ubuf;
        self.uhead = b.uhead;
        self.chead = b.chead;
    }

    /// Between requests: the request's buffers go back to this thread's spares (an idle
    /// connection keeps none: however many connections are open, only requests in flight
    /// hold buffers), and a read buffer grown for a large head is not kept.
    fn rest(&mut self) {
        let b = Buffers {
            ubuf: std::mem::take(&mut self.ubuf),
            uhead: std::mem::take(&mut self.uhead),
            chead: std::mem::take(&mut self.chead),
        };
        let normal = b.ubuf.capacity() <= 4 * super::READ_CHUNK
            && b.uhead.capacity() <= 16 * 1024
            && b.chead.capacity() <= 16 * 1024;
        if normal && b.uhead.capacity() > 0 {
            SPARE.with(|s| {
                let mut s = s.borrow_mut();
                if s.len() < SPARES {
                    s.push(b);
                }
            });
        }
        if self.rbuf.is_empty() && self.rbuf.capacity() > IDLE_READ_BUFFER {
            self.rbuf = BytesMut::new();
        }
    }

    /// A connection quiet for [`QUIET`] gives back its read buffer too.
    fn release(&mut self) {
        self.rbuf = BytesMut::new();
        self.rested = true;
    }

    /// Read at most `room` more request bytes. `Some(true)`: got some (or go round again);
    /// `Some(false)`: EOF or error; `None`: close now (idle timeout, or drained).
    ///
    /// Between requests the read buffer is held for [`QUIET`] only: a connection quiet for
    /// longer gives it back and waits for its next byte in a one-byte array of its own
    /// future, so idle keep-alive connections hold no buffer. Busy connections never get
    /// there, and the idle timer serves both deadlines (re-armed once per quiet spell).
    async fn read_client(&mut self, room: usize) -> Option<bool> {
        let idle = self.rbuf.is_empty();
        if idle && !self.draining && self.rbuf.capacity() == 0 && self.rested {
            self.idle.arm(self.last, KEEPALIVE);
            let mut first = [0u8; 1];
            let got = tokio::select! {
                biased;
                r = self.client.read(&mut first) => r,
                _ = self.idle.expired() => return None,
                _ = &mut self.stopping => {
                    self.draining = true;
                    fast_timeout(self.app.window, self.client.read(&mut first)).await.ok()?
                }
            };
            self.rested = false;
            return match got {
                Ok(1) => {
                    self.rbuf.reserve(IDLE_READ_BUFFER);
                    self.rbuf.extend_from_slice(&first);
                    Some(true)
                }
                _ => Some(false),
            };
        }
        if self.rbuf.capacity() - self.rbuf.len() == 0 {
            self.rbuf.reserve(IDLE_READ_BUFFER.min(room));
        }
        let mut reader = (&mut self.client).take(room as u64);
        let read = if !self.draining {
            // Idle between requests: first the quiet spell, holding the buffer.
            let quiet = idle && !self.rested;
            self.idle
                .arm(self.last, if quiet { QUIET } else { KEEPALIVE });
            tokio::select! {
                biased;
                r = reader.read_buf(&mut self.rbuf) => r,
                _ = self.idle.expired() => {
                    if quiet {
                        self.release();
                        return Some(true);
                    }
                    return None;
                }
                _ = &mut self.stopping => {
                    self.draining = true;
                    if !idle {
                        // A request under way is still read and answered (with close).
                        return Some(true);
                    }
                    // Bytes already in flight get the drain window; then the connection closes.
                    fast_timeout(self.app.window, reader.read_buf(&mut self.rbuf)).await.ok()?
                }
            }
        } else {
            let wait = if idle { self.app.window } else { KEEPALIVE };
            fast_timeout(wait, reader.read_buf(&mut self.rbuf))
                .await
                .ok()?
        };
        Some(matches!(read, Ok(n) if n > 0))
    }

    /// Write one answer of ours (`Own`), count and log it; `false` when the client is gone.
    async fn write_own(&mut self, o: Own<'_>) -> bool {
        let start = Instant::now();
        let edge = &self.app.edge;
        if self.scratch.request_id.is_empty() {
            self.scratch
                .request_id
                .extend_from_slice(&edge.request_id_bytes());
        }
        let retry = (o.retry_after > 0).then(|| o.retry_after.to_string());
        let hsts = o.route.filter(|_| self.tls).and_then(|r| r.hsts());
        let mut extra = [("", ""); 2];
        let mut n = 0;
        for (name, value) in [
            ("retry-after", retry.as_deref()),
            ("strict-transport-security", hsts),
        ] {
            if let Some(v) = value {
                extra[n] = (name, v);
                n += 1;
            }
        }
        let status = o.answer.status();
        self.chead.clear();
        let sent = pages::write_h1(
            &mut self.chead,
            status,
            o.html,
            o.head_only,
            &self.scratch.request_id,
            &extra[..n],
            o.close,
        );
        let ok = write_all(&mut self.client, &self.chead).await.is_ok();
        let elapsed = start.elapsed();
        match o.route {
            Some(r) => r.observe(status, elapsed),
            None => edge
                .unknown_metrics()
                .observe(status, elapsed.as_secs_f64()),
        }
        edge.count_answer(o.answer, o.route);
        let (method, path) = o.line.map_or(("", ""), |l| l.method_and_path(&self.uhead));
        edge.access_log(&AccessRecord {
            client: self.peer.as_ref(),
            method,
            host: if o.line.is_some() {
                self.scratch.host.as_str()
            } else {
                ""
            },
            path,
            version: "HTTP/1.1",
            tls: self.tls,
            status,
            elapsed,
            bytes_sent: if ok { sent } else { 0 },
            route: o.route.map_or("", |r| r.id()),
            upstream: None,
            request_id: std::str::from_utf8(&self.scratch.request_id).unwrap_or(""),
            error: "",
            outcome: o.answer.name(),
            engine: "http1",
        });
        self.last = Instant::now();
        ok
    }

    /// Answer a head nobody can serve (it does not parse, or never ends within the limit)
    /// with our page, log it, and close.
    async fn refuse(&mut self, answer: Answer, html: bool) {
        self.write_own(Own {
            answer,
            html,
            head_only: false,
            close: true,
            retry_after: 0,
            route: None,
            line: None,
        })
        .await;
        let _ = self.client.shutdown().await;
    }

    /// Hand one request to the Pingora engine with its verdict, and take the connection back
    /// when it is done (`None`: it closed it, or the request did not end where it was framed).
    async fn handoff(mut self, h: Handoff, limit: usize) -> Option<Self> {
        let inner = self.app.inner.clone();
        self.rbuf.advance(h.head_len);
        // The body bytes already read go with the head; what follows them is kept for later.
        let (now, remaining, tracker) = match h.body {
            Body::None => (0, 0, None),
            Body::Upgrade => (self.rbuf.len(), 0, None),
            Body::Length(n) => {
                let now = usize::try_from(n)
                    .unwrap_or(usize::MAX)
                    .min(self.rbuf.len());
                (now, n - now as u64, None)
            }
            Body::Chunked => {
                let mut t = ChunkedTracker::default();
                match t.feed(&self.rbuf) {
                    Ok(now) => (now, 0, Some(t)),
                    Err(_) => {
                        self.refuse(Answer::BadRequest(Malformed::Framing), false)
                            .await;
                        return None;
                    }
                }
            }
        };
        let mut prefix = BytesMut::with_capacity(self.uhead.len() + now);
        prefix.extend_from_slice(&self.uhead);
        prefix.extend_from_slice(&self.rbuf[..now]);
        self.rbuf.advance(now);
        let after = std::mem::take(&mut self.rbuf);
        let stream = OneRequest::new(self.client, h.body, remaining, tracker, after, limit);
        let mut session = ServerSession::new_http1(Box::new(stream));
        session.set_keepalive(if self.draining {
            None
        } else {
            Some(KEEPALIVE.as_secs())
        });
        session.set_pipelined_prefix(prefix);
        let verdict: Verdict = h.verdict;
        session.set_connection_user_context(Some(Box::new(Decided { verdict })));
        let reused = inner.process_new_http(session, &self.shutdown).await?;
        let (stream, _) = reused.consume();
        let one = stream.into_any().downcast::<OneRequest>().ok()?;
        let (client, rest) = (*one).into_parts()?;
        self.client = client;
        self.rbuf = rest;
        self.last = Instant::now();
        Some(self)
    }
}
