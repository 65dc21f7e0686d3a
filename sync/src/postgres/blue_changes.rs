//! Whether blue has taken writes since green was cloned from it, for snapshot
//! mode, where nothing carries them to green: a copy that was verified an
//! hour ago is stale the moment blue commits a row, and a cutover to it
//! would lose that row. The clone reads blue's [`ChangeMark`] just before
//! its snapshot is taken and records it in green; the gate reads blue's
//! mark again and holds while the two differ ([`changed_since`]).
//!
//! The mark is made of what moves when a row or a table changes, scoped to
//! blue's database: the cumulative row counters of its tables (inserted,
//! updated, deleted; large objects included) and a digest of its tables'
//! storage (`TRUNCATE`, a rewrite, a table added or dropped, a column added).
//! Reads, `VACUUM`, `ANALYZE`, other databases on the same server and the
//! sessions' temporary tables do not move it. PostgreSQL publishes the
//! counters when a session's transaction ends, or up to 10 s later for a
//! session that stays idle, so a write shows within about 10 s; a reset of
//! the statistics (or a crash) reads as a change, never as none.

use crate::error::SyncError;
use crate::replication::Direction;
use crate::Side;
use tokio_postgres::Client;

/// What moves on blue when it takes a write (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeMark {
    /// Rows inserted, updated and deleted in the database's tables since
    /// the statistics were last reset; `None` with `track_counts = off`.
    pub rows: Option<i64>,
    /// A digest of every table's oid, storage file and column count.
    pub tables: String,
}

/// Reads the mark of the source's database (`side`, the primary). The
/// session may be read-only.
pub async fn read(source: &Client, side: Side) -> Result<ChangeMark, SyncError> {
    let row = source
        .query_one(
            "SELECT CASE WHEN current_setting('track_counts')::bool \
                         THEN coalesce(sum(s.n_tup_ins + s.n_tup_upd + s.n_tup_del), 0)::int8 END, \
                    md5(coalesce(string_agg(s.relid::text || ':' || c.relfilenode || ':' || c.relnatts, \
                                            ',' ORDER BY s.relid), '')) \
               FROM pg_stat_all_tables s JOIN pg_class c ON c.oid = s.relid \
              WHERE (s.schemaname NOT IN ('pg_catalog', 'information_schema', 'switchyard') \
                     AND s.schemaname !~ '^pg_(toast|temp_|toast_temp_)') \
                 OR (s.schemaname = 'pg_catalog' \
                     AND s.relname IN ('pg_largeobject', 'pg_largeobject_metadata'))",
            &[],
        )
        .await
        .map_err(|e| SyncError::query(side, "reading the change counters", &e))?;
    Ok(ChangeMark {
        rows: row.get(0),
        tables: row.get(1),
    })
}

/// Why the target (`dir.target()`) is stale, comparing the mark recorded at
/// the clone (`then`, `None` for a clone by a version that did not record
/// one) with the source's mark now; `None` when the source has not changed.
pub fn changed_since(
    dir: Direction,
    then: Option<&ChangeMark>,
    now: &ChangeMark,
) -> Option<String> {
    let (source, target) = (dir.source(), dir.target());
    let Some(then) = then else {
        return Some(
            format!("{target}'s clone did not record where {source} stood (it was made by an older switchyard), \
             so whether {source} took writes since cannot be told"),
        );
    };
    let (Some(was), Some(is)) = (then.rows, now.rows) else {
        return Some(
            format!("{source} runs with track_counts = off, so whether it took writes since the clone cannot be told \
             (turn track_counts on)"),
        );
    };
    if is < was {
        return Some(
            format!("{source}'s statistics were reset (or its server crashed) since the clone, so whether it took writes since cannot be told"),
        );
    }
    match (is - was, then.tables != now.tables) {
        (0, false) => None,
        (0, true) => Some(
            format!("{source}'s tables changed since the clone (truncated, rewritten, added, dropped or altered)"),
        ),
        (n, _) => Some(format!(
            "{source} has taken {n} row change{} since the clone",
            if n == 1 { "" } else { "s" }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: Direction = Direction::Forward;

    fn mark(rows: Option<i64>, tables: &str) -> ChangeMark {
        ChangeMark {
            rows,
            tables: tables.into(),
        }
    }

    #[test]
    fn only_an_identical_mark_is_unchanged() {
        let then = mark(Some(10), "a");
        assert_eq!(changed_since(F, Some(&then), &mark(Some(10), "a")), None);
        let more = changed_since(F, Some(&then), &mark(Some(11), "a")).unwrap();
        assert!(more.contains("1 row change since"), "{more}");
        let many = changed_since(F, Some(&then), &mark(Some(13), "b")).unwrap();
        assert!(many.contains("3 row changes"), "{many}");
        let tables = changed_since(F, Some(&then), &mark(Some(10), "b")).unwrap();
        assert!(tables.contains("tables changed"), "{tables}");
        let reset = changed_since(F, Some(&then), &mark(Some(2), "a")).unwrap();
        assert!(reset.contains("reset"), "{reset}");
        let off = changed_since(F, Some(&mark(None, "a")), &mark(None, "a")).unwrap();
        assert!(off.contains("track_counts"), "{off}");
        let half = changed_since(F, Some(&then), &mark(None, "a")).unwrap();
        assert!(half.contains("track_counts"), "{half}");
        let old = changed_since(F, None, &then).unwrap();
        assert!(old.contains("older switchyard"), "{old}");
    }
}
