//! Snapshot blue's MySQL/MariaDB database into green, streaming.
//!
//! One consistent snapshot shared by every worker, the way mydumper takes
//! it: a brief lock (MariaDB's `BACKUP STAGE BLOCK_COMMIT`, which lets reads
//! and writes run and only holds commits; `FLUSH TABLES WITH READ LOCK` on
//! MySQL) while each worker starts `START TRANSACTION WITH CONSISTENT
//! SNAPSHOT, READ ONLY`, blue's GTID position, binary log position, clock
//! and `AUTO_INCREMENT` counters read at that instant, then the lock let
//! go. Each table's rows are read by a worker in its snapshot and streamed
//! into green with `LOAD DATA LOCAL INFILE` (the file is the stream: no
//! intermediate file), raw bytes in each column's own character set. A
//! table's secondary indexes and counter are added right after its data,
//! foreign keys once every table is loaded, then views, routines,
//! triggers and events (events created disabled: they must not run on a
//! copy). Any warning from the load fails the clone: a value the server
//! had to adjust is not a copy.

use super::catalog::{self, ObjectKind, Table};
use super::state::{self, LogPosition};
use super::{connect, ident, literal, query_error, Flavor, Session};
use crate::error::{Side, SyncError};
use crate::gate::CloneState;
use crate::progress::Progress;
use crate::Output;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use mysql_async::prelude::Queryable;
use mysql_async::Value;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use switchyard_config::DatabaseConfig;

/// One table's copy.
#[derive(Debug, Clone, Serialize)]
pub struct TableCopy {
    pub table: String,
    pub rows: u64,
    pub bytes: u64,
    pub seconds: f64,
}

/// What a clone did.
#[derive(Debug, Clone, Serialize)]
pub struct CloneReport {
    pub engine: &'static str,
    pub tables: Vec<TableCopy>,
    pub rows: u64,
    /// Bytes streamed into `LOAD DATA`.
    pub bytes: u64,
    pub indexes: usize,
    pub foreign_keys: usize,
    /// Views, routines, triggers and events recreated.
    pub objects: usize,
    /// Events are created disabled on green: enable them after promotion.
    pub events_disabled: Vec<String>,
    /// `GRANT`s on the database and its tables given on green
    /// (`roles = "copy"`), and the users they name that green lacks.
    pub grants: usize,
    pub grantees_missing: Vec<String>,
    /// Where blue's log stood at the snapshot (replication starts there).
    pub position: LogPosition,
    /// How long commits on blue were held while the snapshot was taken.
    pub lock_ms: f64,
    pub jobs: usize,
    pub seconds: f64,
}

/// What green holds besides nothing, if anything.
pub async fn green_contents(green: &mut Session) -> Result<Option<String>, SyncError> {
    let db = literal(&green.database);
    let row = green
        .text(
            "looking at green's contents",
            &format!(
                "SELECT CONCAT_WS(', ', \
                   NULLIF(CONCAT((SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = {db}), ' tables or views'), '0 tables or views'), \
                   NULLIF(CONCAT((SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {db}), ' routines'), '0 routines'), \
                   NULLIF(CONCAT((SELECT COUNT(*) FROM information_schema.EVENTS WHERE EVENT_SCHEMA = {db}), ' events'), '0 events'))"
            ),
        )
        .await?
        .unwrap_or_default();
    Ok((!row.is_empty()).then_some(row))
}

/// Refuses to replace a green that a cutover made the primary.
async fn refuse_replacing_the_primary(green: &mut Session) -> Result<(), SyncError> {
    if let Some(since) = state::primary_since(green).await? {
        return Err(SyncError::TargetIsPrimary {
            side: crate::Side::Green,
            since,
        });
    }
    Ok(())
}

/// Blue held still for an instant: the snapshot every worker shares.
struct Snapshot {
    workers: Vec<Session>,
    position: LogPosition,
    auto_increment: Vec<(String, u64)>,
    lock_ms: f64,
}

/// Takes the snapshot: lock, start every worker's transaction, read the
/// positions, unlock (always, even when a step fails).
async fn snapshot(
    db: &DatabaseConfig,
    control: &mut Session,
    jobs: usize,
) -> Result<Snapshot, SyncError> {
    let mut workers = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        let mut w = connect(Side::Blue, &db.blue).await?;
        // Raw bytes as stored: each column's own character set, no conversion.
        w.exec(
            "preparing a copy session",
            "SET SESSION character_set_results = binary; \
             SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        )
        .await?;
        workers.push(w);
    }
    let (lock, unlock) = match control.flavor {
        Flavor::MariaDb => (
            "BACKUP STAGE START; BACKUP STAGE BLOCK_COMMIT",
            "BACKUP STAGE END",
        ),
        Flavor::MySql => ("FLUSH TABLES WITH READ LOCK", "UNLOCK TABLES"),
    };
    control
        .exec(
            "setting the lock timeout",
            "SET SESSION lock_wait_timeout = 30",
        )
        .await?;
    let started = Instant::now();
    control
        .exec(
            "holding commits on blue for the snapshot (needs the RELOAD privilege)",
            lock,
        )
        .await?;
    let taken = async {
        for w in &mut workers {
            w.exec(
                "starting the snapshot transaction",
                "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
            )
            .await?;
        }
        let gtid_var = match control.flavor {
            Flavor::MariaDb => "@@GLOBAL.gtid_binlog_pos",
            Flavor::MySql => "@@GLOBAL.gtid_executed",
        };
        let rows = control
            .rows(
                "reading blue's log position",
                &format!(
                    "SELECT IFNULL({gtid_var}, ''), DATE_FORMAT(UTC_TIMESTAMP(6), '%Y-%m-%d %H:%i:%s.%f'), @@log_bin"
                ),
            )
            .await?;
        let r = &rows[0];
        let mut position = LogPosition {
            gtid: r.get::<String, _>(0).unwrap_or_default(),
            blue_time: r.get::<String, _>(1).unwrap_or_default(),
            ..LogPosition::default()
        };
        if r.get::<i64, _>(2).unwrap_or(0) == 1 {
            let status = control
                .rows("reading blue's binary log position", "SHOW MASTER STATUS")
                .await?;
            if let Some(s) = status.first() {
                position.binlog_file = s.get::<String, _>(0);
                position.binlog_pos = s.get::<u64, _>(1);
            }
        }
        if control.flavor == Flavor::MySql {
            control
                .exec("reading live counters", "SET SESSION information_schema_stats_expiry = 0")
                .await?;
        }
        let counters = control
            .rows(
                "reading AUTO_INCREMENT counters",
                &format!(
                    "SELECT TABLE_NAME, AUTO_INCREMENT FROM information_schema.TABLES \
                      WHERE TABLE_SCHEMA = {} AND AUTO_INCREMENT IS NOT NULL",
                    literal(&control.database)
                ),
            )
            .await?;
        let auto_increment = counters
            .iter()
            .filter_map(|r| Some((r.get::<String, _>(0)?, r.get::<u64, _>(1)?)))
            .collect();
        Ok::<_, SyncError>((position, auto_increment))
    }
    .await;
    let released = control.exec("letting blue's commits go", unlock).await;
    let lock_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (position, auto_increment) = taken?;
    released?;
    Ok(Snapshot {
        workers,
        position,
        auto_increment,
        lock_ms,
    })
}

/// A session on blue still inside the clone's snapshot: verify reads blue
/// through it to compare green with exactly what was copied.
pub struct SnapshotHolder(pub(crate) Session);

impl SnapshotHolder {
    /// Ends the snapshot transaction.
    pub async fn release(mut self) {
        let _ = self.0.exec("ending the snapshot", "COMMIT").await;
        self.0.close().await;
    }
}

/// Clones blue into green with `jobs` parallel streams.
pub async fn clone(
    db: &DatabaseConfig,
    jobs: usize,
    replace: bool,
    out: Output,
) -> Result<(CloneReport, Option<SnapshotHolder>), SyncError> {
    let started = Instant::now();
    let jobs = jobs.max(1);
    let mut blue = connect(Side::Blue, &db.blue).await?;
    let mut green = connect(Side::Green, &db.green).await?;
    refuse_replacing_the_primary(&mut green).await?;
    if let Some(what) = green_contents(&mut green).await? {
        if !replace {
            return Err(SyncError::TargetNotEmpty {
                side: crate::Side::Green,
                what,
            });
        }
    }
    let (charset, collation) = {
        let rows = blue
            .rows(
                "reading blue's database character set",
                &format!(
                    "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {}",
                    literal(&blue.database)
                ),
            )
            .await?;
        let r = rows.first();
        (
            r.and_then(|r| r.get::<String, _>(0))
                .unwrap_or_else(|| "utf8mb4".into()),
            r.and_then(|r| r.get::<String, _>(1))
                .unwrap_or_else(|| "utf8mb4_general_ci".into()),
        )
    };
    let gdb = ident(&green.database);
    if replace {
        green
            .exec(
                "emptying green (--replace)",
                &format!("DROP DATABASE {gdb}; CREATE DATABASE {gdb}; USE {gdb}"),
            )
            .await?;
    }
    green
        .exec(
            "matching blue's database character set",
            &format!("ALTER DATABASE {gdb} CHARACTER SET {charset} COLLATE {collation}"),
        )
        .await?;

    let tables = catalog::tables(&mut blue).await?;
    let snap = snapshot(db, &mut blue, jobs).await?;
    let id = state::start_clone(&mut green, &snap.position).await?;
    let result = copy_everything(db, &mut blue, &mut green, tables, snap, jobs, out).await;
    match result {
        Ok((mut report, holder)) => {
            report.seconds = started.elapsed().as_secs_f64();
            state::finish_clone(&mut green, id, &report).await?;
            blue.close().await;
            green.close().await;
            Ok((report, holder))
        }
        Err((phase, e)) => {
            let _ = state::mark_clone(
                &mut green,
                id,
                CloneState::Failed,
                phase,
                Some(&e.to_string()),
            )
            .await;
            Err(e)
        }
    }
}

type Failed = (&'static str, SyncError);

async fn copy_everything(
    db: &DatabaseConfig,
    blue: &mut Session,
    green: &mut Session,
    mut tables: Vec<Table>,
    snap: Snapshot,
    jobs: usize,
    out: Output,
) -> Result<(CloneReport, Option<SnapshotHolder>), Failed> {
    let phase = |p: &'static str| move |e: SyncError| (p, e);
    // Tables with their primary keys only; the rest after the data.
    let mut splits = Vec::with_capacity(tables.len());
    green
        .exec(
            "preparing green",
            "SET SESSION foreign_key_checks = 0, SESSION unique_checks = 0",
        )
        .await
        .map_err(phase("schema"))?;
    for t in &tables {
        let split = catalog::split_create_table(
            &catalog::create_table(blue, &t.name)
                .await
                .map_err(phase("schema"))?,
        );
        green
            .exec(&format!("creating table {}", t.name), &split.create)
            .await
            .map_err(phase("schema"))?;
        splits.push((t.name.clone(), split));
    }
    let splits = Arc::new(splits);
    let counters = Arc::new(snap.auto_increment);

    // Largest first, so the long ones start early.
    tables.sort_by(|a, b| b.data_bytes.cmp(&a.data_bytes).then(a.name.cmp(&b.name)));
    let total: u64 = tables.iter().map(|t| t.data_bytes).sum();
    let progress = Arc::new(Progress::new(out, "clone", total));
    let queue = Arc::new(Mutex::new(tables));
    let mut workers = Vec::new();
    for reader in snap.workers {
        let mut writer = connect(Side::Green, &db.green)
            .await
            .map_err(phase("copy"))?;
        writer
            .exec(
                "preparing a load session",
                "SET SESSION foreign_key_checks = 0, SESSION unique_checks = 0",
            )
            .await
            .map_err(phase("copy"))?;
        let (queue, splits, counters, progress) = (
            queue.clone(),
            splits.clone(),
            counters.clone(),
            progress.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut reader = reader;
            let mut done = Vec::new();
            let mut indexes = 0;
            loop {
                let Some(table) = queue.lock().expect("queue").pop() else {
                    break;
                };
                let bar = progress.table(&table.name, table.data_bytes, table.estimated_rows);
                let copied = copy_table(&mut reader, &mut writer, &table, &bar).await?;
                bar.done(copied.rows);
                let split = &splits
                    .iter()
                    .find(|(n, _)| *n == table.name)
                    .expect("split")
                    .1;
                let mut alter: Vec<String> =
                    split.indexes.iter().map(|i| format!("ADD {i}")).collect();
                indexes += split.indexes.len();
                if let Some((_, n)) = counters.iter().find(|(n, _)| *n == table.name) {
                    alter.push(format!("AUTO_INCREMENT = {n}"));
                }
                if !alter.is_empty() {
                    writer
                        .exec(
                            &format!("adding the indexes of table {}", table.name),
                            &format!("ALTER TABLE {} {}", ident(&table.name), alter.join(", ")),
                        )
                        .await?;
                }
                done.push(copied);
            }
            writer.close().await;
            Ok::<_, SyncError>((done, indexes, reader))
        }));
    }
    // The queue pops from the end: reverse so the largest go first.
    queue.lock().expect("queue").reverse();
    let mut copies = Vec::new();
    let mut indexes = 0;
    let mut first_error = None;
    let mut readers = Vec::new();
    for w in workers {
        match w.await {
            Ok(Ok((done, n, reader))) => {
                copies.extend(done);
                indexes += n;
                readers.push(reader);
            }
            Ok(Err(e)) => {
                queue.lock().expect("queue").clear();
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(SyncError::Other(format!("a copy worker stopped: {e}")));
            }
        }
    }
    progress.finish();
    // One snapshot session stays open for a verification against exactly
    // what was copied; the others end.
    let holder = readers.pop();
    for mut r in readers {
        let _ = r.exec("ending the snapshot", "COMMIT").await;
        r.close().await;
    }
    if let Some(e) = first_error {
        return Err(("copy", e));
    }

    let mut foreign_keys = 0;
    for (table, split) in splits.iter() {
        if split.foreign_keys.is_empty() {
            continue;
        }
        foreign_keys += split.foreign_keys.len();
        let adds: Vec<String> = split
            .foreign_keys
            .iter()
            .map(|f| format!("ADD {f}"))
            .collect();
        green
            .exec(
                &format!("adding the foreign keys of table {table}"),
                &format!("ALTER TABLE {} {}", ident(table), adds.join(", ")),
            )
            .await
            .map_err(phase("foreign keys"))?;
    }

    let objects = catalog::objects(blue).await.map_err(phase("objects"))?;
    let mut events_disabled = Vec::new();
    // Views may read other views: create them until no more can be.
    let mut views: Vec<_> = objects
        .iter()
        .filter(|o| o.kind == ObjectKind::View)
        .collect();
    while !views.is_empty() {
        let mut left = Vec::new();
        let mut last_error = None;
        for v in views.iter().copied() {
            if let Err(e) = green
                .exec(&format!("creating view {}", v.name), &v.create)
                .await
            {
                last_error = Some(e);
                left.push(v);
            }
        }
        if left.len() == views.len() {
            return Err(("objects", last_error.expect("an error for each view left")));
        }
        views = left;
    }
    for o in objects.iter().filter(|o| o.kind != ObjectKind::View) {
        green
            .exec(
                &format!("creating {} {}", o.kind.keyword().to_lowercase(), o.name),
                &o.create,
            )
            .await
            .map_err(phase("objects"))?;
        if o.kind == ObjectKind::Event {
            green
                .exec(
                    &format!("disabling event {} on green", o.name),
                    &format!("ALTER EVENT {} DISABLE", ident(&o.name)),
                )
                .await
                .map_err(phase("objects"))?;
            events_disabled.push(o.name.clone());
        }
    }
    let (mut grants, mut grantees_missing) = (0, Vec::new());
    if db.roles == switchyard_config::RolesMode::Copy {
        let wanted = catalog::grants(blue).await.map_err(phase("grants"))?;
        for (grantee, stmt) in catalog::grant_statements(&green.database, &wanted) {
            match green.exec(&format!("granting to {grantee}"), &stmt).await {
                Ok(()) => grants += 1,
                // 1133: no such user on green.
                Err(SyncError::Query { message, .. }) if message.contains("error 1133") => {
                    if !grantees_missing.contains(&grantee) {
                        grantees_missing.push(grantee);
                    }
                }
                Err(e) => return Err(("grants", e)),
            }
        }
    }
    copies.sort_by(|a, b| a.table.cmp(&b.table));
    Ok((
        CloneReport {
            grants,
            grantees_missing,
            engine: "mysql",
            rows: copies.iter().map(|c| c.rows).sum(),
            bytes: copies.iter().map(|c| c.bytes).sum(),
            tables: copies,
            indexes,
            foreign_keys,
            objects: objects.len(),
            events_disabled,
            position: snap.position,
            lock_ms: snap.lock_ms,
            jobs,
            seconds: 0.0,
        },
        holder.map(SnapshotHolder),
    ))
}

/// Streams one table from a snapshot session into green.
async fn copy_table(
    reader: &mut Session,
    writer: &mut Session,
    table: &Table,
    bar: &crate::progress::TableBar,
) -> Result<TableCopy, SyncError> {
    let started = Instant::now();
    let columns: Vec<_> = table.stored_columns().collect();
    let select = format!(
        "SELECT {} FROM {}",
        columns
            .iter()
            .map(|c| c.select_expr())
            .collect::<Vec<_>>()
            .join(", "),
        ident(&table.name)
    );
    // BIT arrives as its number, which LOAD DATA would store as text: it
    // goes through a variable and a cast.
    let targets: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if c.data_type == "bit" {
                format!("@sy_{i}")
            } else {
                ident(&c.name)
            }
        })
        .collect();
    let sets: Vec<String> = columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.data_type == "bit")
        .map(|(i, c)| format!("{} = CAST(@sy_{i} AS UNSIGNED)", ident(&c.name)))
        .collect();
    let load = format!(
        "LOAD DATA LOCAL INFILE 'switchyard-stream' INTO TABLE {} CHARACTER SET binary \
         FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' ({}){}",
        ident(&table.name),
        targets.join(", "),
        if sets.is_empty() {
            String::new()
        } else {
            format!(" SET {}", sets.join(", "))
        }
    );
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(8);
    writer.conn.set_infile_handler(async move {
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        });
        Ok(stream.boxed())
    });
    let context = format!("reading table {}", table.name);
    let read = async {
        let side = reader.side;
        let mut result = reader
            .conn
            .query_iter(select.as_str())
            .await
            .map_err(|e| query_error(side, &context, &e))?;
        let mut buf = BytesMut::with_capacity(256 * 1024);
        let (mut rows, mut bytes) = (0u64, 0u64);
        let mut stream = result
            .stream::<mysql_async::Row>()
            .await
            .map_err(|e| query_error(side, &context, &e))?;
        if let Some(s) = stream.as_mut() {
            while let Some(row) = s.next().await {
                let row = row.map_err(|e| query_error(side, &context, &e))?;
                encode_row(&mut buf, row);
                rows += 1;
                if buf.len() >= 240 * 1024 {
                    let chunk = buf.split().freeze();
                    bytes += chunk.len() as u64;
                    bar.inc(chunk.len() as u64);
                    if tx.send(Ok(chunk)).await.is_err() {
                        // The load stopped; its own error says why.
                        return Ok((rows, bytes));
                    }
                }
            }
        }
        drop(stream);
        if !buf.is_empty() {
            let chunk = buf.split().freeze();
            bytes += chunk.len() as u64;
            bar.inc(chunk.len() as u64);
            let _ = tx.send(Ok(chunk)).await;
        }
        drop(tx);
        Ok::<_, SyncError>((rows, bytes))
    };
    let write = async {
        let side = writer.side;
        let loaded = writer.conn.query_drop(load.as_str()).await;
        // A load refused before the server asked for the data leaves the
        // handler, and with it the stream's receiver, on the connection:
        // replace it, so the reader's next send fails instead of waiting
        // for room forever.
        writer
            .conn
            .set_infile_handler(async { Ok(futures_util::stream::empty().boxed()) });
        loaded.map_err(|e| SyncError::Copy {
            target: crate::Side::Green,
            table: table.name.clone(),
            message: query_error(side, "LOAD DATA", &e).to_string(),
        })?;
        let warnings = writer.conn.get_warnings();
        if warnings > 0 {
            let shown = writer
                .rows("reading the load's warnings", "SHOW WARNINGS LIMIT 3")
                .await
                .unwrap_or_default();
            let text: Vec<String> = shown
                .iter()
                .map(|r| r.get::<String, _>(2).unwrap_or_default())
                .collect();
            return Err(SyncError::Copy {
                target: crate::Side::Green,
                table: table.name.clone(),
                message: format!(
                    "green's server changed {warnings} value(s) while loading them, so green would not be an exact copy: {}",
                    text.join("; ")
                ),
            });
        }
        Ok(())
    };
    let (read, write) = tokio::join!(read, write);
    write?;
    let (rows, bytes) = read?;
    Ok(TableCopy {
        table: table.name.clone(),
        rows,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Appends one row in `LOAD DATA`'s default format: tab between fields,
/// newline after the row, `\N` for NULL, backslash escapes.
fn encode_row(buf: &mut BytesMut, row: mysql_async::Row) {
    for (i, v) in row.unwrap().into_iter().enumerate() {
        if i > 0 {
            buf.put_u8(b'\t');
        }
        match v {
            Value::NULL => buf.put_slice(b"\\N"),
            Value::Bytes(b) => escape_into(buf, &b),
            other => {
                let s = other.as_sql(true);
                escape_into(buf, s.trim_matches('\'').as_bytes())
            }
        }
    }
    buf.put_u8(b'\n');
}

fn escape_into(buf: &mut BytesMut, bytes: &[u8]) {
    buf.reserve(bytes.len() + 8);
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            0 => b"\\0",
            _ => continue,
        };
        buf.put_slice(&bytes[start..i]);
        buf.put_slice(esc);
        start = i + 1;
    }
    buf.put_slice(&bytes[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_bytes_that_mean_something_to_load_data_are_escaped() {
        let mut b = BytesMut::new();
        escape_into(&mut b, b"a\tb\nc\\d\re\0f\\N");
        assert_eq!(&b[..], b"a\\tb\\nc\\\\d\\re\\0f\\\\N");
        let mut b = BytesMut::new();
        escape_into(&mut b, "plain ünïcødé 🎉".as_bytes());
        assert_eq!(&b[..], "plain ünïcødé 🎉".as_bytes());
    }
}
