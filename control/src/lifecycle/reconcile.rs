//! The reconcile loop: what the store wants against what the runtime runs, every
//! `[provisioning] reconcile_seconds` and once at start.
//!
//! - `provisioning` tenants nobody works on (their node died) are provisioned again;
//! - `active` tenants get their current generation running and healthy (crashed or removed
//!   containers are started or created again) and their route follows the containers'
//!   addresses (which change when a container is recreated or the engine restarted);
//! - `suspended` tenants' containers are stopped;
//! - containers of failed, deleted or unknown tenants of this installation are removed.
//!
//! Every step is idempotent, so a pass after a control or engine restart finds its way from
//! whatever state it meets; a leased tenant is someone's work in progress and is skipped.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{network_name, Lifecycle};

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    /// Tenants whose containers or route were repaired.
    pub repaired: usize,
    /// Containers removed because no live tenant wants them.
    pub orphans_removed: usize,
    /// Tenants handed to provisioning again.
    pub resumed_provisioning: usize,
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
        for status in ["provisioning", "active", "suspended", "failed"] {
            let n = deployments.iter().filter(|d| d.status == status).count();
            gauge.with_label_values(&[status]).set(n as i64);
        }
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
                "active" => {
                    // Read again under the lease: a redeploy may have just finished.
                    let work = async {
                        match self.store.deployment(&d.id).await {
                            Ok(now) if now.status == "active" => self.ensure_running(&now).await,
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
