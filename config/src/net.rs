//! IP networks in CIDR notation, and the upstream policy: which addresses a tenant's
//! upstream may point at.
//!
//! The upstream policy is a security boundary. A tenant's upstream is never one of the node's
//! own listeners (the proxy's, the TLS one, the admin listener) on any local address, and
//! never an address that reaches a cloud metadata service or the host itself, in any of the
//! spellings IPv6 offers for an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64, 6to4).
//! It is checked where an upstream enters (API, config file, blueprint runtime) and again by
//! every proxy when a route reaches its table, because a fleet's proxies have listeners the
//! control plane cannot see.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// A network such as `10.0.0.0/8` or `fd00::/8`; a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    const fn v4(a: [u8; 4], prefix: u8) -> IpNet {
        IpNet {
            addr: IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
            prefix,
        }
    }

    const fn v6(s: [u16; 8], prefix: u8) -> IpNet {
        IpNet {
            addr: IpAddr::V6(Ipv6Addr::new(
                s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
            )),
            prefix,
        }
    }

    /// Whether `ip` lies in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }

    /// Whether every address of `other` lies in this network.
    pub fn covers(&self, other: &IpNet) -> bool {
        self.addr.is_ipv4() == other.addr.is_ipv4()
            && self.prefix <= other.prefix
            && self.contains(other.addr)
    }
}

/// Whether `ip` is link-local (169.254.0.0/16, fe80::/10; IPv4-mapped ones too): where cloud
/// metadata endpoints live, so nothing the control plane reaches on a user's word may be.
pub fn is_link_local(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) as the IPv4 address it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The IPv4 address an IPv6 address stands for, in every spelling that reaches it:
/// IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`, deprecated but still routed
/// by some stacks), NAT64 (`64:ff9b::a.b.c.d`, RFC 6052) and 6to4 (`2002:AABB:CCDD::/48`).
pub fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    // IPv4-compatible: ::/96 except :: and ::1, which are themselves.
    if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
        return Some(low);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(low);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

/// Why an upstream address is refused: the rule it breaks. Its name (`as_str`) is what logs
/// and API errors carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamRule {
    /// Port 0, or an address that is not unicast (unspecified, multicast, broadcast,
    /// reserved).
    NotUnicast,
    /// One of this node's own listeners (proxy, TLS, admin), on any local address.
    OwnListener,
    /// A cloud metadata service (link-local, AWS/GCP/Oracle IPv6, Alibaba, Azure's host).
    Metadata,
    /// A translation or tunnel prefix whose IPv4 destination cannot be told (Teredo,
    /// local-use NAT64).
    Tunnel,
    /// Outside `admin.upstream_networks`.
    OutsideAllowed,
}

impl UpstreamRule {
    /// Stable name of the rule.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamRule::NotUnicast => "not_unicast",
            UpstreamRule::OwnListener => "own_listener",
            UpstreamRule::Metadata => "metadata",
            UpstreamRule::Tunnel => "tunnel",
            UpstreamRule::OutsideAllowed => "outside_allowed",
        }
    }
}

/// An upstream address the policy refuses: the rule and why, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The rule it breaks.
    pub rule: UpstreamRule,
    /// A sentence saying why (what the address is).
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason, self.rule.as_str())
    }
}

/// Special-purpose blocks that reach a metadata service or the host itself, with what they
/// are. An allow-list entry lets one through only if the entry lies inside the block.
const METADATA: &[(IpNet, &str)] = &[
    (
        IpNet::v4([169, 254, 0, 0], 16),
        "link-local (AWS, GCP, Azure, Oracle and OpenStack metadata live there)",
    ),
    (
        IpNet::v4([100, 100, 100, 200], 32),
        "the Alibaba Cloud metadata service",
    ),
    (
        IpNet::v4([168, 63, 129, 16], 32),
        "Azure's host endpoint (WireServer)",
    ),
    (
        IpNet::v4([192, 0, 0, 192], 32),
        "the Oracle Cloud legacy metadata service",
    ),
    (
        IpNet::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
        "IPv6 link-local",
    ),
    (
        IpNet::v6([0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0], 32),
        "AWS's IPv6 metadata, DNS and NTP block (fd00:ec2::/32)",
    ),
    (
        IpNet::v6([0xfd20, 0x00ce, 0, 0, 0, 0, 0, 0x0254], 128),
        "the GCP IPv6 metadata service",
    ),
    (
        IpNet::v6([0xfd00, 0x00c1, 0, 0, 0, 0, 0xa9fe, 0xa9fe], 128),
        "the Oracle Cloud IPv6 metadata service",
    ),
];

/// Prefixes whose IPv4 destination cannot be decoded without knowing the operator's set-up.
const TUNNELS: &[(IpNet, &str)] = &[
    (
        IpNet::v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32),
        "Teredo (2001::/32), whose IPv4 destination is hidden",
    ),
    (
        IpNet::v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
        "local-use NAT64 (64:ff9b:1::/48), whose IPv4 destination depends on the translator",
    ),
];

/// One of the node's own listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// The config key it comes from (`proxy.http_listen`, ...).
    pub key: String,
    /// Where it listens (an unspecified IP: every local address).
    pub addr: SocketAddr,
}

/// Which addresses tenant upstreams may point at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamPolicy {
    /// `admin.upstream_networks`: when not empty, the only networks upstreams may be in.
    pub allow: Vec<IpNet>,
    /// The node's own listeners.
    pub own: Vec<Listener>,
}

impl UpstreamPolicy {
    /// Check `addr`. `is_local` says whether an IP is one of this machine's own addresses
    /// (used only for ports of listeners bound to every address).
    pub fn check(
        &self,
        addr: SocketAddr,
        is_local: impl Fn(IpAddr) -> bool,
    ) -> Result<(), Refusal> {
        let refuse = |rule, reason: String| Err(Refusal { rule, reason });
        if addr.port() == 0 {
            return refuse(
                UpstreamRule::NotUnicast,
                "port 0 is not a valid port".into(),
            );
        }
        // Every spelling of an IPv4 address is judged as that IPv4 address.
        let ip = match addr.ip() {
            IpAddr::V6(v6) => embedded_ipv4(v6).map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let spelled = if ip == addr.ip() {
            String::new()
        } else {
            format!(" (it spells {ip})")
        };
        if let Some(reason) = not_unicast(ip) {
            return refuse(
                UpstreamRule::NotUnicast,
                format!("{} is {reason}{spelled}", addr.ip()),
            );
        }
        for l in &self.own {
            if l.addr.port() != addr.port() {
                continue;
            }
            let lip = canonical(l.addr.ip());
            let reaches = ip == lip
                || ip.is_loopback()
                || (lip.is_unspecified() && (ip.is_loopback() || is_local(ip)));
            if reaches {
                return refuse(
                    UpstreamRule::OwnListener,
                    format!(
                        "{addr} is this node's own listener ({} = {}){spelled}",
                        l.key, l.addr
                    ),
                );
            }
        }
        for (rule, blocks) in [
            (UpstreamRule::Metadata, METADATA),
            (UpstreamRule::Tunnel, TUNNELS),
        ] {
            // Tunnel prefixes are judged on the address as written.
            let judged = if rule == UpstreamRule::Tunnel {
                canonical(addr.ip())
            } else {
                ip
            };
            if let Some((block, what)) = blocks.iter().find(|(b, _)| b.contains(judged)) {
                let allowed = self
                    .allow
                    .iter()
                    .any(|n| block.covers(n) && n.contains(judged));
                if !allowed {
                    return refuse(
                        rule,
                        format!(
                            "{} is {what}{spelled}; allow it explicitly with an admin.upstream_networks entry inside {block}",
                            addr.ip()
                        ),
                    );
                }
                return Ok(());
            }
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|n| n.contains(ip)) {
            return refuse(
                UpstreamRule::OutsideAllowed,
                format!(
                    "{} is outside the allowed upstream networks (admin.upstream_networks){spelled}",
                    addr.ip()
                ),
            );
        }
        Ok(())
    }

    /// The listener ports of this node: an upstream on another port never reaches them, so
    /// only these need the local-address test at connect time.
    pub fn own_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.own.iter().map(|l| l.addr.port())
    }
}

/// Whether `ip` is one of this machine's own addresses now: the kernel lets a socket bind to
/// exactly those. Cheap (two system calls) and always current, so interfaces that appear
/// later (a container network's gateway) count too.
pub fn is_local_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Why `ip` (already canonical IPv4 where it spells one) is not a unicast destination.
fn not_unicast(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if o[0] == 0 {
                Some("in 0.0.0.0/8 (\"this host\": it reaches the host itself)")
            } else if v4.is_multicast() {
                Some("multicast")
            } else if v4.is_broadcast() {
                Some("the broadcast address")
            } else if o[0] >= 240 {
                Some("reserved (240.0.0.0/4)")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_unspecified() {
                Some("unspecified (it reaches the host itself)")
            } else if v6.is_multicast() {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a network in CIDR notation (e.g. \"10.0.0.0/8\")");
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p.parse::<u8>().map_err(|_| bad())?,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(IpNet { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_by_prefix_and_family() {
        let n: IpNet = "10.1.0.0/16".parse().expect("net");
        assert!(n.contains("10.1.200.3".parse().expect("ip")));
        assert!(!n.contains("10.2.0.1".parse().expect("ip")));
        assert!(n.contains("::ffff:10.1.0.9".parse().expect("ip")));
        let all: IpNet = "0.0.0.0/0".parse().expect("net");
        assert!(all.contains("203.0.113.1".parse().expect("ip")));
        assert!(!all.contains("::1".parse().expect("ip")));
        let one: IpNet = "::1".parse().expect("net");
        assert!(one.contains("::1".parse().expect("ip")));
        for bad in ["10.0.0.0/33", "x/8", "10.0.0.0/", "::/129"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
        let link: IpNet = "169.254.0.0/16".parse().expect("net");
        assert!(link.covers(&"169.254.170.0/24".parse().expect("net")));
        assert!(!link.covers(&"0.0.0.0/0".parse().expect("net")));
        assert!(!link.covers(&"::/0".parse().expect("net")));
    }

    #[test]
    fn link_local_in_both_families_and_mapped() {
        for ip in ["169.254.169.254", "fe80::1", "::ffff:169.254.1.1"] {
            assert!(is_link_local(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["10.0.0.1", "127.0.0.1", "fd00::1", "2001:db8::1"] {
            assert!(!is_link_local(ip.parse().expect("ip")), "{ip}");
        }
    }

    #[test]
    fn every_ipv6_spelling_of_an_ipv4_address_is_decoded() {
        let v4 = |s: &str| Some(s.parse::<Ipv4Addr>().expect("v4"));
        let of = |s: &str| embedded_ipv4(s.parse().expect("v6"));
        assert_eq!(of("::ffff:169.254.169.254"), v4("169.254.169.254"));
        assert_eq!(of("::169.254.169.254"), v4("169.254.169.254"));
        assert_eq!(of("64:ff9b::a9fe:a9fe"), v4("169.254.169.254"));
        assert_eq!(of("2002:a9fe:a9fe::"), v4("169.254.169.254"));
        assert_eq!(of("2002:7f00:1:1::5"), v4("127.0.0.1"));
        assert_eq!(of("::1"), None);
        assert_eq!(of("::"), None);
        assert_eq!(of("2001:db8::1"), None);
    }

    fn policy() -> UpstreamPolicy {
        UpstreamPolicy {
            allow: vec![],
            own: vec![
                Listener {
                    key: "proxy.http_listen".into(),
                    addr: "0.0.0.0:8080".parse().expect("addr"),
                },
                Listener {
                    key: "proxy.https_listen".into(),
                    addr: "[::]:8443".parse().expect("addr"),
                },
                Listener {
                    key: "admin.listen".into(),
                    addr: "127.0.0.1:8081".parse().expect("addr"),
                },
            ],
        }
    }

    fn rule(p: &UpstreamPolicy, addr: &str) -> Option<UpstreamRule> {
        let local = |ip: IpAddr| ip == "10.0.0.5".parse::<IpAddr>().expect("ip");
        p.check(addr.parse().expect("addr"), local)
            .err()
            .map(|r| r.rule)
    }

    #[test]
    fn own_listeners_are_refused_on_every_local_address() {
        let p = policy();
        for own in [
            "127.0.0.1:8081",
            "127.0.0.2:8081",
            "[::ffff:127.0.0.1]:8081",
            "[::1]:8081",
            "[::127.0.0.1]:8081",
            "[64:ff9b::7f00:1]:8081",
            "127.0.0.1:8080",
            "10.0.0.5:8080",
            "10.0.0.5:8443",
            "[::1]:8443",
        ] {
            assert_eq!(rule(&p, own), Some(UpstreamRule::OwnListener), "{own}");
        }
        // The admin listener is bound to loopback only: another host's port 8081 is not it,
        // nor is this host's LAN address; other loopback ports are ordinary backends.
        for fine in [
            "10.0.0.5:8081",
            "10.0.0.9:8080",
            "127.0.0.1:9001",
            "[::1]:9001",
        ] {
            assert_eq!(rule(&p, fine), None, "{fine}");
        }
    }

    #[test]
    fn metadata_and_special_ranges_are_refused_in_every_spelling() {
        let p = policy();
        for (addr, want) in [
            ("169.254.169.254:80", UpstreamRule::Metadata),
            ("[::ffff:169.254.169.254]:80", UpstreamRule::Metadata),
            ("[::169.254.169.254]:80", UpstreamRule::Metadata),
            ("[64:ff9b::a9fe:a9fe]:80", UpstreamRule::Metadata),
            ("[2002:a9fe:a9fe::]:80", UpstreamRule::Metadata),
            ("[fd00:ec2::254]:80", UpstreamRule::Metadata),
            ("[fd20:ce::254]:80", UpstreamRule::Metadata),
            ("100.100.100.200:80", UpstreamRule::Metadata),
            ("168.63.129.16:80", UpstreamRule::Metadata),
            ("[fe80::1]:80", UpstreamRule::Metadata),
            (
                "[2001:0:4136:e378:8000:63bf:3fff:fdd2]:80",
                UpstreamRule::Tunnel,
            ),
            ("[64:ff9b:1::a9fe:a9fe]:80", UpstreamRule::Tunnel),
            ("0.0.0.0:80", UpstreamRule::NotUnicast),
            ("0.1.2.3:80", UpstreamRule::NotUnicast),
            ("[::]:80", UpstreamRule::NotUnicast),
            ("[::ffff:0.0.0.0]:80", UpstreamRule::NotUnicast),
            ("224.0.0.1:80", UpstreamRule::NotUnicast),
            ("255.255.255.255:80", UpstreamRule::NotUnicast),
            ("10.0.0.1:0", UpstreamRule::NotUnicast),
        ] {
            assert_eq!(rule(&p, addr), Some(want), "{addr}");
        }
        for fine in [
            "100.100.100.201:80",
            "10.1.2.3:80",
            "[2001:db8::1]:80",
            "[fd00::1]:80",
        ] {
            assert_eq!(rule(&p, fine), None, "{fine}");
        }
    }

    #[test]
    fn the_allow_list_admits_special_ranges_only_by_an_entry_inside_them() {
        let mut p = policy();
        p.allow = vec!["0.0.0.0/0".parse().expect("net")];
        assert_eq!(
            rule(&p, "169.254.169.254:80"),
            Some(UpstreamRule::Metadata),
            "a catch-all entry does not open the metadata service"
        );
        p.allow.push("169.254.170.0/24".parse().expect("net"));
        assert_eq!(rule(&p, "169.254.170.2:80"), None);
        assert_eq!(rule(&p, "169.254.169.254:80"), Some(UpstreamRule::Metadata));
        // Own listeners are never allowed, whatever the list says.
        p.allow.push("127.0.0.0/8".parse().expect("net"));
        assert_eq!(rule(&p, "127.0.0.1:8081"), Some(UpstreamRule::OwnListener));
        let only10 = UpstreamPolicy {
            allow: vec!["10.0.0.0/8".parse().expect("net")],
            own: vec![],
        };
        assert_eq!(rule(&only10, "10.9.9.9:80"), None);
        assert_eq!(
            rule(&only10, "127.0.0.1:80"),
            Some(UpstreamRule::OutsideAllowed)
        );
        assert_eq!(
            rule(&only10, "[::ffff:10.1.1.1]:80"),
            None,
            "a mapped address is its IPv4 address"
        );
    }
}
