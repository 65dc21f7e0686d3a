//! The next release reuses what reverse sync built. After a cutover with
//! `reverse = true`, the old primary's database is a live replica of the
//! new primary: the release after it goes to that colour, and copying it
//! again would waste what replication already keeps.
//!
//! [`check`] says whether the candidate's database is such a replica: the
//! cutover records name the source the primary since a cutover, the
//! candidate subscribes to it with the subscription that cutover created,
//! the source still holds the slot (not `lost`), and the replica catches up.
//! It does not prove that nobody wrote to the replica directly: the
//! release's verification, which runs after the replica is brought up to
//! the new schema, compares every row and every object of both sides, and a
//! replica that diverged fails it (the workflow then clones afresh).
//!
//! [`widen`] brings in what reverse replication did not carry. At the
//! cutover it published only the tables and columns the old primary had
//! then; the candidate has now applied the migrations it lacked, so those
//! tables and columns exist on both sides:
//!
//! 1. the publication on the source is widened to every table and column
//!    both sides have (`ALTER PUBLICATION … SET TABLE`), and the candidate's
//!    subscription refreshed: a table it gained is emptied and copied by
//!    PostgreSQL's own table synchronisation, which meets the stream
//!    exactly;
//! 2. once the candidate has applied the source's log past the widening,
//!    its subscription is disabled (its replication origin then stands at
//!    the last change it applied, P), the columns it gained are copied from
//!    a snapshot of the source taken after that (S ≥ P), matched on the
//!    primary key, and the subscription is enabled again. It replays the
//!    changes after P, which carry the widened columns: a row changed after
//!    P ends at its newest values, one not changed keeps the snapshot's.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use switchyard_config::DatabaseConfig;
use tokio_postgres::Client;

use crate::error::{pg_message, Side, SyncError};
use crate::pg;
use crate::primary::Primary;
use crate::replicate::{names, CatchUp, Direction};
use crate::replication::url_of;

/// How long the candidate may take to catch up before it is not reused.
const CATCH_UP: Duration = Duration::from_secs(60);

/// A replica that can be reused, as [`check`] found it.
#[derive(Debug, Clone, Serialize)]
pub struct Replica {
    /// The slot on the source it streams from.
    pub slot: String,
    /// The source's position it had applied when checked.
    pub caught_up_lsn: String,
    /// The cutover that made it a replica (generation, time).
    pub since: Option<String>,
}

/// Whether the target of `dir` is a live replica of its source that the
/// release can reuse: `Ok(Ok(replica))`, or `Ok(Err(why not))`.
pub async fn check(
    db: &DatabaseConfig,
    dir: Direction,
    primary: &Primary,
) -> Result<Result<Replica, String>, SyncError> {
    let (src, dst) = (dir.source(), dir.target());
    if db.mode != switchyard_config::SyncMode::Replicate {
        return Ok(Err("snapshot mode keeps no replica".into()));
    }
    if primary.side != src || primary.generation == 0 {
        return Ok(Err(format!(
            "no cutover made {src}'s database the primary with {dst}'s replicating it"
        )));
    }
    let n = names(db, dir);
    let target = pg::connect_owner(dst, url_of(db, dst)).await?;
    match crate::replicate::subscription_enabled(&target, dst, &n.subscription).await? {
        None => {
            return Ok(Err(format!(
                "{dst} has no subscription {} to {src} (reverse = false, or removed by `switchyard sync cleanup`)",
                n.subscription
            )))
        }
        Some(false) => {
            // Disabled by an interrupted cutover: streaming again is what
            // reuse needs, and what `sync replicate` does.
            pg::exec(
                &target,
                dst,
                &format!("enabling subscription {}", n.subscription),
                &format!("ALTER SUBSCRIPTION {} ENABLE", pg::ident(&n.subscription)),
            )
            .await?;
        }
        Some(true) => {}
    }
    let source = pg::connect(src, url_of(db, src)).await?;
    let slot = source
        .query_opt(
            "SELECT coalesce(wal_status, 'reserved') FROM pg_replication_slots WHERE slot_name = $1",
            &[&n.slot],
        )
        .await
        .map_err(|e| SyncError::query(src, "looking up the replication slot", &e))?;
    match slot.map(|r| r.get::<_, String>(0)) {
        None => {
            return Ok(Err(format!(
                "the slot {} {dst} streamed from is gone from {src}",
                n.slot
            )))
        }
        Some(s) if s == "lost" => {
            return Ok(Err(format!(
                "the slot {} on {src} lost WAL {dst} had not received (max_slot_wal_keep_size)",
                n.slot
            )))
        }
        Some(_) => {}
    }
    match crate::replicate::wait_caught_up_on(&source, db, dir, CATCH_UP).await? {
        CatchUp::CaughtUp { lsn, .. } => Ok(Ok(Replica {
            slot: n.slot,
            caught_up_lsn: lsn,
            since: primary.since.clone(),
        })),
        CatchUp::Behind { lsn, confirmed, .. } => Ok(Err(format!(
            "{dst} did not catch up with {src} within {}s (it had applied up to {}, {src} was at {lsn})",
            CATCH_UP.as_secs(),
            confirmed.unwrap_or_else(|| "nothing".into())
        ))),
    }
}

/// What [`widen`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WidenReport {
    /// Tables newly published, copied by table synchronisation.
    pub tables: Vec<String>,
    /// Columns newly published (`schema.table.column`), backfilled.
    pub columns: Vec<String>,
    /// Rows whose widened columns were backfilled.
    pub rows: u64,
    pub seconds: f64,
}

impl WidenReport {
    /// For the workflow's step detail.
    pub fn describe(&self) -> String {
        if self.tables.is_empty() && self.columns.is_empty() {
            return "nothing to widen: replication already carries every table and column both sides have".into();
        }
        let mut parts = Vec::new();
        if !self.tables.is_empty() {
            parts.push(format!(
                "{} table(s) added and copied ({})",
                self.tables.len(),
                self.tables.join(", ")
            ));
        }
        if !self.columns.is_empty() {
            parts.push(format!(
                "{} column(s) added and backfilled in {} rows ({})",
                self.columns.len(),
                self.rows,
                self.columns.join(", ")
            ));
        }
        format!("{} in {:.1}s", parts.join("; "), self.seconds)
    }
}

/// Widens the replication of `dir` to every table and column both sides
/// have, and backfills what it did not carry before (see the module
/// documentation). The candidate must have applied its migrations.
pub async fn widen(db: &DatabaseConfig, dir: Direction) -> Result<WidenReport, SyncError> {
    let started = Instant::now();
    let (src, dst) = (dir.source(), dir.target());
    let n = names(db, dir);
    let source = pg::connect_owner(src, url_of(db, src)).await?;
    let target = pg::connect_owner(dst, url_of(db, dst)).await?;
    let (desired, _) = crate::postgres::cutover::shared_tables(&source, src, &target, dst).await?;
    let all_columns = table_columns(&source, src).await?;
    let current = published_columns(&source, src, &n.publication, &all_columns).await?;
    let mut report = WidenReport::default();
    let mut widened: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in &desired {
        let want: BTreeSet<String> = match &t.columns {
            Some(cols) => cols.iter().map(|c| unquote(c)).collect(),
            None => all_columns.get(&t.display).cloned().unwrap_or_default(),
        };
        match current.get(&t.display) {
            None => report.tables.push(t.display.clone()),
            Some(have) => {
                let new: Vec<String> = want.difference(have).cloned().collect();
                if !new.is_empty() {
                    report
                        .columns
                        .extend(new.iter().map(|c| format!("{}.{c}", t.display)));
                    widened.insert(t.display.clone(), new);
                }
            }
        }
    }
    if report.tables.is_empty() && widened.is_empty() {
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    // 1. Tables the candidate gained start empty there: table
    // synchronisation copies them whole.
    if !report.tables.is_empty() {
        let sql: String = desired
            .iter()
            .filter(|t| report.tables.contains(&t.display))
            .map(|t| format!("DELETE FROM ONLY {};", t.sql))
            .collect();
        pg::exec(
            &target,
            dst,
            "emptying the tables replication will copy",
            &format!("BEGIN; SET LOCAL session_replication_role = replica; {sql} COMMIT"),
        )
        .await?;
    }
    let list = crate::postgres::replicate::publication_list(&source, src, &desired).await?;
    pg::exec(
        &source,
        src,
        &format!("widening publication {}", n.publication),
        &format!("ALTER PUBLICATION {} SET {list}", pg::ident(&n.publication)),
    )
    .await?;
    if !report.tables.is_empty() {
        pg::exec(
            &target,
            dst,
            &format!("refreshing subscription {}", n.subscription),
            &format!(
                "ALTER SUBSCRIPTION {} REFRESH PUBLICATION WITH (copy_data = true)",
                pg::ident(&n.subscription)
            ),
        )
        .await?;
        wait_synchronised(&target, dst, &n.subscription).await?;
    }
    // 2. The columns the candidate gained.
    if !widened.is_empty() {
        match crate::replicate::wait_caught_up_on(&source, db, dir, CATCH_UP).await? {
            CatchUp::CaughtUp { .. } => {}
            CatchUp::Behind { lsn, .. } => {
                return Err(SyncError::Other(format!(
                    "{dst} did not apply {src}'s log up to {lsn} within {}s after the publication was widened; \
                     the new columns were not backfilled: run `switchyard ctl resume` (or `switchyard sync clone --replace`)",
                    CATCH_UP.as_secs()
                )))
            }
        }
        set_enabled(&target, dst, &n.subscription, false).await?;
        let backfilled = backfill(db, dir, &source, &target, &widened).await;
        // Streaming again whatever happened: a failed backfill leaves the
        // candidate unverified, never unreplicated.
        let enabled = set_enabled(&target, dst, &n.subscription, true).await;
        report.rows = backfilled?;
        enabled?;
        // Streaming again, and caught up (applied, not only received)
        // before anyone compares the two sides.
        if let CatchUp::Behind { lsn, .. } =
            crate::replicate::wait_caught_up_on(&source, db, dir, CATCH_UP).await?
        {
            return Err(SyncError::Other(format!(
                "{dst} did not catch up with {src} (up to {lsn}) within {}s after the backfill: check `switchyard sync status`, then `switchyard ctl resume`",
                CATCH_UP.as_secs()
            )));
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Copies the `widened` columns of each table from a snapshot of the
/// source into the target, matched on the primary key. The subscription
/// is disabled (its worker gone) while this runs.
async fn backfill(
    db: &DatabaseConfig,
    dir: Direction,
    source: &Client,
    target: &Client,
    widened: &BTreeMap<String, Vec<String>>,
) -> Result<u64, SyncError> {
    let (src, dst) = (dir.source(), dir.target());
    let snap = pg::SnapshotHolder::open(src, url_of(db, src)).await?;
    let reader = pg::snapshot_session(src, url_of(db, src), &snap.id).await?;
    let mut rows = 0u64;
    for (table, cols) in widened {
        let key = primary_key(source, src, table).await?;
        if key.is_empty() {
            return Err(SyncError::Other(format!(
                "{table} has no primary key, so its new columns ({}) cannot be backfilled from {src}: \
                 run `switchyard sync clone --replace` to copy {dst} afresh",
                cols.join(", ")
            )));
        }
        let (schema, name) = table.split_once('.').unwrap_or(("public", table));
        let qualified = format!("{}.{}", pg::ident(schema), pg::ident(name));
        let key_list: Vec<String> = key.iter().map(|k| pg::ident(k)).collect();
        let col_list: Vec<String> = cols.iter().map(|c| pg::ident(c)).collect();
        let select = [key_list.clone(), col_list.clone()].concat().join(", ");
        // Columns with no default are NULL in every row the target has not
        // been sent a value for: only the source's rows with a value there
        // need copying (usually few: what the new release wrote so far).
        let no_default: bool = target
            .query_one(
                "SELECT NOT EXISTS (SELECT 1 FROM pg_attribute a JOIN pg_attrdef d \
                                      ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                                     WHERE a.attrelid = to_regclass($1) AND a.attname = ANY($2))",
                &[&qualified, &cols],
            )
            .await
            .map_err(|e| SyncError::query(dst, format!("reading the defaults of {table}"), &e))?
            .get(0);
        let only = if no_default {
            format!(
                " WHERE {}",
                col_list
                    .iter()
                    .map(|c| format!("{c} IS NOT NULL"))
                    .collect::<Vec<_>>()
                    .join(" OR ")
            )
        } else {
            String::new()
        };
        let sets: Vec<String> = col_list.iter().map(|c| format!("{c} = b.{c}")).collect();
        let on: Vec<String> = key_list.iter().map(|k| format!("t.{k} = b.{k}")).collect();
        pg::exec(
            target,
            dst,
            &format!("preparing the backfill of {table}"),
            &format!(
                "BEGIN; SET LOCAL session_replication_role = replica; \
                 CREATE TEMP TABLE switchyard_backfill ON COMMIT DROP AS SELECT {select} FROM ONLY {qualified} WITH NO DATA"
            ),
        )
        .await?;
        let result = async {
            let err = |side: Side, e: tokio_postgres::Error| SyncError::Copy {
                table: table.clone(),
                target: dst,
                message: format!("{side}: {}", pg_message(&e)),
            };
            let out = reader
                .copy_out(&format!(
                    "COPY (SELECT {select} FROM ONLY {qualified}{only}) TO STDOUT"
                ))
                .await
                .map_err(|e| err(src, e))?;
            let sink = target
                .copy_in("COPY switchyard_backfill FROM STDIN")
                .await
                .map_err(|e| err(dst, e))?;
            let mut sink = std::pin::pin!(sink);
            let mut stream = std::pin::pin!(out);
            while let Some(data) = stream.next().await {
                let data = data.map_err(|e| err(src, e))?;
                sink.feed(data).await.map_err(|e| err(dst, e))?;
            }
            sink.as_mut().finish().await.map_err(|e| err(dst, e))?;
            let n = target
                .execute(
                    &format!(
                        "UPDATE ONLY {qualified} t SET {} FROM switchyard_backfill b WHERE {}",
                        sets.join(", "),
                        on.join(" AND ")
                    ),
                    &[],
                )
                .await
                .map_err(|e| SyncError::query(dst, format!("backfilling {table}"), &e))?;
            pg::exec(target, dst, "committing the backfill", "COMMIT").await?;
            Ok::<u64, SyncError>(n)
        }
        .await;
        match result {
            Ok(n) => rows += n,
            Err(e) => {
                let _ = target.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        }
    }
    drop(reader);
    drop(snap);
    Ok(rows)
}

/// The columns each table of `publication` publishes now (on 14, which
/// has no column lists, every column of each table).
async fn published_columns(
    c: &Client,
    side: Side,
    publication: &str,
    all: &BTreeMap<String, BTreeSet<String>>,
) -> Result<BTreeMap<String, BTreeSet<String>>, SyncError> {
    if pg::server_version(c, side).await? < 150000 {
        let rows = c
            .query(
                "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1",
                &[&publication],
            )
            .await
            .map_err(|e| SyncError::query(side, format!("reading publication {publication}"), &e))?;
        return Ok(rows
            .iter()
            .map(|r| {
                let t: String = r.get(0);
                let cols = all.get(&t).cloned().unwrap_or_default();
                (t, cols)
            })
            .collect());
    }
    let rows = c
        .query(
            "SELECT schemaname || '.' || tablename, attnames::text[] FROM pg_publication_tables WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|e| SyncError::query(side, format!("reading publication {publication}"), &e))?;
    Ok(rows
        .iter()
        .map(|r| {
            let cols: Vec<String> = r.get(1);
            (r.get::<_, String>(0), cols.into_iter().collect())
        })
        .collect())
}

/// Every user table's publishable (not generated) columns.
async fn table_columns(
    c: &Client,
    side: Side,
) -> Result<BTreeMap<String, BTreeSet<String>>, SyncError> {
    let rows = c
        .query(
            &format!(
                "SELECT n.nspname || '.' || c.relname, a.attname::text \
                   FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' AND {}",
                pg::SYSTEM_SCHEMA_FILTER
            ),
            &[],
        )
        .await
        .map_err(|e| SyncError::query(side, "reading table columns", &e))?;
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in &rows {
        out.entry(r.get(0)).or_default().insert(r.get(1));
    }
    Ok(out)
}

/// The primary-key columns of `table` (`schema.name`), in key order.
async fn primary_key(c: &Client, side: Side, table: &str) -> Result<Vec<String>, SyncError> {
    let (schema, name) = table.split_once('.').unwrap_or(("public", table));
    let rows = c
        .query(
            "SELECT a.attname::text FROM pg_index i \
               JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
               JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord) ON true \
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum \
              WHERE i.indisprimary AND n.nspname = $1 AND c.relname = $2 ORDER BY k.ord",
            &[&schema, &name],
        )
        .await
        .map_err(|e| SyncError::query(side, format!("reading the primary key of {table}"), &e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Waits until table synchronisation of every table of `sub` is done.
async fn wait_synchronised(c: &Client, side: Side, sub: &str) -> Result<(), SyncError> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let left: Vec<String> = c
            .query(
                "SELECT r.srrelid::regclass::text FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid \
                  WHERE s.subname = $1 AND r.srsubstate <> 'r'",
                &[&sub],
            )
            .await
            .map_err(|e| SyncError::query(side, "watching table synchronisation", &e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(SyncError::Other(format!(
                "{side}: table synchronisation of {} did not finish within 10 minutes; see pg_stat_subscription on {side}",
                left.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Enables or disables `sub`; disabling waits until its worker is gone, so
/// its replication origin no longer moves.
async fn set_enabled(c: &Client, side: Side, sub: &str, on: bool) -> Result<(), SyncError> {
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
    .await?;
    if on {
        return Ok(());
    }
    crate::postgres::cutover::wait_worker_gone(
        c,
        side,
        sub,
        Instant::now() + Duration::from_secs(30),
    )
    .await
}

/// `"name"` → `name` (column lists hold quoted identifiers).
fn unquote(c: &str) -> String {
    c.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .map(|s| s.replace("\"\"", "\""))
        .unwrap_or_else(|| c.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoted_identifiers_are_unquoted() {
        assert_eq!(super::unquote("\"note\""), "note");
        assert_eq!(super::unquote("\"a\"\"b\""), "a\"b");
        assert_eq!(super::unquote("plain"), "plain");
    }
}
