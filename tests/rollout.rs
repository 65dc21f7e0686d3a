//! Rollouts as users see them: a real switchyard process, real backends,
//! real load. The controller walks the steps, rolls back by itself when the
//! candidate misbehaves, holds when it cannot judge or a gate says no, and
//! survives `kill -9` and a damaged state file.

#[path = "support/load.rs"]
mod load;
mod support;

use http::Method;
use load::Load;
use std::time::{Duration, Instant};
use support::{eventually, Backend, Switchyard};

/// Short bakes and windows so a whole rollout takes a few seconds.
const FAST: &str = r#"
[rollout]
steps = [10, 50, 100]
bake = "300ms"

[rollout.analysis]
window = "2s"
interval = "50ms"
min_requests = 10
max_error_rate = 0.05
"#;

/// Like [`FAST`], but the second step bakes for an hour: the rollout stays
/// there until the test acts ("mid-rollout").
fn parked(analysis_extra: &str) -> String {
    format!(
        r#"
[rollout]
steps = [{{ weight = 10, bake = "300ms" }}, {{ weight = 50, bake = "1h" }}, 100]
bake = "300ms"

[rollout.analysis]
window = "2s"
interval = "50ms"
min_requests = 10
max_error_rate = 0.05
{analysis_extra}
"#
    )
}

async fn act(sy: &Switchyard, action: &str) -> support::client::Resp {
    sy.admin(Method::POST, &format!("/api/v1/rollout/{action}"), "")
        .await
}

/// (state, step, green percent) from the status endpoint.
async fn rollout(sy: &Switchyard) -> (String, Option<u64>, f64) {
    let s = sy.status().await;
    (
        s["rollout"]["state"].as_str().unwrap().to_string(),
        s["rollout"]["step"].as_u64(),
        s["weights"]["green"].as_f64().unwrap(),
    )
}

async fn history_kinds(sy: &Switchyard) -> Vec<String> {
    let h = sy.admin(Method::GET, "/api/v1/history", "").await;
    assert_eq!(h.status, 200, "{}", h.text());
    h.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

async fn wait_for_step(sy: &Switchyard, step: u64) {
    let reached = eventually(30, async || {
        let (state, s, _) = rollout(sy).await;
        state == "progressing" && s == Some(step)
    })
    .await;
    assert!(reached, "never reached step {step}: {}", sy.status().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_rollout_on_a_healthy_green_reaches_promoted_and_the_next_goes_back_to_blue() {
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let hook = Backend::start("hook").await;
    let sy = Switchyard::builder()
        .blue(blue.addr)
        .green(green.addr)
        .extra(FAST)
        .extra(&format!(
            "[webhooks]\nnotify = \"http://{}/events\"",
            hook.addr
        ))
        .start();
    let events = sy.events().await;
    let load = Load::start(sy.url("/"), 4, 200_000, Duration::from_secs(90));

    let t0 = Instant::now();
    let r = act(&sy, "start").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let promoted = eventually(60, async || rollout(&sy).await.0 == "promoted").await;
    assert!(promoted, "rollout did not finish: {}", sy.status().await);
    println!("rollout through 3 steps took {:?}", t0.elapsed());
    let s = sy.status().await;
    assert_eq!(s["weights"]["green"], 100.0);
    assert_eq!(s["rollout"]["stable"], "green");
    let kinds = history_kinds(&sy).await;
    assert_eq!(
        kinds,
        [
            "rollout_started",
            "step_advanced",
            "step_advanced",
            "step_advanced",
            "cutover",
            "promoted"
        ],
        "history"
    );
    let sse_ok = eventually(5, async || {
        let t = events.lock().unwrap().clone();
        t.contains("event: rollout_started") && t.contains("event: promoted")
    })
    .await;
    assert!(sse_ok, "SSE stream: {}", events.lock().unwrap());
    assert!(
        eventually(5, async || hook.requests() >= 6).await,
        "notify webhook got {} events",
        hook.requests()
    );

    // The next rollout goes the other way: blue is now the candidate.
    let r = act(&sy, "start").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["rollout"]["candidate"], "blue");
    let promoted = eventually(60, async || rollout(&sy).await.0 == "promoted").await;
    assert!(promoted, "second rollout: {}", sy.status().await);
    let h = sy.admin(Method::GET, "/api/v1/history", "").await.json();
    let greens: Vec<f64> = h["events"].as_array().unwrap()[6..]
        .iter()
        .filter(|e| e["kind"] == "step_advanced")
        .map(|e| e["weights"]["green"].as_f64().unwrap())
        .collect();
    assert_eq!(greens, [90.0, 50.0, 0.0], "blue's steps 10, 50, 100");
    let s = sy.status().await;
    assert_eq!(
        (
            s["weights"]["blue"].as_f64(),
            s["weights"]["green"].as_f64()
        ),
        (Some(100.0), Some(0.0))
    );
    assert_eq!(s["rollout"]["stable"], "blue");

    let c = load.stop().await;
    println!("load: {c:?}");
    assert!(c.green_ok > 0 && c.blue_ok > 0);
    assert_eq!(
        (c.blue_5xx, c.green_5xx, c.other_failures),
        (0, 0, 0),
        "no request may fail while weights shift on healthy colours"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn green_failing_mid_rollout_is_rolled_back() {
    let (_blue, green, sy) = support::deployment(|b| b.extra(&parked(""))).await;
    let load = Load::start(sy.url("/"), 4, 200_000, Duration::from_secs(60));
    assert_eq!(act(&sy, "start").await.status, 200);
    wait_for_step(&sy, 1).await;
    let before = load.counts();

    let onset = Instant::now();
    green.fail(0.5);
    let rolled_back = eventually(10, async || rollout(&sy).await.2 == 0.0).await;
    let reaction = onset.elapsed();
    assert!(rolled_back, "not rolled back: {}", sy.status().await);
    let after = load.counts();
    println!(
        "green at 50% failing half its requests: weight 0 after {reaction:?} (seen through status polling); \
         {} failed responses reached clients during that time, of {} requests",
        after.green_5xx - before.green_5xx,
        after.sent - before.sent
    );
    let s = sy.status().await;
    assert_eq!(s["rollout"]["state"], "aborted");
    let reason = s["rollout"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("rolled back") && reason.contains("error rate"),
        "{reason}"
    );
    let h = sy.admin(Method::GET, "/api/v1/history", "").await.json();
    let last = h["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["kind"].as_str(), last["actor"].as_str()),
        (Some("rolled_back"), Some("controller"))
    );
    // Green gets nothing from now on.
    let settled = load.counts();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = load.stop().await;
    assert_eq!(
        c.green_ok + c.green_5xx,
        settled.green_ok + settled.green_5xx
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn green_latency_regression_is_rolled_back() {
    let (_blue, green, sy) =
        support::deployment(|b| b.extra(&parked("max_p99 = \"150ms\"\nmax_p99_ratio = 5.0"))).await;
    let load = Load::start(sy.url("/"), 4, 200_000, Duration::from_secs(60));
    assert_eq!(act(&sy, "start").await.status, 200);
    wait_for_step(&sy, 1).await;

    let onset = Instant::now();
    green.delay(Duration::from_millis(400));
    let rolled_back = eventually(15, async || rollout(&sy).await.2 == 0.0).await;
    assert!(rolled_back, "not rolled back: {}", sy.status().await);
    println!("green p99 regression: weight 0 after {:?}", onset.elapsed());
    let s = sy.status().await;
    assert_eq!(s["rollout"]["state"], "aborted");
    let reason = s["rollout"]["reason"].as_str().unwrap();
    assert!(reason.contains("p99"), "{reason}");
    load.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_little_traffic_holds_the_step() {
    let (_blue, _green, sy) =
        support::deployment(|b| b.extra(&FAST.replace("min_requests = 10", "min_requests = 1000")))
            .await;
    assert_eq!(act(&sy, "start").await.status, 200);
    wait_for_step(&sy, 0).await;
    for _ in 0..50 {
        sy.client.get(&sy.url("/")).await.unwrap();
    }
    // Several bakes pass; with under min_requests green requests the step
    // must hold.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = sy.status().await;
    assert_eq!(s["rollout"]["state"], "progressing");
    assert_eq!(s["rollout"]["step"], 0);
    assert_eq!(s["weights"]["green"], 10.0);
    assert_eq!(s["analysis"]["verdict"], "inconclusive");
    let holding = s["rollout"]["holding"].as_str().unwrap();
    assert!(holding.contains("inconclusive"), "{holding}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_confirm_webhook_holds() {
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let hook = Backend::start("confirm").await;
    hook.fail(1.0);
    let sy = Switchyard::builder()
        .blue(blue.addr)
        .green(green.addr)
        .extra(FAST)
        .extra(&format!(
            "[webhooks]\nconfirm = \"http://{}/confirm\"\ntimeout = \"300ms\"",
            hook.addr
        ))
        .start();
    let load = Load::start(sy.url("/"), 2, 100_000, Duration::from_secs(60));
    let s = sy.status().await;
    assert_eq!(s["gates"]["confirm webhook"]["gate"], "unknown", "{s}");
    assert_eq!(act(&sy, "start").await.status, 200);

    // The webhook answers 500: asked, and asked again, and nothing moves.
    assert!(eventually(10, async || hook.requests() >= 2).await);
    let s = sy.status().await;
    assert_eq!(
        (
            s["rollout"]["state"].as_str(),
            s["weights"]["green"].as_f64()
        ),
        (Some("preparing"), Some(0.0))
    );
    let holding = s["rollout"]["holding"].as_str().unwrap_or("").to_string();
    assert!(
        holding.contains("confirm webhook") && holding.contains("500"),
        "{s}"
    );
    let gate = &s["gates"]["confirm webhook"];
    assert_eq!(gate["gate"], "hold", "{s}");
    assert!(gate["reason"].as_str().unwrap_or("").contains("500"), "{s}");

    // It says yes: the first step goes ahead.
    hook.fail(0.0);
    assert!(eventually(10, async || rollout(&sy).await.0 == "progressing").await);
    let s = sy.status().await;
    assert_eq!(s["gates"]["confirm webhook"]["gate"], "pass", "{s}");

    // It stops answering in time: the rollout holds on the timeout. (A
    // check already under way when the delay is switched on may still
    // pass, so compare from after two slow asks.)
    hook.delay(Duration::from_secs(2));
    let asked = hook.requests();
    assert!(eventually(10, async || hook.requests() >= asked + 2).await);
    let held = rollout(&sy).await;
    let asked = hook.requests();
    assert!(eventually(10, async || hook.requests() >= asked + 2).await);
    assert_eq!(rollout(&sy).await, held, "no step while the hook times out");
    let s = sy.status().await;
    let holding = s["rollout"]["holding"].as_str().unwrap_or("").to_string();
    assert!(holding.contains("no answer within"), "{s}");
    load.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_rollout_resumes_at_the_same_step_and_weight() {
    let (_blue, _green, sy) = support::deployment(|b| b.extra(&parked(""))).await;
    let load = Load::start(sy.url("/"), 4, 200_000, Duration::from_secs(60));
    assert_eq!(act(&sy, "start").await.status, 200);
    wait_for_step(&sy, 1).await;
    load.stop().await;
    let before = sy.status().await;

    let sy = sy.restart();
    let after = sy.status().await;
    assert_eq!(after["rollout"]["state"], "progressing");
    assert_eq!(after["rollout"]["step"], 1);
    assert_eq!(after["weights"]["green"], 50.0);
    assert_eq!(
        after["rollout"]["step_started"], before["rollout"]["step_started"],
        "the bake continues from when the step began"
    );
    assert_eq!(history_kinds(&sy).await.len(), 3, "history survives");
    // Traffic really is split at the restored weight, and the rollout can
    // be driven on.
    let (mut g, n) = (0, 400);
    for _ in 0..n {
        if sy.client.get(&sy.url("/")).await.unwrap().text() == "green" {
            g += 1;
        }
    }
    assert!((100..=300).contains(&g), "{g} of {n} green at 50%");
    assert_eq!(act(&sy, "promote").await.status, 200);
    assert!(eventually(10, async || rollout(&sy).await.0 == "promoted").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_falls_back_to_the_last_good_copy_or_refuses_to_start() {
    let (_blue, _green, mut sy) = support::deployment(|b| b.extra(&parked(""))).await;
    assert_eq!(act(&sy, "start").await.status, 200);
    wait_for_step(&sy, 0).await;
    sy.set_green(30.0).await; // pauses the rollout
    let state = sy.dir.path().join("state.json");
    let backup = sy.dir.path().join("state.json.bak");

    // A damaged state file: the backup is used, the damage kept aside.
    sy.kill9();
    std::fs::write(&state, b"{\"green_bp\": 30").unwrap();
    let mut sy = sy.restart();
    let s = sy.status().await;
    assert_eq!(
        (
            s["rollout"]["state"].as_str(),
            s["weights"]["green"].as_f64()
        ),
        (Some("paused"), Some(30.0)),
        "restored from the backup: {s}"
    );
    assert_eq!(history_kinds(&sy).await.last().unwrap(), "state_restored");
    let kept = std::fs::read_dir(sy.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.json.damaged-")
        });
    assert!(kept, "the damaged file is kept for inspection");
    assert!(sy.stderr().contains("restored the last good copy"));

    // Both damaged: refuse to start, say which file and how to reset.
    sy.kill9();
    std::fs::write(&state, b"not json").unwrap();
    std::fs::write(&backup, b"not json either").unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("run")
        .arg("-c")
        .arg(&sy.config_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("switchyard started on a corrupt state file");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains(&state.display().to_string()), "{stderr}");
    assert!(stderr.contains("remove both files"), "{stderr}");
    assert_eq!(
        std::fs::read(&state).unwrap(),
        b"not json",
        "nothing was reset"
    );
}

/// One rollback-reaction measurement (see `bench/rollback/run.sh`).
struct Reaction {
    /// Onset (first failing answer possible) to the `rolled_back` event's
    /// timestamp, which is taken just before the weight is set.
    to_weight_zero: Duration,
    /// Green 5xx responses clients received from onset until the end.
    failed: u64,
    /// Green requests per second before onset.
    green_rps: f64,
    reason: String,
}

async fn measure_rollback(analysis: &str, share: f64, concurrency: usize) -> Reaction {
    let (_blue, green, sy) = support::deployment(|b| b.extra(&format!("[rollout]\nsteps = [{{ weight = 50, bake = \"1h\" }}, 100]\n[rollout.analysis]\n{analysis}\n[log]\nlevel = \"warn\"\n"))).await;
    let window = sy.status().await["analysis"]["window_seconds"]
        .as_f64()
        .unwrap();
    let events = sy.events().await;
    let load = Load::start(
        sy.url("/"),
        concurrency,
        10_000_000,
        Duration::from_secs(120),
    );
    assert_eq!(act(&sy, "start").await.status, 200);
    wait_for_step(&sy, 0).await;
    // Let the window fill with healthy traffic, as in production.
    tokio::time::sleep(Duration::from_secs_f64(window + 0.5)).await;
    let (c0, t0) = (load.counts(), Instant::now());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let c1 = load.counts();
    let green_rps = (c1.green_ok - c0.green_ok) as f64 / t0.elapsed().as_secs_f64();

    // Random phase against the controller's ticks, so runs sample the
    // whole tick instead of one point of it.
    tokio::time::sleep(Duration::from_micros(rand::random::<u64>() % 200_000)).await;
    let onset_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let before = load.counts();
    green.fail(share);
    let done = eventually(60, async || {
        events.lock().unwrap().contains("event: rolled_back")
    })
    .await;
    assert!(done, "no rollback: {}", sy.status().await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = load.stop().await;
    let h = sy.admin(Method::GET, "/api/v1/history", "").await.json();
    let ev = h["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "rolled_back")
        .unwrap()
        .clone();
    Reaction {
        to_weight_zero: Duration::from_millis(ev["at_ms"].as_u64().unwrap() - onset_ms),
        failed: after.green_5xx - before.green_5xx,
        green_rps,
        reason: ev["reason"].as_str().unwrap().to_string(),
    }
}

/// The rollback benchmark: `bench/rollback/run.sh` runs it in release mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run bench/rollback/run.sh"]
async fn rollback_reaction_benchmark() {
    let runs: u32 = std::env::var("ROLLBACK_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let concurrency = 8;
    let defaults =
        "window = \"10s\"\ninterval = \"100ms\"\nmin_requests = 50\nmax_error_rate = 0.05";
    let scenarios = [
        (
            "defaults (window 10s, interval 100ms, max_error_rate 5%)",
            defaults.to_string(),
            1.0,
        ),
        ("defaults", defaults.to_string(), 0.2),
        (
            "defaults + fail_fast_after = 5",
            format!("{defaults}\nfail_fast_after = 5"),
            1.0,
        ),
        (
            "window 2s, interval 50ms",
            defaults.replace("10s", "2s").replace("100ms", "50ms"),
            0.2,
        ),
    ];
    let mut table = String::from(
        "| analysis config | green failing | onset → green 0 (median, min–max) | failed responses (median, min–max) | green req/s | one tick's worth | reason (first run) |\n|---|---|---|---|---|---|---|\n",
    );
    for (name, cfg, share) in scenarios {
        let mut times = vec![];
        let mut failed = vec![];
        let mut rps = vec![];
        let mut reason = String::new();
        for i in 0..runs {
            let r = measure_rollback(&cfg, share, concurrency).await;
            println!(
                "{name}, {:.0}% failing, run {i}: {:?} to weight 0, {} failed responses, {:.0} green req/s ({})",
                share * 100.0,
                r.to_weight_zero,
                r.failed,
                r.green_rps,
                r.reason
            );
            if i == 0 {
                reason = r.reason.clone();
            }
            times.push(r.to_weight_zero);
            failed.push(r.failed);
            rps.push(r.green_rps);
        }
        times.sort();
        failed.sort();
        let mid = times.len() / 2;
        let rps_avg = rps.iter().sum::<f64>() / rps.len() as f64;
        let interval = if cfg.contains("50ms") { 0.05 } else { 0.1 };
        table.push_str(&format!(
            "| {name} | {:.0}% | {} ms ({}–{}) | {} ({}–{}) | {:.0} | {:.0} | {} |\n",
            share * 100.0,
            times[mid].as_millis(),
            times[0].as_millis(),
            times[times.len() - 1].as_millis(),
            failed[mid],
            failed[0],
            failed[failed.len() - 1],
            rps_avg,
            rps_avg * interval * share,
            reason.replace('|', "/"),
        ));
    }
    // Control: a candidate failing below the threshold must not be rolled
    // back by the fast lane's noise.
    let (_blue, green, sy) = support::deployment(|b| b.extra(&format!("[rollout]\nsteps = [{{ weight = 50, bake = \"1h\" }}, 100]\n[rollout.analysis]\n{defaults}\n"))).await;
    let load = Load::start(
        sy.url("/"),
        concurrency,
        10_000_000,
        Duration::from_secs(60),
    );
    assert_eq!(act(&sy, "start").await.status, 200);
    wait_for_step(&sy, 0).await;
    green.fail(0.02);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let c = load.stop().await;
    let state = rollout(&sy).await.0;
    table.push_str(&format!(
        "\nControl: green failing 2% (threshold 5%) for 20 s under the same load ({} green requests, {} failed): state afterwards `{state}`.\n",
        c.green_ok + c.green_5xx,
        c.green_5xx
    ));
    assert_eq!(state, "progressing", "false rollback below the threshold");
    println!("\n{concurrency} concurrent keep-alive clients, {runs} runs per row\n\n{table}");
    if let Ok(out) = std::env::var("ROLLBACK_OUT") {
        std::fs::write(out, &table).unwrap();
    }
}
