//! Logical replication between blue and green, with PostgreSQL's own
//! publications and subscriptions.
//!
//! * **Forward** (blue → green, before cutover): a publication on blue and a
//!   slot created on a replication connection that exports its starting
//!   snapshot ([`ForwardSlot::create`]); the clone copies exactly that
//!   snapshot, then green subscribes from the slot without copying again
//!   ([`subscribe`]), so copy and stream meet with no gap and no duplicate.
//! * **Reverse** (green → blue, after cutover): set up by [`crate::cutover`]
//!   while writes are held, so every write green takes reaches blue.
//!
//! Every object switchyard creates has a fixed name derived from the pair of
//! databases ([`Names`]), so [`cleanup`] finds them all again, also after a
//! crash. [`status`] reads lag and the WAL a slot retains from the source
//! side; [`wait_caught_up`] is the exact test behind the `max_lag` gate and
//! cutover: did the target replay everything the source had written when
//! the probe started?

pub mod pgoutput;
pub mod walsender;

use serde::Serialize;
use std::time::{Duration, Instant};
use switchyard_config::DatabaseConfig;
use tokio_postgres::Client;

use crate::error::{Side, SyncError};
use crate::pg;
pub(crate) use crate::replication::url_of;
pub use crate::replication::{
    render_status, CatchUp, CleanupReport, Direction, ObjectKind, ReplicationObject,
    ReplicationState, ReplicationStatus,
};
use walsender::{CreatedSlot, WalSender};

/// The names of switchyard's objects for one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// Publication, in the source database.
    pub publication: String,
    /// Subscription, in the target database.
    pub subscription: String,
    /// Replication slot, in the source cluster (slot names are cluster-wide,
    /// so the name carries a hash of the pair of databases).
    pub slot: String,
}

/// The object names for `dir` between the databases of `db`.
pub fn names(db: &DatabaseConfig, dir: Direction) -> Names {
    let tag = match dir {
        Direction::Forward => "fwd",
        Direction::Reverse => "rev",
    };
    Names {
        publication: format!("switchyard_{tag}"),
        subscription: format!("switchyard_{tag}"),
        slot: format!("switchyard_{}_{tag}", pair_hash(db)),
    }
}

/// A short stable hash of the database pair (FNV-1a over the host, port and
/// database parts of both URLs, without credentials), so that deployments
/// sharing a cluster never share a slot.
pub(crate) fn pair_hash(db: &DatabaseConfig) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in endpoint(&db.blue)
        .bytes()
        .chain([0])
        .chain(endpoint(&db.green).bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:08x}", h as u32)
}

/// `host:port/dbname` of a URL (no credentials), or the redacted URL when
/// it cannot be parsed.
fn endpoint(url: &str) -> String {
    match url.parse::<tokio_postgres::Config>() {
        Ok(c) => {
            let host = match c.get_hosts().first() {
                Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
                Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
                None => "localhost".into(),
            };
            format!(
                "{host}:{}/{}",
                c.get_ports().first().copied().unwrap_or(5432),
                c.get_dbname().unwrap_or("")
            )
        }
        Err(_) => switchyard_config::redact_url(url),
    }
}

/// A table that is published, and its columns.
#[derive(Debug, Clone)]
pub struct PublishedTable {
    /// `"schema"."name"`.
    pub sql: String,
    /// `schema.name`.
    pub display: String,
    /// Column names (quoted for SQL) in a column list, or `None` for all.
    pub columns: Option<Vec<String>>,
}

/// Lists the source's tables that can be published: every user table. A
/// table without a replica identity (no primary key, no `REPLICA IDENTITY
/// FULL` or index) would make blue refuse UPDATE and DELETE on it once
/// published, so such tables are an error naming them, never published.
pub(crate) async fn publishable_tables(
    source: &Client,
    side: Side,
) -> Result<Vec<PublishedTable>, SyncError> {
    let rows = source
        .query(
            &format!(
                "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), n.nspname || '.' || c.relname, \
                        c.relreplident = 'f' OR (c.relreplident IN ('d', 'i') AND EXISTS ( \
                          SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid \
                             AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident)))) \
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE c.relkind = 'r' AND {} \
                    AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                                      AND d.objid = c.oid AND d.deptype = 'e') \
                    AND c.relname <> {} \
                  ORDER BY 2",
                pg::SYSTEM_SCHEMA_FILTER,
                pg::literal(crate::migrate::HISTORY_TABLE)
            ),
            &[],
        )
        .await
        .map_err(|e| SyncError::query(side, "listing tables to publish", &e))?;
    let mut tables = Vec::new();
    let mut no_identity = Vec::new();
    for r in &rows {
        let (sql, display, ok): (String, String, bool) = (r.get(0), r.get(1), r.get(2));
        if ok {
            tables.push(PublishedTable {
                sql,
                display,
                columns: None,
            });
        } else {
            no_identity.push(display);
        }
    }
    if !no_identity.is_empty() {
        return Err(SyncError::NoReplicaIdentity {
            side,
            tables: no_identity,
        });
    }
    Ok(tables)
}

/// The table list of a publication (`TABLE a (x, y), TABLE b` on 15+;
/// `TABLE a, b` on 14, which has no column lists: refused when one is
/// needed, naming the table).
pub(crate) async fn publication_list(
    client: &Client,
    side: Side,
    tables: &[PublishedTable],
) -> Result<String, SyncError> {
    if pg::server_version(client, side).await? >= 150000 {
        return Ok(tables
            .iter()
            .map(|t| match &t.columns {
                Some(cols) => format!("TABLE {} ({})", t.sql, cols.join(", ")),
                None => format!("TABLE {}", t.sql),
            })
            .collect::<Vec<_>>()
            .join(", "));
    }
    if let Some(t) = tables.iter().find(|t| t.columns.is_some()) {
        return Err(SyncError::Other(format!(
            "{side} runs PostgreSQL 14, which cannot publish only some columns: {} has columns the other side lacks, so it cannot be replicated to it. \
             Upgrade {side} to 15 or newer, or set [database] reverse = false",
            t.display
        )));
    }
    Ok(format!(
        "TABLE {}",
        tables
            .iter()
            .map(|t| t.sql.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// (Re)creates the publication `name` on `client` for `tables`.
pub(crate) async fn create_publication(
    client: &Client,
    side: Side,
    name: &str,
    tables: &[PublishedTable],
) -> Result<(), SyncError> {
    let create = if tables.is_empty() {
        format!("CREATE PUBLICATION {}", pg::ident(name))
    } else {
        format!(
            "CREATE PUBLICATION {} FOR {}",
            pg::ident(name),
            publication_list(client, side, tables).await?
        )
    };
    pg::exec(
        client,
        side,
        &format!("creating publication {name}"),
        &format!(
            "BEGIN; DROP PUBLICATION IF EXISTS {}; {create}; COMMIT",
            pg::ident(name)
        ),
    )
    .await
}

/// Drops slot `name` in the cluster of `client` if it exists, ending the
/// walsender that uses it first. Returns whether there was one.
pub(crate) async fn drop_slot(client: &Client, side: Side, name: &str) -> Result<bool, SyncError> {
    for _ in 0..50 {
        let row = client
            .query_opt(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&name],
            )
            .await
            .map_err(|e| SyncError::query(side, format!("looking up slot {name}"), &e))?;
        let Some(row) = row else { return Ok(false) };
        let pid: Option<i32> = row.get(0);
        if let Some(pid) = pid {
            let _ = client
                .query("SELECT pg_terminate_backend($1)", &[&pid])
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        match client
            .query("SELECT pg_drop_replication_slot($1)", &[&name])
            .await
        {
            Ok(_) => return Ok(true),
            // Became active again (a subscriber reconnected): end it again.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_OBJECT) => {
                return Ok(false)
            }
            Err(e) => {
                return Err(SyncError::query(side, format!("dropping slot {name}"), &e));
            }
        }
    }
    Err(SyncError::Other(format!(
        "{side}: replication slot {name} stays in use: a subscriber keeps reconnecting to it; drop that subscription, then run `switchyard sync cleanup` again"
    )))
}

/// Drops subscription `name` in the database of `client` without touching
/// the remote slot (that is dropped on its own side, reachable or not).
/// Returns whether there was one.
pub(crate) async fn drop_subscription(
    client: &Client,
    side: Side,
    name: &str,
) -> Result<bool, SyncError> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_subscription WHERE subname = $1 AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&name],
        )
        .await
        .map_err(|e| SyncError::query(side, format!("looking up subscription {name}"), &e))?
        .is_some();
    if !exists {
        return Ok(false);
    }
    let n = pg::ident(name);
    pg::exec(
        client,
        side,
        &format!("dropping subscription {name}"),
        &format!(
            "ALTER SUBSCRIPTION {n} DISABLE; ALTER SUBSCRIPTION {n} SET (slot_name = NONE); DROP SUBSCRIPTION {n}"
        ),
    )
    .await?;
    Ok(true)
}

/// Drops publication `name` in the database of `client` if it exists.
/// Returns whether there was one.
pub(crate) async fn drop_publication(
    client: &Client,
    side: Side,
    name: &str,
) -> Result<bool, SyncError> {
    let exists = client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
        .await
        .map_err(|e| SyncError::query(side, "listing publications", &e))?
        .is_some();
    if !exists {
        return Ok(false);
    }
    pg::exec(
        client,
        side,
        &format!("dropping publication {name}"),
        &format!("DROP PUBLICATION IF EXISTS {}", pg::ident(name)),
    )
    .await?;
    Ok(true)
}

/// The slot and publication of a release on its source (the primary),
/// with the snapshot the slot starts from held open (the clone copies
/// inside it).
pub struct ForwardSlot {
    conn: WalSender,
    /// The release's direction: from the primary to the candidate.
    pub dir: Direction,
    /// What the server answered (slot name, consistent point, snapshot).
    pub created: CreatedSlot,
}

impl ForwardSlot {
    /// Creates (or re-creates, dropping leftovers of an earlier attempt) the
    /// publication and slot of `dir` on its source, and exports the slot's
    /// snapshot.
    pub async fn create(db: &DatabaseConfig, dir: Direction) -> Result<ForwardSlot, SyncError> {
        let n = names(db, dir);
        let side = dir.source();
        let blue = pg::connect_owner(side, url_of(db, side)).await?;
        let tables = publishable_tables(&blue, side).await?;
        // Leftovers of an interrupted attempt are ours: remove them first.
        drop_slot(&blue, side, &n.slot).await?;
        create_publication(&blue, side, &n.publication, &tables).await?;
        let result = async {
            let mut conn = WalSender::connect(side, url_of(db, side)).await?;
            let created = conn.create_slot(&n.slot).await?;
            Ok::<_, SyncError>(ForwardSlot { conn, dir, created })
        }
        .await;
        if result.is_err() {
            let _ = drop_slot(&blue, side, &n.slot).await;
            let _ = drop_publication(&blue, side, &n.publication).await;
        }
        result
    }

    /// Ends the exported snapshot; the slot stays, retaining WAL until the
    /// target subscribes.
    pub async fn release_snapshot(self) {
        self.conn.close().await
    }

    /// Removes the slot and the publication again (a clone that failed).
    pub async fn abandon(self, db: &DatabaseConfig) {
        self.conn.close().await;
        let n = names(db, self.dir);
        let side = self.dir.source();
        if let Ok(blue) = pg::connect_owner(side, url_of(db, side)).await {
            let _ = drop_slot(&blue, side, &n.slot).await;
            let _ = drop_publication(&blue, side, &n.publication).await;
        }
    }
}

/// The connection string the target's server uses for its subscription:
/// the URL as configured, with the password switchyard found in
/// `PGPASSWORD` or `~/.pgpass` added when the URL has none (the server has
/// no access to switchyard's environment).
fn subscription_conninfo(side: Side, url: &str) -> Result<String, SyncError> {
    let in_url = url
        .parse::<tokio_postgres::Config>()
        .ok()
        .and_then(|c| c.get_password().map(<[u8]>::to_vec));
    let with_password = pg::config(side, url)?;
    match (in_url, with_password.get_password()) {
        (None, Some(pw)) => {
            let pw = String::from_utf8_lossy(pw);
            if url.contains("://") {
                let sep = if url.contains('?') { '&' } else { '?' };
                Ok(format!("{url}{sep}password={}", percent_encode(&pw)))
            } else {
                Ok(format!(
                    "{url} password='{}'",
                    pw.replace('\\', "\\\\").replace('\'', "\\'")
                ))
            }
        }
        _ => Ok(url.to_string()),
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Creates the subscription for `dir` on its target, from the slot that
/// already exists on the source, without copying data.
pub async fn create_subscription(
    db: &DatabaseConfig,
    dir: Direction,
    target: &Client,
) -> Result<(), SyncError> {
    let n = names(db, dir);
    let side = dir.target();
    let conninfo = subscription_conninfo(dir.source(), crate::replication::source_url(db, dir))?;
    let version = pg::server_version(target, side).await?;
    // PostgreSQL 16 can skip changes that were themselves replicated, which
    // makes a loop impossible even for a moment; 15 relies on the order of
    // cutover (the old subscription is disabled before the new one exists).
    let origin = if version >= 160000 {
        ", origin = none"
    } else {
        ""
    };
    pg::exec(
        target,
        side,
        &format!("creating subscription {} ({})", n.subscription, dir.arrow()),
        &format!(
            "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} \
             WITH (create_slot = false, slot_name = {}, copy_data = false, enabled = true{origin})",
            pg::ident(&n.subscription),
            pg::literal(&conninfo),
            pg::ident(&n.publication),
            pg::literal(&n.slot),
        ),
    )
    .await
}

/// Starts the replication of the release in direction `dir`: its target
/// subscribes from the slot the clone was taken from (or, for a reused
/// replica, goes on streaming from its own). A disabled subscription (a
/// cutover that could not be undone while a side was down) is enabled
/// again. Refuses when the target was cloned without that slot (it could
/// never be caught up) or when the slot is gone.
pub async fn subscribe(db: &DatabaseConfig, dir: Direction) -> Result<SubscribeReport, SyncError> {
    let n = names(db, dir);
    let (src, dst) = (dir.source(), dir.target());
    let green = pg::connect_owner(dst, url_of(db, dst)).await?;
    let clone = crate::state::last_clone(&green, dst).await?;
    let Some(clone) = clone else {
        return Err(SyncError::NotCloned { side: dst });
    };
    if clone.slot.as_deref() != Some(n.slot.as_str()) {
        return Err(SyncError::ClonedWithoutSlot {
            side: dst,
            why: format!(
                "{dst} was cloned without a replication slot for {} (snapshot mode, an older clone, or a copy from the other direction), so the changes {src} took since then cannot be streamed",
                dir.arrow()
            ),
        });
    }
    if let Some(enabled) = subscription_enabled(&green, dst, &n.subscription).await? {
        if !enabled {
            pg::exec(
                &green,
                dst,
                &format!("enabling subscription {}", n.subscription),
                &format!("ALTER SUBSCRIPTION {} ENABLE", pg::ident(&n.subscription)),
            )
            .await?;
        }
        return Ok(SubscribeReport {
            already_running: enabled,
            enabled_again: !enabled,
            slot: n.slot,
            from_lsn: clone.consistent_lsn,
        });
    }
    let blue = pg::connect(src, url_of(db, src)).await?;
    let slot_ok = blue
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()",
            &[&n.slot],
        )
        .await
        .map_err(|e| SyncError::query(src, "looking up the replication slot", &e))?
        .is_some();
    if !slot_ok {
        return Err(SyncError::ClonedWithoutSlot {
            side: dst,
            why: format!(
                "the slot {} that {dst} was cloned from no longer exists on {src} (removed by cleanup or by hand), so the changes since the clone are gone",
                n.slot
            ),
        });
    }
    create_subscription(db, dir, &green).await?;
    Ok(SubscribeReport {
        already_running: false,
        enabled_again: false,
        slot: n.slot,
        from_lsn: clone.consistent_lsn,
    })
}

/// Whether subscription `name` exists in the database of `client`, and if
/// so whether it is enabled.
pub(crate) async fn subscription_enabled(
    client: &Client,
    side: Side,
    name: &str,
) -> Result<Option<bool>, SyncError> {
    Ok(client
        .query_opt(
            "SELECT subenabled FROM pg_subscription WHERE subname = $1 AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&name],
        )
        .await
        .map_err(|e| SyncError::query(side, format!("looking up subscription {name}"), &e))?
        .map(|r| r.get(0)))
}

/// What [`subscribe`] did.
#[derive(Debug, Clone, Serialize)]
pub struct SubscribeReport {
    /// The subscription existed and was enabled already; nothing was changed.
    pub already_running: bool,
    /// The subscription existed but was disabled (an interrupted cutover
    /// left it so): it was enabled again.
    pub enabled_again: bool,
    /// The slot the target streams from.
    pub slot: String,
    /// The LSN the clone's snapshot corresponds to.
    pub from_lsn: Option<String>,
}

pub(crate) async fn subscription_exists(
    client: &Client,
    side: Side,
    name: &str,
) -> Result<bool, SyncError> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM pg_subscription WHERE subname = $1 AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&name],
        )
        .await
        .map_err(|e| SyncError::query(side, format!("looking up subscription {name}"), &e))?
        .is_some())
}

async fn objects_on(
    client: &Client,
    side: Side,
    db: &DatabaseConfig,
) -> Result<Vec<ReplicationObject>, SyncError> {
    let mut out = Vec::new();
    for dir in [Direction::Forward, Direction::Reverse] {
        let n = names(db, dir);
        if dir.source() == side {
            let publ = client
                .query_opt(
                    "SELECT 1 FROM pg_publication WHERE pubname = $1",
                    &[&n.publication],
                )
                .await
                .map_err(|e| SyncError::query(side, "listing publications", &e))?;
            if publ.is_some() {
                out.push(ReplicationObject {
                    side,
                    kind: ObjectKind::Publication,
                    name: n.publication.clone(),
                    direction: dir,
                    active: true,
                });
            }
            let slot = client
                .query_opt(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                    &[&n.slot],
                )
                .await
                .map_err(|e| SyncError::query(side, "listing replication slots", &e))?;
            if let Some(r) = slot {
                out.push(ReplicationObject {
                    side,
                    kind: ObjectKind::Slot,
                    name: n.slot.clone(),
                    direction: dir,
                    active: r.get(0),
                });
            }
        } else {
            let sub = client
                .query_opt(
                    "SELECT s.subenabled AND EXISTS (SELECT 1 FROM pg_stat_subscription st WHERE st.subid = s.oid AND st.pid IS NOT NULL) \
                       FROM pg_subscription s \
                      WHERE s.subname = $1 AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
                    &[&n.subscription],
                )
                .await
                .map_err(|e| SyncError::query(side, "listing subscriptions", &e))?;
            if let Some(r) = sub {
                out.push(ReplicationObject {
                    side,
                    kind: ObjectKind::Subscription,
                    name: n.subscription.clone(),
                    direction: dir,
                    active: r.get(0),
                });
            }
        }
    }
    Ok(out)
}

/// Reads replication state from both sides. A side that cannot be reached
/// is listed in `unreachable` rather than failing the whole reading.
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
    let (blue, green) = tokio::join!(
        pg::connect(Side::Blue, &db.blue),
        pg::connect(Side::Green, &db.green)
    );
    let mut clients = Vec::new();
    for (side, c) in [(Side::Blue, blue), (Side::Green, green)] {
        match c {
            Ok(c) => match objects_on(&c, side, db).await {
                Ok(o) => {
                    st.objects.extend(o);
                    clients.push((side, c));
                }
                Err(e) => st.unreachable.push(format!("{side}: {e}")),
            },
            Err(e) => st.unreachable.push(format!("{side}: {e}")),
        }
    }
    let has = |kind: ObjectKind, dir: Direction| {
        st.objects
            .iter()
            .find(|o| o.kind == kind && o.direction == dir)
    };
    let subs: Vec<Direction> = [Direction::Forward, Direction::Reverse]
        .into_iter()
        .filter(|d| has(ObjectKind::Subscription, *d).is_some())
        .collect();
    let slots: Vec<Direction> = [Direction::Forward, Direction::Reverse]
        .into_iter()
        .filter(|d| has(ObjectKind::Slot, *d).is_some())
        .collect();
    let dir = match (subs.as_slice(), slots.as_slice()) {
        ([d], _) => Some(*d),
        ([], [d]) => Some(*d),
        _ => None,
    };
    st.direction = dir;
    st.state = if subs.len() > 1 || slots.len() > 1 {
        ReplicationState::Inconsistent
    } else if let Some(d) = dir {
        let sub_active = has(ObjectKind::Subscription, d).map(|o| o.active);
        let slot_active = has(ObjectKind::Slot, d).map(|o| o.active);
        match (sub_active, slot_active) {
            (Some(true), Some(true)) => ReplicationState::Streaming,
            (Some(_), _) => ReplicationState::Stopped,
            // A slot without a subscription (a clone not yet subscribed,
            // or a target we cannot read).
            (None, Some(_)) if st.unreachable.is_empty() => ReplicationState::Stopped,
            (None, _) => ReplicationState::Stopped,
        }
    } else {
        ReplicationState::None
    };
    if st.state == ReplicationState::Inconsistent {
        st.direction = None;
    }
    if let Some(d) = st.direction {
        if let Some((_, source)) = clients.iter().find(|(s, _)| *s == d.source()) {
            let n = names(db, d);
            if let Ok(Some(r)) = source
                .query_opt(
                    "SELECT greatest(0, (pg_current_wal_insert_lsn() - greatest(s.confirmed_flush_lsn, r.replay_lsn)))::int8, \
                            greatest(0, (pg_current_wal_insert_lsn() - s.restart_lsn))::int8, \
                            extract(epoch FROM coalesce(r.replay_lag, r.write_lag))::float8, \
                            s.wal_status, r.pid IS NOT NULL \
                       FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid \
                      WHERE s.slot_name = $1",
                    &[&n.slot],
                )
                .await
            {
                let lag: Option<i64> = r.get(0);
                let connected: bool = r.get(4);
                st.lag_bytes = lag;
                st.retained_wal_bytes = r.get(1);
                st.wal_status = r.get(3);
                let reported: Option<f64> = r.get(2);
                st.lag_seconds = match (connected, lag) {
                    (true, Some(0)) => Some(0.0),
                    (true, _) => Some(reported.unwrap_or(0.0)),
                    (false, _) => None,
                };
            }
        }
    }
    st
}

/// Reads the source's current WAL position, then waits (up to `within`)
/// until the target's subscription has applied everything up to it. This is
/// the definition of "lag ≤ `within`", measured rather than estimated, and
/// what cutover waits for while writes are held.
pub async fn wait_caught_up(
    db: &DatabaseConfig,
    dir: Direction,
    within: Duration,
) -> Result<CatchUp, SyncError> {
    let side = dir.source();
    let source = pg::connect(side, url_of(db, side)).await?;
    wait_caught_up_on(&source, db, dir, within).await
}

/// [`wait_caught_up`] on an open session to the source: the target has
/// applied (committed) everything up to the source's current position.
pub async fn wait_caught_up_on(
    source: &Client,
    db: &DatabaseConfig,
    dir: Direction,
    within: Duration,
) -> Result<CatchUp, SyncError> {
    wait_on(source, db, dir, within, "replay_lsn").await
}

/// [`wait_caught_up_on`] for what the target has received, not yet
/// necessarily applied: the cutover waits for this (the applied position
/// can trail the received one by a status interval), then, once the old
/// subscription's worker is gone, checks from the old slot and the target's
/// replication origin that every received transaction was applied
/// (`crate::postgres::cutover`).
pub async fn wait_received_on(
    source: &Client,
    db: &DatabaseConfig,
    dir: Direction,
    within: Duration,
) -> Result<CatchUp, SyncError> {
    wait_on(source, db, dir, within, "write_lsn").await
}

async fn wait_on(
    source: &Client,
    db: &DatabaseConfig,
    dir: Direction,
    within: Duration,
    column: &str,
) -> Result<CatchUp, SyncError> {
    let side = dir.source();
    let n = names(db, dir);
    let started = Instant::now();
    let lsn: String = source
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .map_err(|e| SyncError::query(side, "reading the current WAL position", &e))?
        .get(0);
    let at = format!("greatest(s.confirmed_flush_lsn, r.{column})");
    let probe = format!(
        "SELECT {at} >= $2::text::pg_lsn, {at}::text, ($2::text::pg_lsn - {at})::int8 \
           FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid \
          WHERE s.slot_name = $1"
    );
    loop {
        let row = source
            .query_opt(&probe, &[&n.slot, &lsn])
            .await
            .map_err(|e| SyncError::query(side, "reading replication progress", &e))?;
        let Some(row) = row else {
            return Err(SyncError::Other(format!(
                "{side}: the replication slot {} does not exist: replication {} is not set up",
                n.slot,
                dir.arrow()
            )));
        };
        let done: Option<bool> = row.get(0);
        if done == Some(true) {
            return Ok(CatchUp::CaughtUp {
                lsn,
                waited: started.elapsed(),
            });
        }
        if started.elapsed() >= within {
            return Ok(CatchUp::Behind {
                lsn,
                confirmed: row.get(1),
                lag_bytes: row.get(2),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Removes every publication, slot and subscription switchyard created, on
/// both sides, whatever state they are in (idempotent; safe after a crash).
/// Subscriptions go first so that no worker holds a slot while it is dropped.
pub async fn cleanup(db: &DatabaseConfig) -> Result<CleanupReport, SyncError> {
    cleanup_keeping(db, None).await
}

/// [`cleanup`], except the replication of direction `keep` when its
/// subscription exists (a live replica that protects a promotion; a slot
/// without its subscription protects nothing and goes).
pub async fn cleanup_keeping(
    db: &DatabaseConfig,
    keep: Option<Direction>,
) -> Result<CleanupReport, SyncError> {
    let mut report = CleanupReport::default();
    let (blue, green) = tokio::join!(
        pg::connect_owner(Side::Blue, &db.blue),
        pg::connect_owner(Side::Green, &db.green)
    );
    let mut clients = Vec::new();
    for (side, c) in [(Side::Blue, blue), (Side::Green, green)] {
        match c {
            Ok(c) => clients.push((side, c)),
            Err(e) => report.unreachable.push(format!("{side}: {e}")),
        }
    }
    let keep = match keep {
        Some(d) => match clients.iter().find(|(s, _)| *s == d.target()) {
            Some((s, c)) => subscription_exists(c, *s, &names(db, d).subscription)
                .await?
                .then_some(d),
            // The target cannot be read: keep what may protect it.
            None => Some(d),
        },
        None => None,
    };
    if let Some(d) = keep {
        report.kept.push(format!(
            "replication {} (the candidate's database stays a live replica of the primary)",
            d.arrow()
        ));
    }
    for (side, c) in &clients {
        for dir in [Direction::Forward, Direction::Reverse] {
            if dir.target() != *side || Some(dir) == keep {
                continue;
            }
            let n = names(db, dir);
            if drop_subscription(c, *side, &n.subscription).await? {
                report.removed.push(ReplicationObject {
                    side: *side,
                    kind: ObjectKind::Subscription,
                    name: n.subscription,
                    direction: dir,
                    active: false,
                });
            }
        }
    }
    for (side, c) in &clients {
        for dir in [Direction::Forward, Direction::Reverse] {
            if dir.source() != *side || Some(dir) == keep {
                continue;
            }
            let n = names(db, dir);
            if drop_slot(c, *side, &n.slot).await? {
                report.removed.push(ReplicationObject {
                    side: *side,
                    kind: ObjectKind::Slot,
                    name: n.slot.clone(),
                    direction: dir,
                    active: false,
                });
            }
            if drop_publication(c, *side, &n.publication).await? {
                report.removed.push(ReplicationObject {
                    side: *side,
                    kind: ObjectKind::Publication,
                    name: n.publication,
                    direction: dir,
                    active: false,
                });
            }
        }
    }
    Ok(report)
}

/// Internal pieces for [`crate::cutover`].
pub(crate) mod parts {
    pub(crate) use super::{
        create_publication, create_subscription, drop_publication, drop_slot, drop_subscription,
        publishable_tables, subscription_exists, url_of, PublishedTable,
    };
}
