//! The SQL of migration files: splitting into statements (with the line
//! each starts on), and telling which statements PostgreSQL refuses inside
//! a transaction.

/// Whether the script holds a statement PostgreSQL refuses inside a
/// transaction block: `CREATE INDEX CONCURRENTLY`, `DROP INDEX
/// CONCURRENTLY`, `REINDEX … CONCURRENTLY`, `ALTER TABLE … DETACH PARTITION
/// … CONCURRENTLY`, `VACUUM`, `CREATE`/`DROP DATABASE`, `CREATE`/`DROP
/// TABLESPACE`, `ALTER SYSTEM`, `CREATE`/`DROP`/`ALTER SUBSCRIPTION`.
/// (`REFRESH MATERIALIZED VIEW CONCURRENTLY` is allowed in one.)
pub(crate) fn needs_no_transaction(sql: &str) -> bool {
    split_statements(sql)
        .iter()
        .any(|s| statement_needs_no_transaction(s))
}

fn statement_needs_no_transaction(stmt: &str) -> bool {
    let words: Vec<String> = strip_comments(skip_leading_comments(stmt))
        .split(|c: char| c.is_whitespace() || c == '(' || c == ';')
        .filter(|w| !w.is_empty())
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let has = |x: &str| w.contains(&x);
    match w.as_slice() {
        ["CREATE", "INDEX", "CONCURRENTLY", ..]
        | ["CREATE", "UNIQUE", "INDEX", "CONCURRENTLY", ..] => true,
        ["DROP", "INDEX", "CONCURRENTLY", ..] => true,
        ["REINDEX", ..] => has("CONCURRENTLY"),
        ["ALTER", "TABLE", ..] => has("DETACH") && has("PARTITION") && has("CONCURRENTLY"),
        ["VACUUM", ..] => true,
        ["CREATE" | "DROP", "DATABASE" | "TABLESPACE", ..] => true,
        ["ALTER", "SYSTEM", ..] => true,
        ["CREATE" | "DROP" | "ALTER", "SUBSCRIPTION", ..] => true,
        _ => false,
    }
}

/// One statement of a script and the line (1-based) it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub text: String,
    pub line: usize,
}

/// [`split_statements`], with the line each statement's first non-blank
/// character is on.
pub fn split_statements_at(sql: &str) -> Vec<Statement> {
    let mut out = Vec::new();
    let mut from = 0;
    for text in split_statements(sql) {
        let at = sql[from..].find(&text).map(|i| from + i).unwrap_or(from);
        from = at + text.len();
        let lead = text.len() - skip_leading_comments(&text).len();
        out.push(Statement {
            line: line_of(sql, at + lead),
            text,
        });
    }
    out
}

/// The line (1-based) of byte offset `at` in `sql`.
pub fn line_of(sql: &str, at: usize) -> usize {
    sql.as_bytes()[..at.min(sql.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_statements_respecting_quotes() {
        let sql = "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\n\
                   -- a comment; with a semicolon\n\
                   INSERT INTO t VALUES ('a;b', E'c\\';d');\n/* x; */ CREATE INDEX CONCURRENTLY i ON t (a);";
        let s = split_statements(sql);
        assert_eq!(s.len(), 3, "{s:?}");
        assert!(needs_no_transaction(sql));
        assert!(!needs_no_transaction("CREATE INDEX i ON t (a);"));
        let at = split_statements_at(sql);
        assert_eq!(at.iter().map(|s| s.line).collect::<Vec<_>>(), vec![1, 3, 4]);
    }

    #[test]
    fn statements_that_cannot_run_in_a_transaction_are_recognised() {
        for s in [
            "CREATE INDEX CONCURRENTLY i ON t (a)",
            "create unique index concurrently i on t(a)",
            "DROP INDEX CONCURRENTLY i",
            "REINDEX TABLE CONCURRENTLY t",
            "ALTER TABLE measurements DETACH PARTITION measurements_2023 CONCURRENTLY",
            "-- comment\nVACUUM ANALYZE t",
            "ALTER SYSTEM SET work_mem = '64MB'",
            "CREATE DATABASE other",
        ] {
            assert!(needs_no_transaction(s), "{s}");
        }
        for s in [
            "REFRESH MATERIALIZED VIEW CONCURRENTLY mv",
            "ALTER TABLE t DETACH PARTITION p",
            "INSERT INTO log VALUES ('CREATE INDEX CONCURRENTLY')",
            "CREATE INDEX concurrently_named ON t (a)",
        ] {
            assert!(!needs_no_transaction(s), "{s}");
        }
    }
}
