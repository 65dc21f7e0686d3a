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

    #[error("copying table {table} from {} to {target} failed: {message}; {target} is left unverified, re-run `switchyard sync clone --replace`", target.other())]
    Copy {
        table: String,
        target: Side,
        message: String,
    },

    /// `[database] green` names the same database as `blue`.
    #[error("[database] green and blue name the same database ({database} on the server started {system}); refusing to write to it. Point each colour at its own database")]
    SameDatabase { database: String, system: String },
    #[error("the {side} database is not empty (it has {what}); refusing to overwrite it. Pass --replace to drop everything in {side} and clone again")]
    TargetNotEmpty { side: Side, what: String },
    /// The database a step would write to is the primary (a cutover
    /// moved the application's writes to it): replacing or migrating it
    /// would lose them or change production's schema.
    #[error("{side}'s database has been the primary since {since}: it takes the application's writes, so no release step writes to it. Nothing was changed. The next release's database is {}'s: switchyard prepares it from the primary (`switchyard ctl start`, or the `switchyard sync` commands, which follow the recorded primary)", side.other())]
    TargetIsPrimary { side: Side, since: String },

    #[error("{tool} failed ({what}): {message}; the candidate's database is left unverified, fix the cause and re-run with --replace")]
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

    #[error("migration {script}:{line} failed on {side}: {message}; {kept}")]
    MigrationFailed {
        script: String,
        side: Side,
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
    #[error("{side} cannot be caught up: {why}. Run `switchyard sync clone --replace` (in replicate mode it creates the slot and copies exactly its snapshot), then `switchyard sync replicate`")]
    ClonedWithoutSlot { side: Side, why: String },

    /// Nothing was cloned into the candidate's database yet.
    #[error("{side} was never cloned: run `switchyard sync clone` first")]
    NotCloned { side: Side },

    /// A migration would break replication from the primary.
    #[error("migration {script} would break replication from {source_side}: {problems}. Apply it after cutover instead (expand now, contract later): keep published columns and their types while {source_side} still writes")]
    Incompatible {
        script: String,
        source_side: Side,
        problems: String,
    },

    /// Objects on the source name roles the target does not have.
    #[error("{target} lacks roles that {}'s objects need: {roles}. Nothing in {target} was changed. Create them on {target}'s server, or set [database] roles = \"skip\" to clone without owners and grants (policies still need their roles)", target.other())]
    RolesMissing { target: Side, roles: String },

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
