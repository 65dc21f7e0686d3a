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
    // The previous cutover's check and cleanup end first (bounded: they
    // run with timeouts of their own).
    let objects = inner.db.objects();
    let mut objects_guard = match tokio::time::timeout(
        std::time::Duration::from_secs(30),
        objects.clone().lock_owned(),
    )
    .await
    {
        Ok(g) => Some(g),
        Err(_) => {
            tracing::warn!(
                "the previous cutover's cleanup still runs after 30 s; cutting over anyway"
            );
            None
        }
    };
    let started = Instant::now();
    let deadline = started + db.cutover_timeout;
    let held_before = dp.write_gate().held_total;
    if pin {
        dp.hold_writes();
    }
    let outcome: Outcome = async {
        let not = |why: String| Outcome::NotSwitched { why, undone: true };
        if !dp
            .writes_drained(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            return not(format!(
                "writes already sent to {stable} did not finish within cutover_timeout"
            ));
        }
        if db.mode != SyncMode::Replicate {
            // Nothing carries blue's writes to a snapshot: one that blue
            // moved on from since the gate last looked must not take over.
            let left = deadline.saturating_duration_since(Instant::now());
            let stale = match tokio::time::timeout(
                left,
                switchyard_sync::stale_copy(&db, direction_from(stable)),
            )
            .await
            {
                Err(_) => {
                    return not(format!(
                        "{candidate}'s and {stable}'s databases did not answer within cutover_timeout"
                    ))
                }
                Ok(Err(e)) => return not(format!("cannot read {candidate}'s state: {e}")),
                Ok(Ok(s)) => s,
            };
            if let Some(why) = stale {
                return not(format!(
                    "{candidate}'s copy is stale: {why}; run `switchyard sync clone --replace --verify`"
                ));
            }
            // Recorded before the writes move, in both databases: the next
            // release prepares the other colour's database from this one.
            let left = deadline.saturating_duration_since(Instant::now());
            return match tokio::time::timeout(
                left,
                switchyard_sync::primary::record_cutover(&db, side_of(candidate), kind),
            )
            .await
            {
                Err(_) => not(format!(
                    "recording the cutover in {candidate}'s database did not finish within cutover_timeout"
                )),
                Ok(Err(e)) => not(format!("cannot record the cutover: {e}")),
                Ok(Ok(())) => Outcome::Switched(None),
            };
        }
        let from = direction_from(stable);
        match switchyard_sync::replication::switch(&db, from, kind, deadline).await {
            Ok(r) => Outcome::Switched(Some(r)),
            Err(e @ switchyard_sync::replication::SwitchError::Ambiguous { .. }) => {
                // Writes stay held until the new primary's own record tells.
                resolve(&db, from, candidate, started, e.to_string()).await
            }
            Err(e) => Outcome::NotSwitched {
                undone: e.undone(),
                why: e.to_string(),
            },
        }
    }
    .await;
    let Some(inner) = weak.upgrade() else {
        if !matches!(outcome, Outcome::Unknown(_)) {
            dp.release_writes();
        }
        return;
    };
    match outcome {
        Outcome::Switched(report) => {
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
            // A fact by now: held in memory even if the state file cannot
            // be written (a restart would run the cutover again and find it
            // committed).
            let r = inner.record_fact(
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
                // No longer in cutover (the hook did not run).
                dp.release_writes();
                tracing::error!(error = %e, "the database switched, but the rollout had moved on");
                inner.db.lock().last_cutover = Some(record);
            }
            let fenced = report
                .as_ref()
                .and_then(|r| r.fence.as_ref())
                .map(|f| format!("; {}", f.describe(side_of(stable))))
                .unwrap_or_default();
            let _ = inner.transition("controller", |_| {
                let mut c = Change::new(
                    EventKind::CutoverCompleted,
                    Some(format!(
                        "{candidate} takes writes; writes were held {held_ms} ms ({held_requests} waited){fenced}"
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
                // Check what the old primary took after the switch, then
                // remove the old direction's objects; then the status reads
                // the new direction at once.
                let db = db.clone();
                let weak = Arc::downgrade(&inner);
                // Taken before this task lets go of it, so no later cutover
                // can slip in between.
                let held = objects_guard.take();
                tokio::spawn(async move {
                    let mut held = held;
                    let mut pause = std::time::Duration::from_secs(1);
                    let mut told = false;
                    loop {
                        let guard = match held.take() {
                            Some(g) => g,
                            None => objects.clone().lock_owned().await,
                        };
                        let checked = switchyard_sync::replication::finish(&db, report.from).await;
                        drop(guard);
                        let Some(inner) = weak.upgrade() else { return };
                        match checked {
                            Ok(f) => {
                                inner.db.lock().repair = None;
                                checked_after_switch(&inner, &f).await;
                                return;
                            }
                            Err(e) => {
                                // A side that cannot be reached: the old
                                // objects stay (a slot keeps WAL), and what
                                // the old primary took is not known yet.
                                // Tried again until both answer.
                                let why = format!(
                                    "after the cutover, {stable}'s old replication objects could not be checked and removed yet ({e}): a loss is not ruled out until they are; retrying"
                                );
                                inner.db.lock().repair = Some(why.clone());
                                if !told {
                                    told = true;
                                    tracing::warn!("{why}");
                                    let _ = inner.transition("controller", |_| {
                                        Ok(Change::new(
                                            EventKind::CutoverChecked,
                                            Some(why.clone()),
                                        ))
                                    });
                                }
                                // A later cutover moved on: its own cleanup
                                // covers both directions.
                                if inner.store.lock().stable != candidate {
                                    inner.db.lock().repair = None;
                                    return;
                                }
                            }
                        }
                        drop(inner);
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(std::time::Duration::from_secs(10));
                    }
                });
            }
        }
        Outcome::NotSwitched { why, undone } => {
            dp.release_writes();
            let held_ms = started.elapsed().as_millis() as u64;
            let held_requests = dp.write_gate().held_total - held_before;
            // What is claimed is what holds by construction: every write was
            // held at the proxy or went to the old primary, which stayed the
            // primary; the new one took none.
            let state_of_replication = if undone || db.mode != SyncMode::Replicate {
                String::new()
            } else {
                format!(
                    " Replication is not fully restored yet ({candidate}'s database may be stale): switchyard repairs it as soon as both databases answer"
                )
            };
            let reason = format!(
                "cutover did not complete: {why}. Writes were released to {stable} after {held_ms} ms: {stable} stayed the primary and took every write, {candidate}'s database took none while they were held.{state_of_replication} Resume to try again"
            );
            tracing::warn!(%reason, "cutover timed out");
            let _ = inner.record_fact(
                "controller",
                |s| {
                    if s.rollout.phase != Phase::Cutover || s.rollout.step_started_ms != started_ms
                    {
                        return Err(Conflict("no longer in cutover".into()));
                    }
                    let mut c = rollout::cutover_failed(s, reason.clone());
                    c.extra.held_ms = Some(held_ms);
                    c.extra.held_requests = Some(held_requests);
                    Ok(c)
                },
                || {},
            );
            inner.db.lock().last_cutover = Some(CutoverRecord {
                at: events::rfc3339(events::now_ms()),
                completed: false,
                held_ms,
                held_requests,
                reason: Some(why),
            });
            if !undone && db.mode == SyncMode::Replicate {
                repair(&inner, &db, direction_from(stable));
            }
        }
        Outcome::Unknown(why) => {
            // Never release a write to a database that may be behind: held
            // writes are answered 503 until the outcome is known.
            dp.refuse_held_writes();
            let held_ms = started.elapsed().as_millis() as u64;
            let reason = format!(
                "needs attention: {why}. Writes are refused (503, sent nowhere) until switchyard can read the outcome from {candidate}'s database; it keeps trying"
            );
            tracing::error!(%reason, "cutover outcome unknown");
            inner.db.lock().attention = Some(reason.clone());
            let _ = inner.transition("controller", |_| {
                let mut c = Change::new(EventKind::CutoverTimedOut, Some(reason.clone()));
                c.extra.held_ms = Some(held_ms);
                Ok(c)
            });
            settle_unknown(&inner, &db, stable, candidate, started_ms);
        }
    }
}

/// Reports the check after a switch: an event, and with a finding the
/// promoted state's reason and the last cutover say so.
async fn checked_after_switch(inner: &Arc<Inner>, f: &switchyard_sync::replication::FinishReport) {
    let (reason, detail, lost) = (f.describe(), json!(f), !f.nothing_lost());
    if lost {
        tracing::warn!(%reason, "cutover check");
    } else {
        tracing::info!(%reason, "cutover check");
    }
    let _ = inner.transition("controller", |s| {
        if lost && s.rollout.phase == Phase::Promoted {
            s.rollout.reason = Some(format!("promoted, but {reason}"));
        }
        let mut c = Change::new(EventKind::CutoverChecked, Some(reason.clone()));
        c.extra.detail = Some(detail.clone());
        Ok(c)
    });
    if lost {
        if let Some(c) = inner.db.lock().last_cutover.as_mut() {
            c.reason = Some(reason);
        }
    }
    if let Some(g) = inner.database_gate() {
        if let Some(d) = g.as_database() {
            d.refresh().await;
        }
    }
}

/// How the database part of a cutover ended.
enum Outcome {
    /// The candidate's database is the primary (report: replicate mode).
    Switched(Option<switchyard_sync::cutover::SwitchReport>),
    /// It is not; the old primary took every write. `undone`: everything
    /// the switch did was taken back.
    NotSwitched { why: String, undone: bool },
    /// Nobody can tell yet.
    Unknown(String),
}

/// After an ambiguous commit, asks the new primary (repeatedly, with the
/// writes still held) whether it recorded the cutover, for as long as the
/// proxy may hold them.
async fn resolve(
    db: &DatabaseConfig,
    from: Direction,
    candidate: Colour,
    started: Instant,
    why: String,
) -> Outcome {
    let limit = started + switchyard_config::MAX_WRITE_HOLD - std::time::Duration::from_secs(5);
    let mut last = why.clone();
    while Instant::now() < limit {
        match switchyard_sync::cutover::committed(
            db,
            side_of(candidate),
            std::time::Duration::from_secs(2),
        )
        .await
        {
            Ok(true) => {
                return Outcome::Switched(Some(switchyard_sync::cutover::SwitchReport::recovered(
                    from, db.reverse,
                )))
            }
            Ok(false) => {
                return Outcome::NotSwitched {
                    why: format!("{why}; it did not commit"),
                    undone: false,
                }
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    Outcome::Unknown(format!("{why}; still unreadable: {last}"))
}

/// Keeps asking whether an unknown cutover committed; once it can tell,
/// the writes go to the database that is the primary and the rollout
/// goes on from there (promoted, or paused as after a failed cutover).
fn settle_unknown(
    inner: &Arc<Inner>,
    db: &DatabaseConfig,
    stable: Colour,
    candidate: Colour,
    started_ms: u64,
) {
    let weak = Arc::downgrade(inner);
    let db = db.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let committed = switchyard_sync::cutover::committed(
                &db,
                side_of(candidate),
                std::time::Duration::from_secs(3),
            )
            .await;
            let Some(inner) = weak.upgrade() else { return };
            let Ok(committed) = committed else { continue };
            let pin = db.writes == WritePolicy::Stable;
            inner.db.lock().attention = None;
            if committed {
                if pin {
                    inner.dp.set_writer(Some(candidate));
                }
                let _ = inner.transition_then(
                    "controller",
                    |s| {
                        if s.rollout.phase != Phase::Cutover
                            || s.rollout.step_started_ms != started_ms
                        {
                            return Err(Conflict("no longer in cutover".into()));
                        }
                        Ok(rollout::finish_cutover(s))
                    },
                    || inner.dp.release_writes(),
                );
                inner.dp.release_writes();
            } else {
                inner.dp.release_writes();
                let reason = format!(
                    "cutover did not complete: {candidate}'s database did not record it, so {stable} stayed the primary (writes were refused, never sent anywhere, while it was unknown). Resume to try again"
                );
                let _ = inner.transition("controller", |s| {
                    if s.rollout.phase != Phase::Cutover || s.rollout.step_started_ms != started_ms
                    {
                        return Err(Conflict("no longer in cutover".into()));
                    }
                    Ok(rollout::cutover_failed(s, reason.clone()))
                });
                repair(&inner, &db, direction_from(stable));
            }
            return;
        }
    });
}

/// Repairs, in the background and until it succeeds, what an undone
/// cutover could not take back (a side did not answer): the status shows it
/// meanwhile, and an event says when it is done.
pub(crate) fn repair(inner: &Arc<Inner>, db: &DatabaseConfig, from: Direction) {
    let weak = Arc::downgrade(inner);
    let db = db.clone();
    inner.db.lock().repair = Some(format!(
        "the undone cutover left replication {} half changed: repairing as soon as both databases answer",
        from.arrow()
    ));
    tokio::spawn(async move {
        let mut pause = std::time::Duration::from_millis(500);
        loop {
            let r = switchyard_sync::cutover::repair_undone(&db, from).await;
            let Some(inner) = weak.upgrade() else { return };
            match r {
                Ok(left) if left.is_empty() => {
                    inner.db.lock().repair = None;
                    let _ = inner.transition("controller", |_| {
                        Ok(Change::new(
                            EventKind::DatabaseCleanup,
                            Some(format!(
                                "repaired what the undone cutover left: replication {} runs again",
                                from.arrow()
                            )),
                        ))
                    });
                    return;
                }
                Ok(left) => {
                    inner.db.lock().repair = Some(format!(
                        "the undone cutover is not fully repaired yet: {}; retrying",
                        left.join("; ")
                    ))
                }
                Err(e) => {
                    inner.db.lock().repair = Some(format!(
                        "the undone cutover is not repaired yet ({e}); retrying"
                    ))
                }
            }
            drop(inner);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_secs(10));
        }
    });
}
