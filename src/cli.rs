//! The command line: every subcommand and flag of `switchyard`.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "switchyard",
    version,
    about = "Blue-green deployments: weighted sticky traffic shifting, automatic rollback, PostgreSQL sync"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy, the admin API and the rollout controller.
    Run {
        /// The configuration file.
        #[arg(short, long, default_value = "switchyard.toml")]
        config: PathBuf,
    },
    /// Validate a configuration file: exit 0, or exit 1 with file:line:col errors.
    Check {
        #[arg(short, long, default_value = "switchyard.toml")]
        config: PathBuf,
    },
    /// A self-contained demo: built-in blue and green apps behind the proxy,
    /// traffic shifted from blue to green while you watch.
    Demo(DemoArgs),
    /// Drive a running switchyard through its admin API: status, weights,
    /// start, pause, resume, promote, abort, history.
    Ctl(CtlArgs),
    /// Prepare green's PostgreSQL database: preflight, clone, migrate, verify,
    /// replicate, cleanup.
    Sync(SyncArgs),
}

/// `switchyard sync`: the database steps of a blue-green deployment.
#[derive(Args, Debug, Clone)]
pub struct SyncArgs {
    /// The configuration file (its `[database]` table is used).
    #[arg(short, long, default_value = "switchyard.toml", global = true)]
    pub config: PathBuf,
    /// Print one JSON document instead of text and progress bars.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: SyncCommand,
}

/// What `switchyard sync` should do.
#[derive(Subcommand, Debug, Clone)]
pub enum SyncCommand {
    /// Check both databases for what would break a clone or replication;
    /// exit 1 on blockers.
    Preflight,
    /// Snapshot blue and restore it into green: schema, parallel COPY, indexes,
    /// sequences, ANALYZE. Refuses a non-empty green unless --replace.
    Clone {
        /// Parallel COPY streams (default: `[database] jobs`).
        #[arg(long, default_value_t = 0)]
        jobs: usize,
        /// Drop what green holds first.
        #[arg(long)]
        replace: bool,
        /// Verify green against the clone's snapshot afterwards.
        #[arg(long)]
        verify: bool,
    },
    /// Apply pending Flyway-style migrations to green.
    Migrate {
        /// List what would be applied without applying it.
        #[arg(long)]
        dry_run: bool,
        #[command(subcommand)]
        action: Option<MigrateAction>,
    },
    /// Compare blue and green table by table; exit 1 on differences.
    Verify {
        /// Parallel table comparisons (default: `[database] jobs`).
        #[arg(long, default_value_t = 0)]
        jobs: usize,
    },
    /// Green's schema version, last verification, gate state, and the
    /// replication objects on both sides with their lag and retained WAL.
    Status,
    /// Stream blue's changes into green from the slot the clone was taken
    /// from (replicate mode); a clone without that slot needs `clone --replace`.
    Replicate,
    /// Remove every publication, slot and subscription switchyard created on
    /// either side (idempotent; also after a crash; ends reverse sync).
    Cleanup,
}

/// `switchyard sync migrate validate|info`.
#[derive(Subcommand, Debug, Clone)]
pub enum MigrateAction {
    /// Check applied migrations against the files (changed, missing, unknown).
    Validate,
    /// List applied and pending migrations.
    Info,
    /// Mark a green that already has its schema (made by hand or another
    /// tool) as being at a version: migrations up to it will not run.
    Baseline {
        /// The version green's schema corresponds to.
        #[arg(long, default_value = "1")]
        version: String,
        /// Recorded in the history.
        #[arg(long, default_value = "<< Flyway Baseline >>")]
        description: String,
    },
    /// Remove the rows of failed migrations (after finishing or undoing them
    /// by hand) and realign recorded checksums with edited files.
    Repair,
}

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Where the demo proxy listens (port 0: a free one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Where the demo admin API and dashboard listen (port 0: a free one).
    /// Not 9090, which Prometheus uses.
    #[arg(long, default_value = "127.0.0.1:9471")]
    pub admin: String,
    /// Bake time of each rollout step, in seconds.
    #[arg(long, default_value_t = 3)]
    pub step_seconds: u64,
    /// End once the rollout ends (promoted, or rolled back).
    #[arg(long)]
    pub once: bool,
    /// End by itself after this long in all, e.g. "60s" (otherwise the demo
    /// serves until Ctrl-C).
    #[arg(long)]
    pub duration: Option<String>,
    /// Make green fail half of its requests once it has traffic, to show
    /// the automatic rollback.
    #[arg(long)]
    pub fail_green: bool,
    /// Skip the database part even when PostgreSQL is installed.
    #[arg(long)]
    pub no_database: bool,
    /// Ship this many releases in a row, alternating colours (blue → green
    /// → blue → ...), each with its own migration (1 to 10).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub releases: u32,
}

/// `switchyard ctl`: drive a running switchyard through its admin API.
#[derive(Args, Debug, Clone)]
pub struct CtlArgs {
    /// Base URL of the admin API.
    #[arg(
        long,
        env = "SWITCHYARD_ADMIN",
        default_value = "http://127.0.0.1:9090",
        global = true
    )]
    pub admin: String,
    /// The admin token (`[admin] token`).
    #[arg(long, env = "SWITCHYARD_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// PEM file of the CA that signed the admin API's certificate
    /// (`[admin] tls`), when it is not a public one.
    #[arg(long, env = "SWITCHYARD_ADMIN_CA", global = true)]
    pub ca_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// What `switchyard ctl` should do.
#[derive(Subcommand, Debug, Clone)]
pub enum CtlCommand {
    /// Show weights, rollout state, analysis and pools.
    Status {
        /// Print the raw JSON status document.
        #[arg(long)]
        json: bool,
    },
    /// Set the weights by hand (pauses a running rollout).
    Weights {
        /// Green's share in percent, 0 to 100; blue gets the rest.
        #[arg(long)]
        green: f64,
    },
    /// Start a rollout of the candidate colour.
    Start(ReasonArg),
    /// Hold the rollout at its current weight.
    Pause(ReasonArg),
    /// Continue a paused rollout from the step at or above the current weight.
    Resume(ReasonArg),
    /// Send all traffic to the candidate now; it becomes the stable colour.
    Promote(ReasonArg),
    /// Send no traffic to the candidate now.
    Abort(ReasonArg),
    /// List the recorded events: who did what, when and why.
    History {
        /// Only the last N events.
        #[arg(long)]
        limit: Option<usize>,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
}

/// An optional reason recorded in the history.
#[derive(Args, Debug, Clone)]
pub struct ReasonArg {
    /// Why (recorded in the history and sent to the notify webhook).
    #[arg(long)]
    pub reason: Option<String>,
}
