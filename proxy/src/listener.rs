//! Client-facing listeners: plain HTTP (HTTP/1.1 and cleartext HTTP/2) and
//! HTTPS through rustls (ALPN h2 and http/1.1), with graceful draining, a
//! listen backlog, a cap on connections served at once (`max_connections`:
//! past it new connections wait in the backlog) and header and idle
//! timeouts ([`crate::conn`]).

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use switchyard_config::{ProxyConfig, TlsConfig};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::conn::{self, AcceptBackoff, TimedIo, Timeouts};
use crate::forward::{self, ConnInfo};
use crate::{DataPlane, ProxyError};

/// The bound client listeners, ready to serve.
pub struct Listeners {
    http: TcpListener,
    tls: Option<(TcpListener, TlsAcceptor)>,
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
    let http = bind_one(cfg.listen, cfg.backlog)?;
    let tls = match &cfg.tls {
        Some(t) => Some((bind_one(t.listen, cfg.backlog)?, tls_acceptor(t)?)),
        None => None,
    };
    Ok(Listeners {
        http,
        tls,
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

/// Loads the certificate chain and key of `[proxy.tls]` into a rustls acceptor.
pub fn tls_acceptor(t: &TlsConfig) -> Result<TlsAcceptor, ProxyError> {
    let certs = load_certs(&t.cert)?;
    let key = load_key(&t.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("certificate", &t.cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls_err("key", &t.key, format!("does not fit the certificate: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn tls_err(what: &'static str, path: &Path, reason: String) -> ProxyError {
    ProxyError::Tls {
        what,
        path: path.to_path_buf(),
        reason,
    }
}

fn load_certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ProxyError> {
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

fn load_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, ProxyError> {
    let file = std::fs::File::open(path).map_err(|e| tls_err("key", path, e.to_string()))?;
    rustls_pemfile::private_key(&mut std::io::BufReader::new(file))
        .map_err(|e| tls_err("key", path, format!("is not valid PEM: {e}")))?
        .ok_or_else(|| tls_err("key", path, "holds no PEM private key".into()))
}

impl Listeners {
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

    /// Serves clients until `shutdown` completes, then stops accepting and
    /// lets in-flight requests finish for up to `drain`.
    pub async fn serve(self, dp: DataPlane, shutdown: impl Future<Output = ()>, drain: Duration) {
        let limits = self.limits;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .keep_alive(true)
            .writev(false)
            .timer(hyper_util::rt::TokioTimer::new())
            // The connection enforces header_timeout and idle_timeout
            // itself (hyper's would also cut idle keep-alive connections).
            .header_read_timeout(None)
            // A request head that does not fit the read buffer is answered
            // 431; bodies stream through it in pieces of at most this size.
            .max_buf_size(limits.max_header_size.max(8192));
        builder
            .http2()
            .timer(hyper_util::rt::TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX));
        let builder = Arc::new(builder);
        let graceful = GracefulShutdown::new();
        let (stop_tx, stop_rx) = watch::channel(false);
        // One cap for plain and TLS connections together.
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let ctx = AcceptCtx {
            dp: &dp,
            builder: &builder,
            graceful: &graceful,
            slots: &slots,
            limits,
        };
        let http = accept_loop(self.http, None, &ctx, stop_rx.clone());
        let tls = async {
            if let Some((listener, acceptor)) = self.tls {
                accept_loop(listener, Some(acceptor), &ctx, stop_rx.clone()).await
            }
        };
        let stopper = async {
            shutdown.await;
            let _ = stop_tx.send(true);
        };
        tokio::join!(http, tls, stopper);
        tracing::info!(
            connections = graceful.count(),
            "draining in-flight requests"
        );
        if tokio::time::timeout(drain, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                ?drain,
                "drain timeout passed; closing remaining connections"
            );
        }
    }
}

struct AcceptCtx<'a> {
    dp: &'a DataPlane,
    builder: &'a Arc<auto::Builder<TokioExecutor>>,
    graceful: &'a GracefulShutdown,
    slots: &'a Arc<Semaphore>,
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
        let _ = stream.set_nodelay(true);
        let info = Arc::new(ConnInfo::new(peer, tls.is_some()));
        let watcher = ctx.graceful.watcher();
        let builder = ctx.builder.clone();
        let shared = ctx.dp.shared.clone();
        let tls = tls.clone();
        let timeouts = ctx.limits.timeouts;
        tokio::spawn(async move {
            let _slot = slot;
            let svc = {
                let info = info.clone();
                service_fn(move |req| forward::handle(shared.clone(), info.clone(), req))
            };
            let result = match tls {
                None => {
                    serve_io(&builder, watcher, TimedIo::new(stream, info, timeouts), svc).await
                }
                Some(acceptor) => {
                    // A client that never finishes its handshake must not
                    // hold a connection forever.
                    match tokio::time::timeout(timeouts.header, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            let io = TimedIo::new(tls_stream, info, timeouts);
                            serve_io(&builder, watcher, io, svc).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "client connection ended with an error");
            }
        });
    }
}

async fn serve_io<I, S>(
    builder: &auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    io: I,
    svc: S,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<crate::ProxyBody>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .into_owned();
    watcher.watch(conn).await
}
