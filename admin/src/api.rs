//! The admin HTTP API (JSON, bearer-token auth on everything but `/healthz`
//! and, unless configured, `/metrics`).

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;
use switchyard_proxy::Colour;

use crate::Inner;

type Shared = Arc<Inner>;

pub(crate) fn router(inner: Shared) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status))
        .route("/api/v1/weights", put(set_weights))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint: see /api/v1/status") })
        .with_state(inner)
}

/// A JSON error body `{"error": "..."}` with `status`.
pub(crate) fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

/// Checks `Authorization: Bearer <token>` in constant time.
fn authorized(inner: &Inner, headers: &HeaderMap) -> Result<(), Response> {
    let expected = inner.settings.load().token.clone();
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(error(StatusCode::UNAUTHORIZED, "wrong token in Authorization: Bearer")),
        None => Err(error(
            StatusCode::UNAUTHORIZED,
            "missing token: send Authorization: Bearer <admin.token>",
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

async fn metrics(State(inner): State<Shared>, headers: HeaderMap) -> Response {
    if inner.settings.load().metrics_auth {
        if let Err(r) = authorized(&inner, &headers) {
            return r;
        }
    }
    let mut out = String::with_capacity(4096);
    inner.dp.render_metrics(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

fn colour_json(inner: &Inner, c: Colour) -> Value {
    json!({
        "upstreams": inner.dp.upstreams(c),
        "healthy": inner.dp.healthy_upstreams(c),
        "window": inner.dp.window(c),
    })
}

async fn status(State(inner): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&inner, &headers) {
        return r;
    }
    let w = inner.dp.weights();
    Json(json!({
        "weights": { "blue": w.blue_bp as f64 / 100.0, "green": w.green_bp as f64 / 100.0 },
        "rollout": { "state": "idle", "step": Value::Null, "reason": Value::Null },
        "pools": { "blue": colour_json(&inner, Colour::Blue), "green": colour_json(&inner, Colour::Green) },
        "analysis": {},
        "database": Value::Null,
    }))
    .into_response()
}

async fn set_weights(State(inner): State<Shared>, req: Request) -> Response {
    if let Err(r) = authorized(&inner, req.headers()) {
        return r;
    }
    let body = match axum::body::to_bytes(req.into_body(), 64 * 1024).await {
        Ok(b) => b,
        Err(_) => return error(StatusCode::BAD_REQUEST, "body too large or unreadable"),
    };
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("body is not JSON ({e}): send {{\"green\": N}} with 0 <= N <= 100"),
            )
        }
    };
    let green = match v.get("green").and_then(Value::as_f64) {
        Some(g) if v.as_object().is_some_and(|o| o.len() == 1) => g,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "expected {\"green\": N} with 0 <= N <= 100 and no other field",
            )
        }
    };
    let bp = match switchyard_config::percent_to_basis_points(green) {
        Ok(bp) => bp,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("green: {e}")),
    };
    if let Err(e) = inner.store.update(|s| s.green_bp = bp) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    inner.dp.set_green_bp(bp);
    let w = inner.dp.weights();
    Json(json!({ "weights": { "blue": w.blue_bp as f64 / 100.0, "green": w.green_bp as f64 / 100.0 } }))
        .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_eq_matches_only_equal() {
        use super::constant_time_eq as eq;
        assert!(eq(b"abc", b"abc"));
        assert!(!eq(b"abc", b"abd"));
        assert!(!eq(b"abc", b"ab"));
        assert!(!eq(b"", b"a"));
        assert!(eq(b"", b""));
    }
}
