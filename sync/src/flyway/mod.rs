//! Flyway's model of migrations, shared by every engine: the files
//! (`V<version>__<desc>.sql`, `R__<desc>.sql`, callbacks, `.conf`
//! options, placeholders, checksums), versions, statement splitting, the
//! rows of `flyway_schema_history` ([`Applied`]), and the plans read from
//! them (pending, validate, info). Each engine's `migrate` applies them.

mod plan;
mod source;
mod sql;

pub use plan::*;
pub use source::*;
pub use sql::*;

use serde::Serialize;

/// The table Flyway records applied migrations in.
pub const HISTORY_TABLE: &str = "flyway_schema_history";

/// One row of `flyway_schema_history`.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub installed_rank: i32,
    pub version: Option<String>,
    pub description: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub script: String,
    pub checksum: Option<i32>,
    pub installed_on: String,
    pub execution_time: i32,
    pub success: bool,
}

/// The highest successfully applied version in the history.
pub fn current_version(history: &[Applied]) -> Option<Version> {
    history
        .iter()
        .filter(|a| a.success)
        .filter_map(|a| a.version.as_deref().and_then(Version::parse))
        .max()
}

/// The outcome of `migrate`.
#[derive(Debug, Clone, Serialize)]
pub struct MigrateReport {
    pub dry_run: bool,
    /// Scripts applied (or that would be, in a dry run), in order.
    pub applied: Vec<String>,
    /// Callbacks that ran.
    pub callbacks: Vec<String>,
    pub schema_version: Option<String>,
}

/// What `baseline` did.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineReport {
    pub version: String,
    pub description: String,
}

/// What `repair` changed.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RepairReport {
    /// Failed migrations whose rows were removed.
    pub removed_failed: Vec<String>,
    /// Applied migrations whose recorded checksum was set to the file's.
    pub realigned: Vec<String>,
}

/// The newest versioned migration in `dir`, or `None` when there is no
/// such directory (a deployment without migrations) or no versioned file.
pub fn newest_on_disk(dir: &std::path::Path) -> Result<Option<Version>, crate::SyncError> {
    if !dir.is_dir() {
        return Ok(None);
    }
    Ok(latest_version(&scan(dir)?))
}
