//! Background duties of a node: keeping the change log bounded and knowing whether the store
//! answers (what `/readyz` of a `control` node reports), on control-plane nodes; and on
//! every node a heartbeat into the store's node registry, from which a proxy learns how many
//! live proxies share the fleet (`fleet_share`). All are safe to run on several nodes at once.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::store::Store;

/// How often the change log is pruned.
pub const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// How often the store is pinged for readiness.
pub const PING_EVERY: Duration = Duration::from_secs(1);

/// Prune the change log to its newest `keep` versions now and every [`PRUNE_EVERY`].
pub async fn prune_forever(
    store: Arc<Store>,
    keep: u64,
    sessions: crate::store::operators::SessionLimits,
) {
    loop {
        match store.prune_changes(keep).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(entries = n, keep, "pruned the change log"),
            Err(e) => tracing::warn!("cannot prune the change log: {e}"),
        }
        if let Err(e) = store.prune_sessions(sessions).await {
            tracing::warn!("cannot prune ended dashboard sessions: {e}");
        }
        tokio::time::sleep(PRUNE_EVERY).await;
    }
}

/// Whether the store answered its last ping, and if not, why.
#[derive(Debug, Clone)]
pub struct StoreHealth {
    last: Arc<Mutex<Option<String>>>,
}

impl Default for StoreHealth {
    fn default() -> Self {
        StoreHealth {
            last: Arc::new(Mutex::new(Some(
                "the store has not been checked yet".into(),
            ))),
        }
    }
}

impl StoreHealth {
    /// Why the store is not usable, or `None` when its last ping succeeded.
    pub fn problem(&self) -> Option<String> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Ping `store` every [`PING_EVERY`] and record the outcome.
    pub async fn watch(self, store: Arc<Store>) {
        loop {
            let outcome = store.ping().await.err().map(|e| e.to_string());
            *self.last.lock().unwrap_or_else(PoisonError::into_inner) = outcome;
            tokio::time::sleep(PING_EVERY).await;
        }
    }
}

/// How often a node reports itself.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// A node whose last heartbeat is older than this is not counted live.
pub const LIVE_WITHIN: Duration = Duration::from_secs(20);

/// This process as the registry shows it: a new random id, its role and host name.
pub fn this_node(role: &str) -> crate::Result<crate::model::NodeInfo> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    Ok(crate::model::NodeInfo {
        id: crate::random_id("n_")?,
        role: role.to_owned(),
        name,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        route_version: 0,
        started_at: String::new(),
        heartbeat_at: String::new(),
        live: true,
    })
}

/// Report `node` every [`HEARTBEAT_EVERY`] with the route version `version()` gives; after
/// each, hand `live_proxies` the number of live nodes that serve traffic (`serve` and
/// `proxy`, this one included) when the store could tell.
pub async fn heartbeat_forever(
    store: Arc<Store>,
    node: crate::model::NodeInfo,
    version: impl Fn() -> u64 + Send,
    live_proxies: impl Fn(usize) + Send,
) {
    let started = crate::now_ms();
    let within = i64::try_from(LIVE_WITHIN.as_millis()).unwrap_or(i64::MAX);
    loop {
        match store.heartbeat(&node, started, version()).await {
            Err(e) => tracing::warn!("cannot record this node's heartbeat: {e}"),
            Ok(()) => match store.nodes(within).await {
                Ok(nodes) => live_proxies(
                    nodes
                        .iter()
                        .filter(|n| n.live && n.role != "control")
                        .count()
                        .max(1),
                ),
                Err(e) => tracing::warn!("cannot read the node registry: {e}"),
            },
        }
        tokio::time::sleep(HEARTBEAT_EVERY).await;
    }
}

/// Report this proxy node's traffic into the store every `every`: for each period, the
/// platform's total and each tenant with traffic (what `take` hands over: the counts since
/// its last call), and the tenants it answered or still has requests in flight for, as
/// their last activity (what idle stores are put to sleep by). Points older than two hours
/// are pruned every ten minutes. A period the store does not take is dropped with a
/// warning: the dashboard shows a gap, nothing grows.
pub async fn report_traffic_forever(
    store: Arc<Store>,
    node: String,
    every: Duration,
    take: impl Fn() -> Vec<tenantgate_config::traffic::RouteReport> + Send,
) {
    use crate::store::traffic::{KEEP_MS, PLATFORM};
    let every_ms = i64::try_from(every.as_millis())
        .unwrap_or(10_000)
        .max(1_000);
    let mut pruned_at = 0;
    loop {
        // Wake at the period's end, so every node's points share their start times.
        let now = crate::now_ms();
        let next = (now / every_ms + 1) * every_ms;
        tokio::time::sleep(Duration::from_millis(
            u64::try_from(next - now).unwrap_or(0),
        ))
        .await;
        let at = next - every_ms;
        let reports = take();
        let active: Vec<String> = reports.iter().map(|r| r.id.clone()).collect();
        if let Err(e) = store.record_activity(&node, next, &active).await {
            tracing::warn!(
                tenants = active.len(),
                "activity of this period not recorded: {e}"
            );
        }
        let mut rows: Vec<(String, tenantgate_config::traffic::TrafficCounts)> = reports
            .into_iter()
            .filter(|r| !r.counts.is_empty())
            .map(|r| (r.id, r.counts))
            .collect();
        let mut total = tenantgate_config::traffic::TrafficCounts::default();
        for (_, c) in &rows {
            total.add(c);
        }
        rows.push((PLATFORM.to_owned(), total));
        if let Err(e) = store.record_traffic(&node, at, &rows).await {
            tracing::warn!(
                tenants = rows.len() - 1,
                "traffic of this period not recorded: {e}"
            );
        }
        if next - pruned_at >= PRUNE_EVERY.as_millis() as i64 {
            pruned_at = next;
            if let Err(e) = store.prune_traffic(next - KEEP_MS).await {
                tracing::warn!("cannot prune old traffic points: {e}");
            }
            if let Err(e) = store.prune_activity().await {
                tracing::warn!("cannot prune the activity of deleted stores: {e}");
            }
        }
    }
}
