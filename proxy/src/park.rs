//! The parking lot: plain HTTP/1 keep-alive connections idle past
//! [`crate::listener::LOT_AFTER`] wait here for their client's next
//! request as a bare socket, with no task, no timer and no registration in
//! tokio's reactor. (Idle for less, they wait in their task, holding no
//! buffer: moving a socket here and back costs four `epoll_ctl`s and a new
//! task, about 13 µs, which clients that pause a second or two between
//! requests should not pay.)
//!
//! A task per idle connection costs about 1.6 kB (the task, tokio's
//! readiness slot for the socket, the idle timer, the connection's
//! details). Here a parked connection is one slab entry (the socket, its
//! peer, its slot under `max_connections`, its idle deadline) in an epoll
//! set of the lot's own, which tokio polls as one descriptor: an idle
//! connection costs what nginx's preallocated connection slot does or
//! less. When the client sends its next request the socket goes back to
//! tokio and gets a fresh task; when it closes, or its idle deadline
//! passes, or the listener closes, the lot closes it.
//!
//! TLS connections keep parking in their task ([`crate::conn::TimedIo::park`]):
//! their session state cannot be reduced to a socket.

use mio::unix::SourceFd;
use mio::{Events, Interest, Token};
use slab::Slab;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::sync::{watch, Notify};

use crate::conn::{ClientConns, Slot};
use tokio::time::Instant;

/// Idle deadlines are checked at most this often: a parked connection is
/// closed within this long after its `idle_timeout`, and 10,000 connections
/// whose deadlines all differ cost ten sweeps a second, not 10,000.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// One parked connection: what it takes to serve it again.
#[derive(Debug)]
pub(crate) struct Parked {
    /// The client's socket (non-blocking, in no reactor).
    pub stream: std::net::TcpStream,
    pub peer: SocketAddr,
    /// Its place under `max_connections` and in the open count.
    pub slot: Slot,
    /// When its idle spell reaches `idle_timeout`.
    pub idle_deadline: Instant,
}

/// The idle connections of one listener. Shared by the connections that
/// park themselves ([`ParkingLot::park`]) and the one task that watches them
/// ([`ParkingLot::run`]).
pub(crate) struct ParkingLot {
    lot: Mutex<Lot>,
    /// The lot's epoll set, for registering from any thread.
    registry: mio::Registry,
    /// The watching task's epoll set, until it takes it.
    poll: Mutex<Option<mio::Poll>>,
    /// Wakes the watching task when a deadline earlier than it knew of
    /// arrives.
    earlier: Notify,
    /// Counts the parked as idle.
    conns: Arc<ClientConns>,
}

struct Lot {
    parked: Slab<Parked>,
    /// The earliest idle deadline parked since the last sweep (`None`:
    /// nothing parked).
    earliest: Option<Instant>,
    /// The listener is closing: nothing parks any more.
    closed: bool,
}

impl ParkingLot {
    /// An empty lot with an epoll set of its own, counting what it holds
    /// in `conns`.
    pub(crate) fn new(conns: Arc<ClientConns>) -> io::Result<Arc<ParkingLot>> {
        let poll = mio::Poll::new()?;
        let registry = poll.registry().try_clone()?;
        Ok(Arc::new(ParkingLot {
            lot: Mutex::new(Lot {
                parked: Slab::new(),
                earliest: None,
                closed: false,
            }),
            registry,
            poll: Mutex::new(Some(poll)),
            earlier: Notify::new(),
            conns,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Lot> {
        // A panic while holding the lock leaves a slab that is still
        // consistent (every operation on it is one call).
        self.lot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Parks `p` until its client sends again. Called by a connection's
    /// task when it has gone idle with nothing buffered; the task then
    /// ends. When the listener is closing (or the socket cannot be
    /// watched) the connection is closed instead.
    pub(crate) fn park(&self, p: Parked) {
        let mut lot = self.lock();
        if lot.closed {
            return;
        }
        let deadline = p.idle_deadline;
        let fd = p.stream.as_raw_fd();
        let entry = lot.parked.vacant_entry();
        let token = Token(entry.key());
        // Registered while the lock is held: an event for this token can
        // only be handled once the entry is in place.
        if let Err(e) = self
            .registry
            .register(&mut SourceFd(&fd), token, Interest::READABLE)
        {
            tracing::debug!(peer = %p.peer, error = %e, "could not park an idle connection; closing it");
            return;
        }
        entry.insert(p);
        self.conns.parked(1);
        if lot.earliest.is_none_or(|e| deadline < e) {
            lot.earliest = Some(deadline);
            drop(lot);
            self.earlier.notify_one();
        }
    }

    /// Takes the connection parked under `key` out of the lot, if it is
    /// still there and has something to say: `Some` when its client sent
    /// bytes (serve it again), `None` when it closed (closed here too) or
    /// the wake-up was spurious (it stays parked). Only an event that says
    /// the peer closed or failed is looked at first (`closed`): a plain
    /// readable event is the next request, and goes back to tokio with no
    /// further system call.
    fn wake(&self, key: usize, closed: bool) -> Option<Parked> {
        let mut lot = self.lock();
        let p = lot.parked.get(key)?;
        if closed {
            match p.stream.peek(&mut [0u8; 1]) {
                Ok(0) => {
                    // The client closed: closing the socket leaves the
                    // epoll set.
                    lot.parked.remove(key);
                    self.conns.unparked(1);
                    return None;
                }
                // A request, then the client's half-close: serve it.
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) => {
                    tracing::debug!(peer = %p.peer, error = %e, "parked connection failed; closing it");
                    lot.parked.remove(key);
                    self.conns.unparked(1);
                    return None;
                }
            }
        }
        let p = lot.parked.remove(key);
        self.conns.unparked(1);
        let fd = p.stream.as_raw_fd();
        if let Err(e) = self.registry.deregister(&mut SourceFd(&fd)) {
            tracing::debug!(peer = %p.peer, error = %e, "could not unpark an idle connection; closing it");
            return None;
        }
        Some(p)
    }

    /// Closes the connections whose idle deadline has passed; returns when
    /// to look again (`None`: nothing is parked).
    fn sweep(&self, now: Instant) -> Option<Instant> {
        let mut lot = self.lock();
        let before = lot.parked.len();
        lot.parked.retain(|_, p| p.idle_deadline > now);
        self.conns.unparked(before - lot.parked.len());
        let earliest = lot.parked.iter().map(|(_, p)| p.idle_deadline).min();
        lot.earliest = earliest;
        // Sockets closed by `retain` left the epoll set with their last
        // descriptor; a lot that emptied gives its memory back.
        if lot.parked.is_empty() {
            lot.parked.shrink_to_fit();
        }
        earliest
    }

    /// Closes every parked connection and parks no more.
    fn close(&self) {
        let mut lot = self.lock();
        lot.closed = true;
        self.conns.unparked(lot.parked.len());
        lot.parked = Slab::new();
        lot.earliest = None;
    }

    /// Watches the parked connections until `closing` becomes true (then
    /// closes them all): `resume` gets each one whose client sent its next
    /// request, to serve it again in a task of its own. Run once per lot,
    /// for as long as its listener serves.
    pub(crate) async fn run(
        self: Arc<Self>,
        mut closing: watch::Receiver<bool>,
        mut resume: impl FnMut(Parked),
    ) {
        struct CloseOnDrop<'a>(&'a ParkingLot);
        impl Drop for CloseOnDrop<'_> {
            fn drop(&mut self) {
                self.0.close();
            }
        }
        let _closer = CloseOnDrop(&self);
        let poll = self
            .poll
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .expect("a parking lot is run once");
        // Sound here (the reason `with_interest` is deprecated is a type
        // whose descriptor can change or close under tokio): a `mio::Poll`
        // owns its epoll descriptor until it is dropped, which the
        // `AsyncFd` does first.
        #[allow(deprecated)]
        let fd = AsyncFd::with_interest(poll, tokio::io::Interest::READABLE);
        let mut fd = match fd {
            Ok(fd) => fd,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch parked connections; idle connections stay in their tasks");
                return;
            }
        };
        let mut events = Events::with_capacity(256);
        let far = || Instant::now() + Duration::from_secs(86_400);
        let sweep = tokio::time::sleep_until(far());
        tokio::pin!(sweep);
        let mut next_sweep = None::<Instant>;
        // Made once, not per wake-up: each `notified()` and `wait_for` takes
        // a lock to join its waiter list and another to leave it.
        let closed = closing.wait_for(|c| *c);
        tokio::pin!(closed);
        let earlier = self.earlier.notified();
        tokio::pin!(earlier);
        loop {
            tokio::select! {
                biased;
                _ = &mut closed => return,
                guard = fd.readable_mut() => {
                    let mut guard = match guard {
                        Ok(g) => g,
                        Err(e) => {
                            tracing::error!(error = %e, "watching parked connections failed; closing them");
                            return;
                        }
                    };
                    // Edge-triggered from tokio's side: take every event
                    // before saying the set is drained. A poll that did not
                    // fill `events` emptied the set; an event after it is a
                    // new edge, which `clear_ready` does not clear.
                    loop {
                        if let Err(e) = guard.get_inner_mut().poll(&mut events, Some(Duration::ZERO)) {
                            if e.kind() == io::ErrorKind::Interrupted {
                                continue;
                            }
                            tracing::error!(error = %e, "watching parked connections failed; closing them");
                            return;
                        }
                        let mut got = 0;
                        for ev in events.iter() {
                            got += 1;
                            let closed = ev.is_read_closed() || ev.is_error();
                            if let Some(p) = self.wake(ev.token().0, closed) {
                                resume(p);
                            }
                        }
                        if got < events.capacity() {
                            break;
                        }
                    }
                    guard.clear_ready();
                }
                _ = &mut sweep, if next_sweep.is_some() => {
                    let now = Instant::now();
                    next_sweep = self.sweep(now).map(|e| e.max(now + SWEEP_EVERY));
                    sweep.as_mut().reset(next_sweep.unwrap_or_else(far));
                }
                _ = &mut earlier => {
                    earlier.set(self.earlier.notified());
                    if let Some(e) = self.lock().earliest {
                        // Never sooner than a sweep interval after the last.
                        let at = match next_sweep {
                            Some(n) if n <= e => n,
                            _ => e,
                        };
                        next_sweep = Some(at);
                        sweep.as_mut().reset(at);
                    }
                }
            }
        }
    }
}
