//! Active health checks: one task per upstream that has `health`
//! configured, speaking the pool's protocol: `GET <path>` (2xx or 3xx
//! passes), or the gRPC health checking protocol (SERVING passes). `fall` failures in a row mark it down, `rise` passes mark it up.
//! The task ends when its upstream is dropped (removed by a reload).

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Uri, Version};
use http_body_util::{BodyExt, Full};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;
use switchyard_config::{HealthConfig, HealthKind};

use crate::grpc;
use crate::pool::Upstream;

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
            let result = tokio::time::timeout(cfg.timeout, probe(&up, &cfg))
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

/// One check over the upstream's own protocol (and TLS), on a connection
/// of its own that is closed afterwards.
async fn probe(up: &Upstream, cfg: &HealthConfig) -> Result<(), String> {
    let h2 = up.link.protocol.is_h2();
    let scheme = if up.link.is_tls() { "https" } else { "http" };
    let target = |path: &str| -> Result<Uri, String> {
        if h2 {
            Uri::builder()
                .scheme(scheme)
                .authority(up.name.as_str())
                .path_and_query(path)
                .build()
                .map_err(|e| e.to_string())
        } else {
            Uri::try_from(path).map_err(|e| e.to_string())
        }
    };
    let mut req = match cfg.kind {
        HealthKind::Http => Request::get(target(&cfg.path)?)
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?,
        HealthKind::Grpc => Request::post(target("/grpc.health.v1.Health/Check")?)
            .header(header::CONTENT_TYPE, "application/grpc")
            .header(header::TE, "trailers")
            .body(Full::new(grpc::health_request(&cfg.service)))
            .map_err(|e| e.to_string())?,
    };
    let headers = req.headers_mut();
    headers.insert(
        header::USER_AGENT,
        HeaderValue::from_static("switchyard-health"),
    );
    if h2 {
        *req.version_mut() = Version::HTTP_2;
    } else {
        let host = HeaderValue::from_str(&up.name).map_err(|e| e.to_string())?;
        req.headers_mut().insert(header::HOST, host);
        req.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    // The connect is bounded by the caller's `timeout`.
    let forever = Duration::from_secs(3600);
    let resp = if h2 {
        let mut tx = up
            .link
            .connect_h2::<Full<Bytes>>(up.addr, forever)
            .await
            .map_err(|e| e.to_string())?;
        tx.try_send_request(req).await
    } else {
        let mut tx = up
            .link
            .connect_upgradable::<Full<Bytes>>(up.addr, forever)
            .await
            .map_err(|e| e.to_string())?;
        tx.try_send_request(req).await
    }
    .map_err(|e| e.into_error().to_string())?;
    let status = resp.status();
    match cfg.kind {
        HealthKind::Http if status.is_success() || status.is_redirection() => Ok(()),
        HealthKind::Http => Err(format!("GET {} answered {}", cfg.path, status.as_u16())),
        HealthKind::Grpc => {
            let (parts, body) = resp.into_parts();
            if !status.is_success() {
                return Err(format!(
                    "the gRPC health check answered HTTP {}",
                    status.as_u16()
                ));
            }
            let collected = body.collect().await.map_err(|e| e.to_string())?;
            let trailers = collected.trailers().cloned().unwrap_or_default();
            let code = trailers
                .get(&grpc::GRPC_STATUS)
                .or_else(|| parts.headers.get(&grpc::GRPC_STATUS))
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            match code.as_deref() {
                Some("0") => {}
                Some(c) => {
                    return Err(format!("the gRPC health check failed with grpc-status {c}"))
                }
                None => return Err("the gRPC health check answered without a grpc-status".into()),
            }
            match grpc::health_status(&collected.to_bytes())? {
                1 => Ok(()),
                2 => Err(format!("service {:?} is NOT_SERVING", cfg.service)),
                3 => Err(format!(
                    "service {:?} is unknown to the server (SERVICE_UNKNOWN)",
                    cfg.service
                )),
                s => Err(format!(
                    "service {:?} reports status {s}, not SERVING",
                    cfg.service
                )),
            }
        }
    }
}
