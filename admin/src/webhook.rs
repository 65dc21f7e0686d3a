//! Webhooks: a JSON POST with a timeout over a pooled hyper client, over
//! HTTPS (rustls, public CAs and `[webhooks] ca_file`) or HTTP. With
//! `[webhooks] secret`, every body is signed: `X-Switchyard-Signature:
//! sha256=<hex HMAC-SHA256 of the body>`, so a receiver can check that it
//! came from switchyard and was not altered. The `notify` hook receives
//! every event; the `confirm` hook (see [`crate::gates::ConfirmWebhook`]) is
//! asked before each weight increase.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::model::events::Event;

use crate::Inner;

/// A small HTTP(S) client for webhooks. Cheap to clone.
#[derive(Clone)]
pub struct WebhookClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl WebhookClient {
    /// A client trusting the public CAs and, if given, `ca_file`'s.
    pub fn new(ca_file: Option<&std::path::Path>) -> Result<WebhookClient, String> {
        Ok(WebhookClient {
            client: https_client(ca_file, "[webhooks] ca_file")?,
        })
    }
}

/// The client [`https_client`] builds.
pub type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An HTTP and HTTPS client (rustls) trusting the public CAs and, if given,
/// the PEM certificates in `ca_file` (named `what` in errors). Used for
/// webhooks and by `switchyard ctl` for an admin API behind `[admin] tls`.
pub fn https_client(ca_file: Option<&std::path::Path>, what: &str) -> Result<HttpsClient, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
        let mut found = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| format!("{what} {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{what} {}: {e}", path.display()))?;
            found += 1;
        }
        if found == 0 {
            return Err(format!(
                "{what} {}: holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
                path.display()
            ));
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

impl Default for WebhookClient {
    fn default() -> Self {
        WebhookClient::new(None).expect("the public CAs load")
    }
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

impl WebhookClient {
    /// POSTs `body` as JSON to `url`; returns the status code, or why no
    /// answer came within `timeout`.
    pub async fn post_json(
        &self,
        url: &str,
        body: &serde_json::Value,
        timeout: Duration,
        secret: &str,
    ) -> Result<u16, String> {
        let body = Bytes::from(body.to_string());
        let mut req = http::Request::post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "switchyard");
        if !secret.is_empty() {
            req = req.header("x-switchyard-signature", signature(secret, &body));
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| format!("bad webhook URL {url}: {e}"))?;
        let call = async {
            let resp = self.client.request(req).await.map_err(|e| {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg.push_str(&format!(": {s}"));
                    src = s.source();
                }
                msg
            })?;
            let status = resp.status().as_u16();
            // Drain the (small) body so the connection can be reused.
            let _ = resp.into_body().collect().await;
            Ok(status)
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no answer within {}",
                switchyard_config::format_duration(timeout)
            )),
        }
    }
}

/// Delivers every event to the `notify` webhook, in order, one at a time.
/// Runs for the life of the control plane; a failing hook is logged and
/// never holds the rollout up.
pub(crate) async fn notify_loop(inner: Arc<Inner>, mut rx: broadcast::Receiver<Event>) {
    loop {
        let event = match rx.recv().await {
            Ok(e) => e,
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "notify webhook fell behind; events skipped");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let settings = inner.settings.load_full();
        let Some(url) = settings.webhooks.notify.as_deref() else {
            continue;
        };
        let body = serde_json::to_value(&event).expect("event serializes");
        match inner
            .webhooks
            .post_json(
                url,
                &body,
                settings.webhooks.timeout,
                &settings.webhooks.secret,
            )
            .await
        {
            Ok(s) if (200..300).contains(&s) => {}
            Ok(s) => {
                tracing::warn!(%url, status = s, kind = %event.kind, "notify webhook refused an event")
            }
            Err(e) => tracing::warn!(%url, error = %e, kind = %event.kind, "notify webhook failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn signature_is_hmac_sha256_in_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            super::signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
