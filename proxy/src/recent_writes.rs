//! Read-your-writes: after a client's write, its reads go to the writer
//! colour for `[database] read_your_writes`, so a user who just saved
//! something never reads from a replica that has not replayed it yet.
//!
//! The memory is a fixed table of atomic timestamps indexed by a hash of the
//! client's sticky key: no lock, no allocation per request, bounded size. Two
//! clients whose keys share a slot only send each other's reads to the
//! writer for a moment, which is always safe.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Slots in the table (a power of two); 512 KiB of timestamps.
const SLOTS: usize = 1 << 16;

pub(crate) struct RecentWrites {
    /// Milliseconds since `epoch` of the last write per slot, plus one
    /// (zero means never).
    slots: Box<[AtomicU64]>,
    epoch: Instant,
}

impl RecentWrites {
    pub(crate) fn new() -> RecentWrites {
        RecentWrites {
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
        }
    }

    fn slot(&self, key: u64) -> &AtomicU64 {
        &self.slots[(key as usize) & (SLOTS - 1)]
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Records that the client with `key` wrote now.
    pub(crate) fn wrote(&self, key: u64) {
        self.slot(key).store(self.now_ms(), Relaxed);
    }

    /// Whether the client with `key` wrote within `window`.
    pub(crate) fn wrote_within(&self, key: u64, window: Duration) -> bool {
        let at = self.slot(key).load(Relaxed);
        at != 0 && self.now_ms().saturating_sub(at) <= window.as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_is_remembered_for_the_window_only() {
        let r = RecentWrites::new();
        assert!(!r.wrote_within(42, Duration::from_secs(1)));
        r.wrote(42);
        assert!(r.wrote_within(42, Duration::from_secs(1)));
        assert!(!r.wrote_within(43, Duration::from_secs(1)));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!r.wrote_within(42, Duration::from_millis(10)));
    }
}
