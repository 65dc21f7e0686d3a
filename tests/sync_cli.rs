//! An operator prepares green's database with `switchyard sync`, from the
//! command line, against two real PostgreSQL clusters.

#[path = "../sync/tests/support/mod.rs"]
mod pg;
mod support;

use std::process::Command;
use support::sync;

/// A config for `pair` in snapshot mode (the proxy's upstreams unused).
fn write_snapshot_config(config: &std::path::Path, pair: &pg::Pair) {
    std::fs::write(
        config,
        format!(
            "[pools.blue]\nupstreams = [\"127.0.0.1:9001\"]\n[pools.green]\nupstreams = [\"127.0.0.1:9002\"]\n[admin]\ntoken = \"t\"\n\
             [database]\nblue = \"{}\"\ngreen = \"{}\"\nmode = \"snapshot\"\n",
            pair.blue(),
            pair.green()
        ),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_clone_migrate_verify_from_the_command_line() {
    let pair = pg::Pair::new("cli_story").await;
    pg::sql(
        pair.blue(),
        "CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, balance numeric(12,2));
         INSERT INTO users SELECT g, 'user ' || g, g * 1.5 FROM generate_series(1, 2000) g;
         CREATE TABLE orders (id serial PRIMARY KEY, user_id bigint REFERENCES users(id), total numeric);
         INSERT INTO orders (user_id, total) SELECT (g % 2000) + 1, g FROM generate_series(1, 5000) g;",
    )
    .await;
    std::fs::write(
        pair.migrations.path().join("V1__add_email.sql"),
        "ALTER TABLE users ADD COLUMN email text;\n",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            "[pools.blue]\nupstreams = [\"127.0.0.1:9001\"]\n[pools.green]\nupstreams = [\"127.0.0.1:9002\"]\n[admin]\ntoken = \"t\"\n\
             [database]\nblue = \"{}\"\ngreen = \"{}\"\nmigrations = \"{}\"\nmode = \"snapshot\"\n",
            pair.blue(),
            pair.green(),
            pair.migrations.path().display()
        ),
    )
    .unwrap();

    let r = sync(&config, &["preflight"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("preflight passed"), "{}", r.stdout);

    let r = sync(&config, &["--json", "clone", "--jobs", "2"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let summary: serde_json::Value =
        serde_json::from_str(&r.stdout).expect("clone --json prints JSON");
    assert_eq!(summary["clone"]["rows"], 7000, "{summary}");

    // A second clone into the now non-empty green is refused.
    let r = sync(&config, &["clone"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("--replace"),
        "the refusal says how to proceed: {}",
        r.stderr
    );

    // Verification demands green at the newest migration.
    let r = sync(&config, &["verify"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("switchyard sync migrate"), "{}", r.stdout);

    let r = sync(&config, &["migrate"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("V1") || r.stdout.contains("add email"),
        "{}",
        r.stdout
    );
    let r = sync(&config, &["migrate", "validate"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let r = sync(&config, &["verify"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);

    // Green drifts from blue: verify fails and names the row.
    pg::sql(
        pair.green(),
        "UPDATE users SET name = 'mallory' WHERE id = 1234",
    )
    .await;
    let r = sync(&config, &["verify"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("users") && r.stdout.contains("1234"),
        "{}",
        r.stdout
    );

    // No [database] table: a clear error, exit 2.
    let bare = dir.path().join("bare.toml");
    std::fs::write(
        &bare,
        "[pools.blue]\nupstreams = [\"127.0.0.1:9001\"]\n[pools.green]\nupstreams = [\"127.0.0.1:9002\"]\n[admin]\ntoken = \"t\"\n",
    )
    .unwrap();
    let r = sync(&bare, &["status"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no [database] table"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_session_that_reads_the_primary_is_read_only_and_only_the_targets_may_write() {
    use switchyard_sync::Side;
    let pair = pg::Pair::new("blue_read_only").await;
    let blue = switchyard_sync::pg::connect(Side::Blue, pair.blue())
        .await
        .unwrap();
    let err = blue
        .batch_execute("CREATE TABLE should_not_exist (id int)")
        .await
        .expect_err("a write on blue must be refused");
    assert!(
        switchyard_sync::error::pg_message(&err).contains("read-only transaction"),
        "{err:?}"
    );
    // Reading sessions are read-only on either side; the target's (the
    // candidate's database) may write when opened for that.
    let reader = switchyard_sync::pg::connect(Side::Green, pair.green())
        .await
        .unwrap();
    assert!(reader
        .batch_execute("CREATE TABLE no (id int)")
        .await
        .is_err());
    let green = switchyard_sync::pg::connect_target(Side::Green, pair.green())
        .await
        .unwrap();
    green
        .batch_execute("CREATE TABLE ok (id int)")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn green_pointing_at_blue_is_refused_before_anything_is_written() {
    let pair = pg::Pair::new("same_db").await;
    pg::sql(
        pair.blue(),
        "CREATE TABLE precious (id int PRIMARY KEY); INSERT INTO precious VALUES (1), (2);",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.toml");
    // A different URL for the same database (localhost instead of 127.0.0.1).
    let alias = pair.blue().replace("127.0.0.1", "localhost");
    std::fs::write(
        &config,
        format!(
            "[pools.blue]\nupstreams = [\"127.0.0.1:9001\"]\n[pools.green]\nupstreams = [\"127.0.0.1:9002\"]\n[admin]\ntoken = \"t\"\n\
             [database]\nblue = \"{}\"\ngreen = \"{alias}\"\nmigrations = \"{}\"\nmode = \"snapshot\"\n",
            pair.blue(),
            pair.migrations.path().display()
        ),
    )
    .unwrap();
    for args in [&["clone", "--replace"][..], &["migrate"][..]] {
        let r = sync(&config, args);
        assert_eq!(r.code, 2, "{args:?}: {}{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains("green and blue name the same database"),
            "{}",
            r.stderr
        );
    }
    let blue = pg::connect(pair.blue()).await;
    let n: i64 = blue
        .query_one("SELECT count(*) FROM precious", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "blue's data is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_a_clone_stops_its_programs_removes_its_files_and_marks_green_incomplete() {
    let pair = pg::Pair::new("cli_sigint").await;
    pg::sql(
        pair.blue(),
        "CREATE TABLE big (id int PRIMARY KEY, pad text);
         INSERT INTO big SELECT g, repeat('x', 300) FROM generate_series(1, 600000) g;",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.toml");
    write_snapshot_config(&config, &pair);
    let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["sync", "-c"])
        .arg(&config)
        .args(["clone", "--jobs", "1"])
        .env("TMPDIR", tmp.path())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let green = pg::connect(pair.green()).await;
    let mut copying = false;
    for _ in 0..1000 {
        if let Ok(Some(r)) = green
            .query_opt(
                "SELECT phase FROM switchyard.clones WHERE state = 'running'",
                &[],
            )
            .await
        {
            if r.get::<_, Option<String>>(0).as_deref() == Some("copy") {
                copying = true;
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(copying, "the clone reached its copy phase");
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("clone interrupted by SIGINT"), "{stderr}");
    assert!(
        stderr.contains("clone --replace"),
        "says what to run next: {stderr}"
    );
    let (state, error): (String, Option<String>) = {
        let r = green
            .query_one(
                "SELECT state, error FROM switchyard.clones ORDER BY id DESC LIMIT 1",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(state, "failed");
    assert!(error.unwrap_or_default().contains("SIGINT"));
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    let db = pair.green().rsplit('/').next().unwrap().to_string();
    let programs: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| (c.contains("pg_dump") || c.contains("pg_restore")) && c.contains(&db))
        .collect();
    assert!(
        programs.is_empty(),
        "client programs left running: {programs:?}"
    );
    // The session that ended the others closes as the process exits.
    let sessions = async || -> i64 {
        green
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                   AND application_name LIKE 'switchyard%' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    };
    assert!(
        support::eventually(10, async || sessions().await == 0).await,
        "switchyard's sessions on green were ended: {} left",
        sessions().await
    );
    let r = sync(&config, &["verify"]);
    assert_eq!(
        r.code, 1,
        "verify refuses the incomplete green: {}{}",
        r.stdout, r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_sync_command_ends_its_statements_on_the_server() {
    let pair = pg::Pair::new("cli_kill_9").await;
    pg::sql(
        pair.blue(),
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100);",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.toml");
    write_snapshot_config(&config, &pair);
    let r = sync(&config, &["clone"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);

    // An application holds a lock on green's table; verify waits for it.
    let locker = pg::lock_table(pair.green(), "t").await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["sync", "-c"])
        .arg(&config)
        .arg("verify")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let tag = format!("switchyard-sync-{}", child.id());
    let green = pg::connect(pair.green()).await;
    let sessions = async |waiting: bool| -> i64 {
        green
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
                   AND (NOT $2 OR wait_event_type = 'Lock')",
                &[&tag, &waiting],
            )
            .await
            .unwrap()
            .get(0)
    };
    assert!(
        support::eventually(30, async || sessions(true).await > 0).await,
        "verify waits for the application's lock"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // Its statement ends with it, while the lock is still held: left
    // running, it would go on after the process that owned it is gone.
    assert!(
        support::eventually(10, async || sessions(false).await == 0).await,
        "the killed command's sessions still run on green: {}",
        sessions(false).await
    );
    locker.batch_execute("ROLLBACK").await.unwrap();
}
