//! The routing table the hot path reads: hostname → route, with per-upstream passive health.
//!
//! Invariants: a lookup is at most two hash probes on `&str` keys and allocates nothing; the
//! table is an immutable snapshot behind `ArcSwap`, so a request sees one consistent version.
//! Health state (when an upstream may be tried again) lives in atomics on the entry, shared
//! by all threads without locks.
//!
//! Memory: each route is kept once, packed ([`PackedRoute`]), and a map slot holds the entry
//! and the offset of its name inside that packed route, not a second copy of the name. One
//! hash of the name picks both the shard and the bucket.
//!
//! Changes are copy-on-write per shard: the hostname maps are split into [`SHARDS`] shards,
//! and applying a change clones only the shards it touches, so the cost of a change grows
//! with the change, not with the table (a table of a million hostnames clones a few thousand
//! entries per changed route). Writers are serialised by a mutex over the registry of every
//! route by id: an upsert finds there the names the route no longer has, and the sync layer
//! finds the stored routes (the node's one copy of them, which the snapshot file is written
//! from).

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::Mutex;

use arc_swap::{ArcSwap, Guard};
use hashbrown::HashTable;
use tenantgate_config::host::wildcard_suffix;
use tenantgate_config::net::{is_local_address, Refusal};
use tenantgate_config::{RouteChange, RouteTable, UpstreamPolicy, UpstreamRule};

use crate::limits::requests::TenantLimits;
use crate::metrics::{Metrics, RouteMetrics};
use crate::traffic::RouteTraffic;

mod packed;

pub use packed::{HostRef, PackedRoute};

/// A hostname map slot: the entry, and where in its packed route the key's name lives (the
/// key is not stored twice).
#[derive(Debug, Clone)]
struct Slot {
    entry: Arc<RouteEntry>,
    at: u32,
}

impl Slot {
    #[inline]
    fn key(&self) -> &[u8] {
        self.entry.route.name_at(self.at)
    }
}

type Map = HashTable<Slot>;

/// Hash of a hostname key; also picks its shard (from bits the map itself does not use).
#[inline]
fn hash_key(key: &[u8]) -> u64 {
    let mut h = foldhash::fast::FixedState::with_seed(0x0053_4841_5244).build_hasher();
    h.write(key);
    h.finish()
}

/// A route entry found by its id (`Borrow<str>`), so the registry stores no second copy of it.
#[derive(Debug, Clone)]
struct ById(Arc<RouteEntry>);

impl std::borrow::Borrow<str> for ById {
    fn borrow(&self) -> &str {
        self.0.id()
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id() == other.0.id()
    }
}

impl Eq for ById {}

impl std::hash::Hash for ById {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.id().hash(state)
    }
}

/// Every route's entry by id, for the writers (never read on the hot path); also the node's
/// copy of the stored routes (those not from the config file), which it counts.
#[derive(Default)]
struct RouteRegistry {
    set: std::collections::HashSet<ById, foldhash::fast::RandomState>,
    stored: usize,
}

impl RouteRegistry {
    fn with_capacity(n: usize) -> Self {
        RouteRegistry {
            set: std::collections::HashSet::with_capacity_and_hasher(n, Default::default()),
            stored: 0,
        }
    }

    fn get(&self, id: &str) -> Option<&Arc<RouteEntry>> {
        self.set.get(id).map(|e| &e.0)
    }

    fn insert(&mut self, e: Arc<RouteEntry>) {
        self.stored += usize::from(e.is_stored());
        if let Some(old) = self.set.replace(ById(e)) {
            self.stored -= usize::from(old.0.is_stored());
        }
    }

    fn take(&mut self, id: &str) -> Option<Arc<RouteEntry>> {
        let old = self.set.take(id)?.0;
        self.stored -= usize::from(old.is_stored());
        Some(old)
    }

    fn len(&self) -> usize {
        self.set.len()
    }
}

/// One change to the table; an upserted route moves into the table.
#[derive(Debug, Clone)]
pub enum Change {
    /// Add the route, or replace the route with the same id.
    Upsert(PackedRoute),
    /// Remove the route with this id.
    Remove(String),
}

impl From<&RouteChange> for Change {
    fn from(c: &RouteChange) -> Self {
        match c {
            RouteChange::Upsert(r) => Change::Upsert(PackedRoute::new(r)),
            RouteChange::Remove { id } => Change::Remove(id.clone()),
        }
    }
}

/// Number of shards of each hostname map (a power of two).
pub const SHARDS: usize = 256;

/// The shard of a key's hash: bits 32.. (the maps index buckets by the low bits and tag
/// them with the top seven).
#[inline]
fn shard_of(hash: u64) -> usize {
    (hash >> 32) as usize & (SHARDS - 1)
}

/// One hostname map split into shards that are replaced independently.
#[derive(Debug, Clone)]
struct Sharded(Box<[Arc<Map>]>);

impl Default for Sharded {
    fn default() -> Self {
        Sharded((0..SHARDS).map(|_| Arc::new(Map::new())).collect())
    }
}

impl Sharded {
    #[inline]
    fn get(&self, key: &str) -> Option<&Arc<RouteEntry>> {
        let key = key.as_bytes();
        let hash = hash_key(key);
        self.0[shard_of(hash)]
            .find(hash, |s| s.key() == key)
            .map(|s| &s.entry)
    }
}

fn insert(map: &mut Map, hash: u64, slot: Slot) {
    match map.entry(hash, |s| s.key() == slot.key(), |s| hash_key(s.key())) {
        hashbrown::hash_table::Entry::Occupied(mut o) => *o.get_mut() = slot,
        hashbrown::hash_table::Entry::Vacant(v) => {
            v.insert(slot);
        }
    }
}

/// Shards being edited: a shard is cloned on its first write, the others are shared.
struct ShardEdit<'a> {
    base: &'a Sharded,
    touched: Vec<Option<Map>>,
}

impl<'a> ShardEdit<'a> {
    fn new(base: &'a Sharded) -> Self {
        ShardEdit {
            base,
            touched: (0..SHARDS).map(|_| None).collect(),
        }
    }

    fn shard(&mut self, i: usize) -> &mut Map {
        let base = &self.base.0[i];
        self.touched[i].get_or_insert_with(|| (**base).clone())
    }

    fn insert(&mut self, entry: &Arc<RouteEntry>, at: u32) {
        let hash = hash_key(entry.route.name_at(at));
        let slot = Slot {
            entry: entry.clone(),
            at,
        };
        insert(self.shard(shard_of(hash)), hash, slot);
    }

    /// Remove the name at `at` of `entry` if it still points at `entry` (another route may
    /// own it by now).
    fn remove_if(&mut self, entry: &Arc<RouteEntry>, at: u32) {
        let key = entry.route.name_at(at);
        let hash = hash_key(key);
        let i = shard_of(hash);
        let owned = match &self.touched[i] {
            Some(m) => m.find(hash, |s| s.key() == key),
            None => self.base.0[i].find(hash, |s| s.key() == key),
        }
        .is_some_and(|s| Arc::ptr_eq(&s.entry, entry));
        if owned {
            if let Ok(o) = self.shard(i).find_entry(hash, |s| s.key() == key) {
                o.remove();
            }
        }
    }

    fn finish(self) -> Sharded {
        Sharded(
            self.touched
                .into_iter()
                .zip(self.base.0.iter())
                .map(|(t, b)| t.map_or_else(|| b.clone(), Arc::new))
                .collect(),
        )
    }
}

/// A route as the hot path holds it: 64 bytes beside its packed route.
#[derive(Debug)]
pub struct RouteEntry {
    /// The route as published (id, hostnames, upstreams), shared with whoever published it
    /// rather than copied.
    route: PackedRoute,
    /// Key that separates this route's pooled upstream connections from other routes'.
    pub group_key: u64,
    /// Pre-resolved metric children (shared by routes beyond the label budget).
    pub metrics: Arc<RouteMetrics>,
    /// Per upstream (in the route's one list): milliseconds since the router's epoch before
    /// which it is skipped. The first inline (most routes have one), the others boxed.
    down_first: AtomicU64,
    down_rest: Box<[AtomicU64]>,
    next: AtomicU32,
    /// Answer plain HTTP with 308 to https.
    pub https_redirect: bool,
    /// The tenant is suspended: answer our 503 page.
    pub suspended: bool,
    /// The tenant's containers sleep: hold its requests while it wakes.
    pub asleep: Option<tenantgate_config::SleepLevel>,
    /// Unique among every entry this process made (a new one per route version): tells
    /// one sleep of a store from the next, where an address could be reused.
    pub serial: u64,
    /// An upstream breaks this node's upstream policy: the route is not served (our 502),
    /// never forwarded.
    pub refused: Option<UpstreamRule>,
    /// The tenant's traffic limits (`None`: none, and nothing to pay).
    pub limits: Option<Box<TenantLimits>>,
    /// The tenant's traffic counters, made on its first answered request and kept across
    /// the route's versions.
    traffic: std::sync::OnceLock<Arc<RouteTraffic>>,
    has_paths: bool,
    has_upstreams: bool,
}

impl RouteEntry {
    /// The route's id.
    #[inline]
    pub fn id(&self) -> &str {
        self.route.id()
    }

    /// The route's `Strict-Transport-Security` value, if it has one.
    #[inline]
    pub fn hsts(&self) -> Option<&str> {
        self.route.hsts()
    }

    /// Upstream connect and read timeouts: the tenant's own, else the node's.
    #[inline]
    pub fn timeouts(&self, connect: Duration, read: Duration) -> (Duration, Duration) {
        match &self.limits {
            None => (connect, read),
            Some(l) => (
                l.connect_timeout.unwrap_or(connect),
                l.read_timeout.unwrap_or(read),
            ),
        }
    }

    /// The route this entry serves.
    pub fn route(&self) -> &PackedRoute {
        &self.route
    }

    /// Count one answered request: its metrics and the tenant's traffic.
    #[inline]
    pub fn observe(&self, status: u16, elapsed: Duration) {
        self.metrics.observe(status, elapsed.as_secs_f64());
        self.traffic().observe(status, elapsed);
    }

    /// Count a request in flight for the tenant until the guard is dropped.
    #[inline]
    pub fn in_flight(&self) -> crate::traffic::InFlight {
        crate::traffic::InFlight::new(self.traffic())
    }

    /// The tenant's traffic counters (made on first use).
    fn traffic(&self) -> &Arc<RouteTraffic> {
        self.traffic.get_or_init(Arc::default)
    }

    /// A route from the store, not from the config file.
    fn is_stored(&self) -> bool {
        !self.route.is_configured()
    }

    /// Address of upstream `i` (of the route's one list: its own, then each path's).
    #[inline]
    pub fn upstream(&self, i: usize) -> Option<SocketAddr> {
        self.route.upstream_at(i)
    }

    /// The upstreams (a range of the one list) serving a request for `path`.
    #[inline]
    pub fn upstreams_for(&self, path: &str) -> std::ops::Range<usize> {
        if self.has_paths {
            self.route.upstream_range(path)
        } else {
            0..self.upstream_count()
        }
    }

    /// Number of upstreams.
    #[inline]
    pub fn upstream_count(&self) -> usize {
        usize::from(self.has_upstreams) + self.down_rest.len()
    }

    #[inline]
    fn down(&self, i: usize) -> Option<&AtomicU64> {
        match i {
            0 if self.has_upstreams => Some(&self.down_first),
            0 => None,
            i => self.down_rest.get(i - 1),
        }
    }

    /// Choose an upstream of `among` round robin: first one that is healthy and not yet
    /// tried for this request; failing that, any one not yet tried (so a route whose
    /// upstreams are all marked down still gets a chance to recover). `tried` is a bitmask
    /// of indexes (first 64).
    pub fn pick(&self, now_ms: u64, tried: u64, among: std::ops::Range<usize>) -> Option<usize> {
        let n = among
            .len()
            .min(self.upstream_count().saturating_sub(among.start));
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) as usize % n;
        let untried = |i: usize| i >= 64 || tried & (1 << i) == 0;
        let mut fallback = None;
        for k in 0..n {
            let i = among.start + (start + k) % n;
            if !untried(i) {
                continue;
            }
            if self
                .down(i)
                .is_none_or(|d| d.load(Ordering::Relaxed) <= now_ms)
            {
                return Some(i);
            }
            fallback.get_or_insert(i);
        }
        fallback
    }

    /// Take an upstream out of rotation until `until_ms`.
    pub fn mark_down(&self, i: usize, until_ms: u64) {
        if let Some(u) = self.down(i) {
            u.store(until_ms, Ordering::Relaxed);
        }
    }

    /// Whether any upstream of `among` has not been tried yet.
    pub fn has_untried(&self, tried: u64, among: std::ops::Range<usize>) -> bool {
        among
            .take_while(|&i| i < self.upstream_count())
            .any(|i| i >= 64 || tried & (1 << i) == 0)
    }
}

/// One immutable version of the table.
#[derive(Debug, Default)]
pub struct RouteIndex {
    exact: Sharded,
    wildcard: Sharded,
    /// Version of the [`RouteTable`] this index was built from.
    pub version: u64,
    /// Number of routes.
    pub routes: usize,
}

impl RouteIndex {
    /// The route serving a normalised hostname: exact match, then one-label wildcard.
    #[inline]
    pub fn lookup(&self, host: &str) -> Option<&Arc<RouteEntry>> {
        if let Some(r) = self.exact.get(host) {
            return Some(r);
        }
        self.wildcard.get(wildcard_suffix(host)?)
    }
}

pub use tenantgate_config::traffic::RouteReport;

/// The live routing table.
pub struct Router {
    index: ArcSwap<RouteIndex>,
    epoch: Instant,
    metrics: Arc<Metrics>,
    /// Where upstreams may point, checked as each route enters the table.
    policy: UpstreamPolicy,
    /// The ports of this node's listeners: only upstreams on these need the local-address
    /// test again at connect time (an interface may have appeared since).
    own_ports: Box<[u16]>,
    /// Each route's entry, for the writers (never read on the hot path).
    routes: Mutex<RouteRegistry>,
    /// Proxy nodes that share each tenant's limits (`fleet_share`; 1: this node enforces
    /// them whole).
    fleet_nodes: AtomicUsize,
    /// Bumped with every table published (see [`Router::watch`]).
    swapped: tokio::sync::watch::Sender<u64>,
}

impl Router {
    /// A router serving `table` under the default upstream policy (no listeners of its own
    /// to protect; metadata and special-purpose addresses refused).
    pub fn new(table: &RouteTable, metrics: Arc<Metrics>) -> Self {
        Self::with_policy(table, metrics, UpstreamPolicy::default())
    }

    /// A router serving `table`, refusing routes whose upstreams break `policy`.
    pub fn with_policy(table: &RouteTable, metrics: Arc<Metrics>, policy: UpstreamPolicy) -> Self {
        let own_ports = policy.own_ports().collect();
        let r = Router {
            index: ArcSwap::from_pointee(RouteIndex::default()),
            epoch: Instant::now(),
            metrics,
            policy,
            own_ports,
            routes: Mutex::new(RouteRegistry::default()),
            fleet_nodes: AtomicUsize::new(1),
            swapped: tokio::sync::watch::Sender::new(0),
        };
        r.replace(table);
        r
    }

    /// Each route's traffic since the last call and its requests in flight now (routes
    /// with neither are left out).
    pub fn take_traffic(&self) -> Vec<RouteReport> {
        let cells: Vec<(String, Arc<RouteTraffic>)> = {
            let routes = self.lock();
            routes
                .set
                .iter()
                .filter_map(|e| Some((e.0.id().to_owned(), e.0.traffic.get()?.clone())))
                .collect()
        };
        cells
            .into_iter()
            .map(|(id, t)| RouteReport {
                counts: t.take(),
                in_flight: t.in_flight(),
                id,
            })
            .filter(|r| !r.counts.is_empty() || r.in_flight > 0)
            .collect()
    }

    /// A receiver that sees every new version of the table (swaps and applied changes): a
    /// held request waits on it for its store to wake.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.swapped.subscribe()
    }

    /// The number of proxy nodes each tenant's limits are divided among.
    fn share(&self) -> usize {
        self.fleet_nodes.load(Ordering::Relaxed).max(1)
    }

    /// Divide every tenant's rate, burst and concurrency limits among `nodes` live proxy
    /// nodes (`fleet_share`): routes with limits are rebuilt when the count changes, keeping
    /// their buckets and requests in flight.
    pub fn set_fleet_nodes(&self, nodes: usize) {
        let nodes = nodes.max(1);
        if self.fleet_nodes.swap(nodes, Ordering::Relaxed) == nodes {
            return;
        }
        let limited: Vec<Change> = {
            let routes = self.lock();
            routes
                .set
                .iter()
                .filter(|e| e.0.limits.is_some())
                .map(|e| Change::Upsert(e.0.route.clone()))
                .collect()
        };
        if !limited.is_empty() {
            tracing::info!(
                nodes,
                routes = limited.len(),
                "limits shared among the fleet's proxies"
            );
            let version = self.load().version;
            self.apply(limited, version);
        }
    }

    /// Whether connecting to `addr` now would reach one of this node's own listeners (an
    /// address that became local after the route was checked). Costs one comparison per
    /// listener unless the port is one of theirs.
    #[inline]
    pub fn reaches_own_listener(&self, addr: SocketAddr) -> Option<Refusal> {
        if !self.own_ports.contains(&addr.port()) {
            return None;
        }
        self.policy.check(addr, is_local_address).err()
    }

    /// The rule the route's upstreams break, if one does (logged once per route change).
    fn refusal(&self, route: &PackedRoute) -> Option<UpstreamRule> {
        let mut refusal = None;
        route.find_upstream(|a| match self.policy.check(a, is_local_address) {
            Ok(()) => false,
            Err(r) => {
                refusal = Some(r);
                true
            }
        });
        let r = refusal?;
        tracing::warn!(
            route = route.id(),
            rule = r.rule.as_str(),
            "route not served: an upstream breaks the upstream policy: {}",
            r.reason
        );
        Some(r.rule)
    }

    fn entry(&self, route: PackedRoute, previous: Option<&RouteEntry>) -> Arc<RouteEntry> {
        let total = route.upstream_total();
        // An upstream that stays in the route keeps its passive-health state. Both lists are
        // decoded once (nothing to decode for a new route, as at load).
        let before: Vec<(Option<SocketAddr>, u64)> = previous.map_or_else(Vec::new, |p| {
            let down = |j| p.down(j).map_or(0, |d| d.load(Ordering::Relaxed));
            let addrs = p.route.upstream_addrs().into_iter();
            addrs.enumerate().map(|(j, a)| (a, down(j))).collect()
        });
        let addrs = if before.is_empty() {
            Vec::new()
        } else {
            route.upstream_addrs()
        };
        let down = |i: usize| {
            let kept = addrs
                .get(i)
                .and_then(|a| before.iter().find(|(b, _)| b == a));
            AtomicU64::new(kept.map_or(0, |(_, d)| *d))
        };
        Arc::new(RouteEntry {
            group_key: foldhash::fast::FixedState::with_seed(0x7465_6e61_6e74).hash_one(route.id()),
            https_redirect: route.https_redirect(),
            suspended: route.suspended(),
            asleep: route.asleep(),
            serial: {
                static NEXT: AtomicU64 = AtomicU64::new(0);
                NEXT.fetch_add(1, Ordering::Relaxed)
            },
            refused: self.refusal(&route),
            // The buckets and the count in flight carry over to the route's new version.
            limits: route.limits().map(|l| {
                let state = previous
                    .and_then(|p| p.limits.as_ref())
                    .map(|p| p.state().clone());
                Box::new(TenantLimits::new(&l.share(self.share()), state))
            }),
            has_paths: route.has_paths(),
            has_upstreams: total > 0,
            down_first: if total > 0 {
                down(0)
            } else {
                AtomicU64::new(0)
            },
            down_rest: (1..total).map(down).collect(),
            metrics: self.metrics.route(route.id()),
            // Counts go on where the previous version counted (requests still in flight on
            // it included).
            traffic: previous
                .map(|p| std::sync::OnceLock::from(p.traffic().clone()))
                .unwrap_or_default(),
            next: AtomicU32::new(0),
            route,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RouteRegistry> {
        // Writers replace whole values; a panic mid-write leaves the map usable.
        self.routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Swap in a table of configured routes. Requests in flight keep the entry they already
    /// hold.
    pub fn replace(&self, table: &RouteTable) {
        self.replace_packed(
            table.version,
            table.routes.iter().map(PackedRoute::configured),
        );
    }

    /// Swap in a new table of packed routes (moved into the table, not copied).
    pub fn replace_packed(&self, version: u64, table: impl IntoIterator<Item = PackedRoute>) {
        let table = table.into_iter();
        // Sized up front: growing a million-entry table rehashes every key several times.
        let expected = table.size_hint().0;
        let per_shard = expected / SHARDS + expected / SHARDS / 4;
        let mut routes = self.lock();
        let mut exact: Vec<Map> = (0..SHARDS).map(|_| Map::with_capacity(per_shard)).collect();
        let mut wildcard: Vec<Map> = (0..SHARDS).map(|_| Map::new()).collect();
        let mut next = RouteRegistry::with_capacity(expected);
        for route in table {
            let previous = routes.get(route.id()).map(|e| &**e);
            let entry = self.entry(route, previous);
            for h in entry.route.hostnames() {
                let maps = if h.wildcard {
                    &mut wildcard
                } else {
                    &mut exact
                };
                let hash = hash_key(h.name.as_bytes());
                let slot = Slot {
                    entry: entry.clone(),
                    at: h.at,
                };
                insert(&mut maps[shard_of(hash)], hash, slot);
            }
            next.insert(entry);
        }
        *routes = next;
        let idx = RouteIndex {
            exact: Sharded(exact.into_iter().map(Arc::new).collect()),
            wildcard: Sharded(wildcard.into_iter().map(Arc::new).collect()),
            version,
            routes: routes.len(),
        };
        self.metrics.routes.set(idx.routes as i64);
        self.index.store(Arc::new(idx));
        self.swapped.send_modify(|n| *n += 1);
    }

    /// Apply changes in order and publish the result as one new version: upserted routes
    /// replace the route with the same id (hostnames it no longer lists stop routing to it),
    /// removed ones stop routing. Costs in proportion to the hostnames changed.
    pub fn apply(&self, changes: impl IntoIterator<Item = Change>, version: u64) {
        let mut routes = self.lock();
        let cur = self.index.load_full();
        let mut exact = ShardEdit::new(&cur.exact);
        let mut wildcard = ShardEdit::new(&cur.wildcard);
        let mut withdraw = |routes: &mut RouteRegistry, id: &str| {
            let old = routes.take(id);
            if let Some(entry) = &old {
                for h in entry.route.hostnames() {
                    let maps = if h.wildcard {
                        &mut wildcard
                    } else {
                        &mut exact
                    };
                    maps.remove_if(entry, h.at);
                }
            }
            old
        };
        let mut inserted: Vec<Arc<RouteEntry>> = Vec::new();
        for change in changes {
            match change {
                Change::Upsert(route) => {
                    let old = withdraw(&mut routes, route.id());
                    let entry = self.entry(route, old.as_deref());
                    inserted.push(entry.clone());
                    routes.insert(entry);
                }
                Change::Remove(id) => {
                    withdraw(&mut routes, &id);
                }
            }
        }
        // Inserts after all withdrawals: a hostname moving from one route to another in the
        // same batch ends up with its new owner whatever the order of the changes.
        for entry in inserted {
            if !routes
                .get(entry.id())
                .is_some_and(|e| Arc::ptr_eq(e, &entry))
            {
                continue; // superseded by a later change in this batch
            }
            for h in entry.route.hostnames() {
                let maps = if h.wildcard {
                    &mut wildcard
                } else {
                    &mut exact
                };
                maps.insert(&entry, h.at);
            }
        }
        let idx = RouteIndex {
            exact: exact.finish(),
            wildcard: wildcard.finish(),
            version: version.max(cur.version),
            routes: routes.len(),
        };
        self.metrics.routes.set(idx.routes as i64);
        self.index.store(Arc::new(idx));
        self.swapped.send_modify(|n| *n += 1);
    }

    /// Requests (and upgraded connections) in flight now for the route with this id, on
    /// any of its versions.
    pub fn in_flight(&self, id: &str) -> u64 {
        self.lock()
            .get(id)
            .and_then(|e| e.traffic.get().map(|t| t.in_flight()))
            .unwrap_or(0)
    }

    /// The stored route (not one from the config file) with this id.
    pub fn stored_route(&self, id: &str) -> Option<Arc<RouteEntry>> {
        self.lock().get(id).filter(|e| e.is_stored()).cloned()
    }

    /// Every stored route (not those from the config file), shared.
    pub fn stored_routes(&self) -> Vec<Arc<RouteEntry>> {
        let routes = self.lock();
        let mut out = Vec::with_capacity(routes.stored);
        out.extend(
            routes
                .set
                .iter()
                .filter(|e| e.0.is_stored())
                .map(|e| e.0.clone()),
        );
        out
    }

    /// Number of stored routes.
    pub fn stored_count(&self) -> usize {
        self.lock().stored
    }

    /// The current table, without touching a reference count.
    #[inline]
    pub fn load(&self) -> Guard<Arc<RouteIndex>> {
        self.index.load()
    }

    /// Milliseconds since this router was created; the clock of upstream health.
    #[inline]
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// `now_ms()` for an instant already read (the hot path reads the clock once per request).
    #[inline]
    pub fn ms_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// `now_ms()` plus a cooldown, saturating (a huge configured cooldown means "until
    /// restart", not an overflow).
    pub fn until_ms(&self, cooldown: Duration) -> u64 {
        let cooldown = u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX);
        self.now_ms().saturating_add(cooldown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenantgate_config::{HostPattern, Route, Upstream};

    fn table() -> RouteTable {
        let up = |p| Upstream {
            addr: SocketAddr::from(([127, 0, 0, 1], p)),
        };
        RouteTable {
            version: 3,
            routes: vec![
                Route {
                    id: "a".into(),
                    hostnames: vec![HostPattern::Exact("a.test".into())],
                    upstreams: vec![up(1), up(2), up(3)],
                    https_redirect: false,
                    suspended: false,
                    paths: Default::default(),
                    hsts: None,
                    limits: None,
                    asleep: None,
                },
                Route {
                    id: "w".into(),
                    hostnames: vec![
                        HostPattern::Wildcard("w.test".into()),
                        HostPattern::Exact("x.w.test".into()),
                    ],
                    upstreams: vec![up(4)],
                    https_redirect: true,
                    suspended: false,
                    paths: Default::default(),
                    hsts: None,
                    limits: None,
                    asleep: None,
                },
            ],
        }
    }

    #[test]
    fn exact_beats_wildcard_and_wildcard_is_one_label() {
        let r = Router::new(&table(), Arc::new(Metrics::new(10)));
        let idx = r.load();
        assert_eq!(idx.version, 3);
        assert_eq!(idx.lookup("a.test").expect("a").id(), "a");
        assert_eq!(idx.lookup("y.w.test").expect("w").id(), "w");
        assert_eq!(idx.lookup("x.w.test").expect("x").id(), "w");
        assert!(idx.lookup("w.test").is_none());
        assert!(idx.lookup("z.y.w.test").is_none());
        assert!(idx.lookup("b.test").is_none());
    }

    #[test]
    fn pick_rotates_skips_down_and_tried_and_falls_back() {
        let r = Router::new(&table(), Arc::new(Metrics::new(10)));
        let idx = r.load();
        let a = idx.lookup("a.test").expect("a");
        let all = a.upstreams_for("/");
        assert_eq!(all, 0..3);
        let picks: Vec<_> = (0..3)
            .map(|_| a.pick(0, 0, all.clone()).expect("pick"))
            .collect();
        assert_eq!(picks, vec![0, 1, 2]);
        a.mark_down(1, 1_000);
        for _ in 0..6 {
            assert_ne!(a.pick(10, 0, all.clone()), Some(1));
        }
        // Upstream 1 is down and 0, 2 tried: fail open to 1 rather than give up.
        assert_eq!(a.pick(10, 0b101, all.clone()), Some(1));
        assert_eq!(a.pick(10, 0b111, all.clone()), None);
        assert!(!a.has_untried(0b111, all.clone()));
        // After the cooldown it is back.
        assert!((0..3).any(|_| a.pick(2_000, 0, all.clone()) == Some(1)));
        // A sub-range picks only inside it.
        assert!((0..6).all(|_| a.pick(0, 0, 1..2) == Some(1)));
        assert!(a.has_untried(0b001, 1..3) && !a.has_untried(0b110, 1..3));
    }

    #[test]
    fn cooldown_deadline_saturates() {
        let r = Router::new(&table(), Arc::new(Metrics::new(10)));
        assert_eq!(r.until_ms(Duration::from_secs(u64::MAX)), u64::MAX);
        assert!(r.until_ms(Duration::from_secs(1)) >= 1_000);
    }

    #[test]
    fn apply_changes_only_what_it_names_and_moves_hostnames_between_routes() {
        let r = Router::new(&table(), Arc::new(Metrics::new(10)));
        let a = r.load().lookup("a.test").expect("a").clone();
        a.mark_down(0, u64::MAX);
        let up = |p| Upstream {
            addr: SocketAddr::from(([127, 0, 0, 1], p)),
        };
        // "a" keeps upstream 1 (and its health state), gains b.test, loses a.test;
        // "w" takes a.test over in the same batch.
        r.apply(
            [
                RouteChange::Upsert(Route {
                    id: "a".into(),
                    hostnames: vec![HostPattern::Exact("b.test".into())],
                    upstreams: vec![up(1), up(9)],
                    https_redirect: false,
                    suspended: false,
                    paths: Default::default(),
                    hsts: None,
                    limits: None,
                    asleep: None,
                }),
                RouteChange::Upsert(Route {
                    id: "w".into(),
                    hostnames: vec![
                        HostPattern::Wildcard("w.test".into()),
                        HostPattern::Exact("a.test".into()),
                    ],
                    upstreams: vec![up(4)],
                    https_redirect: true,
                    suspended: true,
                    paths: Default::default(),
                    hsts: None,
                    limits: None,
                    asleep: None,
                }),
            ]
            .iter()
            .map(Change::from),
            4,
        );
        let idx = r.load();
        assert_eq!(idx.version, 4);
        assert_eq!(idx.lookup("a.test").expect("a.test").id(), "w");
        assert!(idx.lookup("a.test").expect("w").suspended);
        let b = idx.lookup("b.test").expect("b.test");
        assert_eq!(b.id(), "a");
        assert_eq!(
            b.pick(0, 0, b.upstreams_for("/")),
            Some(1),
            "upstream 1 kept its down state"
        );
        // The exact x.w.test was dropped; the wildcard still covers it.
        assert_eq!(idx.lookup("x.w.test").expect("wildcard").id(), "w");
        assert!(idx.lookup("y.w.test").is_some());
        drop(idx);

        r.apply([Change::Remove("w".into())], 5);
        let idx = r.load();
        assert!(idx.lookup("a.test").is_none());
        assert!(idx.lookup("y.w.test").is_none());
        assert_eq!(idx.routes, 1);
        // Removing an unknown route is a no-op.
        r.apply([Change::Remove("nope".into())], 6);
        assert_eq!(r.load().routes, 1);
    }

    #[test]
    fn health_follows_the_address_when_a_large_upstream_list_is_reordered() {
        let up = |i: u16| Upstream {
            addr: SocketAddr::from(([127, 0, 0, 1], 10_000 + i)),
        };
        let mut route = table().routes.remove(0);
        route.upstreams = (0..2_000).map(up).collect();
        let r = Router::new(&RouteTable::default(), Arc::new(Metrics::new(10)));
        r.apply([Change::Upsert(PackedRoute::new(&route))], 1);
        let a = r.load().lookup("a.test").expect("a").clone();
        a.mark_down(1_999, u64::MAX);
        route.upstreams.reverse();
        r.apply([Change::Upsert(PackedRoute::new(&route))], 2);
        let a = r.load().lookup("a.test").expect("a").clone();
        assert_eq!(a.upstream(0), Some(up(1_999).addr));
        // Only upstream 0 (the address marked down) is skipped.
        let all = a.upstreams_for("/");
        let tried_all_but_0 = !1u64;
        assert_eq!(
            a.pick(0, tried_all_but_0, 0..64),
            Some(0),
            "fallback to the down one"
        );
        assert!((0..100).all(|_| a.pick(0, 0, all.clone()) != Some(0)));
    }

    #[test]
    fn replace_swaps_the_whole_table() {
        let r = Router::new(&table(), Arc::new(Metrics::new(10)));
        r.replace(&RouteTable::default());
        assert!(r.load().lookup("a.test").is_none());
        assert_eq!(r.load().routes, 0);
    }
}
