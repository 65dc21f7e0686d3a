//! The log on stderr: `[log] level` (a tracing filter; `RUST_LOG`, when
//! set, wins), `[log] format` (text or JSON), `[log] access` (the
//! `switchyard::access` lines, whatever the level). ANSI colours only when
//! stderr is a terminal. Both the filter and the format are swapped in
//! place on SIGHUP by [`reload`].

use std::io::IsTerminal;
use std::sync::OnceLock;
use switchyard_config::{LogConfig, LogFormat};
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

type Filtered = Layered<reload::Layer<EnvFilter, Registry>, Registry>;
type Output = Box<dyn Layer<Filtered> + Send + Sync>;

struct Handles {
    filter: reload::Handle<EnvFilter, Registry>,
    output: reload::Handle<Output, Filtered>,
}

static HANDLES: OnceLock<Handles> = OnceLock::new();

/// Installs the log for `config`. Called once, by the subcommand, before
/// anything logs.
pub(crate) fn init(config: &LogConfig) {
    let (filter, filter_handle) = reload::Layer::new(filter_for(config));
    let (output, output_handle) = reload::Layer::new(output_for(config));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init();
    if installed.is_ok() {
        let _ = HANDLES.set(Handles {
            filter: filter_handle,
            output: output_handle,
        });
    }
}

/// Applies a reloaded `[log]`: level, format and access log.
pub(crate) fn reload(config: &LogConfig) -> Result<(), String> {
    let Some(h) = HANDLES.get() else {
        return Ok(());
    };
    h.filter
        .reload(filter_for(config))
        .map_err(|e| format!("cannot apply [log] level: {e}"))?;
    h.output
        .reload(output_for(config))
        .map_err(|e| format!("cannot apply [log] format: {e}"))
}

fn filter_for(config: &LogConfig) -> EnvFilter {
    // PostgreSQL NOTICEs ("already exists, skipping") are not news.
    let mut filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("{},tokio_postgres=warn", config.level)))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let access = if config.access { "info" } else { "off" };
    if let Ok(d) = format!("switchyard::access={access}").parse() {
        filter = filter.add_directive(d);
    }
    filter
}

fn output_for(config: &LogConfig) -> Output {
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match config.format {
        LogFormat::Json => layer.json().boxed(),
        LogFormat::Text => layer.with_ansi(std::io::stderr().is_terminal()).boxed(),
    }
}
