//! Zero-downtime binary upgrade, as nginx does it: on `SIGUSR2` switchyard
//! starts the binary on disk again (same arguments, same working directory,
//! same standard output and error), handing it its listening sockets as
//! inherited descriptors named in `SWITCHYARD_INHERIT_FDS`, plus one end of
//! a socket pair (`ready`). The successor adopts the sockets instead of
//! binding, starts serving, and writes `ready` on that socket; only then
//! does this process stop accepting and drain. If the successor fails
//! (exits, closes the pair, or says nothing for [`READY_TIMEOUT`]), this
//! process says why and keeps serving.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

use crate::inherit::{INHERIT_FDS, LISTEN_VARS};

/// How long a successor may take to start serving.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Duplicates of this process's listening sockets (`proxy`, `tls`,
/// `admin`), kept to hand over.
pub struct Sockets(pub Vec<(&'static str, OwnedFd)>);

/// The binary on disk: where this process was started from, even if that
/// file has been replaced since (which is the point of an upgrade).
fn binary_on_disk() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // Linux names a replaced executable "PATH (deleted)".
    let s = exe.to_string_lossy();
    Ok(match s.strip_suffix(" (deleted)") {
        Some(p) => PathBuf::from(p),
        None => exe,
    })
}

/// Starts the binary on disk as a successor on `sockets` and waits until it
/// serves. Returns its pid, or why it does not serve (it has been stopped
/// if it was still running).
pub async fn start_successor(sockets: &Sockets) -> Result<u32, String> {
    let exe = binary_on_disk().map_err(|e| format!("cannot find switchyard's binary: {e}"))?;
    let (ours, theirs) =
        UnixStream::pair().map_err(|e| format!("cannot create the ready channel: {e}"))?;
    let mut spec: Vec<String> = sockets
        .0
        .iter()
        .map(|(name, fd)| format!("{name}:{}", fd.as_raw_fd()))
        .collect();
    spec.push(format!("ready:{}", theirs.as_raw_fd()));
    let inheritable = |on: bool| -> std::io::Result<()> {
        for (_, fd) in &sockets.0 {
            socket2::SockRef::from(fd).set_cloexec(!on)?;
        }
        socket2::SockRef::from(&theirs).set_cloexec(!on)
    };
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.args(std::env::args_os().skip(1))
        .env(INHERIT_FDS, spec.join(","))
        .stdin(std::process::Stdio::null());
    for v in LISTEN_VARS {
        cmd.env_remove(v);
    }
    // The descriptors are inheritable only around the spawn (a program
    // started elsewhere in this process meanwhile would inherit them too;
    // it would only keep the ports open while it runs).
    let spawned = inheritable(true)
        .map_err(|e| format!("cannot pass the listening sockets on: {e}"))
        .and_then(|()| {
            cmd.spawn()
                .map_err(|e| format!("cannot start {}: {e}", exe.display()))
        });
    if let Err(e) = inheritable(false) {
        tracing::warn!(error = %e, "could not mark the listening sockets close-on-exec again");
    }
    drop(theirs);
    let mut child = spawned?;
    let pid = child.id().unwrap_or(0);
    tracing::info!(pid, binary = %exe.display(), "upgrade: started the new process; waiting until it serves");

    let ours = match ours
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(ours))
    {
        Ok(s) => s,
        Err(e) => {
            let _ = child.start_kill();
            return Err(format!("cannot read the ready channel: {e}"));
        }
    };
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(ours);
    let said = tokio::time::timeout(READY_TIMEOUT, reader.read_line(&mut line)).await;
    match said {
        Ok(Ok(_)) if line.starts_with("ready") => Ok(pid),
        Ok(_) => {
            // It closed the channel without serving: usually it exited.
            let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            let how = match status {
                Ok(Ok(s)) => format!("exited ({s})"),
                _ => {
                    let _ = child.start_kill();
                    "closed the ready channel; stopped it".to_string()
                }
            };
            Err(format!(
                "the new process (pid {pid}) {how} before serving; its own error is in the log just before this line"
            ))
        }
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            Err(format!(
                "the new process (pid {pid}) did not serve within {READY_TIMEOUT:?}; stopped it"
            ))
        }
    }
}
