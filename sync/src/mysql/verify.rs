//! Compare blue's MySQL/MariaDB database with green's, the way
//! pt-table-checksum does: rows in primary-key order cut into chunks of
//! [`CHUNK_ROWS`] (boundaries read from blue), each chunk's row count and
//! checksum computed by the server on both sides (`MD5` of every column,
//! NULLs marked, summed in two 60-bit halves so duplicates do not cancel),
//! and only a chunk that differs is read row by row (key and row hash) to
//! name the changed, missing and extra keys. Values are compared as the
//! servers store them, with the sessions in UTC (so `TIMESTAMP`s compare
//! as instants), `FLOAT` widened to `DOUBLE` (every stored bit counts) and
//! `BIT` as its number. Tables, views, routines, triggers and events are
//! compared by their definitions, counters and definers aside.

use super::catalog::{self, Column, Table};
use super::{connect, ident, literal, Session};
use crate::error::{Side, SyncError};
use crate::verdict::{Difference, TableVerdict, VerifyReport};
use crate::verdict::{ObjectKind, Problem, SchemaDifference};
use std::collections::BTreeMap;
use switchyard_config::DatabaseConfig;

/// Rows per checksummed chunk.
pub const CHUNK_ROWS: u64 = 10_000;
/// Report at most this many differing keys per table.
const MAX_DIFFS: usize = 10;

/// Binary string types: keys of these are read as hex and written as `X'…'`.
fn is_binary(c: &Column) -> bool {
    matches!(
        c.data_type.as_str(),
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob"
    )
}

/// The expression hashed for one column.
fn hash_expr(c: &Column) -> String {
    let i = ident(&c.name);
    match c.data_type.as_str() {
        "bit" => format!("{i}+0"),
        "float" => format!("CAST({i} AS DOUBLE)"),
        // A column whose type differs between the sides (a migration
        // changed it): equal values must hash equal whatever the scale,
        // width or character set.
        NORMALISE_NUMBER => format!("CAST({i} AS DECIMAL(65,30))"),
        NORMALISE_REAL => format!("CAST({i} AS DOUBLE)"),
        NORMALISE_TEXT => format!("CONVERT({i} USING utf8mb4)"),
        NORMALISE_TIME => format!("CAST({i} AS DATETIME(6))"),
        _ => i,
    }
}

const NORMALISE_NUMBER: &str = "switchyard:number";
const NORMALISE_REAL: &str = "switchyard:real";
const NORMALISE_TEXT: &str = "switchyard:text";
const NORMALISE_TIME: &str = "switchyard:time";

/// How to compare a column whose type differs between blue and green, if
/// the two types are of one family; `None` compares the stored values.
fn normalised_as(blue: &Column, green: &Column) -> Option<&'static str> {
    if blue.column_type == green.column_type {
        return None;
    }
    let family = |t: &str| match t {
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "decimal"
        | "numeric" => 1,
        "float" | "double" | "real" => 2,
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "enum" | "set" => 3,
        "datetime" | "timestamp" => 4,
        _ => 0,
    };
    match (family(&blue.data_type), family(&green.data_type)) {
        (1, 1) => Some(NORMALISE_NUMBER),
        (2, 2) | (1, 2) | (2, 1) => Some(NORMALISE_REAL),
        (3, 3) => Some(NORMALISE_TEXT),
        (4, 4) => Some(NORMALISE_TIME),
        _ => None,
    }
}

/// A row as the text its checksums are taken of: every column, then every
/// value's length in bytes, -1 for NULL. The lengths fix where one value
/// ends and the next begins, so text moved across a column boundary
/// (`('a#', 'b')` and `('a', '#b')`, the same under pt-table-checksum's
/// `CONCAT_WS('#', …)`) differs, and so do `NULL` and `''`.
fn row_text(columns: &[&Column]) -> String {
    if columns.is_empty() {
        return "''".into();
    }
    let values: Vec<String> = columns.iter().map(|c| hash_expr(c)).collect();
    let lengths: Vec<String> = values
        .iter()
        .map(|v| format!("IFNULL(LENGTH({v}), -1)"))
        .collect();
    format!(
        "CONCAT_WS('#', {}, CONCAT_WS(',', {}))",
        values.join(", "),
        lengths.join(", ")
    )
}

/// `MD5` of a row, for naming the rows of a chunk that differs.
fn row_hash(columns: &[&Column]) -> String {
    format!("MD5({})", row_text(columns))
}

/// A chunk's checksum, summed (not XORed, so two equal rows do not cancel)
/// as exact integers: CRC32 per row as pt-table-checksum takes it, and a
/// second, independent 32 bits where the server has CRC32C (MariaDB 10.8+),
/// else 60 bits of MD5.
fn chunk_sum_sql(s: &Session, columns: &[&Column], table: &str, filter: &str) -> String {
    let second = if s.flavor == super::Flavor::MariaDb && has_crc32c(&s.version) {
        "SUM(CRC32C(sy_row))"
    } else {
        "SUM(CAST(CONV(LEFT(MD5(sy_row), 15), 16, 10) AS UNSIGNED))"
    };
    format!(
        "SELECT COUNT(*), CAST(IFNULL(SUM(CRC32(sy_row)), 0) AS CHAR), CAST(IFNULL({second}, 0) AS CHAR) \
           FROM (SELECT {} AS sy_row FROM {} {filter}) AS sy_rows",
        row_text(columns),
        ident(table)
    )
}

fn has_crc32c(version: &str) -> bool {
    let mut p = version
        .split(['.', '-'])
        .map(|x| x.parse::<u32>().unwrap_or(0));
    (p.next().unwrap_or(0), p.next().unwrap_or(0)) >= (10, 8)
}

/// A key as SQL literals, from the text the boundary query returned.
fn key_literal(columns: &[&Column], values: &[Option<String>]) -> String {
    let parts: Vec<String> = columns
        .iter()
        .zip(values)
        .map(|(c, v)| match v {
            None => "NULL".to_string(),
            Some(v) if is_binary(c) => format!("X'{v}'"),
            Some(v) if c.is_integer() && v.bytes().all(|b| b.is_ascii_digit() || b == b'-') => {
                v.clone()
            }
            Some(v) => literal(v),
        })
        .collect();
    format!("({})", parts.join(", "))
}

fn key_select(columns: &[&Column]) -> String {
    columns
        .iter()
        .map(|c| {
            if is_binary(c) {
                format!("HEX({})", ident(&c.name))
            } else {
                ident(&c.name)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One table to compare: the columns both sides have.
struct Plan {
    table: String,
    key: Vec<Column>,
    columns: Vec<Column>,
}

/// One chunk's count and checksum.
#[derive(Debug, PartialEq, Eq)]
struct Sum {
    rows: i64,
    hash: (String, String),
}

async fn chunk_sum(s: &mut Session, plan: &Plan, filter: &str) -> Result<Sum, SyncError> {
    let cols: Vec<&Column> = plan.columns.iter().collect();
    let sql = chunk_sum_sql(s, &cols, &plan.table, filter);
    let rows = s
        .rows(&format!("checksumming table {}", plan.table), &sql)
        .await?;
    let r = &rows[0];
    Ok(Sum {
        rows: r.get::<i64, _>(0).unwrap_or(0),
        hash: (
            r.get::<String, _>(1).unwrap_or_default(),
            r.get::<String, _>(2).unwrap_or_default(),
        ),
    })
}

/// Key → row hash for the rows of one chunk.
async fn chunk_rows(
    s: &mut Session,
    plan: &Plan,
    filter: &str,
) -> Result<BTreeMap<Vec<Option<String>>, String>, SyncError> {
    let key: Vec<&Column> = plan.key.iter().collect();
    let cols: Vec<&Column> = plan.columns.iter().collect();
    let sql = format!(
        "SELECT {}, {} FROM {} {filter}",
        key_select(&key),
        row_hash(&cols),
        ident(&plan.table)
    );
    let rows = s
        .rows(
            &format!("reading the rows of table {} that differ", plan.table),
            &sql,
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let n = key.len();
            let k: Vec<Option<String>> = (0..n)
                .map(|i| r.get::<Option<String>, _>(i).flatten())
                .collect();
            (k, r.get::<String, _>(n).unwrap_or_default())
        })
        .collect())
}

fn describe_key(key: &[Column], values: &[Option<String>]) -> String {
    let names: Vec<&str> = key.iter().map(|c| c.name.as_str()).collect();
    let vals: Vec<String> = values
        .iter()
        .map(|v| v.clone().unwrap_or_else(|| "NULL".into()))
        .collect();
    if names.len() == 1 {
        format!("{}={}", names[0], vals[0])
    } else {
        format!("({})=({})", names.join(", "), vals.join(", "))
    }
}

/// Compares one table, chunk by chunk.
async fn compare_table(
    blue: &mut Session,
    green: &mut Session,
    plan: &Plan,
) -> Result<(i64, i64, Vec<Difference>, usize), SyncError> {
    let key: Vec<&Column> = plan.key.iter().collect();
    let mut filters = Vec::new();
    if key.is_empty() {
        filters.push(String::new());
    } else {
        let names = format!(
            "({})",
            key.iter()
                .map(|c| ident(&c.name))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let order = key
            .iter()
            .map(|c| ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {} FROM (SELECT {}, ROW_NUMBER() OVER (ORDER BY {order}) AS sy_rn FROM {}) AS sy_keys \
              WHERE MOD(sy_rn, {CHUNK_ROWS}) = 0 ORDER BY sy_rn",
            key_select(&key),
            order,
            ident(&plan.table)
        );
        let bounds: Vec<String> = blue
            .rows(&format!("cutting table {} into chunks", plan.table), &sql)
            .await?
            .into_iter()
            .map(|r| {
                let v: Vec<Option<String>> = (0..key.len())
                    .map(|i| r.get::<Option<String>, _>(i).flatten())
                    .collect();
                key_literal(&key, &v)
            })
            .collect();
        let mut lo: Option<&String> = None;
        for b in &bounds {
            filters.push(match lo {
                None => format!("WHERE {names} < {b}"),
                Some(l) => format!("WHERE {names} >= {l} AND {names} < {b}"),
            });
            lo = Some(b);
        }
        filters.push(match lo {
            None => String::new(),
            Some(l) => format!("WHERE {names} >= {l}"),
        });
    }
    let (mut blue_rows, mut green_rows) = (0, 0);
    let mut differences = Vec::new();
    let mut differing_chunks = 0;
    for filter in &filters {
        let (b, g) = tokio::join!(
            chunk_sum(blue, plan, filter),
            chunk_sum(green, plan, filter)
        );
        let (b, g) = (b?, g?);
        blue_rows += b.rows;
        green_rows += g.rows;
        if b == g {
            continue;
        }
        differing_chunks += 1;
        if key.is_empty() || differences.len() >= MAX_DIFFS {
            continue;
        }
        let (b, g) = tokio::join!(
            chunk_rows(blue, plan, filter),
            chunk_rows(green, plan, filter)
        );
        let (b, g) = (b?, g?);
        for (k, h) in &b {
            let kind = match g.get(k) {
                None => "missing_in_green",
                Some(gh) if gh != h => "changed",
                Some(_) => continue,
            };
            differences.push(Difference {
                key: describe_key(&plan.key, k),
                kind: kind.into(),
                values: k.iter().map(|v| v.clone().unwrap_or_default()).collect(),
            });
        }
        for k in g.keys().filter(|k| !b.contains_key(*k)) {
            differences.push(Difference {
                key: describe_key(&plan.key, k),
                kind: "extra_in_green".into(),
                values: k.iter().map(|v| v.clone().unwrap_or_default()).collect(),
            });
        }
        differences.truncate(MAX_DIFFS);
    }
    Ok((blue_rows, green_rows, differences, differing_chunks))
}

/// How many times a differing table is compared again after green has
/// caught up, while replicating (a row changed on blue between the two
/// sides' reads is lag, not a difference).
const RECHECKS: usize = 3;

/// Compares blue with green and records the verdict in green. With
/// `snapshot` (right after a clone), blue is read in the clone's own
/// snapshot, so green must equal it exactly; otherwise blue is read live,
/// and while green replicates a differing table is compared again once
/// green has caught up.
pub async fn verify(
    db: &DatabaseConfig,
    snapshot: Option<&mut super::clone::SnapshotHolder>,
) -> Result<VerifyReport, SyncError> {
    let live = snapshot.is_none();
    let mut own;
    let blue: &mut Session = match snapshot {
        Some(h) => &mut h.0,
        None => {
            own = connect(Side::Blue, &db.blue).await?;
            &mut own
        }
    };
    let mut green = connect(Side::Green, &db.green).await?;
    let blue_tables = catalog::tables(blue).await?;
    let green_tables = catalog::tables(&mut green).await?;
    let changed_by_migrations = super::migrate::changed_objects(&mut green).await?;
    let expected = |kind: ObjectKind, name: &str| {
        changed_by_migrations
            .iter()
            .find(|(k, n, _)| *k == kind && n == name)
            .map(|(_, _, script)| script.clone())
    };
    let mut schema = Vec::new();
    let mut tables = Vec::new();
    let mut notes = Vec::new();

    for t in &blue_tables {
        let Some(g) = green_tables.iter().find(|g| g.name == t.name) else {
            let blue_rows = blue
                .text(
                    "counting rows",
                    &format!("SELECT COUNT(*) FROM {}", ident(&t.name)),
                )
                .await?
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            tables.push(TableVerdict {
                table: t.name.clone(),
                status: "missing_in_green".into(),
                blue_rows,
                green_rows: None,
                differences: Vec::new(),
                note: None,
            });
            continue;
        };
        let (bc, gc) = (
            catalog::create_table(blue, &t.name).await?,
            catalog::create_table(&mut green, &t.name).await?,
        );
        if catalog::normalised(&bc) != catalog::normalised(&gc) {
            schema.push(SchemaDifference {
                kind: ObjectKind::Table,
                name: t.name.clone(),
                problem: Problem::Differs,
                blue: Some(bc),
                green: Some(gc),
                expected: expected(ObjectKind::Table, &t.name),
            });
        }
        let plan = plan_for(t, g);
        let mut compared = compare_table(blue, &mut green, &plan).await?;
        let mut attempt = 0;
        while live && compared.3 > 0 && attempt < RECHECKS && replicating(db).await {
            attempt += 1;
            let _ = super::replica::wait_caught_up(
                db,
                crate::replication::Direction::Forward,
                db.max_lag.max(std::time::Duration::from_secs(1)),
            )
            .await;
            compared = compare_table(blue, &mut green, &plan).await?;
        }
        let (blue_rows, green_rows, differences, chunks) = compared;
        let equal = chunks == 0;
        let note = if t.primary_key.is_empty() {
            Some("no primary key: compared as a whole (count and checksum), differing rows cannot be named".to_string())
        } else if !equal && differences.is_empty() {
            Some(format!("{chunks} chunk(s) differ"))
        } else {
            None
        };
        tables.push(TableVerdict {
            table: t.name.clone(),
            status: if equal { "equal" } else { "differs" }.into(),
            blue_rows,
            green_rows: Some(green_rows),
            differences,
            note,
        });
    }
    // Migrate's own history on green is not a difference.
    for g in green_tables.iter().filter(|g| {
        !blue_tables.iter().any(|t| t.name == g.name) && g.name != crate::flyway::HISTORY_TABLE
    }) {
        schema.push(SchemaDifference {
            kind: ObjectKind::Table,
            name: g.name.clone(),
            problem: Problem::OnlyOnGreen,
            blue: None,
            green: Some(g.name.clone()),
            expected: expected(ObjectKind::Table, &g.name),
        });
    }

    let (bo, go) = (
        catalog::objects(blue).await?,
        catalog::objects(&mut green).await?,
    );
    let kind_of = |k: catalog::ObjectKind| match k {
        catalog::ObjectKind::View => ObjectKind::View,
        catalog::ObjectKind::Function => ObjectKind::Function,
        catalog::ObjectKind::Procedure => ObjectKind::Procedure,
        catalog::ObjectKind::Trigger => ObjectKind::Trigger,
        catalog::ObjectKind::Event => ObjectKind::Event,
    };
    for b in &bo {
        let kind = kind_of(b.kind);
        let g = go.iter().find(|g| g.kind == b.kind && g.name == b.name);
        let problem = match g {
            None => Problem::MissingOnGreen,
            Some(g) if catalog::normalised(&g.create) != catalog::normalised(&b.create) => {
                Problem::Differs
            }
            Some(_) => continue,
        };
        schema.push(SchemaDifference {
            kind,
            name: b.name.clone(),
            problem,
            blue: Some(b.create.clone()),
            green: g.map(|g| g.create.clone()),
            expected: expected(kind, &b.name),
        });
    }
    for g in go
        .iter()
        .filter(|g| !bo.iter().any(|b| b.kind == g.kind && b.name == g.name))
    {
        let kind = kind_of(g.kind);
        schema.push(SchemaDifference {
            kind,
            name: g.name.clone(),
            problem: Problem::OnlyOnGreen,
            blue: None,
            green: Some(g.create.clone()),
            expected: expected(kind, &g.name),
        });
    }
    if db.roles == switchyard_config::RolesMode::Copy {
        let (bg, gg) = (
            catalog::grants(blue).await?,
            catalog::grants(&mut green).await?,
        );
        let mut grantees: Vec<&str> = bg
            .iter()
            .chain(gg.iter())
            .map(|g| g.grantee.as_str())
            .collect();
        grantees.sort_unstable();
        grantees.dedup();
        for who in grantees {
            let show = |v: &[catalog::Grant]| -> Option<String> {
                let mine: Vec<String> = v
                    .iter()
                    .filter(|g| g.grantee == who)
                    .map(|g| format!("{} ON {}", g.privilege, g.table.as_deref().unwrap_or("*")))
                    .collect();
                (!mine.is_empty()).then(|| mine.join(", "))
            };
            let (b, g) = (show(&bg), show(&gg));
            if b != g {
                schema.push(SchemaDifference {
                    kind: ObjectKind::Grants,
                    name: who.to_string(),
                    problem: match (&b, &g) {
                        (Some(_), None) => Problem::MissingOnGreen,
                        (None, Some(_)) => Problem::OnlyOnGreen,
                        _ => Problem::Differs,
                    },
                    blue: b,
                    green: g,
                    expected: None,
                });
            }
        }
    }
    if go.iter().any(|o| o.kind == catalog::ObjectKind::Event) {
        notes.push("events are compared by definition; clone leaves them disabled on green".into());
    }

    let history = super::migrate::read_history(&mut green).await?;
    let schema_version = crate::flyway::current_version(&history).map(|v| v.to_string());
    let latest_migration = crate::flyway::newest_on_disk(&db.migrations)?.map(|v| v.to_string());
    let passed =
        tables.iter().all(|t| t.status == "equal") && schema.iter().all(|d| d.expected.is_some());
    let report = VerifyReport {
        passed,
        tables,
        schema,
        notes,
        schema_version,
        latest_migration,
        problems: Vec::new(),
    };
    super::state::record_verification(&mut green, &report).await?;
    green.close().await;
    Ok(report)
}

/// Whether green replicates blue right now (switchyard's connection running).
async fn replicating(db: &DatabaseConfig) -> bool {
    db.mode == switchyard_config::SyncMode::Replicate
        && super::replica::status(db).await.state == crate::replication::ReplicationState::Streaming
}

/// What to compare in a table both sides have: the columns of both (a
/// migration may have added or dropped some on green; the schema
/// comparison reports that), keyed on blue's primary key when green has
/// the same one.
fn plan_for(blue: &Table, green: &Table) -> Plan {
    let columns: Vec<Column> = blue
        .columns
        .iter()
        .filter_map(|c| {
            let g = green.column(&c.name)?;
            let mut c = c.clone();
            if let Some(n) = normalised_as(&c, g) {
                c.data_type = n.to_string();
            }
            Some(c)
        })
        .collect();
    let key = if blue.primary_key == green.primary_key {
        blue.primary_key
            .iter()
            .filter_map(|k| blue.column(k).cloned())
            .collect()
    } else {
        Vec::new()
    };
    Plan {
        table: blue.name.clone(),
        key,
        columns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, t: &str) -> Column {
        Column {
            name: name.into(),
            data_type: t.into(),
            generated: false,
            column_type: t.into(),
        }
    }

    #[test]
    fn a_column_of_another_type_on_green_is_compared_by_value() {
        let typed = |t: &str, ct: &str| Column {
            column_type: ct.into(),
            ..col("x", t)
        };
        assert_eq!(
            normalised_as(
                &typed("decimal", "decimal(8,2)"),
                &typed("decimal", "decimal(12,4)")
            ),
            Some(NORMALISE_NUMBER)
        );
        assert_eq!(
            normalised_as(
                &typed("varchar", "varchar(20) latin1"),
                &typed("varchar", "varchar(20) utf8mb4")
            ),
            Some(NORMALISE_TEXT)
        );
        assert_eq!(
            normalised_as(&typed("int", "int(11)"), &typed("int", "int(11)")),
            None
        );
        // Types of different families keep their stored values: they differ.
        assert_eq!(
            normalised_as(
                &typed("int", "int(11)"),
                &typed("varchar", "varchar(9) utf8mb4")
            ),
            None
        );
        assert!(hash_expr(&col("x", NORMALISE_NUMBER)).contains("DECIMAL(65,30)"));
    }

    #[test]
    fn keys_become_literals_of_their_own_type() {
        let (id, code, raw) = (
            col("id", "bigint"),
            col("code", "varchar"),
            col("raw", "varbinary"),
        );
        assert_eq!(
            key_literal(
                &[&id, &code, &raw],
                &[Some("-42".into()), Some("it's".into()), Some("00FF".into())]
            ),
            "(-42, 'it''s', X'00FF')"
        );
        // Text in an integer column is never pasted as SQL.
        assert_eq!(key_literal(&[&id], &[Some("1 OR 1".into())]), "('1 OR 1')");
    }

    #[test]
    fn a_row_hash_tells_null_from_empty_and_covers_every_column() {
        let (a, b) = (col("a", "varchar"), col("b", "float"));
        let h = row_hash(&[&a, &b]);
        assert_eq!(
            h,
            "MD5(CONCAT_WS('#', `a`, CAST(`b` AS DOUBLE), CONCAT_WS(',', IFNULL(LENGTH(`a`), -1), IFNULL(LENGTH(CAST(`b` AS DOUBLE)), -1))))"
        );
    }

    #[test]
    fn crc32c_is_used_where_the_server_has_it() {
        assert!(has_crc32c("10.11.6-MariaDB-log"));
        assert!(!has_crc32c("10.6.18-MariaDB"));
    }
}
