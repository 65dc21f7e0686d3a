//! The state store: weights, rollout state and the event history persisted
//! as JSON, written atomically (write a temp file, fsync, rename, fsync the
//! directory) so a crash leaves either the old or the new state, never a torn
//! one. Every write also refreshes `<path>.bak` the same way, so a state file
//! damaged by something else (a disk error, a careless edit) falls back to
//! the last good copy instead of silently resetting traffic.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::model::state::PersistedState;

/// Why the state store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file or its directory could not be read or written.
    #[error("state file {}: {source} (check [state] path and its directory's permissions)", path.display())]
    Io {
        /// The state file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// Another switchyard process holds the state file.
    #[error("state file {} is in use by another switchyard ({holder}): one state file, one controller. \
             Stop that process, or give this one its own [state] path (and its own databases)", path.display())]
    Locked {
        /// The state file.
        path: PathBuf,
        /// Who holds it, as it wrote in the lock file.
        holder: String,
    },
    /// Neither the state file nor its backup could be parsed.
    #[error("state file {} is unreadable ({reason}) and no good backup exists at {}. \
             Refusing to start rather than reset traffic: restore it, or remove both files \
             to start again with blue at 100%", path.display(), backup.display())]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// Its backup copy.
        backup: PathBuf,
        /// Why parsing failed.
        reason: String,
    },
}

/// The persisted state and the files behind it. The state lives behind a
/// mutex: whoever changes it holds the lock until it is written, so the
/// file always reflects the order of changes.
pub struct Store {
    path: PathBuf,
    backup: PathBuf,
    current: Mutex<PersistedState>,
    /// The exclusive lock on `<path>.lock`, held for the process's life
    /// (let go only to hand the state over to a successor, see
    /// [`Store::release_lock`]).
    lock: Mutex<Option<std::fs::File>>,
}

/// How [`Store::open`] found the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// No state file yet: a fresh start with blue at 100%.
    Fresh,
    /// The state file was read.
    Restored,
    /// The state file was damaged; the backup was used and the damaged file
    /// kept aside under the given name.
    FromBackup {
        /// Where the damaged file was moved.
        damaged: PathBuf,
        /// Why it was unreadable.
        reason: String,
    },
}

fn parse(bytes: &[u8]) -> Result<PersistedState, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

fn read(path: &Path) -> Result<Option<Vec<u8>>, std::io::Error> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl Store {
    /// Opens the store at `path`, called once at start. Reads the state
    /// file; if it is damaged, falls back to `<path>.bak` (and rewrites the
    /// state file from it); if both are unusable, refuses with
    /// [`StoreError::Corrupt`] naming the file and how to reset.
    pub fn open(path: &Path) -> Result<(Store, Opened), StoreError> {
        let backup = backup_path(path);
        let io = |source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        };
        let lock = take_lock(path)?;
        let main = read(path).map_err(io)?;
        let bak = read(&backup).map_err(|source| StoreError::Io {
            path: backup.clone(),
            source,
        })?;
        let (state, how) = match (main, bak) {
            (None, None) => (PersistedState::default(), Opened::Fresh),
            (Some(bytes), bak) => match parse(&bytes) {
                Ok(s) => (s, Opened::Restored),
                Err(reason) => match bak.as_deref().map(parse) {
                    Some(Ok(s)) => {
                        let damaged = damaged_path(path);
                        std::fs::rename(path, &damaged).map_err(io)?;
                        (s, Opened::FromBackup { damaged, reason })
                    }
                    _ => {
                        return Err(StoreError::Corrupt {
                            path: path.to_path_buf(),
                            backup,
                            reason,
                        })
                    }
                },
            },
            (None, Some(bytes)) => match parse(&bytes) {
                // The main file vanished but its copy is good: use it.
                Ok(s) => (
                    s,
                    Opened::FromBackup {
                        damaged: path.to_path_buf(),
                        reason: "the state file is missing".into(),
                    },
                ),
                Err(reason) => {
                    return Err(StoreError::Corrupt {
                        path: path.to_path_buf(),
                        backup,
                        reason: format!("state file missing, backup unreadable: {reason}"),
                    })
                }
            },
        };
        let store = Store {
            path: path.to_path_buf(),
            backup,
            current: Mutex::new(state),
            lock: Mutex::new(Some(lock)),
        };
        if how != Opened::Restored {
            let state = store.current();
            store.write(&state)?;
        }
        Ok((store, how))
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lets go of the state file's lock (the process hands the state over
    /// to a successor and changes nothing in it from now on).
    pub fn release_lock(&self) {
        self.lock.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Takes the lock again after [`Store::release_lock`] (a hand-over that
    /// failed); refused when someone else took it meanwhile.
    pub fn retake_lock(&self) -> Result<(), StoreError> {
        let mut l = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if l.is_none() {
            *l = Some(take_lock(&self.path)?);
        }
        Ok(())
    }

    /// A copy of the current state.
    pub fn current(&self) -> PersistedState {
        self.lock().clone()
    }

    /// Locks the state for a change; call [`Store::write`] with the new
    /// state before releasing the guard.
    pub fn lock(&self) -> MutexGuard<'_, PersistedState> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Persists `state` to the state file and then to its backup, each
    /// atomically.
    pub fn write(&self, state: &PersistedState) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(state).expect("state serializes");
        write_atomically(&self.path, &bytes).map_err(|source| StoreError::Io {
            path: self.path.clone(),
            source,
        })?;
        write_atomically(&self.backup, &bytes).map_err(|source| StoreError::Io {
            path: self.backup.clone(),
            source,
        })
    }
}

/// `<path>.lock`, beside the state file (which is replaced on every write,
/// so it cannot carry the lock itself).
pub fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes the exclusive lock of the state file, or says who holds it. The
/// lock (an `flock`) goes away with the process, whatever way it ends.
fn take_lock(path: &Path) -> Result<std::fs::File, StoreError> {
    let lp = lock_path(path);
    let io = |source| StoreError::Io {
        path: lp.clone(),
        source,
    };
    // Created if missing, then held open read-only (an open file for
    // writing would keep its filesystem from being remounted read-only,
    // which an operator may need to do; `flock` needs no write access).
    if !lp.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lp)
            .map_err(io)?;
    }
    let f = std::fs::File::open(&lp).map_err(io)?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&lp)
                .ok()
                .filter(|h| !h.trim().is_empty())
                .unwrap_or_else(|| "a process that did not say who it is".into());
            return Err(StoreError::Locked {
                path: path.to_path_buf(),
                holder: holder.trim().to_string(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let who = format!("pid {} on {}", std::process::id(), host.trim());
    let _ = std::fs::write(&lp, who.as_bytes());
    Ok(f)
}

/// `<path>.bak`.
pub fn backup_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".bak");
    PathBuf::from(name)
}

fn damaged_path(path: &Path) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".damaged-{secs}"));
    PathBuf::from(name)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weight::Weight;

    fn with_green(bp: u32) -> PersistedState {
        PersistedState {
            green: Weight::from_bp(bp),
            ..PersistedState::default()
        }
    }

    #[test]
    fn a_missing_file_is_a_fresh_start_and_a_write_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let (store, how) = Store::open(&path).unwrap();
        assert_eq!(how, Opened::Fresh);
        assert_eq!(store.current().green.bp(), 0);
        store.write(&with_green(2500)).unwrap();
        drop(store);
        let (store, how) = Store::open(&path).unwrap();
        assert_eq!(how, Opened::Restored);
        assert_eq!(store.current().green.bp(), 2500);
        assert!(backup_path(&path).exists());
    }

    #[test]
    fn a_second_store_on_the_same_file_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let (first, _) = Store::open(&path).unwrap();
        let err = Store::open(&path).err().expect("refused").to_string();
        assert!(err.contains("in use by another switchyard"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "names the holder: {err}"
        );
        drop(first);
        assert!(
            Store::open(&path).is_ok(),
            "free again once the holder is gone"
        );
    }

    #[test]
    fn a_corrupt_file_falls_back_to_the_backup_and_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let (store, _) = Store::open(&path).unwrap();
        store.write(&with_green(500)).unwrap();
        drop(store);
        std::fs::write(&path, b"{\"green_bp\": 5").unwrap();
        let (store, how) = Store::open(&path).unwrap();
        assert_eq!(store.current().green.bp(), 500);
        let Opened::FromBackup { damaged, .. } = how else {
            panic!("expected a fallback, got {how:?}")
        };
        assert_eq!(std::fs::read(&damaged).unwrap(), b"{\"green_bp\": 5");
        // The state file is good again.
        assert_eq!(
            parse(&std::fs::read(&path).unwrap()).unwrap().green.bp(),
            500
        );
    }

    #[test]
    fn corrupt_file_and_backup_refuse_naming_the_file_and_the_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, b"garbage").unwrap();
        std::fs::write(backup_path(&path), b"{\"green_bp\": 20000}").unwrap();
        let err = Store::open(&path).err().expect("refuses").to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("remove both files"), "{err}");
        // Nothing was changed on disk.
        assert_eq!(std::fs::read(&path).unwrap(), b"garbage");
    }

    #[test]
    fn a_state_file_from_before_the_model_types_reads_and_writes_back_the_same() {
        // As switchyard wrote it when weights were bare integers and event
        // kinds bare strings: the file format and the JSON names are kept.
        let old = r#"{
  "version": 1,
  "green_bp": 2500,
  "stable": "blue",
  "rollout": {
    "phase": "cutover",
    "step": 2,
    "step_started_ms": 1700000000000,
    "reason": null,
    "pre_cutover_bp": 2500,
    "back": false
  },
  "history": [
    {
      "seq": 7,
      "at": "2023-11-14T22:13:20.000Z",
      "at_ms": 1700000000000,
      "actor": "controller",
      "kind": "cutover_timed_out",
      "state": "paused",
      "step": 2,
      "weights": {
        "blue": 75.0,
        "green": 25.0
      },
      "reason": "green did not catch up",
      "held_ms": 1000,
      "held_requests": 3
    }
  ],
  "next_seq": 8
}"#;
        let s = parse(old.as_bytes()).unwrap();
        assert_eq!(s.green, Weight::from_bp(2500));
        assert_eq!(s.rollout.pre_cutover, Some(Weight::from_bp(2500)));
        assert_eq!(s.history[0].kind, crate::EventKind::CutoverTimedOut);
        let back: serde_json::Value = serde_json::to_value(&s).unwrap();
        let want: serde_json::Value = serde_json::from_str(old).unwrap();
        assert_eq!(back, want);
    }
}
