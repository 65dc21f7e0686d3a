//! Runs the real `switchyard run` binary with a generated config in a temp
//! dir, and talks to its admin API.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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
}

/// A running switchyard process. Killed on drop.
pub struct Switchyard {
    child: Option<Child>,
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

    pub fn config_text(&self) -> String {
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
    pub fn start(mut self) -> Switchyard {
        let dir = self
            .dir
            .take()
            .unwrap_or_else(|| tempfile::tempdir().unwrap());
        let config_path = dir.path().join("switchyard.toml");
        std::fs::write(&config_path, self.config_text()).unwrap();
        Switchyard::spawn(dir, config_path)
    }
}

impl Switchyard {
    fn spawn(dir: tempfile::TempDir, config_path: PathBuf) -> Switchyard {
        let stderr_log = dir.path().join("stderr.log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_log)
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("run")
            .arg("-c")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("switchyard binary starts");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
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
        Switchyard::spawn(dir, self.config_path.clone())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
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
