//! The database part of the control plane. [`DatabaseGate`]: with
//! `[database]`, a weight increase needs green's database verified at its
//! current schema version (the newest migration) after its last complete
//! clone, and in replicate mode replication streaming from the writer's
//! database with the replica caught up within `max_lag` — measured at each
//! check by reading the primary's WAL position and waiting at most
//! `max_lag` for the replica to apply it. A background refresh keeps the
//! last reading for status pages and metrics.
//!
//! [`DbLive`] is what the controller knows right now about the database
//! steps of a rollout (the preparing workflow, the last cutover); it is not
//! persisted, since every fact it summarises lives in the databases.

use arc_swap::ArcSwapOption;
use serde::Serialize;
use serde_json::json;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use switchyard_config::{DatabaseConfig, SyncMode, WritePolicy};
use switchyard_proxy::{Colour, DataPlane};
use switchyard_sync::replication::{self, CatchUp, ReplicationState};
use switchyard_sync::workflow::{Step, StepState};
use switchyard_sync::GateStatus;

use crate::gates::{Gate, GateContext, GateFuture, GateResult};
use crate::model::events::EventKind;

/// How often the cached reading for status pages is refreshed.
const REFRESH: Duration = Duration::from_secs(2);
/// Longest a reading may take before the gate holds.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends writes to the colour whose database is the primary (the stable
/// one) when `[database] writes = "stable"`; otherwise writes follow the
/// weights. Called at start, on reload and after cutover.
pub(crate) fn apply_writer(dp: &DataPlane, db: Option<&DatabaseConfig>, stable: Colour) {
    let pin = db.is_some_and(|d| d.writes == WritePolicy::Stable);
    dp.set_writer(pin.then_some(stable));
}

/// After an abort: stops the preparing workflow and removes the replication
/// objects the aborted release set up, on both sides (twice, a moment
/// apart, since a statement of the interrupted workflow may still commit),
/// never the replication that protects an earlier promotion (see
/// [`replication::cleanup_after_abort`]), reporting what was removed and
/// kept as a `database_cleanup` event.
pub(crate) fn clean_up_after_abort(inner: &Arc<crate::Inner>, db: &DatabaseConfig) {
    crate::preparing::stop(inner);
    let weak = Arc::downgrade(inner);
    let db = db.clone();
    let objects = inner.db.objects();
    tokio::spawn(async move {
        let mut removed = Vec::new();
        let mut unreachable = Vec::new();
        let mut kept = Vec::new();
        let mut told = false;
        let mut pause = Duration::from_millis(200);
        for attempt in 0.. {
            tokio::time::sleep(pause).await;
            {
                let _objects = objects.clone().lock_owned().await;
                match replication::cleanup_after_abort(&db).await {
                    Ok(r) => {
                        removed.extend(r.removed);
                        unreachable = r.unreachable;
                        kept = r.kept;
                    }
                    Err(e) => unreachable = vec![e.to_string()],
                }
            }
            let Some(inner) = weak.upgrade() else { return };
            // Twice at least (a statement of the interrupted workflow may
            // still commit), then until every side answered, as long as the
            // rollout stays aborted.
            let done = attempt >= 1 && unreachable.is_empty();
            let still_aborted =
                inner.store.lock().rollout.phase == crate::model::phase::Phase::Aborted;
            if done || !still_aborted {
                inner.db.lock().repair = None;
                if !done {
                    return;
                }
                break;
            }
            if attempt >= 1 {
                let why = format!(
                    "after the abort, the replication objects on {} could not be removed yet: retrying until it answers (a slot left behind keeps WAL)",
                    unreachable.join("; ")
                );
                inner.db.lock().repair = Some(why.clone());
                if !told {
                    told = true;
                    tracing::warn!("{why}");
                }
                pause = (pause * 2).clamp(Duration::from_secs(1), Duration::from_secs(10));
            } else {
                pause = Duration::from_secs(2);
            }
        }
        let Some(inner) = weak.upgrade() else { return };
        let names: Vec<String> = removed
            .iter()
            .map(|o| format!("{} {:?} {}", o.side, o.kind, o.name).to_lowercase())
            .collect();
        let kept_note = if kept.is_empty() {
            String::new()
        } else {
            format!("; kept {}", kept.join(", "))
        };
        let reason = format!(
            "rollout aborted: removed {}{kept_note}{}",
            if names.is_empty() {
                "nothing (no replication objects to remove)".to_string()
            } else {
                names.join(", ")
            },
            if told {
                " (once every side answered again)"
            } else {
                ""
            }
        );
        let _ = inner.transition("controller", |_| {
            let mut c =
                crate::model::rollout::Change::new(EventKind::DatabaseCleanup, Some(reason));
            c.extra.detail =
                Some(json!({ "removed": removed, "unreachable": unreachable, "kept": kept }));
            Ok(c)
        });
    });
}

/// One step of the preparing workflow, for status.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StepStatus {
    pub step: Step,
    pub state: StepState,
    pub detail: String,
}

/// The last cutover, for status and metrics.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CutoverRecord {
    pub at: String,
    pub completed: bool,
    pub held_ms: u64,
    pub held_requests: u64,
    pub reason: Option<String>,
}

/// What the controller knows now about the database steps of a rollout.
#[derive(Default)]
pub(crate) struct DbLive {
    /// The rollout (its `step_started_ms`) the preparing workflow ran for.
    pub prepared_for: Option<u64>,
    pub prepare_task: Option<tokio::task::JoinHandle<()>>,
    pub prepare_done: bool,
    pub preparing: Vec<StepStatus>,
    /// The cutover (its `step_started_ms`) the cutover task ran for.
    pub cutover_for: Option<u64>,
    pub cutover_running: bool,
    pub last_cutover: Option<CutoverRecord>,
    /// An abort happened and replication objects should be removed.
    pub cleanup_wanted: bool,
    /// A cutover whose outcome is not known yet: writes are refused.
    pub attention: Option<String>,
    /// What an undone cutover left that is being repaired.
    pub repair: Option<String>,
}

/// [`DbLive`] behind a mutex that shrugs off poisoning.
#[derive(Default)]
pub(crate) struct DbLiveCell(Mutex<DbLive>, Arc<tokio::sync::Mutex<()>>);

impl DbLiveCell {
    pub(crate) fn lock(&self) -> MutexGuard<'_, DbLive> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Held by whatever changes replication objects in the background (a
    /// cutover, the check and cleanup after it, an abort's cleanup, the
    /// preparing workflow), so that one never runs into the next: a cutover
    /// back right after a promotion waits for the promotion's old objects
    /// to be gone before it creates objects of the same names.
    pub(crate) fn objects(&self) -> Arc<tokio::sync::Mutex<()>> {
        self.1.clone()
    }
}

/// The `[database]` gate.
pub struct DatabaseGate {
    db: DatabaseConfig,
    last: ArcSwapOption<Reading>,
    /// The stable colour (its database is the primary): the gate reads the
    /// other colour's database, the candidate's. Set by the control plane
    /// ([`DatabaseGate::set_stable`]).
    stable_green: std::sync::atomic::AtomicBool,
    /// Wakes the background refresh at once (the stable colour changed).
    refresh_now: tokio::sync::Notify,
}

/// One reading of the candidate's verification and of replication.
struct Reading {
    at_ms: u64,
    /// The stable colour it was taken for: after a promotion a reading of
    /// the previous release's candidate says nothing about verification
    /// (replication, which is read from both sides, still holds).
    stable: Colour,
    result: Result<GateStatus, String>,
}

impl DatabaseGate {
    /// Creates the gate and starts refreshing its reading in the background
    /// (the task ends when the gate is dropped). Must run inside a runtime.
    pub fn start(db: DatabaseConfig) -> Arc<DatabaseGate> {
        let gate = Arc::new(DatabaseGate {
            db,
            last: ArcSwapOption::empty(),
            stable_green: std::sync::atomic::AtomicBool::new(false),
            refresh_now: tokio::sync::Notify::new(),
        });
        let weak: Weak<DatabaseGate> = Arc::downgrade(&gate);
        tokio::spawn(async move {
            loop {
                let Some(gate) = weak.upgrade() else { return };
                // The reading is kept for status pages; errors show there.
                let _ = gate.read().await;
                let wake = async {
                    tokio::select! {
                        _ = tokio::time::sleep(REFRESH) => {}
                        _ = gate.refresh_now.notified() => {}
                    }
                };
                wake.await;
                drop(gate);
            }
        });
        gate
    }

    /// Takes a new reading now instead of at the next refresh, e.g. once a
    /// cutover has removed the old direction's objects, so that the status
    /// does not show the old direction for up to two seconds.
    pub(crate) async fn refresh(&self) {
        let _ = self.read().await;
    }

    /// The `[database]` table this gate checks.
    pub fn config(&self) -> &DatabaseConfig {
        &self.db
    }

    /// Tells the gate which colour is stable now (at start and after every
    /// transition): its database is the source of the next release.
    pub(crate) fn set_stable(&self, stable: Colour) {
        let green = stable == Colour::Green;
        if self
            .stable_green
            .swap(green, std::sync::atomic::Ordering::Relaxed)
            != green
        {
            // A reading for the other stable colour is of the previous
            // release: read the new candidate now.
            self.refresh_now.notify_one();
        }
    }

    /// The last reading's verification part, when it is of the current
    /// candidate.
    fn current<'a>(&self, r: &'a Reading) -> Option<&'a GateStatus> {
        r.result.as_ref().ok().filter(|_| r.stable == self.stable())
    }

    /// The stable colour the gate reads for.
    pub(crate) fn stable(&self) -> Colour {
        if self.stable_green.load(std::sync::atomic::Ordering::Relaxed) {
            Colour::Green
        } else {
            Colour::Blue
        }
    }

    /// Whether the candidate's database replicates the primary's, by the
    /// last reading (`None` before the first): what lets an `abort` after a
    /// promotion move back without losing a write.
    pub(crate) fn candidate_replicates(&self) -> Option<bool> {
        let last = self.last.load();
        let reading = last.as_ref().and_then(|r| self.current(r))?;
        let dir = crate::cutover::direction_from(self.stable());
        let r = reading.replication.as_ref()?;
        Some(r.objects.iter().any(|o| {
            o.direction == dir && o.kind == switchyard_sync::replication::ObjectKind::Subscription
        }))
    }

    async fn read(&self) -> Result<GateStatus, String> {
        let stable = self.stable();
        let dir = crate::cutover::direction_from(stable);
        let result =
            match tokio::time::timeout(READ_TIMEOUT, switchyard_sync::gate_status(&self.db, dir))
                .await
            {
                Ok(Ok(s)) => Ok(s),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!(
                    "{}'s database did not answer within {READ_TIMEOUT:?}",
                    stable.other()
                )),
            };
        if self.stable() != stable {
            // The stable colour changed while reading: this reading is of
            // the old direction.
            return result;
        }
        self.last.store(Some(Arc::new(Reading {
            at_ms: crate::model::events::now_ms(),
            stable,
            result: result.clone(),
        })));
        result
    }

    /// Judges a reading: pass, or hold with the reason. `expected` is the
    /// direction replication must run (from the writer's database).
    fn judge(
        &self,
        status: &Result<GateStatus, String>,
        expected: Option<replication::Direction>,
    ) -> GateResult {
        let s = match status {
            Ok(s) => s,
            Err(e) => {
                return GateResult::Hold(format!(
                    "cannot read {}'s verification state: {e}",
                    self.stable().other()
                ))
            }
        };
        let candidate = crate::cutover::side_of(self.stable().other());
        if s.target != candidate {
            return GateResult::Hold(format!(
                "the last reading is of {}'s database, the previous release's candidate: a reading of {candidate}'s follows",
                s.target
            ));
        }
        if !s.verified {
            return GateResult::Hold(format!("{} is not verified: {}", s.target, s.reason));
        }
        if self.db.mode == SyncMode::Replicate {
            let Some(r) = &s.replication else {
                return GateResult::Hold("replication state unknown".into());
            };
            let arrow = expected
                .map(|d| d.arrow())
                .unwrap_or(crate::cutover::direction_from(self.stable()).arrow());
            match (r.state, r.direction) {
                (ReplicationState::Streaming, d) if expected.is_none() || d == expected => {}
                (ReplicationState::None, _) => {
                    return GateResult::Hold(format!(
                        "replication {arrow} is not set up: `switchyard ctl resume` (or a new `switchyard ctl start`) prepares the candidate's database and sets it up; by hand, `switchyard sync clone --replace` then `switchyard sync replicate`"
                    ))
                }
                (ReplicationState::Inconsistent, _) => {
                    return GateResult::Hold(
                        "replication objects of both directions exist (an interrupted cutover): see `switchyard sync status`".into(),
                    )
                }
                (state, d) => {
                    return GateResult::Hold(format!(
                        "replication {arrow} is not streaming (it is {}{}){}",
                        match state {
                            ReplicationState::Stopped => "stopped",
                            _ => "running the other way",
                        },
                        d.map(|d| format!(", {}", d.arrow())).unwrap_or_default(),
                        if r.unreachable.is_empty() {
                            String::new()
                        } else {
                            format!("; unreachable: {}", r.unreachable.join("; "))
                        }
                    ))
                }
            }
            if let Some(lag) = s.replication_lag() {
                if lag > self.db.max_lag {
                    return GateResult::Hold(format!(
                        "replication lag {:.3}s is above max_lag {}",
                        lag.as_secs_f64(),
                        switchyard_config::format_duration(self.db.max_lag)
                    ));
                }
            }
        }
        GateResult::Pass
    }

    /// Renders the database metrics from the last reading.
    fn metrics(&self, out: &mut String) {
        let last = self.last.load();
        let Some(Ok(s)) = last.as_ref().map(|r| &r.result) else {
            return;
        };
        let current = last.as_ref().and_then(|r| self.current(r)).is_some();
        let open = current && matches!(self.judge(&Ok(s.clone()), None), GateResult::Pass);
        let _ = writeln!(out, "# HELP switchyard_database_gate_open 1 when the database gate lets the rollout advance.\n# TYPE switchyard_database_gate_open gauge\nswitchyard_database_gate_open {}", u8::from(open));
        let _ = writeln!(out, "# HELP switchyard_database_verified 1 when the candidate's database is verified at its current schema version.\n# TYPE switchyard_database_verified gauge\nswitchyard_database_verified {}", u8::from(current && s.verified));
        if let Some(p) = &s.primary {
            let _ = writeln!(out, "# HELP switchyard_database_primary 1 for the colour whose database is the primary (takes the application's writes), by the cutover records.\n# TYPE switchyard_database_primary gauge\nswitchyard_database_primary{{colour=\"blue\"}} {}\nswitchyard_database_primary{{colour=\"green\"}} {}", u8::from(p.side == switchyard_sync::Side::Blue), u8::from(p.side == switchyard_sync::Side::Green));
        }
        if current && switchyard_sync::staleness_checked(&self.db) && s.clone.is_some() {
            let _ = writeln!(out, "# HELP switchyard_database_green_stale 1 when the primary has taken writes since the candidate's database was cloned (snapshot mode): the copy lacks them.\n# TYPE switchyard_database_green_stale gauge\nswitchyard_database_green_stale {}", u8::from(s.blue_changed.is_some()));
        }
        if let Some(r) = &s.replication {
            let dir = r.direction.map(|d| match d {
                replication::Direction::Forward => "blue_to_green",
                replication::Direction::Reverse => "green_to_blue",
            });
            let _ = writeln!(out, "# HELP switchyard_replication_streaming 1 when the replica's subscription is connected and streaming.\n# TYPE switchyard_replication_streaming gauge\nswitchyard_replication_streaming {}", u8::from(r.state == ReplicationState::Streaming));
            if let (Some(d), Some(b)) = (dir, r.lag_bytes) {
                let _ = writeln!(out, "# HELP switchyard_replication_lag_bytes WAL bytes the replica has not applied yet.\n# TYPE switchyard_replication_lag_bytes gauge\nswitchyard_replication_lag_bytes{{direction=\"{d}\"}} {b}");
            }
            if let (Some(d), Some(n)) = (dir, r.transactions_behind) {
                let _ = writeln!(out, "# HELP switchyard_replication_lag_transactions Transactions of the primary the replica has not executed yet (MySQL/MariaDB).\n# TYPE switchyard_replication_lag_transactions gauge\nswitchyard_replication_lag_transactions{{direction=\"{d}\"}} {n}");
            }
            if let (Some(d), Some(l)) = (dir, r.lag_seconds) {
                let _ = writeln!(out, "# HELP switchyard_replication_lag_seconds How far the replica is behind the primary.\n# TYPE switchyard_replication_lag_seconds gauge\nswitchyard_replication_lag_seconds{{direction=\"{d}\"}} {l}");
            }
            if let (Some(d), Some(w)) = (dir, r.retained_wal_bytes) {
                let _ = writeln!(out, "# HELP switchyard_replication_slot_retained_wal_bytes WAL the primary keeps for switchyard's slot.\n# TYPE switchyard_replication_slot_retained_wal_bytes gauge\nswitchyard_replication_slot_retained_wal_bytes{{direction=\"{d}\"}} {w}");
            }
        }
    }
}

impl Gate for DatabaseGate {
    fn name(&self) -> &str {
        "database"
    }

    fn check<'a>(&'a self, ctx: &'a GateContext) -> GateFuture<'a> {
        Box::pin(async move {
            self.set_stable(ctx.candidate.other());
            let expected = crate::cutover::direction_from(ctx.candidate.other());
            let status = self.read().await;
            let verdict = self.judge(&status, Some(expected));
            if verdict != GateResult::Pass || self.db.mode != SyncMode::Replicate {
                return verdict;
            }
            // Measured, not estimated: did the replica apply everything the
            // primary had written when we asked, within max_lag?
            match replication::wait_caught_up(&self.db, expected, self.db.max_lag).await {
                Ok(CatchUp::CaughtUp { .. }) => GateResult::Pass,
                Ok(CatchUp::Behind { lsn, lag_bytes, .. }) => GateResult::Hold(format!(
                    "replication lag is above max_lag {}: {} had not applied {}'s log up to {lsn} after {} ({} bytes behind)",
                    switchyard_config::format_duration(self.db.max_lag),
                    expected.target(),
                    expected.source(),
                    switchyard_config::format_duration(self.db.max_lag),
                    lag_bytes.map(|b| b.to_string()).unwrap_or_else(|| "unknown".into())
                )),
                Err(e) => GateResult::Hold(format!("cannot measure replication lag: {e}")),
            }
        })
    }

    fn render_metrics(&self, out: &mut String) {
        self.metrics(out)
    }

    fn status(&self) -> Option<crate::wire::GateView> {
        let last = self.last.load();
        Some(match last.as_ref() {
            None => crate::wire::GateView {
                gate: crate::wire::GateState::Unknown,
                reason: Some("not read yet".into()),
            },
            Some(r) => (&self.judge(&r.result, None)).into(),
        })
    }

    fn as_database(&self) -> Option<&DatabaseGate> {
        Some(self)
    }
}

impl DatabaseGate {
    /// The database part of the status: the last reading, and what the
    /// controller knows (`live`) and the data plane does (`write_gate`).
    pub(crate) fn view(
        &self,
        writer: Colour,
        write_gate: &switchyard_proxy::WriteGateStatus,
        live: &DbLive,
    ) -> crate::wire::DatabaseStatus {
        use crate::wire;
        let gate = self
            .status()
            .expect("the database gate always has a status");
        let last = self.last.load();
        // Replication and the primary are read from both sides: any
        // reading shows them; verification only from one of this candidate.
        let any = last.as_ref().and_then(|r| r.result.as_ref().ok());
        let reading = last.as_ref().and_then(|r| self.current(r));
        let colour = |s: switchyard_sync::Side| match s {
            switchyard_sync::Side::Blue => Colour::Blue,
            switchyard_sync::Side::Green => Colour::Green,
        };
        let primary = any.and_then(|s| s.primary.as_ref());
        let mut schema = wire::SchemaVersions::default();
        if let Some(s) = any {
            let (target, source) = (s.schema_version.clone(), s.source_schema_version.clone());
            match s.target {
                switchyard_sync::Side::Blue => (schema.blue, schema.green) = (target, source),
                switchyard_sync::Side::Green => (schema.green, schema.blue) = (target, source),
            }
        }
        wire::DatabaseStatus {
            mode: self.db.mode.into(),
            gate: gate.gate,
            reason: gate.reason,
            max_lag_seconds: self.db.max_lag.as_secs_f64(),
            checked_at: last
                .as_ref()
                .map(|r| crate::model::events::rfc3339(r.at_ms)),
            primary: primary.map(|p| colour(p.side).into()),
            primary_since: primary.and_then(|p| p.since.clone()),
            candidate: self.stable().other().into(),
            schema,
            verified: reading.map(|s| s.verified),
            schema_version: reading.and_then(|s| s.schema_version.clone()),
            latest_migration: reading.and_then(|s| s.latest_migration.clone()),
            verified_version: reading.and_then(|s| s.verified_version.clone()),
            verified_at: reading.and_then(|s| s.verified_at.clone()),
            clone: reading
                .and_then(|s| s.clone.as_ref())
                .map(|c| wire::CloneView {
                    kind: match c.kind {
                        switchyard_sync::gate::CloneKind::Copy => wire::CloneKind::Copy,
                        switchyard_sync::gate::CloneKind::Replica => wire::CloneKind::Replica,
                    },
                    state: c.state.into(),
                    phase: c.phase.clone(),
                    error: c.error.clone(),
                    slot: c.slot.clone(),
                    consistent_lsn: c.consistent_lsn.clone(),
                    blue_time: c.blue_time.clone(),
                    at: c.at.clone(),
                }),
            replication: any
                .and_then(|s| s.replication.as_ref())
                .map(|r| wire::ReplicationView {
                    state: r.state.into(),
                    direction: r.direction.map(|d| d.arrow().to_string()),
                    lag_bytes: r.lag_bytes,
                    lag_seconds: r.lag_seconds,
                    lag_transactions: r.transactions_behind,
                    retained_wal_bytes: r.retained_wal_bytes,
                    wal_status: r.wal_status.clone(),
                    unreachable: r.unreachable.clone(),
                }),
            writer: writer.into(),
            writes_pinned: write_gate.writer.is_some(),
            write_gate: wire::WriteGateView {
                held: write_gate.held,
                held_total: write_gate.held_total,
                in_flight: write_gate.in_flight,
                waiting: write_gate.waiting,
            },
            preparing: live
                .preparing
                .iter()
                .map(|p| wire::PrepareStepView {
                    step: p.step.into(),
                    state: p.state.into(),
                    detail: p.detail.clone(),
                })
                .collect(),
            attention: live.attention.clone(),
            repair: live.repair.clone(),
            last_cutover: live.last_cutover.as_ref().map(|c| wire::CutoverView {
                at: c.at.clone(),
                completed: c.completed,
                held_seconds: c.held_ms as f64 / 1000.0,
                held_requests: c.held_requests,
                reason: c.reason.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(g: &DatabaseGate, s: &Result<GateStatus, String>) -> GateResult {
        g.judge(s, Some(replication::Direction::Forward))
    }

    fn gate(mode: SyncMode) -> DatabaseGate {
        DatabaseGate {
            db: DatabaseConfig {
                mode,
                ..DatabaseConfig::new("postgres://b@127.0.0.1/app", "postgres://g@127.0.0.1/app")
            },
            last: ArcSwapOption::empty(),
            stable_green: Default::default(),
            refresh_now: Default::default(),
        }
    }

    fn with_state(
        mut s: Result<GateStatus, String>,
        state: ReplicationState,
        dir: Option<replication::Direction>,
    ) -> Result<GateStatus, String> {
        if let Ok(g) = &mut s {
            let r = g.replication.as_mut().expect("replication");
            r.state = state;
            r.direction = dir;
        }
        s
    }

    fn status(verified: bool, lag: Option<Duration>) -> Result<GateStatus, String> {
        Ok(GateStatus {
            target: switchyard_sync::Side::Green,
            primary: None,
            source_schema_version: None,
            verified,
            reason: if verified {
                "ok".into()
            } else {
                "never verified".into()
            },
            schema_version: Some("1".into()),
            latest_migration: Some("1".into()),
            verified_version: verified.then(|| "1".into()),
            verified_at: None,
            clone: None,
            replication: lag.map(|l| switchyard_sync::replication::ReplicationStatus {
                state: switchyard_sync::replication::ReplicationState::Streaming,
                direction: Some(switchyard_sync::replication::Direction::Forward),
                lag_bytes: Some(0),
                lag_seconds: Some(l.as_secs_f64()),
                retained_wal_bytes: None,
                wal_status: None,
                objects: Vec::new(),
                unreachable: Vec::new(),
                transactions_behind: None,
            }),
            blue_changed: None,
        })
    }

    fn held(r: GateResult) -> String {
        match r {
            GateResult::Hold(why) => why,
            GateResult::Pass => panic!("expected a hold"),
        }
    }

    #[test]
    fn snapshot_mode_needs_verification_only() {
        let g = gate(SyncMode::Snapshot);
        assert_eq!(judge(&g, &status(true, None)), GateResult::Pass);
        assert!(held(judge(&g, &status(false, None))).contains("never verified"));
        assert!(held(judge(&g, &Err("connection refused".into()))).contains("connection refused"));
    }

    #[test]
    fn replicate_mode_also_needs_replication_within_max_lag() {
        let g = gate(SyncMode::Replicate);
        assert!(held(judge(&g, &status(true, None))).contains("unknown"));
        let ok = || status(true, Some(Duration::from_millis(1)));
        assert!(
            held(judge(&g, &with_state(ok(), ReplicationState::None, None))).contains("not set up")
        );
        assert!(held(judge(
            &g,
            &with_state(
                ok(),
                ReplicationState::Stopped,
                Some(replication::Direction::Forward)
            )
        ))
        .contains("not streaming (it is stopped"));
        assert!(held(judge(
            &g,
            &with_state(
                ok(),
                ReplicationState::Streaming,
                Some(replication::Direction::Reverse)
            )
        ))
        .contains("running the other way"));
        assert!(held(judge(
            &g,
            &with_state(ok(), ReplicationState::Inconsistent, None)
        ))
        .contains("interrupted cutover"));
        assert!(held(judge(&g, &status(false, Some(Duration::ZERO)))).contains("not verified"));
        assert!(
            held(judge(&g, &status(true, Some(Duration::from_secs(3))))).contains("above max_lag")
        );
        assert_eq!(
            judge(&g, &status(true, Some(Duration::from_millis(200)))),
            GateResult::Pass
        );
    }
}
