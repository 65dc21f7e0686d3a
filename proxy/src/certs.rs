//! The certificate a TLS listener serves, loaded from its PEM files and
//! replaced in place on reload (`SIGHUP`), as nginx does: a renewed
//! certificate reaches new connections without a restart, connections
//! already open keep the one they were made with, and files that do not
//! load (or a key that does not fit) leave the served certificate alone.

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::listener::{load_certs, load_key, tls_err};
use crate::ProxyError;

/// A listener's certificate and key, swappable while it serves.
pub struct ServedCert {
    current: ArcSwap<Loaded>,
    provider: Arc<CryptoProvider>,
}

/// A certificate and key read from their files, ready to serve.
pub struct Loaded {
    key: Arc<CertifiedKey>,
    cert_path: PathBuf,
}

impl Loaded {
    /// The certificate file it was read from.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }
}

impl std::fmt::Debug for ServedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedCert")
            .field("cert", &self.current.load().cert_path)
            .finish()
    }
}

impl ServedCert {
    /// Loads the PEM certificate chain at `cert` and the key at `key`.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<ServedCert>, ProxyError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let loaded = read(&provider, cert, key)?;
        Ok(Arc::new(ServedCert {
            current: ArcSwap::from_pointee(loaded),
            provider,
        }))
    }

    /// Reads a replacement from `cert` and `key` without serving it yet:
    /// the first half of a reload, which fails (changing nothing) when the
    /// files do not load or the key does not fit the certificate.
    pub fn read(&self, cert: &Path, key: &Path) -> Result<Loaded, ProxyError> {
        read(&self.provider, cert, key)
    }

    /// Serves `loaded` to every handshake from now on.
    pub fn install(&self, loaded: Loaded) {
        self.current.store(Arc::new(loaded));
    }

    pub(crate) fn provider(&self) -> Arc<CryptoProvider> {
        self.provider.clone()
    }
}

impl ResolvesServerCert for ServedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().key.clone())
    }
}

fn read(provider: &CryptoProvider, cert: &Path, key: &Path) -> Result<Loaded, ProxyError> {
    let chain = load_certs(cert)?;
    let private = load_key(key)?;
    let certified = CertifiedKey::from_der(chain, private, provider)
        .map_err(|e| tls_err("key", key, format!("does not fit the certificate: {e}")))?;
    Ok(Loaded {
        key: Arc::new(certified),
        cert_path: cert.to_path_buf(),
    })
}
