//! Bodies on their way through the proxy.
//!
//! * [`RequestBody`]: a client's request body streamed upstream, with
//!   `body_timeout` between reads and `max_body_size`. What goes wrong here
//!   is the client's doing ([`ClientBodyError`]) and is never counted
//!   against the upstream.
//! * [`ProxyBody`]: the response streamed to the client, with
//!   `upstream_read_timeout` between reads. It records the request's
//!   outcome in the colour's statistics when it ends: an upstream that
//!   breaks off mid-body is a failure, a client that goes away is not.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

use crate::access::AccessLine;
use crate::conn::ActiveGuard;
use crate::forward::ConnInfo;
use crate::stats::Outcome;
use crate::{Colour, Shared};

/// Errors a body stream hands to hyper.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the client did wrong with its request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientFault {
    /// Bad framing (an invalid chunk size, say): 400.
    Malformed = 1,
    /// Nothing arrived for `body_timeout`: 408.
    Slow = 2,
    /// Longer than `max_body_size`: 413.
    TooLarge = 3,
    /// The client went away mid-upload.
    Aborted = 4,
}

impl ClientFault {
    fn from_u8(v: u8) -> Option<ClientFault> {
        Some(match v {
            1 => ClientFault::Malformed,
            2 => ClientFault::Slow,
            3 => ClientFault::TooLarge,
            4 => ClientFault::Aborted,
            _ => return None,
        })
    }
}

/// The client's request body failed; the upstream is not to blame.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub(crate) struct ClientBodyError {
    pub fault: ClientFault,
    what: String,
}

impl ClientBodyError {
    /// A body whose framing breaks its own promise (longer or shorter than
    /// its `Content-Length`).
    pub(crate) fn malformed(what: &str) -> ClientBodyError {
        ClientBodyError {
            fault: ClientFault::Malformed,
            what: what.to_string(),
        }
    }
}

/// Shared by a request body and its response: whether the client broke the
/// request body. Allocated only for requests that have a body.
#[derive(Default)]
pub(crate) struct FaultCell(AtomicU8);

impl FaultCell {
    pub(crate) fn get(&self) -> Option<ClientFault> {
        ClientFault::from_u8(self.0.load(Relaxed))
    }
    fn set(&self, f: ClientFault) {
        self.0.store(f as u8, Relaxed);
    }
}

/// A request body sent upstream: the client's, streamed, or none (a replayed
/// bodiless request).
pub(crate) enum RequestBody {
    Client(ClientBody),
    Empty,
}

/// A client's request body with its read timeout and size limit.
pub(crate) struct ClientBody {
    body: Incoming,
    deadline: ReadDeadline,
    limit: Option<u64>,
    received: u64,
    fault: Option<Arc<FaultCell>>,
}

/// The longest wait between two reads of a body (`body_timeout`,
/// `upstream_read_timeout`): it starts when a read finds nothing and is
/// called off by the next frame. The timer is allocated on the first wait
/// only, so bodies that never wait cost nothing.
struct ReadDeadline {
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl ReadDeadline {
    fn new(timeout: Duration) -> ReadDeadline {
        ReadDeadline {
            timeout,
            timer: None,
            armed: false,
        }
    }

    /// A frame arrived: the next wait starts a new deadline.
    fn data_arrived(&mut self) {
        self.armed = false;
    }

    /// Called when a read is pending: whether the wait has now lasted the
    /// whole timeout (otherwise `cx` is woken when it will have).
    fn passed(&mut self, cx: &mut Context<'_>) -> bool {
        let timeout = self.timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if !self.armed {
            timer.as_mut().reset(tokio::time::Instant::now() + timeout);
            self.armed = true;
        }
        timer.as_mut().poll(cx).is_ready()
    }
}

impl ClientBody {
    pub(crate) fn new(body: Incoming, timeout: Duration, limit: Option<u64>) -> ClientBody {
        // Bodiless requests (most GETs) never fail, so they share nothing.
        let fault = (!body.is_end_stream()).then(|| Arc::new(FaultCell::default()));
        ClientBody {
            body,
            deadline: ReadDeadline::new(timeout),
            limit,
            received: 0,
            fault,
        }
    }

    pub(crate) fn fault_cell(&self) -> Option<Arc<FaultCell>> {
        self.fault.clone()
    }

    fn fail(&mut self, fault: ClientFault, what: String) -> ClientBodyError {
        if let Some(f) = &self.fault {
            f.set(fault);
        }
        ClientBodyError { fault, what }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let b = match self.get_mut() {
            RequestBody::Client(b) => b,
            RequestBody::Empty => return Poll::Ready(None),
        };
        match Pin::new(&mut b.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                b.deadline.data_arrived();
                if let Some(d) = frame.data_ref() {
                    b.received += d.len() as u64;
                    if let Some(limit) = b.limit.filter(|l| b.received > *l) {
                        let e = b.fail(
                            ClientFault::TooLarge,
                            format!("the request body is larger than proxy.max_body_size ({limit} bytes)"),
                        );
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let (fault, what) = if e.is_parse() {
                    (ClientFault::Malformed, "the request body is malformed")
                } else {
                    (ClientFault::Aborted, "the client aborted its request body")
                };
                let e = b.fail(fault, format!("{what}: {e}"));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if b.deadline.passed(cx) {
                    let timeout = b.deadline.timeout;
                    let e = b.fail(
                        ClientFault::Slow,
                        format!("the client sent no request body data for {timeout:?} (proxy.body_timeout)"),
                    );
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client(b) => b.body.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client(b) => b.body.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// A request's pending entry in its colour's statistics. Recorded exactly
/// once: by [`Tally::finish`], or on drop as a client error (the client went
/// away before its response was complete).
pub(crate) struct Tally {
    shared: Arc<Shared>,
    colour: Colour,
    /// Time to the response headers, once they arrived.
    latency: Duration,
    done: bool,
}

impl Tally {
    pub(crate) fn new(shared: Arc<Shared>, colour: Colour) -> Tally {
        Tally {
            shared,
            colour,
            latency: Duration::ZERO,
            done: false,
        }
    }

    pub(crate) fn set_latency(&mut self, d: Duration) {
        self.latency = d;
    }

    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.record(outcome);
    }

    fn record(&mut self, outcome: Outcome) {
        if !self.done {
            self.done = true;
            self.shared
                .stats
                .colour(self.colour)
                .record(outcome, self.latency);
        }
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.record(Outcome::ClientError);
    }
}

/// A response body from the proxy.
pub struct ProxyBody {
    kind: Kind,
    /// Keeps the client connection "busy" (no idle deadline) until the
    /// response is done.
    active: Option<ActiveGuard<ConnInfo>>,
    /// The request's access-log line (`[log] access`), written when the
    /// body is dropped.
    access: Option<Box<AccessLine>>,
}

enum Kind {
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
}

/// Where an upstream's response body arrives from: hyper's client (HTTP/2
/// pools, upgrades), or switchyard's own HTTP/1.1 client ([`crate::h1`]).
pub(crate) enum UpstreamStream {
    Hyper(Incoming),
    H1(crate::h1::H1Body),
}

impl From<Incoming> for UpstreamStream {
    fn from(b: Incoming) -> UpstreamStream {
        UpstreamStream::Hyper(b)
    }
}

impl From<crate::h1::H1Body> for UpstreamStream {
    fn from(b: crate::h1::H1Body) -> UpstreamStream {
        UpstreamStream::H1(b)
    }
}

impl Body for UpstreamStream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamStream::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamStream::H1(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamStream::Hyper(b) => b.is_end_stream(),
            UpstreamStream::H1(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamStream::Hyper(b) => b.size_hint(),
            UpstreamStream::H1(b) => b.size_hint(),
        }
    }
}

/// What an upstream body holds of its connection until it ends.
pub(crate) enum Release {
    /// Nothing (switchyard's own client returns its connection itself).
    Nothing,
    /// A stream of a shared HTTP/2 connection, counted until the body ends
    /// (held for its `Drop`).
    H2 { _stream: crate::pool::H2Stream },
}

struct UpstreamBody {
    body: UpstreamStream,
    /// The connection (or stream) the body arrives on.
    conn: Release,
    /// The outcome to record once the body is complete (`None`: pinned
    /// requests, or already recorded).
    tally: Option<(Tally, Outcome)>,
    /// Set when the client broke its request body: a response cut off
    /// after that is not the upstream's fault.
    client_fault: Option<Arc<FaultCell>>,
    deadline: ReadDeadline,
    /// From an HTTP/2 upstream: trailers may carry a gRPC failure.
    trailers_judged: bool,
}

impl UpstreamBody {
    fn complete(&mut self) {
        self.conn = Release::Nothing;
        if let Some((tally, outcome)) = self.tally.take() {
            tally.finish(outcome);
        }
    }

    /// The body broke off: the upstream's failure unless the client broke
    /// its request first.
    fn broken(&mut self) {
        self.conn = Release::Nothing;
        if let Some((tally, _)) = self.tally.take() {
            let client = self.client_fault.as_ref().and_then(|f| f.get()).is_some();
            tally.finish(if client {
                Outcome::ClientError
            } else {
                Outcome::TransportFailure
            });
        }
    }
}

impl ProxyBody {
    /// An upstream's response body. `tally` is recorded with `outcome` when
    /// the body completes, as a transport failure if it breaks off; with
    /// `trailers_judged` (HTTP/2 upstreams), a gRPC failure status in the
    /// trailers makes it a server error.
    pub(crate) fn upstream(
        body: impl Into<UpstreamStream>,
        conn: Release,
        tally: Option<(Tally, Outcome)>,
        client_fault: Option<Arc<FaultCell>>,
        read_timeout: Duration,
        trailers_judged: bool,
    ) -> ProxyBody {
        let mut up = UpstreamBody {
            body: body.into(),
            conn,
            tally,
            client_fault,
            deadline: ReadDeadline::new(read_timeout),
            trailers_judged,
        };
        if up.body.is_end_stream() {
            // Never polled by the server: done now.
            up.complete();
        }
        ProxyBody {
            kind: Kind::Upstream(up),
            active: None,
            access: None,
        }
    }

    /// A complete body of switchyard's own.
    pub fn full(b: impl Into<Bytes>) -> ProxyBody {
        ProxyBody {
            kind: Kind::Full(Some(b.into())),
            active: None,
            access: None,
        }
    }

    /// An empty body.
    pub fn empty() -> ProxyBody {
        ProxyBody {
            kind: Kind::Full(None),
            active: None,
            access: None,
        }
    }

    pub(crate) fn set_active(&mut self, guard: ActiveGuard<ConnInfo>) {
        self.active = Some(guard);
    }

    /// Writes `line` to the access log once this body is done or dropped,
    /// with the bytes sent and whether it was complete.
    pub(crate) fn log_access(&mut self, mut line: AccessLine) {
        line.complete = self.is_end_stream();
        self.access = Some(Box::new(line));
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = poll_kind(&mut this.kind, cx);
        if let Some(line) = this.access.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        line.bytes += data.len() as u64;
                    }
                    line.complete = match &this.kind {
                        Kind::Full(b) => b.is_none(),
                        Kind::Upstream(up) => up.body.is_end_stream(),
                    };
                }
                Poll::Ready(None) => line.complete = true,
                Poll::Ready(Some(Err(_))) => line.complete = false,
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Upstream(up) => up.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream(up) => up.body.size_hint(),
        }
    }
}

fn poll_kind(
    kind: &mut Kind,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    {
        match kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(up) => match Pin::new(&mut up.body).poll_frame(cx) {
                Poll::Ready(None) => {
                    up.complete();
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Ok(frame))) => {
                    up.deadline.data_arrived();
                    if up.trailers_judged {
                        // gRPC's status comes last, in the trailers.
                        if let (Some(t), Some((_, outcome))) =
                            (frame.trailers_ref(), up.tally.as_mut())
                        {
                            if crate::grpc::is_server_failure(t) {
                                *outcome = Outcome::ServerError;
                            }
                        }
                    }
                    // Servers stop polling once a Content-Length body is
                    // complete, so look for the end after every frame.
                    if up.body.is_end_stream() {
                        up.complete();
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    up.broken();
                    Poll::Ready(Some(Err(e)))
                }
                Poll::Pending => {
                    if up.deadline.passed(cx) {
                        let timeout = up.deadline.timeout;
                        up.broken();
                        return Poll::Ready(Some(Err(format!(
                            "the upstream sent nothing for {timeout:?} (proxy.upstream_read_timeout): response cut off"
                        )
                        .into())));
                    }
                    Poll::Pending
                }
            },
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // A body dropped after its last byte still leaves a reusable
        // connection and a success; one dropped before is the client
        // going away (the tally's own drop records that), except that a
        // 5xx stays the upstream's failure however soon the client leaves.
        if let Kind::Upstream(up) = &mut self.kind {
            if up.body.is_end_stream() {
                up.complete();
            } else if let Some((tally, Outcome::ServerError)) = up.tally.take() {
                tally.finish(Outcome::ServerError);
            }
        }
    }
}
