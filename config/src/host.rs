//! Hostname normalisation, shared by the hot path (Host / `:authority` / SNI) and by
//! configuration validation, so that a name is judged the same way everywhere.
//!
//! Invariants: a normalised hostname is ASCII, lowercase, has no port and no trailing dot,
//! consists of 1..=127 labels of 1..=63 letters, digits or hyphens (no leading or trailing
//! hyphen), and is at most 253 bytes long. Internationalised names are accepted only in their
//! punycode A-label form (`xn--...`); raw UTF-8 is refused, because two spellings of one name
//! must never route differently. An IPv6 literal in brackets (`[::1]`) is accepted as is so
//! that requests by address get the proxy's own 404 rather than a 400.

use std::fmt;

/// Longest hostname the DNS allows, in bytes (without the trailing dot).
pub const MAX_HOSTNAME_LEN: usize = 253;

/// Why a Host header or configured hostname was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// Nothing left after stripping the port and the trailing dot.
    Empty,
    /// Longer than 253 bytes.
    TooLong,
    /// A label is empty (`a..b`) or longer than 63 bytes.
    BadLabel,
    /// A byte outside letters, digits, `-` and `.` (including any non-ASCII byte).
    BadCharacter,
    /// A label starts or ends with a hyphen.
    BadHyphen,
    /// The part after `:` is not a port number.
    BadPort,
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HostError::Empty => "hostname is empty",
            HostError::TooLong => "hostname is longer than 253 bytes",
            HostError::BadLabel => "hostname has an empty label or a label longer than 63 bytes",
            HostError::BadCharacter => {
                "hostname may only contain ASCII letters, digits, '-' and '.' (IDNs as punycode A-labels)"
            }
            HostError::BadHyphen => "a hostname label may not start or end with '-'",
            HostError::BadPort => "the port after ':' is not a number between 0 and 65535",
        })
    }
}

impl std::error::Error for HostError {}

/// A stack buffer that holds one normalised hostname; lets the hot path normalise without
/// touching the allocator.
pub struct HostBuf {
    buf: [u8; MAX_HOSTNAME_LEN + 2],
    len: usize,
}

impl Default for HostBuf {
    fn default() -> Self {
        HostBuf {
            buf: [0; MAX_HOSTNAME_LEN + 2],
            len: 0,
        }
    }
}

impl HostBuf {
    /// The normalised hostname held by the buffer.
    pub fn as_str(&self) -> &str {
        // Only ASCII bytes are ever written into the buffer (checked in `normalize_into`).
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

/// Normalise a Host header value (or `:authority`, or SNI) into `out`.
///
/// Strips a `:port` suffix and one trailing dot, lowercases, and checks the DNS syntax.
pub fn normalize_into<'a>(raw: &[u8], out: &'a mut HostBuf) -> Result<&'a str, HostError> {
    let raw = trim_ows(raw);
    if raw.first() == Some(&b'[') {
        return normalize_ipv6_literal(raw, out);
    }
    let host = match memrchr_colon(raw) {
        Some(i) => {
            check_port(&raw[i + 1..])?;
            &raw[..i]
        }
        None => raw,
    };
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.is_empty() {
        return Err(HostError::Empty);
    }
    if host.len() > MAX_HOSTNAME_LEN {
        return Err(HostError::TooLong);
    }
    // One table lookup per byte (the hot path normalises every request's Host); label
    // lengths are checked at each dot, not per byte.
    let mut label_start = 0usize;
    let mut prev = b'.';
    let dst = &mut out.buf[..host.len()];
    for i in 0..host.len() {
        let c = HOST_BYTE[usize::from(host[i])];
        match c {
            0 => return Err(HostError::BadCharacter),
            b'.' => {
                if i == label_start {
                    return Err(HostError::BadLabel);
                }
                if prev == b'-' {
                    return Err(HostError::BadHyphen);
                }
                if i - label_start > 63 {
                    return Err(HostError::BadLabel);
                }
                label_start = i + 1;
            }
            b'-' if prev == b'.' => return Err(HostError::BadHyphen),
            _ => {}
        }
        dst[i] = c;
        prev = c;
    }
    if prev == b'-' {
        return Err(HostError::BadHyphen);
    }
    if host.len() - label_start > 63 {
        return Err(HostError::BadLabel);
    }
    out.len = host.len();
    Ok(out.as_str())
}

/// Each byte of a hostname as it is written normalised: letters lowercased, digits, `-` and
/// `.` as they are; 0 for every byte a hostname may not hold.
static HOST_BYTE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = match c {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' => c,
            b'A'..=b'Z' => c + 32,
            _ => 0,
        };
        b += 1;
    }
    t
};

/// Normalise into a new `String`; for configuration and control-plane input, not the hot path.
pub fn normalize(raw: &str) -> Result<String, HostError> {
    let mut buf = HostBuf::default();
    normalize_into(raw.as_bytes(), &mut buf).map(str::to_owned)
}

/// A configured hostname pattern: an exact name or a one-label wildcard `*.suffix`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Matches this normalised name only.
    Exact(String),
    /// `*.suffix`: matches exactly one label in front of `suffix` (not `suffix` itself, not
    /// two labels).
    Wildcard(String),
}

impl HostPattern {
    /// Parse and normalise a configured hostname or wildcard; ports are not allowed here.
    pub fn parse(raw: &str) -> Result<Self, HostError> {
        if raw.contains(':') {
            return Err(HostError::BadCharacter);
        }
        match raw.strip_prefix("*.") {
            Some(suffix) => {
                let suffix = normalize(suffix)?;
                Ok(HostPattern::Wildcard(suffix))
            }
            None => Ok(HostPattern::Exact(normalize(raw)?)),
        }
    }

    /// The pattern as it is written in configuration (`*.shop.test` or `shop.test`).
    pub fn to_display(&self) -> String {
        match self {
            HostPattern::Exact(h) => h.clone(),
            HostPattern::Wildcard(s) => format!("*.{s}"),
        }
    }

    /// Whether a normalised hostname is matched by this pattern.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Wildcard(suffix) => wildcard_suffix(host) == Some(suffix.as_str()),
        }
    }
}

impl serde::Serialize for HostPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_display())
    }
}

impl<'de> serde::Deserialize<'de> for HostPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        HostPattern::parse(&raw).map_err(|e| serde::de::Error::custom(format!("{raw:?}: {e}")))
    }
}

/// For `a.b.c` returns `b.c`: the key a one-label wildcard `*.b.c` is stored under.
/// Names of a single label have no wildcard parent.
#[inline]
pub fn wildcard_suffix(host: &str) -> Option<&str> {
    let dot = host.find('.')?;
    let rest = &host[dot + 1..];
    (!rest.is_empty()).then_some(rest)
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The last `:` of `s`. Hostnames hold none, so any `:` is the port's (or an error the
/// port check reports); a plain loop from the end, as the port is short or absent.
fn memrchr_colon(s: &[u8]) -> Option<usize> {
    let mut i = s.len();
    while i > 0 {
        i -= 1;
        if s[i] == b':' {
            return Some(i);
        }
    }
    None
}

fn check_port(p: &[u8]) -> Result<(), HostError> {
    if p.is_empty() || p.len() > 5 || !p.iter().all(u8::is_ascii_digit) {
        return Err(HostError::BadPort);
    }
    let n = p.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    if n > 65535 {
        return Err(HostError::BadPort);
    }
    Ok(())
}

fn normalize_ipv6_literal<'a>(raw: &[u8], out: &'a mut HostBuf) -> Result<&'a str, HostError> {
    let close = raw
        .iter()
        .position(|&b| b == b']')
        .ok_or(HostError::BadCharacter)?;
    let rest = &raw[close + 1..];
    match rest {
        [] => {}
        [b':', port @ ..] => check_port(port)?,
        _ => return Err(HostError::BadCharacter),
    }
    let lit = &raw[..=close];
    if lit.len() < 3
        || lit.len() > 47
        || !lit[1..close]
            .iter()
            .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
    {
        return Err(HostError::BadCharacter);
    }
    for (i, &b) in lit.iter().enumerate() {
        out.buf[i] = b.to_ascii_lowercase();
    }
    out.len = lit.len();
    Ok(out.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Result<String, HostError> {
        let mut b = HostBuf::default();
        normalize_into(s.as_bytes(), &mut b).map(str::to_owned)
    }

    #[test]
    fn lowercases_strips_port_and_trailing_dot() {
        assert_eq!(n("Shop1.Platform.TEST").unwrap(), "shop1.platform.test");
        assert_eq!(
            n("shop1.platform.test:8080").unwrap(),
            "shop1.platform.test"
        );
        assert_eq!(n("shop1.platform.test.").unwrap(), "shop1.platform.test");
        assert_eq!(
            n("shop1.platform.test.:443").unwrap(),
            "shop1.platform.test"
        );
        assert_eq!(n(" shop1.test ").unwrap(), "shop1.test");
        assert_eq!(n("xn--bcher-kva.example").unwrap(), "xn--bcher-kva.example");
        assert_eq!(n("[::1]:8080").unwrap(), "[::1]");
        assert_eq!(n("127.0.0.1:80").unwrap(), "127.0.0.1");
    }

    #[test]
    fn refuses_malformed_hosts() {
        assert_eq!(n(""), Err(HostError::Empty));
        assert_eq!(n(":80"), Err(HostError::Empty));
        assert_eq!(n("."), Err(HostError::Empty));
        assert_eq!(n("a..b"), Err(HostError::BadLabel));
        assert_eq!(n(".a"), Err(HostError::BadLabel));
        assert_eq!(n("bücher.example"), Err(HostError::BadCharacter));
        assert_eq!(n("a_b.test"), Err(HostError::BadCharacter));
        assert_eq!(n("a b.test"), Err(HostError::BadCharacter));
        assert_eq!(n("a/b"), Err(HostError::BadCharacter));
        assert_eq!(n("-a.test"), Err(HostError::BadHyphen));
        assert_eq!(n("a-.test"), Err(HostError::BadHyphen));
        assert_eq!(n("a.test:x"), Err(HostError::BadPort));
        assert_eq!(n("a.test:70000"), Err(HostError::BadPort));
        assert_eq!(n("a.test:"), Err(HostError::BadPort));
        assert_eq!(n(&"a".repeat(64)), Err(HostError::BadLabel));
        let long = ["a".repeat(63).as_str(); 5].join(".");
        assert_eq!(n(&long), Err(HostError::TooLong));
        assert_eq!(n("[zz::1]"), Err(HostError::BadCharacter));
        assert_eq!(n("[::1]x"), Err(HostError::BadCharacter));
    }

    #[test]
    fn wildcard_matches_exactly_one_label() {
        let p = HostPattern::parse("*.Shop2.platform.test").unwrap();
        assert_eq!(p, HostPattern::Wildcard("shop2.platform.test".into()));
        assert!(p.matches("a.shop2.platform.test"));
        assert!(!p.matches("shop2.platform.test"));
        assert!(!p.matches("a.b.shop2.platform.test"));
        assert_eq!(p.to_display(), "*.shop2.platform.test");
    }

    #[test]
    fn patterns_refuse_ports_and_inner_wildcards() {
        assert!(HostPattern::parse("a.test:80").is_err());
        assert!(HostPattern::parse("a.*.test").is_err());
        assert!(HostPattern::parse("*").is_err());
        assert!(HostPattern::parse("*.").is_err());
    }

    #[test]
    fn wildcard_suffix_of_single_label_is_none() {
        assert_eq!(wildcard_suffix("localhost"), None);
        assert_eq!(wildcard_suffix("a.b"), Some("b"));
    }
}
