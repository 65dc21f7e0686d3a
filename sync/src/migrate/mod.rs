//! Flyway-compatible migrations: `V<version>__<desc>.sql` in version order, then
//! `R__<desc>.sql` whenever their checksum changes, recorded in a
//! `flyway_schema_history` table with Flyway's columns and checksum so a team
//! coming from Flyway keeps its history (and can go back).
//!
//! Each migration runs in its own transaction unless it cannot (it contains
//! `CREATE INDEX CONCURRENTLY` and the like, or a `<script>.conf` next to it says
//! `executeInTransaction=false`). A session advisory lock on green makes
//! concurrent runners take turns; the second one then finds nothing to do.

mod history;
mod plan;
mod source;
mod sql;

pub use history::*;
pub use plan::*;
pub use source::*;
pub use sql::*;

use crate::error::{Side, SyncError};
use crate::pg;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;
use tokio_postgres::Client;

/// Advisory lock key shared by every switchyard migrate runner.
const LOCK_KEY: i64 = 0x5357_5943_4d49_4752; // "SWYCMIGR"
/// The history table's name (Flyway's default).
pub const HISTORY_TABLE: &str = "flyway_schema_history";

/// The outcome of `migrate`.
#[derive(Debug, Clone, Serialize)]
pub struct MigrateReport {
    pub dry_run: bool,
    /// Scripts applied (or that would be, in a dry run), in order.
    pub applied: Vec<String>,
    pub schema_version: Option<String>,
}

/// How [`migrate`] runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct MigrateOptions<'a> {
    /// List what would be applied without applying it.
    pub dry_run: bool,
    /// Replicate mode: blue's published columns; each migration is checked
    /// for compatibility with replication before it commits, and rolled
    /// back when it would break it.
    pub published: Option<&'a crate::compat::PublishedSchema>,
    /// Owners and grants are part of what verify compares (`roles = "copy"`),
    /// so a migration's changes to them are recorded too.
    pub roles: bool,
}

/// Applies pending migrations to green (or lists them with `dry_run`).
/// What each migration changes in green's catalog is recorded with it, so
/// verify can tell those differences from ones nobody intended.
pub async fn migrate(
    dir: &Path,
    green_url: &str,
    opts: MigrateOptions<'_>,
) -> Result<MigrateReport, SyncError> {
    let dry_run = opts.dry_run;
    let migrations = scan(dir)?;
    let client = pg::connect(Side::Green, green_url).await?;
    if dry_run {
        let history = read_history(&client).await?;
        let problems = validate_against(&migrations, &history);
        if !problems.is_empty() {
            return Err(SyncError::Validate { problems });
        }
        return Ok(MigrateReport {
            dry_run,
            applied: pending(&migrations, &history)
                .iter()
                .map(|m| m.script.clone())
                .collect(),
            schema_version: current_version(&history).map(|v| v.to_string()),
        });
    }
    client
        .query("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(|e| SyncError::query(Side::Green, "waiting for the migration lock", &e))?;
    let result = migrate_locked(&client, &migrations, opts).await;
    // The lock also goes away with the connection; unlocking is a courtesy.
    let _ = client
        .query("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    result
}

async fn migrate_locked(
    client: &Client,
    migrations: &[Migration],
    opts: MigrateOptions<'_>,
) -> Result<MigrateReport, SyncError> {
    let published = opts.published;
    crate::state::ensure_schema(client).await?;
    let fingerprint = || crate::catalog::fingerprint(client, Side::Green, opts.roles);
    let table = match history_table(client).await? {
        Some(t) => t,
        None => {
            pg::exec(
                client,
                Side::Green,
                "creating flyway_schema_history",
                &format!(
                    "CREATE TABLE {HISTORY_TABLE} (\
                       installed_rank INT NOT NULL, version VARCHAR(50), description VARCHAR(200) NOT NULL, \
                       type VARCHAR(20) NOT NULL, script VARCHAR(1000) NOT NULL, checksum INTEGER, \
                       installed_by VARCHAR(100) NOT NULL, installed_on TIMESTAMP NOT NULL DEFAULT now(), \
                       execution_time INTEGER NOT NULL, success BOOLEAN NOT NULL, \
                       CONSTRAINT {HISTORY_TABLE}_pk PRIMARY KEY (installed_rank)); \
                     CREATE INDEX {HISTORY_TABLE}_s_idx ON {HISTORY_TABLE} (success);"
                ),
            )
            .await?;
            history_table(client).await?.ok_or_else(|| {
                SyncError::Other("flyway_schema_history vanished after creation".into())
            })?
        }
    };
    let history = read_history(client).await?;
    let problems = validate_against(migrations, &history);
    if !problems.is_empty() {
        return Err(SyncError::Validate { problems });
    }
    let last_rank = history.iter().map(|a| a.installed_rank).max().unwrap_or(0);
    let mut applied = Vec::new();
    for (rank, m) in (last_rank + 1..).zip(pending(migrations, &history)) {
        let started = Instant::now();
        let insert = |success: bool, ms: i64| {
            format!(
                "INSERT INTO {table} (installed_rank, version, description, type, script, checksum, \
                   installed_by, execution_time, success) VALUES ({rank}, {}, {}, 'SQL', {}, {}, current_user, {ms}, {success})",
                m.version.as_ref().map(|v| pg::literal(&v.to_string())).unwrap_or_else(|| "NULL".into()),
                pg::literal(&m.description),
                pg::literal(&m.script),
                m.checksum
            )
        };
        let failed = |e: &tokio_postgres::Error, extra: &str| SyncError::MigrationFailed {
            script: m.path.display().to_string(),
            message: crate::error::pg_message(e),
            extra: extra.to_string(),
        };
        if m.transactional {
            pg::exec(client, Side::Green, "starting a migration", "BEGIN").await?;
            let before = match fingerprint().await {
                Ok(c) => c,
                Err(e) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    return Err(e);
                }
            };
            if let Err(e) = client.batch_execute(&format!("{}\n;\n", m.sql)).await {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(failed(&e, ""));
            }
            if let Some(published) = published {
                let problems = match crate::compat::check(client, published).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = client.batch_execute("ROLLBACK").await;
                        return Err(e);
                    }
                };
                if !problems.is_empty() {
                    let _ = client.batch_execute("ROLLBACK").await;
                    return Err(SyncError::Incompatible {
                        script: m.path.display().to_string(),
                        problems: format!(
                            "{} (it was rolled back and not recorded)",
                            problems
                                .iter()
                                .map(|p| p.to_string())
                                .collect::<Vec<_>>()
                                .join("; ")
                        ),
                    });
                }
            }
            let recorded = async {
                let after = fingerprint().await?;
                crate::catalog::record_changes(
                    client,
                    &m.script,
                    &crate::catalog::changed(&before, &after),
                )
                .await
            }
            .await;
            if let Err(e) = recorded {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(e);
            }
            let ms = started.elapsed().as_millis() as i64;
            if let Err(e) = client
                .batch_execute(&format!("{}; COMMIT", insert(true, ms)))
                .await
            {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(failed(&e, ""));
            }
        } else {
            let before = fingerprint().await?;
            for stmt in split_statements(&m.sql) {
                if let Err(e) = client.batch_execute(&stmt).await {
                    let ms = started.elapsed().as_millis() as i64;
                    let _ = client.batch_execute(&insert(false, ms)).await;
                    return Err(failed(
                        &e,
                        " (it ran outside a transaction, so statements before the failing one stayed applied; it is recorded as failed)",
                    ));
                }
            }
            let ms = started.elapsed().as_millis() as i64;
            pg::exec(
                client,
                Side::Green,
                "recording a migration",
                &insert(true, ms),
            )
            .await?;
            let after = fingerprint().await?;
            crate::catalog::record_changes(
                client,
                &m.script,
                &crate::catalog::changed(&before, &after),
            )
            .await?;
            if let Some(published) = published {
                let problems = crate::compat::check(client, published).await?;
                if !problems.is_empty() {
                    return Err(SyncError::Incompatible {
                        script: m.path.display().to_string(),
                        problems: format!(
                            "{} (it ran outside a transaction, so it is applied: undo it by hand, or let replication stop and re-clone)",
                            problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; ")
                        ),
                    });
                }
            }
        }
        tracing::info!(script = %m.script, "applied migration");
        applied.push(m.script.clone());
    }
    let history = read_history(client).await?;
    Ok(MigrateReport {
        dry_run: false,
        applied,
        schema_version: current_version(&history).map(|v| v.to_string()),
    })
}

/// Checks the migrations directory against green's history.
pub async fn validate(dir: &Path, green_url: &str) -> Result<Vec<String>, SyncError> {
    let migrations = scan(dir)?;
    let client = pg::connect(Side::Green, green_url).await?;
    let history = read_history(&client).await?;
    Ok(validate_against(&migrations, &history))
}

/// Lists applied and pending migrations.
pub async fn info(dir: &Path, green_url: &str) -> Result<Vec<InfoRow>, SyncError> {
    let migrations = scan(dir)?;
    let client = pg::connect(Side::Green, green_url).await?;
    let history = read_history(&client).await?;
    Ok(info_rows(&migrations, &history))
}
