//! Forwarding one request: choose the colour, pick an upstream, rewrite
//! headers, send on a pooled keep-alive connection (retrying on another
//! upstream when nothing was sent), stream the response back, and record the
//! outcome in the colour's statistics.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::body::{ProxyBody, RequestBody};
use crate::headers::{add_forwarded, is_upgrade, strip_hop_by_hop};
use crate::pool::{connect_tcp, Checkout, Upstream};
use crate::recent_writes::RecentWrites;
use crate::stats::Outcome;
use crate::write_gate::is_write;
use crate::{Colour, Routing, Shared};

/// What the proxy knows about a client connection, prepared once.
pub(crate) struct ConnInfo {
    pub peer: SocketAddr,
    pub forwarded_for: HeaderValue,
    pub proto: HeaderValue,
}

impl ConnInfo {
    pub(crate) fn new(peer: SocketAddr, tls: bool) -> ConnInfo {
        ConnInfo {
            peer,
            forwarded_for: HeaderValue::from_str(&peer.ip().to_string())
                .expect("an IP address is a valid header value"),
            proto: HeaderValue::from_static(if tls { "https" } else { "http" }),
        }
    }
}

/// Handles one client request. Never fails: errors become 502/504 responses.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    // Writes wait here while the gate is held (cutover), and count as in
    // flight until answered; the routing snapshot is read after the wait.
    let write_guard = if is_write(req.method()) {
        Some(shared.gate.enter().await)
    } else {
        None
    };
    let routing = shared.routing.load_full();
    let mut choice = routing
        .router
        .choose(req.headers(), conn.peer.ip(), routing.green_bp);
    if let Some(writer) = routing.writer {
        // Writes go to the colour whose database is the primary; with
        // read-your-writes, so do the writer's reads for a while after.
        let ryw = routing.settings.read_your_writes;
        if write_guard.is_some() {
            choice.colour = writer;
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
            }
        }
    }
    let colour = choice.colour;
    let started = Instant::now();

    let upgrade = req.version() == Version::HTTP_11 && is_upgrade(req.headers());
    prepare_request(&mut req, &conn, upgrade);

    let result = if upgrade {
        forward_upgrade(&routing, colour, req).await
    } else {
        forward(&routing, colour, req).await
    };
    let (outcome, mut resp) = match result {
        Ok(resp) if resp.status().is_server_error() => (Outcome::ServerError, resp),
        Ok(resp) => (Outcome::Ok, resp),
        Err(failure) => (Outcome::TransportFailure, failure.into_response(colour)),
    };
    if !choice.pinned {
        shared
            .stats
            .colour(colour)
            .record(outcome, started.elapsed());
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
    Ok(resp)
}

fn prepare_request(req: &mut Request<Incoming>, conn: &ConnInfo, upgrade: bool) {
    // HTTP/2 clients may split `Cookie` into several fields; HTTP/1.1 allows
    // one, so join them with "; " (RFC 9113 §8.2.3).
    if req.version() == Version::HTTP_2 {
        join_cookies(req.headers_mut());
    }
    // HTTP/2 clients carry the host in the URI; HTTP/1.1 upstreams need `Host`.
    if !req.headers().contains_key(header::HOST) {
        if let Some(auth) = req.uri().authority() {
            if let Ok(v) = HeaderValue::from_str(auth.as_str()) {
                req.headers_mut().insert(header::HOST, v);
            }
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
    strip_hop_by_hop(req.headers_mut(), upgrade);
    add_forwarded(req.headers_mut(), &conn.forwarded_for, &conn.proto);
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

/// Why a request got no upstream response.
pub(crate) enum Failure {
    NoUpstream,
    Connect(String),
    Send(String),
    Timeout,
}

impl Failure {
    fn into_response(self, colour: Colour) -> Response<ProxyBody> {
        let (status, msg) = match self {
            Failure::NoUpstream => (
                StatusCode::BAD_GATEWAY,
                format!("switchyard: the {colour} pool has no upstream to try\n"),
            ),
            Failure::Connect(e) => (
                StatusCode::BAD_GATEWAY,
                format!("switchyard: no {colour} upstream could be reached: {e}\n"),
            ),
            Failure::Send(e) => (
                StatusCode::BAD_GATEWAY,
                format!("switchyard: the {colour} upstream failed: {e}\n"),
            ),
            Failure::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                format!("switchyard: the {colour} upstream did not answer in time\n"),
            ),
        };
        let mut resp = Response::new(ProxyBody::full(Bytes::from(msg)));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }
}

async fn forward(
    routing: &Routing,
    colour: Colour,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Failure> {
    let pool = &routing.pools[colour.index()];
    let mut req = req.map(RequestBody::Client);
    let mut avoid: Option<Arc<Upstream>> = None;
    let mut attempts_left = routing.settings.retries + 1;
    let mut stale_retries = 0;
    let mut last_connect_error = None;
    loop {
        attempts_left -= 1;
        let up = match pool.pick(avoid.as_ref()) {
            Some(up) => up.clone(),
            // Only the upstream that just failed is left: report its error.
            None => return Err(last_connect_error.map_or(Failure::NoUpstream, Failure::Connect)),
        };
        let Checkout { mut tx, reused } = match up
            .checkout(routing.settings.connect_timeout, routing.settings.ejection)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                // Nothing was sent: any method may go to another upstream.
                tracing::debug!(upstream = %up.name, error = %e, "connect failed");
                if attempts_left == 0 {
                    return Err(Failure::Connect(e.to_string()));
                }
                last_connect_error = Some(e.to_string());
                avoid = Some(up);
                continue;
            }
        };
        // An upstream may close an idle keep-alive connection just as a
        // request is written to it. A bodiless idempotent request that got
        // no answer on a reused connection is then sent again, as nginx does.
        let replay = (reused
            && stale_retries < 3
            && is_idempotent(req.method())
            && req.body().is_end_stream())
        .then(|| bodiless_copy(&req));
        up.begin();
        let sent =
            tokio::time::timeout(routing.settings.upstream_timeout, tx.try_send_request(req)).await;
        up.end();
        match sent {
            Err(_) => return Err(Failure::Timeout),
            Ok(Ok(resp)) => {
                // An answer readmits an upstream ejected for connect failures.
                up.connect_succeeded();
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers, false);
                let body = ProxyBody::upstream(body, Some((tx, up)));
                return Ok(Response::from_parts(parts, body));
            }
            Ok(Err(mut e)) => {
                // The request never left (the connection was found closed):
                // safe to send again, whatever the method.
                if let Some(back) = e.take_message().filter(|_| stale_retries < 3) {
                    req = back;
                } else if let Some(copy) = replay {
                    // Any error here came before a response head: the
                    // request went unanswered, and repeating it is harmless.
                    req = copy;
                } else {
                    return Err(Failure::Send(e.into_error().to_string()));
                }
                tracing::debug!(upstream = %up.name, "resending on a fresh connection after a stale keep-alive one");
                stale_retries += 1;
                attempts_left += 1;
                avoid = None;
            }
        }
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn bodiless_copy(req: &Request<RequestBody>) -> Request<RequestBody> {
    let mut copy = Request::new(RequestBody::Empty);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// Forwards an `Upgrade` request (WebSocket) on a dedicated connection and,
/// on `101 Switching Protocols`, splices the two upgraded streams together.
async fn forward_upgrade(
    routing: &Routing,
    colour: Colour,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Failure> {
    let pool = &routing.pools[colour.index()];
    let up = pool.pick(None).ok_or(Failure::NoUpstream)?.clone();
    let stream = connect_tcp(up.addr, routing.settings.connect_timeout)
        .await
        .map_err(|e| Failure::Connect(e.to_string()))?;
    let (mut tx, conn) = http1::handshake::<_, Incoming>(TokioIo::new(stream))
        .await
        .map_err(|e| Failure::Connect(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let client_upgrade = hyper::upgrade::on(&mut req);
    let mut resp = tokio::time::timeout(routing.settings.upstream_timeout, tx.send_request(req))
        .await
        .map_err(|_| Failure::Timeout)?
        .map_err(|e| Failure::Send(e.to_string()))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        return Ok(Response::from_parts(parts, ProxyBody::upstream(body, None)));
    }
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
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
