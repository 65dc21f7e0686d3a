//! Analysis: judges the candidate from the data plane's per-colour windows.
//! Pure: the controller calls [`judge`] every `analysis.interval` with fresh
//! windows and acts on the [`Verdict`].

use serde::Serialize;
use std::time::Duration;
use switchyard_config::AnalysisConfig;
use switchyard_proxy::WindowStats;

/// The outcome of one judgement.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", content = "detail", rename_all = "lowercase")]
pub enum Verdict {
    /// Enough traffic, every threshold met: the step may advance.
    Pass,
    /// Too little traffic to judge: hold, never advance.
    Inconclusive(String),
    /// A threshold was broken: roll back now.
    Breach(String),
}

impl Verdict {
    /// Short name: `pass`, `inconclusive` or `breach`.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Inconclusive(_) => "inconclusive",
            Verdict::Breach(_) => "breach",
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

/// Judges `candidate` against the thresholds of `cfg`, comparing with
/// `stable` where a threshold is relative. `healthy` is the number of
/// candidate upstreams passing health checks.
///
/// Order matters: a pool with no healthy upstream and a run of consecutive
/// failures breach even with little traffic (that is what fail-fast is
/// for); every other threshold needs `min_requests` in the window. Relative
/// thresholds are skipped while the stable colour has too little traffic to
/// compare with (e.g. at 100% candidate).
pub fn judge(
    cfg: &AnalysisConfig,
    candidate: &WindowStats,
    stable: &WindowStats,
    healthy: usize,
) -> Verdict {
    if healthy == 0 {
        return Verdict::Breach("no healthy candidate upstream".into());
    }
    if let Some(n) = cfg.fail_fast_after {
        if n > 0 && candidate.consecutive_failures >= u64::from(n) {
            return Verdict::Breach(format!(
                "{} consecutive candidate failures (fail_fast_after = {n})",
                candidate.consecutive_failures
            ));
        }
    }
    if candidate.requests < cfg.min_requests.max(1) {
        return Verdict::Inconclusive(format!(
            "{} candidate requests in the window, need {}",
            candidate.requests, cfg.min_requests
        ));
    }
    let rate = candidate.error_rate();
    if rate > cfg.max_error_rate {
        return Verdict::Breach(format!(
            "candidate error rate {rate:.3} > max_error_rate {} ({} of {} requests failed)",
            cfg.max_error_rate,
            candidate.server_errors + candidate.transport_failures,
            candidate.requests
        ));
    }
    let comparable = stable.requests >= cfg.min_requests.max(1);
    if let (Some(delta), true) = (cfg.max_error_rate_delta, comparable) {
        let base = stable.error_rate();
        if rate - base > delta {
            return Verdict::Breach(format!(
                "candidate error rate {rate:.3} exceeds stable's {base:.3} by more than max_error_rate_delta {delta}"
            ));
        }
    }
    if let (Some(max), Some(p99)) = (cfg.max_p99, candidate.p99) {
        if p99 > max {
            return Verdict::Breach(format!("candidate p99 {} > max_p99 {}", ms(p99), ms(max)));
        }
    }
    if let (Some(ratio), Some(p99), Some(base), true) =
        (cfg.max_p99_ratio, candidate.p99, stable.p99, comparable)
    {
        if p99.as_secs_f64() > base.as_secs_f64() * ratio {
            return Verdict::Breach(format!(
                "candidate p99 {} > stable p99 {} × max_p99_ratio {ratio}",
                ms(p99),
                ms(base)
            ));
        }
    }
    Verdict::Pass
}

/// How many standard deviations above `max_error_rate` a recent failure
/// count must be before [`judge_recent`] rolls back. At 5σ a candidate
/// failing at exactly the threshold trips it about once in 3.5 million
/// checks; a candidate failing well above it trips it within one tick.
pub const RECENT_SIGMAS: f64 = 5.0;

/// Requests and failures (5xx + transport) the candidate saw during one
/// analysis tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickCounts {
    /// Requests finished during the tick.
    pub requests: u64,
    /// Of those, failures.
    pub failures: u64,
}

/// The fast lane of analysis: a breach if, over the most recent ticks, the
/// candidate's failures are *significantly* above `max_error_rate`.
///
/// The window check in [`judge`] is diluted by the healthy traffic already
/// in the window: with a 10 s window, a candidate that starts failing 20% of
/// its requests needs about 2.5 s to pull the window's rate over 5%. This
/// check looks at every suffix of `ticks` (newest last) holding at least
/// `min_requests` requests, and breaches when the failures in it exceed the
/// threshold by more than [`RECENT_SIGMAS`] binomial standard deviations,
/// so a sudden failure is caught in the first tick after it starts while
/// ordinary noise around a healthy rate is not.
pub fn judge_recent(cfg: &AnalysisConfig, ticks: &[TickCounts], tick: Duration) -> Option<String> {
    let p = cfg.max_error_rate;
    if p >= 1.0 {
        return None;
    }
    let (mut n, mut f) = (0u64, 0u64);
    for (age, t) in ticks.iter().rev().enumerate() {
        n += t.requests;
        f += t.failures;
        if n < cfg.min_requests.max(1) || f == 0 {
            continue;
        }
        let nf = n as f64;
        let limit = nf * p + RECENT_SIGMAS * (nf * p * (1.0 - p)).sqrt();
        if f as f64 > limit {
            return Some(format!(
                "candidate error rate {:.3} over the last {} ({f} of {n} requests failed) is significantly above max_error_rate {p}",
                f as f64 / nf,
                switchyard_config::format_duration(tick * (age as u32 + 1)),
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(requests: u64, errors: u64, p99_ms: u64) -> WindowStats {
        WindowStats {
            requests,
            server_errors: errors,
            p99: Some(Duration::from_millis(p99_ms)),
            p50: Some(Duration::from_millis(p99_ms / 2)),
            ..WindowStats::default()
        }
    }

    fn cfg() -> AnalysisConfig {
        AnalysisConfig {
            min_requests: 50,
            max_error_rate: 0.05,
            ..AnalysisConfig::default()
        }
    }

    #[test]
    fn healthy_traffic_passes() {
        assert_eq!(
            judge(&cfg(), &w(100, 1, 10), &w(1000, 5, 10), 1),
            Verdict::Pass
        );
    }

    #[test]
    fn too_little_traffic_is_inconclusive_even_when_failing() {
        let v = judge(&cfg(), &w(49, 49, 10), &w(1000, 0, 10), 1);
        assert_eq!(v.name(), "inconclusive", "{v:?}");
    }

    #[test]
    fn error_rate_above_the_maximum_breaches() {
        let v = judge(&cfg(), &w(100, 6, 10), &w(1000, 0, 10), 1);
        assert!(
            matches!(&v, Verdict::Breach(r) if r.contains("max_error_rate")),
            "{v:?}"
        );
        // Transport failures count as errors too.
        let mut c = w(100, 0, 10);
        c.transport_failures = 6;
        assert_eq!(judge(&cfg(), &c, &w(1000, 0, 10), 1).name(), "breach");
    }

    #[test]
    fn error_rate_delta_compares_with_stable_when_stable_has_traffic() {
        let c = AnalysisConfig {
            max_error_rate: 0.5,
            max_error_rate_delta: Some(0.02),
            ..cfg()
        };
        assert_eq!(
            judge(&c, &w(100, 4, 10), &w(1000, 10, 10), 1).name(),
            "breach"
        );
        assert_eq!(
            judge(&c, &w(100, 2, 10), &w(1000, 10, 10), 1),
            Verdict::Pass
        );
        // No stable traffic to compare with: the delta is not judged.
        assert_eq!(judge(&c, &w(100, 4, 10), &w(0, 0, 0), 1), Verdict::Pass);
    }

    #[test]
    fn latency_regressions_breach_absolute_and_relative() {
        let abs = AnalysisConfig {
            max_p99: Some(Duration::from_millis(100)),
            ..cfg()
        };
        assert_eq!(
            judge(&abs, &w(100, 0, 150), &w(1000, 0, 10), 1).name(),
            "breach"
        );
        assert_eq!(
            judge(&abs, &w(100, 0, 90), &w(1000, 0, 10), 1),
            Verdict::Pass
        );
        let rel = AnalysisConfig {
            max_p99_ratio: Some(2.0),
            ..cfg()
        };
        assert_eq!(
            judge(&rel, &w(100, 0, 50), &w(1000, 0, 20), 1).name(),
            "breach"
        );
        assert_eq!(
            judge(&rel, &w(100, 0, 30), &w(1000, 0, 20), 1),
            Verdict::Pass
        );
    }

    #[test]
    fn fail_fast_and_no_healthy_upstream_breach_without_min_requests() {
        let c = AnalysisConfig {
            fail_fast_after: Some(3),
            ..cfg()
        };
        let mut cand = w(3, 3, 10);
        cand.consecutive_failures = 3;
        let v = judge(&c, &cand, &w(1000, 0, 10), 1);
        assert!(
            matches!(&v, Verdict::Breach(r) if r.contains("consecutive")),
            "{v:?}"
        );
        let v = judge(&cfg(), &w(0, 0, 0), &w(0, 0, 0), 0);
        assert!(
            matches!(&v, Verdict::Breach(r) if r.contains("healthy")),
            "{v:?}"
        );
    }

    fn ticks(pattern: &[(u64, u64)]) -> Vec<TickCounts> {
        pattern
            .iter()
            .map(|&(requests, failures)| TickCounts { requests, failures })
            .collect()
    }

    const TICK: Duration = Duration::from_millis(100);

    #[test]
    fn recent_check_catches_a_sudden_failure_within_one_tick() {
        let mut t = ticks(&[(500, 5); 100]);
        assert_eq!(judge_recent(&cfg(), &t, TICK), None, "1% is healthy");
        t.push(TickCounts {
            requests: 500,
            failures: 100,
        });
        let r = judge_recent(&cfg(), &t, TICK).expect("20% failing in the last tick");
        assert!(r.contains("100 of 500") && r.contains("100ms"), "{r}");
    }

    #[test]
    fn recent_check_ignores_noise_and_small_samples() {
        // Failures bunched around the threshold: 4 of 50 (8%) in one tick is
        // noise at 5%, not a significant breach.
        let t = ticks(&[(50, 2), (50, 4), (50, 1), (50, 3)]);
        assert_eq!(judge_recent(&cfg(), &t, TICK), None);
        // Under min_requests nothing is judged, however bad.
        assert_eq!(judge_recent(&cfg(), &ticks(&[(10, 10)]), TICK), None);
        // A slow trickle becomes significant once enough ticks add up.
        let t = ticks(&[(20, 4); 10]);
        assert!(judge_recent(&cfg(), &t, TICK).is_some());
    }
}
