//! Background duties of a control-plane node (`serve`, `control`): keeping the change log
//! bounded, and knowing whether the store answers (what `/readyz` of a `control` node
//! reports). Both are safe to run on several nodes at once.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::store::Store;

/// How often the change log is pruned.
pub const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// How often the store is pinged for readiness.
pub const PING_EVERY: Duration = Duration::from_secs(1);

/// Prune the change log to its newest `keep` versions now and every [`PRUNE_EVERY`].
pub async fn prune_forever(store: Arc<Store>, keep: u64) {
    loop {
        match store.prune_changes(keep).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(entries = n, keep, "pruned the change log"),
            Err(e) => tracing::warn!("cannot prune the change log: {e}"),
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
