//! The cutover under faults, as a Jepsen-style tester tries it: a write
//! load through the proxy the whole time, and faults injected at the worst
//! moments: a batch job writing to blue's database directly across the
//! cutover, a partition that cuts green's database off during an abort
//! after the promotion (iptables on its port), and green's server killed at
//! each step of the cutover. Each story checks that no acknowledged write
//! is missing from the final primary, that no id was handed out twice, and
//! that what switchyard said about it is true.

#[path = "support/orders.rs"]
mod orders;
#[path = "../sync/tests/support/mod.rs"]
mod pg;
mod support;

use http::Method;
use orders::{OrderLoad, OrdersApp};
use std::time::Duration;
use support::{eventually, Switchyard};

fn config(pair: &pg::Pair, cutover_timeout: &str) -> String {
    format!(
        r#"
[rollout]
steps = [20, 100]
bake = "500ms"

[rollout.analysis]
window = "3s"
interval = "100ms"
min_requests = 5

[database]
blue = "{}"
green = "{}"
migrations = "{}"
mode = "replicate"
max_lag = "1s"
cutover_timeout = "{cutover_timeout}"
"#,
        pair.blue(),
        pair.green(),
        pair.migrations.path().display()
    )
}

fn switchyard(
    pair: &pg::Pair,
    blue: &OrdersApp,
    green: &OrdersApp,
    cutover_timeout: &str,
    env: &[(&str, &str)],
) -> Switchyard {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Switchyard::builder()
        .blue(blue.addr)
        .green(green.addr)
        .proxy_extra("sticky = \"hash\"\nsticky_key = \"header:x-user\"")
        .extra(&config(pair, cutover_timeout))
        .start_command(move |bin, config| {
            let mut c = std::process::Command::new(bin);
            c.arg("run").arg("-c").arg(config);
            for (k, v) in &env {
                c.env(k, v);
            }
            c
        })
}

async fn state(sy: &Switchyard) -> String {
    sy.status().await["rollout"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn history(sy: &Switchyard) -> Vec<serde_json::Value> {
    let h = sy.admin(Method::GET, "/api/v1/history", "").await.json();
    h["events"]
        .as_array()
        .or_else(|| h.as_array())
        .cloned()
        .unwrap_or_default()
}

async fn story(sy: &Switchyard) -> String {
    history(sy)
        .await
        .iter()
        .map(|e| format!("{} {} {}", e["seq"], e["kind"], e["reason"]))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn wait_state(sy: &Switchyard, want: &[&str], secs: u64) -> String {
    let ok = eventually(secs, async || want.contains(&state(sy).await.as_str())).await;
    assert!(
        ok,
        "rollout never reached {want:?}: {:#}\n{}",
        sy.status().await,
        story(sy).await
    );
    state(sy).await
}

async fn ids_on(url: &str, ids: &[i64]) -> i64 {
    pg::connect(url)
        .await
        .query_one("SELECT count(*) FROM orders WHERE id = ANY($1)", &[&ids])
        .await
        .unwrap()
        .get(0)
}

/// Every acknowledged id is on `url`, and none was handed out twice.
async fn nothing_lost(tally: &orders::OrderTally, url: &str, what: &str) {
    let ids: Vec<i64> = tally.acked.iter().map(|(i, _)| *i).collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        ids.len(),
        "{what}: an id was handed out twice"
    );
    let present = ids_on(url, &ids).await;
    assert_eq!(
        present,
        ids.len() as i64,
        "{what}: {} of {} acknowledged writes are missing from the primary",
        ids.len() as i64 - present,
        ids.len()
    );
}

/// An iptables rule dropping every packet to a local port, removed on drop.
struct Partition(u16);

impl Partition {
    fn cut(port: u16) -> Partition {
        let ok = std::process::Command::new("iptables")
            .args(["-I", "INPUT", "-i", "lo", "-p", "tcp", "--dport"])
            .arg(port.to_string())
            .args(["-j", "DROP"])
            .status()
            .expect("iptables runs (installed by .ci/run)")
            .success();
        assert!(ok, "iptables refused the rule");
        Partition(port)
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = std::process::Command::new("iptables")
            .args(["-D", "INPUT", "-i", "lo", "-p", "tcp", "--dport"])
            .arg(self.0.to_string())
            .args(["-j", "DROP"])
            .status();
    }
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .and_then(|p| p.parse().ok())
        .expect("a port in the URL")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_job_writing_to_blue_across_the_cutover_is_refused_never_left_on_blue_alone() {
    let pair = pg::Pair::new("fault_job").await;
    pg::sql(pair.blue(), orders::SCHEMA).await;
    for url in [pair.blue(), pair.green()] {
        pg::sql(
            url,
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'batch_job') \
             THEN CREATE ROLE batch_job LOGIN; END IF; END $$",
        )
        .await;
    }
    pg::sql(
        pair.blue(),
        "GRANT ALL ON orders TO batch_job; GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO batch_job",
    )
    .await;
    let blue = OrdersApp::start("blue", pair.blue()).await;
    let green = OrdersApp::start("green", pair.green()).await;
    let sy = switchyard(&pair, &blue, &green, "5s", &[]);
    let load = OrderLoad::start(sy.proxy, 2, 2, Duration::from_secs(300));
    let r = sy.admin(Method::POST, "/api/v1/rollout/start", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_state(&sy, &["progressing"], 120).await;

    // The nightly job connects to blue's database directly, inserts and
    // updates, and is still in its transaction when the cutover comes.
    let job_url = pair
        .blue()
        .replacen("postgres://postgres@", "postgres://batch_job@", 1);
    let job = pg::connect(&job_url).await;
    job.batch_execute(
        "BEGIN; INSERT INTO orders (item) VALUES ('nightly job'); UPDATE orders SET qty = -7 WHERE id = 3",
    )
    .await
    .unwrap();
    let r = sy.admin(Method::POST, "/api/v1/rollout/promote", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_state(&sy, &["promoted"], 60).await;
    let committed = job.batch_execute("COMMIT").await;
    assert!(
        committed.is_err(),
        "the job's transaction was ended by the fence"
    );
    for url in [pair.blue(), pair.green()] {
        let n: i64 = pg::connect(url)
            .await
            .query_one(
                "SELECT count(*) FROM orders WHERE item = 'nightly job' OR qty = -7",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            n, 0,
            "the job's writes are on neither side, never on blue alone"
        );
    }
    // It tries again: blue refuses, it has to go to the primary.
    let again = pg::connect(&job_url)
        .await
        .batch_execute("INSERT INTO orders (item) VALUES ('nightly job')")
        .await
        .unwrap_err();
    assert!(
        switchyard_sync::error::pg_message(&again).contains("read-only"),
        "{again:?}"
    );
    let h = history(&sy).await;
    let completed = h
        .iter()
        .find(|e| e["kind"] == "cutover_completed")
        .expect("a cutover_completed event");
    let reason = completed["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("batch_job") && reason.contains("had written"),
        "the event names the session it ended: {reason}"
    );
    let checked = eventually(30, async || {
        history(&sy)
            .await
            .iter()
            .any(|e| e["kind"] == "cutover_checked")
    })
    .await;
    assert!(checked, "{}", story(&sy).await);
    let h = history(&sy).await;
    let check = h.iter().find(|e| e["kind"] == "cutover_checked").unwrap();
    assert!(
        check["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("checked: blue committed no write after the switch"),
        "{check:#}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tally = load.stop().await;
    assert!(tally.failures.is_empty(), "{:#?}", tally.failures);
    nothing_lost(&tally, pair.green(), "after the cutover").await;
    support::sync(&sy.config_path, &["cleanup"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_during_an_abort_after_the_promotion_holds_writes_no_longer_than_the_timeout_and_loses_nothing(
) {
    // Own clusters: the partition cuts off green's whole server.
    let (blue_pg, green_pg) = (pg::PgCluster::start(), pg::PgCluster::start());
    let pair = pg::Pair::on(&blue_pg, &green_pg, "fault_partition").await;
    pg::sql(pair.blue(), orders::SCHEMA).await;
    let blue = OrdersApp::start("blue", pair.blue()).await;
    let green = OrdersApp::start("green", pair.green()).await;
    // The switch pauses after fencing, so the partition lands while the
    // cutover back is under way (connections open).
    let sy = switchyard(
        &pair,
        &blue,
        &green,
        "4s",
        &[("SWITCHYARD_CUTOVER_PAUSE", "fence:1000")],
    );
    let load = OrderLoad::start(sy.proxy, 2, 2, Duration::from_secs(300));
    let r = sy.admin(Method::POST, "/api/v1/rollout/start", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_state(&sy, &["promoted"], 150).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Abort after the promotion, and cut green's database off half a second
    // into the cutover back.
    let r = sy.admin(Method::POST, "/api/v1/rollout/abort", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cut = Partition::cut(port_of(pair.green()));
    let settled = wait_state(&sy, &["promoted", "aborted"], 60).await;
    let h = history(&sy).await;
    let timed_out = h
        .iter()
        .rev()
        .find(|e| e["kind"] == "cutover_timed_out")
        .cloned();
    assert_eq!(
        settled,
        "promoted",
        "the cutover back cannot finish without green's database: {}",
        story(&sy).await
    );
    let timed_out = timed_out.expect("a cutover_timed_out event");
    let held = timed_out["held_ms"].as_u64().unwrap();
    assert!(
        held <= 4_000 + 5_000 + 3_000,
        "writes were held {held} ms: more than cutover_timeout (4 s) plus the undo's 5 s and a margin"
    );
    let reason = timed_out["reason"].as_str().unwrap_or("").to_string();
    assert!(
        reason.contains("green stayed the primary") && !reason.contains("nothing was lost"),
        "{reason}"
    );
    assert_eq!(sy.status().await["database"]["writer"], "green");

    // The partition heals; what the undo could not reach is repaired, and
    // the abort goes through.
    drop(cut);
    let repaired = eventually(60, async || {
        sy.status().await["database"]["repair"].is_null()
    })
    .await;
    assert!(repaired, "{:#}", sy.status().await["database"]);
    let aborted = eventually(120, async || {
        let r = sy.admin(Method::POST, "/api/v1/rollout/abort", "").await;
        r.status == 200 || state(&sy).await == "aborted"
    })
    .await;
    assert!(aborted, "{}", story(&sy).await);
    wait_state(&sy, &["aborted"], 60).await;
    assert_eq!(sy.status().await["database"]["writer"], "blue");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tally = load.stop().await;
    // Writes to green failed while its database was cut off (never
    // acknowledged); every acknowledged one is on the final primary.
    nothing_lost(&tally, pair.blue(), "after the partition").await;
    support::sync(&sy.config_path, &["cleanup"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greens_server_killed_at_each_step_of_the_cutover_loses_nothing_and_the_report_is_true() {
    for step in ["catch_up", "sequences", "create_slot", "subscribe_back"] {
        let (blue_pg, green_pg) = (pg::PgCluster::start(), pg::PgCluster::start());
        let pair = pg::Pair::on(&blue_pg, &green_pg, &format!("fault_kill_{step}")).await;
        pg::sql(pair.blue(), orders::SCHEMA).await;
        let blue = OrdersApp::start("blue", pair.blue()).await;
        let green = OrdersApp::start("green", pair.green()).await;
        let pause = format!("{step}:2000");
        let sy = switchyard(
            &pair,
            &blue,
            &green,
            "6s",
            &[("SWITCHYARD_CUTOVER_PAUSE", pause.as_str())],
        );
        let load = OrderLoad::start(sy.proxy, 2, 1, Duration::from_secs(300));
        sy.admin(Method::POST, "/api/v1/rollout/start", "").await;
        wait_state(&sy, &["progressing"], 120).await;
        let r = sy.admin(Method::POST, "/api/v1/rollout/promote", "").await;
        assert_eq!(r.status, 200, "{step}: {}", r.text());
        // Killed while the cutover pauses after `step`.
        assert!(
            eventually(10, async || sy.status().await["database"]["write_gate"]
                ["held"]
                == true)
            .await
        );
        tokio::time::sleep(Duration::from_millis(800)).await;
        green_pg.stop();
        // Back a few seconds later (a restart), while the cutover resolves.
        tokio::time::sleep(Duration::from_secs(3)).await;
        green_pg.start_again();
        let settled = wait_state(&sy, &["paused", "aborted", "promoted"], 90).await;
        assert_ne!(
            settled,
            "promoted",
            "{step}: green's database died before the switch committed: {}",
            story(&sy).await
        );
        let s = sy.status().await;
        assert_eq!(s["database"]["writer"], "blue", "{step}: {s:#}");
        let h = history(&sy).await;
        let told = story(&sy).await;
        let timed_out = h
            .iter()
            .find(|e| e["kind"] == "cutover_timed_out")
            .unwrap_or_else(|| panic!("{step}: {told}"));
        let reason = timed_out["reason"].as_str().unwrap_or("");
        assert!(
            reason.contains("blue stayed the primary and took every write"),
            "{step}: {reason}"
        );
        // What the undo could not reach is repaired, and replication
        // blue -> green streams again.
        let healed = eventually(90, async || {
            let s = sy.status().await;
            s["database"]["repair"].is_null()
                && s["database"]["replication"]["direction"] == "blue -> green"
                && s["database"]["replication"]["state"] == "streaming"
        })
        .await;
        assert!(
            healed,
            "{step}: {:#}\n{}",
            sy.status().await["database"],
            story(&sy).await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let tally = load.stop().await;
        nothing_lost(&tally, pair.blue(), step).await;
        support::sync(&sy.config_path, &["cleanup"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blues_server_killed_just_after_the_switch_is_checked_and_cleaned_once_it_is_back() {
    let (blue_pg, green_pg) = (pg::PgCluster::start(), pg::PgCluster::start());
    let pair = pg::Pair::on(&blue_pg, &green_pg, "fault_blue_after").await;
    pg::sql(pair.blue(), orders::SCHEMA).await;
    let blue = OrdersApp::start("blue", pair.blue()).await;
    let green = OrdersApp::start("green", pair.green()).await;
    // The switch has committed when it pauses after recording itself.
    let sy = switchyard(
        &pair,
        &blue,
        &green,
        "6s",
        &[("SWITCHYARD_CUTOVER_PAUSE", "record:1500")],
    );
    let load = OrderLoad::start(sy.proxy, 2, 1, Duration::from_secs(300));
    sy.admin(Method::POST, "/api/v1/rollout/start", "").await;
    wait_state(&sy, &["progressing"], 120).await;
    sy.admin(Method::POST, "/api/v1/rollout/promote", "").await;
    assert!(
        eventually(10, async || sy.status().await["database"]["write_gate"]
            ["held"]
            == true)
        .await
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    blue_pg.stop();
    wait_state(&sy, &["promoted"], 60).await;
    assert_eq!(sy.status().await["database"]["writer"], "green");
    // Blue's old slot cannot be checked or removed while it is down: the
    // status says so, and nothing claims that nothing was lost.
    let pending = eventually(20, async || {
        sy.status().await["database"]["repair"]
            .as_str()
            .is_some_and(|r| r.contains("could not be checked and removed yet"))
    })
    .await;
    assert!(pending, "{:#}", sy.status().await["database"]);
    assert!(!story(&sy)
        .await
        .contains("checked: blue committed no write"));
    blue_pg.start_again();
    let done = eventually(60, async || {
        history(&sy).await.iter().any(|e| {
            e["kind"] == "cutover_checked"
                && e["reason"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("checked: blue committed no write")
        })
    })
    .await;
    assert!(done, "{}", story(&sy).await);
    assert!(sy.status().await["database"]["repair"].is_null());
    let left = pg::switchyard_objects(pair.blue()).await;
    assert!(
        left.iter().all(|o| !o.contains("fwd")),
        "the old direction's slot and publication are gone from blue: {left:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tally = load.stop().await;
    nothing_lost(&tally, pair.green(), "after the switch").await;
    support::sync(&sy.config_path, &["cleanup"]);
}

/// The fault schedule: `FAULT_ROUNDS` (default 20) rollouts, each with one
/// fault at a random step of a random cutover (forward, or back after the
/// promotion): green's or blue's server killed and restarted, or its port
/// cut off and healed. Writes flow through the proxy the whole time. The
/// table says, per rollout, what was acknowledged, lost (acknowledged but
/// not on the final primary) and handed out twice, and the longest write
/// hold. Run by `bench/faults/run.sh`; `FAULT_SEED` repeats a schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault schedule: run bench/faults/run.sh"]
async fn fault_schedule() {
    use rand::{Rng, SeedableRng};
    let rounds: usize = std::env::var("FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let steps = [
        "fence",
        "catch_up",
        "sequences",
        "publish",
        "stop_old_subscription",
        "create_slot",
        "subscribe_back",
        "record",
    ];
    let mut rows = Vec::new();
    let (mut total_acked, mut total_lost, mut total_dup, mut longest) =
        (0usize, 0i64, 0usize, 0u64);
    for round in 1..=rounds {
        let step = steps[rng.gen_range(0..steps.len())];
        let back = rng.gen_bool(0.5);
        let victim = if rng.gen_bool(0.5) { "green" } else { "blue" };
        let fault = if rng.gen_bool(0.5) {
            "kill"
        } else {
            "partition"
        };
        let (blue_pg, green_pg) = (pg::PgCluster::start(), pg::PgCluster::start());
        let pair = pg::Pair::on(&blue_pg, &green_pg, &format!("fault_schedule_{round}")).await;
        pg::sql(pair.blue(), orders::SCHEMA).await;
        let blue = OrdersApp::start("blue", pair.blue()).await;
        let green = OrdersApp::start("green", pair.green()).await;
        let pause = format!("{step}:1500");
        let sy = switchyard(
            &pair,
            &blue,
            &green,
            "5s",
            &[("SWITCHYARD_CUTOVER_PAUSE", pause.as_str())],
        );
        let load = OrderLoad::start(sy.proxy, 2, 1, Duration::from_secs(600));
        sy.admin(Method::POST, "/api/v1/rollout/start", "").await;
        let _ = eventually(150, async || state(&sy).await == "progressing").await;
        sy.admin(Method::POST, "/api/v1/rollout/promote", "").await;
        if back {
            let _ = eventually(90, async || state(&sy).await == "promoted").await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            sy.admin(Method::POST, "/api/v1/rollout/abort", "").await;
        }
        let _ = eventually(10, async || {
            sy.status().await["database"]["write_gate"]["held"] == true
        })
        .await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let (cluster, url) = if victim == "green" {
            (&green_pg, pair.green())
        } else {
            (&blue_pg, pair.blue())
        };
        if fault == "kill" {
            cluster.stop();
            tokio::time::sleep(Duration::from_secs(3)).await;
            cluster.start_again();
        } else {
            let cut = Partition::cut(port_of(url));
            tokio::time::sleep(Duration::from_secs(3)).await;
            drop(cut);
        }
        let _ = eventually(120, async || {
            let s = sy.status().await;
            matches!(
                s["rollout"]["state"].as_str(),
                Some("promoted" | "paused" | "aborted")
            ) && s["database"]["repair"].is_null()
                && s["database"]["attention"].is_null()
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let tally = load.stop().await;
        let s = sy.status().await;
        let writer = s["database"]["writer"].as_str().unwrap_or("?").to_string();
        let final_url = if writer == "green" {
            pair.green()
        } else {
            pair.blue()
        };
        let ids: Vec<i64> = tally.acked.iter().map(|(i, _)| *i).collect();
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        let dup = ids.len() - unique.len();
        let lost = unique.len() as i64 - ids_on(final_url, &unique).await;
        let hold = history(&sy)
            .await
            .iter()
            .filter_map(|e| e["held_ms"].as_u64())
            .max()
            .unwrap_or(0);
        total_acked += ids.len();
        total_lost += lost;
        total_dup += dup;
        longest = longest.max(hold);
        let row = format!(
            "| {round} | {} | {fault} {victim} after `{step}` | {} → writer {writer} | {} | {lost} | {dup} | {hold} |",
            if back { "back (abort after promotion)" } else { "forward (promote)" },
            s["rollout"]["state"].as_str().unwrap_or("?"),
            ids.len()
        );
        eprintln!("{row}");
        rows.push(row);
        support::sync(&sy.config_path, &["cleanup"]);
    }
    let table = format!(
        "Seed {seed}.\n\n| rollout | cutover | fault | ended | writes acknowledged | lost | duplicated ids | longest hold (ms) |\n|---:|---|---|---|---:|---:|---:|---:|\n{}\n| **all {rounds}** | | | | **{total_acked}** | **{total_lost}** | **{total_dup}** | **{longest}** |\n",
        rows.join("\n")
    );
    if let Ok(path) = std::env::var("FAULTS_OUT") {
        std::fs::write(path, &table).unwrap();
    }
    println!("{table}");
    assert_eq!((total_lost, total_dup), (0, 0), "{table}");
}
