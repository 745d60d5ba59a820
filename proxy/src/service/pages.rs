//! The proxy's own responses: branded HTML pages for browsers, one plain-text line for
//! everyone else. Bodies are static, so answering them allocates nothing but the header.

use bytes::Bytes;

macro_rules! page {
    ($code:literal, $title:literal, $text:literal) => {
        concat!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">",
            "<title>",
            $code,
            " ",
            $title,
            "</title><style>",
            "body{margin:0;min-height:100vh;display:grid;place-items:center;",
            "font:16px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;",
            "background:#0f172a;color:#e2e8f0}main{max-width:32rem;padding:2rem;text-align:center}",
            "h1{font-size:3rem;margin:0;color:#38bdf8}p{color:#94a3b8}",
            "small{color:#475569}</style></head><body><main><h1>",
            $code,
            "</h1><h2>",
            $title,
            "</h2><p>",
            $text,
            "</p><small>tenantgate</small></main></body></html>\n"
        )
    };
}

/// `(status, reason, html, text)` for every status the proxy answers itself.
const PAGES: &[(u16, &str, &str, &str)] = &[
    (
        400,
        "Bad Request",
        page!("400", "Bad Request", "The request could not be understood."),
        "400 Bad Request: the request could not be understood\n",
    ),
    (
        404,
        "Not Found",
        page!(
            "404",
            "Store not found",
            "No store is served at this address. Check the address, or come back later."
        ),
        "404 Not Found: no store is served at this hostname\n",
    ),
    (
        421,
        "Misdirected Request",
        page!(
            "421",
            "Misdirected Request",
            "This connection cannot serve this hostname; please retry."
        ),
        "421 Misdirected Request: this connection was opened for another hostname\n",
    ),
    (
        413,
        "Content Too Large",
        page!(
            "413",
            "Request too large",
            "The request's body is larger than this store accepts."
        ),
        "413 Content Too Large: the request body is larger than this store accepts\n",
    ),
    (
        429,
        "Too Many Requests",
        page!(
            "429",
            "Too many requests",
            "This store is receiving more requests than it can take right now. Please wait a moment and try again."
        ),
        "429 Too Many Requests: retry after the time in Retry-After\n",
    ),
    (
        431,
        "Request Header Fields Too Large",
        page!(
            "431",
            "Request Header Fields Too Large",
            "The request carried too many or too large headers."
        ),
        "431 Request Header Fields Too Large\n",
    ),
    (
        508,
        "Loop Detected",
        page!(
            "508",
            "Loop Detected",
            "This request came back to the platform it left from, so it was stopped here."
        ),
        "508 Loop Detected: the request went through this platform's proxy already\n",
    ),
    (
        500,
        "Internal Server Error",
        page!("500", "Internal Error", "Something went wrong on our side."),
        "500 Internal Server Error\n",
    ),
    (
        502,
        "Bad Gateway",
        page!(
            "502",
            "Store unavailable",
            "The store could not be reached. Please try again in a moment."
        ),
        "502 Bad Gateway: the store's backend could not be reached\n",
    ),
    (
        503,
        "Service Unavailable",
        page!(
            "503",
            "Store unavailable",
            "This store is temporarily unavailable."
        ),
        "503 Service Unavailable\n",
    ),
    (
        504,
        "Gateway Timeout",
        page!(
            "504",
            "Store timed out",
            "The store took too long to answer. Please try again in a moment."
        ),
        "504 Gateway Timeout: the store's backend did not answer in time\n",
    ),
];

/// The "waking up" page: a browser navigation held while its store wakes gets it; it
/// reloads itself every two seconds until the store answers.
const WAKING_HTML: &str = concat!(
    "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
    "<meta http-equiv=\"refresh\" content=\"2\">",
    "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">",
    "<title>Waking up</title><style>",
    "body{margin:0;min-height:100vh;display:grid;place-items:center;",
    "font:16px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;",
    "background:#0f172a;color:#e2e8f0}main{max-width:32rem;padding:2rem;text-align:center}",
    "h1{font-size:2.2rem;margin:0 0 .5rem;color:#38bdf8}p{color:#94a3b8}small{color:#475569}",
    ".dot{display:inline-block;width:.6rem;height:.6rem;margin:0 .2rem;border-radius:50%;",
    "background:#38bdf8;animation:b 1.2s infinite ease-in-out}.dot:nth-child(2){animation-delay:.2s}",
    ".dot:nth-child(3){animation-delay:.4s}@keyframes b{0%,80%,100%{opacity:.2}40%{opacity:1}}",
    "</style></head><body><main><h1>This store is waking up</h1>",
    "<p><span class=\"dot\"></span><span class=\"dot\"></span><span class=\"dot\"></span></p>",
    "<p>It was resting while nobody visited. It will be ready in a moment; this page ",
    "reloads by itself.</p><small>tenantgate</small></main></body></html>\n"
);

/// The body and content type of our answer `a`: the sleep answers have pages of their own,
/// every other answer its status's page.
pub fn answer_body(a: super::decide::Answer, html: bool) -> (&'static str, Bytes) {
    use super::decide::Answer;
    let (h, t) = match a {
        Answer::Waking => (
            WAKING_HTML,
            "503 Service Unavailable: the store is waking up; retry in a moment\n",
        ),
        Answer::Asleep => (
            page!(
                "503",
                "Store asleep",
                "This store is resting while nobody visits. Visit it in a browser to wake it."
            ),
            "503 Service Unavailable: the store is asleep; retry after the time in Retry-After\n",
        ),
        Answer::WakeTimeout => (
            page!(
                "503",
                "Store starting",
                "This store is still starting. Please try again in a moment."
            ),
            "503 Service Unavailable: the store did not wake in time; retry after the time in Retry-After\n",
        ),
        a => return body(a.status(), html),
    };
    if html {
        ("text/html; charset=utf-8", Bytes::from_static(h.as_bytes()))
    } else {
        (
            "text/plain; charset=utf-8",
            Bytes::from_static(t.as_bytes()),
        )
    }
}

/// The body and content type of the proxy's page for `status`.
pub fn body(status: u16, html: bool) -> (&'static str, Bytes) {
    let (_, _, h, t) = PAGES.iter().find(|p| p.0 == status).copied().unwrap_or((
        status,
        "",
        page!("Error", "Error", "The request failed."),
        "error\n",
    ));
    if html {
        ("text/html; charset=utf-8", Bytes::from_static(h.as_bytes()))
    } else {
        (
            "text/plain; charset=utf-8",
            Bytes::from_static(t.as_bytes()),
        )
    }
}

/// The reason phrase of a status the proxy answers itself.
pub fn reason(status: u16) -> &'static str {
    PAGES
        .iter()
        .find(|p| p.0 == status)
        .map(|p| p.1)
        .or_else(|| http::StatusCode::from_u16(status).ok()?.canonical_reason())
        .unwrap_or("")
}

/// Write a complete HTTP/1.1 response of ours into `out`: status line, content type and
/// length, `cache-control: no-store`, the request id, `extra` headers, `connection: close`
/// when `close`, and the page (not for HEAD). Returns the body bytes written.
pub fn write_h1(
    out: &mut Vec<u8>,
    status: u16,
    html: bool,
    head_only: bool,
    request_id: &[u8],
    extra: &[(&str, &str)],
    close: bool,
) -> usize {
    let (content_type, body) = self::body(status, html);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: ");
    out.extend_from_slice(content_type.as_bytes());
    out.extend_from_slice(b"\r\ncontent-length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\ncache-control: no-store\r\nx-request-id: ");
    out.extend_from_slice(request_id);
    for (k, v) in extra {
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
    }
    out.extend_from_slice(if close {
        b"\r\nconnection: close\r\n\r\n".as_slice()
    } else {
        b"\r\n\r\n".as_slice()
    });
    if head_only {
        0
    } else {
        out.extend_from_slice(&body);
        body.len()
    }
}

/// Whether the client prefers HTML (a browser): its `Accept` names `text/html`.
pub fn wants_html(accept: Option<&[u8]>) -> bool {
    accept.is_some_and(|a| a.windows(9).any(|w| w.eq_ignore_ascii_case(b"text/html")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_get_html_others_text() {
        assert!(wants_html(Some(b"text/html,application/xhtml+xml;q=0.9")));
        assert!(!wants_html(Some(b"*/*")));
        assert!(!wants_html(None));
        let (ct, b) = body(404, true);
        assert!(ct.starts_with("text/html"));
        assert!(std::str::from_utf8(&b)
            .expect("utf8")
            .contains("Store not found"));
        let (ct, b) = body(502, false);
        assert!(ct.starts_with("text/plain"));
        assert!(b.starts_with(b"502 Bad Gateway"));
        let mut out = Vec::new();
        let n = write_h1(&mut out, 508, false, false, b"rid", &[("x-a", "1")], true);
        let text = String::from_utf8(out).expect("utf8");
        assert!(
            text.starts_with("HTTP/1.1 508 Loop Detected\r\ncontent-type: text/plain"),
            "{text}"
        );
        assert!(
            text.contains("x-request-id: rid\r\nx-a: 1\r\nconnection: close\r\n\r\n508 Loop"),
            "{text}"
        );
        assert_eq!(text.len() - text.find("\r\n\r\n").expect("end") - 4, n);
    }
}
