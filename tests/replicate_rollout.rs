//! Blue-green with the database included, as a user runs it: an orders
//! application whose blue and green releases each use their own
//! PostgreSQL database, a steady stream of writes and reads through the
//! proxy, and `switchyard ctl start` in replicate mode. Traffic and the
//! database move to green with no failed request and no acknowledged write
//! lost; an abort after cutover moves them back the same way; a cutover that
//! cannot catch up releases the held writes to blue; and nothing of
//! switchyard's is left in either database afterwards.

#[path = "support/orders.rs"]
mod orders;
#[path = "../sync/tests/support/mod.rs"]
mod pg;
mod support;

use http::Method;
use orders::{OrderLoad, OrdersApp};
use pg::switchyard_objects;
use std::time::Duration;
use support::{eventually, Switchyard};

/// A switchyard in front of the two releases, in replicate mode.
fn switchyard(pair: &pg::Pair, blue: &OrdersApp, green: &OrdersApp, extra_db: &str) -> Switchyard {
    Switchyard::builder()
        .blue(blue.addr)
        .green(green.addr)
        .proxy_extra("sticky = \"hash\"\nsticky_key = \"header:x-user\"")
        .extra(&format!(
            r#"
[rollout]
steps = [20, 50, 100]
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
cutover_timeout = "5s"
{extra_db}
"#,
            pair.blue(),
            pair.green(),
            pair.migrations.path().display()
        ))
        .start()
}

async fn state(sy: &Switchyard) -> String {
    sy.status().await["rollout"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn wait_state(sy: &Switchyard, want: &str, secs: u64) {
    let ok = eventually(secs, async || state(sy).await == want).await;
    assert!(
        ok,
        "rollout never reached {want}: {:#}\n{}",
        sy.status().await,
        history(sy).await
    );
}

async fn history(sy: &Switchyard) -> String {
    sy.admin(Method::GET, "/api/v1/history", "").await.text()
}

fn events_of(h: &serde_json::Value, kind: &str) -> Vec<serde_json::Value> {
    h["events"]
        .as_array()
        .or_else(|| h.as_array())
        .map(|a| a.iter().filter(|e| e["kind"] == kind).cloned().collect())
        .unwrap_or_default()
}

async fn history_json(sy: &Switchyard) -> serde_json::Value {
    sy.admin(Method::GET, "/api/v1/history", "").await.json()
}

async fn ids_on(url: &str, ids: &[i64]) -> i64 {
    pg::connect(url)
        .await
        .query_one("SELECT count(*) FROM orders WHERE id = ANY($1)", &[&ids])
        .await
        .unwrap()
        .get(0)
}

async fn nothing_left(pair: &pg::Pair) -> bool {
    switchyard_objects(pair.blue()).await.is_empty()
        && switchyard_objects(pair.green()).await.is_empty()
}

fn sync_cli(config: &std::path::Path, args: &[&str]) -> (i32, String) {
    let r = support::sync(config, args);
    (r.code, r.output())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_and_database_move_to_green_and_back_with_no_failed_request_and_no_write_lost() {
    let pair = pg::Pair::new("story_repl").await;
    to_green_and_back(pair).await;
}

/// A major-version upgrade, what teams mostly do a database blue-green
/// deployment for: blue runs PostgreSQL 15, green 18, and the same story
/// holds, with reverse replication from 18 to 15 after the cutover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_from_postgresql_15_to_18_moves_to_green_and_back_with_no_failed_request_and_no_write_lost(
) {
    let (blue, green) = (pg::PgCluster::version(15), pg::PgCluster::version(18));
    let pair = pg::Pair::on(&blue, &green, "story_upgrade").await;
    let v: String = pg::connect(pair.green())
        .await
        .query_one("SHOW server_version_num", &[])
        .await
        .unwrap()
        .get(0);
    assert!(v.starts_with("18"), "green runs 18: {v}");
    to_green_and_back(pair).await;
}

async fn to_green_and_back(pair: pg::Pair) {
    pg::sql(pair.blue(), orders::SCHEMA).await;
    // Green's release adds a column: blue will lack it after cutover.
    std::fs::write(
        pair.migrations.path().join("V1__order_notes.sql"),
        "ALTER TABLE orders ADD COLUMN note text;",
    )
    .unwrap();
    let blue = OrdersApp::start("blue", pair.blue()).await;
    let green = OrdersApp::start("green", pair.green()).await;
    let sy = switchyard(&pair, &blue, &green, "");
    let load = OrderLoad::start(sy.proxy, 2, 2, Duration::from_secs(240));

    let r = sy.admin(Method::POST, "/api/v1/rollout/start", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The whole database workflow runs by itself, then every step.
    wait_state(&sy, "promoted", 150).await;
    let s = sy.status().await;
    assert_eq!(s["weights"]["green"], 100.0, "{s:#}");
    assert_eq!(s["database"]["writer"], "green", "{s:#}");
    let h = history_json(&sy).await;
    for step in ["preflight", "clone", "migrate", "verify", "replicate"] {
        assert!(
            events_of(&h, "database_step")
                .iter()
                .any(|e| e["detail"]["step"] == step),
            "no database_step event for {step}: {h:#}"
        );
    }
    let done = events_of(&h, "cutover_completed");
    assert_eq!(done.len(), 1, "{h:#}");
    assert!(done[0]["held_ms"].as_u64().is_some(), "{:#}", done[0]);
    assert!(done[0]["held_requests"].as_u64().is_some(), "{:#}", done[0]);
    assert!(!events_of(&h, "cutover_started").is_empty());

    // Writes now land on green, and reverse sync carries them to blue, into
    // a table that has one column fewer there.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = load.tally();
    assert!(
        t.acked.iter().any(|(_, c)| c == "green"),
        "writes reach green after cutover"
    );
    // A bound for a loaded machine (five stories with two clusters each at
    // once); what never arrives fails with the missing ids and what blue's
    // subscription says.
    let green_ids = || {
        load.tally()
            .acked
            .iter()
            .filter(|(_, c)| c == "green")
            .map(|(i, _)| *i)
            .collect::<Vec<i64>>()
    };
    if !eventually(90, async || {
        let ids = green_ids();
        ids_on(pair.blue(), &ids).await == ids.len() as i64
    })
    .await
    {
        let ids = green_ids();
        let blue = pg::connect(pair.blue()).await;
        let present: Vec<i64> = blue
            .query("SELECT id FROM orders WHERE id = ANY($1)", &[&ids])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let missing: Vec<&i64> = ids.iter().filter(|i| !present.contains(i)).collect();
        let subs: Vec<String> = blue
            .query(
                "SELECT format('%s pid=%s received=%s latest_end=%s errors=%s/%s', s.subname, s.pid, s.received_lsn, s.latest_end_lsn, st.apply_error_count, st.sync_error_count) \
                 FROM pg_stat_subscription s LEFT JOIN pg_stat_subscription_stats st USING (subid)",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        panic!(
            "green's writes did not reach blue: {} of {} missing ({missing:?}); blue's subscriptions: {subs:?}; status: {:#}",
            missing.len(),
            ids.len(),
            sy.status().await["database"]
        );
    }
    // The status's database reading follows within moments (it is taken
    // again once the cutover removed the old direction's objects).
    assert!(
        eventually(10, async || {
            sy.status().await["database"]["replication"]["direction"] == "green -> blue"
        })
        .await,
        "{:#}",
        sy.status().await
    );

    // Green misbehaves after all: abort moves writes and traffic back.
    let r = sy
        .admin(
            Method::POST,
            "/api/v1/rollout/abort",
            r#"{"reason": "orders look wrong"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_state(&sy, "aborted", 60).await;
    let s = sy.status().await;
    assert_eq!(s["weights"]["blue"], 100.0, "{s:#}");
    assert_eq!(s["database"]["writer"], "blue", "{s:#}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tally = load.stop().await;

    assert!(
        tally.failures.is_empty(),
        "failed requests: {:#?}",
        &tally.failures[..tally.failures.len().min(20)]
    );
    assert!(
        tally.acked.len() > 50,
        "the load wrote: {}",
        tally.acked.len()
    );
    assert!(tally.acked.iter().any(|(_, c)| c == "blue"));
    let ids: Vec<i64> = tally.acked.iter().map(|(i, _)| *i).collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        ids.len(),
        "no id was handed out twice (sequences moved with cutover)"
    );
    assert_eq!(
        ids_on(pair.blue(), &ids).await,
        ids.len() as i64,
        "every acknowledged write, blue's and green's, is on blue after the abort"
    );
    let h = history_json(&sy).await;
    assert_eq!(events_of(&h, "cutover_completed").len(), 2, "{h:#}");

    // Abort cleans up by itself; `sync cleanup` then finds nothing.
    assert!(
        eventually(30, async || nothing_left(&pair).await).await,
        "left behind: blue {:?}, green {:?}",
        switchyard_objects(pair.blue()).await,
        switchyard_objects(pair.green()).await
    );
    let (code, out) = sync_cli(&sy.config_path, &["cleanup"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("nothing to clean up"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_that_cannot_catch_up_releases_the_held_writes_to_blue_without_an_error() {
    let pair = pg::Pair::new("story_timeout").await;
    pg::sql(pair.blue(), orders::SCHEMA).await;
    let blue = OrdersApp::start("blue", pair.blue()).await;
    let green = OrdersApp::start("green", pair.green()).await;
    let sy = switchyard(&pair, &blue, &green, "");
    let load = OrderLoad::start(sy.proxy, 2, 2, Duration::from_secs(240));
    sy.admin(Method::POST, "/api/v1/rollout/start", "").await;
    wait_state(&sy, "progressing", 120).await;

    // Green's replica is stuck behind a lock: it cannot catch up.
    let locker = pg::lock_table(pair.green(), "orders").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = sy.admin(Method::POST, "/api/v1/rollout/promote", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_state(&sy, "paused", 30).await;
    let s = sy.status().await;
    assert!(
        s["rollout"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("cutover did not complete"),
        "{s:#}"
    );
    assert_eq!(s["database"]["writer"], "blue", "{s:#}");
    let h = history_json(&sy).await;
    let timed_out = events_of(&h, "cutover_timed_out");
    assert_eq!(timed_out.len(), 1, "{h:#}");
    assert!(
        timed_out[0]["held_ms"].as_u64().unwrap() >= 5000,
        "{:#}",
        timed_out[0]
    );
    assert!(
        timed_out[0]["held_requests"].as_u64().unwrap() > 0,
        "writes were held, then released to blue: {:#}",
        timed_out[0]
    );

    // Once green can catch up again, resuming finishes the job.
    locker.batch_execute("ROLLBACK").await.unwrap();
    let r = sy.admin(Method::POST, "/api/v1/rollout/resume", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_state(&sy, "promoted", 90).await;
    let tally = load.stop().await;
    assert!(
        tally.failures.is_empty(),
        "failed requests: {:#?}",
        &tally.failures[..tally.failures.len().min(20)]
    );
    let ids: Vec<i64> = tally.acked.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        ids_on(pair.green(), &ids).await,
        ids.len() as i64,
        "every acknowledged write is on green"
    );

    let (code, out) = sync_cli(&sy.config_path, &["cleanup"]);
    assert_eq!(code, 0, "{out}");
    assert!(nothing_left(&pair).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_holds_while_greens_database_is_down_and_reopens_when_it_is_back() {
    // Own clusters: this test stops green's server.
    let (blue_pg, green_pg) = (pg::PgCluster::start(), pg::PgCluster::start());
    let pair = pg::Pair::on(&blue_pg, &green_pg, "story_lag").await;
    pg::sql(pair.blue(), orders::SCHEMA).await;
    let blue = OrdersApp::start("blue", pair.blue()).await;
    let green = OrdersApp::start("green", pair.green()).await;
    let sy = switchyard(&pair, &blue, &green, "");
    // Reads here do not touch the database (`GET /`), so green keeps
    // answering them while its database is down.
    let load = OrderLoad::start(sy.proxy, 1, 2, Duration::from_secs(240));
    sy.admin(Method::POST, "/api/v1/rollout/start", "").await;
    wait_state(&sy, "progressing", 120).await;
    green_pg.stop();
    let held = eventually(20, async || {
        let s = sy.status().await;
        s["rollout"]["holding"]
            .as_str()
            .is_some_and(|h| h.contains("database"))
    })
    .await;
    let s = sy.status().await;
    assert!(held, "the database gate holds: {s:#}");
    let weight = s["weights"]["green"].as_f64().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = sy.status().await;
    assert_eq!(
        s["weights"]["green"].as_f64().unwrap(),
        weight,
        "no increase while green is behind: {s:#}"
    );
    assert_ne!(s["rollout"]["state"], "promoted");

    green_pg.start_again();
    wait_state(&sy, "promoted", 150).await;
    let tally = load.stop().await;
    assert!(
        tally.failures.is_empty(),
        "failed requests: {:#?}",
        &tally.failures[..tally.failures.len().min(20)]
    );
    let ids: Vec<i64> = tally.acked.iter().map(|(i, _)| *i).collect();
    assert_eq!(ids_on(pair.green(), &ids).await, ids.len() as i64);
    sync_cli(&sy.config_path, &["cleanup"]);
    assert!(nothing_left(&pair).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_database_step_pauses_the_rollout_with_what_to_do_and_resume_carries_on() {
    let pair = pg::Pair::new("story_blocker").await;
    pg::sql(pair.blue(), orders::SCHEMA).await;
    // Replication cannot carry UPDATE/DELETE of a table without a key.
    pg::sql(
        pair.blue(),
        "CREATE TABLE audit (at timestamptz, what text)",
    )
    .await;
    let blue = OrdersApp::start("blue", pair.blue()).await;
    let green = OrdersApp::start("green", pair.green()).await;
    let sy = switchyard(&pair, &blue, &green, "");
    let load = OrderLoad::start(sy.proxy, 1, 2, Duration::from_secs(240));
    sy.admin(Method::POST, "/api/v1/rollout/start", "").await;
    wait_state(&sy, "paused", 60).await;
    let s = sy.status().await;
    let reason = s["rollout"]["reason"].as_str().unwrap_or("").to_string();
    assert!(
        reason.contains("database step preflight failed"),
        "{reason}"
    );
    assert!(reason.contains("public.audit"), "names the table: {reason}");
    assert!(reason.contains("resume"), "says what to do next: {reason}");
    assert_eq!(s["weights"]["green"], 0.0);
    assert!(
        nothing_left(&pair).await,
        "nothing was created before the blocker was found"
    );

    // The operator fixes blue and resumes: the workflow runs again.
    pg::sql(pair.blue(), "ALTER TABLE audit REPLICA IDENTITY FULL").await;
    let r = sy.admin(Method::POST, "/api/v1/rollout/resume", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_state(&sy, "promoted", 150).await;
    let tally = load.stop().await;
    assert!(tally.failures.is_empty(), "{:#?}", tally.failures);
    sync_cli(&sy.config_path, &["cleanup"]);
    assert!(nothing_left(&pair).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_replication_and_mid_cutover_leaves_a_writer_and_nothing_behind() {
    let pair = pg::Pair::new("story_kill").await;
    pg::sql(pair.blue(), orders::SCHEMA).await;
    let blue = OrdersApp::start("blue", pair.blue()).await;
    let green = OrdersApp::start("green", pair.green()).await;
    let sy = switchyard(&pair, &blue, &green, "");
    let mut acked: Vec<i64> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let collect = |t: orders::OrderTally, acked: &mut Vec<i64>, failures: &mut Vec<String>| {
        acked.extend(t.acked.into_iter().map(|(i, _)| i));
        failures.extend(t.failures);
    };
    let load = OrderLoad::start(sy.proxy, 2, 1, Duration::from_secs(300));
    sy.admin(Method::POST, "/api/v1/rollout/start", "").await;
    wait_state(&sy, "progressing", 120).await;

    // kill -9 while replicating: the restarted process carries on.
    let sy = sy.restart();
    collect(load.stop().await, &mut acked, &mut failures);
    let load = OrderLoad::start(sy.proxy, 2, 1, Duration::from_secs(300));
    let s = sy.status().await;
    assert!(
        matches!(
            s["rollout"]["state"].as_str(),
            Some("progressing" | "cutover" | "promoted")
        ),
        "{s:#}"
    );

    // kill -9 in the middle of a cutover that cannot finish yet.
    let locker = pg::lock_table(pair.green(), "orders").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    sy.admin(Method::POST, "/api/v1/rollout/promote", "").await;
    assert!(
        eventually(10, async || sy.status().await["database"]["write_gate"]
            ["held"]
            == true)
        .await,
        "the cutover holds writes"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed_at = green_now(&pair).await;
    let sy = sy.restart();
    // The killed process's statements end with it, even one still waiting
    // for the lock: left running, it would commit behind the back of the
    // restarted process that is recovering the same cutover.
    assert!(
        eventually(10, async || orphans(&pair, &killed_at).await.is_empty()).await,
        "the killed process's statements still run on the servers: {:?}",
        orphans(&pair, &killed_at).await
    );
    let killed = load.stop().await;
    // Requests held by the killed process died with their connections;
    // none of them reached a database, none was answered with an error.
    assert!(
        killed.failures.iter().all(|f| !f.contains("-> 5")),
        "{:#?}",
        killed.failures
    );
    acked.extend(killed.acked.into_iter().map(|(i, _)| i));
    let load = OrderLoad::start(sy.proxy, 2, 1, Duration::from_secs(300));
    locker.batch_execute("ROLLBACK").await.unwrap();
    // The restarted process finishes (or times out) the cutover: either way
    // one colour takes writes and it matches the database that is primary.
    let settled = eventually(60, async || {
        matches!(state(&sy).await.as_str(), "promoted" | "paused")
    })
    .await;
    let s = sy.status().await;
    assert!(settled, "{s:#}\n{}", history(&sy).await);
    // Writes are released before the new state can be read.
    assert!(
        sy.status().await["database"]["write_gate"]["held"] == false,
        "{:#}\n{}\n{}",
        sy.status().await,
        history(&sy).await,
        sy.log()
    );
    // The status's replication reading is refreshed every 2 s.
    let agree = |s: &serde_json::Value| {
        let writer = s["database"]["writer"].as_str().unwrap_or("");
        let direction = s["database"]["replication"]["direction"]
            .as_str()
            .unwrap_or("");
        (writer == "green" && direction == "green -> blue")
            || (writer == "blue" && direction == "blue -> green")
    };
    let consistent = eventually(15, async || agree(&sy.status().await)).await;
    let s = sy.status().await;
    assert!(
        consistent,
        "the writer is not the primary database's colour: {s:#}"
    );
    let before = load.tally().acked.len();
    assert!(
        eventually(10, async || load.tally().acked.len() > before + 5).await,
        "writes flow again"
    );

    // Abort (a cutover back when green took over) cleans up everything.
    sy.admin(Method::POST, "/api/v1/rollout/abort", "").await;
    wait_state(&sy, "aborted", 60).await;
    collect(load.stop().await, &mut acked, &mut failures);
    // Connections to a killed process die with it; no request was ever
    // answered with an error.
    assert!(
        failures.iter().all(|f| !f.contains("-> ")),
        "requests answered with an error: {failures:#?}"
    );
    assert_eq!(
        ids_on(pair.blue(), &acked).await,
        acked.len() as i64,
        "no acknowledged write lost"
    );
    assert!(
        eventually(30, async || nothing_left(&pair).await).await,
        "left behind: blue {:?}, green {:?}",
        switchyard_objects(pair.blue()).await,
        switchyard_objects(pair.green()).await
    );
}

/// The time on green's server, as text.
async fn green_now(pair: &pg::Pair) -> String {
    pg::connect(pair.green())
        .await
        .query_one("SELECT now()::text", &[])
        .await
        .unwrap()
        .get(0)
}

/// Switchyard's sessions on either server that started before `before`
/// (a time from [`green_now`]; both clusters run on this machine), with the
/// statement each runs.
async fn orphans(pair: &pg::Pair, before: &str) -> Vec<String> {
    let mut found = Vec::new();
    for url in [pair.blue(), pair.green()] {
        let rows = pg::connect(url)
            .await
            .query(
                "SELECT coalesce(state, '?') || ': ' || query FROM pg_stat_activity
                  WHERE application_name LIKE 'switchyard%'
                    AND backend_start < $1::text::timestamptz",
                &[&before],
            )
            .await
            .unwrap();
        found.extend(rows.iter().map(|r| r.get::<_, String>(0)));
    }
    found
}

/// Cutover under a steady write load through the proxy, both ways
/// (promote, then abort back), a few rounds: how long writes were held,
/// how many waited, the replication lag just before, and failed requests.
/// Run by `bench/cutover/run.sh`; timings are reported, never asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run bench/cutover/run.sh"]
async fn cutover_hold_benchmark() {
    let rounds: usize = std::env::var("CUTOVER_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let writers: usize = std::env::var("CUTOVER_WRITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let sync_commit = std::env::var("CUTOVER_SYNC_COMMIT").unwrap_or_else(|_| "on".into());
    let (b, g) = pg::shared();
    for c in [b, g] {
        let url = c.url("postgres");
        let set = format!("ALTER SYSTEM SET synchronous_commit = '{sync_commit}'");
        pg::sql(&url, &set).await;
        pg::sql(&url, "SELECT pg_reload_conf()").await;
    }
    let mut rows = Vec::new();
    let mut breakdown = Vec::new();
    for round in 0..rounds {
        let pair = pg::Pair::new(&format!("bench_cutover_{round}")).await;
        pg::sql(pair.blue(), orders::SCHEMA).await;
        let blue = OrdersApp::start("blue", pair.blue()).await;
        let green = OrdersApp::start("green", pair.green()).await;
        let sy = switchyard(&pair, &blue, &green, "");
        let load = OrderLoad::with_pause(
            sy.proxy,
            writers,
            2,
            Duration::from_secs(600),
            Duration::ZERO,
        );
        sy.admin(Method::POST, "/api/v1/rollout/start", "").await;
        wait_state(&sy, "progressing", 120).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let lag_before = sy.status().await["database"]["replication"]["lag_seconds"].clone();
        let acked_before = load.tally().acked.len();
        let t0 = std::time::Instant::now();
        sy.admin(Method::POST, "/api/v1/rollout/promote", "").await;
        wait_state(&sy, "promoted", 60).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rate = (load.tally().acked.len() - acked_before) as f64 / t0.elapsed().as_secs_f64();
        sy.admin(Method::POST, "/api/v1/rollout/abort", "").await;
        wait_state(&sy, "aborted", 60).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let tally = load.stop().await;
        let h = history_json(&sy).await;
        let done = events_of(&h, "cutover_completed");
        let ms = |i: usize, k: &str| done.get(i).and_then(|e| e[k].as_u64()).unwrap_or(u64::MAX);
        let ids: Vec<i64> = tally.acked.iter().map(|(i, _)| *i).collect();
        let lost = ids.len() as i64 - ids_on(pair.blue(), &ids).await;
        rows.push(format!(
            "| {} | {} | {} | {} | {} | {:.0} | {} | {} | {} |",
            round + 1,
            ms(0, "held_ms"),
            ms(0, "held_requests"),
            ms(1, "held_ms"),
            ms(1, "held_requests"),
            rate,
            lag_before,
            tally.failures.len(),
            lost
        ));
        eprintln!("{}", rows.last().unwrap());
        for (i, e) in done.iter().enumerate() {
            let steps: Vec<String> = e["detail"]["steps"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|s| format!("{} {} ms", s[0].as_str().unwrap_or("?"), s[1]))
                        .collect()
                })
                .unwrap_or_default();
            breakdown.push(format!(
                "- round {} {}: {} (of {} ms held)",
                round + 1,
                if i == 0 {
                    "blue→green"
                } else {
                    "green→blue"
                },
                steps.join(", "),
                e["held_ms"]
            ));
        }
        let mut holds: Vec<u64> = rows
            .iter()
            .flat_map(|r| {
                let c: Vec<&str> = r.split('|').map(str::trim).collect();
                [
                    c[2].parse().unwrap_or(u64::MAX),
                    c[4].parse().unwrap_or(u64::MAX),
                ]
            })
            .collect();
        holds.sort_unstable();
        if round + 1 == rounds {
            let table = format!(
                "| round | blue→green hold ms | writes held | green→blue hold ms | writes held | writes/s through the proxy | lag before (s) | failed requests | acknowledged writes lost |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n{}\n\nHold over all {} cutovers: median {} ms, max (p100) {} ms.\n\nWhere the database switch spent its time (the rest of the hold is draining in-flight writes and the controller's tick):\n\n{}\n",
                rows.join("\n"),
                holds.len(),
                holds[holds.len() / 2],
                holds[holds.len() - 1],
                breakdown.join("\n")
            );
            if let Ok(path) = std::env::var("CUTOVER_OUT") {
                std::fs::write(path, &table).unwrap();
            }
            println!("{table}");
        }
        sync_cli(&sy.config_path, &["cleanup"]);
    }
}
