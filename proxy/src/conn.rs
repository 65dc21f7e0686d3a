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
//!
//! **Parking** (the proxy's HTTP/1 connections, [`TimedIo::park_after`]): a
//! keep-alive connection idle for a while is handed back by the HTTP
//! library, which frees its read and write buffers (16 KiB), and waits for
//! the client's next byte holding no buffer at all: a plain connection as
//! a bare socket in the listener's parking lot ([`TimedIo::into_idle_socket`],
//! `crate::park`), a TLS one in its task ([`TimedIo::park`]). The library
//! sees the end of the stream; the socket stays open.

use bytes::{Buf, Bytes};
use futures_util::task::AtomicWaker;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Sleep;

/// The proxy's client connections, for `/metrics` (nginx's `stub_status`
/// "active" and "waiting", HAProxy's `scur` and `slim`): open now, idle ones
/// included; of those, idle keep-alive connections parked (waiting over
/// [`crate::PARK_AFTER`] for their next request); accepted since start; and
/// the cap (`max_connections`). Updated once per connection and per idle
/// spell, never per request.
#[derive(Debug, Default)]
pub struct ClientConns {
    open: AtomicUsize,
    idle: AtomicUsize,
    accepted: AtomicU64,
    limit: AtomicUsize,
}

impl ClientConns {
    /// Client connections open now (plain and TLS, idle ones included).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Of those, keep-alive connections parked between requests.
    pub fn idle(&self) -> usize {
        self.idle.load(Ordering::Relaxed)
    }

    /// Client connections accepted since start.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// `[proxy] max_connections` of the listeners serving now.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    pub(crate) fn set_limit(&self, n: usize) {
        self.limit.store(n, Ordering::Relaxed);
    }

    pub(crate) fn parked(&self, n: usize) {
        self.idle.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn unparked(&self, n: usize) {
        self.idle.fetch_sub(n, Ordering::Relaxed);
    }
}

/// One connection's place under `max_connections` and in the open count:
/// both are given back when it is dropped, wherever the connection is then
/// (its task, or the parking lot).
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    conns: Arc<ClientConns>,
}

impl Slot {
    /// A connection was accepted on `permit`.
    pub fn new(permit: OwnedSemaphorePermit, conns: Arc<ClientConns>) -> Slot {
        conns.open.fetch_add(1, Ordering::Relaxed);
        conns.accepted.fetch_add(1, Ordering::Relaxed);
        Slot {
            _permit: permit,
            conns,
        }
    }

    /// The counts this slot is part of.
    pub fn conns(&self) -> &Arc<ClientConns> {
        &self.conns
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.conns.open.fetch_sub(1, Ordering::Relaxed);
    }
}

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
    /// Set when the connection was handed back for parking: reads see the
    /// end of the stream and shutdown leaves the socket open.
    parked: bool,
    /// `Activity::answered` when the connection last went idle.
    answered: usize,
    /// Park after this long idle (`None`: never).
    park_after: Option<Duration>,
    /// When the current idle spell reaches `idle_timeout`.
    idle_deadline: tokio::time::Instant,
    /// Bytes read from the socket but not yet by the HTTP library (the
    /// protocol sniff, or what it had buffered when it was parked).
    unread: Option<Bytes>,
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
            parked: false,
            answered: 0,
            park_after: None,
            idle_deadline: tokio::time::Instant::now() + timeouts.idle,
            unread: None,
            deadline: Box::pin(tokio::time::sleep(timeouts.header)),
        }
    }

    /// A connection back from the parking lot (`crate::park`): an HTTP/1
    /// keep-alive connection whose client has sent (the start of) its next
    /// request. Its idle clock still runs from when it went idle, and it
    /// parks again after `park_after` if that was a false start.
    pub fn resumed(
        io: I,
        owner: Arc<A>,
        timeouts: Timeouts,
        idle_deadline: tokio::time::Instant,
        park_after: Duration,
    ) -> TimedIo<I, A> {
        let next = (tokio::time::Instant::now() + park_after).min(idle_deadline);
        TimedIo {
            io,
            owner,
            timeouts,
            phase: Phase::Idle,
            armed: true,
            h2: Some(false),
            parked: false,
            answered: 0,
            park_after: Some(park_after),
            idle_deadline,
            unread: None,
            deadline: Box::pin(tokio::time::sleep_until(next)),
        }
    }

    /// Whether the connection is known to speak HTTP/1 (it was sniffed,
    /// or came back from the parking lot).
    pub fn is_h1(&self) -> bool {
        self.h2 == Some(false)
    }

    /// The bare socket and the idle deadline, for the parking lot, when
    /// this connection can be reduced to them: a plain TCP connection with
    /// nothing read but not yet handed on. Otherwise (TLS, or bytes
    /// waiting) the connection comes back to be parked in its task.
    /// `Ok(Err(_))`: the socket could not be taken out of the reactor (the
    /// connection is lost).
    #[allow(clippy::type_complexity)]
    pub fn into_idle_socket(
        self,
    ) -> Result<io::Result<(std::net::TcpStream, tokio::time::Instant)>, Self>
    where
        I: ReadReady,
    {
        if !I::BARE || self.unread.is_some() {
            return Err(self);
        }
        let TimedIo {
            io, idle_deadline, ..
        } = self;
        Ok(io.into_std().map(|s| (s, idle_deadline)))
    }

    /// What the listener keeps for this connection.
    pub fn owner(&self) -> &Arc<A> {
        &self.owner
    }

    /// Once idle for `after` (and before `idle_timeout`), reads end as if
    /// the client had closed, so the HTTP library hands the connection back
    /// and frees its buffers; [`TimedIo::take_parked`] then says so.
    pub fn park_after(&mut self, after: Duration) {
        self.park_after = Some(after);
    }

    /// Whether the connection was handed back for parking (and clears it).
    pub fn take_parked(&mut self) -> bool {
        std::mem::take(&mut self.parked)
    }

    /// Bytes to be read again before the socket's (they were read from it
    /// already).
    pub fn unread(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.unread = Some(bytes);
        }
    }

    /// Whether the client opened with the HTTP/2 preface (`None`: it closed
    /// the connection first). Reads at most the preface's 24 bytes, which
    /// are read again by the HTTP library.
    pub async fn sniff_h2(&mut self) -> io::Result<Option<bool>>
    where
        I: AsyncRead + Unpin,
    {
        use tokio::io::AsyncReadExt;
        const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let mut buf = [0u8; 24];
        let mut got = 0;
        let h2 = loop {
            let n = self.read(&mut buf[got..]).await?;
            if n == 0 {
                if got == 0 {
                    return Ok(None);
                }
                break false;
            }
            got += n;
            if buf[..got] != PREFACE[..got] {
                break false;
            }
            if got == PREFACE.len() {
                break true;
            }
        };
        self.h2 = Some(h2);
        self.unread(Bytes::copy_from_slice(&buf[..got]));
        Ok(Some(h2))
    }

    /// Waits for the client's next request holding no buffer:
    /// [`Woke::Ready`] when it has sent something (or closed: the HTTP
    /// library sees that), [`Woke::Closed`] when the idle timeout passed or
    /// `closing` became true and the connection should be closed, and
    /// [`Woke::StillIdle`] at `until` if that comes first, so that the
    /// caller can park the connection somewhere cheaper.
    pub async fn park(
        &mut self,
        closing: &mut watch::Receiver<bool>,
        until: Option<tokio::time::Instant>,
    ) -> Woke
    where
        I: ReadReady,
    {
        let idle_deadline = self.idle_deadline;
        let wake_at = until.map_or(idle_deadline, |u| u.min(idle_deadline));
        self.deadline.as_mut().reset(wake_at);
        let closed = closing.wait_for(|c| *c);
        tokio::pin!(closed);
        let woke = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = self.io.poll_read_ready(cx) {
                return Poll::Ready(if r.is_ok() { Woke::Ready } else { Woke::Closed });
            }
            if self.deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(if wake_at < idle_deadline {
                    Woke::StillIdle
                } else {
                    Woke::Closed
                });
            }
            if closed.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Woke::Closed);
            }
            Poll::Pending
        })
        .await;
        if woke == Woke::Ready {
            // Still idle: park again after another spell, but the idle
            // timeout counts from when the connection went idle.
            let after = self.park_after.unwrap_or(self.timeouts.idle);
            let next = (tokio::time::Instant::now() + after).min(idle_deadline);
            self.armed = true;
            self.deadline.as_mut().reset(next);
        }
        woke
    }

    fn arm(&mut self, after: Duration) {
        self.armed = true;
        self.deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + after);
    }

    /// The connection went idle now: the idle clock starts, and the park
    /// clock if parking is on.
    fn go_idle(&mut self) {
        self.phase = Phase::Idle;
        let now = tokio::time::Instant::now();
        self.idle_deadline = now + self.timeouts.idle;
        let first = match self.park_after {
            Some(p) => (now + p).min(self.idle_deadline),
            None => self.idle_deadline,
        };
        self.armed = true;
        self.deadline.as_mut().reset(first);
    }

    /// `n` bytes were read, starting with `PRI ` (the HTTP/2 preface) or not.
    fn saw_bytes(&mut self, n: usize, pri: bool) {
        if n == 0 {
            return;
        }
        let h2 = *self.h2.get_or_insert(pri);
        if self.phase == Phase::Idle && !h2 && !self.owner.as_ref().as_ref().busy() {
            // The first byte of the next request: its head must arrive
            // within header_timeout.
            self.phase = Phase::Head;
            let header = self.timeouts.header;
            self.arm(header);
        }
    }
}

/// How a parked connection's wait ended ([`TimedIo::park`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// The client sent something (or closed: the HTTP library sees that).
    Ready,
    /// The idle timeout passed, the listener is closing, or the socket
    /// failed: close the connection.
    Closed,
    /// Still idle at the time asked for.
    StillIdle,
}

/// Readiness of a connection's socket, for [`TimedIo::park`].
pub trait ReadReady {
    /// Ready once the socket has bytes to read (or the peer closed).
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Whether this kind of connection can wait as a bare socket in the
    /// parking lot ([`ReadReady::into_std`]).
    const BARE: bool = false;

    /// The bare socket, out of tokio's reactor, for the parking lot. Only
    /// called where [`ReadReady::BARE`] says so.
    fn into_std(self) -> io::Result<std::net::TcpStream>
    where
        Self: Sized,
    {
        Err(io::Error::other(
            "only a plain TCP connection can be parked as a bare socket",
        ))
    }
}

impl ReadReady for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }

    const BARE: bool = true;

    fn into_std(self) -> io::Result<std::net::TcpStream> {
        TcpStream::into_std(self)
    }
}

impl ReadReady for tokio_rustls::server::TlsStream<TcpStream> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Parked only after a read found no decrypted bytes waiting, so
        // the next record shows up as readiness of the socket.
        self.get_ref().0.poll_read_ready(cx)
    }
}

impl<I: AsyncRead + Unpin, A: AsRef<Activity>> AsyncRead for TimedIo<I, A> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.parked {
            // Handed back: the HTTP library sees the end of the stream.
            return Poll::Ready(Ok(()));
        }
        if let Some(unread) = this.unread.as_mut() {
            let n = unread.len().min(buf.remaining());
            let pri = unread[..n].starts_with(b"PRI ");
            buf.put_slice(&unread[..n]);
            unread.advance(n);
            if unread.is_empty() {
                this.unread = None;
            }
            this.saw_bytes(n, pri);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let got = &buf.filled()[before..];
                let (n, pri) = (got.len(), got.starts_with(b"PRI "));
                this.saw_bytes(n, pri);
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
                    this.go_idle();
                }
                if this.armed && this.deadline.as_mut().poll(cx).is_ready() {
                    this.armed = false;
                    if this.phase == Phase::Idle
                        && this.park_after.is_some()
                        && tokio::time::Instant::now() < this.idle_deadline
                    {
                        this.parked = true;
                        return Poll::Ready(Ok(()));
                    }
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
        let this = self.get_mut();
        if this.parked {
            // Handed back for parking: the socket stays open.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
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

/// Serves on a listening socket bound elsewhere (inherited from a
/// predecessor or from systemd), with its listen backlog set to `backlog`.
pub fn adopt_tcp(listener: std::net::TcpListener, backlog: u32) -> io::Result<TcpListener> {
    listener.set_nonblocking(true)?;
    // listen() again only changes the backlog of a listening socket.
    socket2::SockRef::from(&listener).listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    TcpListener::from_std(listener)
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
