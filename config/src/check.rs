//! Finding every error in a config file, not only the first that serde
//! stops at: each top-level table is checked on its own (the other tables'
//! lines blanked out, so lines and columns stay those of the file), and
//! within a table, a bad line is blanked and the table checked again, until
//! no new error appears. Then the mistakes that only show at run time: two
//! listeners on one address.

use serde::Deserialize;

use crate::error::{ConfigError, Location};
use crate::schema::*;

/// Every table, optional, for checking one at a time.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Partial {
    proxy: Option<ProxyConfig>,
    pools: Option<PoolsConfig>,
    admin: Option<AdminConfig>,
    rollout: Option<RolloutConfig>,
    state: Option<StateConfig>,
    database: Option<DatabaseConfig>,
    webhooks: Option<WebhooksConfig>,
    log: Option<LogConfig>,
}

/// The top-level table a line opens (`[proxy]`, `[pools.blue]`, `[[x]]`),
/// if it is a table header.
fn header(line: &str) -> Option<String> {
    let t = line.trim();
    let inner = t.strip_prefix("[[").or_else(|| t.strip_prefix('['))?;
    let end = inner.find(']')?;
    let name = inner[..end].trim();
    let first = name.split('.').next()?.trim().trim_matches('"');
    Some(first.to_string())
}

/// For each top-level table (in order of appearance), the lines that
/// belong to it; `""` for keys before any header.
fn groups(text: &str) -> Vec<(String, Vec<usize>)> {
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(h) = header(line) {
            current = h;
        }
        match out.iter_mut().find(|(g, _)| *g == current) {
            Some((_, lines)) => lines.push(i),
            None => out.push((current.clone(), vec![i])),
        }
    }
    out
}

/// `text` with only `keep` lines left (the others empty).
fn masked(text: &str, keep: &[usize], blank: &[usize]) -> String {
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            if keep.contains(&i) && !blank.contains(&i) {
                l
            } else {
                ""
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A TOML or schema error of `text` (named `origin`), at its `file:line:col`.
pub(crate) fn error_of(text: &str, origin: &str, e: &toml::de::Error) -> ConfigError {
    let location = e
        .span()
        .map(|span| Location::from_offset(origin, text, span.start))
        .unwrap_or_else(|| Location::file_only(origin));
    ConfigError::Invalid {
        location,
        message: e.message().trim().to_string(),
    }
}

/// Every error the file holds, in file order.
pub(crate) fn every_error(text: &str, origin: &str) -> Vec<ConfigError> {
    // A syntax error breaks the whole document: it is the one to fix first.
    if let Err(e) = toml::from_str::<toml::Table>(text) {
        return vec![error_of(text, origin, &e)];
    }
    let mut errors = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let present: Vec<String> = groups(text).into_iter().map(|(g, _)| g).collect();
    for (_, lines) in groups(text) {
        let mut blank = Vec::new();
        for _ in 0..50 {
            let doc = masked(text, &lines, &blank);
            let Err(e) = toml::from_str::<Partial>(&doc) else {
                break;
            };
            let err = error_of(&doc, origin, &e);
            let line = err.location().map(|l| l.line).unwrap_or(0);
            // A blanked required key reports itself missing: not an error
            // of the file.
            if !blank.is_empty() && e.message().contains("missing field") {
                break;
            }
            if seen.insert((line, err.to_string())) {
                errors.push(err);
            }
            if line == 0 || blank.contains(&(line - 1)) {
                break;
            }
            blank.push(line - 1);
        }
    }
    for required in ["pools", "admin"] {
        if !present.iter().any(|g| g == required) {
            errors.push(ConfigError::Invalid {
                location: Location::file_only(origin),
                message: format!("missing table [{required}]: every config needs one (see the README's minimal switchyard.toml)"),
            });
        }
    }
    errors.sort_by_key(|e| e.location().map(|l| (l.line, l.column)).unwrap_or((0, 0)));
    errors
}

/// The line of `key` inside table `table` (1-based), for errors about a
/// value that parsed but does not fit with another.
fn line_of(text: &str, table: &str, key: &str) -> Option<usize> {
    let (_, lines) = groups(text).into_iter().find(|(g, _)| g == table)?;
    let all: Vec<&str> = text.lines().collect();
    lines.into_iter().find_map(|i| {
        let l = all[i].trim_start();
        (l.starts_with(key) && l[key.len()..].trim_start().starts_with('=')).then_some(i + 1)
    })
}

/// Listeners that would fight over one address at start.
pub(crate) fn clashes(c: &Config, text: &str, origin: &str) -> Vec<ConfigError> {
    let mut addrs = vec![("[proxy] listen", "proxy", "listen", c.proxy.listen)];
    if let Some(tls) = &c.proxy.tls {
        addrs.push(("[proxy] tls.listen", "proxy", "tls", tls.listen));
    }
    addrs.push(("[admin] listen", "admin", "listen", c.admin.listen));
    let mut out = Vec::new();
    for (i, (name, table, key, addr)) in addrs.iter().enumerate() {
        if addr.port() == 0 {
            continue;
        }
        if let Some((other, ..)) = addrs[..i].iter().find(|(_, _, _, a)| a == addr) {
            out.push(ConfigError::Invalid {
                location: Location {
                    file: origin.to_string(),
                    line: line_of(text, table, key).unwrap_or(1),
                    column: 1,
                },
                message: format!(
                    "{name} = \"{addr}\" is the address of {other} too: each listener needs its own port"
                ),
            });
        }
    }
    out.extend(pool_mismatches(c, text, origin));
    out.extend(database_mismatches(c, text, origin));
    out
}

/// `[database]` URLs that parse one by one but name different engines:
/// switchyard clones and replicates between two servers of one kind.
fn database_mismatches(c: &Config, text: &str, origin: &str) -> Vec<ConfigError> {
    let Some(db) = &c.database else {
        return Vec::new();
    };
    let engine = db.engine();
    let others = [
        ("green", Some(db.green.as_str())),
        ("blue_from_green", db.blue_from_green.as_deref()),
        ("green_from_blue", db.green_from_blue.as_deref()),
    ];
    others
        .into_iter()
        .filter_map(|(key, url)| {
            let other = DatabaseEngine::of(url?)?;
            (other != engine).then(|| ConfigError::Invalid {
                location: Location {
                    file: origin.to_string(),
                    line: line_in_section(text, "[database]", key),
                    column: 1,
                },
                message: format!(
                    "[database] {key} is a {} URL but blue is {}: both sides must run the same engine \
                     (switchyard clones and replicates between two servers of one kind)",
                    other.name(),
                    engine.name()
                ),
            })
        })
        .collect()
}

/// The line of `key` in the section `[header]` (or, failing that, of the
/// header itself), 1-based.
fn line_in_section(text: &str, header: &str, key: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines.iter().position(|l| l.trim() == header) else {
        return 1;
    };
    lines[start + 1..]
        .iter()
        .take_while(|l| !l.trim_start().starts_with('['))
        .position(|l| {
            let l = l.trim_start();
            l.starts_with(key) && l[key.len()..].trim_start().starts_with(['=', '.'])
        })
        .map_or(start + 1, |i| start + 2 + i)
}

/// Pool settings that parse but cannot work together.
fn pool_mismatches(c: &Config, text: &str, origin: &str) -> Vec<ConfigError> {
    let mut out = Vec::new();
    for (colour, pool) in [("blue", &c.pools.blue), ("green", &c.pools.green)] {
        let header = format!("[pools.{colour}]");
        let at = |key: &str| Location {
            file: origin.to_string(),
            line: line_in_section(text, &header, key),
            column: 1,
        };
        let mut invalid = |key: &str, message: String| {
            out.push(ConfigError::Invalid {
                location: at(key),
                message,
            })
        };
        match (pool.protocol, &pool.tls) {
            (UpstreamProtocol::H2, None) => invalid(
                "protocol",
                format!(
                    "pools.{colour}.protocol = \"h2\" is HTTP/2 over TLS and needs pools.{colour}.tls = {{ ca = \"...\" }} \
                     (the CA that signs the upstreams' certificates); for HTTP/2 without TLS use protocol = \"h2c\""
                ),
            ),
            (UpstreamProtocol::H2c, Some(_)) => invalid(
                "tls",
                format!(
                    "pools.{colour}.tls is set but protocol = \"h2c\" is HTTP/2 without TLS: use protocol = \"h2\" \
                     for HTTP/2 over TLS, or remove tls"
                ),
            ),
            _ => {}
        }
        if let Some(h) = &pool.health {
            if h.kind == HealthKind::Grpc && !pool.protocol.is_h2() {
                invalid(
                    "health",
                    format!(
                        "pools.{colour}.health.kind = \"grpc\" needs an HTTP/2 pool: gRPC runs over HTTP/2, so set \
                         pools.{colour}.protocol = \"h2c\" (or \"h2\" with tls)"
                    ),
                );
            }
        }
    }
    out
}
