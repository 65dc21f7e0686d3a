//! The command line: every subcommand and flag of `switchyard`.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "switchyard", version, about = "Blue-green deployments: weighted sticky traffic shifting, automatic rollback, PostgreSQL sync")]
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
}

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Where the demo proxy listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Where the demo admin API listens.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin: String,
    /// Seconds spent at each weight step.
    #[arg(long, default_value_t = 3)]
    pub step_seconds: u64,
    /// Exit once traffic is fully on green instead of serving on.
    #[arg(long)]
    pub once: bool,
}
