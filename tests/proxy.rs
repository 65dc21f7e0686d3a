//! The data plane as users see it: real backends, a real switchyard process,
//! real sockets.

mod support;

use futures_util::{SinkExt, StreamExt};
use http::Method;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use support::{eventually, Backend, Client, Switchyard};

async fn green_share(sy: &Switchyard, users: usize, offset: usize) -> (usize, HashSet<usize>) {
    let client = &sy.client;
    let mut green = HashSet::new();
    for u in offset..offset + users {
        let cookie = format!("session=user-{u}");
        let r = client
            .request(Method::GET, &sy.url("/"), &[("cookie", &cookie)], "")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        if r.text() == "green" {
            green.insert(u);
        }
    }
    (green.len(), green)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_splits_by_weight_within_tolerance() {
    let (_blue, _green, sy) = support::deployment(|b| b).await;
    let n = 3000;
    for pct in [0.0, 1.0, 25.0, 50.0, 100.0] {
        sy.set_green(pct).await;
        let (g, _) = green_share(&sy, n, 0).await;
        let expected = n as f64 * pct / 100.0;
        // 4 standard deviations of a binomial, plus one request.
        let tolerance = 4.0 * (n as f64 * pct / 100.0 * (1.0 - pct / 100.0)).sqrt() + 1.0;
        assert!(
            (g as f64 - expected).abs() <= tolerance,
            "green got {g} of {n} at {pct}% (expected {expected} ± {tolerance})"
        );
    }
    // Requests without a sticky key are weighted at random.
    sy.set_green(50.0).await;
    let mut g = 0;
    for _ in 0..1000 {
        if sy.client.get(&sy.url("/")).await.unwrap().text() == "green" {
            g += 1;
        }
    }
    assert!(
        (400..=600).contains(&g),
        "keyless requests: {g} of 1000 green at 50%"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_the_weight_only_moves_users_from_blue_to_green() {
    let (_blue, _green, sy) = support::deployment(|b| b).await;
    let mut before: HashSet<usize> = HashSet::new();
    for pct in [0.0, 1.0, 5.0, 10.0, 25.0, 50.0, 75.0, 99.0, 100.0] {
        sy.set_green(pct).await;
        let (_, now) = green_share(&sy, 1000, 0).await;
        let moved_back: Vec<_> = before.difference(&now).collect();
        assert!(
            moved_back.is_empty(),
            "users moved green→blue at {pct}%: {moved_back:?}"
        );
        // And the same user sees the same colour on every request.
        let (_, again) = green_share(&sy, 1000, 0).await;
        assert_eq!(
            now, again,
            "colour changed without a weight change at {pct}%"
        );
        before = now;
    }
    assert_eq!(before.len(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_changes_under_keep_alive_load_fail_no_request() {
    let (blue, green, sy) = support::deployment(|b| b).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for worker in 0..8 {
        let (url, stop, ok, bad) = (sy.url("/"), stop.clone(), ok.clone(), bad.clone());
        load.push(tokio::spawn(async move {
            let client = Client::new();
            let mut i = 0u64;
            // Bounded: stops when told, or after 20k requests per worker.
            while !stop.load(SeqCst) && i < 20_000 {
                let cookie = format!("session=w{worker}-{i}");
                match client
                    .request(Method::GET, &url, &[("cookie", &cookie)], "")
                    .await
                {
                    Ok(r) if r.status == 200 && (r.text() == "blue" || r.text() == "green") => {
                        ok.fetch_add(1, SeqCst)
                    }
                    Ok(r) => panic!("bad response {} {}", r.status, r.text()),
                    Err(e) => {
                        eprintln!("transport error: {e}");
                        bad.fetch_add(1, SeqCst)
                    }
                };
                i += 1;
            }
        }));
    }
    for i in 0..200 {
        sy.set_green(((i * 37) % 101) as f64).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, SeqCst);
    for l in load {
        l.await.unwrap();
    }
    assert!(ok.load(SeqCst) > 200, "load ran: {}", ok.load(SeqCst));
    assert_eq!(bad.load(SeqCst), 0, "failed requests during weight changes");
    assert!(blue.requests() > 0 && green.requests() > 0);
}

/// Reads a response body to its end, counting bytes without keeping them.
async fn body_len(mut body: hyper::body::Incoming) -> u64 {
    use http_body_util::BodyExt;
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        n += frame.unwrap().into_data().map_or(0, |d| d.len() as u64);
    }
    n
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabyte_upload_and_download_stream_through_with_bounded_memory() {
    use http_body_util::StreamBody;
    let (_blue, _green, sy) = support::deployment(|b| b).await;
    const MB100: u64 = 100 * 1024 * 1024;

    // Download: 100 MB from the backend, counted as it arrives.
    let raw = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let resp = raw
        .get(sy.url(&format!("/bytes/{MB100}")).parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = body_len(resp.into_body()).await;
    assert_eq!(got, MB100);

    // Upload: 100 MB streamed to /echo and streamed back.
    let chunk = bytes::Bytes::from(vec![b'u'; 256 * 1024]);
    let chunks = (MB100 / chunk.len() as u64) as usize;
    let stream = futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::io::Error>(hyper::body::Frame::data(chunk.clone()))),
    );
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<StreamBody<_>>();
    let req = http::Request::post(sy.url("/echo"))
        .body(StreamBody::new(stream))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let echoed = body_len(resp.into_body()).await;
    assert_eq!(echoed, MB100);

    // 200 MB went through; the proxy never held more than a few MB of it.
    let peak_mib = vm_hwm_kib(sy.pid()) / 1024;
    assert!(
        peak_mib < 64,
        "proxy peak RSS {peak_mib} MiB: bodies must stream, not buffer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_passes_through() {
    use tokio_tungstenite::tungstenite::Message;
    let (_blue, _green, sy) = support::deployment(|b| b).await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", sy.proxy))
        .await
        .expect("websocket handshake through the proxy");
    assert_eq!(resp.status(), 101);
    for i in 0..20 {
        let msg = format!("hello {i}");
        ws.send(Message::text(msg.clone())).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), msg);
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_data(),
        vec![0u8, 1, 2, 255]
    );
    ws.close(None).await.unwrap();
}

/// A WebSocket to a pool whose upstreams speak HTTPS (`tls = { ca }`): the
/// upgrade goes over a verified TLS connection and messages flow both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_to_an_upstream_over_tls_passes_through() {
    use tokio_tungstenite::tungstenite::Message;
    let (acceptor, ca) = support::tls::localhost_acceptor(&[b"http/1.1"]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() || m.is_binary() {
                        let reply = Message::text(format!("tls echo: {}", m.into_text().unwrap()));
                        if ws.send(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca).unwrap();
    let pool = format!(
        "upstreams = [\"{upstream}\"]\ntls = {{ ca = \"ca.pem\", server_name = \"localhost\" }}\n"
    );
    let sy = Switchyard::builder()
        .dir(dir)
        .config(&format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n[pools.blue]\n{pool}[pools.green]\n{pool}[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{}\"\n[state]\npath = \"state.json\"\n",
            support::switchyard::TOKEN
        ))
        .start();
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", sy.proxy))
        .await
        .expect("websocket handshake through the proxy");
    assert_eq!(resp.status(), 101);
    for i in 0..5 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(
            back.into_text().unwrap().as_str(),
            format!("tls echo: hello {i}")
        );
    }
    ws.close(None).await.unwrap();
}

/// `keepalive_timeout` (nginx's upstream setting): an idle connection to an
/// upstream is reused within it and never after it, for bodiless requests
/// and requests with a body alike, so a
/// pool can stay below an upstream that closes idle connections early
/// (Node.js after 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_are_not_reused_past_the_pools_keepalive_timeout() {
    use std::sync::atomic::AtomicUsize;
    let accepted = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    {
        let accepted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                accepted.fetch_add(1, SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                        ))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
    }
    let sy = Switchyard::builder()
        .blue(upstream)
        .green(upstream)
        .pool_extra("keepalive_timeout = \"1s\"")
        .start();
    let both = async || {
        let get = sy.client.get(&sy.url("/")).await.unwrap();
        let post = sy
            .client
            .request(Method::POST, &sy.url("/"), &[], "a body")
            .await
            .unwrap();
        assert_eq!((get.text(), post.text()), ("ok".into(), "ok".into()));
    };
    both().await;
    let first = accepted.load(SeqCst);
    both().await;
    assert_eq!(
        accepted.load(SeqCst),
        first,
        "reused within keepalive_timeout"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    both().await;
    assert_eq!(
        accepted.load(SeqCst),
        2 * first,
        "new connections after keepalive_timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_end_to_end_with_http1_and_http2() {
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.key_pair.serialize_pem()).unwrap();
    let sy = Switchyard::builder()
        .dir(dir)
        .blue(blue.addr)
        .green(green.addr)
        .proxy_extra(r#"tls = { listen = "127.0.0.1:0", cert = "cert.pem", key = "key.pem" }"#)
        .start();
    let tls = sy.tls.expect("TLS listener");
    for h2 in [false, true] {
        let (resp, version) =
            support::client::https_get(tls, "localhost", &cert.cert.pem(), "/headers", h2)
                .await
                .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(
            version,
            if h2 {
                http::Version::HTTP_2
            } else {
                http::Version::HTTP_11
            }
        );
        let headers = resp.text();
        assert!(headers.contains("x-forwarded-proto: https"), "{headers}");
        assert!(headers.contains("host: localhost"), "{headers}");
    }
}

/// A certificate renewed in place (certbot's way) is served after
/// `SIGHUP`, by the proxy's and the admin API's TLS listeners alike; a
/// renewal that does not load leaves the served certificate alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_a_renewed_certificate_and_keeps_serving_when_the_new_files_are_bad() {
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let first = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let renewed = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let install = |dir: &std::path::Path, cert: &str, key: &str| {
        for prefix in ["", "admin-"] {
            std::fs::write(dir.join(format!("{prefix}cert.pem")), cert).unwrap();
            std::fs::write(dir.join(format!("{prefix}key.pem")), key).unwrap();
        }
    };
    install(
        dir.path(),
        &first.cert.pem(),
        &first.key_pair.serialize_pem(),
    );
    let sy = Switchyard::builder()
        .dir(dir)
        .blue(blue.addr)
        .green(green.addr)
        .proxy_extra(r#"tls = { listen = "127.0.0.1:0", cert = "cert.pem", key = "key.pem" }"#)
        .admin_extra(r#"tls = { cert = "admin-cert.pem", key = "admin-key.pem" }"#)
        .start();
    let (tls, admin) = (sy.tls.expect("TLS listener"), sy.admin);
    // The status of a request over HTTPS trusting only `ca`'s certificate.
    let status = async |addr, ca: &rcgen::CertifiedKey, path| {
        support::client::https_get(addr, "localhost", &ca.cert.pem(), path, false)
            .await
            .map(|(r, _)| r.status)
    };
    let serves = async |ca: &rcgen::CertifiedKey| {
        status(tls, ca, "/").await == Ok(200) && status(admin, ca, "/healthz").await == Ok(200)
    };
    assert!(serves(&first).await);
    assert!(status(tls, &renewed, "/").await.is_err());
    assert!(status(admin, &renewed, "/healthz").await.is_err());

    // Renewed in place, then SIGHUP: new connections get the new one.
    install(
        sy.dir.path(),
        &renewed.cert.pem(),
        &renewed.key_pair.serialize_pem(),
    );
    sy.signal("HUP");
    assert!(
        eventually(10, async || serves(&renewed).await).await,
        "{}",
        sy.log()
    );
    assert!(status(tls, &first, "/").await.is_err());
    assert!(status(admin, &first, "/healthz").await.is_err());

    // A renewal gone wrong (the old certificate with the new key): the
    // reload is rejected and the served certificate stays.
    install(
        sy.dir.path(),
        &first.cert.pem(),
        &renewed.key_pair.serialize_pem(),
    );
    sy.signal("HUP");
    assert!(
        eventually(10, async || sy
            .log()
            .contains("does not fit the certificate"))
        .await,
        "{}",
        sy.log()
    );
    assert!(sy.log().contains("reload rejected"), "{}", sy.log());
    assert!(serves(&renewed).await, "{}", sy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_are_set_and_hop_by_hop_headers_dropped() {
    let (_blue, _green, sy) = support::deployment(|b| b).await;
    let r = sy
        .client
        .request(
            Method::GET,
            &sy.url("/headers"),
            &[
                ("x-forwarded-for", "203.0.113.7"),
                ("connection", "x-private"),
                ("x-private", "secret"),
                ("proxy-authorization", "Basic Zm9vOmJhcg=="),
                ("x-app", "kept"),
            ],
            "",
        )
        .await
        .unwrap();
    let h = r.text();
    assert!(h.contains("x-forwarded-for: 203.0.113.7, 127.0.0.1"), "{h}");
    assert!(h.contains("x-forwarded-proto: http"), "{h}");
    assert!(h.contains("x-app: kept"), "{h}");
    assert!(!h.contains("x-private"), "{h}");
    assert!(!h.contains("proxy-authorization"), "{h}");

    // HTTP/2 (cleartext, prior knowledge) clients are served too.
    let r = Client::http2().get(&sy.url("/headers")).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains(&format!("host: {}", sy.proxy)),
        "{}",
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testers_pin_a_colour_with_the_override_header() {
    let (_blue, _green, sy) =
        support::deployment(|b| b.proxy_extra("override_header = \"x-switchyard-colour\"")).await;
    for _ in 0..20 {
        let r = sy
            .client
            .request(
                Method::GET,
                &sy.url("/"),
                &[("x-switchyard-colour", "green")],
                "",
            )
            .await
            .unwrap();
        assert_eq!(
            r.text(),
            "green",
            "green weight is 0 but the override asks for green"
        );
    }
    // Pinned requests stay out of green's statistics: testers cannot sway
    // the analysis of a rollout.
    let s = sy.status().await;
    assert_eq!(s["pools"]["green"]["window"]["requests"], 0, "{s}");

    // Off by default: any client could send it.
    let (_blue, _green, plain) = support::deployment(|b| b).await;
    let r = plain
        .client
        .request(
            Method::GET,
            &plain.url("/"),
            &[("x-switchyard-colour", "green")],
            "",
        )
        .await
        .unwrap();
    assert_eq!(r.text(), "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_stickiness_hands_out_a_bucket_and_keeps_it() {
    let (_blue, _green, sy) = support::deployment(|b| b.proxy_extra("sticky = \"cookie\"")).await;
    sy.set_green(50.0).await;
    let mut colours = HashSet::new();
    for _ in 0..40 {
        let first = sy.client.get(&sy.url("/")).await.unwrap();
        let set = first
            .header("set-cookie")
            .expect("a new client gets a cookie")
            .to_string();
        assert!(
            set.starts_with("switchyard=") && set.contains("HttpOnly"),
            "{set}"
        );
        let cookie = set.split(';').next().unwrap().to_string();
        for _ in 0..5 {
            let again = sy
                .client
                .request(Method::GET, &sy.url("/"), &[("cookie", &cookie)], "")
                .await
                .unwrap();
            assert_eq!(again.text(), first.text(), "cookie {cookie} changed colour");
            assert!(again.header("set-cookie").is_none());
        }
        colours.insert(first.text());
    }
    assert_eq!(colours.len(), 2, "both colours are handed out at 50%");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_is_ejected_by_health_checks_and_traffic_continues() {
    let blue1 = Backend::start("blue").await;
    let blue2 = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let sy = Switchyard::builder()
        .blue(blue1.addr)
        .blue(blue2.addr)
        .green(green.addr)
        .pool_extra(r#"health = { path = "/healthz", interval = "100ms", timeout = "500ms", fall = 2, rise = 2 }"#)
        .proxy_extra("retries = 0")
        .start();
    for _ in 0..20 {
        assert_eq!(sy.client.get(&sy.url("/")).await.unwrap().status, 200);
    }
    assert!(
        blue1.requests() > 0 && blue2.requests() > 0,
        "round robin uses both"
    );

    blue2.kill();
    let ejected = eventually(10, async || {
        let s = sy.status().await;
        let ups = s["pools"]["blue"]["upstreams"].as_array().unwrap().clone();
        ups.iter()
            .any(|u| u["address"] == blue2.addr.to_string() && u["healthy"] == false)
    })
    .await;
    assert!(ejected, "health checks never marked the dead upstream down");
    // With retries off, every request succeeding proves the dead one is skipped.
    let before = blue1.requests();
    for _ in 0..50 {
        let r = sy.client.get(&sy.url("/")).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(blue1.requests() - before, 50);

    // It comes back when it is healthy again.
    let _revived = Backend::start_on(blue2.addr, "blue").await;
    let back = eventually(10, async || {
        sy.status().await["pools"]["blue"]["healthy"] == 2
    })
    .await;
    assert!(back, "revived upstream not marked healthy again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_failure_is_retried_on_another_upstream() {
    // A port nobody listens on: connections are refused.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let live = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let sy = Switchyard::builder()
        .blue(dead)
        .blue(live.addr)
        .green(green.addr)
        .proxy_extra("fail_timeout = \"3s\"")
        .proxy_extra("override_header = \"x-switchyard-colour\"")
        .start();
    for _ in 0..30 {
        let r = sy.client.get(&sy.url("/")).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for _ in 0..10 {
        let r = sy
            .client
            .request(Method::POST, &sy.url("/"), &[], "data")
            .await
            .unwrap();
        assert_eq!(
            r.status, 200,
            "nothing was sent to the dead upstream, so POST retries too"
        );
    }
    // The refused upstream was ejected (nginx's max_fails = 1) ...
    let s = sy.status().await;
    let dead_status = s["pools"]["blue"]["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["address"] == dead.to_string())
        .unwrap()
        .clone();
    assert_eq!(dead_status["ejected"], true, "{s}");
    // Ejection is not failed health: one refused connect must not tell the
    // rollout controller that a pool has no healthy upstream.
    assert_eq!(s["pools"]["blue"]["healthy"], 2, "{s}");
    // ... and is readmitted once it answers again after fail_timeout.
    let revived = Backend::start_on(dead, "blue-revived").await;
    assert!(
        sy.eventually_serves("blue-revived", 15).await,
        "the ejected upstream never came back"
    );

    // Both upstreams dead: a clear 502 naming the failure (once the proxy
    // has noticed that its pooled connections to them are closed).
    revived.stop().await;
    live.stop().await;
    let clear_502 = eventually(10, async || {
        let r = sy.client.get(&sy.url("/")).await.unwrap();
        r.status == 502 && r.text().contains("no blue upstream could be reached")
    })
    .await;
    assert!(
        clear_502,
        "{}",
        sy.client.get(&sy.url("/")).await.unwrap().text()
    );
    let m = sy.metrics().await;
    let failures: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("switchyard_transport_failures_total{colour=\"blue\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(failures >= 1, "502s are counted as transport failures: {m}");

    // A pool of one dead upstream names the connect error, too.
    green.stop().await;
    let r = sy
        .client
        .request(
            Method::GET,
            &sy.url("/"),
            &[("x-switchyard-colour", "green")],
            "",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 502);
    assert!(
        r.text().contains("no green upstream could be reached"),
        "{}",
        r.text()
    );
}

/// An upstream that closes every connection right after its response,
/// without saying `Connection: close`: as one whose keep-alive timeout is
/// shorter than switchyard's.
async fn closing_upstream() -> std::net::SocketAddr {
    use tokio::io::AsyncWriteExt;
    support::backend::raw_upstream(|mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nclosed")
            .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_survive_upstreams_closing_idle_connections() {
    let blue = closing_upstream().await;
    let green = Backend::start("green").await;
    let sy = Switchyard::builder().blue(blue).green(green.addr).start();
    // Sequential requests reuse the pooled connection the upstream has just
    // closed; some race the close. None may fail.
    for i in 0..300 {
        let r = sy.client.get(&sy.url("/")).await.unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.text(), "closed");
    }
}
