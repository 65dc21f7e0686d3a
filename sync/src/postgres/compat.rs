//! Schema compatibility in replicate mode: logical replication applies
//! blue's rows to green by column name, converting each value from its text
//! form. A migration on green that drops or renames a published column,
//! changes its type to one blue's values may not fit, or adds a NOT NULL
//! column without a default (blue's rows have no value for it) stops the
//! subscription at the next change. [`check`] runs inside the migration's
//! transaction, before it commits, so an incompatible migration is rolled
//! back and never recorded.

use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{Side, SyncError};
use crate::pg;

/// A column as replication sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Column {
    pub table: String,
    pub name: String,
    /// `format_type` text, e.g. `character varying(20)`.
    pub sql_type: String,
    /// Base type name (domains resolved), e.g. `varchar`.
    pub base: String,
    pub typmod: i32,
    pub not_null: bool,
    pub has_default: bool,
    pub generated: bool,
    pub identity: bool,
}

/// The primary's tables and columns that replication carries to the
/// candidate's database.
#[derive(Debug, Clone, Serialize)]
pub struct PublishedSchema {
    /// The side that publishes them (the primary).
    pub side: Side,
    pub columns: Vec<Column>,
}

const COLUMNS: &str = "SELECT n.nspname || '.' || c.relname, a.attname::text, format_type(a.atttypid, a.atttypmod), \
        b.typname::text, a.atttypmod, a.attnotnull, a.atthasdef, a.attgenerated <> '', a.attidentity <> '' \
   FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
   JOIN pg_type t ON t.oid = a.atttypid \
   JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END \
  WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped";

async fn columns(c: &Client, side: Side, extra: &str) -> Result<Vec<Column>, SyncError> {
    let sql = format!(
        "{COLUMNS} AND {} {extra} ORDER BY 1, a.attnum",
        pg::SYSTEM_SCHEMA_FILTER
    );
    let rows = c
        .query(&sql, &[])
        .await
        .map_err(|e| SyncError::query(side, "reading table columns", &e))?;
    Ok(rows
        .iter()
        .map(|r| Column {
            table: r.get(0),
            name: r.get(1),
            sql_type: r.get(2),
            base: r.get(3),
            typmod: r.get(4),
            not_null: r.get(5),
            has_default: r.get(6),
            generated: r.get(7),
            identity: r.get(8),
        })
        .collect())
}

/// Reads the published columns of the primary (`side`): the tables of
/// switchyard's publication `publication` when it exists, otherwise every
/// user table (what replicate would publish), every column of them (also
/// those a column list leaves out for now: a later release widens the
/// list). Generated columns are left out: they are never published.
pub async fn published_schema(
    blue: &Client,
    side: Side,
    publication: &str,
) -> Result<PublishedSchema, SyncError> {
    let has_pub = blue
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|e| SyncError::query(side, "looking up the publication", &e))?
        .is_some();
    let extra = if has_pub {
        format!(
            "AND EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid \
                      WHERE p.pubname = {} AND pr.prrelid = c.oid)",
            pg::literal(publication)
        )
    } else {
        "AND c.relkind = 'r'".to_string()
    };
    let mut cols = columns(blue, side, &extra).await?;
    cols.retain(|c| !c.generated && c.table != format!("public.{}", crate::migrate::HISTORY_TABLE));
    Ok(PublishedSchema {
        side,
        columns: cols,
    })
}

/// One way green would break replication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub table: String,
    pub column: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Compares green (as the session `green` sees it, inside a migration's
/// transaction) with blue's published columns.
pub async fn check(
    green: &Client,
    side: Side,
    published: &PublishedSchema,
) -> Result<Vec<Problem>, SyncError> {
    let green_cols = columns(green, side, "").await?;
    let mut problems = Vec::new();
    let tables: std::collections::BTreeSet<&str> =
        published.columns.iter().map(|c| c.table.as_str()).collect();
    for table in &tables {
        let on_green: Vec<&Column> = green_cols.iter().filter(|g| g.table == *table).collect();
        if on_green.is_empty() {
            problems.push(Problem {
                table: table.to_string(),
                column: None,
                message: format!(
                    "table {table} is published by {} but does not exist on {side} (dropped or renamed)",
                    published.side
                ),
            });
            continue;
        }
        for b in published.columns.iter().filter(|c| c.table == *table) {
            match on_green.iter().find(|g| g.name == b.name) {
                None => problems.push(Problem {
                    table: table.to_string(),
                    column: Some(b.name.clone()),
                    message: format!(
                        "column {table}.{} is published by {} but missing on {side} (dropped or renamed)",
                        b.name, published.side
                    ),
                }),
                Some(g) if g.generated => problems.push(Problem {
                    table: table.to_string(),
                    column: Some(b.name.clone()),
                    message: format!(
                        "column {table}.{} became a generated column on {side}, which replicated values cannot be written to",
                        b.name
                    ),
                }),
                Some(g) if !type_fits(b, g) => problems.push(Problem {
                    table: table.to_string(),
                    column: Some(b.name.clone()),
                    message: format!(
                        "column {table}.{} changed type from {} to {}, which not every value {} writes fits",
                        b.name, b.sql_type, g.sql_type, published.side
                    ),
                }),
                Some(_) => {}
            }
        }
        for g in on_green.iter().filter(|g| {
            g.not_null
                && !g.has_default
                && !g.generated
                && !g.identity
                && !published
                    .columns
                    .iter()
                    .any(|b| b.table == *table && b.name == g.name)
        }) {
            problems.push(Problem {
                table: table.to_string(),
                column: Some(g.name.clone()),
                message: format!(
                    "new column {table}.{} is NOT NULL without a default: rows replicated from {} have no value for it (give it a default, or add the constraint after cutover)",
                    g.name, published.side
                ),
            });
        }
    }
    Ok(problems)
}

/// Whether every value of blue's column type is accepted by green's.
fn type_fits(blue: &Column, green: &Column) -> bool {
    if blue.sql_type == green.sql_type {
        return true;
    }
    let (b, g) = (blue.base.as_str(), green.base.as_str());
    let rank = |t: &str| match t {
        "int2" => Some(1),
        "int4" => Some(2),
        "int8" => Some(3),
        _ => None,
    };
    match (b, g) {
        (_, "text") if matches!(b, "varchar" | "bpchar" | "text" | "name") => true,
        ("varchar", "varchar") => {
            green.typmod < 0 || (blue.typmod >= 0 && green.typmod >= blue.typmod)
        }
        ("bpchar", "varchar") => {
            green.typmod < 0 || (blue.typmod >= 0 && green.typmod >= blue.typmod)
        }
        ("float4", "float8") => true,
        ("numeric", "numeric") => {
            if green.typmod < 0 {
                return true;
            }
            if blue.typmod < 0 {
                return false;
            }
            let (bp, bs) = ((blue.typmod - 4) >> 16, (blue.typmod - 4) & 0xffff);
            let (gp, gs) = ((green.typmod - 4) >> 16, (green.typmod - 4) & 0xffff);
            gs >= bs && gp - gs >= bp - bs
        }
        (x, "numeric") if rank(x).is_some() => {
            if green.typmod < 0 {
                return true;
            }
            let (gp, gs) = ((green.typmod - 4) >> 16, (green.typmod - 4) & 0xffff);
            let digits = match x {
                "int2" => 5,
                "int4" => 10,
                _ => 19,
            };
            gp - gs >= digits
        }
        (x, y) => match (rank(x), rank(y)) {
            (Some(a), Some(b)) => b >= a,
            _ => b == g && blue.typmod == green.typmod,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(sql_type: &str, base: &str, typmod: i32) -> Column {
        Column {
            table: "public.t".into(),
            name: "c".into(),
            sql_type: sql_type.into(),
            base: base.into(),
            typmod,
            not_null: false,
            has_default: false,
            generated: false,
            identity: false,
        }
    }

    #[test]
    fn widening_fits_and_narrowing_does_not() {
        let int4 = col("integer", "int4", -1);
        let int8 = col("bigint", "int8", -1);
        let text = col("text", "text", -1);
        let vc10 = col("character varying(10)", "varchar", 14);
        let vc20 = col("character varying(20)", "varchar", 24);
        assert!(type_fits(&int4, &int8));
        assert!(!type_fits(&int8, &int4));
        assert!(type_fits(&vc10, &vc20));
        assert!(!type_fits(&vc20, &vc10));
        assert!(type_fits(&vc10, &text));
        assert!(!type_fits(&text, &vc10));
        assert!(
            !type_fits(&int4, &text),
            "int -> text changes how values compare"
        );
        let n10_2 = col("numeric(10,2)", "numeric", (10 << 16 | 2) + 4);
        let n12_2 = col("numeric(12,2)", "numeric", (12 << 16 | 2) + 4);
        let n10_3 = col("numeric(10,3)", "numeric", (10 << 16 | 3) + 4);
        assert!(type_fits(&n10_2, &n12_2));
        assert!(!type_fits(&n12_2, &n10_2));
        assert!(!type_fits(&n10_2, &n10_3), "fewer integer digits");
        assert!(type_fits(&int4, &col("numeric", "numeric", -1)));
    }
}
