//! Cutover with `[database]`: the controller holds new writes at the proxy,
//! lets in-flight writes finish, has `switchyard_sync::cutover` make the
//! candidate's database the primary (replicate mode), switches the writer
//! colour, and releases the held requests, which then go to the new writer.
//! The hold is reported as `cutover_completed` with `held_ms` and
//! `held_requests`.
//!
//! Past `cutover_timeout` (or on any failure before the database switch is
//! committed) the held writes are released to the old writer, nothing having
//! changed, and the rollout pauses (`cutover_timed_out`): nothing is lost
//! and no request is answered with an error.
//!
//! A restart in the middle finds the rollout still in `cutover` and runs
//! this again: writes are held from start-up until it is resolved, and the
//! database switch recognises one that already committed.

use serde_json::json;
use std::sync::{Arc, Weak};
use std::time::Instant;
use switchyard_config::{DatabaseConfig, SyncMode, WritePolicy};
use switchyard_proxy::Colour;
use switchyard_sync::replication::Direction;

use crate::database::CutoverRecord;
use crate::model::events::{self, EventKind};
use crate::model::phase::Phase;
use crate::model::rollout::{self, Change, Conflict};
use crate::Inner;

/// Starts the cutover task for the cutover that began at `started_ms`,
/// unless it already runs (or ran) for it.
pub(crate) fn ensure_running(inner: &Arc<Inner>, started_ms: u64, db: &DatabaseConfig) {
    let mut live = inner.db.lock();
    if live.cutover_for == Some(started_ms) {
        return;
    }
    live.cutover_for = Some(started_ms);
    live.cutover_running = true;
    let weak = Arc::downgrade(inner);
    let db = db.clone();
    tokio::spawn(async move {
        run(weak.clone(), started_ms, db).await;
        if let Some(inner) = weak.upgrade() {
            inner.db.lock().cutover_running = false;
        }
    });
}

/// The direction replication runs while `stable`'s database is the primary.
pub(crate) fn direction_from(stable: Colour) -> Direction {
    Direction::from_source(side_of(stable))
}

/// The database side of a colour.
pub(crate) fn side_of(c: Colour) -> switchyard_sync::Side {
    match c {
        Colour::Blue => switchyard_sync::Side::Blue,
        Colour::Green => switchyard_sync::Side::Green,
    }
}

async fn run(weak: Weak<Inner>, started_ms: u64, db: DatabaseConfig) {
    let Some(inner) = weak.upgrade() else { return };
    let (stable, candidate, back) = {
        let s = inner.store.lock();
        if s.rollout.phase != Phase::Cutover || s.rollout.step_started_ms != started_ms {
            return;
        }
        (s.stable, s.candidate(), s.rollout.back)
    };
    let dp = inner.dp.clone();
    let pin = db.writes == WritePolicy::Stable;
    let kind = if back {
        switchyard_sync::CutoverKind::Rollback
    } else {
        switchyard_sync::CutoverKind::Promote
    };
    let _ = inner.transition("controller", |_| {
        let mut c = Change::new(
            EventKind::CutoverStarted,
            Some(format!(
                "holding writes while {candidate}'s database becomes the primary (at most {})",
                switchyard_config::format_duration(db.cutover_timeout)
            )),
        );
        c.extra.detail = Some(json!({ "from": stable, "to": candidate, "back": back }));
        Ok(c)
    });
    let started = Instant::now();
    let deadline = started + db.cutover_timeout;
    let held_before = dp.write_gate().held_total;
    if pin {
        dp.hold_writes();
    }
    let outcome: Result<Option<switchyard_sync::cutover::SwitchReport>, String> = async {
        if !dp
            .writes_drained(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            return Err(format!(
                "writes already sent to {stable} did not finish within cutover_timeout"
            ));
        }
        if db.mode != SyncMode::Replicate {
            // Nothing carries blue's writes to a snapshot: one that blue
            // moved on from since the gate last looked must not take over.
            let left = deadline.saturating_duration_since(Instant::now());
            let stale = tokio::time::timeout(
                left,
                switchyard_sync::stale_copy(&db, direction_from(stable)),
            )
            .await
            .map_err(|_| {
                format!("{candidate}'s and {stable}'s databases did not answer within cutover_timeout")
            })?
            .map_err(|e| format!("cannot read {candidate}'s state: {e}"))?;
            if let Some(why) = stale {
                return Err(format!(
                    "{candidate}'s copy is stale: {why}; run `switchyard sync clone --replace --verify`"
                ));
            }
            // Recorded before the writes move, in both databases: the next
            // release prepares the other colour's database from this one.
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::timeout(
                left,
                switchyard_sync::primary::record_cutover(&db, side_of(candidate), kind),
            )
            .await
            .map_err(|_| {
                format!("recording the cutover in {candidate}'s database did not finish within cutover_timeout")
            })?
            .map_err(|e| format!("cannot record the cutover: {e}"))?;
            return Ok(None);
        }
        switchyard_sync::replication::switch(&db, direction_from(stable), kind, deadline)
            .await
            .map(Some)
            .map_err(|e| e.to_string())
    }
    .await;
    let Some(inner) = weak.upgrade() else {
        dp.release_writes();
        return;
    };
    match outcome {
        Ok(report) => {
            if pin {
                dp.set_writer(Some(candidate));
            }
            let held_ms = started.elapsed().as_millis() as u64;
            let held_requests = dp.write_gate().held_total - held_before;
            let record = CutoverRecord {
                at: events::rfc3339(events::now_ms()),
                completed: true,
                held_ms,
                held_requests,
                reason: None,
            };
            // Persist the new primary before a single write reaches it;
            // release the writes before a status can show it.
            let r = inner.transition_then(
                "controller",
                |s| {
                    if s.rollout.phase != Phase::Cutover || s.rollout.step_started_ms != started_ms
                    {
                        return Err(Conflict("no longer in cutover".into()));
                    }
                    let mut c = rollout::finish_cutover(s);
                    c.extra.held_ms = Some(held_ms);
                    c.extra.held_requests = Some(held_requests);
                    Ok(c)
                },
                || {
                    inner.db.lock().last_cutover = Some(record.clone());
                    dp.release_writes();
                },
            );
            if let Err(e) = r {
                // Not recorded (or no longer in cutover), so the hook did
                // not run: the writes go on anyway.
                dp.release_writes();
                tracing::error!(error = %e, "the database switched, but the new state could not be recorded");
                inner.db.lock().last_cutover = Some(record);
            }
            let _ = inner.transition("controller", |_| {
                let mut c = Change::new(
                    EventKind::CutoverCompleted,
                    Some(format!(
                        "{candidate} takes writes; writes were held {held_ms} ms ({held_requests} waited)"
                    )),
                );
                c.extra.held_ms = Some(held_ms);
                c.extra.held_requests = Some(held_requests);
                c.extra.detail = report.as_ref().map(|r| json!(r));
                Ok(c)
            });
            tracing::info!(held_ms, held_requests, writer = %candidate, "cutover completed");
            for w in report.iter().flat_map(|r| &r.warnings) {
                tracing::warn!("{w}");
            }
            if let Some(report) = report {
                // The old direction's objects are no longer needed; then the
                // status reads the new direction at once.
                let db = db.clone();
                let gate = inner
                    .gates
                    .lock()
                    .ok()
                    .and_then(|g| g.iter().find(|g| g.as_database().is_some()).cloned());
                tokio::spawn(async move {
                    if let Err(e) = switchyard_sync::replication::finish(&db, report.from).await {
                        tracing::warn!(error = %e, "removing the old replication objects failed: run `switchyard sync cleanup` once you are done with reverse sync, or retry");
                    }
                    if let Some(d) = gate.as_deref().and_then(|g| g.as_database()) {
                        d.refresh().await;
                    }
                });
            }
        }
        Err(why) => {
            dp.release_writes();
            let held_ms = started.elapsed().as_millis() as u64;
            let held_requests = dp.write_gate().held_total - held_before;
            let reason = format!(
                "cutover did not complete: {why}. Writes were released to {stable} after {held_ms} ms, nothing was lost; resume to try again"
            );
            tracing::warn!(%reason, "cutover timed out");
            let _ = inner.transition("controller", |s| {
                if s.rollout.phase != Phase::Cutover || s.rollout.step_started_ms != started_ms {
                    return Err(Conflict("no longer in cutover".into()));
                }
                let mut c = rollout::cutover_failed(s, reason.clone());
                c.extra.held_ms = Some(held_ms);
                c.extra.held_requests = Some(held_requests);
                Ok(c)
            });
            inner.db.lock().last_cutover = Some(CutoverRecord {
                at: events::rfc3339(events::now_ms()),
                completed: false,
                held_ms,
                held_requests,
                reason: Some(why),
            });
        }
    }
}
