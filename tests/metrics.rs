//! An SRE points Prometheus at `/metrics`: the exposition passes
//! `promtool check metrics` (Debian's `prometheus` package; `.ci/run`
//! installs it), and carries what alerts need: rollout state, analysis
//! verdict, candidate error rate, how long a gate has held, replication lag,
//! build and process metrics.

#[path = "support/load.rs"]
mod load;
#[path = "../sync/tests/support/mod.rs"]
mod pg;
mod support;

use http::Method;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::{deployment, eventually};

fn promtool(exposition: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is not installed: `apt-get install prometheus` (.ci/run does)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_carry_what_alerts_need() {
    let pair = pg::Pair::new("metrics").await;
    pg::sql(
        pair.blue(),
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100);",
    )
    .await;
    let extra = format!(
        "[rollout]\nsteps = [20, 100]\nbake = \"1h\"\n\n[rollout.analysis]\nwindow = \"3s\"\ninterval = \"100ms\"\nmin_requests = 5\n\n\
         [database]\nblue = \"{}\"\ngreen = \"{}\"\nmigrations = \"{}\"\nmode = \"replicate\"\n",
        pair.blue(),
        pair.green(),
        pair.migrations.path().display()
    );
    let (_blue, _green, sy) = deployment(|b| b.extra(&extra)).await;
    let _load = load::Load::start(sy.url("/"), 2, 100_000, Duration::from_secs(120));
    sy.admin(Method::POST, "/api/v1/rollout/start", "").await;
    assert!(
        eventually(90, async || sy.status().await["rollout"]["state"]
            == "progressing")
        .await,
        "{}",
        sy.status().await
    );
    let has = async |m: &str| {
        sy.client
            .get(&sy.admin_url("/metrics"))
            .await
            .is_ok_and(|r| r.text().contains(m))
    };
    assert!(
        eventually(20, async || has(
            "switchyard_replication_lag_seconds{direction=\"blue_to_green\"}"
        )
        .await)
        .await,
        "replication lag appears once measured"
    );
    let text = sy.metrics().await;
    let (ok, report) = promtool(&text);
    assert!(ok, "promtool check metrics failed:\n{report}\n---\n{text}");
    for needed in [
        "switchyard_build_info{version=",
        "switchyard_rollout_state{state=\"progressing\"} 1",
        "switchyard_analysis_verdict{verdict=",
        "switchyard_candidate_error_rate{colour=\"green\"}",
        "switchyard_rollout_holding_seconds ",
        "switchyard_requests_total{colour=\"green\"}",
        "switchyard_database_gate_open ",
        "switchyard_replication_slot_retained_wal_bytes{direction=\"blue_to_green\"}",
        "switchyard_writes_held 0",
        "process_resident_memory_bytes ",
        "process_open_fds ",
    ] {
        assert!(text.contains(needed), "missing {needed:?} in:\n{text}");
    }
    // Every metric the shipped alert rules and dashboard use is exported
    // (the cutover ones appear after the first cutover).
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let used = [
        std::fs::read_to_string(examples.join("prometheus/alerts.yml")).unwrap(),
        std::fs::read_to_string(examples.join("grafana/switchyard.json")).unwrap(),
    ]
    .join("\n");
    let mut names: Vec<String> = used
        .match_indices("switchyard_")
        .map(|(i, _)| {
            used[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
        })
        .map(|n| n.trim_end_matches("_bucket").to_string())
        .filter(|n| n != "switchyard_" && n != "switchyard_json")
        .collect();
    names.sort();
    names.dedup();
    for n in names {
        let after_cutover = n.starts_with("switchyard_cutover_");
        // Snapshot mode only: the database_gate stories check it.
        let snapshot_only = n == "switchyard_database_green_stale";
        assert!(
            after_cutover || snapshot_only || text.contains(&format!("# TYPE {n} ")),
            "{n} is used by examples/ but not exported"
        );
    }
    let (bad, _) = promtool("# TYPE broken counter\nbroken{a=\"b\"} not-a-number\n");
    assert!(!bad, "promtool itself rejects a broken exposition");
    let out = support::sync(&sy.config_path, &["cleanup"]).stdout;
    assert!(out.contains("removed"), "{out}");
}

/// One metric's value in an exposition (an unlabelled sample).
fn sample(text: &str, name: &str) -> u64 {
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing in:\n{text}"))
}

/// The SRE's view of client connections, as nginx's `stub_status` and
/// HAProxy's `scur`/`slim` give it: five keep-alive clients that go quiet
/// show as open and, after a second, idle; the cap is `max_connections`;
/// when the clients leave, both gauges come back down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_connection_gauges_count_idle_keep_alive_clients_and_let_them_go() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_blue, _green, sy) = deployment(|b| b.proxy_extra("max_connections = 300")).await;
    // Whatever the harness left open has parked by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = sy.metrics().await;
    assert_eq!(sample(&before, "switchyard_client_connections_limit"), 300);
    let open = sample(&before, "switchyard_client_connections");
    let idle = sample(&before, "switchyard_client_connections_idle");
    let accepted = sample(&before, "switchyard_client_connections_accepted_total");
    assert!(idle <= open, "{before}");

    let mut held = Vec::new();
    for _ in 0..5 {
        let mut s = tokio::net::TcpStream::connect(sy.proxy).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        while !String::from_utf8_lossy(&got).ends_with("blue") {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before the response");
            got.extend_from_slice(&chunk[..n]);
        }
        held.push(s);
    }
    let mut last = String::new();
    let counted = eventually(20, async || {
        last = sy.metrics().await;
        sample(&last, "switchyard_client_connections") == open + 5
            && sample(&last, "switchyard_client_connections_idle") == idle + 5
    })
    .await;
    assert!(
        counted,
        "five idle clients not counted as open and idle:\n{last}"
    );
    assert_eq!(
        sample(&last, "switchyard_client_connections_accepted_total"),
        accepted + 5
    );
    let (ok, report) = promtool(&last);
    assert!(ok, "promtool check metrics failed:\n{report}\n---\n{last}");

    drop(held);
    let released = eventually(20, async || {
        last = sy.metrics().await;
        sample(&last, "switchyard_client_connections") == open
            && sample(&last, "switchyard_client_connections_idle") == idle
    })
    .await;
    assert!(released, "closed clients still counted:\n{last}");
}
