//! The certificate store and the SNI resolver built on it.
//!
//! The index is an immutable snapshot behind `ArcSwap`: handshakes read it without locks,
//! writers build a new index and swap it in. Exact names and wildcard suffixes live in two
//! hash maps so that one SNI lookup costs at most two hash probes.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tenantgate_config::host::{normalize_into, wildcard_suffix, HostBuf};
use tenantgate_config::HostPattern;

use crate::ParsedCertificate;

type Map = HashMap<Box<str>, Arc<CertifiedKey>, foldhash::fast::RandomState>;

#[derive(Default)]
struct Index {
    exact: Map,
    wildcard: Map,
    default: Option<Arc<CertifiedKey>>,
    count: usize,
}

/// All certificates this node serves, looked up by SNI name.
#[derive(Default)]
pub struct CertificateStore {
    index: ArcSwap<Index>,
}

impl std::fmt::Debug for CertificateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateStore")
            .field("certificates", &self.len())
            .finish()
    }
}

impl CertificateStore {
    /// An empty store (every handshake refused until certificates are added).
    pub fn new() -> Self {
        Self::default()
    }

    /// Replace the whole set. When two certificates claim one name, the one that expires last
    /// wins, so a renewed certificate supersedes the old one whatever the order.
    pub fn replace_all(&self, certs: &[ParsedCertificate], default: Option<&ParsedCertificate>) {
        let mut idx = Index {
            count: certs.len(),
            default: default.map(|d| d.key.clone()),
            ..Index::default()
        };
        let mut expiry: HashMap<(bool, &str), i64> = HashMap::new();
        for c in certs {
            for n in &c.names {
                let (map, key, wild) = match n {
                    HostPattern::Exact(h) => (&mut idx.exact, h.as_str(), false),
                    HostPattern::Wildcard(s) => (&mut idx.wildcard, s.as_str(), true),
                };
                let newer = expiry.get(&(wild, key)).is_none_or(|&t| c.not_after > t);
                if newer {
                    expiry.insert((wild, key), c.not_after);
                    map.insert(key.into(), c.key.clone());
                }
            }
        }
        self.index.store(Arc::new(idx));
    }

    /// Number of certificates loaded.
    pub fn len(&self) -> usize {
        self.index.load().count
    }

    /// Whether the store holds no certificate.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The certificate for an SNI name: exact, then wildcard, then default.
    pub fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let idx = self.index.load();
        let mut buf = HostBuf::default();
        let host = sni.and_then(|s| normalize_into(s.as_bytes(), &mut buf).ok());
        if let Some(host) = host {
            if let Some(k) = idx.exact.get(host) {
                return Some(k.clone());
            }
            if let Some(k) = wildcard_suffix(host).and_then(|s| idx.wildcard.get(s)) {
                return Some(k.clone());
            }
        }
        idx.default.clone()
    }
}

/// The rustls resolver over a [`CertificateStore`].
#[derive(Debug)]
pub struct SniResolver {
    store: Arc<CertificateStore>,
}

impl SniResolver {
    /// A resolver reading `store`.
    pub fn new(store: Arc<CertificateStore>) -> Self {
        SniResolver { store }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.store.lookup(client_hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_pem;

    fn cert(names: &[&str]) -> ParsedCertificate {
        let key = rcgen::KeyPair::generate().expect("key");
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        let c = params.self_signed(&key).expect("cert");
        parse_pem(c.pem().as_bytes(), key.serialize_pem().as_bytes()).expect("parse")
    }

    #[test]
    fn exact_then_wildcard_then_default_else_none() {
        let a = cert(&["a.test"]);
        let w = cert(&["*.w.test"]);
        let d = cert(&["platform.test"]);
        let s = CertificateStore::new();
        s.replace_all(&[a.clone(), w.clone()], None);
        let same = |x: Option<Arc<CertifiedKey>>, y: &ParsedCertificate| {
            x.is_some_and(|x| Arc::ptr_eq(&x, &y.key))
        };
        assert!(same(s.lookup(Some("A.test")), &a));
        assert!(same(s.lookup(Some("x.w.test")), &w));
        assert!(s.lookup(Some("w.test")).is_none());
        assert!(s.lookup(Some("y.x.w.test")).is_none());
        assert!(s.lookup(Some("other.test")).is_none());
        assert!(s.lookup(None).is_none());
        s.replace_all(&[a.clone(), w, d.clone()], Some(&d));
        assert!(same(s.lookup(Some("other.test")), &d));
        assert!(same(s.lookup(None), &d));
        assert!(same(s.lookup(Some("a.test")), &a));
        assert_eq!(s.len(), 3);
    }
}
