//! HTTP/1 request heads: parsed once and strictly, turned into the admission step's facts, and
//! rebuilt, never forwarded raw: for the upstream when the fast path serves the request, or
//! as the canonical head the Pingora engine reads when it does.
//!
//! Both rebuilt heads drop header names with `_` (unless allowed) and carry one canonical
//! `Content-Length`; an absolute-form target becomes origin-form with its authority as `Host`.
//! The upstream head also loses hop-by-hop headers and client copies of ours, and gains the
//! forwarding headers, our `Via` entry and the request id.

use std::mem::MaybeUninit;

use tenantgate_config::host::{normalize_into, HostBuf};

use super::Http1Service;
use crate::service::decide::{
    Answer, Coding, ConnectionFacts, HostFact, Malformed, RequestFacts, Target, Verdict,
};
use crate::service::forward::{self, tokens, Length, Name};
use crate::service::pages;

/// Most header fields a head may have (the configured limit is at most this).
pub(super) const MAX_HEADERS: usize = 256;

/// How the body of a request handed to Pingora is delimited, so that Pingora is given exactly
/// this request and nothing after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Body {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked.
    Chunked,
    /// A protocol change was asked for (`Upgrade`): after the head, the stream is Pingora's.
    Upgrade,
}

/// A request the fast path proxies; its upstream head is already in `Conn::uhead`.
pub(super) struct Plan {
    pub head_len: usize,
    pub route: std::sync::Arc<crate::router::RouteEntry>,
    pub upstreams: std::ops::Range<usize>,
    pub head_only: bool,
    /// The client asked to close after this response.
    pub close: bool,
    /// The client prefers HTML (for our own error pages).
    pub html: bool,
    /// Where its method and target are in `uhead`.
    pub line: Line,
    /// The `Content-Length` of its body, streamed to the upstream after the head (`None`:
    /// none given, a GET, HEAD or OPTIONS; only such a request is ever sent twice).
    pub body: Option<u64>,
    /// Its place among the tenant's requests in flight, held until the response ends.
    pub _permit: Option<crate::limits::requests::Permit>,
    /// Counts it among the route's requests in flight until the response ends.
    pub _active: crate::traffic::InFlight,
}

/// A plain request refused by a tenant's limit.
pub(super) struct Limited {
    pub head_len: usize,
    pub answer: Answer,
    pub route: std::sync::Arc<crate::router::RouteEntry>,
    pub retry_after: u32,
    pub head_only: bool,
    pub close: bool,
    pub html: bool,
    /// Where its method and target are in `uhead`.
    pub line: Line,
}

/// Where a head's method and target are in `Conn::uhead` (the head as rebuilt), for the
/// access log.
#[derive(Debug, Clone, Copy)]
pub(super) struct Line {
    method_len: usize,
    target_end: usize,
}

impl Line {
    /// The method and the path (without the query).
    pub fn method_and_path(self, uhead: &[u8]) -> (&str, &str) {
        let text = |r: std::ops::Range<usize>| {
            uhead
                .get(r)
                .and_then(|b| std::str::from_utf8(b).ok())
                .unwrap_or("")
        };
        let target = text(self.method_len + 1..self.target_end);
        let path = target.split_once('?').map_or(target, |(p, _)| p);
        (text(0..self.method_len), path)
    }
}

/// A request the Pingora engine serves, with the verdict already reached; its canonical head
/// is in `Conn::uhead`.
pub(super) struct Handoff {
    pub head_len: usize,
    pub verdict: Verdict,
    pub body: Body,
}

/// What the head at the start of the read buffer asks for.
pub(super) enum Prep {
    /// Not all of it has arrived.
    Partial,
    /// It cannot be served by anyone: the connection answers this and closes.
    Refuse {
        /// The answer.
        answer: Answer,
        /// The client prefers HTML.
        html: bool,
    },
    /// The fast path serves it.
    Proxy(Plan),
    /// A limit's 429 for a plain request, written by the fast path: a refusal must cost
    /// less than what it refuses (the verdict is the admission step's all the same).
    Limited(Limited),
    /// Pingora serves it.
    Handoff(Handoff),
}

/// Scratch space of one parse, kept by the connection.
pub(super) struct Scratch {
    pub host: HostBuf,
    pub request_id: Vec<u8>,
}

/// The bytes a request target may hold (RFC 3986 pchar and query characters, with the
/// characters browsers leave unescaped in queries); controls, space, `"`, `<`, `>`, `\`, `#`
/// and non-ASCII bytes are refused.
fn target_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
                | b'?'
                | b'%'
                | b'['
                | b']'
                | b'{'
                | b'}'
                | b'|'
                | b'^'
                | b'`'
        )
}

/// The target's form, its authority (absolute-form) and its path-and-query.
fn target_form<'a>(method: &str, target: &'a str) -> (Target, Option<&'a str>, &'a str) {
    if target == "*" {
        let form = if method == "OPTIONS" {
            Target::Asterisk
        } else {
            Target::Invalid
        };
        return (form, None, "*");
    }
    if !target.bytes().all(target_byte) {
        return (Target::Invalid, None, "/");
    }
    if target.starts_with('/') {
        return (Target::Origin, None, target);
    }
    let rest = ["http://", "https://"].iter().find_map(|scheme| {
        let head = target.get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme)
            .then(|| &target[scheme.len()..])
    });
    let Some(rest) = rest else {
        return (Target::Invalid, None, "/");
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, pq) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') || pq.starts_with('?') {
        return (Target::Invalid, None, "/");
    }
    (
        Target::Absolute,
        Some(authority),
        if pq.is_empty() { "/" } else { pq },
    )
}

impl<A> Http1Service<A> {
    /// Parse the head at the start of `buf`, decide, and write the head to send on into
    /// `out`: the upstream's (fast path) or Pingora's.
    pub(super) fn prepare(
        &self,
        buf: &[u8],
        conn: &ConnectionFacts<'_>,
        s: &mut Scratch,
        out: &mut Vec<u8>,
    ) -> Prep {
        if buf.is_empty() {
            return Prep::Partial;
        }
        let edge = &self.edge;
        let settings = edge.settings();
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let head_len = match req.parse_with_uninit_headers(buf, &mut headers) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Prep::Partial,
            Err(httparse::Error::TooManyHeaders) => {
                return Prep::Refuse {
                    answer: Answer::HeadersTooLarge,
                    html: false,
                }
            }
            Err(_) => {
                return Prep::Refuse {
                    answer: Answer::BadRequest(Malformed::Head),
                    html: false,
                }
            }
        };
        let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
            return Prep::Refuse {
                answer: Answer::BadRequest(Malformed::Head),
                html: false,
            };
        };
        let (form, authority, path_and_query) = target_form(method, target);
        let path = path_and_query
            .split_once('?')
            .map_or(path_and_query, |(p, _)| p);

        // One pass classifies every header, gathers the facts and writes the upstream head
        // as the fast path would send it; a request that goes to Pingora instead has its
        // head written again (the rare path).
        let allow_underscores = settings.allow_underscores_in_headers;
        let (mut count, mut bytes) = (0usize, 0usize);
        let mut host_header: Option<&[u8]> = None;
        let mut hosts = 0;
        let mut close = minor == 0;
        let mut named_other = false;
        let mut html = false;
        let (mut seen_accept, mut seen_id) = (false, false);
        let mut looped = false;
        let mut length = Length::Absent;
        let mut coding = Coding::None;
        let mut upgrade = false;
        let mut expect = false;
        let mut forwarded_for = None;
        s.request_id.clear();
        out.clear();
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        let method_len = method.len();
        out.extend_from_slice(path_and_query.as_bytes());
        let line = Line {
            method_len,
            target_end: out.len(),
        };
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for h in req.headers.iter() {
            let (name, value) = (h.name.as_bytes(), h.value);
            count += 1;
            bytes += name.len() + value.len();
            match Name::of(name) {
                Name::Host => {
                    hosts += 1;
                    host_header = Some(value);
                    if authority.is_some() {
                        // Written once the authority is normalised.
                        continue;
                    }
                }
                // The first `Accept` and `X-Request-Id` count.
                Name::Accept if !seen_accept => {
                    seen_accept = true;
                    html = pages::wants_html(Some(value));
                }
                Name::Connection => {
                    for token in tokens(value) {
                        if token.eq_ignore_ascii_case(b"close") {
                            close = true;
                        } else if token.eq_ignore_ascii_case(b"keep-alive") {
                            close = false;
                        } else {
                            named_other = true;
                        }
                    }
                    continue;
                }
                Name::RequestId => {
                    if !seen_id {
                        seen_id = true;
                        if forward::valid_request_id(value) {
                            s.request_id.extend_from_slice(value);
                        }
                    }
                    continue;
                }
                Name::Via => looped |= edge.loop_mark().marks(value),
                Name::ContentLength => {
                    length = forward::content_length(length, value);
                    continue;
                }
                Name::TransferEncoding => {
                    let mut t = tokens(value);
                    coding = match (coding, t.next(), t.next()) {
                        (Coding::None, Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => {
                            Coding::Chunked
                        }
                        _ => Coding::Invalid,
                    };
                    continue;
                }
                Name::Upgrade => {
                    upgrade = true;
                    continue;
                }
                Name::Expect => expect = true,
                Name::XForwardedFor => {
                    forwarded_for = Some(value);
                    continue;
                }
                n if n.ours() || n.hop_by_hop() => continue,
                _ => {}
            }
            if !forward::underscore_dropped(name, allow_underscores) {
                push_header(out, name, value);
            }
        }
        if minor == 0 && coding != Coding::None {
            // RFC 9112 §6.1: a transfer coding in an HTTP/1.0 request is faulty framing.
            coding = Coding::Invalid;
        }
        let host = match (hosts, authority.map(str::as_bytes).or(host_header)) {
            (0, _) => HostFact::Missing,
            (1, Some(raw)) => match normalize_into(raw, &mut s.host) {
                Ok(h) => HostFact::Name(h),
                Err(_) => HostFact::Invalid,
            },
            _ => HostFact::Duplicate,
        };
        let facts = RequestFacts {
            method,
            host,
            target: form,
            path,
            path_and_query,
            header_count: count,
            header_bytes: bytes,
            looped,
            length,
            coding,
            forwarded_for,
            at: None,
        };
        let verdict = edge.decide(&facts, conn);
        let host = match host {
            HostFact::Name(h) => h,
            _ => "",
        };
        let head_only = method == "HEAD";
        // What the fast path serves: HTTP/1.1 without a transfer coding, an upgrade, an
        // `Expect` or other connection options, and a body only when `Content-Length` frames
        // it (streamed to the upstream as it arrives).
        let simple = minor == 1 && coding == Coding::None && !upgrade && !expect && !named_other;
        let plain =
            simple && length == Length::Absent && matches!(method, "GET" | "HEAD" | "OPTIONS");
        let body = match length {
            Length::Exact(n) if simple => Some(n),
            _ => None,
        };
        let served = (plain || body.is_some())
            && matches!(
                method,
                "GET" | "HEAD" | "OPTIONS" | "POST" | "PUT" | "PATCH" | "DELETE"
            );
        match verdict {
            Verdict::Proxy {
                route,
                upstreams,
                client,
                permit,
                active,
            } if served && self.enabled => {
                if authority.is_some() {
                    push_header(out, b"host", host.as_bytes());
                }
                if let Some(n) = body {
                    out.extend_from_slice(b"content-length: ");
                    crate::access_log::number(out, n);
                    out.extend_from_slice(b"\r\n");
                }
                forward::push_forwarding_headers(out, client, host, conn.tls);
                edge.loop_mark().push_header(out, "1.1");
                if s.request_id.is_empty() {
                    s.request_id.extend_from_slice(&edge.request_id_bytes());
                }
                push_header(out, b"x-request-id", &s.request_id);
                out.extend_from_slice(b"\r\n");
                Prep::Proxy(Plan {
                    head_len,
                    upstreams,
                    route,
                    head_only,
                    close,
                    html,
                    line,
                    body,
                    _permit: permit,
                    _active: active,
                })
            }
            Verdict::Answer {
                answer: answer @ Answer::Limited(_),
                route: Some(route),
                retry_after,
            } if plain && self.enabled => Prep::Limited(Limited {
                head_len,
                answer,
                route,
                retry_after,
                head_only,
                close,
                html,
                line,
            }),
            verdict => {
                // Pingora reads this head: the client's headers (it strips hop-by-hop ones
                // itself and keeps an upgrade intact), canonical framing, the authority as Host.
                out.clear();
                out.extend_from_slice(method.as_bytes());
                out.push(b' ');
                out.extend_from_slice(path_and_query.as_bytes());
                out.extend_from_slice(if minor == 0 {
                    b" HTTP/1.0\r\n"
                } else {
                    b" HTTP/1.1\r\n"
                });
                for h in req.headers.iter() {
                    let name = h.name.as_bytes();
                    let class = Name::of(name);
                    if class == Name::ContentLength
                        || forward::underscore_dropped(name, allow_underscores)
                    {
                        continue;
                    }
                    if class == Name::Host && authority.is_some() {
                        push_header(out, b"host", host.as_bytes());
                        continue;
                    }
                    push_header(out, name, h.value);
                }
                if let Length::Exact(n) = length {
                    push_header(out, b"content-length", n.to_string().as_bytes());
                }
                out.extend_from_slice(b"\r\n");
                let body = match (length, coding) {
                    _ if upgrade => Body::Upgrade,
                    (_, Coding::Chunked) => Body::Chunked,
                    (Length::Exact(n), _) => Body::Length(n),
                    _ => Body::None,
                };
                Prep::Handoff(Handoff {
                    head_len,
                    verdict,
                    body,
                })
            }
        }
    }
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_targets_follow_rfc_9112_forms() {
        let form = target_form;
        assert_eq!(form("GET", "/a?b=1"), (Target::Origin, None, "/a?b=1"));
        assert_eq!(
            form("GET", "/q?x=a|b^{c}"),
            (Target::Origin, None, "/q?x=a|b^{c}")
        );
        assert_eq!(
            form("GET", "http://a.test/x?y"),
            (Target::Absolute, Some("a.test"), "/x?y")
        );
        assert_eq!(
            form("GET", "HTTPS://a.test:8443"),
            (Target::Absolute, Some("a.test:8443"), "/")
        );
        assert_eq!(form("OPTIONS", "*").0, Target::Asterisk);
        for (m, bad) in [
            ("GET", "*"),
            ("GET", "x.other.test/"),
            ("GET", "a.test:80"),
            ("CONNECT", "a.test:443"),
            ("GET", "ftp://a.test/"),
            ("GET", "http://user@a.test/"),
            ("GET", "http:///x"),
            ("GET", "/a#frag"),
            ("GET", "/a\"b"),
            ("GET", "/a<b>"),
            ("GET", "/a\\b"),
            ("GET", "/caf\u{e9}"),
        ] {
            assert_eq!(form(m, bad).0, Target::Invalid, "{m} {bad}");
        }
    }
}
