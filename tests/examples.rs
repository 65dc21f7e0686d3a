//! The files in `examples/` work as shipped: the production config passes
//! `switchyard check`, the Prometheus config and alert rules pass
//! `promtool`, and the Grafana dashboard is valid JSON over Prometheus.

use std::path::PathBuf;
use std::process::Command;

fn example(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(path)
}

#[test]
fn the_production_config_passes_switchyard_check() {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "-c"])
        .arg(example("switchyard.toml"))
        .env("SWITCHYARD_TOKEN", "example-token")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("OK"), "{stdout}");
    // Every table a deployment may need is in it, so nobody has to guess.
    let text = std::fs::read_to_string(example("switchyard.toml")).unwrap();
    for table in [
        "[proxy]",
        "[pools.blue]",
        "[pools.green]",
        "[admin]",
        "[rollout]",
        "[rollout.analysis]",
        "[webhooks]",
        "[state]",
        "[log]",
        "[database]",
        "[database.placeholders]",
    ] {
        assert!(text.contains(table), "{table} missing from the example");
    }
}

#[test]
fn the_prometheus_config_and_alert_rules_pass_promtool() {
    for args in [
        vec![
            "check",
            "rules",
            example("prometheus/alerts.yml")
                .to_str()
                .unwrap()
                .to_string()
                .leak(),
        ],
        vec![
            "check",
            "config",
            example("prometheus/prometheus.yml")
                .to_str()
                .unwrap()
                .to_string()
                .leak(),
        ],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .output()
            .expect("promtool is not installed: `apt-get install prometheus` (.ci/run does)");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_grafana_dashboard_queries_prometheus_for_switchyard_metrics() {
    let text = std::fs::read_to_string(example("grafana/switchyard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    for p in panels {
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{p}");
        for t in targets {
            assert!(t["expr"].as_str().unwrap().contains("switchyard_"), "{t}");
        }
    }
}
