//! Preflight: checks both databases before any work, and says what would go
//! wrong. Each finding has a severity, names the object concerned and gives a
//! hint; any `blocker` makes the command exit non-zero.

use crate::clone::target_contents;
use crate::error::{Side, SyncError};
pub use crate::findings::{Finding, PreflightReport, Severity};
use crate::pg;
use crate::replication::{url_of, Direction};
use switchyard_config::{DatabaseConfig, SyncMode};
use tokio_postgres::Client;

struct Findings(Vec<Finding>);

impl Findings {
    fn add(&mut self, severity: Severity, check: &str, message: String, hint: impl AsRef<str>) {
        self.0.push(Finding {
            severity,
            check: check.into(),
            message,
            hint: hint.as_ref().into(),
        });
    }
}

async fn strings(
    client: &Client,
    side: Side,
    what: &str,
    sql: &str,
) -> Result<Vec<String>, SyncError> {
    Ok(client
        .query(sql, &[])
        .await
        .map_err(|e| SyncError::query(side, what, &e))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

async fn version(c: &Client, side: Side) -> Result<(String, i32), SyncError> {
    let v: String = c
        .query_one("SELECT current_setting('server_version')", &[])
        .await
        .map_err(|e| SyncError::query(side, "reading the version", &e))?
        .get(0);
    Ok((v, pg::server_version(c, side).await?))
}

fn list(items: &[String]) -> String {
    if items.len() > 10 {
        format!("{} and {} more", items[..10].join(", "), items.len() - 10)
    } else {
        items.join(", ")
    }
}

/// Checks of a server that will publish changes: free slots and walsenders,
/// a cap on the WAL a slot may retain, and slots switchyard left behind.
async fn replication_checks(
    f: &mut Findings,
    c: &Client,
    side: Side,
    db: &DatabaseConfig,
) -> Result<(), SyncError> {
    let row = c
        .query_one(
            "SELECT current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots)::int, \
                    current_setting('max_wal_senders')::int - (SELECT count(*) FROM pg_stat_replication)::int, \
                    current_setting('max_slot_wal_keep_size')",
            &[],
        )
        .await
        .map_err(|e| SyncError::query(side, "reading replication settings", &e))?;
    let (slots, senders, keep): (i32, i32, String) = (row.get(0), row.get(1), row.get(2));
    if slots < 1 {
        f.add(Severity::Blocker, "replication-slots", format!("{side} has no free replication slot (max_replication_slots is used up)"), "raise max_replication_slots and restart, or drop unused slots (SELECT * FROM pg_replication_slots)");
    }
    if senders < 1 {
        f.add(
            Severity::Blocker,
            "wal-senders",
            format!("{side} has no free WAL sender (max_wal_senders is used up)"),
            "raise max_wal_senders and restart",
        );
    }
    if keep == "-1" {
        f.add(Severity::Warning, "slot-wal-limit", format!("{side} has no max_slot_wal_keep_size: a slot whose subscriber stops keeps WAL until the disk is full"), "set max_slot_wal_keep_size (e.g. '50GB') on the server; `switchyard sync status` shows what a slot retains");
    }
    let ours = crate::replicate::names(db, crate::replicate::Direction::Forward).slot;
    let theirs = crate::replicate::names(db, crate::replicate::Direction::Reverse).slot;
    let rows = c
        .query(
            "SELECT slot_name::text, greatest(0, pg_current_wal_lsn() - restart_lsn)::int8 FROM pg_replication_slots \
              WHERE slot_name IN ($1, $2) AND NOT active",
            &[&ours, &theirs],
        )
        .await
        .map_err(|e| SyncError::query(side, "listing replication slots", &e))?;
    for r in rows {
        let (name, bytes): (String, Option<i64>) = (r.get(0), r.get(1));
        f.add(Severity::Warning, "leftover-slot", format!("{side} has switchyard's replication slot {name}, unused, retaining {} bytes of WAL", bytes.unwrap_or(0)), "it is resumed by `switchyard sync replicate`, or removed by `switchyard sync cleanup`");
    }
    Ok(())
}

/// Checks of a server that will subscribe (run an apply worker): a free
/// logical replication worker.
async fn subscriber_checks(
    f: &mut Findings,
    c: &Client,
    side: Side,
    why: &str,
) -> Result<(), SyncError> {
    let free: i32 = c
        .query_one(
            "SELECT current_setting('max_logical_replication_workers')::int \
                    - (SELECT count(*) FROM pg_stat_subscription WHERE pid IS NOT NULL)::int",
            &[],
        )
        .await
        .map_err(|e| SyncError::query(side, "reading max_logical_replication_workers", &e))?
        .get(0);
    if free < 1 {
        f.add(
            Severity::Blocker,
            "replication-workers",
            format!("{side} has no free logical replication worker (max_logical_replication_workers is used up), which {why} needs"),
            "raise max_logical_replication_workers (and max_worker_processes with it) and restart",
        );
    }
    Ok(())
}

/// The database's encoding and locale settings, by column name, read
/// through `to_jsonb` so that columns a server version lacks (or renamed,
/// `daticulocale` → `datlocale`) simply are not there.
/// A subscription owned by a user that is not a superuser must give a
/// password to the publisher (PostgreSQL's `password_required`, which only
/// a superuser can turn off): without one CREATE SUBSCRIPTION fails with
/// "password is required" after the clone has been made.
fn password_check(
    f: &mut Findings,
    db: &DatabaseConfig,
    subscriber: Side,
    publisher: Side,
) -> Result<(), SyncError> {
    if pg::config(publisher, url_of(db, publisher))?
        .get_password()
        .is_none()
    {
        f.add(
            Severity::Blocker,
            "password-required",
            format!("{subscriber}'s user is not a superuser, so PostgreSQL requires its subscription to {publisher} to log in with a password, and [database].{publisher} has none (not in the URL, PGPASSWORD or ~/.pgpass)"),
            format!("put the password of {publisher}'s user in [database].{publisher} (or PGPASSWORD / ~/.pgpass) and make {publisher}'s pg_hba.conf ask for it (scram-sha-256), or connect to {subscriber} as a superuser"),
        );
    }
    Ok(())
}

async fn locale(c: &Client, side: Side) -> Result<Vec<(String, String)>, SyncError> {
    let rows = c
        .query(
            "SELECT k, v FROM pg_database d, jsonb_each_text(to_jsonb(d) ||                       jsonb_build_object('encoding', pg_encoding_to_char(d.encoding))) AS e(k, v)               WHERE d.datname = current_database()                 AND k IN ('encoding', 'datcollate', 'datctype', 'datlocprovider', 'daticulocale', 'datlocale', 'daticurules')               ORDER BY k",
            &[],
        )
        .await
        .map_err(|e| SyncError::query(side, "reading the database's encoding and locale", &e))?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get::<_, Option<String>>(1).unwrap_or_default()))
        .collect())
}

/// Refuses (before a clone changes anything) databases of different
/// encodings, with preflight's message and hint.
pub(crate) async fn same_encoding(
    blue: &Client,
    green: &Client,
    dir: Direction,
) -> Result<(), SyncError> {
    let mut f = Findings(Vec::new());
    locale_checks(&mut f, blue, green, dir).await?;
    match f.0.into_iter().find(|x| x.check == "encoding") {
        Some(x) => Err(SyncError::Other(format!(
            "{}; nothing in {} was changed: {}",
            x.message,
            dir.target(),
            x.hint
        ))),
        None => Ok(()),
    }
}

/// Encoding (a blocker: text would be converted or refused on the way) and
/// collation (a warning: text sorts and compares differently on the target).
async fn locale_checks(
    f: &mut Findings,
    b: &Client,
    g: &Client,
    dir: Direction,
) -> Result<(), SyncError> {
    let (src, dst) = (dir.source(), dir.target());
    let (bl, gl) = (locale(b, src).await?, locale(g, dst).await?);
    let get = |l: &[(String, String)], k: &str| {
        l.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let (be, ge) = (get(&bl, "encoding"), get(&gl, "encoding"));
    if be != ge {
        f.add(
            Severity::Blocker,
            "encoding",
            format!("{src}'s database is encoded in {be}, {dst}'s in {ge}: text would be converted (or refused) on its way to {dst}"),
            format!("create {dst}'s database with ENCODING '{be}' (CREATE DATABASE ... ENCODING '{be}' TEMPLATE template0), with {src}'s locale"),
        );
    }
    let differing: Vec<String> = bl
        .iter()
        .filter(|(k, _)| k != "encoding")
        .filter_map(|(k, v)| {
            let theirs = get(&gl, k);
            (theirs != *v).then(|| format!("{k} {v:?} on {src}, {theirs:?} on {dst}"))
        })
        .collect();
    if !differing.is_empty() {
        f.add(
            Severity::Warning,
            "collation",
            format!(
                "the databases' locales differ ({}): text sorts and compares differently on {dst}, so ORDER BY results, range conditions and unique indexes on text can change when traffic moves",
                differing.join("; ")
            ),
            format!(
                "create {dst}'s database with {src}'s locale (CREATE DATABASE ... LC_COLLATE '{}' LC_CTYPE '{}' TEMPLATE template0)",
                get(&bl, "datcollate"),
                get(&bl, "datctype")
            ),
        );
    }
    Ok(())
}

/// Runs every check of the release in direction `dir`: its source is the
/// primary (read only), its target the candidate's database. Connection
/// failures are blockers, not errors.
pub async fn preflight(db: &DatabaseConfig, dir: Direction) -> Result<PreflightReport, SyncError> {
    let mut f = Findings(Vec::new());
    let replicate = db.mode == SyncMode::Replicate;
    let (src, dst) = (dir.source(), dir.target());
    let blue = match pg::connect(src, url_of(db, src)).await {
        Ok(c) => Some(c),
        Err(e) => {
            f.add(
                Severity::Blocker,
                "connect",
                e.to_string(),
                format!("check [database].{src} and that the server accepts connections"),
            );
            None
        }
    };
    let green = match pg::connect(dst, url_of(db, dst)).await {
        Ok(c) => Some(c),
        Err(e) => {
            f.add(
                Severity::Blocker,
                "connect",
                e.to_string(),
                format!("check [database].{dst} and that the server accepts connections"),
            );
            None
        }
    };
    let bv = match &blue {
        Some(c) => Some(version(c, src).await?),
        None => None,
    };
    let gv = match &green {
        Some(c) => Some(version(c, dst).await?),
        None => None,
    };
    for (side, v) in [(src, &bv), (dst, &gv)] {
        if let Some((vs, vn)) = v {
            if *vn < 140000 {
                f.add(
                    Severity::Blocker,
                    "version",
                    format!("{side} runs PostgreSQL {vs}, which reached its end of life: switchyard supports 14 and newer"),
                    format!("upgrade {side}'s server to PostgreSQL 14 or newer first (pg_upgrade), then use switchyard for the next major upgrades"),
                );
            }
        }
    }
    if let (true, Some((gs, gn))) = (replicate && db.reverse, &gv) {
        if *gn < 150000 {
            f.add(
                Severity::Warning,
                "version",
                format!("{dst} runs PostgreSQL {gs}: reverse sync from it after cutover cannot leave out columns the new release adds (column lists need 15+)"),
                format!("keep this release's migrations to new tables (which are not replicated back) or upgrade {dst} to 15+; a column added to a replicated table stops the cutover with this reason"),
            );
        }
    }
    if let (Some((bs, bn)), Some((gs, gn))) = (&bv, &gv) {
        if gn / 10000 < bn / 10000 {
            f.add(
                Severity::Blocker,
                "version",
                format!("{dst} runs PostgreSQL {gs}, older than {src}'s {bs}: a downgrade"),
                format!("{dst} must run the same major version as {src} or a newer one (a major upgrade goes forward only)"),
            );
        } else if gn / 10000 > bn / 10000 {
            f.add(
                Severity::Info,
                "version",
                format!("{dst} runs PostgreSQL {gs}, {src} {bs}"),
                format!("a newer {dst} is fine: this is a major upgrade"),
            );
        }
    }
    // The client programs a clone would use, matched to both servers.
    if let (Some((_, bn)), Some((_, gn))) = (&bv, &gv) {
        match pg::tools_for((src, *bn), (dst, *gn)) {
            Ok(t) => f.add(
                Severity::Info,
                "tools",
                format!(
                    "clone uses pg_dump and pg_restore of PostgreSQL {} ({})",
                    t.major,
                    t.pg_dump.display()
                ),
                "SWITCHYARD_PG_BINDIR (a list of bin directories) chooses among installed clients",
            ),
            Err(e) => f.add(
                Severity::Blocker,
                "tools",
                e.to_string(),
                format!(
                    "install the PostgreSQL {} client programs (or list their bin directory in SWITCHYARD_PG_BINDIR)",
                    gn / 10000
                ),
            ),
        }
    }

    if let Some(b) = &blue {
        let no_key = strings(
            b,
            src,
            "looking for tables without a primary key",
            &format!(
                "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE c.relkind = 'r' AND {} AND c.relreplident IN ('d', 'n') \
                    AND (c.relreplident = 'n' OR NOT EXISTS (SELECT 1 FROM pg_constraint p WHERE p.conrelid = c.oid AND p.contype = 'p')) \
                  ORDER BY 1",
                pg::SYSTEM_SCHEMA_FILTER
            ),
        )
        .await?;
        if !no_key.is_empty() {
            f.add(
                if replicate { Severity::Blocker } else { Severity::Warning },
                "primary-key",
                format!("tables without a primary key or replica identity: {}", list(&no_key)),
                "add a primary key (or ALTER TABLE ... REPLICA IDENTITY FULL); without one, verify cannot locate differing rows and replication cannot carry UPDATE/DELETE",
            );
        }
        let lo: i64 = b
            .query_one("SELECT count(*) FROM pg_largeobject_metadata", &[])
            .await
            .map_err(|e| SyncError::query(src, "counting large objects", &e))?
            .get(0);
        if lo > 0 && replicate {
            f.add(
                Severity::Warning,
                "large-objects",
                format!("{src} has {lo} large objects (pg_largeobject)"),
                format!("clone copies them, but logical replication does not carry large objects: ones written on {src} after the clone are not on {dst} at cutover; move them to bytea columns, or write none during the rollout"),
            );
        }
        let unlogged = strings(
            b,
            src,
            "looking for unlogged tables",
            &format!(
                "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'u' AND {} ORDER BY 1",
                pg::SYSTEM_SCHEMA_FILTER
            ),
        )
        .await?;
        if !unlogged.is_empty() {
            f.add(
                Severity::Warning,
                "unlogged",
                format!("unlogged tables: {}", list(&unlogged)),
                "unlogged tables are cloned but not replicated: writes to them after the clone are lost at cutover",
            );
        }
        let unreadable = strings(
            b,
            src,
            "checking read privileges",
            &format!(
                "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE c.relkind IN ('r', 'S') AND {} AND NOT has_table_privilege(c.oid, 'SELECT') ORDER BY 1",
                pg::SYSTEM_SCHEMA_FILTER
            ),
        )
        .await?;
        if !unreadable.is_empty() {
            f.add(
                Severity::Blocker,
                "privileges",
                format!("{src}'s user cannot read: {}", list(&unreadable)),
                format!("GRANT SELECT on these to the user in [database].{src} (or connect as the owner)"),
            );
        }
        if replicate {
            let row = b
                .query_one(
                    "SELECT current_setting('wal_level'), (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)",
                    &[],
                )
                .await
                .map_err(|e| SyncError::query(src, "reading wal_level", &e))?;
            let (wal, repl): (String, bool) = (row.get(0), row.get(1));
            if wal != "logical" {
                f.add(Severity::Blocker, "wal-level", format!("{src} has wal_level = {wal}"), format!("set wal_level = logical on {src} and restart it (replicate mode needs logical decoding)"));
            }
            if !repl {
                f.add(Severity::Blocker, "privileges", format!("{src}'s user has no REPLICATION attribute"), format!("ALTER ROLE ... REPLICATION for the user in [database].{src}, or use mode = \"snapshot\""));
            }
            replication_checks(&mut f, b, src, db).await?;
        }
    }
    if let (Some(g), true) = (&green, replicate) {
        let row = g
            .query_one(
                "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) \
                        OR (current_setting('server_version_num')::int >= 160000 AND EXISTS ( \
                            SELECT 1 FROM pg_roles r WHERE r.rolname = 'pg_create_subscription' \
                               AND pg_has_role(current_user, r.oid, 'MEMBER'))), \
                        current_setting('wal_level'), \
                        (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user), \
                        (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)",
                &[],
            )
            .await
            .map_err(|e| SyncError::query(dst, "reading privileges", &e))?;
        let (sup, wal, repl, superuser): (bool, String, bool, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if sup && !superuser {
            password_check(&mut f, db, dst, src)?;
        }
        if !sup {
            f.add(Severity::Blocker, "privileges", format!("{dst}'s user may not CREATE SUBSCRIPTION: it is not a superuser, nor (on PostgreSQL 16+) a member of pg_create_subscription"), format!("GRANT pg_create_subscription TO the user in [database].{dst} (PostgreSQL 16+, with CREATE on its database), or connect as a superuser, or use mode = \"snapshot\""));
        }
        subscriber_checks(&mut f, g, dst, &format!("{dst}'s subscription to {src}")).await?;
        if db.reverse {
            if let Some(b) = &blue {
                let superuser: bool = b
                    .query_one(
                        "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
                        &[],
                    )
                    .await
                    .map_err(|e| SyncError::query(src, "reading privileges", &e))?
                    .get(0);
                if !superuser {
                    password_check(&mut f, db, src, dst)?;
                }
                subscriber_checks(
                    &mut f,
                    b,
                    src,
                    &format!("reverse sync ({src} subscribing to {dst} after cutover)"),
                )
                .await?;
            }
        }
        if db.reverse {
            if wal != "logical" {
                f.add(Severity::Blocker, "wal-level", format!("{dst} has wal_level = {wal}, so reverse sync ({dst} -> {src} after cutover) cannot start"), format!("set wal_level = logical on {dst} and restart it, or set [database] reverse = false (a rollback after cutover then loses {dst}'s writes)"));
            }
            if !repl {
                f.add(Severity::Blocker, "privileges", format!("{dst}'s user has no REPLICATION attribute, which reverse sync needs"), format!("ALTER ROLE ... REPLICATION for the user in [database].{dst}, or set reverse = false"));
            }
            replication_checks(&mut f, g, dst, db).await?;
        }
    }

    if let (Some(b), Some(g)) = (&blue, &green) {
        locale_checks(&mut f, b, g, dir).await?;
        let exts = strings(
            b,
            src,
            "listing extensions",
            "SELECT extname::text FROM pg_extension ORDER BY 1",
        )
        .await?;
        let available = strings(
            g,
            dst,
            "listing available extensions",
            "SELECT name::text FROM pg_available_extensions",
        )
        .await?;
        let missing: Vec<String> = exts
            .into_iter()
            .filter(|e| !available.contains(e))
            .collect();
        if !missing.is_empty() {
            f.add(
                Severity::Blocker,
                "extensions",
                format!(
                    "extensions used in {src} are not installable in {dst}: {}",
                    list(&missing)
                ),
                format!("install their packages on {dst}'s server"),
            );
        }
    }

    if let Some(g) = &green {
        let can_create: bool = g
            .query_one(
                "SELECT has_database_privilege(current_database(), 'CREATE')",
                &[],
            )
            .await
            .map_err(|e| SyncError::query(dst, "checking privileges", &e))?
            .get(0);
        if !can_create {
            f.add(
                Severity::Blocker,
                "privileges",
                format!("{dst}'s user cannot create schemas in its database"),
                format!("connect to {dst} as the database owner, or GRANT CREATE ON DATABASE to the user"),
            );
        }
        if let Some(what) = target_contents(g, dst).await? {
            f.add(
                Severity::Warning,
                "target-not-empty",
                format!("{dst} is not empty ({what})"),
                format!("clone refuses a non-empty {dst}; pass --replace to drop its contents"),
            );
        }
    }
    if let (Some(b), Some(g)) = (&blue, &green) {
        let copy = db.roles == switchyard_config::RolesMode::Copy;
        let missing =
            crate::roles::missing_on_target(g, dir, crate::roles::needed(b, src).await?).await?;
        let (blocking, skipped): (Vec<_>, Vec<_>) =
            missing.into_iter().partition(|m| copy || m.by_policy);
        if !blocking.is_empty() {
            f.add(
                Severity::Blocker,
                "roles",
                format!("{dst} lacks roles {src}'s objects need: {}", crate::roles::describe(&blocking)),
                format!("roles belong to the server, not the database: create them on {dst} (the statements above), or set [database] roles = \"skip\" (policies still need their roles)"),
            );
        }
        if !skipped.is_empty() {
            f.add(
                Severity::Info,
                "roles",
                format!("roles = \"skip\": owners and grants naming {} are not copied", skipped.iter().map(|m| m.role.as_str()).collect::<Vec<_>>().join(", ")),
                format!("{dst}'s objects belong to {dst}'s user; re-apply GRANTs with a migration if the application connects as another role"),
            );
        }
    }
    // The fence needs to set other roles' defaults and end their sessions,
    // on whichever side is the old primary at a cutover: both.
    if replicate && db.fence != switchyard_config::Fence::Off {
        for (side, c) in [(src, &blue), (dst, &green)] {
            let Some(c) = c else { continue };
            let row = c
                .query_one(
                    "SELECT r.rolsuper OR r.rolcreaterole, \
                            r.rolsuper OR pg_has_role(current_user, 'pg_signal_backend', 'MEMBER') \
                       FROM pg_roles r WHERE r.rolname = current_user",
                    &[],
                )
                .await
                .map_err(|e| SyncError::query(side, "reading the fence's privileges", &e))?;
            let (alter, signal): (bool, bool) = (row.get(0), row.get(1));
            if !alter || !signal {
                f.add(
                    Severity::Blocker,
                    "fence",
                    format!(
                        "{side}'s user cannot fence the database at cutover (it lacks {})",
                        [(!alter).then_some("CREATEROLE"), (!signal).then_some("pg_signal_backend")]
                            .into_iter()
                            .flatten()
                            .collect::<Vec<_>>()
                            .join(" and ")
                    ),
                    format!("ALTER ROLE <[database].{side} user> CREATEROLE; GRANT pg_signal_backend TO it; or set [database] fence = false (writes that bypass the proxy may then land on the old primary)"),
                );
            }
            if let Err(e) = crate::postgres::fence::roles(c, side, &db.fence).await {
                f.add(
                    Severity::Blocker,
                    "fence",
                    e.to_string(),
                    "fix [database] fence",
                );
            }
        }
    }
    let passed = !f.0.iter().any(|x| x.severity == Severity::Blocker);
    f.0.sort_by_key(|x| std::cmp::Reverse(x.severity));
    let (bv, gv) = match src {
        Side::Blue => (bv, gv),
        Side::Green => (gv, bv),
    };
    Ok(PreflightReport {
        passed,
        source: src,
        blue_version: bv.map(|v| v.0),
        green_version: gv.map(|v| v.0),
        findings: f.0,
    })
}
