//! The crate's error type. Every message says what went wrong, where (database,
//! table, key, file) and what to do about it.

use std::path::PathBuf;

/// Which side of the deployment a database belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Blue,
    Green,
}

impl Side {
    /// The other side.
    pub fn other(self) -> Side {
        match self {
            Side::Blue => Side::Green,
            Side::Green => Side::Blue,
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Blue => "blue",
            Side::Green => "green",
        })
    }
}

/// Everything that can stop a sync command.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("cannot connect to the {side} database ({url}): {message}; check [database].{side} in the config and that the server is up")]
    Connect {
        side: Side,
        url: String,
        message: String,
    },

    #[error("{side} database: {context}: {message}")]
    Query {
        side: Side,
        context: String,
        message: String,
    },

    #[error("copying table {table} from blue to green failed: {message}; green is left unverified, re-run `switchyard sync clone --replace`")]
    Copy { table: String, message: String },

    /// `[database] green` names the same database as `blue`.
    #[error("[database] green is the same database as blue ({database} on the server started {system}); refusing to write to it. Point green at a separate, empty database")]
    SameDatabase { database: String, system: String },
    #[error("the green database is not empty (it has {what}); refusing to overwrite it. Pass --replace to drop everything in green and clone again")]
    GreenNotEmpty { what: String },
    /// Green's database is the primary (a cutover moved the application's
    /// writes to it): replacing it would lose them.
    #[error("green's database has been the primary since {since} ({why}): replacing it would lose every write made there since. Nothing was changed. switchyard prepares green's database from blue's; after a promotion, prepare the next release's database yourself and set [database] prepare = \"manual\", or move the primary back to blue first (a rollback)")]
    GreenIsPrimary { since: String, why: String },

    #[error("{tool} failed ({what}): {message}; green is left unverified, fix the cause and re-run with --replace")]
    Tool {
        tool: String,
        what: String,
        message: String,
    },

    #[error("cannot find the PostgreSQL client program {tool}: looked in $SWITCHYARD_PG_BINDIR, `pg_config --bindir` and PATH; install the PostgreSQL client (same major version as the servers or newer)")]
    ToolMissing { tool: String },

    #[error("cannot read migrations directory {}: {message}; set [database].migrations to the folder holding V<version>__<name>.sql files", path.display())]
    MigrationsDir { path: PathBuf, message: String },

    #[error("{}: {message}", path.display())]
    MigrationFile { path: PathBuf, message: String },

    #[error("migration {script}:{line} failed on green: {message}; {kept}")]
    MigrationFailed {
        script: String,
        /// Line of the failing statement (or of the error position in it).
        line: usize,
        message: String,
        /// What of it stayed applied, and what to do.
        kept: String,
    },

    #[error("validation of the migrations failed:\n{}", problems.join("\n"))]
    Validate { problems: Vec<String> },

    /// Tables a publication cannot carry.
    #[error("{side}: these tables have no replica identity (no primary key, no REPLICA IDENTITY index or FULL): {}. Once published, the server would refuse UPDATE and DELETE on them, so switchyard will not publish them. Add a primary key, or run `ALTER TABLE … REPLICA IDENTITY FULL` on each, then try again", tables.join(", "))]
    NoReplicaIdentity { side: Side, tables: Vec<String> },

    /// `replicate` needs a clone taken from the replication slot.
    #[error("green cannot be caught up: {why}. Run `switchyard sync clone --replace` (in replicate mode it creates the slot and copies exactly its snapshot), then `switchyard sync replicate`")]
    ClonedWithoutSlot { why: String },

    /// Nothing was cloned into green yet.
    #[error("green was never cloned: run `switchyard sync clone` first")]
    NotCloned,

    /// A migration would break replication from blue.
    #[error("migration {script} would break replication from blue: {problems}. Apply it after cutover instead (expand now, contract later): keep published columns and their types while blue still writes")]
    Incompatible { script: String, problems: String },

    /// Objects on blue name roles green does not have.
    #[error("green lacks roles that blue's objects need: {roles}. Nothing in green was changed. Create them on green's server, or set [database] roles = \"skip\" to clone without owners and grants (policies still need their roles)")]
    RolesMissing { roles: String },

    #[error("{0}")]
    Other(String),
}

impl SyncError {
    /// Wraps a tokio-postgres error with the side and what was being done.
    pub(crate) fn query(side: Side, context: impl Into<String>, e: &tokio_postgres::Error) -> Self {
        SyncError::Query {
            side,
            context: context.into(),
            message: pg_message(e),
        }
    }
}

/// The full text of a PostgreSQL error: message, detail, hint and position.
pub fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{}: {}", db.severity(), db.message());
            if let Some(d) = db.detail() {
                s.push_str(&format!(" (detail: {d})"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!(" (hint: {h})"));
            }
            if let Some(w) = db.where_() {
                s.push_str(&format!(" (where: {w})"));
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(&format!(": {inner}"));
                src = inner.source();
            }
            s
        }
    }
}
