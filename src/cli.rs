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
}

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Where the demo proxy listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Where the demo admin API listens.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin: String,
    /// Bake time of each rollout step, in seconds.
    #[arg(long, default_value_t = 3)]
    pub step_seconds: u64,
    /// Exit once traffic is fully on green instead of serving on.
    #[arg(long)]
    pub once: bool,
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
