//! The rollout's database workflow on MySQL/MariaDB (see
//! [`crate::prepare`]): preflight → clone → migrate → verify (against the
//! clone's own snapshot, while it is held) → replicate, each step skipped
//! when it is already done and valid.

use super::{clone, connect, migrate, preflight, replica, state, verify};
use crate::error::{Side, SyncError};
use crate::replication::{ObjectKind, ReplicationState};
use crate::workflow::{Observer, PrepareError, Step, StepState};
use crate::Output;
use switchyard_config::{DatabaseConfig, SyncMode};

/// Runs the workflow on MySQL/MariaDB.
pub async fn run(db: &DatabaseConfig, observer: &dyn Observer) -> Result<(), PrepareError> {
    let fail = |step: Step, error: SyncError| {
        observer.step(step, StepState::Failed, &error.to_string());
        PrepareError { step, error }
    };
    let replicate_mode = db.mode == SyncMode::Replicate;

    observer.step(Step::Preflight, StepState::Running, "");
    let report = preflight::preflight(db)
        .await
        .map_err(|e| fail(Step::Preflight, e))?;
    if let Some(blocked) = report.blocked() {
        return Err(fail(Step::Preflight, blocked));
    }
    observer.step(Step::Preflight, StepState::Done, "no blockers");

    observer.step(Step::Clone, StepState::Running, "");
    let mut green = connect(Side::Green, &db.green)
        .await
        .map_err(|e| fail(Step::Clone, e))?;
    if let Some(since) = state::primary_since(&mut green)
        .await
        .map_err(|e| fail(Step::Clone, e))?
    {
        return Err(fail(
            Step::Clone,
            SyncError::TargetIsPrimary {
                side: Side::Green,
                since,
            },
        ));
    }
    let last = state::last_clone(&mut green)
        .await
        .map_err(|e| fail(Step::Clone, e))?;
    let contents = clone::green_contents(&mut green)
        .await
        .map_err(|e| fail(Step::Clone, e))?;
    green.close().await;
    let repl = replica::status(db).await;
    let has_replica = repl
        .objects
        .iter()
        .any(|o| o.kind == ObjectKind::Replica && o.side == Side::Green);
    let usable = matches!(&last, Some(c) if c.state == crate::gate::CloneState::Complete)
        && (!replicate_mode || has_replica);
    let mut holder = None;
    if usable {
        observer.step(
            Step::Clone,
            StepState::Skipped,
            "green holds a complete clone that replication keeps up to date",
        );
    } else {
        let replace = contents.is_some() && last.is_some();
        if replace {
            replica::cleanup(db)
                .await
                .map_err(|e| fail(Step::Clone, e))?;
        }
        let (r, h) = clone::clone(db, db.jobs.max(1), replace, Output::Quiet)
            .await
            .map_err(|e| fail(Step::Clone, e))?;
        observer.step(
            Step::Clone,
            StepState::Done,
            &format!(
                "{} tables, {} rows in {:.1}s",
                r.tables.len(),
                r.rows,
                r.seconds
            ),
        );
        holder = h;
    }

    observer.step(Step::Migrate, StepState::Running, "");
    let m = migrate::migrate(&db.migrations, &db.green, false, Some(&db.placeholders)).await;
    let m = match m {
        Ok(m) => m,
        Err(e) => {
            if let Some(h) = holder {
                h.release().await;
            }
            return Err(fail(Step::Migrate, e));
        }
    };
    observer.step(
        Step::Migrate,
        if m.applied.is_empty() {
            StepState::Skipped
        } else {
            StepState::Done
        },
        &format!(
            "applied {} (schema version {})",
            if m.applied.is_empty() {
                "nothing".to_string()
            } else {
                m.applied.join(", ")
            },
            m.schema_version.as_deref().unwrap_or("none")
        ),
    );

    let needs_verify = match holder.as_mut() {
        Some(h) => {
            observer.step(
                Step::Verify,
                StepState::Running,
                "against the clone's snapshot",
            );
            let v = verify::verify(db, Some(h)).await;
            let v = match v {
                Ok(v) => v,
                Err(e) => {
                    if let Some(h) = holder {
                        h.release().await;
                    }
                    return Err(fail(Step::Verify, e));
                }
            };
            if !v.passed {
                if let Some(h) = holder {
                    h.release().await;
                }
                return Err(fail(Step::Verify, SyncError::Other(v.render())));
            }
            observer.step(
                Step::Verify,
                StepState::Done,
                &format!("{} tables equal", v.tables.len()),
            );
            false
        }
        None => {
            let g = state::gate_status(db, crate::replication::Direction::Forward)
                .await
                .map_err(|e| fail(Step::Verify, e))?;
            if g.verified {
                observer.step(Step::Verify, StepState::Skipped, &g.reason);
                false
            } else {
                true
            }
        }
    };
    if let Some(h) = holder {
        h.release().await;
    }

    if replicate_mode {
        observer.step(Step::Replicate, StepState::Running, "");
        let r = replica::subscribe(db)
            .await
            .map_err(|e| fail(Step::Replicate, e))?;
        observer.step(
            Step::Replicate,
            if r.already_running {
                StepState::Skipped
            } else {
                StepState::Done
            },
            &if r.already_running {
                "green already replicates blue".to_string()
            } else {
                format!("green replicates blue from GTID {}", r.from_gtid)
            },
        );
        // Wait for the replica to connect before the gate first reads it.
        for _ in 0..50 {
            if replica::status(db).await.state == ReplicationState::Streaming {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    if needs_verify {
        observer.step(Step::Verify, StepState::Running, "against live blue");
        let v = verify::verify(db, None)
            .await
            .map_err(|e| fail(Step::Verify, e))?;
        if !v.passed {
            return Err(fail(Step::Verify, SyncError::Other(v.render())));
        }
        observer.step(
            Step::Verify,
            StepState::Done,
            &format!("{} tables equal", v.tables.len()),
        );
    }
    Ok(())
}
