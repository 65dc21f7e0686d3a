//! `switchyard sync`: maps the command line onto `switchyard_sync::run` and
//! its report onto the exit code (0 ok, 1 findings, 2 error).

use std::process::ExitCode;
use switchyard_config::Config;
use switchyard_sync::{Command, Output};

use crate::cli::{MigrateAction, SyncArgs, SyncCommand};

pub fn sync(args: SyncArgs) -> anyhow::Result<ExitCode> {
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    let Some(db) = config.database.clone() else {
        eprintln!(
            "{}: no [database] table: add one with `blue` and `green` connection strings to use `switchyard sync`",
            args.config.display()
        );
        return Ok(ExitCode::from(2));
    };
    crate::run::init_logging(&config);
    let command = match args.command {
        SyncCommand::Preflight => Command::Preflight,
        SyncCommand::Clone {
            jobs,
            replace,
            verify,
        } => Command::Clone {
            jobs,
            replace,
            verify,
        },
        SyncCommand::Migrate {
            action: Some(MigrateAction::Validate),
            ..
        } => Command::Validate,
        SyncCommand::Migrate {
            action: Some(MigrateAction::Info),
            ..
        } => Command::Info,
        SyncCommand::Migrate {
            dry_run,
            action: None,
        } => Command::Migrate { dry_run },
        SyncCommand::Verify { jobs } => Command::Verify { jobs },
        SyncCommand::Status => Command::Status,
        SyncCommand::Replicate => Command::Replicate,
        SyncCommand::Cleanup => Command::Cleanup,
    };
    let output = if args.json {
        Output::Json
    } else {
        Output::Terminal
    };
    let runtime = crate::run::build_runtime(0)?;
    match runtime.block_on(switchyard_sync::run(&db, command, output)) {
        Ok(report) => Ok(ExitCode::from(u8::try_from(report.code).unwrap_or(1))),
        Err(e) => {
            eprintln!("switchyard sync: error: {e}");
            Ok(ExitCode::from(2))
        }
    }
}
