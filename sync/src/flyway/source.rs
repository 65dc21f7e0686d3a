//! Migration files: Flyway's naming (`V<version>__<desc>.sql`,
//! `R__<desc>.sql`), versions, checksums, per-file `.conf` settings,
//! callbacks (`beforeMigrate.sql`, ...) and placeholders.

use crate::error::SyncError;
use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use super::sql::needs_no_transaction;

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
        // Flyway's per-script configuration: `V1__x.sql.conf` with
        // `executeInTransaction=false` (or `true` to insist).
        let conf = path.with_file_name(format!("{name}.conf"));
        let in_transaction = match std::fs::read_to_string(&conf) {
            Err(_) => None,
            Ok(c) => conf_setting(&c, "executeInTransaction")
                .map(|v| match v.to_ascii_lowercase().as_str() {
                    "true" => Ok(true),
                    "false" => Ok(false),
                    _ => Err(SyncError::MigrationFile {
                        path: conf.clone(),
                        message: format!("executeInTransaction={v:?}: use true or false"),
                    }),
                })
                .transpose()?,
        };
        let transactional = in_transaction.unwrap_or_else(|| !needs_no_transaction(&sql));
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
}

/// The value of `key` in a `.conf` file (`key=value` lines, `#` comments).
fn conf_setting(text: &str, key: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_string())
}

/// One SQL callback file (Flyway's `beforeMigrate.sql` and friends).
#[derive(Debug, Clone)]
pub struct Callback {
    pub script: String,
    pub path: PathBuf,
    pub sql: String,
}

/// The SQL callbacks of a migrations directory, each list in file-name
/// order: `beforeMigrate` runs once before migrating (also when nothing is
/// pending), `beforeEachMigrate`/`afterEachMigrate` inside each migration's
/// transaction, `afterMigrate` once at the end.
#[derive(Debug, Clone, Default)]
pub struct Callbacks {
    pub before_migrate: Vec<Callback>,
    pub before_each: Vec<Callback>,
    pub after_each: Vec<Callback>,
    pub after_migrate: Vec<Callback>,
}

/// Reads the callbacks (`<event>.sql` or `<event>__<description>.sql`).
pub fn scan_callbacks(dir: &Path) -> Result<Callbacks, SyncError> {
    let mut c = Callbacks::default();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(c);
    };
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".sql") else {
            continue;
        };
        let event = stem.split_once("__").map(|(a, _)| a).unwrap_or(stem);
        let list = match event {
            "beforeMigrate" => &mut c.before_migrate,
            "beforeEachMigrate" => &mut c.before_each,
            "afterEachMigrate" => &mut c.after_each,
            "afterMigrate" => &mut c.after_migrate,
            _ => continue,
        };
        let path = e.path();
        let sql = std::fs::read_to_string(&path).map_err(|err| SyncError::MigrationFile {
            path: path.clone(),
            message: format!("cannot read: {err}"),
        })?;
        list.push(Callback {
            script: name,
            path,
            sql,
        });
    }
    Ok(c)
}

/// Replaces Flyway placeholders, `${name}`, with their values. A
/// placeholder without a value is an error naming the file and line, as in
/// Flyway. The checksum stays the one of the file as written.
pub fn substitute(
    sql: &str,
    values: &std::collections::BTreeMap<String, String>,
    path: &Path,
) -> Result<String, SyncError> {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[i..]);
            rest = "";
            break;
        };
        let name = &after[..end];
        match values.get(name) {
            Some(v) => out.push_str(v),
            None => {
                let line = super::sql::line_of(sql, sql.len() - rest.len() + i);
                return Err(SyncError::MigrationFile {
                    path: path.to_path_buf(),
                    message: format!(
                        "line {line}: no value for placeholder ${{{name}}}: add `{name} = \"...\"` to [database.placeholders]"
                    ),
                });
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod placeholder_tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_and_a_missing_one_is_named_with_its_line() {
        let mut v = std::collections::BTreeMap::new();
        v.insert("schema".to_string(), "app".to_string());
        v.insert("flyway:user".to_string(), "deployer".to_string());
        let p = Path::new("V1__x.sql");
        assert_eq!(
            substitute(
                "CREATE TABLE ${schema}.t (by text DEFAULT '${flyway:user}');",
                &v,
                p
            )
            .unwrap(),
            "CREATE TABLE app.t (by text DEFAULT 'deployer');"
        );
        let e = substitute("SELECT 1;\nSELECT '${nope}';", &v, p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("V1__x.sql") && e.contains("line 2") && e.contains("${nope}"),
            "{e}"
        );
        assert_eq!(
            substitute("SELECT '$1', '${'", &v, p).unwrap(),
            "SELECT '$1', '${'"
        );
    }
}
