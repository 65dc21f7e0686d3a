//! Forwarding one request: choose the colour, pick an upstream, rewrite
//! headers, send on a pooled keep-alive connection (retrying on another
//! upstream when nothing was sent), stream the response back, and record the
//! outcome in the colour's statistics.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::access::{AccessLine, Served};
use crate::body::{
    ClientBody, ClientBodyError, ClientFault, ProxyBody, Release, RequestBody, Tally,
};
use crate::conn::{ActiveGuard, Activity};
use crate::grpc;
use crate::h1;
use crate::headers::{add_forwarded, is_h2c_upgrade, is_upgrade, strip_hop_by_hop};
use crate::pool::{Checkout, ConnectError, Upstream};
use crate::recent_writes::RecentWrites;
use crate::stats::Outcome;
use crate::write_gate::is_write;
use crate::{Colour, Routing, Shared};

/// What the proxy knows about a client connection, prepared once.
pub(crate) struct ConnInfo {
    pub peer: SocketAddr,
    pub forwarded_for: HeaderValue,
    /// Whether the client connected over TLS (`X-Forwarded-Proto`). A flag,
    /// not a header value: every idle connection holds this struct.
    tls: bool,
    /// Requests being answered, for the connection's idle timeout.
    activity: Activity,
}

impl ConnInfo {
    pub(crate) fn new(peer: SocketAddr, tls: bool) -> ConnInfo {
        ConnInfo {
            peer,
            forwarded_for: HeaderValue::from_str(&peer.ip().to_string())
                .expect("an IP address is a valid header value"),
            tls,
            activity: Activity::default(),
        }
    }
}

impl ConnInfo {
    /// The `X-Forwarded-Proto` value (a static string, no allocation).
    pub(crate) fn proto(&self) -> HeaderValue {
        HeaderValue::from_static(if self.tls { "https" } else { "http" })
    }
}

impl AsRef<Activity> for ConnInfo {
    fn as_ref(&self) -> &Activity {
        &self.activity
    }
}

/// Handles one client request. Never fails: errors become 4xx/5xx
/// responses of switchyard's own.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    // The connection is busy (no idle deadline) until the response is done.
    let active = ActiveGuard::begin(conn);
    // Handed over to a successor (read on arrival; one relaxed load).
    let close = req.version() < Version::HTTP_2
        && shared.draining.load(std::sync::atomic::Ordering::Relaxed);
    let access = shared
        .routing
        .load()
        .settings
        .access_log
        .then(|| AccessLine::begin(&req, active.owner().peer.ip()));
    let mut resp = route(shared, active.owner(), req).await;
    if let Some(mut line) = access {
        let served = resp.extensions_mut().remove::<Served>();
        line.served(resp.status(), served);
        resp.body_mut().log_access(line);
    }
    if close && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // This client reconnects, to the successor.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp.body_mut().set_active(active);
    Ok(resp)
}

async fn route(
    shared: Arc<Shared>,
    conn: &Arc<ConnInfo>,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    if let Some(refused) = refuse(&req) {
        return refused;
    }
    // Writes wait here while the gate is held (cutover), and count as in
    // flight until answered; the routing snapshot is read after the wait.
    let write_guard = if is_write(req.method()) {
        match shared.gate.enter().await {
            Some(g) => Some(g),
            None => {
                return own_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "switchyard: writes are held for a database cutover whose outcome is not known yet; nothing was sent anywhere: retry in a moment\n",
                )
            }
        }
    } else {
        None
    };
    let routing = shared.routing.load_full();
    let settings = &routing.settings;
    if let (Some(max), Some(len)) = (settings.max_body_size, req.body().size_hint().exact()) {
        if len > max {
            return own_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("switchyard: the request body ({len} bytes) is larger than the limit of {max} bytes\n"),
            );
        }
    }
    let mut choice = routing
        .router
        .choose(req.headers(), conn.peer.ip(), routing.green_bp);
    // Forced to a colour (pinned by a tester, or a write that must reach
    // the primary database): never sent to the other colour.
    let mut forced = choice.pinned;
    if let Some(writer) = routing.writer {
        // Writes go to the colour whose database is the primary; with
        // read-your-writes, so do the writer's reads for a while after.
        let ryw = settings.read_your_writes;
        if write_guard.is_some() {
            choice.colour = writer;
            forced = true;
            if !ryw.is_zero() {
                let key = routing.router.client_key(req.headers(), conn.peer.ip());
                shared
                    .recent_writes
                    .get_or_init(RecentWrites::new)
                    .wrote(key);
            }
        } else if !ryw.is_zero() && choice.colour != writer && !choice.pinned {
            let key = routing.router.client_key(req.headers(), conn.peer.ip());
            if shared
                .recent_writes
                .get()
                .is_some_and(|r| r.wrote_within(key, ryw))
            {
                choice.colour = writer;
                forced = true;
            }
        }
    }
    let mut colour = choice.colour;
    // `fallback = true`: a colour with no usable upstream sends its traffic
    // to the other colour, if that one has one.
    if !forced
        && routing.pools[colour.index()].fallback
        && !routing.pools[colour.index()].has_available()
        && routing.pools[colour.other().index()].has_available()
    {
        shared.fallback(colour);
        colour = colour.other();
    }
    let started = Instant::now();

    let upgrade = req.version() == Version::HTTP_11
        && is_upgrade(req.headers())
        && !is_h2c_upgrade(req.headers());
    // A gRPC client is answered in gRPC's terms when no upstream answers.
    let grpc = req.version() == Version::HTTP_2 && grpc::is_grpc(req.headers());
    prepare_request(&mut req, conn, upgrade);
    // Pinned requests are kept out of the statistics.
    let tally = (!choice.pinned).then(|| Tally::new(shared.clone(), colour));

    let mut served = colour;
    let mut resp = if upgrade {
        // Boxed, as the other rare paths: they would make every request's
        // future larger (it is moved into a task per HTTP/2 stream).
        let result = Box::pin(forward_upgrade(&routing, colour, req, conn)).await;
        respond(result, colour, tally, started, grpc)
    } else {
        let req = req.map(|b| {
            RequestBody::Client(ClientBody::new(
                b,
                settings.body_timeout,
                settings.max_body_size,
            ))
        });
        match forward(&routing, colour, req, tally, started).await {
            Err((Failure::Connect(_) | Failure::NoUpstream, Some(req), tally))
                if !forced
                    && (colour != routing.stable || routing.pools[colour.index()].fallback) =>
            {
                // Nothing was sent: the stable colour (or, with
                // `fallback`, the other one) takes the request. The
                // failed connect still counts against this colour.
                if let Some(t) = tally {
                    t.finish(Outcome::TransportFailure);
                }
                shared.fallback(colour);
                let other = colour.other();
                tracing::debug!(from = %colour, to = %other, "no {colour} upstream could be reached; sending the request to {other}");
                let tally = (!choice.pinned).then(|| Tally::new(shared.clone(), other));
                let result = Box::pin(forward(&routing, other, req, tally, Instant::now())).await;
                served = other;
                finish(result, other, grpc)
            }
            result => finish(result, colour, grpc),
        }
    };
    if settings.access_log && resp.extensions().get::<Served>().is_none() {
        resp.extensions_mut().insert(Served {
            colour: served,
            upstream: None,
        });
    }
    if let Some(bucket) = choice.set_cookie {
        let cookie = format!(
            "{}={bucket}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax",
            routing.router.cookie_name()
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

/// Requests refused before routing: 405 for `CONNECT` (a reverse proxy is
/// no tunnel), 400 for an HTTP/1.1 request without exactly one `Host`.
fn refuse(req: &Request<Incoming>) -> Option<Response<ProxyBody>> {
    if req.method() == Method::CONNECT {
        let mut r = own_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "switchyard: CONNECT is not supported (this is a reverse proxy, not a tunnel)\n",
        );
        r.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE"),
        );
        return Some(r);
    }
    if req.version() == Version::HTTP_11 {
        let mut hosts = req.headers().get_all(header::HOST).iter();
        match (hosts.next(), hosts.next()) {
            (Some(_), None) => {}
            (None, _) => {
                return Some(own_response(
                    StatusCode::BAD_REQUEST,
                    "switchyard: an HTTP/1.1 request needs a Host header (RFC 9112 §3.2)\n",
                ))
            }
            (Some(_), Some(_)) => {
                return Some(own_response(
                    StatusCode::BAD_REQUEST,
                    "switchyard: the request has more than one Host header (RFC 9112 §3.2)\n",
                ))
            }
        }
    }
    None
}

/// Records a response that needs no body tracking (upgrades) and turns
/// failures into responses.
fn respond(
    result: Result<Response<ProxyBody>, Failure>,
    colour: Colour,
    tally: Option<Tally>,
    started: Instant,
    grpc: bool,
) -> Response<ProxyBody> {
    match result {
        Ok(resp) => {
            if let Some(mut t) = tally {
                t.set_latency(started.elapsed());
                t.finish(if resp.status().is_server_error() {
                    Outcome::ServerError
                } else {
                    Outcome::Ok
                });
            }
            resp
        }
        Err(failure) => {
            if let Some(mut t) = tally {
                t.set_latency(started.elapsed());
                t.finish(failure.outcome());
            }
            failure.into_response(colour, grpc)
        }
    }
}

type Forwarded =
    Result<Response<ProxyBody>, (Failure, Option<Request<RequestBody>>, Option<Tally>)>;

fn finish(result: Forwarded, colour: Colour, grpc: bool) -> Response<ProxyBody> {
    match result {
        Ok(resp) => resp,
        Err((failure, _, tally)) => {
            if let Some(t) = tally {
                t.finish(failure.outcome());
            }
            failure.into_response(colour, grpc)
        }
    }
}

fn prepare_request(req: &mut Request<Incoming>, conn: &ConnInfo, upgrade: bool) {
    // HTTP/2 clients may split `Cookie` into several fields; HTTP/1.1 allows
    // one, so join them with "; " (RFC 9113 §8.2.3).
    if req.version() == Version::HTTP_2 {
        join_cookies(req.headers_mut());
    }
    // An absolute-form URI (`GET http://host/path`) names the host; it wins
    // over any `Host` header (RFC 9112 §3.2.2). HTTP/2 clients carry the
    // host in the URI too, and HTTP/1.1 upstreams need `Host`.
    if let Some(auth) = req.uri().authority() {
        if let Ok(v) = HeaderValue::from_str(auth.as_str()) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let pq = req
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        if let Ok(uri) = Uri::try_from(pq) {
            *req.uri_mut() = uri;
        }
    }
    *req.version_mut() = Version::HTTP_11;
    // `TE: trailers` says the client takes trailers, which gRPC needs end
    // to end; the proxy takes them too, so it survives the hop. Any other
    // TE is this hop's business only.
    let te_trailers = req
        .headers()
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    strip_hop_by_hop(req.headers_mut(), upgrade);
    if te_trailers {
        req.headers_mut()
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    add_forwarded(req.headers_mut(), &conn.forwarded_for, &conn.proto());
}

fn join_cookies(headers: &mut http::HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for v in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// Why a request got no upstream response. Messages name what failed but
/// never an upstream's address (that goes to the log).
pub(crate) enum Failure {
    NoUpstream,
    Connect(&'static str),
    Send(String),
    Timeout,
    /// The client broke its request body; the upstream is not to blame.
    Client(ClientFault, String),
}

impl Failure {
    fn outcome(&self) -> Outcome {
        match self {
            Failure::Client(..) => Outcome::ClientError,
            _ => Outcome::TransportFailure,
        }
    }

    /// gRPC's code for this failure.
    fn grpc_code(&self) -> grpc::Code {
        match self {
            Failure::NoUpstream | Failure::Connect(_) | Failure::Send(_) => grpc::Code::Unavailable,
            Failure::Timeout | Failure::Client(ClientFault::Slow, _) => {
                grpc::Code::DeadlineExceeded
            }
            Failure::Client(ClientFault::TooLarge, _) => grpc::Code::ResourceExhausted,
            Failure::Client(ClientFault::Aborted, _) => grpc::Code::Cancelled,
            Failure::Client(ClientFault::Malformed, _) => grpc::Code::Internal,
        }
    }

    /// The answer to the client: a short text with a 4xx/5xx status, or for
    /// a gRPC call (`grpc`), a trailers-only response with the gRPC code
    /// and the same text, as gRPC clients expect.
    fn into_response(self, colour: Colour, grpc: bool) -> Response<ProxyBody> {
        let code = self.grpc_code();
        let (status, msg) = match self {
            Failure::NoUpstream => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("switchyard: the {colour} pool has no upstream to try\n"),
            ),
            Failure::Connect(why) => (
                StatusCode::BAD_GATEWAY,
                format!("switchyard: no {colour} upstream could be reached ({why})\n"),
            ),
            Failure::Send(e) => (
                StatusCode::BAD_GATEWAY,
                format!("switchyard: the {colour} upstream failed before answering: {e}\n"),
            ),
            Failure::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                format!("switchyard: the {colour} upstream did not answer in time (proxy.upstream_timeout)\n"),
            ),
            Failure::Client(fault, what) => (
                match fault {
                    ClientFault::Slow => StatusCode::REQUEST_TIMEOUT,
                    ClientFault::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                    ClientFault::Malformed | ClientFault::Aborted => StatusCode::BAD_REQUEST,
                },
                format!("switchyard: {what}\n"),
            ),
        };
        if grpc {
            let mut resp = Response::new(ProxyBody::empty());
            grpc::set_status(resp.headers_mut(), code, &msg);
            return resp;
        }
        own_response(status, msg)
    }
}

/// A short plain-text response of switchyard's own.
fn own_response(status: StatusCode, msg: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(msg.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// What a connect error says without the upstream's address.
fn connect_reason(e: &ConnectError) -> &'static str {
    match e {
        ConnectError::Timeout { .. } => "connect timed out (proxy.connect_timeout)",
        ConnectError::Handshake { .. } => "HTTP handshake failed",
        ConnectError::Tls { .. } => "TLS handshake failed",
        ConnectError::Io { source, .. } => match source.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused",
            std::io::ErrorKind::ConnectionReset => "connection reset",
            _ => "connect failed",
        },
    }
}

/// The client's request-body error behind a failed send, if that is what
/// it was.
fn client_fault<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a ClientBodyError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(c) = err.downcast_ref::<ClientBodyError>() {
            return Some(c);
        }
        cur = err.source();
    }
    None
}

/// Sends `req` to an upstream of `colour`, retrying connect failures on
/// another upstream. On a failure before anything was sent the request is
/// handed back, so another colour may take it. `tally` is recorded when
/// the response body is complete.
async fn forward(
    routing: &Routing,
    colour: Colour,
    mut req: Request<RequestBody>,
    tally: Option<Tally>,
    started: Instant,
) -> Forwarded {
    let pool = &routing.pools[colour.index()];
    let client_fault_cell = match req.body() {
        RequestBody::Client(b) => b.fault_cell(),
        RequestBody::Empty => None,
    };
    let mut avoid: Option<Arc<Upstream>> = None;
    let mut attempts_left = routing.settings.retries + 1;
    let mut stale_retries = 0;
    let mut last_connect_error = None;
    let bodiless = req.body().is_end_stream();
    loop {
        attempts_left -= 1;
        let up = match pool.pick(avoid.as_ref()) {
            Some(up) => up.clone(),
            // Only the upstream that just failed is left: report its error.
            None => {
                let failure = last_connect_error.map_or(Failure::NoUpstream, Failure::Connect);
                return Err((failure, Some(req), tally));
            }
        };
        // HTTP/1.1 upstreams go over the own client (no connection task);
        // HTTP/2 ones over hyper's.
        let own = up.owns_h1();
        let checkout = if own {
            up.checkout_h1(routing.settings.connect_timeout, routing.settings.ejection)
                .await
                .map(|(c, reused)| (Conn::Own(c), reused))
        } else {
            up.checkout_h2(routing.settings.connect_timeout, routing.settings.ejection)
                .await
                .map(|Checkout { tx, h2_stream }| (Conn::H2(tx, h2_stream), false))
        };
        let (conn, reused) = match checkout {
            Ok(c) => c,
            Err(e) => {
                // Nothing was sent: any method may go to another upstream.
                tracing::warn!(colour = %colour, upstream = %up.name, error = %e, "connect to upstream failed");
                let reason = connect_reason(&e);
                if attempts_left == 0 {
                    return Err((Failure::Connect(reason), Some(req), tally));
                }
                last_connect_error = Some(reason);
                avoid = Some(up);
                continue;
            }
        };
        let (mut tx, h2_stream) = match conn {
            Conn::Own(c) => {
                if req.uri().authority().is_some() {
                    to_h1_target(&mut req);
                }
                up.begin();
                let sent =
                    tokio::time::timeout(routing.settings.upstream_timeout, c.send(&mut req, &up))
                        .await;
                up.end();
                match sent {
                    Err(_) => {
                        tracing::warn!(colour = %colour, upstream = %up.name, timeout = ?routing.settings.upstream_timeout, "upstream did not answer in time");
                        return Err((Failure::Timeout, None, tally));
                    }
                    Ok(Ok((parts, body))) => {
                        let resp = upstream_response(
                            routing,
                            colour,
                            &up,
                            parts,
                            body,
                            Release::Nothing,
                            tally,
                            client_fault_cell,
                            started,
                            false,
                        );
                        return Ok(resp);
                    }
                    Ok(Err(e)) => {
                        // As below: a request that never reached the
                        // upstream whole, or a bodiless idempotent one that
                        // went unanswered on a reused connection, is sent
                        // again on a fresh one.
                        // (A request whose body was taken cannot be.)
                        let again = reused
                            && stale_retries < 3
                            && bodiless
                            && match e {
                                h1::SendError::Write(_) => true,
                                h1::SendError::ClosedBeforeResponse => is_idempotent(req.method()),
                                h1::SendError::Response(_) | h1::SendError::Client(_) => false,
                            };
                        if let h1::SendError::Client(c) = e {
                            return Err((Failure::Client(c.fault, c.to_string()), None, tally));
                        }
                        if !again {
                            tracing::warn!(colour = %colour, upstream = %up.name, error = %e, "upstream failed before answering");
                            return Err((Failure::Send(e.to_string()), None, tally));
                        }
                        tracing::debug!(upstream = %up.name, "resending on a fresh connection after a stale keep-alive one");
                        stale_retries += 1;
                        attempts_left += 1;
                        avoid = None;
                        continue;
                    }
                }
            }
            Conn::H2(tx, stream) => (tx, stream),
        };
        // A request refused before it was sent comes back (below) and is
        // sent again; HTTP/2 streams are never replayed once sent.
        to_h2_target(&mut req, &up);
        up.begin();
        let sent =
            tokio::time::timeout(routing.settings.upstream_timeout, tx.try_send_request(req)).await;
        up.end();
        match sent {
            Err(_) => {
                tracing::warn!(colour = %colour, upstream = %up.name, timeout = ?routing.settings.upstream_timeout, "upstream did not answer in time");
                return Err((Failure::Timeout, None, tally));
            }
            Ok(Ok(resp)) => {
                let (parts, body) = resp.into_parts();
                let resp = upstream_response(
                    routing,
                    colour,
                    &up,
                    parts,
                    body,
                    // Shared: the stream is counted until the body ends.
                    Release::H2 { _stream: h2_stream },
                    tally,
                    client_fault_cell,
                    started,
                    true,
                );
                return Ok(resp);
            }
            Ok(Err(mut e)) => {
                let back = e.take_message();
                let error = e.into_error();
                // The client's body broke, not the upstream.
                if let Some(c) = std::error::Error::source(&error).and_then(client_fault) {
                    return Err((Failure::Client(c.fault, c.to_string()), None, tally));
                }
                if let Some(f) = client_fault_cell.as_ref().and_then(|f| f.get()) {
                    return Err((Failure::Client(f, format!("{error}")), None, tally));
                }
                // The request never left (the connection was found closed):
                // safe to send again, whatever the method.
                if let Some(back) = back.filter(|_| stale_retries < 3) {
                    req = back;
                } else {
                    tracing::warn!(colour = %colour, upstream = %up.name, error = %error, "upstream failed before answering");
                    return Err((Failure::Send(error.to_string()), None, tally));
                }
                tracing::debug!(upstream = %up.name, "resending on a fresh connection after a stale keep-alive one");
                stale_retries += 1;
                attempts_left += 1;
                avoid = None;
            }
        }
    }
}

/// A connection checked out for one request.
enum Conn {
    /// Switchyard's own HTTP/1.1 client.
    Own(Box<h1::H1Conn>),
    /// A stream on a shared HTTP/2 connection (hyper's client).
    H2(
        hyper::client::conn::http2::SendRequest<RequestBody>,
        crate::pool::H2Stream,
    ),
}

/// The client's response from an upstream's: hop-by-hop fields dropped,
/// the outcome judged from the head (and, over HTTP/2, gRPC's status), the
/// body streamed with its tally and, for hyper's HTTP/1.1, the connection
/// to give back when it ends.
#[allow(clippy::too_many_arguments)]
fn upstream_response(
    routing: &Routing,
    colour: Colour,
    up: &Arc<Upstream>,
    mut parts: http::response::Parts,
    body: impl Into<crate::body::UpstreamStream>,
    conn: Release,
    mut tally: Option<Tally>,
    client_fault_cell: Option<Arc<crate::body::FaultCell>>,
    started: Instant,
    h2: bool,
) -> Response<ProxyBody> {
    // An answer readmits an upstream ejected for connect failures.
    up.connect_succeeded();
    strip_hop_by_hop(&mut parts.headers, false);
    // Over HTTP/2 a gRPC failure may come as a trailers-only response:
    // HTTP 200 with `grpc-status` in the headers.
    let outcome =
        if parts.status.is_server_error() || (h2 && grpc::is_server_failure(&parts.headers)) {
            Outcome::ServerError
        } else {
            Outcome::Ok
        };
    parts.version = Version::HTTP_11;
    if let Some(t) = tally.as_mut() {
        t.set_latency(started.elapsed());
    }
    if routing.settings.access_log {
        parts.extensions.insert(Served {
            colour,
            upstream: Some(up.clone()),
        });
    }
    let body = ProxyBody::upstream(
        body,
        conn,
        tally.map(|t| (t, outcome)),
        client_fault_cell,
        routing.settings.upstream_read_timeout,
        h2,
    );
    Response::from_parts(parts, body)
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// HTTP/2 names the target in `:scheme` and `:authority`, so the request
/// gets an absolute URI, its authority taken from `Host` (which HTTP/2 then
/// does without) or else the upstream's name.
fn to_h2_target(req: &mut Request<RequestBody>, up: &Upstream) {
    if req.uri().authority().is_some() {
        return;
    }
    let host = req.headers_mut().remove(header::HOST);
    let authority = host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .unwrap_or(&up.name);
    let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let scheme = if up.link.is_tls() { "https" } else { "http" };
    if let Ok(uri) = Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(pq)
        .build()
    {
        *req.uri_mut() = uri;
    } else if let Some(h) = host {
        req.headers_mut().insert(header::HOST, h);
    }
    *req.version_mut() = Version::HTTP_2;
}

/// Undoes [`to_h2_target`] for a request that, refused by an HTTP/2 pool
/// before anything was sent, goes to an HTTP/1.1 one instead.
fn to_h1_target(req: &mut Request<RequestBody>) {
    if let Some(auth) = req.uri().authority() {
        if let Ok(v) = HeaderValue::from_str(auth.as_str()) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    if let Ok(uri) = Uri::try_from(pq) {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = Version::HTTP_11;
}

/// Forwards an `Upgrade` request (WebSocket) on a dedicated connection and,
/// on `101 Switching Protocols`, splices the two upgraded streams together.
async fn forward_upgrade(
    routing: &Routing,
    colour: Colour,
    mut req: Request<Incoming>,
    conn: &Arc<ConnInfo>,
) -> Result<Response<ProxyBody>, Failure> {
    let pool = &routing.pools[colour.index()];
    let up = pool.pick(None).ok_or(Failure::NoUpstream)?.clone();
    if up.link.protocol.is_h2() {
        return Err(Failure::Send(
            "protocol upgrades (WebSocket) are forwarded only to pools with protocol = \"http1\" (WebSocket over HTTP/2 is not supported)".into(),
        ));
    }
    let mut tx = up
        .link
        .connect_upgradable::<Incoming>(up.addr, routing.settings.connect_timeout)
        .await
        .map_err(|e| {
            tracing::warn!(colour = %colour, upstream = %up.name, error = %e, "connect to upstream failed");
            Failure::Connect(connect_reason(&e))
        })?;
    let client_upgrade = hyper::upgrade::on(&mut req);
    let mut resp = tokio::time::timeout(routing.settings.upstream_timeout, tx.send_request(req))
        .await
        .map_err(|_| Failure::Timeout)?
        .map_err(|e| Failure::Send(e.to_string()))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        let body = ProxyBody::upstream(
            body,
            Release::Nothing,
            None,
            None,
            routing.settings.upstream_read_timeout,
            false,
        );
        return Ok(Response::from_parts(parts, body));
    }
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    // The tunnel keeps the client connection busy: no header or idle
    // deadline cuts a quiet WebSocket.
    let busy = ActiveGuard::begin(conn.clone());
    tokio::spawn(async move {
        let _busy = busy;
        match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok((client, upstream)) => {
                let mut client = TokioIo::new(client);
                let mut upstream = TokioIo::new(upstream);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    let (parts, _) = resp.into_parts();
    Ok(Response::from_parts(parts, ProxyBody::empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_cookies_are_joined() {
        let mut h = http::HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("session=abc"));
        join_cookies(&mut h);
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "a=1; session=abc");
        let mut one = http::HeaderMap::new();
        one.insert(header::COOKIE, HeaderValue::from_static("a=1"));
        join_cookies(&mut one);
        assert_eq!(one[header::COOKIE], "a=1");
    }
}
