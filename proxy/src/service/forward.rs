//! What a request carries to its upstream, and what a response carries back: the one header
//! policy both engines apply.
//!
//! - Header names are classified once ([`Name`]); hop-by-hop ones (`Connection` and what it
//!   names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Upgrade` outside an upgrade) never cross
//!   the proxy in either direction.
//! - Client copies of `X-Forwarded-For/-Host/-Proto`, `Forwarded` and `X-Request-Id` are
//!   replaced by ours ([`ForwardedValues`]), and every request we forward carries our
//!   `Via` entry ([`LoopMark`]): a request that arrives with it has gone round through us.
//! - Header names with an underscore are dropped unless `allow_underscores_in_headers`: CGI,
//!   WSGI and PHP fold `_` and `-` together, so `X_Forwarded_For` would reach them as the
//!   client address where the last value wins (nginx drops them by default too).
//! - `Content-Length` reaches the upstream as one canonical value ([`content_length`]).

use std::net::IpAddr;

use bytes::Bytes;
use http::HeaderValue;

/// The header names either engine acts on; everything else is copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    /// `Accept`.
    Accept,
    /// `Connection`.
    Connection,
    /// `Content-Length`.
    ContentLength,
    /// `Expect`.
    Expect,
    /// `Forwarded`.
    Forwarded,
    /// `Host`.
    Host,
    /// `Keep-Alive`.
    KeepAlive,
    /// `Proxy-Connection`.
    ProxyConnection,
    /// `X-Request-Id`.
    RequestId,
    /// `Strict-Transport-Security`.
    Hsts,
    /// `TE`.
    Te,
    /// `Transfer-Encoding`.
    TransferEncoding,
    /// `Upgrade`.
    Upgrade,
    /// `User-Agent`.
    UserAgent,
    /// `Via`.
    Via,
    /// `X-Forwarded-For`.
    XForwardedFor,
    /// `X-Forwarded-Host`.
    XForwardedHost,
    /// `X-Forwarded-Proto`.
    XForwardedProto,
    /// Anything else.
    Other,
}

impl Name {
    /// Classify a header name, case-insensitively.
    pub fn of(name: &[u8]) -> Name {
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        match name.len() {
            2 if is("te") => Name::Te,
            3 if is("via") => Name::Via,
            4 if is("host") => Name::Host,
            6 if is("accept") => Name::Accept,
            6 if is("expect") => Name::Expect,
            7 if is("upgrade") => Name::Upgrade,
            9 if is("forwarded") => Name::Forwarded,
            10 if is("connection") => Name::Connection,
            10 if is("keep-alive") => Name::KeepAlive,
            10 if is("user-agent") => Name::UserAgent,
            12 if is("x-request-id") => Name::RequestId,
            14 if is("content-length") => Name::ContentLength,
            15 if is("x-forwarded-for") => Name::XForwardedFor,
            16 if is("x-forwarded-host") => Name::XForwardedHost,
            16 if is("proxy-connection") => Name::ProxyConnection,
            17 if is("x-forwarded-proto") => Name::XForwardedProto,
            17 if is("transfer-encoding") => Name::TransferEncoding,
            25 if is("strict-transport-security") => Name::Hsts,
            _ => Name::Other,
        }
    }

    /// Meaningful for one hop only: never forwarded, in either direction.
    pub fn hop_by_hop(self) -> bool {
        matches!(self, Name::KeepAlive | Name::ProxyConnection | Name::Te)
    }

    /// Set by the proxy itself on requests it forwards: client copies are dropped.
    pub fn ours(self) -> bool {
        matches!(
            self,
            Name::Forwarded
                | Name::XForwardedFor
                | Name::XForwardedHost
                | Name::XForwardedProto
                | Name::RequestId
        )
    }
}

/// Whether a request header named `name` is dropped for containing `_` (see the module docs).
#[inline]
pub fn underscore_dropped(name: &[u8], allow_underscores: bool) -> bool {
    // A plain loop: header names are short, and `contains` would call out to memchr.
    let mut found = false;
    for &b in name {
        found |= b == b'_';
    }
    !allow_underscores && found
}

/// The comma-separated tokens of a header value, trimmed, empty ones skipped.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// What the `Content-Length` headers of a message say, all of them together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Length {
    /// None was sent.
    #[default]
    Absent,
    /// One length, however often repeated (`52, 52`, two headers, `05`): sent on as one
    /// canonical value.
    Exact(u64),
    /// Not a length (`+4`, `-1`, `1.0`, empty, too long) or two different ones: refused.
    Invalid,
}

/// Fold one more `Content-Length` header value into `acc` (RFC 9110 §8.6: a list of
/// identical values is that value; anything else is an error).
pub fn content_length(acc: Length, value: &[u8]) -> Length {
    let mut acc = acc;
    let mut any = false;
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return Length::Invalid;
        }
        any = true;
        let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        acc = match acc {
            Length::Absent => Length::Exact(n),
            Length::Exact(m) if m == n => acc,
            _ => return Length::Invalid,
        };
    }
    if any {
        acc
    } else {
        Length::Invalid
    }
}

/// The `Via` entry every forwarded request carries, naming this platform, and the test for
/// it on arriving requests: one that carries it has already been through one of our proxies
/// (a tenant whose upstream leads back to the edge), so it is answered 508 and not forwarded.
#[derive(Debug, Clone)]
pub struct LoopMark {
    /// `tenantgate.<platform domain>`: the same on every node of a platform, so a loop
    /// through several proxies of a fleet is caught at the second one.
    name: Box<str>,
}

impl LoopMark {
    /// The mark of the platform served at `domain`.
    pub fn new(domain: &str) -> Self {
        LoopMark {
            name: format!("tenantgate.{}", domain.to_ascii_lowercase()).into(),
        }
    }

    /// The received-by name of our entries.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether a `Via` header value holds an entry of ours.
    pub fn marks(&self, via: &[u8]) -> bool {
        tokens(via).any(|entry| {
            let mut parts = entry
                .split(|b| b.is_ascii_whitespace())
                .filter(|p| !p.is_empty());
            let _protocol = parts.next();
            parts
                .next()
                .is_some_and(|by| by.eq_ignore_ascii_case(self.name.as_bytes()))
        })
    }

    /// Append `via: <version> <name>\r\n` to a raw HTTP/1 head (`version` as Via spells the
    /// received protocol: `1.1`, `1.0`, `2`).
    pub fn push_header(&self, head: &mut Vec<u8>, version: &str) {
        head.extend_from_slice(b"via: ");
        head.extend_from_slice(version.as_bytes());
        head.push(b' ');
        head.extend_from_slice(self.name.as_bytes());
        head.extend_from_slice(b"\r\n");
    }

    /// Our entry as a header value, appended to `previous` (the client's `Via`, if any).
    pub fn value(&self, previous: Option<&[u8]>, version: &str) -> HeaderValue {
        let mut v = Vec::with_capacity(previous.map_or(0, |p| p.len() + 2) + 24);
        if let Some(p) = previous {
            v.extend_from_slice(p);
            v.extend_from_slice(b", ");
        }
        v.extend_from_slice(version.as_bytes());
        v.push(b' ');
        v.extend_from_slice(self.name.as_bytes());
        HeaderValue::from_bytes(&v).unwrap_or_else(|_| HeaderValue::from_static("1.1 tenantgate"))
    }
}

/// The forwarding header values of one request, built in one buffer:
/// `for=<ip>;host=<host>;proto=<proto>`, with `X-Forwarded-For` and `X-Forwarded-Host` as
/// slices of it. IPv6 clients appear as `for="[v6]"` in `Forwarded` (RFC 7239).
pub struct ForwardedValues {
    buf: Bytes,
    client: Option<std::ops::Range<usize>>,
    host: std::ops::Range<usize>,
    tls: bool,
}

impl ForwardedValues {
    /// The values for a request from `client` for `host`, over TLS or not.
    pub fn new(client: Option<IpAddr>, host: &str, tls: bool) -> Self {
        let mut buf = Vec::with_capacity(64 + host.len());
        let (client_range, host_range) = write_forwarded(&mut buf, client, host, tls);
        ForwardedValues {
            buf: Bytes::from(buf),
            client: client_range,
            host: host_range,
            tls,
        }
    }

    fn value(b: Bytes) -> HeaderValue {
        // Only digits, hex, dots, colons, brackets, quotes and normalised hostname bytes are
        // ever written, all valid in a header value.
        HeaderValue::from_maybe_shared(b).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// `X-Forwarded-For`.
    pub fn client(&self) -> Option<HeaderValue> {
        self.client.clone().map(|r| Self::value(self.buf.slice(r)))
    }

    /// `Forwarded`.
    pub fn forwarded(&self) -> HeaderValue {
        Self::value(self.buf.clone())
    }

    /// `X-Forwarded-Host`.
    pub fn host(&self) -> HeaderValue {
        Self::value(self.buf.slice(self.host.clone()))
    }

    /// `X-Forwarded-Proto`.
    pub fn proto(&self) -> HeaderValue {
        HeaderValue::from_static(if self.tls { "https" } else { "http" })
    }
}

/// Write `for=<ip>;host=<host>;proto=<proto>` (RFC 7239) into `buf`; returns where the bare
/// client address and the host are in it.
fn write_forwarded(
    buf: &mut Vec<u8>,
    client: Option<IpAddr>,
    host: &str,
    tls: bool,
) -> (Option<std::ops::Range<usize>>, std::ops::Range<usize>) {
    use std::io::Write as _;
    let mut client_range = None;
    if let Some(ip) = client {
        buf.extend_from_slice(b"for=");
        match ip {
            IpAddr::V4(v4) => {
                let start = buf.len();
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        buf.push(b'.');
                    }
                    push_decimal(buf, octet);
                }
                client_range = Some(start..buf.len());
            }
            IpAddr::V6(v6) => {
                buf.extend_from_slice(b"\"[");
                let start = buf.len();
                let _ = write!(buf, "{v6}");
                client_range = Some(start..buf.len());
                buf.extend_from_slice(b"]\"");
            }
        }
        buf.push(b';');
    }
    buf.extend_from_slice(b"host=");
    let start = buf.len();
    buf.extend_from_slice(host.as_bytes());
    let host_range = start..buf.len();
    buf.extend_from_slice(if tls { b";proto=https" } else { b";proto=http" });
    (client_range, host_range)
}

/// Append the forwarding headers the upstream gets (`Forwarded`, `X-Forwarded-For`,
/// `X-Forwarded-Host`, `X-Forwarded-Proto`) to a raw HTTP/1 head, the same values as the
/// Pingora engine sets from [`ForwardedValues`].
pub fn push_forwarding_headers(head: &mut Vec<u8>, client: Option<IpAddr>, host: &str, tls: bool) {
    head.extend_from_slice(b"forwarded: ");
    let (client_range, host_range) = write_forwarded(head, client, host, tls);
    head.extend_from_slice(b"\r\n");
    if let Some(r) = client_range {
        head.extend_from_slice(b"x-forwarded-for: ");
        head.extend_from_within(r);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"x-forwarded-host: ");
    head.extend_from_within(host_range);
    head.extend_from_slice(if tls {
        b"\r\nx-forwarded-proto: https\r\n"
    } else {
        b"\r\nx-forwarded-proto: http\r\n"
    });
}

fn push_decimal(buf: &mut Vec<u8>, n: u8) {
    if n >= 100 {
        buf.push(b'0' + n / 100);
    }
    if n >= 10 {
        buf.push(b'0' + (n / 10) % 10);
    }
    buf.push(b'0' + n % 10);
}

/// A client-supplied request id is kept when it is short, visible ASCII.
pub fn valid_request_id(b: &[u8]) -> bool {
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_values_share_one_buffer_and_quote_ipv6() {
        let v = ForwardedValues::new(Some("10.0.255.7".parse().unwrap()), "a.test", false);
        assert_eq!(v.client().unwrap(), "10.0.255.7");
        assert_eq!(v.forwarded(), "for=10.0.255.7;host=a.test;proto=http");
        assert_eq!(v.host(), "a.test");
        assert_eq!(v.proto(), "http");
        let v = ForwardedValues::new(Some("::1".parse().unwrap()), "b.test", true);
        assert_eq!(v.client().unwrap(), "::1");
        assert_eq!(v.forwarded(), "for=\"[::1]\";host=b.test;proto=https");
        let v = ForwardedValues::new(None, "c.test", true);
        assert!(v.client().is_none());
        assert_eq!(v.forwarded(), "host=c.test;proto=https");
        for n in [0u8, 9, 10, 99, 100, 255] {
            let mut b = Vec::new();
            push_decimal(&mut b, n);
            assert_eq!(b, n.to_string().into_bytes());
        }
    }

    #[test]
    fn content_length_folds_to_one_canonical_value_or_is_invalid() {
        let fold = |values: &[&str]| {
            values
                .iter()
                .fold(Length::Absent, |acc, v| content_length(acc, v.as_bytes()))
        };
        assert_eq!(fold(&[]), Length::Absent);
        assert_eq!(fold(&["52"]), Length::Exact(52));
        assert_eq!(fold(&["52, 52"]), Length::Exact(52));
        assert_eq!(fold(&["52", "52"]), Length::Exact(52));
        assert_eq!(fold(&["05"]), Length::Exact(5));
        assert_eq!(fold(&["0"]), Length::Exact(0));
        for bad in [
            &["52, 53"][..],
            &["4", "5"],
            &["+4"],
            &["-1"],
            &[""],
            &["1,"],
            &["4 4"],
            &["0x10"],
            &["99999999999999999999"],
        ] {
            assert_eq!(fold(bad), Length::Invalid, "{bad:?}");
        }
    }

    #[test]
    fn header_names_are_classified_case_insensitively() {
        assert_eq!(Name::of(b"HOST"), Name::Host);
        assert_eq!(Name::of(b"X-Forwarded-For"), Name::XForwardedFor);
        assert_eq!(Name::of(b"x-forwarded-proto"), Name::XForwardedProto);
        assert_eq!(Name::of(b"Transfer-Encoding"), Name::TransferEncoding);
        assert_eq!(Name::of(b"Content-Length"), Name::ContentLength);
        assert_eq!(Name::of(b"VIA"), Name::Via);
        assert!(Name::of(b"Proxy-Connection").hop_by_hop());
        assert!(!Name::of(b"Connection").hop_by_hop());
        assert_eq!(Name::of(b"x-forwarded-hosts"), Name::Other);
        assert!(Name::of(b"X-Request-Id").ours());
        assert!(underscore_dropped(b"X_Forwarded_For", false));
        assert!(!underscore_dropped(b"X_Forwarded_For", true));
        assert!(!underscore_dropped(b"X-Forwarded-For", false));
        assert_eq!(
            tokens(b" close ,, Keep-Alive").collect::<Vec<_>>(),
            vec![&b"close"[..], b"Keep-Alive"]
        );
    }

    #[test]
    fn the_loop_mark_is_found_in_any_entry_of_any_case() {
        let m = LoopMark::new("Platform.test");
        assert_eq!(m.name(), "tenantgate.platform.test");
        assert!(m.marks(b"1.1 tenantgate.platform.test"));
        assert!(m.marks(b"1.0 cdn.example, 1.1 TENANTGATE.platform.test (x)"));
        assert!(m.marks(b"2 tenantgate.platform.test"));
        assert!(!m.marks(b"1.1 tenantgate.other.test"));
        assert!(!m.marks(b"1.1 cdn.example"));
        assert!(!m.marks(b"tenantgate.platform.test"));
        assert_eq!(
            m.value(Some(b"1.1 cdn.example"), "2"),
            "1.1 cdn.example, 2 tenantgate.platform.test"
        );
        let mut head = Vec::new();
        m.push_header(&mut head, "1.1");
        assert_eq!(head, b"via: 1.1 tenantgate.platform.test\r\n");
    }
}
