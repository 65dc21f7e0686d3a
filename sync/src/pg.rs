//! Connections, identifier quoting, catalog queries and the PostgreSQL client
//! programs (`pg_dump`, `pg_restore`) that the other modules share.

use crate::error::{pg_message, Side, SyncError};
use std::path::PathBuf;
use std::str::FromStr;
use tokio_postgres::{Client, NoTls};

/// Opens a connection and drives it on a background task.
pub async fn connect(side: Side, url: &str) -> Result<Client, SyncError> {
    let err = |message: String| SyncError::Connect {
        side,
        url: switchyard_config::redact_url(url),
        message,
    };
    let mut config = tokio_postgres::Config::from_str(url).map_err(|e| err(pg_message(&e)))?;
    config.application_name("switchyard");
    if side == Side::Blue {
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
    let (client, conn) = config
        .connect(NoTls)
        .await
        .map_err(|e| err(pg_message(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%side, error = %pg_message(&e), "connection closed");
        }
    });
    Ok(client)
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
          WHERE c.relkind = 'r' AND {SYSTEM_SCHEMA_FILTER} \
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

/// Finds a PostgreSQL client program: `$SWITCHYARD_PG_BINDIR`, then
/// `pg_config --bindir`, then `PATH`, then the newest `/usr/lib/postgresql/*/bin`.
pub fn find_tool(name: &str) -> Result<PathBuf, SyncError> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("SWITCHYARD_PG_BINDIR") {
        dirs.push(PathBuf::from(d));
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
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| SyncError::ToolMissing {
            tool: name.to_string(),
        })
}

/// Runs a client program to completion, returning its stdout or a
/// [`SyncError::Tool`] carrying its stderr.
pub async fn run_tool(tool: &str, what: &str, args: &[String]) -> Result<Vec<u8>, SyncError> {
    let path = find_tool(tool)?;
    let out = tokio::process::Command::new(&path)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| SyncError::Tool {
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
