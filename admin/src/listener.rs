//! The admin API's listener, with the protections of the proxy's: a listen
//! backlog, a cap on connections served at once (`[admin] max_connections`;
//! past it new connections wait in the backlog) and the header and idle
//! timeouts of `[proxy]`; HTTPS with `[admin] tls`, each handshake in its
//! own task (bounded by the header timeout) so a slow client never stalls
//! the accept loop.

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use axum::serve::IncomingStream;
use http_body_util::BodyExt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use switchyard_config::Config;
use switchyard_proxy::conn::{self, AcceptBackoff, ActiveGuard, Activity, TimedIo, Timeouts};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::AdminError;

/// The bound admin listener, ready for [`crate::ControlPlane::serve`].
pub struct AdminListener {
    listener: TcpListener,
    timeouts: Timeouts,
    slots: Arc<Semaphore>,
    max_connections: u32,
    backoff: AcceptBackoff,
    /// `[admin] tls`: connections are served once their handshake is done.
    tls: Option<TlsAcceptor>,
    /// Its certificate, replaced on reload.
    cert: Option<Arc<switchyard_proxy::ServedCert>>,
    handshakes: JoinSet<Option<(AdminStream, SocketAddr, OwnedSemaphorePermit)>>,
}

/// An admin connection's byte stream: plain, or TLS under `[admin] tls`.
pub enum AdminStream {
    /// Plain HTTP (loopback, or behind a TLS-terminating proxy).
    Plain(TcpStream),
    /// HTTPS, after a completed handshake.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for AdminStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AdminStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            AdminStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for AdminStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            AdminStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            AdminStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AdminStream::Plain(s) => Pin::new(s).poll_flush(cx),
            AdminStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AdminStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            AdminStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One admin connection: its requests in flight and its slot under
/// `max_connections`.
pub struct AdminConn {
    activity: Activity,
    _slot: OwnedSemaphorePermit,
}

impl AsRef<Activity> for AdminConn {
    fn as_ref(&self) -> &Activity {
        &self.activity
    }
}

/// The warning for an admin listener reachable from other machines without
/// TLS, if it is one: the token would cross the network in clear text.
pub fn exposure_warning(config: &Config) -> Option<String> {
    let addr = config.admin.listen;
    (!addr.ip().is_loopback() && config.admin.tls.is_none()).then(|| {
        format!(
            "[admin] listen = \"{addr}\" is not a loopback address and the admin API has no TLS: its bearer token crosses the network in clear text; set [admin] tls = {{ cert = \"...\", key = \"...\" }}, or listen on 127.0.0.1 and reach it through an SSH tunnel"
        )
    })
}

/// Binds the admin listener of `[admin]`. Called by `switchyard run` before
/// serving.
pub async fn bind(config: &Config) -> Result<AdminListener, AdminError> {
    let addr = config.admin.listen;
    let tls = acceptor(config)?;
    let listener = conn::bind_tcp(addr, config.proxy.backlog)
        .map_err(|source| AdminError::Bind { addr, source })?;
    Ok(listen_on(config, listener, tls))
}

/// The rustls acceptor of `[admin] tls`, if set, and the handle that
/// replaces its certificate on reload. Also what `switchyard check` runs to
/// prove the certificate and key load.
pub fn acceptor(
    config: &Config,
) -> Result<Option<(TlsAcceptor, Arc<switchyard_proxy::ServedCert>)>, AdminError> {
    config
        .admin
        .tls
        .as_ref()
        .map(|t| switchyard_proxy::tls_acceptor_for(&t.cert, &t.key, &[b"http/1.1"]))
        .transpose()
        .map_err(|e| match e {
            switchyard_proxy::ProxyError::Tls { what, path, reason } => {
                AdminError::Tls(format!("{what} {}: {reason}", path.display()))
            }
            other => AdminError::Tls(other.to_string()),
        })
}

/// As [`bind`], but serves on `listener`, a listening socket bound
/// elsewhere (handed over by a predecessor process, or by systemd).
pub async fn adopt(
    config: &Config,
    listener: std::net::TcpListener,
) -> Result<AdminListener, AdminError> {
    let addr = config.admin.listen;
    let tls = acceptor(config)?;
    let listener = conn::adopt_tcp(listener, config.proxy.backlog)
        .map_err(|source| AdminError::Bind { addr, source })?;
    Ok(listen_on(config, listener, tls))
}

fn listen_on(
    config: &Config,
    listener: TcpListener,
    tls: Option<(TlsAcceptor, Arc<switchyard_proxy::ServedCert>)>,
) -> AdminListener {
    let (tls, cert) = match tls {
        Some((a, c)) => (Some(a), Some(c)),
        None => (None, None),
    };
    if let Some(w) = exposure_warning(config) {
        tracing::warn!("{w}");
    }
    AdminListener {
        listener,
        timeouts: Timeouts {
            header: config.proxy.header_timeout,
            idle: config.proxy.idle_timeout,
        },
        slots: Arc::new(Semaphore::new(config.admin.max_connections as usize)),
        max_connections: config.admin.max_connections,
        backoff: AcceptBackoff::new("admin"),
        tls,
        cert,
        handshakes: JoinSet::new(),
    }
}

impl AdminListener {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The certificate of `[admin] tls`, to replace on reload.
    pub fn tls_cert(&self) -> Option<Arc<switchyard_proxy::ServedCert>> {
        self.cert.clone()
    }

    /// Whether the admin API is served over HTTPS (`[admin] tls`).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Waits for a free slot under `max_connections`, saying so once in a
    /// while when the cap is reached.
    async fn slot(
        slots: &Arc<Semaphore>,
        backoff: &mut AcceptBackoff,
        max_connections: u32,
    ) -> OwnedSemaphorePermit {
        match slots.clone().try_acquire_owned() {
            Ok(s) => s,
            Err(_) => {
                if backoff.should_log() {
                    tracing::warn!(
                        max_connections,
                        "admin.max_connections reached: new admin connections wait in the listen backlog"
                    );
                }
                slots
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed")
            }
        }
    }

    fn serve_io(
        &self,
        stream: AdminStream,
        slot: OwnedSemaphorePermit,
    ) -> TimedIo<AdminStream, AdminConn> {
        let owner = Arc::new(AdminConn {
            activity: Activity::default(),
            _slot: slot,
        });
        TimedIo::new(stream, owner, self.timeouts)
    }

    /// A duplicate of the listening socket, to hand to a successor process.
    pub fn try_clone_socket(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        self.listener.as_fd().try_clone_to_owned()
    }
}

impl axum::serve::Listener for AdminListener {
    type Io = TimedIo<AdminStream, AdminConn>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            enum Next {
                Handshaken(Option<(AdminStream, SocketAddr, OwnedSemaphorePermit)>),
                Accepted(OwnedSemaphorePermit, io::Result<(TcpStream, SocketAddr)>),
            }
            let next = {
                let (listener, slots, backoff, max) = (
                    &self.listener,
                    &self.slots,
                    &mut self.backoff,
                    self.max_connections,
                );
                let handshakes = &mut self.handshakes;
                let accept = async move {
                    let slot = Self::slot(slots, backoff, max).await;
                    (slot, listener.accept().await)
                };
                tokio::select! {
                    // Handshakes done first: they already hold a slot.
                    biased;
                    Some(done) = handshakes.join_next(), if !handshakes.is_empty() => {
                        Next::Handshaken(done.ok().flatten())
                    }
                    (slot, r) = accept => Next::Accepted(slot, r),
                }
            };
            let accepted = match next {
                Next::Handshaken(Some((stream, peer, slot))) => {
                    return (self.serve_io(stream, slot), peer)
                }
                Next::Handshaken(None) => continue,
                Next::Accepted(slot, r) => (slot, r),
            };
            match accepted {
                (slot, Ok((stream, peer))) => {
                    self.backoff.reset();
                    let _ = stream.set_nodelay(true);
                    let Some(tls) = self.tls.clone() else {
                        return (self.serve_io(AdminStream::Plain(stream), slot), peer);
                    };
                    let limit = self.timeouts.header;
                    self.handshakes.spawn(async move {
                        match tokio::time::timeout(limit, tls.accept(stream)).await {
                            Ok(Ok(s)) => Some((AdminStream::Tls(Box::new(s)), peer, slot)),
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "admin TLS handshake failed");
                                None
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "admin TLS handshake timed out");
                                None
                            }
                        }
                    });
                }
                (slot, Err(e)) => {
                    drop(slot);
                    self.backoff.failed(&e).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// The connection a request arrived on, for [`track_activity`].
#[derive(Clone)]
pub(crate) struct ConnActivity(Arc<AdminConn>);

impl Connected<IncomingStream<'_, AdminListener>> for ConnActivity {
    fn connect_info(stream: IncomingStream<'_, AdminListener>) -> Self {
        ConnActivity(stream.io().owner().clone())
    }
}

/// Marks the connection busy from a request's arrival until its response
/// body is done (an event stream stays busy while it is open), so the idle
/// timeout only counts time between requests.
pub(crate) fn track_activity(router: axum::Router) -> axum::Router {
    router.layer(axum::middleware::from_fn(
        |req: Request, next: Next| async move {
            let guard = req
                .extensions()
                .get::<ConnectInfo<ConnActivity>>()
                .map(|c| ActiveGuard::begin(c.0 .0.clone()));
            let resp: Response = next.run(req).await;
            match guard {
                None => resp,
                Some(guard) => resp.map(|b| {
                    axum::body::Body::new(b.map_frame(move |f| {
                        let _busy = &guard;
                        f
                    }))
                }),
            }
        },
    ))
}
