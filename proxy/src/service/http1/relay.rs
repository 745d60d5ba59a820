//! Proxying one request on the fast path: upstream attempts with passive health, the
//! exchange on a pooled or new connection, the relay of the response, our 502/504 pages, and
//! the request's metrics and access-log line.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Buf;
use pingora::apps::HttpServerApp;
use pingora_timeout::fast_timeout::fast_timeout;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::chunked::ChunkedTracker;
use super::conn::Conn;
use super::pool::PoolKey;
use super::request::Plan;
use super::response::{response_head, Extras};
use super::{
    push_chunk, read_before, write_all, Failure, Framing, Served, MAX_RESPONSE_HEAD, READ_CHUNK,
};
use crate::metrics::UpstreamErrorKind;
use crate::router::RouteEntry;
use crate::service::{pages, AccessRecord};

impl<A> Conn<'_, A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// Choose upstreams until one answers (passive health as in the Pingora path), relay its
    /// response, or answer our 502/504.
    pub(super) async fn proxy(&mut self, plan: &Plan, start: Instant) -> Served {
        let edge = &self.app.edge;
        let route = &plan.route;
        let mut tried = 0u64;
        let mut failure = Failure::ConnectRefused;
        let mut upstream = None;
        let now_ms = edge.router().ms_at(start);
        while let Some(i) = route.pick(now_ms, tried, plan.upstreams.clone()) {
            if i < 64 {
                tried |= 1 << i;
            }
            let Some(addr) = route.upstream(i) else { break };
            upstream = Some(addr);
            let key = PoolKey {
                group: if edge.settings().pool_per_route {
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
                    None => match self.connect(addr, route).await {
                        Ok(c) => c,
                        Err(f) => {
                            route.mark_down(
                                i,
                                edge.router().until_ms(edge.settings().unhealthy_cooldown),
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
                    // answered, so a GET, HEAD or OPTIONS goes out again on a new one (a
                    // request with a body, even an empty one, is never sent twice).
                    Err(Failure::Stale) if reused && plan.body.is_none() => continue,
                    Err(f) => return self.error_page(plan, f, Some(addr)).await,
                }
            }
            if !route.has_untried(tried, plan.upstreams.clone()) {
                break;
            }
        }
        self.error_page(plan, failure, upstream).await
    }

    async fn connect(&self, addr: SocketAddr, route: &RouteEntry) -> Result<TcpStream, Failure> {
        if let Some(r) = self.app.edge.router().reaches_own_listener(addr) {
            tracing::warn!(
                rule = r.rule.as_str(),
                "upstream refused at connect: {}",
                r.reason
            );
            return Err(Failure::Forbidden);
        }
        let settings = self.app.edge.settings();
        let (connect, _) = route.timeouts(settings.connect_timeout, settings.read_timeout);
        match fast_timeout(connect, TcpStream::connect(addr)).await {
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
        let settings = self.app.edge.settings();
        let (_, read_timeout) = plan
            .route
            .timeouts(settings.connect_timeout, settings.read_timeout);
        // The body bytes that came with the head go out in the same write.
        let mut body_left = plan.body.unwrap_or(0);
        if body_left > 0 {
            let inline = self
                .rbuf
                .len()
                .min(usize::try_from(body_left).unwrap_or(usize::MAX));
            self.uhead.extend_from_slice(&self.rbuf[..inline]);
            self.rbuf.advance(inline);
            body_left -= inline as u64;
        }
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
        // The rest of the body as the client sends it. An upstream that stops taking it may
        // have answered already (a refusal of its own): its answer is read all the same, and
        // the client connection closes after it (the rest of its body was never read).
        let mut body_failed = None;
        if body_left > 0 {
            match self.send_body(&mut conn, body_left).await {
                Ok(()) => {}
                Err(Failure::Client) => return Err(Failure::Client),
                Err(f) => body_failed = Some(f),
            }
        }
        self.ubuf.clear();
        let (status, framing, upstream_keep, body_start) = loop {
            self.chead.clear();
            let extras = Extras {
                request_id: &self.scratch.request_id,
                close: plan.close || self.draining,
                hsts: if self.tls { plan.route.hsts() } else { None },
            };
            match response_head(&self.ubuf, plan.head_only, extras, &mut self.chead) {
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
            self.upstream_wait.arm(at, read_timeout);
            match read_before(&mut conn, &mut self.ubuf, &mut self.upstream_wait).await {
                None => return Err(body_failed.unwrap_or(Failure::ReadTimeout)),
                Some(Ok(0) | Err(_)) if reused && self.ubuf.is_empty() => {
                    return Err(body_failed.unwrap_or(Failure::Stale))
                }
                Some(Ok(0) | Err(_)) => return Err(body_failed.unwrap_or(Failure::Protocol)),
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
            close: framing == Framing::Close || body_failed.is_some(),
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
            self.upstream_wait.arm(Instant::now(), read_timeout);
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
        if done && upstream_keep && served.error.is_none() && body_failed.is_none() {
            self.app.pool.put(key, conn, start);
        }
        Ok(served)
    }

    /// Stream `left` more bytes of the request's body from the client to the upstream, as
    /// they arrive (bytes of a pipelined next request stay in the read buffer).
    /// `Err(Failure::Client)`: the client stopped sending; other errors: the upstream stopped
    /// taking it.
    async fn send_body(&mut self, conn: &mut TcpStream, mut left: u64) -> Result<(), Failure> {
        let settings = self.app.edge.settings();
        loop {
            let have = self
                .rbuf
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            if have > 0 {
                match fast_timeout(settings.write_timeout, conn.write_all(&self.rbuf[..have])).await
                {
                    Err(_) => return Err(Failure::WriteTimeout),
                    Ok(Err(_)) => return Err(Failure::Protocol),
                    Ok(Ok(())) => {}
                }
                self.rbuf.advance(have);
                left -= have as u64;
            }
            if left == 0 {
                return Ok(());
            }
            self.rbuf
                .reserve(READ_CHUNK.min(usize::try_from(left).unwrap_or(usize::MAX)));
            match fast_timeout(settings.read_timeout, self.client.read_buf(&mut self.rbuf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return Err(Failure::Client),
            }
        }
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
        self.chead.clear();
        let hsts = if self.tls { plan.route.hsts() } else { None };
        let extra: &[(&str, &str)] = match hsts {
            Some(v) => &[("strict-transport-security", v)],
            None => &[],
        };
        served.bytes_sent = pages::write_h1(
            &mut self.chead,
            status,
            plan.html,
            plan.head_only,
            &self.scratch.request_id,
            extra,
            true,
        ) as u64;
        if write_all(&mut self.client, &self.chead).await.is_err() {
            served.bytes_sent = 0;
        }
        served
    }

    /// Metrics and the access log, once per request, as `EdgeProxy::logging` writes them.
    /// Returns when the request ended.
    pub(super) fn finish(&self, plan: &Plan, served: &Served, start: Instant) -> Instant {
        let edge = &self.app.edge;
        let end = Instant::now();
        let elapsed = end.saturating_duration_since(start);
        let metrics = &plan.route.metrics;
        if served.status > 0 {
            plan.route.observe(served.status, elapsed);
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
        if edge.logs_access() {
            let (method, path) = plan.line.method_and_path(&self.uhead);
            edge.access_log(&AccessRecord {
                client: self.peer.as_ref(),
                method,
                host: self.scratch.host.as_str(),
                path,
                version: "HTTP/1.1",
                tls: self.tls,
                status: served.status,
                elapsed,
                bytes_sent: served.bytes_sent as usize,
                route: plan.route.id(),
                upstream: served.upstream,
                request_id: std::str::from_utf8(&self.scratch.request_id).unwrap_or(""),
                error: served.error.map_or("", Failure::name),
                outcome: served.error.map_or("proxied", Failure::outcome),
                engine: "http1",
            });
        }
        end
    }
}
