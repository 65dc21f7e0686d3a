//! `switchyard run` and `switchyard check`: load the config, start the data
//! plane and the control plane, and handle signals (SIGTERM drains, SIGHUP
//! reloads, SIGUSR2 hands the sockets to a new process: [`crate::upgrade`]).

use anyhow::Context;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use switchyard_admin::ControlPlane;
use switchyard_config::Config;
use switchyard_proxy::{DataPlane, ServedCert, Stop};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::inherit::{Inherited, Source};
use crate::upgrade::{self, Sockets};

/// After a hand-over, how long idle keep-alive clients may still send one
/// more request here (answered with `Connection: close`) before idle
/// connections are closed; at most the drain timeout.
const HANDOVER_GRACE: Duration = Duration::from_secs(2);

pub fn check(path: &Path) -> anyhow::Result<ExitCode> {
    match validate(path) {
        Ok(config) => {
            println!(
                "{}: OK (proxy {}, {} blue and {} green upstreams, admin {})",
                path.display(),
                config.proxy.listen,
                config.pools.blue.upstreams.len(),
                config.pools.green.upstreams.len(),
                config.admin.listen
            );
            if let Some(w) = switchyard_admin::exposure_warning(&config) {
                eprintln!("{}: warning: {w}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Loads the config and checks what it refers to (TLS files) without
/// starting anything.
fn validate(path: &Path) -> Result<Config, String> {
    let config = Config::load_all(path).map_err(|errors| {
        let mut text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        if errors.len() > 1 {
            text.push(format!("{} errors in {}", errors.len(), path.display()));
        }
        text.join("\n")
    })?;
    if let Some(tls) = &config.proxy.tls {
        switchyard_proxy::tls_acceptor(tls).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    switchyard_admin::acceptor(&config).map_err(|e| format!("{}: {e}", path.display()))?;
    switchyard_proxy::check_pools(&config).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(config)
}

pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    // First, before anything opens a file or starts a thread.
    let mut inherited = Inherited::from_env()?;
    let config = match validate(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    init_logging(&config);
    raise_open_file_limit(&config);
    inherited
        .check(&config)
        .with_context(|| path.display().to_string())?;
    let runtime = build_runtime(config.proxy.workers)?;
    runtime.block_on(serve_inheriting(config, path, inherited))?;
    Ok(ExitCode::SUCCESS)
}

/// Raises the soft limit on open files towards the hard one, so that
/// `max_connections` client sockets, their upstream connections and the
/// admin's fit (the default soft limit, 1024, stopped the proxy at 1,100
/// idle connections in issue 9). Never lowers it; says so when the hard
/// limit is too low.
fn raise_open_file_limit(config: &Config) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let want =
        2 * u64::from(config.proxy.max_connections) + u64::from(config.admin.max_connections) + 256;
    let limit = getrlimit(Resource::Nofile);
    let (soft, hard) = (limit.current.unwrap_or(u64::MAX), limit.maximum);
    if soft >= want {
        return;
    }
    let target = hard.map_or(want, |h| want.min(h));
    if target > soft
        && setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(target),
                maximum: hard,
            },
        )
        .is_ok()
    {
        tracing::info!(from = soft, to = target, "raised the open-file limit");
    }
    if target < want {
        tracing::warn!(
            limit = target,
            needed = want,
            "the open-file limit is below what max_connections needs (two sockets per proxied connection): raise it (LimitNOFILE= under systemd, ulimit -n) or lower [proxy] max_connections"
        );
    }
}

pub(crate) fn build_runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if workers > 1 {
            b.worker_threads(workers);
        }
        b
    };
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub(crate) fn init_logging(config: &Config) {
    crate::logging::init(&config.log);
}

/// Starts everything described by `config` and serves until SIGTERM/SIGINT.
pub(crate) async fn serve(config: Config, path: &Path) -> anyhow::Result<()> {
    serve_inheriting(config, path, Inherited::nothing()).await
}

/// As [`serve`], on the sockets of `inherited` where given.
async fn serve_inheriting(config: Config, path: &Path, inherited: Inherited) -> anyhow::Result<()> {
    let dp = DataPlane::new(&config, 0).context("cannot build the data plane")?;
    let cp = ControlPlane::start(&config, dp.clone()).context("cannot start the control plane")?;
    if let Some(db) = &config.database {
        // One controller per pair of databases, whatever the state file.
        cp.take_database_lock(db)
            .await
            .map_err(|e| anyhow::anyhow!("cannot start the control plane: {e}"))?;
        // Every weight increase needs the candidate's database verified
        // (and, in replicate mode, caught up).
        cp.add_gate(switchyard_admin::DatabaseGate::start(db.clone()));
    }
    let source = inherited.from;
    let listeners = switchyard_proxy::bind_inheriting(
        &config.proxy,
        switchyard_proxy::Inherited {
            http: inherited.proxy,
            tls: inherited.tls,
        },
    )
    .await?;
    let admin_listener = match inherited.admin {
        Some(l) => switchyard_admin::adopt(&config, l).await?,
        None => switchyard_admin::bind(&config).await?,
    };
    let admin_addr = admin_listener.local_addr()?;
    let admin_scheme = if admin_listener.is_tls() {
        "https"
    } else {
        "http"
    };
    // Kept to hand over on SIGUSR2.
    let mut sockets = listeners
        .try_clone_sockets()
        .context("cannot duplicate the listening sockets")?;
    sockets.push((
        "admin",
        admin_listener
            .try_clone_socket()
            .context("cannot duplicate the admin socket")?,
    ));
    // Handlers before anyone hears that we serve: a reload or stop may come
    // the instant we say so (SIGHUP's default action would end the process).
    let caught = Caught::install().context("cannot install signal handlers")?;
    // One machine-readable line on stdout with the bound addresses (useful
    // with port 0); everything else goes to the log on stderr. Nobody may
    // be reading stdout any more (a predecessor's reader has gone): that is
    // no reason to stop.
    let line = match listeners.tls_addr() {
        Some(tls) => format!(
            "switchyard listening proxy=http://{} tls=https://{} admin={admin_scheme}://{}",
            listeners.http_addr(),
            tls,
            admin_addr
        ),
        None => format!(
            "switchyard listening proxy=http://{} admin={admin_scheme}://{}",
            listeners.http_addr(),
            admin_addr
        ),
    };
    let _ = writeln!(std::io::stdout().lock(), "{line}");
    tracing::info!(
        proxy = %listeners.http_addr(), admin = %admin_addr, pid = std::process::id(),
        sockets = match source {
            Source::Nobody => "bound",
            Source::Predecessor => "inherited from the previous process",
            Source::Systemd => "from systemd",
        },
        "switchyard started"
    );
    // systemd first: a predecessor exits once it reads `ready`, and systemd
    // must know the new main process by then.
    crate::notify::ready();
    if let Some(mut ready) = inherited.ready {
        // The predecessor stops accepting once it reads this.
        let _ = writeln!(ready, "ready pid={}", std::process::id());
    }

    let (stop_tx, stop_rx) = watch::channel(None::<Stop>);
    let stopped = |mut rx: watch::Receiver<Option<Stop>>| async move {
        match rx.wait_for(|s| s.is_some()).await {
            Ok(s) => s.unwrap_or(Stop::Drain),
            Err(_) => Stop::Drain,
        }
    };
    let certs = Certs {
        proxy: listeners.tls_cert(),
        admin: admin_listener.tls_cert(),
    };
    tokio::spawn(signals(
        caught,
        stop_tx,
        path.to_path_buf(),
        config.clone(),
        cp.clone(),
        Sockets(sockets),
        certs,
    ));
    let drain = config.proxy.drain_timeout;
    let proxy = listeners.serve_until(dp, stopped(stop_rx.clone()), drain);
    let admin_stop = stop_rx.clone();
    let admin = async move {
        // Event streams end at shutdown; an admin call that hangs anyway
        // gets the drain time, then is cut.
        let admin_stopped = async move {
            stopped(stop_rx).await;
        };
        tokio::select! {
            r = cp.serve(admin_listener, admin_stopped) => r,
            _ = async {
                stopped(admin_stop).await;
                tokio::time::sleep(drain).await;
            } => {
                tracing::warn!("admin connections still open after the drain timeout; closing them");
                Ok(())
            }
        }
    };
    let (_, admin_result) = tokio::join!(proxy, admin);
    admin_result.context("admin API failed")?;
    tracing::info!("switchyard stopped");
    Ok(())
}

/// A successor process starting: its pid once it serves, or why not.
type Successor<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<u32, String>> + Send + 'a>>;

/// The certificates the TLS listeners serve, replaced on reload.
struct Certs {
    proxy: Option<Arc<ServedCert>>,
    admin: Option<Arc<ServedCert>>,
}

/// The signals `switchyard run` handles, caught from before it says it
/// serves.
struct Caught {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Caught {
    fn install() -> std::io::Result<Caught> {
        Ok(Caught {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }
}

async fn signals(
    caught: Caught,
    stop: watch::Sender<Option<Stop>>,
    path: std::path::PathBuf,
    mut running: Config,
    cp: ControlPlane,
    sockets: Sockets,
    certs: Certs,
) {
    let Caught {
        mut term,
        mut int,
        mut hup,
        mut usr2,
    } = caught;
    let mut successor: Option<Successor<'_>> = None;
    let how = loop {
        tokio::select! {
            _ = term.recv() => break Stop::Drain,
            _ = int.recv() => break Stop::Drain,
            _ = hup.recv() => {
                crate::notify::reloading();
                running = reload(&path, running, &cp, &certs);
                crate::notify::notify("READY=1");
            }
            _ = usr2.recv() => {
                if successor.is_some() {
                    tracing::warn!("SIGUSR2 ignored: a new process is already starting");
                    continue;
                }
                // The successor reads the state file when it starts: from
                // now on this process changes nothing in it. (The config on
                // disk is the successor's to judge: a new binary may accept
                // keys this one does not know.)
                if let Err(why) = cp.freeze("switchyard is handing over to a new process (SIGUSR2): try again in a moment") {
                    tracing::error!("upgrade refused, still serving: {why}");
                    continue;
                }
                tracing::info!("SIGUSR2: upgrading (starting the binary on disk on our sockets)");
                successor = Some(Box::pin(upgrade::start_successor(&sockets)));
            }
            r = async { successor.as_mut().expect("guarded").await }, if successor.is_some() => {
                successor = None;
                match r {
                    Ok(pid) => {
                        tracing::info!(new_pid = pid, "upgrade: the new process serves; this one stops accepting, drains and exits");
                        let grace = HANDOVER_GRACE.min(running.proxy.drain_timeout);
                        break Stop::HandOver { grace };
                    }
                    Err(why) => {
                        tracing::error!("upgrade failed, still serving: {why}");
                        cp.thaw();
                    }
                }
            }
        }
    };
    // Without our copies, the sockets close with the listeners (after a
    // hand-over the successor has its own).
    drop(successor);
    drop(sockets);
    if how == Stop::Drain {
        tracing::info!("shutdown requested: draining");
        crate::notify::notify("STOPPING=1");
    }
    let _ = stop.send(Some(how));
}

/// Applies the config file again, certificates included (read from their
/// files again even when the paths did not change: a renewal replaces the
/// files in place); a bad file changes nothing.
fn reload(path: &Path, running: Config, cp: &ControlPlane, certs: &Certs) -> Config {
    let next = match validate(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("reload rejected, still serving the previous configuration: {e}");
            return running;
        }
    };
    // The certificates are read now, before anything is applied: one that
    // does not load rejects the whole reload.
    let mut new_certs = Vec::new();
    for (served, files) in [
        (
            &certs.proxy,
            next.proxy.tls.as_ref().map(|t| (&t.cert, &t.key)),
        ),
        (
            &certs.admin,
            next.admin.tls.as_ref().map(|t| (&t.cert, &t.key)),
        ),
    ] {
        let (Some(served), Some((cert, key))) = (served, files) else {
            continue;
        };
        match served.read(cert, key) {
            Ok(loaded) => new_certs.push((served, loaded)),
            Err(e) => {
                tracing::error!(
                    "reload rejected, still serving the previous configuration: {}: {e}",
                    path.display()
                );
                return running;
            }
        }
    }
    if let Err(e) = cp.data_plane().reload(&next) {
        tracing::error!("reload rejected, still serving the previous configuration: {e}");
        return running;
    }
    for (served, loaded) in new_certs {
        tracing::info!(cert = %loaded.cert_path().display(), "TLS certificate reloaded: new connections get it");
        served.install(loaded);
    }
    cp.reload(&next);
    if let Err(e) = crate::logging::reload(&next.log) {
        tracing::error!("{e}");
    }
    if next.database != running.database {
        match &next.database {
            Some(db) => cp.replace_gate(switchyard_admin::DatabaseGate::start(db.clone())),
            None => cp.remove_gate("database"),
        }
    }
    if next.rollout.analysis.window != running.rollout.analysis.window {
        tracing::warn!(
            "[rollout.analysis] window changed: the proxy's statistics window is sized at start, so the new window takes effect on restart"
        );
    }
    if next.proxy.listen != running.proxy.listen
        || next.admin.listen != running.admin.listen
        || next.proxy.tls.as_ref().map(|t| t.listen) != running.proxy.tls.as_ref().map(|t| t.listen)
    {
        tracing::warn!("listen addresses changed in the config: they take effect on restart");
    }
    let (n, r) = (&next.proxy, &running.proxy);
    if n.header_timeout != r.header_timeout
        || n.idle_timeout != r.idle_timeout
        || n.max_header_size != r.max_header_size
        || n.max_connections != r.max_connections
        || n.backlog != r.backlog
        || next.admin.max_connections != running.admin.max_connections
    {
        tracing::warn!(
            "connection limits changed in the config (header_timeout, idle_timeout, max_header_size, max_connections, backlog): they belong to the listeners and take effect on restart"
        );
    }
    let mut restart_only = Vec::new();
    if next.proxy.tls.is_some() != running.proxy.tls.is_some() {
        restart_only.push("[proxy] tls (added or removed)");
    }
    if next.admin.tls.is_some() != running.admin.tls.is_some() {
        restart_only.push("[admin] tls (added or removed)");
    }
    if next.webhooks.ca_file != running.webhooks.ca_file {
        restart_only.push("[webhooks] ca_file");
    }
    if next.proxy.workers != running.proxy.workers {
        restart_only.push("[proxy] workers");
    }
    if next.proxy.drain_timeout != running.proxy.drain_timeout {
        restart_only.push("[proxy] drain_timeout");
    }
    if next.state.path != running.state.path {
        restart_only.push("[state] path");
    }
    if !restart_only.is_empty() {
        tracing::warn!(
            "{} changed in the config: taken at start, so the change takes effect on restart (or SIGUSR2)",
            restart_only.join(", ")
        );
    }
    tracing::info!(file = %path.display(), "configuration reloaded");
    next
}
