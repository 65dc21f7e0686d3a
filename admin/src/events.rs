//! Events: every state change of the control plane (who, what, why, when).
//! They are appended to the persisted history, broadcast to
//! `GET /api/v1/events` subscribers (server-sent events) and POSTed to the
//! `notify` webhook.

use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

use crate::rollout::Phase;

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
    /// What: `rollout_started`, `step_advanced`, `paused`, `resumed`,
    /// `rolled_back`, `aborted`, `cutover`, `cutover_started`,
    /// `cutover_completed`, `cutover_timed_out`, `promoted`, `weights_set`,
    /// `database_step`, `database_cleanup`, `state_restored`, `fallback`
    /// (a colour with no usable upstream had its traffic sent to the
    /// other), `fallback_ended`.
    pub kind: String,
    /// The rollout state after the change.
    pub state: Phase,
    /// The step index after the change, if any.
    pub step: Option<usize>,
    /// Weights (percent) after the change.
    pub weights: crate::wire::Weights,
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

/// Fan-out of events to live subscribers (SSE clients, the notify webhook).
/// Slow subscribers miss events rather than slow the control plane down.
pub struct Hub {
    tx: broadcast::Sender<Event>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            tx: broadcast::channel(1024).0,
        }
    }
}

impl Hub {
    /// Sends `event` to every current subscriber. Called after the change
    /// is persisted.
    pub fn publish(&self, event: Event) {
        let _ = self.tx.send(event);
    }

    /// A new subscription that sees events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
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
