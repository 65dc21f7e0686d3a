//! Planning: what is pending, what `info` lists, and what `validate` finds
//! wrong, from the files and the history.

use serde::Serialize;

use super::{current_version, Applied, Migration, Version, HISTORY_TABLE};

/// The version of a `baseline` row, if the history starts with one:
/// migrations up to it count as applied.
pub fn baseline_version(history: &[Applied]) -> Option<Version> {
    history
        .iter()
        .find(|a| a.kind == "BASELINE" && a.success)
        .and_then(|a| a.version.as_deref())
        .and_then(Version::parse)
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
                "migration {} ({}) failed earlier and is recorded as failed in {HISTORY_TABLE} (installed_rank {}): finish or undo what it did by hand, then run `switchyard sync migrate repair` to remove that row",
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
    let baseline = baseline_version(history);
    if let Some(cur) = &current {
        for m in migrations {
            if let Some(v) = m
                .version
                .as_ref()
                .filter(|v| baseline.as_ref().is_none_or(|b| *v > b))
            {
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
    let baseline = baseline_version(history);
    let applied_versions: Vec<Version> = history
        .iter()
        .filter(|a| a.success)
        .filter_map(|a| a.version.as_deref().and_then(Version::parse))
        .collect();
    migrations
        .iter()
        .filter(|m| match &m.version {
            Some(v) => !applied_versions.contains(v) && baseline.as_ref().is_none_or(|b| v > b),
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
