//! An operator's view of the process: checking configs, reloading with
//! SIGHUP, draining with SIGTERM, and the admin API's first line of defence.

mod support;

use http::Method;
use std::process::Command;
use std::time::Duration;
use support::{eventually, Backend, Switchyard};

fn switchyard(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_a_good_config_and_names_line_and_column_of_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[pools.blue]\nupstreams = [\"127.0.0.1:9001\"]\n[pools.green]\nupstreams = [\"127.0.0.1:9002\"]\n[admin]\ntoken = \"t\"\n",
    )
    .unwrap();
    let (code, out, err) = switchyard(&["check", "-c", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("OK"), "{out}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[pools.blue]\nupstreams = [\"127.0.0.1:9001\"]\n[pools.green]\nupstreams = [\"127.0.0.1:9002\"]\n[admin]\ntoken = \"t\"\n[rollout]\nbake = \"forever\"\n",
    )
    .unwrap();
    let (code, _, err) = switchyard(&["check", "-c", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("bad.toml:8:8:"),
        "stderr must name file:line:col: {err}"
    );
    assert!(err.contains("duration"), "{err}");

    // `run` refuses the same file the same way, before binding anything.
    let (code, _, err) = switchyard(&["run", "-c", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("bad.toml:8:8:"), "{err}");

    let (code, _, err) = switchyard(&[
        "check",
        "-c",
        dir.path().join("missing.toml").to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read config file"), "{err}");
}

#[test]
fn check_rejects_an_unusable_tls_certificate_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    let cfg = dir.path().join("sy.toml");
    std::fs::write(
        &cfg,
        "[proxy]\ntls = { listen = \"127.0.0.1:0\", cert = \"cert.pem\", key = \"key.pem\" }\n[pools.blue]\nupstreams = [\"127.0.0.1:9001\"]\n[pools.green]\nupstreams = [\"127.0.0.1:9002\"]\n[admin]\ntoken = \"t\"\n",
    )
    .unwrap();
    let (code, _, err) = switchyard(&["check", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("proxy.tls") && err.contains("cert.pem"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_good_config_and_rejects_a_bad_one_without_disruption() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let blue2 = Backend::start("blue-2").await;
    let builder = Switchyard::builder().blue(blue.addr).green(green.addr);
    let text = builder.config_text();
    let sy = builder.start();
    assert_eq!(sy.client.get(&sy.url("/")).await.unwrap().text(), "blue");

    // A broken file: logged, and the old config keeps serving.
    std::fs::write(&sy.config_path, format!("{text}\n[oops\n")).unwrap();
    sy.signal("HUP");
    assert!(
        eventually(10, async || sy.stderr().contains("reload rejected")).await,
        "{}",
        sy.stderr()
    );
    assert!(
        sy.stderr().contains("switchyard.toml:"),
        "error names the file: {}",
        sy.stderr()
    );
    for _ in 0..10 {
        assert_eq!(sy.client.get(&sy.url("/")).await.unwrap().text(), "blue");
    }

    // A good file with a different blue upstream takes effect.
    let new_text = text.replace(&blue.addr.to_string(), &blue2.addr.to_string());
    std::fs::write(&sy.config_path, new_text).unwrap();
    sy.signal("HUP");
    assert!(
        sy.eventually_serves("blue-2", 10).await,
        "reloaded upstream never served: {}",
        sy.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish_then_exits() {
    let (blue, _green, mut sy) = support::deployment(|b| b).await;
    blue.delay(Duration::from_millis(800));
    let url = sy.url("/");
    let client = sy.client.clone();
    let in_flight = tokio::spawn(async move { client.get(&url).await });
    assert!(eventually(5, async || blue.requests() == 1).await);
    sy.signal("TERM");
    let r = in_flight
        .await
        .unwrap()
        .expect("in-flight request completes during drain");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "blue");
    let code = tokio::task::spawn_blocking(move || sy.wait_exit(10))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "switchyard exits cleanly after draining");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_demands_the_token_and_rejects_bad_weights() {
    let (_blue, _green, sy) = support::deployment(|b| b).await;
    let c = &sy.client;
    assert_eq!(c.get(&sy.admin_url("/healthz")).await.unwrap().status, 200);
    let r = c
        .request(
            Method::PUT,
            &sy.admin_url("/api/v1/weights"),
            &[],
            "{\"green\": 10}",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert!(r.json()["error"].is_string());
    let r = c
        .request(
            Method::PUT,
            &sy.admin_url("/api/v1/weights"),
            &[("authorization", "Bearer wrong")],
            "{\"green\": 10}",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    let r = sy
        .admin(Method::PUT, "/api/v1/weights", "{\"green\": 150}")
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json()["error"].as_str().unwrap().contains("0 to 100"),
        "{}",
        r.text()
    );
    let s = sy.status().await;
    assert_eq!(
        s["weights"]["green"], 0.0,
        "a rejected body changes nothing"
    );
    assert_eq!(s["weights"]["blue"], 100.0);
    sy.set_green(30.0).await;
    let s = sy.status().await;
    assert_eq!(s["weights"]["green"], 30.0);
    assert_eq!(s["weights"]["blue"], 70.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_and_removes_the_database_gate() {
    let unreachable = "[database]\nblue = \"postgres://app@127.0.0.1:1/app\"\ngreen = \"postgres://app@127.0.0.1:1/app\"\nmode = \"snapshot\"\n";
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let builder = Switchyard::builder().blue(blue.addr).green(green.addr);
    let without = builder.config_text();
    let sy = builder.extra(unreachable).start();
    let holds = async || {
        let s = sy.status().await;
        s["database"]["gate"] == "hold"
            && s["database"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("cannot read"))
    };
    assert!(eventually(10, holds).await, "{}", sy.status().await);

    std::fs::write(&sy.config_path, &without).unwrap();
    sy.signal("HUP");
    assert!(
        eventually(10, async || sy.status().await["database"].is_null()).await,
        "{}",
        sy.status().await
    );

    std::fs::write(&sy.config_path, format!("{without}\n{unreachable}")).unwrap();
    sy.signal("HUP");
    assert!(eventually(10, holds).await, "{}", sy.status().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_even_with_an_events_stream_open() {
    let (_blue, _green, mut sy) =
        support::deployment(|b| b.proxy_extra("drain_timeout = \"1s\"")).await;
    let _events = sy.events().await;
    sy.signal("TERM");
    let code = tokio::task::spawn_blocking(move || sy.wait_exit(15))
        .await
        .unwrap();
    assert_eq!(
        code,
        Some(0),
        "an open SSE stream must not keep switchyard alive"
    );
}

#[test]
fn check_reports_every_error_in_the_file_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(
        &path,
        "[proxy]\nlisten = \"127.0.0.1:8080\"\nsticky = \"sometimes\"\n\
         [pools.blue]\nupstreams = [\"127.0.0.1:9001\"]\n[pools.green]\nupstreams = [\"127.0.0.1:9002\"]\n\
         [admin]\nlisten = \"127.0.0.1:9090\"\ntoken = \"t\"\n\
         [rollout]\nbake = \"a while\"\n\
         [database]\nblue = \"postgres://a@h/app\"\ngreen = \"postgres://b@h/app\"\ncutover_timeout = \"5m\"\n",
    )
    .unwrap();
    let (code, out, err) = switchyard(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    let file = path.display().to_string();
    let located: Vec<&str> = err.lines().filter(|l| l.starts_with(&file)).collect();
    assert_eq!(
        located.len(),
        3,
        "three errors, each with file:line:col: {err}"
    );
    assert!(located[0].starts_with(&format!("{file}:3:10:")), "{err}");
    assert!(located[1].starts_with(&format!("{file}:12:8:")), "{err}");
    assert!(
        located[2].starts_with(&format!("{file}:16:19:"))
            && located[2].contains("releases held writes"),
        "{err}"
    );
    assert!(err.contains(&format!("3 errors in {file}")), "{err}");
}
