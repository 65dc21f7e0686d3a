//! The database half of cutover: make the replica the primary, with writes
//! held at the proxy by the caller.
//!
//! [`switch`] moves the primary from the source of `from` to its target:
//!
//! 1. **fence** the old primary: its application roles become read-only
//!    there and their sessions end (a writing transaction is given a moment
//!    to finish first), so writes that bypass the proxy cannot land on it
//!    ([`crate::postgres::fence`]);
//! 2. wait until the target has applied everything the source had written
//!    (writes are held and the source fenced, so this position no longer
//!    moves for the app);
//! 3. copy every sequence (owned, identity and free-standing) so the new
//!    primary's values are ≥ the old one's;
//! 4. with reverse sync, publish the new primary's tables (only the columns
//!    the old primary has: column lists);
//! 5. disable the old subscription and wait for its worker to stop;
//! 6. with reverse sync, create the slot on the new primary and the
//!    subscription on the old one (no copy: both hold the same data now);
//! 7. lift the new primary's own fence (it was fenced while it was the
//!    replica) and record the cutover in both databases: the commit point.
//!
//! Every step is bounded by the deadline on the client side too (a
//! partitioned server never answers, whatever its `statement_timeout`).
//! Until step 7 completes nothing is lost by giving up: [`switch`] undoes
//! what it did (in a few seconds of its own), advances the old primary's
//! sequences past the new one's, and the caller releases the held writes
//! to the old primary, which took none of them meanwhile and lacks nothing.
//! Only when the record's own answer is lost is the outcome unknown
//! ([`SwitchError::Ambiguous`]): the caller must not release writes then
//! until [`committed`] tells.
//!
//! [`finish`] then checks what the old primary took after the switch (the
//! changes its slot holds that committed after what the new primary
//! replayed: named by table and key) and removes the old direction's
//! subscription, slot and publication; it runs after the writes are
//! released, since nothing depends on it.

use std::time::{Duration, Instant};
use switchyard_config::DatabaseConfig;
use tokio_postgres::Client;

use crate::error::{Side, SyncError};
use crate::pg;
use crate::postgres::fence;
use crate::primary::CutoverKind;
use crate::replicate::parts::*;
use crate::replicate::{names, wait_received_on, CatchUp, Direction};
pub use crate::replication::{FinishReport, SwitchError, SwitchReport};

/// Undoing a failed switch gets this long of its own, past the deadline.
const UNDO_GRACE: Duration = Duration::from_secs(5);

/// How long past the deadline a step that does not answer is cut off.
const BACKSTOP: Duration = Duration::from_millis(250);

/// Moves the primary from `from.source()` to `from.target()` (see the
/// module documentation). `deadline` bounds the whole switch; steps that
/// cannot be undone only start while time remains.
pub async fn switch(
    db: &DatabaseConfig,
    from: Direction,
    kind: CutoverKind,
    deadline: Instant,
) -> Result<SwitchReport, SwitchError> {
    let old = from.source();
    let failed = |source: SyncError| SwitchError::Failed {
        source_side: old,
        source,
        undone: true,
    };
    let connect = |side: Side| async move {
        within(
            deadline,
            side,
            "connecting",
            pg::connect_owner(side, url_of(db, side)),
        )
        .await
    };
    let old_primary = connect(old).await.map_err(failed)?;
    let new_primary = connect(from.target()).await.map_err(failed)?;
    // No statement may outlive the deadline (a lock held by someone else
    // would otherwise hold the writes forever).
    within(
        deadline,
        old,
        "bounding statements",
        bound(&old_primary, old, deadline),
    )
    .await
    .map_err(failed)?;
    within(
        deadline,
        from.target(),
        "bounding statements",
        bound(&new_primary, from.target(), deadline),
    )
    .await
    .map_err(failed)?;
    switch_on(db, from, kind, deadline, &old_primary, &new_primary).await
}

/// Fault injection for the cutover stories and the fault schedule:
/// `SWITCHYARD_CUTOVER_PAUSE=<step>:<ms>` sleeps that long after that step
/// of the switch (`fence`, `catch_up`, `sequences`, `publish`,
/// `stop_old_subscription`, `create_slot`, `subscribe_back`), so a test can
/// kill or cut off a server at that point. Unset in production; the pause
/// counts against the cutover's own deadline like any slow step.
async fn pause_after(step: &str) {
    let Ok(v) = std::env::var("SWITCHYARD_CUTOVER_PAUSE") else {
        return;
    };
    let Some((at, ms)) = v.split_once(':') else {
        return;
    };
    if at == step {
        if let Ok(ms) = ms.parse::<u64>() {
            tracing::warn!(step, ms, "SWITCHYARD_CUTOVER_PAUSE: pausing the cutover");
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
}

/// Waits until no walsender uses slot `slot` (bounded by `deadline`).
async fn wait_slot_free(
    c: &Client,
    side: Side,
    slot: &str,
    deadline: Instant,
) -> Result<(), SyncError> {
    loop {
        let active: bool = c
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| SyncError::query(side, "watching the replication slot", &e))?
            .is_some_and(|r| r.get(0));
        if !active {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(SyncError::Other(format!(
                "{side}: slot {slot} stayed in use after its subscriber stopped"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs `f` until `deadline`: past it, an error saying which side did not
/// answer in time.
async fn within<T>(
    deadline: Instant,
    side: Side,
    what: &str,
    f: impl std::future::Future<Output = Result<T, SyncError>>,
) -> Result<T, SyncError> {
    match tokio::time::timeout_at(deadline.into(), f).await {
        Ok(r) => r,
        Err(_) => Err(SyncError::Other(format!(
            "{side}'s database did not answer in time ({what}): the cutover timeout passed"
        ))),
    }
}

/// [`switch`] on connections to both primaries, bounded by `deadline`.
async fn switch_on(
    db: &DatabaseConfig,
    from: Direction,
    kind: CutoverKind,
    deadline: Instant,
    old_primary: &Client,
    new_primary: &Client,
) -> Result<SwitchReport, SwitchError> {
    let old = from.source();
    let target = from.target();
    let recovered = within(
        deadline,
        old,
        "looking at an earlier cutover",
        recover(db, from, old_primary, new_primary),
    )
    .await
    .map_err(|source| SwitchError::Failed {
        source_side: old,
        source,
        undone: true,
    })?;
    if let Some(mut report) = recovered {
        // Committed before a restart: make sure the fences and the records
        // say so.
        let fenced = fence::fence(old_primary, old, db, Instant::now(), deadline).await;
        match fenced {
            Ok(f) => report.fence = Some(f),
            Err(e) => report.warnings.push(format!("fencing {old}: {e}")),
        }
        if let Err(e) = fence::unfence(new_primary, target).await {
            report
                .warnings
                .push(format!("lifting {target}'s fence: {e}"));
        }
        let recorded = crate::state::read_cutovers(new_primary, target)
            .await
            .ok()
            .and_then(|r| r.last().map(|r| r.primary));
        if recorded != Some(target) {
            match crate::state::record_cutover_on(new_primary, target, Ok(old_primary), kind).await
            {
                Ok(w) => report.warnings.extend(w),
                Err(e) => report.warnings.push(e.to_string()),
            }
        }
        return Ok(report);
    }
    let mut steps = Vec::new();
    let mut t = Instant::now();
    let mut step = |name: &str| {
        steps.push((name.to_string(), t.elapsed().as_millis() as u64));
        t = Instant::now();
    };
    // What the undo must take back is marked before each step starts: a
    // step cut off by the deadline may have happened on the server.
    let mut undo = Undo::default();
    let mut caught_up = None;
    let mut fence_report = None;
    let mut sequences = 0;
    // Steps bound themselves by the deadline and say which one ran out;
    // this is the backstop for one that does not answer at all.
    let result = tokio::time::timeout_at((deadline + BACKSTOP).into(), async {
        // 1. Fence the old primary.
        undo.fenced = true;
        let budget = deadline.saturating_duration_since(Instant::now());
        fence_report =
            Some(fence::fence(old_primary, old, db, Instant::now() + budget / 4, deadline).await?);
        step("fence");
        pause_after("fence").await;

        // 2. Catch up.
        let left = deadline.saturating_duration_since(Instant::now());
        match wait_received_on(old_primary, db, from, left).await? {
            CatchUp::CaughtUp { lsn, waited } => {
                // Received; applied usually follows within moments (what is
                // not is found by the check below, which undoes the switch).
                let left = deadline.saturating_duration_since(Instant::now());
                let _ = crate::replicate::wait_caught_up_on(
                    old_primary,
                    db,
                    from,
                    (left / 2).min(Duration::from_secs(2)),
                )
                .await?;
                caught_up = Some((lsn, waited))
            }
            CatchUp::Behind {
                lsn,
                confirmed,
                lag_bytes,
            } => {
                return Err(Step::Timeout {
                    lsn,
                    waited_ms: left.as_millis() as u64,
                    behind: match (confirmed, lag_bytes) {
                        (Some(c), Some(b)) => format!("it had applied up to {c}, {b} bytes behind"),
                        _ => "its subscription is not connected".into(),
                    },
                })
            }
        }
        step("catch_up");
        pause_after("catch_up").await;

        // 3. Sequences.
        undo.sequences = true;
        sequences = copy_sequences(old_primary, old, new_primary, target).await?;
        step("sequences");
        pause_after("sequences").await;

        // 4–6.
        let mut not_replicated = Vec::new();
        let back = from.flipped();
        let back_names = names(db, back);
        if db.reverse {
            let (tables, skipped) = shared_tables(new_primary, target, old_primary, old).await?;
            not_replicated = skipped;
            undo.publication = true;
            create_publication(new_primary, target, &back_names.publication, &tables).await?;
        }
        step("publish");
        pause_after("publish").await;
        let fwd = names(db, from);
        undo.disabled = true;
        set_enabled(new_primary, target, &fwd.subscription, false).await?;
        wait_worker_gone(new_primary, target, &fwd.subscription, deadline).await?;
        // Measured, not assumed: every transaction the old primary
        // committed (its slot's) is one the target applied (its origin).
        // The slot is read once its walsender is gone.
        wait_slot_free(old_primary, old, &fwd.slot, deadline).await?;
        let unapplied = check_after_switch(old_primary, old, new_primary, target, &fwd).await;
        if !unapplied.nothing_lost() {
            return Err(Step::Failed(SyncError::Other(format!(
                "{target} had not applied everything {old} committed before the switch: {}",
                unapplied.describe()
            ))));
        }
        step("stop_old_subscription");
        pause_after("stop_old_subscription").await;
        if db.reverse {
            // Leftovers of an earlier interrupted switch are ours.
            drop_slot(new_primary, target, &back_names.slot).await?;
            undo.slot = true;
            new_primary
                .query(
                    "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[&back_names.slot],
                )
                .await
                .map_err(|e| {
                    SyncError::query(
                        target,
                        format!("creating replication slot {}", back_names.slot),
                        &e,
                    )
                })?;
            step("create_slot");
            pause_after("create_slot").await;
            drop_subscription(old_primary, old, &back_names.subscription).await?;
            undo.subscription = true;
            create_subscription(db, back, old_primary).await?;
            step("subscribe_back");
            pause_after("subscribe_back").await;
        }
        // 7. The new primary takes writes: its own fence goes, and the
        // cutover is recorded in both databases (the new primary's first;
        // one short statement each, writes still held), so every later
        // command knows which side is the primary and nothing ever writes
        // over it. A new primary that cannot record it undoes the switch;
        // the old primary's record is best effort (the newer generation
        // wins when they are read).
        undo.unfenced_new = true;
        let unfenced = fence::unfence(new_primary, target).await?;
        undo.record = true;
        let warning = crate::state::record_cutover_on(new_primary, target, Ok(old_primary), kind)
            .await
            .map_err(Step::Record)?;
        step("record");
        pause_after("record").await;
        Ok::<_, Step>((not_replicated, unfenced, warning))
    })
    .await
    .unwrap_or_else(|_| {
        Err(Step::Failed(SyncError::Other(format!(
            "the cutover timeout passed before {target}'s database became the primary"
        ))))
    });
    match result {
        Ok((not_replicated, unfenced, warning)) => {
            let (lsn, waited) = caught_up.unwrap_or_default();
            Ok(SwitchReport {
                from,
                primary: target,
                caught_up_lsn: lsn,
                catch_up_ms: waited.as_millis() as u64,
                sequences,
                reverse: db.reverse,
                not_replicated,
                steps,
                already_done: false,
                warnings: warning.into_iter().collect(),
                fence: fence_report,
                unfenced,
            })
        }
        Err(e) => {
            // Undoing gets a few seconds of its own, past the deadline.
            let grace = Instant::now() + UNDO_GRACE;
            let left = tokio::time::timeout_at(grace.into(), async {
                let _ = bound(old_primary, old, grace).await;
                let _ = bound(new_primary, target, grace).await;
                undo.run(db, from, old_primary, new_primary).await
            })
            .await
            .unwrap_or_else(|_| {
                vec![format!(
                    "undoing did not finish within {}s (a side does not answer)",
                    UNDO_GRACE.as_secs()
                )]
            });
            let undone = left.is_empty();
            let note = if undone {
                String::new()
            } else {
                format!("; not undone yet: {}", left.join("; "))
            };
            Err(match e {
                Step::Record(source) => SwitchError::Ambiguous {
                    target,
                    source,
                    undone,
                },
                Step::Timeout {
                    lsn,
                    waited_ms,
                    behind,
                } => SwitchError::Timeout {
                    source_side: old,
                    target,
                    lsn,
                    waited_ms,
                    behind: format!("{behind}{note}"),
                    undone,
                },
                Step::Failed(source) => SwitchError::Failed {
                    source_side: old,
                    source: if undone {
                        source
                    } else {
                        SyncError::Other(format!("{source}{note}"))
                    },
                    undone,
                },
            })
        }
    }
}

/// How a step of the switch failed.
enum Step {
    /// The target did not catch up in time.
    Timeout {
        lsn: String,
        waited_ms: u64,
        behind: String,
    },
    /// Recording the cutover on the new primary failed: it may have
    /// committed without the answer arriving.
    Record(SyncError),
    Failed(SyncError),
}

impl From<SyncError> for Step {
    fn from(e: SyncError) -> Step {
        Step::Failed(e)
    }
}

/// Whether the cutover to `primary` committed, by the new primary's own
/// record (for a switch whose outcome is [`SwitchError::Ambiguous`]).
/// `Err` while the new primary cannot be read.
pub async fn committed(
    db: &DatabaseConfig,
    primary: Side,
    within_: Duration,
) -> Result<bool, SyncError> {
    let deadline = Instant::now() + within_;
    let c = self::within(
        deadline,
        primary,
        "connecting",
        pg::connect(primary, url_of(db, primary)),
    )
    .await?;
    let rows = self::within(
        deadline,
        primary,
        "reading the cutover records",
        crate::state::read_cutovers(&c, primary),
    )
    .await?;
    let other = self::within(
        deadline,
        primary.other(),
        "reading the cutover records",
        async {
            let o = pg::connect(primary.other(), url_of(db, primary.other())).await?;
            crate::state::read_cutovers(&o, primary.other()).await
        },
    )
    .await
    .unwrap_or_default();
    // Committed: the new primary's newest record names it, newer than any
    // record of the other side.
    let newest_other = other.last().map_or(0, |r| r.generation);
    Ok(rows
        .last()
        .is_some_and(|r| r.primary == primary && r.generation > newest_other))
}

/// Limits every statement of `c` to the time left until `until`.
async fn bound(c: &Client, side: Side, until: Instant) -> Result<(), SyncError> {
    let ms = until
        .saturating_duration_since(Instant::now())
        .as_millis()
        .max(1);
    pg::exec(
        c,
        side,
        "bounding the cutover's statements",
        &format!("SET statement_timeout = {ms}; SET lock_timeout = {ms}"),
    )
    .await
}

/// Looks at what an earlier, interrupted switch left. One that committed
/// (with reverse sync: the old primary subscribes to the new one; without:
/// the old subscription is disabled) is reported as done. A partial one is
/// undone (its reverse objects dropped, the old subscription enabled) so the
/// switch can run from the start.
async fn recover(
    db: &DatabaseConfig,
    from: Direction,
    old: &Client,
    new: &Client,
) -> Result<Option<SwitchReport>, SyncError> {
    let back = names(db, from.flipped());
    let fwd = names(db, from);
    let done = if db.reverse {
        subscription_exists(old, from.source(), &back.subscription).await?
    } else {
        new.query_opt(
            "SELECT 1 FROM pg_subscription WHERE subname = $1 AND NOT subenabled \
               AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&fwd.subscription],
        )
        .await
        .map_err(|e| SyncError::query(from.target(), "looking up the subscription", &e))?
        .is_some()
    };
    if done {
        return Ok(Some(SwitchReport::recovered(from, db.reverse)));
    }
    let undo = Undo {
        publication: true,
        disabled: new
            .query_opt(
                "SELECT 1 FROM pg_subscription WHERE subname = $1 AND NOT subenabled \
                   AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[&fwd.subscription],
            )
            .await
            .map_err(|e| SyncError::query(from.target(), "looking up the subscription", &e))?
            .is_some(),
        slot: true,
        ..Undo::default()
    };
    undo.run(db, from, old, new).await;
    Ok(None)
}

/// What [`switch`] must take back when it gives up.
#[derive(Default)]
struct Undo {
    fenced: bool,
    sequences: bool,
    publication: bool,
    disabled: bool,
    slot: bool,
    subscription: bool,
    unfenced_new: bool,
    /// The cutover may have been recorded (in either database).
    record: bool,
}

impl Undo {
    /// Takes back what was marked, newest first; returns what could not be
    /// (empty when everything is as before the switch).
    async fn run(
        &self,
        db: &DatabaseConfig,
        from: Direction,
        old: &Client,
        new: &Client,
    ) -> Vec<String> {
        let back = names(db, from.flipped());
        let fwd = names(db, from);
        let (old_side, new_side) = (from.source(), from.target());
        let mut left = Vec::new();
        let mut note = |what: &str, r: Result<(), SyncError>| {
            if let Err(e) = r {
                left.push(format!("{what}: {e}"));
            }
        };
        if self.record {
            for (c, side) in [(new, new_side), (old, old_side)] {
                note(
                    &format!("taking back the cutover record in {side}"),
                    crate::state::unrecord_cutover(c, side, new_side).await,
                );
            }
        }
        if self.unfenced_new {
            // It was the replica: fenced again, as it was.
            note(
                &format!("fencing {new_side} again"),
                fence::fence(
                    new,
                    new_side,
                    db,
                    Instant::now(),
                    Instant::now() + UNDO_GRACE,
                )
                .await
                .map(drop),
            );
        }
        if self.subscription {
            note(
                &format!("dropping {old_side}'s subscription {}", back.subscription),
                drop_subscription(old, old_side, &back.subscription)
                    .await
                    .map(drop),
            );
        }
        if self.slot {
            note(
                &format!("dropping {new_side}'s slot {}", back.slot),
                drop_slot(new, new_side, &back.slot).await.map(drop),
            );
        }
        if self.publication {
            note(
                &format!("dropping {new_side}'s publication {}", back.publication),
                drop_publication(new, new_side, &back.publication)
                    .await
                    .map(drop),
            );
        }
        if self.disabled {
            note(
                &format!(
                    "enabling {new_side}'s subscription {} again (then `switchyard sync replicate`)",
                    fwd.subscription
                ),
                set_enabled(new, new_side, &fwd.subscription, true).await,
            );
        }
        if self.sequences {
            // The old primary keeps the writes: its sequences go past
            // everything either side could have handed out.
            note(
                &format!("advancing {old_side}'s sequences"),
                copy_sequences(new, new_side, old, old_side).await.map(drop),
            );
        }
        if self.fenced {
            note(
                &format!("lifting {old_side}'s fence"),
                fence::unfence(old, old_side).await.map(drop),
            );
        }
        for l in &left {
            tracing::error!("after a failed cutover: {l}");
        }
        left
    }
}

/// What is left to repair after a cutover that was undone only in part (a
/// side stopped answering): whatever of the switch toward `from.target()`
/// is still there is taken back, as [`switch`] would have. Returns what is
/// still left (empty: repaired). Safe to call again and again.
pub async fn repair_undone(db: &DatabaseConfig, from: Direction) -> Result<Vec<String>, SyncError> {
    let old = pg::connect_owner(from.source(), url_of(db, from.source())).await?;
    let new = pg::connect_owner(from.target(), url_of(db, from.target())).await?;
    let fwd = names(db, from);
    let disabled = new
        .query_opt(
            "SELECT 1 FROM pg_subscription WHERE subname = $1 AND NOT subenabled \
               AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&fwd.subscription],
        )
        .await
        .map_err(|e| SyncError::query(from.target(), "looking up the subscription", &e))?
        .is_some();
    let undo = Undo {
        fenced: true,
        publication: true,
        disabled,
        slot: true,
        subscription: true,
        ..Undo::default()
    };
    Ok(undo.run(db, from, &old, &new).await)
}

/// Checks what the old primary took after the switch, then removes the old
/// direction's objects: its subscription on the new primary, its slot and
/// publication on the old primary. The check peeks at the old slot for
/// transactions that committed after the last one the new primary applied
/// (its subscription's replication origin), and names their rows.
pub async fn finish(db: &DatabaseConfig, from: Direction) -> Result<FinishReport, SyncError> {
    let n = names(db, from);
    let old = from.source();
    let new_primary = pg::connect_owner(from.target(), url_of(db, from.target())).await?;
    let old_primary = pg::connect_owner(old, url_of(db, old)).await?;
    let report = check_after_switch(&old_primary, old, &new_primary, from.target(), &n).await;
    drop_subscription(&new_primary, from.target(), &n.subscription).await?;
    drop_slot(&old_primary, old, &n.slot).await?;
    drop_publication(&old_primary, old, &n.publication).await?;
    Ok(report)
}

/// The check of [`finish`]; what could not be checked says why.
async fn check_after_switch(
    old: &Client,
    old_side: Side,
    new: &Client,
    new_side: Side,
    n: &crate::replicate::Names,
) -> FinishReport {
    let mut report = FinishReport {
        old_primary: Some(old_side),
        ..FinishReport::default()
    };
    let replayed = new
        .query_opt(
            "SELECT pg_replication_origin_progress('pg_' || s.oid, false)::text FROM pg_subscription s \
              WHERE s.subname = $1 AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&n.subscription],
        )
        .await;
    let replayed = match replayed {
        Ok(Some(r)) => r.get::<_, Option<String>>(0),
        Ok(None) => None,
        Err(e) => {
            report.unchecked = Some(format!("{new_side}: {}", crate::error::pg_message(&e)));
            return report;
        }
    };
    // No progress: the subscription never applied a transaction, so the
    // slot's confirmed position (where it started) is what it has.
    let replayed = match replayed {
        Some(r) => Some(r),
        None => old
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&n.slot],
            )
            .await
            .ok()
            .flatten()
            .and_then(|r| r.get::<_, Option<String>>(0)),
    };
    let Some(replayed) = replayed else {
        report.unchecked = Some(format!(
            "neither {new_side}'s subscription {} nor {old_side}'s slot {} says what was replayed",
            n.subscription, n.slot
        ));
        return report;
    };
    report.replayed_lsn = Some(replayed.clone());
    // Decoding reads only flushed WAL: wait until what was written so far
    // is flushed (with synchronous_commit = off a commit can be written but
    // not flushed yet for up to wal_writer_delay, 3x that at worst).
    for _ in 0..100 {
        match old
            .query_one(
                "SELECT pg_current_wal_flush_lsn() >= pg_current_wal_insert_lsn()",
                &[],
            )
            .await
        {
            Ok(r) if r.get::<_, bool>(0) => break,
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(_) => break,
        }
    }
    let rows = old
        .query(
            "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, \
                    'proto_version', '1', 'publication_names', $2)",
            &[&n.slot, &n.publication],
        )
        .await;
    let rows = match rows {
        Ok(r) => r,
        Err(e) => {
            report.unchecked = Some(format!(
                "{old_side}'s slot {}: {}",
                n.slot,
                crate::error::pg_message(&e)
            ));
            return report;
        }
    };
    let messages: Vec<Vec<u8>> = rows.iter().map(|r| r.get(0)).collect();
    let after = crate::replicate::pgoutput::lsn(&replayed).unwrap_or(0);
    match crate::replicate::pgoutput::changes_after(&messages, after) {
        Ok(changes) => {
            report.checked = true;
            report.writes_after = changes.len() as u64;
            report.rows = changes.iter().take(20).map(|c| c.to_string()).collect();
        }
        Err(e) => report.unchecked = Some(format!("{old_side}'s slot {}: {e}", n.slot)),
    }
    report
}

async fn set_enabled(c: &Client, side: Side, sub: &str, on: bool) -> Result<(), SyncError> {
    if !subscription_exists(c, side, sub).await? {
        return Err(SyncError::Other(format!(
            "{side}: subscription {sub} does not exist: replication is not running in the direction cutover expects; run `switchyard sync status`"
        )));
    }
    pg::exec(
        c,
        side,
        &format!(
            "{} subscription {sub}",
            if on { "enabling" } else { "disabling" }
        ),
        &format!(
            "ALTER SUBSCRIPTION {} {}",
            pg::ident(sub),
            if on { "ENABLE" } else { "DISABLE" }
        ),
    )
    .await
}

/// Ends the worker of the disabled subscription `sub` and waits until it
/// has exited. By now it has applied everything (the catch-up came first,
/// and writes are held), so there is nothing to lose; left alone it would
/// notice the disabled subscription only at its next wake-up, up to a
/// second later, all of it time the writes are held.
pub(crate) async fn wait_worker_gone(
    c: &Client,
    side: Side,
    sub: &str,
    deadline: Instant,
) -> Result<(), SyncError> {
    c.query(
        "SELECT pg_terminate_backend(st.pid) FROM pg_stat_subscription st JOIN pg_subscription s ON s.oid = st.subid \
          WHERE s.subname = $1 AND st.pid IS NOT NULL AND NOT s.subenabled \
            AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
        &[&sub],
    )
    .await
    .map_err(|e| SyncError::query(side, "ending the old subscription's worker", &e))?;
    loop {
        let running: bool = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_subscription st JOIN pg_subscription s ON s.oid = st.subid \
                  WHERE s.subname = $1 AND st.pid IS NOT NULL \
                    AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()))",
                &[&sub],
            )
            .await
            .map_err(|e| SyncError::query(side, "watching the subscription worker stop", &e))?
            .get(0);
        if !running {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(SyncError::Other(format!(
                "{side}: the worker of subscription {sub} did not stop before the cutover timeout"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The tables (and column lists) to publish from `new` (a primary) to `old`
/// (its replica): those both have, with only the columns both have (minus
/// generated columns, which are never published). Returns what is left out.
/// The cutover publishes these back to the old primary; the next release
/// widens the list once the replica has applied its migrations
/// ([`crate::postgres::reuse::widen`]).
pub(crate) async fn shared_tables(
    new: &Client,
    new_side: Side,
    old: &Client,
    old_side: Side,
) -> Result<(Vec<PublishedTable>, Vec<String>), SyncError> {
    const COLS: &str =
        "SELECT n.nspname || '.' || c.relname, a.attname::text, a.attgenerated <> '' \
                          FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
                          JOIN pg_namespace n ON n.oid = c.relnamespace \
                         WHERE c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped";
    let filter = format!(
        "{COLS} AND {} ORDER BY 1, a.attnum",
        pg::SYSTEM_SCHEMA_FILTER
    );
    let (new_rows, old_rows) = tokio::try_join!(
        async {
            new.query(&filter, &[])
                .await
                .map_err(|e| SyncError::query(new_side, "reading table columns", &e))
        },
        async {
            old.query(&filter, &[])
                .await
                .map_err(|e| SyncError::query(old_side, "reading table columns", &e))
        }
    )?;
    let old_cols: std::collections::HashSet<(String, String)> = old_rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    let old_tables: std::collections::HashSet<String> =
        old_cols.iter().map(|(t, _)| t.clone()).collect();
    let publishable = publishable_tables(new, new_side).await?;
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for t in publishable {
        if !old_tables.contains(&t.display) {
            skipped.push(format!("table {} (only on {new_side})", t.display));
            continue;
        }
        let mut cols = Vec::new();
        let mut all = true;
        for r in new_rows
            .iter()
            .filter(|r| r.get::<_, String>(0) == t.display)
        {
            let (name, generated): (String, bool) = (r.get(1), r.get(2));
            if generated {
                continue;
            }
            if old_cols.contains(&(t.display.clone(), name.clone())) {
                cols.push(pg::ident(&name));
            } else {
                all = false;
                skipped.push(format!("column {}.{name} (only on {new_side})", t.display));
            }
        }
        out.push(PublishedTable {
            columns: (!all).then_some(cols),
            ..t
        });
    }
    Ok((out, skipped))
}

/// Sets every sequence the new primary shares with the old one so that its
/// next value is at least the old one's (never moving a sequence back).
/// Returns how many were set.
pub async fn copy_sequences(
    from: &Client,
    from_side: Side,
    to: &Client,
    to_side: Side,
) -> Result<usize, SyncError> {
    let values = sequence_values(from, from_side).await?;
    let theirs: std::collections::HashMap<String, Seq> = sequence_values(to, to_side)
        .await?
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    let mut sql = String::new();
    let mut n = 0;
    for s in values {
        let Some(t) = theirs.get(&s.name) else {
            continue;
        };
        let target = if t.inc >= 0 {
            s.next.max(t.next)
        } else {
            s.next.min(t.next)
        };
        if target != t.next {
            // Past the bound: the sequence is exhausted on the old primary
            // too; leave it at its last value so nextval fails the same way.
            let set = if target > t.max {
                format!("{}, true", t.max)
            } else if target < t.min {
                format!("{}, true", t.min)
            } else {
                format!("{target}, false")
            };
            sql.push_str(&format!(
                "SELECT setval({}, {set});\n",
                pg::literal(&s.name)
            ));
        }
        n += 1;
    }
    if !sql.is_empty() {
        pg::exec(to, to_side, "setting sequence values", &sql).await?;
    }
    Ok(n)
}

/// Sequences whose next value on the target of `dir` is behind the
/// source's: (name, the source's next, the target's next).
pub async fn sequences_behind(
    dir: Direction,
    blue: &Client,
    green: &Client,
) -> Result<Vec<(String, i64, i64)>, SyncError> {
    let theirs: std::collections::HashMap<String, Seq> = sequence_values(green, dir.target())
        .await?
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    Ok(sequence_values(blue, dir.source())
        .await?
        .into_iter()
        .filter_map(|b| {
            let g = theirs.get(&b.name)?;
            let behind = if b.inc >= 0 {
                g.next < b.next
            } else {
                g.next > b.next
            };
            behind.then(|| (b.name.clone(), b.next, g.next))
        })
        .collect())
}

/// A sequence and the value `nextval` would return next.
struct Seq {
    name: String,
    next: i64,
    inc: i64,
    max: i64,
    min: i64,
}

/// Every user sequence with its next value and bounds.
async fn sequence_values(c: &Client, side: Side) -> Result<Vec<Seq>, SyncError> {
    let rows = c
        .query(
            &format!(
                "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), s.seqincrement, \
                        s.seqmax, s.seqmin \
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                   JOIN pg_sequence s ON s.seqrelid = c.oid \
                  WHERE c.relkind = 'S' AND {}",
                pg::SYSTEM_SCHEMA_FILTER
            ),
            &[],
        )
        .await
        .map_err(|e| SyncError::query(side, "listing sequences", &e))?;
    let mut out = Vec::new();
    for r in &rows {
        let (name, inc, max, min): (String, i64, i64, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let v = c
            .query_one(&format!("SELECT last_value, is_called FROM {name}"), &[])
            .await
            .map_err(|e| SyncError::query(side, format!("reading sequence {name}"), &e))?;
        let (last, called): (i64, bool) = (v.get(0), v.get(1));
        let next = if called {
            last.saturating_add(inc)
        } else {
            last
        };
        out.push(Seq {
            name,
            next,
            inc,
            max,
            min,
        });
    }
    Ok(out)
}
