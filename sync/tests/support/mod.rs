//! Test harness: real PostgreSQL clusters in temporary directories.
//!
//! [`PgCluster::start`] runs `initdb` and `pg_ctl start` (as the `postgres`
//! system user when the tests run as root, since PostgreSQL refuses root) on a
//! free 127.0.0.1 port with `wal_level=logical` and `fsync=off`, the unix socket
//! in the temporary directory. A cluster stops (`pg_ctl stop -m immediate`) when
//! dropped, and a watchdog also stops it when the test process exits, so the
//! clusters shared by a test binary through [`shared`] never outlive it.
//! Tests share the clusters and isolate themselves with fresh databases.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;
use switchyard_config::{DatabaseConfig, SyncMode};

/// One running PostgreSQL cluster.
pub struct PgCluster {
    dir: PathBuf,
    pub port: u16,
    bindir: PathBuf,
    as_postgres: bool,
}

fn bindir() -> PathBuf {
    if let Some(d) = std::env::var_os("SWITCHYARD_PG_BINDIR") {
        return PathBuf::from(d);
    }
    let out = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .expect("pg_config not found: install PostgreSQL (server and client)");
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        dir.join("initdb").is_file(),
        "{} has no initdb: install the PostgreSQL server package",
        dir.display()
    );
    dir
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local addr")
        .port()
}

impl PgCluster {
    /// Starts a new cluster (panics with the server log on failure).
    pub fn start() -> PgCluster {
        let bindir = bindir();
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("switchyard-pg-")
            .tempdir()
            .expect("temp dir")
            .keep();
        if as_postgres {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(st.success(), "chown postgres {}", dir.display());
        }
        let data = dir.join("data");
        let cluster = PgCluster {
            dir: dir.clone(),
            port: free_port(),
            bindir,
            as_postgres,
        };
        cluster.pg(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth=trust".as_ref(),
                "--encoding=UTF8".as_ref(),
                "--no-locale".as_ref(),
                "--no-sync".as_ref(),
            ],
        );
        let conf = format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             wal_level = logical\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             max_connections = 100\nmax_wal_size = 4GB\nlog_min_messages = warning\n",
            cluster.port,
            dir.display()
        );
        let conf_path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).expect("read postgresql.conf");
        text.push_str(&conf);
        std::fs::write(&conf_path, text).expect("write postgresql.conf");
        let log = dir.join("server.log");
        cluster.pg(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "start".as_ref(),
            ],
        );
        cluster.watchdog();
        cluster
    }

    fn command(&self, tool: &str) -> Command {
        let path = self.bindir.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn pg(&self, tool: &str, args: &[&std::ffi::OsStr]) {
        let out = self
            .command(tool)
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            panic!(
                "{tool} failed: {}\n{}\n{}\nserver log:\n{log}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Stops the cluster and removes its directory once this process is gone,
    /// however it ends.
    fn watchdog(&self) {
        let data = self.dir.join("data");
        let stop = format!(
            "{} {} -D {} stop -m immediate",
            if self.as_postgres {
                "runuser -u postgres --"
            } else {
                ""
            },
            self.bindir.join("pg_ctl").display(),
            data.display()
        );
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            dir = self.dir.display()
        );
        let _ = Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }

    /// The directory holding the cluster (data, log, socket).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A connection URL for database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name` and returns its URL.
    pub async fn create_db(&self, name: &str) -> String {
        let admin = connect(&self.url("postgres")).await;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e:?}"));
        self.url(name)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = self
            .command("pg_ctl")
            .args([
                "-D".as_ref(),
                data.as_os_str(),
                "stop".as_ref(),
                "-m".as_ref(),
                "immediate".as_ref(),
            ])
            .output();
    }
}

/// The blue and green clusters shared by every test in this binary.
pub fn shared() -> &'static (PgCluster, PgCluster) {
    static CLUSTERS: OnceLock<(PgCluster, PgCluster)> = OnceLock::new();
    CLUSTERS.get_or_init(|| (PgCluster::start(), PgCluster::start()))
}

/// Connects (panicking on failure) and drives the connection in the background.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e:?}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Runs SQL, panicking with the server's message on failure.
pub async fn sql(url: &str, sql: &str) {
    connect(url)
        .await
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", switchyard_sync::error::pg_message(&e)));
}

/// A fresh blue database and an empty green one, named after the test.
pub struct Pair {
    pub config: DatabaseConfig,
    pub migrations: tempfile::TempDir,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Pair {
    pub async fn new(test: &str) -> Pair {
        let (blue, green) = shared();
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let name = format!("{test}_{n}");
        let migrations = tempfile::tempdir().expect("temp dir");
        Pair {
            config: DatabaseConfig {
                blue: blue.create_db(&name).await,
                green: green.create_db(&name).await,
                migrations: migrations.path().to_path_buf(),
                mode: SyncMode::Snapshot,
                max_lag: Duration::from_secs(1),
                jobs: 2,
                cutover_timeout: Duration::from_secs(10),
            },
            migrations,
        }
    }

    pub fn blue(&self) -> &str {
        &self.config.blue
    }

    pub fn green(&self) -> &str {
        &self.config.green
    }
}
