//! The admin API's listener, with the protections of the proxy's: a listen
//! backlog, a cap on connections served at once (`[admin] max_connections`;
//! past it new connections wait in the backlog) and the header and idle
//! timeouts of `[proxy]`.

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use axum::serve::IncomingStream;
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::Arc;
use switchyard_config::Config;
use switchyard_proxy::conn::{self, AcceptBackoff, ActiveGuard, Activity, TimedIo, Timeouts};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::AdminError;

/// The bound admin listener, ready for [`crate::ControlPlane::serve`].
pub struct AdminListener {
    listener: TcpListener,
    timeouts: Timeouts,
    slots: Arc<Semaphore>,
    max_connections: u32,
    backoff: AcceptBackoff,
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
    (!addr.ip().is_loopback()).then(|| {
        format!(
            "[admin] listen = \"{addr}\" is not a loopback address and the admin API has no TLS: its bearer token crosses the network in clear text; listen on 127.0.0.1 and reach it through an SSH tunnel or a TLS-terminating proxy"
        )
    })
}

/// Binds the admin listener of `[admin]`. Called by `switchyard run` before
/// serving.
pub async fn bind(config: &Config) -> Result<AdminListener, AdminError> {
    let addr = config.admin.listen;
    let listener = conn::bind_tcp(addr, config.proxy.backlog)
        .map_err(|source| AdminError::Bind { addr, source })?;
    Ok(listen_on(config, listener))
}

/// As [`bind`], but serves on `listener`, a listening socket bound
/// elsewhere (handed over by a predecessor process, or by systemd).
pub async fn adopt(
    config: &Config,
    listener: std::net::TcpListener,
) -> Result<AdminListener, AdminError> {
    let addr = config.admin.listen;
    let listener = conn::adopt_tcp(listener, config.proxy.backlog)
        .map_err(|source| AdminError::Bind { addr, source })?;
    Ok(listen_on(config, listener))
}

fn listen_on(config: &Config, listener: TcpListener) -> AdminListener {
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
    }
}

impl AdminListener {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A duplicate of the listening socket, to hand to a successor process.
    pub fn try_clone_socket(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        self.listener.as_fd().try_clone_to_owned()
    }
}

impl axum::serve::Listener for AdminListener {
    type Io = TimedIo<TcpStream, AdminConn>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let slot = match self.slots.clone().try_acquire_owned() {
                Ok(s) => s,
                Err(_) => {
                    if self.backoff.should_log() {
                        tracing::warn!(
                            max_connections = self.max_connections,
                            "admin.max_connections reached: new admin connections wait in the listen backlog"
                        );
                    }
                    self.slots
                        .clone()
                        .acquire_owned()
                        .await
                        .expect("the semaphore is never closed")
                }
            };
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    self.backoff.reset();
                    let _ = stream.set_nodelay(true);
                    let owner = Arc::new(AdminConn {
                        activity: Activity::default(),
                        _slot: slot,
                    });
                    return (TimedIo::new(stream, owner, self.timeouts), peer);
                }
                Err(e) => {
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
