//! Gates: conditions every weight increase must meet. Bake time, analysis
//! and candidate health are judged by the controller itself; anything else
//! plugs in through [`Gate`]: the database module (verification passed at
//! the current schema version, replication lag ≤ `max_lag`) and the
//! `confirm` webhook ([`ConfirmWebhook`]).

use serde::Serialize;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use switchyard_proxy::Colour;

use crate::webhook::WebhookClient;

/// What a gate said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateResult {
    /// The increase may go ahead.
    Pass,
    /// Hold at the current weight, and why (shown in status and retried).
    Hold(String),
}

impl From<&GateResult> for crate::wire::GateView {
    /// A verdict as `status.gates` shows it.
    fn from(r: &GateResult) -> Self {
        match r {
            GateResult::Pass => crate::wire::GateView {
                gate: crate::wire::GateState::Pass,
                reason: None,
            },
            GateResult::Hold(why) => crate::wire::GateView {
                gate: crate::wire::GateState::Hold,
                reason: Some(why.clone()),
            },
        }
    }
}

/// The weight increase a gate is asked about.
#[derive(Debug, Clone, Serialize)]
pub struct GateContext {
    /// The colour gaining traffic.
    pub candidate: Colour,
    /// Step index the rollout would move to (`None` for cutover).
    pub to_step: Option<usize>,
    /// Candidate weight now, percent.
    pub from_weight: f64,
    /// Candidate weight after the increase, percent.
    pub to_weight: f64,
}

/// A boxed gate check future.
pub type GateFuture<'a> = Pin<Box<dyn Future<Output = GateResult> + Send + 'a>>;

/// A condition checked before every weight increase (including the first,
/// from `preparing`). Implementations should answer quickly; the controller
/// keeps judging the candidate (and rolling back) while a check runs, and
/// retries a held gate about once a second.
pub trait Gate: Send + Sync + 'static {
    /// A short name for status and logs, e.g. `database`.
    fn name(&self) -> &str;
    /// Checks the gate for the increase described by `ctx`.
    fn check<'a>(&'a self, ctx: &'a GateContext) -> GateFuture<'a>;
    /// The gate's last verdict for `GET /api/v1/status` (under `gates`, by
    /// name). Called on every status request: answer from a cached
    /// reading, never block. The default has nothing to show.
    fn status(&self) -> Option<crate::wire::GateView> {
        None
    }
    /// The database gate itself, whose reading fills the status's
    /// `database` part; other gates answer `None`.
    fn as_database(&self) -> Option<&crate::DatabaseGate> {
        None
    }
    /// Appends the gate's own metrics (Prometheus text) to `out`; called on
    /// every `GET /metrics`, so answer from a cached reading. The default
    /// has none.
    fn render_metrics(&self, out: &mut String) {
        let _ = out;
    }
}

/// The `[webhooks] confirm` gate: POSTs the increase as JSON; a 2xx answer
/// proceeds, anything else (or no answer within `[webhooks] timeout`) holds.
pub struct ConfirmWebhook {
    /// Where to POST.
    pub url: String,
    /// How long to wait for the answer.
    pub timeout: std::time::Duration,
    /// `[webhooks] secret` (signs the body; "" for none).
    pub secret: String,
    pub(crate) client: WebhookClient,
    /// Where its last answer is kept for the status.
    pub(crate) last: Arc<arc_swap::ArcSwapOption<crate::wire::GateView>>,
}

impl Gate for ConfirmWebhook {
    fn name(&self) -> &str {
        "confirm webhook"
    }

    fn check<'a>(&'a self, ctx: &'a GateContext) -> GateFuture<'a> {
        Box::pin(async move {
            let body = serde_json::json!({ "kind": "confirm", "increase": ctx });
            let result = match self
                .client
                .post_json(&self.url, &body, self.timeout, &self.secret)
                .await
            {
                Ok(s) if (200..300).contains(&s) => GateResult::Pass,
                Ok(s) => GateResult::Hold(format!("{} answered {s}", self.url)),
                Err(e) => GateResult::Hold(format!("{}: {e}", self.url)),
            };
            self.last.store(Some(Arc::new((&result).into())));
            result
        })
    }
}

/// Runs `gates` in order, stopping at the first hold. The result names the
/// gate that held.
pub(crate) async fn check_all(gates: Vec<Arc<dyn Gate>>, ctx: GateContext) -> GateResult {
    for g in &gates {
        if let GateResult::Hold(why) = g.check(&ctx).await {
            return GateResult::Hold(format!("{}: {why}", g.name()));
        }
    }
    GateResult::Pass
}
