//! What `verify` reports, for every engine: a verdict per table with the
//! first differing keys, and the schema objects that differ.

use serde::{Deserialize, Serialize};

/// One differing row.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Difference {
    /// The primary key, e.g. `id=42` or `(tenant, id)=(3, 42)`.
    pub key: String,
    /// `changed`, `missing_in_green` or `extra_in_green`.
    pub kind: String,
    /// The key's values as text, in key order (for re-checking).
    #[serde(skip)]
    pub values: Vec<String>,
}

/// The verdict for one table.
#[derive(Debug, Clone, Serialize)]
pub struct TableVerdict {
    pub table: String,
    /// `equal`, `differs` or `missing_in_green`.
    pub status: String,
    pub blue_rows: i64,
    pub green_rows: Option<i64>,
    /// The first differing keys (tables with a primary key only).
    pub differences: Vec<Difference>,
    pub note: Option<String>,
}

/// The outcome of `verify`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub passed: bool,
    pub tables: Vec<TableVerdict>,
    /// Objects that differ (indexes, constraints, triggers, ...); those a
    /// migration made on purpose carry `expected` and do not fail verify.
    pub schema: Vec<SchemaDifference>,
    /// Things worth knowing that do not fail verify.
    pub notes: Vec<String>,
    pub schema_version: Option<String>,
    pub latest_migration: Option<String>,
    /// Problems other than table contents (schema version, migrations).
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn mismatched(&self) -> usize {
        self.tables.iter().filter(|t| t.status != "equal").count()
    }

    /// The human-readable report: each differing table with its first differing keys.
    pub fn render(&self) -> String {
        let v = self;
        let mut t = String::new();
        for tv in &v.tables {
            if tv.status == "equal" {
                continue;
            }
            t.push_str(&format!(
                "{}: {} (blue {} rows, green {})\n",
                tv.table,
                tv.status,
                tv.blue_rows,
                tv.green_rows
                    .map(|n| format!("{n} rows"))
                    .unwrap_or_else(|| "missing".into())
            ));
            for d in &tv.differences {
                t.push_str(&format!("  {} {}\n", d.key, d.kind));
            }
            if let Some(n) = &tv.note {
                t.push_str(&format!("  {n}\n"));
            }
        }
        for d in &v.schema {
            t.push_str(&format!("{d}\n"));
        }
        for p in &v.problems {
            t.push_str(&format!("{p}\n"));
        }
        for n in &v.notes {
            t.push_str(&format!("note: {n}\n"));
        }
        t.push_str(&format!(
            "verify {}: {} tables, {} differ; {} schema objects differ ({} of them expected from migrations)\n",
            if v.passed { "passed" } else { "FAILED" },
            v.tables.len(),
            v.mismatched(),
            v.schema.len(),
            v.schema.iter().filter(|d| d.expected.is_some()).count()
        ));
        t
    }
}

/// What kind of object a fingerprint entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    Schema,
    Extension,
    Table,
    Column,
    Constraint,
    Index,
    Trigger,
    Policy,
    View,
    MaterializedView,
    Sequence,
    Function,
    /// A stored procedure (MySQL/MariaDB).
    Procedure,
    /// A scheduled event (MySQL/MariaDB).
    Event,
    Type,
    Owner,
    Grants,
    DefaultPrivileges,
}

impl ObjectKind {
    /// The name used in messages, e.g. `materialized view`.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Schema => "schema",
            ObjectKind::Extension => "extension",
            ObjectKind::Table => "table",
            ObjectKind::Column => "column",
            ObjectKind::Constraint => "constraint",
            ObjectKind::Index => "index",
            ObjectKind::Trigger => "trigger",
            ObjectKind::Policy => "policy",
            ObjectKind::View => "view",
            ObjectKind::MaterializedView => "materialized view",
            ObjectKind::Sequence => "sequence",
            ObjectKind::Function => "function",
            ObjectKind::Procedure => "procedure",
            ObjectKind::Event => "event",
            ObjectKind::Type => "type",
            ObjectKind::Owner => "owner of",
            ObjectKind::Grants => "grants on",
            ObjectKind::DefaultPrivileges => "default privileges",
        }
    }

    /// The kind whose serialized name is `s` (as `migrate` records it).
    pub(crate) fn parse(s: &str) -> Option<ObjectKind> {
        ObjectKind::deserialize(
            serde::de::value::StrDeserializer::<serde::de::value::Error>::new(s),
        )
        .ok()
    }
}

/// How an object differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    MissingOnGreen,
    OnlyOnGreen,
    Differs,
}

/// One object that is not the same on both sides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SchemaDifference {
    pub kind: ObjectKind,
    pub name: String,
    pub problem: Problem,
    pub blue: Option<String>,
    pub green: Option<String>,
    /// The migration that made this difference on purpose, if one did.
    pub expected: Option<String>,
}

impl std::fmt::Display for SchemaDifference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match (self.kind, self.problem) {
            (ObjectKind::Index, Problem::Differs)
                if self
                    .green
                    .as_deref()
                    .is_some_and(|g| g.ends_with("(INVALID)")) =>
            {
                "is invalid on green (a failed or interrupted build)".to_string()
            }
            (ObjectKind::MaterializedView, Problem::Differs)
                if self
                    .green
                    .as_deref()
                    .is_some_and(|g| g.ends_with("(NOT POPULATED)")) =>
            {
                "is not populated on green".to_string()
            }
            (_, Problem::MissingOnGreen) => "missing on green".to_string(),
            (_, Problem::OnlyOnGreen) => "only on green".to_string(),
            (_, Problem::Differs) => format!(
                "differs: blue has {:?}, green has {:?}",
                self.blue.as_deref().unwrap_or(""),
                self.green.as_deref().unwrap_or("")
            ),
        };
        write!(f, "{} {} {what}", self.kind.as_str(), self.name)?;
        if let Some(m) = &self.expected {
            write!(f, " (expected: made by migration {m})")?;
        }
        Ok(())
    }
}
