//! The admin API's contract: who may call it, what it accepts, and what it
//! refuses in which state. Against a real switchyard process.

mod support;

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use hyper_util::client::legacy::Client as Legacy;
use hyper_util::rt::TokioExecutor;
use support::switchyard::TOKEN;
use support::{eventually, Backend, Switchyard};

/// Steps that never advance by themselves during a test.
const SLOW: &str = r#"
[rollout]
steps = [10, 50, 100]
bake = "1h"

[rollout.analysis]
window = "2s"
interval = "50ms"
min_requests = 10
"#;

async fn start() -> (Backend, Backend, Switchyard) {
    let (blue, green, sy) = support::deployment(|b| b.extra(SLOW)).await;
    (blue, green, sy)
}

/// The status code of a request, without reading the body (the events
/// endpoint never ends).
async fn status_of(sy: &Switchyard, method: &Method, path: &str, auth: Option<&str>) -> u16 {
    let client = Legacy::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = http::Request::builder()
        .method(method.clone())
        .uri(sy.admin_url(path));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let body = if method == Method::PUT {
        Bytes::from_static(b"{\"green\": 0}")
    } else {
        Bytes::new()
    };
    let resp = client
        .request(req.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    resp.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_demands_the_right_token() {
    let (_b, _g, sy) = start().await;
    let protected = [
        (Method::GET, "/api/v1/status"),
        (Method::PUT, "/api/v1/weights"),
        (Method::POST, "/api/v1/rollout/start"),
        (Method::POST, "/api/v1/rollout/pause"),
        (Method::POST, "/api/v1/rollout/resume"),
        (Method::POST, "/api/v1/rollout/promote"),
        (Method::POST, "/api/v1/rollout/abort"),
        (Method::GET, "/api/v1/history"),
        (Method::GET, "/api/v1/events"),
    ];
    let right = format!("Bearer {TOKEN}");
    let same_length = format!("Bearer {}", "x".repeat(TOKEN.len()));
    for (m, p) in &protected {
        for wrong in [
            None,
            Some("Bearer nope"),
            Some(same_length.as_str()),
            Some(TOKEN),
            Some("Basic dGVzdA=="),
        ] {
            assert_eq!(
                status_of(&sy, m, p, wrong).await,
                401,
                "{m} {p} with {wrong:?}"
            );
        }
        let ok = status_of(&sy, m, p, Some(&right)).await;
        assert!(
            ok == 200 || ok == 409,
            "{m} {p} with the right token answered {ok}"
        );
    }
    // Open endpoints.
    assert_eq!(status_of(&sy, &Method::GET, "/healthz", None).await, 200);
    assert_eq!(status_of(&sy, &Method::GET, "/metrics", None).await, 200);
    // A 401 body says what to do, as JSON.
    let r = sy
        .client
        .get(&sy.admin_url("/api/v1/status"))
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert!(r.json()["error"].as_str().unwrap().contains("Bearer"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_out_of_range_bodies_get_400_and_change_nothing() {
    let (_b, _g, sy) = start().await;
    sy.set_green(20.0).await;
    let before = sy.status().await;
    let history = sy.admin(Method::GET, "/api/v1/history", "").await.json();
    let big = format!("{{\"green\": 1, \"pad\": \"{}\"}}", "x".repeat(100_000));
    let bad_weights = [
        "",
        "nope",
        "[]",
        "50",
        "{}",
        "{\"green\": 101}",
        "{\"green\": -1}",
        "{\"green\": \"50\"}",
        "{\"green\": null}",
        "{\"green\": 50, \"blue\": 50}",
        "{\"blue\": 50}",
        "{\"green\": 5",
    ];
    for body in bad_weights {
        let r = sy.admin(Method::PUT, "/api/v1/weights", body).await;
        assert_eq!(r.status, 400, "PUT weights {:.60}: {}", body, r.text());
        assert!(r.json()["error"].is_string());
    }
    // Too large is 413, not 400.
    let r = sy.admin(Method::PUT, "/api/v1/weights", &big).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(
        r.json()["error"].as_str().unwrap().contains("64 KiB"),
        "{}",
        r.text()
    );
    let bad_actions = [
        "{bad",
        "[]",
        "\"why\"",
        "{\"reason\": 5}",
        "{\"why\": \"x\"}",
        "{\"reason\": \"x\", \"force\": true}",
    ];
    for body in bad_actions {
        for action in ["start", "abort"] {
            let r = sy
                .admin(Method::POST, &format!("/api/v1/rollout/{action}"), body)
                .await;
            assert_eq!(r.status, 400, "POST {action} {body}: {}", r.text());
        }
    }
    let after = sy.status().await;
    assert_eq!(after["weights"], before["weights"]);
    assert_eq!(after["rollout"]["state"], "idle");
    assert_eq!(
        sy.admin(Method::GET, "/api/v1/history", "").await.json(),
        history,
        "no event was recorded"
    );
    // A good body with a reason is accepted and the reason recorded.
    let r = sy
        .admin(
            Method::POST,
            "/api/v1/rollout/start",
            "{\"reason\": \"release 42\"}",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["rollout"]["reason"], "release 42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_not_allowed_in_a_state_get_409() {
    let (_b, _g, sy) = start().await;
    let act = async |a: &str| {
        sy.admin(Method::POST, &format!("/api/v1/rollout/{a}"), "")
            .await
    };
    let state = async || {
        sy.status().await["rollout"]["state"]
            .as_str()
            .unwrap()
            .to_string()
    };

    for a in ["pause", "resume", "abort"] {
        let r = act(a).await;
        assert_eq!(r.status, 409, "{a} in idle: {}", r.text());
        assert!(r.json()["error"].as_str().unwrap().contains("idle"));
    }
    assert_eq!(act("start").await.status, 200);
    assert!(eventually(10, async || state().await == "progressing").await);
    assert_eq!(act("start").await.status, 409, "start while progressing");
    assert_eq!(act("resume").await.status, 409, "resume while progressing");

    // A manual weight pauses the rollout; resume continues from the step at
    // or above the weight.
    sy.set_green(30.0).await;
    assert_eq!(state().await, "paused");
    assert_eq!(act("pause").await.status, 409, "pause while paused");
    assert_eq!(act("start").await.status, 409, "start while paused");
    assert_eq!(act("resume").await.status, 200);
    let s = sy.status().await;
    assert_eq!(
        (
            s["rollout"]["state"].as_str(),
            s["rollout"]["step"].as_u64(),
            s["weights"]["green"].as_f64()
        ),
        (Some("progressing"), Some(1), Some(50.0))
    );

    assert_eq!(act("abort").await.status, 200);
    assert_eq!(sy.status().await["weights"]["green"], 0.0);
    for a in ["abort", "pause", "resume", "promote"] {
        assert_eq!(act(a).await.status, 409, "{a} when aborted");
    }
    assert_eq!(act("start").await.status, 200);
    assert_eq!(act("promote").await.status, 200);
    assert!(eventually(10, async || state().await == "promoted").await);
    for a in ["promote", "abort", "pause", "resume"] {
        assert_eq!(act(a).await.status, 409, "{a} when promoted");
    }
    assert_eq!(act("explode").await.status, 404);
    assert_eq!(
        sy.admin(Method::DELETE, "/api/v1/weights", "").await.status,
        405
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reconnecting_with_last_event_id_gets_what_it_missed_first() {
    use http_body_util::BodyExt;
    let (_blue, _green, sy) = start().await;
    for action in ["start", "pause", "resume"] {
        let r = sy
            .admin(Method::POST, &format!("/api/v1/rollout/{action}"), "")
            .await;
        assert_eq!(r.status, 200, "{action}: {}", r.text());
    }
    let h = sy.admin(Method::GET, "/api/v1/history", "").await.json();
    let seqs: Vec<u64> = h["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.len() >= 3, "{h:#}");
    let first = seqs[0];
    // A stream that saw the first event reconnects: everything after it
    // comes first, in order, then the stream stays open for new ones.
    let client = Legacy::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = http::Request::get(sy.admin_url("/api/v1/events"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("last-event-id", first.to_string())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut text = String::new();
    let want: Vec<String> = seqs[1..].iter().map(|s| format!("id: {s}\n")).collect();
    let got_all = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while !want.iter().all(|w| text.contains(w.as_str())) {
            match body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        text.push_str(&String::from_utf8_lossy(&d));
                    }
                }
                _ => break,
            }
        }
    })
    .await;
    assert!(got_all.is_ok(), "missed events not replayed: {text}");
    assert!(
        !text.contains(&format!("id: {first}\n")),
        "nothing already seen: {text}"
    );
    let positions: Vec<usize> = want
        .iter()
        .map(|w| text.find(w.as_str()).unwrap())
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "in order: {text}"
    );
    // And a new event arrives on the same stream.
    sy.admin(Method::POST, "/api/v1/rollout/pause", "").await;
    let live = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while !text.contains("event: paused\nid: ") || text.matches("event: paused").count() < 2 {
            match body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        text.push_str(&String::from_utf8_lossy(&d));
                    }
                }
                _ => break,
            }
        }
    })
    .await;
    assert!(live.is_ok(), "the live event after the replay: {text}");
}
