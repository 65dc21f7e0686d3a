//! Blue-green is a cycle: after green is promoted the next release goes to
//! blue, then to green again, every week. These stories ship several
//! releases in a row with the database, as a user runs them: one config,
//! `switchyard ctl start` for each release, an orders application writing
//! through the proxy the whole time, and nothing done to a database by hand.

#[path = "support/orders.rs"]
mod orders;
#[path = "../sync/tests/support/mod.rs"]
mod pg;
mod support;

use http::Method;
use orders::{OrderLoad, OrdersApp};
use std::time::Duration;
use support::{eventually, Switchyard};

fn switchyard(pair: &pg::Pair, blue: &OrdersApp, green: &OrdersApp) -> Switchyard {
    Switchyard::builder()
        .blue(blue.addr)
        .green(green.addr)
        .proxy_extra("sticky = \"hash\"\nsticky_key = \"header:x-user\"")
        .extra(&format!(
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
cutover_timeout = "15s"
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
        sy.admin(Method::GET, "/api/v1/history", "").await.text()
    );
}

async fn history(sy: &Switchyard) -> Vec<serde_json::Value> {
    let h = sy.admin(Method::GET, "/api/v1/history", "").await.json();
    h["events"]
        .as_array()
        .or_else(|| h.as_array())
        .cloned()
        .unwrap_or_default()
}

/// The `database_step` events of `step` since event `after` (a sequence
/// number), as their reasons.
async fn steps_since(sy: &Switchyard, after: u64, step: &str) -> Vec<String> {
    history(sy)
        .await
        .into_iter()
        .filter(|e| e["seq"].as_u64().unwrap_or(0) > after)
        .filter(|e| e["kind"] == "database_step" && e["detail"]["step"] == step)
        .map(|e| e["reason"].as_str().unwrap_or("").to_string())
        .collect()
}

async fn last_seq(sy: &Switchyard) -> u64 {
    history(sy)
        .await
        .last()
        .and_then(|e| e["seq"].as_u64())
        .unwrap_or(0)
}

async fn ids_on(url: &str, ids: &[i64]) -> i64 {
    pg::connect(url)
        .await
        .query_one("SELECT count(*) FROM orders WHERE id = ANY($1)", &[&ids])
        .await
        .unwrap()
        .get(0)
}

async fn applied(url: &str) -> Vec<String> {
    pg::texts(
        &pg::connect(url).await,
        "SELECT version FROM flyway_schema_history WHERE success ORDER BY installed_rank",
    )
    .await
}

/// Ships one release: start, wait for promotion, check the writer moved.
async fn ship(sy: &Switchyard, to: &str) -> u64 {
    let before = last_seq(sy).await;
    let r = sy.admin(Method::POST, "/api/v1/rollout/start", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_state(sy, "promoted", 240).await;
    let s = sy.status().await;
    assert_eq!(s["database"]["writer"], to, "{s:#}");
    before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_releases_in_a_row_reuse_the_replica_and_lose_no_write() {
    let pair = pg::Pair::new("cycle3").await;
    pg::sql(pair.blue(), orders::SCHEMA).await;
    let mig = pair.migrations.path().to_path_buf();
    std::fs::write(
        mig.join("V1__order_notes.sql"),
        "ALTER TABLE orders ADD COLUMN note text;",
    )
    .unwrap();
    let blue = OrdersApp::start("blue", pair.blue()).await;
    let green = OrdersApp::start("green", pair.green()).await;
    let sy = switchyard(&pair, &blue, &green);
    let load = OrderLoad::start(sy.proxy, 2, 2, Duration::from_secs(900));

    // Release 1: blue -> green, with a clone.
    let r1 = ship(&sy, "green").await;
    let clone1 = steps_since(&sy, r1, "clone").await;
    assert!(
        clone1.iter().any(|c| c.contains("clone done")),
        "the first release copies blue: {clone1:?}"
    );
    // Green's release writes what only it knows about (the new column).
    pg::sql(
        pair.green(),
        "UPDATE orders SET note = 'note ' || id WHERE id % 5 = 0",
    )
    .await;
    let s = sy.status().await;
    assert_eq!(s["database"]["candidate"], "blue", "{s:#}");
    let named = eventually(15, async || {
        sy.status().await["database"]["primary"] == "green"
    })
    .await;
    assert!(named, "{:#}", sy.status().await);

    // Release 2: green -> blue. Blue's database is the live replica reverse
    // sync built: reused, not copied; it gets V1 and V2.
    std::fs::write(
        mig.join("V2__order_status.sql"),
        "ALTER TABLE orders ADD COLUMN status text NOT NULL DEFAULT 'new';",
    )
    .unwrap();
    let r2 = ship(&sy, "blue").await;
    let clone2 = steps_since(&sy, r2, "clone").await;
    assert!(
        clone2.iter().any(|c| c.contains("reused blue's database"))
            && !clone2.iter().any(|c| c.contains("clone done")),
        "the second release reuses blue's replica and copies nothing: {clone2:?}"
    );
    let migrate2 = steps_since(&sy, r2, "migrate").await;
    assert!(
        migrate2
            .iter()
            .any(|m| m.contains("V1__order_notes.sql") && m.contains("V2__order_status.sql")),
        "blue receives every migration it lacks, in order: {migrate2:?}"
    );
    assert_eq!(applied(pair.blue()).await, vec!["1", "2"]);
    assert_eq!(
        applied(pair.green()).await,
        vec!["1"],
        "nothing is applied to the primary"
    );
    // The notes green wrote are on blue: backfilled, then verified.
    let notes: i64 = pg::connect(pair.blue())
        .await
        .query_one("SELECT count(*) FROM orders WHERE note LIKE 'note %'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(notes > 0, "the column reverse sync left out was backfilled");
    pg::sql(
        pair.blue(),
        "UPDATE orders SET status = 'shipped' WHERE id % 3 = 0",
    )
    .await;

    // Release 3: blue -> green. Green's copy is from release 1 (older than
    // the last cutover); its database is the live replica now: reused, gets
    // V2 and V3.
    std::fs::write(
        mig.join("V3__coupons.sql"),
        "CREATE TABLE coupons (code text PRIMARY KEY, percent int NOT NULL); \
         INSERT INTO coupons VALUES ('WELCOME', 10);",
    )
    .unwrap();
    let r3 = ship(&sy, "green").await;
    let clone3 = steps_since(&sy, r3, "clone").await;
    assert!(
        clone3.iter().any(|c| c.contains("reused green's database"))
            && !clone3.iter().any(|c| c.contains("clone done")),
        "{clone3:?}"
    );
    assert_eq!(applied(pair.green()).await, vec!["1", "2", "3"]);
    let shipped: i64 = pg::connect(pair.green())
        .await
        .query_one("SELECT count(*) FROM orders WHERE status = 'shipped'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(shipped > 0, "blue's statuses were backfilled into green");

    // Writes keep flowing to green and reach blue by reverse sync.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tally = load.stop().await;
    assert!(
        tally.failures.is_empty(),
        "failed requests: {:#?}",
        &tally.failures[..tally.failures.len().min(20)]
    );
    for colour in ["blue", "green"] {
        assert!(
            tally.acked.iter().filter(|(_, c)| c == colour).count() > 10,
            "{colour} took writes"
        );
    }
    let ids: Vec<i64> = tally.acked.iter().map(|(i, _)| *i).collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "no id was handed out twice");
    assert_eq!(
        ids_on(pair.green(), &ids).await,
        ids.len() as i64,
        "every acknowledged write is on the final primary"
    );
    let on_blue = eventually(60, async || {
        ids_on(pair.blue(), &ids).await == ids.len() as i64
    })
    .await;
    assert!(on_blue, "and, by reverse sync, on the other side");
    let h = history(&sy).await;
    assert_eq!(
        h.iter()
            .filter(|e| e["kind"] == "cutover_completed")
            .count(),
        3
    );
}

/// Replication from the primary into the candidate's database streams, by
/// the status, and a write on the primary reaches the other side.
async fn protection_intact(sy: &Switchyard, pair: &pg::Pair, primary: &str) {
    let (from, to) = match primary {
        "green" => (pair.green(), pair.blue()),
        _ => (pair.blue(), pair.green()),
    };
    let arrow = if primary == "green" {
        "green -> blue"
    } else {
        "blue -> green"
    };
    let streaming = eventually(30, async || {
        let s = sy.status().await;
        s["database"]["replication"]["direction"] == arrow
            && s["database"]["replication"]["state"] == "streaming"
    })
    .await;
    assert!(
        streaming,
        "replication {arrow} protects the promotion: {:#}\n{}",
        sy.status().await["database"],
        history(sy)
            .await
            .iter()
            .map(|e| format!("{} {} {}", e["seq"], e["kind"], e["reason"]))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let id: i64 = pg::connect(from)
        .await
        .query_one(
            "INSERT INTO orders (item) VALUES ('probe') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let arrived = eventually(30, async || ids_on(to, &[id]).await == 1).await;
    assert!(arrived, "a write on {primary} reaches the other side");
}

fn sync_cli(sy: &Switchyard, args: &[&str]) -> support::Run {
    support::sync(&sy.config_path, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborting_the_second_release_anywhere_keeps_the_first_ones_way_back() {
    let pair = pg::Pair::new("cycle_abort").await;
    pg::sql(pair.blue(), orders::SCHEMA).await;
    let mig = pair.migrations.path().to_path_buf();
    std::fs::write(
        mig.join("V1__order_notes.sql"),
        "ALTER TABLE orders ADD COLUMN note text;",
    )
    .unwrap();
    let blue = OrdersApp::start("blue", pair.blue()).await;
    let green = OrdersApp::start("green", pair.green()).await;
    let sy = switchyard(&pair, &blue, &green);
    let load = OrderLoad::start(sy.proxy, 2, 2, Duration::from_secs(900));
    ship(&sy, "green").await;
    protection_intact(&sy, &pair, "green").await;

    // Release 2 stops while preparing (its migration is broken); the
    // operator aborts it.
    std::fs::write(
        mig.join("V2__broken.sql"),
        "ALTER TABLE orders ADD COLUMN status text NOT NULL DEFAULT 'new'; SELEC 1;",
    )
    .unwrap();
    let r = sy.admin(Method::POST, "/api/v1/rollout/start", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_state(&sy, "paused", 120).await;
    let s = sy.status().await;
    let reason = s["rollout"]["reason"].as_str().unwrap_or("").to_string();
    assert!(
        reason.contains("V2__broken.sql") && reason.contains("on blue"),
        "{reason}"
    );
    assert_eq!(
        applied(pair.green()).await,
        vec!["1"],
        "the primary is untouched"
    );
    let r = sy.admin(Method::POST, "/api/v1/rollout/abort", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_state(&sy, "aborted", 30).await;
    assert_eq!(sy.status().await["database"]["writer"], "green");
    tokio::time::sleep(Duration::from_secs(3)).await; // the cleanup runs twice
    protection_intact(&sy, &pair, "green").await;

    // Fixed; release 2 progresses, and is aborted while blue serves.
    std::fs::write(
        mig.join("V2__broken.sql"),
        "ALTER TABLE orders ADD COLUMN status text NOT NULL DEFAULT 'new';",
    )
    .unwrap();
    let r = sy.admin(Method::POST, "/api/v1/rollout/start", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_state(&sy, "progressing", 120).await;
    let r = sy.admin(Method::POST, "/api/v1/rollout/abort", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_state(&sy, "aborted", 30).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    protection_intact(&sy, &pair, "green").await;

    // Shipped after all, then aborted after its cutover: back to green,
    // which a promotion made the primary, still protected.
    ship(&sy, "blue").await;
    let r = sy.admin(Method::POST, "/api/v1/rollout/abort", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_state(&sy, "aborted", 60).await;
    assert_eq!(sy.status().await["database"]["writer"], "green");
    tokio::time::sleep(Duration::from_secs(3)).await;
    protection_intact(&sy, &pair, "green").await;

    // And shipped for good.
    ship(&sy, "blue").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tally = load.stop().await;
    assert!(
        tally.failures.is_empty(),
        "failed requests: {:#?}",
        &tally.failures[..tally.failures.len().min(20)]
    );
    let ids: Vec<i64> = tally.acked.iter().map(|(i, _)| *i).collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "no id was handed out twice");
    assert_eq!(ids_on(pair.blue(), &ids).await, ids.len() as i64);
    let on_green = eventually(60, async || {
        ids_on(pair.green(), &ids).await == ids.len() as i64
    })
    .await;
    assert!(on_green, "every acknowledged write is on both sides");

    // Once the way back is removed by hand, abort after a promotion is
    // refused at once, with the reason, instead of timing out.
    let r = sync_cli(&sy, &["cleanup"]);
    assert_eq!(r.code, 0, "{}", r.output());
    assert!(
        r.output().contains("no longer receives the primary's"),
        "cleanup says what it takes away: {}",
        r.output()
    );
    let refused = eventually(15, async || {
        let r = sy.admin(Method::POST, "/api/v1/rollout/abort", "").await;
        r.status == 409 && r.text().contains("no longer replicates")
    })
    .await;
    assert!(
        refused,
        "{}",
        sy.admin(Method::POST, "/api/v1/rollout/abort", "")
            .await
            .text()
    );
    assert_eq!(state(&sy).await, "promoted");
    assert_eq!(sy.status().await["database"]["writer"], "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_promotion_every_command_follows_the_primary_and_a_tampered_replica_is_copied_afresh(
) {
    let pair = pg::Pair::new("cycle_cli").await;
    pg::sql(pair.blue(), orders::SCHEMA).await;
    let mig = pair.migrations.path().to_path_buf();
    std::fs::write(
        mig.join("V1__order_notes.sql"),
        "ALTER TABLE orders ADD COLUMN note text;",
    )
    .unwrap();
    let blue = OrdersApp::start("blue", pair.blue()).await;
    let green = OrdersApp::start("green", pair.green()).await;
    let sy = switchyard(&pair, &blue, &green);
    let load = OrderLoad::start(sy.proxy, 1, 1, Duration::from_secs(900));
    ship(&sy, "green").await;

    // `sync status` names the primary, the candidate and both versions.
    let r = sync_cli(&sy, &["status"]);
    assert_eq!(r.code, 0, "{}", r.output());
    let out = r.output();
    assert!(out.contains("primary: green's database"), "{out}");
    assert!(out.contains("candidate: blue's database"), "{out}");
    assert!(out.contains("green 1 (the primary), blue none"), "{out}");
    // The next release's migration goes to blue, never to production.
    std::fs::write(
        mig.join("V2__order_status.sql"),
        "ALTER TABLE orders ADD COLUMN status text NOT NULL DEFAULT 'new';",
    )
    .unwrap();
    let r = sync_cli(&sy, &["migrate"]);
    assert_eq!(r.code, 0, "{}", r.output());
    assert!(
        r.output().contains("blue's schema version: 2"),
        "{}",
        r.output()
    );
    assert_eq!(applied(pair.green()).await, vec!["1"]);
    assert_eq!(applied(pair.blue()).await, vec!["1", "2"]);
    // A clone over the primary is refused, whatever the flags.
    let s = sy.status().await;
    assert_eq!(s["database"]["candidate"], "blue", "{s:#}");

    // Someone writes to blue's database directly: the replica diverged.
    pg::sql(
        pair.blue(),
        "UPDATE orders SET item = 'tampered' WHERE id = 5",
    )
    .await;
    let r2 = ship(&sy, "blue").await;
    let clone2 = steps_since(&sy, r2, "clone").await;
    assert!(
        clone2.iter().any(|c| c.contains("reused blue's database")),
        "{clone2:?}"
    );
    let verify2 = steps_since(&sy, r2, "verify").await;
    assert!(
        verify2
            .iter()
            .any(|c| c.contains("verify failed") && c.contains("id=5")),
        "the divergence is found by key: {verify2:?}"
    );
    assert!(
        clone2
            .iter()
            .any(|c| c.contains("clone done") && c.contains("from green")),
        "and blue is copied afresh from the primary: {clone2:?}"
    );
    let item: String = pg::connect(pair.blue())
        .await
        .query_one("SELECT item FROM orders WHERE id = 5", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(item, "tampered");
    let tally = load.stop().await;
    assert!(tally.failures.is_empty(), "{:#?}", tally.failures);
    let ids: Vec<i64> = tally.acked.iter().map(|(i, _)| *i).collect();
    assert_eq!(ids_on(pair.blue(), &ids).await, ids.len() as i64);
}

/// The preparing time of the second release (the replica reused) against
/// the first (a clone), on pgbench at `CYCLE_SCALE` (default 50), in one
/// run. Run by `bench/cycle/run.sh`; timings are reported, never asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run bench/cycle/run.sh"]
async fn release_preparing_benchmark() {
    let scale: u32 = std::env::var("CYCLE_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let pair = pg::Pair::new("bench_cycle").await;
    let bindir = switchyard_sync::ephemeral::find_bindir().expect("PostgreSQL's programs");
    let ok = std::process::Command::new(bindir.join("pgbench"))
        .args(["-i", "-q", "-s", &scale.to_string(), "-d", pair.blue()])
        .output()
        .expect("pgbench runs");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let mig = pair.migrations.path().to_path_buf();
    std::fs::write(
        mig.join("V1__account_notes.sql"),
        "ALTER TABLE pgbench_accounts ADD COLUMN note text;",
    )
    .unwrap();
    let (blue, green) = (
        support::Backend::start("blue").await,
        support::Backend::start("green").await,
    );
    let sy = Switchyard::builder()
        .blue(blue.addr)
        .green(green.addr)
        .extra(&format!(
            "[rollout]\nsteps = [100]\nbake = \"0s\"\n[rollout.analysis]\nwindow = \"2s\"\ninterval = \"100ms\"\nmin_requests = 1\n\
             [database]\nblue = \"{}\"\ngreen = \"{}\"\nmigrations = \"{}\"\nmode = \"replicate\"\nmax_lag = \"2s\"\njobs = 2\n",
            pair.blue(),
            pair.green(),
            mig.display()
        ))
        .start();
    let client = support::Client::new();
    let url = sy.url("/");
    let traffic = tokio::spawn(async move {
        for _ in 0..2_000_000u32 {
            let _ = client.get(&url).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let mut rows = Vec::new();
    for (release, to, migration) in [
        (1, "green", None),
        (
            2,
            "blue",
            Some((
                "V2__branch_region.sql",
                "ALTER TABLE pgbench_branches ADD COLUMN region text;",
            )),
        ),
    ] {
        if let Some((f, sql)) = migration {
            std::fs::write(mig.join(f), sql).unwrap();
        }
        let before = last_seq(&sy).await;
        ship(&sy, to).await;
        let h: Vec<serde_json::Value> = history(&sy)
            .await
            .into_iter()
            .filter(|e| e["seq"].as_u64().unwrap_or(0) > before)
            .collect();
        let started = h
            .iter()
            .find(|e| e["kind"] == "rollout_started")
            .and_then(|e| e["at_ms"].as_u64())
            .unwrap();
        let prepared = h
            .iter()
            .filter(|e| e["kind"] == "database_step")
            .filter_map(|e| e["at_ms"].as_u64())
            .max()
            .unwrap();
        let steps: Vec<String> = h
            .iter()
            .filter(|e| e["kind"] == "database_step")
            .map(|e| e["reason"].as_str().unwrap_or("").to_string())
            .collect();
        let copied = !steps.iter().any(|s| s.contains("reused"));
        rows.push((release, (prepared - started) as f64 / 1000.0, copied, steps));
    }
    traffic.abort();
    let ratio = rows[1].1 / rows[0].1;
    let mut out = format!(
        "| release | preparing (s) | tables copied |\n|---|---:|---|\n| 1 (blue → green, clone) | {:.2} | {} |\n| 2 (green → blue, replica reused) | {:.2} | {} |\n\nSecond release's preparing ÷ first's: **{ratio:.2}** (target ≤ 0.10)\n\n",
        rows[0].1,
        if rows[0].2 { "yes" } else { "no" },
        rows[1].1,
        if rows[1].2 { "yes" } else { "none" },
    );
    for (r, _, _, steps) in &rows {
        out.push_str(&format!("Release {r}:\n\n"));
        for s in steps {
            out.push_str(&format!("- {s}\n"));
        }
        out.push('\n');
    }
    if let Ok(path) = std::env::var("CYCLE_OUT") {
        std::fs::write(path, &out).unwrap();
    }
    println!("{out}");
    support::sync(&sy.config_path, &["cleanup"]);
}
