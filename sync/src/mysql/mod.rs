//! MySQL and MariaDB: the second engine behind `switchyard sync`.
//!
//! The same steps as PostgreSQL, built on the server's own tools:
//! `preflight` (binlog settings, GTID, server ids, keys, engines,
//! privileges, definers, character sets), `clone` (one consistent snapshot
//! shared by parallel workers, taken under a brief `FLUSH TABLES WITH READ
//! LOCK` the way mydumper does, rows streamed blue→green through
//! `LOAD DATA LOCAL INFILE` with no intermediate file, secondary indexes,
//! foreign keys, views, routines, triggers and events after the data),
//! `verify` (in-database checksums in key-ordered chunks, bisected to the
//! differing keys, plus the schema objects), `replica` (green a replica of
//! blue from the clone's GTID position, lag, cutover with reverse
//! replication, cleanup) and `state` (switchyard's records in green's
//! `switchyard` database). Blue is only read, except for the replication
//! configuration switchyard sets on it after a cutover (and removes).
//!
//! Replication is built and tested on MariaDB (10.6 or newer, GTID). On
//! MySQL 8, clone and verify work; replicate mode is refused at preflight.

pub mod catalog;
pub mod clone;
pub mod ephemeral;
pub mod migrate;
pub mod preflight;
pub mod prepare;
pub mod replica;
pub mod state;
pub mod verify;

use crate::error::{Side, SyncError};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, Row};

/// Which server a connection reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    MariaDb,
    MySql,
}

/// One open session, with what switchyard needs to know about its server.
pub struct Session {
    pub side: Side,
    pub conn: Conn,
    pub flavor: Flavor,
    /// `VERSION()`, e.g. `10.11.6-MariaDB-log`.
    pub version: String,
    /// The database named in the URL.
    pub database: String,
}

/// The URL as `mysql_async` reads it (`mariadb://` is the same protocol).
fn opts(url: &str) -> Result<Opts, String> {
    let url = match url.strip_prefix("mariadb://") {
        Some(rest) => format!("mysql://{rest}"),
        None => url.to_string(),
    };
    Opts::from_url(&url).map_err(|e| e.to_string())
}

/// MySQL/MariaDB prepares green's database from blue's only: the first
/// release of the cycle. After a promotion (green's database the primary)
/// the next release would prepare blue's from green's, which this engine
/// does not do yet; every command says so instead of acting on the wrong
/// database.
pub fn refuse_later_releases(dir: crate::replication::Direction) -> Result<(), SyncError> {
    if dir == crate::replication::Direction::Forward {
        return Ok(());
    }
    Err(SyncError::Other(
        "MySQL/MariaDB: green's database is the primary (a promotion moved the writes to it), and this engine \
         cannot prepare the next release's database (blue's, from green's) yet: nothing was changed. Roll back to \
         blue first (`switchyard ctl abort`, which reverse replication keeps lossless), or prepare blue's database \
         yourself; PostgreSQL runs the whole cycle"
            .into(),
    ))
}

/// The database (schema) a `mysql://` URL names.
pub fn database_of(url: &str) -> Option<String> {
    opts(url).ok()?.db_name().map(str::to_string)
}

/// Connects to one side and prepares the session: UTF-8 (`utf8mb4`),
/// UTC for `TIMESTAMP`s, and an `sql_mode` that keeps every value as blue
/// stored it (no zero-date or auto-increment surprises on green).
pub async fn connect(side: Side, url: &str) -> Result<Session, SyncError> {
    let connect_error = |message: String| SyncError::Connect {
        side,
        url: switchyard_config::redact_url(url),
        message,
    };
    let opts = opts(url).map_err(connect_error)?;
    let database = opts
        .db_name()
        .map(str::to_string)
        .ok_or_else(|| connect_error("the URL names no database".into()))?;
    let mut conn = Conn::new(opts)
        .await
        .map_err(|e| connect_error(e.to_string()))?;
    let version: String = conn
        .query_first("SELECT VERSION()")
        .await
        .map_err(|e| connect_error(e.to_string()))?
        .unwrap_or_default();
    let flavor = if version.to_ascii_lowercase().contains("mariadb") {
        Flavor::MariaDb
    } else {
        Flavor::MySql
    };
    // MariaDB's GRANT creates a missing user (with no password) unless
    // NO_AUTO_CREATE_USER is set; MySQL 8 never does, and rejects the name.
    let sql_mode = match flavor {
        Flavor::MariaDb => "NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION,NO_AUTO_CREATE_USER",
        Flavor::MySql => "NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION",
    };
    conn.query_drop(format!(
        "SET NAMES utf8mb4, time_zone = '+00:00', sql_mode = '{sql_mode}', \
         SESSION group_concat_max_len = 1048576"
    ))
    .await
    .map_err(|e| connect_error(e.to_string()))?;
    if side == Side::Green && flavor == Flavor::MariaDb {
        // Switchyard's own writes on green (the clone, migrations, its
        // state) go to a GTID domain of their own: in blue's domains they
        // would get sequence numbers past blue's, and with
        // gtid_strict_mode replicating blue would then be refused. Setting
        // it needs SUPER; without, preflight and replicate explain.
        let _ = conn
            .query_drop(format!("SET SESSION gtid_domain_id = {OWN_GTID_DOMAIN}"))
            .await;
    }
    Ok(Session {
        side,
        conn,
        flavor,
        version,
        database,
    })
}

/// The MariaDB GTID domain switchyard's own writes on green are logged in
/// (0x5359, "SY"): apart from blue's, so that green's binary log never holds
/// a transaction in one of blue's domains newer than blue's position.
pub const OWN_GTID_DOMAIN: u32 = 0x5359;

/// Per GTID domain, the highest sequence number in a GTID list such as
/// `0-1-9,7-2-3` (MariaDB's `@@gtid_binlog_pos`).
pub fn gtid_domains(list: &str) -> std::collections::BTreeMap<u32, (u32, u64)> {
    let mut out = std::collections::BTreeMap::new();
    for g in list.split(',').map(str::trim).filter(|g| !g.is_empty()) {
        let mut it = g.split('-');
        if let (Some(d), Some(server), Some(seq)) = (it.next(), it.next(), it.next()) {
            if let (Ok(d), Ok(server), Ok(seq)) = (d.parse(), server.parse(), seq.parse()) {
                out.insert(d, (server, seq));
            }
        }
    }
    out
}

impl Session {
    /// Runs statements that return nothing.
    pub async fn exec(&mut self, context: &str, sql: &str) -> Result<(), SyncError> {
        let side = self.side;
        self.conn
            .query_drop(sql)
            .await
            .map_err(|e| query_error(side, context, &e))
    }

    /// Runs a query and returns its rows.
    pub async fn rows(&mut self, context: &str, sql: &str) -> Result<Vec<Row>, SyncError> {
        let side = self.side;
        self.conn
            .query(sql)
            .await
            .map_err(|e| query_error(side, context, &e))
    }

    /// Runs a query whose first column of the first row is text (or NULL).
    pub async fn text(&mut self, context: &str, sql: &str) -> Result<Option<String>, SyncError> {
        let side = self.side;
        let v: Option<Option<String>> = self
            .conn
            .query_first(sql)
            .await
            .map_err(|e| query_error(side, context, &e))?;
        Ok(v.flatten())
    }

    /// The `server_id`, host name, port and data directory: two sessions
    /// with the same identity reached the same server.
    pub async fn identity(&mut self) -> Result<String, SyncError> {
        Ok(self
            .text(
                "reading the server's identity",
                "SELECT CONCAT_WS(':', @@server_id, @@hostname, @@port, @@datadir)",
            )
            .await?
            .unwrap_or_default())
    }

    /// Closes the session politely (errors ignored: the work is done).
    pub async fn close(self) {
        let _ = self.conn.disconnect().await;
    }
}

/// A server error as a [`SyncError::Query`], keeping the server's code.
pub(crate) fn query_error(side: Side, context: &str, e: &mysql_async::Error) -> SyncError {
    let message = match e {
        mysql_async::Error::Server(s) => {
            format!("{} (error {}, SQLSTATE {})", s.message, s.code, s.state)
        }
        other => other.to_string(),
    };
    SyncError::Query {
        side,
        context: context.to_string(),
        message,
    }
}

/// Quotes an identifier with backticks (a backtick inside is doubled).
pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// Quotes a string literal (backslashes and quotes escaped; the sessions
/// use the default `sql_mode`'s backslash escapes).
pub fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Refuses a green that is blue under another name (same server, same
/// database): clone and migrate write to green.
pub async fn ensure_distinct(db: &switchyard_config::DatabaseConfig) -> Result<(), SyncError> {
    let mut blue = connect(Side::Blue, &db.blue).await?;
    let mut green = connect(Side::Green, &db.green).await?;
    let (b, g) = (blue.identity().await?, green.identity().await?);
    let same = b == g && blue.database == green.database;
    let database = blue.database.clone();
    blue.close().await;
    green.close().await;
    if same {
        return Err(SyncError::SameDatabase {
            database,
            system: b,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_literals_are_quoted_so_no_name_or_value_escapes() {
        assert_eq!(ident("order"), "`order`");
        assert_eq!(ident("a`b"), "`a``b`");
        assert_eq!(literal("it's \\ here"), "'it''s \\\\ here'");
        assert_eq!(literal("nul\0"), "'nul\\0'");
    }

    #[test]
    fn the_database_is_read_from_either_scheme() {
        assert_eq!(
            database_of("mariadb://root@127.0.0.1:3306/app").as_deref(),
            Some("app")
        );
        assert_eq!(
            database_of("mysql://u:p@h/shop?pool_min=1").as_deref(),
            Some("shop")
        );
    }
}
