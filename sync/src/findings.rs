//! What `preflight` reports, for every engine: findings with a severity,
//! the check's name, what is wrong and what to do.

use serde::Serialize;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Blocker,
}

/// One thing preflight noticed.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// Short name of the check, e.g. `primary-key`.
    pub check: String,
    pub message: String,
    pub hint: String,
}

/// The outcome of preflight.
#[derive(Debug, Clone, Serialize)]
pub struct PreflightReport {
    pub passed: bool,
    /// The side the release is prepared from (the primary); the other is
    /// the candidate's database, the target.
    pub source: crate::Side,
    pub blue_version: Option<String>,
    pub green_version: Option<String>,
    pub findings: Vec<Finding>,
}

impl PreflightReport {
    /// The blockers as one error for the rollout's workflow (message and
    /// hint of each), or `None` when preflight passed.
    pub fn blocked(&self) -> Option<crate::SyncError> {
        if self.passed {
            return None;
        }
        let blockers: Vec<String> = self
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Blocker)
            .map(|f| format!("{} ({})", f.message, f.hint))
            .collect();
        Some(crate::SyncError::Other(format!(
            "blockers: {}",
            blockers.join("; ")
        )))
    }
}
