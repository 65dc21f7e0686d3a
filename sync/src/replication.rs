//! Replication and cutover as every engine reports them: the direction,
//! the state and lag, the objects switchyard owns, a catch-up probe's
//! result, what cleanup removed, and what a cutover did.

use crate::error::{Side, SyncError};
use serde::Serialize;
use std::time::Duration;

/// What a completed switch did.
#[derive(Debug, Clone, Serialize)]
pub struct SwitchReport {
    /// The direction replication ran before the switch.
    pub from: Direction,
    /// The side that is the primary now.
    pub primary: Side,
    /// The WAL position of the old primary the new one replayed.
    pub caught_up_lsn: String,
    /// Time spent waiting for the new primary to catch up.
    pub catch_up_ms: u64,
    /// Sequences copied to the new primary.
    pub sequences: usize,
    /// Whether the old primary now subscribes to the new one.
    pub reverse: bool,
    /// Tables and columns the new primary has that the old one lacks, so
    /// they are not replicated back (from migrations).
    pub not_replicated: Vec<String>,
    /// Time per step, in milliseconds.
    pub steps: Vec<(String, u64)>,
    /// The switch had already committed (switchyard stopped right after it):
    /// nothing was done this time.
    pub already_done: bool,
    /// What went wrong after the switch committed (recording it on one
    /// side): reported with the cutover, never hidden.
    pub warnings: Vec<String>,
    /// How the old primary was fenced (PostgreSQL).
    pub fence: Option<crate::postgres::fence::FenceReport>,
    /// The roles whose fence on the new primary was lifted (it had been
    /// the replica).
    pub unfenced: Vec<String>,
}

impl SwitchReport {
    /// A switch found committed already (by an earlier run, or read back
    /// after its answer was lost): nothing was done this time.
    pub fn recovered(from: Direction, reverse: bool) -> SwitchReport {
        SwitchReport {
            from,
            primary: from.target(),
            caught_up_lsn: String::new(),
            catch_up_ms: 0,
            sequences: 0,
            reverse,
            not_replicated: Vec::new(),
            steps: Vec::new(),
            already_done: true,
            warnings: Vec::new(),
            fence: None,
            unfenced: Vec::new(),
        }
    }
}

/// What the check after a switch found ([`finish`]): whether the old
/// primary took writes after the switch that the new one does not have.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FinishReport {
    /// The side that was the primary before the switch.
    pub old_primary: Option<Side>,
    /// The check ran to its end (`writes_after` is a measurement).
    pub checked: bool,
    /// The last position of the old primary the new one replayed.
    pub replayed_lsn: Option<String>,
    /// Row changes the old primary committed after that position.
    pub writes_after: u64,
    /// The first of them, by table and key.
    pub rows: Vec<String>,
    /// Why the check could not run (then nothing is claimed).
    pub unchecked: Option<String>,
}

impl FinishReport {
    /// One sentence for the event: what was checked and what was found.
    pub fn describe(&self) -> String {
        let old = self
            .old_primary
            .map(|s| s.to_string())
            .unwrap_or_else(|| "the old primary".into());
        match (&self.unchecked, self.checked, self.writes_after) {
            (Some(why), _, _) => format!(
                "could not check that {old} took no write after the switch ({why}): a loss cannot be ruled out; run `switchyard sync verify`"
            ),
            (None, true, 0) => format!(
                "checked: {old} committed no write after the switch (its log after {} holds no change the new primary lacks)",
                self.replayed_lsn.as_deref().unwrap_or("?")
            ),
            (None, true, n) => format!(
                "{old} committed {n} row change(s) after the switch that the new primary does not have ({}): run `switchyard sync verify` and replay them",
                self.rows.join(", ")
            ),
            (None, false, _) => format!("the check of {old} after the switch did not run"),
        }
    }

    /// Whether a loss is ruled out by measurement.
    pub fn nothing_lost(&self) -> bool {
        self.checked && self.writes_after == 0
    }
}

/// Why a switch did not happen. For `Timeout` and `Failed` the old primary
/// is still the primary and took every write (the new one took none): the
/// held writes go to it. `undone` says whether everything the switch did
/// was taken back (otherwise what is left is named, and
/// [`crate::postgres::cutover::repair_undone`] finishes the job). For
/// `Ambiguous` the outcome is unknown: no write may be released until it
/// is known.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// The new primary did not catch up before the deadline.
    #[error("{target} had not replayed {source_side}'s WAL up to {lsn} after {waited_ms} ms ({behind}); writes stay on {source_side}")]
    Timeout {
        source_side: Side,
        target: Side,
        lsn: String,
        waited_ms: u64,
        behind: String,
        undone: bool,
    },
    /// A step failed before the switch committed.
    #[error("cutover failed before it committed, {source_side} stays the primary{}: {source}", if *undone { " (everything was undone)" } else { " (not everything could be undone yet)" })]
    Failed {
        source_side: Side,
        #[source]
        source: SyncError,
        undone: bool,
    },
    /// The commit (the new primary's record) got no answer: it may or may
    /// not have happened.
    #[error("cannot tell whether {target}'s database became the primary: recording the cutover there got no answer ({source})")]
    Ambiguous {
        target: Side,
        #[source]
        source: SyncError,
        undone: bool,
    },
}

impl SwitchError {
    /// Whether everything the switch did was taken back.
    pub fn undone(&self) -> bool {
        match self {
            SwitchError::Timeout { undone, .. }
            | SwitchError::Failed { undone, .. }
            | SwitchError::Ambiguous { undone, .. } => *undone,
        }
    }
}

/// Which way changes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Blue → green: blue's database is the primary (before cutover).
    Forward,
    /// Green → blue: green's database is the primary (after cutover).
    Reverse,
}

impl Direction {
    /// The direction whose source is `side`.
    pub fn from_source(side: Side) -> Direction {
        match side {
            Side::Blue => Direction::Forward,
            Side::Green => Direction::Reverse,
        }
    }

    /// The side whose changes are published.
    pub fn source(self) -> Side {
        match self {
            Direction::Forward => Side::Blue,
            Direction::Reverse => Side::Green,
        }
    }
    /// The side that subscribes.
    pub fn target(self) -> Side {
        self.source().other()
    }
    /// The other direction.
    pub fn flipped(self) -> Direction {
        match self {
            Direction::Forward => Direction::Reverse,
            Direction::Reverse => Direction::Forward,
        }
    }
    /// `blue -> green` or `green -> blue`, for people.
    pub fn arrow(self) -> &'static str {
        match self {
            Direction::Forward => "blue -> green",
            Direction::Reverse => "green -> blue",
        }
    }
}

/// Where replication stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicationState {
    /// No switchyard subscription exists.
    None,
    /// The target's subscription is connected and the source's slot active.
    Streaming,
    /// The subscription exists but is not connected (target or source
    /// down, worker restarting, or disabled).
    Stopped,
    /// Objects of both directions exist (an interrupted cutover), or a slot
    /// exists without its subscription: `switchyard sync cleanup` or a
    /// cutover resolves it.
    Inconsistent,
}

/// Replication as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicationStatus {
    pub state: ReplicationState,
    /// The direction of the active (or stopped) subscription.
    pub direction: Option<Direction>,
    /// Bytes of the source's WAL the target has not confirmed.
    pub lag_bytes: Option<i64>,
    /// Seconds the target is behind (0 when caught up; `None` when unknown,
    /// e.g. the subscriber is not connected).
    pub lag_seconds: Option<f64>,
    /// WAL the source keeps for the slot (what an abandoned slot would fill
    /// the disk with).
    pub retained_wal_bytes: Option<i64>,
    /// The slot's `wal_status` (`reserved`, `extended`, `unreserved`, `lost`).
    pub wal_status: Option<String>,
    /// Every switchyard object found, on both sides.
    pub objects: Vec<ReplicationObject>,
    /// Sides that could not be read, with the error.
    pub unreachable: Vec<String>,
    /// MySQL/MariaDB: transactions of the source the replica has not
    /// executed yet (from the GTID positions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transactions_behind: Option<u64>,
}

/// One publication, slot or subscription switchyard owns.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReplicationObject {
    pub side: Side,
    pub kind: ObjectKind,
    pub name: String,
    pub direction: Direction,
    /// Slots: in use by a walsender; subscriptions: enabled with a running worker.
    pub active: bool,
}

/// The kind of a replication object.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    Publication,
    Slot,
    Subscription,
    /// MySQL/MariaDB: the named replication connection (`CHANGE MASTER
    /// 'switchyard' TO …`) on the side that is a replica.
    Replica,
}

/// How a catch-up probe ended.
#[derive(Debug, Clone)]
pub enum CatchUp {
    /// The target replayed everything the source had written when the probe
    /// started, after `waited`.
    CaughtUp { lsn: String, waited: Duration },
    /// It had not within the time allowed.
    Behind {
        lsn: String,
        confirmed: Option<String>,
        lag_bytes: Option<i64>,
    },
}

/// What [`cleanup`] removed.
#[derive(Debug, Clone, Serialize, Default)]
pub struct CleanupReport {
    /// Objects dropped.
    pub removed: Vec<ReplicationObject>,
    /// What was deliberately left in place, and why.
    pub kept: Vec<String>,
    /// Sides that could not be reached: their objects may remain.
    pub unreachable: Vec<String>,
}

/// The replication part of `switchyard sync status`, for people.
pub fn render_status(r: &ReplicationStatus) -> String {
    let mut t = format!(
        "replication: {}{}\n",
        match r.state {
            ReplicationState::None => "none",
            ReplicationState::Streaming => "streaming",
            ReplicationState::Stopped => "stopped",
            ReplicationState::Inconsistent => "inconsistent (an interrupted cutover: run `switchyard sync cleanup` or let switchyard finish the cutover)",
        },
        r.direction
            .map(|d| format!(" ({})", d.arrow()))
            .unwrap_or_default()
    );
    let seconds = || {
        r.lag_seconds
            .map(|s| format!("{s:.3}s"))
            .unwrap_or_else(|| "unknown seconds (replica not connected)".into())
    };
    if let Some(b) = r.lag_bytes {
        t.push_str(&format!("  lag: {b} bytes, {}\n", seconds()));
    } else if let Some(n) = r.transactions_behind {
        t.push_str(&format!("  lag: {n} transactions, {}\n", seconds()));
    }
    if let Some(w) = r.retained_wal_bytes {
        t.push_str(&format!(
            "  WAL retained by the slot: {w} bytes ({})\n",
            r.wal_status.as_deref().unwrap_or("?")
        ));
    }
    for o in &r.objects {
        t.push_str(&format!(
            "  {} {:?} {}{}\n",
            o.side,
            o.kind,
            o.name,
            if o.active { "" } else { " (inactive)" }
        ));
    }
    for u in &r.unreachable {
        t.push_str(&format!("  unreachable: {u}\n"));
    }
    t
}

use switchyard_config::{DatabaseConfig, DatabaseEngine};

/// The URL switchyard uses for `side`'s database.
pub fn url_of(db: &DatabaseConfig, side: Side) -> &str {
    match side {
        Side::Blue => &db.blue,
        Side::Green => &db.green,
    }
}

/// How the target's server reaches the source in direction `dir` (for a
/// subscription or a replica): `blue_from_green` / `green_from_blue` when
/// set.
pub fn source_url(db: &DatabaseConfig, dir: Direction) -> &str {
    match dir {
        Direction::Forward => db.blue_for_green(),
        Direction::Reverse => db.green_for_blue(),
    }
}

/// Replication between blue and green, read from both sides (a side that
/// cannot be reached is listed in `unreachable`).
pub async fn status(db: &DatabaseConfig) -> ReplicationStatus {
    match db.engine() {
        DatabaseEngine::Postgres => crate::postgres::replicate::status(db).await,
        DatabaseEngine::MySql => crate::mysql::replica::status(db).await,
    }
}

/// Reads the source's current log position, then waits (up to `within`)
/// until the target has applied everything up to it: "lag ≤ `within`",
/// measured. What the gate and cutover wait for.
pub async fn wait_caught_up(
    db: &DatabaseConfig,
    dir: Direction,
    within: Duration,
) -> Result<CatchUp, SyncError> {
    match db.engine() {
        DatabaseEngine::Postgres => {
            crate::postgres::replicate::wait_caught_up(db, dir, within).await
        }
        DatabaseEngine::MySql => crate::mysql::replica::wait_caught_up(db, dir, within).await,
    }
}

/// Removes every replication object switchyard created, on both sides,
/// whatever state they are in (idempotent).
pub async fn cleanup(db: &DatabaseConfig) -> Result<CleanupReport, SyncError> {
    match db.engine() {
        DatabaseEngine::Postgres => crate::postgres::replicate::cleanup(db).await,
        DatabaseEngine::MySql => crate::mysql::replica::cleanup(db).await,
    }
}

/// Moves the primary from `from.source()` to `from.target()` while the
/// proxy holds writes; `deadline` bounds the whole switch. Called by the
/// control plane's cutover.
pub async fn switch(
    db: &DatabaseConfig,
    from: Direction,
    kind: crate::primary::CutoverKind,
    deadline: std::time::Instant,
) -> Result<SwitchReport, SwitchError> {
    match db.engine() {
        DatabaseEngine::Postgres => {
            crate::postgres::cutover::switch(db, from, kind, deadline).await
        }
        DatabaseEngine::MySql => crate::mysql::replica::switch(db, from, kind, deadline).await,
    }
}

/// After an abort: removes what the aborted release set up, but never the
/// replication that protects an earlier promotion. Once a promotion made
/// the primary's database the primary (and with `reverse = true`), the
/// other colour's database is kept as its live replica, whatever state the
/// release was aborted in; before any promotion, everything goes, as
/// [`cleanup`] does.
pub async fn cleanup_after_abort(db: &DatabaseConfig) -> Result<CleanupReport, SyncError> {
    match db.engine() {
        DatabaseEngine::Postgres => {
            let p = crate::primary::primary(db).await?;
            let keep =
                (db.reverse && db.mode == switchyard_config::SyncMode::Replicate && p.promoted)
                    .then(|| p.direction());
            crate::postgres::replicate::cleanup_keeping(db, keep).await
        }
        DatabaseEngine::MySql => crate::mysql::replica::cleanup(db).await,
    }
}

/// After a switch, once writes flow again: removes what the old direction
/// left (PostgreSQL: its subscription, slot and publication; on MySQL the
/// switch itself removed the old replica).
/// The report says whether the old primary took writes after the switch
/// (PostgreSQL reads its slot; MySQL/MariaDB is not checked and says so).
pub async fn finish(db: &DatabaseConfig, from: Direction) -> Result<FinishReport, SyncError> {
    match db.engine() {
        DatabaseEngine::Postgres => crate::postgres::cutover::finish(db, from).await,
        DatabaseEngine::MySql => Ok(FinishReport {
            old_primary: Some(from.source()),
            unchecked: Some("MySQL/MariaDB: not checked yet".into()),
            ..FinishReport::default()
        }),
    }
}
