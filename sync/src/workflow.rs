//! The steps of the rollout's database workflow and how their progress is
//! observed, for every engine (each engine's `prepare` runs them).

use crate::error::SyncError;
use serde::Serialize;

/// One step of the workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    Preflight,
    Clone,
    Migrate,
    Verify,
    Replicate,
}

impl Step {
    /// Every step, in order (`replicate` only in replicate mode).
    pub const ALL: [Step; 5] = [
        Step::Preflight,
        Step::Clone,
        Step::Migrate,
        Step::Verify,
        Step::Replicate,
    ];

    /// The name used in events and status.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Preflight => "preflight",
            Step::Clone => "clone",
            Step::Migrate => "migrate",
            Step::Verify => "verify",
            Step::Replicate => "replicate",
        }
    }
}

/// Where a step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    Pending,
    Running,
    Done,
    /// Already done and valid.
    Skipped,
    Failed,
}

/// Receives the workflow's progress (the controller turns it into events
/// and status).
pub trait Observer: Send + Sync {
    /// Called when `step` enters `state`; `detail` says what happened.
    fn step(&self, step: Step, state: StepState, detail: &str);
}

/// A failed step and why.
#[derive(Debug, thiserror::Error)]
#[error("{} failed: {error}", step.as_str())]
pub struct PrepareError {
    pub step: Step,
    #[source]
    pub error: SyncError,
}

use crate::replication::Direction;
use switchyard_config::{DatabaseConfig, DatabaseEngine};

/// Runs the whole workflow a release needs (preflight → clone → migrate →
/// verify → replicate) in direction `dir`, from the primary into the
/// candidate's database, skipping what is already done and valid,
/// reporting each step to `observer`.
pub async fn prepare(
    db: &DatabaseConfig,
    dir: Direction,
    observer: &dyn Observer,
) -> Result<(), PrepareError> {
    match db.engine() {
        DatabaseEngine::Postgres => crate::postgres::prepare::run(db, dir, observer).await,
        DatabaseEngine::MySql => {
            if let Err(error) = crate::mysql::refuse_later_releases(dir) {
                observer.step(Step::Preflight, StepState::Failed, &error.to_string());
                return Err(PrepareError {
                    step: Step::Preflight,
                    error,
                });
            }
            crate::mysql::prepare::run(db, observer).await
        }
    }
}
