//! Opening connections to upstreams: TCP with `TCP_NODELAY`, TLS when the
//! pool has `tls` (rustls, the pool's CA file, SNI), then for `http1` the
//! socket goes to switchyard's own client ([`crate::h1`]), and for `h2c` and
//! `h2` hyper's HTTP/2 handshake gives a connection that carries many
//! requests at once. Upgrades (WebSocket) get a dedicated hyper HTTP/1.1
//! connection of their own.

use hyper::body::Body;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use switchyard_config::{UpstreamProtocol, UpstreamTls};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::pool::ConnectError;

/// How to reach one upstream: its protocol and, with TLS, the connector and
/// the name its certificate must carry.
pub(crate) struct Link {
    pub protocol: UpstreamProtocol,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Link {
    /// The link to `host` for a pool with `protocol` and, with TLS, the
    /// pool's `tls` settings and the connector made from them by
    /// [`tls_connector`] (once per pool, not per upstream).
    pub(crate) fn new(
        protocol: UpstreamProtocol,
        tls: Option<(&UpstreamTls, &TlsConnector)>,
        host: &str,
    ) -> Result<Link, String> {
        let Some((tls, connector)) = tls else {
            return Ok(Link {
                protocol,
                tls: None,
            });
        };
        let name = tls.server_name.as_deref().unwrap_or(host);
        let name = ServerName::try_from(name.to_string()).map_err(|e| {
            format!("tls.server_name {name:?} is not a DNS name or an IP address: {e}")
        })?;
        Ok(Link {
            protocol,
            tls: Some((connector.clone(), name)),
        })
    }

    /// Whether connections use TLS.
    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Opens a dedicated hyper HTTP/1.1 connection to `addr`, over TLS when
    /// the pool has it, whose task allows protocol upgrades (WebSocket): the
    /// request that may upgrade it goes on the returned sender. Health
    /// checks of `http1` pools use one too (closed after the check).
    pub(crate) async fn connect_upgradable<B>(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<http1::SendRequest<B>, ConnectError>
    where
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream = connect_tcp(addr, timeout).await?;
        let Some((connector, name)) = &self.tls else {
            return upgradable(stream, addr).await;
        };
        upgradable(
            tls_handshake(connector, name, stream, addr, timeout).await?,
            addr,
        )
        .await
    }

    /// Opens a connection to `addr` for switchyard's own HTTP/1.1 client
    /// ([`crate::h1`]), over TLS when the pool has it. `timeout` bounds the
    /// TCP connect and the TLS handshake.
    pub(crate) async fn connect_h1(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<crate::h1::Io, ConnectError> {
        let stream = connect_tcp(addr, timeout).await?;
        let Some((connector, name)) = &self.tls else {
            return Ok(crate::h1::Io::Tcp(stream));
        };
        let tls = tls_handshake(connector, name, stream, addr, timeout).await?;
        Ok(crate::h1::Io::Tls(Box::new(tls)))
    }

    /// Opens an HTTP/2 connection to `addr` (`protocol = "h2c"` or `"h2"`,
    /// the latter over TLS with ALPN `h2`); the connection's own task is
    /// spawned on the current runtime. `timeout` bounds the TCP connect and
    /// the TLS handshake.
    pub(crate) async fn connect_h2<B>(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<http2::SendRequest<B>, ConnectError>
    where
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream = connect_tcp(addr, timeout).await?;
        let Some((connector, name)) = &self.tls else {
            return handshake_h2(stream, addr).await;
        };
        let tls = tls_handshake(connector, name, stream, addr, timeout).await?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(ConnectError::Tls {
                addr,
                source: std::io::Error::other(
                    "the upstream did not agree to HTTP/2 (ALPN h2); use protocol = \"http1\" for it",
                ),
            });
        }
        handshake_h2(tls, addr).await
    }
}

/// The CA certificates of a pool's `tls.ca` file, read at start and on
/// every reload (a rotated CA at the same path is picked up): a bad file is
/// refused here, not at the first request.
pub(crate) fn read_ca(tls: &UpstreamTls) -> Result<Vec<CertificateDer<'static>>, String> {
    crate::listener::load_certs(&tls.ca).map_err(|e| match e {
        crate::ProxyError::Tls { reason, .. } => {
            format!("tls.ca {}: {reason}", tls.ca.display())
        }
        other => other.to_string(),
    })
}

/// The TLS connector of a pool with `protocol` and `tls`, trusting `ca`
/// (from [`read_ca`]).
pub(crate) fn tls_connector(
    protocol: UpstreamProtocol,
    tls: &UpstreamTls,
    ca: &[CertificateDer<'static>],
) -> Result<TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in ca {
        roots
            .add(c.clone())
            .map_err(|e| format!("tls.ca {}: not a CA certificate: {e}", tls.ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![if protocol.is_h2() {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The TLS handshake with an upstream, within `timeout`.
async fn tls_handshake(
    connector: &TlsConnector,
    name: &ServerName<'static>,
    stream: TcpStream,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
    tokio::time::timeout(timeout, connector.connect(name.clone(), stream))
        .await
        .map_err(|_| ConnectError::Timeout { addr, timeout })?
        .map_err(|source| ConnectError::Tls { addr, source })
}

async fn upgradable<T, B>(io: T, addr: SocketAddr) -> Result<http1::SendRequest<B>, ConnectError>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (tx, conn) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|source| ConnectError::Handshake { addr, source })?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(tx)
}

async fn handshake_h2<T, B>(io: T, addr: SocketAddr) -> Result<http2::SendRequest<B>, ConnectError>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (tx, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        // A dead peer is noticed within a minute even while idle.
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|source| ConnectError::Handshake { addr, source })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
        }
    });
    Ok(tx)
}

/// Opens a TCP connection with `TCP_NODELAY`, bounded by `timeout`.
pub(crate) async fn connect_tcp(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout { addr, timeout })?
        .map_err(|source| ConnectError::Io { addr, source })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
