//! Upstream pools: the servers of one colour, round-robin selection over the
//! healthy ones, and per upstream either a lock-free stack of idle HTTP/1.1
//! keep-alive connections (switchyard's own client) or shared HTTP/2
//! connections.

use crossbeam_queue::ArrayQueue;
use hyper::client::conn::http2;
use rustls::pki_types::CertificateDer;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use switchyard_config::{HealthConfig, PoolConfig, UpstreamProtocol, UpstreamTls};

use crate::body::RequestBody;
use crate::connect::{tls_connector, Link};
use crate::h1::H1Conn;
use crate::{Colour, ProxyError};

/// Idle connections kept per upstream.
const IDLE_PER_UPSTREAM: usize = 512;

/// One upstream server.
pub struct Upstream {
    /// `host:port` as configured.
    pub name: String,
    pub addr: SocketAddr,
    pub(crate) health: Option<HealthConfig>,
    /// Protocol and TLS, as configured, and the CA certificates read from
    /// `tls.ca` (all compared on reload).
    protocol: UpstreamProtocol,
    tls: Option<UpstreamTls>,
    ca: Option<Arc<[CertificateDer<'static>]>>,
    /// `keepalive_timeout`: idle HTTP/1.1 connections older than this are
    /// not reused (60 s by default, nginx's; firewalls and load balancers
    /// that forget idle flows do so after minutes, AWS NLB after 350 s).
    keepalive: Duration,
    pub(crate) link: Link,
    /// The HTTP/2 connections (`protocol = "h2c"` or `"h2"`), shared by
    /// requests: a new one is opened when every live one carries
    /// [`H2_STREAMS_PER_CONNECTION`] streams.
    h2: arc_swap::ArcSwap<Vec<Arc<H2Conn>>>,
    /// Held while a new HTTP/2 connection is being opened, so a burst of
    /// requests opens one, not one each.
    h2_connecting: tokio::sync::Mutex<()>,
    healthy: AtomicBool,
    pub(crate) fails: AtomicU32,
    pub(crate) passes: AtomicU32,
    /// Idle connections of switchyard's own HTTP/1.1 client ([`crate::h1`]).
    idle_h1: ArrayQueue<Box<H1Conn>>,
    in_flight: AtomicUsize,
    /// Connect failures in a row (passive ejection).
    connect_failures: AtomicU32,
    /// Out of rotation until this many ms after [`clock_ms`]'s epoch; 0 = in.
    ejected_until_ms: AtomicU64,
}

/// Streams one HTTP/2 connection to an upstream carries before requests
/// go to another: the floor RFC 9113 recommends servers allow (nginx
/// allows 128, Go 250), so that requests are not queued behind a server's
/// `SETTINGS_MAX_CONCURRENT_STREAMS` (hyper does not tell its value).
pub(crate) const H2_STREAMS_PER_CONNECTION: usize = 100;

/// One HTTP/2 connection to an upstream and the streams open on it.
pub(crate) struct H2Conn {
    tx: http2::SendRequest<RequestBody>,
    streams: AtomicUsize,
    /// When its last stream ended ([`clock_ms`]): a connection with no
    /// stream for `keepalive_timeout` is closed by [`Upstream::sweep_idle`].
    idle_since_ms: AtomicU64,
}

/// A stream counted on its HTTP/2 connection until dropped (with the
/// response body, or with the request that failed).
pub(crate) struct H2Stream(Arc<H2Conn>);

impl Drop for H2Stream {
    fn drop(&mut self) {
        if self.0.streams.fetch_sub(1, Relaxed) == 1 {
            self.0.idle_since_ms.store(clock_ms(), Relaxed);
        }
    }
}

/// A stream on an HTTP/2 connection, ready for one request.
pub(crate) struct Checkout {
    pub tx: http2::SendRequest<RequestBody>,
    /// The stream, counted on its connection until dropped.
    pub h2_stream: H2Stream,
}

/// Milliseconds since the first call: a cheap monotonic clock for ejection.
pub(crate) fn clock_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Passive ejection policy (`proxy.max_fails`, `proxy.fail_timeout`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ejection {
    pub max_fails: u32,
    pub fail_timeout: Duration,
}

/// Why no connection to an upstream could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr} failed: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connect to {addr} timed out after {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

impl Upstream {
    fn new(
        name: String,
        addr: SocketAddr,
        cfg: &PoolConfig,
        ca: Option<Arc<[CertificateDer<'static>]>>,
        link: Link,
    ) -> Upstream {
        Upstream {
            name,
            addr,
            health: cfg.health.clone(),
            protocol: cfg.protocol,
            tls: cfg.tls.clone(),
            ca,
            keepalive: cfg.keepalive_timeout,
            link,
            h2: arc_swap::ArcSwap::from_pointee(Vec::new()),
            h2_connecting: tokio::sync::Mutex::new(()),
            healthy: AtomicBool::new(true),
            fails: AtomicU32::new(0),
            passes: AtomicU32::new(0),
            idle_h1: ArrayQueue::new(IDLE_PER_UPSTREAM),
            in_flight: AtomicUsize::new(0),
            connect_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
        }
    }

    /// Whether requests may be sent here: healthy by the active checks and
    /// not passively ejected.
    pub fn is_available(&self) -> bool {
        self.is_healthy() && !self.is_ejected()
    }

    /// Whether recent connect failures took it out of rotation.
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until_ms.load(Relaxed);
        until != 0 && clock_ms() < until
    }

    /// Records a failed connect; ejects after `max_fails` in a row.
    pub(crate) fn connect_failed(&self, policy: Ejection) {
        let n = self.connect_failures.fetch_add(1, Relaxed) + 1;
        if policy.max_fails > 0 && n >= policy.max_fails {
            let until = clock_ms() + policy.fail_timeout.as_millis() as u64;
            if self.ejected_until_ms.swap(until, Relaxed) == 0 {
                tracing::warn!(upstream = %self.name, failures = n, for_ = ?policy.fail_timeout, "upstream ejected after connect failures");
            }
        }
    }

    /// Records a successful connect, readmitting an ejected upstream.
    pub(crate) fn connect_succeeded(&self) {
        if self.connect_failures.load(Relaxed) != 0 {
            self.connect_failures.store(0, Relaxed);
        }
        if self.ejected_until_ms.load(Relaxed) != 0 {
            self.ejected_until_ms.store(0, Relaxed);
        }
    }

    /// Whether health checks currently consider this upstream usable.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    pub(crate) fn set_healthy(&self, v: bool) {
        self.healthy.store(v, Relaxed);
    }

    /// Requests currently being forwarded to this upstream.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }

    pub(crate) fn begin(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }

    pub(crate) fn end(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }

    /// Awaits a new connection's `connect` (boxed by the caller: opening a
    /// connection is the rare path under keep-alive, and its future — TCP,
    /// TLS, the handshake — would otherwise be part of every request's
    /// future, copied with it) and records the outcome for passive
    /// ejection.
    async fn open<T>(
        &self,
        connect: Pin<Box<impl Future<Output = Result<T, ConnectError>>>>,
        ejection: Ejection,
    ) -> Result<T, ConnectError> {
        let opened = connect.await;
        match &opened {
            Ok(_) => self.connect_succeeded(),
            Err(_) => self.connect_failed(ejection),
        }
        opened
    }

    /// A stream on a live HTTP/2 connection with room, or on a new one
    /// (opened once for a burst of requests) when every live one is full.
    pub(crate) async fn checkout_h2(
        &self,
        connect_timeout: Duration,
        ejection: Ejection,
    ) -> Result<Checkout, ConnectError> {
        if let Some(c) = self.h2_with_room() {
            return Ok(c);
        }
        let _one = self.h2_connecting.lock().await;
        if let Some(c) = self.h2_with_room() {
            return Ok(c);
        }
        let h2 = self
            .open(
                Box::pin(self.link.connect_h2(self.addr, connect_timeout)),
                ejection,
            )
            .await?;
        let conn = Arc::new(H2Conn {
            tx: h2.clone(),
            streams: AtomicUsize::new(1),
            idle_since_ms: AtomicU64::new(clock_ms()),
        });
        // Closed connections leave the list as new ones join it.
        self.h2.rcu(|list| {
            let mut next: Vec<Arc<H2Conn>> =
                list.iter().filter(|c| !c.tx.is_closed()).cloned().collect();
            next.push(conn.clone());
            next
        });
        Ok(Checkout {
            tx: h2,
            h2_stream: H2Stream(conn),
        })
    }

    /// A stream on the first live HTTP/2 connection with fewer than
    /// [`H2_STREAMS_PER_CONNECTION`] open.
    fn h2_with_room(&self) -> Option<Checkout> {
        let list = self.h2.load();
        for c in list.iter() {
            if c.tx.is_closed() {
                continue;
            }
            if c.streams.fetch_add(1, Relaxed) < H2_STREAMS_PER_CONNECTION {
                return Some(Checkout {
                    tx: c.tx.clone(),
                    h2_stream: H2Stream(c.clone()),
                });
            }
            c.streams.fetch_sub(1, Relaxed);
        }
        None
    }

    /// Whether requests go over switchyard's own HTTP/1.1 client
    /// ([`crate::h1`]): `http1` pools, over TCP or TLS.
    pub(crate) fn owns_h1(&self) -> bool {
        self.link.protocol == UpstreamProtocol::Http1
    }

    /// An idle connection of the own HTTP/1.1 client, or a new one; the
    /// flag says whether it carried requests before.
    pub(crate) async fn checkout_h1(
        &self,
        connect_timeout: Duration,
        ejection: Ejection,
    ) -> Result<(Box<H1Conn>, bool), ConnectError> {
        while let Some(mut c) = self.idle_h1.pop() {
            if !self.expired(c.idle_since_ms) && c.usable() {
                return Ok((c, true));
            }
        }
        let io = self
            .open(
                Box::pin(self.link.connect_h1(self.addr, connect_timeout)),
                ejection,
            )
            .await?;
        Ok((Box::new(H1Conn::new(io)), false))
    }

    /// Returns an own-client connection whose response was read to its end.
    pub(crate) fn checkin_h1(&self, c: Box<H1Conn>) {
        let _ = self.idle_h1.push(c);
    }

    /// Whether a connection idle since `since_ms` ([`clock_ms`]) is older
    /// than `keepalive_timeout` and must not be reused.
    fn expired(&self, since_ms: u64) -> bool {
        clock_ms().saturating_sub(since_ms) >= self.keepalive.as_millis() as u64
    }

    /// Closes the idle connections the upstream has closed (or, for the own
    /// client, sent bytes on), and those idle for longer than
    /// `keepalive_timeout`: no task watches the own client's, so without
    /// this a closed one would hold a descriptor in CLOSE_WAIT until the
    /// next request found it, and one a middlebox forgot would hang the
    /// request that reuses it.
    pub(crate) fn sweep_idle(&self) {
        self.sweep_idle_older_than(self.keepalive);
    }

    fn sweep_idle_older_than(&self, max_idle: Duration) {
        let now = clock_ms();
        let max_ms = max_idle.as_millis() as u64;
        for _ in 0..self.idle_h1.len() {
            let Some(mut c) = self.idle_h1.pop() else {
                break;
            };
            if now.saturating_sub(c.idle_since_ms) < max_ms && c.usable() {
                let _ = self.idle_h1.push(c);
            }
        }
        // HTTP/2 connections with no stream for that long leave the list;
        // hyper closes one when its last handle is gone (a request that
        // took a stream on it just now still holds one and finishes).
        let stale = |c: &Arc<H2Conn>| {
            c.tx.is_closed()
                || (c.streams.load(Relaxed) == 0
                    && now.saturating_sub(c.idle_since_ms.load(Relaxed)) >= max_ms)
        };
        if self.h2.load().iter().any(stale) {
            self.h2.rcu(|list| {
                list.iter()
                    .filter(|c| !stale(c))
                    .cloned()
                    .collect::<Vec<_>>()
            });
        }
    }
}

/// The upstreams of one colour.
pub struct Pool {
    pub colour: Colour,
    pub upstreams: Box<[Arc<Upstream>]>,
    /// `pools.<colour>.fallback`: with no usable upstream here, traffic goes
    /// to the other colour.
    pub fallback: bool,
    next: AtomicUsize,
}

impl Pool {
    /// Builds a pool from its config, reusing upstream objects (their health
    /// state and idle connections) from `previous` where address, protocol,
    /// TLS settings, the CA file's certificates and health settings are
    /// unchanged. Host names are resolved, and the CA file read, here, once.
    pub fn build(
        colour: Colour,
        cfg: &PoolConfig,
        previous: Option<&Pool>,
    ) -> Result<(Pool, Vec<Arc<Upstream>>), ProxyError> {
        let mut upstreams = Vec::with_capacity(cfg.upstreams.len());
        let mut fresh = Vec::new();
        // Read again on every reload: a CA rotated at the same path counts
        // as a change.
        let ca: Option<Arc<[CertificateDer<'static>]>> = match &cfg.tls {
            None => None,
            Some(t) => Some(
                crate::connect::read_ca(t)
                    .map_err(|reason| ProxyError::Upstream {
                        colour,
                        upstream: cfg
                            .upstreams
                            .first()
                            .map(|u| u.to_string())
                            .unwrap_or_default(),
                        reason,
                    })?
                    .into(),
            ),
        };
        // Made once, for the first new upstream that needs it.
        let mut connector = None;
        for u in &cfg.upstreams {
            let name = u.to_string();
            let addr = resolve(&u.host, u.port).map_err(|reason| ProxyError::Upstream {
                colour,
                upstream: name.clone(),
                reason,
            })?;
            let reused = previous.and_then(|p| {
                p.upstreams
                    .iter()
                    .find(|old| {
                        old.name == name
                            && old.addr == addr
                            && old.protocol == cfg.protocol
                            && old.tls == cfg.tls
                            && old.ca == ca
                            && old.keepalive == cfg.keepalive_timeout
                            && old.health == cfg.health
                    })
                    .cloned()
            });
            match reused {
                Some(old) => upstreams.push(old),
                None => {
                    let fail = |reason| ProxyError::Upstream {
                        colour,
                        upstream: name.clone(),
                        reason,
                    };
                    let tls = match &cfg.tls {
                        None => None,
                        Some(t) => {
                            if connector.is_none() {
                                let ca = ca.as_deref().unwrap_or_default();
                                connector = Some(tls_connector(cfg.protocol, t, ca).map_err(fail)?);
                            }
                            connector.as_ref().map(|c| (t, c))
                        }
                    };
                    let link = Link::new(cfg.protocol, tls, &u.host).map_err(fail)?;
                    let up = Arc::new(Upstream::new(name, addr, cfg, ca.clone(), link));
                    fresh.push(up.clone());
                    upstreams.push(up);
                }
            }
        }
        Ok((
            Pool {
                colour,
                upstreams: upstreams.into_boxed_slice(),
                fallback: cfg.fallback,
                next: AtomicUsize::new(0),
            },
            fresh,
        ))
    }

    /// Next upstream by round robin, skipping unhealthy or ejected ones and
    /// `avoid` (the one that just failed). When none is available, every
    /// upstream is tried anyway: failing open beats refusing all traffic.
    pub fn pick(&self, avoid: Option<&Arc<Upstream>>) -> Option<&Arc<Upstream>> {
        let n = self.upstreams.len();
        if n == 1 {
            let only = &self.upstreams[0];
            return match avoid {
                Some(a) if Arc::ptr_eq(a, only) => None,
                _ => Some(only),
            };
        }
        let start = self.next.fetch_add(1, Relaxed);
        let usable = |u: &Arc<Upstream>| avoid.is_none_or(|a| !Arc::ptr_eq(a, u));
        (0..n)
            .map(|i| &self.upstreams[(start + i) % n])
            .find(|u| u.is_available() && usable(u))
            .or_else(|| {
                (0..n)
                    .map(|i| &self.upstreams[(start + i) % n])
                    .find(|u| usable(u))
            })
    }

    /// Whether any upstream is healthy and not ejected.
    pub fn has_available(&self) -> bool {
        self.upstreams.iter().any(|u| u.is_available())
    }

    /// Upstreams passing active health checks. Passive ejection (a connect
    /// failure) is deliberately not counted: one refused connect must not
    /// look like a pool with no healthy upstream to the rollout controller.
    pub fn healthy_count(&self) -> usize {
        self.upstreams.iter().filter(|u| u.is_healthy()).count()
    }
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    use std::net::ToSocketAddrs;
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} resolved to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn pool() -> Pool {
        let cfg = switchyard_config::Config::parse(
            "[pools.blue]\nupstreams = [\"127.0.0.1:1\"]\n[pools.green]\nupstreams = [\"127.0.0.1:2\"]\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"x\"\n",
            "test.toml",
        )
        .unwrap();
        Pool::build(Colour::Blue, &cfg.pools.blue, None).unwrap().0
    }

    #[tokio::test]
    async fn the_sweep_closes_idle_connections_past_the_keepalive_and_keeps_fresh_ones() {
        let pool = pool();
        let up = &pool.upstreams[0];
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut far_ends = Vec::new();
        for _ in 0..2 {
            let near = tokio::net::TcpStream::connect(addr).await.unwrap();
            far_ends.push(listener.accept().await.unwrap().0);
            let mut c = Box::new(H1Conn::new(near));
            c.idle_since_ms = clock_ms();
            up.checkin_h1(c);
        }
        // Fresh and open: kept.
        up.sweep_idle();
        assert_eq!(up.idle_h1.len(), 2);
        // Past the keep-alive: closed, and the upstream sees the close.
        tokio::time::sleep(Duration::from_millis(20)).await;
        up.sweep_idle_older_than(Duration::from_millis(10));
        assert_eq!(up.idle_h1.len(), 0);
        for mut far in far_ends {
            let mut b = [0u8; 1];
            let n = tokio::time::timeout(Duration::from_secs(5), far.read(&mut b))
                .await
                .expect("the upstream sees the close")
                .unwrap();
            assert_eq!(n, 0);
        }
    }
}
