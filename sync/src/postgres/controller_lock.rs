//! One controller per pair of databases: the process that runs rollouts
//! against them holds a session advisory lock in each, for as long as it
//! runs. A second switchyard started on the same databases (with its own
//! state file, on another host) finds the lock taken and is told who holds
//! it, instead of running a second rollout that would cut over behind the
//! first one's back. The lock goes away with the session: a crashed or
//! killed holder frees it at once.

use std::time::{Duration, Instant};
use switchyard_config::DatabaseConfig;
use tokio_postgres::Client;

use crate::error::{Side, SyncError};
use crate::pg;
use crate::replication::url_of;

/// The locks held (one session per side that could be reached).
pub struct ControllerLock {
    sessions: Vec<(Side, Client)>,
    /// Sides that could not be reached when the lock was taken.
    pub unreached: Vec<String>,
}

impl ControllerLock {
    /// Whether every session holding the lock is still open.
    pub fn intact(&self) -> bool {
        self.sessions.iter().all(|(_, c)| !c.is_closed())
    }

    /// The sides whose lock is held.
    pub fn sides(&self) -> Vec<Side> {
        self.sessions.iter().map(|(s, _)| *s).collect()
    }
}

/// The lock's key: the pair's hash, so pairs sharing a server do not
/// share a lock.
fn key(db: &DatabaseConfig) -> i64 {
    let h = u32::from_str_radix(&crate::postgres::replicate::pair_hash(db), 16).unwrap_or(0);
    (0x5359_4354_i64 << 32) | i64::from(h) // "SYCT"
}

/// Takes the lock on both sides, `who` naming this process in the
/// holder's session (`application_name`). A lock another process holds is
/// waited for up to `wait` (a predecessor handing over lets go of it), then
/// an error naming the holder. A side that cannot be reached is listed in
/// `unreached` (the caller tries again later).
pub async fn take(
    db: &DatabaseConfig,
    who: &str,
    wait: Duration,
) -> Result<ControllerLock, SyncError> {
    let k = key(db);
    let mut lock = ControllerLock {
        sessions: Vec::new(),
        unreached: Vec::new(),
    };
    for side in [Side::Blue, Side::Green] {
        let c = match tokio::time::timeout(
            Duration::from_secs(5),
            pg::connect_owner(side, url_of(db, side)),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                lock.unreached.push(format!("{side}: {e}"));
                continue;
            }
            Err(_) => {
                lock.unreached.push(format!("{side}: no answer within 5 s"));
                continue;
            }
        };
        let name = format!("switchyard controller {who}");
        let _ = c
            .execute("SELECT set_config('application_name', $1, false)", &[&name])
            .await;
        let until = Instant::now() + wait;
        loop {
            let got: bool = c
                .query_one("SELECT pg_try_advisory_lock($1)", &[&k])
                .await
                .map_err(|e| SyncError::query(side, "taking the controller lock", &e))?
                .get(0);
            if got {
                break;
            }
            if Instant::now() >= until {
                let holder = holder(&c, k).await;
                return Err(SyncError::Other(format!(
                    "another switchyard runs rollouts against these databases: {side}'s controller lock is held by {holder}. \
                     One pair of databases, one controller: stop that one, or give this one other databases"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        lock.sessions.push((side, c));
    }
    Ok(lock)
}

/// Who holds lock `k`, as the server sees them.
async fn holder(c: &Client, k: i64) -> String {
    let classid = (k >> 32) as u32;
    let objid = (k & 0xffff_ffff) as u32;
    c.query_opt(
        "SELECT coalesce(a.application_name, '?') || ' (pid ' || a.pid || coalesce(', from ' || host(a.client_addr), '') \
                || ', since ' || to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC)' \
           FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
          WHERE l.locktype = 'advisory' AND l.granted AND l.classid::int8 = $1 AND l.objid::int8 = $2 AND l.objsubid = 1",
        &[&i64::from(classid), &i64::from(objid)],
    )
    .await
    .ok()
    .flatten()
    .map(|r| r.get(0))
    .unwrap_or_else(|| "a session that could not be named".into())
}
