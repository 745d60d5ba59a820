//! Applying route and certificate changes to the live [`Router`] and [`CertificateStore`],
//! and keeping the node's last-known-good copy on disk.
//!
//! The proxy does not know where changes come from (the in-process control plane, or a
//! PostgreSQL subscriber on a fleet node): a source hands it a full [`Snapshot`] or an ordered
//! [`Delta`]. Invariants:
//! - the served table is the static routes from the config file plus the stored ones; a
//!   hostname claimed by both is served by the stored route;
//! - a change is applied whole: the router and the certificate store are each swapped once
//!   per snapshot or delta, so a request sees the old or the new version, never half of one;
//!   a delta costs in proportion to what it changes, not to the size of the table;
//! - after every change from the store the snapshot file is rewritten atomically (write to a
//!   temporary file, fsync, rename, fsync the directory), so a crash leaves the old or the new
//!   file, never a torn one. A writer thread does it, coalescing bursts: a slow disk never
//!   delays the next change reaching the router;
//! - a certificate that cannot be opened (wrong encryption key, damaged PEM) is skipped with
//!   an error in the log: it must not take the other certificates down with it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tenantgate_certs::{
    parse_pem, CertificateStore, ChallengeStore, ParsedCertificate, SealingKey,
};
use tenantgate_config::{
    CertificateChange, ChallengeSet, Delta, HostPattern, Route, RouteChange, RouteTable, Snapshot,
    StoredCertificate,
};

use crate::router::{Change, HostRef, PackedRoute, RouteEntry, Router};

/// Where the routes being served came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Only the config file (no store attached yet, or a proxy-only node without one).
    #[default]
    Static,
    /// The store, and the node is following its changes.
    Store,
    /// The last-known-good file: the store could not be reached.
    Snapshot,
}

/// What `/readyz` reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncStatus {
    /// Where the served routes came from.
    pub source: Source,
    /// Version of the stored state being served (0: none).
    pub version: u64,
    /// Stored routes being served.
    pub stored_routes: usize,
    /// Stored certificates being served.
    pub stored_certificates: usize,
    /// Why the store is not being followed, when it is not.
    pub store_error: Option<String>,
}

/// Errors of applying state.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The snapshot file could not be read, written or parsed.
    #[error("snapshot file {path}: {reason}")]
    SnapshotFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A snapshot with its routes packed as they are parsed: loading a million routes never
/// holds a million unpacked ones. Reads what [`Snapshot`] writes.
#[derive(Deserialize)]
struct Loaded {
    version: u64,
    routes: Vec<PackedRoute>,
    certificates: Vec<StoredCertificate>,
    #[serde(default)]
    challenges: Vec<ChallengeSet>,
}

impl From<Snapshot> for Loaded {
    fn from(s: Snapshot) -> Self {
        Loaded {
            version: s.version,
            routes: s.routes.into_iter().map(PackedRoute::from).collect(),
            certificates: s.certificates,
            challenges: s.challenges,
        }
    }
}

/// What the node holds from the store besides its routes, which live in the [`Router`]
/// only (one copy of each).
#[derive(Default)]
struct Stored {
    version: u64,
    /// Which stored route claims each hostname (hostnames are unique in the store). Kept
    /// only when static routes exist: it is what filters them.
    hosts: HashMap<HostPattern, String>,
    certificates: BTreeMap<String, (StoredCertificate, Option<ParsedCertificate>)>,
}

impl Stored {
    /// What the snapshot file holds, as shared pointers: cheap to take under the lock, so
    /// serialising (slow at a million routes) happens after the lock is released.
    fn view(&self, router: &Router) -> SnapshotView {
        SnapshotView {
            version: self.version,
            routes: StoredRoutes(router.stored_routes()),
            certificates: self.certificates.values().map(|(c, _)| c.clone()).collect(),
        }
    }
}

/// The snapshot file's content; serialises like [`Snapshot`].
#[derive(Serialize)]
struct SnapshotView {
    version: u64,
    routes: StoredRoutes,
    certificates: Vec<StoredCertificate>,
}

/// Router entries serialised as the routes they serve.
struct StoredRoutes(Vec<Arc<RouteEntry>>);

impl Serialize for StoredRoutes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|e| e.route()))
    }
}

/// The last-known-good file: where it is, one writer at a time, and which version it holds.
struct SnapshotFile {
    path: PathBuf,
    /// The writer thread and [`EdgeState::flush`] share one temporary file name.
    write_lock: Mutex<()>,
    /// Version of the state last written whole to disk.
    written: AtomicU64,
}

impl SnapshotFile {
    fn write(&self, stored: &Mutex<Stored>, router: &Router) -> Result<(), SyncError> {
        let _one_writer = self
            .write_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let view = stored
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .view(router);
        let err = |reason: String| SyncError::SnapshotFile {
            path: self.path.clone(),
            reason,
        };
        let bytes = serde_json::to_vec(&view).map_err(|e| err(e.to_string()))?;
        write_atomically(&self.path, &bytes).map_err(|e| err(e.to_string()))?;
        self.written.fetch_max(view.version, Ordering::Relaxed);
        Ok(())
    }
}

/// Rewrites the snapshot file from a thread of its own whenever it is marked dirty.
struct Persister {
    dirty: Arc<(Mutex<bool>, Condvar)>,
}

impl Persister {
    fn start(file: Arc<SnapshotFile>, stored: Arc<Mutex<Stored>>, router: Arc<Router>) -> Self {
        let dirty = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = dirty.clone();
        let spawned = std::thread::Builder::new()
            .name("tg-snapshot".into())
            .spawn(move || loop {
                {
                    let (m, cv) = &*flag;
                    let mut d = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    while !*d {
                        d = cv
                            .wait(d)
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                    }
                    *d = false;
                }
                if let Err(e) = file.write(&stored, &router) {
                    tracing::error!("cannot keep the last-known-good snapshot: {e}");
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the snapshot writer: {e}");
        }
        Persister { dirty }
    }

    fn mark(&self) {
        let (m, cv) = &*self.dirty;
        *m.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        cv.notify_one();
    }
}

/// The node's served state: static configuration plus what the store published.
pub struct EdgeState {
    router: Arc<Router>,
    certs: Arc<CertificateStore>,
    key: Option<Arc<SealingKey>>,
    static_routes: Vec<Arc<Route>>,
    /// The ids of the static routes (a stored route with the same id replaces one).
    static_ids: HashSet<String>,
    /// Which static route lists each hostname.
    static_by_host: HashMap<HostPattern, usize>,
    static_certs: Vec<ParsedCertificate>,
    default_cert: Option<ParsedCertificate>,
    snapshot_file: Option<Arc<SnapshotFile>>,
    stored: Arc<Mutex<Stored>>,
    status: ArcSwap<SyncStatus>,
    persister: Option<Persister>,
    challenges: Arc<ChallengeStore>,
}

impl EdgeState {
    /// State serving `static_routes` and `static_certs` until a source publishes more.
    /// `key` opens stored private keys; `snapshot_path` is where the last-known-good copy goes.
    pub fn new(
        router: Arc<Router>,
        certs: Arc<CertificateStore>,
        key: Option<Arc<SealingKey>>,
        static_table: RouteTable,
        static_certs: Vec<ParsedCertificate>,
        default_cert: Option<ParsedCertificate>,
        snapshot_path: Option<PathBuf>,
    ) -> Self {
        let stored = Arc::new(Mutex::new(Stored::default()));
        let snapshot_file = snapshot_path.map(|path| {
            Arc::new(SnapshotFile {
                path,
                write_lock: Mutex::new(()),
                written: AtomicU64::new(0),
            })
        });
        let persister = snapshot_file
            .clone()
            .map(|f| Persister::start(f, stored.clone(), router.clone()));
        let static_by_host = static_table
            .routes
            .iter()
            .enumerate()
            .flat_map(|(i, r)| r.hostnames.iter().map(move |h| (h.clone(), i)))
            .collect();
        let static_ids = static_table.routes.iter().map(|r| r.id.clone()).collect();
        let state = EdgeState {
            router,
            static_ids,
            certs,
            key,
            static_routes: static_table.routes.into_iter().map(Arc::new).collect(),
            static_by_host,
            static_certs,
            default_cert,
            snapshot_file,
            stored,
            persister,
            status: ArcSwap::from_pointee(SyncStatus::default()),
            challenges: Arc::new(ChallengeStore::new()),
        };
        state.publish(&Stored::default(), Vec::new(), Source::Static, None);
        state
    }

    /// Answer challenges from `challenges` (shared with the proxy service).
    pub fn with_challenges(mut self, challenges: Arc<ChallengeStore>) -> Self {
        self.challenges = challenges;
        self
    }

    /// The live challenge answers.
    pub fn challenges(&self) -> &Arc<ChallengeStore> {
        &self.challenges
    }

    /// What `/readyz` reports.
    pub fn status(&self) -> Arc<SyncStatus> {
        self.status.load_full()
    }

    /// Version of the stored state being served.
    pub fn version(&self) -> u64 {
        self.status.load().version
    }

    /// Replace the stored state with a full snapshot from the store (taken by value: its
    /// routes are moved into the table, not copied), and persist it.
    pub fn apply_snapshot(&self, snap: Snapshot) {
        self.install(snap.into(), Source::Store, None);
        self.persist();
    }

    /// Make `snap` the stored state and serve it. Certificates unchanged since the previous
    /// state keep their parsed form: a resync does not re-parse every certificate.
    fn install(&self, snap: Loaded, source: Source, note: Option<String>) {
        let mut stored = self.lock();
        let old = std::mem::take(&mut stored.certificates);
        self.challenges.replace_all(snap.challenges);
        *stored = Stored {
            version: snap.version,
            ..Stored::default()
        };
        if self.tracks_hosts() {
            for r in &snap.routes {
                for h in r.hostnames() {
                    stored.hosts.insert(h.to_pattern(), r.id().to_owned());
                }
            }
        }
        let parsed = self.open_all(&snap.certificates, &old);
        for (c, parsed) in snap.certificates.into_iter().zip(parsed) {
            stored.certificates.insert(c.id.clone(), (c, parsed));
        }
        self.publish(&stored, snap.routes, source, note);
    }

    /// Apply an ordered delta from the store, and persist the result. A delta whose version
    /// is not newer than the served one was already applied and is ignored.
    pub fn apply_delta(&self, delta: &Delta) {
        let mut stored = self.lock();
        if delta.version <= stored.version {
            return;
        }
        let track = self.tracks_hosts();
        let mut changes = Vec::with_capacity(delta.routes.len());
        let mut touched_hosts: Vec<HostPattern> = Vec::new();
        // Each route this delta names, as the delta leaves it (the router has the state
        // before the delta until the end).
        let mut latest: BTreeMap<&str, Option<&Route>> = BTreeMap::new();
        for change in &delta.routes {
            let (id, now) = match change {
                RouteChange::Upsert(r) => (r.id.as_str(), Some(r)),
                RouteChange::Remove { id } => (id.as_str(), None),
            };
            if track {
                // The names the route had before this change.
                let before: Vec<HostPattern> = match latest.get(id) {
                    Some(r) => r.map(|r| r.hostnames.clone()).unwrap_or_default(),
                    None => self.router.stored_route(id).map_or_else(Vec::new, |e| {
                        e.route().hostnames().map(HostRef::to_pattern).collect()
                    }),
                };
                for h in before {
                    if stored.hosts.get(&h).is_some_and(|owner| owner == id) {
                        stored.hosts.remove(&h);
                    }
                    touched_hosts.push(h);
                }
                for h in now.iter().flat_map(|r| &r.hostnames) {
                    stored.hosts.insert(h.clone(), id.to_owned());
                    touched_hosts.push(h.clone());
                }
            }
            changes.push(Change::from(change));
            latest.insert(id, now);
        }
        let is_stored = |id: &str| match latest.get(id) {
            Some(now) => now.is_some(),
            None => self.router.stored_route(id).is_some(),
        };
        // Static routes sharing a hostname or id with a changed stored route are derived
        // again: they lose the names the store now claims and get back the ones it released.
        let statics: BTreeSet<usize> = touched_hosts
            .iter()
            .filter_map(|h| self.static_by_host.get(h).copied())
            .chain(
                self.static_routes
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| latest.contains_key(r.id.as_str()))
                    .map(|(i, _)| i),
            )
            .collect();
        for i in statics {
            let r = &self.static_routes[i];
            if is_stored(&r.id) {
                continue;
            }
            changes.push(match self.derive_static(r, &stored) {
                Some(r) => Change::Upsert(r),
                None => Change::Remove(r.id.clone()),
            });
        }
        let mut cert_changes = Vec::with_capacity(delta.certificates.len());
        for change in &delta.certificates {
            match change {
                CertificateChange::Upsert(c) => {
                    let parsed = self.open(c);
                    cert_changes.push((c.id.clone(), parsed.clone()));
                    stored
                        .certificates
                        .insert(c.id.clone(), (c.clone(), parsed));
                }
                CertificateChange::Remove { id } => {
                    stored.certificates.remove(id);
                    cert_changes.push((id.clone(), None));
                }
            }
        }
        stored.version = delta.version;
        self.challenges.apply(&delta.challenges);
        self.router.apply(changes, delta.version);
        // In place: only the names these certificates claim are re-indexed.
        self.certs.apply(cert_changes);
        self.set_status(&stored, Source::Store, None);
        self.persist();
    }

    /// Write the snapshot file now, on this thread (tests, and before a planned stop).
    pub fn flush(&self) -> Result<(), SyncError> {
        match &self.snapshot_file {
            Some(f) => f.write(&self.stored, &self.router),
            None => Ok(()),
        }
    }

    /// Version of the state last written whole to the snapshot file (`None`: no file is
    /// kept). Writes trail the served state by the write in flight.
    pub fn snapshot_version(&self) -> Option<u64> {
        self.snapshot_file
            .as_ref()
            .map(|f| f.written.load(Ordering::Relaxed))
    }

    /// The store cannot be reached: keep serving what we have and say so in `/readyz`.
    pub fn source_down(&self, reason: String) {
        let cur = self.status.load_full();
        let source = match cur.source {
            Source::Static if cur.version == 0 => Source::Static,
            _ => Source::Snapshot,
        };
        self.status.store(Arc::new(SyncStatus {
            source,
            store_error: Some(reason),
            ..(*cur).clone()
        }));
    }

    /// Boot from the last-known-good file, if there is one. Returns whether it was loaded.
    pub fn load_snapshot_file(&self) -> Result<bool, SyncError> {
        let Some(path) = self.snapshot_file.as_ref().map(|f| &f.path) else {
            return Ok(false);
        };
        let err = |reason: String| SyncError::SnapshotFile {
            path: path.clone(),
            reason,
        };
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(err(e.to_string())),
        };
        // Parsed as a stream: a million routes are ~150 MiB of JSON that would otherwise sit
        // in memory whole (and stay committed) while the routes are built.
        let snap: Loaded =
            serde_json::from_reader(std::io::BufReader::with_capacity(1 << 20, file))
                .map_err(|e| err(e.to_string()))?;
        if let Some(f) = &self.snapshot_file {
            f.written.fetch_max(snap.version, Ordering::Relaxed);
        }
        self.install(
            snap,
            Source::Snapshot,
            Some("serving the last-known-good snapshot until the store answers".into()),
        );
        Ok(true)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Stored> {
        // A panic while applying leaves a consistent `Stored` (fields are replaced whole), so
        // a poisoned lock is still usable.
        self.stored
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Open `certs` (in order), reusing what `old` already parsed; new ones are opened on
    /// every core (decrypting and parsing 100k keys is most of a large start).
    fn open_all(
        &self,
        certs: &[StoredCertificate],
        old: &BTreeMap<String, (StoredCertificate, Option<ParsedCertificate>)>,
    ) -> Vec<Option<ParsedCertificate>> {
        let one = |c: &StoredCertificate| match old.get(&c.id) {
            Some((prev, parsed)) if prev == c => parsed.clone(),
            _ => self.open(c),
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        if certs.len() < 256 || threads < 2 {
            return certs.iter().map(one).collect();
        }
        let chunk = certs.len().div_ceil(threads);
        std::thread::scope(|s| {
            let parts: Vec<_> = certs
                .chunks(chunk)
                .map(|part| s.spawn(move || part.iter().map(one).collect::<Vec<_>>()))
                .collect();
            parts
                .into_iter()
                .flat_map(|h| match h.join() {
                    Ok(v) => v,
                    Err(p) => std::panic::resume_unwind(p),
                })
                .collect()
        })
    }

    fn open(&self, c: &StoredCertificate) -> Option<ParsedCertificate> {
        let Some(key) = &self.key else {
            tracing::error!(certificate = %c.id, "no encryption key configured: stored certificate not served");
            return None;
        };
        let parsed = key
            .open(&c.sealed_key)
            .and_then(|k| parse_pem(c.chain_pem.as_bytes(), &k));
        match parsed {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!(certificate = %c.id, "stored certificate not served: {e}");
                None
            }
        }
    }

    /// Whether stored hostnames must be tracked (to filter static routes).
    fn tracks_hosts(&self) -> bool {
        !self.static_routes.is_empty()
    }

    /// A static route without the hostnames the store claims (`None`: nothing left).
    fn derive_static(&self, r: &Route, stored: &Stored) -> Option<PackedRoute> {
        if !r.hostnames.iter().any(|h| stored.hosts.contains_key(h)) {
            return Some(PackedRoute::configured(r));
        }
        let mut r = r.clone();
        r.hostnames.retain(|h| !stored.hosts.contains_key(h));
        (!r.hostnames.is_empty()).then(|| PackedRoute::configured(&r))
    }

    /// Build the whole served table from static + `routes` (the stored ones, moved into the
    /// router) and the certificate set, and swap them in (start, snapshots; deltas use
    /// [`Router::apply`]).
    fn publish(
        &self,
        stored: &Stored,
        routes: Vec<PackedRoute>,
        source: Source,
        store_error: Option<String>,
    ) {
        // Static routes whose id the store also has are replaced by the stored one.
        let replaced: HashSet<String> = if self.static_ids.is_empty() {
            HashSet::new()
        } else {
            routes
                .iter()
                .filter(|r| self.static_ids.contains(r.id()))
                .map(|r| r.id().to_owned())
                .collect()
        };
        let statics: Vec<PackedRoute> = self
            .static_routes
            .iter()
            .filter(|r| !replaced.contains(&r.id))
            .filter_map(|r| self.derive_static(r, stored))
            .collect();
        self.router
            .replace_packed(stored.version, statics.into_iter().chain(routes));
        self.publish_certificates(stored);
        self.set_status(stored, source, store_error);
    }

    fn publish_certificates(&self, stored: &Stored) {
        // Static certificates are keyed apart from store ids (which never contain ':').
        let certs = self
            .static_certs
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("static:{i}"), c.clone()))
            .chain(
                stored
                    .certificates
                    .iter()
                    .filter_map(|(id, (_, p))| p.clone().map(|p| (id.clone(), p))),
            )
            .collect();
        self.certs.replace_all(certs, self.default_cert.as_ref());
    }

    fn set_status(&self, stored: &Stored, source: Source, store_error: Option<String>) {
        self.status.store(Arc::new(SyncStatus {
            source,
            version: stored.version,
            stored_routes: self.router.stored_count(),
            stored_certificates: stored.certificates.len(),
            store_error,
        }));
    }

    fn persist(&self) {
        if let Some(p) = &self.persister {
            p.mark();
        }
    }
}

/// Write, fsync, rename, fsync the directory: the file is the old or the new one, whole.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.flush()?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use std::net::SocketAddr;
    use tenantgate_config::Upstream;

    fn route(id: &str, hosts: &[&str], port: u16) -> Route {
        Route {
            id: id.into(),
            hostnames: hosts
                .iter()
                .map(|h| HostPattern::parse(h).expect("host"))
                .collect(),
            upstreams: vec![Upstream {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
            }],
            https_redirect: false,
            suspended: false,
            paths: Default::default(),
            hsts: None,
            limits: None,
            asleep: None,
        }
    }

    fn state(dir: &Path) -> (EdgeState, Arc<Router>) {
        let router = Arc::new(Router::new(
            &RouteTable::default(),
            Arc::new(Metrics::new(10)),
        ));
        let s = EdgeState::new(
            router.clone(),
            Arc::new(CertificateStore::new()),
            None,
            RouteTable {
                version: 0,
                routes: vec![route("static", &["a.test", "s.test"], 1)],
            },
            vec![],
            None,
            Some(dir.join("snap.json")),
        );
        (s, router)
    }

    fn port_of(router: &Router, host: &str) -> Option<u16> {
        router
            .load()
            .lookup(host)
            .and_then(|r| r.upstream(0))
            .map(|a| a.port())
    }

    #[test]
    fn stored_routes_win_over_static_ones_and_deltas_apply_in_order() {
        let dir = std::env::temp_dir().join(format!("tg-sync-{}", std::process::id()));
        let (s, router) = state(&dir);
        assert_eq!(port_of(&router, "a.test"), Some(1));
        s.apply_snapshot(Snapshot {
            version: 5,
            routes: vec![route("t1", &["a.test"], 2)],
            certificates: vec![],
            challenges: vec![],
        });
        assert_eq!(port_of(&router, "a.test"), Some(2));
        assert_eq!(port_of(&router, "s.test"), Some(1));
        assert_eq!(s.status().stored_routes, 1);
        s.apply_delta(&Delta {
            version: 6,
            routes: vec![RouteChange::Remove { id: "t1".into() }],
            certificates: vec![],
            challenges: vec![],
        });
        assert_eq!(port_of(&router, "a.test"), Some(1));
        // An old delta is ignored.
        s.apply_delta(&Delta {
            version: 6,
            routes: vec![RouteChange::Upsert(route("t1", &["a.test"], 3))],
            certificates: vec![],
            challenges: vec![],
        });
        assert_eq!(port_of(&router, "a.test"), Some(1));
        assert_eq!(s.status().source, Source::Store);
        // A delta claiming a static hostname takes it; the static route keeps the rest.
        s.apply_delta(&Delta {
            version: 7,
            routes: vec![RouteChange::Upsert(route("t2", &["s.test"], 4))],
            certificates: vec![],
            challenges: vec![],
        });
        assert_eq!(port_of(&router, "s.test"), Some(4));
        assert_eq!(port_of(&router, "a.test"), Some(1));
        s.apply_delta(&Delta {
            version: 8,
            routes: vec![RouteChange::Upsert(route("t2", &["t2.test"], 4))],
            certificates: vec![],
            challenges: vec![],
        });
        assert_eq!(
            port_of(&router, "s.test"),
            Some(1),
            "released back to the static route"
        );
        assert_eq!(port_of(&router, "t2.test"), Some(4));
        assert_eq!(s.status().stored_routes, 1);
        // The file holds the stored routes only, in the model's form.
        s.flush().expect("flush");
        let file: Snapshot =
            serde_json::from_slice(&std::fs::read(dir.join("snap.json")).expect("read"))
                .expect("parse");
        assert_eq!(file.routes, vec![route("t2", &["t2.test"], 4)]);
        s.apply_delta(&Delta {
            version: 9,
            routes: vec![RouteChange::Remove { id: "t2".into() }],
            certificates: vec![],
            challenges: vec![],
        });

        // A new node boots from the file the first one wrote.
        s.flush().expect("flush");
        assert_eq!(s.snapshot_version(), Some(9));
        let (s2, router2) = state(&dir);
        assert!(s2.load_snapshot_file().expect("load"));
        assert_eq!(s2.version(), 9);
        assert_eq!(s2.snapshot_version(), Some(9));
        assert_eq!(s2.status().source, Source::Snapshot);
        assert_eq!(port_of(&router2, "a.test"), Some(1));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
