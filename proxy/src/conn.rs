//! Connection-level protections shared by the proxy's and the admin API's
//! listeners: the listen backlog, a cap on connections served at once, and
//! the header and idle timeouts, enforced on the connection's reads.
//!
//! Timeouts follow the connection through three phases:
//!
//! * **head**: from the connection's start, or from the first byte after an
//!   idle spell, the whole request head must arrive within `header_timeout`
//!   (a connection that sends nothing is closed by it too);
//! * **busy**: while a request is being answered there is no connection
//!   deadline (the request body and the upstream have their own);
//! * **idle**: after the last response, the next request must begin within
//!   `idle_timeout`.
//!
//! The connection learns that a request is being answered from an
//! [`Activity`] the service shares with it: [`Activity::begin`] when a
//! request arrives, [`Activity::end`] when its response is done. That costs
//! two atomic operations per request and no allocation.

use futures_util::task::AtomicWaker;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::Sleep;

/// The header and idle timeouts of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
}

/// Requests being answered on one connection, and how to wake the
/// connection when the last one ends (so it can start its idle clock).
#[derive(Default)]
pub struct Activity {
    active: AtomicUsize,
    /// Requests answered so far: a request can begin and end between two
    /// reads of the connection, and must still end its head phase.
    answered: AtomicUsize,
    waker: AtomicWaker,
}

impl Activity {
    /// A request arrived on the connection.
    pub fn begin(&self) {
        self.active.fetch_add(1, Ordering::SeqCst);
    }

    /// A response is complete (or abandoned).
    pub fn end(&self) {
        self.answered.fetch_add(1, Ordering::SeqCst);
        if self.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.waker.wake();
        }
    }

    fn busy(&self) -> bool {
        self.active.load(Ordering::SeqCst) > 0
    }
}

/// Ends one request's [`Activity`] when dropped.
pub struct ActiveGuard<A: AsRef<Activity>>(Arc<A>);

impl<A: AsRef<Activity>> ActiveGuard<A> {
    /// Begins a request on `owner`'s activity.
    pub fn begin(owner: Arc<A>) -> ActiveGuard<A> {
        owner.as_ref().as_ref().begin();
        ActiveGuard(owner)
    }

    pub fn owner(&self) -> &Arc<A> {
        &self.0
    }
}

impl<A: AsRef<Activity>> Drop for ActiveGuard<A> {
    fn drop(&mut self) {
        self.0.as_ref().as_ref().end();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Head,
    Busy,
    Idle,
}

/// A client connection with header and idle timeouts on its reads. `A`
/// owns the connection's [`Activity`] (and whatever else the listener keeps
/// per connection, such as its slot under `max_connections`).
pub struct TimedIo<I, A: AsRef<Activity>> {
    io: I,
    owner: Arc<A>,
    timeouts: Timeouts,
    phase: Phase,
    /// Whether `deadline` applies now.
    armed: bool,
    /// HTTP/2 (by its preface): control frames after the last response
    /// (window updates, pings) do not start a request head.
    h2: Option<bool>,
    /// `Activity::answered` when the connection last went idle.
    answered: usize,
    deadline: Pin<Box<Sleep>>,
}

impl<I, A: AsRef<Activity>> TimedIo<I, A> {
    pub fn new(io: I, owner: Arc<A>, timeouts: Timeouts) -> TimedIo<I, A> {
        TimedIo {
            io,
            owner,
            timeouts,
            phase: Phase::Head,
            armed: true,
            h2: None,
            answered: 0,
            deadline: Box::pin(tokio::time::sleep(timeouts.header)),
        }
    }

    /// What the listener keeps for this connection.
    pub fn owner(&self) -> &Arc<A> {
        &self.owner
    }

    fn arm(&mut self, after: Duration) {
        self.armed = true;
        self.deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + after);
    }
}

impl<I: AsyncRead + Unpin, A: AsRef<Activity>> AsyncRead for TimedIo<I, A> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let got = &buf.filled()[before..];
                if !got.is_empty() {
                    let h2 = *this.h2.get_or_insert_with(|| got.starts_with(b"PRI "));
                    if this.phase == Phase::Idle && !h2 && !this.owner.as_ref().as_ref().busy() {
                        // The first byte of the next request: its head must
                        // arrive within header_timeout.
                        this.phase = Phase::Head;
                        let header = this.timeouts.header;
                        this.arm(header);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let activity = this.owner.as_ref().as_ref();
                // Registered before looking, so an `end` in between wakes us.
                activity.waker.register(cx.waker());
                if activity.busy() {
                    this.phase = Phase::Busy;
                    this.armed = false;
                    return Poll::Pending;
                }
                // A request was answered since we last looked (whether or
                // not we ever saw it busy): the idle clock starts now.
                let answered = activity.answered.load(Ordering::SeqCst);
                if this.phase == Phase::Busy || answered != this.answered {
                    this.answered = answered;
                    this.phase = Phase::Idle;
                    let idle = this.timeouts.idle;
                    this.arm(idle);
                }
                if this.armed && this.deadline.as_mut().poll(cx).is_ready() {
                    this.armed = false;
                    let (what, after) = match this.phase {
                        Phase::Idle => ("idle keep-alive connection", this.timeouts.idle),
                        _ => ("request head not received", this.timeouts.header),
                    };
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("{what} within {after:?}: closing the connection"),
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<I: AsyncWrite + Unpin, A: AsRef<Activity>> AsyncWrite for TimedIo<I, A> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Binds a TCP listener with a listen backlog of `backlog` (the kernel caps
/// it at `net.core.somaxconn`).
pub fn bind_tcp(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As tokio's TcpListener::bind: a restart may bind while old
    // connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    TcpListener::from_std(socket.into())
}

/// Pacing of an accept loop when `accept` fails (out of file descriptors,
/// say): back off from 10 ms up to 1 s, and log at most once a second,
/// rather than spin and flood the log.
pub struct AcceptBackoff {
    delay: Duration,
    last_log: Option<Instant>,
    suppressed: u64,
    what: &'static str,
}

impl AcceptBackoff {
    pub fn new(what: &'static str) -> AcceptBackoff {
        AcceptBackoff {
            delay: Duration::ZERO,
            last_log: None,
            suppressed: 0,
            what,
        }
    }

    /// An accept succeeded.
    pub fn reset(&mut self) {
        self.delay = Duration::ZERO;
    }

    /// An accept failed: log (rate-limited) and wait before the next try.
    pub async fn failed(&mut self, e: &io::Error) {
        self.delay = (self.delay * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
        if self.should_log() {
            tracing::warn!(
                listener = self.what, error = %e, retry_in = ?self.delay, suppressed = self.suppressed,
                "accept failed (out of file descriptors? raise `ulimit -n` or lower max_connections)"
            );
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        tokio::time::sleep(self.delay).await;
    }

    /// Whether a rate-limited warning may be logged now.
    pub fn should_log(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last_log
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return false;
        }
        self.last_log = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Owner(Activity);
    impl AsRef<Activity> for Owner {
        fn as_ref(&self) -> &Activity {
            &self.0
        }
    }

    fn timeouts() -> Timeouts {
        Timeouts {
            header: Duration::from_millis(100),
            idle: Duration::from_millis(300),
        }
    }

    #[tokio::test]
    async fn silent_connection_times_out_after_header_timeout() {
        let (client, server) = tokio::io::duplex(64);
        let owner = Arc::new(Owner(Activity::default()));
        let mut io = TimedIo::new(server, owner, timeouts());
        let mut buf = [0u8; 8];
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(client);
    }

    #[tokio::test]
    async fn quick_requests_answered_between_reads_keep_a_connection_open_past_header_timeout() {
        // Each request begins and ends before the connection is read again,
        // so it is never seen busy; it must still not die at header_timeout.
        let (mut client, server) = tokio::io::duplex(64);
        let owner = Arc::new(Owner(Activity::default()));
        let mut io = TimedIo::new(server, owner.clone(), timeouts());
        let mut buf = [0u8; 64];
        let started = tokio::time::Instant::now();
        while started.elapsed() < Duration::from_millis(400) {
            client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            assert!(io.read(&mut buf).await.unwrap() > 0);
            drop(ActiveGuard::begin(owner.clone()));
            // Waiting for the next request (the read goes pending, where
            // deadlines are checked): only the wait may end it.
            let waited = tokio::time::timeout(Duration::from_millis(20), io.read(&mut buf)).await;
            assert!(waited.is_err(), "closed while in use: {waited:?}");
        }
    }

    #[tokio::test]
    async fn busy_connection_has_no_deadline_and_idle_gets_idle_timeout() {
        let (mut client, server) = tokio::io::duplex(64);
        let owner = Arc::new(Owner(Activity::default()));
        let mut io = TimedIo::new(server, owner.clone(), timeouts());
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        let guard = ActiveGuard::begin(owner.clone());
        // Busy for longer than both timeouts: nothing fires.
        let r = tokio::time::timeout(Duration::from_millis(500), io.read(&mut buf)).await;
        assert!(r.is_err(), "no deadline while a request is answered");
        drop(guard);
        let started = tokio::time::Instant::now();
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(err.to_string().contains("idle"), "{err}");
    }
}
