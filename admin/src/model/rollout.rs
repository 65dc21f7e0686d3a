//! The rollout state machine, as pure functions over [`PersistedState`]:
//!
//! ```text
//! idle ─start→ preparing ─gates pass→ progressing ⇄ paused
//!                                      │ last step passes, or promote
//!                                      ↓
//!                                   cutover → promoted ─start→ preparing (other way)
//! aborted ← abort (from any active state), or a breach (rolled back)
//! ```
//!
//! The candidate is always the colour that is not stable: after a promote the
//! next rollout goes the other way. Weights are kept as green's
//! [`Weight`]; the candidate's share is derived from it.
//!
//! Nothing here does I/O: the controller and the API call these under the
//! store lock, then persist, apply the weights and publish the event.

use std::time::Duration;
use switchyard_config::Step;

use super::events::EventKind;
use super::phase::Phase;
use super::state::{PersistedState, Rollout};
use super::weight::Weight;

/// An operator action on the rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Begin a rollout of the candidate.
    Start,
    /// Hold at the current weight.
    Pause,
    /// Continue from the step at or above the current weight.
    Resume,
    /// Send all traffic to the candidate now.
    Promote,
    /// Send no traffic to the candidate now.
    Abort,
}

impl Action {
    /// Parses the last path segment of `POST /api/v1/rollout/{action}`.
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "start" => Action::Start,
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            "promote" => Action::Promote,
            "abort" => Action::Abort,
            _ => return None,
        })
    }

    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Promote => "promote",
            Action::Abort => "abort",
        }
    }
}

/// An action not allowed in the current state (HTTP 409).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict(pub String);

/// What a transition did: the event kind and its reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// What happened.
    pub kind: EventKind,
    /// Why, if known.
    pub reason: Option<String>,
    /// Extra fields for the event (held writes, database details).
    pub extra: EventExtra,
}

/// Optional event fields a change may carry.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EventExtra {
    /// How long writes were held.
    pub held_ms: Option<u64>,
    /// How many writes waited.
    pub held_requests: Option<u64>,
    /// Structured details.
    pub detail: Option<serde_json::Value>,
}

impl Change {
    /// A change of `kind` with `reason`.
    pub fn new(kind: EventKind, reason: Option<String>) -> Change {
        Change {
            kind,
            reason,
            extra: EventExtra::default(),
        }
    }
}

fn change(kind: EventKind, reason: Option<String>) -> Result<Change, Conflict> {
    Ok(Change::new(kind, reason))
}

fn conflict(action: &str, phase: Phase, hint: &str) -> Result<Change, Conflict> {
    Err(Conflict(format!(
        "cannot {action} while the rollout is {}: {hint}",
        phase.as_str()
    )))
}

/// Bake time of step `i`: its own, or the default.
pub fn bake_of(steps: &[Step], i: usize, default: Duration) -> Duration {
    steps.get(i).and_then(|s| s.bake).unwrap_or(default)
}

/// The candidate's weight at step `i`.
pub fn step_weight(steps: &[Step], i: usize) -> Weight {
    Weight::from_bp(steps[i].weight_bp)
}

/// The first step whose weight is at or above `w` (the last step if none).
pub fn step_at_or_above(steps: &[Step], w: Weight) -> usize {
    steps
        .iter()
        .position(|s| s.weight_bp >= w.bp())
        .unwrap_or(steps.len().saturating_sub(1))
}

/// Applies an operator action. `steps` must not be empty (config validation
/// guarantees it). `cut_back` says whether an `abort` after promotion can
/// move back to the previous colour (a database with reverse sync keeps it
/// up to date); without it there is nothing to abort once promoted.
pub fn apply(
    s: &mut PersistedState,
    action: Action,
    steps: &[Step],
    reason: Option<String>,
    now_ms: u64,
    cut_back: bool,
) -> Result<Change, Conflict> {
    let phase = s.rollout.phase;
    match action {
        Action::Start => match phase {
            Phase::Idle | Phase::Promoted | Phase::Aborted => {
                s.rollout = Rollout {
                    phase: Phase::Preparing,
                    step: None,
                    step_started_ms: now_ms,
                    reason: reason.clone(),
                    ..Rollout::default()
                };
                change(EventKind::RolloutStarted, reason)
            }
            _ => conflict(
                "start",
                phase,
                "pause, abort or promote the current rollout first",
            ),
        },
        Action::Pause => match phase {
            Phase::Preparing | Phase::Progressing => {
                s.rollout.phase = Phase::Paused;
                s.rollout.reason = reason.clone();
                change(EventKind::Paused, reason)
            }
            _ => conflict(
                "pause",
                phase,
                "only a preparing or progressing rollout can be paused",
            ),
        },
        Action::Resume => match phase {
            Phase::Paused => {
                if s.rollout.step.is_none() && s.candidate_weight() == Weight::NONE {
                    s.rollout.phase = Phase::Preparing;
                } else {
                    let i = step_at_or_above(steps, s.candidate_weight());
                    let target = step_weight(steps, i).max(s.candidate_weight());
                    s.set_candidate_weight(target);
                    s.rollout.phase = Phase::Progressing;
                    s.rollout.step = Some(i);
                }
                s.rollout.step_started_ms = now_ms;
                s.rollout.reason = reason.clone();
                change(EventKind::Resumed, reason)
            }
            _ => conflict("resume", phase, "only a paused rollout can be resumed"),
        },
        Action::Promote => match phase {
            Phase::Idle | Phase::Preparing | Phase::Progressing | Phase::Paused => {
                enter_cutover(s, steps, now_ms, reason.clone());
                change(EventKind::Cutover, reason)
            }
            _ => conflict("promote", phase, "start a rollout first"),
        },
        Action::Abort => match phase {
            Phase::Cutover if s.rollout.back => conflict(
                "abort",
                phase,
                "this cutover is the abort already: writes move back once the database has caught up",
            ),
            Phase::Preparing | Phase::Progressing | Phase::Paused | Phase::Cutover => {
                let reason = reason.unwrap_or_else(|| "aborted by operator".into());
                stop(s, reason.clone());
                change(EventKind::Aborted, Some(reason))
            }
            Phase::Promoted if cut_back => {
                // A cutover in the other direction: writes are held, the
                // previous colour's database catches up with reverse sync,
                // and only then do writes and weights move back.
                let reason = reason.unwrap_or_else(|| "aborted by operator after cutover".into());
                s.rollout = Rollout {
                    phase: Phase::Cutover,
                    step: None,
                    step_started_ms: now_ms,
                    reason: Some(reason.clone()),
                    pre_cutover: None,
                    back: true,
                    undone_cutover: None,
                };
                change(EventKind::Cutover, Some(reason))
            }
            _ => conflict("abort", phase, "no rollout is under way"),
        },
    }
}

fn enter_cutover(s: &mut PersistedState, steps: &[Step], now_ms: u64, reason: Option<String>) {
    s.rollout.pre_cutover = Some(s.candidate_weight());
    s.rollout.back = false;
    s.set_candidate_weight(Weight::ALL);
    s.rollout.phase = Phase::Cutover;
    s.rollout.step = Some(steps.len().saturating_sub(1));
    s.rollout.step_started_ms = now_ms;
    s.rollout.reason = reason;
}

fn stop(s: &mut PersistedState, reason: String) {
    s.set_candidate_weight(Weight::NONE);
    s.rollout.phase = Phase::Aborted;
    s.rollout.step = None;
    s.rollout.reason = Some(reason);
}

/// A manual weight change (`PUT /api/v1/weights`): pauses a running rollout,
/// refused during cutover.
pub fn set_weights(s: &mut PersistedState, green: Weight) -> Result<Change, Conflict> {
    let phase = s.rollout.phase;
    if phase == Phase::Cutover {
        return Err(Conflict(
            "cannot set weights during cutover: wait for it to finish, or abort".into(),
        ));
    }
    s.green = green;
    let reason = format!("manual weight change: green {green}");
    if matches!(phase, Phase::Preparing | Phase::Progressing) {
        s.rollout.phase = Phase::Paused;
        s.rollout.reason = Some(reason.clone());
    }
    change(EventKind::WeightsSet, Some(reason))
}

/// The controller's move once every gate passed: to the first step (from
/// preparing), to the next step, or into cutover after the last one.
pub fn advance(s: &mut PersistedState, steps: &[Step], now_ms: u64) -> Change {
    let next = match (s.rollout.phase, s.rollout.step) {
        (Phase::Preparing, _) => {
            step_at_or_above(steps, s.candidate_weight().max(Weight::from_bp(1)))
        }
        (_, Some(i)) if i + 1 < steps.len() => i + 1,
        _ => {
            enter_cutover(s, steps, now_ms, None);
            return Change::new(EventKind::Cutover, Some("every step passed".into()));
        }
    };
    let target = step_weight(steps, next).max(s.candidate_weight());
    s.set_candidate_weight(target);
    s.rollout.phase = Phase::Progressing;
    s.rollout.step = Some(next);
    s.rollout.step_started_ms = now_ms;
    s.rollout.reason = None;
    Change::new(EventKind::StepAdvanced, None)
}

/// Cutover done: the candidate takes all traffic and becomes stable. A
/// cutover back after a promotion (`abort`) ends as `aborted`.
pub fn finish_cutover(s: &mut PersistedState) -> Change {
    s.set_candidate_weight(Weight::ALL);
    s.stable = s.candidate();
    s.rollout.step = None;
    s.rollout.pre_cutover = None;
    if std::mem::take(&mut s.rollout.back) {
        s.rollout.phase = Phase::Aborted;
        return Change::new(EventKind::Aborted, s.rollout.reason.clone());
    }
    s.rollout.phase = Phase::Promoted;
    s.rollout.undone_cutover = None;
    Change::new(EventKind::Promoted, s.rollout.reason.clone())
}

/// The database switch of a cutover did not finish in time (or failed):
/// writes stayed on the stable colour. A forward cutover pauses at the
/// weight it had before; a cutover back returns to `promoted`.
pub fn cutover_failed(s: &mut PersistedState, reason: String) -> Change {
    s.rollout.undone_cutover = Some(reason.clone());
    if std::mem::take(&mut s.rollout.back) {
        s.rollout.phase = Phase::Promoted;
    } else {
        if let Some(w) = s.rollout.pre_cutover {
            s.set_candidate_weight(w);
        }
        s.rollout.phase = Phase::Paused;
    }
    s.rollout.pre_cutover = None;
    s.rollout.reason = Some(reason.clone());
    Change::new(EventKind::CutoverTimedOut, Some(reason))
}

/// A breach: the candidate gets no traffic, and the reason is kept.
pub fn roll_back(s: &mut PersistedState, reason: String) -> Change {
    let reason = match s.rollout.undone_cutover.take() {
        // The first cause comes first.
        Some(first) => format!("rolled back: {reason}; this followed the undone cutover: {first}"),
        None => format!("rolled back: {reason}"),
    };
    stop(s, reason.clone());
    Change::new(EventKind::RolledBack, Some(reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_proxy::Colour;

    fn steps(w: &[u32]) -> Vec<Step> {
        w.iter()
            .map(|p| Step {
                weight_bp: p * 100,
                bake: None,
            })
            .collect()
    }

    #[test]
    fn a_rollout_walks_every_step_then_cuts_over_and_promotes() {
        let st = steps(&[1, 5, 25, 100]);
        let mut s = PersistedState::default();
        apply(&mut s, Action::Start, &st, None, 1, false).unwrap();
        assert_eq!(s.rollout.phase, Phase::Preparing);
        assert_eq!(s.green.bp(), 0);
        let mut seen = vec![];
        for _ in 0..4 {
            assert_eq!(advance(&mut s, &st, 2).kind, EventKind::StepAdvanced);
            seen.push(s.green.bp());
        }
        assert_eq!(seen, vec![100, 500, 2500, 10_000]);
        assert_eq!(advance(&mut s, &st, 3).kind, EventKind::Cutover);
        assert_eq!(s.rollout.phase, Phase::Cutover);
        finish_cutover(&mut s);
        assert_eq!(s.rollout.phase, Phase::Promoted);
        assert_eq!(s.stable, Colour::Green);
        assert_eq!(s.green.bp(), 10_000);
        // The next rollout goes the other way: blue is the candidate.
        apply(&mut s, Action::Start, &st, None, 4, false).unwrap();
        advance(&mut s, &st, 5);
        assert_eq!((s.candidate(), s.green.bp()), (Colour::Blue, 9_900));
    }

    #[test]
    fn actions_not_allowed_in_a_state_conflict_and_change_nothing() {
        let st = steps(&[10, 50]);
        let mut s = PersistedState::default();
        for a in [Action::Pause, Action::Resume, Action::Abort] {
            let before = s.clone();
            assert!(
                apply(&mut s, a, &st, None, 1, false).is_err(),
                "{a:?} in idle"
            );
            assert_eq!(s, before);
        }
        apply(&mut s, Action::Start, &st, None, 1, false).unwrap();
        assert!(apply(&mut s, Action::Start, &st, None, 1, false).is_err());
        assert!(apply(&mut s, Action::Resume, &st, None, 1, false).is_err());
        apply(&mut s, Action::Abort, &st, None, 1, false).unwrap();
        assert!(apply(&mut s, Action::Promote, &st, None, 1, false).is_err());
    }

    #[test]
    fn resume_continues_from_the_step_at_or_above_the_current_weight() {
        let st = steps(&[1, 5, 25, 50, 100]);
        let mut s = PersistedState::default();
        apply(&mut s, Action::Start, &st, None, 1, false).unwrap();
        advance(&mut s, &st, 1);
        set_weights(&mut s, Weight::from_bp(1000)).unwrap();
        assert_eq!(s.rollout.phase, Phase::Paused, "manual weights pause");
        apply(&mut s, Action::Resume, &st, None, 9, false).unwrap();
        assert_eq!(s.rollout.phase, Phase::Progressing);
        assert_eq!((s.rollout.step, s.green.bp()), (Some(2), 2500));
        assert_eq!(s.rollout.step_started_ms, 9);
        set_weights(&mut s, Weight::from_bp(5000)).unwrap();
        apply(&mut s, Action::Resume, &st, None, 9, false).unwrap();
        assert_eq!((s.rollout.step, s.green.bp()), (Some(3), 5000));
    }

    #[test]
    fn a_breach_and_an_abort_take_the_candidate_to_zero_with_the_reason() {
        let st = steps(&[10, 50]);
        let mut s = PersistedState::default();
        apply(&mut s, Action::Start, &st, None, 1, false).unwrap();
        advance(&mut s, &st, 1);
        advance(&mut s, &st, 1);
        let c = roll_back(&mut s, "error rate 0.5 > 0.05".into());
        assert_eq!(c.kind, EventKind::RolledBack);
        assert_eq!((s.rollout.phase, s.green.bp()), (Phase::Aborted, 0));
        assert!(s.rollout.reason.as_deref().unwrap().contains("0.5 > 0.05"));
        apply(&mut s, Action::Start, &st, None, 1, false).unwrap();
        let c = apply(
            &mut s,
            Action::Abort,
            &st,
            Some("bad build".into()),
            1,
            false,
        )
        .unwrap();
        assert_eq!(c.reason.as_deref(), Some("bad build"));
    }

    #[test]
    fn promote_goes_to_everything_now_and_weights_are_refused_during_cutover() {
        let st = steps(&[10, 50]);
        let mut s = PersistedState::default();
        apply(&mut s, Action::Start, &st, None, 1, false).unwrap();
        apply(&mut s, Action::Promote, &st, None, 1, false).unwrap();
        assert_eq!((s.rollout.phase, s.green.bp()), (Phase::Cutover, 10_000));
        assert!(set_weights(&mut s, Weight::from_bp(0)).is_err());
        finish_cutover(&mut s);
        assert_eq!(s.stable, Colour::Green);
    }

    #[test]
    fn abort_after_promotion_cuts_back_only_with_reverse_sync_and_ends_aborted() {
        let st = steps(&[10, 100]);
        let mut s = PersistedState::default();
        apply(&mut s, Action::Start, &st, None, 1, true).unwrap();
        apply(&mut s, Action::Promote, &st, None, 1, true).unwrap();
        finish_cutover(&mut s);
        assert!(apply(&mut s, Action::Abort, &st, None, 2, false).is_err());
        let c = apply(&mut s, Action::Abort, &st, Some("bad".into()), 2, true).unwrap();
        assert_eq!(c.kind, EventKind::Cutover);
        assert_eq!(
            (s.rollout.phase, s.candidate()),
            (Phase::Cutover, Colour::Blue)
        );
        assert_eq!(
            s.green.bp(),
            10_000,
            "weights move back only once the database did"
        );
        assert!(
            apply(&mut s.clone(), Action::Abort, &st, None, 2, true).is_err(),
            "the cutover back is the abort already"
        );
        // The database switch times out: still promoted, on green.
        let mut timed_out = s.clone();
        cutover_failed(&mut timed_out, "blue did not catch up".into());
        assert_eq!(timed_out.rollout.phase, Phase::Promoted);
        assert_eq!(
            (timed_out.stable, timed_out.green.bp()),
            (Colour::Green, 10_000)
        );
        let c = finish_cutover(&mut s);
        assert_eq!(c.kind, EventKind::Aborted);
        assert_eq!(
            (s.stable, s.green.bp(), s.rollout.phase),
            (Colour::Blue, 0, Phase::Aborted)
        );
    }

    #[test]
    fn a_rollback_after_an_undone_cutover_names_both_first_cause_first() {
        let st = steps(&[10, 100]);
        let mut s = PersistedState::default();
        apply(&mut s, Action::Start, &st, None, 1, true).unwrap();
        advance(&mut s, &st, 1);
        apply(&mut s, Action::Promote, &st, None, 1, true).unwrap();
        cutover_failed(&mut s, "cutover did not complete: green died".into());
        let c = roll_back(&mut s, "candidate error rate 0.33".into());
        let r = c.reason.unwrap();
        assert!(
            r.contains("candidate error rate 0.33")
                && r.contains("undone cutover: cutover did not complete: green died"),
            "{r}"
        );
        assert!(s.rollout.undone_cutover.is_none());
    }

    #[test]
    fn a_forward_cutover_that_times_out_pauses_at_the_weight_it_had() {
        let st = steps(&[10, 50, 100]);
        let mut s = PersistedState::default();
        apply(&mut s, Action::Start, &st, None, 1, true).unwrap();
        advance(&mut s, &st, 1);
        advance(&mut s, &st, 1);
        apply(&mut s, Action::Promote, &st, None, 1, true).unwrap();
        assert_eq!(s.green.bp(), 10_000);
        let c = cutover_failed(&mut s, "green did not catch up".into());
        assert_eq!(c.kind, EventKind::CutoverTimedOut);
        assert_eq!(
            (s.rollout.phase, s.green.bp(), s.stable),
            (Phase::Paused, 5000, Colour::Blue)
        );
    }
}
