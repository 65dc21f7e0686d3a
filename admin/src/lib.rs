//! switchyard-admin is the control plane: it decides the weights. It owns the
//! rollout state machine, continuous analysis with automatic rollback, the
//! gates a step must pass, the persistent state store, the admin HTTP API and
//! the webhooks. It drives the data plane through
//! [`switchyard_proxy::DataPlane`] and never forwards application traffic.
#![forbid(unsafe_code)]

mod api;
mod store;

pub use store::{PersistedState, Store, StoreError};

use arc_swap::ArcSwap;
use std::future::Future;
use std::sync::Arc;
use switchyard_config::Config;
use switchyard_proxy::DataPlane;

/// Errors of the control plane.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr} for the admin API: {source} (is another process using the port?)")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Settings of the control plane that a reload may change.
pub(crate) struct Settings {
    pub token: String,
    pub metrics_auth: bool,
}

pub(crate) struct Inner {
    pub dp: DataPlane,
    pub settings: ArcSwap<Settings>,
    pub store: Store,
}

/// The running control plane. Cheap to clone.
#[derive(Clone)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

impl ControlPlane {
    /// Opens the state store named by `[state]`, restores the persisted
    /// weights into `dp`, and returns the control plane. Must run inside a
    /// Tokio runtime.
    pub fn start(config: &Config, dp: DataPlane) -> Result<ControlPlane, AdminError> {
        let store = Store::open(&config.state.path)?;
        dp.set_green_bp(store.current().green_bp);
        Ok(ControlPlane {
            inner: Arc::new(Inner {
                dp,
                settings: ArcSwap::from_pointee(settings_of(config)),
                store,
            }),
        })
    }

    /// The admin API as an axum router (used by `serve` and by tests).
    pub fn router(&self) -> axum::Router {
        api::router(self.inner.clone())
    }

    /// Serves the admin API on `listener` until `shutdown` completes.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Applies a reloaded configuration (token, analysis settings).
    pub fn reload(&self, config: &Config) {
        self.inner.settings.store(Arc::new(settings_of(config)));
    }

    /// The data plane this control plane drives.
    pub fn data_plane(&self) -> &DataPlane {
        &self.inner.dp
    }
}

fn settings_of(config: &Config) -> Settings {
    Settings {
        token: config.admin.token.clone(),
        metrics_auth: config.admin.metrics_auth,
    }
}

/// Binds the admin listener of `[admin]`.
pub async fn bind(config: &Config) -> Result<tokio::net::TcpListener, AdminError> {
    let addr = config.admin.listen;
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })
}
