//! What would go wrong on MySQL/MariaDB, found before anything is changed:
//! versions, the binary log (`log_bin`, `binlog_format = ROW`,
//! `binlog_row_image = FULL`), GTIDs, distinct `server_id`s, tables without
//! a primary key or not in InnoDB, the privileges clone and replication
//! need, definers missing on green, collations green lacks, differing
//! `lower_case_table_names`, and `local_infile` (clone streams through
//! `LOAD DATA LOCAL INFILE`).

use super::catalog;
use super::{connect, literal, Flavor, Session};
use crate::error::{Side, SyncError};
use crate::findings::{Finding, PreflightReport, Severity};
use switchyard_config::{DatabaseConfig, SyncMode};

struct Findings(Vec<Finding>);

impl Findings {
    fn add(&mut self, severity: Severity, check: &str, message: String, hint: &str) {
        self.0.push(Finding {
            severity,
            check: check.into(),
            message,
            hint: hint.into(),
        });
    }
}

/// The server settings preflight reads from each side.
struct Settings {
    server_id: String,
    log_bin: bool,
    binlog_format: String,
    binlog_row_image: String,
    gtid_mode: String,
    lower_case_table_names: String,
    local_infile: bool,
}

async fn settings(s: &mut Session) -> Result<Settings, SyncError> {
    let gtid = match s.flavor {
        Flavor::MariaDb => "'ON'",
        Flavor::MySql => "@@GLOBAL.gtid_mode",
    };
    let rows = s
        .rows(
            "reading server settings",
            &format!(
                "SELECT @@server_id, @@log_bin, @@binlog_format, @@binlog_row_image, {gtid}, \
                        @@lower_case_table_names, @@local_infile"
            ),
        )
        .await?;
    let r = &rows[0];
    let t = |i: usize| r.get::<Option<String>, _>(i).flatten().unwrap_or_default();
    Ok(Settings {
        server_id: t(0),
        log_bin: t(1) == "1",
        binlog_format: t(2),
        binlog_row_image: t(3),
        gtid_mode: t(4),
        lower_case_table_names: t(5),
        local_infile: t(6) == "1",
    })
}

/// `SHOW GRANTS` of the session's user, upper-cased, one line per grant.
async fn grants(s: &mut Session) -> Result<Vec<String>, SyncError> {
    Ok(s.rows("reading the user's privileges", "SHOW GRANTS")
        .await?
        .into_iter()
        .filter_map(|r| r.get::<String, _>(0))
        .map(|g| g.to_ascii_uppercase())
        .collect())
}

/// Whether `grants` hold one of `any` on `*.*` (or everything).
fn has_global(grants: &[String], any: &[&str]) -> bool {
    grants.iter().any(|g| {
        g.contains(" ON *.* ")
            && (g.starts_with("GRANT ALL PRIVILEGES")
                || any.iter().any(|p| {
                    g.strip_prefix("GRANT ")
                        .and_then(|rest| rest.split(" ON ").next())
                        .is_some_and(|privs| privs.split(", ").any(|x| x == *p))
                }))
    })
}

fn version_ok(s: &Session) -> bool {
    let mut parts = s
        .version
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    match s.flavor {
        Flavor::MariaDb => (major, minor) >= (10, 6),
        Flavor::MySql => major >= 8,
    }
}

/// GTID domains, which `gtid_strict_mode` makes matter: switchyard's own
/// writes on green must be logged in their own domain, blue must not use
/// that domain, and green's binary log must hold nothing of its own in
/// one of blue's domains newer than blue's position (replicating blue would
/// be refused as out of order).
async fn gtid_domain_checks(
    f: &mut Findings,
    blue: &mut Session,
    green: &mut Session,
    reverse: bool,
) -> Result<(), SyncError> {
    use Severity::*;
    let own = super::OWN_GTID_DOMAIN;
    let blue_pos = blue
        .text(
            "reading the GTID position",
            "SELECT @@GLOBAL.gtid_binlog_pos",
        )
        .await?
        .unwrap_or_default();
    let rows = green
        .rows(
            "reading GTID settings",
            "SELECT @@GLOBAL.gtid_binlog_pos, @@GLOBAL.gtid_strict_mode, @@SESSION.gtid_domain_id, @@GLOBAL.log_slave_updates",
        )
        .await?;
    let t = |i: usize| {
        rows[0]
            .get::<Option<String>, _>(i)
            .flatten()
            .unwrap_or_default()
    };
    let (green_pos, strict, session_domain, logs_replicated) =
        (t(0), t(1) == "1", t(2), t(3) == "1");
    let blue_domains = super::gtid_domains(&blue_pos);
    if blue_domains.contains_key(&own) {
        f.add(
            Blocker,
            "gtid",
            format!("blue's binary log uses GTID domain {own}, the one switchyard logs its own writes on green in"),
            "this domain id is reserved for switchyard: give blue's writers another gtid_domain_id",
        );
    }
    if !strict {
        return Ok(());
    }
    if reverse && !logs_replicated {
        f.add(
            Blocker,
            "gtid",
            "green runs gtid_strict_mode without log_slave_updates: after cutover its own writes would restart blue's GTID sequence below what blue has, and reverse sync (blue replicating green) would be refused as out of order".to_string(),
            "set log_slave_updates = ON on green (my.cnf, then restart), or set [database] reverse = false",
        );
    }
    if session_domain != own.to_string() {
        f.add(
            Blocker,
            "gtid",
            "green runs gtid_strict_mode and its user may not SET SESSION gtid_domain_id: the clone's own writes would land in blue's GTID domain and replicating blue would be refused as out of order".to_string(),
            "GRANT SUPER ON *.* to the user in [database].green, or SET GLOBAL gtid_strict_mode = OFF on green for the clone",
        );
    }
    for (domain, (server, seq)) in super::gtid_domains(&green_pos) {
        if domain == own {
            continue;
        }
        if let Some((_, blue_seq)) = blue_domains.get(&domain) {
            if seq > *blue_seq {
                f.add(
                    Blocker,
                    "gtid",
                    format!("green's binary log holds {domain}-{server}-{seq}, newer than blue's position {blue_pos} in GTID domain {domain}: with gtid_strict_mode green refuses to replicate blue over it"),
                    "give green's server its own gtid_domain_id (my.cnf) so its own writes stay out of blue's domains, or, if green's binary log holds nothing anyone needs, RESET MASTER on green",
                );
            }
        }
    }
    Ok(())
}

/// Checks both databases; blockers make `passed` false.
pub async fn preflight(db: &DatabaseConfig) -> Result<PreflightReport, SyncError> {
    let mut blue = connect(Side::Blue, &db.blue).await?;
    let mut green = connect(Side::Green, &db.green).await?;
    let replicate = db.mode == SyncMode::Replicate;
    let mut f = Findings(Vec::new());
    use Severity::*;

    for s in [&blue, &green] {
        if !version_ok(s) {
            f.add(
                Blocker,
                "version",
                format!(
                    "{} runs {}, older than switchyard supports",
                    s.side, s.version
                ),
                "switchyard needs MariaDB 10.6 or newer, or MySQL 8.0 or newer",
            );
        }
    }
    if blue.flavor != green.flavor {
        f.add(
            Blocker,
            "version",
            format!(
                "blue runs {} and green {}: one is MariaDB, the other MySQL",
                blue.version, green.version
            ),
            "clone and replicate between two servers of the same kind",
        );
    }
    let (b, g) = (settings(&mut blue).await?, settings(&mut green).await?);
    if replicate {
        if blue.flavor == Flavor::MySql {
            f.add(
                Blocker,
                "replication",
                format!("blue runs MySQL {}: replicate mode is built for MariaDB so far", blue.version),
                "set [database] mode = \"snapshot\" (clone, migrate and verify work on MySQL), or use MariaDB",
            );
        }
        for (side, s) in [(Side::Blue, &b), (Side::Green, &g)] {
            if side == Side::Green && !db.reverse {
                continue;
            }
            if !s.log_bin {
                f.add(
                    Blocker,
                    "binlog",
                    format!("{side} does not write a binary log (log_bin is off){}", if side == Side::Green { ", so blue cannot replicate back from it after cutover" } else { "" }),
                    "start the server with log_bin (and binlog_format = ROW); or set [database] reverse = false to skip the way back",
                );
            }
            if s.binlog_format != "ROW" {
                f.add(
                    Blocker,
                    "binlog",
                    format!(
                        "{side} has binlog_format = {}: row events are needed to replicate exactly",
                        s.binlog_format
                    ),
                    "SET GLOBAL binlog_format = 'ROW' (and in the server's config)",
                );
            }
            if s.binlog_row_image != "FULL" {
                f.add(
                    Blocker,
                    "binlog",
                    format!("{side} has binlog_row_image = {}: replication needs every column of each changed row", s.binlog_row_image),
                    "SET GLOBAL binlog_row_image = 'FULL' (and in the server's config)",
                );
            }
            if s.gtid_mode != "ON" {
                f.add(
                    Blocker,
                    "gtid",
                    format!("{side} has gtid_mode = {}: replication starts from the clone's GTID position", s.gtid_mode),
                    "turn GTIDs on (gtid_mode = ON, enforce_gtid_consistency = ON)",
                );
            }
        }
        if blue.flavor == Flavor::MariaDb {
            gtid_domain_checks(&mut f, &mut blue, &mut green, db.reverse).await?;
        }
        if b.server_id == g.server_id || b.server_id == "0" || g.server_id == "0" {
            f.add(
                Blocker,
                "server-id",
                format!("blue's server_id is {} and green's {}: a replica must have its own, non-zero server_id", b.server_id, g.server_id),
                "give each server a distinct server_id in its config",
            );
        }
        if blue.database != green.database {
            f.add(
                Blocker,
                "database",
                format!("blue's database is {} and green's {}: the server's replication applies changes to the database of the same name", blue.database, green.database),
                "name green's database like blue's (on its own server), or set [database] mode = \"snapshot\"",
            );
        }
        let blue_grants = grants(&mut blue).await?;
        if !has_global(&blue_grants, &["REPLICATION SLAVE"]) {
            f.add(
                Blocker,
                "privileges",
                "blue's user lacks REPLICATION SLAVE: green's replica connects with it to read blue's binary log".into(),
                "GRANT REPLICATION SLAVE ON *.* TO the user in [database] blue (or blue_from_green)",
            );
        }
        let green_grants = grants(&mut green).await?;
        if !has_global(
            &green_grants,
            &[
                "SUPER",
                "REPLICATION SLAVE ADMIN",
                "REPLICATION_SLAVE_ADMIN",
            ],
        ) {
            f.add(
                Blocker,
                "privileges",
                "green's user can neither SUPER nor REPLICATION SLAVE ADMIN: it cannot make green a replica".into(),
                "GRANT REPLICATION SLAVE ADMIN ON *.* (MariaDB; REPLICATION_SLAVE_ADMIN on MySQL) to green's user",
            );
        }
    }
    let blue_grants = grants(&mut blue).await?;
    if !has_global(&blue_grants, &["RELOAD", "BACKUP_ADMIN"]) {
        f.add(
            Blocker,
            "privileges",
            "blue's user lacks RELOAD: clone holds commits for an instant (BACKUP STAGE / FLUSH TABLES WITH READ LOCK) to give every worker one snapshot".into(),
            "GRANT RELOAD ON *.* TO blue's user",
        );
    }
    if b.log_bin
        && !has_global(
            &blue_grants,
            &["REPLICATION CLIENT", "BINLOG MONITOR", "SUPER"],
        )
    {
        f.add(
            Blocker,
            "privileges",
            "blue's user lacks REPLICATION CLIENT (BINLOG MONITOR on MariaDB): clone records blue's binary log position with SHOW MASTER STATUS, and status reads it".into(),
            "GRANT BINLOG MONITOR ON *.* (MariaDB 10.5+; REPLICATION CLIENT on MySQL) TO blue's user",
        );
    }
    if !has_global(&blue_grants, &["SELECT"])
        && !blue_grants.iter().any(|g| {
            g.contains(&format!(" ON `{}`.* ", blue.database.to_ascii_uppercase()))
                && (g.contains("SELECT") || g.starts_with("GRANT ALL"))
        })
    {
        f.add(
            Blocker,
            "privileges",
            format!("blue's user cannot SELECT from {}", blue.database),
            "GRANT SELECT, SHOW VIEW, TRIGGER, EVENT ON the database TO blue's user",
        );
    }
    if !g.local_infile {
        f.add(
            Blocker,
            "local-infile",
            "green has local_infile = OFF: clone streams rows into green with LOAD DATA LOCAL INFILE".into(),
            "SET GLOBAL local_infile = ON on green (only switchyard's clone needs it; turn it off afterwards if you like)",
        );
    }
    if b.lower_case_table_names != g.lower_case_table_names {
        f.add(
            Blocker,
            "lower-case-table-names",
            format!(
                "lower_case_table_names is {} on blue and {} on green: table names would not mean the same on both",
                b.lower_case_table_names, g.lower_case_table_names
            ),
            "start green with the same lower_case_table_names as blue (it can only be set when the data directory is created)",
        );
    }

    let tables = catalog::tables(&mut blue).await?;
    let no_key: Vec<&str> = tables
        .iter()
        .filter(|t| t.primary_key.is_empty())
        .map(|t| t.name.as_str())
        .collect();
    if !no_key.is_empty() {
        f.add(
            Warning,
            "primary-key",
            format!("tables without a primary key: {}", no_key.join(", ")),
            "verify compares them only as a whole and cannot name differing rows; replicas apply their changes by full scans. Add primary keys",
        );
    }
    let not_innodb: Vec<String> = tables
        .iter()
        .filter(|t| !t.engine.eq_ignore_ascii_case("InnoDB"))
        .map(|t| format!("{} ({})", t.name, t.engine))
        .collect();
    if !not_innodb.is_empty() {
        f.add(
            Blocker,
            "engine",
            format!("tables not in InnoDB: {}", not_innodb.join(", ")),
            "only InnoDB gives clone's workers one consistent snapshot: ALTER TABLE … ENGINE = InnoDB",
        );
    }

    // Definers: views, routines, triggers and events run as them on green too.
    let objects = catalog::objects(&mut blue).await?;
    let mut missing = Vec::new();
    for o in &objects {
        let Some(definer) = &o.definer else { continue };
        let Some((user, host)) = definer.rsplit_once('@') else {
            continue;
        };
        let exists = green
            .text(
                "looking up a definer on green",
                &format!(
                    "SELECT COUNT(*) FROM mysql.user WHERE User = {} AND Host = {}",
                    literal(user),
                    literal(host)
                ),
            )
            .await;
        match exists {
            Ok(Some(n)) if n != "0" => {}
            Ok(_) => missing.push(format!(
                "{} {} (definer {definer})",
                o.kind.keyword().to_lowercase(),
                o.name
            )),
            Err(_) => {
                f.add(
                    Warning,
                    "definer",
                    "green's user cannot read mysql.user, so the definers of views, routines and triggers were not checked".into(),
                    "GRANT SELECT ON mysql.user to green's user, or check the definers by hand",
                );
                break;
            }
        }
    }
    if !missing.is_empty() {
        f.add(
            Blocker,
            "definer",
            format!("definers missing on green: {}", missing.join(", ")),
            "create those users on green's server (CREATE USER …) before cloning; objects would otherwise fail when used",
        );
    }

    // With roles = "copy", clone gives green the same GRANTs: their users must exist there.
    if db.roles == switchyard_config::RolesMode::Copy {
        let mut lacking = Vec::new();
        for g in catalog::grants(&mut blue).await? {
            let Some((user, host)) = g.grantee.rsplit_once('@') else {
                continue;
            };
            let (user, host) = (user.trim_matches('\''), host.trim_matches('\''));
            let n = green
                .text(
                    "looking up a user on green",
                    &format!(
                        "SELECT COUNT(*) FROM mysql.user WHERE User = {} AND Host = {}",
                        literal(user),
                        literal(host)
                    ),
                )
                .await
                .unwrap_or(Some("1".into()));
            if n.as_deref() == Some("0") && !lacking.contains(&g.grantee) {
                lacking.push(g.grantee.clone());
            }
        }
        if !lacking.is_empty() {
            f.add(
                Warning,
                "grants",
                format!("users with privileges on blue's database do not exist on green: {}", lacking.join(", ")),
                "create them on green's server before cloning so their GRANTs are copied (verify compares them), or set [database] roles = \"skip\"",
            );
        }
    }

    // Collations blue's columns use must exist on green.
    let used = blue
        .rows(
            "listing collations in use",
            &format!(
                "SELECT DISTINCT COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = {} AND COLLATION_NAME IS NOT NULL \
                 UNION SELECT DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {}",
                literal(&blue.database),
                literal(&blue.database)
            ),
        )
        .await?;
    let mut lacking = Vec::new();
    for r in used {
        let Some(c) = r.get::<String, _>(0) else {
            continue;
        };
        let n = green
            .text(
                "looking up a collation on green",
                &format!(
                    "SELECT COUNT(*) FROM information_schema.COLLATIONS WHERE COLLATION_NAME = {}",
                    literal(&c)
                ),
            )
            .await?;
        if n.as_deref() == Some("0") {
            lacking.push(c);
        }
    }
    if !lacking.is_empty() {
        f.add(
            Blocker,
            "collation",
            format!(
                "green's server lacks collations blue's data uses: {}",
                lacking.join(", ")
            ),
            "run a green server version that has them (the same as blue's)",
        );
    }
    let charsets = (
        blue.text(
            "reading the server character set",
            "SELECT CONCAT(@@character_set_server, '/', @@collation_server)",
        )
        .await?,
        green
            .text(
                "reading the server character set",
                "SELECT CONCAT(@@character_set_server, '/', @@collation_server)",
            )
            .await?,
    );
    if charsets.0 != charsets.1 {
        f.add(
            Info,
            "charset",
            format!(
                "the servers' default character sets differ (blue {}, green {}); clone gives green's database blue's own, so the data is unaffected",
                charsets.0.unwrap_or_default(),
                charsets.1.unwrap_or_default()
            ),
            "new databases and migrations without an explicit character set would differ; align character_set_server",
        );
    }

    let passed = !f.0.iter().any(|x| x.severity == Blocker);
    let report = PreflightReport {
        source: Side::Blue,
        passed,
        blue_version: Some(blue.version.clone()),
        green_version: Some(green.version.clone()),
        findings: f.0,
    };
    blue.close().await;
    green.close().await;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::has_global;

    #[test]
    fn global_privileges_are_read_from_show_grants() {
        let g = |s: &str| vec![s.to_ascii_uppercase()];
        assert!(has_global(
            &g("GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION"),
            &["RELOAD"]
        ));
        assert!(has_global(
            &g("GRANT RELOAD, REPLICATION SLAVE ON *.* TO `sy`@`%`"),
            &["REPLICATION SLAVE"]
        ));
        assert!(!has_global(
            &g("GRANT SELECT ON `app`.* TO `sy`@`%`"),
            &["SELECT"]
        ));
        assert!(!has_global(
            &g("GRANT REPLICATION SLAVE ADMIN ON *.* TO `sy`@`%`"),
            &["REPLICATION SLAVE"]
        ));
    }
}
