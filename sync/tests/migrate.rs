//! Flyway-compatible migrations against a real PostgreSQL cluster.

mod support;

use std::path::Path;
use support::{connect, Pair};
use switchyard_sync::migrate::{self, checksum};
use switchyard_sync::{run, Command, Output, SyncError};

fn write(dir: &Path, name: &str, body: &str) {
    std::fs::write(dir.join(name), body).unwrap();
}

async fn migrate_green(pair: &Pair) -> Result<Vec<String>, SyncError> {
    migrate::migrate(
        &pair.config.migrations,
        switchyard_sync::Side::Green,
        pair.green(),
        migrate::MigrateOptions::default(),
    )
    .await
    .map(|r| r.applied)
}

/// V1, V2 and V10 must run in numeric order (V10 needs V2's column), then the
/// repeatable migration.
fn ordered_set(dir: &Path) {
    write(dir, "V1__create_accounts.sql", "CREATE TABLE accounts (id int PRIMARY KEY);\nCREATE TABLE log (step text);\nINSERT INTO log VALUES ('V1');\n");
    write(
        dir,
        "V2__add_email.sql",
        "ALTER TABLE accounts ADD COLUMN email text;\nINSERT INTO log VALUES ('V2');\n",
    );
    write(dir, "V10__backfill.sql", "INSERT INTO accounts (id, email) VALUES (1, 'a@example.com');\nINSERT INTO log VALUES ('V10');\n");
    write(dir, "R__accounts_view.sql", "CREATE OR REPLACE VIEW account_emails AS SELECT email FROM accounts;\nINSERT INTO log VALUES ('R');\n");
    write(dir, "README.md", "not a migration");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_in_order_once_and_validate() {
    let pair = Pair::new("order").await;
    let dir = pair.migrations.path();
    ordered_set(dir);

    let dry = run(
        &pair.config,
        Command::Migrate { dry_run: true },
        Output::Quiet,
    )
    .await
    .unwrap();
    assert_eq!(dry.summary["applied"].as_array().unwrap().len(), 4);
    let g = connect(pair.green()).await;
    assert!(
        g.query("SELECT 1 FROM accounts", &[]).await.is_err(),
        "dry run changed nothing"
    );

    let applied = migrate_green(&pair).await.expect("migrate");
    assert_eq!(
        applied,
        [
            "V1__create_accounts.sql",
            "V2__add_email.sql",
            "V10__backfill.sql",
            "R__accounts_view.sql"
        ]
    );
    let log: Vec<String> = g
        .query("SELECT step FROM log", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(log, ["V1", "V2", "V10", "R"]);

    // The history table is Flyway's, with Flyway's checksums.
    let rows = g
        .query(
            "SELECT installed_rank, version, description, type, script, checksum, success \
               FROM flyway_schema_history ORDER BY installed_rank",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 4);
    let first = &rows[0];
    assert_eq!(first.get::<_, i32>(0), 1);
    assert_eq!(first.get::<_, Option<String>>(1).as_deref(), Some("1"));
    assert_eq!(first.get::<_, String>(2), "create accounts");
    assert_eq!(first.get::<_, String>(3), "SQL");
    let file = std::fs::read(dir.join("V1__create_accounts.sql")).unwrap();
    assert_eq!(first.get::<_, Option<i32>>(5), Some(checksum(&file)));
    assert!(rows.iter().all(|r| r.get::<_, bool>(6)));
    assert_eq!(
        rows[3].get::<_, Option<String>>(1),
        None,
        "repeatable has no version"
    );

    // Re-running is a no-op.
    assert!(migrate_green(&pair).await.unwrap().is_empty());
    let n: i64 = g
        .query_one("SELECT count(*) FROM log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 4);
    let info = migrate::info(dir, switchyard_sync::Side::Green, pair.green())
        .await
        .unwrap();
    assert!(info.iter().all(|r| r.state == "success"), "{info:?}");
    assert!(
        migrate::validate(dir, switchyard_sync::Side::Green, pair.green())
            .await
            .unwrap()
            .is_empty()
    );

    // A changed repeatable migration runs again; a new version runs.
    write(dir, "R__accounts_view.sql", "CREATE OR REPLACE VIEW account_emails AS SELECT email, id FROM accounts;\nINSERT INTO log VALUES ('R2');\n");
    write(dir, "V11__more.sql", "INSERT INTO log VALUES ('V11');\n");
    assert_eq!(
        migrate_green(&pair).await.unwrap(),
        ["V11__more.sql", "R__accounts_view.sql"]
    );

    // Editing an applied migration fails validate, naming the file; migrate refuses.
    write(
        dir,
        "V2__add_email.sql",
        "ALTER TABLE accounts ADD COLUMN email varchar(100);\nINSERT INTO log VALUES ('V2');\n",
    );
    let problems = migrate::validate(dir, switchyard_sync::Side::Green, pair.green())
        .await
        .unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("V2__add_email.sql") && problems[0].contains("changed"),
        "{problems:?}"
    );
    let report = run(&pair.config, Command::Validate, Output::Quiet)
        .await
        .unwrap();
    assert_eq!(report.code, 1);
    let err = migrate_green(&pair)
        .await
        .expect_err("migrate validates first");
    assert!(err.to_string().contains("V2__add_email.sql"), "{err}");

    // A deleted applied file and an out-of-order new file are named too.
    std::fs::remove_file(dir.join("V2__add_email.sql")).unwrap();
    write(dir, "V3__late.sql", "SELECT 1;\n");
    let problems = migrate::validate(dir, switchyard_sync::Side::Green, pair.green())
        .await
        .unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("V2__add_email.sql") && p.contains("no file")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("V3__late.sql") && p.contains("never applied")),
        "{problems:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crlf_and_lf_files_have_the_same_checksum() {
    let lf = "CREATE TABLE t (\n  id int PRIMARY KEY\n);\n\nINSERT INTO t VALUES (1);\n";
    let crlf = lf.replace('\n', "\r\n");
    assert_eq!(checksum(lf.as_bytes()), checksum(crlf.as_bytes()));
    let bom = format!("\u{feff}{lf}");
    assert_eq!(checksum(lf.as_bytes()), checksum(bom.as_bytes()));

    // Applied from an LF checkout, validated against a CRLF checkout: still valid.
    let pair = Pair::new("crlf").await;
    let dir = pair.migrations.path();
    write(dir, "V1__t.sql", lf);
    migrate_green(&pair).await.unwrap();
    write(dir, "V1__t.sql", &crlf);
    assert!(
        migrate::validate(dir, switchyard_sync::Side::Green, pair.green())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(migrate_green(&pair).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrate_runs_apply_each_migration_once() {
    let pair = Pair::new("concurrent").await;
    let dir = pair.migrations.path();
    write(dir, "V1__counter.sql", "CREATE TABLE runs (script text);\nINSERT INTO runs VALUES ('V1');\nSELECT pg_sleep(0.3);\n");
    write(
        dir,
        "V2__again.sql",
        "INSERT INTO runs VALUES ('V2');\nSELECT pg_sleep(0.3);\n",
    );
    write(dir, "R__r.sql", "INSERT INTO runs VALUES ('R');\n");
    let (a, b) = tokio::join!(migrate_green(&pair), migrate_green(&pair));
    let (a, b) = (a.expect("first runner"), b.expect("second runner"));
    let mut all = [a, b].concat();
    all.sort();
    assert_eq!(all, ["R__r.sql", "V1__counter.sql", "V2__again.sql"]);
    let g = connect(pair.green()).await;
    let runs: Vec<String> = g
        .query("SELECT script FROM runs ORDER BY script", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(runs, ["R", "V1", "V2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_migration_leaves_nothing_and_concurrently_runs_outside_a_transaction() {
    let pair = Pair::new("failing").await;
    let dir = pair.migrations.path();
    write(dir, "V1__base.sql", "CREATE TABLE t (id int);\n");
    write(
        dir,
        "V2__broken.sql",
        "CREATE TABLE half (id int);\nINSERT INTO nowhere VALUES (1);\n",
    );
    let err = migrate_green(&pair).await.expect_err("V2 fails");
    assert!(
        err.to_string().contains("V2__broken.sql") && err.to_string().contains("nowhere"),
        "{err}"
    );
    let g = connect(pair.green()).await;
    assert!(
        g.query("SELECT 1 FROM half", &[]).await.is_err(),
        "V2 was rolled back"
    );
    let info = migrate::info(dir, switchyard_sync::Side::Green, pair.green())
        .await
        .unwrap();
    let states: Vec<(&str, &str)> = info
        .iter()
        .map(|r| (r.script.as_str(), r.state.as_str()))
        .collect();
    assert_eq!(
        states,
        [("V1__base.sql", "success"), ("V2__broken.sql", "pending")]
    );

    write(
        dir,
        "V2__broken.sql",
        "CREATE INDEX CONCURRENTLY t_id ON t (id);\n",
    );
    assert_eq!(migrate_green(&pair).await.unwrap(), ["V2__broken.sql"]);
    let n: i64 = g
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE indexname = 't_id'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

async fn migrate_with(
    pair: &Pair,
    placeholders: &std::collections::BTreeMap<String, String>,
) -> Result<migrate::MigrateReport, SyncError> {
    migrate::migrate(
        &pair.config.migrations,
        switchyard_sync::Side::Green,
        pair.green(),
        migrate::MigrateOptions {
            placeholders: Some(placeholders),
            ..Default::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholders_and_callbacks_work_as_in_flyway() {
    let pair = Pair::new("placeholders").await;
    let dir = pair.migrations.path();
    write(
        dir,
        "V1__tenant.sql",
        "CREATE TABLE ${table_name} (id int, made_by text DEFAULT '${flyway:user}', db text DEFAULT '${flyway:database}');\n",
    );
    write(
        dir,
        "beforeMigrate.sql",
        "CREATE TABLE IF NOT EXISTS cb_log (event text);\nINSERT INTO cb_log VALUES ('before');\n",
    );
    write(
        dir,
        "afterEachMigrate.sql",
        "INSERT INTO cb_log VALUES ('after ' || '${flyway:filename}');\n",
    );
    write(
        dir,
        "afterMigrate__stats.sql",
        "INSERT INTO cb_log VALUES ('after all');\n",
    );
    let mut values = std::collections::BTreeMap::new();
    let e = migrate_with(&pair, &values).await.unwrap_err().to_string();
    assert!(
        e.contains("V1__tenant.sql")
            && e.contains("${table_name}")
            && e.contains("[database.placeholders]"),
        "{e}"
    );
    values.insert("table_name".to_string(), "customers".to_string());
    let r = migrate_with(&pair, &values).await.unwrap();
    assert_eq!(r.applied, ["V1__tenant.sql"]);
    let g = connect(pair.green()).await;
    let (by, db): (String, String) = {
        g.batch_execute("INSERT INTO customers (id) VALUES (1)")
            .await
            .unwrap();
        let row = g
            .query_one("SELECT made_by, db FROM customers", &[])
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(by, "postgres");
    assert!(pair.green().ends_with(&db), "{db}");
    let events: Vec<String> = g
        .query("SELECT event FROM cb_log", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // In a callback, ${flyway:filename} is the callback's own file, as in Flyway.
    assert_eq!(
        events,
        ["before", "after afterEachMigrate.sql", "after all"]
    );
    // The checksum is the file's as written (placeholders unexpanded), as Flyway's.
    let recorded: i32 = g
        .query_one(
            "SELECT checksum FROM flyway_schema_history WHERE version = '1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        recorded,
        checksum(&std::fs::read(dir.join("V1__tenant.sql")).unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_marks_an_existing_schema_and_later_migrations_still_run() {
    let pair = Pair::new("baseline").await;
    let dir = pair.migrations.path();
    // The schema was made by hand before switchyard (or Flyway) was used.
    support::sql(pair.green(), "CREATE TABLE accounts (id int PRIMARY KEY)").await;
    write(
        dir,
        "V1__accounts.sql",
        "CREATE TABLE accounts (id int PRIMARY KEY);\n",
    );
    write(
        dir,
        "V2__email.sql",
        "ALTER TABLE accounts ADD COLUMN email text;\n",
    );
    let r = run(
        &pair.config,
        Command::Baseline {
            version: "1".into(),
            description: "<< Flyway Baseline >>".into(),
        },
        Output::Quiet,
    )
    .await
    .unwrap();
    assert_eq!(r.code, 0);
    assert_eq!(migrate_green(&pair).await.unwrap(), ["V2__email.sql"]);
    let e = run(
        &pair.config,
        Command::Baseline {
            version: "3".into(),
            description: "again".into(),
        },
        Output::Quiet,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("already has 2 rows"), "{e}");
    assert!(
        migrate::validate(dir, switchyard_sync::Side::Green, pair.green())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_migration_outside_a_transaction_names_its_line_and_repair_recovers_it() {
    let pair = Pair::new("repair").await;
    let dir = pair.migrations.path();
    write(dir, "V1__base.sql", "CREATE TABLE t (id int, v text);\n");
    write(
        dir,
        "V2__index.sql",
        "CREATE INDEX CONCURRENTLY t_id ON t (id);\n\n-- the next statement has a typo\nCREATE INDEX CONCURRENTLY t_v ON t (vv);\n",
    );
    let e = migrate_green(&pair).await.unwrap_err().to_string();
    assert!(
        e.contains("V2__index.sql:4"),
        "names the file and line: {e}"
    );
    assert!(
        e.contains("column \"vv\" does not exist"),
        "the server's message: {e}"
    );
    assert!(
        e.contains("statements 1 to 1 (lines 1 to 1) stayed applied"),
        "what was kept: {e}"
    );
    assert!(e.contains("migrate repair"), "what to do: {e}");
    // Validate refuses to go on while the failed row is there.
    let problems = migrate::validate(dir, switchyard_sync::Side::Green, pair.green())
        .await
        .unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("failed earlier") && p.contains("migrate repair")),
        "{problems:?}"
    );
    // The operator undoes what stayed applied, fixes the file, repairs.
    support::sql(pair.green(), "DROP INDEX t_id").await;
    write(
        dir,
        "V2__index.sql",
        "CREATE INDEX CONCURRENTLY t_id ON t (id);\n\n-- fixed\nCREATE INDEX CONCURRENTLY t_v ON t (v);\n",
    );
    // And edits an applied migration's comment on purpose.
    write(
        dir,
        "V1__base.sql",
        "-- the base table\nCREATE TABLE t (id int, v text);\n",
    );
    let r = run(&pair.config, Command::Repair, Output::Quiet)
        .await
        .unwrap();
    assert_eq!(
        r.summary["removed_failed"][0], "V2__index.sql",
        "{:#}",
        r.summary
    );
    assert_eq!(r.summary["realigned"][0], "V1__base.sql", "{:#}", r.summary);
    assert!(
        migrate::validate(dir, switchyard_sync::Side::Green, pair.green())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(migrate_green(&pair).await.unwrap(), ["V2__index.sql"]);
    let again = run(&pair.config, Command::Repair, Output::Quiet)
        .await
        .unwrap();
    assert_eq!(
        again.summary["removed_failed"].as_array().map(Vec::len),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_statement_in_a_transactional_migration_is_named_by_line() {
    let pair = Pair::new("failline").await;
    let dir = pair.migrations.path();
    write(
        dir,
        "V1__three.sql",
        "CREATE TABLE a (id int);\nCREATE TABLE b (id int);\nINSERT INTO b VALUES ('not a number');\n",
    );
    let e = migrate_green(&pair).await.unwrap_err().to_string();
    assert!(e.contains("V1__three.sql:3"), "{e}");
    assert!(e.contains("invalid input syntax for type integer"), "{e}");
    assert!(e.contains("nothing of it was kept"), "{e}");
    let g = connect(pair.green()).await;
    assert!(
        g.query("SELECT 1 FROM a", &[]).await.is_err(),
        "rolled back"
    );
}
