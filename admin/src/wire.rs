//! The admin API's JSON contract, as types shared by the server, `switchyard
//! ctl` and the demo; the OpenAPI document (`GET /api/v1/openapi.json`) is
//! derived from them, so the description cannot drift from the code.
//!
//! One convention for units throughout: durations are seconds (`f64`) in
//! fields named `*_seconds`; instants are RFC 3339 strings in UTC (events
//! also carry `at_ms`, the same instant in milliseconds since the epoch, for
//! arithmetic); weights are percent of new requests; `step` is the 0-based
//! index into `steps`.
//!
//! Fields are documented where their name does not say it all; the doc
//! comments become the OpenAPI descriptions.
#![allow(missing_docs)]

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use utoipa::ToSchema;

use crate::model::phase::Phase;
pub use crate::model::weight::Weights;

/// A colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    Blue,
    Green,
}

impl From<switchyard_proxy::Colour> for Colour {
    fn from(c: switchyard_proxy::Colour) -> Colour {
        match c {
            switchyard_proxy::Colour::Blue => Colour::Blue,
            switchyard_proxy::Colour::Green => Colour::Green,
        }
    }
}

impl std::fmt::Display for Colour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Colour::Blue => "blue",
            Colour::Green => "green",
        })
    }
}

/// `GET /api/v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Status {
    pub weights: Weights,
    pub rollout: RolloutStatus,
    pub pools: Pools,
    pub analysis: AnalysisStatus,
    /// Every pluggable gate's last verdict, by name (`database`, `confirm
    /// webhook`); the database's details are under `database`.
    pub gates: BTreeMap<String, GateView>,
    /// With `[database]`: green's database, replication and the writer.
    pub database: Option<DatabaseStatus>,
}

/// Where the rollout is.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RolloutStatus {
    pub state: Phase,
    /// Index into `steps` of the current step (0-based), if any.
    pub step: Option<usize>,
    /// Green weight of each step, percent.
    pub steps: Vec<f64>,
    /// Why the last transition happened.
    pub reason: Option<String>,
    /// Why the rollout is not advancing right now, in words.
    pub holding: Option<String>,
    pub stable: Colour,
    pub candidate: Colour,
    /// When the current step began.
    pub step_started: Option<String>,
    pub bake_seconds: Option<f64>,
    /// Why the state file does not hold what the status shows (its writes
    /// fail): changes are refused meanwhile; a rollback or a database
    /// switch that happened holds in memory and is written once it can be.
    #[serde(default)]
    pub unwritten: Option<String>,
}

/// Both pools.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Pools {
    pub blue: PoolStatus,
    pub green: PoolStatus,
}

/// One colour's upstreams and its statistics over the analysis window.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PoolStatus {
    pub upstreams: Vec<UpstreamView>,
    pub healthy: usize,
    pub window: WindowView,
}

/// One upstream.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UpstreamView {
    pub address: String,
    pub healthy: bool,
    /// Out of rotation after connect failures.
    pub ejected: bool,
    pub in_flight: usize,
}

/// A colour's requests over the analysis window.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WindowView {
    pub requests: u64,
    pub server_errors: u64,
    pub transport_failures: u64,
    /// Failures in a row, across windows.
    pub consecutive_failures: u64,
    /// Median time to the response headers.
    pub p50_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
}

/// Continuous analysis of the candidate.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AnalysisStatus {
    /// `pass`, `inconclusive` or `breach`; none while no rollout runs.
    pub verdict: Option<VerdictName>,
    /// Why it is not `pass`.
    pub detail: Option<String>,
    pub judged_at: Option<String>,
    pub window_seconds: f64,
    pub interval_seconds: f64,
    pub min_requests: u64,
    pub max_error_rate: f64,
    pub max_error_rate_delta: Option<f64>,
    pub max_p99_seconds: Option<f64>,
    pub max_p99_ratio: Option<f64>,
    pub fail_fast_after: Option<u32>,
}

/// A closed set of names: an enum whose JSON form is the given string,
/// with `as_str` and a `Display` that pads (for ctl's tables), so the name is
/// written once.
macro_rules! names {
    ($(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $var:ident = $s:tt,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $s)] $var,)*
        }

        impl $name {
            /// The name in JSON.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$var => $s,)*
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}

names! {
    /// An analysis verdict.
    pub enum VerdictName {
        Pass = "pass",
        Inconclusive = "inconclusive",
        Breach = "breach",
    }
}

/// A gate's last verdict.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GateView {
    pub gate: GateState,
    /// Why it holds, in words.
    pub reason: Option<String>,
}

names! {
    /// Whether a gate lets the rollout advance.
    pub enum GateState {
        Pass = "pass",
        Hold = "hold",
        /// Not read yet.
        Unknown = "unknown",
    }
}

names! {
    /// How green's database is kept: copied once before the rollout, or
    /// replicated from blue continuously.
    pub enum SyncMode {
        Snapshot = "snapshot",
        Replicate = "replicate",
    }
}

names! {
    /// Where green's last clone stands.
    pub enum CloneState {
        /// Being copied (or interrupted too hard to be marked failed).
        Running = "running",
        /// Stopped with an error: green is not a copy of blue.
        Failed = "failed",
        Complete = "complete",
    }
}

names! {
    /// Where replication between the databases stands.
    pub enum ReplicationState {
        /// No switchyard subscription exists.
        None = "none",
        /// The subscriber is connected and the publisher's slot active.
        Streaming = "streaming",
        /// The subscription exists but is not connected.
        Stopped = "stopped",
        /// Objects of both directions exist, or a slot without its
        /// subscription: `switchyard sync cleanup` or a cutover resolves it.
        Inconsistent = "inconsistent",
    }
}

names! {
    /// A step of preparing green's database, in order.
    pub enum PrepareStep {
        Preflight = "preflight",
        Clone = "clone",
        Migrate = "migrate",
        Verify = "verify",
        Replicate = "replicate",
    }
}

names! {
    /// Where a step of preparing green's database stands.
    pub enum StepState {
        Pending = "pending",
        Running = "running",
        Done = "done",
        /// Already done and still valid.
        Skipped = "skipped",
        Failed = "failed",
    }
}

// The engine's own enums, as the API names them.

impl From<switchyard_config::SyncMode> for SyncMode {
    fn from(m: switchyard_config::SyncMode) -> SyncMode {
        match m {
            switchyard_config::SyncMode::Snapshot => SyncMode::Snapshot,
            switchyard_config::SyncMode::Replicate => SyncMode::Replicate,
        }
    }
}

impl From<switchyard_sync::gate::CloneState> for CloneState {
    fn from(c: switchyard_sync::gate::CloneState) -> CloneState {
        use switchyard_sync::gate::CloneState as S;
        match c {
            S::Running => CloneState::Running,
            S::Failed => CloneState::Failed,
            S::Complete => CloneState::Complete,
        }
    }
}

impl From<switchyard_sync::replication::ReplicationState> for ReplicationState {
    fn from(r: switchyard_sync::replication::ReplicationState) -> ReplicationState {
        use switchyard_sync::replication::ReplicationState as S;
        match r {
            S::None => ReplicationState::None,
            S::Streaming => ReplicationState::Streaming,
            S::Stopped => ReplicationState::Stopped,
            S::Inconsistent => ReplicationState::Inconsistent,
        }
    }
}

impl From<switchyard_sync::workflow::Step> for PrepareStep {
    fn from(p: switchyard_sync::workflow::Step) -> PrepareStep {
        use switchyard_sync::workflow::Step as S;
        match p {
            S::Preflight => PrepareStep::Preflight,
            S::Clone => PrepareStep::Clone,
            S::Migrate => PrepareStep::Migrate,
            S::Verify => PrepareStep::Verify,
            S::Replicate => PrepareStep::Replicate,
        }
    }
}

impl From<switchyard_sync::workflow::StepState> for StepState {
    fn from(p: switchyard_sync::workflow::StepState) -> StepState {
        use switchyard_sync::workflow::StepState as S;
        match p {
            S::Pending => StepState::Pending,
            S::Running => StepState::Running,
            S::Done => StepState::Done,
            S::Skipped => StepState::Skipped,
            S::Failed => StepState::Failed,
        }
    }
}

/// The database part of the status.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DatabaseStatus {
    pub mode: SyncMode,
    pub gate: GateState,
    pub reason: Option<String>,
    pub max_lag_seconds: f64,
    /// When the reading below was taken.
    pub checked_at: Option<String>,
    /// The colour whose database is the primary, by the cutover records
    /// kept in both databases (`null` until read).
    pub primary: Option<Colour>,
    /// When it became the primary (`null`: it always was).
    pub primary_since: Option<String>,
    /// The colour whose database the next release prepares (the other one).
    pub candidate: Colour,
    /// Each colour's schema version (highest applied migration), by its own
    /// migration history.
    pub schema: SchemaVersions,
    /// The candidate's database is verified at its current schema version.
    pub verified: Option<bool>,
    /// The candidate's schema version (also in `schema`).
    pub schema_version: Option<String>,
    pub latest_migration: Option<String>,
    /// The schema version the last verification ran at.
    pub verified_version: Option<String>,
    pub verified_at: Option<String>,
    pub clone: Option<CloneView>,
    pub replication: Option<ReplicationView>,
    /// The colour whose database is the primary.
    pub writer: Colour,
    /// Writes go to `writer` whatever the weights (`writes = "stable"`).
    pub writes_pinned: bool,
    pub write_gate: WriteGateView,
    /// The steps of preparing the candidate's database, as the last rollout ran them.
    pub preparing: Vec<PrepareStepView>,
    pub last_cutover: Option<CutoverView>,
    /// A cutover whose outcome cannot be read yet: writes are refused (503)
    /// until it can.
    #[serde(default)]
    pub attention: Option<String>,
    /// What an undone cutover left half changed, being repaired.
    #[serde(default)]
    pub repair: Option<String>,
}

/// Each colour's schema version.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct SchemaVersions {
    pub blue: Option<String>,
    pub green: Option<String>,
}

/// How the candidate's database came to be: copied, or reused as the
/// live replica reverse sync kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CloneKind {
    Copy,
    Replica,
}

/// The candidate's last clone (or reuse).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CloneView {
    #[serde(default = "copy_kind")]
    pub kind: CloneKind,
    pub state: CloneState,
    pub phase: Option<String>,
    pub error: Option<String>,
    pub slot: Option<String>,
    /// The WAL position the copy represents.
    pub consistent_lsn: Option<String>,
    /// The source's clock at that point (named after the first release,
    /// when the source is blue).
    pub blue_time: Option<String>,
    pub at: String,
}

fn copy_kind() -> CloneKind {
    CloneKind::Copy
}

/// Replication between the databases.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReplicationView {
    pub state: ReplicationState,
    /// `blue -> green` or `green -> blue`.
    pub direction: Option<String>,
    pub lag_bytes: Option<i64>,
    pub lag_seconds: Option<f64>,
    /// MySQL/MariaDB: transactions of the primary the replica has not
    /// executed yet (from the GTID positions).
    #[serde(default)]
    pub lag_transactions: Option<u64>,
    /// WAL the primary keeps for switchyard's slot.
    pub retained_wal_bytes: Option<i64>,
    pub wal_status: Option<String>,
    /// Sides that could not be read.
    pub unreachable: Vec<String>,
}

/// The proxy's write gate.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WriteGateView {
    /// New writes are being held (cutover).
    pub held: bool,
    pub held_total: u64,
    pub in_flight: usize,
    pub waiting: usize,
}

/// One step of preparing green's database.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PrepareStepView {
    pub step: PrepareStep,
    pub state: StepState,
    pub detail: String,
}

/// The last cutover.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CutoverView {
    pub at: String,
    pub completed: bool,
    pub held_seconds: f64,
    pub held_requests: u64,
    pub reason: Option<String>,
}

/// `GET /api/v1/history`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct History {
    /// Oldest first.
    pub events: Vec<crate::Event>,
}

/// `PUT /api/v1/weights`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SetWeights {
    /// Green's share, percent (0 to 100); blue gets the rest.
    pub green: f64,
}

/// The optional body of `POST /api/v1/rollout/{action}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ActionBody {
    /// Recorded in the history (at most 1000 bytes).
    pub reason: Option<String>,
}

/// Every error answer: 400 bad input, 401 no or wrong token, 404, 409 not
/// allowed in this state, 413 body too large.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}
