//! Where a rollout is: the phases of the state machine in
//! [`rollout`](super::rollout).

use serde::{Deserialize, Serialize};

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// No rollout has run (or weights are managed by hand).
    #[default]
    Idle,
    /// Started; waiting for the gates of the first weight increase.
    Preparing,
    /// Walking the steps; analysis judges the candidate continuously.
    Progressing,
    /// Held by an operator (or a manual weight change); analysis still rolls
    /// back on a breach.
    Paused,
    /// The candidate is taking all traffic.
    Cutover,
    /// The candidate became the stable colour.
    Promoted,
    /// Rolled back or aborted: the candidate has no traffic.
    Aborted,
}

impl Phase {
    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Preparing => "preparing",
            Phase::Progressing => "progressing",
            Phase::Paused => "paused",
            Phase::Cutover => "cutover",
            Phase::Promoted => "promoted",
            Phase::Aborted => "aborted",
        }
    }

    /// Whether a rollout is under way (the candidate may be serving).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Phase::Preparing | Phase::Progressing | Phase::Paused | Phase::Cutover
        )
    }
}
