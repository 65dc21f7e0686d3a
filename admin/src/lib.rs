//! switchyard-admin is the control plane: it decides the weights. It owns the
//! model of what is persisted and how it changes ([`model`]: the weight
//! type, the rollout state machine, events and their history), continuous
//! analysis with automatic rollback ([`analysis`], driven by the
//! controller), the gates a step must pass ([`gates`]), the state file
//! ([`store`]), the live event stream ([`hub`]), the admin HTTP API
//! ([`wire`] is its contract) and the webhooks. It
//! drives the data plane through [`switchyard_proxy::DataPlane`] and never
//! forwards application traffic.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod analysis;
mod api;
mod controller;
mod cutover;
mod dashboard;
pub mod database;
pub mod gates;
pub mod hub;
mod listener;
pub mod model;
mod preparing;
mod process_metrics;
pub mod store;
mod webhook;
pub use webhook::{https_client, HttpsClient};
pub mod wire;

pub use analysis::Verdict;
pub use database::DatabaseGate;
pub use gates::{Gate, GateContext, GateFuture, GateResult};
pub use listener::{acceptor, adopt, bind, exposure_warning, AdminListener, AdminStream};
pub use model::events::{Event, EventKind};
pub use model::phase::Phase;
pub use model::rollout::Action;
pub use model::state::PersistedState;
pub use model::weight::Weight;
pub use store::{Opened, Store, StoreError};

use arc_swap::ArcSwap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use switchyard_config::{Config, DatabaseConfig, RolloutConfig, SyncMode, WebhooksConfig};
use switchyard_proxy::DataPlane;

use hub::Hub;
use model::events;
use model::rollout::{self, Change, Conflict};

/// Errors of the control plane.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The state store could not be opened or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The admin listener could not be bound.
    #[error(
        "cannot listen on {addr} for the admin API: {source} (is another process using the port?)"
    )]
    Bind {
        /// The address of `[admin] listen`.
        addr: std::net::SocketAddr,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// `[webhooks] ca_file` cannot be used.
    #[error(
        "{0}: point it at a PEM file with the CA certificate that signs your webhook servers'"
    )]
    Webhooks(String),
    /// `[admin] tls` cannot be used.
    #[error("[admin] tls: {0}")]
    Tls(String),
    /// `[admin] token` is empty: the API would be open to anyone.
    #[error("[admin] token is empty: refusing to serve an unauthenticated admin API")]
    EmptyToken,
}

/// Why a state change was not made.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    /// Not allowed in the current state (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    /// The new state could not be persisted (HTTP 500). For a rollback the
    /// weights were applied anyway.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Settings of the control plane that a reload may change.
pub(crate) struct Settings {
    pub token: String,
    pub metrics_auth: bool,
    pub metrics_addresses: bool,
    pub rollout: RolloutConfig,
    pub webhooks: WebhooksConfig,
    pub database: Option<DatabaseConfig>,
}

/// What the controller currently thinks, for status (not persisted).
#[derive(Default, Clone)]
pub(crate) struct Live {
    /// The last analysis verdict, if a rollout is active.
    pub verdict: Option<Verdict>,
    /// Why the rollout is not advancing right now, if it is waiting.
    pub holding: Option<String>,
    /// Since when (ms since epoch) the rollout has been held without a break.
    pub holding_since_ms: Option<u64>,
    /// When the last judgement ran (ms since epoch).
    pub judged_at_ms: u64,
}

pub(crate) struct Inner {
    pub dp: DataPlane,
    pub settings: ArcSwap<Settings>,
    pub store: Store,
    pub hub: Hub,
    pub webhooks: webhook::WebhookClient,
    pub gates: Mutex<Vec<Arc<dyn Gate>>>,
    pub live: Mutex<Live>,
    pub rollbacks: AtomicU64,
    pub db: database::DbLiveCell,
    /// Set when switchyard shuts down: event streams end at once.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// Why no state change is allowed now, if so ([`ControlPlane::freeze`]).
    pub frozen: Mutex<Option<String>>,
    /// The `[webhooks] confirm` gate's last answer, for the status.
    pub(crate) confirm_last: Arc<arc_swap::ArcSwapOption<wire::GateView>>,
    /// Why the state file is not as the state in memory (a write failed).
    pub(crate) unwritten: Mutex<Option<String>>,
    /// A background task rewrites the state until it can.
    pub(crate) rewriting: std::sync::atomic::AtomicBool,
    /// This, for background tasks started from a `&self` method.
    pub(crate) me: std::sync::OnceLock<std::sync::Weak<Inner>>,
    /// The controller lock held in the databases (PostgreSQL).
    pub(crate) db_lock: Mutex<Option<switchyard_sync::postgres::controller_lock::ControllerLock>>,
}

impl Inner {
    /// Makes one state change under the store lock: `f` edits a copy of the
    /// state (or refuses with a conflict), the change is recorded as an
    /// event, persisted, applied to the data plane and published.
    ///
    /// A change that takes traffic away from the candidate (rollback,
    /// abort) is applied to the data plane *before* the write, so clients
    /// stop seeing the bad colour without waiting for fsync; everything
    /// else is applied only once persisted.
    pub(crate) fn transition(
        &self,
        actor: &str,
        f: impl FnOnce(&mut PersistedState) -> Result<Change, Conflict>,
    ) -> Result<PersistedState, TransitionError> {
        self.transition_then(actor, f, || {})
    }

    /// [`transition`](Self::transition), running `persisted` once the new
    /// state is on disk and before anyone can read it: a cutover releases
    /// the held writes there, so no status shows the new primary with
    /// writes still held. Not run when the state could not be persisted.
    pub(crate) fn transition_then(
        &self,
        actor: &str,
        f: impl FnOnce(&mut PersistedState) -> Result<Change, Conflict>,
        persisted: impl FnOnce(),
    ) -> Result<PersistedState, TransitionError> {
        self.commit(actor, f, persisted, false)
    }

    /// Records something that has already happened outside the state file
    /// (a database switch that committed, or did not): it takes effect in
    /// memory and `persisted` runs even when the file cannot be written
    /// now; the write is then retried in the background until it succeeds,
    /// and the status says so meanwhile. A restart before that reads the
    /// older state, which every such fact is safe to resume from (a cutover
    /// runs again and finds its switch committed, or not).
    pub(crate) fn record_fact(
        &self,
        actor: &str,
        f: impl FnOnce(&mut PersistedState) -> Result<Change, Conflict>,
        persisted: impl FnOnce(),
    ) -> Result<PersistedState, TransitionError> {
        self.commit(actor, f, persisted, true)
    }

    fn commit(
        &self,
        actor: &str,
        f: impl FnOnce(&mut PersistedState) -> Result<Change, Conflict>,
        persisted: impl FnOnce(),
        fact: bool,
    ) -> Result<PersistedState, TransitionError> {
        let mut guard = self.store.lock();
        if let Some(why) = self
            .frozen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Err(TransitionError::Conflict(why));
        }
        let mut next = guard.clone();
        let change = f(&mut next).map_err(|Conflict(m)| TransitionError::Conflict(m))?;
        let at_ms = events::now_ms();
        let event = next.record(Event {
            seq: 0,
            at: events::rfc3339(at_ms),
            at_ms,
            actor: actor.to_string(),
            kind: change.kind,
            state: next.rollout.phase,
            step: next.rollout.step,
            weights: next.green.into(),
            reason: change.reason.clone(),
            held_ms: change.extra.held_ms,
            held_requests: change.extra.held_requests,
            detail: change.extra.detail.clone(),
        });
        // A rollback is a fact too: the candidate loses its traffic at once,
        // before the write, and stays without it if the write fails.
        let fact = fact || change.kind == EventKind::RolledBack;
        if change.kind == EventKind::RolledBack {
            self.dp.set_green_bp(next.green.bp());
            self.dp.reset_window(next.candidate());
        }
        match self.store.write(&next) {
            Ok(()) => self.state_written(),
            Err(e) if fact => {
                tracing::warn!(error = %e, kind = %change.kind, "the state file cannot be written: the change holds in memory and the write is retried");
                self.state_unwritable(&e);
            }
            Err(e) => {
                tracing::warn!(error = %e, kind = %change.kind, "the state file cannot be written: the change is refused and nothing changed");
                self.state_unwritable(&e);
                return Err(e.into());
            }
        }
        persisted();
        self.dp.set_green_bp(next.green.bp());
        self.dp.set_stable(next.stable);
        if let Some(g) = self.database_gate() {
            if let Some(d) = g.as_database() {
                d.set_stable(next.stable);
            }
        }
        if change.kind == EventKind::RolloutStarted {
            self.dp.reset_window(next.candidate());
        }
        *guard = next.clone();
        drop(guard);
        if change.kind.ends_rollout_badly() {
            self.db.lock().cleanup_wanted = true;
        }
        if change.kind == EventKind::RolledBack {
            self.rollbacks.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(reason = event.reason.as_deref(), "rollout rolled back");
        }
        tracing::info!(
            kind = %event.kind, actor = %event.actor, state = event.state.as_str(),
            green = event.weights.green, reason = event.reason.as_deref(), "rollout event"
        );
        if let Ok(mut live) = self.live.lock() {
            live.holding = None;
            live.holding_since_ms = None;
        }
        self.hub.publish(event);
        Ok(next)
    }

    /// A write succeeded: whatever was not recorded is now.
    fn state_written(&self) {
        let was = self
            .unwritten
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(was) = was {
            tracing::warn!(previously = %was, "the state file is written again");
        }
    }

    /// A write failed: the status says so, and a background task writes the
    /// current state again every second until it can.
    fn state_unwritable(&self, e: &StoreError) {
        *self.unwritten.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
            "the state file cannot be written ({e}): rollout changes are refused (a rollback or a database switch that happened holds in memory) until it can; retrying every second"
        ));
        if self.rewriting.swap(true, Ordering::SeqCst) {
            return;
        }
        let Some(me) = self.me.get().and_then(|w| w.upgrade()) else {
            self.rewriting.store(false, Ordering::SeqCst);
            return;
        };
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let guard = me.store.lock();
                let r = me.store.write(&guard);
                drop(guard);
                match r {
                    Ok(()) => {
                        me.state_written();
                        me.rewriting.store(false, Ordering::SeqCst);
                        return;
                    }
                    Err(e) => {
                        *me.unwritten.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
                            "the state file cannot be written ({e}): rollout changes are refused (a rollback or a database switch that happened holds in memory) until it can; retrying every second"
                        ));
                    }
                }
            }
        });
    }

    /// Why the state is not on disk as it is in memory, if it is not.
    pub(crate) fn unwritten(&self) -> Option<String> {
        self.unwritten
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Inner {
    /// The `[database]` gate, when there is one.
    pub(crate) fn database_gate(&self) -> Option<Arc<dyn Gate>> {
        self.gates
            .lock()
            .ok()?
            .iter()
            .find(|g| g.as_database().is_some())
            .cloned()
    }

    /// Performs an operator action (the API and [`ControlPlane::act`]).
    pub(crate) fn act(
        &self,
        action: Action,
        reason: Option<String>,
        actor: &str,
    ) -> Result<PersistedState, TransitionError> {
        let settings = self.settings.load();
        let steps = settings.rollout.steps.0.clone();
        // With reverse sync, the previous colour's database keeps up after
        // a promotion, so `abort` can still move back to it: only while it
        // still replicates the primary (`sync cleanup` removes that).
        let replicates = self
            .database_gate()
            .and_then(|g| g.as_database().and_then(|d| d.candidate_replicates()));
        let cut_back = settings
            .database
            .as_ref()
            .is_some_and(|d| d.mode == SyncMode::Replicate && d.reverse)
            && replicates != Some(false);
        if action == Action::Abort && replicates == Some(false) && settings.database.is_some() {
            let s = self.store.current();
            if s.rollout.phase == Phase::Promoted {
                return Err(TransitionError::Conflict(format!(
                    "cannot abort after the promotion: {}'s database no longer replicates {}'s (its reverse sync was removed, e.g. by `switchyard sync cleanup`), so moving back would lose every write made since the cutover. Nothing was changed. Ship the fix as the next release instead (`switchyard ctl start`), which prepares {}'s database from the primary",
                    s.stable.other(),
                    s.stable,
                    s.stable.other()
                )));
            }
        }
        if self.db.lock().cutover_running {
            let timeout = settings
                .database
                .as_ref()
                .map(|d| switchyard_config::format_duration(d.cutover_timeout))
                .unwrap_or_default();
            return Err(TransitionError::Conflict(format!(
                "cannot {} while the database cutover runs (writes are held for at most {timeout}): try again in a moment",
                action.as_str()
            )));
        }
        self.transition(actor, |s| {
            rollout::apply(s, action, &steps, reason, events::now_ms(), cut_back)
        })
    }
}

/// The running control plane. Cheap to clone.
#[derive(Clone)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

impl ControlPlane {
    /// Opens the state store named by `[state]` (falling back to its backup
    /// if damaged, refusing to start if both are unusable), restores the
    /// persisted weights into `dp`, and starts the rollout controller and
    /// the notify webhook. Called once by `switchyard run`; must run inside
    /// a Tokio runtime.
    pub fn start(config: &Config, dp: DataPlane) -> Result<ControlPlane, AdminError> {
        if config.admin.token.is_empty() {
            return Err(AdminError::EmptyToken);
        }
        let (store, opened) = Store::open(&config.state.path)?;
        let state = store.current();
        dp.set_green_bp(state.green.bp());
        dp.set_stable(state.stable);
        database::apply_writer(&dp, config.database.as_ref(), state.stable);
        if state.rollout.phase == Phase::Cutover
            && config
                .database
                .as_ref()
                .is_some_and(|d| d.writes == switchyard_config::WritePolicy::Stable)
        {
            // A cutover was under way when switchyard stopped: no write may
            // reach either database until the controller has settled which
            // one is the primary (it does so at its first tick).
            dp.hold_writes();
        }
        match &opened {
            Opened::FromBackup { damaged, reason } => tracing::warn!(
                state = %config.state.path.display(), damaged = %damaged.display(), %reason,
                "state file was unreadable; restored the last good copy"
            ),
            Opened::Restored => tracing::info!(
                state = state.rollout.phase.as_str(),
                step = state.rollout.step,
                green = state.green.percent(),
                "state restored"
            ),
            Opened::Fresh => {}
        }
        let inner = Arc::new(Inner {
            dp,
            settings: ArcSwap::from_pointee(settings_of(config)),
            store,
            hub: Hub::default(),
            webhooks: webhook::WebhookClient::new(config.webhooks.ca_file.as_deref())
                .map_err(AdminError::Webhooks)?,
            gates: Mutex::new(Vec::new()),
            live: Mutex::new(Live::default()),
            rollbacks: AtomicU64::new(0),
            db: database::DbLiveCell::default(),
            stopping: tokio::sync::watch::Sender::new(false),
            frozen: Mutex::new(None),
            confirm_last: Default::default(),
            unwritten: Mutex::new(None),
            rewriting: Default::default(),
            me: std::sync::OnceLock::new(),
            db_lock: Mutex::new(None),
        });
        let _ = inner.me.set(Arc::downgrade(&inner));
        // An abort whose cleanup may not have run before a restart.
        inner.db.lock().cleanup_wanted = state.rollout.phase == Phase::Aborted;
        // Subscribe before the first event so the notify hook sees it.
        let notify_rx = inner.hub.subscribe();
        if let Opened::FromBackup { damaged, reason } = opened {
            let why = format!(
                "state file unreadable ({reason}); restored from {}, damaged copy kept at {}",
                store::backup_path(&config.state.path).display(),
                damaged.display()
            );
            let _ = inner.transition("startup", |_| {
                Ok(Change::new(EventKind::StateRestored, Some(why)))
            });
        }
        tokio::spawn(controller::run(Arc::downgrade(&inner)));
        tokio::spawn(webhook::notify_loop(inner.clone(), notify_rx));
        Ok(ControlPlane { inner })
    }

    /// Adds a gate every weight increase must pass from now on (the
    /// database module registers verification and replication lag here).
    pub fn add_gate(&self, gate: Arc<dyn Gate>) {
        if let Some(d) = gate.as_database() {
            d.set_stable(self.inner.store.current().stable);
        }
        self.inner
            .gates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(gate);
    }

    /// Replaces the gate with the same name as `gate` (or adds it). Called
    /// when a reload changes what a gate checks, e.g. `[database]`.
    pub fn replace_gate(&self, gate: Arc<dyn Gate>) {
        if let Some(d) = gate.as_database() {
            d.set_stable(self.inner.store.current().stable);
        }
        let mut gates = self.inner.gates.lock().unwrap_or_else(|p| p.into_inner());
        match gates.iter().position(|g| g.name() == gate.name()) {
            Some(i) => gates[i] = gate,
            None => gates.push(gate),
        }
    }

    /// Removes the gate called `name`, if any (a reload dropped its config).
    pub fn remove_gate(&self, name: &str) {
        self.inner
            .gates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|g| g.name() != name);
    }

    /// Performs an operator action, as `POST /api/v1/rollout/{action}`
    /// does. `actor` is recorded in the history.
    pub fn act(
        &self,
        action: Action,
        reason: Option<String>,
        actor: &str,
    ) -> Result<PersistedState, TransitionError> {
        self.inner.act(action, reason, actor)
    }

    /// The persisted state now (weights, rollout, history).
    pub fn state(&self) -> PersistedState {
        self.inner.store.current()
    }

    /// Subscribes to events from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.inner.hub.subscribe()
    }

    /// The admin API as an axum router (used by `serve` and by tests).
    pub fn router(&self) -> axum::Router {
        api::router(self.inner.clone())
    }

    /// Serves the admin API on `listener` until `shutdown` completes; then
    /// event streams end at once and other requests finish.
    pub async fn serve(
        &self,
        listener: AdminListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let stopping = self.inner.stopping.clone();
        let app = listener::track_activity(self.router());
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<listener::ConnActivity>(),
        )
        .with_graceful_shutdown(async move {
            shutdown.await;
            stopping.send_replace(true);
        })
        .await
    }

    /// Applies a reloaded configuration (token, steps, bakes, analysis
    /// thresholds, webhooks). Called on SIGHUP after the config validated.
    /// The state file path is not changed by a reload.
    pub fn reload(&self, config: &Config) {
        self.inner.settings.store(Arc::new(settings_of(config)));
        if !self.inner.db.lock().cutover_running {
            let stable = self.inner.store.lock().stable;
            database::apply_writer(&self.inner.dp, config.database.as_ref(), stable);
        }
    }

    /// Stops every state change from now on, the operator's (answered 409
    /// with `why`) and the controller's, until [`ControlPlane::thaw`]: the
    /// state file is then left to a successor process, which reads it when
    /// it starts (`switchyard run` on SIGUSR2). Refused, with the reason,
    /// while green's database is being prepared or cut over: that work
    /// belongs to this process and cannot be handed over.
    pub fn freeze(&self, why: &str) -> Result<(), String> {
        let cutover_running = self.inner.db.lock().cutover_running;
        let guard = self.inner.store.lock();
        let busy = match guard.rollout.phase {
            Phase::Preparing => Some("green's database is being prepared"),
            Phase::Cutover => Some("the database cutover runs"),
            _ => cutover_running.then_some("the database cutover runs"),
        };
        if let Some(busy) = busy {
            return Err(format!(
                "{busy} in this process: try again once the rollout has moved on"
            ));
        }
        *self.inner.frozen.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.to_string());
        drop(guard);
        // The successor takes the state file's lock, and the databases'
        // controller lock, when it starts.
        self.inner.store.release_lock();
        self.inner
            .db_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        Ok(())
    }

    /// Takes the controller lock in both databases (PostgreSQL): one
    /// switchyard runs rollouts against a pair of databases. Refused, with
    /// who holds it, when another process does; a database that cannot be
    /// reached now is locked as soon as it can be (a background task also
    /// takes the lock again should a session holding it end). Called once at
    /// start by `switchyard run` with `[database]`.
    pub async fn take_database_lock(&self, db: &DatabaseConfig) -> Result<(), String> {
        if db.engine() != switchyard_config::DatabaseEngine::Postgres {
            return Ok(());
        }
        let who = who_am_i();
        let lock = switchyard_sync::postgres::controller_lock::take(
            db,
            &who,
            std::time::Duration::from_secs(5),
        )
        .await
        .map_err(|e| e.to_string())?;
        for u in &lock.unreached {
            tracing::warn!("the controller lock could not be taken on a database that is down ({u}): taken once it answers");
        }
        *self.inner.db_lock.lock().unwrap_or_else(|p| p.into_inner()) = Some(lock);
        let weak = Arc::downgrade(&self.inner);
        let db = db.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                let Some(inner) = weak.upgrade() else { return };
                if inner
                    .frozen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_some()
                {
                    continue;
                }
                let whole = inner
                    .db_lock
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .is_some_and(|l| l.intact() && l.unreached.is_empty());
                if whole {
                    continue;
                }
                inner
                    .db_lock
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                match switchyard_sync::postgres::controller_lock::take(
                    &db,
                    &who,
                    std::time::Duration::from_secs(1),
                )
                .await
                {
                    Ok(l) => {
                        *inner.db_lock.lock().unwrap_or_else(|p| p.into_inner()) = Some(l);
                    }
                    Err(e) => {
                        // Someone else runs rollouts on these databases now:
                        // this process changes nothing more (it serves on).
                        tracing::error!(error = %e, "lost the databases' controller lock: no more rollout changes from this process");
                        *inner.frozen.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
                            "this switchyard no longer holds the databases' controller lock: {e}"
                        ));
                    }
                }
            }
        });
        Ok(())
    }

    /// Allows state changes again after [`ControlPlane::freeze`] (a
    /// hand-over that failed), once the state file's lock is ours again.
    pub fn thaw(&self) {
        if let Err(e) = self.inner.store.retake_lock() {
            tracing::error!(error = %e, "cannot take the state file back: this process stays frozen (it still serves traffic)");
            return;
        }
        // The controller lock is taken again by the background keeper.
        *self.inner.frozen.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The data plane this control plane drives.
    pub fn data_plane(&self) -> &DataPlane {
        &self.inner.dp
    }
}

/// How this process names itself in locks it holds.
fn who_am_i() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("pid {} on {}", std::process::id(), host.trim())
}

fn settings_of(config: &Config) -> Settings {
    Settings {
        token: config.admin.token.clone(),
        metrics_auth: config.admin.metrics_auth,
        metrics_addresses: config.admin.metrics_addresses,
        rollout: config.rollout.clone(),
        webhooks: config.webhooks.clone(),
        database: config.database.clone(),
    }
}
