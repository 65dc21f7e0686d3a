//! Issue 10, logs: the operator turns the access log on and switches to
//! JSON with a SIGHUP, and every line is what an SRE's log pipeline can
//! parse: one line per request (colour, upstream, status, seconds, bytes),
//! no ANSI colour codes when stderr is not a terminal, no `Some(..)`.

mod support;

use http::Method;
use std::time::Duration;
use support::{eventually, Backend, Switchyard};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn access_lines(log: &str) -> Vec<serde_json::Value> {
    json_lines(log)
        .into_iter()
        .filter(|v| v["target"] == "switchyard::access")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_turns_on_the_access_log_and_json_and_no_line_carries_debug_noise() {
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let builder = Switchyard::builder()
        .blue(blue.addr)
        .green(green.addr)
        .extra("[log]\nlevel = \"info\"\nformat = \"text\"\n");
    let text = builder.config_text();
    let sy = builder.start_command(|bin, config| {
        let mut c = std::process::Command::new(bin);
        c.arg("run").arg("-c").arg(config).env_remove("RUST_LOG");
        c
    });
    for _ in 0..3 {
        assert_eq!(sy.client.get(&sy.url("/")).await.unwrap().text(), "blue");
    }
    let before = sy.stderr();
    assert!(before.contains("switchyard started"), "{before}");
    assert!(
        !before.contains('\x1b'),
        "ANSI codes in a log file: {before:?}"
    );
    assert!(
        !before.contains("switchyard::access"),
        "the access log is off by default: {before}"
    );

    // JSON and the access log, by SIGHUP.
    let json = text.replace(
        "[log]\nlevel = \"info\"\nformat = \"text\"\n",
        "[log]\nlevel = \"info\"\nformat = \"json\"\naccess = true\n",
    );
    assert_ne!(json, text);
    std::fs::write(&sy.config_path, &json).unwrap();
    sy.signal("HUP");
    assert!(
        eventually(10, async || sy.stderr().contains("configuration reloaded")).await,
        "{}",
        sy.stderr()
    );
    let reloaded_at = sy.stderr().len();

    let r = sy.client.get(&sy.url("/hello?x=1")).await.unwrap();
    assert_eq!(r.status, 200);
    let body_len = r.body.len() as u64;
    // One refused before routing (HTTP/1.1 without Host), answered by
    // switchyard itself.
    let mut s = tokio::net::TcpStream::connect(sy.proxy).await.unwrap();
    s.write_all(b"GET /nohost HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 400"));
    // A rollout event with a reason: logged as a plain string.
    let r = sy
        .admin(
            Method::POST,
            "/api/v1/rollout/start",
            r#"{"reason": "release 42"}"#,
        )
        .await;
    assert!(r.status < 300, "{}", r.text());
    let r = sy
        .admin(
            Method::POST,
            "/api/v1/rollout/abort",
            r#"{"reason": "changed my mind"}"#,
        )
        .await;
    assert!(r.status < 300, "{}", r.text());

    let mut lines = Vec::new();
    let found = eventually(10, async || {
        let log = sy.stderr()[reloaded_at..].to_string();
        lines = access_lines(&log);
        lines.len() >= 2 && log.contains("changed my mind")
    })
    .await;
    let log = sy.stderr()[reloaded_at..].to_string();
    assert!(found, "{log}");
    let hello = lines
        .iter()
        .find(|l| l["fields"]["uri"] == "/hello?x=1")
        .unwrap_or_else(|| panic!("{log}"));
    let f = &hello["fields"];
    assert_eq!(f["status"], 200, "{hello}");
    assert_eq!(f["method"], "GET");
    assert_eq!(f["colour"], "blue");
    assert_eq!(f["upstream"], blue.addr.to_string());
    assert_eq!(f["bytes"], body_len, "{hello}");
    assert_eq!(f["complete"], true);
    assert!(f["seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(f["client"], "127.0.0.1");
    let refused = lines
        .iter()
        .find(|l| l["fields"]["uri"] == "/nohost")
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(refused["fields"]["status"], 400);
    assert_eq!(refused["fields"]["upstream"], "-");

    for v in json_lines(&log) {
        let line = v.to_string();
        assert!(!line.contains("Some("), "{line}");
        assert!(!line.contains("None"), "{line}");
    }
    let abort = json_lines(&log)
        .into_iter()
        .find(|v| v["fields"]["reason"] == "changed my mind")
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(abort["fields"]["kind"], "aborted", "{abort}");

    // A higher level hides info lines, but not the access log.
    std::fs::write(
        &sy.config_path,
        json.replace("level = \"info\"", "level = \"warn\""),
    )
    .unwrap();
    sy.signal("HUP");
    // The reload's own confirmation is an info line: wait on the effect.
    let quiet_from = sy.stderr().len();
    assert!(
        eventually(10, async || {
            let _ = sy.client.get(&sy.url("/after-warn")).await;
            sy.stderr()[quiet_from..].contains("/after-warn")
        })
        .await,
        "{}",
        sy.stderr()
    );
    let mark = sy.stderr().len();
    sy.admin(
        Method::POST,
        "/api/v1/rollout/start",
        r#"{"reason": "quiet"}"#,
    )
    .await;
    let _ = sy.client.get(&sy.url("/last")).await;
    assert!(
        eventually(10, async || sy.stderr()[mark..].contains("/last")).await,
        "{}",
        sy.stderr()
    );
    let tail = sy.stderr()[mark..].to_string();
    assert!(
        !tail.contains("rollout event"),
        "level warn hides info lines: {tail}"
    );

    // A setting read only at start is not silently ignored by a reload.
    let moved = json
        .replace("level = \"info\"", "level = \"warn\"")
        .replace("path = \"state.json\"", "path = \"elsewhere.json\"");
    std::fs::write(&sy.config_path, moved).unwrap();
    sy.signal("HUP");
    assert!(
        eventually(10, async || sy
            .stderr()
            .contains("[state] path changed in the config"))
        .await,
        "{}",
        sy.stderr()
    );
}
