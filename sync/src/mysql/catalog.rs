//! What a MySQL/MariaDB database holds, read from `information_schema` and
//! `SHOW CREATE …`: base tables with their columns and primary keys (what
//! clone copies and verify chunks on), and the other schema objects
//! (views, routines, triggers, events) clone recreates after the data and
//! verify compares.

use super::{ident, literal, Session};
use crate::error::SyncError;
use mysql_async::Row;
use serde::Serialize;

/// One column of a base table.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    /// `DATA_TYPE`: `int`, `decimal`, `blob`, …
    pub data_type: String,
    /// A generated (virtual or stored) column: computed, never copied.
    pub generated: bool,
    /// `COLUMN_TYPE` and character set, e.g. `decimal(8,2)` or
    /// `varchar(20) utf8mb4`: two sides with different ones need their
    /// values normalised before they compare.
    pub column_type: String,
}

impl Column {
    /// Integer types, compared and sent as numbers.
    pub fn is_integer(&self) -> bool {
        matches!(
            self.data_type.as_str(),
            "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint"
        )
    }

    /// The expression clone selects for the column: `BIT` as its number
    /// (`LOAD DATA` cannot read BIT's raw bytes), `FLOAT` widened to
    /// `DOUBLE` so its text round-trips exactly, anything else as stored.
    pub fn select_expr(&self) -> String {
        match self.data_type.as_str() {
            "bit" => format!("{}+0", ident(&self.name)),
            "float" => format!("CAST({} AS DOUBLE)", ident(&self.name)),
            _ => ident(&self.name),
        }
    }
}

/// One base table.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    pub engine: String,
    /// Rows and data size as `information_schema` estimates them (for
    /// ordering the copies, largest first).
    pub estimated_rows: u64,
    pub data_bytes: u64,
    pub columns: Vec<Column>,
    /// Primary key columns, in key order (empty: the table has none).
    pub primary_key: Vec<String>,
}

impl Table {
    /// The columns clone copies (every one but the generated).
    pub fn stored_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| !c.generated)
    }
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// The kinds of schema objects besides tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    View,
    Function,
    Procedure,
    Trigger,
    Event,
}

impl ObjectKind {
    pub fn keyword(self) -> &'static str {
        match self {
            ObjectKind::View => "VIEW",
            ObjectKind::Function => "FUNCTION",
            ObjectKind::Procedure => "PROCEDURE",
            ObjectKind::Trigger => "TRIGGER",
            ObjectKind::Event => "EVENT",
        }
    }
}

/// A view, routine, trigger or event with its `SHOW CREATE` statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub kind: ObjectKind,
    pub name: String,
    /// `DEFINER` as `user@host` (objects run with its privileges).
    pub definer: Option<String>,
    pub create: String,
}

fn text(row: &Row, i: usize) -> String {
    match row.as_ref(i) {
        Some(mysql_async::Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(mysql_async::Value::NULL) | None => String::new(),
        Some(v) => v.as_sql(true).trim_matches('\'').to_string(),
    }
}

fn number(row: &Row, i: usize) -> u64 {
    text(row, i).parse().unwrap_or(0)
}

/// The base tables of the session's database, with columns and keys.
pub async fn tables(s: &mut Session) -> Result<Vec<Table>, SyncError> {
    let db = literal(&s.database);
    let rows = s
        .rows(
            "listing tables",
            &format!(
                "SELECT TABLE_NAME, IFNULL(ENGINE, ''), IFNULL(TABLE_ROWS, 0), IFNULL(DATA_LENGTH, 0) \
                   FROM information_schema.TABLES \
                  WHERE TABLE_SCHEMA = {db} AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME"
            ),
        )
        .await?;
    let mut tables: Vec<Table> = rows
        .iter()
        .map(|r| Table {
            name: text(r, 0),
            engine: text(r, 1),
            estimated_rows: number(r, 2),
            data_bytes: number(r, 3),
            columns: Vec::new(),
            primary_key: Vec::new(),
        })
        .collect();
    let columns = s
        .rows(
            "listing columns",
            &format!(
                "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, \
                        IFNULL(GENERATION_EXPRESSION, '') <> '' OR EXTRA LIKE '%GENERATED%', \
                        CONCAT_WS(' ', COLUMN_TYPE, CHARACTER_SET_NAME) \
                   FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = {db} \
                  ORDER BY TABLE_NAME, ORDINAL_POSITION"
            ),
        )
        .await?;
    for r in &columns {
        let table = text(r, 0);
        if let Some(t) = tables.iter_mut().find(|t| t.name == table) {
            t.columns.push(Column {
                name: text(r, 1),
                data_type: text(r, 2).to_ascii_lowercase(),
                column_type: text(r, 4).to_ascii_lowercase(),
                generated: text(r, 3) == "1",
            });
        }
    }
    let keys = s
        .rows(
            "listing primary keys",
            &format!(
                "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.STATISTICS \
                  WHERE TABLE_SCHEMA = {db} AND INDEX_NAME = 'PRIMARY' \
                  ORDER BY TABLE_NAME, SEQ_IN_INDEX"
            ),
        )
        .await?;
    for r in &keys {
        let table = text(r, 0);
        if let Some(t) = tables.iter_mut().find(|t| t.name == table) {
            t.primary_key.push(text(r, 1));
        }
    }
    Ok(tables)
}

/// `SHOW CREATE TABLE` for one table.
pub async fn create_table(s: &mut Session, table: &str) -> Result<String, SyncError> {
    let rows = s
        .rows(
            &format!("reading the definition of table {table}"),
            &format!("SHOW CREATE TABLE {}", ident(table)),
        )
        .await?;
    Ok(rows.first().map(|r| text(r, 1)).unwrap_or_default())
}

/// A table's `CREATE TABLE` cut in three, the way clone applies it: the
/// table with its primary key only (loaded fastest), the secondary indexes
/// (added after the data), and the foreign keys (added once every table
/// is loaded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SplitTable {
    pub create: String,
    pub indexes: Vec<String>,
    pub foreign_keys: Vec<String>,
}

/// Splits `SHOW CREATE TABLE` output (one definition per line, as the
/// server prints it). The `AUTO_INCREMENT=` table option is dropped: clone
/// sets the counter blue had at the snapshot.
pub fn split_create_table(create: &str) -> SplitTable {
    let mut kept: Vec<String> = Vec::new();
    let mut out = SplitTable::default();
    let lines: Vec<&str> = create.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let def = t.trim_end_matches(',');
        let is_definition = i > 0 && i + 1 < lines.len();
        if is_definition
            && (def.starts_with("KEY ")
                || def.starts_with("UNIQUE KEY ")
                || def.starts_with("FULLTEXT KEY ")
                || def.starts_with("SPATIAL KEY "))
        {
            out.indexes.push(def.to_string());
        } else if is_definition && def.starts_with("CONSTRAINT ") && def.contains(" FOREIGN KEY ") {
            out.foreign_keys.push(def.to_string());
        } else if i + 1 == lines.len() {
            kept.push(strip_auto_increment(line));
        } else {
            kept.push(line.to_string());
        }
    }
    // The last kept definition must not end in a comma any more.
    if kept.len() >= 2 {
        let k = kept.len() - 2;
        let l = kept[k].trim_end().trim_end_matches(',').to_string();
        kept[k] = l;
    }
    out.create = kept.join("\n");
    out
}

fn strip_auto_increment(options: &str) -> String {
    options
        .split(' ')
        .filter(|w| !w.starts_with("AUTO_INCREMENT="))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Views, routines, triggers and events of the session's database.
pub async fn objects(s: &mut Session) -> Result<Vec<Object>, SyncError> {
    let db = literal(&s.database);
    let mut names: Vec<(ObjectKind, String, String)> = Vec::new();
    for (kind, sql) in [
        (
            ObjectKind::View,
            format!("SELECT TABLE_NAME, DEFINER FROM information_schema.VIEWS WHERE TABLE_SCHEMA = {db}"),
        ),
        (
            ObjectKind::Function,
            format!("SELECT ROUTINE_NAME, DEFINER FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {db} AND ROUTINE_TYPE = 'FUNCTION'"),
        ),
        (
            ObjectKind::Procedure,
            format!("SELECT ROUTINE_NAME, DEFINER FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {db} AND ROUTINE_TYPE = 'PROCEDURE'"),
        ),
        (
            ObjectKind::Trigger,
            format!("SELECT TRIGGER_NAME, DEFINER FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = {db} ORDER BY EVENT_OBJECT_TABLE, ACTION_ORDER"),
        ),
        (
            ObjectKind::Event,
            format!("SELECT EVENT_NAME, DEFINER FROM information_schema.EVENTS WHERE EVENT_SCHEMA = {db}"),
        ),
    ] {
        for r in s.rows("listing schema objects", &sql).await? {
            names.push((kind, text(&r, 0), text(&r, 1)));
        }
    }
    let mut out = Vec::with_capacity(names.len());
    for (kind, name, definer) in names {
        let rows = s
            .rows(
                &format!(
                    "reading the definition of {} {name}",
                    kind.keyword().to_lowercase()
                ),
                &format!("SHOW CREATE {} {}", kind.keyword(), ident(&name)),
            )
            .await?;
        // The statement's column: 2nd for views, 3rd for routines and triggers, 4th for events.
        let col = match kind {
            ObjectKind::View => 1,
            ObjectKind::Event => 3,
            _ => 2,
        };
        let create = rows.first().map(|r| text(r, col)).unwrap_or_default();
        out.push(Object {
            kind,
            name,
            definer: (!definer.is_empty()).then_some(definer),
            create,
        });
    }
    out.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    Ok(out)
}

/// One privilege a user holds on the database or one of its tables.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Grant {
    /// `'user'@'host'`, as `information_schema` spells it.
    pub grantee: String,
    /// `None` for the whole database (`db.*`).
    pub table: Option<String>,
    pub privilege: String,
    pub grantable: bool,
}

/// The privileges users hold on the session's database and its tables.
pub async fn grants(s: &mut Session) -> Result<Vec<Grant>, SyncError> {
    let db = literal(&s.database);
    let rows = s
        .rows(
            "listing privileges on the database",
            &format!(
                "SELECT GRANTEE, NULL, PRIVILEGE_TYPE, IS_GRANTABLE FROM information_schema.SCHEMA_PRIVILEGES WHERE TABLE_SCHEMA = {db} \
                 UNION ALL SELECT GRANTEE, TABLE_NAME, PRIVILEGE_TYPE, IS_GRANTABLE FROM information_schema.TABLE_PRIVILEGES WHERE TABLE_SCHEMA = {db}"
            ),
        )
        .await?;
    let mut out: Vec<Grant> = rows
        .iter()
        .map(|r| Grant {
            grantee: text(r, 0),
            table: r.get::<Option<String>, _>(1).flatten(),
            privilege: text(r, 2),
            grantable: text(r, 3) == "YES",
        })
        .collect();
    out.sort();
    Ok(out)
}

/// `GRANT` statements giving `grants` on `database` (one per grantee and
/// object).
pub fn grant_statements(database: &str, grants: &[Grant]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut groups: std::collections::BTreeMap<(&str, Option<&str>, bool), Vec<&str>> =
        Default::default();
    for g in grants {
        groups
            .entry((g.grantee.as_str(), g.table.as_deref(), g.grantable))
            .or_default()
            .push(g.privilege.as_str());
    }
    for ((grantee, table, grantable), privileges) in groups {
        let on = match table {
            Some(t) => format!("{}.{}", ident(database), ident(t)),
            None => format!("{}.*", ident(database)),
        };
        out.push((
            grantee.to_string(),
            format!(
                "GRANT {} ON {on} TO {grantee}{}",
                privileges.join(", "),
                if grantable { " WITH GRANT OPTION" } else { "" }
            ),
        ));
    }
    out
}

/// A definition with what legitimately differs between two servers taken
/// out: the `AUTO_INCREMENT=` counter, and the `DEFINER=` clause (the same
/// user may be spelled with another host on green).
pub fn normalised(create: &str) -> String {
    let mut s = strip_auto_increment(create);
    if let Some(start) = s.find("DEFINER=") {
        let rest = &s[start..];
        let end = rest.find(' ').unwrap_or(rest.len());
        s.replace_range(start..start + end, "");
    }
    // An event's ENABLE/DISABLE state: clone creates events disabled on green.
    if s.contains(" EVENT ") {
        let head_end = s.find(" DO ").unwrap_or(s.len());
        let head = s[..head_end]
            .replace(" DISABLE ON SLAVE", "")
            .replace(" DISABLE", "")
            .replace(" ENABLE", "");
        s = format!("{head}{}", &s[head_end..]);
    }
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREATE: &str = "CREATE TABLE `orders` (\n  `id` int(11) NOT NULL AUTO_INCREMENT,\n  `customer` int(11) NOT NULL,\n  `code` varchar(20) DEFAULT NULL,\n  PRIMARY KEY (`id`),\n  UNIQUE KEY `code` (`code`),\n  KEY `customer` (`customer`),\n  CONSTRAINT `orders_ibfk_1` FOREIGN KEY (`customer`) REFERENCES `customers` (`id`)\n) ENGINE=InnoDB AUTO_INCREMENT=42 DEFAULT CHARSET=utf8mb4";

    #[test]
    fn a_table_is_created_with_its_primary_key_and_gets_indexes_and_foreign_keys_later() {
        let s = split_create_table(CREATE);
        assert_eq!(
            s.create,
            "CREATE TABLE `orders` (\n  `id` int(11) NOT NULL AUTO_INCREMENT,\n  `customer` int(11) NOT NULL,\n  `code` varchar(20) DEFAULT NULL,\n  PRIMARY KEY (`id`)\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        );
        assert_eq!(
            s.indexes,
            ["UNIQUE KEY `code` (`code`)", "KEY `customer` (`customer`)"]
        );
        assert_eq!(
            s.foreign_keys,
            ["CONSTRAINT `orders_ibfk_1` FOREIGN KEY (`customer`) REFERENCES `customers` (`id`)"]
        );
    }

    #[test]
    fn a_column_named_like_a_keyword_is_not_taken_for_an_index() {
        let create = "CREATE TABLE `t` (\n  `KEY` int(11) NOT NULL,\n  `x` int(11) DEFAULT NULL,\n  PRIMARY KEY (`KEY`)\n) ENGINE=InnoDB";
        let s = split_create_table(create);
        assert_eq!(s.create, create);
        assert!(s.indexes.is_empty());
    }

    #[test]
    fn normalising_ignores_counters_definers_and_event_state_but_not_the_body() {
        assert_eq!(
            normalised("CREATE DEFINER=`root`@`localhost` VIEW `v` AS select 1"),
            normalised("CREATE DEFINER=`app`@`%` VIEW `v` AS select 1")
        );
        assert_ne!(
            normalised("CREATE VIEW `v` AS select 1"),
            normalised("CREATE VIEW `v` AS select 2")
        );
        assert_eq!(
            normalised(") ENGINE=InnoDB AUTO_INCREMENT=9 DEFAULT"),
            ") ENGINE=InnoDB DEFAULT"
        );
        // An event's state is not its definition; its body is.
        assert_eq!(
            normalised(
                "CREATE EVENT `e` ON SCHEDULE EVERY 1 DAY ENABLE DO UPDATE t SET s = ' ENABLE'"
            ),
            normalised(
                "CREATE EVENT `e` ON SCHEDULE EVERY 1 DAY DISABLE DO UPDATE t SET s = ' ENABLE'"
            )
        );
        assert_ne!(
            normalised("CREATE EVENT `e` ON SCHEDULE EVERY 1 DAY DO UPDATE t SET s = ' ENABLE'"),
            normalised("CREATE EVENT `e` ON SCHEDULE EVERY 1 DAY DO UPDATE t SET s = ''")
        );
        assert_ne!(
            normalised("CREATE VIEW `v` AS select ' ENABLE'"),
            normalised("CREATE VIEW `v` AS select ''")
        );
    }
}
