//! switchyard's own records in green (the `switchyard` schema): clone runs and
//! verification results, which the control plane's gates read. Nothing of
//! switchyard's is ever written to blue by these steps.

use crate::error::{Side, SyncError};
pub use crate::gate::{judge, CloneRecord, CloneState, GateStatus, LastVerification};
use crate::postgres::blue_changes::ChangeMark;
use crate::{migrate, pg};
use switchyard_config::DatabaseConfig;
use tokio_postgres::Client;

/// Creates the `switchyard` schema and its tables in green if missing.
pub async fn ensure_schema(green: &Client) -> Result<(), SyncError> {
    pg::exec(
        green,
        Side::Green,
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
           ADD COLUMN IF NOT EXISTS blue_rows int8, ADD COLUMN IF NOT EXISTS blue_tables text; \
         CREATE TABLE IF NOT EXISTS switchyard.migration_changes ( \
           id bigserial PRIMARY KEY, script text NOT NULL, kind text NOT NULL, name text NOT NULL, \
           UNIQUE (kind, name, script)); \
         COMMIT;",
    )
    .await
}

/// The table of committed cutovers, created by the first one
/// ([`record_primary`]); [`primary_since`] reads a missing one as none.
const CUTOVERS: &str = "CREATE SCHEMA IF NOT EXISTS switchyard; \
    CREATE TABLE IF NOT EXISTS switchyard.cutovers ( \
      id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), \
      primary_side text NOT NULL CHECK (primary_side IN ('blue', 'green')))";

/// Records in green which side's database is the primary after a
/// committed cutover, so nothing ever replaces green's contents while it
/// holds the application's only copy of recent writes (see
/// [`primary_since`]). Called by [`crate::cutover::switch`] while the
/// writes are still held, so it is one round trip on its open connection,
/// with a few seconds of its own whatever the cutover's deadline left.
pub async fn record_primary(green: &Client, primary: Side) -> Result<(), SyncError> {
    pg::exec(
        green,
        Side::Green,
        "recording the cutover",
        &format!(
            "SET statement_timeout = 5000; {CUTOVERS}; \
             INSERT INTO switchyard.cutovers (primary_side) VALUES ('{primary}')"
        ),
    )
    .await
}

/// When green became the primary, if the last committed cutover made it so
/// (and none since moved the primary back to blue).
pub async fn primary_since(green: &Client) -> Result<Option<String>, SyncError> {
    let row = green
        .query_opt(
            "SELECT primary_side, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
             FROM switchyard.cutovers ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await;
    match row {
        Ok(row) => {
            Ok(row.and_then(|r| (r.get::<_, String>(0) == "green").then(|| r.get::<_, String>(1))))
        }
        Err(e) if not_recorded_yet(&e) => Ok(None),
        Err(e) => Err(SyncError::query(
            Side::Green,
            "reading switchyard.cutovers",
            &e,
        )),
    }
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
/// own sessions and client programs on green (a killed `pg_restore` leaves
/// its server process building an index otherwise), marks a running clone
/// as failed, and says what was running.
pub async fn interrupted(db: &DatabaseConfig, signal: &str) -> Result<String, SyncError> {
    let green = pg::connect(Side::Green, &db.green).await?;
    let ours = "FROM pg_stat_activity WHERE datname = current_database() \
                AND pid <> pg_backend_pid() AND application_name LIKE $1::text || '%'";
    let tag = crate::pg::tag_sessions();
    let _ = green
        .query(&format!("SELECT pg_terminate_backend(pid) {ours}"), &[&tag])
        .await;
    // pg_terminate_backend only signals; wait (briefly) until they are gone,
    // so "ended" is true when this process says so and exits.
    for _ in 0..50 {
        match green
            .query_one(&format!("SELECT count(*) {ours}"), &[&tag])
            .await
        {
            Ok(r) if r.get::<_, i64>(0) > 0 => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            _ => break,
        }
    }
    let marked = green
        .query_opt(
            "UPDATE switchyard.clones SET state = 'failed', error = $1, finished_at = now() \
              WHERE state = 'running' RETURNING phase",
            &[&format!("interrupted by {signal}")],
        )
        .await;
    Ok(match marked {
        Ok(Some(r)) => format!(
            "the clone was interrupted in phase {}; green is marked incomplete, so verify and the rollout gate refuse it: run `switchyard sync clone --replace`",
            r.get::<_, Option<String>>(0).unwrap_or_else(|| "?".into())
        ),
        _ => "nothing in green was left half done".into(),
    })
}

/// The newest clone recorded in green, if any.
pub async fn last_clone(green: &Client) -> Result<Option<CloneRecord>, SyncError> {
    let row = green
        .query_opt(
            "SELECT id, state, phase, error, slot, consistent_lsn, \
                    to_char(blue_time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
                    to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') \
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
        })),
        Ok(None) => Ok(None),
        Err(e) if not_recorded_yet(&e) => Ok(None),
        Err(e) => Err(SyncError::query(
            Side::Green,
            "reading switchyard.clones",
            &e,
        )),
    }
}

/// Records a clone as `running` from its first change to green; returns its id.
pub async fn start_clone(
    green: &Client,
    snapshot: &str,
    slot: Option<&str>,
    lsn: &str,
    blue_time: &str,
    mark: &ChangeMark,
) -> Result<i64, SyncError> {
    ensure_schema(green).await?;
    Ok(green
        .query_one(
            "INSERT INTO switchyard.clones (snapshot, tables, rows, bytes, report, state, phase, slot, consistent_lsn, blue_time, blue_rows, blue_tables) \
             VALUES ($1, 0, 0, 0, '{}', 'running', 'schema', $2, $3, $4::text::timestamptz, $5, $6) RETURNING id",
            &[&snapshot, &slot, &lsn, &blue_time, &mark.rows, &mark.tables],
        )
        .await
        .map_err(|e| SyncError::query(Side::Green, "recording the clone", &e))?
        .get(0))
}

/// Records a clone's state (`running`, `failed`) and phase.
pub async fn mark_clone(
    green: &Client,
    id: i64,
    state: &str,
    phase: Option<&str>,
    error: Option<&str>,
) -> Result<(), SyncError> {
    green
        .execute(
            "UPDATE switchyard.clones SET state = $2, phase = coalesce($3, phase), error = $4, finished_at = now() WHERE id = $1",
            &[&id, &state, &phase, &error],
        )
        .await
        .map_err(|e| SyncError::query(Side::Green, "recording the clone's progress", &e))?;
    Ok(())
}

/// Records a clone as `complete`, with its report: only after its last phase.
pub async fn finish_clone(
    green: &Client,
    id: i64,
    report: &crate::clone::CloneReport,
) -> Result<(), SyncError> {
    let json = serde_json::to_string(report).expect("report serialises");
    green
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
        .map_err(|e| SyncError::query(Side::Green, "recording the clone", &e))?;
    Ok(())
}

/// Records a verification's result, which the gate reads.
pub async fn record_verification(
    green: &Client,
    report: &crate::verify::VerifyReport,
) -> Result<(), SyncError> {
    ensure_schema(green).await?;
    let json = serde_json::to_string(report).expect("report serialises");
    let (tables, mismatched) = (report.tables.len() as i32, report.mismatched() as i32);
    green
        .execute(
            "INSERT INTO switchyard.verifications (passed, schema_version, latest_migration, tables, mismatched, report) \
             VALUES ($1, $2, $3, $4, $5, $6::text::jsonb)",
            &[&report.passed, &report.schema_version, &report.latest_migration, &tables, &mismatched, &json],
        )
        .await
        .map_err(|e| SyncError::query(Side::Green, "recording the verification", &e))?;
    Ok(())
}

/// Reads the gate's inputs from green.
pub async fn gate_status(db: &DatabaseConfig) -> Result<GateStatus, SyncError> {
    let green = pg::connect(Side::Green, &db.green).await?;
    let history = migrate::read_history(&green).await?;
    let newest = migrate::newest_on_disk(&db.migrations)?;
    let mut status = GateStatus::unjudged(&history, newest, last_clone(&green).await?);
    if db.mode == switchyard_config::SyncMode::Replicate {
        status.replication = Some(crate::replicate::status(db).await);
    } else if crate::gate::staleness_checked(db) && status.clone.is_some() {
        status.blue_changed = blue_changed(db, &green).await?;
    }
    let row = green
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
                Side::Green,
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
pub async fn stale_copy(db: &DatabaseConfig) -> Result<Option<String>, SyncError> {
    let green = pg::connect(Side::Green, &db.green).await?;
    if last_clone(&green).await?.is_none() {
        return Ok(None);
    }
    blue_changed(db, &green).await
}

/// Snapshot mode: why green's copy is stale, if blue took writes since
/// the newest clone (see [`crate::postgres::blue_changes`]).
async fn blue_changed(db: &DatabaseConfig, green: &Client) -> Result<Option<String>, SyncError> {
    let row = green
        .query_one(
            "SELECT blue_rows, blue_tables FROM switchyard.clones ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .map_err(|e| SyncError::query(Side::Green, "reading switchyard.clones", &e))?;
    let then = row.get::<_, Option<String>>(1).map(|tables| ChangeMark {
        rows: row.get(0),
        tables,
    });
    let blue = pg::connect(Side::Blue, &db.blue).await?;
    let now = crate::postgres::blue_changes::read(&blue).await?;
    Ok(crate::postgres::blue_changes::changed_since(
        then.as_ref(),
        &now,
    ))
}
