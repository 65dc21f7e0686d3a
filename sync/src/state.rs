//! switchyard's own records in green (the `switchyard` schema): clone runs and
//! verification results, which the control plane's gates read. Nothing of
//! switchyard's is ever written to blue by these steps.

use crate::error::{Side, SyncError};
use crate::{migrate, pg};
use serde::Serialize;
use std::time::Duration;
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
         COMMIT;",
    )
    .await
}

/// What the control plane's database gate needs to know.
#[derive(Debug, Clone, Serialize)]
pub struct GateStatus {
    /// Verification passed at green's current schema version, and that version
    /// is the newest migration on disk.
    pub verified: bool,
    /// Why `verified` is false (or a summary when true).
    pub reason: String,
    /// Green's schema version (highest applied migration).
    pub schema_version: Option<String>,
    /// Newest versioned migration in the migrations directory.
    pub latest_migration: Option<String>,
    /// Schema version at which the last verification ran.
    pub verified_version: Option<String>,
    /// When the last verification finished (UTC, ISO 8601).
    pub verified_at: Option<String>,
    /// Replication lag; `None` until replication exists.
    pub replication_lag: Option<Duration>,
}

/// Reads the gate's inputs from green.
pub async fn gate_status(db: &DatabaseConfig) -> Result<GateStatus, SyncError> {
    let green = pg::connect(Side::Green, &db.green).await?;
    let history = migrate::read_history(&green).await?;
    let schema_version = migrate::current_version(&history);
    let latest = if db.migrations.is_dir() {
        migrate::latest_version(&migrate::scan(&db.migrations)?)
    } else {
        None
    };
    let mut status = GateStatus {
        verified: false,
        reason: String::new(),
        schema_version: schema_version.as_ref().map(|v| v.to_string()),
        latest_migration: latest.as_ref().map(|v| v.to_string()),
        verified_version: None,
        verified_at: None,
        replication_lag: None,
    };
    let row = green
        .query_opt(
            "SELECT passed, schema_version, to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
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
    let Some(row) = row else {
        status.reason = "green was never verified: run `switchyard sync verify`".into();
        return Ok(status);
    };
    let passed: bool = row.get(0);
    let at: Option<String> = row.get(1);
    status.verified_version = at.clone();
    status.verified_at = row.get(2);
    let verified_version = at.as_deref().and_then(migrate::Version::parse);
    if latest.is_some() && schema_version != latest {
        status.reason = format!(
            "green is at schema version {} but the newest migration is {}: run `switchyard sync migrate`",
            opt(&status.schema_version),
            opt(&status.latest_migration)
        );
    } else if verified_version != schema_version {
        status.reason = format!(
            "the last verification ran at schema version {} but green is now at {}: run `switchyard sync verify`",
            opt(&status.verified_version),
            opt(&status.schema_version)
        );
    } else if !passed {
        status.reason =
            "the last verification found differences: see `switchyard sync status`".into();
    } else {
        status.verified = true;
        status.reason = format!("verified at schema version {}", opt(&status.schema_version));
    }
    Ok(status)
}

fn opt(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("none")
}
