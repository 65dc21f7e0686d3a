//! The admin HTTP API (JSON; bearer-token auth compared in constant time on
//! everything but `/healthz` and, unless `metrics_auth`, `/metrics`).
//!
//! | method, path | does |
//! |---|---|
//! | `GET /healthz` | 200 when up |
//! | `GET /metrics` | Prometheus text: data plane and control plane |
//! | `GET /api/v1/status` | weights, rollout, pools, analysis |
//! | `PUT /api/v1/weights` | `{"green": N}`; pauses a running rollout |
//! | `POST /api/v1/rollout/{start,pause,resume,promote,abort}` | optional `{"reason": "..."}` |
//! | `GET /api/v1/history` | persisted events, oldest first (`?limit=N`) |
//! | `GET /api/v1/events` | server-sent events of every state change |
//!
//! Errors are `{"error": "..."}`: 400 bad input (nothing changes), 401 no or
//! wrong token (answered after [`WRONG_TOKEN_DELAY`]), 404, 405, 409 not
//! allowed in this state, 413 body over 64 KiB, 500 state not persisted.

// Handlers bail out with a ready `Response`; boxing it would only add an
// allocation on the error path of an admin call.
#![allow(clippy::result_large_err)]

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use switchyard_proxy::Colour;
use tokio::sync::broadcast::error::RecvError;

use crate::model::events;
use crate::model::phase::Phase;
use crate::model::rollout::{self, Action};
use crate::model::weight::Weight;
use crate::wire;
use crate::{Inner, TransitionError};

type Shared = Arc<Inner>;

/// Largest request body the API reads.
const MAX_BODY: usize = 64 * 1024;

/// Most of an oversized body read (and dropped) before its 413.
const MAX_DRAIN: u64 = 16 * 1024 * 1024;

/// How long a wrong token waits for its 401: guessing tokens gets slow.
pub(crate) const WRONG_TOKEN_DELAY: Duration = Duration::from_millis(200);

pub(crate) fn router(inner: Shared) -> Router {
    Router::new()
        .route("/", get(crate::dashboard::index))
        .route("/dashboard.js", get(crate::dashboard::script))
        .route("/dashboard.css", get(crate::dashboard::style))
        .route("/healthz", get(healthz))
        .route("/api/v1/openapi.json", get(openapi_json))
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status))
        .route("/api/v1/weights", put(set_weights))
        .route("/api/v1/rollout/{action}", post(rollout_action))
        .route("/api/v1/history", get(history))
        .route("/api/v1/events", get(events_stream))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint: see /api/v1/status",
            )
        })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint",
            )
        })
        .with_state(inner)
}

/// A JSON error body `{"error": "..."}` with `status`.
pub(crate) fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

/// The token of an `Authorization: Bearer <token>` header; the scheme is
/// case-insensitive (RFC 9110 §11.1).
fn bearer_token(headers: &HeaderMap) -> Option<&[u8]> {
    let v = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = v.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !token.starts_with(b" ") {
        return None;
    }
    Some(token.trim_ascii())
}

/// Checks `Authorization: Bearer <token>` in constant time. A wrong token
/// is answered after [`WRONG_TOKEN_DELAY`].
async fn authorized(inner: &Inner, headers: &HeaderMap) -> Result<(), Response> {
    let expected = inner.settings.load().token.clone();
    match bearer_token(headers) {
        Some(t) if constant_time_eq(t, expected.as_bytes()) => Ok(()),
        Some(_) => {
            tokio::time::sleep(WRONG_TOKEN_DELAY).await;
            Err(error(
                StatusCode::UNAUTHORIZED,
                "wrong token in Authorization: Bearer (compare it with [admin] token)",
            ))
        }
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

/// Who is calling, for the history: `X-Switchyard-Actor` if it is short
/// printable text (ctl sends `ctl:$USER`), else `api`.
fn actor(headers: &HeaderMap) -> String {
    headers
        .get("x-switchyard-actor")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| "api".into())
}

fn transition_error(e: TransitionError) -> Response {
    match e {
        TransitionError::Conflict(m) => error(StatusCode::CONFLICT, m),
        TransitionError::Store(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("refused, nothing changed: the new state could not be recorded ({e}); fix the state directory and try again"),
        ),
    }
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format (the token is needed only with [admin] metrics_auth)", content_type = "text/plain")))]
async fn metrics(State(inner): State<Shared>, headers: HeaderMap) -> Response {
    let (auth, addresses) = {
        let s = inner.settings.load();
        (s.metrics_auth, s.metrics_addresses)
    };
    if auth {
        if let Err(r) = authorized(&inner, &headers).await {
            return r;
        }
    }
    let mut out = String::with_capacity(4096);
    inner.dp.render_metrics(&mut out, addresses);
    let (phase, step) = {
        let s = inner.store.lock();
        (s.rollout.phase, s.rollout.step)
    };
    out.push_str("# HELP switchyard_rollout_state Current rollout state (1 for the current one).\n# TYPE switchyard_rollout_state gauge\n");
    for p in [
        Phase::Idle,
        Phase::Preparing,
        Phase::Progressing,
        Phase::Paused,
        Phase::Cutover,
        Phase::Promoted,
        Phase::Aborted,
    ] {
        let _ = writeln!(
            out,
            "switchyard_rollout_state{{state=\"{}\"}} {}",
            p.as_str(),
            u8::from(p == phase)
        );
    }
    let _ = writeln!(out, "# HELP switchyard_rollout_step Current step index (-1 when none).\n# TYPE switchyard_rollout_step gauge\nswitchyard_rollout_step {}", step.map_or(-1, |i| i as i64));
    let _ = writeln!(out, "# HELP switchyard_rollbacks_total Automatic rollbacks since start.\n# TYPE switchyard_rollbacks_total counter\nswitchyard_rollbacks_total {}", inner.rollbacks.load(Ordering::Relaxed));
    let _ = writeln!(out, "# HELP switchyard_build_info The running switchyard's version (always 1).\n# TYPE switchyard_build_info gauge\nswitchyard_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    let live = inner.live.lock().map(|l| l.clone()).unwrap_or_default();
    out.push_str("# HELP switchyard_analysis_verdict The candidate's last analysis verdict (1 for the current one; none while no rollout runs).\n# TYPE switchyard_analysis_verdict gauge\n");
    for v in ["pass", "inconclusive", "breach"] {
        let current = live.verdict.as_ref().is_some_and(|x| x.name() == v);
        let _ = writeln!(
            out,
            "switchyard_analysis_verdict{{verdict=\"{v}\"}} {}",
            u8::from(current)
        );
    }
    let candidate = inner.store.lock().candidate();
    let w = inner.dp.window(candidate);
    let _ = writeln!(out, "# HELP switchyard_candidate_error_rate The candidate's failures per request over the analysis window.\n# TYPE switchyard_candidate_error_rate gauge\nswitchyard_candidate_error_rate{{colour=\"{candidate}\"}} {}", w.error_rate());
    let held_for = live
        .holding_since_ms
        .map(|t| events::now_ms().saturating_sub(t) as f64 / 1000.0)
        .unwrap_or(0.0);
    let _ = writeln!(out, "# HELP switchyard_rollout_holding_seconds How long the rollout has waited past its bake without a break (a gate, analysis or pause holding it; 0 when it advances or no rollout runs).\n# TYPE switchyard_rollout_holding_seconds gauge\nswitchyard_rollout_holding_seconds {held_for}");
    let gates: Vec<_> = inner.gates.lock().map(|g| g.clone()).unwrap_or_default();
    for g in &gates {
        g.render_metrics(&mut out);
    }
    crate::process_metrics::render(&mut out);
    if inner.settings.load().database.is_some() {
        let wg = inner.dp.write_gate();
        let _ = writeln!(out, "# HELP switchyard_writes_held 1 while the proxy holds writes (cutover).\n# TYPE switchyard_writes_held gauge\nswitchyard_writes_held {}", u8::from(wg.held));
        let _ = writeln!(out, "# HELP switchyard_writes_held_total Writes that waited at a cutover hold since start.\n# TYPE switchyard_writes_held_total counter\nswitchyard_writes_held_total {}", wg.held_total);
        if let Some(c) = inner.db.lock().last_cutover.clone() {
            let _ = writeln!(out, "# HELP switchyard_cutover_hold_seconds How long the last cutover held writes.\n# TYPE switchyard_cutover_hold_seconds gauge\nswitchyard_cutover_hold_seconds {}", c.held_ms as f64 / 1000.0);
            let _ = writeln!(out, "# HELP switchyard_cutover_held_requests Writes that waited during the last cutover.\n# TYPE switchyard_cutover_held_requests gauge\nswitchyard_cutover_held_requests {}", c.held_requests);
            let _ = writeln!(out, "# HELP switchyard_cutover_completed 1 when the last cutover completed, 0 when it timed out.\n# TYPE switchyard_cutover_completed gauge\nswitchyard_cutover_completed {}", u8::from(c.completed));
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

fn pool_status(inner: &Inner, c: Colour) -> wire::PoolStatus {
    let w = inner.dp.window(c);
    wire::PoolStatus {
        upstreams: inner
            .dp
            .upstreams(c)
            .into_iter()
            .map(|u| wire::UpstreamView {
                address: u.address,
                healthy: u.healthy,
                ejected: u.ejected,
                in_flight: u.in_flight,
            })
            .collect(),
        healthy: inner.dp.healthy_upstreams(c),
        window: wire::WindowView {
            requests: w.requests,
            server_errors: w.server_errors,
            transport_failures: w.transport_failures,
            consecutive_failures: w.consecutive_failures,
            p50_seconds: w.p50.map(|d| d.as_secs_f64()),
            p99_seconds: w.p99.map(|d| d.as_secs_f64()),
        },
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The status document of `GET /api/v1/status`.
pub(crate) fn status_of(inner: &Inner) -> wire::Status {
    let settings = inner.settings.load_full();
    let (rollout, stable, candidate) = {
        let s = inner.store.lock();
        (s.rollout.clone(), s.stable, s.candidate())
    };
    let live = inner.live.lock().map(|l| l.clone()).unwrap_or_default();
    let gates: Vec<_> = inner.gates.lock().map(|g| g.clone()).unwrap_or_default();
    let mut gate_views: std::collections::BTreeMap<String, wire::GateView> = gates
        .iter()
        .filter_map(|g| Some((g.name().to_string(), g.status()?)))
        .collect();
    // Made afresh for every check (its URL may change on reload); its last
    // answer is kept here.
    if settings.webhooks.confirm.is_some() {
        let last = inner.confirm_last.load_full();
        gate_views.insert(
            "confirm webhook".into(),
            last.as_deref().cloned().unwrap_or(wire::GateView {
                gate: wire::GateState::Unknown,
                reason: Some("not asked yet: it is asked when a step would advance".into()),
            }),
        );
    }
    let database = gates.iter().find_map(|g| g.as_database()).map(|d| {
        let wg = inner.dp.write_gate();
        d.view(wg.writer.unwrap_or(stable), &wg, &inner.db.lock())
    });
    let steps = &settings.rollout.steps.0;
    let a = &settings.rollout.analysis;
    wire::Status {
        weights: Weight::from_bp(inner.dp.weights().green_bp).into(),
        rollout: wire::RolloutStatus {
            state: rollout.phase,
            step: rollout.step,
            steps: (0..steps.len())
                .map(|i| rollout::step_weight(steps, i).percent())
                .collect(),
            reason: rollout.reason.clone(),
            holding: live.holding.clone(),
            stable: stable.into(),
            candidate: candidate.into(),
            step_started: (rollout.step_started_ms > 0)
                .then(|| events::rfc3339(rollout.step_started_ms)),
            bake_seconds: rollout
                .step
                .map(|i| secs(rollout::bake_of(steps, i, settings.rollout.bake))),
            unwritten: inner.unwritten(),
        },
        pools: wire::Pools {
            blue: pool_status(inner, Colour::Blue),
            green: pool_status(inner, Colour::Green),
        },
        analysis: wire::AnalysisStatus {
            verdict: live.verdict.as_ref().map(|v| match v {
                crate::Verdict::Pass => wire::VerdictName::Pass,
                crate::Verdict::Inconclusive(_) => wire::VerdictName::Inconclusive,
                crate::Verdict::Breach(_) => wire::VerdictName::Breach,
            }),
            detail: match &live.verdict {
                Some(crate::Verdict::Inconclusive(d) | crate::Verdict::Breach(d)) => {
                    Some(d.clone())
                }
                _ => None,
            },
            judged_at: (live.judged_at_ms > 0).then(|| events::rfc3339(live.judged_at_ms)),
            window_seconds: secs(a.window),
            interval_seconds: secs(a.interval),
            min_requests: a.min_requests,
            max_error_rate: a.max_error_rate,
            max_error_rate_delta: a.max_error_rate_delta,
            max_p99_seconds: a.max_p99.map(secs),
            max_p99_ratio: a.max_p99_ratio,
            fail_fast_after: a.fail_fast_after,
        },
        gates: gate_views,
        database,
    }
}

/// Weights, rollout, pools, analysis, gates and the database.
#[utoipa::path(get, path = "/api/v1/status", tag = "rollout", security(("bearer" = [])),
    responses((status = 200, body = wire::Status), (status = 401, body = wire::ErrorBody)))]
async fn status(State(inner): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&inner, &headers).await {
        return r;
    }
    Json(status_of(&inner)).into_response()
}

/// Reads the body as a JSON object, or answers 400 with `usage`.
/// An empty body is `None`.
async fn read_object(
    req: Request,
    usage: &str,
) -> Result<Option<serde_json::Map<String, Value>>, Response> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than {} KiB: {usage}", MAX_BODY / 1024),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = req.into_body();
    let mut data = Vec::new();
    let mut seen: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                format!("body unreadable ({e}): {usage}"),
            )
        })?;
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        seen += chunk.len() as u64;
        if seen > MAX_BODY as u64 {
            // Read the rest (up to a bound) before answering, so the
            // client gets its 413 rather than a reset connection.
            if declared.unwrap_or(0) > MAX_DRAIN {
                return Err(too_large());
            }
            while seen <= MAX_DRAIN {
                match body.frame().await {
                    Some(Ok(f)) => seen += f.data_ref().map_or(0, |d| d.len() as u64),
                    _ => break,
                }
            }
            return Err(too_large());
        }
        data.extend_from_slice(&chunk);
    }
    let body = data;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(o)) => Ok(Some(o)),
        Ok(_) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("body must be a JSON object: {usage}"),
        )),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("body is not JSON ({e}): {usage}"),
        )),
    }
}

/// Sets the weights by hand; pauses a running rollout, refused during cutover.
#[utoipa::path(put, path = "/api/v1/weights", tag = "rollout", security(("bearer" = [])),
    request_body = wire::SetWeights,
    responses((status = 200, body = wire::Status), (status = 400, body = wire::ErrorBody),
              (status = 401, body = wire::ErrorBody), (status = 409, body = wire::ErrorBody), (status = 413, body = wire::ErrorBody)))]
async fn set_weights(State(inner): State<Shared>, req: Request) -> Response {
    if let Err(r) = authorized(&inner, req.headers()).await {
        return r;
    }
    const USAGE: &str = "send {\"green\": N} with 0 <= N <= 100 and no other field";
    let who = actor(req.headers());
    let obj = match read_object(req, USAGE).await {
        Ok(Some(o)) => o,
        Ok(None) => return error(StatusCode::BAD_REQUEST, format!("empty body: {USAGE}")),
        Err(r) => return r,
    };
    let green = match obj.get("green").and_then(Value::as_f64) {
        Some(g) if obj.len() == 1 => g,
        _ => return error(StatusCode::BAD_REQUEST, format!("expected {USAGE}")),
    };
    let bp = match switchyard_config::percent_to_basis_points(green) {
        Ok(bp) => bp,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("green: {e}")),
    };
    match inner.transition(&who, |s| rollout::set_weights(s, Weight::from_bp(bp))) {
        Ok(_) => Json(status_of(&inner)).into_response(),
        Err(e) => transition_error(e),
    }
}

/// start, pause, resume, promote or abort the rollout.
#[utoipa::path(post, path = "/api/v1/rollout/{action}", tag = "rollout", security(("bearer" = [])),
    params(("action" = String, Path, description = "start | pause | resume | promote | abort")),
    request_body(content = Option<wire::ActionBody>, description = "optional: {\"reason\": \"...\"}"),
    responses((status = 200, body = wire::Status), (status = 400, body = wire::ErrorBody), (status = 401, body = wire::ErrorBody),
              (status = 404, body = wire::ErrorBody), (status = 409, body = wire::ErrorBody), (status = 413, body = wire::ErrorBody)))]
async fn rollout_action(
    State(inner): State<Shared>,
    Path(action): Path<String>,
    req: Request,
) -> Response {
    if let Err(r) = authorized(&inner, req.headers()).await {
        return r;
    }
    let Some(action) = Action::parse(&action) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no rollout action {action:?}: use start, pause, resume, promote or abort"),
        );
    };
    const USAGE: &str = "send no body, or {\"reason\": \"...\"}";
    let who = actor(req.headers());
    let reason = match read_object(req, USAGE).await {
        Ok(None) => None,
        Ok(Some(o)) => {
            if let Some(k) = o.keys().find(|k| *k != "reason") {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown field {k:?}: {USAGE}"),
                );
            }
            match o.get("reason") {
                None | Some(Value::Null) => None,
                Some(Value::String(r)) if r.len() <= 1000 => Some(r.clone()),
                Some(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("reason must be a string of at most 1000 bytes: {USAGE}"),
                    )
                }
            }
        }
        Err(r) => return r,
    };
    if action == Action::Abort && inner.store.current().rollout.phase == Phase::Promoted {
        // Whether the way back still exists is read now, not from a reading
        // up to two seconds old: `sync cleanup` may just have removed it.
        if let Some(d) = inner.database_gate() {
            if let Some(d) = d.as_database() {
                d.refresh().await;
            }
        }
    }
    match inner.act(action, reason, &who) {
        Ok(_) => Json(status_of(&inner)).into_response(),
        Err(e) => transition_error(e),
    }
}

#[derive(serde::Deserialize)]
struct HistoryQuery {
    limit: Option<usize>,
}

/// Who did what, when and why (the most recent events, oldest first).
#[utoipa::path(get, path = "/api/v1/history", tag = "rollout", security(("bearer" = [])),
    params(("limit" = Option<usize>, Query, description = "only the last N events")),
    responses((status = 200, body = wire::History), (status = 400, body = wire::ErrorBody), (status = 401, body = wire::ErrorBody)))]
async fn history(
    State(inner): State<Shared>,
    headers: HeaderMap,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = authorized(&inner, &headers).await {
        return r;
    }
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad query: use ?limit=N with N a whole number",
        );
    };
    let s = inner.store.lock();
    let skip = q.limit.map_or(0, |l| s.history.len().saturating_sub(l));
    let events: Vec<_> = s.history.iter().skip(skip).cloned().collect();
    drop(s);
    Json(json!({ "events": events })).into_response()
}

/// Server-sent events of every state change; send `Last-Event-ID` to get
/// what was missed first.
#[utoipa::path(get, path = "/api/v1/events", tag = "rollout", security(("bearer" = [])),
    params(("Last-Event-ID" = Option<u64>, Header, description = "the seq of the last event seen")),
    responses((status = 200, description = "one SSE message per event: `event: <kind>`, `id: <seq>`, `data: <Event JSON>`",
               content_type = "text/event-stream", body = crate::Event), (status = 401, body = wire::ErrorBody)))]
async fn events_stream(State(inner): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&inner, &headers).await {
        return r;
    }
    let rx = inner.hub.subscribe();
    // A client reconnecting with `Last-Event-ID` first gets what it missed,
    // from the persisted history (subscribed first, so nothing falls between).
    let after: Option<u64> = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let missed: std::collections::VecDeque<crate::Event> = match after {
        Some(n) => inner
            .store
            .lock()
            .history
            .iter()
            .filter(|e| e.seq > n)
            .cloned()
            .collect(),
        None => Default::default(),
    };
    let replayed_up_to = missed.back().map(|e| e.seq).or(after).unwrap_or(0);
    let to_sse = |e: &crate::Event| {
        SseEvent::default()
            .event(e.kind.as_str())
            .id(e.seq.to_string())
            .json_data(e)
            .unwrap_or_else(|_| SseEvent::default().comment("unserializable event"))
    };
    // Ends at once when switchyard shuts down: an open stream must never
    // hold up a drain.
    let stopping = inner.stopping.subscribe();
    let stream = futures_util::stream::unfold(
        (rx, stopping, missed),
        move |(mut rx, mut stopping, mut missed)| async move {
            if *stopping.borrow() {
                return None;
            }
            if let Some(e) = missed.pop_front() {
                return Some((Ok::<_, Infallible>(to_sse(&e)), (rx, stopping, missed)));
            }
            let received = loop {
                let r = tokio::select! {
                    r = rx.recv() => r,
                    _ = stopping.wait_for(|s| *s) => return None,
                };
                match r {
                    Ok(e) if e.seq <= replayed_up_to => continue,
                    other => break other,
                }
            };
            let item = match received {
                Ok(e) => to_sse(&e),
                Err(RecvError::Lagged(n)) => {
                    SseEvent::default().comment(format!("{n} events missed: see /api/v1/history"))
                }
                Err(RecvError::Closed) => return None,
            };
            Some((Ok::<_, Infallible>(item), (rx, stopping, missed)))
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// `GET /healthz`: 200 while up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "up", content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// The OpenAPI description of this API (no token needed).
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3.1 document")))]
async fn openapi_json() -> Response {
    use utoipa::OpenApi;
    Json(ApiDoc::openapi()).into_response()
}

/// The admin API, as derived from its handlers and [`wire`] types.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "switchyard admin API",
         description = "Drive a running switchyard: weights, rollout actions, status, history, events. Durations are seconds in *_seconds fields, instants RFC 3339 UTC, weights percent, step a 0-based index."),
    paths(healthz, metrics, openapi_json, status, set_weights, rollout_action, history, events_stream),
    components(schemas(wire::Status, wire::History, wire::SetWeights, wire::ActionBody, wire::ErrorBody, crate::Event)),
    modifiers(&BearerToken),
    tags((name = "rollout", description = "weights and the rollout state machine"), (name = "operations", description = "health, metrics, this document"))
)]
pub(crate) struct ApiDoc;

/// `Authorization: Bearer <[admin] token>`.
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bearer_scheme_is_case_insensitive() {
        use super::bearer_token;
        let h = |v: &str| {
            let mut m = axum::http::HeaderMap::new();
            m.insert(super::header::AUTHORIZATION, v.parse().unwrap());
            m
        };
        assert_eq!(bearer_token(&h("Bearer t0k")), Some(&b"t0k"[..]));
        assert_eq!(bearer_token(&h("bearer t0k")), Some(&b"t0k"[..]));
        assert_eq!(bearer_token(&h("BEARER  t0k")), Some(&b"t0k"[..]));
        assert_eq!(bearer_token(&h("Bearert0k")), None);
        assert_eq!(bearer_token(&h("Basic dGVzdA==")), None);
        assert_eq!(bearer_token(&h("t0k")), None);
    }

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
