//! What the throwaway servers of every engine (PostgreSQL's
//! [`crate::ephemeral`], [`crate::mysql::ephemeral`]) need alike: their
//! error, whether this process is root (then the server runs as its own
//! system user, in a directory that user owns), such a directory, and a
//! free 127.0.0.1 port.

use std::path::PathBuf;
use std::process::Command;

/// Why a throwaway server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EphemeralError {
    #[error("no PostgreSQL server programs found: install PostgreSQL (initdb, pg_ctl) or set SWITCHYARD_PG_BINDIR")]
    NotFound,
    #[error("{what}: {message}")]
    Failed { what: String, message: String },
}

pub(crate) fn failed(what: impl Into<String>, message: impl Into<String>) -> EphemeralError {
    EphemeralError::Failed {
        what: what.into(),
        message: message.into(),
    }
}

/// Whether this process runs as root.
pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A new temporary directory named `<prefix>…`, kept after this call (the
/// server's watchdog removes it), owned by the system user `owner` when
/// one is given (this process is root).
pub(crate) fn server_dir(prefix: &str, owner: Option<&str>) -> Result<PathBuf, EphemeralError> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| failed("creating a temporary directory", e.to_string()))?
        .keep();
    if let Some(user) = owner {
        let st = Command::new("chown")
            .args(["-R", &format!("{user}:{user}")])
            .arg(&dir)
            .status()
            .map_err(|e| failed("chown", e.to_string()))?;
        if !st.success() {
            return Err(failed(
                format!("chown {user} {}", dir.display()),
                format!("failed: is there a `{user}` system user?"),
            ));
        }
    }
    Ok(dir)
}

/// A TCP port on 127.0.0.1 nobody listens on right now.
pub(crate) fn free_port() -> Result<u16, EphemeralError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| failed("finding a free port", e.to_string()))
}
