//! Flyway's history table, `flyway_schema_history`: reading it, and the
//! current version it records.

use crate::error::{Side, SyncError};
use tokio_postgres::Client;

use super::HISTORY_TABLE;
use crate::flyway::Applied;

/// Finds the history table: in the current schema first, then anywhere.
pub async fn history_table(client: &Client, side: Side) -> Result<Option<String>, SyncError> {
    let row = client
        .query_opt(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) \
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
              WHERE c.relname = $1 AND c.relkind IN ('r', 'p') \
              ORDER BY n.nspname = current_schema() DESC, n.nspname LIMIT 1",
            &[&HISTORY_TABLE],
        )
        .await
        .map_err(|e| SyncError::query(side, "looking for flyway_schema_history", &e))?;
    Ok(row.map(|r| r.get(0)))
}

/// Reads the history (empty when there is no history table).
pub async fn read_history(client: &Client, side: Side) -> Result<Vec<Applied>, SyncError> {
    let Some(table) = history_table(client, side).await? else {
        return Ok(Vec::new());
    };
    let rows = client
        .query(
            &format!(
                "SELECT installed_rank, version::text, description::text, type::text, script::text, \
                        checksum, to_char(installed_on, 'YYYY-MM-DD HH24:MI:SS'), execution_time, success \
                   FROM {table} ORDER BY installed_rank"
            ),
            &[],
        )
        .await
        .map_err(|e| SyncError::query(side, format!("reading {table}"), &e))?;
    Ok(rows
        .iter()
        .map(|r| Applied {
            installed_rank: r.get(0),
            version: r.get(1),
            description: r.get(2),
            kind: r.get(3),
            script: r.get(4),
            checksum: r.get(5),
            installed_on: r.get(6),
            execution_time: r.get(7),
            success: r.get(8),
        })
        .collect())
}
