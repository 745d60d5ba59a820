//! The reconcile loop: what the store wants against what the runtime runs, every
//! `[provisioning] reconcile_seconds` and once at start.
//!
//! - `provisioning` tenants nobody works on (their node died) are provisioned again;
//! - `active` tenants get their current generation running and healthy (crashed or removed
//!   containers are started or created again) and their route follows the containers'
//!   addresses (which change when a container is recreated or the engine restarted);
//!   then, idle past their blueprint's (or own) periods, they are put to sleep
//!   ([`super::sleep`]); a sleeping store is never "repaired" by starting it, only woken
//!   by a request (or frozen deeper: stopped);
//! - `suspended` tenants' containers are stopped;
//! - containers of failed, deleted or unknown tenants of this installation are removed.
//!
//! Every step is idempotent, so a pass after a control or engine restart finds its way from
//! whatever state it meets; a leased tenant is someone's work in progress and is skipped.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{network_name, Lifecycle};
use crate::model::TenantStatus;

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    /// Tenants whose containers or route were repaired.
    pub repaired: usize,
    /// Containers removed because no live tenant wants them.
    pub orphans_removed: usize,
    /// Tenants handed to provisioning again.
    pub resumed_provisioning: usize,
    /// Stores put to sleep (or deeper).
    pub slept: usize,
    /// Problems met (the next pass tries again).
    pub problems: Vec<String>,
}

impl Lifecycle {
    /// Reconcile now and then every `reconcile_seconds`, forever.
    pub async fn run(self: Arc<Self>) {
        loop {
            let pass = self.clone().reconcile().await;
            if pass != Pass::default() {
                tracing::info!(
                    repaired = pass.repaired,
                    orphans_removed = pass.orphans_removed,
                    resumed_provisioning = pass.resumed_provisioning,
                    slept = pass.slept,
                    problems = ?pass.problems,
                    "reconciled tenants with their containers"
                );
            }
            tokio::time::sleep(self.reconcile_every).await;
        }
    }

    /// One reconcile pass.
    pub async fn reconcile(self: Arc<Self>) -> Pass {
        let mut pass = Pass::default();
        let Ok(runtime) = self.runtime() else {
            return pass;
        };
        if let Err(e) = runtime.ping().await {
            pass.problems.push(e.to_string());
            return pass;
        }
        let instance = match self.instance().await {
            Ok(i) => i.to_owned(),
            Err(e) => {
                pass.problems.push(e.to_string());
                return pass;
            }
        };
        // Containers are listed before the store is read: a container that exists now
        // belongs to a tenant the store already knows, so a tenant created during the pass
        // is never mistaken for an orphan.
        let listed = runtime.list(&instance, None).await;
        let deployments = match self.store.deployments().await {
            Ok(d) => d,
            Err(e) => {
                pass.problems.push(e.to_string());
                return pass;
            }
        };
        let gauge = &super::metrics().tenants;
        let shown: Vec<Option<TenantStatus>> = deployments
            .iter()
            .map(|d| {
                TenantStatus::shown(
                    &d.status,
                    d.sleep.map(tenantgate_config::SleepLevel::as_str),
                    d.wake_requested,
                )
            })
            .collect();
        for status in TenantStatus::ALL {
            if status == TenantStatus::Deleted {
                continue;
            }
            let n = shown.iter().filter(|s| **s == Some(status)).count();
            gauge.with_label_values(&[status.as_str()]).set(n as i64);
        }
        let activity = match self.store.last_activity().await {
            Ok(a) => Some(a),
            Err(e) => {
                pass.problems.push(format!("activity: {e}"));
                None
            }
        };
        let mut wanted = BTreeSet::new();
        for d in &deployments {
            if matches!(d.status.as_str(), "provisioning" | "active" | "suspended") {
                wanted.insert(d.id.clone());
            }
            if d.leased {
                continue;
            }
            match d.status.as_str() {
                "provisioning" => {
                    pass.resumed_provisioning += 1;
                    tokio::spawn(self.clone().provision(d.id.clone()));
                }
                // Asleep: its containers are meant to be frozen or stopped. Only a deeper sleep
                // is due (below); requests wake it.
                "active" if d.sleep.is_some() => {}
                "active" => {
                    // Read again under the lease: a redeploy may have just finished, or
                    // the store fell asleep.
                    let work = async {
                        match self.store.deployment(&d.id).await {
                            Ok(now) if now.status == "active" && now.sleep.is_none() => {
                                self.ensure_running(&now).await
                            }
                            Ok(_) => Ok(false),
                            Err(e) => Err(e.to_string()),
                        }
                    };
                    match self.with_lease(&d.id, work).await {
                        Some(Ok(true)) => {
                            pass.repaired += 1;
                            super::count("repair", true);
                        }
                        Some(Ok(false)) | None => {}
                        Some(Err(e)) => {
                            super::count("repair", false);
                            pass.problems.push(format!("tenant {}: {e}", d.id));
                        }
                    }
                }
                "suspended" => {
                    // Under the lease, and only while still suspended: a resume may be
                    // starting these very containers.
                    let work = async {
                        let mut stopped = 0;
                        let still = matches!(
                            self.store.deployment(&d.id).await,
                            Ok(now) if now.status == "suspended"
                        );
                        if still {
                            let list = runtime
                                .list(&instance, Some(&d.id))
                                .await
                                .map_err(|e| e.to_string())?;
                            for c in list.iter().filter(|c| c.running) {
                                runtime.stop(&c.id).await.map_err(|e| e.to_string())?;
                                stopped += 1;
                            }
                        }
                        Ok::<usize, String>(stopped)
                    };
                    match self.with_lease(&d.id, work).await {
                        Some(Ok(n)) => pass.repaired += n,
                        Some(Err(e)) => pass.problems.push(format!("tenant {}: {e}", d.id)),
                        None => {}
                    }
                }
                _ => {}
            }
            // Awake or asleep, an active store idle past its periods goes (deeper) to sleep.
            if let (Some(a), "active") = (&activity, d.status.as_str()) {
                match self.sleep_if_idle(d, a.get(&d.id).copied()).await {
                    Ok(Some(_)) => pass.slept += 1,
                    Ok(None) => {}
                    Err(e) => pass.problems.push(format!("tenant {}: {e}", d.id)),
                }
            }
        }
        match listed {
            Ok(all) => {
                let mut gone = BTreeSet::new();
                for c in all {
                    let owner = c.tenant().unwrap_or_default().to_owned();
                    if wanted.contains(&owner) {
                        continue;
                    }
                    match runtime.remove(&c.id).await {
                        Ok(()) => {
                            pass.orphans_removed += 1;
                            tracing::info!(container = %c.name, tenant = %owner, "removed a container no live tenant wants");
                            gone.insert(owner);
                        }
                        Err(e) => pass.problems.push(e.to_string()),
                    }
                }
                for owner in gone {
                    if let Err(e) = runtime
                        .remove_network(&network_name(&instance, &owner))
                        .await
                    {
                        pass.problems.push(e.to_string());
                    }
                }
            }
            Err(e) => pass.problems.push(e.to_string()),
        }
        pass
    }
}
