//! Webhooks: a JSON POST with a timeout over a pooled hyper client. The
//! `notify` hook receives every event; the `confirm` hook (see
//! [`crate::gates::ConfirmWebhook`]) is asked before each weight increase.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::events::Event;

use crate::Inner;

/// A small HTTP client for webhooks. Cheap to clone.
#[derive(Clone)]
pub struct WebhookClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for WebhookClient {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        WebhookClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

impl WebhookClient {
    /// POSTs `body` as JSON to `url`; returns the status code, or why no
    /// answer came within `timeout`.
    pub async fn post_json(
        &self,
        url: &str,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<u16, String> {
        let req = http::Request::post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "switchyard")
            .body(Full::new(Bytes::from(body.to_string())))
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
            .post_json(url, &body, settings.webhooks.timeout)
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
