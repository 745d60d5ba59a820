//! A route packed into one allocation: what the proxy keeps of each route, so a million
//! routes fit in a few hundred MiB (a [`Route`] with its strings and vectors is six
//! allocations and ~250 bytes; packed, the same route is one allocation of ~64 bytes).
//!
//! Layout of the bytes (lengths and counts are LEB128 varints, offsets little-endian u32):
//!
//! ```text
//! [0]     flags: 1 = https_redirect, 2 = suspended, 4 = has paths, 8 = from the config file,
//!         16 = has an HSTS value, 32 = has limits, 64 = asleep (paused), 128 = asleep
//!         (stopped)
//! [1..5]  offset of the upstream section
//! [5..9]  offset of the id
//! [9..]   hostnames: count, then per name: kind (0 exact, 1 wildcard suffix), len, bytes
//!         upstreams: count, addresses; path count, per path: len, prefix, count, addresses
//!         id: len, bytes
//!         hsts (flag 16 only): len, bytes
//!         limits (flag 32 only): a byte with one bit per field set (in `Limits`' order),
//!         then each set field as a varint
//! ```
//!
//! An address is a tag byte (4 or 6), the IP, the port (LE u16), and for IPv6 the flow info
//! and scope id (LE u32 each). Only [`PackedRoute::new`] writes these bytes, from a validated
//! [`Route`], and they are never changed after: readers trust the layout and fall back to
//! empty values rather than panic if it were ever wrong.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ops::Range;

use tenantgate_config::route::prefix_matches;
use tenantgate_config::{HostPattern, Limits, PathRoute, Route, SleepLevel, Upstream};

const REDIRECT: u8 = 1;
const SUSPENDED: u8 = 2;
const PATHS: u8 = 4;
const CONFIGURED: u8 = 8;
const HSTS: u8 = 16;
const LIMITS: u8 = 32;
const PAUSED: u8 = 64;
const STOPPED: u8 = 128;
const HEADER: usize = 9;

/// A route packed into one immutable allocation.
#[derive(Clone, PartialEq, Eq)]
pub struct PackedRoute(Box<[u8]>);

/// One hostname pattern of a packed route, with where its name lives in the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostRef<'a> {
    /// A one-label wildcard (`name` is then its suffix: `shop.test` for `*.shop.test`).
    pub wildcard: bool,
    /// The normalised name or suffix.
    pub name: &'a str,
    /// Offset of the name's record, for [`PackedRoute::name_at`].
    pub at: u32,
}

impl HostRef<'_> {
    /// The pattern as the route model spells it.
    pub fn to_pattern(self) -> HostPattern {
        if self.wildcard {
            HostPattern::Wildcard(self.name.to_owned())
        } else {
            HostPattern::Exact(self.name.to_owned())
        }
    }
}

impl PackedRoute {
    /// Pack `r`, a route from the store.
    pub fn new(r: &Route) -> Self {
        Self::pack(r, 0)
    }

    /// Pack `r`, a route from the configuration file.
    pub fn configured(r: &Route) -> Self {
        Self::pack(r, CONFIGURED)
    }

    fn pack(r: &Route, origin: u8) -> Self {
        let mut b = Vec::with_capacity(HEADER + 64);
        let flags = if r.https_redirect { REDIRECT } else { 0 }
            | if r.suspended { SUSPENDED } else { 0 }
            | if r.paths.is_empty() { 0 } else { PATHS }
            | if r.hsts.is_some() { HSTS } else { 0 }
            | if r.limits.is_some() { LIMITS } else { 0 }
            | match r.asleep {
                None => 0,
                Some(SleepLevel::Paused) => PAUSED,
                Some(SleepLevel::Stopped) => STOPPED,
            }
            | origin;
        b.push(flags);
        b.extend_from_slice(&[0; 8]);
        put_len(&mut b, r.hostnames.len());
        for h in &r.hostnames {
            let (kind, name) = match h {
                HostPattern::Exact(n) => (0, n),
                HostPattern::Wildcard(s) => (1, s),
            };
            b.push(kind);
            put_str(&mut b, name);
        }
        let upstreams = offset(b.len());
        put_addrs(&mut b, &r.upstreams);
        put_len(&mut b, r.paths.len());
        for p in r.paths.iter() {
            put_str(&mut b, &p.prefix);
            put_addrs(&mut b, &p.upstreams);
        }
        let id = offset(b.len());
        put_str(&mut b, &r.id);
        if let Some(h) = &r.hsts {
            put_str(&mut b, h);
        }
        if let Some(l) = &r.limits {
            let fields = limit_fields(l);
            let mask = fields
                .iter()
                .enumerate()
                .fold(0u8, |m, (i, f)| m | (u8::from(f.is_some()) << i));
            b.push(mask);
            for v in fields.into_iter().flatten() {
                put_u64(&mut b, v);
            }
        }
        b[1..5].copy_from_slice(&upstreams);
        b[5..9].copy_from_slice(&id);
        // Copied into an allocation of the exact size (the vector over-reserved).
        PackedRoute(Box::from(&b[..]))
    }

    /// The route's id.
    pub fn id(&self) -> &str {
        let mut pos = self.header(5);
        as_str(self.bytes_at(&mut pos))
    }

    /// The `Strict-Transport-Security` value sent over TLS, if the route has one.
    pub fn hsts(&self) -> Option<&str> {
        if self.flags() & HSTS == 0 {
            return None;
        }
        let mut pos = self.header(5);
        self.bytes_at(&mut pos);
        Some(as_str(self.bytes_at(&mut pos)))
    }

    /// The route's traffic limits, if it has any.
    pub fn limits(&self) -> Option<Limits> {
        if self.flags() & LIMITS == 0 {
            return None;
        }
        let mut pos = self.header(5);
        self.bytes_at(&mut pos);
        if self.flags() & HSTS != 0 {
            self.bytes_at(&mut pos);
        }
        let mask = self.0.get(pos).copied().unwrap_or(0);
        pos += 1;
        let mut fields = [None; 8];
        for (i, f) in fields.iter_mut().enumerate() {
            if mask & (1 << i) != 0 {
                *f = Some(self.varint64(&mut pos));
            }
        }
        let small = |v: Option<u64>| v.map(|v| u32::try_from(v).unwrap_or(u32::MAX));
        Some(Limits {
            requests_per_second: small(fields[0]),
            burst: small(fields[1]),
            client_requests_per_second: small(fields[2]),
            client_burst: small(fields[3]),
            max_concurrent_requests: small(fields[4]),
            max_body_bytes: fields[5],
            upstream_connect_timeout_ms: small(fields[6]),
            upstream_read_timeout_ms: small(fields[7]),
        })
    }

    /// Answer plain HTTP with a 308 to https.
    #[inline]
    pub fn https_redirect(&self) -> bool {
        self.flags() & REDIRECT != 0
    }

    /// How deeply the tenant's containers sleep (`None`: awake).
    #[inline]
    pub fn asleep(&self) -> Option<SleepLevel> {
        let f = self.flags();
        if f & STOPPED != 0 {
            Some(SleepLevel::Stopped)
        } else if f & PAUSED != 0 {
            Some(SleepLevel::Paused)
        } else {
            None
        }
    }

    /// The tenant is suspended.
    #[inline]
    pub fn suspended(&self) -> bool {
        self.flags() & SUSPENDED != 0
    }

    /// Whether the route comes from the configuration file rather than the store.
    #[inline]
    pub fn is_configured(&self) -> bool {
        self.flags() & CONFIGURED != 0
    }

    /// Whether some path prefixes go to other upstreams than the route's own.
    #[inline]
    pub fn has_paths(&self) -> bool {
        self.flags() & PATHS != 0
    }

    /// The hostname patterns, in the route's order.
    pub fn hostnames(&self) -> impl Iterator<Item = HostRef<'_>> + '_ {
        let mut pos = HEADER;
        let n = self.varint(&mut pos);
        (0..n).map(move |_| {
            let wildcard = self.0.get(pos).is_some_and(|&k| k == 1);
            pos += 1;
            let at = pos as u32;
            let name = as_str(self.bytes_at(&mut pos));
            HostRef { wildcard, name, at }
        })
    }

    /// The name whose record starts at `at` (from [`HostRef::at`]), as bytes: what a lookup
    /// compares the requested host with.
    #[inline]
    pub fn name_at(&self, at: u32) -> &[u8] {
        let mut pos = at as usize;
        self.bytes_at(&mut pos)
    }

    /// Number of upstreams in the route's one list (its own, then each path's).
    pub fn upstream_total(&self) -> usize {
        let mut total = 0;
        self.walk_upstreams(|_, n, pos| {
            total += n;
            *pos += addrs_len(&self.0, *pos, n);
            false
        });
        total
    }

    /// Upstream `i` of the one list.
    pub fn upstream_at(&self, mut i: usize) -> Option<SocketAddr> {
        let mut found = None;
        self.walk_upstreams(|_, n, pos| {
            if i < n {
                found = self.addrs_at(*pos, n).nth(i).flatten();
                return true;
            }
            i -= n;
            *pos += addrs_len(&self.0, *pos, n);
            false
        });
        found
    }

    /// Every address of the one list, in order, decoded in one pass (`upstream_at` for
    /// each would be quadratic).
    pub fn upstream_addrs(&self) -> Vec<Option<SocketAddr>> {
        let mut out = Vec::new();
        self.walk_upstreams(|_, n, pos| {
            out.extend(self.addrs_at(*pos, n));
            *pos += addrs_len(&self.0, *pos, n);
            false
        });
        out
    }

    /// The first upstream of the one list for which `f` holds, decoded without allocating.
    pub fn find_upstream(&self, mut f: impl FnMut(SocketAddr) -> bool) -> Option<SocketAddr> {
        let mut found = None;
        self.walk_upstreams(|_, n, pos| {
            found = self.addrs_at(*pos, n).flatten().find(|a| f(*a));
            *pos += addrs_len(&self.0, *pos, n);
            found.is_some()
        });
        found
    }

    /// The part of the one list serving a request for `path`: the longest prefix (on
    /// segment boundaries, [`prefix_matches`]) whose path claims it, else the route's own.
    pub fn upstream_range(&self, path: &str) -> Range<usize> {
        let mut start = 0;
        let mut own = 0..0;
        let mut best: Option<(usize, Range<usize>)> = None;
        self.walk_upstreams(|prefix, n, pos| {
            let range = start..start + n;
            start += n;
            *pos += addrs_len(&self.0, *pos, n);
            match prefix {
                None => own = range,
                Some(p) => {
                    if prefix_matches(p, path) && best.as_ref().is_none_or(|(l, _)| p.len() > *l) {
                        best = Some((p.len(), range));
                    }
                }
            }
            false
        });
        best.map_or(own, |(_, r)| r)
    }

    /// The route as the shared model spells it (snapshot files, the admin view).
    pub fn to_route(&self) -> Route {
        let addrs = |pos: &mut usize| self.addr_list(pos).map(|addr| Upstream { addr }).collect();
        let mut pos = self.header(1);
        let upstreams = addrs(&mut pos);
        let paths = (0..self.varint(&mut pos))
            .map(|_| {
                let prefix = as_str(self.bytes_at(&mut pos)).to_owned();
                PathRoute {
                    prefix,
                    upstreams: addrs(&mut pos),
                }
            })
            .collect();
        Route {
            id: self.id().to_owned(),
            hostnames: self.hostnames().map(HostRef::to_pattern).collect(),
            upstreams,
            https_redirect: self.https_redirect(),
            suspended: self.suspended(),
            paths,
            hsts: self.hsts().map(str::to_owned),
            limits: self.limits(),
            asleep: self.asleep(),
        }
    }

    /// Call `f(prefix, count, pos)` for the route's own upstreams (prefix `None`) and then
    /// each path's, with `pos` at the first address; `f` moves `pos` past the addresses,
    /// and returns `true` to stop.
    fn walk_upstreams(&self, mut f: impl FnMut(Option<&str>, usize, &mut usize) -> bool) {
        let mut pos = self.header(1);
        let n = self.varint(&mut pos);
        if f(None, n, &mut pos) || !self.has_paths() {
            return;
        }
        for _ in 0..self.varint(&mut pos) {
            let prefix = as_str(self.bytes_at(&mut pos));
            let n = self.varint(&mut pos);
            if f(Some(prefix), n, &mut pos) {
                return;
            }
        }
    }

    /// The `n` addresses starting at `pos`.
    fn addrs_at(&self, mut pos: usize, n: usize) -> impl Iterator<Item = Option<SocketAddr>> + '_ {
        (0..n).map(move |_| {
            let a = read_addr(&self.0, pos);
            pos += addrs_len(&self.0, pos, 1);
            a
        })
    }

    /// The address list (count, then addresses) at `pos`, moving `pos` past it.
    fn addr_list(&self, pos: &mut usize) -> impl Iterator<Item = SocketAddr> + '_ {
        let mut start = *pos;
        let n = self.varint(&mut start);
        self.skip_addrs(pos);
        self.addrs_at(start, n).flatten()
    }

    /// Move `pos` past the address list (count, then addresses) at it.
    fn skip_addrs(&self, pos: &mut usize) {
        let n = self.varint(pos);
        *pos += addrs_len(&self.0, *pos, n);
    }

    #[inline]
    fn flags(&self) -> u8 {
        self.0.first().copied().unwrap_or(0)
    }

    /// The u32 offset stored at `at` in the header.
    #[inline]
    fn header(&self, at: usize) -> usize {
        self.0
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(usize::MAX, |b| u32::from_le_bytes(b) as usize)
    }

    /// A varint of up to 64 bits at `pos`, moving `pos` past it.
    #[inline]
    fn varint64(&self, pos: &mut usize) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        while let Some(&byte) = self.0.get(*pos) {
            *pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 || shift >= 63 {
                return v;
            }
            shift += 7;
        }
        0
    }

    #[inline]
    fn varint(&self, pos: &mut usize) -> usize {
        usize::try_from(self.varint64(pos)).unwrap_or(usize::MAX)
    }

    /// A length-prefixed byte string at `pos`, moving `pos` past it.
    #[inline]
    fn bytes_at(&self, pos: &mut usize) -> &[u8] {
        let len = self.varint(pos);
        let b = self.0.get(*pos..*pos + len).unwrap_or_default();
        *pos += len;
        b
    }
}

impl From<Route> for PackedRoute {
    fn from(r: Route) -> Self {
        PackedRoute::new(&r)
    }
}

impl std::fmt::Debug for PackedRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.to_route().fmt(f)
    }
}

/// Written straight from the bytes, field for field as [`Route`] writes itself (the snapshot
/// writer serialises every route on each change burst; unpacking each one first doubled
/// that work).
impl serde::Serialize for PackedRoute {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let has_paths = self.has_paths();
        let hsts = self.hsts();
        let limits = self.limits();
        let fields = 5
            + usize::from(has_paths)
            + usize::from(hsts.is_some())
            + usize::from(limits.is_some())
            + usize::from(self.asleep().is_some());
        let mut st = s.serialize_struct("Route", fields)?;
        st.serialize_field("id", self.id())?;
        st.serialize_field("hostnames", &Names(self))?;
        let mut pos = self.header(1);
        st.serialize_field("upstreams", &Addrs(self, pos))?;
        st.serialize_field("https_redirect", &self.https_redirect())?;
        st.serialize_field("suspended", &self.suspended())?;
        if has_paths {
            self.skip_addrs(&mut pos);
            st.serialize_field("paths", &Paths(self, pos))?;
        } else {
            st.skip_field("paths")?;
        }
        match hsts {
            Some(h) => st.serialize_field("hsts", h)?,
            None => st.skip_field("hsts")?,
        }
        match &limits {
            Some(l) => st.serialize_field("limits", l)?,
            None => st.skip_field("limits")?,
        }
        match self.asleep() {
            Some(a) => st.serialize_field("asleep", &a)?,
            None => st.skip_field("asleep")?,
        }
        st.end()
    }
}

/// The hostname patterns, spelled as configured (`*.` before a wildcard's suffix).
struct Names<'a>(&'a PackedRoute);

impl serde::Serialize for Names<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.hostnames().map(Name))
    }
}

struct Name<'a>(HostRef<'a>);

impl serde::Serialize for Name<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.wildcard {
            s.collect_str(&format_args!("*.{}", self.0.name))
        } else {
            s.serialize_str(self.0.name)
        }
    }
}

/// The address list at a position, as `[{"addr": ...}]`.
struct Addrs<'a>(&'a PackedRoute, usize);

impl serde::Serialize for Addrs<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Addrs(r, mut pos) = *self;
        s.collect_seq(r.addr_list(&mut pos).map(|addr| Upstream { addr }))
    }
}

/// The path list at a position, as `[{"prefix": ..., "upstreams": [...]}]`.
struct Paths<'a>(&'a PackedRoute, usize);

impl serde::Serialize for Paths<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Path<'a>(&'a PackedRoute, &'a str, usize);
        impl serde::Serialize for Path<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut st = s.serialize_struct("PathRoute", 2)?;
                st.serialize_field("prefix", self.1)?;
                st.serialize_field("upstreams", &Addrs(self.0, self.2))?;
                st.end()
            }
        }
        let Paths(r, mut pos) = *self;
        let n = r.varint(&mut pos);
        s.collect_seq((0..n).map(|_| {
            let prefix = as_str(r.bytes_at(&mut pos));
            let at = pos;
            r.skip_addrs(&mut pos);
            Path(r, prefix, at)
        }))
    }
}

impl<'de> serde::Deserialize<'de> for PackedRoute {
    /// Parsed as a [`Route`] (same validation), then packed: a list of them never holds
    /// more than one unpacked route at a time.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Route::deserialize(d).map(|r| PackedRoute::new(&r))
    }
}

fn offset(n: usize) -> [u8; 4] {
    // A route's bytes are bounded by what a store row and a JSON document can carry, far
    // below 4 GiB.
    u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes()
}

fn put_len(b: &mut Vec<u8>, n: usize) {
    put_u64(b, n as u64);
}

fn put_u64(b: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            b.push(byte);
            return;
        }
        b.push(byte | 0x80);
    }
}

/// The fields of `l` in the packed order.
fn limit_fields(l: &Limits) -> [Option<u64>; 8] {
    let w = |v: Option<u32>| v.map(u64::from);
    [
        w(l.requests_per_second),
        w(l.burst),
        w(l.client_requests_per_second),
        w(l.client_burst),
        w(l.max_concurrent_requests),
        l.max_body_bytes,
        w(l.upstream_connect_timeout_ms),
        w(l.upstream_read_timeout_ms),
    ]
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    put_len(b, s.len());
    b.extend_from_slice(s.as_bytes());
}

fn put_addrs(b: &mut Vec<u8>, ups: &[Upstream]) {
    put_len(b, ups.len());
    for u in ups {
        match u.addr {
            SocketAddr::V4(a) => {
                b.push(4);
                b.extend_from_slice(&a.ip().octets());
                b.extend_from_slice(&a.port().to_le_bytes());
            }
            SocketAddr::V6(a) => {
                b.push(6);
                b.extend_from_slice(&a.ip().octets());
                b.extend_from_slice(&a.port().to_le_bytes());
                b.extend_from_slice(&a.flowinfo().to_le_bytes());
                b.extend_from_slice(&a.scope_id().to_le_bytes());
            }
        }
    }
}

const V4_LEN: usize = 1 + 4 + 2;
const V6_LEN: usize = 1 + 16 + 2 + 4 + 4;

/// Bytes taken by `n` addresses starting at `pos`.
#[inline]
fn addrs_len(b: &[u8], pos: usize, n: usize) -> usize {
    let mut p = pos;
    for _ in 0..n {
        p += if b.get(p) == Some(&6) { V6_LEN } else { V4_LEN };
    }
    p - pos
}

#[inline]
fn read_addr(b: &[u8], pos: usize) -> Option<SocketAddr> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?));
    match b.get(pos)? {
        4 => {
            let ip: [u8; 4] = b.get(pos + 1..pos + 5)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(ip),
                u16_at(pos + 5)?,
            )))
        }
        6 => {
            let ip: [u8; 16] = b.get(pos + 1..pos + 17)?.try_into().ok()?;
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                u16_at(pos + 17)?,
                u32_at(pos + 19)?,
                u32_at(pos + 23)?,
            )))
        }
        _ => None,
    }
}

fn as_str(b: &[u8]) -> &str {
    // Written from `&str`s by `PackedRoute::new`.
    std::str::from_utf8(b).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(a: &str) -> Upstream {
        Upstream {
            addr: a.parse().expect("addr"),
        }
    }

    fn route() -> Route {
        Route {
            id: "t_0123456789abcdef".into(),
            hostnames: vec![
                HostPattern::Exact("shop1.platform.test".into()),
                HostPattern::Wildcard("shop1.com".into()),
                HostPattern::Exact(format!("{}.test", "a".repeat(63))),
            ],
            upstreams: vec![up("127.0.0.1:9001"), up("[fe80::1%7]:9002")],
            https_redirect: true,
            suspended: false,
            paths: vec![
                PathRoute {
                    prefix: "/store".into(),
                    upstreams: vec![up("[::1]:9003"), up("10.0.0.1:80")],
                },
                PathRoute {
                    prefix: "/store/admin".into(),
                    upstreams: vec![up("10.0.0.2:80")],
                },
            ]
            .into(),
            hsts: Some("max-age=31536000; includeSubDomains".into()),
            limits: Some(Limits {
                requests_per_second: Some(50),
                burst: Some(100),
                max_body_bytes: Some(5_000_000_000),
                upstream_read_timeout_ms: Some(300),
                ..Limits::default()
            }),
            asleep: Some(SleepLevel::Stopped),
        }
    }

    #[test]
    fn packs_and_unpacks_every_field() {
        let r = route();
        let p = PackedRoute::new(&r);
        assert_eq!(p.to_route(), r);
        assert_eq!(p.id(), r.id);
        assert!(p.https_redirect() && !p.suspended() && p.has_paths());
        assert!(!p.is_configured() && PackedRoute::configured(&r).is_configured());
        assert_eq!(PackedRoute::configured(&r).to_route(), r);
        let hosts: Vec<_> = p.hostnames().map(HostRef::to_pattern).collect();
        assert_eq!(hosts, r.hostnames);
        for h in p.hostnames() {
            assert_eq!(p.name_at(h.at), h.name.as_bytes());
        }
        // One list: the route's own upstreams, then each path's in order.
        let all: Vec<_> = ["127.0.0.1:9001", "[fe80::1%7]:9002", "[::1]:9003"]
            .into_iter()
            .chain(["10.0.0.1:80", "10.0.0.2:80"])
            .map(|a| Some(up(a).addr))
            .collect();
        assert_eq!(p.upstream_total(), 5);
        assert_eq!(p.upstream_addrs(), all);
        for (i, a) in all.iter().enumerate() {
            assert_eq!(p.upstream_at(i), *a, "upstream {i}");
        }
        assert_eq!(p.upstream_at(5), None);
        // The longest prefix wins, on segment boundaries; the rest goes to the route's own.
        for (path, range) in [
            ("/", 0..2),
            ("", 0..2),
            ("/storefront", 0..2),
            ("/store", 2..4),
            ("/store/x", 2..4),
            ("/store/admin", 4..5),
            ("/store/admin/y", 4..5),
        ] {
            assert_eq!(p.upstream_range(path), range, "{path}");
        }
        let plain = PackedRoute::new(&Route {
            paths: Box::default(),
            hsts: None,
            limits: None,
            ..route()
        });
        assert_eq!(plain.upstream_range("/store"), 0..2);
        assert_eq!(plain.limits(), None);
        let no_hsts = Route {
            hsts: None,
            limits: None,
            asleep: Some(SleepLevel::Paused),
            ..route()
        };
        assert_eq!(PackedRoute::new(&no_hsts).to_route(), no_hsts);
        // A long id and an empty route still round-trip (multi-byte lengths, no sections).
        let empty = Route {
            id: "x".repeat(300),
            hostnames: vec![],
            upstreams: vec![],
            https_redirect: false,
            suspended: true,
            paths: Default::default(),
            hsts: None,
            limits: None,
            asleep: None,
        };
        let p = PackedRoute::new(&empty);
        assert_eq!(p.to_route(), empty);
        assert_eq!((p.upstream_total(), p.upstream_at(0)), (0, None));
        assert_eq!(p.upstream_range("/"), 0..0);
    }

    #[test]
    fn serialises_as_the_route_model() {
        let r = route();
        let text = serde_json::to_string(&PackedRoute::new(&r)).expect("json");
        assert_eq!(text, serde_json::to_string(&r).expect("json"));
        let back: PackedRoute = serde_json::from_str(&text).expect("parse");
        assert_eq!(back.to_route(), r);
        let mut plain = r.clone();
        plain.paths = Box::default();
        assert_eq!(
            serde_json::to_string(&PackedRoute::new(&plain)).expect("json"),
            serde_json::to_string(&plain).expect("json")
        );
        // Parsing validates as the model does.
        assert!(serde_json::from_str::<PackedRoute>(&text.replace("shop1.com", "a_b")).is_err());
    }

    #[test]
    fn a_typical_route_is_small() {
        let r = Route {
            id: "t_0000000000000001".into(),
            hostnames: vec![HostPattern::Exact("shop1.platform.test".into())],
            upstreams: vec![up("127.0.0.1:9001")],
            https_redirect: false,
            suspended: false,
            paths: Default::default(),
            hsts: None,
            limits: None,
            asleep: None,
        };
        let len = PackedRoute::new(&r).0.len();
        assert!(len <= 64, "{len}");
    }
}
