//! Upstream pools: the servers of one colour, round-robin selection over the
//! healthy ones, and a lock-free stack of idle keep-alive connections per
//! upstream.

use crossbeam_queue::ArrayQueue;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use switchyard_config::{HealthConfig, PoolConfig};
use tokio::net::TcpStream;

use crate::body::RequestBody;
use crate::{Colour, ProxyError};

/// Longest wait for a pooled connection to become ready for its next request.
const READY_WAIT: Duration = Duration::from_millis(50);

/// Idle connections kept per upstream.
const IDLE_PER_UPSTREAM: usize = 512;

/// One upstream server.
pub struct Upstream {
    /// `host:port` as configured.
    pub name: String,
    pub addr: SocketAddr,
    pub(crate) health: Option<HealthConfig>,
    healthy: AtomicBool,
    pub(crate) fails: AtomicU32,
    pub(crate) passes: AtomicU32,
    idle: ArrayQueue<SendRequest<RequestBody>>,
    in_flight: AtomicUsize,
    /// Connect failures in a row (passive ejection).
    connect_failures: AtomicU32,
    /// Out of rotation until this many ms after [`clock_ms`]'s epoch; 0 = in.
    ejected_until_ms: AtomicU64,
}

/// A connection ready for one request.
pub(crate) struct Checkout {
    pub tx: SendRequest<RequestBody>,
    /// It carried earlier requests: the upstream may have closed it while it
    /// sat idle, so a bodiless idempotent request that fails on it unanswered
    /// may be replayed.
    pub reused: bool,
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
    #[error("HTTP handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

impl Upstream {
    fn new(name: String, addr: SocketAddr, health: Option<HealthConfig>) -> Upstream {
        Upstream {
            name,
            addr,
            health,
            healthy: AtomicBool::new(true),
            fails: AtomicU32::new(0),
            passes: AtomicU32::new(0),
            idle: ArrayQueue::new(IDLE_PER_UPSTREAM),
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

    /// An idle keep-alive connection, or a new one.
    pub(crate) async fn checkout(
        &self,
        connect_timeout: Duration,
        ejection: Ejection,
    ) -> Result<Checkout, ConnectError> {
        while let Some(mut tx) = self.idle.pop() {
            if tx.is_ready() {
                return Ok(Checkout { tx, reused: true });
            }
            if tx.is_closed() {
                continue;
            }
            // Checked in right after its last response ended; the connection
            // task may not have run yet and it becomes ready promptly. But a
            // connection still sending a request body (the upstream answered
            // early) may stay busy for as long as that client likes: wait
            // briefly, then drop it rather than stall this request.
            if let Ok(Ok(())) = tokio::time::timeout(READY_WAIT, tx.ready()).await {
                return Ok(Checkout { tx, reused: true });
            }
        }
        match self.connect(connect_timeout).await {
            Ok(tx) => {
                self.connect_succeeded();
                Ok(Checkout { tx, reused: false })
            }
            Err(e) => {
                self.connect_failed(ejection);
                Err(e)
            }
        }
    }

    /// Returns a connection whose response has been read to the end.
    pub(crate) fn checkin(&self, tx: SendRequest<RequestBody>) {
        if !tx.is_closed() {
            let _ = self.idle.push(tx);
        }
    }

    async fn connect(&self, timeout: Duration) -> Result<SendRequest<RequestBody>, ConnectError> {
        let stream = connect_tcp(self.addr, timeout).await?;
        let (tx, conn) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ConnectError::Handshake {
                addr: self.addr,
                source,
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(tx)
    }
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
    /// state and idle connections) from `previous` where address and health
    /// settings are unchanged. Host names are resolved here, once.
    pub fn build(
        colour: Colour,
        cfg: &PoolConfig,
        previous: Option<&Pool>,
    ) -> Result<(Pool, Vec<Arc<Upstream>>), ProxyError> {
        let mut upstreams = Vec::with_capacity(cfg.upstreams.len());
        let mut fresh = Vec::new();
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
                            && same_health(&old.health, &cfg.health)
                    })
                    .cloned()
            });
            match reused {
                Some(old) => upstreams.push(old),
                None => {
                    let up = Arc::new(Upstream::new(name, addr, cfg.health.clone()));
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

fn same_health(a: &Option<HealthConfig>, b: &Option<HealthConfig>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.path == b.path
                && a.interval == b.interval
                && a.timeout == b.timeout
                && a.fall == b.fall
                && a.rise == b.rise
        }
        _ => false,
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
