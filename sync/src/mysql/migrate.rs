//! Flyway-compatible migrations on MySQL/MariaDB: the same files, versions,
//! checksums and `flyway_schema_history` table (with the columns Flyway
//! creates on MySQL) in green's database. MySQL commits every DDL statement
//! on its own, so a script cannot be rolled back as a whole: statements run
//! one by one, and a failure is reported with the statements that did
//! commit before it, the failed row recorded as Flyway does (`success = 0`),
//! so `repair` and a fixed script can follow. What each migration changes
//! (tables, views, routines, triggers, events) is recorded in
//! `switchyard.migration_changes`, so verify knows those differences were
//! meant.

use super::catalog;
use super::{connect, ident, literal, Session};
use crate::error::{Side, SyncError};
use crate::flyway::{
    current_version, pending, scan, validate_against, Applied, MigrateReport, Migration,
    HISTORY_TABLE,
};
use crate::verdict::ObjectKind;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

const CHANGES: &str = "CREATE DATABASE IF NOT EXISTS switchyard; \
    CREATE TABLE IF NOT EXISTS switchyard.migration_changes ( \
      id BIGINT AUTO_INCREMENT PRIMARY KEY, db VARCHAR(64) NOT NULL, script VARCHAR(1000) NOT NULL, \
      kind VARCHAR(32) NOT NULL, name VARCHAR(255) NOT NULL) ENGINE=InnoDB";

/// Green's migration history, oldest first (empty without the table).
pub async fn read_history(green: &mut Session) -> Result<Vec<Applied>, SyncError> {
    let rows = green
        .rows(
            "reading flyway_schema_history",
            &format!(
                "SELECT installed_rank, version, description, type, script, checksum, \
                        DATE_FORMAT(installed_on, '%Y-%m-%d %H:%i:%s'), execution_time, success \
                   FROM {} ORDER BY installed_rank",
                ident(HISTORY_TABLE)
            ),
        )
        .await;
    let rows = match rows {
        Ok(r) => r,
        Err(SyncError::Query { message, .. }) if message.contains("error 1146") => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(e),
    };
    Ok(rows
        .into_iter()
        .map(|r| Applied {
            installed_rank: r.get::<i32, _>(0).unwrap_or(0),
            version: r.get::<Option<String>, _>(1).flatten(),
            description: r.get::<String, _>(2).unwrap_or_default(),
            kind: r.get::<String, _>(3).unwrap_or_default(),
            script: r.get::<String, _>(4).unwrap_or_default(),
            checksum: r.get::<Option<i32>, _>(5).flatten(),
            installed_on: r.get::<String, _>(6).unwrap_or_default(),
            execution_time: r.get::<i32, _>(7).unwrap_or(0),
            success: r.get::<i64, _>(8).unwrap_or(0) != 0,
        })
        .collect())
}

/// What migrations changed in green: (kind, name, script).
pub async fn changed_objects(
    green: &mut Session,
) -> Result<Vec<(ObjectKind, String, String)>, SyncError> {
    let sql = format!(
        "SELECT kind, name, script FROM switchyard.migration_changes WHERE db = {} ORDER BY id",
        literal(&green.database)
    );
    let rows = match green
        .rows("reading switchyard.migration_changes", &sql)
        .await
    {
        Ok(r) => r,
        Err(SyncError::Query { message, .. })
            if message.contains("error 1146") || message.contains("error 1049") =>
        {
            return Ok(Vec::new())
        }
        Err(e) => return Err(e),
    };
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let kind = match r.get::<String, _>(0)?.as_str() {
                "table" => ObjectKind::Table,
                "view" => ObjectKind::View,
                "function" => ObjectKind::Function,
                "procedure" => ObjectKind::Procedure,
                "trigger" => ObjectKind::Trigger,
                "event" => ObjectKind::Event,
                _ => return None,
            };
            Some((kind, r.get::<String, _>(1)?, r.get::<String, _>(2)?))
        })
        .collect())
}

/// Every definition in green: (kind, name) → normalised statement.
async fn definitions(
    green: &mut Session,
) -> Result<BTreeMap<(&'static str, String), String>, SyncError> {
    let mut out = BTreeMap::new();
    for t in catalog::tables(green).await? {
        if t.name == HISTORY_TABLE {
            continue;
        }
        let create = catalog::create_table(green, &t.name).await?;
        out.insert(("table", t.name), catalog::normalised(&create));
    }
    for o in catalog::objects(green).await? {
        let kind = match o.kind {
            catalog::ObjectKind::View => "view",
            catalog::ObjectKind::Function => "function",
            catalog::ObjectKind::Procedure => "procedure",
            catalog::ObjectKind::Trigger => "trigger",
            catalog::ObjectKind::Event => "event",
        };
        out.insert((kind, o.name), catalog::normalised(&o.create));
    }
    Ok(out)
}

/// Splits a MySQL script into statements at top-level `;` (or the
/// delimiter a `DELIMITER` line sets, as the mysql client does), honouring
/// quotes, backticks, `--`, `#` and `/* */` comments. Returns each
/// statement with its first line.
pub fn split(sql: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut delimiter = ";".to_string();
    let mut current = String::new();
    let mut start_line = 0;
    let mut line_no = 0;
    let mut in_quote: Option<char> = None;
    let mut in_block_comment = false;
    for line in sql.split_inclusive('\n') {
        line_no += 1;
        if in_quote.is_none() && !in_block_comment && current.trim().is_empty() {
            let t = line.trim();
            if let Some(d) = t
                .strip_prefix("DELIMITER ")
                .or_else(|| t.strip_prefix("delimiter "))
            {
                delimiter = d.trim().to_string();
                continue;
            }
        }
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if in_block_comment {
                current.push(c);
                if c == '*' && chars.get(i + 1) == Some(&'/') {
                    current.push('/');
                    i += 1;
                    in_block_comment = false;
                }
            } else if let Some(q) = in_quote {
                current.push(c);
                if c == '\\' && q != '`' {
                    if let Some(&n) = chars.get(i + 1) {
                        current.push(n);
                        i += 1;
                    }
                } else if c == q {
                    in_quote = None;
                }
            } else if c == '\'' || c == '"' || c == '`' {
                in_quote = Some(c);
                current.push(c);
            } else if c == '#'
                || (c == '-'
                    && chars.get(i + 1) == Some(&'-')
                    && chars.get(i + 2).is_none_or(|n| n.is_whitespace()))
            {
                // A comment to the end of the line.
                current.extend(&chars[i..]);
                break;
            } else if c == '/' && chars.get(i + 1) == Some(&'*') {
                in_block_comment = true;
                current.push(c);
            } else if line[char_offset(&chars, i)..].starts_with(delimiter.as_str()) {
                let text = current.trim().to_string();
                if !text.is_empty() && !only_comments(&text) {
                    out.push((start_line, text));
                }
                current.clear();
                i += delimiter.chars().count();
                continue;
            } else {
                if current.trim().is_empty() && !c.is_whitespace() {
                    start_line = line_no;
                }
                current.push(c);
            }
            i += 1;
        }
    }
    let text = current.trim().to_string();
    if !text.is_empty() && !only_comments(&text) {
        out.push((start_line, text));
    }
    out
}

fn char_offset(chars: &[char], i: usize) -> usize {
    chars[..i].iter().map(|c| c.len_utf8()).sum()
}

fn only_comments(s: &str) -> bool {
    s.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with("--") || l.starts_with('#')
    })
}

async fn ensure_history(green: &mut Session) -> Result<(), SyncError> {
    let t = ident(HISTORY_TABLE);
    green
        .exec(
            "creating flyway_schema_history",
            &format!(
                "CREATE TABLE IF NOT EXISTS {t} (\
                   installed_rank INT NOT NULL, version VARCHAR(50), description VARCHAR(200) NOT NULL, \
                   type VARCHAR(20) NOT NULL, script VARCHAR(1000) NOT NULL, checksum INT, \
                   installed_by VARCHAR(100) NOT NULL, installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, \
                   execution_time INT NOT NULL, success TINYINT(1) NOT NULL, \
                   CONSTRAINT flyway_schema_history_pk PRIMARY KEY (installed_rank), \
                   KEY flyway_schema_history_s_idx (success)) ENGINE=InnoDB"
            ),
        )
        .await?;
    green.exec("preparing the change records", CHANGES).await
}

async fn record(
    green: &mut Session,
    m: &Migration,
    millis: i64,
    success: bool,
) -> Result<(), SyncError> {
    let t = ident(HISTORY_TABLE);
    let sql = format!(
        "INSERT INTO {t} (installed_rank, version, description, type, script, checksum, installed_by, execution_time, success) \
         SELECT IFNULL(MAX(installed_rank), 0) + 1, {}, {}, 'SQL', {}, {}, SUBSTRING_INDEX(CURRENT_USER(), '@', 1), {millis}, {} FROM {t}",
        m.version.as_ref().map_or("NULL".into(), |v| literal(&v.to_string())),
        literal(&m.description),
        literal(&m.script),
        m.checksum,
        i32::from(success),
    );
    green.exec("recording the migration", &sql).await
}

/// Applies pending migrations to green (see the module docs).
pub async fn migrate(
    dir: &Path,
    green_url: &str,
    dry_run: bool,
    placeholders: Option<&BTreeMap<String, String>>,
) -> Result<MigrateReport, SyncError> {
    let migrations = scan(dir)?;
    let mut green = connect(Side::Green, green_url).await?;
    let history = read_history(&mut green).await?;
    let problems = validate_against(&migrations, &history);
    if !problems.is_empty() {
        return Err(SyncError::Validate { problems });
    }
    let todo: Vec<&Migration> = pending(&migrations, &history);
    if dry_run {
        return Ok(MigrateReport {
            dry_run: true,
            applied: todo.iter().map(|m| m.script.clone()).collect(),
            callbacks: Vec::new(),
            schema_version: current_version(&history).map(|v| v.to_string()),
        });
    }
    // One migrator at a time per database.
    let lock_name = lock(&mut green).await?;
    ensure_history(&mut green).await?;
    let mut applied = Vec::new();
    for m in todo {
        let sql = match placeholders {
            Some(p) => crate::flyway::substitute(&m.sql, p, &m.path)?,
            None => m.sql.clone(),
        };
        let before = definitions(&mut green).await?;
        let started = Instant::now();
        let statements = split(&sql);
        for (done, (line, stmt)) in statements.iter().enumerate() {
            if let Err(e) = green.exec(&format!("{}:{line}", m.script), stmt).await {
                let millis = started.elapsed().as_millis() as i64;
                let _ = record(&mut green, m, millis, false).await;
                let message = match e {
                    SyncError::Query { message, .. } => message,
                    other => other.to_string(),
                };
                return Err(SyncError::MigrationFailed {
                    side: crate::Side::Green,
                    script: m.script.clone(),
                    line: *line,
                    message,
                    kept: format!(
                        "MySQL commits each DDL statement on its own, so the {done} statement(s) of {} before line {line} stayed applied \
                         and the rest did not run; the failed attempt is recorded in flyway_schema_history. \
                         Undo or finish those statements by hand, fix the script, then run `switchyard sync migrate repair` and migrate again",
                        m.script
                    ),
                });
            }
        }
        let millis = started.elapsed().as_millis() as i64;
        let after = definitions(&mut green).await?;
        for key in before
            .keys()
            .chain(after.keys())
            .collect::<std::collections::BTreeSet<_>>()
        {
            if before.get(key) != after.get(key) {
                let sql = format!(
                    "INSERT INTO switchyard.migration_changes (db, script, kind, name) VALUES ({}, {}, {}, {})",
                    literal(&green.database),
                    literal(&m.script),
                    literal(key.0),
                    literal(&key.1)
                );
                green
                    .exec("recording what the migration changed", &sql)
                    .await?;
            }
        }
        record(&mut green, m, millis, true).await?;
        applied.push(m.script.clone());
    }
    let history = read_history(&mut green).await?;
    let _ = green
        .exec(
            "releasing the migration lock",
            &format!("DO RELEASE_LOCK({lock_name})"),
        )
        .await;
    green.close().await;
    Ok(MigrateReport {
        dry_run: false,
        applied,
        callbacks: Vec::new(),
        schema_version: current_version(&history).map(|v| v.to_string()),
    })
}

/// Takes the per-database migration lock (60 s at most).
async fn lock(green: &mut Session) -> Result<String, SyncError> {
    let name = literal(&format!("switchyard-migrate-{}", green.database));
    let got = green
        .text(
            "waiting for the migration lock",
            &format!("SELECT GET_LOCK({name}, 60)"),
        )
        .await?;
    if got.as_deref() != Some("1") {
        return Err(SyncError::Other(format!(
            "another migration holds the lock {name} on green for over 60 s; wait for it to finish and run migrate again"
        )));
    }
    Ok(name)
}

/// `migrate baseline`: marks a green that already has its schema as being
/// at `version`; refused when the history has rows (as Flyway does).
pub async fn baseline(
    green_url: &str,
    version: &str,
    description: &str,
) -> Result<crate::flyway::BaselineReport, SyncError> {
    let v = crate::flyway::Version::parse(version).ok_or_else(|| {
        SyncError::Other(format!(
            "{version:?} is not a version: use digits separated by dots, e.g. 1 or 2024.01"
        ))
    })?;
    let mut green = connect(Side::Green, green_url).await?;
    let name = lock(&mut green).await?;
    let result = async {
        ensure_history(&mut green).await?;
        let history = read_history(&mut green).await?;
        if let Some(first) = history.first() {
            return Err(SyncError::Other(format!(
                "green's {HISTORY_TABLE} already has {} rows (the first: {}): baseline is for a database that has never been migrated",
                history.len(),
                first.script
            )));
        }
        green
            .exec(
                "recording the baseline",
                &format!(
                    "INSERT INTO {} (installed_rank, version, description, type, script, checksum, installed_by, execution_time, success) \
                     VALUES (1, {}, {}, 'BASELINE', {}, NULL, SUBSTRING_INDEX(CURRENT_USER(), '@', 1), 0, 1)",
                    ident(HISTORY_TABLE),
                    literal(&v.to_string()),
                    literal(description),
                    literal(description)
                ),
            )
            .await?;
        Ok(crate::flyway::BaselineReport {
            version: v.to_string(),
            description: description.to_string(),
        })
    }
    .await;
    let _ = green
        .exec(
            "releasing the migration lock",
            &format!("DO RELEASE_LOCK({name})"),
        )
        .await;
    green.close().await;
    result
}

/// `migrate repair`: removes failed migrations' rows (after they were
/// finished or undone by hand) and realigns recorded checksums with the files.
pub async fn repair(dir: &Path, green_url: &str) -> Result<crate::flyway::RepairReport, SyncError> {
    let migrations = scan(dir)?;
    let mut green = connect(Side::Green, green_url).await?;
    let name = lock(&mut green).await?;
    let result = async {
        let history = read_history(&mut green).await?;
        let mut report = crate::flyway::RepairReport::default();
        let t = ident(HISTORY_TABLE);
        for a in &history {
            if !a.success {
                report.removed_failed.push(a.script.clone());
                green
                    .exec(
                        "repairing the history",
                        &format!("DELETE FROM {t} WHERE installed_rank = {}", a.installed_rank),
                    )
                    .await?;
                continue;
            }
            if a.kind != "SQL" {
                continue;
            }
            let file = a
                .version
                .as_deref()
                .and_then(crate::flyway::Version::parse)
                .and_then(|v| migrations.iter().find(|m| m.version.as_ref() == Some(&v)));
            if let Some(m) = file.filter(|m| Some(m.checksum) != a.checksum) {
                report.realigned.push(a.script.clone());
                green
                    .exec(
                        "repairing the history",
                        &format!(
                            "UPDATE {t} SET checksum = {}, description = {} WHERE installed_rank = {}",
                            m.checksum,
                            literal(&m.description),
                            a.installed_rank
                        ),
                    )
                    .await?;
            }
        }
        Ok(report)
    }
    .await;
    let _ = green
        .exec(
            "releasing the migration lock",
            &format!("DO RELEASE_LOCK({name})"),
        )
        .await;
    green.close().await;
    result
}

/// `migrate validate`: applied migrations against the files.
pub async fn validate(dir: &Path, green_url: &str) -> Result<Vec<String>, SyncError> {
    let migrations = scan(dir)?;
    let mut green = connect(Side::Green, green_url).await?;
    let history = read_history(&mut green).await?;
    green.close().await;
    Ok(validate_against(&migrations, &history))
}

/// `migrate info`.
pub async fn info(dir: &Path, green_url: &str) -> Result<Vec<crate::flyway::InfoRow>, SyncError> {
    let migrations = scan(dir)?;
    let mut green = connect(Side::Green, green_url).await?;
    let history = read_history(&mut green).await?;
    green.close().await;
    Ok(crate::flyway::info_rows(&migrations, &history))
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn statements_split_at_semicolons_outside_quotes_and_comments() {
        let s = split(
            "CREATE TABLE a (x int); -- one; two\nINSERT INTO a VALUES (1), ('x;y'), (`z;`);\n# a # comment;\n/* block; */ SELECT 1",
        );
        let texts: Vec<&str> = s.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(
            texts,
            [
                "CREATE TABLE a (x int)",
                "-- one; two\nINSERT INTO a VALUES (1), ('x;y'), (`z;`)",
                "# a # comment;\n/* block; */ SELECT 1"
            ]
        );
        assert_eq!(s[1].0, 1);
    }

    #[test]
    fn a_delimiter_line_lets_a_routine_body_hold_semicolons() {
        let s = split(
            "DELIMITER //\nCREATE PROCEDURE p() BEGIN SELECT 1; SELECT 2; END //\nDELIMITER ;\nSELECT 3;\n",
        );
        let texts: Vec<&str> = s.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(
            texts,
            [
                "CREATE PROCEDURE p() BEGIN SELECT 1; SELECT 2; END",
                "SELECT 3"
            ]
        );
        assert_eq!(s[0].0, 2);
        assert_eq!(s[1].0, 4);
    }
}
