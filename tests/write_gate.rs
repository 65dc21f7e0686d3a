//! Cutover at the proxy: writes pinned to the primary's colour, held while the
//! databases switch, and released to the new primary, while reads flow on.

mod support;

use http::Method;
use std::time::Duration;
use support::{eventually, Backend, Client};
use switchyard_config::Config;
use switchyard_proxy::{Colour, DataPlane};

async fn data_plane(blue: &Backend, green: &Backend) -> (DataPlane, String) {
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[pools.blue]\nupstreams = [\"{}\"]\n[pools.green]\nupstreams = [\"{}\"]\n[admin]\ntoken = \"t\"\n",
        blue.addr, green.addr
    );
    let config = Config::parse(&text, "test.toml").unwrap();
    let dp = DataPlane::new(&config, 0).unwrap();
    let listeners = switchyard_proxy::bind(&config.proxy).await.unwrap();
    let url = format!("http://{}/", listeners.http_addr());
    tokio::spawn(listeners.serve(dp.clone(), std::future::pending(), Duration::from_secs(1)));
    (dp, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_the_writer_and_wait_at_a_held_gate_until_released() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let (dp, url) = data_plane(&blue, &green).await;
    let client = Client::new();

    // All reads on green, but blue's database is the primary: writes go blue.
    dp.set_green_bp(10_000);
    dp.set_writer(Some(Colour::Blue));
    assert_eq!(client.get(&url).await.unwrap().text(), "green");
    let post = client.request(Method::POST, &url, &[], "x").await.unwrap();
    assert_eq!(post.text(), "blue");

    // A slow write is in flight when cutover holds the gate.
    blue.delay(Duration::from_millis(700));
    let slow = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { client.request(Method::PUT, &url, &[], "slow").await })
    };
    assert!(eventually(5, async || dp.write_gate().in_flight == 1).await);
    dp.hold_writes();
    let held = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { client.request(Method::POST, &url, &[], "held").await })
    };
    assert!(eventually(5, async || dp.write_gate().waiting == 1).await);
    // Reads are never held.
    assert_eq!(client.get(&url).await.unwrap().text(), "green");

    // Cutover waits for the in-flight write, switches the writer, releases.
    assert!(dp.writes_drained(Duration::from_secs(10)).await);
    assert_eq!(slow.await.unwrap().unwrap().text(), "blue");
    assert!(
        !held.is_finished(),
        "a held write went through before release"
    );
    dp.set_writer(Some(Colour::Green));
    dp.release_writes();
    let released = held.await.unwrap().unwrap();
    assert_eq!(released.status, 200);
    assert_eq!(
        released.text(),
        "green",
        "released writes go to the new primary"
    );
    let gate = dp.write_gate();
    assert!(
        !gate.held && gate.waiting == 0 && gate.in_flight == 0,
        "{gate:?}"
    );

    // Without a writer, writes follow the weights like reads.
    dp.set_writer(None);
    dp.set_green_bp(0);
    let post = client.request(Method::POST, &url, &[], "x").await.unwrap();
    assert_eq!(post.text(), "blue");
}

/// A switchyard whose `[database]` pins writes, with the given extra keys.
fn pinned(blue: &Backend, green: &Backend, db_extra: &str) -> support::Switchyard {
    support::Switchyard::builder()
        .blue(blue.addr)
        .green(green.addr)
        .proxy_extra("sticky = \"hash\"\nsticky_key = \"header:x-user\"")
        .extra(&format!(
            "[database]\nblue = \"postgres://nobody@127.0.0.1:1/app\"\ngreen = \"postgres://nobody@127.0.0.1:2/app\"\nprepare = \"manual\"\n{db_extra}\n"
        ))
        .start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_stay_on_the_stable_colour_and_a_writers_reads_follow_for_read_your_writes() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let sy = pinned(&blue, &green, "read_your_writes = \"1500ms\"");
    sy.set_green(100.0).await;
    let client = Client::new();
    let url = sy.url("/");
    let as_user = |u: &'static str| [("x-user", u)];
    let get = async |u: &'static str| {
        client
            .request(Method::GET, &url, &as_user(u), "")
            .await
            .unwrap()
            .text()
    };
    assert_eq!(get("alice").await, "green", "reads follow the weights");
    for m in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        let r = client
            .request(m.clone(), &url, &as_user("alice"), "x")
            .await
            .unwrap();
        assert_eq!(
            r.text(),
            "blue",
            "{m} goes to the stable colour, whose database is the primary"
        );
    }
    // Right after her write, alice reads from blue; bob still reads green.
    assert_eq!(get("alice").await, "blue");
    assert_eq!(get("bob").await, "green");
    let s = sy.status().await;
    assert_eq!(s["database"]["writer"], "blue", "{s:#}");
    // Once the window has passed, alice is back on green.
    assert!(eventually(10, async || get("alice").await == "green").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_writes_follow_the_weights_like_reads() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let sy = pinned(&blue, &green, "writes = \"weighted\"");
    sy.set_green(100.0).await;
    let client = Client::new();
    let r = client
        .request(Method::POST, &sy.url("/"), &[("x-user", "alice")], "x")
        .await
        .unwrap();
    assert_eq!(r.text(), "green");
}
