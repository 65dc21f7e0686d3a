//! MySQL/MariaDB replication, with the server's own replica threads: green
//! becomes a replica of blue from the GTID position the clone recorded
//! (`SET GLOBAL gtid_slave_pos`, `CHANGE MASTER 'switchyard' TO …
//! MASTER_USE_GTID = slave_pos`, filtered to the cloned database), lag is
//! read in seconds (`Seconds_Behind_Master`) and in transactions (GTID
//! sequence numbers), catching up is waited for with `MASTER_GTID_WAIT`,
//! and cutover stops green's replica and makes blue a replica of green from
//! green's position at that instant, so a rollback loses nothing. Every
//! replication connection switchyard makes is named `switchyard`, so
//! cleanup removes exactly those (`RESET SLAVE 'switchyard' ALL`) and
//! nothing an operator set up.

use super::{connect, literal, Flavor, Session};
use crate::error::{Side, SyncError};
use crate::replication::{
    source_url, url_of, CatchUp, CleanupReport, Direction, ObjectKind, ReplicationObject,
    ReplicationState, ReplicationStatus, SwitchError, SwitchReport,
};
use serde::Serialize;
use std::time::{Duration, Instant};
use switchyard_config::DatabaseConfig;

/// The name of switchyard's replication connection on a replica.
pub const CONNECTION: &str = "switchyard";

/// `CHANGE MASTER 'switchyard' TO …` for a source URL.
fn change_master(url: &str) -> Result<String, SyncError> {
    let u = url.replacen("mariadb://", "mysql://", 1);
    let opts = mysql_async::Opts::from_url(&u)
        .map_err(|e| SyncError::Other(format!("{}: {e}", switchyard_config::redact_url(url))))?;
    Ok(format!(
        "CHANGE MASTER '{CONNECTION}' TO MASTER_HOST = {}, MASTER_PORT = {}, MASTER_USER = {}, MASTER_PASSWORD = {}, \
         MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1",
        literal(opts.ip_or_hostname()),
        opts.tcp_port(),
        literal(opts.user().unwrap_or("root")),
        literal(opts.pass().unwrap_or("")),
    ))
}

/// Refuses replication on a server switchyard does not drive yet.
fn mariadb_only(s: &Session) -> Result<(), SyncError> {
    if s.flavor == Flavor::MySql {
        return Err(SyncError::Other(format!(
            "{}: replicate mode on MySQL ({}) is not supported yet (MariaDB is); set [database] mode = \"snapshot\"",
            s.side, s.version
        )));
    }
    Ok(())
}

/// The replica's connection, read from `SHOW SLAVE 'switchyard' STATUS`.
#[derive(Debug, Clone, Default)]
struct ReplicaRow {
    io_running: bool,
    sql_running: bool,
    seconds_behind: Option<f64>,
    last_error: Option<String>,
}

async fn replica_row(s: &mut Session) -> Result<Option<ReplicaRow>, SyncError> {
    let rows = s
        .rows(
            "reading switchyard's replication connection",
            "SHOW ALL SLAVES STATUS",
        )
        .await?;
    for r in rows {
        let columns = r.columns();
        let get = |name: &str| -> Option<String> {
            let i = columns.iter().position(|c| c.name_str() == name)?;
            r.get::<Option<String>, _>(i).flatten()
        };
        if get("Connection_name").as_deref() != Some(CONNECTION) {
            continue;
        }
        let err = [get("Last_IO_Error"), get("Last_SQL_Error")]
            .into_iter()
            .flatten()
            .filter(|e| !e.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        return Ok(Some(ReplicaRow {
            io_running: get("Slave_IO_Running").as_deref() == Some("Yes"),
            sql_running: get("Slave_SQL_Running").as_deref() == Some("Yes"),
            seconds_behind: get("Seconds_Behind_Master").and_then(|s| s.parse().ok()),
            last_error: (!err.is_empty()).then_some(err),
        }));
    }
    Ok(None)
}

/// What `replicate` did.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicateReport {
    pub already_running: bool,
    /// The GTID position replication started from.
    pub from_gtid: String,
    pub connection: String,
}

/// Makes green a replica of blue from the last clone's position.
pub async fn subscribe(db: &DatabaseConfig) -> Result<ReplicateReport, SyncError> {
    let mut green = connect(Side::Green, &db.green).await?;
    mariadb_only(&green)?;
    if let Some(r) = replica_row(&mut green).await? {
        if r.io_running && r.sql_running {
            return Ok(ReplicateReport {
                already_running: true,
                from_gtid: String::new(),
                connection: CONNECTION.into(),
            });
        }
    }
    let clone = super::state::last_clone(&mut green).await?;
    let Some(clone) = clone.filter(|c| c.state == crate::gate::CloneState::Complete) else {
        return Err(SyncError::NotCloned { side: Side::Green });
    };
    let gtid = clone.consistent_lsn.clone().unwrap_or_default();
    start_replica(&mut green, db, Direction::Forward, &gtid).await?;
    green.close().await;
    Ok(ReplicateReport {
        already_running: false,
        from_gtid: gtid,
        connection: CONNECTION.into(),
    })
}

/// Points `replica` at the other side from `gtid` and starts it.
async fn start_replica(
    replica: &mut Session,
    db: &DatabaseConfig,
    dir: Direction,
    gtid: &str,
) -> Result<(), SyncError> {
    let change = change_master(source_url(db, dir))?;
    let database = replica.database.clone();
    let _ = replica
        .exec(
            "stopping an old replication connection",
            &format!("STOP SLAVE '{CONNECTION}'"),
        )
        .await;
    let _ = replica
        .exec(
            "removing an old replication connection",
            &format!("RESET SLAVE '{CONNECTION}' ALL"),
        )
        .await;
    // Domains only the replica's own binary log has (switchyard's own
    // writes there): strict mode wants a position for each, and the
    // replica has applied them all.
    let own = gtid_pos(replica).await?;
    let from = super::gtid_domains(gtid);
    let mut position: Vec<String> = gtid
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_string)
        .collect();
    for (domain, (server, seq)) in super::gtid_domains(&own) {
        if !from.contains_key(&domain) {
            position.push(format!("{domain}-{server}-{seq}"));
        }
    }
    let position = position.join(",");
    if let Err(e) = replica
        .exec(
            "setting the GTID position to replicate from",
            &format!("SET GLOBAL gtid_slave_pos = {}", literal(&position)),
        )
        .await
    {
        return Err(explain_position_error(e, dir, &position));
    }
    replica
        .exec(
            &format!("creating the replication connection from {}", dir.source()),
            &change,
        )
        .await?;
    replica
        .exec(
            "limiting replication to the cloned database",
            &format!(
                "SET GLOBAL {CONNECTION}.replicate_do_db = {}",
                literal(&database)
            ),
        )
        .await?;
    replica
        .exec(
            "starting replication",
            &format!("START SLAVE '{CONNECTION}'"),
        )
        .await
}

/// The real cause of a refused `SET GLOBAL gtid_slave_pos`: missing
/// privileges (error 1227), or, with `gtid_strict_mode`, the replica's
/// binary log holding its own transactions in one of the source's GTID
/// domains, newer than the source's position (error 1947).
fn explain_position_error(e: SyncError, dir: Direction, gtid: &str) -> SyncError {
    let SyncError::Query {
        side,
        context,
        message,
    } = e
    else {
        return e;
    };
    let (src, dst) = (dir.source(), dir.target());
    let hint = if message.contains("error 1947") || message.contains("error 1948") {
        format!(
            "{dst}'s binary log holds transactions of its own in a GTID domain of {src}'s, newer than {src}'s position {gtid}, and gtid_strict_mode forbids replicating over them. \
             Switchyard logs its own writes on {dst} in domain {} (this needs SUPER for SET SESSION gtid_domain_id); writes made on {dst} by anything else must use a domain of their own too: \
             give {dst}'s server its own gtid_domain_id (my.cnf), or, if {dst}'s binary log holds nothing anyone needs, RESET MASTER on {dst}; then `switchyard sync clone --replace`",
            super::OWN_GTID_DOMAIN
        )
    } else if message.contains("error 1227") {
        format!("the user in [database].{dst} needs SUPER or REPLICATION SLAVE ADMIN to set gtid_slave_pos")
    } else {
        return SyncError::Query {
            side,
            context,
            message,
        };
    };
    SyncError::Query {
        side,
        context,
        message: format!("{message}; {hint}"),
    }
}

/// Transactions in `source` that `replica` lacks, per GTID domain (the
/// difference of sequence numbers, summed over domains).
pub fn transactions_behind(source: &str, replica: &str) -> u64 {
    let parse = |s: &str| -> Vec<(u32, u64)> {
        s.split(',')
            .filter_map(|g| {
                let mut p = g.trim().split('-');
                let domain = p.next()?.parse().ok()?;
                let _server = p.next()?;
                let seq = p.next()?.parse().ok()?;
                Some((domain, seq))
            })
            .collect()
    };
    let have = parse(replica);
    parse(source)
        .into_iter()
        .map(|(d, seq)| {
            let got = have.iter().find(|(hd, _)| *hd == d).map_or(0, |(_, s)| *s);
            seq.saturating_sub(got)
        })
        .sum()
}

async fn gtid_pos(s: &mut Session) -> Result<String, SyncError> {
    Ok(s.text(
        "reading the GTID position",
        "SELECT @@GLOBAL.gtid_binlog_pos",
    )
    .await?
    .unwrap_or_default())
}

async fn replica_pos(s: &mut Session) -> Result<String, SyncError> {
    Ok(s.text(
        "reading the replica's GTID position",
        "SELECT @@GLOBAL.gtid_slave_pos",
    )
    .await?
    .unwrap_or_default())
}

/// Replication as `status` shows it.
pub async fn status(db: &DatabaseConfig) -> ReplicationStatus {
    let mut st = ReplicationStatus {
        state: ReplicationState::None,
        direction: None,
        lag_bytes: None,
        lag_seconds: None,
        retained_wal_bytes: None,
        wal_status: None,
        objects: Vec::new(),
        unreachable: Vec::new(),
        transactions_behind: None,
    };
    let mut sessions = Vec::new();
    for side in [Side::Blue, Side::Green] {
        match connect(side, url_of(db, side)).await {
            Ok(s) => sessions.push(s),
            Err(e) => st.unreachable.push(format!("{side}: {e}")),
        }
    }
    let mut rows = Vec::new();
    for s in &mut sessions {
        match replica_row(s).await {
            Ok(Some(r)) => {
                let dir = if s.side == Side::Green {
                    Direction::Forward
                } else {
                    Direction::Reverse
                };
                st.objects.push(ReplicationObject {
                    side: s.side,
                    kind: ObjectKind::Replica,
                    name: CONNECTION.into(),
                    direction: dir,
                    active: r.io_running && r.sql_running,
                });
                rows.push((s.side, dir, r));
            }
            Ok(None) => {}
            Err(e) => st.unreachable.push(format!("{}: {e}", s.side)),
        }
    }
    match rows.as_slice() {
        [] => {}
        [(replica, dir, r)] => {
            st.direction = Some(*dir);
            st.state = if r.io_running && r.sql_running {
                ReplicationState::Streaming
            } else {
                ReplicationState::Stopped
            };
            if let Some(e) = &r.last_error {
                st.unreachable.push(format!("{replica}'s replica: {e}"));
            }
            // Lag in transactions: the source's position against what the replica applied.
            let (mut src, mut rep) = (None, None);
            for s in &mut sessions {
                if s.side == dir.source() {
                    src = gtid_pos(s).await.ok();
                } else {
                    rep = replica_pos(s).await.ok();
                }
            }
            if let (Some(src), Some(rep)) = (src, rep) {
                let behind = transactions_behind(&src, &rep);
                st.transactions_behind = Some(behind);
                if st.state == ReplicationState::Streaming {
                    // Seconds_Behind_Master is 0 while idle; with nothing behind it is exactly 0.
                    st.lag_seconds = Some(if behind == 0 {
                        0.0
                    } else {
                        r.seconds_behind.unwrap_or(0.0).max(0.001)
                    });
                }
            }
        }
        _ => st.state = ReplicationState::Inconsistent,
    }
    for s in sessions {
        s.close().await;
    }
    st
}

/// Waits (up to `within`) until the replica has executed every
/// transaction the source had when the probe started.
pub async fn wait_caught_up(
    db: &DatabaseConfig,
    dir: Direction,
    within: Duration,
) -> Result<CatchUp, SyncError> {
    let mut source = connect(dir.source(), url_of(db, dir.source())).await?;
    let mut replica = connect(dir.target(), url_of(db, dir.target())).await?;
    let r = wait_on(&mut source, &mut replica, dir, within).await;
    source.close().await;
    replica.close().await;
    r
}

async fn wait_on(
    source: &mut Session,
    replica: &mut Session,
    dir: Direction,
    within: Duration,
) -> Result<CatchUp, SyncError> {
    let started = Instant::now();
    if replica_row(replica).await?.is_none() {
        return Err(SyncError::Other(format!(
            "{}: switchyard's replication connection does not exist: replication {} is not set up",
            dir.target(),
            dir.arrow()
        )));
    }
    let pos = gtid_pos(source).await?;
    let timeout = within.as_secs_f64().max(0.001);
    let done = replica
        .text(
            "waiting for the replica to catch up",
            &format!("SELECT MASTER_GTID_WAIT({}, {timeout:.3})", literal(&pos)),
        )
        .await?;
    if done.as_deref() == Some("0") {
        return Ok(CatchUp::CaughtUp {
            lsn: pos,
            waited: started.elapsed(),
        });
    }
    let have = replica_pos(replica).await.ok();
    Ok(CatchUp::Behind {
        lag_bytes: None,
        confirmed: have,
        lsn: pos,
    })
}

/// Removes switchyard's replication connection on both sides.
pub async fn cleanup(db: &DatabaseConfig) -> Result<CleanupReport, SyncError> {
    let mut report = CleanupReport::default();
    for side in [Side::Green, Side::Blue] {
        let mut s = match connect(side, url_of(db, side)).await {
            Ok(s) => s,
            Err(e) => {
                report.unreachable.push(format!("{side}: {e}"));
                continue;
            }
        };
        if replica_row(&mut s).await?.is_some() {
            s.exec(
                "stopping replication",
                &format!("STOP SLAVE '{CONNECTION}'"),
            )
            .await?;
            s.exec(
                "removing the replication connection",
                &format!("RESET SLAVE '{CONNECTION}' ALL"),
            )
            .await?;
            report.removed.push(ReplicationObject {
                side,
                kind: ObjectKind::Replica,
                name: CONNECTION.into(),
                direction: if side == Side::Green {
                    Direction::Forward
                } else {
                    Direction::Reverse
                },
                active: false,
            });
        }
        s.close().await;
    }
    Ok(report)
}

/// Moves the primary (see [`crate::replication::switch`]): waits for the new
/// primary to execute the old one's GTID position, stops its replica,
/// records the cutover in green, and (with `reverse`) makes the old
/// primary a replica of the new one from the new one's position.
pub async fn switch(
    db: &DatabaseConfig,
    from: Direction,
    _kind: crate::primary::CutoverKind,
    deadline: Instant,
) -> Result<SwitchReport, SwitchError> {
    let old = from.source();
    let failed = |source: SyncError| SwitchError::Failed {
        source_side: old,
        source,
        undone: true,
    };
    let mut old_primary = connect(old, url_of(db, old)).await.map_err(failed)?;
    let mut new_primary = connect(from.target(), url_of(db, from.target()))
        .await
        .map_err(failed)?;
    let mut steps = Vec::new();
    let started = Instant::now();
    let within = deadline.saturating_duration_since(Instant::now());
    let caught = wait_on(&mut old_primary, &mut new_primary, from, within)
        .await
        .map_err(failed)?;
    let pos = match caught {
        CatchUp::CaughtUp { lsn, .. } => lsn,
        CatchUp::Behind { lsn, confirmed, .. } => {
            return Err(SwitchError::Timeout {
                source_side: old,
                target: from.target(),
                behind: format!(
                    "it has executed {}",
                    confirmed.unwrap_or_else(|| "nothing".into())
                ),
                lsn,
                waited_ms: started.elapsed().as_millis() as u64,
                undone: true,
            })
        }
    };
    let catch_up_ms = started.elapsed().as_millis() as u64;
    steps.push(("catch up".to_string(), catch_up_ms));
    // The point of no return: the new primary stops following the old one.
    new_primary
        .exec(
            "stopping replication",
            &format!("STOP SLAVE '{CONNECTION}'"),
        )
        .await
        .map_err(failed)?;
    new_primary
        .exec(
            "removing the replication connection",
            &format!("RESET SLAVE '{CONNECTION}' ALL"),
        )
        .await
        .map_err(failed)?;
    steps.push((
        "stop replica".to_string(),
        started.elapsed().as_millis() as u64,
    ));
    let green = if from.target() == Side::Green {
        &mut new_primary
    } else {
        &mut old_primary
    };
    if let Err(e) = super::state::record_primary(green, from.target()).await {
        tracing::warn!(error = %e, "the cutover committed but could not be recorded in green");
    }
    if db.reverse {
        let at = gtid_pos(&mut new_primary).await;
        let reversed = match at {
            Ok(at) => start_replica(&mut old_primary, db, from.flipped(), &at).await,
            Err(e) => Err(e),
        };
        if let Err(e) = reversed {
            // The switch has committed; the operator must set up the way back.
            tracing::error!(error = %e, "cutover committed but reverse replication could not start");
        }
        steps.push((
            "reverse replica".to_string(),
            started.elapsed().as_millis() as u64,
        ));
    }
    old_primary.close().await;
    new_primary.close().await;
    Ok(SwitchReport {
        from,
        primary: from.target(),
        caught_up_lsn: pos,
        catch_up_ms,
        sequences: 0,
        reverse: db.reverse,
        not_replicated: Vec::new(),
        steps,
        already_done: false,
        warnings: Vec::new(),
        fence: None,
        unfenced: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_behind_counts_per_domain() {
        assert_eq!(transactions_behind("0-1-10", "0-1-7"), 3);
        assert_eq!(transactions_behind("0-1-10,1-5-4", "0-1-10"), 4);
        assert_eq!(transactions_behind("0-1-10", "0-1-10,1-2-3"), 0);
        assert_eq!(transactions_behind("", ""), 0);
    }

    #[test]
    fn the_replication_connection_comes_from_the_url_and_quotes_the_password() {
        let c = change_master("mariadb://repl:it's@10.0.0.5:3307/app").unwrap();
        assert!(
            c.contains("MASTER_HOST = '10.0.0.5', MASTER_PORT = 3307"),
            "{c}"
        );
        assert!(
            c.contains("MASTER_USER = 'repl', MASTER_PASSWORD = 'it''s'"),
            "{c}"
        );
        assert!(c.starts_with("CHANGE MASTER 'switchyard' TO"), "{c}");
    }
}
