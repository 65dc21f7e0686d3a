//! The systemd notification protocol (`sd_notify`), for `Type=notify`
//! units: `READY=1` once the process serves, `MAINPID=` when a successor
//! started on `SIGUSR2` takes over (so systemd follows the new process
//! instead of treating the old one's exit as the service stopping; the unit
//! needs `NotifyAccess=all`), `RELOADING=1`/`READY=1` around a `SIGHUP`
//! reload, and `STOPPING=1` when draining. Without `NOTIFY_SOCKET` in the
//! environment (not under systemd) nothing is sent. `NOTIFY_SOCKET` is left
//! in the environment, for the successor.

use std::os::unix::net::{SocketAddr, UnixDatagram};

const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `state` (newline-separated `KEY=value` assignments) to systemd, if
/// this process runs under it. Failures are logged and otherwise ignored:
/// serving matters more than telling systemd about it.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os(NOTIFY_SOCKET) else {
        return;
    };
    let sent = address(&path.to_string_lossy()).and_then(|addr| {
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(state.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        tracing::warn!(socket = %path.to_string_lossy(), error = %e, "cannot notify systemd ({})", state.replace('\n', " "));
    }
}

/// `READY=1` with this process's pid as the service's main process: right
/// for the first process and for a successor taking over alike.
pub fn ready() {
    notify(&format!("MAINPID={}\nREADY=1", std::process::id()));
}

/// `RELOADING=1` with the time it started, as `Type=notify-reload` units
/// require; `READY=1` follows once the reload is done (or rejected).
pub fn reloading() {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}

/// The socket address of `NOTIFY_SOCKET`: a path, or `@name` in the
/// abstract namespace.
fn address(value: &str) -> std::io::Result<SocketAddr> {
    match value.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())
        }
        None if value.starts_with('/') => SocketAddr::from_pathname(value),
        None => Err(std::io::Error::other(format!(
            "{NOTIFY_SOCKET}={value:?} is neither an absolute path nor @abstract"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_abstract_names_are_understood_and_anything_else_refused() {
        assert!(address("/run/systemd/notify")
            .unwrap()
            .as_pathname()
            .is_some());
        use std::os::linux::net::SocketAddrExt;
        assert_eq!(
            address("@sd-notify").unwrap().as_abstract_name(),
            Some(&b"sd-notify"[..])
        );
        assert!(address("relative/path").is_err());
    }
}
