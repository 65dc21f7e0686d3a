//! switchyard-proxy is the data plane: it accepts client connections (HTTP/1.1,
//! HTTP/2, HTTPS via rustls), picks blue or green for every request (weights
//! in basis points, sticky and monotonic), forwards to a healthy upstream of
//! that colour over pooled keep-alive connections, streams bodies both ways,
//! and keeps per-colour statistics over a sliding window.
//!
//! It knows nothing about rollouts or databases. The control plane drives it
//! through [`DataPlane`]: set the green weight, read statistics and health,
//! reload pools. Routing state is an `ArcSwap` snapshot read once per request:
//! no lock on the request path.
#![forbid(unsafe_code)]

mod access;
mod body;
pub mod certs;
mod colour;
pub mod conn;
mod connect;
mod forward;
mod grpc;
mod h1;
mod headers;
mod health;
mod listener;
mod metrics;
mod park;
pub mod pool;
mod recent_writes;
pub mod router;
pub mod stats;
mod write_gate;

pub use body::ProxyBody;
pub use certs::ServedCert;
pub use colour::Colour;
pub use listener::{
    bind, bind_inheriting, tls_acceptor, tls_acceptor_for, Inherited, Listeners, Stop, PARK_AFTER,
};
pub use stats::{Outcome, WindowStats};

use arc_swap::ArcSwap;
use std::sync::Arc;
use std::time::Duration;
use switchyard_config::Config;

use pool::Pool;
use router::RouterConfig;
use stats::Stats;

/// Errors of the data plane.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("pools.{colour}: upstream {upstream}: {reason}")]
    Upstream {
        colour: Colour,
        upstream: String,
        reason: String,
    },
    #[error("{0}")]
    Routing(String),
    #[error("cannot listen on {addr}: {source} (is another process using the port?)")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("proxy.tls: {what} {}: {reason}", path.display())]
    Tls {
        what: &'static str,
        path: std::path::PathBuf,
        reason: String,
    },
}

/// Timeouts and retry policy that apply to every forwarded request.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    connect_timeout: Duration,
    upstream_timeout: Duration,
    retries: u32,
    ejection: pool::Ejection,
    body_timeout: Duration,
    upstream_read_timeout: Duration,
    max_body_size: Option<u64>,
    /// After a client's write, its reads follow the writer this long.
    read_your_writes: Duration,
    /// `[log] access`: one log line per request.
    access_log: bool,
}

/// One immutable routing snapshot: weights, rules and pools.
pub(crate) struct Routing {
    /// Green's share in basis points (0..=10000); blue has the rest.
    green_bp: u32,
    /// Where writes go regardless of the weights (`None`: writes follow the
    /// weights like reads).
    writer: Option<Colour>,
    /// The colour that served before the rollout; a connect failure on the
    /// other (the candidate) is retried here.
    stable: Colour,
    router: RouterConfig,
    pools: [Arc<Pool>; 2],
    settings: Settings,
}

impl Routing {
    fn duplicate(&self) -> Routing {
        Routing {
            green_bp: self.green_bp,
            writer: self.writer,
            stable: self.stable,
            router: self.router.clone(),
            pools: self.pools.clone(),
            settings: self.settings.clone(),
        }
    }
}

pub(crate) struct Shared {
    routing: ArcSwap<Routing>,
    stats: Stats,
    gate: write_gate::WriteGate,
    /// Who wrote recently (read-your-writes); created on first use.
    recent_writes: std::sync::OnceLock<recent_writes::RecentWrites>,
    /// Requests sent to the other colour because theirs had no usable
    /// upstream, by the colour they left.
    fallbacks: [std::sync::atomic::AtomicU64; 2],
    /// Set once a successor serves on our sockets: HTTP/1 responses carry
    /// `Connection: close` so their clients reconnect (to the successor).
    pub(crate) draining: std::sync::atomic::AtomicBool,
    /// Client connections open, parked, accepted.
    pub(crate) conns: Arc<conn::ClientConns>,
}

impl Shared {
    pub(crate) fn fallback(&self, from: Colour) {
        self.fallbacks[from.index()].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn fallbacks(&self) -> [u64; 2] {
        let f = |c: Colour| self.fallbacks[c.index()].load(std::sync::atomic::Ordering::Relaxed);
        [f(Colour::Blue), f(Colour::Green)]
    }
}

/// The handle the control plane uses to drive the data plane. Cheap to clone.
#[derive(Clone)]
pub struct DataPlane {
    shared: Arc<Shared>,
}

/// Green and blue weights, in basis points; they always sum to 10000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weights {
    pub blue_bp: u32,
    pub green_bp: u32,
}

impl Weights {
    pub fn of(c: Colour, green_bp: u32) -> u32 {
        match c {
            Colour::Blue => router::BUCKETS - green_bp,
            Colour::Green => green_bp,
        }
    }
}

/// The write gate's state.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct WriteGateStatus {
    pub held: bool,
    /// Writes that have had to wait at the gate since the process started.
    pub held_total: u64,
    /// Writes forwarded and not yet answered.
    pub in_flight: usize,
    /// Writes waiting at the held gate.
    pub waiting: usize,
    pub writer: Option<Colour>,
}

/// Health of one upstream, for status pages.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UpstreamStatus {
    pub address: String,
    /// Passing active health checks (always true without checks).
    pub healthy: bool,
    /// Out of rotation after connect failures (`proxy.max_fails`).
    pub ejected: bool,
    pub in_flight: usize,
}

/// How often idle upstream connections closed by their upstream are closed
/// here too ([`pool::Upstream::sweep_idle`]).
const SWEEP_IDLE: Duration = Duration::from_secs(1);

impl DataPlane {
    /// Builds the data plane from a validated config, with green at
    /// `green_bp`. Must be called inside a Tokio runtime: it starts the
    /// health checks and the statistics ticker.
    pub fn new(config: &Config, green_bp: u32) -> Result<DataPlane, ProxyError> {
        let routing = build_routing(config, green_bp.min(router::BUCKETS), None)?;
        let shared = Arc::new(Shared {
            routing: ArcSwap::from_pointee(routing),
            stats: Stats::new(config.rollout.analysis.window),
            gate: write_gate::WriteGate::default(),
            recent_writes: std::sync::OnceLock::new(),
            fallbacks: Default::default(),
            draining: Default::default(),
            conns: Default::default(),
        });
        let weak = Arc::downgrade(&shared);
        let slot = shared.stats.slot_length();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(slot);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let sweep_every = (SWEEP_IDLE.as_millis() / slot.as_millis().max(1)).max(1);
            let mut ticks = 0u128;
            loop {
                tick.tick().await;
                let Some(s) = weak.upgrade() else {
                    return;
                };
                s.stats.rotate();
                ticks += 1;
                if ticks.is_multiple_of(sweep_every) {
                    for pool in &s.routing.load().pools {
                        pool.upstreams.iter().for_each(|u| u.sweep_idle());
                    }
                }
            }
        });
        Ok(DataPlane { shared })
    }

    /// Applies a new config's pools, stickiness and timeouts. Upstreams whose
    /// address and health settings are unchanged keep their state. The
    /// weights are kept. Listener addresses are not changed by a reload.
    pub fn reload(&self, config: &Config) -> Result<(), ProxyError> {
        let built = build_routing(config, 0, Some(&self.shared.routing.load()))?;
        // The weight and writer may change while the pools are built (a
        // rollback in the same instant): take them from the snapshot being
        // replaced, atomically, never from the one read before building.
        self.shared.routing.rcu(|current| {
            Arc::new(Routing {
                green_bp: current.green_bp,
                writer: current.writer,
                stable: current.stable,
                ..built.duplicate()
            })
        });
        Ok(())
    }

    /// Sets green's weight in basis points (clamped to 0..=10000); blue gets
    /// the rest. Takes effect for the next request.
    pub fn set_green_bp(&self, green_bp: u32) {
        let green_bp = green_bp.min(router::BUCKETS);
        self.shared.routing.rcu(|r| {
            Arc::new(Routing {
                green_bp,
                ..r.duplicate()
            })
        });
    }

    /// Sends every write (any method but GET, HEAD, OPTIONS, TRACE) to
    /// `writer`, whatever the weights; `None` lets writes follow the weights.
    /// Used while one database is the primary and the other a replica.
    pub fn set_writer(&self, writer: Option<Colour>) {
        self.shared.routing.rcu(|r| {
            Arc::new(Routing {
                writer,
                ..r.duplicate()
            })
        });
    }

    /// Tells the data plane which colour is the stable one (the other is
    /// the candidate): a request whose candidate upstreams all refuse the
    /// connection is sent to the stable colour instead.
    pub fn set_stable(&self, stable: Colour) {
        if self.shared.routing.load().stable == stable {
            return;
        }
        self.shared.routing.rcu(|r| {
            Arc::new(Routing {
                stable,
                ..r.duplicate()
            })
        });
    }

    /// Requests sent to the other colour because theirs had no usable
    /// upstream, by the colour they left (lifetime counter).
    pub fn fallbacks(&self, from: Colour) -> u64 {
        self.shared.fallbacks()[from.index()]
    }

    /// The colour writes are pinned to, if any.
    pub fn writer(&self) -> Option<Colour> {
        self.shared.routing.load().writer
    }

    /// Holds new writes at the proxy (cutover). Reads keep flowing. Held
    /// requests wait until [`DataPlane::release_writes`], for at most a minute.
    pub fn hold_writes(&self) {
        self.shared.gate.hold();
    }

    /// Releases held writes; they route by the snapshot current at release.
    pub fn release_writes(&self) {
        self.shared.gate.accept();
        self.shared.gate.release();
    }

    /// Answers held writes (and new ones while the gate is held) with 503
    /// instead of keeping them waiting or sending them anywhere: the control
    /// plane cannot tell which database is the primary. Undone by
    /// [`DataPlane::release_writes`].
    pub fn refuse_held_writes(&self) {
        self.shared.gate.refuse();
    }

    /// Writes answered 503 by a held gate (lifetime counter).
    pub fn writes_refused(&self) -> u64 {
        self.shared.gate.refused_total()
    }

    /// Waits until no write is in flight (held ones do not count), for at
    /// most `timeout`; returns whether they drained.
    pub async fn writes_drained(&self, timeout: Duration) -> bool {
        self.shared.gate.drained(timeout).await
    }

    /// The write gate's state, for status pages.
    pub fn write_gate(&self) -> WriteGateStatus {
        let g = &self.shared.gate;
        WriteGateStatus {
            held: g.is_held(),
            held_total: g.held_total(),
            in_flight: g.in_flight(),
            waiting: g.waiting(),
            writer: self.writer(),
        }
    }

    /// Current weights.
    pub fn weights(&self) -> Weights {
        let g = self.shared.routing.load().green_bp;
        Weights {
            blue_bp: router::BUCKETS - g,
            green_bp: g,
        }
    }

    /// A colour's statistics over the analysis window.
    pub fn window(&self, c: Colour) -> WindowStats {
        self.shared.stats.colour(c).window()
    }

    /// A colour's lifetime counters (never reset), for rate computations
    /// over intervals shorter than the window.
    pub fn totals(&self, c: Colour) -> stats::Totals {
        self.shared.stats.colour(c).totals()
    }

    /// Forgets a colour's window, so judgement restarts from fresh traffic.
    pub fn reset_window(&self, c: Colour) {
        self.shared.stats.reset_window(c)
    }

    /// Upstreams of a colour and their health.
    pub fn upstreams(&self, c: Colour) -> Vec<UpstreamStatus> {
        self.shared.routing.load().pools[c.index()]
            .upstreams
            .iter()
            .map(|u| UpstreamStatus {
                address: u.name.clone(),
                healthy: u.is_healthy(),
                ejected: u.is_ejected(),
                in_flight: u.in_flight(),
            })
            .collect()
    }

    /// Number of upstreams of a colour passing health checks.
    pub fn healthy_upstreams(&self, c: Colour) -> usize {
        self.shared.routing.load().pools[c.index()].healthy_count()
    }

    /// Appends the data plane's metrics in Prometheus text format.
    /// Upstreams are labelled with their addresses only with `addresses`,
    /// else with their position in the pool.
    pub fn render_metrics(&self, out: &mut String, addresses: bool) {
        metrics::render(&self.shared, out, addresses)
    }
}

/// Checks what the pools refer to (host names resolve, TLS CA files load)
/// without connecting anywhere: `switchyard check` and the start-up
/// validation call it.
pub fn check_pools(config: &Config) -> Result<(), ProxyError> {
    Pool::build(Colour::Blue, &config.pools.blue, None)?;
    Pool::build(Colour::Green, &config.pools.green, None)?;
    Ok(())
}

fn build_routing(
    config: &Config,
    green_bp: u32,
    previous: Option<&Routing>,
) -> Result<Routing, ProxyError> {
    let router = RouterConfig::from_config(&config.proxy).map_err(ProxyError::Routing)?;
    let (blue, fresh_blue) = Pool::build(
        Colour::Blue,
        &config.pools.blue,
        previous.map(|p| &*p.pools[0]),
    )?;
    let (green, fresh_green) = Pool::build(
        Colour::Green,
        &config.pools.green,
        previous.map(|p| &*p.pools[1]),
    )?;
    for up in fresh_blue.iter().chain(&fresh_green) {
        health::spawn(up);
    }
    Ok(Routing {
        green_bp,
        writer: None,
        stable: Colour::Blue,
        router,
        pools: [Arc::new(blue), Arc::new(green)],
        settings: Settings {
            connect_timeout: config.proxy.connect_timeout,
            upstream_timeout: config.proxy.upstream_timeout,
            retries: config.proxy.retries,
            ejection: pool::Ejection {
                max_fails: config.proxy.max_fails,
                fail_timeout: config.proxy.fail_timeout,
            },
            body_timeout: config.proxy.body_timeout,
            upstream_read_timeout: config.proxy.upstream_read_timeout,
            max_body_size: config.proxy.max_body_size,
            read_your_writes: config
                .database
                .as_ref()
                .map(|d| d.read_your_writes)
                .unwrap_or_default(),
            access_log: config.log.access,
        },
    })
}
