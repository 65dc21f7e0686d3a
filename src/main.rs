//! The `switchyard` binary: parses the command line and wires the library
//! crates together. Logic lives in the crates; this file only dispatches.
// One audited exception: `inherit::take_fd` adopts inherited sockets.
#![deny(unsafe_code)]

mod cli;
mod ctl;
mod demo;
mod inherit;
mod run;
mod sync;
mod upgrade;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let result = match args.command {
        cli::Command::Run { config } => run::run(&config),
        cli::Command::Check { config } => run::check(&config),
        cli::Command::Demo(opts) => demo::demo(opts),
        cli::Command::Ctl(args) => ctl::ctl(args),
        cli::Command::Sync(args) => sync::sync(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("switchyard: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
