//! A new user runs `switchyard demo` and watches a complete blue-green
//! deployment, database included, in one command: it ends promoted with no
//! write lost (or rolled back with `--fail-green`), refuses a taken port,
//! and leaves nothing behind.

use std::process::Command;

fn free() -> String {
    free_pair().0
}

/// Two different free ports (two listeners held at once, so the kernel
/// cannot hand out the same port twice).
fn free_pair() -> (String, String) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (
        a.local_addr().unwrap().to_string(),
        b.local_addr().unwrap().to_string(),
    )
}

/// Runs the demo with its own TMPDIR; returns (exit code, stdout, stderr, TMPDIR).
fn demo(args: &[&str]) -> (i32, String, String, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    // The demo's PostgreSQL runs as `postgres`, under this folder.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (listen, admin) = free_pair();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("demo")
        .args([
            "--listen",
            &listen,
            "--admin",
            &admin,
            "--step-seconds",
            "1",
        ])
        .args(args)
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        tmp,
    )
}

fn left_behind(tmp: &tempfile::TempDir) -> Vec<String> {
    std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn postgres_running_under(tmp: &tempfile::TempDir) -> bool {
    let dir = tmp.path().display().to_string();
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("bin/postgres") && c.contains(&dir)
            })
            .unwrap_or(false)
    })
}

#[test]
fn the_demo_moves_a_shop_and_its_database_from_blue_to_green_with_no_write_lost() {
    let (code, out, err, tmp) = demo(&["--duration", "40s"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let first_lines: Vec<&str> = out.lines().take(3).collect();
    assert!(
        first_lines.iter().any(|l| l.contains("dashboard  http://")),
        "the dashboard's address comes first: {first_lines:?}"
    );
    for step in [
        "database  preflight done",
        "database  clone done",
        "database  migrate done: applied V1__order_status.sql",
        "database  verify done",
        "database  replicate done",
        "cutover   holding writes",
        "cutover   green takes writes; writes were held",
        "reverse sync now carries green writes back to blue",
        "blue   0 / green 200 of 200 users",
        "all traffic is on green (v2)",
        "no write was lost",
        "serving for",
        "demo finished",
    ] {
        assert!(out.contains(step), "missing {step:?} in:\n{out}");
    }
    let placed: usize = out
        .lines()
        .find_map(|l| {
            l.strip_prefix("users: ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    assert!(placed > 100, "the demo's shoppers placed orders: {out}");
    assert!(
        left_behind(&tmp).is_empty(),
        "left behind: {:?}",
        left_behind(&tmp)
    );
    assert!(
        !postgres_running_under(&tmp),
        "a PostgreSQL server was left running"
    );
}

#[test]
fn with_fail_green_the_demo_shows_the_automatic_rollback() {
    let (code, out, err, tmp) = demo(&["--once", "--fail-green"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("now fails half of its requests"), "{out}");
    assert!(
        out.contains("ROLLBACK  rolled back: candidate error rate"),
        "{out}"
    );
    assert!(
        out.contains("green was rolled back automatically"),
        "the reason is shown: {out}"
    );
    assert!(
        out.contains("in blue's database: no write was lost"),
        "{out}"
    );
    assert!(
        left_behind(&tmp).is_empty(),
        "left behind: {:?}",
        left_behind(&tmp)
    );
}

#[test]
fn a_taken_port_is_refused_with_a_message_before_anything_starts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["demo", "--once", "--listen", &addr, "--admin", &free()])
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&addr) && err.contains("already taken"),
        "{err}"
    );
    assert!(err.contains("--listen"), "says what to change: {err}");
    assert!(left_behind(&tmp).is_empty(), "nothing was started");
}

#[test]
fn without_a_database_the_demo_still_shifts_every_user() {
    let (code, out, err, _tmp) = demo(&["--once", "--no-database"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("blue   0 / green 200 of 200 users"), "{out}");
    assert!(!out.contains("database  clone"), "{out}");
}

#[test]
fn with_three_releases_the_demo_ships_the_cycle_and_every_order_is_on_both_sides() {
    let (code, out, err, tmp) = demo(&["--once", "--releases", "3"]);
    assert_eq!(code, 0, "{out}\n{err}");
    for line in [
        "database  clone done",
        "release 2: v3 is deployed on blue",
        "reused blue's database: a live replica of green's",
        "applied V1__order_status.sql, V2__gift_notes.sql to blue",
        "blue takes writes",
        "release 3: v4 is deployed on green",
        "reused green's database: a live replica of blue's",
        "applied V2__gift_notes.sql, V3__coupons.sql to green",
        "all traffic is on green (v4), now the stable colour, after 3 releases",
        "no write was lost",
        "and, by reverse sync, in blue's database too",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert_eq!(
        out.matches("database  clone done").count(),
        1,
        "only the first release copies: {out}"
    );
    assert!(
        left_behind(&tmp).is_empty(),
        "left behind: {:?}",
        left_behind(&tmp)
    );
}
