//! Events: every state change of the control plane (who, what, why, when).
//! They are appended to the persisted history, broadcast to
//! `GET /api/v1/events` subscribers (server-sent events, see
//! [`crate::hub`]) and POSTed to the `notify` webhook.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use super::phase::Phase;
use super::weight::Weights;

/// What happened. In JSON, the snake_case name (`rolled_back`); dashboards,
/// webhook receivers and alert rules match on these names, so they do not
/// change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A rollout began (`start`).
    RolloutStarted,
    /// Every gate passed and the candidate moved to the next step.
    StepAdvanced,
    /// Held by an operator, a manual weight change or a failed database step.
    Paused,
    /// An operator resumed a paused rollout.
    Resumed,
    /// Analysis found a breach: the candidate lost its traffic.
    RolledBack,
    /// An operator aborted: the candidate lost its traffic (or, after a
    /// promotion, the cutover back finished).
    Aborted,
    /// The candidate is about to take all traffic (promote, or the last step
    /// passed).
    Cutover,
    /// Writes are held while the candidate's database becomes the primary.
    CutoverStarted,
    /// The candidate's database is the primary and writes flow again.
    CutoverCompleted,
    /// The database switch did not finish in time; writes stayed put.
    CutoverTimedOut,
    /// After a cutover: what the old primary took after the switch, as
    /// measured (its slot's changes past what the new primary replayed).
    CutoverChecked,
    /// The candidate became the stable colour.
    Promoted,
    /// Weights were set by hand (`PUT /api/v1/weights`).
    WeightsSet,
    /// A step of preparing the candidate's database changed state.
    DatabaseStep,
    /// Switchyard's replication objects were removed.
    DatabaseCleanup,
    /// The state file was read at start (or recovered from its backup).
    StateRestored,
    /// A colour with no usable upstream had its traffic sent to the other.
    Fallback,
    /// That colour has usable upstreams again.
    FallbackEnded,
    /// A kind this version does not know, read from a history written by a
    /// newer switchyard (so a downgrade can still read its state file).
    #[serde(other)]
    Unknown,
}

impl EventKind {
    /// Every kind this version writes.
    pub const ALL: [EventKind; 18] = [
        EventKind::RolloutStarted,
        EventKind::StepAdvanced,
        EventKind::Paused,
        EventKind::Resumed,
        EventKind::RolledBack,
        EventKind::Aborted,
        EventKind::Cutover,
        EventKind::CutoverStarted,
        EventKind::CutoverCompleted,
        EventKind::CutoverTimedOut,
        EventKind::CutoverChecked,
        EventKind::Promoted,
        EventKind::WeightsSet,
        EventKind::DatabaseStep,
        EventKind::DatabaseCleanup,
        EventKind::StateRestored,
        EventKind::Fallback,
        EventKind::FallbackEnded,
    ];

    /// The name used in JSON, logs and the dashboard.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::RolloutStarted => "rollout_started",
            EventKind::StepAdvanced => "step_advanced",
            EventKind::Paused => "paused",
            EventKind::Resumed => "resumed",
            EventKind::RolledBack => "rolled_back",
            EventKind::Aborted => "aborted",
            EventKind::Cutover => "cutover",
            EventKind::CutoverStarted => "cutover_started",
            EventKind::CutoverCompleted => "cutover_completed",
            EventKind::CutoverTimedOut => "cutover_timed_out",
            EventKind::CutoverChecked => "cutover_checked",
            EventKind::Promoted => "promoted",
            EventKind::WeightsSet => "weights_set",
            EventKind::DatabaseStep => "database_step",
            EventKind::DatabaseCleanup => "database_cleanup",
            EventKind::StateRestored => "state_restored",
            EventKind::Fallback => "fallback",
            EventKind::FallbackEnded => "fallback_ended",
            EventKind::Unknown => "unknown",
        }
    }

    /// The candidate lost its traffic (a rollback or an abort): the
    /// webhook is told at once and the rollout's analysis is over.
    pub fn ends_rollout_badly(self) -> bool {
        matches!(self, EventKind::RolledBack | EventKind::Aborted)
    }
}

/// The JSON name; pads like a string, so `{:<16}` lines up in tables.
impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One state change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    /// Increasing sequence number, unique per state file.
    pub seq: u64,
    /// When, as RFC 3339 UTC.
    pub at: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Who: `controller`, `startup`, or the API caller (`api`, or what the
    /// `X-Switchyard-Actor` header said, e.g. `ctl:alice`).
    pub actor: String,
    /// What happened.
    pub kind: EventKind,
    /// The rollout state after the change.
    pub state: Phase,
    /// The step index after the change, if any.
    pub step: Option<usize>,
    /// Weights (percent) after the change.
    pub weights: Weights,
    /// Why, when there is a reason.
    pub reason: Option<String>,
    /// How long writes were held (`cutover_completed`, `cutover_timed_out`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_ms: Option<u64>,
    /// How many writes waited at the hold (`cutover_completed`, `cutover_timed_out`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_requests: Option<u64>,
    /// Structured details of the event, e.g. the database step and its
    /// state for `database_step`, or the database switch for
    /// `cutover_completed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub detail: Option<serde_json::Value>,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Formats milliseconds since the epoch as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::EventKind;

    #[test]
    fn kinds_keep_their_json_names_and_unknown_ones_still_read() {
        assert_eq!(
            serde_json::to_value(EventKind::RolledBack).unwrap(),
            "rolled_back"
        );
        assert_eq!(EventKind::CutoverTimedOut.as_str(), "cutover_timed_out");
        let mut names = std::collections::HashSet::new();
        for kind in EventKind::ALL {
            let name = kind.as_str();
            assert_eq!(serde_json::to_value(kind).unwrap(), name);
            assert_eq!(
                serde_json::from_value::<EventKind>(name.into()).unwrap(),
                kind
            );
            assert!(names.insert(name), "{name} twice");
        }
        let later: EventKind = serde_json::from_str("\"from_a_later_version\"").unwrap();
        assert_eq!(later, EventKind::Unknown);
        assert_eq!(format!("[{:<8}]", EventKind::Paused), "[paused  ]");
    }
    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(
            super::rfc3339(1_700_000_000_000),
            "2023-11-14T22:13:20.000Z"
        );
    }
}
