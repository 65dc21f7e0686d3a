//! The database half on MariaDB, against real servers started for the test
//! (`mariadb-install-db`, `mariadbd` on a free port, binary log in row
//! format with GTIDs): clone and verify an awkward fixture, name changed,
//! deleted and inserted rows by key, survive writes during the clone,
//! preflight's findings, migrations, replication, cutover with reverse
//! replication, and cleanup.
//!
//! When Debian's `mariadb-server` is not installed these tests fail with
//! that message rather than pass: `.ci/run` installs it.

use mysql_async::prelude::Queryable;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use switchyard_config::{DatabaseConfig, SyncMode};
use switchyard_sync::mysql::ephemeral::EphemeralMariaDb;
use switchyard_sync::{run, Command, Output};

/// Blue and green servers shared by the tests that only clone and verify
/// (each in its own databases), in different time zones: a `TIMESTAMP`
/// is an instant, whatever zone each server shows it in.
fn shared() -> &'static (EphemeralMariaDb, EphemeralMariaDb) {
    static S: OnceLock<(EphemeralMariaDb, EphemeralMariaDb)> = OnceLock::new();
    S.get_or_init(|| {
        let zoned = |tz| EphemeralMariaDb::start_in(tz).unwrap_or_else(|e| panic!("{e}"));
        (zoned("-07:00"), zoned("+05:30"))
    })
}

fn start() -> EphemeralMariaDb {
    EphemeralMariaDb::start().unwrap_or_else(|e| panic!("{e}"))
}

async fn conn(url: &str) -> mysql_async::Conn {
    let url = url.replacen("mariadb://", "mysql://", 1);
    let mut c = mysql_async::Conn::new(mysql_async::Opts::from_url(&url).unwrap())
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    c.query_drop("SET NAMES utf8mb4, time_zone = '+00:00'")
        .await
        .unwrap();
    c
}

async fn sql(url: &str, sql: &str) {
    conn(url)
        .await
        .query_drop(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn one(url: &str, sql: &str) -> Option<String> {
    conn(url)
        .await
        .query_first::<Option<String>, _>(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .flatten()
}

/// A blue database and an empty green one on the given servers.
async fn pair(blue: &EphemeralMariaDb, green: &EphemeralMariaDb, name: &str) -> DatabaseConfig {
    let b = blue.create_db(name).await.unwrap();
    let g = green.create_db(name).await.unwrap();
    let mut db = DatabaseConfig::new(b, g);
    db.mode = SyncMode::Snapshot;
    db.migrations = std::env::temp_dir().join(format!("switchyard-none-{name}"));
    db
}

/// Every awkward type the issue names, and a few more.
const FIXTURE: &str = r#"
CREATE TABLE customers (
  id INT AUTO_INCREMENT PRIMARY KEY,
  email VARCHAR(200) NOT NULL,
  name VARCHAR(100) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci,
  legacy VARCHAR(50) CHARACTER SET latin1,
  UNIQUE KEY email (email)
) ENGINE=InnoDB;
CREATE TABLE orders (
  id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY,
  customer_id INT NOT NULL,
  amount DECIMAL(12,4) NOT NULL,
  ratio FLOAT,
  score DOUBLE,
  placed DATETIME(6) NOT NULL,
  seen TIMESTAMP(3) NULL,
  day DATE,
  at_time TIME(2),
  yr YEAR,
  meta JSON,
  photo BLOB,
  raw VARBINARY(16),
  status ENUM('new','paid','shipped') NOT NULL DEFAULT 'new',
  tags SET('a','b','c'),
  flags BIT(5),
  note TEXT,
  total DECIMAL(14,4) AS (amount * 2) STORED,
  doubled DOUBLE AS (score * 2) VIRTUAL,
  KEY customer (customer_id),
  CONSTRAINT orders_customer FOREIGN KEY (customer_id) REFERENCES customers (id)
) ENGINE=InnoDB;
CREATE TABLE order_lines (
  order_id BIGINT UNSIGNED NOT NULL,
  line SMALLINT NOT NULL,
  sku CHAR(8) NOT NULL,
  qty INT NOT NULL,
  PRIMARY KEY (order_id, line)
) ENGINE=InnoDB;
CREATE TABLE audit_log (
  happened DATETIME NOT NULL,
  message VARCHAR(200)
) ENGINE=InnoDB;
CREATE TABLE counters (id INT AUTO_INCREMENT PRIMARY KEY, n INT) ENGINE=InnoDB AUTO_INCREMENT=1000;
INSERT INTO customers (email, name, legacy) VALUES
  ('ada@example.com', 'Ada 🚀 Lovelace', 'café'),
  ('bob@example.com', 'Bób "the" Builder\\ \t tab', NULL),
  ('cy@example.com', '', 'x');
INSERT INTO orders (customer_id, amount, ratio, score, placed, seen, day, at_time, yr, meta, photo, raw, status, tags, flags, note) VALUES
  (1, 12.3400, 0.1, 0.30000000000000004, '2024-02-29 23:59:59.999999', '2024-03-31 01:30:00.123', '2024-02-29', '-838:59:59.99', 2024,
   '{"a": [1, 2, {"b": null}], "emoji": "🎉"}', X'00FF0A0D095C4E', X'DEADBEEF00', 'paid', 'a,c', b'10101', 'line1\nline2\ttab \\N not null'),
  (2, -0.0001, NULL, 1e300, '1970-01-01 00:00:00', NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'new', '', b'0', NULL),
  (1, 99999999.9999, 3.4e38, -2.2250738585072014e-308, '2038-01-19 03:14:08', '2038-01-19 03:14:07.999', '9999-12-31', '00:00:00', 1901,
   '[]', X'', X'', 'shipped', 'a,b,c', b'11111', '');
INSERT INTO order_lines VALUES (1, 1, 'SKU-1', 2), (1, 2, 'SKU-2', 1), (3, 1, 'SKU-1', 7);
INSERT INTO audit_log VALUES ('2024-01-01 00:00:00', 'dup'), ('2024-01-01 00:00:00', 'dup'), ('2024-01-02 00:00:00', NULL);
INSERT INTO counters (n) VALUES (1), (2);
DELETE FROM counters WHERE n = 2;
CREATE VIEW paid_orders AS SELECT id, amount FROM orders WHERE status = 'paid';
CREATE VIEW big_paid AS SELECT id FROM paid_orders WHERE amount > 10;
CREATE FUNCTION twice(x INT) RETURNS INT DETERMINISTIC RETURN x * 2;
CREATE PROCEDURE touch(IN c INT) MODIFIES SQL DATA UPDATE customers SET name = CONCAT(name, '!') WHERE id = c;
CREATE TRIGGER orders_note BEFORE INSERT ON orders FOR EACH ROW SET NEW.note = IFNULL(NEW.note, 'from trigger');
CREATE EVENT nightly ON SCHEDULE EVERY 1 DAY DO DELETE FROM audit_log WHERE happened < NOW() - INTERVAL 1 YEAR;
"#;

async fn fixture(url: &str) {
    sql(url, FIXTURE).await;
    // Many rows, so verify cuts the table into several chunks.
    sql(
        url,
        "INSERT INTO order_lines (order_id, line, sku, qty) \
         SELECT 1000 + seq DIV 10, seq MOD 10, CONCAT('S', seq MOD 97), seq FROM seq_1_to_25000",
    )
    .await;
}

async fn clone(db: &DatabaseConfig, replace: bool, verify: bool) -> serde_json::Value {
    run(
        db,
        Command::Clone {
            jobs: 2,
            replace,
            verify,
        },
        Output::Quiet,
    )
    .await
    .unwrap_or_else(|e| panic!("clone: {e}"))
    .summary
}

async fn verify(db: &DatabaseConfig) -> (i32, serde_json::Value) {
    let r = run(db, Command::Verify { jobs: 2 }, Output::Quiet)
        .await
        .unwrap_or_else(|e| panic!("verify: {e}"));
    (r.code, r.summary)
}

fn differences(v: &serde_json::Value, table: &str) -> Vec<(String, String)> {
    v["tables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["table"] == table)
        .flat_map(|t| t["differences"].as_array().unwrap().clone())
        .map(|d| {
            (
                d["key"].as_str().unwrap().to_string(),
                d["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_awkward_database_is_cloned_exactly_and_verify_names_each_changed_row_by_key() {
    let (b, g) = shared();
    let db = pair(b, g, "awkward").await;
    fixture(&db.blue).await;

    let c = clone(&db, false, true).await;
    assert_eq!(c["verify"]["passed"], true, "{c:#}");
    assert_eq!(c["clone"]["rows"], 25_000 + 3 + 3 + 3 + 3 + 1, "{c:#}");
    assert_eq!(
        c["clone"]["events_disabled"],
        serde_json::json!(["nightly"])
    );

    // Values survived byte for byte, seen from green's own client.
    for (q, want) in [
        ("SELECT name FROM customers WHERE id = 1", "Ada 🚀 Lovelace"),
        ("SELECT HEX(legacy) FROM customers WHERE id = 1", "636166E9"),
        ("SELECT HEX(photo) FROM orders WHERE id = 1", "00FF0A0D095C4E"),
        ("SELECT note FROM orders WHERE id = 1", "line1\nline2\ttab \\N not null"),
        ("SELECT CAST(amount AS CHAR) FROM orders WHERE id = 2", "-0.0001"),
        ("SELECT CAST(score AS CHAR) FROM orders WHERE id = 1", "0.30000000000000004"),
        ("SELECT CAST(placed AS CHAR) FROM orders WHERE id = 1", "2024-02-29 23:59:59.999999"),
        ("SELECT CAST(seen AS CHAR) FROM orders WHERE id = 1", "2024-03-31 01:30:00.123"),
        ("SELECT CAST(flags + 0 AS CHAR) FROM orders WHERE id = 1", "21"),
        ("SELECT tags FROM orders WHERE id = 3", "a,b,c"),
        ("SELECT CAST(total AS CHAR) FROM orders WHERE id = 1", "24.6800"),
        ("SELECT COUNT(*) FROM audit_log WHERE message = 'dup'", "2"),
        ("SELECT CAST(twice(21) AS CHAR)", "42"),
        ("SELECT COUNT(*) FROM big_paid", "1"),
        ("SELECT STATUS FROM information_schema.EVENTS WHERE EVENT_NAME = 'nightly'", "DISABLED"),
        ("SELECT AUTO_INCREMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'awkward' AND TABLE_NAME = 'counters'", "1002"),
        ("SELECT COUNT(*) FROM information_schema.TABLE_CONSTRAINTS WHERE TABLE_SCHEMA = 'awkward' AND CONSTRAINT_TYPE = 'FOREIGN KEY'", "1"),
        ("SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = 'awkward' AND INDEX_NAME = 'email'", "1"),
    ] {
        assert_eq!(one(&db.green, q).await.as_deref(), Some(want), "{q}");
    }
    // Each server shows the same instant in its own zone.
    let local = |url: &str| {
        let url = url.replacen("mariadb://", "mysql://", 1);
        async move {
            let mut c = mysql_async::Conn::new(mysql_async::Opts::from_url(&url).unwrap())
                .await
                .unwrap();
            c.query_first::<String, _>("SELECT CAST(seen AS CHAR) FROM orders WHERE id = 1")
                .await
                .unwrap()
                .unwrap()
        }
    };
    assert_eq!(local(&db.blue).await, "2024-03-30 18:30:00.123");
    assert_eq!(local(&db.green).await, "2024-03-31 07:00:00.123");

    // The trigger came along, after the data (the cloned row kept its NULL-free note).
    sql(
        &db.green,
        "INSERT INTO orders (customer_id, amount, placed) VALUES (3, 1, NOW())",
    )
    .await;
    assert_eq!(
        one(
            &db.green,
            "SELECT note FROM orders ORDER BY id DESC LIMIT 1"
        )
        .await
        .as_deref(),
        Some("from trigger")
    );
    sql(&db.green, "DELETE FROM orders WHERE id > 3").await;

    // A changed, a deleted and an inserted row are each found by key.
    sql(
        &db.green,
        "UPDATE order_lines SET qty = qty + 1 WHERE order_id = 1500 AND line = 3",
    )
    .await;
    sql(
        &db.green,
        "DELETE FROM order_lines WHERE order_id = 2000 AND line = 7",
    )
    .await;
    sql(
        &db.green,
        "INSERT INTO order_lines VALUES (999999, 1, 'NEW', 1)",
    )
    .await;
    sql(
        &db.green,
        "UPDATE orders SET seen = '2024-03-31 01:30:00.124' WHERE id = 1",
    )
    .await;
    let (code, v) = verify(&db).await;
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["passed"], false);
    let mut d = differences(&v, "order_lines");
    d.sort();
    assert_eq!(
        d,
        [
            (
                "(order_id, line)=(1500, 3)".to_string(),
                "changed".to_string()
            ),
            (
                "(order_id, line)=(2000, 7)".to_string(),
                "missing_in_green".to_string()
            ),
            (
                "(order_id, line)=(999999, 1)".to_string(),
                "extra_in_green".to_string()
            ),
        ]
    );
    assert_eq!(
        differences(&v, "orders"),
        [("id=1".to_string(), "changed".to_string())]
    );

    // Without a primary key a table is still compared, as a whole.
    sql(
        &db.green,
        "UPDATE order_lines SET qty = qty - 1 WHERE order_id = 1500 AND line = 3",
    )
    .await;
    sql(
        &db.green,
        "INSERT INTO order_lines VALUES (2000, 7, 'S', 0)",
    )
    .await;
    sql(&db.green, "UPDATE order_lines SET sku = CONCAT('S', (2000 * 10 + 7 - 10000) MOD 97), qty = 2000 * 10 + 7 - 10000 WHERE order_id = 2000 AND line = 7").await;
    sql(&db.green, "DELETE FROM order_lines WHERE order_id = 999999").await;
    sql(
        &db.green,
        "UPDATE orders SET seen = '2024-03-31 01:30:00.123' WHERE id = 1",
    )
    .await;
    sql(
        &db.green,
        "DELETE FROM audit_log WHERE message = 'dup' LIMIT 1",
    )
    .await;
    let (code, v) = verify(&db).await;
    assert_eq!(code, 1, "{v:#}");
    let bad: Vec<&str> = v["tables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"] != "equal")
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    assert_eq!(bad, ["audit_log"], "{v:#}");

    // A changed definition is a schema difference, even with equal rows.
    sql(
        &db.green,
        "INSERT INTO audit_log VALUES ('2024-01-01 00:00:00', 'dup')",
    )
    .await;
    sql(
        &db.green,
        "CREATE OR REPLACE VIEW big_paid AS SELECT id FROM paid_orders WHERE amount > 11",
    )
    .await;
    let (code, v) = verify(&db).await;
    assert_eq!(code, 1, "{v:#}");
    assert!(
        v["tables"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["status"] == "equal"),
        "{v:#}"
    );
    let schema = v["schema"].as_array().unwrap();
    assert_eq!(schema.len(), 1, "{v:#}");
    assert_eq!(schema[0]["name"], "big_paid");
    assert_eq!(schema[0]["problem"], serde_json::json!("differs"));

    // Clone refuses a green that is not empty, and --replace starts over.
    let e = run(
        &db,
        Command::Clone {
            jobs: 2,
            replace: false,
            verify: false,
        },
        Output::Quiet,
    )
    .await
    .expect_err("a non-empty green is refused");
    assert!(e.to_string().contains("not empty"), "{e}");
    let c = clone(&db, true, true).await;
    assert_eq!(c["verify"]["passed"], true, "{c:#}");

    // The gate reads the verification.
    let st = switchyard_sync::gate_status(&db, switchyard_sync::replication::Direction::Forward)
        .await
        .unwrap();
    assert!(st.verified, "{}", st.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_blue_during_the_clone_do_not_break_it() {
    let (b, g) = shared();
    let db = pair(b, g, "busy").await;
    sql(&db.blue, "CREATE TABLE events (id INT AUTO_INCREMENT PRIMARY KEY, payload VARCHAR(100), n INT) ENGINE=InnoDB").await;
    sql(
        &db.blue,
        "INSERT INTO events (payload, n) SELECT REPEAT('x', 80), seq FROM seq_1_to_60000",
    )
    .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (url, stop) = (db.blue.clone(), stop.clone());
        tokio::spawn(async move {
            let mut c = conn(&url).await;
            let mut n = 0u32;
            let started = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && n < 20_000
                && started.elapsed() < Duration::from_secs(60)
            {
                c.query_drop(format!(
                    "INSERT INTO events (payload, n) VALUES ('during', {n}); UPDATE events SET n = n + 1 WHERE id = {}",
                    n % 60_000 + 1
                ))
                .await
                .unwrap();
                n += 1;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let c = clone(&db, false, true).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.await.unwrap();
    assert!(written > 0, "the writer ran");
    assert_eq!(
        c["verify"]["passed"], true,
        "green equals blue as of the clone's snapshot: {c:#}"
    );
    // Green holds exactly blue at the snapshot: what was written after it is not there yet.
    let green_rows: u64 = one(&db.green, "SELECT COUNT(*) FROM events")
        .await
        .unwrap()
        .parse()
        .unwrap();
    let blue_rows: u64 = one(&db.blue, "SELECT COUNT(*) FROM events")
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(c["clone"]["rows"], green_rows);
    assert!(
        green_rows <= blue_rows && green_rows >= 60_000,
        "{green_rows} vs {blue_rows}"
    );
    // And a plain verify against live blue now sees the later writes as differences.
    if green_rows < blue_rows {
        let (code, v) = verify(&db).await;
        assert_eq!(code, 1, "{v:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_names_what_would_go_wrong_before_anything_changes() {
    let (b, g) = shared();
    let mut db = pair(b, g, "preflight").await;
    sql(
        &db.blue,
        "CREATE TABLE ok (id INT PRIMARY KEY) ENGINE=InnoDB; \
                   CREATE TABLE heap (id INT PRIMARY KEY) ENGINE=MyISAM; \
                   CREATE TABLE nokey (x INT) ENGINE=InnoDB; \
                   CREATE USER 'reporter'@'%'; \
                   CREATE DEFINER = 'reporter'@'%' VIEW v AS SELECT id FROM ok",
    )
    .await;
    let r = run(&db, Command::Preflight, Output::Quiet).await.unwrap();
    assert_eq!(r.code, 1, "{:#}", r.summary);
    let findings = r.summary["findings"].as_array().unwrap().clone();
    let find = |check: &str| -> Vec<String> {
        findings
            .iter()
            .filter(|f| f["check"] == check)
            .map(|f| {
                format!(
                    "{} {}",
                    f["severity"].as_str().unwrap(),
                    f["message"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(
        find("engine"),
        ["blocker tables not in InnoDB: heap (MyISAM)"]
    );
    assert_eq!(
        find("primary-key"),
        ["warning tables without a primary key: nokey"]
    );
    assert_eq!(
        find("definer"),
        ["blocker definers missing on green: view v (definer reporter@%)"]
    );
    // Snapshot mode does not ask for replication's settings.
    assert!(
        find("server-id").is_empty() && find("binlog").is_empty(),
        "{findings:#?}"
    );
    // Nothing was written anywhere.
    assert_eq!(
        one(
            &db.green,
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'preflight'"
        )
        .await
        .as_deref(),
        Some("0")
    );

    // Replicate mode checks the binary log settings on both sides.
    db.mode = SyncMode::Replicate;
    sql(&db.blue, "SET GLOBAL binlog_row_image = 'MINIMAL'").await;
    let r = run(&db, Command::Preflight, Output::Quiet).await.unwrap();
    sql(&db.blue, "SET GLOBAL binlog_row_image = 'FULL'").await;
    let binlog: Vec<String> = r.summary["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == "binlog")
        .map(|f| f["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        binlog,
        ["blue has binlog_row_image = MINIMAL: replication needs every column of each changed row"]
    );

    // A blue user with SELECT only cannot hold commits, read the binlog position, or feed a replica.
    sql(&db.blue, "CREATE USER 'limited'@'127.0.0.1'; GRANT SELECT, SHOW VIEW ON preflight.* TO 'limited'@'127.0.0.1'").await;
    let full_blue = db.blue.clone();
    db.blue = db.blue.replacen("root@", "limited@", 1);
    let r = run(&db, Command::Preflight, Output::Quiet).await.unwrap();
    db.blue = full_blue;
    let privileges: Vec<String> = r.summary["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == "privileges" && f["severity"] == "blocker")
        .map(|f| {
            f["message"]
                .as_str()
                .unwrap()
                .split(':')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        privileges,
        [
            "blue's user lacks REPLICATION SLAVE",
            "blue's user lacks RELOAD",
            "blue's user lacks REPLICATION CLIENT (BINLOG MONITOR on MariaDB)"
        ],
        "{:#}",
        r.summary
    );

    // Once fixed, preflight passes.
    sql(&db.blue, "ALTER TABLE heap ENGINE=InnoDB; DROP VIEW v").await;
    db.mode = SyncMode::Snapshot;
    let r = run(&db, Command::Preflight, Output::Quiet).await.unwrap();
    assert_eq!(r.code, 0, "{:#}", r.summary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_follow_flyway_and_a_failed_one_is_reported_statement_by_statement() {
    let (b, g) = shared();
    let mut db = pair(b, g, "migrations").await;
    sql(&db.blue, "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(20)); INSERT INTO items VALUES (1, 'a'), (2, 'b')").await;
    clone(&db, false, false).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("V1__add_price.sql"),
        "ALTER TABLE items ADD COLUMN price DECIMAL(8,2) NULL;\nCREATE INDEX items_name ON items (name);\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("V2__routine.sql"),
        "DELIMITER //\nCREATE PROCEDURE restock() BEGIN UPDATE items SET price = 1; SELECT 1; END //\nDELIMITER ;\n",
    )
    .unwrap();
    db.migrations = dir.path().to_path_buf();
    let r = run(&db, Command::Migrate { dry_run: false }, Output::Quiet)
        .await
        .unwrap();
    assert_eq!(
        r.summary["applied"],
        serde_json::json!(["V1__add_price.sql", "V2__routine.sql"])
    );
    assert_eq!(r.summary["schema_version"], "2");
    assert_eq!(
        one(&db.green, "SELECT GROUP_CONCAT(CONCAT(version, ':', success, ':', checksum) ORDER BY installed_rank) FROM flyway_schema_history").await.unwrap(),
        format!(
            "1:1:{},2:1:{}",
            switchyard_sync::migrate::checksum(&std::fs::read(dir.path().join("V1__add_price.sql")).unwrap()),
            switchyard_sync::migrate::checksum(&std::fs::read(dir.path().join("V2__routine.sql")).unwrap())
        )
    );
    // Verify knows the migrations' changes were meant: green passes.
    let (code, v) = verify(&db).await;
    assert_eq!(code, 0, "{v:#}");
    assert!(
        v["schema"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| !d["expected"].is_null()),
        "{v:#}"
    );
    let st = switchyard_sync::gate_status(&db, switchyard_sync::replication::Direction::Forward)
        .await
        .unwrap();
    assert!(st.verified, "{}", st.reason);

    // A migration failing half-way says what stayed applied.
    std::fs::write(
        dir.path().join("V3__half.sql"),
        "ALTER TABLE items ADD COLUMN stock INT NULL;\n\nALTER TABLE nope ADD COLUMN x INT;\nALTER TABLE items ADD COLUMN never INT;\n",
    )
    .unwrap();
    let e = run(&db, Command::Migrate { dry_run: false }, Output::Quiet)
        .await
        .expect_err("V3 fails");
    let e = e.to_string();
    assert!(e.contains("V3__half.sql:3"), "{e}");
    assert!(
        e.contains("the 1 statement(s) of V3__half.sql before line 3 stayed applied"),
        "{e}"
    );
    assert_eq!(
        one(&db.green, "SELECT CONCAT(version, ':', success) FROM flyway_schema_history ORDER BY installed_rank DESC LIMIT 1").await.as_deref(),
        Some("3:0")
    );
    assert_eq!(one(&db.green, "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = 'migrations' AND COLUMN_NAME = 'never'").await.as_deref(), Some("0"));
    // Validate now reports the failed migration.
    let r = run(&db, Command::Validate, Output::Quiet).await.unwrap();
    assert_eq!(r.code, 1, "{:#}", r.summary);

    // Undo by hand, fix the script, repair, migrate: as with Flyway.
    sql(&db.green, "ALTER TABLE items DROP COLUMN stock").await;
    std::fs::write(
        dir.path().join("V3__half.sql"),
        "ALTER TABLE items ADD COLUMN stock INT NULL;\nALTER TABLE items ADD COLUMN never INT;\n",
    )
    .unwrap();
    let r = run(&db, Command::Repair, Output::Quiet).await.unwrap();
    assert_eq!(
        r.summary["removed_failed"],
        serde_json::json!(["V3__half.sql"]),
        "{:#}",
        r.summary
    );
    let r = run(&db, Command::Migrate { dry_run: false }, Output::Quiet)
        .await
        .unwrap();
    assert_eq!(r.summary["applied"], serde_json::json!(["V3__half.sql"]));
    let r = run(&db, Command::Validate, Output::Quiet).await.unwrap();
    assert_eq!(r.code, 0, "{:#}", r.summary);

    // Baseline: a database with its schema already in place starts at a version.
    let mut fresh = pair(b, g, "baselined").await;
    fresh.migrations = dir.path().to_path_buf();
    let r = run(
        &fresh,
        Command::Baseline {
            version: "2".into(),
            description: "<< Flyway Baseline >>".into(),
        },
        Output::Quiet,
    )
    .await
    .unwrap();
    assert_eq!(r.summary["version"], "2");
    sql(
        &fresh.green,
        "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(20), price DECIMAL(8,2))",
    )
    .await;
    let r = run(&fresh, Command::Migrate { dry_run: true }, Output::Quiet)
        .await
        .unwrap();
    assert_eq!(
        r.summary["applied"],
        serde_json::json!(["V3__half.sql"]),
        "only what follows the baseline"
    );
    let e = run(
        &fresh,
        Command::Baseline {
            version: "1".into(),
            description: "again".into(),
        },
        Output::Quiet,
    )
    .await
    .expect_err("a second baseline is refused");
    assert!(e.to_string().contains("never been migrated"), "{e}");
}

/// Waits until `probe` holds (bounded).
async fn eventually(what: &str, mut probe: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !probe().await {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn replicas(url: &str) -> usize {
    let mut c = conn(url).await;
    let rows: Vec<mysql_async::Row> = c.query("SHOW ALL SLAVES STATUS").await.unwrap();
    rows.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn green_replicates_blue_then_cutover_reverses_it_and_cleanup_leaves_nothing() {
    // Servers of its own: replication is configured server-wide.
    let (b, g) = (start(), start());
    let mut db = pair(&b, &g, "shop").await;
    db.mode = SyncMode::Replicate;
    sql(&db.blue, "CREATE TABLE accounts (id INT AUTO_INCREMENT PRIMARY KEY, owner VARCHAR(50), balance DECIMAL(12,2)) ENGINE=InnoDB; \
                   INSERT INTO accounts (owner, balance) SELECT CONCAT('o', seq), seq FROM seq_1_to_5000").await;
    let r = run(&db, Command::Preflight, Output::Quiet).await.unwrap();
    assert_eq!(r.code, 0, "{:#}", r.summary);
    clone(&db, false, true).await;
    // Written after the clone, before replication starts: replication must bring it.
    sql(
        &db.blue,
        "INSERT INTO accounts (owner, balance) VALUES ('after-clone', 1)",
    )
    .await;
    let r = run(&db, Command::Replicate, Output::Quiet).await.unwrap();
    assert_eq!(r.summary["already_running"], false, "{:#}", r.summary);
    sql(&db.blue, "UPDATE accounts SET balance = balance + 10 WHERE id <= 100; DELETE FROM accounts WHERE id = 4999").await;
    let caught = switchyard_sync::replication::wait_caught_up(
        &db,
        switchyard_sync::replicate::Direction::Forward,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert!(
        matches!(caught, switchyard_sync::replicate::CatchUp::CaughtUp { .. }),
        "{caught:?}"
    );
    assert_eq!(
        one(
            &db.green,
            "SELECT COUNT(*) FROM accounts WHERE owner = 'after-clone'"
        )
        .await
        .as_deref(),
        Some("1")
    );
    let st = switchyard_sync::gate_status(&db, switchyard_sync::replication::Direction::Forward)
        .await
        .unwrap();
    let repl = st.replication.clone().unwrap();
    assert_eq!(
        repl.state,
        switchyard_sync::replicate::ReplicationState::Streaming,
        "{repl:?}"
    );
    assert_eq!(repl.transactions_behind, Some(0), "{repl:?}");
    assert_eq!(repl.lag_seconds, Some(0.0));
    let (code, v) = verify(&db).await;
    assert_eq!(code, 0, "{v:#}");

    // Replication stopped on green shows as stopped, not streaming.
    sql(&db.green, "STOP SLAVE 'switchyard'").await;
    let repl = switchyard_sync::replication::status(&db).await;
    assert_eq!(
        repl.state,
        switchyard_sync::replicate::ReplicationState::Stopped
    );
    assert_eq!(repl.lag_seconds, None);
    sql(&db.green, "START SLAVE 'switchyard'").await;

    // Cutover: green becomes the primary and blue replicates it back.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let report = switchyard_sync::replication::switch(
        &db,
        switchyard_sync::replicate::Direction::Forward,
        switchyard_sync::CutoverKind::Promote,
        deadline,
    )
    .await
    .unwrap();
    assert_eq!(report.primary, switchyard_sync::Side::Green);
    assert_eq!(replicas(&db.green).await, 0, "green no longer follows blue");
    assert_eq!(replicas(&db.blue).await, 1, "blue follows green");
    sql(
        &db.green,
        "INSERT INTO accounts (owner, balance) VALUES ('after-cutover', 2)",
    )
    .await;
    let blue = db.blue.clone();
    eventually("the write on green to reach blue", async || {
        one(
            &blue,
            "SELECT COUNT(*) FROM accounts WHERE owner = 'after-cutover'",
        )
        .await
        .as_deref()
            == Some("1")
    })
    .await;
    let repl = switchyard_sync::replication::status(&db).await;
    assert_eq!(
        repl.direction,
        Some(switchyard_sync::replicate::Direction::Reverse)
    );
    // Green is now production: clone and prepare refuse to replace it.
    let e = run(
        &db,
        Command::Clone {
            jobs: 2,
            replace: true,
            verify: false,
        },
        Output::Quiet,
    )
    .await
    .expect_err("the primary is not replaced");
    assert!(
        e.to_string().contains("green's database is the primary")
            && e.to_string().contains("nothing was changed"),
        "{e}"
    );

    // And back (a rollback after promotion): blue is the primary again, green follows it,
    // and nothing written on green while it was the primary is lost.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let report = switchyard_sync::replication::switch(
        &db,
        switchyard_sync::replicate::Direction::Reverse,
        switchyard_sync::CutoverKind::Rollback,
        deadline,
    )
    .await
    .unwrap();
    assert_eq!(report.primary, switchyard_sync::Side::Blue);
    assert_eq!(replicas(&db.blue).await, 0, "blue follows nobody");
    assert_eq!(replicas(&db.green).await, 1, "green follows blue again");
    assert_eq!(
        one(
            &db.blue,
            "SELECT COUNT(*) FROM accounts WHERE owner = 'after-cutover'"
        )
        .await
        .as_deref(),
        Some("1")
    );
    sql(
        &db.blue,
        "INSERT INTO accounts (owner, balance) VALUES ('after-rollback', 3)",
    )
    .await;
    let green = db.green.clone();
    eventually("the write on blue to reach green", async || {
        one(
            &green,
            "SELECT COUNT(*) FROM accounts WHERE owner = 'after-rollback'",
        )
        .await
        .as_deref()
            == Some("1")
    })
    .await;
    let (code, v) = verify(&db).await;
    assert_eq!(
        code, 0,
        "after the round trip both sides hold the same rows: {v:#}"
    );

    let r = run(&db, Command::Cleanup, Output::Quiet).await.unwrap();
    assert_eq!(
        r.summary["removed"].as_array().unwrap().len(),
        1,
        "{:#}",
        r.summary
    );
    assert_eq!(replicas(&db.blue).await, 0);
    assert_eq!(replicas(&db.green).await, 0);
    let r = run(&db, Command::Cleanup, Output::Quiet).await.unwrap();
    assert!(
        r.summary["removed"].as_array().unwrap().is_empty(),
        "cleanup is idempotent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_on_the_database_are_copied_to_users_green_has_and_verify_compares_them() {
    let (b, g) = shared();
    let db = pair(b, g, "granted").await;
    assert_eq!(db.roles, switchyard_config::RolesMode::Copy);
    sql(
        &db.blue,
        "CREATE TABLE items (id INT PRIMARY KEY); \
                   CREATE USER 'shop_app'@'%'; CREATE USER 'shop_ghost'@'%'; \
                   GRANT SELECT, INSERT ON granted.* TO 'shop_app'@'%'; \
                   GRANT SELECT ON granted.items TO 'shop_ghost'@'%'",
    )
    .await;
    sql(&db.green, "CREATE USER 'shop_app'@'%'").await;
    let r = run(&db, Command::Preflight, Output::Quiet).await.unwrap();
    let warned: Vec<&str> = r.summary["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == "grants")
        .map(|f| f["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        warned,
        ["users with privileges on blue's database do not exist on green: 'shop_ghost'@'%'"]
    );
    let c = clone(&db, false, true).await;
    assert_eq!(c["clone"]["grants"], 1, "{c:#}");
    assert_eq!(
        c["clone"]["grantees_missing"],
        serde_json::json!(["'shop_ghost'@'%'"])
    );
    assert_eq!(
        one(&db.green, "SELECT GROUP_CONCAT(PRIVILEGE_TYPE ORDER BY PRIVILEGE_TYPE) FROM information_schema.SCHEMA_PRIVILEGES WHERE TABLE_SCHEMA = 'granted' AND GRANTEE = \"'shop_app'@'%'\"").await.as_deref(),
        Some("INSERT,SELECT")
    );
    // The missing user's grant is a difference verify reports.
    assert_eq!(c["verify"]["passed"], false, "{c:#}");
    let schema = c["verify"]["schema"].as_array().unwrap();
    assert_eq!(schema.len(), 1, "{c:#}");
    assert_eq!(schema[0]["kind"], "grants");
    assert_eq!(schema[0]["name"], "'shop_ghost'@'%'");
    assert_eq!(schema[0]["problem"], "missing_on_green");

    // Once the user exists and has its grant, a changed grant still shows.
    sql(&db.green, "CREATE USER 'shop_ghost'@'%'; GRANT SELECT ON granted.items TO 'shop_ghost'@'%'; REVOKE INSERT ON granted.* FROM 'shop_app'@'%'").await;
    let (code, v) = verify(&db).await;
    assert_eq!(code, 1, "{v:#}");
    let names: Vec<&str> = v["schema"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["'shop_app'@'%'"], "{v:#}");
    sql(&db.green, "GRANT INSERT ON granted.* TO 'shop_app'@'%'").await;
    let (code, v) = verify(&db).await;
    assert_eq!(code, 0, "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_that_widens_columns_leaves_equal_values_equal_and_real_changes_found() {
    let (b, g) = shared();
    let mut db = pair(b, g, "widened").await;
    sql(&db.blue, "CREATE TABLE prices (id INT PRIMARY KEY, amount DECIMAL(8,2), label VARCHAR(20) CHARACTER SET latin1, at DATETIME); \
                   INSERT INTO prices VALUES (1, 1.50, 'café', '2024-01-01 10:00:00'), (2, -3.00, NULL, NULL), (3, 0, '', '2024-06-30 23:59:59')").await;
    clone(&db, false, false).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("V1__widen.sql"),
        "ALTER TABLE prices MODIFY amount DECIMAL(12,4), MODIFY label VARCHAR(40) CHARACTER SET utf8mb4, MODIFY at DATETIME(6);\n",
    )
    .unwrap();
    db.migrations = dir.path().to_path_buf();
    run(&db, Command::Migrate { dry_run: false }, Output::Quiet)
        .await
        .unwrap();
    // Same values, wider types: equal, and the schema difference is the migration's.
    let (code, v) = verify(&db).await;
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["schema"][0]["expected"], "V1__widen.sql", "{v:#}");
    // A real change in a widened column is still found, by key.
    sql(&db.green, "UPDATE prices SET amount = 1.5001 WHERE id = 1").await;
    sql(&db.green, "UPDATE prices SET label = 'cafe' WHERE id = 3").await;
    let (code, v) = verify(&db).await;
    assert_eq!(code, 1, "{v:#}");
    let mut d = differences(&v, "prices");
    d.sort();
    assert_eq!(
        d,
        [
            ("id=1".to_string(), "changed".to_string()),
            ("id=3".to_string(), "changed".to_string())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_moved_from_one_column_into_the_next_is_a_difference() {
    // pt-table-checksum's row text, CONCAT_WS('#', a, b), is the same for
    // ('a#', 'b') and ('a', '#b'): a row whose text shifted across a column
    // boundary would pass. Each value's length is hashed with it.
    let (b, g) = shared();
    let db = pair(b, g, "shifted").await;
    sql(&db.blue, "CREATE TABLE keyed (id INT PRIMARY KEY, a VARCHAR(10), b VARCHAR(10), c VARCHAR(10)); \
                   INSERT INTO keyed VALUES (1, 'a#', 'b', 'x'), (2, 'p', '#q', ''), (3, 'same', 'same', NULL); \
                   CREATE TABLE unkeyed (a VARCHAR(10), b VARCHAR(10)); \
                   INSERT INTO unkeyed VALUES ('a#', 'b'), ('c', 'd')").await;
    let c = clone(&db, false, true).await;
    assert_eq!(c["verify"]["passed"], true, "{c:#}");

    sql(
        &db.green,
        "UPDATE keyed SET a = 'a', b = '#b' WHERE id = 1; \
                    UPDATE keyed SET a = 'p#', b = 'q' WHERE id = 2; \
                    UPDATE unkeyed SET a = 'a', b = '#b' WHERE a = 'a#'",
    )
    .await;
    let (code, v) = verify(&db).await;
    assert_eq!(code, 1, "{v:#}");
    let mut d = differences(&v, "keyed");
    d.sort();
    assert_eq!(
        d,
        [
            ("id=1".to_string(), "changed".to_string()),
            ("id=2".to_string(), "changed".to_string())
        ],
        "{v:#}"
    );
    let unkeyed = v["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "unkeyed")
        .unwrap();
    assert_ne!(unkeyed["status"], "equal", "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spatial_and_json_columns_are_cloned_exactly_and_a_moved_point_is_found() {
    let (b, g) = shared();
    let db = pair(b, g, "places").await;
    sql(&db.blue, "CREATE TABLE places (id INT PRIMARY KEY, at POINT NOT NULL, area GEOMETRY NULL, doc JSON, SPATIAL INDEX (at)); \
                   INSERT INTO places VALUES \
                     (1, ST_GeomFromText('POINT(13.4 52.5)', 4326), ST_GeomFromText('POLYGON((0 0, 1 0, 1 1, 0 0))'), '{\"b\": [1, 2.5, null], \"a\": \"grüße\"}'), \
                     (2, ST_GeomFromText('POINT(-0.0001 0)'), NULL, NULL), \
                     (3, POINT(1, 2), ST_GeomFromText('GEOMETRYCOLLECTION(POINT(1 1), LINESTRING(0 0, 2 2))'), '[]')").await;
    let c = clone(&db, false, true).await;
    assert_eq!(c["verify"]["passed"], true, "{c:#}");
    for (q, want) in [
        ("SELECT ST_AsText(at) FROM places WHERE id = 1", "POINT(13.4 52.5)"),
        ("SELECT ST_SRID(at) FROM places WHERE id = 1", "4326"),
        ("SELECT ST_AsText(area) FROM places WHERE id = 3", "GEOMETRYCOLLECTION(POINT(1 1),LINESTRING(0 0,2 2))"),
        ("SELECT ST_AsText(at) FROM places WHERE id = 2", "POINT(-0.0001 0)"),
        ("SELECT JSON_EXTRACT(doc, '$.a') FROM places WHERE id = 1", "\"grüße\""),
        ("SELECT COUNT(*) FROM places WHERE MBRContains(ST_GeomFromText('POLYGON((0 0, 20 0, 20 60, 0 60, 0 0))'), at)", "2"),
        ("SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = 'places' AND INDEX_TYPE = 'SPATIAL'", "1"),
    ] {
        assert_eq!(one(&db.green, q).await.as_deref(), Some(want), "{q}");
    }
    sql(
        &db.green,
        "UPDATE places SET at = POINT(1, 2.000001) WHERE id = 3",
    )
    .await;
    let (code, v) = verify(&db).await;
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(
        differences(&v, "places"),
        [("id=3".to_string(), "changed".to_string())],
        "{v:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_green_that_refuses_the_load_fails_the_clone_with_its_reason_and_marks_it_failed() {
    // Servers of its own: local_infile is server-wide.
    let (b, g) = (start(), start());
    let db = pair(&b, &g, "refused").await;
    // More rows than the stream buffers, so a reader nobody drains would wait forever.
    sql(
        &db.blue,
        "CREATE TABLE big (id INT PRIMARY KEY, pad CHAR(200)) ENGINE=InnoDB; \
                   INSERT INTO big SELECT seq, REPEAT('x', 200) FROM seq_1_to_40000",
    )
    .await;
    sql(&db.green, "SET GLOBAL local_infile = 0").await;
    let r = run(&db, Command::Preflight, Output::Quiet).await.unwrap();
    assert_eq!(r.code, 1, "preflight says so first: {:#}", r.summary);
    let e = tokio::time::timeout(
        Duration::from_secs(60),
        run(
            &db,
            Command::Clone {
                jobs: 2,
                replace: false,
                verify: false,
            },
            Output::Quiet,
        ),
    )
    .await
    .expect("the clone ends instead of hanging")
    .expect_err("green refuses the load");
    let e = e.to_string();
    assert!(
        e.contains("copying table big") && e.contains("LOAD DATA"),
        "{e}"
    );
    let st = switchyard_sync::gate_status(&db, switchyard_sync::replication::Direction::Forward)
        .await
        .unwrap();
    let c = st.clone.expect("the clone is recorded");
    assert_eq!(c.state, switchyard_sync::gate::CloneState::Failed);
    assert_eq!(c.phase.as_deref(), Some("copy"));
    assert!(!st.verified, "{}", st.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_strict_gtid_a_green_that_wrote_in_blues_domain_is_a_preflight_blocker_with_the_fix() {
    // The harness runs gtid_strict_mode = ON (MariaDB's advice for replicas).
    let (b, g) = (start(), start());
    let mut db = pair(&b, &g, "strict").await;
    db.mode = SyncMode::Replicate;
    sql(
        &db.blue,
        "CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB; INSERT INTO t VALUES (1)",
    )
    .await;
    assert_eq!(
        one(&db.green, "SELECT @@GLOBAL.gtid_strict_mode")
            .await
            .as_deref(),
        Some("1")
    );
    let r = run(&db, Command::Preflight, Output::Quiet).await.unwrap();
    assert_eq!(r.code, 0, "a fresh green passes: {:#}", r.summary);

    // Something else wrote on green in domain 0, past blue's sequence.
    let scratch = g.create_db("scratch").await.unwrap();
    for i in 0..20 {
        sql(
            &scratch,
            &format!("CREATE TABLE IF NOT EXISTS s (i INT); INSERT INTO s VALUES ({i})"),
        )
        .await;
    }
    let r = run(&db, Command::Preflight, Output::Quiet).await.unwrap();
    assert_ne!(r.code, 0, "{:#}", r.summary);
    let text = r.summary.to_string();
    assert!(
        text.contains("newer than blue's position") && text.contains("RESET MASTER on green"),
        "names the cause and the fix: {text}"
    );

    // The fix it names works: green's binary log held nothing anyone needs.
    sql(&scratch, "RESET MASTER").await;
    let r = run(&db, Command::Preflight, Output::Quiet).await.unwrap();
    assert_eq!(r.code, 0, "{:#}", r.summary);
    clone(&db, false, true).await;
    let r = run(&db, Command::Replicate, Output::Quiet).await.unwrap();
    assert_eq!(r.summary["already_running"], false, "{:#}", r.summary);
    sql(&db.blue, "INSERT INTO t VALUES (2)").await;
    let green = db.green.clone();
    eventually("blue's write to reach green", async || {
        one(&green, "SELECT COUNT(*) FROM t").await.as_deref() == Some("2")
    })
    .await;
    switchyard_sync::replication::cleanup(&db).await.unwrap();
}
