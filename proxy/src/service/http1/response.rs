//! Upstream response heads on the fast path: parsed once, framed per RFC 9112 §6.3, and
//! rewritten for the client in the same pass (hop-by-hop headers out, ours in).

use std::mem::MaybeUninit;

use super::{Framing, MAX_HEADERS};
use crate::service::forward::{tokens, Name};

/// What the client's head gets besides the upstream's headers.
#[derive(Debug, Clone, Copy)]
pub(super) struct Extras<'a> {
    /// The request id, added when the upstream sent none.
    pub request_id: &'a [u8],
    /// The client connection ends after this response.
    pub close: bool,
    /// `Strict-Transport-Security` of the route (TLS only); replaces the upstream's.
    pub hsts: Option<&'a str>,
}

/// What the fast path needs of an upstream response head.
#[derive(Debug)]
pub(super) struct ResponseHead {
    pub head_len: usize,
    pub status: u16,
    pub framing: Framing,
    /// The upstream connection may carry another request.
    pub keep_alive: bool,
}

/// Parse an upstream response head (`Ok(None)`: incomplete) and write the client's head into
/// `out`: the upstream's status and headers without hop-by-hop ones (including those its
/// `Connection` names), `Content-Length` dropped when `Transfer-Encoding` is present, our
/// `X-Request-Id` when the upstream sent none, the route's `Strict-Transport-Security`,
/// `Transfer-Encoding: chunked` for a body that
/// only the close delimits (re-framed as chunks), and `Connection: close` when the client
/// connection ends after this response (`close`, or a close-delimited body under another
/// transfer coding).
///
/// Framing per RFC 9112 §6.3: no body for `HEAD` (`head_only`), 204 and 304;
/// `Transfer-Encoding` wins over `Content-Length` and is chunked only when chunked is its last
/// coding; differing `Content-Length` values are an error.
pub(super) fn response_head(
    buf: &[u8],
    head_only: bool,
    extras: Extras<'_>,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, ()> {
    let Extras {
        request_id,
        close,
        hsts,
    } = extras;
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
            Name::Hsts if hsts.is_some() => continue,
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
    if let Some(v) = hsts {
        out.extend_from_slice(b"strict-transport-security: ");
        out.extend_from_slice(v.as_bytes());
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

    fn extras(close: bool) -> Extras<'static> {
        Extras {
            request_id: b"rid",
            close,
            hsts: None,
        }
    }

    fn head_with(raw: &str, head_only: bool, close: bool) -> (ResponseHead, String) {
        let mut out = Vec::new();
        let parsed = response_head(raw.as_bytes(), head_only, extras(close), &mut out)
            .expect("valid")
            .expect("complete");
        (parsed, String::from_utf8(out).expect("utf8"))
    }

    fn head(raw: &str) -> (ResponseHead, String) {
        head_with(raw, false, false)
    }

    fn parse_response(raw: &[u8]) -> Result<Option<ResponseHead>, ()> {
        response_head(raw, false, extras(false), &mut Vec::new())
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
    fn the_routes_hsts_replaces_the_upstreams() {
        let mut out = Vec::new();
        let e = Extras {
            hsts: Some("max-age=60"),
            ..extras(false)
        };
        response_head(
            b"HTTP/1.1 200 OK\r\nStrict-Transport-Security: max-age=1\r\nContent-Length: 0\r\n\r\n",
            false,
            e,
            &mut out,
        )
        .expect("valid")
        .expect("complete");
        let out = String::from_utf8(out).expect("utf8");
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nx-request-id: rid\r\nstrict-transport-security: max-age=60\r\n\r\n"
        );
    }
}
