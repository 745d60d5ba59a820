//! The certificate store and the SNI resolver built on it.
//!
//! The index is an immutable value behind `ArcSwap`: handshakes read it without locks,
//! writers build a new one and swap it in. Exact names and wildcard suffixes live in hash
//! maps split into shards by name, so one SNI lookup costs at most two hash probes and a
//! change copies only the shards it touches: adding one certificate to 100,000 costs in
//! proportion to the change, not the set.
//!
//! When several certificates claim one name, the one that expires last wins (a renewed
//! certificate supersedes the old one whatever the order they arrive in); removing the
//! winner gives the name back to the next one.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tenantgate_config::host::{normalize_into, wildcard_suffix, HostBuf};
use tenantgate_config::HostPattern;

use crate::ParsedCertificate;

type Map = HashMap<Box<str>, Arc<CertifiedKey>, foldhash::fast::RandomState>;

const SHARDS: usize = 64;

#[derive(Default, Clone)]
struct Shard {
    exact: Map,
    wildcard: Map,
}

struct Index {
    shards: Vec<Arc<Shard>>,
    default: Option<Arc<CertifiedKey>>,
    count: usize,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            shards: (0..SHARDS).map(|_| Arc::new(Shard::default())).collect(),
            default: None,
            count: 0,
        }
    }
}

/// Which shard holds `name` (a fixed hash: the same name always lands in the same shard).
fn shard_of(name: &str) -> usize {
    (foldhash::fast::FixedState::with_seed(0x7467_6365_7274).hash_one(name) as usize) % SHARDS
}

/// A name a certificate claims: (wildcard?, exact name or wildcard suffix).
type Claim = (bool, Box<str>);

fn claims(c: &ParsedCertificate) -> impl Iterator<Item = Claim> + '_ {
    c.names.iter().map(|n| match n {
        HostPattern::Exact(h) => (false, h.as_str().into()),
        HostPattern::Wildcard(s) => (true, s.as_str().into()),
    })
}

/// The writers' view: every certificate by key and who claims each name.
#[derive(Default)]
struct Claims {
    certs: HashMap<String, ParsedCertificate>,
    by_name: HashMap<Claim, Vec<String>>,
}

impl Claims {
    fn remove(&mut self, id: &str, touched: &mut HashSet<Claim>) {
        if let Some(old) = self.certs.remove(id) {
            for n in claims(&old) {
                if let Some(ids) = self.by_name.get_mut(&n) {
                    ids.retain(|i| i != id);
                    if ids.is_empty() {
                        self.by_name.remove(&n);
                    }
                }
                touched.insert(n);
            }
        }
    }

    fn insert(&mut self, id: String, c: ParsedCertificate, touched: &mut HashSet<Claim>) {
        for n in claims(&c) {
            self.by_name.entry(n.clone()).or_default().push(id.clone());
            touched.insert(n);
        }
        self.certs.insert(id, c);
    }

    /// The certificate serving `name`: the one expiring last (ties: the greatest key).
    fn winner(&self, name: &Claim) -> Option<Arc<CertifiedKey>> {
        self.by_name
            .get(name)?
            .iter()
            .filter_map(|id| self.certs.get(id).map(|c| (c.not_after, id, c)))
            .max_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)))
            .map(|(_, _, c)| c.key.clone())
    }
}

/// All certificates this node serves, looked up by SNI name.
#[derive(Default)]
pub struct CertificateStore {
    index: ArcSwap<Index>,
    writer: Mutex<Claims>,
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Claims> {
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replace the whole set: certificates by a key unique among them (a store id), and the
    /// default served when SNI is absent or matches nothing.
    pub fn replace_all(
        &self,
        certs: Vec<(String, ParsedCertificate)>,
        default: Option<&ParsedCertificate>,
    ) {
        let mut w = self.lock();
        *w = Claims::default();
        let mut touched = HashSet::new();
        for (id, c) in certs {
            w.insert(id, c, &mut touched);
        }
        let shards = Index::default().shards;
        self.publish(&w, shards, touched, default.map(|d| d.key.clone()));
    }

    /// Add, replace (`Some`) or remove (`None`) certificates by key; only the shards holding
    /// the names they claim are copied.
    pub fn apply(&self, changes: Vec<(String, Option<ParsedCertificate>)>) {
        if changes.is_empty() {
            return;
        }
        let mut w = self.lock();
        let mut touched = HashSet::new();
        for (id, c) in changes {
            w.remove(&id, &mut touched);
            if let Some(c) = c {
                w.insert(id, c, &mut touched);
            }
        }
        let cur = self.index.load_full();
        self.publish(&w, cur.shards.clone(), touched, cur.default.clone());
    }

    /// Point every `touched` name at its winner in `shards` (copying a shard only while it is
    /// shared with the served index) and serve the result.
    fn publish(
        &self,
        w: &Claims,
        mut shards: Vec<Arc<Shard>>,
        touched: HashSet<Claim>,
        default: Option<Arc<CertifiedKey>>,
    ) {
        for name in touched {
            let winner = w.winner(&name);
            let shard = Arc::make_mut(&mut shards[shard_of(&name.1)]);
            let map = if name.0 {
                &mut shard.wildcard
            } else {
                &mut shard.exact
            };
            match winner {
                Some(k) => {
                    map.insert(name.1, k);
                }
                None => {
                    map.remove(&name.1);
                }
            }
        }
        self.index.store(Arc::new(Index {
            shards,
            default,
            count: w.certs.len(),
        }));
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
            if let Some(k) = idx.shards[shard_of(host)].exact.get(host) {
                return Some(k.clone());
            }
            if let Some(k) =
                wildcard_suffix(host).and_then(|s| idx.shards[shard_of(s)].wildcard.get(s))
            {
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
        s.replace_all(vec![("a".into(), a.clone()), ("w".into(), w.clone())], None);
        let same = |x: Option<Arc<CertifiedKey>>, y: &ParsedCertificate| {
            x.is_some_and(|x| Arc::ptr_eq(&x, &y.key))
        };
        assert!(same(s.lookup(Some("A.test")), &a));
        assert!(same(s.lookup(Some("x.w.test")), &w));
        assert!(s.lookup(Some("w.test")).is_none());
        assert!(s.lookup(Some("y.x.w.test")).is_none());
        assert!(s.lookup(Some("other.test")).is_none());
        assert!(s.lookup(None).is_none());
        s.replace_all(
            vec![
                ("a".into(), a.clone()),
                ("w".into(), w),
                ("d".into(), d.clone()),
            ],
            Some(&d),
        );
        assert!(same(s.lookup(Some("other.test")), &d));
        assert!(same(s.lookup(None), &d));
        assert!(same(s.lookup(Some("a.test")), &a));
        assert_eq!(s.len(), 3);
    }

    fn cert_expiring(names: &[&str], days: i64) -> ParsedCertificate {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.not_after = rcgen::date_time_ymd(2030, 1, 1) + time_days(days);
        let c = params.self_signed(&key).expect("cert");
        parse_pem(c.pem().as_bytes(), key.serialize_pem().as_bytes()).expect("parse")
    }

    fn time_days(d: i64) -> std::time::Duration {
        std::time::Duration::from_secs(u64::try_from(d).expect("days") * 86_400)
    }

    #[test]
    fn changes_apply_in_place_and_the_latest_expiry_wins_a_shared_name() {
        let same = |x: Option<Arc<CertifiedKey>>, y: &ParsedCertificate| {
            x.is_some_and(|x| Arc::ptr_eq(&x, &y.key))
        };
        let s = CertificateStore::new();
        let old = cert_expiring(&["shop.test"], 0);
        let other = cert_expiring(&["other.test"], 0);
        s.replace_all(
            vec![("old".into(), old.clone()), ("o".into(), other.clone())],
            None,
        );
        // A renewal arrives before the old certificate leaves: the later expiry serves.
        let new = cert_expiring(&["shop.test"], 30);
        s.apply(vec![("new".into(), Some(new.clone()))]);
        assert!(same(s.lookup(Some("shop.test")), &new));
        assert_eq!(s.len(), 3);
        // Removing the winner gives the name back to the remaining claimant.
        s.apply(vec![("new".into(), None)]);
        assert!(same(s.lookup(Some("shop.test")), &old));
        // Replacing under the same key, and removing the last claimant.
        s.apply(vec![("old".into(), Some(new.clone()))]);
        assert!(same(s.lookup(Some("shop.test")), &new));
        s.apply(vec![("old".into(), None)]);
        assert!(s.lookup(Some("shop.test")).is_none());
        assert!(same(s.lookup(Some("other.test")), &other));
        assert_eq!(s.len(), 1);
        // Removing what is not there changes nothing.
        s.apply(vec![("nothing".into(), None)]);
        assert_eq!(s.len(), 1);
    }
}
