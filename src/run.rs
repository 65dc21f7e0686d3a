//! `switchyard run` and `switchyard check`: load the config, start the data
//! plane and the control plane, and handle signals (SIGTERM drains, SIGHUP
//! reloads).

use anyhow::Context;
use std::path::Path;
use std::process::ExitCode;
use switchyard_admin::ControlPlane;
use switchyard_config::{Config, LogFormat};
use switchyard_proxy::DataPlane;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

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
    Ok(config)
}

pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let config = match validate(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    init_logging(&config);
    let runtime = build_runtime(config.proxy.workers)?;
    runtime.block_on(serve(config, path))?;
    Ok(ExitCode::SUCCESS)
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
    use tracing_subscriber::EnvFilter;
    // PostgreSQL NOTICEs ("already exists, skipping") are not news.
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("{},tokio_postgres=warn", config.log.level)))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Starts everything described by `config` and serves until SIGTERM/SIGINT.
pub(crate) async fn serve(config: Config, path: &Path) -> anyhow::Result<()> {
    let dp = DataPlane::new(&config, 0).context("cannot build the data plane")?;
    let cp = ControlPlane::start(&config, dp.clone()).context("cannot start the control plane")?;
    if let Some(db) = &config.database {
        // Every weight increase needs green's database verified (and, in
        // replicate mode, caught up).
        cp.add_gate(switchyard_admin::DatabaseGate::start(db.clone()));
    }
    let listeners = switchyard_proxy::bind(&config.proxy).await?;
    let admin_listener = switchyard_admin::bind(&config).await?;
    let admin_addr = admin_listener.local_addr()?;
    // One machine-readable line on stdout with the bound addresses (useful
    // with port 0); everything else goes to the log on stderr.
    match listeners.tls_addr() {
        Some(tls) => println!(
            "switchyard listening proxy=http://{} tls=https://{} admin=http://{}",
            listeners.http_addr(),
            tls,
            admin_addr
        ),
        None => println!(
            "switchyard listening proxy=http://{} admin=http://{}",
            listeners.http_addr(),
            admin_addr
        ),
    }
    tracing::info!(proxy = %listeners.http_addr(), admin = %admin_addr, "switchyard started");

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    tokio::spawn(signals(
        stop_tx,
        path.to_path_buf(),
        config.clone(),
        cp.clone(),
    ));
    let drain = config.proxy.drain_timeout;
    let proxy = listeners.serve(dp, stopped(stop_rx.clone()), drain);
    let admin_stop = stop_rx.clone();
    let admin = async move {
        // Event streams end at shutdown; an admin call that hangs anyway
        // gets the drain time, then is cut.
        tokio::select! {
            r = cp.serve(admin_listener, stopped(stop_rx)) => r,
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

async fn signals(
    stop: watch::Sender<bool>,
    path: std::path::PathBuf,
    mut running: Config,
    cp: ControlPlane,
) {
    let (mut term, mut int, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        _ => {
            tracing::error!("cannot install signal handlers");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                running = reload(&path, running, &cp);
            }
        }
    }
    tracing::info!("shutdown requested: draining");
    let _ = stop.send(true);
}

/// Applies the config file again; a bad file changes nothing.
fn reload(path: &Path, running: Config, cp: &ControlPlane) -> Config {
    let next = match validate(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("reload rejected, still serving the previous configuration: {e}");
            return running;
        }
    };
    if let Err(e) = cp.data_plane().reload(&next) {
        tracing::error!("reload rejected, still serving the previous configuration: {e}");
        return running;
    }
    cp.reload(&next);
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
    tracing::info!(file = %path.display(), "configuration reloaded");
    next
}
