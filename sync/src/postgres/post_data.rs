//! Which of the schema dump's post-data entries a clone can build before the
//! copy of every table has ended.
//!
//! A table's own indexes and its primary-key, unique and exclusion
//! constraints need nothing but that table's rows, so `clone` builds them
//! (and then `ANALYZE`s the table) as soon as the table's copy finishes,
//! while the other tables are still being copied. Everything else in the
//! post-data section — foreign keys (they need the referenced table's
//! rows and unique index), triggers, rules, partitioned indexes and their
//! `INDEX ATTACH`, comments — waits for the final
//! `pg_restore --section=post-data` as before. Only tables of at least
//! [`early_build_bytes`] are split out: each early build is one more
//! `pg_restore` process, which only pays off where there is an index build
//! worth overlapping.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::error::{Side, SyncError};

/// Tables smaller than this (16 MiB) keep their indexes in the final
/// post-data pass. `SWITCHYARD_CLONE_EARLY_BUILD_BYTES` overrides it (the
/// tests use 0 to exercise early builds on small tables).
const EARLY_BUILD_BYTES: i64 = 16 * 1024 * 1024;

/// The size from which a table's indexes are built with the copy.
pub(crate) fn early_build_bytes() -> i64 {
    std::env::var("SWITCHYARD_CLONE_EARLY_BUILD_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &i64| n >= 0)
        .unwrap_or(EARLY_BUILD_BYTES)
}

/// The schema dump's table of contents split in two.
#[derive(Debug, Default)]
pub(crate) struct Split {
    /// Per table (`(schema, name)`), the `pg_restore --list` lines of the
    /// entries that can be built once that table's rows are in.
    pub per_table: HashMap<(String, String), Vec<String>>,
    /// Every other line, for the pre-data restore and the final post-data
    /// pass.
    pub rest: Vec<String>,
}

/// The indexes and constraints on plain tables (not partitioned parents)
/// that depend only on their own table, keyed by (catalog, object oid) as
/// `pg_restore --list` names them.
pub(crate) async fn own_objects(
    blue: &Client,
    side: Side,
) -> Result<HashMap<(u32, u32), (String, String)>, SyncError> {
    let rows = blue
        .query(
            "SELECT 'pg_class'::regclass::oid, i.indexrelid, n.nspname::text, c.relname::text \
               FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid \
               JOIN pg_namespace n ON n.oid = c.relnamespace \
              WHERE c.relkind = 'r' \
                AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = c.oid) \
             UNION ALL \
             SELECT 'pg_constraint'::regclass::oid, k.oid, n.nspname::text, c.relname::text \
               FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid \
               JOIN pg_namespace n ON n.oid = c.relnamespace \
              WHERE c.relkind = 'r' AND k.contype IN ('p', 'u', 'x')",
            &[],
        )
        .await
        .map_err(|e| SyncError::query(side, "listing the indexes of the source's tables", &e))?;
    Ok(rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3))))
        .collect())
}

/// Splits `toc` (the kept lines of `pg_restore --list`) into the entries
/// of `eligible` tables that can be built with the copy, and the rest.
pub(crate) fn split(
    toc: &[String],
    objects: &HashMap<(u32, u32), (String, String)>,
    eligible: impl Fn(&(String, String)) -> bool,
) -> Split {
    let mut out = Split::default();
    for line in toc {
        let table = entry(line)
            .and_then(|key| objects.get(&key))
            .filter(|t| eligible(t));
        match table {
            Some(t) => out
                .per_table
                .entry(t.clone())
                .or_default()
                .push(line.clone()),
            None => out.rest.push(line.clone()),
        }
    }
    out
}

/// The (catalog oid, object oid) of a `pg_restore --list` line that is an
/// `INDEX` or a `CONSTRAINT` entry (`3342; 1259 16412 INDEX public i me`);
/// `None` for comments and every other kind (`INDEX ATTACH`,
/// `FK CONSTRAINT`, `TRIGGER`, ...).
fn entry(line: &str) -> Option<(u32, u32)> {
    if line.starts_with(';') {
        return None;
    }
    let (_, rest) = line.split_once("; ")?;
    let mut words = rest.splitn(3, ' ');
    let catalog = words.next()?.parse().ok()?;
    let object = words.next()?.parse().ok()?;
    let desc = words.next()?;
    let kind_ok = (desc.starts_with("INDEX ") && !desc.starts_with("INDEX ATTACH "))
        || desc.starts_with("CONSTRAINT ");
    kind_ok.then_some((catalog, object))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str, n: &str) -> (String, String) {
        (s.to_string(), n.to_string())
    }

    #[test]
    fn only_own_indexes_and_constraints_of_eligible_tables_are_split_out() {
        let toc: Vec<String> = [
            ";",
            "; Selected TOC Entries:",
            "215; 1259 16390 TABLE public accounts me",
            "3350; 2606 16400 CONSTRAINT public accounts accounts_pkey me",
            "3351; 1259 16401 INDEX public accounts_email me",
            "3352; 1259 16402 INDEX public small_idx me",
            "3353; 2606 16403 FK CONSTRAINT public orders orders_account_fkey me",
            "3354; 0 0 INDEX ATTACH public part_1_idx me",
            "3355; 2620 16405 TRIGGER public accounts audit me",
            "3356; 0 0 COMMENT public INDEX accounts_email me",
            "3357; 2606 16406 CONSTRAINT public accounts accounts_check me",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let objects: HashMap<(u32, u32), (String, String)> = [
            ((2606, 16400), t("public", "accounts")),
            ((1259, 16401), t("public", "accounts")),
            ((1259, 16402), t("public", "small")),
            // The FK line's oid under another catalog: the catalog counts.
            ((1259, 16403), t("public", "accounts")),
        ]
        .into_iter()
        .collect();
        let split = split(&toc, &objects, |table| *table == t("public", "accounts"));
        assert_eq!(
            split.per_table[&t("public", "accounts")],
            vec![
                "3350; 2606 16400 CONSTRAINT public accounts accounts_pkey me".to_string(),
                "3351; 1259 16401 INDEX public accounts_email me".to_string(),
            ]
        );
        assert_eq!(split.per_table.len(), 1);
        assert_eq!(split.rest.len(), toc.len() - 2);
        assert!(split.rest.iter().any(|l| l.contains("small_idx")));
        assert!(split.rest.iter().any(|l| l.contains("FK CONSTRAINT")));
        assert!(split.rest.iter().any(|l| l.contains("accounts_check")));
    }
}
