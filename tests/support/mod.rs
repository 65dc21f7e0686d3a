//! Test harness: real HTTP backends on `127.0.0.1:0`, a real `switchyard run`
//! process with a generated config, and a small HTTP client. Builder-style,
//! in the spirit of linkerd2-proxy's integration harness.
#![allow(dead_code)]

pub mod backend;
pub mod client;
pub mod switchyard;

pub use backend::Backend;
#[allow(unused_imports)]
pub use client::Client;
pub use switchyard::Switchyard;

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
