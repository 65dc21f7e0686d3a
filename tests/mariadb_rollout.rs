//! Blue-green with a MariaDB database, as a user runs it: the orders
//! application's blue and green releases each on their own MariaDB server,
//! a steady stream of writes and reads through the proxy, and a rollout in
//! replicate mode. switchyard clones, verifies and replicates green by
//! itself, the rollout reaches `promoted` with no failed request, every
//! acknowledged write is on both sides (reverse replication carries
//! green's back to blue), and cleanup leaves no replication configured.

#[path = "support/orders.rs"]
mod orders;
mod support;

use http::Method;
use mysql_async::prelude::Queryable;
use orders::{OrderLoad, OrdersApp};
use std::time::Duration;
use support::{eventually, Switchyard};
use switchyard_sync::mysql::ephemeral::EphemeralMariaDb;

async fn conn(url: &str) -> mysql_async::Conn {
    let url = url.replacen("mariadb://", "mysql://", 1);
    mysql_async::Conn::new(mysql_async::Opts::from_url(&url).unwrap())
        .await
        .unwrap()
}

async fn ids_on(url: &str, ids: &[i64]) -> usize {
    if ids.is_empty() {
        return 0;
    }
    let list: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    let n: Option<i64> = conn(url)
        .await
        .query_first(format!(
            "SELECT COUNT(*) FROM orders WHERE id IN ({})",
            list.join(",")
        ))
        .await
        .unwrap();
    n.unwrap_or(0) as usize
}

async fn replicas(url: &str) -> usize {
    let rows: Vec<mysql_async::Row> = conn(url)
        .await
        .query("SHOW ALL SLAVES STATUS")
        .await
        .unwrap();
    rows.len()
}

async fn state(sy: &Switchyard) -> String {
    sy.status().await["rollout"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mariadb_rollout_under_write_load_is_promoted_with_no_failed_request_and_no_write_lost() {
    let (b, g) = (
        EphemeralMariaDb::start().unwrap_or_else(|e| panic!("{e}")),
        EphemeralMariaDb::start().unwrap_or_else(|e| panic!("{e}")),
    );
    let blue_url = b.create_db("shop").await.unwrap();
    let green_url = g.create_db("shop").await.unwrap();
    conn(&blue_url)
        .await
        .query_drop(orders::MYSQL_SCHEMA)
        .await
        .unwrap();
    let migrations = tempfile::tempdir().unwrap();
    let blue = OrdersApp::start("blue", &blue_url).await;
    let green = OrdersApp::start("green", &green_url).await;
    let sy = Switchyard::builder()
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
blue = "{blue_url}"
green = "{green_url}"
migrations = "{}"
mode = "replicate"
max_lag = "1s"
cutover_timeout = "5s"
"#,
            migrations.path().display()
        ))
        .start();
    let load = OrderLoad::start(sy.proxy, 2, 2, Duration::from_secs(180));

    let r = sy.admin(Method::POST, "/api/v1/rollout/start", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let promoted = eventually(150, async || state(&sy).await == "promoted").await;
    let history = sy.admin(Method::GET, "/api/v1/history", "").await.text();
    assert!(
        promoted,
        "never promoted: {:#}\n{history}",
        sy.status().await
    );
    let s = sy.status().await;
    assert_eq!(s["database"]["writer"], "green", "{s:#}");
    let metrics = sy.admin(Method::GET, "/metrics", "").await.text();
    assert!(
        metrics.contains("switchyard_replication_lag_transactions{direction="),
        "lag in transactions is a metric: {metrics}"
    );
    for step in ["preflight", "clone", "verify", "replicate"] {
        assert!(
            history.contains(&format!("\"step\":\"{step}\"")),
            "no database_step for {step}: {history}"
        );
    }
    assert!(history.contains("cutover_completed"), "{history}");
    assert_eq!(replicas(&green_url).await, 0, "green follows nobody now");
    assert_eq!(replicas(&blue_url).await, 1, "blue follows green");

    // The status reads the way back, green -> blue, with its lag in transactions.
    let back = eventually(10, async || {
        let r = &sy.status().await["database"]["replication"];
        r["direction"] == "green -> blue" && r["lag_transactions"].is_u64()
    })
    .await;
    assert!(back, "{:#}", sy.status().await);

    // Writes keep landing, on green now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tally = load.stop().await;
    assert!(
        tally.failures.is_empty(),
        "failed requests: {:#?}",
        &tally.failures[..tally.failures.len().min(20)]
    );
    assert!(
        tally.acked.iter().any(|(_, c)| c == "blue"),
        "blue took writes"
    );
    assert!(
        tally.acked.iter().any(|(_, c)| c == "green"),
        "green took writes"
    );
    let ids: Vec<i64> = tally.acked.iter().map(|(i, _)| *i).collect();
    assert!(ids.len() > 20, "the load wrote: {}", ids.len());
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "no id was handed out twice");
    assert_eq!(
        ids_on(&green_url, &ids).await,
        ids.len(),
        "every acknowledged write is on green"
    );
    let blue_has_all = eventually(30, async || ids_on(&blue_url, &ids).await == ids.len()).await;
    assert!(
        blue_has_all,
        "every acknowledged write reaches blue too: {} of {}",
        ids_on(&blue_url, &ids).await,
        ids.len()
    );

    // Cleanup leaves no replication configured on either server.
    let r = support::sync(&sy.config_path, &["cleanup"]);
    assert_eq!(r.code, 0, "{}", r.output());
    assert_eq!(replicas(&blue_url).await, 0);
    assert_eq!(replicas(&green_url).await, 0);
}
