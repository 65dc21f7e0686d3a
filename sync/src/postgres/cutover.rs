//! The database half of cutover: make the replica the primary, with writes
//! held at the proxy by the caller.
//!
//! [`switch`] moves the primary from the source of `from` to its target:
//!
//! 1. wait until the target has applied everything the source had written
//!    (writes are held, so this position no longer moves for the app);
//! 2. copy every sequence (owned, identity and free-standing) so the new
//!    primary's values are ≥ the old one's;
//! 3. with reverse sync, publish the new primary's tables (only the columns
//!    the old primary has: PostgreSQL 15 column lists);
//! 4. disable the old subscription and wait for its worker to stop;
//! 5. with reverse sync, create the slot on the new primary and the
//!    subscription on the old one (no copy: both hold the same data now).
//!
//! Until step 5 completes nothing is lost by giving up: [`switch`] undoes
//! steps 3–5 (the old subscription is enabled again) and the caller releases
//! the held writes to the old primary. [`finish`] then removes the old
//! direction's subscription, slot and publication; it runs after the writes
//! are released, since nothing depends on it.

use std::time::{Duration, Instant};
use switchyard_config::DatabaseConfig;
use tokio_postgres::Client;

use crate::error::{Side, SyncError};
use crate::pg;
use crate::primary::CutoverKind;
use crate::replicate::parts::*;
use crate::replicate::{names, wait_caught_up_on, CatchUp, Direction};
pub use crate::replication::{SwitchError, SwitchReport};

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
    };
    let old_primary = pg::connect_owner(old, url_of(db, old))
        .await
        .map_err(failed)?;
    let new_primary = pg::connect_owner(from.target(), url_of(db, from.target()))
        .await
        .map_err(failed)?;
    // No statement may outlive the deadline (a lock held by someone else
    // would otherwise hold the writes forever).
    bound(&old_primary, old, deadline).await.map_err(failed)?;
    bound(&new_primary, from.target(), deadline)
        .await
        .map_err(failed)?;
    switch_on(db, from, kind, deadline, &old_primary, &new_primary).await
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
    let failed = |source: SyncError| SwitchError::Failed {
        source_side: old,
        source,
    };
    if let Some(mut report) = recover(db, from, old_primary, new_primary)
        .await
        .map_err(failed)?
    {
        // Committed before a restart: make sure the records say so.
        let recorded = crate::state::read_cutovers(new_primary, from.target())
            .await
            .ok()
            .and_then(|r| r.last().map(|r| r.primary));
        if recorded != Some(from.target()) {
            match crate::state::record_cutover_on(new_primary, from.target(), Ok(old_primary), kind)
                .await
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

    // 1. Catch up.
    let left = deadline.saturating_duration_since(Instant::now());
    let caught = wait_caught_up_on(old_primary, db, from, left)
        .await
        .map_err(failed)?;
    let (lsn, waited) = match caught {
        CatchUp::CaughtUp { lsn, waited } => (lsn, waited),
        CatchUp::Behind {
            lsn,
            confirmed,
            lag_bytes,
        } => {
            return Err(SwitchError::Timeout {
                source_side: old,
                target: from.target(),
                lsn,
                waited_ms: left.as_millis() as u64,
                behind: match (confirmed, lag_bytes) {
                    (Some(c), Some(b)) => format!("it had applied up to {c}, {b} bytes behind"),
                    _ => "its subscription is not connected".into(),
                },
            })
        }
    };
    step("catch_up");

    // 2. Sequences.
    let sequences = copy_sequences(old_primary, old, new_primary, from.target())
        .await
        .map_err(failed)?;
    step("sequences");

    // 3–5, undone on failure.
    let mut undo = Undo::default();
    let result = async {
        let mut not_replicated = Vec::new();
        let back = from.flipped();
        let back_names = names(db, back);
        if db.reverse {
            let (tables, skipped) =
                shared_tables(new_primary, from.target(), old_primary, old).await?;
            not_replicated = skipped;
            create_publication(new_primary, from.target(), &back_names.publication, &tables)
                .await?;
            undo.publication = true;
        }
        step("publish");
        let fwd = names(db, from);
        set_enabled(new_primary, from.target(), &fwd.subscription, false).await?;
        undo.disabled = true;
        wait_worker_gone(new_primary, from.target(), &fwd.subscription, deadline).await?;
        step("stop_old_subscription");
        if db.reverse {
            // Leftovers of an earlier interrupted switch are ours.
            drop_slot(new_primary, from.target(), &back_names.slot).await?;
            let created = new_primary
                .query(
                    "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[&back_names.slot],
                )
                .await
                .map_err(|e| {
                    SyncError::query(
                        from.target(),
                        format!("creating replication slot {}", back_names.slot),
                        &e,
                    )
                });
            created?;
            undo.slot = true;
            step("create_slot");
            if Instant::now() >= deadline {
                return Err(SyncError::Other("the cutover timeout passed".into()));
            }
            drop_subscription(old_primary, old, &back_names.subscription).await?;
            create_subscription(db, back, old_primary).await?;
            undo.subscription = true;
            step("subscribe_back");
        }
        // Recorded before the switch counts: in both databases (the new
        // primary's first; one short statement each, writes still held), so
        // every later command knows which side is the primary and nothing
        // ever writes over it. A new primary that cannot record it undoes
        // the switch; the old primary's record is best effort (the newer
        // generation wins when they are read).
        undo.record = true;
        let warning =
            crate::state::record_cutover_on(new_primary, from.target(), Ok(old_primary), kind)
                .await?;
        step("record");
        Ok::<_, SyncError>((not_replicated, warning))
    }
    .await;
    match result {
        Ok((not_replicated, warning)) => Ok(SwitchReport {
            from,
            primary: from.target(),
            caught_up_lsn: lsn,
            catch_up_ms: waited.as_millis() as u64,
            sequences,
            reverse: db.reverse,
            not_replicated,
            steps,
            already_done: false,
            warnings: warning.into_iter().collect(),
        }),
        Err(e) => {
            // Undoing gets a few seconds of its own, past the deadline.
            let grace = Instant::now() + Duration::from_secs(5);
            let _ = bound(old_primary, old, grace).await;
            let _ = bound(new_primary, from.target(), grace).await;
            undo.run(db, from, old_primary, new_primary).await;
            if Instant::now() >= deadline {
                let target = from.target();
                return Err(SwitchError::Timeout {
                    source_side: old,
                    target,
                    lsn,
                    waited_ms: waited.as_millis() as u64,
                    behind: format!("setting up reverse replication did not finish in time: {e}"),
                });
            }
            Err(failed(e))
        }
    }
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
        return Ok(Some(SwitchReport {
            from,
            primary: from.target(),
            caught_up_lsn: String::new(),
            catch_up_ms: 0,
            sequences: 0,
            reverse: db.reverse,
            not_replicated: Vec::new(),
            steps: Vec::new(),
            already_done: true,
            warnings: Vec::new(),
        }));
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
        subscription: false,
        record: false,
    };
    undo.run(db, from, old, new).await;
    Ok(None)
}

/// What [`switch`] must take back when it gives up.
#[derive(Default)]
struct Undo {
    publication: bool,
    disabled: bool,
    slot: bool,
    subscription: bool,
    /// The cutover may have been recorded (in either database).
    record: bool,
}

impl Undo {
    async fn run(&self, db: &DatabaseConfig, from: Direction, old: &Client, new: &Client) {
        let back = names(db, from.flipped());
        let fwd = names(db, from);
        if self.record {
            for (c, side) in [(new, from.target()), (old, from.source())] {
                let _ = crate::state::unrecord_cutover(c, side, from.target()).await;
            }
        }
        if self.subscription {
            let _ = drop_subscription(old, from.source(), &back.subscription).await;
        }
        if self.slot {
            let _ = drop_slot(new, from.target(), &back.slot).await;
        }
        if self.publication {
            let _ = drop_publication(new, from.target(), &back.publication).await;
        }
        if self.disabled {
            if let Err(e) = set_enabled(new, from.target(), &fwd.subscription, true).await {
                tracing::error!(error = %e, "could not enable the old subscription again after a failed cutover: run `switchyard sync replicate`");
            }
        }
    }
}

/// Removes the old direction's objects after a switch: its subscription on
/// the new primary, its slot and publication on the old primary.
pub async fn finish(db: &DatabaseConfig, from: Direction) -> Result<(), SyncError> {
    let n = names(db, from);
    let old = from.source();
    let new_primary = pg::connect_owner(from.target(), url_of(db, from.target())).await?;
    drop_subscription(&new_primary, from.target(), &n.subscription).await?;
    let old_primary = pg::connect_owner(old, url_of(db, old)).await?;
    drop_slot(&old_primary, old, &n.slot).await?;
    drop_publication(&old_primary, old, &n.publication).await?;
    Ok(())
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
