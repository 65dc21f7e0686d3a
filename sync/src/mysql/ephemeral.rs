//! Throwaway MariaDB servers for tests and benchmarks:
//! `mariadb-install-db` into a temporary directory and `mariadbd` on a free
//! 127.0.0.1 port with the binary log in row format, GTIDs, its own
//! `server_id`, and durability off (never for data anyone needs). When
//! this process is root the server runs as the `mysql` system user. A
//! server stops when dropped, and a watchdog stops it and removes its
//! directory when this process exits, however it ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::scratch::{failed, free_port, is_root, server_dir, EphemeralError};

/// Where `mariadbd` and `mariadb-install-db` are, if installed.
pub fn find_server() -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str], dirs: &[&str]| {
        names.iter().find_map(|n| {
            dirs.iter()
                .map(|d| Path::new(d).join(n))
                .find(|p| p.is_file())
        })
    };
    let server = find(
        &["mariadbd", "mysqld"],
        &["/usr/sbin", "/usr/bin", "/usr/local/bin"],
    )?;
    let install = find(
        &["mariadb-install-db", "mysql_install_db"],
        &["/usr/bin", "/usr/local/bin", "/usr/sbin"],
    )?;
    Some((server, install))
}

/// One running throwaway MariaDB server.
pub struct EphemeralMariaDb {
    dir: PathBuf,
    port: u16,
    server_id: u32,
    child: Mutex<Option<Child>>,
    server: PathBuf,
    as_mysql: bool,
    time_zone: String,
}

static NEXT_ID: AtomicU32 = AtomicU32::new(1);

impl EphemeralMariaDb {
    /// Starts a server; blocks until it accepts connections.
    pub fn start() -> Result<EphemeralMariaDb, EphemeralError> {
        Self::start_in("SYSTEM")
    }

    /// Starts a server whose `default_time_zone` is `tz` (e.g. `+05:30`):
    /// its clients see `TIMESTAMP`s in that zone unless they set their own.
    pub fn start_in(tz: &str) -> Result<EphemeralMariaDb, EphemeralError> {
        let (server, install) = find_server().ok_or_else(|| {
            failed(
                "starting MariaDB",
                "mariadbd and mariadb-install-db not found: install Debian's mariadb-server package",
            )
        })?;
        let as_mysql = is_root();
        let dir = server_dir("switchyard-mariadb-", as_mysql.then_some("mysql"))?;
        let mut install_cmd = if as_mysql {
            let mut c = Command::new("runuser");
            c.args(["-u", "mysql", "--"]).arg(&install);
            c
        } else {
            Command::new(&install)
        };
        let out = install_cmd
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            // Passed on to the bootstrap server: its temporary tables in
            // this server's own directory, not in /tmp beside every other
            // bootstrap running at the same time (one failed with "Could
            // not remove temporary table '/tmp/#sql-temptable-…'").
            .arg(format!("--tmpdir={}", dir.display()))
            .current_dir(&dir)
            .output()
            .map_err(|e| failed("running mariadb-install-db", e.to_string()))?;
        if !out.status.success() {
            return Err(failed(
                "mariadb-install-db",
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        let port = free_port()?;
        // Distinct per server in this process, and unlikely to collide across processes.
        let server_id =
            (std::process::id() % 100_000) * 10 + NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let db = EphemeralMariaDb {
            dir,
            port,
            server_id,
            child: Mutex::new(None),
            server,
            as_mysql,
            time_zone: tz.to_string(),
        };
        db.spawn()?;
        db.watchdog();
        Ok(db)
    }

    fn spawn(&self) -> Result<(), EphemeralError> {
        let d = &self.dir;
        let mut cmd = if self.as_mysql {
            let mut c = Command::new("runuser");
            c.args(["-u", "mysql", "--"]).arg(&self.server);
            c
        } else {
            Command::new(&self.server)
        };
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--socket={}", d.join("sock").display()))
            .arg(format!("--pid-file={}", d.join("pid").display()))
            .arg(format!("--tmpdir={}", d.display()))
            .arg(format!("--default-time-zone={}", self.time_zone))
            .arg(format!("--log-error={}", d.join("server.log").display()))
            .arg(format!(
                "--log-bin={}",
                d.join("data").join("binlog").display()
            ))
            .arg(format!("--port={}", self.port))
            .arg(format!("--server-id={}", self.server_id))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                // MariaDB recommends strict GTID mode for replicas; the
                // stories run with it.
                "--gtid-strict-mode=ON",
                // A replica that may become the primary logs what it
                // applies, so its own writes continue the sequence.
                "--log-slave-updates=ON",
                "--binlog-format=ROW",
                "--binlog-row-image=FULL",
                "--local-infile=1",
                "--innodb-flush-log-at-trx-commit=0",
                "--sync-binlog=0",
                "--innodb-buffer-pool-size=128M",
                "--innodb-doublewrite=0",
                "--max-connections=300",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_general_ci",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .map_err(|e| failed("starting mariadbd", e.to_string()))?;
        *self.child.lock().expect("child") = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if started.elapsed() > Duration::from_secs(60) {
                let log = std::fs::read_to_string(d.join("server.log")).unwrap_or_default();
                return Err(failed("mariadbd did not start within 60 s", log));
            }
            if let Some(st) = self
                .child
                .lock()
                .expect("child")
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let log = std::fs::read_to_string(d.join("server.log")).unwrap_or_default();
                return Err(failed(format!("mariadbd exited ({st})"), log));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn watchdog(&self) {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; kill -9 $(cat {dir}/pid) >/dev/null 2>&1; sleep 0.2; rm -rf {dir}",
            pid = std::process::id(),
            dir = self.dir.display()
        );
        let _ = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    /// The TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's `server_id`.
    pub fn server_id(&self) -> u32 {
        self.server_id
    }

    /// The directory holding the server (data, log, socket).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A URL for database `db` (user root, no password).
    pub fn url(&self, db: &str) -> String {
        format!("mariadb://root@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name` and returns its URL.
    pub async fn create_db(&self, name: &str) -> Result<String, EphemeralError> {
        use mysql_async::prelude::Queryable;
        let opts = mysql_async::Opts::from_url(&format!("mysql://root@127.0.0.1:{}", self.port))
            .map_err(|e| failed("connecting", e.to_string()))?;
        let mut c = mysql_async::Conn::new(opts)
            .await
            .map_err(|e| failed(format!("creating database {name}"), e.to_string()))?;
        c.query_drop(format!("CREATE DATABASE `{name}`"))
            .await
            .map_err(|e| failed(format!("creating database {name}"), e.to_string()))?;
        let _ = c.disconnect().await;
        Ok(self.url(name))
    }
}

impl Drop for EphemeralMariaDb {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.lock().expect("child").take() {
            let pid = std::fs::read_to_string(self.dir.join("pid")).unwrap_or_default();
            if !pid.trim().is_empty() {
                let _ = Command::new("kill").args(["-9", pid.trim()]).status();
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
