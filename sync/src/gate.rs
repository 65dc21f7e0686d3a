//! What the control plane's database gate reads, the same for every
//! engine: the last clone's record, the gate's inputs ([`GateStatus`]) and
//! the rule that decides whether green is trusted ([`judge`]).

use crate::error::SyncError;
use crate::migrate;
use serde::Serialize;
use std::time::Duration;

/// Where a clone recorded in green stands (`switchyard.clones.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CloneState {
    /// Being copied now, or interrupted so hard it could not be marked.
    Running,
    /// Stopped with an error: green is not a copy of blue.
    Failed,
    /// Every table, index and object was copied.
    Complete,
}

impl CloneState {
    /// The value in the `state` column.
    pub fn as_str(self) -> &'static str {
        match self {
            CloneState::Running => "running",
            CloneState::Failed => "failed",
            CloneState::Complete => "complete",
        }
    }

    pub(crate) fn from_column(s: &str) -> Result<CloneState, SyncError> {
        Ok(match s {
            "running" => CloneState::Running,
            "failed" => CloneState::Failed,
            "complete" => CloneState::Complete,
            other => {
                return Err(SyncError::Other(format!(
                    "the candidate's switchyard.clones has a clone in state {other:?}, which this version does not know \
                     (written by a newer switchyard?); it is not trusted: run `switchyard sync clone --replace`"
                )))
            }
        })
    }
}

impl std::fmt::Display for CloneState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// How the target's copy came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CloneKind {
    /// Copied from the primary (`switchyard sync clone`).
    Copy,
    /// Reused: a live replica of the primary since a cutover (reverse
    /// sync), found complete and brought up to the new release's schema.
    Replica,
}

impl CloneKind {
    pub(crate) fn from_column(s: Option<String>) -> CloneKind {
        match s.as_deref() {
            Some("replica") => CloneKind::Replica,
            _ => CloneKind::Copy,
        }
    }
}

/// A clone as recorded in the target's database.
#[derive(Debug, Clone, Serialize)]
pub struct CloneRecord {
    pub id: i64,
    pub state: CloneState,
    /// The phase it was in (or failed in).
    pub phase: Option<String>,
    pub error: Option<String>,
    /// The replication slot whose snapshot was copied (replicate mode).
    pub slot: Option<String>,
    /// The LSN the copied snapshot corresponds to.
    pub consistent_lsn: Option<String>,
    /// Blue's clock when the snapshot was taken (UTC, ISO 8601).
    pub blue_time: Option<String>,
    /// When the record was last written.
    pub at: String,
    /// The primary's cutover generation when the copy was taken: a copy
    /// from before the newest cutover is not a copy of today's primary.
    pub generation: i64,
    pub kind: CloneKind,
}

/// What the control plane's database gate needs to know, about the
/// candidate's database (`target`) of the release from the primary.
#[derive(Debug, Clone, Serialize)]
pub struct GateStatus {
    /// The side this is about: the candidate's database.
    pub target: crate::Side,
    /// The primary, from both sides' cutover records.
    pub primary: Option<crate::primary::Primary>,
    /// The primary's (the source's) schema version, by its own history.
    pub source_schema_version: Option<String>,
    /// Verification passed at green's current schema version, and that version
    /// is the newest migration on disk.
    pub verified: bool,
    /// Why `verified` is false (or a summary when true).
    pub reason: String,
    /// Green's schema version (highest applied migration).
    pub schema_version: Option<String>,
    /// Newest versioned migration in the migrations directory.
    pub latest_migration: Option<String>,
    /// Schema version at which the last verification ran.
    pub verified_version: Option<String>,
    /// When the last verification finished (UTC, ISO 8601).
    pub verified_at: Option<String>,
    /// The last clone into green.
    pub clone: Option<CloneRecord>,
    /// Replication between the two (replicate mode only).
    pub replication: Option<crate::replicate::ReplicationStatus>,
    /// Snapshot mode: why green's copy is stale (blue took writes since the
    /// clone), or `None` when it is not (or this is not checked).
    pub blue_changed: Option<String>,
}

impl GateStatus {
    /// The inputs read from green, not judged yet (see [`judge`]):
    /// green's migration history, the newest migration on disk, the last
    /// clone.
    pub fn unjudged(
        target: crate::Side,
        history: &[crate::flyway::Applied],
        newest: Option<crate::flyway::Version>,
        clone: Option<CloneRecord>,
    ) -> GateStatus {
        GateStatus {
            target,
            primary: None,
            source_schema_version: None,
            verified: false,
            reason: String::new(),
            schema_version: crate::flyway::current_version(history).map(|v| v.to_string()),
            latest_migration: newest.map(|v| v.to_string()),
            verified_version: None,
            verified_at: None,
            clone,
            replication: None,
            blue_changed: None,
        }
    }

    /// Replication lag in seconds, when replication is streaming.
    pub fn replication_lag(&self) -> Option<Duration> {
        self.replication
            .as_ref()
            .and_then(|r| r.lag_seconds)
            .map(Duration::from_secs_f64)
    }
}

/// The newest verification recorded in green, as the gate reads it.
#[derive(Debug, Clone)]
pub struct LastVerification {
    pub passed: bool,
    /// Green's schema version when it ran.
    pub schema_version: Option<String>,
    /// When it finished (UTC, ISO 8601).
    pub at: Option<String>,
    /// It finished after the newest clone (so it looked at this copy).
    pub after_last_clone: bool,
}

/// Decides `verified` and `reason` from what was read (the same rules for
/// every engine): the last clone complete, a passed verification after it,
/// at green's schema version, which is the newest migration.
pub fn judge(status: &mut GateStatus, last: Option<LastVerification>) {
    let target = status.target;
    let source = target.other();
    if let Some(p) = &status.primary {
        if p.side == target {
            status.reason = format!(
                "{target}'s database is the primary ({}): it is not a candidate; the next release goes to {source}",
                p.describe()
            );
            return;
        }
    }
    let Some(last) = last else {
        status.reason = format!("{target} was never verified: run `switchyard sync verify`");
        return;
    };
    status.verified_version = last.schema_version.clone();
    status.verified_at = last.at;
    let verified_version = last
        .schema_version
        .as_deref()
        .and_then(migrate::Version::parse);
    let schema_version = status
        .schema_version
        .as_deref()
        .and_then(migrate::Version::parse);
    let latest = status
        .latest_migration
        .as_deref()
        .and_then(migrate::Version::parse);
    let generation = status.primary.as_ref().map_or(0, |p| p.generation);
    if let Some(c) = status
        .clone
        .as_ref()
        .filter(|c| c.state != CloneState::Complete)
    {
        status.reason = format!(
            "{target}'s last clone is {} (phase {}{}): it is not a copy of {source}; run `switchyard sync clone --replace`",
            c.state,
            c.phase.as_deref().unwrap_or("?"),
            c.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
        );
    } else if let Some(c) = status.clone.as_ref().filter(|c| c.generation < generation) {
        status.reason = format!(
            "{target}'s copy was made before the last cutover (generation {} < {generation}): it is not a copy of \
             today's primary, {source}; `switchyard ctl start` prepares it again (reusing it when it is a live replica), \
             or run `switchyard sync clone --replace`",
            c.generation
        );
    } else if let Some(why) = &status.blue_changed {
        status.reason = format!(
            "{target} is stale: {why}. {target} lacks those writes and a cutover would lose them: \
             run `switchyard sync clone --replace --verify` again, or use mode = \"replicate\" \
             (or set stale_clone = \"ignore\" to accept losing them)"
        );
    } else if !last.after_last_clone {
        status.reason = format!(
            "{target} was cloned (or reused) again after its last verification: run `switchyard sync verify`"
        );
    } else if latest.is_some() && schema_version != latest {
        status.reason = format!(
            "{target} is at schema version {} but the newest migration is {}: run `switchyard sync migrate`",
            opt(&status.schema_version),
            opt(&status.latest_migration)
        );
    } else if verified_version != schema_version {
        status.reason = format!(
            "the last verification ran at schema version {} but {target} is now at {}: run `switchyard sync verify`",
            opt(&status.verified_version),
            opt(&status.schema_version)
        );
    } else if !last.passed {
        status.reason =
            "the last verification found differences: see `switchyard sync status`".into();
    } else {
        status.verified = true;
        status.reason = format!(
            "{target} verified at schema version {}",
            opt(&status.schema_version)
        );
    }
}

fn opt(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("none")
}

use crate::replication::Direction;
use switchyard_config::{DatabaseConfig, DatabaseEngine};

/// Reads the gate's inputs for the release in direction `dir` from its
/// target, the candidate's database (and replication from both sides in
/// replicate mode), and judges them.
pub async fn gate_status(db: &DatabaseConfig, dir: Direction) -> Result<GateStatus, SyncError> {
    match db.engine() {
        DatabaseEngine::Postgres => crate::postgres::state::gate_status(db, dir).await,
        DatabaseEngine::MySql => crate::mysql::state::gate_status(db, dir).await,
    }
}

/// Whether the gate checks that blue took no writes since green was
/// cloned ([`GateStatus::blue_changed`]): snapshot mode with `stale_clone =
/// "hold"`, on PostgreSQL (MariaDB is not checked yet, so nothing may claim
/// its copy fresh).
pub fn staleness_checked(db: &DatabaseConfig) -> bool {
    db.engine() == DatabaseEngine::Postgres
        && db.mode == switchyard_config::SyncMode::Snapshot
        && db.stale_clone == switchyard_config::StaleClonePolicy::Hold
}

/// Why green's copy is stale, if it is and [`staleness_checked`]: just that
/// part of [`gate_status`], for a cutover holding writes.
pub async fn stale_copy(db: &DatabaseConfig, dir: Direction) -> Result<Option<String>, SyncError> {
    if !staleness_checked(db) {
        return Ok(None);
    }
    crate::postgres::state::stale_copy(db, dir).await
}

/// After a sync step was interrupted (SIGINT, SIGTERM): ends what was left
/// running on green, marks a running clone as failed, and says what was
/// running.
pub async fn interrupted(
    db: &DatabaseConfig,
    dir: Direction,
    signal: &str,
) -> Result<String, SyncError> {
    match db.engine() {
        DatabaseEngine::Postgres => crate::postgres::state::interrupted(db, dir, signal).await,
        DatabaseEngine::MySql => crate::mysql::state::interrupted(db, dir, signal).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_config::{StaleClonePolicy, SyncMode};

    #[test]
    fn staleness_is_checked_only_where_it_can_be_told() {
        let pg = |mode, stale_clone| DatabaseConfig {
            mode,
            stale_clone,
            ..DatabaseConfig::new("postgres://b@h/app", "postgres://g@h/app")
        };
        assert!(staleness_checked(&pg(
            SyncMode::Snapshot,
            StaleClonePolicy::Hold
        )));
        assert!(!staleness_checked(&pg(
            SyncMode::Snapshot,
            StaleClonePolicy::Ignore
        )));
        assert!(!staleness_checked(&pg(
            SyncMode::Replicate,
            StaleClonePolicy::Hold
        )));
        // MariaDB is not checked: nothing may say its copy is fresh.
        let mariadb = DatabaseConfig {
            mode: SyncMode::Snapshot,
            ..DatabaseConfig::new("mysql://b@h/app", "mysql://g@h/app")
        };
        assert!(!staleness_checked(&mariadb));
    }
}
