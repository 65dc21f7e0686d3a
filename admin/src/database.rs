//! The database gate: with `[database]`, a weight increase needs green's
//! database verified at its current schema version (the newest migration),
//! and in replicate mode a replication lag within `max_lag`. The state is
//! read from green's `switchyard` schema, where `switchyard sync verify`
//! records it; a background refresh keeps the last reading for status pages.

use arc_swap::ArcSwapOption;
use serde_json::{json, Value};
use std::sync::{Arc, Weak};
use std::time::Duration;
use switchyard_config::{DatabaseConfig, SyncMode};
use switchyard_sync::GateStatus;

use crate::gates::{Gate, GateContext, GateFuture, GateResult};

/// How often the cached reading for status pages is refreshed.
const REFRESH: Duration = Duration::from_secs(2);
/// Longest a reading may take before the gate holds.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The `[database]` gate.
pub struct DatabaseGate {
    db: DatabaseConfig,
    last: ArcSwapOption<Reading>,
}

/// One reading of green's verification and replication state.
struct Reading {
    at_ms: u64,
    result: Result<GateStatus, String>,
}

impl DatabaseGate {
    /// Creates the gate and starts refreshing its reading in the background
    /// (the task ends when the gate is dropped). Must run inside a runtime.
    pub fn start(db: DatabaseConfig) -> Arc<DatabaseGate> {
        let gate = Arc::new(DatabaseGate {
            db,
            last: ArcSwapOption::empty(),
        });
        let weak: Weak<DatabaseGate> = Arc::downgrade(&gate);
        tokio::spawn(async move {
            loop {
                let Some(gate) = weak.upgrade() else { return };
                // The reading is kept for status pages; errors show there.
                let _ = gate.read().await;
                drop(gate);
                tokio::time::sleep(REFRESH).await;
            }
        });
        gate
    }

    async fn read(&self) -> Result<GateStatus, String> {
        let result = match tokio::time::timeout(
            READ_TIMEOUT,
            switchyard_sync::gate_status(&self.db),
        )
        .await
        {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "green's database did not answer within {READ_TIMEOUT:?}"
            )),
        };
        self.last.store(Some(Arc::new(Reading {
            at_ms: crate::events::now_ms(),
            result: result.clone(),
        })));
        result
    }

    /// Judges a reading: pass, or hold with the reason.
    fn judge(&self, status: &Result<GateStatus, String>) -> GateResult {
        let s = match status {
            Ok(s) => s,
            Err(e) => {
                return GateResult::Hold(format!("cannot read green's verification state: {e}"))
            }
        };
        if !s.verified {
            return GateResult::Hold(format!("green is not verified: {}", s.reason));
        }
        if self.db.mode == SyncMode::Replicate {
            match s.replication_lag() {
                None => {
                    return GateResult::Hold(
                        "replication from blue to green is not running (mode = \"replicate\"): start it, or set [database] mode = \"snapshot\""
                            .into(),
                    )
                }
                Some(lag) if lag > self.db.max_lag => {
                    return GateResult::Hold(format!(
                        "replication lag {lag:?} is above max_lag {:?}",
                        self.db.max_lag
                    ))
                }
                Some(_) => {}
            }
        }
        GateResult::Pass
    }
}

impl Gate for DatabaseGate {
    fn name(&self) -> &str {
        "database"
    }

    fn check<'a>(&'a self, _ctx: &'a GateContext) -> GateFuture<'a> {
        Box::pin(async move {
            let status = self.read().await;
            self.judge(&status)
        })
    }

    fn status(&self) -> Option<Value> {
        let mode = match self.db.mode {
            SyncMode::Snapshot => "snapshot",
            SyncMode::Replicate => "replicate",
        };
        let last = self.last.load();
        let Some(reading) = last.as_ref() else {
            return Some(json!({ "mode": mode, "gate": "unknown", "reason": "not read yet" }));
        };
        let (gate, reason) = match self.judge(&reading.result) {
            GateResult::Pass => ("pass", Value::Null),
            GateResult::Hold(why) => ("hold", Value::String(why)),
        };
        let mut v = json!({
            "mode": mode,
            "gate": gate,
            "reason": reason,
            "max_lag_ms": self.db.max_lag.as_millis() as u64,
            "checked_at_ms": reading.at_ms,
        });
        if let Ok(s) = &reading.result {
            v["verified"] = json!(s.verified);
            v["schema_version"] = json!(s.schema_version);
            v["latest_migration"] = json!(s.latest_migration);
            v["verified_version"] = json!(s.verified_version);
            v["verified_at"] = json!(s.verified_at);
            v["replication_lag_ms"] = json!(s.replication_lag().map(|l| l.as_millis() as u64));
        }
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(mode: SyncMode) -> DatabaseGate {
        DatabaseGate {
            db: DatabaseConfig {
                mode,
                ..DatabaseConfig::new("postgres://b@127.0.0.1/app", "postgres://g@127.0.0.1/app")
            },
            last: ArcSwapOption::empty(),
        }
    }

    fn status(verified: bool, lag: Option<Duration>) -> Result<GateStatus, String> {
        Ok(GateStatus {
            verified,
            reason: if verified {
                "ok".into()
            } else {
                "never verified".into()
            },
            schema_version: Some("1".into()),
            latest_migration: Some("1".into()),
            verified_version: verified.then(|| "1".into()),
            verified_at: None,
            clone: None,
            replication: lag.map(|l| switchyard_sync::replicate::ReplicationStatus {
                state: switchyard_sync::replicate::ReplicationState::Streaming,
                direction: Some(switchyard_sync::replicate::Direction::Forward),
                lag_bytes: Some(0),
                lag_seconds: Some(l.as_secs_f64()),
                retained_wal_bytes: None,
                wal_status: None,
                objects: Vec::new(),
                unreachable: Vec::new(),
            }),
        })
    }

    fn held(r: GateResult) -> String {
        match r {
            GateResult::Hold(why) => why,
            GateResult::Pass => panic!("expected a hold"),
        }
    }

    #[test]
    fn snapshot_mode_needs_verification_only() {
        let g = gate(SyncMode::Snapshot);
        assert_eq!(g.judge(&status(true, None)), GateResult::Pass);
        assert!(held(g.judge(&status(false, None))).contains("never verified"));
        assert!(held(g.judge(&Err("connection refused".into()))).contains("connection refused"));
    }

    #[test]
    fn replicate_mode_also_needs_replication_within_max_lag() {
        let g = gate(SyncMode::Replicate);
        assert!(held(g.judge(&status(true, None))).contains("not running"));
        assert!(
            held(g.judge(&status(true, Some(Duration::from_secs(3))))).contains("above max_lag")
        );
        assert_eq!(
            g.judge(&status(true, Some(Duration::from_millis(200)))),
            GateResult::Pass
        );
    }
}
