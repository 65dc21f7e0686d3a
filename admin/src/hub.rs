//! Live fan-out of events to subscribers: `GET /api/v1/events` clients
//! (server-sent events) and the `notify` webhook.

use tokio::sync::broadcast;

use crate::model::events::Event;

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
