//! Clone and verify against two real PostgreSQL clusters (blue and green).

mod support;

use support::{connect, sql, texts, Pair};
use switchyard_sync::{run, Command, Output, SyncError};

/// A schema with the awkward cases: numeric, timestamptz, jsonb and json,
/// bytea, arrays, unicode text, NULLs, an enum, identity and serial columns, a
/// composite primary key, a table without a primary key, foreign keys, a
/// partitioned table, a view and a function.
const FIXTURE: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE customers (
    id serial PRIMARY KEY,
    name text NOT NULL,
    mood mood,
    moods mood[],
    balance numeric(12, 2),
    created timestamptz,
    tags text[],
    doc jsonb,
    raw json,
    photo bytea,
    score double precision
);
CREATE TABLE orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers (id),
    total numeric,
    placed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE order_lines (
    order_id bigint REFERENCES orders (id),
    line int,
    sku text NOT NULL,
    qty int CHECK (qty > 0),
    PRIMARY KEY (order_id, line)
);
CREATE INDEX order_lines_sku ON order_lines (sku);
CREATE TABLE events (at timestamptz, payload text);
CREATE TABLE measurements (city int, day date, temp numeric, PRIMARY KEY (city, day)) PARTITION BY RANGE (day);
CREATE TABLE measurements_2024 PARTITION OF measurements FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE measurements_2025 PARTITION OF measurements FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE VIEW rich_customers AS SELECT id, name FROM customers WHERE balance > 500;
CREATE FUNCTION customer_total(c int) RETURNS numeric LANGUAGE sql STABLE AS $$ SELECT sum(total) FROM orders WHERE customer_id = c $$;

INSERT INTO customers (name, mood, moods, balance, created, tags, doc, raw, photo, score)
SELECT CASE i % 4 WHEN 0 THEN 'Zoë ' || i WHEN 1 THEN '東京 ' || i WHEN 2 THEN '🚀 "quoted", comma ' || i ELSE E'tab\there\nnewline ' || i END,
       CASE WHEN i % 5 = 0 THEN NULL ELSE (ARRAY['sad','ok','happy'])[1 + i % 3]::mood END,
       ARRAY['ok', 'happy']::mood[],
       CASE WHEN i % 7 = 0 THEN NULL ELSE round((i * 1.37)::numeric, 2) END,
       timestamptz '2024-03-10 12:00:00+01' + i * interval '37 minutes',
       CASE WHEN i % 3 = 0 THEN NULL ELSE ARRAY['a' || i, NULL, 'b,c'] END,
       jsonb_build_object('n', i, 'nested', jsonb_build_object('x', ARRAY[i, i + 1]), 'u', 'ü'),
       ('{"b": 1,  "a": [' || i || ']}')::json,
       CASE WHEN i % 2 = 0 THEN decode(md5(i::text), 'hex') ELSE NULL END,
       i / 3.0
  FROM generate_series(1, 5000) i;
INSERT INTO orders (customer_id, total, placed_at)
SELECT 1 + i % 5000, (i % 1000) * 1.5, timestamptz '2024-01-01 00:00:00+00' + i * interval '1 hour' FROM generate_series(1, 3000) i;
INSERT INTO order_lines SELECT o, l, 'sku-' || (o * l) % 97, l FROM generate_series(1, 3000) o, generate_series(1, 3) l;
INSERT INTO events SELECT timestamptz '2024-01-01' + i * interval '1 minute', CASE WHEN i % 10 = 0 THEN NULL ELSE 'e' || i END FROM generate_series(1, 500) i;
INSERT INTO events SELECT timestamptz '2024-01-01', 'duplicate' FROM generate_series(1, 3);
CREATE SCHEMA "Sales Data";
CREATE TABLE "Sales Data"."Odd ""Name""" ("Key" int PRIMARY KEY, "mixed Case" text, doubled int GENERATED ALWAYS AS ("Key" * 2) STORED);
INSERT INTO "Sales Data"."Odd ""Name""" ("Key", "mixed Case") SELECT i, 'v' || i FROM generate_series(1, 50) i;
INSERT INTO measurements SELECT c, d::date, (c * 10 + extract(doy from d))::numeric / 10
  FROM generate_series(1, 5) c, generate_series(timestamp '2024-06-01', timestamp '2025-06-01', interval '1 day') d;
"#;

async fn fixture(pair: &Pair) {
    // Split tables bigger than 8 blocks into block ranges, so that the
    // parallel copy of one table is exercised too.
    std::env::set_var("SWITCHYARD_CLONE_CHUNK_BLOCKS", "8");
    sql(pair.blue(), FIXTURE).await;
}

async fn verify(pair: &Pair) -> switchyard_sync::verify::VerifyReport {
    switchyard_sync::verify::verify(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
        2,
        None,
        Output::Quiet,
    )
    .await
    .expect("verify runs")
}

async fn clone(pair: &Pair, replace: bool) -> Result<serde_json::Value, SyncError> {
    run(
        &pair.config,
        Command::Clone {
            jobs: 2,
            replace,
            verify: false,
        },
        Output::Quiet,
    )
    .await
    .map(|r| r.summary)
}

/// Everything in a database that a clone or verify must not change: every
/// relation's name and kind, every table's rows, sequence positions, and the
/// absence of switchyard's own objects.
async fn fingerprint(url: &str) -> String {
    let c = connect(url).await;
    let mut out = String::new();
    let rels = c
        .query(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.relkind::text \
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
              WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    for r in &rels {
        let rel: String = r.get(0);
        let kind: String = r.get(1);
        out.push_str(&format!("{rel}:{kind}"));
        let q = match kind.as_str() {
            "r" => format!("SELECT coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM ONLY {rel} t"),
            "S" => format!("SELECT last_value::text || is_called::text FROM {rel}"),
            _ => continue,
        };
        let v: String = c.query_one(&q, &[]).await.unwrap().get(0);
        out.push_str(&format!("={v}\n"));
    }
    let extra: i64 = c
        .query_one(
            "SELECT (SELECT count(*) FROM pg_publication) + (SELECT count(*) FROM pg_replication_slots) \
                  + (SELECT count(*) FROM pg_namespace WHERE nspname = 'switchyard')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    out.push_str(&format!("switchyard objects: {extra}\n"));
    out
}

/// The (key, kind) of each difference found in `table`.
fn diffs(report: &switchyard_sync::verify::VerifyReport, table: &str) -> Vec<(String, String)> {
    report
        .tables
        .iter()
        .find(|t| t.table == table)
        .unwrap_or_else(|| panic!("{table} not in report"))
        .differences
        .iter()
        .map(|d| (d.key.clone(), d.kind.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_clones_and_verifies_equal() {
    let pair = Pair::new("fixture").await;
    fixture(&pair).await;
    let summary = clone(&pair, false).await.expect("clone");
    assert_eq!(
        summary["clone"]["rows"],
        5000 + 3000 + 9000 + 503 + 5 * 366 + 50,
        "{summary:#}"
    );

    let report = verify(&pair).await;
    assert!(report.passed, "{}", report.render());
    assert_eq!(report.tables.len(), 7, "{}", report.render());

    // Everything came across: sequences, identity, partitions, view, function,
    // constraints and indexes.
    let g = connect(pair.green()).await;
    let next: i32 = g
        .query_one("SELECT nextval('customers_id_seq')::int", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(next, 5001);
    let id: i64 = g
        .query_one(
            "INSERT INTO orders (customer_id, total) VALUES (1, 1) RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(id, 3001);
    let rich: i64 = g
        .query_one("SELECT count(*) FROM rich_customers", &[])
        .await
        .unwrap()
        .get(0);
    assert!(rich > 0);
    let total: Option<String> = g
        .query_one("SELECT customer_total(2)::text", &[])
        .await
        .unwrap()
        .get(0);
    assert!(total.is_some());
    let bad_fk = g
        .batch_execute("INSERT INTO order_lines VALUES (999999, 1, 'x', 1)")
        .await
        .expect_err("foreign key exists in green");
    assert!(
        switchyard_sync::error::pg_message(&bad_fk).contains("foreign key"),
        "{bad_fk:?}"
    );
    let idx: i64 = g
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'order_lines_sku'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(idx, 1);
    let parts: i64 = g
        .query_one(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'measurements'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(parts, 2);

    // Representation differences that are not data differences compare equal:
    // a wider numeric scale, json stored as jsonb (made by a migration, so
    // the schema differences are expected), another session time zone.
    std::fs::write(
        pair.migrations.path().join("V1__widen.sql"),
        "DROP VIEW rich_customers; \
         ALTER TABLE customers ALTER COLUMN balance TYPE numeric(14, 4), ALTER COLUMN raw TYPE jsonb USING raw::jsonb;",
    )
    .unwrap();
    switchyard_sync::migrate::migrate(
        &pair.config.migrations,
        switchyard_sync::Side::Green,
        pair.green(),
        switchyard_sync::migrate::MigrateOptions {
            roles: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    sql(
        pair.green(),
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET TimeZone = ''Asia/Tokyo''', current_database()); END $$",
    )
    .await;
    let g = connect(pair.green()).await;
    g.batch_execute("DELETE FROM orders WHERE id = 3001")
        .await
        .unwrap();
    let report = verify(&pair).await;
    assert!(report.passed, "{}", report.render());
    let listed: Vec<String> = report.schema.iter().map(|d| d.to_string()).collect();
    assert!(
        listed
            .iter()
            .any(|d| d.starts_with("column public.customers.balance differs")
                && d.ends_with("(expected: made by migration V1__widen.sql)")),
        "{listed:#?}"
    );
    assert!(
        listed
            .iter()
            .any(|d| d.starts_with("view public.rich_customers missing on green")),
        "{listed:#?}"
    );
    assert!(report.schema.iter().all(|d| d.expected.is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_deleted_and_inserted_rows_are_found_by_key() {
    let pair = Pair::new("diffs").await;
    fixture(&pair).await;
    clone(&pair, false).await.expect("clone");
    sql(
        pair.green(),
        "UPDATE customers SET balance = balance + 0.01 WHERE id = 4321; \
         DELETE FROM order_lines WHERE order_id = 2500 AND line = 2; \
         INSERT INTO measurements VALUES (9, '2024-07-01', 1.5); \
         UPDATE events SET payload = 'changed' WHERE payload = 'e7'; \
         UPDATE \"Sales Data\".\"Odd \"\"Name\"\"\" SET \"mixed Case\" = 'x' WHERE \"Key\" = 7",
    )
    .await;
    let report = verify(&pair).await;
    assert!(!report.passed);
    assert_eq!(
        diffs(&report, "public.customers"),
        vec![("id=4321".to_string(), "changed".to_string())]
    );
    assert_eq!(
        diffs(&report, "public.order_lines"),
        vec![(
            "(order_id, line)=(2500, 2)".to_string(),
            "missing_in_green".to_string()
        )]
    );
    assert_eq!(
        diffs(&report, "public.measurements_2024"),
        vec![(
            "(city, day)=(9, 2024-07-01)".to_string(),
            "extra_in_green".to_string()
        )]
    );
    assert_eq!(
        diffs(&report, "Sales Data.Odd \"Name\""),
        vec![("Key=7".to_string(), "changed".to_string())]
    );
    // No primary key: the table is reported, without keys.
    let events = report
        .tables
        .iter()
        .find(|t| t.table == "public.events")
        .unwrap();
    assert_eq!(events.status, "differs");
    assert!(events.note.as_deref().unwrap().contains("no primary key"));
    // Untouched tables stay equal.
    for t in ["public.orders", "public.measurements_2025"] {
        assert_eq!(
            report.tables.iter().find(|x| x.table == t).unwrap().status,
            "equal"
        );
    }
    // The printed report names the keys.
    let text = report.render();
    assert!(text.contains("id=4321 changed"), "{text}");
    assert!(
        text.contains("(order_id, line)=(2500, 2) missing_in_green"),
        "{text}"
    );
    // The failure is recorded in green, so the gate stays shut.
    let gate = switchyard_sync::gate_status(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
    )
    .await
    .unwrap();
    assert!(!gate.verified, "{gate:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_blue_during_clone_do_not_break_it() {
    let pair = Pair::new("writes").await;
    fixture(&pair).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (url, stop) = (pair.blue().to_string(), stop.clone());
        tokio::spawn(async move {
            let c = connect(&url).await;
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || n < 20 {
                c.batch_execute(
                    "INSERT INTO customers (name, balance) VALUES ('during clone', 1); \
                     UPDATE customers SET balance = balance + 1 WHERE id = 1 + (random() * 4999)::int; \
                     DELETE FROM events WHERE ctid = (SELECT ctid FROM events LIMIT 1); \
                     INSERT INTO orders (customer_id, total) VALUES (1, 2)",
                )
                .await
                .expect("blue accepts writes during the clone");
                n += 1;
            }
            n
        })
    };
    let summary = run(
        &pair.config,
        Command::Clone {
            jobs: 2,
            replace: false,
            verify: true,
        },
        Output::Quiet,
    )
    .await
    .expect("clone while blue is written to");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.await.unwrap();
    assert!(writes >= 20);
    // Verified against the clone's own snapshot: consistent despite the writes.
    assert_eq!(
        summary.summary["verify"]["passed"], true,
        "{:#}",
        summary.summary
    );
    // Green's sequences are at least where the copied rows need them.
    let g = connect(pair.green()).await;
    let ok: bool = g
        .query_one(
            "SELECT nextval('customers_id_seq') > (SELECT max(id) FROM customers)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_is_unchanged_by_clone_and_verify() {
    let pair = Pair::new("readonly").await;
    fixture(&pair).await;
    // Any write to blue by switchyard would now fail.
    sql(
        pair.blue(),
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET default_transaction_read_only = on', current_database()); END $$",
    )
    .await;
    let before = fingerprint(pair.blue()).await;
    let report = run(
        &pair.config,
        Command::Clone {
            jobs: 2,
            replace: false,
            verify: true,
        },
        Output::Quiet,
    )
    .await
    .expect("clone of a read-only blue");
    assert_eq!(report.code, 0, "{:#}", report.summary);
    let again = run(&pair.config, Command::Verify { jobs: 2 }, Output::Quiet)
        .await
        .expect("verify");
    assert_eq!(again.code, 0, "{:#}", again.summary);
    let preflight = run(&pair.config, Command::Preflight, Output::Quiet)
        .await
        .expect("preflight");
    // Snapshot mode: a table without a primary key is a warning, not a blocker.
    assert_eq!(preflight.code, 0, "{:#}", preflight.summary);
    let findings = preflight.summary["findings"].as_array().unwrap();
    assert!(
        findings.iter().any(|f| f["check"] == "primary-key"
            && f["severity"] == "warning"
            && f["message"].as_str().unwrap().contains("public.events")),
        "{findings:#?}"
    );
    assert_eq!(fingerprint(pair.blue()).await, before);
    // And the gate opens: verified at the current schema version (no migrations).
    let gate = switchyard_sync::gate_status(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
    )
    .await
    .unwrap();
    assert!(gate.verified, "{gate:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_empty_green_is_refused_unless_replaced() {
    let pair = Pair::new("nonempty").await;
    sql(
        pair.blue(),
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2)",
    )
    .await;
    sql(
        pair.green(),
        "CREATE TABLE precious (id int); INSERT INTO precious VALUES (42)",
    )
    .await;
    let err = clone(&pair, false).await.expect_err("green is not empty");
    assert!(matches!(err, SyncError::TargetNotEmpty { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("public.precious") && msg.contains("--replace"),
        "{msg}"
    );
    // Nothing changed in green.
    let g = connect(pair.green()).await;
    let v: i32 = g
        .query_one("SELECT id FROM precious", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 42);
    // With --replace, green becomes a copy of blue.
    clone(&pair, true).await.expect("clone --replace");
    let g = connect(pair.green()).await;
    assert!(g.query("SELECT 1 FROM precious", &[]).await.is_err());
    let n: i64 = g
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    assert!(verify(&pair).await.passed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_follows_migrations_and_verification() {
    let pair = Pair::new("gate").await;
    sql(
        pair.blue(),
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')",
    )
    .await;
    run(
        &pair.config,
        Command::Clone {
            jobs: 1,
            replace: false,
            verify: true,
        },
        Output::Quiet,
    )
    .await
    .unwrap();
    assert!(
        switchyard_sync::gate_status(
            &pair.config,
            switchyard_sync::replication::Direction::Forward
        )
        .await
        .unwrap()
        .verified
    );
    std::fs::write(
        pair.migrations.path().join("V1__add_column.sql"),
        "ALTER TABLE t ADD COLUMN w int;\n",
    )
    .unwrap();
    let gate = switchyard_sync::gate_status(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
    )
    .await
    .unwrap();
    assert!(
        !gate.verified && gate.reason.contains("migrate"),
        "{gate:?}"
    );
    run(
        &pair.config,
        Command::Migrate { dry_run: false },
        Output::Quiet,
    )
    .await
    .unwrap();
    let gate = switchyard_sync::gate_status(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
    )
    .await
    .unwrap();
    assert!(!gate.verified && gate.reason.contains("verify"), "{gate:?}");
    let v = run(&pair.config, Command::Verify { jobs: 1 }, Output::Quiet)
        .await
        .unwrap();
    assert_eq!(v.code, 0, "{:#}", v.summary);
    let gate = switchyard_sync::gate_status(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
    )
    .await
    .unwrap();
    assert!(gate.verified, "{gate:?}");
    assert_eq!(gate.schema_version.as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_reports_blockers_with_hints() {
    let mut pair = Pair::new("preflight").await;
    pair.config.mode = switchyard_config::SyncMode::Replicate;
    sql(
        pair.blue(),
        "CREATE TABLE keyless (v text); CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY); \
         SELECT lo_from_bytea(0, 'blob'::bytea)",
    )
    .await;
    sql(pair.green(), "CREATE TABLE leftover (id int)").await;
    let report = run(&pair.config, Command::Preflight, Output::Quiet)
        .await
        .expect("preflight runs");
    assert_eq!(report.code, 1, "{:#}", report.summary);
    let findings = report.summary["findings"].as_array().unwrap();
    let find = |check: &str| {
        findings
            .iter()
            .find(|f| f["check"] == check)
            .unwrap_or_else(|| panic!("no {check} finding in {findings:#?}"))
    };
    let pk = find("primary-key");
    assert_eq!(pk["severity"], "blocker", "replicate mode needs keys");
    assert!(pk["message"].as_str().unwrap().contains("public.keyless"));
    assert!(!pk["hint"].as_str().unwrap().is_empty());
    assert_eq!(find("large-objects")["severity"], "warning");
    assert!(find("unlogged")["message"]
        .as_str()
        .unwrap()
        .contains("public.scratch"));
    assert!(find("target-not-empty")["message"]
        .as_str()
        .unwrap()
        .contains("public.leftover"));
    // A server that cannot be reached is a blocker, not a crash.
    pair.config.green = "postgres://postgres@127.0.0.1:1/nothing".into();
    let report = run(&pair.config, Command::Preflight, Output::Quiet)
        .await
        .unwrap();
    assert_eq!(report.code, 1);
    assert_eq!(report.summary["findings"][0]["check"], "connect");
}

/// Snapshot mode: a verified green stops passing the gate as soon as blue
/// takes a write of any kind (the copy lacks it, and a cutover would lose
/// it), and a fresh clone makes it pass again; reads, maintenance and
/// other databases on blue's server leave it passing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_copy_goes_stale_when_blue_takes_any_write_and_only_then() {
    let mut pair = Pair::new("stale").await;
    sql(
        pair.blue(),
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g; \
         SELECT lo_from_bytea(0, 'blob'::bytea)",
    )
    .await;
    let clone_again = async |pair: &Pair| {
        let r = run(
            &pair.config,
            Command::Clone {
                jobs: 1,
                replace: true,
                verify: true,
            },
            Output::Quiet,
        )
        .await
        .unwrap();
        assert_eq!(r.code, 0, "{:#}", r.summary);
        let gate = switchyard_sync::gate_status(
            &pair.config,
            switchyard_sync::replication::Direction::Forward,
        )
        .await
        .unwrap();
        assert!(gate.verified, "a fresh clone passes: {gate:?}");
    };
    let goes_stale = async |pair: &Pair, what: &str| {
        let mut gate = None;
        for _ in 0..200 {
            let g = switchyard_sync::gate_status(
                &pair.config,
                switchyard_sync::replication::Direction::Forward,
            )
            .await
            .unwrap();
            if !g.verified {
                gate = Some(g);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let gate = gate.unwrap_or_else(|| panic!("{what} on blue left green passing"));
        assert!(
            gate.reason.contains("green is stale") && gate.blue_changed.is_some(),
            "{what}: {gate:?}"
        );
        gate.reason
    };
    clone_again(&pair).await;

    // Reads, maintenance, a session's temporary table and another database
    // on the same server are not writes to blue's data.
    for harmless in [
        "SELECT count(*) FROM t",
        "VACUUM t",
        "ANALYZE t",
        "CREATE TEMP TABLE scratch AS SELECT * FROM t; INSERT INTO scratch VALUES (0, 'x')",
    ] {
        sql(pair.blue(), harmless).await;
    }
    let (other_db, _) = pair.blue().rsplit_once('/').unwrap();
    sql(
        &format!("{other_db}/postgres"),
        "CREATE TABLE IF NOT EXISTS stale_story_elsewhere (id int); \
         INSERT INTO stale_story_elsewhere VALUES (1)",
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let gate = switchyard_sync::gate_status(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
    )
    .await
    .unwrap();
    assert!(gate.verified, "{gate:?}");

    for (what, change) in [
        ("an insert", "INSERT INTO t VALUES (1000, 'new')"),
        ("an update", "UPDATE t SET v = 'changed' WHERE id = 1"),
        ("a delete", "DELETE FROM t WHERE id = 2"),
        (
            "a large object write",
            "SELECT lo_put(oid, 0, 'x'::bytea) FROM pg_largeobject_metadata",
        ),
        ("a new column", "ALTER TABLE t ADD COLUMN w int"),
        ("a new table", "CREATE TABLE u (id int PRIMARY KEY)"),
        ("a truncate", "TRUNCATE t"),
    ] {
        sql(pair.blue(), change).await;
        let reason = goes_stale(&pair, what).await;
        if what == "an insert" {
            assert!(reason.contains("1 row change since the clone"), "{reason}");
        }
        clone_again(&pair).await;
    }

    // An operator who accepts losing blue's writes can say so.
    sql(pair.blue(), "INSERT INTO t VALUES (2000, 'lost')").await;
    goes_stale(&pair, "an insert").await;
    pair.config.stale_clone = switchyard_config::StaleClonePolicy::Ignore;
    let gate = switchyard_sync::gate_status(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
    )
    .await
    .unwrap();
    assert!(gate.verified, "{gate:?}");
}

/// Green's database was created with another encoding: preflight blocks,
/// and a clone refuses before it changes anything. With blue's encoding but
/// another locale, preflight warns (text sorts differently) and the clone
/// goes ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_green_of_another_encoding_is_refused_and_another_locale_is_warned_about() {
    let mut pair = Pair::new("locale").await;
    sql(
        pair.blue(),
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'Zoë')",
    )
    .await;
    let server = pair.green().rsplit_once('/').unwrap().0.to_string();
    let n = std::process::id();
    let finding = |summary: &serde_json::Value, check: &str| {
        summary["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["check"] == check)
            .cloned()
    };

    // Points green at a new database of green's server, created with
    // `options`, and runs preflight on the pair.
    let green_with = async |pair: &mut Pair, name: &str, options: &str| {
        sql(
            &format!("{server}/postgres"),
            &format!("CREATE DATABASE {name}_{n} {options} TEMPLATE template0"),
        )
        .await;
        pair.config.green = format!("{server}/{name}_{n}");
        run(&pair.config, Command::Preflight, Output::Quiet)
            .await
            .unwrap()
    };
    let report = green_with(
        &mut pair,
        "locale_ascii",
        "ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'",
    )
    .await;
    assert_eq!(report.code, 1, "{:#}", report.summary);
    let enc = finding(&report.summary, "encoding").expect("an encoding finding");
    assert_eq!(enc["severity"], "blocker");
    let message = enc["message"].as_str().unwrap();
    assert!(
        message.contains("UTF8") && message.contains("SQL_ASCII"),
        "{message}"
    );
    let err = run(
        &pair.config,
        Command::Clone {
            jobs: 1,
            replace: false,
            verify: false,
        },
        Output::Quiet,
    )
    .await
    .expect_err("a clone into another encoding is refused");
    assert!(
        err.to_string().contains("encoded in UTF8")
            && err.to_string().contains("nothing in green was changed"),
        "{err}"
    );
    let created: i64 = connect(pair.green())
        .await
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
              WHERE n.nspname IN ('public', 'switchyard')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(created, 0, "green was left as it was");

    let report = green_with(
        &mut pair,
        "locale_utf8",
        "ENCODING 'UTF8' LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8'",
    )
    .await;
    assert!(
        finding(&report.summary, "encoding").is_none(),
        "{:#}",
        report.summary
    );
    let collation = finding(&report.summary, "collation").expect("a collation finding");
    assert_eq!(collation["severity"], "warning");
    assert!(
        collation["message"]
            .as_str()
            .unwrap()
            .contains("datcollate"),
        "{collation}"
    );
    let r = run(
        &pair.config,
        Command::Clone {
            jobs: 1,
            replace: false,
            verify: true,
        },
        Output::Quiet,
    )
    .await
    .unwrap();
    assert_eq!(r.code, 0, "{:#}", r.summary);
}

/// The definition of every index and constraint in a database, with what
/// pg_dump carries beside it (clustering, replica identity, comments), and
/// the tables, partitioned tables and materialized views that have no
/// planner statistics although they hold rows.
async fn indexes_and_stats(url: &str) -> (Vec<String>, Vec<String>) {
    let c = connect(url).await;
    let filter = "n.nspname NOT IN ('pg_catalog', 'information_schema', 'switchyard') AND n.nspname NOT LIKE 'pg\\_%'";
    let defs = texts(
        &c,
        &format!(
                "SELECT 'index ' || pg_get_indexdef(i.indexrelid) || ' clustered=' || i.indisclustered \
                        || ' replident=' || i.indisreplident || ' comment=' || coalesce(obj_description(i.indexrelid, 'pg_class'), '') \
                   FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE {filter} \
                 UNION ALL \
                 SELECT 'constraint ' || k.conrelid::regclass || ' ' || k.conname || ' ' || pg_get_constraintdef(k.oid) \
                   FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace \
                  WHERE k.conrelid <> 0 AND {filter} \
                 ORDER BY 1"
        ),
    )
    .await;
    let unanalysed = texts(
        &c,
        &format!(
                "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE c.relkind IN ('r', 'p', 'm') AND {filter} \
                    AND NOT EXISTS (SELECT 1 FROM pg_statistic s WHERE s.starelid = c.oid) \
                  ORDER BY 1"
        ),
    )
    .await;
    (defs, unanalysed)
}

/// A clone builds each table's own indexes and keys as soon as that
/// table's rows are in, while the other tables are still copied, and leaves
/// foreign keys, partitioned indexes and comments to the end; green ends
/// up with exactly blue's indexes and constraints, and every relation with
/// rows has planner statistics, expression indexes included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_are_built_as_each_table_finishes_and_everything_is_analysed() {
    let pair = Pair::new("early_build").await;
    fixture(&pair).await;
    std::env::set_var("SWITCHYARD_CLONE_EARLY_BUILD_BYTES", "0");
    sql(
        pair.blue(),
        "CREATE INDEX customers_lower_name ON customers (lower(name)); \
         ALTER INDEX customers_lower_name ALTER COLUMN 1 SET STATISTICS 500; \
         CREATE INDEX orders_big ON orders (total) WHERE total > 100; \
         CREATE UNIQUE INDEX orders_placed ON orders (placed_at, id); \
         ALTER TABLE orders CLUSTER ON orders_placed; \
         COMMENT ON INDEX order_lines_sku IS 'by sku'; \
         ALTER TABLE customers ADD CONSTRAINT customers_name_mood UNIQUE (name, mood); \
         CREATE TABLE bookings (room int NOT NULL, during tsrange NOT NULL, EXCLUDE USING gist (during WITH &&)); \
         INSERT INTO bookings SELECT g, tsrange(timestamp '2024-01-01' + g * interval '1 hour', timestamp '2024-01-01' + (g + 1) * interval '1 hour') FROM generate_series(1, 200) g; \
         CREATE UNIQUE INDEX bookings_room ON bookings (room); \
         ALTER TABLE bookings REPLICA IDENTITY USING INDEX bookings_room; \
         CREATE INDEX measurements_temp ON measurements (temp); \
         CREATE MATERIALIZED VIEW mood_counts AS SELECT mood, count(*) FROM customers GROUP BY mood;",
    )
    .await;
    let summary = clone(&pair, false).await.expect("clone");
    let tables = summary["clone"]["tables"].as_array().unwrap();
    let built = |name: &str| {
        tables
            .iter()
            .find(|t| t["table"] == name)
            .unwrap_or_else(|| panic!("{name} not in {summary:#}"))["built_with_copy"]
            .as_f64()
    };
    for name in [
        "public.customers",
        "public.orders",
        "public.order_lines",
        "public.bookings",
        "public.measurements_2024",
        "Sales Data.Odd \"Name\"",
    ] {
        assert!(
            built(name).is_some(),
            "{name} built with its copy: {summary:#}"
        );
    }
    // No index of its own: nothing to build early.
    assert_eq!(built("public.events"), None, "{summary:#}");

    let (blue_defs, _) = indexes_and_stats(pair.blue()).await;
    sql(pair.blue(), "ANALYZE").await;
    let (_, blue_unanalysed_after) = indexes_and_stats(pair.blue()).await;
    let (green_defs, green_unanalysed) = indexes_and_stats(pair.green()).await;
    assert_eq!(green_defs, blue_defs);
    assert!(
        blue_defs
            .iter()
            .any(|d| d.contains("orders_placed") && d.contains("clustered=true")),
        "{blue_defs:#?}"
    );
    assert!(
        blue_defs
            .iter()
            .any(|d| d.contains("bookings_room") && d.contains("replident=true")),
        "{blue_defs:#?}"
    );
    assert!(
        blue_defs.iter().any(|d| d.contains("comment=by sku")),
        "{blue_defs:#?}"
    );
    assert_eq!(
        green_unanalysed, blue_unanalysed_after,
        "every relation blue's ANALYZE covers is analysed in green"
    );
    let g = connect(pair.green()).await;
    let expr_stats: i64 = g
        .query_one(
            "SELECT count(*) FROM pg_stats WHERE tablename = 'customers_lower_name'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(expr_stats, 1, "the expression index has statistics");
    let report = verify(&pair).await;
    assert!(report.passed, "{}", report.render());
}
