//! The `switchyard` binary: parses the command line and wires the library
//! crates together. Logic lives in the crates; this file only dispatches.
// One audited exception: `inherit::take_fd` adopts inherited sockets.
#![deny(unsafe_code)]

mod cli;
mod ctl;
mod demo;
mod inherit;
mod logging;
mod notify;
mod run;
mod sync;
mod upgrade;

use clap::Parser;
use std::process::ExitCode;

/// jemalloc, with a background thread that gives freed memory back to the
/// operating system after a second (`.cargo/config.toml`); glibc's malloc
/// keeps what idle and closed connections freed (issue 9: RSS stayed at
/// its peak after 10,000 connections closed).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
