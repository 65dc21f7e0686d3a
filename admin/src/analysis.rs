//! Analysis: judges the candidate from the data plane's per-colour windows.
//! Pure: the controller calls [`judge`] every `analysis.interval` with fresh
//! windows and acts on the [`Verdict`].

use serde::Serialize;
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

fn ms(d: std::time::Duration) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
}
