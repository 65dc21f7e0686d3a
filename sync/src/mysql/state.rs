//! switchyard's records on green's MySQL/MariaDB server: the `switchyard`
//! database with `clones`, `verifications` and `cutovers`, one row per
//! event, keyed by the green database they are about (one server may hold
//! several). The same records the PostgreSQL engine keeps in green's
//! `switchyard` schema, read by the same gate ([`crate::gate::judge`]).

use super::{literal, Session};
use crate::error::SyncError;
use crate::flyway as migrate;
use crate::gate::{CloneRecord, CloneState, GateStatus, LastVerification};
use switchyard_config::DatabaseConfig;

const SCHEMA: &str = "CREATE DATABASE IF NOT EXISTS switchyard; \
    CREATE TABLE IF NOT EXISTS switchyard.clones ( \
      id BIGINT AUTO_INCREMENT PRIMARY KEY, db VARCHAR(64) NOT NULL, \
      finished_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
      state VARCHAR(16) NOT NULL, phase VARCHAR(32), error TEXT, \
      gtid TEXT, binlog_file VARCHAR(255), binlog_pos BIGINT, blue_time DATETIME(6), \
      tables INT NOT NULL DEFAULT 0, `rows` BIGINT NOT NULL DEFAULT 0, bytes BIGINT NOT NULL DEFAULT 0, \
      report LONGTEXT, KEY (db, id)) ENGINE=InnoDB; \
    CREATE TABLE IF NOT EXISTS switchyard.verifications ( \
      id BIGINT AUTO_INCREMENT PRIMARY KEY, db VARCHAR(64) NOT NULL, \
      finished_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
      passed BOOLEAN NOT NULL, schema_version VARCHAR(64), latest_migration VARCHAR(64), \
      tables INT NOT NULL, mismatched INT NOT NULL, report LONGTEXT, KEY (db, id)) ENGINE=InnoDB; \
    CREATE TABLE IF NOT EXISTS switchyard.cutovers ( \
      id BIGINT AUTO_INCREMENT PRIMARY KEY, db VARCHAR(64) NOT NULL, \
      at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
      primary_side VARCHAR(8) NOT NULL, KEY (db, id)) ENGINE=InnoDB";

/// Creates the `switchyard` database and its tables on green if missing.
pub async fn ensure_schema(green: &mut Session) -> Result<(), SyncError> {
    green.exec("creating the switchyard database", SCHEMA).await
}

/// `(database, table)` missing: nothing recorded yet.
fn not_recorded_yet(e: &SyncError) -> bool {
    matches!(e, SyncError::Query { message, .. }
        if message.contains("error 1146") || message.contains("error 1049"))
}

const ISO: &str = "'%Y-%m-%dT%H:%i:%s.%fZ'";

/// The newest clone recorded for green's database.
pub async fn last_clone(green: &mut Session) -> Result<Option<CloneRecord>, SyncError> {
    let db = literal(&green.database);
    let rows = green
        .rows(
            "reading switchyard.clones",
            &format!(
                "SELECT id, state, phase, error, gtid, DATE_FORMAT(blue_time, {ISO}), DATE_FORMAT(finished_at, {ISO}) \
                   FROM switchyard.clones WHERE db = {db} ORDER BY id DESC LIMIT 1"
            ),
        )
        .await;
    let rows = match rows {
        Ok(r) => r,
        Err(e) if not_recorded_yet(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(r) = rows.first() else {
        return Ok(None);
    };
    let get = |i: usize| -> Option<String> { r.get::<Option<String>, _>(i).flatten() };
    let state = match get(1).as_deref() {
        Some("running") => CloneState::Running,
        Some("failed") => CloneState::Failed,
        Some("complete") => CloneState::Complete,
        other => {
            return Err(SyncError::Other(format!(
                "green's switchyard.clones has a clone in state {other:?}, which this version does not know; \
                 green is not trusted: run `switchyard sync clone --replace`"
            )))
        }
    };
    Ok(Some(CloneRecord {
        id: r.get::<i64, _>(0).unwrap_or(0),
        state,
        phase: get(2),
        error: get(3),
        slot: None,
        consistent_lsn: get(4),
        blue_time: get(5),
        at: get(6).unwrap_or_default(),
        generation: 0,
        kind: crate::gate::CloneKind::Copy,
    }))
}

/// Where blue's log stood when the clone's snapshot was taken.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LogPosition {
    /// `@@gtid_binlog_pos` (MariaDB) or `@@gtid_executed` (MySQL).
    pub gtid: String,
    /// `SHOW MASTER STATUS`, when blue writes a binary log.
    pub binlog_file: Option<String>,
    pub binlog_pos: Option<u64>,
    /// Blue's clock (UTC).
    pub blue_time: String,
}

/// Records a clone as `running` from its first change to green.
pub async fn start_clone(green: &mut Session, at: &LogPosition) -> Result<i64, SyncError> {
    ensure_schema(green).await?;
    let sql = format!(
        "INSERT INTO switchyard.clones (db, state, phase, gtid, binlog_file, binlog_pos, blue_time) \
         VALUES ({}, 'running', 'schema', {}, {}, {}, {})",
        literal(&green.database),
        literal(&at.gtid),
        at.binlog_file.as_deref().map_or("NULL".into(), literal),
        at.binlog_pos.map_or("NULL".into(), |p| p.to_string()),
        literal(&at.blue_time),
    );
    green.exec("recording the clone", &sql).await?;
    let id = green
        .text("recording the clone", "SELECT LAST_INSERT_ID()")
        .await?
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(id)
}

/// Records a clone's state and phase (and error).
pub async fn mark_clone(
    green: &mut Session,
    id: i64,
    state: CloneState,
    phase: &str,
    error: Option<&str>,
) -> Result<(), SyncError> {
    let sql = format!(
        "UPDATE switchyard.clones SET state = {}, phase = {}, error = {}, finished_at = CURRENT_TIMESTAMP(6) WHERE id = {id}",
        literal(state.as_str()),
        literal(phase),
        error.map_or("NULL".into(), literal)
    );
    green.exec("recording the clone's progress", &sql).await
}

/// Records a clone as complete, with its report.
pub async fn finish_clone(
    green: &mut Session,
    id: i64,
    report: &super::clone::CloneReport,
) -> Result<(), SyncError> {
    let json = serde_json::to_string(report).expect("report serialises");
    let sql = format!(
        "UPDATE switchyard.clones SET state = 'complete', phase = 'done', tables = {}, `rows` = {}, bytes = {}, \
                report = {}, finished_at = CURRENT_TIMESTAMP(6) WHERE id = {id}",
        report.tables.len(),
        report.rows,
        report.bytes,
        literal(&json)
    );
    green.exec("recording the clone", &sql).await
}

/// Records a verification's result, which the gate reads.
pub async fn record_verification(
    green: &mut Session,
    report: &crate::verdict::VerifyReport,
) -> Result<(), SyncError> {
    ensure_schema(green).await?;
    let json = serde_json::to_string(report).expect("report serialises");
    let opt = |v: &Option<String>| v.as_deref().map_or("NULL".into(), literal);
    let sql = format!(
        "INSERT INTO switchyard.verifications (db, passed, schema_version, latest_migration, tables, mismatched, report) \
         VALUES ({}, {}, {}, {}, {}, {}, {})",
        literal(&green.database),
        report.passed,
        opt(&report.schema_version),
        opt(&report.latest_migration),
        report.tables.len(),
        report.mismatched(),
        literal(&json)
    );
    green.exec("recording the verification", &sql).await
}

/// Records which side is the primary after a committed cutover.
pub async fn record_primary(green: &mut Session, primary: crate::Side) -> Result<(), SyncError> {
    ensure_schema(green).await?;
    let sql = format!(
        "INSERT INTO switchyard.cutovers (db, primary_side) VALUES ({}, '{primary}')",
        literal(&green.database)
    );
    green.exec("recording the cutover", &sql).await
}

/// When green became the primary, if the last cutover made it so.
pub async fn primary_since(green: &mut Session) -> Result<Option<String>, SyncError> {
    let sql = format!(
        "SELECT primary_side, DATE_FORMAT(at, {ISO}) FROM switchyard.cutovers WHERE db = {} ORDER BY id DESC LIMIT 1",
        literal(&green.database)
    );
    match green.rows("reading switchyard.cutovers", &sql).await {
        Ok(rows) => Ok(rows.first().and_then(|r| {
            let side: Option<String> = r.get(0);
            (side.as_deref() == Some("green")).then(|| r.get::<String, _>(1).unwrap_or_default())
        })),
        Err(e) if not_recorded_yet(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The primary as green's record of cutovers says (MySQL/MariaDB records
/// them in green only: the engine supports the first release of the cycle,
/// see [`super::refuse_later_releases`]).
pub async fn primary(db: &DatabaseConfig) -> Result<crate::primary::Primary, SyncError> {
    let mut green = super::connect(crate::Side::Green, &db.green).await?;
    let sql = format!(
        "SELECT id, primary_side, DATE_FORMAT(at, {ISO}) FROM switchyard.cutovers WHERE db = {} ORDER BY id DESC LIMIT 1",
        literal(&green.database)
    );
    let rows = match green.rows("reading switchyard.cutovers", &sql).await {
        Ok(rows) => rows,
        Err(e) if not_recorded_yet(&e) => Vec::new(),
        Err(e) => return Err(e),
    };
    green.close().await;
    let mut p = crate::primary::Primary::initial();
    if let Some(r) = rows.first() {
        let side: Option<String> = r.get(1);
        p.generation = r.get::<i64, _>(0).unwrap_or(1);
        p.since = r.get::<Option<String>, _>(2).flatten();
        if side.as_deref() == Some("green") {
            p.side = crate::Side::Green;
            p.kind = Some(crate::primary::CutoverKind::Promote);
            p.promoted = true;
        } else {
            p.kind = Some(crate::primary::CutoverKind::Rollback);
        }
    }
    Ok(p)
}

/// [`record_primary`] on a new session to green.
pub async fn record_primary_of(db: &DatabaseConfig, primary: crate::Side) -> Result<(), SyncError> {
    let mut green = super::connect(crate::Side::Green, &db.green).await?;
    let r = record_primary(&mut green, primary).await;
    green.close().await;
    r
}

/// Reads the gate's inputs from green (see [`crate::gate::gate_status`]).
pub async fn gate_status(
    db: &DatabaseConfig,
    dir: crate::replication::Direction,
) -> Result<GateStatus, SyncError> {
    if let Err(e) = super::refuse_later_releases(dir) {
        // The next release cannot be prepared on this engine; what there is
        // to see (the replication back to blue) is still read.
        let mut status = GateStatus::unjudged(dir.target(), &[], None, None);
        status.reason = e.to_string();
        status.primary = Some(primary(db).await?);
        if db.mode == switchyard_config::SyncMode::Replicate {
            status.replication = Some(super::replica::status(db).await);
        }
        return Ok(status);
    }
    let mut green = super::connect(crate::Side::Green, &db.green).await?;
    let history = super::migrate::read_history(&mut green).await?;
    let newest = migrate::newest_on_disk(&db.migrations)?;
    let clone = last_clone(&mut green).await?;
    let mut status = GateStatus::unjudged(crate::Side::Green, &history, newest, clone);
    let dbname = literal(&green.database);
    let rows = green
        .rows(
            "reading switchyard.verifications",
            &format!(
                "SELECT passed, schema_version, DATE_FORMAT(finished_at, '%Y-%m-%dT%H:%i:%sZ'), \
                        finished_at >= IFNULL((SELECT MAX(finished_at) FROM switchyard.clones WHERE db = {dbname}), '1000-01-01') \
                   FROM switchyard.verifications WHERE db = {dbname} ORDER BY id DESC LIMIT 1"
            ),
        )
        .await;
    let rows = match rows {
        Ok(r) => r,
        Err(e) if not_recorded_yet(&e) => Vec::new(),
        Err(e) => return Err(e),
    };
    green.close().await;
    if db.mode == switchyard_config::SyncMode::Replicate {
        status.replication = Some(super::replica::status(db).await);
    }
    let last = rows.first().map(|r| LastVerification {
        passed: r.get::<i64, _>(0).unwrap_or(0) != 0,
        schema_version: r.get::<Option<String>, _>(1).flatten(),
        at: r.get::<Option<String>, _>(2).flatten(),
        after_last_clone: r.get::<i64, _>(3).unwrap_or(0) != 0,
    });
    crate::gate::judge(&mut status, last);
    Ok(status)
}

/// After an interrupted sync step: marks a running clone of green's
/// database as failed, and says what was running.
pub async fn interrupted(
    db: &DatabaseConfig,
    dir: crate::replication::Direction,
    signal: &str,
) -> Result<String, SyncError> {
    super::refuse_later_releases(dir)?;
    let mut green = super::connect(crate::Side::Green, &db.green).await?;
    let sql = format!(
        "UPDATE switchyard.clones SET state = 'failed', error = {}, finished_at = CURRENT_TIMESTAMP(6) \
          WHERE db = {} AND state = 'running'",
        literal(&format!("interrupted by {signal}")),
        literal(&green.database)
    );
    let marked = green.exec("marking the clone as interrupted", &sql).await;
    let affected = green.conn.affected_rows();
    green.close().await;
    Ok(match marked {
        Ok(()) if affected > 0 => "the clone was interrupted; green is marked incomplete, so verify and the rollout gate refuse it: run `switchyard sync clone --replace`".into(),
        _ => "nothing in green was left half done".into(),
    })
}
