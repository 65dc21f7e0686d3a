//! Reliability and security as an attacker and a careful SRE see them
//! (issue 9): bounded connections, failure accounting that clients cannot
//! game, failover, strict HTTP and a hardened admin API. Each story is one
//! of the issue's numbered findings. Real switchyard process, real sockets
//! on 127.0.0.1, every wait bounded.

#[path = "support/load.rs"]
mod load;
mod support;

use http::Method;
use load::Load;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::client::{exchange, read_until_close};
use support::switchyard::TOKEN;
use support::{eventually, Backend, Switchyard};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The status code of a raw HTTP/1.1 response.
fn status_of(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// An upstream that answers every request with the head of a 100-byte
/// response and 4 bytes of it, then either closes (a crash mid-response)
/// or stalls with the connection open for up to a minute.
async fn broken_upstream(colour: &'static str, stall: bool) -> SocketAddr {
    support::backend::raw_upstream(move |mut s| async move {
        let head =
            format!("HTTP/1.1 200 OK\r\ncontent-length: 100\r\nx-colour: {colour}\r\n\r\nhalf");
        let _ = s.write_all(head.as_bytes()).await;
        if stall {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    })
    .await
}

/// A port nobody listens on: connections are refused.
fn dead_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Rollout steps where the second step bakes for an hour: the rollout
/// stays at 50% green until the test acts.
const PARKED: &str = r#"
[rollout]
steps = [{ weight = 10, bake = "300ms" }, { weight = 50, bake = "1h" }, 100]
bake = "300ms"

[rollout.analysis]
window = "2s"
interval = "50ms"
min_requests = 10
max_error_rate = 0.05
"#;

async fn rollout_state(sy: &Switchyard) -> (String, Option<u64>, f64) {
    let s = sy.status().await;
    (
        s["rollout"]["state"].as_str().unwrap().to_string(),
        s["rollout"]["step"].as_u64(),
        s["weights"]["green"].as_f64().unwrap(),
    )
}

// Finding 1: a connection that never sends a byte is never closed, on the
// proxy and on the admin port; there is no connection cap.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_connections_are_closed_by_the_header_timeout_on_both_ports() {
    let (_blue, _green, sy) =
        support::deployment(|b| b.proxy_extra("header_timeout = \"1s\"\nidle_timeout = \"30s\""))
            .await;
    for addr in [sy.proxy, sy.admin] {
        // Never sends a byte.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let (got, closed) = read_until_close(&mut silent, 15).await;
        assert!(
            closed && got.is_empty(),
            "{addr}: silent connection kept open ({got:?})"
        );
        // Sends half a request head and stops (slowloris).
        let (_, closed) = exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", 15).await;
        assert!(
            closed,
            "{addr}: a request head that never ends kept the connection"
        );
    }
    // A keep-alive connection may sit idle for longer than the header
    // timeout: idle_timeout governs the time between requests.
    let mut s = TcpStream::connect(sy.proxy).await.unwrap();
    let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    s.write_all(req).await.unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s.write_all(req).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("an answer on the kept-alive connection")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "idle keep-alive connection was closed before idle_timeout"
    );
    // The proxy still serves everyone.
    assert_eq!(sy.client.get(&sy.url("/")).await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let (_blue, _green, sy) = support::deployment(|b| b.proxy_extra("idle_timeout = \"1s\"")).await;
    let mut s = TcpStream::connect(sy.proxy).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (got, closed) = read_until_close(&mut s, 15).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        closed,
        "idle keep-alive connection kept open past idle_timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_new_connections_wait_in_the_backlog_and_are_served_later() {
    let (_blue, _green, sy) = support::deployment(|b| {
        b.proxy_extra("max_connections = 2\nheader_timeout = \"30s\"\nbacklog = 16")
    })
    .await;
    let held1 = TcpStream::connect(sy.proxy).await.unwrap();
    let held2 = TcpStream::connect(sy.proxy).await.unwrap();
    // Both slots are taken once the proxy has accepted them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The third connects (the kernel queues it) but is not served yet.
    let mut third = TcpStream::connect(sy.proxy).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(early.is_err(), "served past max_connections");
    drop(held1);
    let (got, _) = read_until_close(&mut third, 10).await;
    assert!(
        got.starts_with("HTTP/1.1 200"),
        "a waiting connection is served once a slot frees: {got:?}"
    );
    drop(held2);
    assert_eq!(sy.client.get(&sy.url("/")).await.unwrap().status, 200);
    assert!(!sy.stderr().contains("accept failed"), "{}", sy.stderr());
}

// Finding 2: any client can roll back a healthy green with malformed
// chunked uploads, aborted uploads or slow bodies.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_garbage_cannot_roll_back_a_healthy_green() {
    let (_blue, _green, sy) =
        support::deployment(|b| b.extra(PARKED).proxy_extra("body_timeout = \"500ms\"")).await;
    let load = Load::start(sy.url("/"), 2, 200_000, Duration::from_secs(60));
    assert_eq!(
        sy.admin(Method::POST, "/api/v1/rollout/start", "")
            .await
            .status,
        200
    );
    let at_50 = eventually(30, async || {
        rollout_state(&sy).await == ("progressing".into(), Some(1), 50.0)
    })
    .await;
    assert!(at_50, "{}", sy.status().await);

    // Invalid chunk sizes, from 8 clients at once: as the issue's attacker,
    // who rolled back a healthy green in 1.2 s this way.
    let attackers: Vec<_> = (0..8)
        .map(|_| {
            let proxy = sy.proxy;
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..25 {
                    let (r, _) = exchange(
                        proxy,
                        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\nhello\r\n0\r\n\r\n",
                        10,
                    )
                    .await;
                    statuses.push(status_of(&r));
                }
                statuses
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for i in 0..30 {
        // An upload that stops halfway and hangs up.
        let mut s = TcpStream::connect(sy.proxy).await.unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nonly a little")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(s);
        // A body that stalls past body_timeout (every fifth round: slow).
        if i % 5 == 0 {
            let (r, _) = exchange(
                sy.proxy,
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nsome",
                10,
            )
            .await;
            statuses.push(status_of(&r));
        }
    }
    for a in attackers {
        statuses.extend(a.await.unwrap());
    }
    // Well past the analysis interval: any breach would have fired.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (state, step, green) = rollout_state(&sy).await;
    assert_eq!(
        (state.as_str(), step, green),
        ("progressing", Some(1), 50.0),
        "a client's garbage rolled back a healthy green: {}",
        sy.status().await
    );
    for s in &statuses {
        assert!(
            matches!(s, 400 | 408 | 0),
            "client errors are answered 4xx (or the connection closed), never 5xx: {statuses:?}"
        );
    }
    assert!(statuses.contains(&400), "{statuses:?}");
    assert!(statuses.contains(&408), "{statuses:?}");
    assert_eq!(
        sy.colour_metric("switchyard_transport_failures_total", "green")
            .await,
        0
    );
    let client_errors = sy
        .colour_metric("switchyard_client_errors_total", "green")
        .await
        + sy.colour_metric("switchyard_client_errors_total", "blue")
            .await;
    assert!(
        client_errors >= 30,
        "client errors are counted apart: {client_errors}"
    );
    let c = load.stop().await;
    assert_eq!(
        (c.blue_5xx, c.green_5xx, c.other_failures),
        (0, 0, 0),
        "{c:?}"
    );
}

// Finding 3: nothing times out a response body.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stalls_after_its_headers_is_cut_off_and_counted_against_it() {
    let blue = broken_upstream("blue", true).await;
    let green = Backend::start("green").await;
    let sy = Switchyard::builder()
        .blue(blue)
        .green(green.addr)
        .proxy_extra("upstream_read_timeout = \"1s\"")
        .start();
    let (r, closed) = exchange(sy.proxy, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 20).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(
        closed,
        "the client must not hang on a stalled upstream (got {r:?})"
    );
    assert!(!r.contains(&"x".repeat(100)));
    assert!(
        eventually(5, async || sy
            .colour_metric("switchyard_transport_failures_total", "blue")
            .await
            == 1)
        .await,
        "a cut-off response is the upstream's failure"
    );
}

// Finding 4: an upstream that dies mid-body is counted as a success.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_green_that_dies_mid_body_is_rolled_back() {
    let blue = Backend::start("blue").await;
    let green = broken_upstream("green", false).await;
    let sy = Switchyard::builder()
        .blue(blue.addr)
        .green(green)
        .extra(PARKED)
        .start();
    let load = Load::start(sy.url("/"), 4, 200_000, Duration::from_secs(60));
    assert_eq!(
        sy.admin(Method::POST, "/api/v1/rollout/start", "")
            .await
            .status,
        200
    );
    let rolled_back = eventually(20, async || {
        let (state, _, green) = rollout_state(&sy).await;
        state == "aborted" && green == 0.0
    })
    .await;
    load.stop().await;
    assert!(
        rolled_back,
        "a green that truncates every response was not rolled back: {}",
        sy.status().await
    );
    let s = sy.status().await;
    let reason = s["rollout"]["reason"].as_str().unwrap();
    assert!(reason.contains("rolled back"), "{reason}");
    assert!(
        sy.colour_metric("switchyard_transport_failures_total", "green")
            .await
            > 0
    );
}

// Finding 7: a dead colour gives 100% 502 with the upstream's address in
// the body; a failed connect to green is not retried on blue.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_on_the_candidate_is_served_by_the_stable_colour() {
    let blue = Backend::start("blue").await;
    let dead = dead_port();
    let sy = Switchyard::builder()
        .blue(blue.addr)
        .green(dead)
        .proxy_extra("fail_timeout = \"1s\"")
        .start();
    sy.set_green(100.0).await;
    for _ in 0..20 {
        let r = sy.client.get(&sy.url("/")).await.unwrap();
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "blue"),
            "nothing was sent to green: blue takes it"
        );
    }
    // The candidate's failures are still counted against it.
    assert!(
        sy.colour_metric("switchyard_transport_failures_total", "green")
            .await
            >= 1
    );
    assert!(sy.colour_metric("switchyard_fallback_total", "green").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_colour_answers_502_without_addresses_unless_fallback_sends_it_to_the_other() {
    const HEALTH: &str = r#"health = { path = "/healthz", interval = "100ms", timeout = "500ms", fall = 1, rise = 1 }"#;
    // Without fallback (the default): a clear 502 that names no address.
    let (blue, _green, sy) = support::deployment(|b| b.pool_extra(HEALTH)).await;
    blue.stop().await;
    let r = sy.client.get(&sy.url("/")).await.unwrap();
    assert!(matches!(r.status, 502 | 503), "{} {}", r.status, r.text());
    assert!(r.text().contains("blue"), "{}", r.text());
    assert!(
        !r.text().contains("127.0.0.1"),
        "the body leaks an address: {}",
        r.text()
    );
    assert!(
        eventually(5, async || sy.stderr().contains(&blue.addr.to_string())).await,
        "the address goes to the log"
    );

    // With `fallback = true`: blue's traffic goes to the healthy green.
    let (blue, _green, sy) =
        support::deployment(|b| b.pool_extra(&format!("{HEALTH}\nfallback = true"))).await;
    assert_eq!(sy.client.get(&sy.url("/")).await.unwrap().text(), "blue");
    blue.stop().await;
    let served = eventually(10, async || {
        sy.client
            .get(&sy.url("/"))
            .await
            .is_ok_and(|r| r.status == 200 && r.text() == "green")
    })
    .await;
    assert!(served, "fallback never sent blue's traffic to green");
    for _ in 0..20 {
        let r = sy.client.get(&sy.url("/")).await.unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "green"));
    }
    assert!(sy.colour_metric("switchyard_fallback_total", "blue").await >= 20);
    // Operators hear of it once, as an event.
    let fell_back = eventually(5, async || {
        let h = sy.admin(Method::GET, "/api/v1/history", "").await.json();
        h["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "fallback")
            .count()
            == 1
    })
    .await;
    assert!(
        fell_back,
        "{}",
        sy.admin(Method::GET, "/api/v1/history", "").await.text()
    );
}

// Finding 8: loose request handling.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loose_requests_are_refused_and_the_upstream_is_not_blamed() {
    let (_blue, _green, sy) =
        support::deployment(|b| b.proxy_extra("max_body_size = \"1KiB\"")).await;
    let p = sy.proxy;
    let (r, _) = exchange(p, b"GET /headers HTTP/1.1\r\nConnection: close\r\n\r\n", 10).await;
    assert_eq!(status_of(&r), 400, "missing Host: {r}");
    let (r, _) = exchange(
        p,
        b"GET /headers HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
        10,
    )
    .await;
    assert_eq!(status_of(&r), 400, "two Host headers: {r}");
    // HTTP/1.0 needs no Host.
    let (r, _) = exchange(p, b"GET / HTTP/1.0\r\n\r\n", 10).await;
    assert_eq!(status_of(&r), 200, "{r}");
    // The absolute-form authority wins over Host.
    let (r, _) = exchange(
        p,
        b"GET http://app.example/headers HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
        10,
    )
    .await;
    assert_eq!(status_of(&r), 200, "{r}");
    assert!(r.contains("host: app.example\n"), "{r}");
    assert!(!r.contains("other.example"), "{r}");
    let (r, _) = exchange(
        p,
        b"CONNECT app.example:443 HTTP/1.1\r\nHost: app.example:443\r\n\r\n",
        10,
    )
    .await;
    assert_eq!(status_of(&r), 405, "CONNECT: {r}");
    // h2c is never tunnelled: a plain HTTP/1.1 answer, no Upgrade upstream.
    let (r, _) = exchange(
        p,
        b"GET /headers HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        3,
    )
    .await;
    assert_eq!(status_of(&r), 200, "{r}");
    assert!(!r.to_ascii_lowercase().contains("upgrade: h2c"), "{r}");
    assert!(!r.to_ascii_lowercase().contains("http2-settings"), "{r}");
    // A bad chunk size is the client's error.
    let (r, _) = exchange(
        p,
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nnot-hex\r\nabc\r\n0\r\n\r\n",
        10,
    )
    .await;
    assert_eq!(status_of(&r), 400, "bad chunk size: {r}");
    // Oversized heads: one 100 kB header line, and many headers.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    let (r, _) = exchange(p, big.as_bytes(), 10).await;
    assert_eq!(status_of(&r), 431, "100 kB header: {r:.80}");
    let many: String = (0..4000)
        .map(|i| format!("X-H{i}: {}\r\n", "b".repeat(90)))
        .collect();
    let (r, _) = exchange(
        p,
        format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
        10,
    )
    .await;
    assert_eq!(status_of(&r), 431, "400 kB of headers: {r:.80}");
    // Bodies over max_body_size: declared, and streamed.
    let (r, _) = exchange(
        p,
        format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2048\r\n\r\n{}",
            "c".repeat(2048)
        )
        .as_bytes(),
        10,
    )
    .await;
    assert_eq!(status_of(&r), 413, "{r}");
    let chunk = "d".repeat(600);
    let (r, _) = exchange(
        p,
        format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n").as_bytes(),
        10,
    )
    .await;
    assert_eq!(status_of(&r), 413, "{r}");
    // None of it counts against the upstream.
    for c in ["blue", "green"] {
        assert_eq!(
            sy.colour_metric("switchyard_transport_failures_total", c)
                .await,
            0
        );
        assert_eq!(
            sy.colour_metric("switchyard_upstream_5xx_total", c).await,
            0
        );
    }
    assert_eq!(sy.client.get(&sy.url("/")).await.unwrap().status, 200);
}

// Finding 9: the admin API.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_hide_upstream_addresses_unless_asked() {
    let (blue, _green, sy) = support::deployment(|b| b).await;
    let m = sy.client.get(&sy.admin_url("/metrics")).await.unwrap();
    assert_eq!(m.status, 200, "/metrics keeps its open default");
    assert!(!m.text().contains(&blue.addr.to_string()), "{}", m.text());
    assert!(
        m.text()
            .contains("switchyard_upstream_healthy{colour=\"blue\",upstream=\"0\"} 1"),
        "{}",
        m.text()
    );
    let (blue, _green, sy) =
        support::deployment(|b| b.admin_extra("metrics_addresses = true")).await;
    let m = sy.metrics().await;
    assert!(m.contains(&format!("upstream=\"{}\"", blue.addr)), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_takes_any_bearer_case_slows_wrong_tokens_and_answers_413() {
    let (_blue, _green, sy) = support::deployment(|b| b).await;
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let auth = format!("{scheme} {TOKEN}");
        let r = sy
            .client
            .request(
                Method::GET,
                &sy.admin_url("/api/v1/status"),
                &[("authorization", &auth)],
                "",
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{scheme}: {}", r.text());
    }
    let t0 = Instant::now();
    let r = sy
        .client
        .request(
            Method::GET,
            &sy.admin_url("/api/v1/status"),
            &[("authorization", "bearer guess")],
            "",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert!(
        t0.elapsed() >= Duration::from_millis(200),
        "a wrong token is answered after a delay"
    );
    let ten_mb = "x".repeat(10 * 1024 * 1024);
    let r = sy.admin(Method::PUT, "/api/v1/weights", &ten_mb).await;
    assert_eq!(r.status, 413, "{:.200}", r.text());
    assert_eq!(sy.status().await["weights"]["green"], 0.0);
}

#[test]
fn check_warns_about_an_admin_api_reachable_without_tls() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sy.toml");
    let text = |listen: &str| {
        format!("[pools.blue]\nupstreams = [\"127.0.0.1:9001\"]\n[pools.green]\nupstreams = [\"127.0.0.1:9002\"]\n[admin]\nlisten = \"{listen}\"\ntoken = \"t\"\n")
    };
    let check = || {
        let r = support::run(support::switchyard_command().args([
            "check",
            "-c",
            cfg.to_str().unwrap(),
        ]));
        (r.code, r.stderr)
    };
    std::fs::write(&cfg, text("0.0.0.0:9090")).unwrap();
    let (code, err) = check();
    assert_eq!(code, 0, "a warning, not an error: {err}");
    assert!(
        err.contains("warning") && err.contains("not a loopback address") && err.contains("TLS"),
        "{err}"
    );
    std::fs::write(&cfg, text("127.0.0.1:9090")).unwrap();
    let (code, err) = check();
    assert_eq!(code, 0);
    assert!(!err.contains("warning"), "{err}");
}

// Finding 6 (in part): one idle events-stream client keeps the old process
// alive for the whole drain.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_event_streams_at_once_so_they_never_hold_the_drain() {
    let (_blue, _green, mut sy) =
        support::deployment(|b| b.proxy_extra("drain_timeout = \"1h\"")).await;
    let events = sy.events().await;
    let second = sy.events().await;
    sy.signal("TERM");
    let code = tokio::task::spawn_blocking(move || sy.wait_exit(20))
        .await
        .unwrap();
    assert_eq!(
        code,
        Some(0),
        "open event streams held the drain (drain_timeout is an hour)"
    );
    drop((events, second));
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Sends one `GET /` on `s` and reads its response (by Content-Length);
/// returns the status.
async fn one_request(s: &mut TcpStream) -> u16 {
    s.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the response");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if body.len() >= len {
                return status_of(&text);
            }
        }
    }
}

/// The short soak (the long one, 10,000 connections beside nginx, is
/// `bench/connections/run.sh`): 2,000 keep-alive clients each send one
/// request and stay idle. Others are still served; the idle ones cost
/// little (parked: no buffers); and once they close, the memory goes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections_are_held_cheaply_and_their_memory_returns() {
    const N: usize = 2000;
    let soft_limit: u64 = std::fs::read_to_string("/proc/self/limits")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        soft_limit > (N as u64) + 500,
        "this test holds {N} connections: raise `ulimit -n` (now {soft_limit})"
    );
    let (_blue, _green, sy) = support::deployment(|b| b).await;
    for _ in 0..20 {
        assert_eq!(sy.client.get(&sy.url("/")).await.unwrap().status, 200);
    }
    // Let start-up allocations settle (the allocator returns freed memory
    // after a second).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let baseline = rss_kib(sy.pid());

    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let opened: Vec<_> = (0..N)
        .map(|_| {
            let (sem, addr) = (sem.clone(), sy.proxy);
            tokio::spawn(async move {
                let _p = sem.acquire().await.unwrap();
                let mut s = TcpStream::connect(addr).await.unwrap();
                let status = tokio::time::timeout(Duration::from_secs(30), one_request(&mut s))
                    .await
                    .expect("answered within 30 s");
                (status, s)
            })
        })
        .collect();
    let mut held = Vec::with_capacity(N);
    for t in opened {
        let (status, s) = t.await.unwrap();
        assert_eq!(status, 200);
        held.push(s);
    }
    // Idle long enough to be parked.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let holding = rss_kib(sy.pid());
    for _ in 0..20 {
        let fresh = support::Client::new();
        assert_eq!(fresh.get(&sy.url("/")).await.unwrap().text(), "blue");
    }
    let per_conn = (holding.saturating_sub(baseline)) * 1024 / N as u64;
    // Before parking, each idle connection kept hyper's 16 KiB of buffers
    // (21.8 kB measured in issue 9); parked in the lot as a bare socket,
    // about 0.45 kB (release build, mostly the allocator's high-water mark).
    assert!(
        per_conn < 12 * 1024,
        "{per_conn} bytes per idle connection (RSS {baseline} KiB -> {holding} KiB)"
    );
    // A parked connection still serves its next request.
    assert_eq!(one_request(&mut held[0]).await, 200);

    drop(held);
    let bound = baseline + baseline / 2;
    let mut last = 0;
    let returned = eventually(20, async || {
        last = rss_kib(sy.pid());
        last <= bound
    })
    .await;
    assert!(
        returned,
        "RSS did not come back near its baseline after the connections closed: {baseline} KiB before, {holding} KiB holding {N}, {last} KiB after (bound {bound} KiB)"
    );
}

/// Issue 9, admin hardening: `[admin] tls` serves the admin API over HTTPS
/// on its own listen address; `switchyard ctl` reaches it with `--ca-file`;
/// plain HTTP on that port gets no answer; a client that opens a
/// connection and never finishes its handshake does not hold up others;
/// and `check` no longer warns about a non-loopback admin address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_serves_https_with_admin_tls_and_ctl_reaches_it() {
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("cert.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.key_pair.serialize_pem()).unwrap();
    let sy = Switchyard::builder()
        .dir(dir)
        .blue(blue.addr)
        .green(green.addr)
        .admin_extra(r#"tls = { cert = "cert.pem", key = "key.pem" }"#)
        .start();
    assert!(
        sy.stdout()[0].contains(&format!("admin=https://{}", sy.admin)),
        "{:?}",
        sy.stdout()
    );

    // A client that connects and sends nothing, and one that sends half a
    // ClientHello: neither stalls the accept loop.
    let _silent = TcpStream::connect(sy.admin).await.unwrap();
    let mut half = TcpStream::connect(sy.admin).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();

    let (resp, _) = tokio::time::timeout(
        Duration::from_secs(10),
        support::client::https_get(sy.admin, "localhost", &cert.cert.pem(), "/healthz", false),
    )
    .await
    .expect("served beside the stalled handshakes")
    .unwrap();
    assert_eq!(resp.status, 200);

    // Plain HTTP on the HTTPS port is not served.
    let mut plain = TcpStream::connect(sy.admin).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(
        !String::from_utf8_lossy(&buf).contains("200 OK"),
        "plain HTTP must not be answered on the TLS port: {:?}",
        String::from_utf8_lossy(&buf)
    );

    let ctl = |extra: &[&str]| {
        let r = support::run(
            support::switchyard_command()
                .arg("ctl")
                .args(["--admin", &format!("https://localhost:{}", sy.admin.port())])
                .args(["--token", TOKEN])
                .args(extra)
                .arg("status"),
        );
        (r.code, r.stdout, r.stderr)
    };
    let (code, out, err) = ctl(&["--ca-file", ca.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("blue"), "{out}");
    // Without the CA the certificate is not trusted, and ctl says so.
    let (code, _, err) = ctl(&[]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot reach the admin API"), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // A CA file that holds no certificate is refused up front.
    let (code, _, err) = ctl(&["--ca-file", "/dev/null"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("--ca-file /dev/null: holds no PEM certificate"),
        "{err}"
    );
}

#[test]
fn check_accepts_a_public_admin_address_with_tls_and_rejects_an_unusable_certificate() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.key_pair.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("empty.pem"), "").unwrap();
    let cfg = dir.path().join("sy.toml");
    let check = |cert: &str| {
        let d = dir.path().display();
        std::fs::write(&cfg, format!("[pools.blue]\nupstreams = [\"127.0.0.1:9001\"]\n[pools.green]\nupstreams = [\"127.0.0.1:9002\"]\n[admin]\nlisten = \"0.0.0.0:9090\"\ntoken = \"t\"\ntls = {{ cert = \"{d}/{cert}\", key = \"{d}/key.pem\" }}\n")).unwrap();
        let r = support::run(support::switchyard_command().args([
            "check",
            "-c",
            cfg.to_str().unwrap(),
        ]));
        (r.code, r.stderr)
    };
    let (code, err) = check("cert.pem");
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("warning"), "TLS answers the warning: {err}");
    let (code, err) = check("empty.pem");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("[admin] tls")
            && err.contains("empty.pem")
            && err.contains("no PEM certificate"),
        "{err}"
    );
}

/// Finding 1's other half: with the usual soft limit of 1024 open files,
/// 1,100 idle connections stopped the proxy. switchyard raises its soft
/// limit towards the hard one at start, as nginx's `worker_rlimit_nofile`,
/// and warns when even the hard limit is below what `max_connections` needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_file_limit_is_raised_at_start_towards_what_max_connections_needs() {
    let field = |limits: &str, at: usize| -> Option<u64> {
        limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(at))
            .and_then(|v| v.parse().ok())
    };
    let own = std::fs::read_to_string("/proc/self/limits").unwrap();
    let hard = field(&own, 4).expect("a finite hard limit");
    assert!(
        hard > 1024,
        "this test needs a hard open-file limit above 1024 to raise to (now {hard}): raise `ulimit -Hn`"
    );
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let sy = Switchyard::builder()
        .blue(blue.addr)
        .green(green.addr)
        .start_command(|bin, config| {
            let mut c = std::process::Command::new("sh");
            c.arg("-c")
                .arg("ulimit -Sn 1024 && exec \"$0\" run -c \"$1\"")
                .arg(bin)
                .arg(config);
            c
        });
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", sy.pid())).unwrap();
    let soft = field(&limits, 3).unwrap();
    // Default max_connections 10000 (two sockets each) + admin 1024 + 256.
    let want: u64 = 2 * 10_000 + 1024 + 256;
    assert_eq!(soft, want.min(hard), "{limits}");
    let log = sy.stderr();
    assert!(log.contains("raised the open-file limit"), "{log}");
    assert_eq!(
        log.contains("the open-file limit is below what max_connections needs"),
        hard < want,
        "{log}"
    );
    assert_eq!(sy.client.get(&sy.url("/")).await.unwrap().text(), "blue");
}
