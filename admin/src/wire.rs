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
use utoipa::ToSchema;

use crate::rollout::Phase;

/// Share of new requests per colour, percent; they always sum to 100.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Weights {
    pub blue: f64,
    pub green: f64,
}

impl Weights {
    /// From green's weight in basis points (the one weight type's only
    /// conversion: blue has the rest).
    pub fn of(green_bp: u32) -> Weights {
        let g = green_bp.min(10_000);
        Weights {
            blue: f64::from(10_000 - g) / 100.0,
            green: f64::from(g) / 100.0,
        }
    }
}

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

/// An analysis verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VerdictName {
    Pass,
    Inconclusive,
    Breach,
}

/// A gate's last verdict.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GateView {
    pub gate: GateState,
    /// Why it holds, in words.
    pub reason: Option<String>,
}

/// Whether a gate lets the rollout advance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GateState {
    Pass,
    Hold,
    /// Not read yet.
    Unknown,
}

/// The database part of the status.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DatabaseStatus {
    /// `snapshot` or `replicate`.
    pub mode: String,
    pub gate: GateState,
    pub reason: Option<String>,
    pub max_lag_seconds: f64,
    /// When the reading below was taken.
    pub checked_at: Option<String>,
    pub verified: Option<bool>,
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
    /// The steps of preparing green's database, as the last rollout ran them.
    pub preparing: Vec<PrepareStepView>,
    pub last_cutover: Option<CutoverView>,
}

/// Green's last clone.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CloneView {
    /// `running`, `failed` or `complete`.
    pub state: String,
    pub phase: Option<String>,
    pub error: Option<String>,
    pub slot: Option<String>,
    /// The WAL position green represents.
    pub consistent_lsn: Option<String>,
    /// Blue's clock at that point.
    pub blue_time: Option<String>,
    pub at: String,
}

/// Replication between the databases.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReplicationView {
    /// `none`, `streaming`, `stopped` or `inconsistent`.
    pub state: String,
    /// `blue -> green` or `green -> blue`.
    pub direction: Option<String>,
    pub lag_bytes: Option<i64>,
    pub lag_seconds: Option<f64>,
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
    /// `preflight`, `clone`, `migrate`, `verify` or `replicate`.
    pub step: String,
    /// `pending`, `running`, `done`, `skipped` or `failed`.
    pub state: String,
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
