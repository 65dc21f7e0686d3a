//! Clone: snapshot blue and restore it into green with no intermediate data file.
//!
//! 1. A read-only repeatable-read transaction on blue exports a snapshot; every
//!    other blue session (pg_dump and the copy workers) joins it, so schema and
//!    data are one consistent point in time.
//! 2. `pg_dump --schema-only` (custom format, a few kilobytes) gives the DDL;
//!    `pg_restore --section=pre-data` creates tables, types and functions.
//! 3. `--jobs` workers stream `COPY ... TO STDOUT` on blue straight into
//!    `COPY ... FROM STDIN` on green, largest tables first (binary format when
//!    the columns allow it, text otherwise); tables over 1 GiB are split into
//!    heap-block ranges (`ctid` range scans) so that workers share them;
//!    smaller ones are loaded whole with `COPY FREEZE` after a `TRUNCATE`.
//! 4. Sequence values are carried over.
//! 5. A table's own indexes and primary-key, unique and exclusion
//!    constraints are built (`pg_restore` of just those entries) as soon as
//!    its copy ends, followed by its `ANALYZE`, on the same worker queue, so
//!    they overlap the copy of the other tables (tables of 16 MiB and more;
//!    see [`crate::postgres::post_data`]).
//! 6. `pg_restore --section=post-data -j N` builds the rest (foreign keys,
//!    triggers, small tables' indexes, ...) in parallel, after the data.
//! 7. `ANALYZE` of every relation not analysed yet, `N` sessions at once, and
//!    the run is recorded in green's `switchyard.clones`.
//!
//! Ownership and grants are not cloned (`--no-owner --no-privileges`): green's
//! objects belong to the role switchyard connects with.

use crate::error::{pg_message, Side, SyncError};
use crate::pg::{self, Table};
use crate::pg::{snapshot_session, SnapshotHolder};
use crate::postgres::post_data;
use crate::progress::Progress;
use crate::replicate::ForwardSlot;
use crate::replication::{url_of, Direction};
use crate::{roles, state, workers, Output};
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use switchyard_config::{DatabaseConfig, RolesMode, SyncMode};
use tokio_postgres::Client;

/// One copied table.
#[derive(Debug, Clone, Serialize)]
pub struct TableCopy {
    pub table: String,
    pub rows: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Seconds spent building this table's own indexes and constraints and
    /// analysing it right after its copy, while other tables still copied;
    /// `None` when they were left to the final post-data pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub built_with_copy: Option<f64>,
}

/// The outcome of `clone`.
#[derive(Debug, Clone, Serialize)]
pub struct CloneReport {
    pub snapshot: String,
    pub tables: Vec<TableCopy>,
    pub rows: u64,
    pub bytes: u64,
    pub sequences: usize,
    pub seconds: f64,
    /// Whether an existing green database was dropped first (`--replace`).
    pub replaced: bool,
    /// Time spent in each phase: `schema`, `copy`, `post_data`, `analyze`.
    pub phases: Vec<Phase>,
    /// The replication slot whose snapshot was copied (replicate mode).
    pub slot: Option<String>,
    /// The WAL position green represents (the slot's consistent point).
    pub consistent_lsn: Option<String>,
    /// Blue's clock at the snapshot (UTC), the point in time green represents.
    pub blue_time: String,
    /// Large objects copied.
    pub large_objects: u64,
}

/// One phase of a clone and how long it took.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: String,
    pub seconds: f64,
}

/// What the target's database (`side`) holds that makes it "not empty", or
/// `None` when it is empty.
pub async fn target_contents(green: &Client, side: Side) -> Result<Option<String>, SyncError> {
    let row = green
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                          WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {f}), \
                        (SELECT string_agg(n.nspname || '.' || c.relname, ', ' ORDER BY n.nspname, c.relname) \
                           FROM (SELECT * FROM pg_class c ORDER BY oid LIMIT 1000) c \
                           JOIN pg_namespace n ON n.oid = c.relnamespace \
                          WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {f}), \
                        (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {f}), \
                        (SELECT string_agg(n.nspname, ', ') FROM pg_namespace n WHERE {f} AND n.nspname <> 'public'), \
                        (SELECT string_agg(extname, ', ') FROM pg_extension WHERE extname <> 'plpgsql'), \
                        (SELECT count(*) FROM pg_largeobject_metadata)",
                f = pg::SYSTEM_SCHEMA_FILTER
            ),
            &[],
        )
        .await
        .map_err(|e| SyncError::query(side, "checking that the database is empty", &e))?;
    let (rels, names, funcs, schemas, exts): (
        i64,
        Option<String>,
        i64,
        Option<String>,
        Option<String>,
    ) = (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    let large_objects: i64 = row.get(5);
    let mut what = Vec::new();
    if rels > 0 {
        let names = names.unwrap_or_default();
        let short: Vec<&str> = names.split(", ").take(3).collect();
        what.push(format!(
            "{rels} tables, views or sequences, e.g. {}",
            short.join(", ")
        ));
    }
    if funcs > 0 {
        what.push(format!("{funcs} functions"));
    }
    if let Some(s) = schemas {
        what.push(format!("schemas {s}"));
    }
    if let Some(e) = exts {
        what.push(format!("extensions {e}"));
    }
    if large_objects > 0 {
        what.push(format!("{large_objects} large objects"));
    }
    Ok((!what.is_empty()).then(|| what.join("; ")))
}

/// Drops everything switchyard would create in the target (`side`): user
/// schemas, extensions, the contents of `public`, large objects, and
/// switchyard's records of earlier copies and verifications (so the target
/// becomes unverified). The record of cutovers (`switchyard.cutovers`)
/// stays: it is the pair's history, which says which side is the primary.
async fn wipe_target(green: &Client, side: Side) -> Result<(), SyncError> {
    let version = pg::server_version(green, side).await?;
    let owner = if version >= 140000 {
        "pg_database_owner"
    } else {
        "CURRENT_USER"
    };
    pg::exec(
        green,
        side,
        "dropping the target's contents (--replace)",
        &format!(
            "DROP TABLE IF EXISTS switchyard.clones, switchyard.verifications, switchyard.migration_changes; \
             DO $$ DECLARE r record; BEGIN \
               FOR r IN SELECT nspname FROM pg_namespace n \
                         WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'public', 'switchyard') \
                           AND nspname NOT LIKE 'pg\\_toast%' AND nspname NOT LIKE 'pg\\_temp%' LOOP \
                 EXECUTE format('DROP SCHEMA %I CASCADE', r.nspname); \
               END LOOP; \
               FOR r IN SELECT extname FROM pg_extension WHERE extname <> 'plpgsql' LOOP \
                 EXECUTE format('DROP EXTENSION %I CASCADE', r.extname); \
               END LOOP; \
               PERFORM lo_unlink(oid) FROM pg_largeobject_metadata; \
             END $$; \
             DROP SCHEMA IF EXISTS public CASCADE; \
             CREATE SCHEMA public AUTHORIZATION {owner}; \
             GRANT USAGE ON SCHEMA public TO PUBLIC; \
             COMMENT ON SCHEMA public IS 'standard public schema';"
        ),
    )
    .await
}

/// Clones the source of `dir` (the primary) into its target (the
/// candidate). Returns the report and the source snapshot, still held open,
/// so that a verification can run against exactly what was copied; release
/// it with [`SnapshotHolder::release`]. In replicate mode the snapshot is
/// the one the replication slot of `dir` starts from.
///
/// Nothing in the target is touched before everything that can be checked
/// on the source was: the connection, the snapshot, every table readable,
/// the schema dumped, and that the target is not the primary by the
/// cutover records of both sides. The clone is recorded in the target as
/// `running` from its first change, and as `complete` only after its last
/// phase; a failed or interrupted clone stays `failed`/`running`, so verify
/// and the gate refuse it.
pub async fn clone(
    db: &DatabaseConfig,
    dir: Direction,
    jobs: usize,
    replace: bool,
    output: Output,
) -> Result<(CloneReport, SnapshotHolder), SyncError> {
    let started = Instant::now();
    let jobs = jobs.max(1);
    let (src, dst) = (dir.source(), dir.target());
    let green = pg::connect_target(dst, url_of(db, dst)).await?;
    let blue = pg::connect(src, url_of(db, src)).await?;
    // Never over the primary, whatever the caller believed.
    let primary = primary_of(dir, &blue, &green).await?;
    primary.refuse_target(dst)?;
    let (sv, tv) = (
        pg::server_version(&blue, src).await?,
        pg::server_version(&green, dst).await?,
    );
    for (side, v) in [(src, sv), (dst, tv)] {
        if v < 140000 {
            return Err(SyncError::Other(format!(
                "{side} runs PostgreSQL {}, which reached its end of life: switchyard supports 14 and newer; upgrade it first (nothing was changed)",
                v / 10000
            )));
        }
    }
    if tv / 10000 < sv / 10000 {
        return Err(SyncError::Other(format!(
            "{dst} runs PostgreSQL {}, older than {src}'s {}: a downgrade cannot be cloned (pg_dump output only restores into the same major version or newer); nothing was changed",
            tv / 10000,
            sv / 10000
        )));
    }
    let tools = pg::tools_for((src, sv), (dst, tv))?;
    let existing = target_contents(&green, dst).await?;
    if let (Some(what), false) = (&existing, replace) {
        return Err(SyncError::TargetNotEmpty {
            side: dst,
            what: what.clone(),
        });
    }
    // Where the source stands just before the snapshot: any write after it
    // moves the mark, so the gate can tell when a snapshot-mode copy went
    // stale.
    crate::postgres::preflight::same_encoding(&blue, &green, dir).await?;
    let mark = crate::postgres::blue_changes::read(&blue, src).await?;
    drop(blue);
    let holder = if db.mode == SyncMode::Replicate {
        SnapshotHolder::from_slot(ForwardSlot::create(db, dir).await?)
    } else {
        SnapshotHolder::open(src, url_of(db, src)).await?
    };
    let tmp = match tempfile::Builder::new()
        .prefix("switchyard-clone-")
        .tempdir()
    {
        Ok(d) => d,
        Err(e) => {
            holder.abandon(db).await;
            return Err(SyncError::Other(format!(
                "cannot create a temporary directory: {e}"
            )));
        }
    };
    let mut record = None;
    let result = clone_in(
        db,
        &tools,
        dir,
        jobs,
        existing.is_some(),
        output,
        &green,
        &holder,
        &mark,
        primary.generation,
        tmp.path(),
        &mut record,
    )
    .await;
    match result {
        Ok(mut report) => {
            report.seconds = started.elapsed().as_secs_f64();
            Ok((report, holder))
        }
        Err(e) => {
            if let Some(id) = record {
                let _ =
                    state::mark_clone(&green, dst, id, "failed", None, Some(&e.to_string())).await;
            }
            holder.abandon(db).await;
            Err(e)
        }
    }
}

/// The primary by the records on both sides of `dir` (open sessions).
pub(crate) async fn primary_of(
    dir: Direction,
    source: &Client,
    target: &Client,
) -> Result<crate::primary::Primary, SyncError> {
    let (blue, green) = match dir.source() {
        Side::Blue => (source, target),
        Side::Green => (target, source),
    };
    state::primary_from(Ok(blue), Ok(green)).await
}

#[allow(clippy::too_many_arguments)]
async fn clone_in(
    db: &DatabaseConfig,
    tools: &pg::Tools,
    dir: Direction,
    jobs: usize,
    replace: bool,
    output: Output,
    green: &Client,
    holder: &SnapshotHolder,
    mark: &crate::postgres::blue_changes::ChangeMark,
    generation: i64,
    tmp: &std::path::Path,
    record: &mut Option<i64>,
) -> Result<CloneReport, SyncError> {
    let snapshot = holder.id.clone();
    let blue = snapshot_session(dir.source(), url_of(db, dir.source()), &snapshot).await?;
    let tables = pg::list_tables(&blue, dir.source()).await?;
    // Every table must be readable before green is touched.
    for t in &tables {
        blue.batch_execute(&format!("SELECT 1 FROM ONLY {} LIMIT 0", t.sql()))
            .await
            .map_err(|e| SyncError::Copy {
                table: t.display(),
                target: dir.target(),
                message: format!(
                    "{}: {}; nothing in {} was changed",
                    dir.source(),
                    pg_message(&e),
                    dir.target()
                ),
            })?;
    }
    // The point in time green will represent: the transaction's start on
    // blue, and (without a slot, whose consistent point is exact) blue's WAL
    // position read right after joining the snapshot.
    let row = blue
        .query_one(
            "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
                    pg_current_wal_insert_lsn()::text",
            &[],
        )
        .await
        .map_err(|e| SyncError::query(dir.source(), "reading the snapshot's time", &e))?;
    let (blue_time, snapshot_lsn): (String, String) = (row.get(0), row.get(1));

    // Schema, in custom format so that pg_restore can run post-data in parallel.
    let dump = tmp.join("schema.dump");
    let mut phases = Vec::new();
    let mut phase_start = Instant::now();
    let mut phase = |name: &str| {
        phases.push(Phase {
            name: name.to_string(),
            seconds: phase_start.elapsed().as_secs_f64(),
        });
        phase_start = Instant::now();
    };
    let blue_conn = pg::tool_conn(dir.source(), url_of(db, dir.source()))?;
    let green_conn = pg::tool_conn(dir.target(), url_of(db, dir.target()))?;
    pg::run_tool(
        &tools.pg_dump,
        "dumping the source's schema",
        &[
            "--schema-only".into(),
            "--format=custom".into(),
            format!("--snapshot={snapshot}"),
            "--exclude-schema=switchyard".into(),
            format!("--file={}", dump.display()),
            format!("--dbname={}", blue_conn.conninfo),
        ],
        blue_conn.password.as_deref(),
    )
    .await?;

    // Roles are the cluster's: check green has every one the copy needs.
    let copy_roles = db.roles == RolesMode::Copy;
    let missing =
        roles::missing_on_target(green, dir, roles::needed(&blue, dir.source()).await?).await?;
    let blocking: Vec<roles::RoleNeed> = missing
        .into_iter()
        .filter(|m| copy_roles || m.by_policy)
        .collect();
    if !blocking.is_empty() {
        return Err(SyncError::RolesMissing {
            target: dir.target(),
            roles: roles::describe(&blocking),
        });
    }

    // switchyard's own publication (and a reverse subscription, if blue has
    // one) are part of blue's schema, never of green's copy.
    let toc = pg::run_tool(
        &tools.pg_restore,
        "listing the schema dump",
        &["--list".into(), dump.display().to_string()],
        None,
    )
    .await?;
    let kept: Vec<String> = String::from_utf8_lossy(&toc)
        .lines()
        .filter(|l| !is_switchyard_entry(l))
        .map(str::to_string)
        .collect();
    let write_list = |name: String, lines: &[String]| {
        let path = tmp.join(name);
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, text)
            .map_err(|e| SyncError::Other(format!("cannot write {}: {e}", path.display())))
            .map(|()| path)
    };
    let list = write_list("schema.list".into(), &kept)?;
    let restore = |section: &str, list: &std::path::Path, jobs: usize| {
        let mut args = vec![format!("--section={section}")];
        if !copy_roles {
            args.push("--no-owner".into());
            args.push("--no-privileges".into());
        }
        args.extend([
            "--exit-on-error".to_string(),
            format!("--use-list={}", list.display()),
            format!("--dbname={}", green_conn.conninfo),
        ]);
        if jobs > 1 {
            args.push(format!("--jobs={jobs}"));
        } else {
            args.push("--single-transaction".into());
        }
        args.push(dump.display().to_string());
        args
    };
    // The indexes and constraints of big tables are built as soon as their
    // own copy ends; the final post-data pass restores everything else.
    let threshold = post_data::early_build_bytes();
    let eligible: HashMap<(String, String), &Table> = tables
        .iter()
        .filter(|t| t.bytes >= threshold)
        .map(|t| ((t.schema.clone(), t.name.clone()), t))
        .collect();
    let objects = if eligible.is_empty() {
        HashMap::new()
    } else {
        post_data::own_objects(&blue, dir.source()).await?
    };
    let split = post_data::split(&kept, &objects, |t| eligible.contains_key(t));
    let rest_list = write_list("post-data.list".into(), &split.rest)?;
    let mut builds = HashMap::new();
    for (i, (key, lines)) in split.per_table.into_iter().enumerate() {
        let path = write_list(format!("early-{i}.list"), &lines)?;
        let t = eligible[&key];
        let build = EarlyBuild {
            what: format!("building the indexes of {} in the target", t.display()),
            table: t.display(),
            table_sql: t.sql(),
            args: restore("post-data", &path, jobs.min(lines.len())),
            tool: tools.pg_restore.clone(),
        };
        builds.insert(key, Arc::new(build));
    }

    // Everything on blue checked out: now green may change.
    let replaced = replace;
    if replace {
        wipe_target(green, dir.target()).await?;
    }
    let slot = holder.slot().map(|s| s.created.clone());
    let id = state::start_clone(
        green,
        dir.target(),
        state::NewClone {
            snapshot: &snapshot,
            slot: slot.as_ref().map(|s| s.slot_name.as_str()),
            lsn: slot
                .as_ref()
                .map(|s| s.consistent_point.as_str())
                .unwrap_or(&snapshot_lsn),
            source_time: &blue_time,
            mark,
            generation,
        },
    )
    .await?;
    *record = Some(id);

    pg::run_tool(
        &tools.pg_restore,
        "creating tables in the target (pre-data)",
        &restore("pre-data", &list, 1),
        green_conn.password.as_deref(),
    )
    .await?;

    // Data.
    phase("schema");
    state::mark_clone(green, dir.target(), id, "running", Some("copy"), None).await?;
    let total: i64 = tables.iter().map(|t| t.bytes).sum();
    let progress = Arc::new(Progress::new(output, "clone", total.max(0) as u64));
    let chunks = plan_chunks(&tables, jobs, &builds);
    let (blue_url, green_url, snap) = (
        url_of(db, dir.source()).to_string(),
        url_of(db, dir.target()).to_string(),
        snapshot.clone(),
    );
    let bars = progress.clone();
    let password = green_conn.password.clone();
    let done = workers::run_with_follow_ups(
        chunks.into_iter().map(Work::Copy).collect(),
        jobs,
        move || {
            let (blue_url, green_url, snap) = (blue_url.clone(), green_url.clone(), snap.clone());
            async move {
                let blue = snapshot_session(dir.source(), &blue_url, &snap).await?;
                let green = pg::connect_target(dir.target(), &green_url).await?;
                pg::exec(
                    &green,
                    dir.target(),
                    "setting up a copy session",
                    "SET synchronous_commit = off",
                )
                .await?;
                Ok((blue, green))
            }
        },
        move |s: Arc<(Client, Client)>, work: Work| {
            let (bars, password) = (bars.clone(), password.clone());
            async move {
                match work {
                    Work::Copy(chunk) => {
                        let copied = copy_chunk(dir, &s.0, &s.1, &chunk, &bars).await?;
                        // The table's last chunk: its indexes can be built now.
                        let last = chunk.left.fetch_sub(1, Ordering::AcqRel) == 1;
                        let next = chunk.build.filter(|_| last).map(Work::Build);
                        Ok((Done::Copied(copied), next))
                    }
                    Work::Build(b) => {
                        let started = Instant::now();
                        pg::run_tool(&b.tool, &b.what, &b.args, password.as_deref()).await?;
                        pg::exec(
                            &s.1,
                            dir.target(),
                            &format!("analyzing {}", b.table),
                            &format!("ANALYZE {}", b.table_sql),
                        )
                        .await?;
                        let seconds = started.elapsed().as_secs_f64();
                        Ok((Done::Built(b.table.clone(), seconds), None))
                    }
                }
            }
        },
    )
    .await;
    progress.finish();
    let mut copied = Vec::new();
    let mut built = HashMap::new();
    for d in done? {
        match d {
            Done::Copied(c) => copied.push(c),
            Done::Built(table, seconds) => {
                built.insert(table, seconds);
            }
        }
    }

    let sequences = copy_sequences(dir, &blue, green).await?;
    phase("copy");
    state::mark_clone(green, dir.target(), id, "running", Some("post_data"), None).await?;
    pg::run_tool(
        &tools.pg_restore,
        "building indexes and constraints in the target (post-data)",
        &restore("post-data", &rest_list, jobs),
        green_conn.password.as_deref(),
    )
    .await?;
    phase("post_data");
    state::mark_clone(
        green,
        dir.target(),
        id,
        "running",
        Some("large_objects"),
        None,
    )
    .await?;
    let large_objects = copy_large_objects(dir, &blue, green, copy_roles).await?;
    phase("large_objects");
    state::mark_clone(
        green,
        dir.target(),
        id,
        "running",
        Some("materialized_views"),
        None,
    )
    .await?;
    refresh_matviews(dir, &blue, green).await?;
    phase("materialized_views");
    state::mark_clone(green, dir.target(), id, "running", Some("analyze"), None).await?;
    analyze_the_rest(dir, green, url_of(db, dir.target()), jobs, &built).await?;
    phase("analyze");

    let mut merged: Vec<TableCopy> = Vec::new();
    for c in copied {
        match merged.iter_mut().find(|m| m.table == c.table) {
            Some(m) => {
                m.rows += c.rows;
                m.bytes += c.bytes;
                m.seconds = m.seconds.max(c.seconds);
            }
            None => merged.push(c),
        }
    }
    for m in &mut merged {
        m.built_with_copy = built.get(&m.table).copied();
    }
    let mut copied = merged;
    copied.sort_by_key(|t| std::cmp::Reverse(t.bytes));
    let report = CloneReport {
        snapshot: snapshot.clone(),
        rows: copied.iter().map(|t| t.rows).sum(),
        bytes: copied.iter().map(|t| t.bytes).sum(),
        tables: copied,
        sequences,
        seconds: 0.0,
        replaced,
        phases,
        slot: slot.as_ref().map(|s| s.slot_name.clone()),
        consistent_lsn: Some(
            slot.as_ref()
                .map(|s| s.consistent_point.clone())
                .unwrap_or(snapshot_lsn),
        ),
        blue_time,
        large_objects,
    };
    state::finish_clone(green, dir.target(), id, &report).await?;
    Ok(report)
}

/// Whether a line of `pg_restore --list` is one of switchyard's replication
/// objects (`PUBLICATION`, `PUBLICATION TABLE`, `SUBSCRIPTION` named
/// `switchyard_*`).
fn is_switchyard_entry(line: &str) -> bool {
    if line.starts_with(';') {
        return false;
    }
    let kinds = [" PUBLICATION ", " PUBLICATION TABLE ", " SUBSCRIPTION "];
    kinds.iter().any(|k| {
        line.split_once(k).is_some_and(|(_, rest)| {
            rest.split_whitespace()
                .any(|w| w.starts_with("switchyard_"))
        })
    })
}

/// Tables bigger than this many heap blocks (1 GiB of 8 KiB pages) are copied
/// as several block ranges in parallel, so that one huge table does not
/// serialise the clone. Smaller tables are copied whole, which allows COPY
/// FREEZE (rows land frozen and all-visible, saving green the hint-bit writes
/// and the anti-wraparound vacuum later); on the 2-core benchmark machine a
/// whole 640 MB table with FREEZE also used ~15 % less CPU than two ranges.
/// `SWITCHYARD_CLONE_CHUNK_BLOCKS` overrides it (the tests use it to exercise
/// splitting on small tables).
const CHUNK_BLOCKS: i64 = 131_072;

fn chunk_blocks() -> i64 {
    std::env::var("SWITCHYARD_CLONE_CHUNK_BLOCKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &i64| n > 0)
        .unwrap_or(CHUNK_BLOCKS)
}

/// A table's indexes and constraints, built right after its copy.
struct EarlyBuild {
    /// `schema.name`, for people and the report.
    table: String,
    table_sql: String,
    /// What `pg_restore` is doing, for its error message.
    what: String,
    /// `pg_restore` of just this table's entries.
    args: Vec<String>,
    /// The `pg_restore` to run.
    tool: std::path::PathBuf,
}

/// An item on the clone's worker queue.
enum Work {
    Copy(Chunk),
    Build(Arc<EarlyBuild>),
}

/// What a worker did with an item.
enum Done {
    Copied(TableCopy),
    /// The table (`schema.name`) and the seconds its build and ANALYZE took.
    Built(String, f64),
}

/// `ANALYZE` of every table, partitioned table and materialized view in
/// green that was not analysed right after its copy, largest first, on
/// `jobs` sessions at once.
async fn analyze_the_rest(
    dir: Direction,
    green: &Client,
    green_url: &str,
    jobs: usize,
    done: &HashMap<String, f64>,
) -> Result<(), SyncError> {
    let rows = green
        .query(
            &format!(
                "SELECT n.nspname || '.' || c.relname, quote_ident(n.nspname) || '.' || quote_ident(c.relname) \
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE c.relkind IN ('r', 'p', 'm') AND {} \
                  ORDER BY pg_total_relation_size(c.oid) DESC, 1",
                pg::SYSTEM_SCHEMA_FILTER
            ),
            &[],
        )
        .await
        .map_err(|e| SyncError::query(dir.target(), "listing the tables to analyze", &e))?;
    let todo: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .filter(|(display, _)| !done.contains_key(display))
        .collect();
    if todo.is_empty() {
        return Ok(());
    }
    let url = green_url.to_string();
    workers::run(
        todo,
        jobs,
        move || {
            let url = url.clone();
            async move { pg::connect_target(dir.target(), &url).await }
        },
        move |g: Arc<Client>, (display, sql): (String, String)| async move {
            pg::exec(
                &g,
                dir.target(),
                &format!("analyzing {display}"),
                &format!("ANALYZE {sql}"),
            )
            .await
        },
    )
    .await
    .map(drop)
}

/// Bytes of COPY data handed to green at a time.
const BATCH_BYTES: usize = 256 * 1024;

/// One unit of copy work: a whole table, or a range of its heap blocks.
#[derive(Clone)]
struct Chunk {
    table: Arc<Table>,
    /// `[first, last)` heap blocks; `None` for the whole table. The last
    /// range of a table is open-ended.
    blocks: Option<(i64, Option<i64>)>,
    est_bytes: i64,
    /// The table's chunks not copied yet (shared by all of them).
    left: Arc<AtomicUsize>,
    /// The table's index build, queued when its last chunk is copied.
    build: Option<Arc<EarlyBuild>>,
}

/// Splits big tables into block ranges so that `jobs` workers can share
/// them; largest pieces first.
fn plan_chunks(
    tables: &[Table],
    jobs: usize,
    builds: &HashMap<(String, String), Arc<EarlyBuild>>,
) -> Vec<Chunk> {
    let chunk_blocks = chunk_blocks();
    let mut chunks = Vec::new();
    for t in tables {
        let table = Arc::new(t.clone());
        let n = if jobs > 1 && t.blocks > chunk_blocks {
            (t.blocks + chunk_blocks - 1) / chunk_blocks
        } else {
            1
        };
        let left = Arc::new(AtomicUsize::new(n as usize));
        let build = builds.get(&(t.schema.clone(), t.name.clone())).cloned();
        if n == 1 {
            chunks.push(Chunk {
                table,
                blocks: None,
                est_bytes: t.bytes,
                left,
                build,
            });
            continue;
        }
        let per = (t.blocks + n - 1) / n;
        for i in 0..n {
            let first = i * per;
            let last = if i == n - 1 {
                None
            } else {
                Some((i + 1) * per)
            };
            chunks.push(Chunk {
                table: table.clone(),
                blocks: Some((first, last)),
                est_bytes: t.bytes / n,
                left: left.clone(),
                build: build.clone(),
            });
        }
    }
    chunks.sort_by_key(|c| std::cmp::Reverse(c.est_bytes));
    chunks
}

/// Streams one chunk from blue to green: `COPY ... TO STDOUT` piped into
/// `COPY ... FROM STDIN`, binary when the column types allow it.
async fn copy_chunk(
    dir: Direction,
    blue: &Client,
    green: &Client,
    chunk: &Chunk,
    progress: &Progress,
) -> Result<TableCopy, SyncError> {
    let started = Instant::now();
    let table = &chunk.table;
    // A whole table is loaded in its own transaction after a TRUNCATE, which
    // lets COPY FREEZE write the rows frozen and all-visible: no hint-bit
    // writes on first read and no anti-wraparound vacuum of green later.
    let whole = chunk.blocks.is_none();
    let options = |freeze: bool| {
        let mut o = Vec::new();
        if table.binary_ok {
            o.push("FORMAT binary");
        }
        if freeze {
            o.push("FREEZE");
        }
        if o.is_empty() {
            String::new()
        } else {
            format!("({})", o.join(", "))
        }
    };
    let cols = table.copy_columns.join(", ");
    let source = match chunk.blocks {
        None => format!("{} ({cols})", table.sql()),
        Some((first, last)) => {
            let upper = last
                .map(|l| format!(" AND ctid < '({l},0)'::tid"))
                .unwrap_or_default();
            format!(
                "(SELECT {cols} FROM ONLY {} WHERE ctid >= '({first},0)'::tid{upper})",
                table.sql()
            )
        }
    };
    let label = match chunk.blocks {
        None => table.display(),
        Some((first, _)) => format!("{} @{first}", table.display()),
    };
    let est_rows = if table.bytes > 0 {
        (table.est_rows as f64 * chunk.est_bytes as f64 / table.bytes as f64) as u64
    } else {
        0
    };
    let bar = progress.table(&label, chunk.est_bytes.max(0) as u64, est_rows);
    let err = |message: String| SyncError::Copy {
        table: table.display(),
        target: dir.target(),
        message,
    };
    let out = blue
        .copy_out(&format!("COPY {source} TO STDOUT {}", options(false)))
        .await
        .map_err(|e| err(format!("{}: {}", dir.source(), pg_message(&e))))?;
    if whole {
        green
            .batch_execute(&format!("BEGIN; TRUNCATE ONLY {}", table.sql()))
            .await
            .map_err(|e| err(format!("{}: {}", dir.target(), pg_message(&e))))?;
    }
    let sink = green
        .copy_in(&format!(
            "COPY {} ({cols}) FROM STDIN {}",
            table.sql(),
            options(whole)
        ))
        .await
        .map_err(|e| err(format!("{}: {}", dir.target(), pg_message(&e))))?;
    let mut bytes = 0u64;
    let mut sink = std::pin::pin!(sink);
    let mut stream = std::pin::pin!(out);
    // Blue sends one message per row; hand green big batches instead, so the
    // connection task is woken once per batch rather than every 4 KiB.
    let mut batch = BytesMut::with_capacity(BATCH_BYTES + 64 * 1024);
    while let Some(data) = stream.next().await {
        let data = data.map_err(|e| err(format!("{}: {}", dir.source(), pg_message(&e))))?;
        batch.extend_from_slice(&data);
        if batch.len() >= BATCH_BYTES {
            bytes += batch.len() as u64;
            bar.inc(batch.len() as u64);
            sink.feed(batch.split().freeze())
                .await
                .map_err(|e| err(format!("{}: {}", dir.target(), pg_message(&e))))?;
        }
    }
    if !batch.is_empty() {
        bytes += batch.len() as u64;
        bar.inc(batch.len() as u64);
        sink.feed(batch.split().freeze())
            .await
            .map_err(|e| err(format!("{}: {}", dir.target(), pg_message(&e))))?;
    }
    let rows = sink
        .as_mut()
        .finish()
        .await
        .map_err(|e| err(format!("{}: {}", dir.target(), pg_message(&e))))?;
    if whole {
        green
            .batch_execute("COMMIT")
            .await
            .map_err(|e| err(format!("{}: {}", dir.target(), pg_message(&e))))?;
    }
    bar.done(rows);
    Ok(TableCopy {
        table: table.display(),
        rows,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        built_with_copy: None,
    })
}

/// Large objects are data (not in a schema dump): each is copied with its
/// OID (applications store OIDs), in 1 MiB pieces, and with its owner when
/// roles are copied. Returns how many.
async fn copy_large_objects(
    dir: Direction,
    blue: &Client,
    green: &Client,
    with_owner: bool,
) -> Result<u64, SyncError> {
    const PIECE: i64 = 1 << 20;
    let los = blue
        .query(
            "SELECT m.oid::int8, pg_get_userbyid(m.lomowner)::text, \
                    coalesce((SELECT sum(length(data)) FROM pg_largeobject l WHERE l.loid = m.oid), 0)::int8 \
               FROM pg_largeobject_metadata m ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| SyncError::query(dir.source(), "listing large objects", &e))?;
    for lo in &los {
        let (oid, owner, size): (i64, String, i64) = (lo.get(0), lo.get(1), lo.get(2));
        let err = |side: Side, e: &tokio_postgres::Error| {
            SyncError::query(side, format!("copying large object {oid}"), e)
        };
        green
            .execute("SELECT lo_create($1::int8::oid)", &[&oid])
            .await
            .map_err(|e| err(dir.target(), &e))?;
        let mut off = 0i64;
        while off < size {
            let piece: Vec<u8> = blue
                .query_one(
                    "SELECT lo_get($1::int8::oid, $2, $3::int4)",
                    &[&oid, &off, &(PIECE as i32)],
                )
                .await
                .map_err(|e| err(dir.source(), &e))?
                .get(0);
            green
                .execute(
                    "SELECT lo_put($1::int8::oid, $2, $3)",
                    &[&oid, &off, &piece],
                )
                .await
                .map_err(|e| err(dir.target(), &e))?;
            off += piece.len().max(1) as i64;
        }
        if with_owner {
            pg::exec(
                green,
                dir.target(),
                &format!("setting the owner of large object {oid}"),
                &format!("ALTER LARGE OBJECT {oid} OWNER TO {}", pg::ident(&owner)),
            )
            .await?;
        }
    }
    Ok(los.len() as u64)
}

/// A schema-only restore leaves materialized views empty: refresh those
/// blue has populated, a view only after those it reads from (retrying in
/// rounds until none is left, so no dependency graph is needed).
async fn refresh_matviews(dir: Direction, blue: &Client, green: &Client) -> Result<(), SyncError> {
    let mut left: Vec<String> = blue
        .query(
            &format!(
                "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) \
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE c.relkind = 'm' AND c.relispopulated AND {} ORDER BY c.oid",
                pg::SYSTEM_SCHEMA_FILTER
            ),
            &[],
        )
        .await
        .map_err(|e| SyncError::query(dir.source(), "listing materialized views", &e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    while !left.is_empty() {
        let mut failed = Vec::new();
        let mut last_error = None;
        for mv in &left {
            if let Err(e) = green
                .batch_execute(&format!("REFRESH MATERIALIZED VIEW {mv}"))
                .await
            {
                last_error = Some((mv.clone(), e));
                failed.push(mv.clone());
            }
        }
        if failed.len() == left.len() {
            let (mv, e) = last_error.expect("a failure");
            return Err(SyncError::query(
                dir.target(),
                format!("refreshing materialized view {mv}"),
                &e,
            ));
        }
        left = failed;
    }
    Ok(())
}

/// Sets every green sequence to blue's value. Returns how many there were.
async fn copy_sequences(dir: Direction, blue: &Client, green: &Client) -> Result<usize, SyncError> {
    let rows = blue
        .query(
            &format!(
                "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) \
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE c.relkind = 'S' AND {} \
                    AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                                      AND d.objid = c.oid AND d.deptype = 'e')",
                pg::SYSTEM_SCHEMA_FILTER
            ),
            &[],
        )
        .await
        .map_err(|e| SyncError::query(dir.source(), "listing sequences", &e))?;
    let mut sql = String::new();
    for r in &rows {
        let name: String = r.get(0);
        let v = blue
            .query_one(&format!("SELECT last_value, is_called FROM {name}"), &[])
            .await
            .map_err(|e| SyncError::query(dir.source(), format!("reading sequence {name}"), &e))?;
        let (last, called): (i64, bool) = (v.get(0), v.get(1));
        sql.push_str(&format!(
            "SELECT setval({}, {last}, {called});\n",
            pg::literal(&name)
        ));
    }
    if !sql.is_empty() {
        pg::exec(green, dir.target(), "setting sequence values", &sql).await?;
    }
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switchyard_replication_objects_are_left_out_of_the_restore() {
        assert!(is_switchyard_entry(
            "3345; 6104 16390 PUBLICATION - switchyard_fwd postgres"
        ));
        assert!(is_switchyard_entry(
            "3346; 6106 16391 PUBLICATION TABLE public switchyard_fwd orders postgres"
        ));
        assert!(is_switchyard_entry(
            "3350; 6100 16400 SUBSCRIPTION - switchyard_rev postgres"
        ));
        assert!(!is_switchyard_entry(
            "3347; 6104 16392 PUBLICATION - app_events postgres"
        ));
        assert!(!is_switchyard_entry(
            "215; 1259 16386 TABLE public switchyard_fwd_notes app"
        ));
        assert!(!is_switchyard_entry(";   PUBLICATION - switchyard_fwd"));
    }
}
