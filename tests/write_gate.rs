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
