//! Connections, identifier quoting, catalog queries and the PostgreSQL client
//! programs (`pg_dump`, `pg_restore`) that the other modules share.

use crate::error::{pg_message, Side, SyncError};
use std::path::PathBuf;
use std::str::FromStr;
use tokio_postgres::{Client, NoTls};

/// Parses a connection URL the way libpq reads it: the URL (or `key=value`
/// string) first, then `PGPASSWORD`, then the password file (`PGPASSFILE` or
/// `~/.pgpass`) for a password the URL lacks. Child processes and
/// replication connections use the same result, so a password never has to
/// be on a command line.
pub fn config(side: Side, url: &str) -> Result<tokio_postgres::Config, SyncError> {
    Ok(target(side, url)?.config)
}

/// A parsed connection URL: the tokio-postgres configuration (password
/// filled in as libpq would) and the TLS settings.
pub struct Target {
    pub config: tokio_postgres::Config,
    pub tls: crate::tls::TlsSpec,
}

/// Parses `url` into a [`Target`] (see [`config`] and [`crate::tls`]).
pub fn target(side: Side, url: &str) -> Result<Target, SyncError> {
    let (rest, tls) = crate::tls::split(side, url)?;
    let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| SyncError::Connect {
        side,
        url: switchyard_config::redact_url(url),
        message: pg_message(&e),
    })?;
    if config.get_password().is_none() {
        if let Some(pw) = password_for(&config) {
            config.password(pw);
        }
    }
    config.ssl_mode(match tls.mode {
        crate::tls::SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        crate::tls::SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    Ok(Target { config, tls })
}

/// The password for `config` from `PGPASSWORD` or the password file.
fn password_for(config: &tokio_postgres::Config) -> Option<String> {
    if let Ok(pw) = std::env::var("PGPASSWORD") {
        return Some(pw);
    }
    let path = std::env::var_os("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgpass")))?;
    let text = std::fs::read_to_string(path).ok()?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(_)) | None => "localhost".into(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let user = config.get_user().unwrap_or("");
    let db = config.get_dbname().unwrap_or(user);
    pgpass_lookup(&text, [&host, &port, db, user])
}

/// Finds the password for `host:port:database:user` in a `.pgpass` text
/// (fields separated by `:`, `\` escapes, `*` matches anything).
pub fn pgpass_lookup(text: &str, want: [&str; 4]) -> Option<String> {
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = Vec::new();
        let mut cur = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        cur.push(n);
                    }
                }
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        fields.push(cur);
        if fields.len() != 5 {
            continue;
        }
        if fields[..4]
            .iter()
            .zip(want)
            .all(|(f, w)| f == "*" || f == w)
        {
            return fields.pop();
        }
    }
    None
}

/// The `application_name` of every session and client program this process
/// opens: `switchyard`, or `switchyard-sync-<pid>` for a `switchyard sync`
/// command (see [`tag_sessions`]).
static SESSION_TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Names this process's sessions `switchyard-sync-<pid>`, so an interrupted
/// sync command can end exactly its own server sessions and no one else's.
pub fn tag_sessions() -> &'static str {
    SESSION_TAG.get_or_init(|| format!("switchyard-sync-{}", std::process::id()))
}

fn session_tag() -> &'static str {
    SESSION_TAG
        .get()
        .map(String::as_str)
        .unwrap_or("switchyard")
}

/// Opens a read-only connection and drives it on a background task: every
/// session that only reads (the source of a release, which is the primary,
/// and every reading of either side) is read-only whatever the statement.
/// [`connect_target`] and [`connect_owner`] are the exceptions.
pub async fn connect(side: Side, url: &str) -> Result<Client, SyncError> {
    open(side, url, true).await
}

/// Opens a session that may write to the candidate's database (the target
/// of a release: clone, migrate, switchyard's records). Never called for
/// the primary's side except by the cutover, which records itself on both.
pub async fn connect_target(side: Side, url: &str) -> Result<Client, SyncError> {
    open(side, url, false).await
}

/// Opens a session that may write, on either side. Used only to create and
/// remove switchyard's own replication objects (publication, slot,
/// subscription) and records, never for table data on the primary.
pub async fn connect_owner(side: Side, url: &str) -> Result<Client, SyncError> {
    open(side, url, false).await
}

async fn open(side: Side, url: &str, read_only: bool) -> Result<Client, SyncError> {
    let err = |message: String| SyncError::Connect {
        side,
        url: switchyard_config::redact_url(url),
        message,
    };
    let Target { mut config, tls } = target(side, url)?;
    config.application_name(session_tag());
    if read_only {
        // Blue is production: every session switchyard opens there is
        // read-only, whatever the statement (defence in depth beside the
        // explicit READ ONLY transactions of clone and verify).
        let mut options = config.get_options().unwrap_or("").to_string();
        if !options.is_empty() {
            options.push(' ');
        }
        options.push_str("-c default_transaction_read_only=on");
        config.options(&options);
    }
    let client = match crate::tls::client_config(side, &tls)? {
        None => {
            let (client, conn) = config
                .connect(NoTls)
                .await
                .map_err(|e| err(pg_message(&e)))?;
            tokio::spawn(drive(side, conn));
            client
        }
        Some(tls) => {
            let (client, conn) = config
                .connect(crate::tls::MakeRustls::new(tls))
                .await
                .map_err(|e| err(pg_message(&e)))?;
            tokio::spawn(drive(side, conn));
            client
        }
    };
    end_with_this_process(&client, side).await?;
    Ok(client)
}

/// Has the server end a session's statement within a second of this
/// process going away. Without it, a statement waiting for a lock when
/// switchyard is killed (say `CREATE PUBLICATION` behind an application's
/// `LOCK TABLE` during a cutover) waits on, then commits minutes later,
/// behind the back of the restarted process that is recovering the
/// cutover. PostgreSQL before 14 has no such setting; it is skipped there.
async fn end_with_this_process(client: &Client, side: Side) -> Result<(), SyncError> {
    match client
        .batch_execute("SET client_connection_check_interval = '1s'")
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_OBJECT) => Ok(()),
        Err(e) => Err(SyncError::query(
            side,
            "setting client_connection_check_interval",
            &e,
        )),
    }
}

async fn drive<C: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(
    side: Side,
    conn: C,
) {
    if let Err(e) = conn.await {
        tracing::debug!(%side, error = %pg_message(&e), "connection closed");
    }
}

/// Runs `sql` as a simple-query batch, mapping errors with `context`.
pub async fn exec(client: &Client, side: Side, context: &str, sql: &str) -> Result<(), SyncError> {
    client
        .batch_execute(sql)
        .await
        .map_err(|e| SyncError::query(side, context, &e))
}

/// Session settings that make text output identical on both sides.
pub const NORMALISED_SESSION: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; \
     SET IntervalStyle = 'postgres'; SET extra_float_digits = 1; SET bytea_output = 'hex'; \
     SET jit = off";

/// Quotes an identifier the way PostgreSQL's `quote_ident` does (always quoting).
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes a string literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A table whose rows are copied and verified.
#[derive(Debug, Clone)]
pub struct Table {
    pub schema: String,
    pub name: String,
    /// On-disk size including TOAST, used to order work largest first.
    pub bytes: i64,
    /// The planner's row estimate (for progress bars).
    pub est_rows: i64,
    /// Primary-key columns in key order; empty when the table has none.
    pub pk: Vec<String>,
    /// Whether binary COPY is safe between clusters (no user-defined types,
    /// whose OIDs differ between clusters, in any column).
    pub binary_ok: bool,
    /// Columns COPY carries (all but generated ones), quoted, in order.
    pub copy_columns: Vec<String>,
    /// Heap size in blocks when listed (for splitting big tables).
    pub blocks: i64,
}

impl Table {
    /// `"schema"."name"`, for SQL.
    pub fn sql(&self) -> String {
        format!("{}.{}", ident(&self.schema), ident(&self.name))
    }
    /// `schema.name`, for people.
    pub fn display(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// Schemas that belong to PostgreSQL or to switchyard itself.
pub const SYSTEM_SCHEMA_FILTER: &str =
    "n.nspname NOT IN ('pg_catalog', 'information_schema', 'switchyard') \
     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'";

/// Lists the tables that hold rows (plain tables and leaf partitions, not
/// partitioned parents, views or extension-owned tables), largest first.
pub async fn list_tables(client: &Client, side: Side) -> Result<Vec<Table>, SyncError> {
    list_relations(client, side, "c.relkind = 'r'").await
}

/// Lists the populated materialized views (their contents are compared
/// like a table's).
pub async fn list_matviews(client: &Client, side: Side) -> Result<Vec<Table>, SyncError> {
    list_relations(client, side, "c.relkind = 'm' AND c.relispopulated").await
}

async fn list_relations(client: &Client, side: Side, which: &str) -> Result<Vec<Table>, SyncError> {
    let sql = format!(
        "SELECT n.nspname::text, c.relname::text, pg_table_size(c.oid)::int8, \
                greatest(c.reltuples, 0)::int8, \
                coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord) \
                   FROM pg_constraint con \
                   CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord) \
                   JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum \
                  WHERE con.conrelid = c.oid AND con.contype = 'p'), '{{}}'::text[]), \
                NOT EXISTS (SELECT 1 FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                    AND (t.oid >= 16384 OR t.typelem >= 16384 OR t.typtype NOT IN ('b', 'p', 'r', 'm'))), \
                coalesce((SELECT array_agg(quote_ident(a.attname) ORDER BY a.attnum) FROM pg_attribute a \
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''), '{{}}'::text[]), \
                (pg_relation_size(c.oid) / current_setting('block_size')::int8) \
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
          WHERE {which} AND {SYSTEM_SCHEMA_FILTER} \
            AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                              AND d.objid = c.oid AND d.deptype = 'e') \
          ORDER BY 3 DESC, 1, 2"
    );
    let rows = client
        .query(&sql, &[])
        .await
        .map_err(|e| SyncError::query(side, "listing tables", &e))?;
    Ok(rows
        .iter()
        .map(|r| Table {
            schema: r.get(0),
            name: r.get(1),
            bytes: r.get(2),
            est_rows: r.get(3),
            pk: r.get(4),
            binary_ok: r.get(5),
            copy_columns: r.get(6),
            blocks: r.get(7),
        })
        .collect())
}

/// Every directory that may hold PostgreSQL's client programs, in the order
/// they are preferred at equal versions: each entry of
/// `$SWITCHYARD_PG_BINDIR` (a `:`-separated list), `pg_config --bindir`,
/// `PATH`, then `/usr/lib/postgresql/*/bin` (Debian's and PGDG's packages)
/// and `/usr/pgsql-*/bin` (PGDG's RPMs), newest first.
fn tool_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("SWITCHYARD_PG_BINDIR") {
        dirs.extend(std::env::split_paths(&d));
    }
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
    {
        if out.status.success() {
            dirs.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> = rd
            .flatten()
            .filter_map(|e| {
                let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                Some((v, e.path().join("bin")))
            })
            .collect();
        versions.sort_by_key(|v| std::cmp::Reverse(v.0));
        dirs.extend(versions.into_iter().map(|(_, p)| p));
    }
    // PGDG's RPMs: /usr/pgsql-16/bin.
    if let Ok(rd) = std::fs::read_dir("/usr") {
        let mut versions: Vec<(u32, PathBuf)> = rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let v = name.strip_prefix("pgsql-")?.parse::<u32>().ok()?;
                Some((v, e.path().join("bin")))
            })
            .collect();
        versions.sort_by_key(|v| std::cmp::Reverse(v.0));
        dirs.extend(versions.into_iter().map(|(_, p)| p));
    }
    dirs
}

/// Finds a PostgreSQL client program: the first of [`tool_dirs`] that has it.
pub fn find_tool(name: &str) -> Result<PathBuf, SyncError> {
    tool_dirs()
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| SyncError::ToolMissing {
            tool: name.to_string(),
        })
}

/// The major version of a client program (from its `--version`, asked once
/// per path).
fn major_of(path: &std::path::Path) -> Option<i32> {
    type Seen = std::sync::Mutex<std::collections::HashMap<PathBuf, Option<i32>>>;
    static SEEN: std::sync::OnceLock<Seen> = std::sync::OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    if let Some(v) = seen.lock().ok()?.get(path) {
        return *v;
    }
    let v = std::process::Command::new(path)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .find_map(|w| w.split('.').next().and_then(|m| m.parse().ok()))
        });
    seen.lock().ok()?.insert(path.to_path_buf(), v);
    v
}

/// The client programs a clone uses, matched to both servers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Tools {
    pub pg_dump: PathBuf,
    pub pg_restore: PathBuf,
    /// Their major version.
    pub major: i32,
}

/// Picks `pg_dump` and `pg_restore` from one directory whose major version
/// is at least the source's (pg_dump dumps only servers as old as itself
/// or older) and at most the target's (a newer restore sets what an older
/// server does not know, e.g. 17's transaction_timeout): the target's own
/// major version when installed, else the newest that fits. Versions as
/// `server_version_num`. Refused, naming every client found, when none fits.
pub fn tools_for(source: (Side, i32), target: (Side, i32)) -> Result<Tools, SyncError> {
    let (lo, hi) = (source.1 / 10000, target.1 / 10000);
    let mut found: Vec<(PathBuf, i32)> = Vec::new();
    for d in tool_dirs() {
        let (dump, restore) = (d.join("pg_dump"), d.join("pg_restore"));
        if !dump.is_file() || !restore.is_file() || found.iter().any(|(p, _)| p == &d) {
            continue;
        }
        if let Some(m) = major_of(&dump) {
            found.push((d, m));
        }
    }
    let fits: Vec<&(PathBuf, i32)> = found.iter().filter(|(_, m)| *m >= lo && *m <= hi).collect();
    let best = fits
        .iter()
        .find(|(_, m)| *m == hi)
        .or_else(|| fits.iter().max_by_key(|(_, m)| *m));
    match best {
        Some((d, m)) => Ok(Tools {
            pg_dump: d.join("pg_dump"),
            pg_restore: d.join("pg_restore"),
            major: *m,
        }),
        None if found.is_empty() => Err(SyncError::ToolMissing {
            tool: "pg_dump".into(),
        }),
        None => Err(SyncError::Other(format!(
            "no PostgreSQL client programs fit this clone: it needs pg_dump and pg_restore of a major version from {lo} ({}'s server) to {hi} ({}'s); found {}. Nothing was changed: install the client of PostgreSQL {hi}, or list its bin directory in SWITCHYARD_PG_BINDIR",
            source.0,
            target.0,
            found
                .iter()
                .map(|(d, m)| format!("{m} in {}", d.display()))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// How a client program reaches a database: a `key=value` connection
/// string without the password, and the password for the child's
/// environment (`PGPASSWORD`), so it never shows in `ps`.
pub struct ToolConn {
    pub conninfo: String,
    pub password: Option<String>,
}

/// Builds [`ToolConn`] for `url`.
pub fn tool_conn(side: Side, url: &str) -> Result<ToolConn, SyncError> {
    let t = target(side, url)?;
    let c = &t.config;
    let mut parts = Vec::new();
    let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    if !hosts.is_empty() {
        parts.push(format!("host={}", q(&hosts.join(","))));
    }
    let ports: Vec<String> = c.get_ports().iter().map(u16::to_string).collect();
    if !ports.is_empty() {
        parts.push(format!("port={}", q(&ports.join(","))));
    }
    if let Some(u) = c.get_user() {
        parts.push(format!("user={}", q(u)));
    }
    if let Some(d) = c.get_dbname() {
        parts.push(format!("dbname={}", q(d)));
    }
    if let Some(o) = c.get_options() {
        parts.push(format!("options={}", q(o)));
    }
    parts.push(format!("sslmode={}", t.tls.mode.as_str()));
    if let Some(root) = &t.tls.root_cert {
        parts.push(format!("sslrootcert={}", q(&root.display().to_string())));
    }
    Ok(ToolConn {
        conninfo: parts.join(" "),
        password: c
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
    })
}

/// Runs a client program to completion, returning its stdout or a
/// [`SyncError::Tool`] carrying its stderr. `password` goes to the child's
/// environment, never its arguments.
pub async fn run_tool(
    path: &std::path::Path,
    what: &str,
    args: &[String],
    password: Option<&str>,
) -> Result<Vec<u8>, SyncError> {
    let tool = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut cmd = tokio::process::Command::new(path);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(pw) = password {
        cmd.env("PGPASSWORD", pw);
    }
    // Named, so an interrupted sync can find and end its server sessions.
    cmd.env("PGAPPNAME", format!("{}-{tool}", session_tag()));
    let out = cmd.output().await.map_err(|e| SyncError::Tool {
        tool: tool.to_string(),
        what: what.to_string(),
        message: format!("cannot start {}: {e}", path.display()),
    })?;
    if !out.status.success() {
        return Err(SyncError::Tool {
            tool: tool.to_string(),
            what: what.to_string(),
            message: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(out.stdout)
}

/// Server version number (`server_version_num`, e.g. 150004).
pub async fn server_version(client: &Client, side: Side) -> Result<i32, SyncError> {
    let v: String = client
        .query_one("SELECT current_setting('server_version_num')", &[])
        .await
        .map_err(|e| SyncError::query(side, "reading server version", &e))?
        .get(0);
    v.parse()
        .map_err(|_| SyncError::Other(format!("{side}: odd server_version_num {v:?}")))
}

/// Refuses to go on when `green` is in fact blue's database (same cluster
/// system identifier and database name: a typo, or an alias such as a
/// pooler in front of blue). Called before anything writes to green.
pub async fn ensure_distinct(db: &switchyard_config::DatabaseConfig) -> Result<(), SyncError> {
    // The postmaster's start time (to the microsecond) and port identify a
    // running cluster and are readable by any role, unlike the system
    // identifier (pg_control_system() needs extra privileges).
    const IDENTITY: &str =
        "SELECT pg_postmaster_start_time()::text || ', port ' || current_setting('port'), \
         current_database()::text";
    let identity = |side: Side, url: String| async move {
        let c = connect(side, &url).await?;
        let row = c
            .query_one(IDENTITY, &[])
            .await
            .map_err(|e| SyncError::query(side, "reading the cluster identity", &e))?;
        Ok::<(String, String), SyncError>((row.get(0), row.get(1)))
    };
    let (blue, green) = tokio::try_join!(
        identity(Side::Blue, db.blue.clone()),
        identity(Side::Green, db.green.clone())
    )?;
    if blue == green {
        return Err(SyncError::SameDatabase {
            system: blue.0,
            database: blue.1,
        });
    }
    Ok(())
}

/// Where a snapshot that other sessions join comes from.
enum SnapshotSource {
    /// A read-only repeatable-read transaction that exported it.
    /// The session is kept only to keep the snapshot alive.
    Transaction { _session: Client },
    /// The forward replication slot's creation (replicate mode).
    Slot(crate::replicate::ForwardSlot),
}

/// An exported snapshot, held open: other sessions join it with
/// [`snapshot_session`], so they all read one consistent point in time.
pub struct SnapshotHolder {
    source: SnapshotSource,
    /// The snapshot's name for `SET TRANSACTION SNAPSHOT`.
    pub id: String,
}

impl SnapshotHolder {
    /// Opens a repeatable-read, read-only transaction and exports its snapshot.
    pub async fn open(side: Side, url: &str) -> Result<SnapshotHolder, SyncError> {
        let client = connect(side, url).await?;
        exec(
            &client,
            side,
            "starting the snapshot transaction",
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        )
        .await?;
        let id: String = client
            .query_one("SELECT pg_export_snapshot()", &[])
            .await
            .map_err(|e| SyncError::query(side, "exporting a snapshot", &e))?
            .get(0);
        Ok(SnapshotHolder {
            source: SnapshotSource::Transaction { _session: client },
            id,
        })
    }

    /// Holds the snapshot exported by the forward slot's creation.
    pub fn from_slot(slot: crate::replicate::ForwardSlot) -> SnapshotHolder {
        SnapshotHolder {
            id: slot.created.snapshot.clone(),
            source: SnapshotSource::Slot(slot),
        }
    }

    /// The forward slot this snapshot came from, if any.
    pub fn slot(&self) -> Option<&crate::replicate::ForwardSlot> {
        match &self.source {
            SnapshotSource::Slot(s) => Some(s),
            SnapshotSource::Transaction { .. } => None,
        }
    }

    /// Ends the snapshot (the slot, if any, stays).
    pub async fn release(self) {
        match self.source {
            SnapshotSource::Slot(s) => s.release_snapshot().await,
            SnapshotSource::Transaction { .. } => {}
        }
    }

    /// Ends the snapshot and removes the slot it came from, if any (a clone
    /// that did not complete).
    pub async fn abandon(self, db: &switchyard_config::DatabaseConfig) {
        match self.source {
            SnapshotSource::Slot(s) => s.abandon(db).await,
            SnapshotSource::Transaction { .. } => {}
        }
    }
}

/// Opens a session that reads inside `snapshot`, read-only.
pub async fn snapshot_session(side: Side, url: &str, snapshot: &str) -> Result<Client, SyncError> {
    let client = connect(side, url).await?;
    exec(
        &client,
        side,
        "joining the exported snapshot",
        &format!(
            "{}; BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT {}",
            NORMALISED_SESSION,
            literal(snapshot)
        ),
    )
    .await?;
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpass_matches_fields_with_wildcards_and_escapes() {
        let text = "# comment\n\
                    otherhost:5432:*:app:nope\n\
                    db.internal:5432:app:app:s3cr\\:et\n\
                    *:*:*:admin:adminpw\n";
        assert_eq!(
            pgpass_lookup(text, ["db.internal", "5432", "app", "app"]).as_deref(),
            Some("s3cr:et")
        );
        assert_eq!(
            pgpass_lookup(text, ["x", "1", "y", "admin"]).as_deref(),
            Some("adminpw")
        );
        assert_eq!(
            pgpass_lookup(text, ["db.internal", "5433", "app", "app"]),
            None
        );
    }
}
