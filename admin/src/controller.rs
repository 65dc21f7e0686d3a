//! The rollout controller: every `analysis.interval` it judges the candidate
//! from the data plane's windows and, on a breach, rolls back in the same
//! tick. When a step's bake has elapsed and analysis passes, it runs the
//! pluggable gates (database, confirm webhook) in the background, still
//! ticking, and advances once they pass and nothing changed meanwhile.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::analysis::{self, TickCounts, Verdict};
use crate::gates::{self, ConfirmWebhook, Gate, GateContext, GateResult};
use crate::model::events::now_ms;
use crate::model::events::EventKind;
use crate::model::phase::Phase;
use crate::model::rollout::{self, Change, Conflict};
use crate::model::weight::Weight;
use crate::Inner;
use switchyard_config::{PrepareMode, SyncMode};

/// How long a held gate waits before it is asked again.
const GATE_RETRY: Duration = Duration::from_secs(1);

/// The step a gate check was started for; a result for anything else is
/// stale and ignored.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Key {
    phase: Phase,
    step: Option<usize>,
    step_started_ms: u64,
}

struct Pending {
    key: Key,
    task: JoinHandle<GateResult>,
}

/// Runs until the control plane is dropped.
pub(crate) async fn run(weak: Weak<Inner>) {
    let mut period = match weak.upgrade() {
        Some(i) => i.settings.load().rollout.analysis.interval,
        None => return,
    };
    let mut tick = ticker(period);
    let mut pending: Option<Pending> = None;
    let mut retry_at = Instant::now();
    let mut recent = Recent::default();
    let mut fallbacks = FallbackWatch::default();
    loop {
        let gate_done = async {
            match pending.as_mut() {
                Some(p) => Some((&mut p.task).await),
                None => std::future::pending().await,
            }
        };
        let finished = tokio::select! {
            _ = tick.tick() => None,
            r = gate_done => r,
        };
        let Some(inner) = weak.upgrade() else { return };
        if let Some(result) = finished {
            let key = pending.take().map(|p| p.key);
            let result =
                result.unwrap_or_else(|e| GateResult::Hold(format!("gate check panicked: {e}")));
            gate_finished(&inner, key, result, &mut retry_at);
            continue;
        }
        let now_period = inner.settings.load().rollout.analysis.interval;
        if now_period != period {
            period = now_period;
            tick = ticker(period);
        }
        tick_once(&inner, &mut pending, &mut retry_at, &mut recent);
        fallbacks.check(&inner);
    }
}

/// How long a colour must go without falling back before it is over.
const FALLBACK_QUIET: Duration = Duration::from_secs(10);

/// Watches the data plane's fallback counters: a `fallback` event when a
/// colour's traffic starts going to the other colour (no usable upstream),
/// `fallback_ended` once it has not for [`FALLBACK_QUIET`]. One event per
/// episode, not one per request.
#[derive(Default)]
struct FallbackWatch {
    seen: [u64; 2],
    since: [Option<Instant>; 2],
}

impl FallbackWatch {
    fn check(&mut self, inner: &Inner) {
        for c in switchyard_proxy::Colour::ALL {
            let i = c.index();
            let n = inner.dp.fallbacks(c);
            let now = Instant::now();
            if n > self.seen[i] {
                if self.since[i].is_none() {
                    let other = c.other();
                    let why = format!(
                        "no usable {c} upstream: {c} requests are sent to {other} (connect failures on the candidate, or pools.{c}.fallback)"
                    );
                    tracing::warn!("{why}");
                    let _ = inner.transition("controller", |_| {
                        Ok(Change::new(EventKind::Fallback, Some(why)))
                    });
                }
                self.seen[i] = n;
                self.since[i] = Some(now);
            } else if self.since[i].is_some_and(|t| now.duration_since(t) >= FALLBACK_QUIET) {
                self.since[i] = None;
                let why =
                    format!("{c} requests have not needed the other colour for {FALLBACK_QUIET:?}");
                let _ = inner.transition("controller", |_| {
                    Ok(Change::new(EventKind::FallbackEnded, Some(why)))
                });
            }
        }
    }
}

fn ticker(period: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(period);
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    t
}

fn key_of(s: &crate::PersistedState) -> Key {
    Key {
        phase: s.rollout.phase,
        step: s.rollout.step,
        step_started_ms: s.rollout.step_started_ms,
    }
}

fn set_live(inner: &Inner, verdict: Option<Verdict>, holding: Option<String>) {
    if let Ok(mut live) = inner.live.lock() {
        live.verdict = verdict;
        // Baking is the plan, not a hold: only waiting past it counts.
        live.holding_since_ms = match (&holding, live.holding_since_ms) {
            (None, _) => None,
            (Some(h), _) if h.starts_with("baking") => None,
            (Some(_), Some(t)) => Some(t),
            (Some(_), None) => Some(now_ms()),
        };
        live.holding = holding;
        live.judged_at_ms = now_ms();
    }
}

/// One analysis tick.
fn tick_once(
    inner: &Arc<Inner>,
    pending: &mut Option<Pending>,
    retry_at: &mut Instant,
    recent: &mut Recent,
) {
    let settings = inner.settings.load_full();
    let (key, candidate, stable, candidate_weight) = {
        let s = inner.store.lock();
        (key_of(&s), s.candidate(), s.stable, s.candidate_weight())
    };
    if pending.as_ref().is_some_and(|p| p.key != key) {
        if let Some(p) = pending.take() {
            p.task.abort();
        }
    }
    if !matches!(
        key.phase,
        Phase::Preparing | Phase::Progressing | Phase::Paused
    ) {
        *recent = Recent::default();
    }
    match key.phase {
        Phase::Preparing | Phase::Progressing | Phase::Paused => {}
        Phase::Cutover => {
            if let Some(db) = &settings.database {
                // Hold writes, switch the primary database, release them.
                crate::cutover::ensure_running(inner, key.step_started_ms, db);
                set_live(
                    inner,
                    None,
                    Some("cutover: writes are held while the candidate's database becomes the primary".into()),
                );
                return;
            }
            // Without a database there is nothing to switch but traffic,
            // which entering cutover already did.
            let _ = inner.transition("controller", |s| {
                if s.rollout.phase != Phase::Cutover {
                    return Err(Conflict("no longer in cutover".into()));
                }
                Ok(rollout::finish_cutover(s))
            });
            set_live(inner, None, None);
            return;
        }
        Phase::Aborted => {
            let wanted = std::mem::take(&mut inner.db.lock().cleanup_wanted);
            if let Some(db) = settings
                .database
                .as_ref()
                .filter(|d| d.mode == SyncMode::Replicate)
            {
                if wanted {
                    crate::database::clean_up_after_abort(inner, db);
                }
            }
            set_live(inner, None, None);
            return;
        }
        Phase::Idle | Phase::Promoted => {
            set_live(inner, None, None);
            return;
        }
    }
    let a = &settings.rollout.analysis;
    let cw = inner.dp.window(candidate);
    let sw = inner.dp.window(stable);
    let healthy = inner.dp.healthy_upstreams(candidate);
    let mut verdict = analysis::judge(a, &cw, &sw, healthy);
    let ticks = recent.sample(inner, candidate, a.window);
    if !matches!(verdict, Verdict::Breach(_)) {
        if let Some(why) = analysis::judge_recent(a, &ticks, settings.rollout.analysis.interval) {
            verdict = Verdict::Breach(why);
        }
    }

    if let Verdict::Breach(why) = &verdict {
        if candidate_weight > Weight::NONE {
            let r = inner.transition("controller", |s| {
                if key_of(s) != key || s.candidate_weight() == Weight::NONE {
                    return Err(Conflict("state changed before the rollback".into()));
                }
                Ok(rollout::roll_back(s, why.clone()))
            });
            if let Err(e) = r {
                tracing::debug!(error = %e, "rollback skipped");
            }
            if let Some(p) = pending.take() {
                p.task.abort();
            }
            *recent = Recent::default();
            set_live(inner, Some(verdict), None);
            return;
        }
    }

    let steps = &settings.rollout.steps.0;
    let holding = match key.phase {
        Phase::Paused => Some("paused".to_string()),
        Phase::Preparing if healthy == 0 => Some("no healthy candidate upstream".to_string()),
        Phase::Preparing => match settings
            .database
            .as_ref()
            .filter(|d| d.prepare == PrepareMode::Auto)
        {
            Some(db) => {
                crate::preparing::ensure_running(inner, key.step_started_ms, db);
                crate::preparing::running_step(inner)
            }
            None => None,
        },
        _ => {
            let i = key.step.unwrap_or(0);
            let bake = rollout::bake_of(steps, i, settings.rollout.bake);
            let elapsed = Duration::from_millis(now_ms().saturating_sub(key.step_started_ms));
            if elapsed < bake {
                Some(format!(
                    "baking: {} of {} left",
                    switchyard_config::format_duration(round_ms(bake - elapsed)),
                    switchyard_config::format_duration(bake)
                ))
            } else {
                match &verdict {
                    Verdict::Pass => None,
                    Verdict::Inconclusive(why) => Some(format!("analysis inconclusive: {why}")),
                    Verdict::Breach(why) => Some(format!("analysis: {why}")),
                }
            }
        }
    };
    // Nothing advances while the state file cannot be written: the next
    // step would be refused anyway, and the status says why.
    let holding = inner.unwritten().or(holding);
    if let Some(h) = holding {
        set_live(inner, Some(verdict), Some(h));
        return;
    }
    // Every built-in gate passed: run the pluggable ones.
    let mut gate_list: Vec<Arc<dyn Gate>> =
        inner.gates.lock().map(|g| g.clone()).unwrap_or_default();
    if let Some(url) = &settings.webhooks.confirm {
        gate_list.push(Arc::new(ConfirmWebhook {
            url: url.clone(),
            timeout: settings.webhooks.timeout,
            secret: settings.webhooks.secret.clone(),
            client: inner.webhooks.clone(),
            last: inner.confirm_last.clone(),
        }));
    }
    if gate_list.is_empty() {
        advance(inner, key);
        set_live(inner, Some(verdict), None);
        return;
    }
    let previous_hold = inner.live.lock().ok().and_then(|l| l.holding.clone());
    if pending.is_none() && Instant::now() >= *retry_at {
        let to_step = match key.phase {
            Phase::Preparing => Some(rollout::step_at_or_above(
                steps,
                candidate_weight.max(Weight::from_bp(1)),
            )),
            _ => key.step.map(|i| i + 1).filter(|n| *n < steps.len()),
        };
        let ctx = GateContext {
            candidate,
            to_step,
            from_weight: candidate_weight.percent(),
            to_weight: to_step
                .map_or(Weight::ALL, |n| rollout::step_weight(steps, n))
                .percent(),
        };
        *pending = Some(Pending {
            key,
            task: tokio::spawn(gates::check_all(gate_list, ctx)),
        });
    }
    set_live(
        inner,
        Some(verdict),
        Some(previous_hold.unwrap_or_else(|| "checking gates".into())),
    );
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64 / 100 * 100)
}

fn gate_finished(inner: &Arc<Inner>, key: Option<Key>, result: GateResult, retry_at: &mut Instant) {
    let Some(key) = key else { return };
    match result {
        GateResult::Hold(why) => {
            tracing::info!(reason = %why, "gate holds the rollout");
            *retry_at = Instant::now() + GATE_RETRY;
            if let Ok(mut live) = inner.live.lock() {
                live.holding = Some(why);
                live.holding_since_ms.get_or_insert_with(now_ms);
            }
        }
        GateResult::Pass => {
            // Analysis may have changed while the gates ran: judge again.
            let settings = inner.settings.load_full();
            let (candidate, stable) = {
                let s = inner.store.lock();
                (s.candidate(), s.stable)
            };
            let v = analysis::judge(
                &settings.rollout.analysis,
                &inner.dp.window(candidate),
                &inner.dp.window(stable),
                inner.dp.healthy_upstreams(candidate),
            );
            if key.phase == Phase::Preparing || v == Verdict::Pass {
                advance(inner, key);
            }
        }
    }
}

fn advance(inner: &Arc<Inner>, key: Key) {
    let steps = inner.settings.load().rollout.steps.0.clone();
    let r = inner.transition("controller", |s| {
        if key_of(s) != key || !matches!(s.rollout.phase, Phase::Preparing | Phase::Progressing) {
            return Err(Conflict("state changed while the gates ran".into()));
        }
        let c: Change = rollout::advance(s, &steps, now_ms());
        Ok(c)
    });
    match r {
        Err(crate::TransitionError::Store(e)) => {
            tracing::warn!(error = %e, "the next step could not be recorded: the rollout holds")
        }
        Err(e) => tracing::debug!(error = %e, "advance skipped"),
        Ok(_) => {}
    }
}

/// The candidate's lifetime request and failure counters, sampled once per
/// tick, so the fast lane of analysis can see what happened in each tick.
#[derive(Default)]
struct Recent {
    colour: Option<switchyard_proxy::Colour>,
    /// (requests, failures) totals at each tick, oldest first.
    totals: std::collections::VecDeque<(u64, u64)>,
}

impl Recent {
    /// Takes this tick's sample and returns the per-tick counts covering
    /// at most one analysis window.
    fn sample(
        &mut self,
        inner: &Inner,
        colour: switchyard_proxy::Colour,
        window: Duration,
    ) -> Vec<TickCounts> {
        if self.colour != Some(colour) {
            *self = Recent {
                colour: Some(colour),
                ..Recent::default()
            };
        }
        let Some(now) = totals(&inner.dp, colour) else {
            return Vec::new();
        };
        if self.totals.back().is_some_and(|last| now.0 < last.0) {
            self.totals.clear(); // counters restarted
        }
        self.totals.push_back(now);
        let interval = inner.settings.load().rollout.analysis.interval;
        let keep = (window.as_millis() / interval.as_millis().max(1)) as usize + 1;
        while self.totals.len() > keep.max(2) {
            self.totals.pop_front();
        }
        self.totals
            .iter()
            .zip(self.totals.iter().skip(1))
            .map(|(a, b)| TickCounts {
                requests: b.0 - a.0,
                failures: b.1.saturating_sub(a.1),
            })
            .collect()
    }
}

/// Lifetime (requests, 5xx + transport failures) of `colour`.
fn totals(
    dp: &switchyard_proxy::DataPlane,
    colour: switchyard_proxy::Colour,
) -> Option<(u64, u64)> {
    let t = dp.totals(colour);
    Some((t.requests, t.server_errors + t.transport_failures))
}
