//! switchyard's own records in green (the `switchyard` schema): clone runs and
//! verification results, which the control plane's gates read. Nothing of
//! switchyard's is ever written to blue by these steps.

use crate::error::{pg_message, Side, SyncError};
pub use crate::gate::{judge, CloneKind, CloneRecord, CloneState, GateStatus, LastVerification};
use crate::postgres::blue_changes::ChangeMark;
use crate::primary::{CutoverKind, CutoverRow, Primary};
use crate::replication::{url_of, Direction};
use crate::{migrate, pg};
use switchyard_config::DatabaseConfig;
use tokio_postgres::Client;

/// Creates the `switchyard` schema and its tables in the target's database
/// (`side`) if missing. The `blue_*` columns of `clones` describe the
/// source the copy was taken from, whichever colour that was.
pub async fn ensure_schema(target: &Client, side: Side) -> Result<(), SyncError> {
    pg::exec(
        target,
        side,
        "creating the switchyard schema",
        "BEGIN; SELECT pg_advisory_xact_lock(7370796); \
         CREATE SCHEMA IF NOT EXISTS switchyard; \
         CREATE TABLE IF NOT EXISTS switchyard.clones ( \
           id bigserial PRIMARY KEY, finished_at timestamptz NOT NULL DEFAULT now(), \
           snapshot text, tables int NOT NULL, rows int8 NOT NULL, bytes int8 NOT NULL, report jsonb NOT NULL); \
         CREATE TABLE IF NOT EXISTS switchyard.verifications ( \
           id bigserial PRIMARY KEY, finished_at timestamptz NOT NULL DEFAULT now(), \
           passed boolean NOT NULL, schema_version text, latest_migration text, \
           tables int NOT NULL, mismatched int NOT NULL, report jsonb NOT NULL); \
         ALTER TABLE switchyard.clones ADD COLUMN IF NOT EXISTS state text NOT NULL DEFAULT 'complete', \
           ADD COLUMN IF NOT EXISTS phase text, ADD COLUMN IF NOT EXISTS error text, \
           ADD COLUMN IF NOT EXISTS slot text, ADD COLUMN IF NOT EXISTS consistent_lsn text, \
           ADD COLUMN IF NOT EXISTS blue_time timestamptz, \
           ADD COLUMN IF NOT EXISTS blue_rows int8, ADD COLUMN IF NOT EXISTS blue_tables text, \
           ADD COLUMN IF NOT EXISTS generation int8 NOT NULL DEFAULT 0, \
           ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'copy'; \
         CREATE TABLE IF NOT EXISTS switchyard.migration_changes ( \
           id bigserial PRIMARY KEY, script text NOT NULL, kind text NOT NULL, name text NOT NULL, \
           UNIQUE (kind, name, script)); \
         COMMIT;",
    )
    .await
}

/// The table of committed cutovers, kept in both databases (see
/// [`crate::primary`]); [`read_cutovers`] reads a missing one as none.
const CUTOVERS: &str = "CREATE SCHEMA IF NOT EXISTS switchyard; \
    CREATE TABLE IF NOT EXISTS switchyard.cutovers ( \
      id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), \
      primary_side text NOT NULL CHECK (primary_side IN ('blue', 'green'))); \
    ALTER TABLE switchyard.cutovers ADD COLUMN IF NOT EXISTS generation int8, \
      ADD COLUMN IF NOT EXISTS kind text";

/// Every cutover recorded in the database of `client`, oldest first.
pub async fn read_cutovers(client: &Client, side: Side) -> Result<Vec<CutoverRow>, SyncError> {
    let rows = client
        .query(
            "SELECT coalesce(generation, id), primary_side, kind, \
                    to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
               FROM switchyard.cutovers ORDER BY 1",
            &[],
        )
        .await;
    let rows = match rows {
        Ok(r) => r,
        Err(e) if not_recorded_yet(&e) => {
            // A table of an older version has no generation or kind yet:
            // read what it has (every row was a promotion then).
            return match client
                .query(
                    "SELECT id, primary_side, NULL::text, \
                            to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
                       FROM switchyard.cutovers ORDER BY 1",
                    &[],
                )
                .await
            {
                Ok(rows) => Ok(rows.iter().filter_map(cutover_row).collect()),
                Err(e) if not_recorded_yet(&e) => Ok(Vec::new()),
                Err(e) => Err(SyncError::query(side, "reading switchyard.cutovers", &e)),
            };
        }
        Err(e) => return Err(SyncError::query(side, "reading switchyard.cutovers", &e)),
    };
    Ok(rows.iter().filter_map(cutover_row).collect())
}

fn cutover_row(r: &tokio_postgres::Row) -> Option<CutoverRow> {
    let primary = match r.get::<_, String>(1).as_str() {
        "blue" => Side::Blue,
        "green" => Side::Green,
        _ => return None,
    };
    Some(CutoverRow {
        generation: r.get(0),
        primary,
        kind: CutoverKind::from_column(r.get::<_, Option<String>>(2).as_deref()),
        at: r.get(3),
    })
}

/// The primary as the records on `blue` and `green` say (either may be an
/// error: a side that could not be reached).
pub async fn primary_from(
    blue: Result<&Client, String>,
    green: Result<&Client, String>,
) -> Result<Primary, SyncError> {
    async fn read(c: Result<&Client, String>, side: Side) -> Result<Vec<CutoverRow>, String> {
        read_cutovers(c?, side).await.map_err(|e| e.to_string())
    }
    let (b, g) = tokio::join!(read(blue, Side::Blue), read(green, Side::Green));
    Primary::from_records(b, g)
}

/// Reads the primary from both databases' records (see [`crate::primary`]).
pub async fn primary(db: &DatabaseConfig) -> Result<Primary, SyncError> {
    let (blue, green) = tokio::join!(
        pg::connect(Side::Blue, &db.blue),
        pg::connect(Side::Green, &db.green)
    );
    primary_from(
        blue.as_ref().map_err(|e| e.to_string()),
        green.as_ref().map_err(|e| e.to_string()),
    )
    .await
}

/// Records a committed cutover that made `primary` the primary, on open
/// connections to both sides (the new primary's first), with the next
/// generation. Called by [`crate::cutover::switch`] while the writes are
/// still held: one short statement per side, with a few seconds of its own
/// whatever the cutover's deadline left. Returns what could not be
/// recorded on the old primary (a warning: the new primary's record is the
/// newer one and wins).
pub async fn record_cutover_on(
    new: &Client,
    primary: Side,
    old: Result<&Client, String>,
    kind: CutoverKind,
) -> Result<Option<String>, SyncError> {
    const BOUND: &str = "SET statement_timeout = 5000; SET lock_timeout = 5000";
    pg::exec(
        new,
        primary,
        "recording the cutover",
        &format!("{BOUND}; {CUTOVERS}"),
    )
    .await?;
    let mut generation = read_cutovers(new, primary)
        .await?
        .last()
        .map_or(0, |r| r.generation);
    let old = match old {
        Ok(c) => match pg::exec(
            c,
            primary.other(),
            "recording the cutover",
            &format!("{BOUND}; {CUTOVERS}"),
        )
        .await
        {
            Ok(()) => {
                if let Some(last) = read_cutovers(c, primary.other()).await?.last() {
                    generation = generation.max(last.generation);
                }
                Ok(c)
            }
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e),
    };
    generation += 1;
    let insert =
        "INSERT INTO switchyard.cutovers (primary_side, generation, kind) VALUES ($1, $2, $3)";
    let side = primary.to_string();
    new.execute(insert, &[&side, &generation, &kind.as_str()])
        .await
        .map_err(|e| SyncError::query(primary, "recording the cutover", &e))?;
    let warning = match old {
        Ok(c) => c
            .execute(insert, &[&side, &generation, &kind.as_str()])
            .await
            .err()
            .map(|e| pg_message(&e)),
        Err(e) => Some(e),
    };
    Ok(warning.map(|w| {
        format!(
            "the cutover (generation {generation}) is recorded in {primary}'s database but not in {}'s: {w}",
            primary.other()
        )
    }))
}

/// Takes back the newest cutover record of `client` when it names
/// `primary` (a switch that recorded itself and was then undone).
pub async fn unrecord_cutover(client: &Client, side: Side, primary: Side) -> Result<(), SyncError> {
    client
        .execute(
            "DELETE FROM switchyard.cutovers WHERE id = (SELECT max(id) FROM switchyard.cutovers) AND primary_side = $1",
            &[&primary.to_string()],
        )
        .await
        .map(drop)
        .or_else(|e| if not_recorded_yet(&e) { Ok(()) } else { Err(SyncError::query(side, "taking back the cutover record", &e)) })
}

/// [`record_cutover_on`] on new connections (a cutover without replication:
/// snapshot mode).
pub async fn record_cutover(
    db: &DatabaseConfig,
    primary: Side,
    kind: CutoverKind,
) -> Result<(), SyncError> {
    let new = pg::connect_owner(primary, url_of(db, primary)).await?;
    let old = pg::connect_owner(primary.other(), url_of(db, primary.other())).await;
    if let Some(w) =
        record_cutover_on(&new, primary, old.as_ref().map_err(|e| e.to_string()), kind).await?
    {
        tracing::warn!("{w}");
    }
    Ok(())
}

/// Whether `e` says switchyard's records do not exist (yet) in green: the
/// schema, the table or a column added by a later version is missing.
fn not_recorded_yet(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    matches!(
        e.code(),
        Some(c) if *c == SqlState::UNDEFINED_TABLE
            || *c == SqlState::UNDEFINED_COLUMN
            || *c == SqlState::INVALID_SCHEMA_NAME
    )
}

/// After a sync step was interrupted (SIGINT, SIGTERM): ends switchyard's
/// own sessions and client programs on the target (a killed `pg_restore`
/// leaves its server process building an index otherwise), marks a running
/// clone as failed, and says what was running.
pub async fn interrupted(
    db: &DatabaseConfig,
    dir: Direction,
    signal: &str,
) -> Result<String, SyncError> {
    let side = dir.target();
    let target = pg::connect_target(side, url_of(db, side)).await?;
    let ours = "FROM pg_stat_activity WHERE datname = current_database() \
                AND pid <> pg_backend_pid() AND application_name LIKE $1::text || '%'";
    let tag = crate::pg::tag_sessions();
    let _ = target
        .query(&format!("SELECT pg_terminate_backend(pid) {ours}"), &[&tag])
        .await;
    // pg_terminate_backend only signals; wait (briefly) until they are gone,
    // so "ended" is true when this process says so and exits.
    for _ in 0..50 {
        match target
            .query_one(&format!("SELECT count(*) {ours}"), &[&tag])
            .await
        {
            Ok(r) if r.get::<_, i64>(0) > 0 => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            _ => break,
        }
    }
    let marked = target
        .query_opt(
            "UPDATE switchyard.clones SET state = 'failed', error = $1, finished_at = now() \
              WHERE state = 'running' RETURNING phase",
            &[&format!("interrupted by {signal}")],
        )
        .await;
    Ok(match marked {
        Ok(Some(r)) => format!(
            "the clone was interrupted in phase {}; {side} is marked incomplete, so verify and the rollout gate refuse it: run `switchyard sync clone --replace`",
            r.get::<_, Option<String>>(0).unwrap_or_else(|| "?".into())
        ),
        _ => format!("nothing in {side} was left half done"),
    })
}

/// The newest clone recorded in the database of `target` (`side`), if any.
pub async fn last_clone(target: &Client, side: Side) -> Result<Option<CloneRecord>, SyncError> {
    let row = target
        .query_opt(
            "SELECT id, state, phase, error, slot, consistent_lsn, \
                    to_char(blue_time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
                    to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
                    generation, kind \
               FROM switchyard.clones ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await;
    match row {
        Ok(Some(r)) => Ok(Some(CloneRecord {
            id: r.get(0),
            state: CloneState::from_column(r.get(1))?,
            phase: r.get(2),
            error: r.get(3),
            slot: r.get(4),
            consistent_lsn: r.get(5),
            blue_time: r.get(6),
            at: r.get(7),
            generation: r.get(8),
            kind: CloneKind::from_column(r.get(9)),
        })),
        Ok(None) => Ok(None),
        Err(e) if not_recorded_yet(&e) => Ok(None),
        Err(e) => Err(SyncError::query(side, "reading switchyard.clones", &e)),
    }
}

/// What a new clone record says (see [`start_clone`]).
pub struct NewClone<'a> {
    pub snapshot: &'a str,
    pub slot: Option<&'a str>,
    pub lsn: &'a str,
    pub source_time: &'a str,
    pub mark: &'a ChangeMark,
    /// The primary's generation the copy was taken at.
    pub generation: i64,
}

/// Records a clone as `running` from its first change to the target; returns its id.
pub async fn start_clone(target: &Client, side: Side, c: NewClone<'_>) -> Result<i64, SyncError> {
    ensure_schema(target, side).await?;
    Ok(target
        .query_one(
            "INSERT INTO switchyard.clones (snapshot, tables, rows, bytes, report, state, phase, slot, consistent_lsn, blue_time, blue_rows, blue_tables, generation, kind) \
             VALUES ($1, 0, 0, 0, '{}', 'running', 'schema', $2, $3, $4::text::timestamptz, $5, $6, $7, 'copy') RETURNING id",
            &[&c.snapshot, &c.slot, &c.lsn, &c.source_time, &c.mark.rows, &c.mark.tables, &c.generation],
        )
        .await
        .map_err(|e| SyncError::query(side, "recording the clone", &e))?
        .get(0))
}

/// Records that the target's database is reused as it is: a live replica
/// of the primary since a cutover, streaming from `slot`, found complete
/// at generation `generation` (what the next release's verify then checks
/// and the gate trusts, exactly like a fresh copy's record).
pub async fn record_reuse(
    target: &Client,
    side: Side,
    slot: &str,
    lsn: &str,
    generation: i64,
    report: &serde_json::Value,
) -> Result<(), SyncError> {
    ensure_schema(target, side).await?;
    target
        .execute(
            "INSERT INTO switchyard.clones (snapshot, tables, rows, bytes, report, state, phase, slot, consistent_lsn, generation, kind) \
             VALUES ('replica', 0, 0, 0, $1::text::jsonb, 'complete', 'done', $2, $3, $4, 'replica')",
            &[&report.to_string(), &slot, &lsn, &generation],
        )
        .await
        .map_err(|e| SyncError::query(side, "recording the reused replica", &e))?;
    Ok(())
}

/// Records a clone's state (`running`, `failed`) and phase.
pub async fn mark_clone(
    target: &Client,
    side: Side,
    id: i64,
    state: &str,
    phase: Option<&str>,
    error: Option<&str>,
) -> Result<(), SyncError> {
    target
        .execute(
            "UPDATE switchyard.clones SET state = $2, phase = coalesce($3, phase), error = $4, finished_at = now() WHERE id = $1",
            &[&id, &state, &phase, &error],
        )
        .await
        .map_err(|e| SyncError::query(side, "recording the clone's progress", &e))?;
    Ok(())
}

/// Records a clone as `complete`, with its report: only after its last phase.
pub async fn finish_clone(
    target: &Client,
    side: Side,
    id: i64,
    report: &crate::clone::CloneReport,
) -> Result<(), SyncError> {
    let json = serde_json::to_string(report).expect("report serialises");
    target
        .execute(
            "UPDATE switchyard.clones SET tables = $2, rows = $3, bytes = $4, report = $5::text::jsonb, \
                    state = 'complete', phase = 'done', finished_at = now() WHERE id = $1",
            &[
                &id,
                &(report.tables.len() as i32),
                &(report.rows as i64),
                &(report.bytes as i64),
                &json,
            ],
        )
        .await
        .map_err(|e| SyncError::query(side, "recording the clone", &e))?;
    Ok(())
}

/// Records a verification's result, which the gate reads.
pub async fn record_verification(
    target: &Client,
    side: Side,
    report: &crate::verify::VerifyReport,
) -> Result<(), SyncError> {
    ensure_schema(target, side).await?;
    let json = serde_json::to_string(report).expect("report serialises");
    let (tables, mismatched) = (report.tables.len() as i32, report.mismatched() as i32);
    target
        .execute(
            "INSERT INTO switchyard.verifications (passed, schema_version, latest_migration, tables, mismatched, report) \
             VALUES ($1, $2, $3, $4, $5, $6::text::jsonb)",
            &[&report.passed, &report.schema_version, &report.latest_migration, &tables, &mismatched, &json],
        )
        .await
        .map_err(|e| SyncError::query(side, "recording the verification", &e))?;
    Ok(())
}

/// Reads the gate's inputs for the release in direction `dir` from its
/// target (the candidate's database), the primary from both sides'
/// records, and replication from both sides in replicate mode.
pub async fn gate_status(db: &DatabaseConfig, dir: Direction) -> Result<GateStatus, SyncError> {
    let side = dir.target();
    let target = pg::connect(side, url_of(db, side)).await?;
    let source = pg::connect(dir.source(), url_of(db, dir.source())).await;
    let (blue, green) = match side {
        Side::Green => (source.as_ref().map_err(|e| e.to_string()), Ok(&target)),
        Side::Blue => (Ok(&target), source.as_ref().map_err(|e| e.to_string())),
    };
    let primary = primary_from(blue, green).await?;
    let history = migrate::read_history(&target, side).await?;
    let newest = migrate::newest_on_disk(&db.migrations)?;
    let mut status = GateStatus::unjudged(side, &history, newest, last_clone(&target, side).await?);
    if let Ok(source) = &source {
        status.source_schema_version = migrate::read_history(source, dir.source())
            .await
            .ok()
            .and_then(|h| crate::flyway::current_version(&h).map(|v| v.to_string()));
    }
    status.primary = Some(primary);
    if db.mode == switchyard_config::SyncMode::Replicate {
        status.replication = Some(crate::replicate::status(db).await);
    } else if crate::gate::staleness_checked(db) && status.clone.is_some() {
        status.blue_changed = source_changed(dir, &target, reached(&source)?).await?;
    }
    let row = target
        .query_opt(
            "SELECT passed, schema_version, to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                    finished_at >= coalesce((SELECT max(finished_at) FROM switchyard.clones), '-infinity') \
               FROM switchyard.verifications ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await;
    let row = match row {
        Ok(r) => r,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => None,
        Err(e) => {
            return Err(SyncError::query(
                side,
                "reading switchyard.verifications",
                &e,
            ))
        }
    };
    let last = row.map(|row| LastVerification {
        passed: row.get(0),
        schema_version: row.get(1),
        at: row.get(2),
        after_last_clone: row.get(3),
    });
    judge(&mut status, last);
    Ok(status)
}

/// [`crate::gate::stale_copy`] on PostgreSQL: nothing to say before the
/// first clone.
pub async fn stale_copy(db: &DatabaseConfig, dir: Direction) -> Result<Option<String>, SyncError> {
    let side = dir.target();
    let target = pg::connect(side, url_of(db, side)).await?;
    if last_clone(&target, side).await?.is_none() {
        return Ok(None);
    }
    let source = pg::connect(dir.source(), url_of(db, dir.source())).await?;
    source_changed(dir, &target, &source).await
}

/// Snapshot mode: why the target's copy is stale, if its source took
/// writes since the newest clone (see [`crate::postgres::blue_changes`]).
async fn source_changed(
    dir: Direction,
    target: &Client,
    source: &Client,
) -> Result<Option<String>, SyncError> {
    let row = target
        .query_one(
            "SELECT blue_rows, blue_tables FROM switchyard.clones ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .map_err(|e| SyncError::query(dir.target(), "reading switchyard.clones", &e))?;
    let then = row.get::<_, Option<String>>(1).map(|tables| ChangeMark {
        rows: row.get(0),
        tables,
    });
    let now = crate::postgres::blue_changes::read(source, dir.source()).await?;
    Ok(crate::postgres::blue_changes::changed_since(
        dir,
        then.as_ref(),
        &now,
    ))
}

/// The source's connection, or why there is none, as an error.
fn reached(source: &Result<Client, SyncError>) -> Result<&Client, SyncError> {
    source.as_ref().map_err(|e| SyncError::Other(e.to_string()))
}
