//! Which colour's database is the primary, for every engine: the record of
//! every committed cutover, kept in both databases, and the rule that reads
//! them ([`Primary::from_records`]).
//!
//! The stable colour's database is the source of a release and the
//! candidate's the target, in every release and in both directions:
//! `[database] blue` and `green` only say where each colour's database
//! lives. Every command derives its direction from the recorded primary
//! ([`Primary::direction`]), never from the names. Leftover replication
//! objects are never taken as proof of anything: only a recorded cutover is.

use crate::error::{Side, SyncError};
use crate::replication::Direction;
use serde::Serialize;

/// Why a cutover happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CutoverKind {
    /// A release was promoted: its colour's database became the primary.
    Promote,
    /// An `abort` after a promotion moved the primary back.
    Rollback,
}

impl CutoverKind {
    /// The value in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            CutoverKind::Promote => "promote",
            CutoverKind::Rollback => "rollback",
        }
    }

    /// Reads the `kind` column; rows written before it existed were
    /// promotions (the only cutover that recorded itself then).
    pub fn from_column(s: Option<&str>) -> CutoverKind {
        match s {
            Some("rollback") => CutoverKind::Rollback,
            _ => CutoverKind::Promote,
        }
    }
}

/// One committed cutover, as recorded in a database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CutoverRow {
    /// Counts cutovers over the life of the pair: the newest wins.
    pub generation: i64,
    /// The side whose database became the primary.
    pub primary: Side,
    pub kind: CutoverKind,
    /// When (UTC, ISO 8601).
    pub at: String,
}

/// The primary, as the records of both sides say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Primary {
    /// The side whose database takes the application's writes.
    pub side: Side,
    /// The newest recorded cutover's generation; 0 before the first one.
    pub generation: i64,
    /// When it became the primary (`None`: it always was, blue before the
    /// first cutover).
    pub since: Option<String>,
    /// How the newest cutover happened.
    pub kind: Option<CutoverKind>,
    /// The primary's database became the primary by a promotion at some
    /// point (so the other side, kept in sync, protects that promotion).
    pub promoted: bool,
    /// Sides whose records could not be read, with the error: the answer
    /// comes from the other side alone.
    pub unread: Vec<String>,
}

impl Primary {
    /// Before any cutover: blue's database is the primary.
    pub fn initial() -> Primary {
        Primary {
            side: Side::Blue,
            generation: 0,
            since: None,
            kind: None,
            promoted: false,
            unread: Vec::new(),
        }
    }

    /// Merges the records read from both sides (the newest generation
    /// wins; a side that could not be read is named in `unread`). Two
    /// records of one generation naming different primaries cannot be
    /// told apart: that is an error, never a guess.
    pub fn from_records(
        blue: Result<Vec<CutoverRow>, String>,
        green: Result<Vec<CutoverRow>, String>,
    ) -> Result<Primary, SyncError> {
        let mut p = Primary::initial();
        let mut rows = Vec::new();
        for (side, r) in [(Side::Blue, blue), (Side::Green, green)] {
            match r {
                Ok(v) => rows.extend(v),
                Err(e) => p.unread.push(format!("{side}: {e}")),
            }
        }
        rows.sort_by_key(|r| r.generation);
        for w in rows.windows(2) {
            if w[0].generation == w[1].generation && w[0].primary != w[1].primary {
                return Err(SyncError::Other(format!(
                    "the cutover records disagree: generation {} names {} in one database and {} in the other. \
                     Nothing was changed. Check `switchyard.cutovers` on both sides and remove the wrong row",
                    w[0].generation, w[0].primary, w[1].primary
                )));
            }
        }
        if let Some(last) = rows.last() {
            p.side = last.primary;
            p.generation = last.generation;
            p.since = Some(last.at.clone());
            p.kind = Some(last.kind);
            p.promoted = rows
                .iter()
                .any(|r| r.primary == last.primary && r.kind == CutoverKind::Promote);
        }
        Ok(p)
    }

    /// The direction of the next release: from the primary to the other side.
    pub fn direction(&self) -> Direction {
        Direction::from_source(self.side)
    }

    /// The candidate's side (the target of the next release).
    pub fn candidate(&self) -> Side {
        self.side.other()
    }

    /// Whether both sides' records were read (a decision that would write
    /// to a database needs both).
    pub fn complete(&self) -> bool {
        self.unread.is_empty()
    }

    /// For people: `green (since 2026-12-01T10:00:00Z, promoted)`.
    pub fn describe(&self) -> String {
        match (&self.since, self.kind) {
            (Some(at), Some(k)) => format!(
                "{}'s database (since {at}, by a {} cutover, generation {})",
                self.side,
                match k {
                    CutoverKind::Promote => "promotion",
                    CutoverKind::Rollback => "rollback",
                },
                self.generation
            ),
            _ => format!("{}'s database (no cutover recorded yet)", self.side),
        }
    }

    /// Refuses, changing nothing, when `target` is the primary: no step
    /// of a release ever writes over the database that takes the
    /// application's writes.
    pub fn refuse_target(&self, target: Side) -> Result<(), SyncError> {
        if target == self.side {
            return Err(SyncError::TargetIsPrimary {
                side: target,
                since: self
                    .since
                    .clone()
                    .unwrap_or_else(|| "the start (no cutover recorded)".into()),
            });
        }
        Ok(())
    }
}

use switchyard_config::{DatabaseConfig, DatabaseEngine};

/// Reads the primary from both databases' records.
pub async fn primary(db: &DatabaseConfig) -> Result<Primary, SyncError> {
    match db.engine() {
        DatabaseEngine::Postgres => crate::postgres::state::primary(db).await,
        DatabaseEngine::MySql => crate::mysql::state::primary(db).await,
    }
}

/// Records a committed cutover that made `primary` the primary, in both
/// databases (the new primary's first). A side that cannot be written is
/// returned as an error for the caller to report; the newest generation
/// wins when the records are read, so one side's record is enough.
pub async fn record_cutover(
    db: &DatabaseConfig,
    primary: Side,
    kind: CutoverKind,
) -> Result<(), SyncError> {
    match db.engine() {
        DatabaseEngine::Postgres => crate::postgres::state::record_cutover(db, primary, kind).await,
        DatabaseEngine::MySql => crate::mysql::state::record_primary_of(db, primary).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(generation: i64, primary: Side, kind: CutoverKind) -> CutoverRow {
        CutoverRow {
            generation,
            primary,
            kind,
            at: format!("t{generation}"),
        }
    }

    #[test]
    fn the_newest_generation_on_either_side_names_the_primary() {
        let p = Primary::from_records(Ok(vec![]), Ok(vec![])).unwrap();
        assert_eq!((p.side, p.generation, p.promoted), (Side::Blue, 0, false));
        assert_eq!(p.direction(), Direction::Forward);
        // Green was promoted; blue's record of it was lost.
        let p = Primary::from_records(
            Ok(vec![]),
            Ok(vec![row(1, Side::Green, CutoverKind::Promote)]),
        )
        .unwrap();
        assert_eq!((p.side, p.generation, p.promoted), (Side::Green, 1, true));
        assert_eq!(p.direction(), Direction::Reverse);
        // Blue was promoted by the second release: blue's newer record wins
        // over green's older one.
        let p = Primary::from_records(
            Ok(vec![
                row(1, Side::Green, CutoverKind::Promote),
                row(2, Side::Blue, CutoverKind::Promote),
            ]),
            Ok(vec![row(1, Side::Green, CutoverKind::Promote)]),
        )
        .unwrap();
        assert_eq!((p.side, p.generation, p.promoted), (Side::Blue, 2, true));
        assert!(p.refuse_target(Side::Blue).is_err());
        assert!(p.refuse_target(Side::Green).is_ok());
    }

    #[test]
    fn a_rollback_to_a_colour_never_promoted_is_not_a_promotion() {
        let p = Primary::from_records(
            Ok(vec![
                row(1, Side::Green, CutoverKind::Promote),
                row(2, Side::Blue, CutoverKind::Rollback),
            ]),
            Ok(vec![
                row(1, Side::Green, CutoverKind::Promote),
                row(2, Side::Blue, CutoverKind::Rollback),
            ]),
        )
        .unwrap();
        assert_eq!((p.side, p.promoted), (Side::Blue, false));
        // Rolled back to green, which a promotion made the primary before.
        let p = Primary::from_records(
            Ok(vec![]),
            Ok(vec![
                row(1, Side::Green, CutoverKind::Promote),
                row(2, Side::Blue, CutoverKind::Promote),
                row(3, Side::Green, CutoverKind::Rollback),
            ]),
        )
        .unwrap();
        assert_eq!((p.side, p.promoted), (Side::Green, true));
    }

    #[test]
    fn records_that_disagree_are_an_error_and_an_unread_side_is_named() {
        let e = Primary::from_records(
            Ok(vec![row(1, Side::Blue, CutoverKind::Promote)]),
            Ok(vec![row(1, Side::Green, CutoverKind::Promote)]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("disagree"), "{e}");
        let p = Primary::from_records(
            Err("connection refused".into()),
            Ok(vec![row(1, Side::Green, CutoverKind::Promote)]),
        )
        .unwrap();
        assert!(!p.complete());
        assert!(p.unread[0].contains("blue: connection refused"));
    }
}
