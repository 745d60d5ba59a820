//! Input rules of the admin API: slugs, names, hostnames, upstream addresses. Each rule
//! returns a specific error naming the field; nothing is stored until all of them pass.

use std::net::SocketAddr;

use tenantgate_config::net::is_local_address;
use tenantgate_config::{HostPattern, UpstreamPolicy};

use crate::{Error, Result};

/// Longest display name.
pub const MAX_NAME: usize = 200;
/// Most upstreams per tenant.
pub const MAX_UPSTREAMS: usize = 64;

/// The rules a deployment configured.
#[derive(Debug, Clone)]
pub struct InputRules {
    /// Platform domain (tenants get `<slug>.<domain>`).
    pub platform_domain: String,
    /// Slugs nobody may take.
    pub reserved: Vec<String>,
    /// Where upstreams may point: `admin.upstream_networks` and this node's own listeners.
    pub upstreams: UpstreamPolicy,
}

impl InputRules {
    /// Check a slug and return the tenant's platform hostname.
    pub fn slug(&self, slug: &str) -> Result<String> {
        let ok_chars = slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if slug.is_empty()
            || slug.len() > 63
            || !ok_chars
            || slug.starts_with('-')
            || slug.ends_with('-')
            || slug.starts_with("xn--")
        {
            return Err(Error::invalid(
                "invalid_slug",
                format!("slug {slug:?}: use 1 to 63 lowercase letters, digits and inner hyphens (not starting with xn--)"),
            ));
        }
        if self.reserved.iter().any(|r| r == slug) {
            return Err(Error::invalid(
                "reserved_slug",
                format!("slug {slug:?} is reserved by the platform"),
            ));
        }
        let host = format!("{slug}.{}", self.platform_domain);
        match HostPattern::parse(&host) {
            Ok(HostPattern::Exact(h)) => Ok(h),
            _ => Err(Error::invalid(
                "invalid_slug",
                format!("slug {slug:?} makes the hostname {host:?} invalid (too long?)"),
            )),
        }
    }

    /// Check a merchant's own hostname and return its normalised (A-label) form.
    pub fn custom_domain(&self, hostname: &str) -> Result<String> {
        let bad =
            |why: &str| Error::invalid("invalid_hostname", format!("hostname {hostname:?}: {why}"));
        let h = match HostPattern::parse(hostname) {
            Ok(HostPattern::Exact(h)) => h,
            Ok(HostPattern::Wildcard(_)) => {
                return Err(bad(
                    "wildcards cannot be verified over HTTP; attach each name",
                ))
            }
            Err(e) => return Err(bad(&e.to_string())),
        };
        if !h.contains('.') {
            return Err(bad("must be a fully qualified domain name"));
        }
        if h.rsplit('.')
            .next()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(bad("must be a domain name, not an IP address"));
        }
        let apex = &self.platform_domain;
        if h == *apex || h.ends_with(&format!(".{apex}")) {
            return Err(bad(
                "names under the platform domain are assigned by the platform",
            ));
        }
        Ok(h)
    }

    /// Check a display name.
    pub fn name(&self, name: &str) -> Result<String> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control)
        {
            return Err(Error::invalid(
                "invalid_name",
                format!("name must be 1 to {MAX_NAME} characters without control characters"),
            ));
        }
        Ok(name.to_owned())
    }

    /// Check a list of upstream addresses.
    pub fn upstreams(&self, list: &[String]) -> Result<Vec<SocketAddr>> {
        if list.is_empty() || list.len() > MAX_UPSTREAMS {
            return Err(Error::invalid(
                "invalid_upstreams",
                format!("upstreams must list 1 to {MAX_UPSTREAMS} addresses"),
            ));
        }
        let mut out: Vec<SocketAddr> = Vec::with_capacity(list.len());
        for (i, raw) in list.iter().enumerate() {
            let addr: SocketAddr = raw.parse().map_err(|_| {
                Error::invalid(
                    "invalid_upstream",
                    format!("upstreams[{i}]: {raw:?} is not an IP:port address (names are not resolved; IPv6 as [::1]:80)"),
                )
            })?;
            if addr.port() == 0 {
                return Err(Error::invalid(
                    "invalid_upstream",
                    format!("upstreams[{i}]: port 0 is not a valid upstream port"),
                ));
            }
            if let Err(refusal) = self.upstreams.check(addr, is_local_address) {
                return Err(Error::invalid(
                    "forbidden_upstream",
                    format!("upstreams[{i}]: {raw:?}: {refusal}"),
                ));
            }
            if out.contains(&addr) {
                return Err(Error::invalid(
                    "invalid_upstream",
                    format!("upstreams[{i}]: {raw:?} is listed twice"),
                ));
            }
            out.push(addr);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_domains_are_normalised_and_checked() {
        let r = rules();
        assert_eq!(
            r.custom_domain("WWW.Shop.COM.").expect("ok"),
            "www.shop.com"
        );
        for bad in [
            "*.shop.com",
            "localhost",
            "192.168.1.10",
            "x.platform.test",
            "platform.test",
            "a..b",
            "",
        ] {
            assert!(r.custom_domain(bad).is_err(), "{bad}");
        }
    }

    fn rules() -> InputRules {
        InputRules {
            platform_domain: "platform.test".into(),
            reserved: vec!["admin".into(), "www".into()],
            upstreams: UpstreamPolicy {
                allow: vec![],
                own: vec![tenantgate_config::Listener {
                    key: "admin.listen".into(),
                    addr: "127.0.0.1:8081".parse().expect("addr"),
                }],
            },
        }
    }

    fn code(r: Result<impl std::fmt::Debug>) -> &'static str {
        match r {
            Err(Error::Invalid { code, .. }) => code,
            other => panic!("expected an input error, got {other:?}"),
        }
    }

    #[test]
    fn slugs() {
        assert_eq!(rules().slug("shop-1").expect("ok"), "shop-1.platform.test");
        for bad in [
            "",
            "-a",
            "a-",
            "Shop",
            "a_b",
            "a.b",
            "xn--abc",
            &"a".repeat(64),
        ] {
            assert_eq!(code(rules().slug(bad)), "invalid_slug", "{bad}");
        }
        assert_eq!(code(rules().slug("admin")), "reserved_slug");
    }

    #[test]
    fn upstreams() {
        let r = rules();
        let ok = r
            .upstreams(&["127.0.0.1:9001".into(), "[::1]:80".into()])
            .expect("ok");
        assert_eq!(ok.len(), 2);
        assert_eq!(code(r.upstreams(&[])), "invalid_upstreams");
        assert_eq!(
            code(r.upstreams(&["localhost:80".into()])),
            "invalid_upstream"
        );
        assert_eq!(
            code(r.upstreams(&["127.0.0.1:0".into()])),
            "invalid_upstream"
        );
        assert_eq!(
            code(r.upstreams(&["169.254.169.254:80".into()])),
            "forbidden_upstream"
        );
        assert_eq!(
            code(r.upstreams(&["[fe80::1]:80".into()])),
            "forbidden_upstream"
        );
        assert_eq!(
            code(r.upstreams(&["0.0.0.0:80".into()])),
            "forbidden_upstream"
        );
        assert_eq!(
            code(r.upstreams(&["10.0.0.1:80".into(), "10.0.0.1:80".into()])),
            "invalid_upstream"
        );
        for own in [
            "127.0.0.1:8081",
            "[::ffff:127.0.0.1]:8081",
            "127.0.0.2:8081",
        ] {
            assert_eq!(
                code(r.upstreams(&[own.into()])),
                "forbidden_upstream",
                "{own}"
            );
        }
        let mut only10 = rules();
        only10.upstreams.allow = vec!["10.0.0.0/8".parse().expect("net")];
        assert!(only10.upstreams(&["10.9.9.9:80".into()]).is_ok());
        assert_eq!(
            code(only10.upstreams(&["127.0.0.1:80".into()])),
            "forbidden_upstream"
        );
    }

    #[test]
    fn names() {
        assert_eq!(rules().name("  Shop One ").expect("ok"), "Shop One");
        assert_eq!(code(rules().name("")), "invalid_name");
        assert_eq!(code(rules().name("a\nb")), "invalid_name");
    }
}
