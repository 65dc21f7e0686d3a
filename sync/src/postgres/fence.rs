//! The fence: at cutover the old primary stops taking application writes at
//! the database, not only at the proxy, so writes that do not pass through
//! switchyard (cron jobs, workers, consoles, migrations run by hand) cannot
//! land on a database that is no longer the primary.
//!
//! [`fence`] makes the application's roles read-only in the old primary's
//! database (`ALTER ROLE … IN DATABASE … SET default_transaction_read_only
//! = on`, which every new session of theirs gets), remembers each role's
//! previous setting in `switchyard.fence`, and ends their open sessions:
//! at once for those that have written nothing, after a short wait for a
//! transaction that has written (one that commits meanwhile commits before
//! the catch-up position, so it reaches the new primary; one still open is
//! ended, so its writes are refused, never left on the old primary alone).
//! [`unfence`] puts every setting back: on the old primary when a cutover
//! is undone, on the new primary when it becomes the primary (it was fenced
//! while it was the replica).
//!
//! What it cannot cover: superusers and replication roles (never fenced:
//! switchyard's own sessions and the subscriptions use them), and a session
//! that asks for a read-write transaction explicitly (`BEGIN READ WRITE`,
//! `SET default_transaction_read_only = off`). Those are what the check
//! after the cutover ([`crate::postgres::cutover::finish`]) is for: it
//! reads what the old primary logged after the switch and names it.

use serde::Serialize;
use std::time::{Duration, Instant};
use switchyard_config::{DatabaseConfig, Fence};
use tokio_postgres::Client;

use crate::error::{Side, SyncError};
use crate::pg;

/// What [`fence`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FenceReport {
    /// The roles made read-only.
    pub roles: Vec<String>,
    /// Sessions ended, each described (pid, role, application, what it was
    /// doing): their open transactions were rolled back.
    pub ended: Vec<String>,
    /// Writing transactions that finished by themselves while the fence
    /// waited (committed before the catch-up position, so on the new
    /// primary too).
    pub waited_out: Vec<String>,
}

impl FenceReport {
    /// For the cutover's event.
    pub fn describe(&self, side: Side) -> String {
        if self.roles.is_empty() {
            return format!("{side}: no application role to fence");
        }
        let mut t = format!(
            "{side}'s database made read-only for {}",
            self.roles.join(", ")
        );
        if !self.ended.is_empty() {
            t.push_str(&format!(
                "; ended {} session(s) there: {}",
                self.ended.len(),
                self.ended.join("; ")
            ));
        }
        if !self.waited_out.is_empty() {
            t.push_str(&format!(
                "; waited for {} writing transaction(s) to finish first",
                self.waited_out.len()
            ));
        }
        t
    }
}

const TABLE: &str = "CREATE SCHEMA IF NOT EXISTS switchyard; \
    CREATE TABLE IF NOT EXISTS switchyard.fence ( \
      role text PRIMARY KEY, previous text, at timestamptz NOT NULL DEFAULT now())";

/// The roles `[database] fence` names on the server of `c`: the listed
/// ones (each must exist), or every login role that is neither a superuser
/// nor a replication role, other than the one switchyard connects as.
pub async fn roles(c: &Client, side: Side, fence: &Fence) -> Result<Vec<String>, SyncError> {
    match fence {
        Fence::Off => Ok(Vec::new()),
        Fence::LoginRoles => Ok(c
            .query(
                "SELECT rolname::text FROM pg_roles \
                  WHERE rolcanlogin AND NOT rolsuper AND NOT rolreplication \
                    AND rolname <> current_user AND rolname !~ '^pg_' ORDER BY 1",
                &[],
            )
            .await
            .map_err(|e| SyncError::query(side, "listing the roles to fence", &e))?
            .iter()
            .map(|r| r.get(0))
            .collect()),
        Fence::Roles(names) => {
            let found: Vec<String> = c
                .query(
                    "SELECT rolname::text FROM pg_roles WHERE rolname = ANY($1)",
                    &[names],
                )
                .await
                .map_err(|e| SyncError::query(side, "looking up the roles to fence", &e))?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let missing: Vec<&String> = names.iter().filter(|n| !found.contains(n)).collect();
            if !missing.is_empty() {
                return Err(SyncError::Other(format!(
                    "[database] fence names roles {side}'s server does not have: {}; fix the list (or leave it empty for every login role)",
                    missing
                        .iter()
                        .map(|m| m.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            Ok(found)
        }
    }
}

/// Fences the database of `c` (the old primary, `side`): see the module
/// documentation. Sessions still writing are waited for until `wait_until`,
/// then ended; everything is done by `deadline` or fails.
pub async fn fence(
    c: &Client,
    side: Side,
    db: &DatabaseConfig,
    wait_until: Instant,
    deadline: Instant,
) -> Result<FenceReport, SyncError> {
    let mut report = FenceReport {
        roles: roles(c, side, &db.fence).await?,
        ..FenceReport::default()
    };
    if report.roles.is_empty() {
        return Ok(report);
    }
    let dbname: String = c
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(|e| SyncError::query(side, "reading the database name", &e))?
        .get(0);
    let mut sql = format!("BEGIN; {TABLE};");
    for r in &report.roles {
        // The setting the role had in this database before (kept once: a
        // second fence must not take the fence itself for the original).
        sql.push_str(&format!(
            "INSERT INTO switchyard.fence (role, previous) \
             SELECT {lit}, (SELECT substr(c, length('default_transaction_read_only=') + 1) \
                              FROM pg_db_role_setting s, unnest(s.setconfig) c \
                             WHERE s.setrole = (SELECT oid FROM pg_roles WHERE rolname = {lit}) \
                               AND s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                               AND c LIKE 'default\\_transaction\\_read\\_only=%') \
             ON CONFLICT (role) DO NOTHING; \
             ALTER ROLE {id} IN DATABASE {db} SET default_transaction_read_only = on;",
            lit = pg::literal(r),
            id = pg::ident(r),
            db = pg::ident(&dbname),
        ));
    }
    sql.push_str(" COMMIT");
    pg::exec(
        c,
        side,
        &format!("fencing {side}'s database (making its application roles read-only)"),
        &sql,
    )
    .await?;
    end_sessions(
        c,
        side,
        &report.roles.clone(),
        &mut report,
        wait_until,
        deadline,
    )
    .await?;
    Ok(report)
}

/// Ends the sessions of `roles` in this database: those that wrote nothing
/// at once, writing ones once they finish or at `wait_until`.
async fn end_sessions(
    c: &Client,
    side: Side,
    roles: &[String],
    report: &mut FenceReport,
    wait_until: Instant,
    deadline: Instant,
) -> Result<(), SyncError> {
    const SESSIONS: &str = "SELECT pid, usename::text, coalesce(application_name, ''), coalesce(state, '?'), \
                backend_xid IS NOT NULL, coalesce(extract(epoch FROM now() - xact_start), 0)::float8 \
           FROM pg_stat_activity \
          WHERE datname = current_database() AND usename = ANY($1) AND pid <> pg_backend_pid() \
            AND backend_type = 'client backend'";
    let mut ended: Vec<i32> = Vec::new();
    let mut writing_seen: Vec<i32> = Vec::new();
    loop {
        let rows = c
            .query(SESSIONS, &[&roles])
            .await
            .map_err(|e| SyncError::query(side, "listing the sessions to end", &e))?;
        let alive: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
        // A writing transaction seen before whose session is gone or no
        // longer holds a transaction id finished by itself (its owner
        // committed or rolled back).
        for pid in &writing_seen {
            let still = rows
                .iter()
                .any(|r| r.get::<_, i32>(0) == *pid && r.get::<_, bool>(4));
            if !still && !ended.contains(pid) {
                report
                    .waited_out
                    .push(format!("pid {pid} finished its transaction"));
            }
        }
        writing_seen = rows
            .iter()
            .filter(|r| r.get::<_, bool>(4))
            .map(|r| r.get(0))
            .collect();
        let waiting = Instant::now() < wait_until;
        let mut to_end = Vec::new();
        for r in &rows {
            let (pid, user, app, state, wrote, age): (i32, String, String, String, bool, f64) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
            if ended.contains(&pid) || (wrote && waiting) {
                continue;
            }
            to_end.push(pid);
            ended.push(pid);
            report.ended.push(format!(
                "pid {pid} ({user}{}, {state}{})",
                if app.is_empty() {
                    String::new()
                } else {
                    format!(", {app}")
                },
                if wrote {
                    format!(", an open transaction that had written, {age:.1}s old: rolled back")
                } else {
                    String::new()
                }
            ));
        }
        if !to_end.is_empty() {
            c.query(
                "SELECT pg_terminate_backend(pid) FROM unnest($1::int4[]) pid",
                &[&to_end],
            )
            .await
            .map_err(|e| SyncError::query(side, "ending the application's sessions", &e))?;
        }
        if alive.iter().all(|p| ended.contains(p)) {
            break;
        }
        if Instant::now() >= deadline {
            return Err(SyncError::Other(format!(
                "{side}: the application's sessions did not end before the cutover timeout"
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // pg_terminate_backend only signals: wait until they are gone.
    loop {
        let left: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                   AND usename = ANY($1) AND pid <> pg_backend_pid() AND backend_type = 'client backend' \
                   AND backend_xid IS NOT NULL",
                &[&roles],
            )
            .await
            .map_err(|e| SyncError::query(side, "watching the sessions end", &e))?
            .get(0);
        if left == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(SyncError::Other(format!(
                "{side}: {left} writing session(s) of the application did not end before the cutover timeout"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Lifts the fence of the database of `c` (`side`): every role's previous
/// setting is put back. Returns the roles. Nothing to do when it was never
/// fenced.
pub async fn unfence(c: &Client, side: Side) -> Result<Vec<String>, SyncError> {
    let rows = match c
        .query(
            "SELECT role, previous FROM switchyard.fence ORDER BY role",
            &[],
        )
        .await
    {
        Ok(r) => r,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            return Ok(Vec::new())
        }
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_SCHEMA_NAME) => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(SyncError::query(side, "reading switchyard.fence", &e)),
    };
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let dbname: String = c
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(|e| SyncError::query(side, "reading the database name", &e))?
        .get(0);
    let mut sql = String::from("BEGIN;");
    let mut roles = Vec::new();
    for r in &rows {
        let (role, previous): (String, Option<String>) = (r.get(0), r.get(1));
        let exists: bool = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)",
                &[&role],
            )
            .await
            .map_err(|e| SyncError::query(side, "looking up a fenced role", &e))?
            .get(0);
        if exists {
            sql.push_str(&match &previous {
                Some(v) => format!(
                    "ALTER ROLE {} IN DATABASE {} SET default_transaction_read_only = {};",
                    pg::ident(&role),
                    pg::ident(&dbname),
                    pg::literal(v)
                ),
                None => format!(
                    "ALTER ROLE {} IN DATABASE {} RESET default_transaction_read_only;",
                    pg::ident(&role),
                    pg::ident(&dbname)
                ),
            });
        }
        roles.push(role);
    }
    sql.push_str(" DELETE FROM switchyard.fence; COMMIT");
    pg::exec(
        c,
        side,
        &format!("lifting the fence of {side}'s database"),
        &sql,
    )
    .await?;
    Ok(roles)
}

/// The roles fenced in the database of `c` now (for status).
pub async fn fenced(c: &Client) -> Vec<String> {
    c.query("SELECT role FROM switchyard.fence ORDER BY role", &[])
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default()
}
