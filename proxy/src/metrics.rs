//! Prometheus text rendering of the data plane's counters. Rendering formats
//! strings; recording never does.

use std::fmt::Write;
use std::time::Duration;

use crate::{Colour, Shared};

/// A counter's name, help text and how to read it from the totals.
type Counter = (&'static str, &'static str, fn(&crate::stats::Totals) -> u64);

const LATENCY_BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000];

/// Renders the counters; upstreams are labelled by address only with
/// `addresses` (`[admin] metrics_addresses`), else by their position in the
/// pool, so an open `/metrics` does not map the internal network.
pub(crate) fn render(shared: &Shared, out: &mut String, addresses: bool) {
    let routing = shared.routing.load();
    let _ = writeln!(
        out,
        "# HELP switchyard_weight_percent Share of new requests sent to each colour."
    );
    let _ = writeln!(out, "# TYPE switchyard_weight_percent gauge");
    for c in Colour::ALL {
        let bp = crate::Weights::of(c, routing.green_bp);
        let _ = writeln!(
            out,
            "switchyard_weight_percent{{colour=\"{c}\"}} {}",
            bp as f64 / 100.0
        );
    }
    let totals: Vec<_> = Colour::ALL
        .iter()
        .map(|&c| (c, shared.stats.colour(c).totals()))
        .collect();
    let counters: [Counter; 4] = [
        (
            "switchyard_requests_total",
            "Requests forwarded, by colour.",
            |t| t.requests,
        ),
        (
            "switchyard_upstream_5xx_total",
            "Responses with a 5xx status, by colour.",
            |t| t.server_errors,
        ),
        (
            "switchyard_transport_failures_total",
            "Requests that got no complete upstream response (connect failure, reset, timeout, response cut off), by colour.",
            |t| t.transport_failures,
        ),
        (
            "switchyard_client_errors_total",
            "Requests the client got wrong or broke off (bad body framing, aborted or slow upload, body too large, disconnect), by colour; never counted against the colour.",
            |t| t.client_errors,
        ),
    ];
    for (name, help, get) in counters {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (c, t) in &totals {
            let _ = writeln!(out, "{name}{{colour=\"{c}\"}} {}", get(t));
        }
    }
    let name = "switchyard_request_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time to the upstream's response headers, by colour."
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (c, t) in &totals {
        let s = shared.stats.colour(*c);
        for ms in LATENCY_BUCKETS_MS {
            let n = s.count_at_or_below(Duration::from_millis(ms));
            let _ = writeln!(
                out,
                "{name}_bucket{{colour=\"{c}\",le=\"{}\"}} {n}",
                ms as f64 / 1000.0
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{colour=\"{c}\",le=\"+Inf\"}} {}",
            t.requests
        );
        let _ = writeln!(
            out,
            "{name}_sum{{colour=\"{c}\"}} {}",
            t.latency_sum.as_secs_f64()
        );
        let _ = writeln!(out, "{name}_count{{colour=\"{c}\"}} {}", t.requests);
    }
    let _ = writeln!(
        out,
        "# HELP switchyard_upstream_healthy 1 when the upstream passes health checks."
    );
    let _ = writeln!(out, "# TYPE switchyard_upstream_healthy gauge");
    for pool in routing.pools.iter() {
        for (i, u) in pool.upstreams.iter().enumerate() {
            let healthy = u8::from(u.is_healthy());
            let _ = if addresses {
                writeln!(
                    out,
                    "switchyard_upstream_healthy{{colour=\"{}\",upstream=\"{}\"}} {healthy}",
                    pool.colour, u.name
                )
            } else {
                writeln!(
                    out,
                    "switchyard_upstream_healthy{{colour=\"{}\",upstream=\"{i}\"}} {healthy}",
                    pool.colour
                )
            };
        }
    }
    let conns = &shared.conns;
    let gauges: [(&str, &str, &str, u64); 4] = [
        (
            "switchyard_client_connections",
            "gauge",
            "Client connections open now (HTTP and HTTPS listeners), idle keep-alive ones included.",
            conns.open() as u64,
        ),
        (
            "switchyard_client_connections_idle",
            "gauge",
            "Of the open client connections, keep-alive ones waiting over a second for their next request.",
            conns.idle() as u64,
        ),
        (
            "switchyard_client_connections_limit",
            "gauge",
            "[proxy] max_connections: at it, new connections wait in the listen backlog.",
            conns.limit() as u64,
        ),
        (
            "switchyard_client_connections_accepted_total",
            "counter",
            "Client connections accepted since start.",
            conns.accepted(),
        ),
    ];
    for (name, kind, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    }
    let fallbacks = shared.fallbacks();
    let _ = writeln!(
        out,
        "# HELP switchyard_fallback_total Requests of a colour with no usable upstream sent to the other colour (connect failure retried on the stable colour, or pools.*.fallback), by the colour they left."
    );
    let _ = writeln!(out, "# TYPE switchyard_fallback_total counter");
    for c in Colour::ALL {
        let _ = writeln!(
            out,
            "switchyard_fallback_total{{colour=\"{c}\"}} {}",
            fallbacks[c.index()]
        );
    }
}
