//! Flyway-compatible migrations: `V<version>__<desc>.sql` in version order, then
//! `R__<desc>.sql` whenever their checksum changes, recorded in a
//! `flyway_schema_history` table with Flyway's columns and checksum so a team
//! coming from Flyway keeps its history (and can go back).
//!
//! Each migration runs in its own transaction unless it cannot (it contains
//! `CREATE INDEX CONCURRENTLY` and the like, or a `<script>.conf` next to it says
//! `executeInTransaction=false`). A session advisory lock on green makes
//! concurrent runners take turns; the second one then finds nothing to do.
//!
//! As teams use Flyway: `${placeholders}` (from `[database.placeholders]`
//! and Flyway's `${flyway:...}`), `beforeMigrate`/`beforeEachMigrate`/
//! `afterEachMigrate`/`afterMigrate` SQL callbacks, `baseline` for a
//! database that already has its schema, and `repair` for a failed
//! migration's row and for checksums after an intentional edit. A failure
//! names the file, the line of the failing statement, the server's message,
//! and what was kept.

mod history;

pub use crate::flyway::*;
pub use history::*;

use crate::error::{Side, SyncError};
pub use crate::flyway::{BaselineReport, MigrateReport, RepairReport};
use crate::pg;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;
use tokio_postgres::Client;

/// Advisory lock key shared by every switchyard migrate runner.
const LOCK_KEY: i64 = 0x5357_5943_4d49_4752; // "SWYCMIGR"

/// How [`migrate`] runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct MigrateOptions<'a> {
    /// List what would be applied without applying it.
    pub dry_run: bool,
    /// Replicate mode: the primary's published columns; each migration is checked
    /// for compatibility with replication before it commits, and rolled
    /// back when it would break it.
    pub published: Option<&'a crate::compat::PublishedSchema>,
    /// Owners and grants are part of what verify compares (`roles = "copy"`),
    /// so a migration's changes to them are recorded too.
    pub roles: bool,
    /// `[database.placeholders]`.
    pub placeholders: Option<&'a BTreeMap<String, String>>,
}

/// Applies pending migrations to the candidate's database (`side`, never
/// the primary; or lists them with `dry_run`). What each migration changes
/// in its catalog is recorded with it, so verify can tell those differences
/// from ones nobody intended.
pub async fn migrate(
    dir: &Path,
    side: Side,
    green_url: &str,
    opts: MigrateOptions<'_>,
) -> Result<MigrateReport, SyncError> {
    let migrations = scan(dir)?;
    let callbacks = scan_callbacks(dir)?;
    let client = pg::connect_target(side, green_url).await?;
    if opts.dry_run {
        let history = read_history(&client, side).await?;
        let problems = validate_against(&migrations, &history);
        if !problems.is_empty() {
            return Err(SyncError::Validate { problems });
        }
        return Ok(MigrateReport {
            dry_run: true,
            applied: pending(&migrations, &history)
                .iter()
                .map(|m| m.script.clone())
                .collect(),
            callbacks: Vec::new(),
            schema_version: current_version(&history).map(|v| v.to_string()),
        });
    }
    lock(&client, side).await?;
    let result = migrate_locked(&client, side, &migrations, &callbacks, opts).await;
    unlock(&client).await;
    result
}

async fn lock(client: &Client, side: Side) -> Result<(), SyncError> {
    client
        .query("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(|e| SyncError::query(side, "waiting for the migration lock", &e))?;
    Ok(())
}

/// The lock also goes away with the connection; unlocking is a courtesy.
async fn unlock(client: &Client) {
    let _ = client
        .query("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
}

/// Creates the history table if missing; returns its qualified name.
async fn ensure_history(client: &Client, side: Side) -> Result<String, SyncError> {
    if let Some(t) = history_table(client, side).await? {
        return Ok(t);
    }
    pg::exec(
        client,
        side,
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
    history_table(client, side)
        .await?
        .ok_or_else(|| SyncError::Other("flyway_schema_history vanished after creation".into()))
}

/// Flyway's built-in placeholders plus the configured ones.
async fn placeholder_values(
    client: &Client,
    side: Side,
    configured: Option<&BTreeMap<String, String>>,
) -> Result<BTreeMap<String, String>, SyncError> {
    let r = client
        .query_one(
            "SELECT current_schema()::text, current_user::text, current_database()::text, \
                    to_char(now(), 'YYYY-MM-DD HH24:MI:SS')",
            &[],
        )
        .await
        .map_err(|e| SyncError::query(side, "reading placeholder values", &e))?;
    let mut v = BTreeMap::new();
    v.insert(
        "flyway:defaultSchema".into(),
        r.get::<_, Option<String>>(0).unwrap_or_default(),
    );
    v.insert("flyway:user".into(), r.get(1));
    v.insert("flyway:database".into(), r.get(2));
    v.insert("flyway:timestamp".into(), r.get(3));
    v.insert("flyway:table".into(), HISTORY_TABLE.into());
    if let Some(c) = configured {
        v.extend(c.iter().map(|(k, val)| (k.clone(), val.clone())));
    }
    Ok(v)
}

/// The server's message for a failed statement, and the line of `sql` it
/// points at (from the error position, or `fallback`).
fn failure_at(e: &tokio_postgres::Error, sql: &str, fallback: usize) -> (usize, String) {
    let line = e
        .as_db_error()
        .and_then(|d| match d.position() {
            Some(tokio_postgres::error::ErrorPosition::Original(p)) => {
                let byte = sql
                    .char_indices()
                    .nth((*p as usize).saturating_sub(1))
                    .map(|(i, _)| i)
                    .unwrap_or(sql.len());
                Some(line_of(sql, byte))
            }
            _ => None,
        })
        .unwrap_or(fallback);
    (line, crate::error::pg_message(e))
}

/// Runs a callback's statements on `client` (inside whatever transaction it is in).
async fn run_callback(
    client: &Client,
    side: Side,
    cb: &Callback,
    values: &BTreeMap<String, String>,
) -> Result<(), SyncError> {
    let mut values = values.clone();
    values.insert("flyway:filename".into(), cb.script.clone());
    let sql = substitute(&cb.sql, &values, &cb.path)?;
    client.batch_execute(&sql).await.map_err(|e| {
        let (line, message) = failure_at(&e, &sql, 1);
        SyncError::MigrationFailed {
            side,
            script: cb.path.display().to_string(),
            line,
            message,
            kept: "the callback's transaction was rolled back".into(),
        }
    })
}

/// Runs each of `callbacks` (`beforeMigrate`, `afterMigrate`) in a
/// transaction of its own, noting it in `ran`; the first that fails is
/// rolled back and ends the run.
async fn run_callbacks_alone(
    client: &Client,
    side: Side,
    callbacks: &[Callback],
    values: &BTreeMap<String, String>,
    ran: &mut Vec<String>,
) -> Result<(), SyncError> {
    for cb in callbacks {
        pg::exec(client, side, "starting a callback", "BEGIN").await?;
        if let Err(e) = run_callback(client, side, cb, values).await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e);
        }
        pg::exec(client, side, "committing a callback", "COMMIT").await?;
        ran.push(cb.script.clone());
    }
    Ok(())
}

async fn migrate_locked(
    client: &Client,
    side: Side,
    migrations: &[Migration],
    callbacks: &Callbacks,
    opts: MigrateOptions<'_>,
) -> Result<MigrateReport, SyncError> {
    let published = opts.published;
    crate::state::ensure_schema(client, side).await?;
    let fingerprint = || crate::catalog::fingerprint(client, side, opts.roles);
    let table = ensure_history(client, side).await?;
    let history = read_history(client, side).await?;
    let problems = validate_against(migrations, &history);
    if !problems.is_empty() {
        return Err(SyncError::Validate { problems });
    }
    let values = placeholder_values(client, side, opts.placeholders).await?;
    // Every placeholder must have a value before anything runs.
    let todo = pending(migrations, &history);
    let mut scripts = Vec::with_capacity(todo.len());
    for m in &todo {
        let mut values = values.clone();
        values.insert("flyway:filename".into(), m.script.clone());
        scripts.push(substitute(&m.sql, &values, &m.path)?);
    }
    let mut ran_callbacks = Vec::new();
    run_callbacks_alone(
        client,
        side,
        &callbacks.before_migrate,
        &values,
        &mut ran_callbacks,
    )
    .await?;
    let last_rank = history.iter().map(|a| a.installed_rank).max().unwrap_or(0);
    let mut applied = Vec::new();
    for ((rank, m), sql) in (last_rank + 1..).zip(todo).zip(scripts) {
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
        let script = m.path.display().to_string();
        if m.transactional {
            pg::exec(client, side, "starting a migration", "BEGIN").await?;
            let outcome = async {
                let before = fingerprint().await?;
                for cb in &callbacks.before_each {
                    run_callback(client, side, cb, &values).await?;
                }
                client
                    .batch_execute(&format!("{sql}\n;\n"))
                    .await
                    .map_err(|e| {
                        let (line, message) = failure_at(&e, &sql, 1);
                        SyncError::MigrationFailed {
                            side,
                            script: script.clone(),
                            line,
                            message,
                            kept: "nothing of it was kept (it ran in one transaction, rolled back); fix the file and run migrate again".into(),
                        }
                    })?;
                for cb in &callbacks.after_each {
                    run_callback(client, side, cb, &values).await?;
                }
                if let Some(published) = published {
                    let problems = crate::compat::check(client, side, published).await?;
                    if !problems.is_empty() {
                        return Err(SyncError::Incompatible {
                            source_side: published.side,
                            script: script.clone(),
                            problems: format!(
                                "{} (it was rolled back and not recorded)",
                                problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; ")
                            ),
                        });
                    }
                }
                let after = fingerprint().await?;
                crate::catalog::record_changes(client, side, &m.script, &crate::catalog::changed(&before, &after))
                    .await?;
                let ms = started.elapsed().as_millis() as i64;
                client
                    .batch_execute(&format!("{}; COMMIT", insert(true, ms)))
                    .await
                    .map_err(|e| SyncError::query(side, "recording a migration", &e))
            }
            .await;
            if let Err(e) = outcome {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        } else {
            let before = fingerprint().await?;
            let statements = split_statements_at(&sql);
            for (i, stmt) in statements.iter().enumerate() {
                if let Err(e) = client.batch_execute(&stmt.text).await {
                    let ms = started.elapsed().as_millis() as i64;
                    let _ = client.batch_execute(&insert(false, ms)).await;
                    let (offset, message) = failure_at(&e, &stmt.text, 1);
                    let kept = if i == 0 {
                        "it ran outside a transaction, but it failed at its first statement, so nothing changed".to_string()
                    } else {
                        format!(
                            "it ran outside a transaction: statements 1 to {i} (lines {} to {}) stayed applied. It is recorded as failed: finish or undo it by hand, then run `switchyard sync migrate repair` and migrate again",
                            statements[0].line,
                            statements[i - 1].line
                        )
                    };
                    return Err(SyncError::MigrationFailed {
                        side,
                        script,
                        line: stmt.line + offset - 1,
                        message,
                        kept,
                    });
                }
            }
            let ms = started.elapsed().as_millis() as i64;
            pg::exec(client, side, "recording a migration", &insert(true, ms)).await?;
            let after = fingerprint().await?;
            crate::catalog::record_changes(
                client,
                side,
                &m.script,
                &crate::catalog::changed(&before, &after),
            )
            .await?;
            if let Some(published) = published {
                let problems = crate::compat::check(client, side, published).await?;
                if !problems.is_empty() {
                    return Err(SyncError::Incompatible {
                        source_side: published.side,
                        script,
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
    if !applied.is_empty() {
        let each = callbacks.before_each.iter().chain(&callbacks.after_each);
        ran_callbacks.extend(each.map(|c| c.script.clone()));
    }
    run_callbacks_alone(
        client,
        side,
        &callbacks.after_migrate,
        &values,
        &mut ran_callbacks,
    )
    .await?;
    let history = read_history(client, side).await?;
    Ok(MigrateReport {
        dry_run: false,
        applied,
        callbacks: ran_callbacks,
        schema_version: current_version(&history).map(|v| v.to_string()),
    })
}

/// Checks the migrations directory against the history of `side`.
pub async fn validate(dir: &Path, side: Side, green_url: &str) -> Result<Vec<String>, SyncError> {
    let migrations = scan(dir)?;
    let client = pg::connect(side, green_url).await?;
    let history = read_history(&client, side).await?;
    Ok(validate_against(&migrations, &history))
}

/// Lists applied and pending migrations.
pub async fn info(dir: &Path, side: Side, green_url: &str) -> Result<Vec<InfoRow>, SyncError> {
    let migrations = scan(dir)?;
    let client = pg::connect(side, green_url).await?;
    let history = read_history(&client, side).await?;
    Ok(info_rows(&migrations, &history))
}

/// Marks a database that already has its schema (created by hand, or by
/// an older tool) as being at `version`: migrations up to it are not run.
/// Refuses a database whose history already has rows, as Flyway does.
pub async fn baseline(
    side: Side,
    green_url: &str,
    version: &str,
    description: &str,
) -> Result<BaselineReport, SyncError> {
    let v = Version::parse(version).ok_or_else(|| {
        SyncError::Other(format!(
            "{version:?} is not a version: use digits separated by dots, e.g. 1 or 2024.01"
        ))
    })?;
    let client = pg::connect_target(side, green_url).await?;
    lock(&client, side).await?;
    let result = async {
        let table = ensure_history(&client, side).await?;
        let history = read_history(&client, side).await?;
        if let Some(first) = history.first() {
            return Err(SyncError::Other(format!(
                "{side}'s {HISTORY_TABLE} already has {} rows (the first: {}): baseline is for a database that has never been migrated",
                history.len(),
                first.script
            )));
        }
        pg::exec(
            &client,
            side,
            "recording the baseline",
            &format!(
                "INSERT INTO {table} (installed_rank, version, description, type, script, checksum, \
                   installed_by, execution_time, success) VALUES (1, {}, {}, 'BASELINE', {}, NULL, current_user, 0, true)",
                pg::literal(&v.to_string()),
                pg::literal(description),
                pg::literal(description),
            ),
        )
        .await?;
        Ok(BaselineReport {
            version: v.to_string(),
            description: description.to_string(),
        })
    }
    .await;
    unlock(&client).await;
    result
}

/// Flyway's `repair`: removes the rows of failed migrations (after they were
/// finished or undone by hand) and sets the recorded checksum of applied
/// migrations to their file's (after an intentional edit, such as a comment).
pub async fn repair(dir: &Path, side: Side, green_url: &str) -> Result<RepairReport, SyncError> {
    let migrations = scan(dir)?;
    let client = pg::connect_target(side, green_url).await?;
    lock(&client, side).await?;
    let result = async {
        let Some(table) = history_table(&client, side).await? else {
            return Ok(RepairReport::default());
        };
        let history = read_history(&client, side).await?;
        let mut report = RepairReport::default();
        let mut sql = String::from("BEGIN;");
        for a in &history {
            if !a.success {
                report.removed_failed.push(a.script.clone());
                sql.push_str(&format!(
                    "DELETE FROM {table} WHERE installed_rank = {};",
                    a.installed_rank
                ));
                continue;
            }
            if a.kind != "SQL" {
                continue;
            }
            let file = match a.version.as_deref().and_then(Version::parse) {
                Some(v) => migrations.iter().find(|m| m.version.as_ref() == Some(&v)),
                None => None,
            };
            if let Some(m) = file.filter(|m| Some(m.checksum) != a.checksum) {
                report.realigned.push(a.script.clone());
                sql.push_str(&format!(
                    "UPDATE {table} SET checksum = {}, description = {} WHERE installed_rank = {};",
                    m.checksum,
                    pg::literal(&m.description),
                    a.installed_rank
                ));
            }
        }
        sql.push_str("COMMIT;");
        pg::exec(&client, side, "repairing the history", &sql).await?;
        Ok(report)
    }
    .await;
    unlock(&client).await;
    result
}
