//! The whole database workflow of a release, as the controller runs it when
//! a rollout starts: preflight → clone (with the replication slot in
//! replicate mode) → migrate → verify → replicate, from the primary (the
//! source of `dir`) into the candidate's database (its target), in either
//! direction. Each step reports to an [`Observer`]; a step that is already
//! done and still valid is skipped (a complete copy of today's primary whose
//! slot or subscription exists, migrations already applied, a passing
//! verification at the current schema version after the last copy, a
//! running subscription), so starting again after a failure picks up where
//! it stopped.
//!
//! After a cutover with reverse sync the candidate's database is a live
//! replica of the primary: it is reused, not copied ([`crate::postgres::reuse`]),
//! brought up to the new release's schema (the migrations it lacks, then
//! the tables and columns replication did not carry), and verified against
//! the live primary. A replica that cannot be reused (reverse off, cleaned
//! up, its slot lost, not caught up) or that fails that verification
//! (written to directly, diverged) is cloned afresh from the primary.
//! Nothing here ever writes to the primary's tables.
//!
//! Right after a clone the verification compares the target with the
//! clone's own snapshot (still held), before replication starts; otherwise
//! it runs against the live source while replicating (see [`crate::verify`]).

use switchyard_config::{DatabaseConfig, SyncMode};

use crate::error::SyncError;
use crate::primary::Primary;
use crate::replicate::{self, Direction, ObjectKind};
use crate::replication::url_of;
pub use crate::workflow::{Observer, PrepareError, Step, StepState};
use crate::{clone, compat, migrate, pg, preflight, state, verify, Output};

/// Runs the workflow of the release in direction `dir`. See the module
/// documentation.
pub async fn run(
    db: &DatabaseConfig,
    dir: Direction,
    observer: &dyn Observer,
) -> Result<(), PrepareError> {
    match run_once(db, dir, observer, true).await {
        Err(Attempt::ReusedDiverged(why)) => {
            observer.step(
                Step::Clone,
                StepState::Running,
                &format!(
                    "the reused replica in {}'s database failed verification ({why}): it was written to directly or diverged; cloning it afresh from {}",
                    dir.target(),
                    dir.source()
                ),
            );
            run_once(db, dir, observer, false)
                .await
                .map_err(|a| match a {
                    Attempt::Failed(e) => e,
                    Attempt::ReusedDiverged(why) => PrepareError {
                        step: Step::Verify,
                        error: SyncError::Other(why),
                    },
                })
        }
        Err(Attempt::Failed(e)) => Err(e),
        Ok(()) => Ok(()),
    }
}

/// How one pass of the workflow ended badly.
enum Attempt {
    Failed(PrepareError),
    /// The candidate's database was reused as a replica and then failed
    /// verification: it must be copied afresh.
    ReusedDiverged(String),
}

impl From<PrepareError> for Attempt {
    fn from(e: PrepareError) -> Attempt {
        Attempt::Failed(e)
    }
}

async fn run_once(
    db: &DatabaseConfig,
    dir: Direction,
    observer: &dyn Observer,
    allow_reuse: bool,
) -> Result<(), Attempt> {
    let fail = |step: Step, error: SyncError| {
        observer.step(step, StepState::Failed, &error.to_string());
        PrepareError { step, error }
    };
    let (src, dst) = (dir.source(), dir.target());

    // Preflight.
    observer.step(Step::Preflight, StepState::Running, "");
    let report = preflight::preflight(db, dir)
        .await
        .map_err(|e| fail(Step::Preflight, e))?;
    if let Some(blocked) = report.blocked() {
        return Err(fail(Step::Preflight, blocked).into());
    }
    observer.step(Step::Preflight, StepState::Done, "no blockers");

    // Clone, unless the target holds a usable copy or replica of the primary.
    observer.step(Step::Clone, StepState::Running, "");
    let (target, primary) = async {
        let target = pg::connect_target(dst, url_of(db, dst)).await?;
        let source = pg::connect(src, url_of(db, src)).await?;
        let primary = clone::primary_of(dir, &source, &target).await?;
        // The candidate's database is never the primary: a caller whose
        // idea of the stable colour disagrees with the records stops here.
        primary.refuse_target(dst)?;
        Ok::<_, SyncError>((target, primary))
    }
    .await
    .map_err(|e| fail(Step::Clone, e))?;
    let outcome = match copy_or_reuse(db, dir, &target, &primary, observer, allow_reuse).await {
        Ok(o) => o,
        Err(e) => return Err(fail(Step::Clone, e).into()),
    };
    drop(target);
    let (holder, reused) = match outcome {
        Copy::Kept { replica } => (None, replica),
        Copy::Reused => (None, true),
        Copy::Cloned(h) => (Some(h), false),
    };
    let result = after_clone(db, dir, observer, holder.as_ref()).await;
    if let Some(h) = holder {
        h.release().await;
    }
    let needs_verify = result.map_err(|(s, e)| fail(s, e))?;

    // Replicate before a verification against the live source: the target
    // must be streaming for verify to tell lag from divergence. A reused
    // replica streams already; what it lacked is widened and backfilled.
    if db.mode == SyncMode::Replicate {
        observer.step(Step::Replicate, StepState::Running, "");
        let r = replicate::subscribe(db, dir)
            .await
            .map_err(|e| fail(Step::Replicate, e))?;
        let widened = crate::postgres::reuse::widen(db, dir)
            .await
            .map_err(|e| fail(Step::Replicate, e))?;
        let mut detail = if r.already_running {
            format!("{dst} already streams from slot {}", r.slot)
        } else if r.enabled_again {
            format!(
                "{dst}'s subscription was disabled (an interrupted cutover): enabled again, streaming from slot {}",
                r.slot
            )
        } else {
            format!("{dst} streams {src}'s changes from slot {}", r.slot)
        };
        if !widened.tables.is_empty() || !widened.columns.is_empty() {
            detail.push_str(&format!("; widened: {}", widened.describe()));
        }
        observer.step(
            Step::Replicate,
            if r.already_running && widened.tables.is_empty() && widened.columns.is_empty() {
                StepState::Skipped
            } else {
                StepState::Done
            },
            &detail,
        );
    }
    if needs_verify {
        observer.step(
            Step::Verify,
            StepState::Running,
            &format!("against live {src}"),
        );
        let v = verify::verify(db, dir, db.jobs.max(1), None, Output::Quiet)
            .await
            .map_err(|e| fail(Step::Verify, e))?;
        if !v.passed {
            if reused && allow_reuse {
                observer.step(Step::Verify, StepState::Failed, &summary(&v));
                return Err(Attempt::ReusedDiverged(summary(&v)));
            }
            return Err(fail(Step::Verify, SyncError::Other(summary(&v))).into());
        }
        observer.step(Step::Verify, StepState::Done, &summary(&v));
    }
    Ok(())
}

/// What the clone step ended with.
enum Copy {
    /// The target already holds a complete copy (or a reused replica,
    /// `replica`) of today's primary.
    Kept { replica: bool },
    /// The target is a live replica since a cutover, reused now.
    Reused,
    /// A fresh copy, with the snapshot still held.
    Cloned(pg::SnapshotHolder),
}

/// The clone step: keep a usable copy, reuse a live replica, or copy
/// afresh from the primary.
async fn copy_or_reuse(
    db: &DatabaseConfig,
    dir: Direction,
    target: &tokio_postgres::Client,
    primary: &Primary,
    observer: &dyn Observer,
    allow_reuse: bool,
) -> Result<Copy, SyncError> {
    let (src, dst) = (dir.source(), dir.target());
    let replicate_mode = db.mode == SyncMode::Replicate;
    let last = state::last_clone(target, dst).await?;
    let repl = replicate::status(db).await;
    let n = replicate::names(db, dir);
    let streamable = |kind: ObjectKind| {
        repl.objects
            .iter()
            .any(|o| o.kind == kind && o.direction == dir)
    };
    let was_replica = last
        .as_ref()
        .is_some_and(|c| c.kind == crate::gate::CloneKind::Replica);
    let kept = match &last {
        Some(c) if c.state == crate::state::CloneState::Complete => {
            (allow_reuse || !was_replica)
                && c.generation == primary.generation
                && (!replicate_mode
                    || (c.slot.as_deref() == Some(n.slot.as_str())
                        && (streamable(ObjectKind::Slot) || streamable(ObjectKind::Subscription))))
        }
        _ => false,
    };
    if kept {
        let what = match last.as_ref().map(|c| c.kind) {
            Some(crate::gate::CloneKind::Replica) => "a reused replica of",
            _ => "a complete copy of",
        };
        observer.step(
            Step::Clone,
            StepState::Skipped,
            &format!(
                "{dst} holds {what} {src}'s database{}",
                if replicate_mode {
                    " that replication keeps up to date"
                } else {
                    ""
                }
            ),
        );
        return Ok(Copy::Kept {
            replica: was_replica,
        });
    }
    let check = if allow_reuse {
        crate::postgres::reuse::check(db, dir, primary).await?
    } else {
        Err("it failed verification as a replica".into())
    };
    let why_not = match check {
        Ok(replica) => {
            let report = serde_json::json!({ "reused": replica });
            state::record_reuse(
                target,
                dst,
                &replica.slot,
                &replica.caught_up_lsn,
                primary.generation,
                &report,
            )
            .await?;
            observer.step(
                Step::Clone,
                StepState::Skipped,
                &format!(
                    "reused {dst}'s database: a live replica of {src}'s since the cutover{}, caught up at {}; no table copied",
                    replica
                        .since
                        .as_deref()
                        .map(|s| format!(" at {s}"))
                        .unwrap_or_default(),
                    replica.caught_up_lsn
                ),
            );
            return Ok(Copy::Reused);
        }
        Err(why) => why,
    };
    let contents = clone::target_contents(target, dst).await?;
    // Replace only a database switchyard itself manages: one it copied
    // into, or one a recorded cutover demoted (the primary has everything
    // it had).
    let replace = contents.is_some() && (last.is_some() || primary.generation > 0);
    if replace {
        // A subscription of the old copy must not stream into the new one.
        replicate::cleanup(db).await?;
    }
    let (r, h) = clone::clone(db, dir, db.jobs.max(1), replace, Output::Quiet).await?;
    observer.step(
        Step::Clone,
        StepState::Done,
        &format!(
            "{} tables, {} rows in {:.1}s from {src}{}",
            r.tables.len(),
            r.rows,
            r.seconds,
            if replace {
                format!(" (replaced {dst}'s earlier contents: {why_not})")
            } else {
                String::new()
            }
        ),
    );
    Ok(Copy::Cloned(h))
}

/// Migrate, and verify against the clone's snapshot while it is held.
/// Returns whether a verification against the live source is still needed.
async fn after_clone(
    db: &DatabaseConfig,
    dir: Direction,
    observer: &dyn Observer,
    holder: Option<&pg::SnapshotHolder>,
) -> Result<bool, (Step, SyncError)> {
    let (src, dst) = (dir.source(), dir.target());
    observer.step(Step::Migrate, StepState::Running, "");
    let published = if db.mode == SyncMode::Replicate {
        let source = pg::connect(src, url_of(db, src))
            .await
            .map_err(|e| (Step::Migrate, e))?;
        Some(
            compat::published_schema(&source, src, &replicate::names(db, dir).publication)
                .await
                .map_err(|e| (Step::Migrate, e))?,
        )
    } else {
        None
    };
    let m = migrate::migrate(
        &db.migrations,
        dst,
        url_of(db, dst),
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
                "nothing to apply to {dst} (schema version {})",
                m.schema_version.as_deref().unwrap_or("none")
            ),
        );
    } else {
        observer.step(
            Step::Migrate,
            StepState::Done,
            &format!(
                "applied {} to {dst} (schema version {})",
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
        let v = verify::verify(db, dir, db.jobs.max(1), Some(&h.id), Output::Quiet)
            .await
            .map_err(|e| (Step::Verify, e))?;
        if !v.passed {
            return Err((Step::Verify, SyncError::Other(summary(&v))));
        }
        observer.step(Step::Verify, StepState::Done, &summary(&v));
        return Ok(false);
    }
    let g = state::gate_status(db, dir)
        .await
        .map_err(|e| (Step::Verify, e))?;
    if g.verified {
        observer.step(Step::Verify, StepState::Skipped, &g.reason);
        return Ok(false);
    }
    Ok(true)
}

/// A verification's outcome in one line, naming what differs.
pub fn summary(v: &verify::VerifyReport) -> String {
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
        parts.extend(
            v.schema
                .iter()
                .filter(|d| d.expected.is_none())
                .take(5)
                .map(|d| d.to_string()),
        );
        parts.extend(v.problems.iter().cloned());
        format!(
            "{} of {} tables differ, {} schema objects differ unexpectedly: {}",
            v.mismatched(),
            v.tables.len(),
            v.schema.iter().filter(|d| d.expected.is_none()).count(),
            parts.join("; ")
        )
    }
}
