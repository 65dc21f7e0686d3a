//! Verification: per table, row count and an order-independent checksum computed
//! inside each database, both sides in parallel: the sum over rows of the XOR
//! of each column's 64-bit hash (seeded by column position). Built-in types
//! whose hash depends only on the value (numeric ignores scale, timestamptz the
//! time zone) are hashed with their own hash function; enums, user-defined
//! types, json and columns whose type differs between the sides are
//! normalised to text first (numeric without
//! trailing zeros, json as jsonb, timestamps in UTC ISO form), so equal data
//! compares equal. On a mismatch the primary-key range is bisected until the
//! differing rows are few, and the first differing keys are reported.
//!
//! Every session is a read-only repeatable-read transaction inside one exported
//! snapshot per side, so all tables are compared at one consistent point (right
//! after clone, blue's side is the clone's own snapshot).

use crate::error::{Side, SyncError};
use crate::pg::{self, snapshot_session, SnapshotHolder, Table};
use crate::progress::Progress;
use crate::replication::url_of;
pub use crate::verdict::{Difference, TableVerdict, VerifyReport};
use crate::{catalog, migrate, replicate, state, workers, Output};
use std::collections::HashMap;
use std::sync::Arc;
use switchyard_config::DatabaseConfig;
use tokio_postgres::Client;

/// Stop bisecting a range once both sides hold at most this many rows in it.
const LEAF_ROWS: i64 = 1000;
/// Report at most this many differing keys per table.
const MAX_DIFFS: usize = 10;
/// While replicating, collect up to this many differing keys per table, so
/// that rows that were only behind can all be re-checked.
const RECHECK_KEYS: usize = 5000;

/// Compares every table of blue with green. `blue_snapshot` is the clone's
/// snapshot when verifying right after a clone; otherwise one is taken now.
/// The result is recorded in green's `switchyard.verifications`.
pub async fn verify(
    db: &DatabaseConfig,
    dir: replicate::Direction,
    jobs: usize,
    blue_snapshot: Option<&str>,
    output: Output,
) -> Result<VerifyReport, SyncError> {
    let jobs = jobs.max(1);
    // While replication runs, the side being replicated to lags: take the
    // source's snapshot first, wait until the target has replayed past it,
    // then take the target's, so the target holds at least what the source
    // showed. What still differs is re-checked below.
    let replicating = match blue_snapshot {
        Some(_) => None,
        None if db.mode == switchyard_config::SyncMode::Replicate => {
            let r = replicate::status(db).await;
            // Only replication into this release's target lags it.
            r.direction.filter(|d| *d == dir).filter(|_| {
                matches!(
                    r.state,
                    replicate::ReplicationState::Streaming | replicate::ReplicationState::Stopped
                ) && r
                    .objects
                    .iter()
                    .any(|o| o.kind == replicate::ObjectKind::Subscription)
            })
        }
        None => None,
    };
    let (own_blue, green_holder) = match (blue_snapshot, replicating) {
        (Some(_), _) => (
            None,
            SnapshotHolder::open(dir.target(), url_of(db, dir.target())).await?,
        ),
        (None, None) => (
            Some(SnapshotHolder::open(dir.source(), url_of(db, dir.source())).await?),
            SnapshotHolder::open(dir.target(), url_of(db, dir.target())).await?,
        ),
        (None, Some(dir)) => {
            let (b, g) = ordered_snapshots(db, dir).await?;
            (Some(b), g)
        }
    };
    let blue_snap = match (blue_snapshot, &own_blue) {
        (Some(s), _) => s.to_string(),
        (None, Some(h)) => h.id.clone(),
        (None, None) => unreachable!("a source snapshot is always taken"),
    };

    let blue_meta = snapshot_session(dir.source(), url_of(db, dir.source()), &blue_snap).await?;
    let green_meta =
        snapshot_session(dir.target(), url_of(db, dir.target()), &green_holder.id).await?;
    let mut tables: Vec<Table> = pg::list_tables(&blue_meta, dir.source())
        .await?
        .into_iter()
        .filter(|t| t.name != migrate::HISTORY_TABLE)
        .collect();
    let mut green_tables: HashMap<String, Table> = pg::list_tables(&green_meta, dir.target())
        .await?
        .into_iter()
        .map(|t| (t.display(), t))
        .collect();
    // Materialized views populated on both sides: their contents too.
    let green_mv: HashMap<String, Table> = pg::list_matviews(&green_meta, dir.target())
        .await?
        .into_iter()
        .map(|t| (t.display(), t))
        .collect();
    let mut matviews = std::collections::HashSet::new();
    for mv in pg::list_matviews(&blue_meta, dir.source()).await? {
        if let Some(g) = green_mv.get(&mv.display()) {
            green_tables.insert(mv.display(), g.clone());
            matviews.insert(mv.display());
            tables.push(mv);
        }
    }
    let matviews = Arc::new(matviews);
    // The whole database, not only rows: every object, then the values
    // that live outside tables (sequences, large objects).
    let with_roles = db.roles == switchyard_config::RolesMode::Copy;
    let (blue_cat, green_cat) = tokio::try_join!(
        catalog::fingerprint(&blue_meta, dir.source(), with_roles),
        catalog::fingerprint(&green_meta, dir.target(), with_roles)
    )?;
    let mut schema = catalog::diff(&blue_cat, &green_cat);
    let green_now = pg::connect_target(dir.target(), url_of(db, dir.target())).await?;
    catalog::reparse_views(&green_now, dir.target(), &mut schema).await;
    // A difference is expected only where a migration the target applied
    // made it and the source has not applied that migration itself: in a
    // later release the primary already has the earlier ones, and objects
    // of those must match.
    let source_applied: std::collections::HashSet<String> =
        migrate::read_history(&blue_meta, dir.source())
            .await?
            .into_iter()
            .filter(|a| a.success)
            .map(|a| a.script)
            .collect();
    let mut expected = catalog::expected_changes(&green_now, dir.target()).await?;
    expected.retain(|_, script| !source_applied.contains(script));
    catalog::mark_expected(&mut schema, &expected);
    let mut problems = Vec::new();
    let (blue_lo, green_lo) = tokio::try_join!(
        catalog::large_objects(&blue_meta, dir.source()),
        catalog::large_objects(&green_meta, dir.target())
    )?;
    if blue_lo != green_lo {
        problems.push(format!(
            "large objects differ: {} has {} (checksum {}), {} {} (checksum {}); re-run `switchyard sync clone --replace`",
            dir.source(),
            blue_lo.0, blue_lo.1, dir.target(), green_lo.0, green_lo.1
        ));
    }
    let mut notes = Vec::new();
    if blue_snapshot.is_some() {
        // Against the clone's own snapshot, blue's live sequences have moved
        // on; what must hold is that green's are ahead of its own rows.
        for (name, column, max, next) in sequences_below_rows(&green_meta, dir.target()).await? {
            problems.push(format!(
                "sequence {name} would hand out {next} next, but {column} already holds {max} on {}: inserts would collide; re-run `switchyard sync clone --replace`", dir.target()
            ));
        }
    } else {
        for (name, b, g) in crate::cutover::sequences_behind(dir, &blue_meta, &green_meta).await? {
            if db.mode == switchyard_config::SyncMode::Replicate {
                // Replication does not carry sequences; cutover copies them
                // while writes are held.
                notes.push(format!(
                    "sequence {name} is behind {} on {} (next value {g} < {b}); cutover copies it",
                    dir.source(),
                    dir.target()
                ));
            } else {
                problems.push(format!(
                    "sequence {name} is behind {} on {} (next value {g} < {b}): inserts there would reuse ids; re-run `switchyard sync clone --replace`", dir.source(), dir.target()
                ));
            }
        }
    }
    if let Some(c) = state::last_clone(&green_now, dir.target())
        .await?
        .filter(|c| c.state != crate::state::CloneState::Complete)
    {
        problems.push(format!(
            "{}'s last clone is {} (it stopped in phase {}{}): it is not a copy of {}; run `switchyard sync clone --replace`",
            dir.target(),
            c.state,
            c.phase.as_deref().unwrap_or("?"),
            c.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default(),
            dir.source()
        ));
    }
    drop(blue_meta);
    drop(green_meta);

    let total: i64 = tables.iter().map(|t| t.bytes).sum();
    let progress = Arc::new(Progress::new(output, "verify", total.max(0) as u64));
    let max_diffs = if replicating.is_some() {
        RECHECK_KEYS
    } else {
        MAX_DIFFS
    };
    let green_tables = Arc::new(green_tables);
    let (blue_url, green_url) = (
        url_of(db, dir.source()).to_string(),
        url_of(db, dir.target()).to_string(),
    );
    let (bs, gs) = (blue_snap.clone(), green_holder.id.clone());
    let bars = progress.clone();
    let verdicts = workers::run(
        tables,
        jobs,
        move || {
            let (blue_url, green_url, bs, gs) =
                (blue_url.clone(), green_url.clone(), bs.clone(), gs.clone());
            async move {
                let blue = snapshot_session(dir.source(), &blue_url, &bs).await?;
                let green = snapshot_session(dir.target(), &green_url, &gs).await?;
                Ok((blue, green))
            }
        },
        move |s: Arc<(Client, Client)>, table: Table| {
            let (bars, green_tables, matviews) =
                (bars.clone(), green_tables.clone(), matviews.clone());
            async move {
                let (blue, green) = (&s.0, &s.1);
                let bar = bars.table(
                    &table.display(),
                    table.bytes.max(0) as u64,
                    table.est_rows as u64,
                );
                let verdict = match green_tables.get(&table.display()) {
                    None => TableVerdict {
                        table: table.display(),
                        status: "missing_in_green".into(),
                        blue_rows: count(blue, dir.source(), &table).await?,
                        green_rows: None,
                        differences: Vec::new(),
                        note: Some(format!("the table does not exist in {}", dir.target())),
                    },
                    Some(_) => {
                        let (mut verdict, plan) =
                            compare_table(dir, blue, green, &table, max_diffs).await?;
                        if verdict.status == "differs" && matviews.contains(&verdict.table) {
                            stale_matview(blue, green, &plan, &table, &mut verdict).await?;
                        }
                        verdict
                    }
                };
                if verdict.status != "equal" {
                    bars.println(&format!("{}: {}", verdict.table, verdict.status));
                }
                bar.inc(table.bytes.max(0) as u64);
                bar.done(verdict.blue_rows as u64);
                Ok(verdict)
            }
        },
    )
    .await;
    progress.finish();
    drop(green_holder);
    drop(own_blue);
    let mut verdicts = verdicts?;
    if let Some(dir) = replicating {
        for v in verdicts.iter_mut().filter(|v| v.status == "differs") {
            recheck(db, dir, v).await?;
        }
    }
    for v in verdicts.iter_mut() {
        v.differences.truncate(MAX_DIFFS);
    }
    verdicts.sort_by(|a, b| a.table.cmp(&b.table));

    // Schema version: green's history against the newest migration on disk.
    let green = green_now;
    let history = migrate::read_history(&green, dir.target()).await?;
    let schema_version = migrate::current_version(&history);
    let latest = migrate::newest_on_disk(&db.migrations)?;
    if latest.is_some() && latest != schema_version {
        problems.push(format!(
            "{}'s schema version is {} but the newest migration in {} is {}: run `switchyard sync migrate`",
            dir.target(),
            schema_version.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "none".into()),
            db.migrations.display(),
            latest.as_ref().map(|v| v.to_string()).unwrap_or_default()
        ));
    }
    // A table a migration dropped is missing on purpose.
    for v in verdicts
        .iter_mut()
        .filter(|v| v.status == "missing_in_green")
    {
        if let Some(m) = expected.get(&(catalog::ObjectKind::Table, v.table.clone())) {
            v.status = "equal".into();
            v.note = Some(format!("expected: dropped by migration {m}"));
        }
    }
    let report = VerifyReport {
        passed: problems.is_empty()
            && verdicts.iter().all(|v| v.status == "equal")
            && schema.iter().all(|d| d.expected.is_some()),
        tables: verdicts,
        schema,
        notes,
        schema_version: schema_version.map(|v| v.to_string()),
        latest_migration: latest.map(|v| v.to_string()),
        problems,
    };
    state::record_verification(&green, dir.target(), &report).await?;
    Ok(report)
}

/// A column as verify sees it.
struct Column {
    name: String,
    /// Base type name (domains resolved), e.g. `numeric`.
    base: String,
    /// `format_type` output, for casting key literals.
    sql_type: String,
    /// A built-in type whose hash function depends only on the value (not on
    /// OIDs or representation), so it can be hashed as is.
    hashable: bool,
    /// The type's extended hash function when it can be called on the column
    /// directly (its argument is exactly this type).
    hash_fn: Option<String>,
    not_null: bool,
}

async fn columns(client: &Client, side: Side, table: &Table) -> Result<Vec<Column>, SyncError> {
    let rows = client
        .query(
            "SELECT a.attname::text, b.typname::text, format_type(a.atttypid, a.atttypmod), \
                    b.oid < 16384 AND b.typtype IN ('b', 'r', 'm') AND (b.typelem = 0 OR b.typelem < 16384) \
                    AND EXISTS (SELECT 1 FROM pg_opclass oc JOIN pg_am am ON am.oid = oc.opcmethod \
                                  JOIN pg_amproc ap ON ap.amprocfamily = oc.opcfamily AND ap.amprocnum = 2 \
                                 WHERE am.amname = 'hash' AND oc.opcdefault \
                                   AND oc.opcintype = CASE WHEN b.typcategory = 'A' THEN b.typelem ELSE b.oid END), \
                    CASE WHEN b.typcategory = 'A' THEN 'hash_array_extended' ELSE \
                      (SELECT p.proname::text FROM pg_opclass oc JOIN pg_am am ON am.oid = oc.opcmethod \
                         JOIN pg_amproc ap ON ap.amprocfamily = oc.opcfamily AND ap.amprocnum = 2 \
                                          AND ap.amproclefttype = oc.opcintype \
                         JOIN pg_proc p ON p.oid = ap.amproc \
                        WHERE am.amname = 'hash' AND oc.opcdefault AND oc.opcintype = b.oid \
                          AND p.proargtypes[0] = b.oid AND p.pronamespace = 'pg_catalog'::regnamespace \
                        LIMIT 1) END, \
                    a.attnotnull \
               FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
               JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END \
              WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
              ORDER BY a.attnum",
            &[&table.sql()],
        )
        .await
        .map_err(|e| SyncError::query(side, format!("reading the columns of {}", table.display()), &e))?;
    Ok(rows
        .iter()
        .map(|r| Column {
            name: r.get(0),
            base: r.get(1),
            sql_type: r.get(2),
            hashable: r.get(3),
            hash_fn: r.get(4),
            not_null: r.get(5),
        })
        .collect())
}

/// The 64-bit hash of a column's value, seeded with the column's position so
/// that values moved between columns do not cancel out. Values are hashed as
/// they are when the type is the same on both sides and its hash depends only
/// on the value (numeric's hash already ignores scale, timestamptz's the time
/// zone); otherwise they are hashed as normalised text: numeric without
/// trailing zeros, json as jsonb, everything else in its (UTC, ISO) text form.
fn column_hash(col: &Column, same_type: bool, seed: usize) -> String {
    let c = pg::ident(&col.name);
    let h = match (col.base.as_str(), &col.hash_fn) {
        (_, Some(f)) if same_type && col.hashable => format!("{f}({c}, {seed})"),
        _ if same_type && col.hashable => format!("hash_record_extended(ROW({c}), {seed})"),
        ("json", _) if same_type => format!("jsonb_hash_extended({c}::jsonb, {seed})"),
        ("numeric", _) => format!("hashtextextended(trim_scale({c})::text, {seed})"),
        ("json" | "jsonb", _) => format!("hashtextextended({c}::jsonb::text, {seed})"),
        _ => format!("hashtextextended({c}::text, {seed})"),
    };
    if col.not_null {
        h
    } else {
        format!("coalesce({h}, {seed})")
    }
}

/// Per-side SQL pieces for one table, compared in direction `dir` (its
/// source's rows against its target's).
struct Plan {
    dir: replicate::Direction,
    from: String,
    row_hash_source: String,
    row_hash_target: String,
    /// Primary-key columns quoted, and their blue types.
    key: Vec<(String, String)>,
}

impl Plan {
    fn key_list(&self) -> String {
        self.key
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
    fn key_array(&self) -> String {
        format!(
            "ARRAY[{}]",
            self.key
                .iter()
                .map(|(k, _)| format!("{k}::text"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
    fn bound(&self, values: &[String]) -> String {
        format!(
            "ROW({})",
            values
                .iter()
                .zip(&self.key)
                .map(|(v, (_, ty))| format!("{}::{ty}", pg::literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
    fn range(&self, lo: &Option<Vec<String>>, hi: &Option<Vec<String>>) -> String {
        let mut conds = vec!["true".to_string()];
        let k = format!("ROW({})", self.key_list());
        if let Some(lo) = lo {
            conds.push(format!("{k} >= {}", self.bound(lo)));
        }
        if let Some(hi) = hi {
            conds.push(format!("{k} < {}", self.bound(hi)));
        }
        conds.join(" AND ")
    }
    fn hash(&self, side: Side) -> &str {
        if side == self.dir.source() {
            &self.row_hash_source
        } else {
            &self.row_hash_target
        }
    }
}

async fn count(client: &Client, side: Side, table: &Table) -> Result<i64, SyncError> {
    client
        .query_one(&format!("SELECT count(*) FROM ONLY {}", table.sql()), &[])
        .await
        .map(|r| r.get(0))
        .map_err(|e| SyncError::query(side, format!("counting {}", table.display()), &e))
}

async fn checksum(
    client: &Client,
    side: Side,
    plan: &Plan,
    cond: &str,
) -> Result<(i64, String), SyncError> {
    let sql = format!(
        "SELECT count(*), coalesce(sum({}), 0)::text FROM ONLY {} WHERE {cond}",
        plan.hash(side),
        plan.from
    );
    client
        .query_one(&sql, &[])
        .await
        .map(|r| (r.get(0), r.get(1)))
        .map_err(|e| SyncError::query(side, format!("checksumming {}", plan.from), &e))
}

async fn compare_table(
    dir: replicate::Direction,
    blue: &Client,
    green: &Client,
    table: &Table,
    max_diffs: usize,
) -> Result<(TableVerdict, Plan), SyncError> {
    let (bcols, gcols) = tokio::try_join!(
        columns(blue, dir.source(), table),
        columns(green, dir.target(), table)
    )?;
    let common: Vec<&Column> = bcols
        .iter()
        .filter(|c| gcols.iter().any(|g| g.name == c.name))
        .collect();
    let row_hash = |cols: &[Column]| {
        let exprs: Vec<String> = common
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let other = gcols
                    .iter()
                    .find(|g| g.name == c.name)
                    .expect("common column");
                let same = c.sql_type == other.sql_type && c.hashable && other.hashable;
                let col = cols
                    .iter()
                    .find(|x| x.name == c.name)
                    .expect("common column");
                column_hash(col, same, i + 1)
            })
            .collect();
        if exprs.is_empty() {
            "0::int8".to_string()
        } else {
            format!("({})", exprs.join(" # "))
        }
    };
    let key_ok =
        !table.pk.is_empty() && table.pk.iter().all(|k| common.iter().any(|c| &c.name == k));
    let plan = Plan {
        dir,
        from: table.sql(),
        row_hash_source: row_hash(&bcols),
        row_hash_target: row_hash(&gcols),
        key: if key_ok {
            table
                .pk
                .iter()
                .map(|k| {
                    let ty = bcols
                        .iter()
                        .find(|c| &c.name == k)
                        .map(|c| c.sql_type.clone())
                        .unwrap_or_default();
                    (pg::ident(k), ty)
                })
                .collect()
        } else {
            Vec::new()
        },
    };
    let ((bn, bsum), (gn, gsum)) = tokio::try_join!(
        checksum(blue, dir.source(), &plan, "true"),
        checksum(green, dir.target(), &plan, "true")
    )?;
    let mut verdict = TableVerdict {
        table: table.display(),
        status: "equal".into(),
        blue_rows: bn,
        green_rows: Some(gn),
        differences: Vec::new(),
        note: None,
    };
    let missing: Vec<&str> = bcols
        .iter()
        .filter(|c| !gcols.iter().any(|g| g.name == c.name))
        .map(|c| c.name.as_str())
        .collect();
    if !missing.is_empty() {
        verdict.note = Some(format!(
            "columns only in {}, not compared: {}",
            dir.source(),
            missing.join(", ")
        ));
    }
    if bn == gn && bsum == gsum {
        return Ok((verdict, plan));
    }
    verdict.status = "differs".into();
    if !key_ok {
        verdict.note = Some(format!(
            "{} rows in {}, {} in {}, checksums differ; the table has no primary key, so differing rows cannot be located",
            bn,
            dir.source(),
            gn,
            dir.target()
        ));
        return Ok((verdict, plan));
    }
    verdict.differences = bisect(blue, green, &plan, (bn, gn), max_diffs).await?;
    Ok((verdict, plan))
}

/// A materialized view is a cache of its query: blue's copy may be stale
/// (not refreshed since its tables changed) while the clone refreshed
/// green's. When green's contents are exactly what the view's query gives
/// on blue's data, in the same snapshot, the view is equal in meaning and
/// the verdict says blue's copy is stale. A view over another materialized
/// view reads that view's (stale) copy on blue, so its query runs on green
/// instead, over inputs verify checks against blue on their own. When
/// green's contents match neither, the view still differs.
async fn stale_matview(
    blue: &Client,
    green: &Client,
    plan: &Plan,
    table: &Table,
    verdict: &mut TableVerdict,
) -> Result<(), SyncError> {
    let dir = plan.dir;
    let (src, dst) = (dir.source(), dir.target());
    let row = blue
        .query_one(
            "SELECT pg_get_viewdef(to_regclass($1), false), EXISTS ( \
                SELECT 1 FROM pg_rewrite r \
                  JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid \
                  JOIN pg_class c ON c.oid = d.refobjid \
                 WHERE r.ev_class = to_regclass($1) AND c.relkind = 'm' AND c.oid <> r.ev_class)",
            &[&table.sql()],
        )
        .await
        .map_err(|e| {
            SyncError::query(src, format!("reading the query of {}", table.display()), &e)
        })?;
    let (def, over_matview): (String, bool) = (row.get(0), row.get(1));
    let def = def.trim().trim_end_matches(';').to_string();
    let (gn, gsum) = checksum(green, dst, plan, "true").await?;
    let (on, (fresh_n, fresh_sum)) = if over_matview {
        (dst, query_checksum(green, dst, plan, &def, table).await?)
    } else {
        (src, query_checksum(blue, src, plan, &def, table).await?)
    };
    if fresh_n == gn && fresh_sum == gsum {
        verdict.status = "equal".into();
        verdict.differences.clear();
        verdict.note = Some(format!(
            "{src}'s copy is stale ({} rows; its query gives {fresh_n} now): {dst} holds what the query gives on {on}'s data; REFRESH MATERIALIZED VIEW on {src} brings it up to date",
            verdict.blue_rows
        ));
    } else {
        let note = format!(
            "{} rows in {src}'s copy, {fresh_n} from its query on {on}'s data, {gn} in {dst}: {dst}'s view matches neither",
            verdict.blue_rows
        );
        verdict.note = Some(match verdict.note.take() {
            Some(n) => format!("{n}; {note}"),
            None => note,
        });
    }
    Ok(())
}

/// Count and checksum of what a materialized view's query gives on `side`.
async fn query_checksum(
    client: &Client,
    side: Side,
    plan: &Plan,
    def: &str,
    table: &Table,
) -> Result<(i64, String), SyncError> {
    let sql = format!(
        "SELECT count(*), coalesce(sum({}), 0)::text FROM ({def}) AS m",
        plan.hash(side)
    );
    client
        .query_one(&sql, &[])
        .await
        .map(|r| (r.get(0), r.get(1)))
        .map_err(|e| {
            SyncError::query(
                side,
                format!("running the query of {}", table.display()),
                &e,
            )
        })
}

/// Narrows the key space down to small ranges whose checksums differ and
/// lists the differing keys there, in key order.
async fn bisect(
    blue: &Client,
    green: &Client,
    plan: &Plan,
    counts: (i64, i64),
    max_diffs: usize,
) -> Result<Vec<Difference>, SyncError> {
    let dir = plan.dir;
    type Bound = Option<Vec<String>>;
    let mut stack: Vec<(Bound, Bound)> = vec![(None, None)];
    // The whole table's counts are known (and known to differ) already.
    let mut whole = Some(counts);
    let mut diffs = Vec::new();
    while let Some((lo, hi)) = stack.pop() {
        let cond = plan.range(&lo, &hi);
        let (bn, gn) = match whole.take() {
            Some(k) => k,
            None => {
                let ((bn, bs), (gn, gs)) = tokio::try_join!(
                    checksum(blue, dir.source(), plan, &cond),
                    checksum(green, dir.target(), plan, &cond)
                )?;
                if bn == gn && bs == gs {
                    continue;
                }
                (bn, gn)
            }
        };
        if bn.max(gn) <= LEAF_ROWS {
            diffs.extend(leaf_diff(blue, green, plan, &cond).await?);
            if diffs.len() >= max_diffs {
                diffs.truncate(max_diffs);
                break;
            }
            continue;
        }
        let (side, client, n) = if bn >= gn {
            (dir.source(), blue, bn)
        } else {
            (dir.target(), green, gn)
        };
        let sql = format!(
            "SELECT {} FROM ONLY {} WHERE {cond} ORDER BY {} OFFSET {} LIMIT 1",
            plan.key_array(),
            plan.from,
            plan.key_list(),
            n / 2
        );
        let mid: Vec<String> = client
            .query_one(&sql, &[])
            .await
            .map_err(|e| SyncError::query(side, format!("bisecting {}", plan.from), &e))?
            .get(0);
        // Upper half first on the stack so the lower half is examined first.
        stack.push((Some(mid.clone()), hi));
        stack.push((lo, Some(mid)));
    }
    Ok(diffs)
}

async fn leaf_rows(
    client: &Client,
    side: Side,
    plan: &Plan,
    cond: &str,
) -> Result<Vec<(Vec<String>, i64)>, SyncError> {
    let sql = format!(
        "SELECT {}, {} FROM ONLY {} WHERE {cond} ORDER BY {}",
        plan.key_array(),
        plan.hash(side),
        plan.from,
        plan.key_list()
    );
    let rows = client.query(&sql, &[]).await.map_err(|e| {
        SyncError::query(side, format!("reading differing rows of {}", plan.from), &e)
    })?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

async fn leaf_diff(
    blue: &Client,
    green: &Client,
    plan: &Plan,
    cond: &str,
) -> Result<Vec<Difference>, SyncError> {
    let dir = plan.dir;
    let (b, g) = tokio::try_join!(
        leaf_rows(blue, dir.source(), plan, cond),
        leaf_rows(green, dir.target(), plan, cond)
    )?;
    let gmap: HashMap<&Vec<String>, i64> = g.iter().map(|(k, h)| (k, *h)).collect();
    let bmap: HashMap<&Vec<String>, i64> = b.iter().map(|(k, h)| (k, *h)).collect();
    let mut out = Vec::new();
    for (k, h) in &b {
        match gmap.get(k) {
            None => out.push((k, "missing_in_green")),
            Some(gh) if gh != h => out.push((k, "changed")),
            _ => {}
        }
    }
    for (k, _) in &g {
        if !bmap.contains_key(k) {
            out.push((k, "extra_in_green"));
        }
    }
    Ok(out
        .into_iter()
        .map(|(k, kind)| Difference {
            key: format_key(&plan.key, k),
            kind: kind.into(),
            values: k.clone(),
        })
        .collect())
}

fn format_key(key: &[(String, String)], values: &[String]) -> String {
    let names: Vec<&str> = key.iter().map(|(k, _)| k.trim_matches('"')).collect();
    if names.len() == 1 {
        format!("{}={}", names[0], values[0])
    } else {
        format!("({})=({})", names.join(", "), values.join(", "))
    }
}

/// How long verify waits for the replica to replay a position.
const REPLAY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// Re-check rounds for rows that differ while replication runs.
const RECHECK_ROUNDS: usize = 20;

/// Waits until the target of `dir` replayed the source's current position.
async fn wait_replayed(db: &DatabaseConfig, dir: replicate::Direction) -> Result<(), SyncError> {
    match replicate::wait_caught_up(db, dir, REPLAY_WAIT).await? {
        replicate::CatchUp::CaughtUp { .. } => Ok(()),
        replicate::CatchUp::Behind { lsn, lag_bytes, .. } => Err(SyncError::Other(format!(
            "replication {} is too far behind to verify: {} has not replayed {}'s WAL up to {lsn} after {}s ({} bytes behind); check `switchyard sync status` and try again",
            dir.arrow(),
            dir.target(),
            dir.source(),
            REPLAY_WAIT.as_secs(),
            lag_bytes.map(|b| b.to_string()).unwrap_or_else(|| "unknown".into())
        ))),
    }
}

/// A session outside any snapshot, with the normalised settings the row
/// hashes depend on.
async fn live_session(db: &DatabaseConfig, side: Side) -> Result<Client, SyncError> {
    let c = pg::connect(side, crate::replication::url_of(db, side)).await?;
    pg::exec(
        &c,
        side,
        "preparing a re-check session",
        pg::NORMALISED_SESSION,
    )
    .await?;
    Ok(c)
}

/// The source's and the target's snapshots, taken in replication order: the
/// source's first, then (once the target replayed past it) the target's, so
/// the target holds at least what the source showed.
async fn ordered_snapshots(
    db: &DatabaseConfig,
    dir: replicate::Direction,
) -> Result<(SnapshotHolder, SnapshotHolder), SyncError> {
    let first =
        SnapshotHolder::open(dir.source(), crate::replication::url_of(db, dir.source())).await?;
    wait_replayed(db, dir).await?;
    let second =
        SnapshotHolder::open(dir.target(), crate::replication::url_of(db, dir.target())).await?;
    Ok((first, second))
}

/// Re-checks a table that differed while replication ran. Each round reads
/// the differing rows on the source, waits until the target replayed past
/// that read, reads them on the target and on the source again: a row that
/// matches either source reading was only behind, and is cleared. Rows still
/// differing after every round (or a keyless table whose checksums never
/// matched) are a real divergence and stay in the verdict.
async fn recheck(
    db: &DatabaseConfig,
    dir: replicate::Direction,
    verdict: &mut TableVerdict,
) -> Result<(), SyncError> {
    let source = live_session(db, dir.source()).await?;
    let target = live_session(db, dir.target()).await?;
    let Some(table) = pg::list_tables(&source, dir.source())
        .await?
        .into_iter()
        .find(|t| t.display() == verdict.table)
    else {
        return Ok(());
    };
    let lag_note = format!(
        "differences were replication lag: equal once {} replayed past them",
        dir.target()
    );
    let mut current = verdict.clone();
    for _outer in 0..3 {
        if current.status == "equal" {
            *verdict = TableVerdict {
                note: Some(lag_note.clone()),
                ..current
            };
            return Ok(());
        }
        let (b, g) = ordered_snapshots(db, dir).await?;
        let bs = snapshot_session(dir.source(), url_of(db, dir.source()), &b.id).await?;
        let gs = snapshot_session(dir.target(), url_of(db, dir.target()), &g.id).await?;
        let (fresh, plan) = compare_table(dir, &bs, &gs, &table, RECHECK_KEYS).await?;
        drop((bs, gs, b, g));
        if fresh.status == "equal" || plan.key.is_empty() {
            current = fresh;
            continue;
        }
        let truncated = fresh.differences.len() >= RECHECK_KEYS;
        let mut left: Vec<Difference> = fresh.differences.clone();
        for _ in 0..RECHECK_ROUNDS {
            if left.is_empty() {
                break;
            }
            let mut still = Vec::new();
            for batch in left.chunks(500) {
                let keys: Vec<Vec<String>> = batch.iter().map(|d| d.values.clone()).collect();
                let first = key_rows(&source, dir.source(), &plan, &keys).await?;
                wait_replayed(db, dir).await?;
                let on_target = key_rows(&target, dir.target(), &plan, &keys).await?;
                let again = key_rows(&source, dir.source(), &plan, &keys).await?;
                still.extend(
                    batch
                        .iter()
                        .filter(|d| {
                            let t = on_target.get(&d.values);
                            t != first.get(&d.values) && t != again.get(&d.values)
                        })
                        .cloned(),
                );
            }
            left = still;
            if !left.is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        if !left.is_empty() {
            *verdict = TableVerdict {
                differences: left,
                note: Some(format!(
                    "still different after {} replayed past every re-check ({RECHECK_ROUNDS} rounds): a real divergence, not lag",
                    dir.target()
                )),
                ..fresh
            };
            return Ok(());
        }
        if !truncated {
            *verdict = TableVerdict {
                status: "equal".into(),
                differences: Vec::new(),
                note: Some(lag_note.clone()),
                ..fresh
            };
            return Ok(());
        }
        current = fresh;
    }
    *verdict = TableVerdict {
        note: Some(
            "the table kept differing while replication ran; re-run verify when writes are quieter"
                .into(),
        ),
        ..current
    };
    Ok(())
}

/// The row hashes of `keys` on one side (absent keys are missing).
async fn key_rows(
    client: &Client,
    side: Side,
    plan: &Plan,
    keys: &[Vec<String>],
) -> Result<HashMap<Vec<String>, i64>, SyncError> {
    let list: Vec<String> = keys.iter().map(|k| plan.bound(k)).collect();
    let sql = format!(
        "SELECT {}, {} FROM ONLY {} WHERE ROW({}) IN ({})",
        plan.key_array(),
        plan.hash(side),
        plan.from,
        plan.key_list(),
        list.join(", ")
    );
    let rows = client
        .query(&sql, &[])
        .await
        .map_err(|e| SyncError::query(side, format!("re-checking rows of {}", plan.from), &e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Sequences owned by an integer column (serial, identity) whose next value
/// is not above the column's largest value: (sequence, column, max, next).
async fn sequences_below_rows(
    client: &Client,
    side: Side,
) -> Result<Vec<(String, String, i64, i64)>, SyncError> {
    let owned = client
        .query(
            &format!(
                "SELECT quote_ident(sn.nspname) || '.' || quote_ident(s.relname), \
                        quote_ident(tn.nspname) || '.' || quote_ident(t.relname), quote_ident(a.attname), \
                        sq.seqincrement \
                   FROM pg_depend d \
                   JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
                   JOIN pg_namespace sn ON sn.oid = s.relnamespace \
                   JOIN pg_sequence sq ON sq.seqrelid = s.oid \
                   JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace tn ON tn.oid = t.relnamespace \
                   JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid \
                  WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass \
                    AND d.deptype IN ('a', 'i') AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype) \
                    AND {}",
                pg::SYSTEM_SCHEMA_FILTER.replace("n.nspname", "sn.nspname")
            ),
            &[],
        )
        .await
        .map_err(|e| SyncError::query(side, "listing owned sequences", &e))?;
    let mut out = Vec::new();
    for r in &owned {
        let (seq, table, col, inc): (String, String, String, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        if inc < 0 {
            continue;
        }
        let row = client
            .query_one(
                &format!(
                    "SELECT (SELECT max({col})::int8 FROM ONLY {table}), \
                            (SELECT CASE WHEN is_called THEN last_value + {inc} ELSE last_value END FROM {seq})"
                ),
                &[],
            )
            .await
            .map_err(|e| SyncError::query(side, format!("reading sequence {seq}"), &e))?;
        let (max, next): (Option<i64>, i64) = (row.get(0), row.get(1));
        if let Some(max) = max.filter(|m| next <= *m) {
            out.push((seq, format!("{table}.{col}"), max, next));
        }
    }
    Ok(out)
}
