//! A rollout with `[database]`: traffic does not move to green until green's
//! database has been cloned and verified, and the status says why it waits.

#[path = "support/load.rs"]
mod load;
#[path = "../sync/tests/support/mod.rs"]
mod pg;
mod support;

use http::Method;
use load::Load;
use std::time::Duration;
use support::{eventually, Backend, Switchyard};

fn sync(config: &std::path::Path, args: &[&str]) {
    let r = support::sync(config, args);
    assert!(r.code == 0, "switchyard sync {args:?}: {}", r.output());
}

/// Blue's data in these stories.
const ACCOUNTS: &str = "CREATE TABLE accounts (id int PRIMARY KEY, balance numeric NOT NULL);
     INSERT INTO accounts SELECT g, g * 10 FROM generate_series(1, 500) g;";

/// A switchyard in front of the two releases, with green's database in
/// snapshot mode, prepared by the operator.
fn switchyard(pair: &pg::Pair, blue: &Backend, green: &Backend) -> Switchyard {
    Switchyard::builder()
        .blue(blue.addr)
        .green(green.addr)
        .extra(&format!(
            r#"
[rollout]
steps = [50, 100]
bake = "300ms"

[rollout.analysis]
window = "2s"
interval = "50ms"
min_requests = 10

[database]
blue = "{}"
green = "{}"
migrations = "{}"
mode = "snapshot"
prepare = "manual"
"#,
            pair.blue(),
            pair.green(),
            pair.migrations.path().display()
        ))
        .start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_waits_for_greens_database_to_be_verified() {
    let pair = pg::Pair::new("gate_story").await;
    pg::sql(pair.blue(), ACCOUNTS).await;
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let sy = switchyard(&pair, &blue, &green);
    let _load = Load::start(sy.url("/"), 2, 200_000, Duration::from_secs(90));

    let r = sy.admin(Method::POST, "/api/v1/rollout/start", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Green's database is empty: the gate holds, and says why.
    let held = eventually(20, async || {
        let s = sy.status().await;
        s["database"]["gate"] == "hold"
            && s["database"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("not verified"))
    })
    .await;
    let s = sy.status().await;
    assert!(held, "{s}");
    assert_eq!(
        s["weights"]["green"], 0.0,
        "no traffic before verification: {s}"
    );
    assert_ne!(s["rollout"]["state"], "promoted");

    // The operator prepares green; the rollout then goes all the way.
    sync(&sy.config_path, &["clone"]);
    sync(&sy.config_path, &["verify"]);
    let promoted = eventually(60, async || {
        sy.status().await["rollout"]["state"] == "promoted"
    })
    .await;
    let s = sy.status().await;
    assert!(promoted, "{s}");
    assert_eq!(s["weights"]["green"], 100.0);
    assert!(green.requests() > 0);
    // The gate passed (green was verified) before the last step: the
    // history says so. From now on the database part is about the next
    // release: green's database is the primary, blue's the candidate.
    let h = sy.admin(Method::GET, "/api/v1/history", "").await.text();
    assert!(h.contains("step_advanced"), "{h}");
    let named = eventually(15, async || {
        let s = sy.status().await;
        s["database"]["primary"] == "green" && s["database"]["candidate"] == "blue"
    })
    .await;
    assert!(named, "{}", sy.status().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_snapshot_goes_stale_when_blue_takes_a_write_and_the_rollout_waits() {
    let pair = pg::Pair::new("gate_stale").await;
    pg::sql(pair.blue(), ACCOUNTS).await;
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let sy = switchyard(&pair, &blue, &green);
    sync(&sy.config_path, &["clone", "--verify"]);
    // Production carries on: blue takes a write green's copy does not have.
    pg::sql(pair.blue(), "UPDATE accounts SET balance = 0 WHERE id = 7").await;
    let _load = Load::start(sy.url("/"), 2, 200_000, Duration::from_secs(90));

    let r = sy.admin(Method::POST, "/api/v1/rollout/start", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let held = eventually(30, async || {
        let s = sy.status().await;
        s["database"]["gate"] == "hold"
            && s["database"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("green is stale") && r.contains("1 row change"))
    })
    .await;
    let s = sy.status().await;
    assert!(held, "{s}");
    assert_eq!(
        s["weights"]["green"], 0.0,
        "no traffic to a stale copy: {s}"
    );
    assert!(
        sy.metrics()
            .await
            .contains("switchyard_database_green_stale 1"),
        "the staleness is a metric an alert can watch"
    );

    // An operator who promotes anyway is stopped at the cutover: writes
    // stay with blue's database and the rollout pauses, saying why.
    let r = sy.admin(Method::POST, "/api/v1/rollout/promote", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let paused = eventually(30, async || {
        sy.status().await["rollout"]["state"] == "paused"
    })
    .await;
    let s = sy.status().await;
    assert!(paused, "{s}");
    assert!(
        s["rollout"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("green's copy is stale")),
        "{s}"
    );
    assert_eq!(s["database"]["writer"], "blue", "{s}");

    // A fresh copy (and its verification) lets the rollout go on.
    sync(&sy.config_path, &["clone", "--replace", "--verify"]);
    let fresh = eventually(15, async || {
        let s = sy.status().await;
        s["database"]["verified"] == true
            && sy
                .metrics()
                .await
                .contains("switchyard_database_green_stale 0")
    })
    .await;
    assert!(
        fresh,
        "a fresh, verified copy is not stale: {}",
        sy.status().await
    );
    let r = sy.admin(Method::POST, "/api/v1/rollout/resume", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let promoted = eventually(60, async || {
        sy.status().await["rollout"]["state"] == "promoted"
    })
    .await;
    let s = sy.status().await;
    assert!(promoted, "{s}");
    assert_eq!(s["database"]["writer"], "green", "{s}");
}
