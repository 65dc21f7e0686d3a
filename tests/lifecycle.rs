//! An operator's view of the process: checking configs, reloading with
//! SIGHUP, draining with SIGTERM, and the admin API's first line of defence.

#[path = "support/load.rs"]
mod load;
mod support;

use http::Method;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;
use support::{eventually, Backend, Switchyard};

fn switchyard(args: &[&str]) -> (i32, String, String) {
    let r = support::run(support::switchyard_command().args(args));
    (r.code, r.stdout, r.stderr)
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

/// Sends `GET /` on a new connection each time (`Connection: close`) until
/// `stop`, at most `max` times; returns (answered 200, failed).
async fn new_connection_load(
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    max: u64,
) -> (u64, u64, Vec<String>) {
    use std::sync::atomic::Ordering::Relaxed;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut ok, mut failed, mut why) = (0, 0, Vec::new());
    for _ in 0..max {
        if stop.load(Relaxed) {
            break;
        }
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
                .await
                .map_err(|e| format!("write: {e}"))?;
            let mut resp = Vec::new();
            s.read_to_end(&mut resp)
                .await
                .map_err(|e| format!("read: {e}"))?;
            let text = String::from_utf8_lossy(&resp).into_owned();
            if text.starts_with("HTTP/1.1 200") && text.ends_with("blue") {
                Ok(())
            } else {
                Err(format!("answer: {text:?}"))
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => {
                failed += 1;
                why.push(e);
            }
            Err(_) => {
                failed += 1;
                why.push("no answer within 10 s".into());
            }
        }
    }
    (ok, failed, why)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_hands_the_sockets_to_a_new_process_without_failing_a_request() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    let (_blue, _green, mut sy) =
        support::deployment(|b| b.proxy_extra("drain_timeout = \"5s\"")).await;
    let (proxy, admin) = (sy.proxy, sy.admin);
    sy.set_green(0.0).await;
    let old = sy.pid();

    // Keep-alive clients (pooled connections) and clients that connect
    // for every request, both bounded in count and time.
    let keep_alive = load::Load::start(sy.url("/"), 4, 200_000, Duration::from_secs(60));
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let fresh: Vec<_> = (0..2)
        .map(|_| tokio::spawn(new_connection_load(proxy, stop.clone(), 50_000)))
        .collect();
    assert!(eventually(10, async || keep_alive.counts().blue_ok > 200).await);

    let (code, new_pid) = tokio::task::block_in_place(|| sy.upgrade(30));
    assert_eq!(
        code,
        Some(0),
        "the old process drains and exits 0: {}",
        sy.stderr()
    );
    assert!(!Switchyard::alive(old));
    assert!(Switchyard::alive(new_pid), "{}", sy.stderr());
    assert!(
        eventually(5, async || sy
            .stderr()
            .contains("inherited from the previous process"))
        .await,
        "{}",
        sy.stderr()
    );
    // The new process writes its own line on the same stdout, with the
    // same addresses.
    let lines = sy.stdout();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0], lines[1]);

    // Traffic goes on against the new process, then stops.
    let after = keep_alive.counts().blue_ok;
    assert!(eventually(10, async || keep_alive.counts().blue_ok > after + 200).await);
    let counts = keep_alive.stop().await;
    stop.store(true, Relaxed);
    let (mut fresh_ok, mut fresh_failed, mut why) = (0, 0, Vec::new());
    for t in fresh {
        let (ok, failed, w) = t.await.unwrap();
        fresh_ok += ok;
        fresh_failed += failed;
        why.extend(w);
    }
    assert_eq!(
        counts.other_failures + counts.blue_5xx,
        0,
        "keep-alive requests failed across the upgrade: {counts:?}\n{}",
        sy.stderr()
    );
    assert_eq!(
        fresh_failed,
        0,
        "new-connection requests failed across the upgrade: {:?}\n{}",
        &why[..why.len().min(5)],
        sy.stderr()
    );
    assert!(
        counts.blue_ok > 400 && fresh_ok > 0,
        "{counts:?} {fresh_ok}"
    );

    // The admin API answers on the same port, from the new process, with
    // the state the old one left, and takes changes again.
    assert_eq!(sy.admin, admin);
    let fresh_client = support::Client::new();
    let r = fresh_client.get(&sy.admin_url("/healthz")).await.unwrap();
    assert_eq!(r.status, 200);
    sy.client = fresh_client;
    sy.set_green(30.0).await;
    assert_eq!(sy.status().await["weights"]["green"], 30.0);

    // And the new process can be upgraded in turn.
    let (code, newer) = tokio::task::block_in_place(|| sy.upgrade(30));
    assert_eq!(code, None, "the test's own child is already gone");
    assert!(Switchyard::alive(newer) && !Switchyard::alive(new_pid));
    sy.client = support::Client::new();
    assert_eq!(
        sy.status().await["weights"]["green"],
        30.0,
        "state survives"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_with_a_broken_config_on_disk_keeps_the_old_process_serving() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let builder = Switchyard::builder().blue(blue.addr).green(green.addr);
    let text = builder.config_text();
    let mut sy = builder.start();
    let old = sy.pid();
    std::fs::write(&sy.config_path, format!("{text}\n[oops\n")).unwrap();
    sy.signal("USR2");
    assert!(
        eventually(20, async || sy
            .stderr()
            .contains("upgrade failed, still serving"))
        .await,
        "{}",
        sy.stderr()
    );
    let log = sy.stderr();
    assert!(
        log.contains("switchyard.toml:"),
        "the new process said why: {log}"
    );
    assert!(log.contains("before serving"), "{log}");
    assert!(Switchyard::alive(old));
    for _ in 0..10 {
        assert_eq!(sy.client.get(&sy.url("/")).await.unwrap().text(), "blue");
    }
    // State changes are allowed again.
    sy.set_green(20.0).await;
    assert_eq!(sy.wait_exit(0), None, "still running");

    // Fixed on disk, the next SIGUSR2 upgrades.
    std::fs::write(&sy.config_path, &text).unwrap();
    let (code, _) = tokio::task::block_in_place(|| sy.upgrade(30));
    assert_eq!(code, Some(0));
    sy.client = support::Client::new();
    assert_eq!(sy.status().await["weights"]["green"], 20.0);
    assert_eq!(sy.client.get(&sy.url("/")).await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_socket_activation_serves_on_the_sockets_it_is_given() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    // The sockets systemd would have bound, passed as fds 3 and 4 of the
    // process whose pid is LISTEN_PID (bash sets it to its own, then execs).
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (paddr, aaddr) = (proxy.local_addr().unwrap(), admin.local_addr().unwrap());
    for l in [&proxy, &admin] {
        socket2::SockRef::from(l).set_cloexec(false).unwrap();
    }
    let fds = [proxy.as_raw_fd(), admin.as_raw_fd()];
    let builder = Switchyard::builder().blue(blue.addr).green(green.addr);
    let text = builder
        .config_text()
        .replacen("127.0.0.1:0", &paddr.to_string(), 1)
        .replacen("127.0.0.1:0", &aaddr.to_string(), 1);
    let dir = tempfile::tempdir().unwrap();
    let sy = Switchyard::builder()
        .blue(blue.addr)
        .green(green.addr)
        .dir(dir)
        .start_command(|bin, config| {
            std::fs::write(config, &text).unwrap();
            let mut c = Command::new("bash");
            c.arg("-c")
                .arg("export LISTEN_PID=$$ LISTEN_FDS=2 LISTEN_FDNAMES=proxy:admin; exec \"$0\" run -c \"$1\" 3<&\"$2\" 4<&\"$3\"")
                .arg(bin)
                .arg(config)
                .arg(fds[0].to_string())
                .arg(fds[1].to_string());
            c
        });
    // Ours are no longer needed: switchyard has its own.
    drop((proxy, admin));
    assert_eq!((sy.proxy, sy.admin), (paddr, aaddr), "{:?}", sy.stdout());
    assert!(
        eventually(5, async || sy.stderr().contains("from systemd")).await,
        "{}",
        sy.stderr()
    );
    assert_eq!(sy.client.get(&sy.url("/")).await.unwrap().text(), "blue");
    assert_eq!(sy.status().await["weights"]["blue"], 100.0);
}

#[test]
fn an_unusable_inherited_socket_is_refused_with_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sy.toml");
    std::fs::write(
        &cfg,
        "[pools.blue]\nupstreams = [\"127.0.0.1:9001\"]\n[pools.green]\nupstreams = [\"127.0.0.1:9002\"]\n[admin]\ntoken = \"t\"\n",
    )
    .unwrap();
    let run = |var: &str, val: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["run", "-c", cfg.to_str().unwrap()])
            .env(var, val)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run("SWITCHYARD_INHERIT_FDS", "proxy:99");
    assert_eq!(code, Some(1));
    assert!(err.contains("fd 99 (proxy) is not open"), "{err}");
    assert!(err.contains("unset it"), "{err}");
    // stdin is no socket; the check comes before anything is bound.
    let (code, err) = run("SWITCHYARD_INHERIT_FDS", "proxy:0");
    assert_eq!(code, Some(1));
    assert!(err.contains("standard input"), "{err}");
}

/// Under systemd (`Type=notify`, `NotifyAccess=all`): switchyard says when
/// it serves, when a reload starts and ends, and when it stops; on
/// `SIGUSR2` the new process names itself the service's main process, so
/// systemd follows it instead of taking the old one's exit for a stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_ready_reload_hand_over_and_stop_are_announced() {
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let sockets = tempfile::tempdir().unwrap();
    let path = sockets.path().join("notify");
    let systemd = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let said = || -> String {
        let mut buf = [0u8; 4096];
        let n = systemd.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut sy = Switchyard::builder()
        .blue(blue.addr)
        .green(green.addr)
        .start_command(|bin, config| {
            let mut c = Command::new(bin);
            c.arg("run")
                .arg("-c")
                .arg(config)
                .env("NOTIFY_SOCKET", &path);
            c
        });
    assert_eq!(said(), format!("MAINPID={}\nREADY=1", sy.pid()));

    sy.signal("HUP");
    let reloading = said();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC=")
            && reloading["RELOADING=1\nMONOTONIC_USEC=".len()..]
                .parse::<u64>()
                .is_ok(),
        "{reloading:?}"
    );
    assert_eq!(said(), "READY=1");

    let (code, new_pid) = tokio::task::block_in_place(|| sy.upgrade(30));
    assert_eq!(code, Some(0), "{}", sy.stderr());
    assert_eq!(said(), format!("MAINPID={new_pid}\nREADY=1"));
    assert!(sy.client.get(&sy.url("/")).await.is_ok());

    sy.signal("TERM");
    assert_eq!(said(), "STOPPING=1");
    // Not our child any more: watch the pid.
    assert!(
        eventually(30, async || !Switchyard::alive(new_pid)).await,
        "{}",
        sy.stderr()
    );
}
