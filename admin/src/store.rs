//! The state store: weights and rollout state persisted as JSON, written
//! atomically (write a temp file, fsync, rename, fsync the directory) so a
//! crash leaves either the old or the new state, never a torn one.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Why the state store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state file {}: {source} (check [state] path and its directory's permissions)", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {} is unreadable: {reason}. Refusing to start rather than reset traffic; \
             restore it, or delete it to start from blue at 100%", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

/// What survives a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PersistedState {
    /// Green's weight in basis points.
    pub green_bp: u32,
}

/// The persisted state and the file behind it.
pub struct Store {
    path: PathBuf,
    current: Mutex<PersistedState>,
}

impl Store {
    /// Opens the store at `path`, reading the state if the file exists.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let state = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => PersistedState::default(),
            Err(source) => {
                return Err(StoreError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Ok(Store {
            path: path.to_path_buf(),
            current: Mutex::new(state),
        })
    }

    /// A copy of the current state.
    pub fn current(&self) -> PersistedState {
        self.current.lock().expect("state lock").clone()
    }

    /// Changes the state with `f` and persists it before returning.
    pub fn update(&self, f: impl FnOnce(&mut PersistedState)) -> Result<PersistedState, StoreError> {
        let mut guard = self.current.lock().expect("state lock");
        let mut next = guard.clone();
        f(&mut next);
        write_atomically(&self.path, &serde_json::to_vec_pretty(&next).expect("state serializes"))
            .map_err(|source| StoreError::Io {
                path: self.path.clone(),
                source,
            })?;
        *guard = next.clone();
        Ok(next)
    }
}

/// Writes `bytes` to `path` via a temp file in the same directory: write,
/// fsync, rename, fsync the directory.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}
