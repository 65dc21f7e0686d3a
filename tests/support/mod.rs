//! Test harness: real HTTP backends on `127.0.0.1:0`, a real `switchyard run`
//! process with a generated config, and a small HTTP client. Builder-style,
//! in the spirit of linkerd2-proxy's integration harness.
#![allow(dead_code)]

pub mod backend;
pub mod client;
pub mod switchyard;
pub mod tls;

pub use backend::Backend;
#[allow(unused_imports)]
pub use client::Client;
pub use switchyard::Switchyard;

/// How a finished `switchyard` command exited (-1: ended by a signal) and
/// what it printed.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Both streams, stdout first: for messages and substring checks.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// The switchyard binary under test, as a command to add arguments to.
pub fn switchyard_command() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
}

/// Runs `cmd` to its end.
pub fn run(cmd: &mut std::process::Command) -> Run {
    let out = cmd.output().expect("the switchyard binary runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `switchyard sync -c <config> <args>`, run to its end.
pub fn sync(config: &std::path::Path, args: &[&str]) -> Run {
    run(switchyard_command()
        .arg("sync")
        .arg("-c")
        .arg(config)
        .args(args))
}

/// A blue and a green backend behind a switchyard configured by `configure`
/// (which receives a builder with both pools set).
pub async fn deployment(
    configure: impl FnOnce(switchyard::SwitchyardBuilder) -> switchyard::SwitchyardBuilder,
) -> (Backend, Backend, Switchyard) {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let sy = configure(Switchyard::builder().blue(blue.addr).green(green.addr)).start();
    (blue, green, sy)
}

/// Polls `f` every 20 ms until it returns true or `secs` pass; returns the
/// last result. For waiting on asynchronous effects, never for timing.
pub async fn eventually(secs: u64, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if f().await {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
