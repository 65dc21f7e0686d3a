//! # switchyard-sync
//!
//! Everything switchyard does to PostgreSQL: `preflight` (what would go wrong),
//! `clone` (snapshot blue and restore it into green, streaming parallel `COPY`s
//! with no intermediate file), `migrate` (Flyway-compatible migrations with
//! Flyway's history table and checksums), `verify` (per-table counts and
//! in-database checksums, bisecting on the primary key to name differing rows),
//! and the records in green's `switchyard` schema that the control plane's gates
//! read. Blue is only ever read, in read-only transactions. Replication,
//! cutover and cleanup come later. This crate knows nothing about HTTP.
//!
//! ## Wiring (for the binary)
//!
//! ```text
//! pub async fn run(db: &DatabaseConfig, cmd: Command, out: Output) -> Result<ExitReport, SyncError>
//! pub async fn gate_status(db: &DatabaseConfig) -> Result<GateStatus, SyncError>
//! ```
//!
//! `run` prints its own result to stdout (human text for [`Output::Terminal`],
//! with progress bars on stderr; one JSON document for [`Output::Json`]; nothing
//! for [`Output::Quiet`]). The binary then exits with [`ExitReport::code`]
//! (0 = ok, 1 = findings: preflight blockers, verify differences, validate
//! problems). On `Err(e)` print `error: {e}` to stderr and exit 2.
//!
//! CLI flags this expects (`switchyard sync -c FILE [--json] <subcommand>`):
//!
//! | subcommand | flags | `Command` |
//! |---|---|---|
//! | `preflight` | | `Command::Preflight` |
//! | `clone` | `--jobs N` (default `[database].jobs`), `--replace`, `--verify` | `Command::Clone { jobs, replace, verify }` |
//! | `migrate` | `--dry-run` | `Command::Migrate { dry_run }` |
//! | `migrate validate` (or `validate`) | | `Command::Validate` |
//! | `migrate info` (or `info`) | | `Command::Info` |
//! | `verify` | `--jobs N` | `Command::Verify { jobs }` |
//! | `status` | | `Command::Status` |
//!
//! `jobs: 0` means "use `[database].jobs`". `--json` selects [`Output::Json`];
//! otherwise use [`Output::Terminal`] (bars hide themselves when stderr is not
//! a terminal). `run` must be called inside a tokio runtime with the `rt`,
//! `net`, `process` and `time` features (a multi-thread runtime lets the copy
//! workers use several cores).
//!
//! External programs: `clone` runs `pg_dump` and `pg_restore` (same major
//! version as blue or newer), found in `$SWITCHYARD_PG_BINDIR`, then
//! `pg_config --bindir`, then `PATH`, then `/usr/lib/postgresql/*/bin`.
//!
//! What each step leaves behind: `clone` and `verify` write only to green
//! (the cloned objects and the `switchyard` schema with `clones` and
//! `verifications`); `migrate` writes green's `flyway_schema_history`;
//! nothing is written to blue.

#![forbid(unsafe_code)]

pub mod clone;
pub mod ephemeral;
pub mod error;
pub mod migrate;
pub mod pg;
pub mod preflight;
pub mod progress;
pub mod state;
pub mod verify;

pub use error::{Side, SyncError};
pub use state::{gate_status, GateStatus};

use serde::Serialize;
use switchyard_config::DatabaseConfig;

/// A `switchyard sync` subcommand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Check both databases; exit 1 on blockers.
    Preflight,
    /// Snapshot blue into green. `replace` drops a non-empty green first;
    /// `verify` compares green with the clone's own snapshot afterwards.
    Clone {
        jobs: usize,
        replace: bool,
        verify: bool,
    },
    /// Apply pending migrations to green (or list them).
    Migrate { dry_run: bool },
    /// Check applied migrations against the files; exit 1 on problems.
    Validate,
    /// List applied and pending migrations.
    Info,
    /// Compare blue with green; exit 1 on differences.
    Verify { jobs: usize },
    /// Green's schema version, last verification and gate state.
    Status,
}

/// How `run` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Progress bars on stderr, a human summary on stdout.
    Terminal,
    /// No bars; one JSON document on stdout at the end.
    Json,
    /// Print nothing (tests, embedding).
    Quiet,
}

/// What a command found; the binary exits with `code`.
#[derive(Debug, Clone, Serialize)]
pub struct ExitReport {
    /// 0 = ok, 1 = the command ran but found problems.
    pub code: i32,
    /// The command's result as JSON (what `--json` prints).
    pub summary: serde_json::Value,
}

/// Runs one sync command against the `[database]` configuration.
pub async fn run(db: &DatabaseConfig, cmd: Command, out: Output) -> Result<ExitReport, SyncError> {
    if matches!(
        cmd,
        Command::Clone { .. } | Command::Migrate { dry_run: false }
    ) {
        // Both write to green: make sure green is not blue under another name.
        pg::ensure_distinct(db).await?;
    }
    let jobs = |j: usize| if j == 0 { db.jobs.max(1) } else { j };
    let (code, summary, text) = match cmd {
        Command::Preflight => {
            let r = preflight::preflight(db).await?;
            let mut t = format!(
                "blue: PostgreSQL {}, green: PostgreSQL {}\n",
                r.blue_version.as_deref().unwrap_or("?"),
                r.green_version.as_deref().unwrap_or("?")
            );
            for f in &r.findings {
                let sev = serde_json::to_value(f.severity).expect("severity");
                t.push_str(&format!(
                    "{:<8} [{}] {}\n         hint: {}\n",
                    sev.as_str().unwrap_or(""),
                    f.check,
                    f.message,
                    f.hint
                ));
            }
            t.push_str(if r.passed {
                "preflight passed\n"
            } else {
                "preflight found blockers\n"
            });
            (i32::from(!r.passed), json(&r), t)
        }
        Command::Clone {
            jobs: j,
            replace,
            verify,
        } => {
            let (r, holder) = clone::clone(db, jobs(j), replace, out).await?;
            let mut t = format!(
                "cloned {} tables, {} rows, {} bytes of COPY data, {} sequences in {:.1}s (snapshot {})\n",
                r.tables.len(),
                r.rows,
                r.bytes,
                r.sequences,
                r.seconds,
                r.snapshot
            );
            let mut summary = serde_json::json!({ "clone": r });
            let mut code = 0;
            if verify {
                let v = verify::verify(db, jobs(j), Some(&holder.id), out).await?;
                t.push_str(&v.render());
                code = i32::from(!v.passed);
                summary["verify"] = json(&v);
            }
            drop(holder);
            (code, summary, t)
        }
        Command::Migrate { dry_run } => {
            let r = migrate::migrate(&db.migrations, &db.green, dry_run).await?;
            let verb = if dry_run { "would apply" } else { "applied" };
            let mut t = String::new();
            for s in &r.applied {
                t.push_str(&format!("{verb} {s}\n"));
            }
            if r.applied.is_empty() {
                t.push_str("nothing to migrate\n");
            }
            t.push_str(&format!(
                "schema version: {}\n",
                r.schema_version.as_deref().unwrap_or("none")
            ));
            (0, json(&r), t)
        }
        Command::Validate => {
            let problems = migrate::validate(&db.migrations, &db.green).await?;
            let t = if problems.is_empty() {
                "migrations are valid\n".to_string()
            } else {
                problems.iter().map(|p| format!("{p}\n")).collect()
            };
            (
                i32::from(!problems.is_empty()),
                serde_json::json!({ "valid": problems.is_empty(), "problems": problems }),
                t,
            )
        }
        Command::Info => {
            let rows = migrate::info(&db.migrations, &db.green).await?;
            let mut t = format!(
                "{:<10} {:<40} {:<10} {}\n",
                "version", "description", "state", "installed on"
            );
            for r in &rows {
                t.push_str(&format!(
                    "{:<10} {:<40} {:<10} {}\n",
                    r.version.as_deref().unwrap_or("R"),
                    r.description,
                    r.state,
                    r.installed_on.as_deref().unwrap_or("")
                ));
            }
            (0, json(&rows), t)
        }
        Command::Verify { jobs: j } => {
            let v = verify::verify(db, jobs(j), None, out).await?;
            (i32::from(!v.passed), json(&v), v.render())
        }
        Command::Status => {
            let g = gate_status(db).await?;
            let t = format!(
                "schema version: {} (newest migration: {})\nverified: {} ({})\n",
                g.schema_version.as_deref().unwrap_or("none"),
                g.latest_migration.as_deref().unwrap_or("none"),
                g.verified,
                g.reason
            );
            (0, json(&g), t)
        }
    };
    match out {
        Output::Terminal => print!("{text}"),
        Output::Json => println!("{}", serde_json::to_string_pretty(&summary).expect("json")),
        Output::Quiet => {}
    }
    Ok(ExitReport { code, summary })
}

fn json<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).expect("reports serialise")
}
