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
            action:
                Some(MigrateAction::Baseline {
                    version,
                    description,
                }),
            ..
        } => Command::Baseline {
            version,
            description,
        },
        SyncCommand::Migrate {
            action: Some(MigrateAction::Repair),
            ..
        } => Command::Repair,
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
    // Our sessions carry this process's name, so an interrupt ends only them.
    switchyard_sync::pg::tag_sessions();
    let runtime = crate::run::build_runtime(0)?;
    let what = format!("{command:?}")
        .split([' ', '{'])
        .next()
        .unwrap_or_default()
        .to_lowercase();
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (mut int, mut term) = (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        );
        // Dropping the running step kills its client programs and removes
        // its temporary files; then green is told what happened.
        let signalled = tokio::select! {
            r = switchyard_sync::run(&db, command, output) => {
                return Ok(match r {
                    Ok(report) => ExitCode::from(u8::try_from(report.code).unwrap_or(1)),
                    Err(e) => {
                        eprintln!("switchyard sync: error: {e}");
                        ExitCode::from(2)
                    }
                });
            }
            _ = int.recv() => ("SIGINT", 130),
            _ = term.recv() => ("SIGTERM", 143),
        };
        let (name, code) = signalled;
        let dir = match switchyard_sync::primary::primary(&db).await {
            Ok(p) => p.direction(),
            Err(e) => {
                eprintln!("switchyard sync: {what} interrupted by {name}; the primary could not be read ({e}): treat the candidate's database as incomplete and run `switchyard sync clone --replace`");
                return Ok(ExitCode::from(code));
            }
        };
        let after = match switchyard_sync::gate::interrupted(&db, dir, name).await {
            Ok(s) => s,
            Err(e) => format!("{} could not be reached to record it ({e}): treat it as incomplete and run `switchyard sync clone --replace`", dir.target()),
        };
        eprintln!("switchyard sync: {what} interrupted by {name}: {after}");
        Ok::<_, anyhow::Error>(ExitCode::from(code))
    })
}
