//! What survives a restart: the weights, the stable colour, the rollout's
//! place in the state machine and the recent event history. The store
//! ([`crate::store`]) writes it to disk; nothing here does I/O.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use switchyard_proxy::Colour;

use super::events::Event;
use super::phase::Phase;
use super::weight::Weight;

/// How many events the persisted history keeps (oldest dropped first).
pub const HISTORY_LIMIT: usize = 256;

/// Everything that survives a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PersistedState {
    /// Format version of this file.
    pub version: u32,
    /// Green's weight; blue has the rest. Stored as basis points.
    #[serde(rename = "green_bp")]
    pub green: Weight,
    /// The colour serving production; the other one is the rollout candidate.
    #[serde(with = "colour_serde")]
    pub stable: Colour,
    /// Where the rollout state machine is.
    pub rollout: Rollout,

    /// The most recent events, oldest first.
    pub history: VecDeque<Event>,
    /// Sequence number the next event gets.
    pub next_seq: u64,
}

impl Default for PersistedState {
    fn default() -> Self {
        PersistedState {
            version: 1,
            green: Weight::NONE,
            stable: Colour::Blue,
            rollout: Rollout::default(),
            history: VecDeque::new(),
            next_seq: 1,
        }
    }
}

impl PersistedState {
    /// The rollout candidate: the colour that is not stable.
    pub fn candidate(&self) -> Colour {
        self.stable.other()
    }

    /// The candidate's weight.
    pub fn candidate_weight(&self) -> Weight {
        match self.candidate() {
            Colour::Green => self.green,
            Colour::Blue => self.green.rest(),
        }
    }

    /// Sets the candidate's weight (the stable colour gets the rest).
    pub fn set_candidate_weight(&mut self, w: Weight) {
        self.green = match self.candidate() {
            Colour::Green => w,
            Colour::Blue => w.rest(),
        };
    }

    /// Appends an event to the history, dropping the oldest beyond
    /// [`HISTORY_LIMIT`].
    pub(crate) fn record(&mut self, mut event: Event) -> Event {
        event.seq = self.next_seq;
        self.next_seq += 1;
        self.history.push_back(event.clone());
        while self.history.len() > HISTORY_LIMIT {
            self.history.pop_front();
        }
        event
    }
}

mod colour_serde {
    use serde::{Deserialize, Deserializer, Serializer};
    use switchyard_proxy::Colour;

    pub fn serialize<S: Serializer>(c: &Colour, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(c.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Colour, D::Error> {
        let s = String::deserialize(d)?;
        Colour::parse(s.as_bytes())
            .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not blue or green")))
    }
}

/// The rollout part of the persisted state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Rollout {
    /// Current phase.
    pub phase: Phase,
    /// Index into `[rollout] steps` of the current step, while progressing
    /// or paused after the first step was reached.
    pub step: Option<usize>,
    /// When the current step began (ms since the epoch, wall clock, so a
    /// restart continues the bake instead of starting it over).
    pub step_started_ms: u64,
    /// Why the last transition happened (a breach, an operator's reason).
    pub reason: Option<String>,
    /// The candidate's weight before cutover began, restored when the
    /// database switch cannot finish.
    #[serde(rename = "pre_cutover_bp")]
    pub pre_cutover: Option<Weight>,
    /// This cutover goes back to the colour that was stable before the last
    /// promotion (`abort` after cutover); it ends as `aborted`.
    pub back: bool,
    /// Why this rollout's cutover was undone, if it was: a rollback that
    /// follows names it too, so one outcome has its whole story.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undone_cutover: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_weight_is_expressed_for_either_direction() {
        let mut s = PersistedState::default();
        s.set_candidate_weight(Weight::from_bp(100));
        assert_eq!(s.green, Weight::from_bp(100));
        s.stable = Colour::Green;
        s.green = Weight::ALL;
        assert_eq!(s.candidate(), Colour::Blue);
        assert_eq!(s.candidate_weight(), Weight::NONE);
        s.set_candidate_weight(Weight::from_bp(2500));
        assert_eq!(s.green, Weight::from_bp(7500));
    }
}
