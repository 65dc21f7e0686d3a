//! The `preparing` phase with `[database]` (and `prepare = "auto"`): runs
//! `switchyard_sync::prepare` (preflight → clone → migrate → verify →
//! replicate) in the background, once per rollout, reporting each step as a
//! `database_step` event and in the status. A failed step pauses the rollout
//! with the step, the reason and what to do; `resume` runs the workflow
//! again, skipping what is already done and valid.

use serde_json::json;
use std::sync::{Arc, Weak};
use switchyard_config::DatabaseConfig;
use switchyard_sync::workflow::{Observer, Step, StepState};

use crate::database::StepStatus;
use crate::model::events::EventKind;
use crate::model::phase::Phase;
use crate::model::rollout::{Change, Conflict};
use crate::Inner;

/// Starts the workflow for the rollout that began at `started_ms`, unless
/// it already ran (or runs) for it.
pub(crate) fn ensure_running(inner: &Arc<Inner>, started_ms: u64, db: &DatabaseConfig) {
    let mut live = inner.db.lock();
    if live.prepared_for == Some(started_ms) {
        return;
    }
    live.prepared_for = Some(started_ms);
    live.preparing = Step::ALL
        .iter()
        .filter(|s| **s != Step::Replicate || db.mode == switchyard_config::SyncMode::Replicate)
        .map(|s| StepStatus {
            step: *s,
            state: StepState::Pending,
            detail: String::new(),
        })
        .collect();
    live.prepare_done = false;
    let weak = Arc::downgrade(inner);
    let db = db.clone();
    live.prepare_task = Some(tokio::spawn(run(weak, started_ms, db)));
}

/// Whether the workflow for this rollout is still running, and its current step.
pub(crate) fn running_step(inner: &Inner) -> Option<String> {
    let live = inner.db.lock();
    if live.prepare_done || live.prepare_task.as_ref().is_none_or(|t| t.is_finished()) {
        return None;
    }
    let current = live
        .preparing
        .iter()
        .rev()
        .find(|s| s.state == StepState::Running)
        .map(|s| s.step.as_str())
        .unwrap_or("starting");
    let candidate = inner.store.lock().candidate();
    Some(format!("preparing {candidate}'s database: {current}"))
}

/// Stops a running workflow (the rollout was aborted).
pub(crate) fn stop(inner: &Inner) {
    let mut live = inner.db.lock();
    if let Some(t) = live.prepare_task.take() {
        t.abort();
    }
}

struct Reporter {
    inner: Weak<Inner>,
    started_ms: u64,
}

impl Observer for Reporter {
    fn step(&self, step: Step, state: StepState, detail: &str) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        {
            let mut live = inner.db.lock();
            if live.prepared_for != Some(self.started_ms) {
                return;
            }
            if let Some(s) = live.preparing.iter_mut().find(|s| s.step == step) {
                s.state = state;
                s.detail = detail.to_string();
            }
        }
        if state == StepState::Running {
            return;
        }
        let reason = if detail.is_empty() {
            format!("{} {}", step.as_str(), state_name(state))
        } else {
            format!("{} {}: {detail}", step.as_str(), state_name(state))
        };
        let _ = inner.transition("controller", |_| {
            let mut c = Change::new(EventKind::DatabaseStep, Some(reason));
            c.extra.detail = Some(json!({ "step": step, "state": state, "detail": detail }));
            Ok(c)
        });
    }
}

fn state_name(s: StepState) -> &'static str {
    match s {
        StepState::Pending => "pending",
        StepState::Running => "running",
        StepState::Done => "done",
        StepState::Skipped => "skipped (already done)",
        StepState::Failed => "failed",
    }
}

async fn run(weak: Weak<Inner>, started_ms: u64, db: DatabaseConfig) {
    let reporter = Reporter {
        inner: weak.clone(),
        started_ms,
    };
    let (stable, objects) = match weak.upgrade() {
        Some(inner) => (inner.store.lock().stable, inner.db.objects()),
        None => return,
    };
    // After a promotion its check and cleanup end first.
    let _objects = objects.lock_owned().await;
    let result =
        switchyard_sync::workflow::prepare(&db, crate::cutover::direction_from(stable), &reporter)
            .await;
    let Some(inner) = weak.upgrade() else { return };
    match result {
        Ok(()) => {
            inner.db.lock().prepare_done = true;
            tracing::info!("the candidate's database is prepared");
        }
        Err(e) => {
            let reason = format!(
                "database step {} failed: {}. Fix it, then `switchyard ctl resume` runs the workflow again from where it stopped",
                e.step.as_str(),
                e.error
            );
            tracing::error!(%reason, "preparing the candidate's database failed");
            let _ = inner.transition("controller", |s| {
                if s.rollout.phase != Phase::Preparing || s.rollout.step_started_ms != started_ms {
                    return Err(Conflict("the rollout moved on".into()));
                }
                s.rollout.phase = Phase::Paused;
                s.rollout.reason = Some(reason.clone());
                Ok(Change::new(EventKind::Paused, Some(reason)))
            });
            // Resuming starts a new preparing phase, which runs the workflow
            // again.
            inner.db.lock().prepared_for = None;
        }
    }
}
