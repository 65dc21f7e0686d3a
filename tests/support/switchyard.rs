//! Runs the real `switchyard run` binary with a generated config in a temp
//! dir, and talks to its admin API.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::client::{Client, Resp};

pub const TOKEN: &str = "test-token";

/// Builds a config for a switchyard process.
pub struct SwitchyardBuilder {
    blue: Vec<SocketAddr>,
    green: Vec<SocketAddr>,
    extra: String,
    pool_extra: String,
    proxy_extra: String,
    admin_extra: String,
    dir: Option<tempfile::TempDir>,
    /// The whole config file, instead of one built from the parts above.
    text: Option<String>,
}

/// A running switchyard process. Killed on drop (and so is a successor it
/// handed over to, see [`Switchyard::upgrade`]).
pub struct Switchyard {
    child: Option<Child>,
    /// The process serving now: the child, or its successor after an upgrade.
    pid: u32,
    /// A successor started by SIGUSR2 (not our child: killed by pid).
    successor: Option<u32>,
    /// Every line switchyard processes wrote on stdout.
    stdout: Arc<Mutex<Vec<String>>>,
    pub proxy: SocketAddr,
    pub tls: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub client: Client,
    stderr_log: PathBuf,
}

impl Switchyard {
    pub fn builder() -> SwitchyardBuilder {
        SwitchyardBuilder {
            blue: vec![],
            green: vec![],
            extra: String::new(),
            pool_extra: String::new(),
            proxy_extra: String::new(),
            admin_extra: String::new(),
            dir: None,
            text: None,
        }
    }
}

impl SwitchyardBuilder {
    pub fn blue(mut self, addr: SocketAddr) -> Self {
        self.blue.push(addr);
        self
    }
    pub fn green(mut self, addr: SocketAddr) -> Self {
        self.green.push(addr);
        self
    }
    /// Extra keys for each pool table, e.g. `health = { path = "/healthz", interval = "100ms" }`.
    pub fn pool_extra(mut self, toml: &str) -> Self {
        self.pool_extra = toml.to_string();
        self
    }
    /// Extra keys for `[proxy]`.
    pub fn proxy_extra(mut self, toml: &str) -> Self {
        self.proxy_extra.push_str(toml);
        self.proxy_extra.push('\n');
        self
    }
    /// Extra keys for `[admin]`.
    pub fn admin_extra(mut self, toml: &str) -> Self {
        self.admin_extra.push_str(toml);
        self.admin_extra.push('\n');
        self
    }
    /// Extra tables appended to the config.
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }
    /// Reuse a directory (and so its state file) from an earlier process.
    pub fn dir(mut self, dir: tempfile::TempDir) -> Self {
        self.dir = Some(dir);
        self
    }

    /// Use `text` as the whole config file (for layouts the builder's
    /// parts cannot express, e.g. pools that differ).
    pub fn config(mut self, text: &str) -> Self {
        self.text = Some(text.to_string());
        self
    }

    pub fn config_text(&self) -> String {
        if let Some(t) = &self.text {
            return t.clone();
        }
        let list = |v: &[SocketAddr]| {
            v.iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n{proxy}\n[pools.blue]\nupstreams = [{blue}]\n{pool}\n[pools.green]\nupstreams = [{green}]\n{pool}\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n{admin}\n[state]\npath = \"state.json\"\n\n{extra}",
            proxy = self.proxy_extra,
            blue = list(&self.blue),
            green = list(&self.green),
            pool = self.pool_extra,
            admin = self.admin_extra,
            extra = self.extra,
        )
    }

    /// Writes the config and starts `switchyard run`, waiting until it listens.
    pub fn start(self) -> Switchyard {
        self.start_command(|bin, config| {
            let mut c = Command::new(bin);
            c.arg("run").arg("-c").arg(config);
            c
        })
    }

    /// As [`SwitchyardBuilder::start`], with the command made by `make`
    /// from the binary's and the config's paths (e.g. through `sh -c` to
    /// set up inherited sockets). The process it starts must become
    /// `switchyard run` (exec), so its pid is switchyard's.
    pub fn start_command(mut self, make: impl FnOnce(&Path, &Path) -> Command) -> Switchyard {
        let dir = self
            .dir
            .take()
            .unwrap_or_else(|| tempfile::tempdir().unwrap());
        let config_path = dir.path().join("switchyard.toml");
        std::fs::write(&config_path, self.config_text()).unwrap();
        let cmd = make(Path::new(env!("CARGO_BIN_EXE_switchyard")), &config_path);
        Switchyard::spawn(dir, config_path, cmd)
    }
}

impl Switchyard {
    fn spawn(dir: tempfile::TempDir, config_path: PathBuf, mut cmd: Command) -> Switchyard {
        let stderr_log = dir.path().join("stderr.log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_log)
            .unwrap();
        // Unless the caller removed it on purpose (to test `[log] level`).
        if !cmd.get_envs().any(|(k, _)| k == "RUST_LOG") {
            cmd.env("RUST_LOG", "info");
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("switchyard binary starts");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        // The rest (a successor's line too) is collected in the background,
        // so the pipe never fills.
        let lines = Arc::new(Mutex::new(vec![line.trim_end().to_string()]));
        let collected = lines.clone();
        std::thread::spawn(move || {
            for l in stdout.lines() {
                let Ok(l) = l else { break };
                collected.lock().unwrap().push(l);
            }
        });
        if !line.starts_with("switchyard listening") {
            let _ = child.wait();
            panic!(
                "switchyard did not start: {line}\n{}",
                std::fs::read_to_string(&stderr_log).unwrap_or_default()
            );
        }
        let field = |name: &str| -> Option<SocketAddr> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .map(|u| u.split("://").nth(1).unwrap().parse().unwrap())
        };
        Switchyard {
            proxy: field("proxy").unwrap(),
            tls: field("tls"),
            admin: field("admin").unwrap(),
            pid: child.id(),
            successor: None,
            stdout: lines,
            child: Some(child),
            dir,
            config_path,
            client: Client::new(),
            stderr_log,
        }
    }

    /// Starts a new process on the same directory (config and state).
    pub fn restart(mut self) -> Switchyard {
        self.kill9();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        cmd.arg("run").arg("-c").arg(&self.config_path);
        Switchyard::spawn(dir, self.config_path.clone(), cmd)
    }

    /// Every line written on stdout so far (by this process and any
    /// successor).
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Sends SIGUSR2 and waits (at most `secs`) until a new process serves
    /// and this one has exited; returns the exit code of the old process
    /// and the new pid. The new process is killed when `self` is dropped.
    pub fn upgrade(&mut self, secs: u64) -> (Option<i32>, u32) {
        let old = self.pid;
        let before = self.log().matches("new_pid=").count();
        self.signal("USR2");
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        let new_pid = loop {
            let log = self.log();
            if let Some(pid) = log
                .split("new_pid=")
                .nth(before + 1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|p| p.parse::<u32>().ok())
            {
                break pid;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no new process served within {secs}s:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_ne!(new_pid, old);
        self.successor = Some(new_pid);
        let code = self.wait_exit(secs);
        self.pid = new_pid;
        (code, new_pid)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// The pid of the process serving now.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// `kill -9`, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(pid) = self.successor.take() {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    }

    /// Whether the process with `pid` is still running (not a zombie).
    pub fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().next())
                    .is_some_and(|state| state != "Z" && state != "X")
            })
            .unwrap_or(false)
    }

    /// Waits for the process to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self, secs: u64) -> Option<i32> {
        let child = self.child.as_mut()?;
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// The log without terminal colours, for matching `key=value` fields.
    pub fn log(&self) -> String {
        let raw = self.stderr();
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // ESC [ ... m
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    /// An admin API call with the right token.
    pub async fn admin(&self, method: http::Method, path: &str, body: &str) -> Resp {
        let auth = format!("Bearer {TOKEN}");
        self.client
            .request(
                method,
                &self.admin_url(path),
                &[
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                ],
                body.to_string(),
            )
            .await
            .unwrap()
    }

    /// Sets the green weight (percent) through the admin API.
    pub async fn set_green(&self, pct: f64) {
        let r = self
            .admin(
                http::Method::PUT,
                "/api/v1/weights",
                &format!("{{\"green\": {pct}}}"),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }

    /// Whether `GET /` through the proxy answers `body` within `secs`
    /// (for changes that take effect asynchronously: reloads, ejections).
    pub async fn eventually_serves(&self, body: &str, secs: u64) -> bool {
        super::eventually(secs, async || {
            self.client
                .get(&self.url("/"))
                .await
                .is_ok_and(|r| r.text() == body)
        })
        .await
    }

    /// Opens `GET /api/v1/events` and collects the server-sent events into
    /// a string in the background, for as long as the stream stays open.
    pub async fn events(&self) -> std::sync::Arc<std::sync::Mutex<String>> {
        use http_body_util::{BodyExt, Empty};
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Empty<bytes::Bytes>>();
        let req = http::Request::get(self.admin_url("/api/v1/events"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Empty::new())
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let t = text.clone();
        tokio::spawn(async move {
            let mut body = resp.into_body();
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(d) = frame.into_data() {
                    t.lock().unwrap().push_str(&String::from_utf8_lossy(&d));
                }
            }
        });
        text
    }

    /// The `/metrics` exposition, as text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(&self.admin_url("/metrics"))
            .await
            .unwrap()
            .text()
    }

    /// A per-colour counter of `/metrics` (`name{colour="…"}`).
    pub async fn colour_metric(&self, name: &str, colour: &str) -> u64 {
        let m = self.metrics().await;
        let prefix = format!("{name}{{colour=\"{colour}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in /metrics:\n{m}"))
            .parse()
            .unwrap()
    }

    pub async fn status(&self) -> serde_json::Value {
        let r = self.admin(http::Method::GET, "/api/v1/status", "").await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }
}

impl Drop for Switchyard {
    fn drop(&mut self) {
        self.kill9();
    }
}
