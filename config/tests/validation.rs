//! A user writes a config file; switchyard either accepts it or says exactly
//! where and what is wrong.

use switchyard_config::{Config, StickyKey, StickyMode, SyncMode};

const FULL: &str = r#"
[proxy]
listen = "127.0.0.1:8080"
tls = { listen = "127.0.0.1:8443", cert = "cert.pem", key = "key.pem" }
sticky = "hash"
sticky_key = "cookie:session"

[pools.blue]
upstreams = ["127.0.0.1:9001", "127.0.0.1:9003"]
[pools.green]
upstreams = ["127.0.0.1:9002"]
health = { path = "/healthz", interval = "1s" }

[admin]
listen = "127.0.0.1:9090"
token = "${SY_TEST_TOKEN}"

[rollout]
steps = [1, 5, { weight = 25, bake = "1m" }, 50, 100]
bake = "30s"

[rollout.analysis]
window = "10s"
min_requests = 50
max_error_rate = 0.05

[state]
path = "switchyard-state.json"

[database]
blue = "postgres://user@host:5432/app"
green = "postgres://user@host:5433/app"
migrations = "migrations"
mode = "replicate"
max_lag = "1s"
"#;

fn err(text: &str) -> String {
    Config::parse(text, "sy.toml").unwrap_err().to_string()
}

#[test]
fn the_documented_example_parses_with_env_interpolation() {
    std::env::set_var("SY_TEST_TOKEN", "t0ken");
    let c = Config::parse(FULL, "sy.toml").unwrap();
    assert_eq!(c.admin.token, "t0ken");
    assert_eq!(c.proxy.sticky, StickyMode::Hash);
    assert_eq!(c.proxy.sticky_key, StickyKey::Cookie("session".into()));
    assert_eq!(c.pools.blue.upstreams.len(), 2);
    assert_eq!(c.pools.green.health.as_ref().unwrap().fall, 2);
    let steps: Vec<u32> = c.rollout.steps.0.iter().map(|s| s.weight_bp).collect();
    assert_eq!(steps, vec![100, 500, 2500, 5000, 10000]);
    assert_eq!(
        c.rollout.steps.0[2].bake,
        Some(std::time::Duration::from_secs(60))
    );
    assert_eq!(c.database.unwrap().mode, SyncMode::Replicate);
    assert!(
        !format!("{:?}", c.admin).contains("t0ken"),
        "token must not be logged"
    );
}

#[test]
fn unknown_key_is_rejected_with_line_and_column() {
    let e = err("[admin]\ntoken = \"x\"\n[pools.blue]\nupstreams=[\"a:1\"]\n[pools.green]\nupstreams=[\"b:2\"]\n[proxy]\nlisten = \"127.0.0.1:1\"\n  colour = 3\n");
    assert!(e.starts_with("sy.toml:9:3:"), "{e}");
    assert!(e.contains("unknown field `colour`"), "{e}");
}

#[test]
fn bad_values_point_at_the_value() {
    let base = "[admin]\ntoken = \"x\"\n[pools.blue]\nupstreams=[\"a:1\"]\n[pools.green]\nupstreams=[\"b:2\"]\n";
    let e = err(&format!("{base}[rollout]\nbake = \"soon\"\n"));
    assert!(e.starts_with("sy.toml:8:8:"), "{e}");
    assert!(e.contains("duration"), "{e}");

    let e = err(&format!("{base}[rollout]\nsteps = [5, 1]\n"));
    assert!(e.starts_with("sy.toml:8:"), "{e}");
    assert!(e.contains("steps must rise"), "{e}");

    let e = err(&format!("{base}[rollout.analysis]\nmax_error_rate = 5\n"));
    assert!(e.contains("0.0 to 1.0"), "{e}");

    let e = err(&format!("{base}[proxy]\nsticky_key = \"query:x\"\n"));
    assert!(e.contains("cookie:NAME"), "{e}");

    let e = err(&format!("{base}[proxy]\nlisten = \"localhost\"\n"));
    assert!(e.contains("IP:PORT"), "{e}");
}

#[test]
fn missing_or_empty_token_is_an_error() {
    let pools = "[pools.blue]\nupstreams=[\"a:1\"]\n[pools.green]\nupstreams=[\"b:2\"]\n";
    let e = err(&format!("[admin]\ntoken = \"\"\n{pools}"));
    assert!(
        e.starts_with("sy.toml:2:9:") && e.contains("must not be empty"),
        "{e}"
    );
    let e = err(&format!("[admin]\n{pools}"));
    assert!(e.contains("missing field `token`"), "{e}");
    let e = err(&format!(
        "[admin]\ntoken = \"${{SY_SURELY_UNSET_VAR}}\"\n{pools}"
    ));
    assert!(e.contains("SY_SURELY_UNSET_VAR is not set"), "{e}");
}

#[test]
fn upstreams_are_validated() {
    let e = err(
        "[admin]\ntoken=\"x\"\n[pools.blue]\nupstreams=[]\n[pools.green]\nupstreams=[\"b:2\"]\n",
    );
    assert!(
        e.starts_with("sy.toml:4:") && e.contains("at least one upstream"),
        "{e}"
    );
    let e = err("[admin]\ntoken=\"x\"\n[pools.blue]\nupstreams=[\"nope\"]\n[pools.green]\nupstreams=[\"b:2\"]\n");
    assert!(e.contains("HOST:PORT"), "{e}");
}

#[test]
fn load_resolves_paths_next_to_the_file() {
    std::env::set_var("SY_TEST_TOKEN", "t0ken");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sy.toml");
    std::fs::write(&path, FULL).unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(c.state.path, dir.path().join("switchyard-state.json"));
    assert_eq!(c.proxy.tls.unwrap().cert, dir.path().join("cert.pem"));
    let missing = Config::load(&dir.path().join("nope.toml"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("cannot read config file"), "{missing}");
}

#[test]
fn database_keys_are_validated_where_they_are_written() {
    let base = "[admin]\ntoken = \"x\"\n[pools.blue]\nupstreams=[\"a:1\"]\n[pools.green]\nupstreams=[\"b:2\"]\n[database]\nblue = \"postgres://b@h/app\"\ngreen = \"postgres://g@h/app\"\n";
    let c = Config::parse(base, "sy.toml").unwrap();
    let db = c.database.unwrap();
    assert_eq!(db.writes, switchyard_config::WritePolicy::Stable);
    assert!(db.reverse, "reverse sync is on by default");
    assert_eq!(db.read_your_writes, std::time::Duration::ZERO);
    assert_eq!(db.cutover_timeout, std::time::Duration::from_secs(10));

    // The proxy releases held writes after 60 s whatever happens: a cutover
    // may not hold them longer.
    let e = err(&format!("{base}cutover_timeout = \"90s\"\n"));
    assert!(e.starts_with("sy.toml:10:19:"), "{e}");
    assert!(e.contains("releases held writes after 1m"), "{e}");
    let e = err(&format!("{base}writes = \"sometimes\"\n"));
    assert!(e.starts_with("sy.toml:10:"), "{e}");
    assert!(e.contains("stable") && e.contains("weighted"), "{e}");
    let e = err(&format!("{base}blue_from_green = \"mongodb://x\"\n"));
    assert!(e.contains("not a database URL switchyard knows"), "{e}");
    // A MySQL URL parses, but not beside a PostgreSQL blue.
    let e = err(&format!("{base}blue_from_green = \"mysql://x@h/app\"\n"));
    assert!(e.starts_with("sy.toml:10:"), "{e}");
    assert!(
        e.contains("blue_from_green is a MySQL/MariaDB URL but blue is PostgreSQL"),
        "{e}"
    );
    let e = err(&format!("{base}read_your_writes = \"a while\"\n"));
    assert!(e.contains("duration"), "{e}");
    assert_eq!(
        db.stale_clone,
        switchyard_config::StaleClonePolicy::Hold,
        "a stale snapshot holds the gate by default"
    );
    let c = Config::parse(&format!("{base}stale_clone = \"ignore\"\n"), "sy.toml").unwrap();
    assert_eq!(
        c.database.unwrap().stale_clone,
        switchyard_config::StaleClonePolicy::Ignore
    );
    let e = err(&format!("{base}stale_clone = \"sometimes\"\n"));
    assert!(e.starts_with("sy.toml:10:"), "{e}");
    assert!(e.contains("hold") && e.contains("ignore"), "{e}");
    // The fence: every login role by default, a list, or off.
    use switchyard_config::Fence;
    assert_eq!(db.fence, Fence::LoginRoles);
    let fence = |v: &str| {
        Config::parse(&format!("{base}fence = {v}\n"), "sy.toml").map(|c| c.database.unwrap().fence)
    };
    assert_eq!(fence("[]").unwrap(), Fence::LoginRoles);
    assert_eq!(fence("false").unwrap(), Fence::Off);
    assert_eq!(
        fence("[\"app_rw\", \"jobs\"]").unwrap(),
        Fence::Roles(vec!["app_rw".into(), "jobs".into()])
    );
    for bad in ["\"app_rw\"", "[\"\"]", "3"] {
        let e = err(&format!("{base}fence = {bad}\n"));
        assert!(e.starts_with("sy.toml:10:"), "{bad}: {e}");
        assert!(e.contains("fence"), "{bad}: {e}");
    }
}

#[test]
fn mysql_and_mariadb_urls_choose_the_mysql_engine_and_must_match_on_both_sides() {
    use switchyard_config::DatabaseEngine;
    let head = "[admin]\ntoken = \"x\"\n[pools.blue]\nupstreams=[\"a:1\"]\n[pools.green]\nupstreams=[\"b:2\"]\n[database]\n";
    let c = Config::parse(
        &format!("{head}blue = \"mysql://root@h:3306/app\"\ngreen = \"mariadb://root@g/app\"\n"),
        "sy.toml",
    )
    .unwrap();
    assert_eq!(c.database.unwrap().engine(), DatabaseEngine::MySql);
    assert_eq!(
        DatabaseEngine::of("host=/tmp dbname=app"),
        Some(DatabaseEngine::Postgres)
    );
    assert_eq!(DatabaseEngine::of("sqlite://x=1"), None);

    let e = Config::parse(
        &format!("{head}blue = \"mysql://root@h/app\"\ngreen = \"postgres://g@h/app\"\n"),
        "sy.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("sy.toml:9:"), "{e}");
    assert!(
        e.contains("green is a PostgreSQL URL but blue is MySQL/MariaDB"),
        "{e}"
    );
    // One database per side: a server URL without one is refused where it is written.
    let e = Config::parse(
        &format!("{head}blue = \"mysql://root:secret@h:3306\"\ngreen = \"mysql://root@g/app\"\n"),
        "sy.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("sy.toml:8:"), "{e}");
    assert!(e.contains("names no database"), "{e}");
    assert!(!e.contains("secret"), "the password is redacted: {e}");
}

#[test]
fn limits_have_nginx_like_defaults_and_are_validated_where_they_are_written() {
    use std::time::Duration;
    let base = "[admin]\ntoken = \"x\"\n[pools.blue]\nupstreams=[\"a:1\"]\n[pools.green]\nupstreams=[\"b:2\"]\n";
    let c = Config::parse(base, "sy.toml").unwrap();
    let p = &c.proxy;
    assert_eq!(p.header_timeout, Duration::from_secs(10));
    assert_eq!(p.idle_timeout, Duration::from_secs(75));
    assert_eq!(p.body_timeout, Duration::from_secs(60));
    assert_eq!(p.upstream_read_timeout, Duration::from_secs(60));
    assert_eq!(p.max_header_size, 64 * 1024);
    assert_eq!(p.max_body_size, None, "bodies are unlimited by default");
    assert_eq!(p.max_connections, 10_000);
    assert_eq!(p.backlog, 1024);
    assert!(!c.pools.blue.fallback && !c.pools.green.fallback);
    assert!(!c.admin.metrics_addresses);
    assert_eq!(c.admin.max_connections, 1024);

    let c = Config::parse(
        &format!("{base}[proxy]\nheader_timeout = \"2s\"\nmax_header_size = \"16KiB\"\nmax_body_size = \"1MiB\"\nmax_connections = 50\nbacklog = 4096\n"),
        "sy.toml",
    )
    .unwrap();
    assert_eq!(c.proxy.header_timeout, Duration::from_secs(2));
    assert_eq!(c.proxy.max_header_size, 16 * 1024);
    assert_eq!(c.proxy.max_body_size, Some(1 << 20));
    assert_eq!(c.proxy.max_connections, 50);
    assert_eq!(c.proxy.backlog, 4096);
    let c = Config::parse(&format!("{base}[proxy]\nmax_body_size = 1000\n"), "sy.toml").unwrap();
    assert_eq!(c.proxy.max_body_size, Some(1000));

    let e = err(&format!("{base}[proxy]\nmax_body_size = \"lots\"\n"));
    assert!(
        e.starts_with("sy.toml:8:17:") && e.contains("not a size"),
        "{e}"
    );
    let e = err(&format!("{base}[proxy]\nmax_body_size = \"0\"\n"));
    assert!(e.contains("\"\" for unlimited"), "{e}");
    let e = err(&format!("{base}[proxy]\nmax_header_size = \"100\"\n"));
    assert!(e.starts_with("sy.toml:8:19:") && e.contains("8KiB"), "{e}");
    let e = err(&format!("{base}[proxy]\nidle_timeout = \"0\"\n"));
    assert!(
        e.starts_with("sy.toml:8:16:") && e.contains("greater than zero"),
        "{e}"
    );
    let e = err(&format!("{base}[proxy]\nmax_connections = 0\n"));
    assert!(
        e.starts_with("sy.toml:8:19:") && e.contains("from 1"),
        "{e}"
    );
    let e = err(&format!(
        "{base}[proxy]\nupstream_read_timeout = \"soon\"\n"
    ));
    assert!(
        e.starts_with("sy.toml:8:25:") && e.contains("duration"),
        "{e}"
    );
    let e = err(&format!("{base}[proxy]\nbody_timeot = \"1s\"\n"));
    assert!(e.contains("unknown field `body_timeot`"), "{e}");
}

#[test]
fn every_error_in_a_file_is_reported_at_once_with_its_location() {
    let text =
        "[proxy]\nlisten = \"127.0.0.1:8080\"\nsticky = \"sometimes\"\nheader_timeout = \"soon\"\n\
                [pools.blue]\nupstreams = [\"127.0.0.1:9001\"]\n[pools.green]\nupstreams = []\n\
                [admin]\nlisten = \"127.0.0.1:9090\"\ntoken = \"t\"\ncolour = \"red\"\n\
                [rollout]\nbake = \"30s\"\n";
    let errors = Config::parse_all(text, "sy.toml").unwrap_err();
    let text_of: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(errors.len(), 4, "{text_of:#?}");
    assert!(
        text_of[0].starts_with("sy.toml:3:10:") && text_of[0].contains("sometimes"),
        "{text_of:#?}"
    );
    assert!(
        text_of[1].starts_with("sy.toml:4:18:") && text_of[1].contains("duration"),
        "{text_of:#?}"
    );
    assert!(
        text_of[2].starts_with("sy.toml:8:") && text_of[2].contains("at least one upstream"),
        "{text_of:#?}"
    );
    assert!(
        text_of[3].starts_with("sy.toml:12:1:") && text_of[3].contains("unknown field `colour`"),
        "{text_of:#?}"
    );
    // A good file has no errors; a syntax error is the one to fix first.
    assert!(Config::parse_all(FULL.replace("${SY_TEST_TOKEN}", "t").as_str(), "sy.toml").is_ok());
    let e = Config::parse_all("[proxy\nlisten = 1\n", "sy.toml").unwrap_err();
    assert_eq!(e.len(), 1);
}

#[test]
fn two_listeners_on_one_address_are_caught_before_run_time() {
    let text = "[proxy]\nlisten = \"127.0.0.1:8080\"\n[pools.blue]\nupstreams = [\"a:1\"]\n[pools.green]\nupstreams = [\"b:2\"]\n\
                [admin]\nlisten = \"127.0.0.1:8080\"\ntoken = \"t\"\n";
    let e = Config::parse_all(text, "sy.toml").unwrap_err();
    assert_eq!(e.len(), 1);
    let m = e[0].to_string();
    assert!(m.starts_with("sy.toml:8:1:"), "{m}");
    assert!(
        m.contains("[admin] listen") && m.contains("[proxy] listen") && m.contains("own port"),
        "{m}"
    );
}
