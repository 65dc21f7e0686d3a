//! The write gate used at database cutover. Writes are requests whose method
//! may change data (anything but GET, HEAD, OPTIONS and TRACE). While the gate
//! is held, new writes wait at the proxy instead of reaching an upstream; the
//! control plane waits for in-flight writes to finish, switches the writer
//! colour, and releases the held requests, which then route by the new
//! snapshot. Reads are never held.

use http::Method;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;
use tokio::sync::Notify;

/// Longest a request waits at a held gate before it is refused (503): a
/// safety net should the control plane never release it. A held write is
/// never sent on by the valve: the database it would reach may be behind.
pub(crate) const MAX_HOLD: Duration = switchyard_config::MAX_WRITE_HOLD;

/// Whether a request with this method may write.
pub(crate) fn is_write(m: &Method) -> bool {
    !matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

#[derive(Default)]
pub(crate) struct WriteGate {
    held: AtomicBool,
    /// Held writes are refused (503) instead of waiting: the control plane
    /// cannot tell which database is the primary.
    refusing: AtomicBool,
    refused_total: AtomicU64,
    in_flight: AtomicUsize,
    waiting: AtomicUsize,
    held_total: AtomicU64,
    released: Notify,
    drained: Notify,
}

/// Counts a write as in flight until dropped.
pub(crate) struct InFlightWrite<'a> {
    gate: &'a WriteGate,
}

impl Drop for InFlightWrite<'_> {
    fn drop(&mut self) {
        if self.gate.in_flight.fetch_sub(1, SeqCst) == 1 {
            self.gate.drained.notify_waiters();
        }
    }
}

impl WriteGate {
    /// Waits while the gate is held (bounded by [`MAX_HOLD`]), then counts
    /// the write as in flight. Called for every write before routing.
    /// `None`: the write is refused (held past [`MAX_HOLD`], or the gate
    /// refuses held writes): answer 503, send it nowhere.
    pub(crate) async fn enter(&self) -> Option<InFlightWrite<'_>> {
        let deadline = tokio::time::Instant::now() + MAX_HOLD;
        loop {
            // Count first, then look at the gate: a write that finds the gate
            // open is already counted, so `drained` cannot miss it.
            self.in_flight.fetch_add(1, SeqCst);
            if !self.held.load(SeqCst) {
                return Some(InFlightWrite { gate: self });
            }
            drop(InFlightWrite { gate: self });
            if self.refusing.load(SeqCst) || tokio::time::Instant::now() >= deadline {
                self.refused_total.fetch_add(1, SeqCst);
                return None;
            }
            self.waiting.fetch_add(1, SeqCst);
            self.held_total.fetch_add(1, SeqCst);
            let _ = tokio::time::timeout_at(deadline, async {
                loop {
                    let notified = self.released.notified();
                    if !self.held.load(SeqCst) || self.refusing.load(SeqCst) {
                        break;
                    }
                    notified.await;
                }
            })
            .await;
            self.waiting.fetch_sub(1, SeqCst);
        }
    }

    /// Refuses held writes (now and until [`WriteGate::accept`]) instead of
    /// keeping them waiting.
    pub(crate) fn refuse(&self) {
        self.refusing.store(true, SeqCst);
        self.released.notify_waiters();
    }

    /// Held writes wait again (see [`WriteGate::refuse`]).
    pub(crate) fn accept(&self) {
        self.refusing.store(false, SeqCst);
    }

    pub(crate) fn refused_total(&self) -> u64 {
        self.refused_total.load(SeqCst)
    }

    pub(crate) fn hold(&self) {
        self.held.store(true, SeqCst);
    }

    pub(crate) fn release(&self) {
        self.held.store(false, SeqCst);
        self.released.notify_waiters();
    }

    pub(crate) fn is_held(&self) -> bool {
        self.held.load(SeqCst)
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(SeqCst)
    }

    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(SeqCst)
    }

    pub(crate) fn held_total(&self) -> u64 {
        self.held_total.load(SeqCst)
    }

    /// Waits until no write is in flight, or `timeout` passes; returns
    /// whether the writes drained.
    pub(crate) async fn drained(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, async {
            loop {
                let notified = self.drained.notified();
                if self.in_flight.load(SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        })
        .await
        .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_methods_are_reads() {
        assert!(!is_write(&Method::GET));
        assert!(!is_write(&Method::HEAD));
        assert!(!is_write(&Method::OPTIONS));
        assert!(is_write(&Method::POST));
        assert!(is_write(&Method::PUT));
        assert!(is_write(&Method::PATCH));
        assert!(is_write(&Method::DELETE));
        assert!(is_write(&Method::from_bytes(b"PURGE").unwrap()));
    }

    #[tokio::test]
    async fn held_writes_wait_for_release_and_drain_is_observed() {
        let gate = std::sync::Arc::new(WriteGate::default());
        let w = gate.enter().await.unwrap();
        assert_eq!(gate.in_flight(), 1);
        gate.hold();
        let g2 = gate.clone();
        let waiter = tokio::spawn(async move {
            let _w = g2.enter().await;
        });
        while gate.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(!gate.drained(Duration::from_millis(20)).await);
        drop(w);
        assert!(gate.drained(Duration::from_secs(5)).await);
        assert!(!waiter.is_finished(), "held write proceeded before release");
        gate.release();
        waiter.await.unwrap();
        assert_eq!(gate.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_refusing_gate_answers_held_writes_instead_of_sending_them_on() {
        let gate = std::sync::Arc::new(WriteGate::default());
        gate.hold();
        let g2 = gate.clone();
        let waiter = tokio::spawn(async move { g2.enter().await.is_some() });
        while gate.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        gate.refuse();
        assert!(!waiter.await.unwrap(), "a held write is refused");
        assert!(gate.enter().await.is_none(), "and so is a new one");
        assert_eq!(gate.refused_total(), 2);
        gate.accept();
        gate.release();
        assert!(
            gate.enter().await.is_some(),
            "an open gate lets writes through"
        );
    }
}
