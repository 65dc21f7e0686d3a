//! Throwaway PostgreSQL clusters: `initdb` into a temporary directory and
//! `pg_ctl start` on a free 127.0.0.1 port with `wal_level=logical` and
//! `fsync=off`. Used by `switchyard demo` and by the test harness; never for
//! data anyone needs (fsync is off).
//!
//! PostgreSQL refuses to run as root, so when this process is root the server
//! programs run as the `postgres` system user (`runuser -u postgres --`) in a
//! directory that user owns. A cluster stops when dropped, and a watchdog
//! stops it and removes its directory when this process exits, however it
//! ends, so none outlives its owner.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub use crate::scratch::EphemeralError;
use crate::scratch::{failed, free_port, is_root, server_dir};

/// One running throwaway cluster.
pub struct EphemeralCluster {
    dir: PathBuf,
    port: u16,
    bindir: PathBuf,
    as_postgres: bool,
}

/// The directory holding `initdb` and `pg_ctl`: `SWITCHYARD_PG_BINDIR`, or
/// what `pg_config --bindir` says.
pub fn find_bindir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("SWITCHYARD_PG_BINDIR") {
        // A list: the first directory with the server programs.
        return std::env::split_paths(&d).find(|d| d.join("initdb").is_file());
    }
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    dir.join("initdb").is_file().then_some(dir)
}

impl EphemeralCluster {
    /// Starts a new cluster with the programs in `bindir` (see
    /// [`find_bindir`]). Blocks until the server accepts connections.
    pub fn start(bindir: &Path) -> Result<EphemeralCluster, EphemeralError> {
        Self::start_with(bindir, None)
    }

    /// Starts a cluster that accepts TCP connections over TLS only, with
    /// the given server certificate and key (PEM).
    pub fn start_tls(
        bindir: &Path,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<EphemeralCluster, EphemeralError> {
        Self::start_with(bindir, Some((cert_pem, key_pem)))
    }

    fn start_with(
        bindir: &Path,
        tls: Option<(&str, &str)>,
    ) -> Result<EphemeralCluster, EphemeralError> {
        if !bindir.join("initdb").is_file() {
            return Err(EphemeralError::NotFound);
        }
        let as_postgres = is_root();
        let dir = server_dir("switchyard-pg-", as_postgres.then_some("postgres"))?;
        let cluster = EphemeralCluster {
            dir: dir.clone(),
            port: free_port()?,
            bindir: bindir.to_path_buf(),
            as_postgres,
        };
        let data = dir.join("data");
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
        )?;
        let conf = format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             wal_level = logical\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             max_connections = 200\nmax_wal_size = 4GB\nlog_min_messages = warning\n\
             max_replication_slots = 64\nmax_wal_senders = 64\nmax_logical_replication_workers = 32\n\
             max_worker_processes = 48\nmax_slot_wal_keep_size = 4GB\nwal_sender_timeout = 10s\n",
            cluster.port,
            dir.display()
        );
        let conf_path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path)
            .map_err(|e| failed(format!("reading {}", conf_path.display()), e.to_string()))?;
        text.push_str(&conf);
        if let Some((cert, key)) = tls {
            let write = |name: &str, body: &str| {
                let p = data.join(name);
                std::fs::write(&p, body)
                    .map_err(|e| failed(format!("writing {}", p.display()), e.to_string()))?;
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
                if as_postgres {
                    let _ = Command::new("chown")
                        .arg("postgres:postgres")
                        .arg(&p)
                        .status();
                }
                Ok::<_, EphemeralError>(())
            };
            write("server.crt", cert)?;
            write("server.key", key)?;
            text.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
            // TCP only over TLS; the unix socket stays open for pg_ctl.
            write(
                "pg_hba.conf",
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl replication all 127.0.0.1/32 trust\n\
                 hostnossl all all 127.0.0.1/32 reject\nhostnossl replication all 127.0.0.1/32 reject\n",
            )?;
        }
        std::fs::write(&conf_path, text)
            .map_err(|e| failed(format!("writing {}", conf_path.display()), e.to_string()))?;
        cluster.watchdog();
        cluster.start_server()?;
        Ok(cluster)
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

    fn pg(&self, tool: &str, args: &[&OsStr]) -> Result<(), EphemeralError> {
        let out = self
            .command(tool)
            .args(args)
            .current_dir(&self.dir)
            .output()
            .map_err(|e| failed(format!("running {tool}"), e.to_string()))?;
        if out.status.success() {
            return Ok(());
        }
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        Err(failed(
            format!("{tool} ({})", out.status),
            format!(
                "{}{}\nserver log:\n{log}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }

    /// Stops the cluster and removes its directory once this process is
    /// gone, however it ends.
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
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    /// Stops the server (fast shutdown), keeping its data: for tests of a
    /// database going away.
    pub fn stop_server(&self) -> Result<(), EphemeralError> {
        let data = self.dir.join("data");
        self.pg(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "fast".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        )
    }

    /// Starts a server stopped by [`EphemeralCluster::stop_server`] again,
    /// on the same port.
    pub fn start_server(&self) -> Result<(), EphemeralError> {
        let data = self.dir.join("data");
        let log = self.dir.join("server.log");
        self.pg(
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
        )
    }

    /// The directory holding the cluster (data, log, socket).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for database `db` (user `postgres`, trust auth).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name` and returns its URL.
    pub async fn create_db(&self, name: &str) -> Result<String, EphemeralError> {
        let what = || format!("creating database {name}");
        // Over the unix socket, which works whatever TCP demands (TLS).
        let socket = format!(
            "host={} port={} user=postgres dbname=postgres",
            self.dir.display(),
            self.port
        );
        let (client, conn) = tokio_postgres::connect(&socket, tokio_postgres::NoTls)
            .await
            .map_err(|e| failed(what(), crate::error::pg_message(&e)))?;
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .map_err(|e| failed(what(), crate::error::pg_message(&e)))?;
        Ok(self.url(name))
    }
}

impl Drop for EphemeralCluster {
    /// Stops the server and removes its directory.
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
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
