//! switchyard's own state under faults: a state directory that turns
//! read-only in the middle of a rollout (a small tmpfs remounted read-only,
//! which stops root too), a second instance started on the same state file
//! or the same databases, and a database switch that commits while the
//! state cannot be written. Nothing is revived, nothing is half recorded,
//! nothing runs twice.

#[path = "support/load.rs"]
mod load;
#[path = "support/orders.rs"]
mod orders;
#[path = "../sync/tests/support/mod.rs"]
mod pg;
mod support;

use http::Method;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{eventually, Backend, Switchyard};

/// A small tmpfs mounted on a fresh directory, unmounted on drop.
struct StateDir {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl StateDir {
    fn mount() -> StateDir {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        std::fs::create_dir(&path).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&path)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs (the tests run as root)");
        StateDir { _dir: dir, path }
    }

    fn read_only(&self, ro: bool) {
        let ok = std::process::Command::new("mount")
            .args(["-o", if ro { "remount,ro" } else { "remount,rw" }])
            .arg(&self.path)
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    fn state_file(&self) -> PathBuf {
        self.path.join("switchyard-state.json")
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// The harness's config with its `[state] path` replaced.
fn with_state(text: &str, path: &Path) -> String {
    text.replace(
        "path = \"state.json\"",
        &format!("path = \"{}\"", path.display()),
    )
}

fn on_disk(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

async fn state(sy: &Switchyard) -> String {
    sy.status().await["rollout"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_state_directory_holds_the_rollout_and_an_abort_is_refused_not_half_done() {
    let dir = StateDir::mount();
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let state_file = dir.state_file();
    let b = Switchyard::builder()
        .blue(blue.addr)
        .green(green.addr)
        .extra("[rollout]\nsteps = [10, 50, 100]\nbake = \"1s\"\n[rollout.analysis]\nwindow = \"2s\"\ninterval = \"100ms\"\nmin_requests = 5\n");
    let text = with_state(&b.config_text(), &state_file);
    let sy = Switchyard::builder().config(&text).start();
    let _load = load::Load::start(sy.url("/"), 2, 100_000, Duration::from_secs(120));
    let r = sy.admin(Method::POST, "/api/v1/rollout/start", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(eventually(30, async || state(&sy).await == "progressing").await);

    dir.read_only(true);
    // The rollout holds, saying why, instead of "baking: 0s left".
    let held = eventually(15, async || {
        let s = sy.status().await;
        s["rollout"]["holding"]
            .as_str()
            .is_some_and(|h| h.contains("state file cannot be written"))
            && s["rollout"]["unwritten"].is_string()
    })
    .await;
    assert!(held, "{:#}", sy.status().await);
    let weight = sy.status().await["weights"]["green"].clone();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        sy.status().await["weights"]["green"],
        weight,
        "no step is taken while it cannot be recorded"
    );
    // An abort that cannot be recorded is refused, and changes nothing.
    let r = sy.admin(Method::POST, "/api/v1/rollout/abort", "").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("nothing changed"), "{}", r.text());
    assert_eq!(state(&sy).await, "progressing");
    assert_eq!(on_disk(&state_file)["rollout"]["phase"], "progressing");

    // Fixed: the state is written again, and the abort goes through, for good.
    dir.read_only(false);
    assert!(
        eventually(15, async || sy.status().await["rollout"]["unwritten"]
            .is_null())
        .await,
        "{:#}",
        sy.status().await
    );
    let r = sy.admin(Method::POST, "/api/v1/rollout/abort", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(on_disk(&state_file)["rollout"]["phase"], "aborted");
    let sy = sy.restart();
    assert_eq!(state(&sy).await, "aborted", "a restart revives nothing");
    assert_eq!(sy.status().await["weights"]["green"], 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_switchyard_on_the_same_state_file_refuses_to_start_and_names_the_first() {
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("shared-state.json");
    let text = with_state(
        &Switchyard::builder()
            .blue(blue.addr)
            .green(green.addr)
            .config_text(),
        &state_file,
    );
    let first = Switchyard::builder().config(&text).start();
    let second_dir = tempfile::tempdir().unwrap();
    let config = second_dir.path().join("switchyard.toml");
    std::fs::write(&config, &text).unwrap();
    let r = support::run(
        support::switchyard_command()
            .arg("run")
            .arg("-c")
            .arg(&config),
    );
    assert_ne!(r.code, 0, "{}", r.output());
    assert!(
        r.output().contains("in use by another switchyard")
            && r.output().contains(&format!("pid {}", first.pid())),
        "{}",
        r.output()
    );
    // The first one is untouched.
    assert_eq!(first.status().await["rollout"]["state"], "idle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_switchyard_on_the_same_databases_refuses_to_start_and_names_the_first() {
    let pair = pg::Pair::new("two_controllers").await;
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let db = format!(
        "[database]\nblue = \"{}\"\ngreen = \"{}\"\nmigrations = \"{}\"\n",
        pair.blue(),
        pair.green(),
        pair.migrations.path().display()
    );
    let first = Switchyard::builder()
        .blue(blue.addr)
        .green(green.addr)
        .extra(&db)
        .start();
    // Its own state file, its own ports: only the databases are shared.
    let second_dir = tempfile::tempdir().unwrap();
    let config = second_dir.path().join("switchyard.toml");
    let text = with_state(
        &Switchyard::builder()
            .blue(blue.addr)
            .green(green.addr)
            .extra(&db)
            .config_text(),
        &second_dir.path().join("other.json"),
    );
    std::fs::write(&config, text).unwrap();
    let r = support::run(
        support::switchyard_command()
            .arg("run")
            .arg("-c")
            .arg(&config),
    );
    assert_ne!(r.code, 0, "{}", r.output());
    assert!(
        r.output()
            .contains("another switchyard runs rollouts against these databases")
            && r.output().contains(&format!("pid {}", first.pid())),
        "{}",
        r.output()
    );
    drop(first);
    // Once the first is gone the databases are free.
    let r = eventually(15, async || {
        let sy = Switchyard::builder()
            .blue(blue.addr)
            .green(green.addr)
            .extra(&db)
            .start();
        sy.status().await["rollout"]["state"] == "idle"
    })
    .await;
    assert!(r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_switch_that_commits_while_the_state_cannot_be_written_holds_and_abort_stays_a_real_cutover_back(
) {
    let dir = StateDir::mount();
    let pair = pg::Pair::new("state_switch").await;
    pg::sql(pair.blue(), orders::SCHEMA).await;
    let blue = orders::OrdersApp::start("blue", pair.blue()).await;
    let green = orders::OrdersApp::start("green", pair.green()).await;
    let b = Switchyard::builder()
        .blue(blue.addr)
        .green(green.addr)
        .proxy_extra("sticky = \"hash\"\nsticky_key = \"header:x-user\"")
        .extra(&format!(
            "[rollout]\nsteps = [20, 100]\nbake = \"500ms\"\n[rollout.analysis]\nwindow = \"3s\"\ninterval = \"100ms\"\nmin_requests = 5\n\
             [database]\nblue = \"{}\"\ngreen = \"{}\"\nmigrations = \"{}\"\nmode = \"replicate\"\ncutover_timeout = \"6s\"\n",
            pair.blue(),
            pair.green(),
            pair.migrations.path().display()
        ));
    let text = with_state(&b.config_text(), &dir.state_file());
    let sy = Switchyard::builder()
        .config(&text)
        .start_command(|bin, config| {
            let mut c = std::process::Command::new(bin);
            c.arg("run").arg("-c").arg(config);
            c.env("SWITCHYARD_CUTOVER_PAUSE", "sequences:1500");
            c
        });
    let load = orders::OrderLoad::start(sy.proxy, 2, 1, Duration::from_secs(300));
    sy.admin(Method::POST, "/api/v1/rollout/start", "").await;
    assert!(eventually(120, async || state(&sy).await == "progressing").await);
    let r = sy.admin(Method::POST, "/api/v1/rollout/promote", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        eventually(10, async || sy.status().await["database"]["write_gate"]
            ["held"]
            == true)
        .await
    );
    // The state directory goes read-only while the switch is under way.
    dir.read_only(true);
    let switched = eventually(30, async || {
        let s = sy.status().await;
        s["rollout"]["state"] == "promoted"
            && s["database"]["writer"] == "green"
            && s["database"]["write_gate"]["held"] == false
            && s["rollout"]["unwritten"].is_string()
    })
    .await;
    assert!(
        switched,
        "the committed switch holds in memory, said so: {:#}",
        sy.status().await
    );
    // Moving writes back needs a real cutover back, which cannot be
    // recorded now: refused, nothing changed.
    let r = sy.admin(Method::POST, "/api/v1/rollout/abort", "").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(sy.status().await["database"]["writer"], "green");
    let before = load.tally().acked.len();
    assert!(
        eventually(10, async || load.tally().acked.len() > before + 5).await,
        "writes flow to green meanwhile"
    );

    dir.read_only(false);
    assert!(
        eventually(15, async || sy.status().await["rollout"]["unwritten"]
            .is_null())
        .await,
        "{:#}",
        sy.status().await
    );
    assert_eq!(on_disk(&dir.state_file())["rollout"]["phase"], "promoted");
    let r = sy.admin(Method::POST, "/api/v1/rollout/abort", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(eventually(60, async || state(&sy).await == "aborted").await);
    assert_eq!(sy.status().await["database"]["writer"], "blue");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tally = load.stop().await;
    assert!(tally.failures.is_empty(), "{:#?}", tally.failures);
    let ids: Vec<i64> = tally.acked.iter().map(|(i, _)| *i).collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "no id handed out twice");
    let present: i64 = pg::connect(pair.blue())
        .await
        .query_one("SELECT count(*) FROM orders WHERE id = ANY($1)", &[&ids])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        present,
        ids.len() as i64,
        "every acknowledged write is on blue"
    );
    support::sync(&sy.config_path, &["cleanup"]);
}
