//! Stores that sleep: idle stores are frozen, then stopped, by the reconcile pass; the first
//! request wakes them (a proxy asks, [`Lifecycle::serve_wakes`] answers).
//!
//! Invariants:
//! - a store goes to sleep route first: the sleep level is published (every proxy holds its
//!   requests from then on and never forwards to the old addresses, which a stopped
//!   container may have given up), then its containers are frozen or stopped; a failure
//!   publishes it awake again;
//! - a store wakes containers first: they are thawed or started and healthy before the route
//!   is published awake, with their addresses, in one version;
//! - one wake per store at a time on a node (concurrent asks share it), and one node at a
//!   time (the tenant's lease); a wake asked for while control was down is found in the
//!   store and done when it is back;
//! - a store with a request in flight or an open connection is not idle (the proxies report
//!   it as activity every period).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tenantgate_config::SleepLevel;

use super::{Lifecycle, ACTOR, LEASE};
use crate::model::Tenant;
use crate::now_ms;
use crate::store::sleep::SleepPolicy;
use crate::store::Deployment;

/// Prometheus metrics of sleeping and waking (default registry).
pub(crate) struct SleepMetrics {
    /// Wakes by the level woken from and result.
    wakes: prometheus::IntCounterVec,
    /// Seconds from taking a wake to the route published awake, by level.
    wake_seconds: prometheus::HistogramVec,
    /// Stores put to sleep, by level.
    sleeps: prometheus::IntCounterVec,
}

fn metrics() -> &'static SleepMetrics {
    static M: std::sync::OnceLock<SleepMetrics> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        let wakes = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "tenantgate_wakes_total",
                "Wakes of sleeping stores by this node, by the level woken from and result",
            ),
            &["from", "result"],
        )
        .expect("valid metric");
        let wake_seconds = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(
                "tenantgate_wake_seconds",
                "Time from taking a wake to the store's route published awake",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["from"],
        )
        .expect("valid metric");
        let sleeps = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "tenantgate_sleeps_total",
                "Idle stores put to sleep by this node, by level",
            ),
            &["level"],
        )
        .expect("valid metric");
        let _ = prometheus::register(Box::new(wakes.clone()));
        let _ = prometheus::register(Box::new(wake_seconds.clone()));
        let _ = prometheus::register(Box::new(sleeps.clone()));
        SleepMetrics {
            wakes,
            wake_seconds,
            sleeps,
        }
    })
}

/// Longest a sleep waits for the requests already in flight on this process's proxy.
const QUIET_WAIT: Duration = Duration::from_secs(10);

/// How often control looks in the store for wakes asked for (a lost `NOTIFY`, a wake asked
/// while this node was down).
const WAKE_POLL: Duration = Duration::from_secs(1);

impl Lifecycle {
    /// The idle periods of blueprint `name` as loaded now (never, for one that is not).
    fn blueprint_policy(&self, name: &str) -> SleepPolicy {
        super::read(&self.blueprints)
            .get(name)
            .map(|b| SleepPolicy {
                idle_pause_seconds: b.idle_pause_seconds,
                idle_stop_seconds: b.idle_stop_seconds,
            })
            .unwrap_or_default()
    }

    /// The idle periods in force for `d`: its own, else its blueprint's.
    pub fn sleep_policy(&self, d: &Deployment) -> SleepPolicy {
        d.sleep_policy
            .unwrap_or_else(|| self.blueprint_policy(&d.blueprint))
    }

    /// Fill in the idle periods `t` shows when they are its blueprint's.
    pub fn show_sleep_policy(&self, t: &mut Tenant) {
        if let (false, Some(name)) = (t.sleep_override, &t.blueprint) {
            let p = self.blueprint_policy(name);
            t.idle_pause_seconds = p.idle_pause_seconds;
            t.idle_stop_seconds = p.idle_stop_seconds;
        }
    }

    /// The level active store `d` should sleep at now, idle since `last` (ms; its last
    /// request or wake, whichever is later), deeper than it sleeps already; `None`: as it is.
    pub(crate) fn due_sleep(&self, d: &Deployment, last: i64, now: i64) -> Option<SleepLevel> {
        if d.status != "active" || d.wake_requested {
            return None;
        }
        let due = self.sleep_policy(d).level_after(now - last)?;
        match (d.sleep, due) {
            (None, due) => Some(due),
            (Some(SleepLevel::Paused), SleepLevel::Stopped) => Some(SleepLevel::Stopped),
            _ => None,
        }
    }

    /// Put store `d` to sleep at `level` (held by the caller's lease): the route first, then
    /// the containers. A failure publishes it awake again and says why. `Ok(false)`: called
    /// off (requests still in flight on this process's proxy).
    pub(crate) async fn put_to_sleep(
        &self,
        d: &Deployment,
        level: SleepLevel,
        idle_ms: i64,
    ) -> Result<bool, String> {
        self.store
            .set_sleep(ACTOR, &d.id, Some(level))
            .await
            .map_err(|e| format!("publishing the sleep: {e}"))?;
        // From here new requests are held; those already on their way (started after the
        // last activity report) finish first, or the sleep is called off.
        if !self.quiet(&d.id).await {
            self.event(&d.id, "sleep called off: requests in flight")
                .await;
            self.store
                .set_sleep(ACTOR, &d.id, None)
                .await
                .map_err(|e| format!("publishing awake: {e}"))?;
            return Ok(false);
        }
        if let Err(e) = self.sleep_containers(&d.id, level).await {
            self.event(&d.id, &format!("sleep failed: {e}; kept awake"))
                .await;
            // Awake again: thaw or start what was touched, then route to it.
            if let Err(again) = self.ensure_running(d).await {
                tracing::warn!(tenant = %d.id, "cannot wake after a failed sleep: {again}");
            }
            if let Err(again) = self.store.set_sleep(ACTOR, &d.id, None).await {
                tracing::warn!(tenant = %d.id, "cannot publish awake: {again}");
            }
            return Err(e);
        }
        metrics().sleeps.with_label_values(&[level.as_str()]).inc();
        let what = match level {
            SleepLevel::Paused => "containers frozen",
            SleepLevel::Stopped => "containers stopped",
        };
        self.event(
            &d.id,
            &format!("asleep: {what} after {} s without traffic", idle_ms / 1000),
        )
        .await;
        Ok(true)
    }

    /// Whether this process's proxy has no request in flight for `id`, waiting up to
    /// [`QUIET_WAIT`] for those it has to end (always true without a local proxy: a fleet's
    /// proxies report theirs as activity).
    async fn quiet(&self, id: &str) -> bool {
        let Some(probe) = self.local_in_flight.get() else {
            return true;
        };
        let deadline = tokio::time::Instant::now() + QUIET_WAIT;
        loop {
            if probe(id) == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Freeze or stop every container of tenant `id` (its route already says it sleeps).
    pub(crate) async fn sleep_containers(&self, id: &str, level: SleepLevel) -> Result<(), String> {
        let runtime = self.runtime().map_err(|e| e.to_string())?;
        let instance = self.instance().await.map_err(|e| e.to_string())?;
        for c in runtime
            .list(instance, Some(id))
            .await
            .map_err(|e| e.to_string())?
        {
            match level {
                SleepLevel::Paused if c.running && !c.paused => runtime.pause(&c.id).await,
                SleepLevel::Stopped if c.running => runtime.stop(&c.id).await,
                _ => Ok(()),
            }
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Wake store `id` if it sleeps: containers thawed or started and healthy, then the route
    /// published awake with their addresses. Concurrent calls on this node share one wake.
    pub async fn wake(self: Arc<Self>, id: String) {
        {
            let mut waking = self
                .waking
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !waking.insert(id.clone()) {
                return;
            }
        }
        let started = Instant::now();
        let outcome = self
            .with_lease_waiting(&id, LEASE / 2, || self.try_wake(&id))
            .await;
        self.waking
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
        let m = metrics();
        match outcome {
            // Another node held the tenant all along (it is waking it), or it was awake.
            None | Some(Ok(None)) => {}
            Some(Ok(Some(from))) => {
                let took = started.elapsed();
                m.wakes.with_label_values(&[from.as_str(), "ok"]).inc();
                m.wake_seconds
                    .with_label_values(&[from.as_str()])
                    .observe(took.as_secs_f64());
                self.event(
                    &id,
                    &format!(
                        "woken from {}: routed to healthy containers ({} ms)",
                        from.as_str(),
                        took.as_millis()
                    ),
                )
                .await;
            }
            Some(Err((from, reason))) => {
                m.wakes
                    .with_label_values(&[from.map_or("unknown", SleepLevel::as_str), "failed"])
                    .inc();
                self.event(&id, &format!("wake failed: {reason}")).await;
                let _ = self
                    .store
                    .note_tenant(&id, Some(&format!("wake failed: {reason}")))
                    .await;
            }
        }
    }

    /// `Ok(Some(level))`: woken from `level`; `Ok(None)`: it was awake (or not active).
    async fn try_wake(&self, id: &str) -> Result<Option<SleepLevel>, (Option<SleepLevel>, String)> {
        let d = self
            .store
            .deployment(id)
            .await
            .map_err(|e| (None, e.to_string()))?;
        let Some(level) = d.sleep.filter(|_| d.status == "active") else {
            return Ok(None);
        };
        // Thaws frozen containers, starts stopped ones (creating missing ones), waits for
        // their health and publishes the route awake when their addresses changed.
        self.ensure_running(&d)
            .await
            .map_err(|e| (Some(level), e))?;
        let now = self
            .store
            .deployment(id)
            .await
            .map_err(|e| (Some(level), e.to_string()))?;
        if now.sleep.is_some() {
            self.store
                .set_sleep(ACTOR, id, None)
                .await
                .map_err(|e| (Some(level), format!("publishing the wake: {e}")))?;
        }
        Ok(Some(level))
    }

    /// Take wakes as they are asked for, forever: from `asks` (this process's proxy), from
    /// `NOTIFY` on `listen` (a fleet's proxies, PostgreSQL URL), and from the store every
    /// second whatever else happens.
    pub async fn serve_wakes(
        self: Arc<Self>,
        mut asks: Option<tokio::sync::mpsc::Receiver<String>>,
        listen: Option<String>,
    ) {
        let mut signals: Option<crate::store::postgres::Signals> = None;
        let mut tick = tokio::time::interval(WAKE_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if signals.is_none() {
                if let Some(url) = &listen {
                    match crate::store::postgres::Signals::connect(
                        url,
                        crate::store::sleep::WAKE_CHANNEL,
                    )
                    .await
                    {
                        Ok(s) => signals = Some(s),
                        Err(e) => tracing::warn!("cannot listen for wakes (polling): {e}"),
                    }
                }
            }
            let asked = async {
                match asks.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            let signalled = async {
                match signals.as_mut() {
                    Some(s) => s.payloads.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                id = asked => match id {
                    Some(id) => {
                        // Recorded, so the dashboard shows it waking and another node or
                        // a restart finds it.
                        if let Err(e) = self.store.request_wake(&id).await {
                            tracing::warn!(tenant = %id, "cannot record the wake: {e}");
                        }
                        tokio::spawn(self.clone().wake(id));
                    }
                    None => asks = None,
                },
                id = signalled => match id {
                    Some(id) => {
                        tokio::spawn(self.clone().wake(id));
                    }
                    None => signals = None,
                },
                _ = tick.tick() => match self.store.wakes_requested().await {
                    Ok(ids) => {
                        for id in ids {
                            tokio::spawn(self.clone().wake(id));
                        }
                    }
                    Err(e) => tracing::debug!("cannot read the wakes asked for: {e}"),
                },
            }
        }
    }

    /// In the reconcile pass: put store `d` to sleep when it has been idle long enough
    /// (`last`: its last activity any proxy reported, ms). Returns the level it went to.
    pub(crate) async fn sleep_if_idle(
        &self,
        d: &Deployment,
        last: Option<i64>,
    ) -> Result<Option<SleepLevel>, String> {
        let since = last.unwrap_or(0).max(d.awake_at);
        if self.due_sleep(d, since, now_ms()).is_none() {
            return Ok(None);
        }
        // Read again under the lease: a request, a wake or a redeploy may have come since.
        let work = async {
            let fresh = self
                .store
                .deployment(&d.id)
                .await
                .map_err(|e| e.to_string())?;
            let last = self
                .store
                .last_activity_of(&d.id)
                .await
                .map_err(|e| e.to_string())?;
            let since = last.unwrap_or(0).max(fresh.awake_at);
            match self.due_sleep(&fresh, since, now_ms()) {
                Some(level) => self
                    .put_to_sleep(&fresh, level, now_ms() - since)
                    .await
                    .map(|slept| slept.then_some(level)),
                None => Ok(None),
            }
        };
        Ok(self.with_lease(&d.id, work).await.transpose()?.flatten())
    }
}
