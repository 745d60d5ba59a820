//! Handing one HTTP/1 request to the Pingora engine, and taking the connection back after it.
//!
//! The connection loop reads every request head itself (bounded by
//! `max_request_header_bytes`). A request the fast path does not serve is given to Pingora as
//! a canonical head (the pipelined prefix of a fresh session) over a [`OneRequest`] stream,
//! which delivers exactly this request's body and nothing after it. So Pingora never reads a
//! request head off the wire: the bound holds on both engines, and what Pingora parses is
//! what the admission step decided on. Bytes the client sends after the body (the next,
//! pipelined request) are kept aside, bounded, and returned to the connection loop with the
//! stream when Pingora is done.
//!
//! Invariants:
//! - bytes past the end of the body, as this module frames it (`Content-Length`, or chunked
//!   tracked byte by byte), never reach Pingora; a request whose body Pingora did not read to
//!   that end leaves the connection unusable, and it is closed;
//! - after an `Upgrade` request the stream is Pingora's for good (an upgraded connection is
//!   never reused).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::chunked::ChunkedTracker;
use super::request::Body;

/// Where the stream is in the request's body.
#[derive(Debug)]
enum State {
    /// This many body bytes are still to come.
    Length(u64),
    /// A chunked body, not yet at its end.
    Chunked(ChunkedTracker),
    /// The body is complete: reads only watch for the client closing, keeping what it sends.
    Done,
    /// The body was not valid chunked encoding.
    Broken,
    /// A protocol change: everything is Pingora's.
    Unbounded,
}

/// The client stream as Pingora sees it while serving one request.
pub(super) struct OneRequest {
    inner: Stream,
    state: State,
    /// Bytes after the end of the request, for the connection loop.
    stash: BytesMut,
    /// Most bytes kept in `stash` (the head limit: they are the next request's head).
    limit: usize,
}

impl std::fmt::Debug for OneRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneRequest")
            .field("state", &self.state)
            .field("stash", &self.stash.len())
            .finish()
    }
}

impl OneRequest {
    /// Wrap `inner` for a request with `body`, of which `tracker` (chunked bodies) has
    /// already seen what was read with the head; `stash` holds what was read after the body.
    pub(super) fn new(
        inner: Stream,
        body: Body,
        remaining: u64,
        tracker: Option<ChunkedTracker>,
        stash: BytesMut,
        limit: usize,
    ) -> Self {
        let state = match body {
            Body::Upgrade => State::Unbounded,
            Body::None => State::Done,
            Body::Length(_) if remaining == 0 => State::Done,
            Body::Length(_) => State::Length(remaining),
            Body::Chunked => match tracker {
                Some(t) if t.is_done() => State::Done,
                Some(t) => State::Chunked(t),
                None => State::Chunked(ChunkedTracker::default()),
            },
        };
        OneRequest {
            inner,
            state,
            stash,
            limit,
        }
    }

    /// The stream and the bytes read past this request, if the request ended exactly where
    /// it was framed (else `None`: the connection must close).
    pub(super) fn into_parts(self) -> Option<(Stream, BytesMut)> {
        match self.state {
            State::Done => Some((self.inner, self.stash)),
            _ => None,
        }
    }

    /// Read into the stash while the body is complete: a close shows as EOF, anything else
    /// is the next request and waits for the connection loop.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut tmp = [0u8; 2048];
        loop {
            if self.stash.len() >= self.limit {
                // The next head is already as long as a head may be: the connection loop
                // refuses it once Pingora is done. Nothing more is read meanwhile.
                return Poll::Pending;
            }
            let room = (self.limit - self.stash.len()).min(tmp.len());
            let mut rb = ReadBuf::new(&mut tmp[..room]);
            match Pin::new(&mut *self.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => self.stash.extend_from_slice(rb.filled()),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncRead for OneRequest {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.state {
            State::Unbounded => Pin::new(&mut *this.inner).poll_read(cx, buf),
            State::Done => this.poll_idle(cx),
            State::Broken => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed chunked request body",
            ))),
            State::Length(left) => {
                let want = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(buf.remaining());
                if want == 0 {
                    return Poll::Ready(Ok(()));
                }
                let dst = buf.initialize_unfilled_to(want);
                let mut rb = ReadBuf::new(dst);
                std::task::ready!(Pin::new(&mut *this.inner).poll_read(cx, &mut rb))?;
                let got = rb.filled().len();
                buf.advance(got);
                *left -= got as u64;
                if *left == 0 {
                    this.state = State::Done;
                }
                Poll::Ready(Ok(()))
            }
            State::Chunked(tracker) => {
                if buf.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
                let want = buf.remaining();
                let dst = buf.initialize_unfilled_to(want);
                let mut rb = ReadBuf::new(dst);
                std::task::ready!(Pin::new(&mut *this.inner).poll_read(cx, &mut rb))?;
                let got = rb.filled().len();
                let read = &dst[..got];
                let body = match tracker.feed(read) {
                    Ok(n) => n,
                    Err(_) => {
                        this.state = State::Broken;
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "malformed chunked request body",
                        )));
                    }
                };
                if tracker.is_done() {
                    this.stash.extend_from_slice(&read[body..]);
                    this.state = State::Done;
                }
                buf.advance(body);
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncWrite for OneRequest {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for OneRequest {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for OneRequest {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for OneRequest {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for OneRequest {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for OneRequest {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for OneRequest {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

// Peeking is only used for the h2c preface, which plain HTTP/1 sessions never look for.
#[async_trait]
impl Peek for OneRequest {}
