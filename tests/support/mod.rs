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
