//! Active HTTP health checks: one task per upstream that has `health`
//! configured. `fall` failures in a row mark it down, `rise` passes mark it up.
//! The task ends when its upstream is dropped (removed by a reload).

use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::pool::{connect_tcp, Upstream};

/// Starts checking `upstream` on the current runtime.
pub(crate) fn spawn(upstream: &Arc<Upstream>) {
    let Some(cfg) = upstream.health.clone() else {
        return;
    };
    let weak: Weak<Upstream> = Arc::downgrade(upstream);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(up) = weak.upgrade() else { return };
            let result = tokio::time::timeout(cfg.timeout, probe(&up, &cfg.path))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {:?}", cfg.timeout)));
            match result {
                Ok(()) => {
                    up.fails.store(0, Relaxed);
                    let passes = up.passes.fetch_add(1, Relaxed) + 1;
                    if !up.is_healthy() && passes >= cfg.rise {
                        up.set_healthy(true);
                        tracing::info!(upstream = %up.name, "upstream is healthy again");
                    }
                }
                Err(reason) => {
                    up.passes.store(0, Relaxed);
                    let fails = up.fails.fetch_add(1, Relaxed) + 1;
                    if up.is_healthy() && fails >= cfg.fall {
                        up.set_healthy(false);
                        tracing::warn!(upstream = %up.name, %reason, "upstream failed health checks; skipping it");
                    }
                }
            }
        }
    });
}

async fn probe(up: &Upstream, path: &str) -> Result<(), String> {
    let stream = connect_tcp(up.addr, Duration::from_secs(3600))
        .await
        .map_err(|e| e.to_string())?;
    let (mut tx, conn) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(http::header::HOST, up.name.as_str())
        .header(http::header::USER_AGENT, "switchyard-health")
        .header(http::header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("GET {path} answered {}", status.as_u16()))
    }
}
