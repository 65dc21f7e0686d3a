//! A stand-in for `switchyard sync` until the CLI is wired, used by
//! `bench/sync/run.sh`:
//!
//! ```text
//! cargo run --release -p switchyard-sync --example sync -- \
//!     --blue URL --green URL [--migrations DIR] [--json] \
//!     preflight | clone [--jobs N] [--replace] [--verify] | migrate [--dry-run] | validate | info | verify [--jobs N] | status
//! ```

use std::path::PathBuf;
use std::time::Duration;
use switchyard_config::{DatabaseConfig, SyncMode};
use switchyard_sync::{run, Command, Output};

fn usage() -> ! {
    eprintln!("usage: sync --blue URL --green URL [--migrations DIR] [--json] <preflight|clone|migrate|validate|info|verify|status> [--jobs N] [--replace] [--verify] [--dry-run]");
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut blue, mut green, mut migrations) = (None, None, PathBuf::from("migrations"));
    let (mut json, mut jobs, mut replace, mut verify, mut dry_run) =
        (false, 0usize, false, false, false);
    let mut sub = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--blue" => blue = args.next(),
            "--green" => green = args.next(),
            "--migrations" => {
                migrations = args.next().map(PathBuf::from).unwrap_or_else(|| usage())
            }
            "--json" => json = true,
            "--jobs" => {
                jobs = args
                    .next()
                    .and_then(|j| j.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--replace" => replace = true,
            "--verify" => verify = true,
            "--dry-run" => dry_run = true,
            s if !s.starts_with('-') && sub.is_none() => sub = Some(s.to_string()),
            _ => usage(),
        }
    }
    let (Some(blue), Some(green), Some(sub)) = (blue, green, sub) else {
        usage()
    };
    let cmd = match sub.as_str() {
        "preflight" => Command::Preflight,
        "clone" => Command::Clone {
            jobs,
            replace,
            verify,
        },
        "migrate" => Command::Migrate { dry_run },
        "validate" => Command::Validate,
        "info" => Command::Info,
        "verify" => Command::Verify { jobs },
        "status" => Command::Status,
        _ => usage(),
    };
    let db = DatabaseConfig {
        blue,
        green,
        migrations,
        mode: SyncMode::Snapshot,
        max_lag: Duration::from_secs(1),
        jobs: 2,
        cutover_timeout: Duration::from_secs(10),
    };
    let out = if json { Output::Json } else { Output::Terminal };
    match run(&db, cmd, out).await {
        Ok(report) => std::process::exit(report.code),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2)
        }
    }
}
