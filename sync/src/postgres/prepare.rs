//! The whole database workflow of a rollout, as the controller runs it when
//! a rollout starts: preflight → clone (with the replication slot in
//! replicate mode) → migrate → verify → replicate. Each step reports to an
//! [`Observer`]; a step that is already done and still valid is skipped
//! (a complete clone whose slot or subscription exists, migrations already
//! applied, a passing verification at the current schema version after the
//! last clone, a running subscription), so starting again after a failure
//! picks up where it stopped.
//!
//! Right after a clone the verification compares green with the clone's own
//! snapshot (still held), before replication starts; otherwise it runs
//! against live blue while replicating (see [`crate::verify`]).

use switchyard_config::{DatabaseConfig, SyncMode};

use crate::error::{Side, SyncError};
use crate::replicate::{self, Direction, ObjectKind};
pub use crate::workflow::{Observer, PrepareError, Step, StepState};
use crate::{clone, compat, migrate, pg, preflight, state, verify, Output};

/// Runs the workflow. See the module documentation.
pub async fn run(db: &DatabaseConfig, observer: &dyn Observer) -> Result<(), PrepareError> {
    let fail = |step: Step, error: SyncError| {
        observer.step(step, StepState::Failed, &error.to_string());
        PrepareError { step, error }
    };
    let replicate_mode = db.mode == SyncMode::Replicate;

    // Preflight.
    observer.step(Step::Preflight, StepState::Running, "");
    let report = preflight::preflight(db)
        .await
        .map_err(|e| fail(Step::Preflight, e))?;
    if let Some(blocked) = report.blocked() {
        return Err(fail(Step::Preflight, blocked));
    }
    observer.step(Step::Preflight, StepState::Done, "no blockers");

    // Clone, unless green holds a complete clone that can still be caught up.
    observer.step(Step::Clone, StepState::Running, "");
    let green = pg::connect(Side::Green, &db.green)
        .await
        .map_err(|e| fail(Step::Clone, e))?;
    // After a promotion green's database is production: no step here may
    // touch it.
    clone::refuse_replacing_the_primary(db, &green)
        .await
        .map_err(|e| fail(Step::Clone, e))?;
    let last = state::last_clone(&green)
        .await
        .map_err(|e| fail(Step::Clone, e))?;
    let repl = replicate::status(db).await;
    let fwd = replicate::names(db, Direction::Forward);
    let streamable = |kind: ObjectKind| {
        repl.objects
            .iter()
            .any(|o| o.kind == kind && o.direction == Direction::Forward)
    };
    let usable = match &last {
        Some(c) if c.state == crate::state::CloneState::Complete => {
            !replicate_mode
                || (c.slot.as_deref() == Some(fwd.slot.as_str())
                    && (streamable(ObjectKind::Slot) || streamable(ObjectKind::Subscription)))
        }
        _ => false,
    };
    let mut holder = None;
    if usable {
        observer.step(
            Step::Clone,
            StepState::Skipped,
            "green holds a complete clone that replication can bring up to date",
        );
    } else {
        let contents = clone::green_contents(&green)
            .await
            .map_err(|e| fail(Step::Clone, e))?;
        // Replace only what switchyard itself put there.
        let replace = contents.is_some() && last.is_some();
        if replace {
            // A subscription of the old clone must not stream into the new one.
            replicate::cleanup(db)
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
                "{} tables, {} rows in {:.1}s{}",
                r.tables.len(),
                r.rows,
                r.seconds,
                if replace {
                    " (replaced green's earlier clone)"
                } else {
                    ""
                }
            ),
        );
        holder = Some(h);
    }
    let result = after_clone(db, observer, holder.as_ref(), replicate_mode).await;
    if let Some(h) = holder {
        h.release().await;
    }
    let needs_verify = result.map_err(|(s, e)| fail(s, e))?;

    // Replicate before a verification against live blue: green must be
    // streaming for verify to tell lag from divergence.
    if replicate_mode {
        observer.step(Step::Replicate, StepState::Running, "");
        let r = replicate::subscribe(db)
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
                format!("green already streams from slot {}", r.slot)
            } else {
                format!("green streams blue's changes from slot {}", r.slot)
            },
        );
    }
    if needs_verify {
        observer.step(Step::Verify, StepState::Running, "against live blue");
        let v = verify::verify(db, db.jobs.max(1), None, Output::Quiet)
            .await
            .map_err(|e| fail(Step::Verify, e))?;
        if !v.passed {
            return Err(fail(Step::Verify, SyncError::Other(summary(&v))));
        }
        observer.step(Step::Verify, StepState::Done, &summary(&v));
    }
    Ok(())
}

/// Migrate, and verify against the clone's snapshot while it is held.
/// Returns whether a verification against live blue is still needed.
async fn after_clone(
    db: &DatabaseConfig,
    observer: &dyn Observer,
    holder: Option<&pg::SnapshotHolder>,
    replicate_mode: bool,
) -> Result<bool, (Step, SyncError)> {
    observer.step(Step::Migrate, StepState::Running, "");
    let published = if replicate_mode {
        let blue = pg::connect(Side::Blue, &db.blue)
            .await
            .map_err(|e| (Step::Migrate, e))?;
        Some(
            compat::published_schema(&blue)
                .await
                .map_err(|e| (Step::Migrate, e))?,
        )
    } else {
        None
    };
    let m = migrate::migrate(
        &db.migrations,
        &db.green,
        migrate::MigrateOptions {
            dry_run: false,
            published: published.as_ref(),
            roles: db.roles == switchyard_config::RolesMode::Copy,
            placeholders: Some(&db.placeholders),
        },
    )
    .await
    .map_err(|e| (Step::Migrate, e))?;
    if m.applied.is_empty() {
        observer.step(
            Step::Migrate,
            StepState::Skipped,
            &format!(
                "nothing to apply (schema version {})",
                m.schema_version.as_deref().unwrap_or("none")
            ),
        );
    } else {
        observer.step(
            Step::Migrate,
            StepState::Done,
            &format!(
                "applied {} (schema version {})",
                m.applied.join(", "),
                m.schema_version.as_deref().unwrap_or("none")
            ),
        );
    }
    if let Some(h) = holder {
        observer.step(
            Step::Verify,
            StepState::Running,
            "against the clone's snapshot",
        );
        let v = verify::verify(db, db.jobs.max(1), Some(&h.id), Output::Quiet)
            .await
            .map_err(|e| (Step::Verify, e))?;
        if !v.passed {
            return Err((Step::Verify, SyncError::Other(summary(&v))));
        }
        observer.step(Step::Verify, StepState::Done, &summary(&v));
        return Ok(false);
    }
    let g = state::gate_status(db)
        .await
        .map_err(|e| (Step::Verify, e))?;
    if g.verified {
        observer.step(Step::Verify, StepState::Skipped, &g.reason);
        return Ok(false);
    }
    Ok(true)
}

fn summary(v: &verify::VerifyReport) -> String {
    if v.passed {
        format!("{} tables equal", v.tables.len())
    } else {
        let mut parts: Vec<String> = v
            .tables
            .iter()
            .filter(|t| t.status != "equal")
            .map(|t| {
                let keys: Vec<String> = t
                    .differences
                    .iter()
                    .take(3)
                    .map(|d| format!("{} {}", d.key, d.kind))
                    .collect();
                if keys.is_empty() {
                    format!("{}: {}", t.table, t.status)
                } else {
                    format!("{}: {} ({})", t.table, t.status, keys.join(", "))
                }
            })
            .collect();
        parts.extend(v.problems.iter().cloned());
        format!(
            "{} of {} tables differ: {}",
            v.mismatched(),
            v.tables.len(),
            parts.join("; ")
        )
    }
}
