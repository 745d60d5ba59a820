//! The HTTP/1.1 engine: every HTTP/1 connection's loop, and the fast path that proxies plain
//! storefront requests without Pingora's per-request session machinery.
//!
//! Pingora's HTTP/1 proxy path costs ~80k instructions per request before any of our phases
//! run (benches/RESULTS.md); nginx spends ~29k on the whole request. This engine serves the
//! requests that make up a storefront's traffic (`GET`, `HEAD` and `OPTIONS` without a body,
//! `POST`, `PUT`, `PATCH` and `DELETE` with a `Content-Length` body, HTTP/1.1, with a proxy
//! verdict) with one parse of the head, one copy into the upstream request, pooled upstream
//! connections and bodies relayed as they arrive.
//!
//! Jobs, one module each: the connection loop and the drain of a graceful stop (`conn`),
//! request heads to facts and rebuilt heads (`request`), upstream attempts and the relay of
//! the response (`relay`), response heads (`response`), handing one request to Pingora
//! (`handoff`), the upstream pool (`pool`), chunked framing (`chunked`).
//!
//! Invariants:
//! - The loop reads every request head on every HTTP/1 connection, at most
//!   `max_request_header_bytes` of it (431 and close beyond); the admission step decides each
//!   request once ([`crate::service::decide`]).
//! - A request is proxied here only when its head parsed completely and strictly, it has no
//!   body or one framed by `Content-Length`, and its verdict is "proxy"; a bodiless one
//!   refused by a tenant's limit gets its 429 here too (`Conn::limited`: refusing a flood
//!   must cost less than serving it). A request with a body is never sent upstream twice.
//!   Everything else (chunked bodies, `Upgrade`, `Expect`, HTTP/1.0, every other answer of
//!   our own, holds for sleeping stores) is handed to
//!   the Pingora engine, one request at a time, with the verdict ([`handoff`]). The engine
//!   matrix in `tests/` checks the two 429 writers give the same answer.
//! - A response is relayed only when its end is known exactly (no body, `Content-Length`, or
//!   chunked, tracked byte by byte); an upstream connection is reused only when the response
//!   ended exactly at the end of what was read and the upstream did not ask to close.
//! - Upstream connections are pooled per route (or per address) exactly as for the Pingora
//!   path, in [`pool::UpstreamPool`].
//! - After a graceful stop begins, idle connections get the drain window for bytes already in
//!   flight, then close; responses carry `Connection: close`.

pub mod chunked;
mod conn;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod handoff;
pub mod pool;
mod relay;
mod request;
mod response;

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use self::pool::UpstreamPool;
use super::EdgeProxy;
use crate::limits::connections::ConnectionLimits;

/// Most headers an upstream response head may have.
const MAX_HEADERS: usize = 128;
/// Largest response head accepted from an upstream.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Read size for bodies.
const READ_CHUNK: usize = 16 * 1024;
/// How long a client may stay idle between requests.
const KEEPALIVE: Duration = Duration::from_secs(60);

/// Every connection of the proxy listeners: admitted against the connection limits, its TLS
/// handshake done (bounded in time), then served: HTTP/1 by the loop here, handing what the
/// fast path does not serve to `inner` (the Pingora proxy, wrapped in
/// [`super::drain::Draining`]), which also serves HTTP/2.
pub struct Http1Service<A> {
    edge: EdgeProxy,
    enabled: bool,
    inner: Arc<A>,
    pool: UpstreamPool,
    window: Duration,
    connections: Option<Arc<ConnectionLimits>>,
    tls: Option<TlsListener>,
}

/// The TLS listener: its address (connections accepted there are TLS), the acceptor (SNI
/// certificates, ALPN) and how long a handshake may take.
pub struct TlsListener {
    /// Where it listens (an unspecified IP: every address, on this port).
    pub addr: std::net::SocketAddr,
    /// The rustls acceptor built from the listener's settings.
    pub acceptor: Arc<pingora::listeners::tls::Acceptor>,
    /// The handshake's deadline.
    pub timeout: Duration,
}

impl TlsListener {
    /// Whether `stream` was accepted on this listener.
    fn accepted(&self, stream: &Stream) -> bool {
        let local = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied());
        local.is_some_and(|l| {
            l.port() == self.addr.port()
                && (self.addr.ip().is_unspecified()
                    || tenantgate_config::net::canonical(l.ip())
                        == tenantgate_config::net::canonical(self.addr.ip()))
        })
    }
}

impl<A> Http1Service<A> {
    /// `edge` decides and writes metrics for both engines; `enabled: false` hands every
    /// request to `inner` (the heads are still read and bounded here); `threads` sizes the
    /// upstream pool's shards, each keeping `per_thread` idle connections; `window` is the
    /// drain window of a graceful stop.
    pub fn new(
        edge: EdgeProxy,
        inner: A,
        enabled: bool,
        threads: usize,
        per_thread: usize,
        window: Duration,
    ) -> Self {
        let pool = UpstreamPool::new(threads, per_thread, edge.settings().idle_timeout);
        Http1Service {
            edge,
            enabled,
            inner: Arc::new(inner),
            pool,
            window,
            connections: None,
            tls: None,
        }
    }

    /// Admit connections against `limits`, and do the TLS handshake of those accepted on
    /// `tls`'s listener.
    pub fn with_listeners(
        mut self,
        limits: Arc<ConnectionLimits>,
        tls: Option<TlsListener>,
    ) -> Self {
        self.connections = Some(limits);
        self.tls = tls;
        self
    }

    /// The TLS handshake of a connection of the TLS listener, within its deadline.
    async fn handshake(&self, tls: &TlsListener, stream: Stream) -> Option<Stream> {
        let l4 = stream
            .into_any()
            .downcast::<pingora::protocols::l4::stream::Stream>()
            .ok()?;
        let failures = &self.edge.metrics().tls_handshake_failures;
        match pingora_timeout::timeout(tls.timeout, tls.acceptor.tls_handshake(*l4)).await {
            Ok(Ok(s)) => Some(Box::new(s)),
            Ok(Err(e)) => {
                failures[1].inc();
                tracing::debug!("TLS handshake failed: {e}");
                None
            }
            Err(_) => {
                failures[0].inc();
                None
            }
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
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        // Counted from here to the close, TLS handshake included.
        let _admitted = match &self.connections {
            Some(limits) => match limits.admit(peer) {
                Ok(guard) => Some(guard),
                Err(why) => {
                    limits.refused(why, peer);
                    return None;
                }
            },
            None => None,
        };
        let stream = match &self.tls {
            // Boxed: the handshake's state (a whole rustls connection) is not kept inside
            // every connection's future for its life.
            Some(tls) if tls.accepted(&stream) => Box::pin(self.handshake(tls, stream)).await?,
            _ => stream,
        };
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.inner.process_new(stream, shutdown).await;
        }
        conn::Conn::new(self, stream, shutdown).run().await
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.inner).await;
    }
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

    /// The outcome's name in the access log, as [`crate::service::decide::Answer::name`]
    /// gives it for the Pingora engine.
    fn outcome(self) -> &'static str {
        match self {
            Failure::ConnectTimeout | Failure::ReadTimeout | Failure::WriteTimeout => {
                "gateway_timeout"
            }
            Failure::Client => "client_gone",
            _ => "bad_gateway",
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
    upstream: Option<std::net::SocketAddr>,
    error: Option<Failure>,
    /// The client connection must be closed.
    close: bool,
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
