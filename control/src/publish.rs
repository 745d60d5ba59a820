//! Following the store and handing every committed change to the proxy of this process.
//!
//! One loop serves both shapes of deployment:
//! - single node (`serve`): woken by commits of this process ([`crate::Store::committed`]);
//! - fleet node (`proxy`): woken by PostgreSQL `NOTIFY` on a dedicated `LISTEN` connection.
//!
//! Protocol: (re)connect the wake-up source first, then take a full snapshot, then apply
//! deltas from the change log after the applied version. Because the listener is up before
//! the snapshot is read, no commit can fall between them. Notifications only say "something
//! after N exists"; the change log is the truth, so a lost, duplicated or reordered
//! notification costs nothing. A periodic check catches a listener that died silently, and
//! every reconnect resynchronises fully (NOTIFY is not delivered while disconnected).

use std::sync::Arc;
use std::time::Duration;

use tenantgate_config::{Delta, Snapshot};

use crate::store::postgres::Listener;
use crate::store::Store;

/// What the follower hands to the proxy.
#[derive(Debug)]
pub enum Event {
    /// The whole stored state (after start and after every reconnect).
    Snapshot(Snapshot),
    /// Changes after the previously handed version.
    Delta(Delta),
    /// The store cannot be reached; keep serving what you have.
    SourceDown(String),
}

/// Where wake-ups come from.
pub enum Wake {
    /// Commits of this process.
    InProcess,
    /// `LISTEN` on this PostgreSQL URL.
    Postgres(String),
}

/// Settings of the follow loop.
#[derive(Debug, Clone)]
pub struct FollowSettings {
    /// Check the change log this often even without a wake-up.
    pub poll: Duration,
    /// First wait after a failure; doubles up to `max_backoff`.
    pub backoff: Duration,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
}

impl Default for FollowSettings {
    fn default() -> Self {
        FollowSettings {
            poll: Duration::from_secs(2),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

enum WakeSource {
    InProcess(crate::store::Committed),
    Postgres(Listener),
}

impl WakeSource {
    /// Wait for a version announcement; `None` when the source is gone (reconnect).
    async fn next(&mut self, poll: Duration) -> Option<Option<u64>> {
        let woke = async {
            match self {
                WakeSource::InProcess(rx) => match rx.changed().await {
                    Ok(()) => Some(*rx.borrow_and_update()),
                    Err(_) => None,
                },
                WakeSource::Postgres(l) => l.versions.recv().await,
            }
        };
        match tokio::time::timeout(poll, woke).await {
            Ok(Some(v)) => Some(Some(v)),
            Ok(None) => None,
            Err(_) => Some(None),
        }
    }
}

/// Follow `store` forever, calling `apply` with every snapshot, delta and outage.
pub async fn follow(
    store: Arc<Store>,
    wake: Wake,
    settings: FollowSettings,
    mut apply: impl FnMut(Event) + Send,
) {
    let mut backoff = settings.backoff;
    let mut down = false;
    loop {
        let source = match &wake {
            Wake::InProcess => Ok(WakeSource::InProcess(store.committed())),
            Wake::Postgres(url) => Listener::connect(url).await.map(WakeSource::Postgres),
        };
        // Listener first, then the snapshot: no commit can fall between them.
        let started = match source {
            Ok(source) => store.snapshot().await.map(|s| (source, s)),
            Err(e) => Err(e),
        };
        let (mut source, snap) = match started {
            Ok(ok) => ok,
            Err(e) => {
                if !down {
                    tracing::warn!("store unreachable, serving the last known routes: {e}");
                }
                down = true;
                apply(Event::SourceDown(e.to_string()));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(settings.max_backoff);
                continue;
            }
        };
        let mut applied = snap.version;
        tracing::info!(
            version = applied,
            routes = snap.routes.len(),
            certificates = snap.certificates.len(),
            "loaded the stored routes"
        );
        apply(Event::Snapshot(snap));
        down = false;
        backoff = settings.backoff;
        loop {
            let Some(announced) = source.next(settings.poll).await else {
                tracing::warn!("lost the store's change notifications; resynchronising");
                break;
            };
            if announced.is_some_and(|v| v <= applied) {
                continue;
            }
            match store.delta_since(applied).await {
                Ok(Some(d)) if d.version > applied => {
                    applied = d.version;
                    apply(Event::Delta(d));
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    tracing::info!(
                        applied,
                        "too far behind for a delta, or ahead of the store; resynchronising"
                    );
                    break;
                }
                Err(e) => {
                    apply(Event::SourceDown(e.to_string()));
                    break;
                }
            }
        }
    }
}
