//! Flyway-compatible migrations: `V<version>__<desc>.sql` in version order, then
//! `R__<desc>.sql` whenever their checksum changes, recorded in a
//! `flyway_schema_history` table with Flyway's columns and checksum so a team
//! coming from Flyway keeps its history (and can go back).
//!
//! Each migration runs in its own transaction unless it cannot (it contains
//! `CREATE INDEX CONCURRENTLY` and the like, or a `<script>.conf` next to it says
//! `executeInTransaction=false`). A session advisory lock on green makes
//! concurrent runners take turns; the second one then finds nothing to do.

use crate::error::{Side, SyncError};
use crate::pg;
use serde::Serialize;
use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokio_postgres::Client;

/// Advisory lock key shared by every switchyard migrate runner.
const LOCK_KEY: i64 = 0x5357_5943_4d49_4752; // "SWYCMIGR"
/// The history table's name (Flyway's default).
pub const HISTORY_TABLE: &str = "flyway_schema_history";

/// A Flyway version: dot-separated non-negative integers (`1`, `1.2`, `2024.01.15`).
#[derive(Debug, Clone, Eq)]
pub struct Version {
    parts: Vec<u128>,
    text: String,
}

impl Version {
    /// Parses `1`, `1.2`, or the file-name form `1_2`.
    pub fn parse(s: &str) -> Option<Version> {
        let text = s.replace('_', ".");
        let parts = text
            .split('.')
            .map(|p| p.parse::<u128>().ok())
            .collect::<Option<Vec<_>>>()?;
        Some(Version { parts, text })
    }
    fn trimmed(&self) -> &[u128] {
        let mut n = self.parts.len();
        while n > 1 && self.parts[n - 1] == 0 {
            n -= 1;
        }
        &self.parts[..n]
    }
}

impl PartialEq for Version {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl PartialOrd for Version {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Version {
    fn cmp(&self, o: &Self) -> Ordering {
        self.trimmed().cmp(o.trimmed())
    }
}
impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// One migration file.
#[derive(Debug, Clone)]
pub struct Migration {
    /// `None` for a repeatable (`R__`) migration.
    pub version: Option<Version>,
    pub description: String,
    /// The file name, as Flyway records it in `script`.
    pub script: String,
    pub path: PathBuf,
    pub checksum: i32,
    pub sql: String,
    pub transactional: bool,
}

/// Flyway's checksum: CRC32 over the file's lines with their terminators
/// (`\n`, `\r\n`, `\r`) removed and a leading byte-order mark dropped, stored as a
/// signed 32-bit integer. So CRLF and LF versions of a file have the same checksum.
pub fn checksum(content: &[u8]) -> i32 {
    let content = content.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(content);
    let mut crc = Crc32::new();
    for chunk in content.split(|&b| b == b'\n' || b == b'\r') {
        crc.update(chunk);
    }
    crc.finish() as i32
}

/// Table-driven CRC-32 (IEEE 802.3, as `java.util.zip.CRC32`).
struct Crc32(u32);

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

impl Crc32 {
    fn new() -> Self {
        Crc32(0xFFFF_FFFF)
    }
    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = CRC_TABLE[((self.0 ^ b as u32) & 0xFF) as usize] ^ (self.0 >> 8);
        }
    }
    fn finish(&self) -> u32 {
        !self.0
    }
}

/// Reads the migrations directory: versioned migrations in version order, then
/// repeatable ones by description. Other files are ignored; a `V`/`R` `.sql`
/// file with a malformed name is an error (Flyway would silently skip it).
pub fn scan(dir: &Path) -> Result<Vec<Migration>, SyncError> {
    let dir_err = |e: std::io::Error| SyncError::MigrationsDir {
        path: dir.to_path_buf(),
        message: e.to_string(),
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(dir_err)? {
        let entry = entry.map_err(dir_err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let Some(stem) = name.strip_suffix(".sql") else {
            continue;
        };
        let file_err = |message: String| SyncError::MigrationFile {
            path: path.clone(),
            message,
        };
        let (version, description) = if let Some(rest) = stem.strip_prefix('V') {
            let (v, d) = rest.split_once("__").ok_or_else(|| {
                file_err("a versioned migration is named V<version>__<description>.sql (two underscores)".into())
            })?;
            let version = Version::parse(v).ok_or_else(|| {
                file_err(format!("{v:?} is not a version: use digits separated by . or _ (V1__, V1_2__, V2024.01__)"))
            })?;
            (Some(version), d)
        } else if let Some(rest) = stem.strip_prefix("R__") {
            (None, rest)
        } else {
            continue;
        };
        let bytes = std::fs::read(&path).map_err(|e| file_err(format!("cannot read: {e}")))?;
        let sql = String::from_utf8(bytes.clone())
            .map_err(|e| file_err(format!("not UTF-8 ({e}); save the file as UTF-8")))?;
        let sql = sql
            .strip_prefix('\u{feff}')
            .map(str::to_string)
            .unwrap_or(sql);
        let conf = path.with_file_name(format!("{name}.conf"));
        let opted_out = std::fs::read_to_string(&conf)
            .map(|c| {
                c.lines().any(|l| {
                    l.split_once('=').is_some_and(|(k, v)| {
                        k.trim() == "executeInTransaction" && v.trim().eq_ignore_ascii_case("false")
                    })
                })
            })
            .unwrap_or(false);
        let transactional = !opted_out && !needs_no_transaction(&sql);
        out.push(Migration {
            version,
            description: description.replace('_', " "),
            script: name,
            path,
            checksum: checksum(&bytes),
            sql,
            transactional,
        });
    }
    out.sort_by(|a, b| match (&a.version, &b.version) {
        (Some(x), Some(y)) => x.cmp(y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.description.cmp(&b.description),
    });
    for w in out.windows(2) {
        if let (Some(a), Some(b)) = (&w[0].version, &w[1].version) {
            if a == b {
                return Err(SyncError::MigrationFile {
                    path: w[1].path.clone(),
                    message: format!(
                        "version {b} is also used by {}; give each migration its own version",
                        w[0].script
                    ),
                });
            }
        }
    }
    Ok(out)
}

/// Whether the script holds a statement PostgreSQL refuses inside a transaction.
fn needs_no_transaction(sql: &str) -> bool {
    split_statements(sql).iter().any(|s| {
        let words: Vec<String> = skip_leading_comments(s)
            .split_whitespace()
            .take(4)
            .map(|w| w.to_ascii_uppercase())
            .collect();
        let w: Vec<&str> = words.iter().map(String::as_str).collect();
        w.contains(&"CONCURRENTLY")
            || matches!(
                w.as_slice(),
                ["VACUUM", ..]
                    | ["CREATE", "DATABASE", ..]
                    | ["DROP", "DATABASE", ..]
                    | ["ALTER", "SYSTEM", ..]
                    | ["CREATE", "TABLESPACE", ..]
                    | ["DROP", "TABLESPACE", ..]
            )
    })
}

/// Splits SQL into statements at top-level semicolons, honouring quotes,
/// `E''` strings, quoted identifiers, comments and dollar quoting. Comments
/// are kept; empty statements are dropped.
pub fn split_statements(sql: &str) -> Vec<String> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\'' => {
                let escapes = i > 0 && (b[i - 1] == b'E' || b[i - 1] == b'e');
                i += 1;
                while i < b.len() {
                    if escapes && b[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if b[i] == b'\'' {
                        if b.get(i + 1) == Some(&b'\'') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += 1;
                }
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'$' => {
                // $tag$ ... $tag$ (tag: letters, digits, underscores; not a $1 parameter)
                let mut j = i + 1;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                let is_tag = j < b.len()
                    && b[j] == b'$'
                    && !b.get(i + 1).is_some_and(|c| c.is_ascii_digit());
                if is_tag {
                    let tag = &sql[i..=j];
                    match sql[j + 1..].find(tag) {
                        Some(end) => i = j + 1 + end + tag.len(),
                        None => i = b.len(),
                    }
                } else {
                    i += 1;
                }
            }
            b';' => {
                out.push(sql[start..i].to_string());
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    out.push(sql[start.min(sql.len())..].to_string());
    out.into_iter()
        .filter(|s| !strip_comments(s).trim().is_empty())
        .collect()
}

fn skip_leading_comments(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.split_once('\n').map(|(_, r)| r).unwrap_or("");
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.split_once("*/").map(|(_, r)| r).unwrap_or("");
        } else {
            return s;
        }
    }
}

fn strip_comments(s: &str) -> String {
    s.lines()
        .map(|l| l.split("--").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

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

/// Finds the history table: in green's current schema first, then anywhere.
pub async fn history_table(client: &Client) -> Result<Option<String>, SyncError> {
    let row = client
        .query_opt(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) \
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
              WHERE c.relname = $1 AND c.relkind IN ('r', 'p') \
              ORDER BY n.nspname = current_schema() DESC, n.nspname LIMIT 1",
            &[&HISTORY_TABLE],
        )
        .await
        .map_err(|e| SyncError::query(Side::Green, "looking for flyway_schema_history", &e))?;
    Ok(row.map(|r| r.get(0)))
}

/// Reads the history (empty when there is no history table).
pub async fn read_history(client: &Client) -> Result<Vec<Applied>, SyncError> {
    let Some(table) = history_table(client).await? else {
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
        .map_err(|e| SyncError::query(Side::Green, format!("reading {table}"), &e))?;
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

/// The highest successfully applied version in the history.
pub fn current_version(history: &[Applied]) -> Option<Version> {
    history
        .iter()
        .filter(|a| a.success)
        .filter_map(|a| a.version.as_deref().and_then(Version::parse))
        .max()
}

/// The newest versioned migration on disk.
pub fn latest_version(migrations: &[Migration]) -> Option<Version> {
    migrations.iter().filter_map(|m| m.version.clone()).max()
}

/// The state of one migration, as `info` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct InfoRow {
    pub version: Option<String>,
    pub description: String,
    pub script: String,
    /// `success`, `failed`, `pending`, `outdated` (repeatable changed since it ran),
    /// `missing` (applied, file gone), `ignored` (never applied, older than the
    /// newest applied version).
    pub state: String,
    pub installed_on: Option<String>,
}

/// What `validate` checks: every applied migration still has its file with the
/// same checksum, no failed migration is left in the history, and no file older
/// than the newest applied version was skipped. Returns the problems found.
pub fn validate_against(migrations: &[Migration], history: &[Applied]) -> Vec<String> {
    let mut problems = Vec::new();
    let current = current_version(history);
    for a in history {
        if !a.success {
            problems.push(format!(
                "migration {} ({}) failed earlier and is recorded as failed in {HISTORY_TABLE}: repair the database by hand, then delete that row (installed_rank {})",
                a.version.as_deref().unwrap_or("R"), a.script, a.installed_rank
            ));
            continue;
        }
        if a.kind != "SQL" {
            continue;
        }
        match &a.version {
            Some(v) => {
                let Some(av) = Version::parse(v) else {
                    continue;
                };
                match migrations.iter().find(|m| m.version.as_ref() == Some(&av)) {
                    None => problems.push(format!(
                        "applied migration {v} ({}) has no file in the migrations directory: restore {} or remove its row from {HISTORY_TABLE}",
                        a.script, a.script
                    )),
                    Some(m) if a.checksum != Some(m.checksum) => problems.push(format!(
                        "{} was changed after it was applied: checksum {} in {HISTORY_TABLE}, {} on disk; revert the edit and put the change in a new migration",
                        m.path.display(),
                        a.checksum.map(|c| c.to_string()).unwrap_or_else(|| "null".into()),
                        m.checksum
                    )),
                    Some(_) => {}
                }
            }
            None => {
                if !migrations
                    .iter()
                    .any(|m| m.version.is_none() && m.description == a.description)
                {
                    problems.push(format!(
                        "applied repeatable migration {} has no file in the migrations directory",
                        a.script
                    ));
                }
            }
        }
    }
    if let Some(cur) = &current {
        for m in migrations {
            if let Some(v) = &m.version {
                let applied = history.iter().any(|a| {
                    a.success && a.version.as_deref().and_then(Version::parse).as_ref() == Some(v)
                });
                if v < cur && !applied {
                    problems.push(format!(
                        "{} (version {v}) was never applied but green is already at version {cur}: give it a version above {cur}",
                        m.path.display()
                    ));
                }
            }
        }
    }
    problems
}

/// Lists every migration with its state.
pub fn info_rows(migrations: &[Migration], history: &[Applied]) -> Vec<InfoRow> {
    let current = current_version(history);
    let mut rows = Vec::new();
    for a in history.iter().filter(|a| a.kind == "SQL") {
        let file = match &a.version {
            Some(v) => {
                let av = Version::parse(v);
                migrations
                    .iter()
                    .find(|m| m.version.is_some() && m.version == av)
            }
            None => migrations
                .iter()
                .find(|m| m.version.is_none() && m.description == a.description),
        };
        let state = if !a.success {
            "failed"
        } else if file.is_none() {
            "missing"
        } else if a.version.is_none()
            && history
                .iter()
                .rev()
                .find(|b| b.version.is_none() && b.description == a.description)
                .map(|b| b.installed_rank)
                == Some(a.installed_rank)
            && file.map(|m| m.checksum) != a.checksum
        {
            "outdated"
        } else {
            "success"
        };
        rows.push(InfoRow {
            version: a.version.clone(),
            description: a.description.clone(),
            script: a.script.clone(),
            state: state.into(),
            installed_on: Some(a.installed_on.clone()),
        });
    }
    for m in pending(migrations, history) {
        let ignored = matches!((&m.version, &current), (Some(v), Some(c)) if v < c);
        rows.push(InfoRow {
            version: m.version.as_ref().map(|v| v.to_string()),
            description: m.description.clone(),
            script: m.script.clone(),
            state: if ignored { "ignored" } else { "pending" }.into(),
            installed_on: None,
        });
    }
    rows
}

/// Migrations that would run now: unapplied versioned ones newer than the
/// current version, then repeatables that are new or changed.
pub fn pending<'a>(migrations: &'a [Migration], history: &[Applied]) -> Vec<&'a Migration> {
    let applied_versions: Vec<Version> = history
        .iter()
        .filter(|a| a.success)
        .filter_map(|a| a.version.as_deref().and_then(Version::parse))
        .collect();
    migrations
        .iter()
        .filter(|m| match &m.version {
            Some(v) => !applied_versions.contains(v),
            None => {
                let last = history
                    .iter()
                    .rev()
                    .find(|a| a.version.is_none() && a.success && a.description == m.description);
                last.and_then(|a| a.checksum) != Some(m.checksum)
            }
        })
        .collect()
}

/// The outcome of `migrate`.
#[derive(Debug, Clone, Serialize)]
pub struct MigrateReport {
    pub dry_run: bool,
    /// Scripts applied (or that would be, in a dry run), in order.
    pub applied: Vec<String>,
    pub schema_version: Option<String>,
}

/// How [`migrate`] runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct MigrateOptions<'a> {
    /// List what would be applied without applying it.
    pub dry_run: bool,
    /// Replicate mode: blue's published columns; each migration is checked
    /// for compatibility with replication before it commits, and rolled
    /// back when it would break it.
    pub published: Option<&'a crate::compat::PublishedSchema>,
    /// Owners and grants are part of what verify compares (`roles = "copy"`),
    /// so a migration's changes to them are recorded too.
    pub roles: bool,
}

/// Applies pending migrations to green (or lists them with `dry_run`).
/// What each migration changes in green's catalog is recorded with it, so
/// verify can tell those differences from ones nobody intended.
pub async fn migrate(
    dir: &Path,
    green_url: &str,
    opts: MigrateOptions<'_>,
) -> Result<MigrateReport, SyncError> {
    let dry_run = opts.dry_run;
    let migrations = scan(dir)?;
    let client = pg::connect(Side::Green, green_url).await?;
    if dry_run {
        let history = read_history(&client).await?;
        let problems = validate_against(&migrations, &history);
        if !problems.is_empty() {
            return Err(SyncError::Validate { problems });
        }
        return Ok(MigrateReport {
            dry_run,
            applied: pending(&migrations, &history)
                .iter()
                .map(|m| m.script.clone())
                .collect(),
            schema_version: current_version(&history).map(|v| v.to_string()),
        });
    }
    client
        .query("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(|e| SyncError::query(Side::Green, "waiting for the migration lock", &e))?;
    let result = migrate_locked(&client, &migrations, opts).await;
    // The lock also goes away with the connection; unlocking is a courtesy.
    let _ = client
        .query("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    result
}

async fn migrate_locked(
    client: &Client,
    migrations: &[Migration],
    opts: MigrateOptions<'_>,
) -> Result<MigrateReport, SyncError> {
    let published = opts.published;
    crate::state::ensure_schema(client).await?;
    let fingerprint = || crate::catalog::fingerprint(client, Side::Green, opts.roles);
    let table = match history_table(client).await? {
        Some(t) => t,
        None => {
            pg::exec(
                client,
                Side::Green,
                "creating flyway_schema_history",
                &format!(
                    "CREATE TABLE {HISTORY_TABLE} (\
                       installed_rank INT NOT NULL, version VARCHAR(50), description VARCHAR(200) NOT NULL, \
                       type VARCHAR(20) NOT NULL, script VARCHAR(1000) NOT NULL, checksum INTEGER, \
                       installed_by VARCHAR(100) NOT NULL, installed_on TIMESTAMP NOT NULL DEFAULT now(), \
                       execution_time INTEGER NOT NULL, success BOOLEAN NOT NULL, \
                       CONSTRAINT {HISTORY_TABLE}_pk PRIMARY KEY (installed_rank)); \
                     CREATE INDEX {HISTORY_TABLE}_s_idx ON {HISTORY_TABLE} (success);"
                ),
            )
            .await?;
            history_table(client).await?.ok_or_else(|| {
                SyncError::Other("flyway_schema_history vanished after creation".into())
            })?
        }
    };
    let history = read_history(client).await?;
    let problems = validate_against(migrations, &history);
    if !problems.is_empty() {
        return Err(SyncError::Validate { problems });
    }
    let last_rank = history.iter().map(|a| a.installed_rank).max().unwrap_or(0);
    let mut applied = Vec::new();
    for (rank, m) in (last_rank + 1..).zip(pending(migrations, &history)) {
        let started = Instant::now();
        let insert = |success: bool, ms: i64| {
            format!(
                "INSERT INTO {table} (installed_rank, version, description, type, script, checksum, \
                   installed_by, execution_time, success) VALUES ({rank}, {}, {}, 'SQL', {}, {}, current_user, {ms}, {success})",
                m.version.as_ref().map(|v| pg::literal(&v.to_string())).unwrap_or_else(|| "NULL".into()),
                pg::literal(&m.description),
                pg::literal(&m.script),
                m.checksum
            )
        };
        let failed = |e: &tokio_postgres::Error, extra: &str| SyncError::MigrationFailed {
            script: m.path.display().to_string(),
            message: crate::error::pg_message(e),
            extra: extra.to_string(),
        };
        if m.transactional {
            pg::exec(client, Side::Green, "starting a migration", "BEGIN").await?;
            let before = match fingerprint().await {
                Ok(c) => c,
                Err(e) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    return Err(e);
                }
            };
            if let Err(e) = client.batch_execute(&format!("{}\n;\n", m.sql)).await {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(failed(&e, ""));
            }
            if let Some(published) = published {
                let problems = match crate::compat::check(client, published).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = client.batch_execute("ROLLBACK").await;
                        return Err(e);
                    }
                };
                if !problems.is_empty() {
                    let _ = client.batch_execute("ROLLBACK").await;
                    return Err(SyncError::Incompatible {
                        script: m.path.display().to_string(),
                        problems: format!(
                            "{} (it was rolled back and not recorded)",
                            problems
                                .iter()
                                .map(|p| p.to_string())
                                .collect::<Vec<_>>()
                                .join("; ")
                        ),
                    });
                }
            }
            let recorded = async {
                let after = fingerprint().await?;
                crate::catalog::record_changes(
                    client,
                    &m.script,
                    &crate::catalog::changed(&before, &after),
                )
                .await
            }
            .await;
            if let Err(e) = recorded {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(e);
            }
            let ms = started.elapsed().as_millis() as i64;
            if let Err(e) = client
                .batch_execute(&format!("{}; COMMIT", insert(true, ms)))
                .await
            {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(failed(&e, ""));
            }
        } else {
            let before = fingerprint().await?;
            for stmt in split_statements(&m.sql) {
                if let Err(e) = client.batch_execute(&stmt).await {
                    let ms = started.elapsed().as_millis() as i64;
                    let _ = client.batch_execute(&insert(false, ms)).await;
                    return Err(failed(
                        &e,
                        " (it ran outside a transaction, so statements before the failing one stayed applied; it is recorded as failed)",
                    ));
                }
            }
            let ms = started.elapsed().as_millis() as i64;
            pg::exec(
                client,
                Side::Green,
                "recording a migration",
                &insert(true, ms),
            )
            .await?;
            let after = fingerprint().await?;
            crate::catalog::record_changes(
                client,
                &m.script,
                &crate::catalog::changed(&before, &after),
            )
            .await?;
            if let Some(published) = published {
                let problems = crate::compat::check(client, published).await?;
                if !problems.is_empty() {
                    return Err(SyncError::Incompatible {
                        script: m.path.display().to_string(),
                        problems: format!(
                            "{} (it ran outside a transaction, so it is applied: undo it by hand, or let replication stop and re-clone)",
                            problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; ")
                        ),
                    });
                }
            }
        }
        tracing::info!(script = %m.script, "applied migration");
        applied.push(m.script.clone());
    }
    let history = read_history(client).await?;
    Ok(MigrateReport {
        dry_run: false,
        applied,
        schema_version: current_version(&history).map(|v| v.to_string()),
    })
}

/// Checks the migrations directory against green's history.
pub async fn validate(dir: &Path, green_url: &str) -> Result<Vec<String>, SyncError> {
    let migrations = scan(dir)?;
    let client = pg::connect(Side::Green, green_url).await?;
    let history = read_history(&client).await?;
    Ok(validate_against(&migrations, &history))
}

/// Lists applied and pending migrations.
pub async fn info(dir: &Path, green_url: &str) -> Result<Vec<InfoRow>, SyncError> {
    let migrations = scan(dir)?;
    let client = pg::connect(Side::Green, green_url).await?;
    let history = read_history(&client).await?;
    Ok(info_rows(&migrations, &history))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_reference() {
        // CRC-32 of "123456789" is 0xCBF43926.
        let mut c = Crc32::new();
        c.update(b"123456789");
        assert_eq!(c.finish(), 0xCBF4_3926);
    }

    #[test]
    fn checksum_ignores_line_endings_and_bom() {
        let lf = checksum(b"CREATE TABLE a (id int);\nINSERT INTO a VALUES (1);\n");
        let crlf = checksum(b"CREATE TABLE a (id int);\r\nINSERT INTO a VALUES (1);\r\n");
        let bom = checksum(b"\xEF\xBB\xBFCREATE TABLE a (id int);\nINSERT INTO a VALUES (1);");
        assert_eq!(lf, crlf);
        assert_eq!(lf, bom);
        assert_ne!(lf, checksum(b"CREATE TABLE a (id bigint);\n"));
    }

    #[test]
    fn versions_order_numerically() {
        let v = |s| Version::parse(s).unwrap();
        assert!(v("2") < v("10"));
        assert!(v("1.2") < v("1.10"));
        assert_eq!(v("1"), v("1.0"));
        assert_eq!(v("1_1").to_string(), "1.1");
        assert!(Version::parse("1a").is_none());
    }

    #[test]
    fn splits_statements_respecting_quotes() {
        let sql = "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\n\
                   -- a comment; with a semicolon\n\
                   INSERT INTO t VALUES ('a;b', E'c\\';d');\n/* x; */ CREATE INDEX CONCURRENTLY i ON t (a);";
        let s = split_statements(sql);
        assert_eq!(s.len(), 3, "{s:?}");
        assert!(needs_no_transaction(sql));
        assert!(!needs_no_transaction("CREATE INDEX i ON t (a);"));
    }
}
