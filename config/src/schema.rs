//! The configuration schema. Each struct is both the TOML shape (unknown keys are
//! rejected) and the validated result: values are checked while they are parsed,
//! so every error points at the offending value.

use crate::values;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The whole switchyard configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub proxy: ProxyConfig,
    pub pools: PoolsConfig,
    pub admin: AdminConfig,
    #[serde(default)]
    pub rollout: RolloutConfig,
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default)]
    pub database: Option<DatabaseConfig>,
    #[serde(default)]
    pub webhooks: WebhooksConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// The file this configuration was loaded from, if any.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[proxy]`: the data-plane listeners and routing behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    #[serde(deserialize_with = "values::socket_addr")]
    pub listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    pub sticky: StickyMode,
    pub sticky_key: StickyKey,
    /// Cookie that carries the sticky bucket in `sticky = "cookie"` mode.
    #[serde(deserialize_with = "values::non_empty_string")]
    pub cookie_name: String,
    /// Header that pins a request to a colour (`blue` or `green`), for
    /// testers, e.g. "x-switchyard-colour". Off ("") by default: any client
    /// could send it. Pinned requests are kept out of the analysis.
    #[serde(deserialize_with = "values::string")]
    pub override_header: String,
    /// Worker threads for the data plane; 0 means one per core.
    pub workers: usize,
    #[serde(deserialize_with = "values::positive_duration")]
    pub connect_timeout: Duration,
    /// Longest wait for an upstream's response headers.
    #[serde(deserialize_with = "values::positive_duration")]
    pub upstream_timeout: Duration,
    /// How long SIGTERM waits for in-flight requests before exiting.
    #[serde(deserialize_with = "values::duration")]
    pub drain_timeout: Duration,
    /// Retries on another upstream after a connect failure (nothing was
    /// sent, so this is safe for every method).
    pub retries: u32,
    /// Passive ejection, as nginx's `max_fails`: this many connect failures
    /// in a row take an upstream out of rotation for `fail_timeout`.
    /// 0 disables it.
    pub max_fails: u32,
    #[serde(deserialize_with = "values::positive_duration")]
    pub fail_timeout: Duration,
    /// Longest a client may take to send a whole request head, counted from
    /// its first byte, or from the connection's start: a connection that
    /// sends nothing is closed after this too.
    #[serde(deserialize_with = "values::positive_duration")]
    pub header_timeout: Duration,
    /// Longest a keep-alive connection may wait for its next request.
    #[serde(deserialize_with = "values::positive_duration")]
    pub idle_timeout: Duration,
    /// Longest wait between two reads of a request body (answered 408).
    #[serde(deserialize_with = "values::positive_duration")]
    pub body_timeout: Duration,
    /// Longest wait between two reads of an upstream's response body; past
    /// it the response is cut off and counted against the upstream.
    #[serde(deserialize_with = "values::positive_duration")]
    pub upstream_read_timeout: Duration,
    /// Largest request head (request line and headers) in bytes; a larger
    /// one is answered 431.
    #[serde(deserialize_with = "values::header_size")]
    pub max_header_size: usize,
    /// Largest request body in bytes (`None`: unlimited); a larger one is
    /// answered 413.
    #[serde(deserialize_with = "values::opt_size")]
    pub max_body_size: Option<u64>,
    /// Client connections served at once (HTTP and HTTPS together); past it
    /// new connections wait in the listen backlog.
    #[serde(deserialize_with = "values::positive_u32")]
    pub max_connections: u32,
    /// Length of the kernel's queue of connections not yet accepted.
    #[serde(deserialize_with = "values::positive_u32")]
    pub backlog: u32,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: "127.0.0.1:8080".parse().expect("valid default"),
            tls: None,
            sticky: StickyMode::Hash,
            sticky_key: StickyKey::Cookie("session".into()),
            cookie_name: "switchyard".into(),
            override_header: String::new(),
            workers: 0,
            connect_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            retries: 1,
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            body_timeout: Duration::from_secs(60),
            upstream_read_timeout: Duration::from_secs(60),
            max_header_size: 64 * 1024,
            max_body_size: None,
            max_connections: 10_000,
            backlog: 1024,
        }
    }
}

/// `[proxy.tls]`: an HTTPS listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(deserialize_with = "values::socket_addr")]
    pub listen: SocketAddr,
    #[serde(deserialize_with = "path")]
    pub cert: PathBuf,
    #[serde(deserialize_with = "path")]
    pub key: PathBuf,
}

fn path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    values::non_empty_string(d).map(PathBuf::from)
}

/// How a request keeps its colour across requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StickyMode {
    /// Hash of the sticky key picks a bucket 0..9999 (monotonic, stateless).
    Hash,
    /// A cookie carries a random bucket set on the first response.
    Cookie,
    /// Every request is weighted at random.
    None,
}

/// What identifies a user for `hash` stickiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyKey {
    Cookie(String),
    Header(String),
    ClientIp,
}

impl<'de> Deserialize<'de> for StickyKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = values::string(d)?;
        let bad = || {
            de::Error::custom(format!(
                "{s:?} is not a sticky key: expected \"cookie:NAME\", \"header:NAME\" or \"client_ip\""
            ))
        };
        if s == "client_ip" {
            return Ok(StickyKey::ClientIp);
        }
        let (kind, name) = s.split_once(':').ok_or_else(bad)?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b';') {
            return Err(bad());
        }
        match kind {
            "cookie" => Ok(StickyKey::Cookie(name.to_string())),
            "header" => Ok(StickyKey::Header(name.to_ascii_lowercase())),
            _ => Err(bad()),
        }
    }
}

/// `[pools]`: the two colours.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolsConfig {
    pub blue: PoolConfig,
    pub green: PoolConfig,
}

/// `[pools.blue]` / `[pools.green]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    #[serde(deserialize_with = "upstreams")]
    pub upstreams: Vec<Upstream>,
    #[serde(default)]
    pub health: Option<HealthConfig>,
    /// When this colour has no usable upstream (all failing health checks,
    /// ejected or refusing connections), send its traffic to the other
    /// colour instead of answering 502. Off by default.
    #[serde(default)]
    pub fallback: bool,
    /// How switchyard speaks to these upstreams.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// TLS to the upstreams; required with `protocol = "h2"`.
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
    /// How long an idle HTTP/1.1 keep-alive connection to these upstreams
    /// is kept for reuse (nginx's upstream `keepalive_timeout`). Keep it
    /// below the upstreams' own idle timeout (Node.js closes after 5 s), so
    /// that a request never goes out on a connection the upstream is
    /// closing. An HTTP/2 connection with no stream for this long is
    /// closed too.
    #[serde(
        default = "default_keepalive_timeout",
        deserialize_with = "values::positive_duration"
    )]
    pub keepalive_timeout: Duration,
}

fn default_keepalive_timeout() -> Duration {
    Duration::from_secs(60)
}

/// `pools.<colour>.protocol`: the protocol spoken to the upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over TCP, a pool of keep-alive connections (the default).
    #[default]
    Http1,
    /// HTTP/2 over TCP with prior knowledge, as gRPC servers speak it: one
    /// multiplexed connection per upstream, trailers passed through.
    H2c,
    /// HTTP/2 over TLS (ALPN `h2`).
    H2,
}

impl UpstreamProtocol {
    /// Whether requests travel as HTTP/2 streams.
    pub fn is_h2(self) -> bool {
        matches!(self, UpstreamProtocol::H2c | UpstreamProtocol::H2)
    }

    /// The name in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2c => "h2c",
            UpstreamProtocol::H2 => "h2",
        }
    }
}

/// `pools.<colour>.tls = { ca = "...", server_name = "..." }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM file of the CA certificates that sign the upstreams' certificates.
    #[serde(deserialize_with = "path")]
    pub ca: PathBuf,
    /// The name the certificates must carry (and the SNI sent); the
    /// upstream's host by default.
    #[serde(default, deserialize_with = "opt_server_name")]
    pub server_name: Option<String>,
}

fn opt_server_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = values::non_empty_string(d)?;
    if s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '/' || c == ':')
    {
        return Err(de::Error::custom(format!(
            "{s:?} is not a server name: expected a DNS name such as \"orders.internal\" or an IP address"
        )));
    }
    Ok(Some(s))
}

/// One upstream server, `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
}

impl Upstream {
    /// Parses `host:port`, `[v6]:port` or `http://host:port`.
    pub fn parse(s: &str) -> Result<Upstream, String> {
        let bad = || {
            format!("{s:?} is not an upstream: expected \"HOST:PORT\" such as \"127.0.0.1:9001\"")
        };
        let rest = s.strip_prefix("http://").unwrap_or(s);
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.starts_with("https://") || rest.contains('/') {
            return Err(format!(
                "{s:?}: upstreams are plain HTTP HOST:PORT (TLS to upstreams is not supported)"
            ));
        }
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok(Upstream {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

fn upstreams<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Upstream>, D::Error> {
    let raw: Vec<String> = Vec::deserialize(d)?;
    if raw.is_empty() {
        return Err(de::Error::custom(
            "a pool needs at least one upstream, e.g. upstreams = [\"127.0.0.1:9001\"]",
        ));
    }
    let mut out = Vec::with_capacity(raw.len());
    for s in raw {
        let s = crate::interpolate(&s).map_err(de::Error::custom)?;
        let u = Upstream::parse(&s).map_err(de::Error::custom)?;
        if out.contains(&u) {
            return Err(de::Error::custom(format!("upstream {u} is listed twice")));
        }
        out.push(u);
    }
    Ok(out)
}

/// `health = { ... }`: active health checks for a pool.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// What a check sends: `http` (GET `path`, 2xx or 3xx passes) or `grpc`
    /// (`grpc.health.v1.Health/Check` for `service`, SERVING passes).
    pub kind: HealthKind,
    #[serde(deserialize_with = "health_path")]
    pub path: String,
    /// The service a `grpc` check asks about; `""` is the server as a whole.
    pub service: String,
    #[serde(deserialize_with = "values::positive_duration")]
    pub interval: Duration,
    #[serde(deserialize_with = "values::positive_duration")]
    pub timeout: Duration,
    /// Consecutive failures before an upstream is marked down.
    pub fall: u32,
    /// Consecutive successes before a down upstream is marked up again.
    pub rise: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            kind: HealthKind::Http,
            path: "/healthz".into(),
            service: String::new(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            fall: 2,
            rise: 2,
        }
    }
}

/// `health.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthKind {
    /// `GET <path>` over the pool's protocol.
    #[default]
    Http,
    /// The gRPC health checking protocol (`grpc.health.v1`); needs an
    /// HTTP/2 pool (`protocol = "h2c"` or `"h2"`).
    Grpc,
}

fn health_path<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = values::string(d)?;
    if !s.starts_with('/') || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(de::Error::custom(format!(
            "{s:?} is not a request path: expected something like \"/healthz\""
        )));
    }
    Ok(s)
}

/// `[admin]`: the control-plane API.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(
        default = "default_admin_listen",
        deserialize_with = "values::socket_addr"
    )]
    pub listen: SocketAddr,
    /// Bearer token demanded by every API call but `/healthz`, the OpenAPI
    /// document, the dashboard's files and (unless `metrics_auth`)
    /// `/metrics`. Required, never empty.
    #[serde(deserialize_with = "values::non_empty_string")]
    pub token: String,
    /// Demand the token on `GET /metrics` too.
    #[serde(default)]
    pub metrics_auth: bool,
    /// Label upstreams in `/metrics` with their addresses; by default they
    /// are labelled with their position in the pool, so an open `/metrics`
    /// does not map the internal network.
    #[serde(default)]
    pub metrics_addresses: bool,
    /// Admin connections served at once; past it new ones wait in the
    /// listen backlog.
    #[serde(
        default = "default_admin_max_connections",
        deserialize_with = "values::positive_u32"
    )]
    pub max_connections: u32,
    /// Serve the admin API over HTTPS on `listen` with this certificate
    /// and key (PEM). Without it the API is plain HTTP, for loopback.
    #[serde(default)]
    pub tls: Option<CertKey>,
}

/// A certificate chain and its private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertKey {
    #[serde(deserialize_with = "path")]
    pub cert: PathBuf,
    #[serde(deserialize_with = "path")]
    pub key: PathBuf,
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &"<redacted>")
            .field("metrics_auth", &self.metrics_auth)
            .field("metrics_addresses", &self.metrics_addresses)
            .field("max_connections", &self.max_connections)
            .field("tls", &self.tls)
            .finish()
    }
}

fn default_admin_max_connections() -> u32 {
    1024
}

fn default_admin_listen() -> SocketAddr {
    "127.0.0.1:9090".parse().expect("valid default")
}

/// `[rollout]`: the steps of a rollout and how each is judged.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutConfig {
    pub steps: Steps,
    /// Time at each step before the next gate check.
    #[serde(deserialize_with = "values::duration")]
    pub bake: Duration,
    pub analysis: AnalysisConfig,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            steps: Steps(
                [1, 5, 25, 50, 100]
                    .into_iter()
                    .map(|p| Step {
                        weight_bp: p * 100,
                        bake: None,
                    })
                    .collect(),
            ),
            bake: Duration::from_secs(30),
            analysis: AnalysisConfig::default(),
        }
    }
}

/// The ascending list of candidate weights a rollout walks through.
#[derive(Debug, Clone, PartialEq)]
pub struct Steps(pub Vec<Step>);

/// One rollout step: the candidate's weight and an optional bake override.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// Candidate weight in basis points (0..=10000).
    pub weight_bp: u32,
    pub bake: Option<Duration>,
}

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Step;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a percentage such as 25, or a table { weight = 25, bake = \"1m\" }")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Step, E> {
                self.visit_f64(v as f64)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Step, E> {
                self.visit_f64(v as f64)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Step, E> {
                let weight_bp = values::percent_to_basis_points(v).map_err(E::custom)?;
                Ok(Step {
                    weight_bp,
                    bake: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Step, A::Error> {
                let mut weight = None;
                let mut bake = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "weight" => {
                            let v: f64 = map.next_value()?;
                            weight = Some(
                                values::percent_to_basis_points(v).map_err(de::Error::custom)?,
                            );
                        }
                        "bake" => {
                            let s: String = map.next_value()?;
                            bake = Some(values::parse_duration(&s).map_err(de::Error::custom)?);
                        }
                        other => {
                            return Err(de::Error::custom(format!(
                                "unknown key `{other}` in a step: expected `weight` or `bake`"
                            )))
                        }
                    }
                }
                let weight_bp =
                    weight.ok_or_else(|| de::Error::custom("a step table needs `weight`"))?;
                Ok(Step { weight_bp, bake })
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Steps {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Steps;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an ascending list of percentages such as [1, 5, 25, 50, 100]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Steps, A::Error> {
                let mut steps: Vec<Step> = Vec::new();
                while let Some(step) = seq.next_element::<Step>()? {
                    if let Some(prev) = steps.last() {
                        if step.weight_bp <= prev.weight_bp {
                            return Err(de::Error::custom(format!(
                                "steps must rise: {} follows {} (write them in ascending order)",
                                step.weight_bp as f64 / 100.0,
                                prev.weight_bp as f64 / 100.0
                            )));
                        }
                    }
                    steps.push(step);
                }
                match steps.last() {
                    None => Err(de::Error::custom(
                        "steps must not be empty: e.g. steps = [1, 5, 25, 50, 100]",
                    )),
                    Some(s) if s.weight_bp == 0 => {
                        Err(de::Error::custom("steps must reach above 0"))
                    }
                    _ => Ok(Steps(steps)),
                }
            }
        }
        d.deserialize_seq(V)
    }
}

/// `[rollout.analysis]`: how the candidate is judged, continuously.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalysisConfig {
    /// Sliding window the rates and percentiles are computed over.
    #[serde(deserialize_with = "values::positive_duration")]
    pub window: Duration,
    /// How often analysis runs (sub-second).
    #[serde(deserialize_with = "values::positive_duration")]
    pub interval: Duration,
    /// Fewer candidate requests than this in the window is inconclusive.
    pub min_requests: u64,
    /// Candidate (5xx + transport failures) / requests above this rolls back.
    #[serde(deserialize_with = "values::ratio")]
    pub max_error_rate: f64,
    /// Candidate error rate above stable's by more than this rolls back.
    #[serde(deserialize_with = "values::opt_ratio")]
    pub max_error_rate_delta: Option<f64>,
    /// Candidate p99 above this rolls back.
    #[serde(deserialize_with = "values::opt_duration")]
    pub max_p99: Option<Duration>,
    /// Candidate p99 above stable's p99 times this rolls back.
    #[serde(deserialize_with = "values::opt_factor")]
    pub max_p99_ratio: Option<f64>,
    /// This many consecutive candidate failures roll back at once.
    pub fail_fast_after: Option<u32>,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        AnalysisConfig {
            window: Duration::from_secs(10),
            interval: Duration::from_millis(100),
            min_requests: 50,
            max_error_rate: 0.05,
            max_error_rate_delta: None,
            max_p99: None,
            max_p99_ratio: None,
            fail_fast_after: None,
        }
    }
}

/// `[state]`: where weights and rollout state persist.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    #[serde(deserialize_with = "path")]
    pub path: PathBuf,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            path: PathBuf::from("switchyard-state.json"),
        }
    }
}

/// `[database]`: the pair of databases (PostgreSQL, or MySQL/MariaDB)
/// switchyard prepares and keeps in sync. The engine follows from the URLs
/// ([`DatabaseConfig::engine`]); both must name the same one.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    #[serde(deserialize_with = "db_url")]
    pub blue: String,
    #[serde(deserialize_with = "db_url")]
    pub green: String,
    #[serde(default = "default_migrations", deserialize_with = "path")]
    pub migrations: PathBuf,
    #[serde(default)]
    pub mode: SyncMode,
    #[serde(default = "default_max_lag", deserialize_with = "values::duration")]
    pub max_lag: Duration,
    /// Parallel COPY streams for clone and verify.
    #[serde(default = "default_jobs")]
    pub jobs: usize,
    /// Longest time cutover may hold writes before giving up (below the
    /// proxy's safety valve, [`MAX_WRITE_HOLD`]).
    #[serde(
        default = "default_cutover_timeout",
        deserialize_with = "cutover_timeout"
    )]
    pub cutover_timeout: Duration,
    /// Where requests that may write go before cutover.
    #[serde(default)]
    pub writes: WritePolicy,
    /// After a client's write, its reads stay on the writer colour this long
    /// (0: off).
    #[serde(default, deserialize_with = "values::duration")]
    pub read_your_writes: Duration,
    /// After cutover, replicate green back to blue so a rollback loses nothing.
    #[serde(default = "default_true")]
    pub reverse: bool,
    /// How green's server reaches blue for its subscription, when it differs
    /// from `blue` (another host name inside a private network, say).
    #[serde(default, deserialize_with = "opt_db_url")]
    pub blue_from_green: Option<String>,
    /// How blue's server reaches green for reverse sync, when it differs
    /// from `green`.
    #[serde(default, deserialize_with = "opt_db_url")]
    pub green_from_blue: Option<String>,
    /// Whether `switchyard run` prepares green by itself when a rollout
    /// starts (preflight, clone, migrate, verify, replicate), or leaves it to
    /// the operator's `switchyard sync` commands.
    #[serde(default)]
    pub prepare: PrepareMode,
    /// Whether clone copies owners, grants and default privileges (when the
    /// roles exist on green), and verify compares them.
    #[serde(default)]
    pub roles: RolesMode,
    /// Flyway placeholders: `${name}` in migrations is replaced by the value.
    #[serde(default, deserialize_with = "placeholders")]
    pub placeholders: std::collections::BTreeMap<String, String>,
    /// Snapshot mode: what the gate does once blue has taken writes since
    /// green was cloned (green then lacks them, and a cutover loses them).
    #[serde(default)]
    pub stale_clone: StaleClonePolicy,
    /// Roles made read-only on the old primary at cutover, so writes that do
    /// not pass through the proxy (jobs, consoles) cannot land on a demoted
    /// database.
    #[serde(default, deserialize_with = "fence")]
    pub fence: Fence,
}

/// `[database] fence`: which roles a cutover makes read-only on the old
/// primary (and whose open sessions it ends there).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Fence {
    /// `fence = []` (the default): every role that can log in and is
    /// neither a superuser nor a replication role (nor switchyard's own).
    #[default]
    LoginRoles,
    /// `fence = ["app_rw", ...]`: exactly these roles.
    Roles(Vec<String>),
    /// `fence = false`: no fence (writes that bypass the proxy may then
    /// land on the old primary; the check after the cutover reports them).
    Off,
}

fn fence<'de, D: Deserializer<'de>>(d: D) -> Result<Fence, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Flag(bool),
        Roles(Vec<String>),
    }
    match Raw::deserialize(d).map_err(|_| {
        de::Error::custom(
            "fence is a list of role names (e.g. [\"app_rw\"]; [] for every login role that is neither a superuser nor a replication role), or false for no fence",
        )
    })? {
        Raw::Flag(false) => Ok(Fence::Off),
        Raw::Flag(true) => Ok(Fence::LoginRoles),
        Raw::Roles(r) if r.is_empty() => Ok(Fence::LoginRoles),
        Raw::Roles(r) => {
            if let Some(bad) = r.iter().find(|n| n.trim().is_empty()) {
                return Err(de::Error::custom(format!(
                    "fence names an empty role {bad:?}: list role names, e.g. [\"app_rw\"]"
                )));
            }
            Ok(Fence::Roles(r))
        }
    }
}

/// `[database] stale_clone`: a snapshot-mode green that blue has moved on from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StaleClonePolicy {
    /// The gate holds, saying what changed, until green is cloned again.
    #[default]
    Hold,
    /// The gate ignores blue's writes (losing them at cutover is accepted).
    Ignore,
}

fn placeholders<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, String>, D::Error> {
    let raw = std::collections::BTreeMap::<String, String>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            crate::interpolate::interpolate(&v)
                .map(|v| (k, v))
                .map_err(de::Error::custom)
        })
        .collect()
}

/// `[database] roles`: owners, grants and default privileges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolesMode {
    /// Copy them; preflight blocks when a role they need is missing on green.
    #[default]
    Copy,
    /// Leave them out: green's objects belong to green's user.
    Skip,
}

/// The proxy releases writes it holds after this long whatever happens (a
/// safety valve should the control plane never release them);
/// `cutover_timeout` must stay below it.
pub const MAX_WRITE_HOLD: Duration = Duration::from_secs(60);

fn cutover_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = values::positive_duration(d)?;
    if v >= MAX_WRITE_HOLD {
        return Err(de::Error::custom(format!(
            "{} is too long: the proxy releases held writes after {} whatever happens, so cutover_timeout must be below it (the default is 10s)",
            values::format_duration(v),
            values::format_duration(MAX_WRITE_HOLD)
        )));
    }
    Ok(v)
}

fn default_true() -> bool {
    true
}

fn opt_db_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    db_url(d).map(Some)
}

/// `[database] writes`: where requests with unsafe methods go before cutover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WritePolicy {
    /// POST, PUT, PATCH, DELETE (anything but GET, HEAD, OPTIONS, TRACE) go
    /// to the stable colour, whose database is the primary, until cutover.
    #[default]
    Stable,
    /// Writes follow the weights like reads (the colours share one database).
    Weighted,
}

/// `[database] prepare`: who runs the database steps of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrepareMode {
    /// `start` runs preflight, clone, migrate, verify (and replicate) itself,
    /// skipping what is already done and valid.
    #[default]
    Auto,
    /// The operator runs `switchyard sync`; the rollout waits at the gate.
    Manual,
}

impl DatabaseConfig {
    /// A configuration for this pair of databases with every other key at
    /// its default (as a `[database]` table naming only `blue` and `green`).
    pub fn new(blue: impl Into<String>, green: impl Into<String>) -> DatabaseConfig {
        DatabaseConfig {
            blue: blue.into(),
            green: green.into(),
            migrations: default_migrations(),
            mode: SyncMode::default(),
            max_lag: default_max_lag(),
            jobs: default_jobs(),
            cutover_timeout: default_cutover_timeout(),
            writes: WritePolicy::default(),
            read_your_writes: Duration::ZERO,
            reverse: true,
            blue_from_green: None,
            green_from_blue: None,
            prepare: PrepareMode::default(),
            roles: RolesMode::default(),
            placeholders: Default::default(),
            stale_clone: StaleClonePolicy::default(),
            fence: Fence::default(),
        }
    }

    /// The engine both databases run (from blue's URL; `check` makes sure
    /// green's, and the `*_from_*` URLs, name the same one).
    pub fn engine(&self) -> DatabaseEngine {
        DatabaseEngine::of(&self.blue).unwrap_or(DatabaseEngine::Postgres)
    }

    /// The URL green's server uses to reach blue.
    pub fn blue_for_green(&self) -> &str {
        self.blue_from_green.as_deref().unwrap_or(&self.blue)
    }
    /// The URL blue's server uses to reach green.
    pub fn green_for_blue(&self) -> &str {
        self.green_from_blue.as_deref().unwrap_or(&self.green)
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("blue", &redact_url(&self.blue))
            .field("green", &redact_url(&self.green))
            .field("migrations", &self.migrations)
            .field("mode", &self.mode)
            .field("max_lag", &self.max_lag)
            .field("jobs", &self.jobs)
            .field("cutover_timeout", &self.cutover_timeout)
            .field("writes", &self.writes)
            .field("read_your_writes", &self.read_your_writes)
            .field("reverse", &self.reverse)
            .field(
                "blue_from_green",
                &self.blue_from_green.as_deref().map(redact_url),
            )
            .field(
                "green_from_blue",
                &self.green_from_blue.as_deref().map(redact_url),
            )
            .field("prepare", &self.prepare)
            .field("roles", &self.roles)
            .field(
                "placeholders",
                &self.placeholders.keys().collect::<Vec<_>>(),
            )
            .field("stale_clone", &self.stale_clone)
            .field("fence", &self.fence)
            .finish()
    }
}

/// Hides the password in a `postgres://user:pass@host/db` URL for logs.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((userinfo, host)) = rest.split_once('@') {
            if let Some((user, _)) = userinfo.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
    }
    url.to_string()
}

fn db_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = values::non_empty_string(d)?;
    if DatabaseEngine::of(&s).is_none() {
        return Err(de::Error::custom(format!(
            "{:?} is not a database URL switchyard knows: expected a PostgreSQL connection string \
             (\"postgres://user@host:5432/db\" or \"host=... dbname=...\") or a MySQL/MariaDB URL \
             (\"mysql://user:password@host:3306/db\" or \"mariadb://...\")",
            redact_url(&s)
        )));
    }
    if DatabaseEngine::of(&s) == Some(DatabaseEngine::MySql) {
        let path = s.split_once("://").map(|(_, r)| r).unwrap_or("");
        let db = path.split_once('/').map(|(_, d)| d).unwrap_or("");
        let db = db.split(['?', '#']).next().unwrap_or("");
        if db.is_empty() {
            return Err(de::Error::custom(format!(
                "{:?} names no database: switchyard works on one database (schema) per side; \
                 add it to the URL's path, as in \"mysql://user@host:3306/app\"",
                redact_url(&s)
            )));
        }
    }
    Ok(s)
}

/// Which database server a `[database]` URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseEngine {
    /// `postgres://`, `postgresql://` or a `key=value` connection string.
    Postgres,
    /// `mysql://` or `mariadb://` (MySQL 8 and MariaDB 10.6 or newer).
    #[serde(rename = "mysql")]
    MySql,
}

impl DatabaseEngine {
    /// The engine a URL names, or `None` for a URL of neither.
    pub fn of(url: &str) -> Option<DatabaseEngine> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(DatabaseEngine::Postgres)
        } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            Some(DatabaseEngine::MySql)
        } else if !url.contains("://") && url.contains('=') {
            Some(DatabaseEngine::Postgres)
        } else {
            None
        }
    }

    /// The engine's name for messages.
    pub fn name(self) -> &'static str {
        match self {
            DatabaseEngine::Postgres => "PostgreSQL",
            DatabaseEngine::MySql => "MySQL/MariaDB",
        }
    }
}

fn default_migrations() -> PathBuf {
    PathBuf::from("migrations")
}
fn default_max_lag() -> Duration {
    Duration::from_secs(1)
}
fn default_jobs() -> usize {
    2
}
fn default_cutover_timeout() -> Duration {
    Duration::from_secs(10)
}

/// How green's database is kept: a one-off snapshot, or logical replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    Snapshot,
    #[default]
    Replicate,
}

/// `[webhooks]`: HTTP callbacks of the control plane.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Receives every event as JSON (POST).
    #[serde(deserialize_with = "opt_url")]
    pub notify: Option<String>,
    /// Asked (POST) before each weight increase: 2xx proceeds, anything else holds.
    #[serde(deserialize_with = "opt_url")]
    pub confirm: Option<String>,
    #[serde(deserialize_with = "values::positive_duration")]
    pub timeout: Duration,
    /// Signs every webhook body with HMAC-SHA256 under this key, in
    /// `X-Switchyard-Signature: sha256=<hex>`, so receivers can trust it
    /// ("": unsigned).
    #[serde(deserialize_with = "values::string")]
    pub secret: String,
    /// PEM file of the CA that signs the webhook servers' certificates, for
    /// private CAs (public ones are trusted already).
    #[serde(deserialize_with = "opt_path")]
    pub ca_file: Option<PathBuf>,
}

fn opt_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let s = values::string(d)?;
    Ok((!s.is_empty()).then(|| PathBuf::from(s)))
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            notify: None,
            confirm: None,
            timeout: Duration::from_secs(5),
            secret: String::new(),
            ca_file: None,
        }
    }
}

fn opt_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = values::string(d)?;
    if s.is_empty() {
        return Ok(None);
    }
    if !(s.starts_with("http://") || s.starts_with("https://")) {
        return Err(de::Error::custom(format!(
            "{s:?} is not a webhook URL: expected \"https://host/path\" or \"http://host:port/path\""
        )));
    }
    Ok(Some(s))
}

/// `[log]`: logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter such as "info" or "switchyard=debug,info".
    #[serde(deserialize_with = "values::non_empty_string")]
    pub level: String,
    pub format: LogFormat,
    /// One line per proxied request (target `switchyard::access`): client,
    /// method, URI, status, colour, upstream, seconds, bytes, complete.
    pub access: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
            access: false,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}
