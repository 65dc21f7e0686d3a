//! Client-facing listeners: plain HTTP (HTTP/1.1 and cleartext HTTP/2) and
//! HTTPS through rustls (ALPN h2 and http/1.1), with graceful draining, a
//! listen backlog, a cap on connections served at once (`max_connections`:
//! past it new connections wait in the backlog) and header and idle
//! timeouts ([`crate::conn`]).
//!
//! An HTTP/1 keep-alive connection idle for [`PARK_AFTER`] is parked: the
//! HTTP library's state and buffers are dropped and it waits in its task
//! holding no buffer ([`crate::conn::TimedIo::park`]); a plain connection
//! still idle at [`LOT_AFTER`] moves to the listener's parking lot as a bare
//! socket, with no task at all ([`crate::park`]).
//!
//! The listening sockets can come from elsewhere ([`bind_inheriting`]): a
//! predecessor process handing over on upgrade, or systemd. [`Stop`] says
//! how serving ends: a drain (SIGTERM), or a hand-over to a successor that
//! now accepts on the same sockets, where idle keep-alive clients are asked
//! to reconnect (`Connection: close` on their next response) before the
//! drain closes what is left.

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use switchyard_config::{ProxyConfig, TlsConfig};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::certs::ServedCert;

use crate::conn::{self, AcceptBackoff, ReadReady, Slot, TimedIo, Timeouts};
use crate::forward::{self, ConnInfo};
use crate::park::{Parked, ParkingLot};
use crate::{DataPlane, ProxyError, Shared};

/// How long an HTTP/1 keep-alive connection stays in the HTTP library
/// between requests before it is parked (its buffers freed). Busy clients
/// never wait that long between requests, so parking costs them nothing.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// How long a plain HTTP/1 keep-alive connection stays idle, parked in its
/// task, before it moves to the parking lot ([`crate::park`]) as a bare
/// socket. Parking in the task costs no system call; the lot costs four
/// `epoll_ctl`s a round trip but a twentieth of the memory, so it is for
/// clients that stay away for longer.
pub const LOT_AFTER: Duration = Duration::from_secs(3);

/// How serving ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Stop accepting, close idle connections, let requests in flight
    /// finish for up to the drain timeout (SIGTERM).
    Drain,
    /// A successor accepts on the same sockets now. Stop accepting; for
    /// `grace`, keep idle keep-alive connections open and answer the next
    /// request on each with `Connection: close` (so its client reconnects,
    /// to the successor); then as [`Stop::Drain`].
    HandOver {
        /// How long idle clients get to send their next request here.
        grace: Duration,
    },
}

/// Listening sockets to serve on instead of binding new ones (a
/// predecessor's, or systemd's). They must be bound and listening TCP
/// sockets; the listen backlog is set again from the config.
#[derive(Debug, Default)]
pub struct Inherited {
    /// For `proxy.listen`.
    pub http: Option<std::net::TcpListener>,
    /// For `proxy.tls.listen`.
    pub tls: Option<std::net::TcpListener>,
}

/// The bound client listeners, ready to serve.
pub struct Listeners {
    http: TcpListener,
    tls: Option<(TcpListener, TlsAcceptor)>,
    /// The TLS listener's certificate, replaced on reload.
    cert: Option<Arc<ServedCert>>,
    limits: Limits,
}

/// What a listener enforces per connection; fixed when it is bound.
#[derive(Debug, Clone, Copy)]
struct Limits {
    timeouts: Timeouts,
    max_header_size: usize,
    max_connections: usize,
}

/// Binds `proxy.listen` and, when configured, `proxy.tls.listen`. Fails
/// before serving anything if a port is taken or a certificate is unusable.
pub async fn bind(cfg: &ProxyConfig) -> Result<Listeners, ProxyError> {
    bind_inheriting(cfg, Inherited::default()).await
}

/// As [`bind`], but serves on the sockets of `inherited` where given.
pub async fn bind_inheriting(
    cfg: &ProxyConfig,
    inherited: Inherited,
) -> Result<Listeners, ProxyError> {
    let http = match inherited.http {
        Some(l) => adopt_one(l, cfg.listen, cfg.backlog)?,
        None => bind_one(cfg.listen, cfg.backlog)?,
    };
    let (tls, cert) = match &cfg.tls {
        Some(t) => {
            let listener = match inherited.tls {
                Some(l) => adopt_one(l, t.listen, cfg.backlog)?,
                None => bind_one(t.listen, cfg.backlog)?,
            };
            let (acceptor, cert) = tls_acceptor(t)?;
            (Some((listener, acceptor)), Some(cert))
        }
        None => (None, None),
    };
    Ok(Listeners {
        http,
        tls,
        cert,
        limits: Limits {
            timeouts: Timeouts {
                header: cfg.header_timeout,
                idle: cfg.idle_timeout,
            },
            max_header_size: cfg.max_header_size,
            max_connections: cfg.max_connections as usize,
        },
    })
}

fn bind_one(addr: SocketAddr, backlog: u32) -> Result<TcpListener, ProxyError> {
    conn::bind_tcp(addr, backlog).map_err(|source| ProxyError::Bind { addr, source })
}

fn adopt_one(
    l: std::net::TcpListener,
    addr: SocketAddr,
    backlog: u32,
) -> Result<TcpListener, ProxyError> {
    conn::adopt_tcp(l, backlog).map_err(|source| ProxyError::Bind { addr, source })
}

/// Loads the certificate chain and key of `[proxy.tls]` into a rustls
/// acceptor; the [`ServedCert`] replaces them on reload.
pub fn tls_acceptor(t: &TlsConfig) -> Result<(TlsAcceptor, Arc<ServedCert>), ProxyError> {
    tls_acceptor_for(&t.cert, &t.key, &[b"h2", b"http/1.1"])
}

/// A rustls acceptor for the PEM certificate chain at `cert` and the key at
/// `key`, offering `alpn`, and the handle that replaces them on reload. Also
/// used by the admin listener (`[admin] tls`).
pub fn tls_acceptor_for(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> Result<(TlsAcceptor, Arc<ServedCert>), ProxyError> {
    let served = ServedCert::load(cert, key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(served.provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("certificate", cert, e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(served.clone());
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok((TlsAcceptor::from(Arc::new(config)), served))
}

pub(crate) fn tls_err(what: &'static str, path: &Path, reason: String) -> ProxyError {
    ProxyError::Tls {
        what,
        path: path.to_path_buf(),
        reason,
    }
}

pub(crate) fn load_certs(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ProxyError> {
    let file =
        std::fs::File::open(path).map_err(|e| tls_err("certificate", path, e.to_string()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut std::io::BufReader::new(file))
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err("certificate", path, format!("is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(tls_err(
            "certificate",
            path,
            "holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(certs)
}

pub(crate) fn load_key(
    path: &Path,
) -> Result<rustls::pki_types::PrivateKeyDer<'static>, ProxyError> {
    let file = std::fs::File::open(path).map_err(|e| tls_err("key", path, e.to_string()))?;
    rustls_pemfile::private_key(&mut std::io::BufReader::new(file))
        .map_err(|e| tls_err("key", path, format!("is not valid PEM: {e}")))?
        .ok_or_else(|| tls_err("key", path, "holds no PEM private key".into()))
}

impl Listeners {
    /// The TLS listener's certificate, to replace on reload.
    pub fn tls_cert(&self) -> Option<Arc<ServedCert>> {
        self.cert.clone()
    }

    /// The plain HTTP address actually bound (useful with port 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The HTTPS address actually bound, when TLS is configured.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls
            .as_ref()
            .map(|(l, _)| l.local_addr().expect("bound listener has an address"))
    }

    /// Duplicates of the listening sockets (`"proxy"`, and `"tls"` when
    /// configured), to hand to a successor process.
    pub fn try_clone_sockets(&self) -> std::io::Result<Vec<(&'static str, OwnedFd)>> {
        let mut out = vec![("proxy", self.http.as_fd().try_clone_to_owned()?)];
        if let Some((l, _)) = &self.tls {
            out.push(("tls", l.as_fd().try_clone_to_owned()?));
        }
        Ok(out)
    }

    /// Serves clients until `shutdown` completes, then stops accepting and
    /// lets in-flight requests finish for up to `drain`.
    pub async fn serve(self, dp: DataPlane, shutdown: impl Future<Output = ()>, drain: Duration) {
        self.serve_until(
            dp,
            async {
                shutdown.await;
                Stop::Drain
            },
            drain,
        )
        .await
    }

    /// Serves clients until `shutdown` completes, then stops as it says,
    /// within `drain` in all.
    pub async fn serve_until(
        self,
        dp: DataPlane,
        shutdown: impl Future<Output = Stop>,
        drain: Duration,
    ) {
        let limits = self.limits;
        let mut h1 = http1::Builder::new();
        h1.keep_alive(true)
            .writev(false)
            .timer(TokioTimer::new())
            // The connection enforces header_timeout and idle_timeout
            // itself (hyper's would also cut idle keep-alive connections).
            .header_read_timeout(None)
            // A request head that does not fit the read buffer is answered
            // 431; bodies stream through it in pieces of at most this size.
            .max_buf_size(limits.max_header_size.max(8192));
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX));
        let builders = Arc::new(Builders { h1, h2 });
        let (stop_tx, stop_rx) = watch::channel(false);
        let (closing_tx, closing_rx) = watch::channel(false);
        // Idle plain HTTP/1 connections wait here as bare sockets.
        dp.shared.conns.set_limit(limits.max_connections);
        let lot = match ParkingLot::new(dp.shared.conns.clone()) {
            Ok(lot) => Some(lot),
            Err(e) => {
                tracing::warn!(error = %e, "no parking lot for idle connections: they stay in their tasks");
                None
            }
        };
        let watch_lot = {
            let (lot, closing) = (lot.clone(), closing_rx.clone());
            let resume = {
                let (builders, shared) = (builders.clone(), dp.shared.clone());
                let (closing, lot, timeouts) = (closing_rx.clone(), lot.clone(), limits.timeouts);
                move |p: Parked| {
                    let stream = match tokio::net::TcpStream::from_std(p.stream) {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::debug!(peer = %p.peer, error = %e, "could not resume a parked connection");
                            return;
                        }
                    };
                    let info = Arc::new(ConnInfo::new(p.peer, false));
                    let io = TimedIo::resumed(stream, info, timeouts, p.idle_deadline, PARK_AFTER);
                    let conn = serve_conn(
                        builders.clone(),
                        io,
                        shared.clone(),
                        closing.clone(),
                        p.slot,
                        lot.clone(),
                    );
                    tokio::spawn(conn);
                }
            };
            async move {
                if let Some(lot) = lot {
                    lot.run(closing, resume).await;
                }
            }
        };
        // One cap for plain and TLS connections together; the permits
        // handed out are also the count of open connections.
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let ctx = AcceptCtx {
            dp: &dp,
            builders: &builders,
            closing: &closing_rx,
            slots: &slots,
            lot: &lot,
            limits,
        };
        let http = accept_loop(self.http, None, &ctx, stop_rx.clone());
        let tls = async {
            if let Some((listener, acceptor)) = self.tls {
                accept_loop(listener, Some(acceptor), &ctx, stop_rx.clone()).await
            }
        };
        let serving = async {
            let mut how = Stop::Drain;
            let stopper = async {
                how = shutdown.await;
                let _ = stop_tx.send(true);
            };
            tokio::join!(http, tls, stopper);
            let open = |slots: &Semaphore| limits.max_connections - slots.available_permits();
            let all_closed = || async {
                let n = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
                let _ = slots.acquire_many(n).await;
            };
            let deadline = tokio::time::Instant::now() + drain;
            if let Stop::HandOver { grace } = how {
                tracing::info!(
                    connections = open(&slots),
                    ?grace,
                    "handed over: asking keep-alive clients to reconnect"
                );
                dp.shared.draining.store(true, Ordering::Relaxed);
                let until = (tokio::time::Instant::now() + grace).min(deadline);
                let _ = tokio::time::timeout_at(until, all_closed()).await;
            }
            tracing::info!(connections = open(&slots), "draining in-flight requests");
            let _ = closing_tx.send(true);
            if tokio::time::timeout_at(deadline, all_closed())
                .await
                .is_err()
            {
                tracing::warn!(
                    ?drain,
                    connections = open(&slots),
                    "drain timeout passed; closing remaining connections"
                );
            }
        };
        // The lot is watched by a task of its own until `closing` (or until
        // its sender is dropped), which closes what is parked; as a branch
        // of this future, every wake-up of the lot would poll the accept
        // loops and whatever awaits this too.
        let watching = tokio::spawn(watch_lot);
        serving.await;
        let _ = watching.await;
    }
}

/// The HTTP/1 and HTTP/2 connection settings of a listener.
struct Builders {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

struct AcceptCtx<'a> {
    dp: &'a DataPlane,
    builders: &'a Arc<Builders>,
    closing: &'a watch::Receiver<bool>,
    slots: &'a Arc<Semaphore>,
    lot: &'a Option<Arc<ParkingLot>>,
    limits: Limits,
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    ctx: &AcceptCtx<'_>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = AcceptBackoff::new(if tls.is_some() { "https" } else { "http" });
    loop {
        // A slot first: at max_connections, new connections wait in the
        // kernel's backlog instead of being accepted and starved.
        let slot = match ctx.slots.clone().try_acquire_owned() {
            Ok(s) => s,
            Err(_) => {
                if backoff.should_log() {
                    tracing::warn!(
                        max_connections = ctx.limits.max_connections,
                        "proxy.max_connections reached: new connections wait in the listen backlog"
                    );
                }
                tokio::select! {
                    s = ctx.slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
                    _ = stop.changed() => return,
                }
            }
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => {
                backoff.reset();
                x
            }
            Err(e) => {
                drop(slot);
                backoff.failed(&e).await;
                continue;
            }
        };
        let slot = Slot::new(slot, ctx.dp.shared.conns.clone());
        let _ = stream.set_nodelay(true);
        let info = Arc::new(ConnInfo::new(peer, tls.is_some()));
        let builders = ctx.builders.clone();
        let shared = ctx.dp.shared.clone();
        let closing = ctx.closing.clone();
        let tls = tls.clone();
        let timeouts = ctx.limits.timeouts;
        // Plain and TLS connections are separate tasks: a task is as large
        // as the largest state it can be in, and a plain connection's must
        // not carry a TLS handshake's.
        match tls {
            None => {
                let io = TimedIo::new(stream, info, timeouts);
                tokio::spawn(serve_conn(
                    builders,
                    io,
                    shared,
                    closing,
                    slot,
                    ctx.lot.clone(),
                ));
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    // A client that never finishes its handshake must not
                    // hold a connection forever.
                    let handshake = Box::pin(acceptor.accept(stream));
                    let tls_stream = match tokio::time::timeout(timeouts.header, handshake).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    // The connection gets a task of its own, as small as a
                    // plain one's: this one ends with the handshake's state.
                    let io = TimedIo::new(tls_stream, info, timeouts);
                    tokio::spawn(serve_conn(builders, io, shared, closing, slot, None));
                });
            }
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves one client connection: HTTP/2 when it opens with the preface,
/// HTTP/1 otherwise, parked between requests when idle. Ends when the
/// client or a timeout closes it, or at `closing` (gracefully: a request
/// in flight is answered first); `slot` (its place under
/// `max_connections`) is released then.
///
/// The future is the connection task's whole state, kept for as long as
/// the client stays, so it is kept small: every state on the way to
/// parking is boxed (an allocation only while in it), and the arguments
/// are used in place by an `async move` block (an `async fn` would keep a
/// second copy of `io` beside its parameter: 696 bytes against 488 in
/// the test below).
#[allow(clippy::manual_async_fn)]
fn serve_conn<I>(
    builders: Arc<Builders>,
    mut io: TimedIo<I, ConnInfo>,
    shared: Arc<Shared>,
    mut closing: watch::Receiver<bool>,
    slot: Slot,
    lot: Option<Arc<ParkingLot>>,
) -> impl Future<Output = ()> + Send + 'static
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + ReadReady + Unpin + Send + Sync + 'static,
{
    async move {
        let _slot = &slot;
        let owner = io.owner().clone();
        let info = owner.clone();
        let svc = move || {
            let (shared, info) = (shared.clone(), info.clone());
            service_fn(move |req| forward::handle(shared.clone(), info.clone(), req))
        };
        let ended: Result<(), BoxError> = 'serve: {
            // Back from the parking lot: HTTP/1, its next request waiting.
            let sniffed = if io.is_h1() {
                Ok(Some(false))
            } else {
                Box::pin(async {
                    tokio::select! {
                        r = io.sniff_h2() => r.map_err(BoxError::from),
                        _ = closing.wait_for(|c| *c) => Ok(None),
                    }
                })
                .await
            };
            let h2 = match sniffed {
                Ok(Some(h2)) => h2,
                Ok(None) => break 'serve Ok(()),
                Err(e) => break 'serve Err(e),
            };
            if h2 {
                break 'serve Box::pin(async move {
                    let mut conn = Box::pin(builders.h2.serve_connection(TokioIo::new(io), svc()));
                    tokio::select! {
                        r = conn.as_mut() => return r.map_err(Into::into),
                        _ = closing.wait_for(|c| *c) => conn.as_mut().graceful_shutdown(),
                    }
                    conn.await.map_err(Into::into)
                })
                .await;
            }
            io.park_after(PARK_AFTER);
            loop {
                // Served in a boxed future: what serving needs (hyper's
                // connection, its parts) is freed before the connection parks.
                let idle = {
                    let served = Box::pin(serve_h1(&builders, io, &svc, &mut closing)).await;
                    let (next, read_buf) = match served {
                        Ok(Some(x)) => x,
                        Ok(None) => break 'serve Ok(()),
                        Err(e) => break 'serve Err(e),
                    };
                    io = next;
                    if !io.take_parked() {
                        break 'serve Ok(());
                    }
                    // What the library had read beyond the last request is
                    // read again; otherwise the connection waits for the
                    // client holding no buffer (an empty `read_buf` may still
                    // own the library's whole read buffer, so it goes first).
                    if !read_buf.is_empty() {
                        io.unread(bytes::Bytes::copy_from_slice(&read_buf));
                    }
                    read_buf.is_empty()
                };
                if idle {
                    // Parked in the task first (no system call to park or
                    // wake it, for clients that pause a few seconds between
                    // requests); a plain connection still idle at LOT_AFTER
                    // goes to the lot as a bare socket and this task ends.
                    let until = (lot.is_some() && <I as ReadReady>::BARE)
                        .then(|| tokio::time::Instant::now() + (LOT_AFTER - PARK_AFTER));
                    tracing::trace!(peer = %io.owner().peer, "idle keep-alive connection parked");
                    slot.conns().parked(1);
                    let woke = io.park(&mut closing, until).await;
                    slot.conns().unparked(1);
                    match woke {
                        conn::Woke::Ready => continue,
                        conn::Woke::Closed => break 'serve Ok(()),
                        conn::Woke::StillIdle => {}
                    }
                    let Some(lot) = &lot else { continue };
                    let peer = io.owner().peer;
                    match io.into_idle_socket() {
                        Ok(Ok((stream, idle_deadline))) => {
                            tracing::trace!(%peer, "idle keep-alive connection parked in the lot");
                            lot.park(Parked {
                                stream,
                                peer,
                                slot,
                                idle_deadline,
                            });
                            break 'serve Ok(());
                        }
                        Ok(Err(e)) => break 'serve Err(e.into()),
                        // Not reducible after all: served again, and parked
                        // in the task once idle.
                        Err(back) => io = back,
                    }
                }
            }
        };
        if let Err(e) = ended {
            tracing::debug!(peer = %owner.peer, error = %e, "client connection ended with an error");
        }
    }
}

/// Serves HTTP/1 requests on `io` until the connection ends, is upgraded
/// (`None`: a tunnel owns the socket now), or is handed back for parking
/// (its I/O and what the library had read beyond the last request).
async fn serve_h1<I, S, F>(
    builders: &Builders,
    io: TimedIo<I, ConnInfo>,
    svc: &F,
    closing: &mut watch::Receiver<bool>,
) -> Result<Option<(TimedIo<I, ConnInfo>, bytes::Bytes)>, BoxError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + ReadReady + Unpin + Send + 'static,
    F: Fn() -> S,
    S: hyper::service::HttpService<hyper::body::Incoming> + 'static,
    S::Error: Into<BoxError>,
    S::Future: 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<BoxError>,
    <S::ResBody as hyper::body::Body>::Data: Send,
{
    let mut conn = builders
        .h1
        .serve_connection(TokioIo::new(io), svc())
        .with_upgrades();
    let done = tokio::select! {
        r = &mut conn => Some(r),
        _ = closing.wait_for(|c| *c) => None,
    };
    if done.is_none() {
        Pin::new(&mut conn).graceful_shutdown();
    }
    match done {
        Some(r) => r?,
        None => (&mut conn).await?,
    }
    Ok(conn.into_parts().map(|p| (p.io.into_inner(), p.read_buf)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A blocking backend on threads of its own (no tasks in the test's
    /// runtime): answers every request on a keep-alive connection with
    /// `ok`.
    fn backend() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if s.write_all(answer).is_err() {
                                return;
                            }
                        }
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        addr
    }

    /// One GET on a keep-alive client connection: its status line and body.
    async fn get(s: &mut tokio::net::TcpStream) -> std::io::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await?;
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            got.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some(head_end) = text.find("\r\n\r\n") {
                if text.len() >= head_end + 4 + 2 {
                    let status = text.lines().next().unwrap_or("").to_string();
                    return Ok(format!("{status} {}", &text[head_end + 4..]));
                }
            }
        }
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("not within 10 s: {what}");
    }

    /// A listener on `idle_timeout` in front of [`backend`], serving
    /// until the sender is used (then drains, for up to 600 s).
    async fn listener(
        idle_timeout: &str,
        max_connections: u32,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let upstream = backend();
        let config = switchyard_config::Config::parse(
            &format!(
                "[proxy]\nlisten = \"127.0.0.1:0\"\nmax_connections = {max_connections}\nidle_timeout = \"{idle_timeout}\"\n\
                 [pools.blue]\nupstreams = [\"{upstream}\"]\n[pools.green]\nupstreams = [\"{upstream}\"]\n\
                 [admin]\ntoken = \"t\"\n"
            ),
            "test.toml",
        )
        .unwrap();
        let dp = DataPlane::new(&config, 0).unwrap();
        let listeners = bind(&config.proxy).await.unwrap();
        let addr = listeners.http_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(listeners.serve_until(
            dp,
            async {
                let _ = stopped.await;
                Stop::Drain
            },
            Duration::from_secs(600),
        ));
        (addr, stop, served)
    }

    fn tasks() -> usize {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    }

    /// Issue 11, memory: an idle plain keep-alive connection waits in the
    /// parking lot as a bare socket, with no task of its own, and is served
    /// again when its client sends; a client that closes while parked gives
    /// its slot under `max_connections` back at once (not at its idle
    /// timeout, a minute away); the drain closes parked connections and
    /// ends without waiting for its timeout.
    #[tokio::test]
    async fn idle_connections_wait_in_the_lot_with_no_task_and_come_back() {
        let (addr, stop, served) = listener("60s", 5).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = tasks();

        let mut clients = Vec::new();
        for _ in 0..5 {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            assert_eq!(get(&mut c).await.unwrap(), "HTTP/1.1 200 OK ok");
            clients.push(c);
        }
        assert!(tasks() >= before + 5, "each served connection has a task");
        // Parked after a second idle: their tasks end.
        until("the five idle connections hold no task", || {
            tasks() <= before
        })
        .await;

        // Each comes back for its next request, and parks again.
        for c in &mut clients {
            assert_eq!(get(c).await.unwrap(), "HTTP/1.1 200 OK ok");
        }
        until("parked again", || tasks() <= before).await;

        // All five slots are held by parked connections. One client closes:
        // the lot closes its side and the slot goes to a newcomer.
        drop(clients.pop());
        let mut newcomer = tokio::net::TcpStream::connect(addr).await.unwrap();
        let answered = tokio::time::timeout(Duration::from_secs(30), get(&mut newcomer)).await;
        assert_eq!(
            answered
                .expect("the closed client's slot was given back")
                .unwrap(),
            "HTTP/1.1 200 OK ok"
        );

        // The newcomer parks; the drain closes every parked connection and
        // ends at once, not after its 600 s.
        until("the newcomer parked", || tasks() <= before).await;
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(30), served)
            .await
            .expect("the drain ended once the parked connections were closed")
            .unwrap();
        use tokio::io::AsyncReadExt;
        let mut one = [0u8; 1];
        assert_eq!(newcomer.read(&mut one).await.unwrap(), 0);
        for c in &mut clients {
            assert_eq!(c.read(&mut one).await.unwrap(), 0);
        }
    }

    /// A parked connection left alone past `idle_timeout` is closed by the
    /// lot, as one waiting in its task would be (the timeout is past
    /// `LOT_AFTER`, so the connection is in the lot by then).
    #[tokio::test]
    async fn a_parked_connection_is_closed_at_its_idle_timeout() {
        assert!(LOT_AFTER < Duration::from_secs(5));
        let (addr, _stop, _served) = listener("5s", 10).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = tasks();
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert_eq!(get(&mut c).await.unwrap(), "HTTP/1.1 200 OK ok");
        until("parked", || tasks() <= before).await;
        use tokio::io::AsyncReadExt;
        let mut one = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(60), c.read(&mut one)).await;
        assert_eq!(closed.expect("closed at its idle timeout").unwrap(), 0);
    }

    #[tokio::test]
    async fn a_connection_task_holds_little_more_than_its_socket_state() {
        let config = switchyard_config::Config::parse(
            "[pools.blue]\nupstreams = [\"127.0.0.1:1\"]\n[pools.green]\nupstreams = [\"127.0.0.1:2\"]\n[admin]\ntoken = \"t\"\n",
            "test.toml",
        )
        .unwrap();
        let dp = DataPlane::new(&config, 0).unwrap();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, peer) = l.accept().await.unwrap();
        let builders = Arc::new(Builders {
            h1: http1::Builder::new(),
            h2: http2::Builder::new(TokioExecutor::new()),
        });
        let (_tx, closing) = watch::channel(false);
        let timeouts = Timeouts {
            header: Duration::from_secs(1),
            idle: Duration::from_secs(1),
        };
        let io = TimedIo::new(stream, Arc::new(ConnInfo::new(peer, false)), timeouts);
        let io_size = std::mem::size_of_val(&io);
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let slot = Slot::new(permit, dp.shared.conns.clone());
        let lot = ParkingLot::new(dp.shared.conns.clone()).ok();
        let task = serve_conn(builders, io, dp.shared.clone(), closing, slot, lot);
        let size = std::mem::size_of_val(&task);
        // The connection's I/O state, the park future (which holds the
        // `closing` watch's wait and the idle deadline), and a few handles.
        assert!(
            size <= io_size + 512,
            "a connection task is {size} bytes, its I/O state {io_size}"
        );
    }
}
