//! # switchyard-sync
//!
//! Everything switchyard does to the databases behind blue and green, for
//! two engines behind one interface; the engine follows from the URLs
//! ([`switchyard_config::DatabaseEngine`]).
//!
//! ## Layout
//!
//! - The interface, the same for every engine: [`run`] (every `switchyard
//!   sync` command), [`gate`] (what the database gate reads and the rule
//!   that judges it), [`workflow`] (the rollout's steps and
//!   [`workflow::prepare`]), [`replication`] (direction, state and lag,
//!   catch-up, cleanup, the cutover's [`replication::switch`]), and the
//!   reports: [`findings`] (preflight), [`verdict`] (verify), [`flyway`]
//!   (the migration files, versions, checksums and history rows).
//! - [`postgres`]: the PostgreSQL engine (`preflight`, `clone` with
//!   parallel binary `COPY`, Flyway-compatible `migrate`, `verify` bisecting
//!   on the primary key, logical `replicate`, `cutover` with reverse
//!   replication, `prepare`). Its modules are also at the crate root
//!   (`switchyard_sync::replicate`, …), where they have always been.
//! - [`mysql`]: the MySQL/MariaDB engine, the same steps with the server's
//!   own tools (consistent snapshot under `BACKUP STAGE`, `LOAD DATA LOCAL
//!   INFILE` streams, chunked checksums, GTID replicas).
//!
//! Blue is only read, in read-only transactions, except for switchyard's
//! own replication objects (a publication and slot on PostgreSQL; after a
//! cutover, the way back). This crate knows nothing about HTTP.
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
//! | `migrate baseline` | `--version V`, `--description D` | `Command::Baseline { version, description }` |
//! | `migrate repair` | | `Command::Repair` |
//! | `verify` | `--jobs N` | `Command::Verify { jobs }` |
//! | `status` | | `Command::Status` |
//! | `replicate` | | `Command::Replicate` |
//! | `cleanup` | | `Command::Cleanup` |
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

pub mod error;
pub mod findings;
pub mod flyway;
pub mod gate;
pub mod mysql;
pub mod postgres;
pub mod primary;
pub mod progress;
pub mod replication;
mod scratch;
pub mod verdict;
pub mod workflow;

// The PostgreSQL engine's modules, at the paths they have always had.
pub(crate) use postgres::workers;
pub use postgres::{
    catalog, clone, compat, cutover, ephemeral, migrate, pg, preflight, prepare, replicate, roles,
    state, tls, verify,
};

pub use error::{Side, SyncError};
pub use gate::{gate_status, stale_copy, staleness_checked, GateStatus};
pub use primary::{CutoverKind, Primary};

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
    /// Mark a green that already has its schema as being at `version`.
    Baseline {
        version: String,
        description: String,
    },
    /// Remove failed migrations' rows and realign changed checksums.
    Repair,
    /// Compare blue with green; exit 1 on differences.
    Verify { jobs: usize },
    /// Green's schema version, last verification and gate state.
    Status,
    /// Start streaming blue's changes into green from the clone's slot.
    Replicate,
    /// Remove every publication, slot and subscription switchyard created.
    Cleanup,
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

/// Runs one sync command against the `[database]` configuration. Every
/// command follows the recorded primary ([`primary::primary`]): its
/// database is the source (only read), the other colour's the target.
pub async fn run(db: &DatabaseConfig, cmd: Command, out: Output) -> Result<ExitReport, SyncError> {
    let p = primary::primary(db).await?;
    let dir = p.direction();
    if db.engine() == switchyard_config::DatabaseEngine::MySql {
        if !matches!(cmd, Command::Status | Command::Cleanup) {
            mysql::refuse_later_releases(dir)?;
        }
        return run_mysql(db, cmd, out).await;
    }
    let (src, dst) = (dir.source(), dir.target());
    let writes = matches!(
        cmd,
        Command::Clone { .. }
            | Command::Migrate { dry_run: false }
            | Command::Baseline { .. }
            | Command::Repair
    );
    if writes {
        if !p.complete() {
            return Err(SyncError::Other(format!(
                "cannot tell which database is the primary ({}), so nothing that writes runs: {}; \
                 start the unreachable server and try again",
                p.describe(),
                p.unread.join("; ")
            )));
        }
        // Both write to the target: make sure it is not the source under
        // another name.
        pg::ensure_distinct(db).await?;
    }
    let jobs = |j: usize| if j == 0 { db.jobs.max(1) } else { j };
    let target_url = replication::url_of(db, dst);
    let (code, summary, text) = match cmd {
        Command::Preflight => {
            let r = preflight::preflight(db, dir).await?;
            (
                i32::from(!r.passed),
                json(&r),
                render_preflight(&r, "PostgreSQL "),
            )
        }
        Command::Clone {
            jobs: j,
            replace,
            verify,
        } => {
            let (r, holder) = clone::clone(db, dir, jobs(j), replace, out).await?;
            let mut t = format!(
                "cloned {src} into {dst}: {} tables, {} rows, {} bytes of COPY data, {} sequences in {:.1}s (snapshot {}, {src} at {})\n",
                r.tables.len(),
                r.rows,
                r.bytes,
                r.sequences,
                r.seconds,
                r.snapshot,
                r.blue_time
            );
            if let (Some(slot), Some(lsn)) = (&r.slot, &r.consistent_lsn) {
                t.push_str(&format!(
                    "replication slot {slot} on {src} holds the changes since {lsn}: run `switchyard sync replicate` to stream them\n"
                ));
            }
            let mut summary = serde_json::json!({ "clone": r });
            let mut code = 0;
            if verify {
                let v = verify::verify(db, dir, jobs(j), Some(&holder.id), out).await;
                let v = match v {
                    Ok(v) => v,
                    Err(e) => {
                        holder.release().await;
                        return Err(e);
                    }
                };
                t.push_str(&v.render());
                code = i32::from(!v.passed);
                summary["verify"] = json(&v);
            }
            holder.release().await;
            (code, summary, t)
        }
        Command::Migrate { dry_run } => {
            let published = if db.mode == switchyard_config::SyncMode::Replicate && !dry_run {
                let source = pg::connect(src, replication::url_of(db, src)).await?;
                Some(
                    compat::published_schema(&source, src, &replicate::names(db, dir).publication)
                        .await?,
                )
            } else {
                None
            };
            let r = migrate::migrate(
                &db.migrations,
                dst,
                target_url,
                migrate::MigrateOptions {
                    dry_run,
                    published: published.as_ref(),
                    roles: db.roles == switchyard_config::RolesMode::Copy,
                    placeholders: Some(&db.placeholders),
                },
            )
            .await?;
            (0, json(&r), render_migrate(&r, dst))
        }
        Command::Validate => {
            let problems = migrate::validate(&db.migrations, dst, target_url).await?;
            render_validate(problems)
        }
        Command::Info => {
            let rows = migrate::info(&db.migrations, dst, target_url).await?;
            (0, json(&rows), render_info(&rows))
        }
        Command::Baseline {
            version,
            description,
        } => {
            let r = migrate::baseline(dst, target_url, &version, &description).await?;
            (0, json(&r), render_baseline(&r, dst))
        }
        Command::Repair => {
            let r = migrate::repair(&db.migrations, dst, target_url).await?;
            (0, json(&r), render_repair(&r))
        }
        Command::Verify { jobs: j } => {
            let v = verify::verify(db, dir, jobs(j), None, out).await?;
            (i32::from(!v.passed), json(&v), v.render())
        }
        Command::Status => {
            let g = gate_status(db, dir).await?;
            (0, json(&g), render_gate(&g, "WAL"))
        }
        Command::Replicate => {
            let r = replicate::subscribe(db, dir).await?;
            let t = if r.already_running {
                format!(
                    "replication {} is already set up (slot {})\n",
                    dir.arrow(),
                    r.slot
                )
            } else if r.enabled_again {
                format!(
                    "{dst}'s subscription to {src} was disabled (an interrupted cutover): enabled again, streaming from slot {}\n",
                    r.slot
                )
            } else {
                format!(
                    "{dst} now streams {src}'s changes from slot {} (since {})\n",
                    r.slot,
                    r.from_lsn.as_deref().unwrap_or("the clone")
                )
            };
            (0, json(&r), t)
        }
        Command::Cleanup => {
            let r = replicate::cleanup(db).await?;
            let mut t = render_cleanup(&r);
            if p.generation > 0
                && r.removed
                    .iter()
                    .any(|o| o.direction == dir && o.kind == replication::ObjectKind::Subscription)
            {
                t.push_str(&format!(
                    "{dst}'s database no longer receives the primary's ({src}'s) writes: an abort after the promotion can no longer move back without losing them, and the next release copies {dst} afresh\n"
                ));
            }
            (i32::from(!r.unreachable.is_empty()), json(&r), t)
        }
    };
    Ok(emit(out, code, summary, &text))
}

/// [`run`] on MySQL/MariaDB: the same commands, reports and exit codes.
async fn run_mysql(
    db: &DatabaseConfig,
    cmd: Command,
    out: Output,
) -> Result<ExitReport, SyncError> {
    if matches!(
        cmd,
        Command::Clone { .. } | Command::Migrate { dry_run: false }
    ) {
        mysql::ensure_distinct(db).await?;
    }
    let (code, summary, text) = match cmd {
        Command::Preflight => {
            let r = mysql::preflight::preflight(db).await?;
            (i32::from(!r.passed), json(&r), render_preflight(&r, ""))
        }
        Command::Clone {
            jobs: j,
            replace,
            verify,
        } => {
            let jobs = if j == 0 { db.jobs.max(1) } else { j };
            let (r, holder) = mysql::clone::clone(db, jobs, replace, out).await?;
            let mut t = format!(
                "cloned {} tables, {} rows, {} bytes, {} indexes, {} foreign keys, {} other objects in {:.1}s                  (blue at GTID {:?}, {}; commits held {:.0} ms)\n",
                r.tables.len(),
                r.rows,
                r.bytes,
                r.indexes,
                r.foreign_keys,
                r.objects,
                r.seconds,
                r.position.gtid,
                r.position.blue_time,
                r.lock_ms
            );
            if !r.events_disabled.is_empty() {
                t.push_str(&format!(
                    "events created disabled on green (enable them after promotion): {}\n",
                    r.events_disabled.join(", ")
                ));
            }
            let mut summary = serde_json::json!({ "clone": r });
            let mut code = 0;
            let mut holder = holder;
            if verify {
                let v = mysql::verify::verify(db, holder.as_mut()).await;
                if let Some(h) = holder.take() {
                    h.release().await;
                }
                let v = v?;
                t.push_str(&v.render());
                code = i32::from(!v.passed);
                summary["verify"] = json(&v);
            }
            if let Some(h) = holder {
                h.release().await;
            }
            (code, summary, t)
        }
        Command::Migrate { dry_run } => {
            let r =
                mysql::migrate::migrate(&db.migrations, &db.green, dry_run, Some(&db.placeholders))
                    .await?;
            (0, json(&r), render_migrate(&r, Side::Green))
        }
        Command::Validate => {
            let problems = mysql::migrate::validate(&db.migrations, &db.green).await?;
            render_validate(problems)
        }
        Command::Info => {
            let rows = mysql::migrate::info(&db.migrations, &db.green).await?;
            (0, json(&rows), render_info(&rows))
        }
        Command::Baseline {
            version,
            description,
        } => {
            let r = mysql::migrate::baseline(&db.green, &version, &description).await?;
            (0, json(&r), render_baseline(&r, Side::Green))
        }
        Command::Repair => {
            let r = mysql::migrate::repair(&db.migrations, &db.green).await?;
            (0, json(&r), render_repair(&r))
        }
        Command::Verify { .. } => {
            let v = mysql::verify::verify(db, None).await?;
            (i32::from(!v.passed), json(&v), v.render())
        }
        Command::Status => {
            let g = mysql::state::gate_status(db, replication::Direction::Forward).await?;
            (0, json(&g), render_gate(&g, "GTID"))
        }
        Command::Replicate => {
            let r = mysql::replica::subscribe(db).await?;
            let t = if r.already_running {
                "green already replicates blue (connection 'switchyard')\n".to_string()
            } else {
                format!(
                    "green now replicates blue from GTID {:?} (connection '{}')\n",
                    r.from_gtid, r.connection
                )
            };
            (0, json(&r), t)
        }
        Command::Cleanup => {
            let r = mysql::replica::cleanup(db).await?;
            (
                i32::from(!r.unreachable.is_empty()),
                json(&r),
                render_cleanup(&r),
            )
        }
    };
    Ok(emit(out, code, summary, &text))
}

/// Prints a command's result the way `out` asks, and makes its report.
fn emit(out: Output, code: i32, summary: serde_json::Value, text: &str) -> ExitReport {
    match out {
        Output::Terminal => print!("{text}"),
        Output::Json => println!("{}", serde_json::to_string_pretty(&summary).expect("json")),
        Output::Quiet => {}
    }
    ExitReport { code, summary }
}

/// `status`: the gate's reading; `position` names the engine's log
/// position of the clone (`WAL`, `GTID`).
fn render_gate(g: &GateStatus, position: &str) -> String {
    let target = g.target;
    let source = target.other();
    let mut t = String::new();
    if let Some(p) = &g.primary {
        t.push_str(&format!(
            "primary: {}\ncandidate: {}'s database, prepared from {}'s\n",
            p.describe(),
            p.candidate(),
            p.side
        ));
        for u in &p.unread {
            t.push_str(&format!("  (records not read: {u})\n"));
        }
    }
    t.push_str(&format!(
        "schema version: {source} {} (the primary), {target} {} (newest migration: {})\nverified: {} ({})\n",
        g.source_schema_version.as_deref().unwrap_or("none"),
        g.schema_version.as_deref().unwrap_or("none"),
        g.latest_migration.as_deref().unwrap_or("none"),
        g.verified,
        g.reason
    ));
    if let Some(c) = &g.clone {
        t.push_str(&format!(
            "last {}: {} at {} ({source} as of {}{})\n",
            match c.kind {
                gate::CloneKind::Copy => "clone",
                gate::CloneKind::Replica => "reuse of the replica",
            },
            c.state,
            c.at,
            c.blue_time.as_deref().unwrap_or("?"),
            c.consistent_lsn
                .as_deref()
                .filter(|l| !l.is_empty())
                .map(|l| format!(", {position} {l}"))
                .unwrap_or_default()
        ));
    }
    if let Some(r) = &g.replication {
        t.push_str(&replication::render_status(r));
    }
    t
}

fn render_preflight(r: &preflight::PreflightReport, engine: &str) -> String {
    let mut t = format!(
        "blue: {engine}{}, green: {engine}{}; preparing {}'s database from {}'s (the primary)\n",
        r.blue_version.as_deref().unwrap_or("?"),
        r.green_version.as_deref().unwrap_or("?"),
        r.source.other(),
        r.source
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
    t
}

fn render_migrate(r: &migrate::MigrateReport, target: Side) -> String {
    let verb = if r.dry_run { "would apply" } else { "applied" };
    let mut t = String::new();
    for s in &r.callbacks {
        t.push_str(&format!("ran callback {s}\n"));
    }
    for s in &r.applied {
        t.push_str(&format!("{verb} {s}\n"));
    }
    if r.applied.is_empty() {
        t.push_str("nothing to migrate\n");
    }
    t.push_str(&format!(
        "{target}'s schema version: {}\n",
        r.schema_version.as_deref().unwrap_or("none")
    ));
    t
}

fn render_validate(problems: Vec<String>) -> (i32, serde_json::Value, String) {
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

fn render_info(rows: &[migrate::InfoRow]) -> String {
    let mut t = format!(
        "{:<10} {:<40} {:<10} {}\n",
        "version", "description", "state", "installed on"
    );
    for r in rows {
        t.push_str(&format!(
            "{:<10} {:<40} {:<10} {}\n",
            r.version.as_deref().unwrap_or("R"),
            r.description,
            r.state,
            r.installed_on.as_deref().unwrap_or("")
        ));
    }
    t
}

fn render_baseline(r: &migrate::BaselineReport, target: Side) -> String {
    format!(
        "{target} is now at baseline version {} ({}): migrations up to it will not run\n",
        r.version, r.description
    )
}

fn render_repair(r: &migrate::RepairReport) -> String {
    let mut t = String::new();
    for s in &r.removed_failed {
        t.push_str(&format!(
            "removed the failed row of {s}: it will run again on the next migrate\n"
        ));
    }
    for s in &r.realigned {
        t.push_str(&format!(
            "realigned the recorded checksum of {s} with the file on disk\n"
        ));
    }
    if t.is_empty() {
        t.push_str("nothing to repair: no failed rows, every checksum matches its file\n");
    } else {
        t.push_str("repair done: run `switchyard sync migrate validate` to check\n");
    }
    t
}

fn render_cleanup(r: &replicate::CleanupReport) -> String {
    let mut t = String::new();
    for o in &r.removed {
        t.push_str(&format!(
            "removed {} {:?} {} ({})\n",
            o.side,
            o.kind,
            o.name,
            o.direction.arrow()
        ));
    }
    for u in &r.unreachable {
        t.push_str(&format!(
            "could not reach {u}: its objects may remain; run cleanup again once it is up\n"
        ));
    }
    if r.removed.is_empty() && r.unreachable.is_empty() {
        t.push_str("nothing to clean up: switchyard has no replication set up on either side\n");
    }
    t
}

fn json<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).expect("reports serialise")
}
