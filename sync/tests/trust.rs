//! A green you can trust: each way a green can be incomplete, half built or
//! drifted makes verify fail by name and keeps the gate closed; the clone
//! copies what users expect (materialized views, large objects, owners,
//! grants); it refuses before touching green what it cannot finish; and no
//! password ever shows on a command line.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{connect, sql, Pair};
use switchyard_sync::{clone, gate_status, verify, Command, Output};

static ROLE: AtomicU32 = AtomicU32::new(0);

/// A role name unique to this test run (roles are cluster-wide).
fn role(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        ROLE.fetch_add(1, Ordering::SeqCst)
    )
}

const SCHEMA: &str = "CREATE TABLE accounts (id bigserial PRIMARY KEY, owner text NOT NULL, balance numeric NOT NULL);
     CREATE INDEX accounts_owner ON accounts (owner);
     INSERT INTO accounts (owner, balance) SELECT 'o' || (g % 50), g FROM generate_series(1, 3000) g;
     CREATE TABLE audit (id serial PRIMARY KEY, account bigint REFERENCES accounts, note text);
     CREATE FUNCTION audit_balance() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN INSERT INTO audit (account, note) VALUES (NEW.id, 'changed'); RETURN NEW; END $$;
     CREATE TRIGGER accounts_audit AFTER UPDATE ON accounts FOR EACH ROW EXECUTE FUNCTION audit_balance();
     CREATE MATERIALIZED VIEW owner_totals AS SELECT owner, sum(balance) AS total FROM accounts GROUP BY owner;
     CREATE MATERIALIZED VIEW top_owners AS SELECT owner FROM owner_totals WHERE total > 90000;
     SELECT lo_from_bytea(0, convert_to(repeat('large object ', 200000), 'UTF8'));
     SELECT lo_from_bytea(0, '\\x00ff00ff'::bytea);";

async fn cloned(test: &str) -> Pair {
    let pair = Pair::new(test).await;
    sql(pair.blue(), SCHEMA).await;
    let (_, holder) = clone::clone(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
        2,
        false,
        Output::Quiet,
    )
    .await
    .expect("clone");
    holder.release().await;
    pair
}

async fn verify_now(pair: &Pair) -> verify::VerifyReport {
    verify::verify(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
        2,
        None,
        Output::Quiet,
    )
    .await
    .expect("verify runs")
}

async fn one(url: &str, q: &str) -> i64 {
    connect(url).await.query_one(q, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clone_copies_materialized_views_large_objects_and_verifies_equal() {
    let pair = cloned("trust_complete").await;
    assert_eq!(
        one(pair.green(), "SELECT count(*) FROM top_owners").await,
        one(pair.blue(), "SELECT count(*) FROM top_owners").await,
        "materialized views are refreshed in dependency order"
    );
    assert!(one(pair.green(), "SELECT count(*) FROM owner_totals").await > 0);
    assert_eq!(
        one(pair.green(), "SELECT count(*) FROM pg_largeobject_metadata").await,
        2
    );
    assert_eq!(
        one(
            pair.green(),
            "SELECT sum(length(lo_get(oid)))::int8 FROM pg_largeobject_metadata"
        )
        .await,
        one(
            pair.blue(),
            "SELECT sum(length(lo_get(oid)))::int8 FROM pg_largeobject_metadata"
        )
        .await
    );
    let v = verify_now(&pair).await;
    assert!(v.passed, "{}", v.render());
    assert!(
        v.tables.iter().any(|t| t.table == "public.owner_totals"),
        "materialized view contents are compared: {}",
        v.render()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_drift_fails_verify_by_name_and_closes_the_gate() {
    // Each fault alone, on an otherwise perfect clone.
    let faults: &[(&str, &str)] = &[
        ("ALTER TABLE accounts DROP CONSTRAINT accounts_pkey CASCADE", "constraint public.accounts.accounts_pkey missing on green"),
        ("DROP INDEX accounts_owner", "index public.accounts_owner missing on green"),
        ("DROP TRIGGER accounts_audit ON accounts", "trigger public.accounts.accounts_audit missing on green"),
        ("REFRESH MATERIALIZED VIEW top_owners WITH NO DATA", "materialized view public.top_owners is not populated on green"),
        ("SELECT setval('accounts_id_seq', 5)", "sequence public.accounts_id_seq is behind blue on green"),
        ("SELECT lo_unlink((SELECT min(oid) FROM pg_largeobject_metadata))", "large objects differ"),
        ("ALTER TABLE audit DROP COLUMN note", "column public.audit.note missing on green"),
        ("CREATE TABLE stray (id int)", "table public.stray only on green"),
        ("CREATE OR REPLACE FUNCTION audit_balance() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$", "function public.audit_balance() differs"),
        ("ALTER TABLE accounts ALTER COLUMN owner DROP NOT NULL", "column public.accounts.owner differs"),
    ];
    let pair = cloned("trust_drift").await;
    let v = verify_now(&pair).await;
    assert!(v.passed, "the clone itself is right: {}", v.render());
    for (fault, expected) in faults {
        let pair = cloned("trust_drift").await;
        sql(pair.green(), fault).await;
        let v = verify_now(&pair).await;
        let text = v.render();
        assert!(!v.passed, "{fault}: verify must fail:\n{text}");
        assert!(
            text.contains(expected),
            "{fault}: expected {expected:?} in:\n{text}"
        );
        let gate = gate_status(
            &pair.config,
            switchyard_sync::replication::Direction::Forward,
        )
        .await
        .unwrap();
        assert!(!gate.verified, "{fault}: the gate stays closed: {gate:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_clone_leaves_green_incomplete_and_verify_refuses_it() {
    let pair = Pair::new("trust_interrupt").await;
    sql(pair.blue(), SCHEMA).await;
    sql(
        pair.blue(),
        "CREATE TABLE big (id int PRIMARY KEY, pad text); \
         INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 400000) g;",
    )
    .await;
    let config = pair.config.clone();
    let task = tokio::spawn(async move {
        clone::clone(
            &config,
            switchyard_sync::replication::Direction::Forward,
            1,
            false,
            Output::Quiet,
        )
        .await
    });
    let green = connect(pair.green()).await;
    let mut seen = false;
    for _ in 0..600 {
        let r = green
            .query_opt(
                "SELECT phase FROM switchyard.clones WHERE state = 'running'",
                &[],
            )
            .await;
        if matches!(r, Ok(Some(ref row)) if row.get::<_, Option<String>>(0).as_deref() == Some("copy"))
        {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen, "the clone reached its copy phase");
    task.abort();
    let _ = task.await;
    let v = verify_now(&pair).await;
    assert!(!v.passed);
    assert!(
        v.render().contains("green's last clone is running"),
        "{}",
        v.render()
    );
    let gate = gate_status(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
    )
    .await
    .unwrap();
    assert!(
        !gate.verified && gate.reason.contains("not a copy of blue"),
        "{gate:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_naming_a_role_green_lacks_is_a_preflight_blocker_and_clone_refuses_first() {
    let pair = Pair::new("trust_policy").await;
    let auditor = role("auditor");
    sql(pair.blue(), SCHEMA).await;
    sql(
        pair.blue(),
        &format!(
            "CREATE ROLE {auditor} NOLOGIN; ALTER TABLE audit ENABLE ROW LEVEL SECURITY; \
             CREATE POLICY audit_read ON audit FOR SELECT TO {auditor} USING (true);"
        ),
    )
    .await;
    let report = switchyard_sync::run(&pair.config, Command::Preflight, Output::Quiet)
        .await
        .unwrap();
    assert_eq!(report.code, 1, "{:#}", report.summary);
    let roles = report.summary["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "roles" && f["severity"] == "blocker")
        .unwrap_or_else(|| panic!("no roles blocker: {:#}", report.summary))
        .clone();
    let msg = roles["message"].as_str().unwrap();
    assert!(
        msg.contains(&auditor) && msg.contains("policy public.audit.audit_read"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("CREATE ROLE {auditor} NOLOGIN")),
        "{msg}"
    );
    let e = clone::clone(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
        2,
        false,
        Output::Quiet,
    )
    .await
    .map(drop)
    .expect_err("refused")
    .to_string();
    assert!(
        e.contains(&auditor) && e.contains("Nothing in green was changed"),
        "{e}"
    );
    assert_eq!(
        one(
            pair.green(),
            "SELECT count(*) FROM pg_class WHERE relname = 'accounts'"
        )
        .await,
        0,
        "green untouched"
    );
    // Once the role exists on green, the clone (policy included) goes through.
    let green_postgres = pair.green().rsplit_once('/').unwrap().0.to_string() + "/postgres";
    sql(&green_postgres, &format!("CREATE ROLE {auditor} NOLOGIN")).await;
    let (_, h) = clone::clone(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
        2,
        false,
        Output::Quiet,
    )
    .await
    .expect("clone with the role present");
    h.release().await;
    let v = verify_now(&pair).await;
    assert!(v.passed, "{}", v.render());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_grants_and_default_privileges_survive_a_clone() {
    let pair = Pair::new("trust_grants").await;
    let (reader, owner) = (role("reader"), role("owner"));
    let green_postgres = pair.green().rsplit_once('/').unwrap().0.to_string() + "/postgres";
    for url in [pair.blue().to_string(), green_postgres] {
        let base = url.rsplit_once('/').unwrap().0.to_string() + "/postgres";
        sql(
            &base,
            &format!("CREATE ROLE {reader} NOLOGIN; CREATE ROLE {owner} NOLOGIN"),
        )
        .await;
    }
    sql(pair.blue(), SCHEMA).await;
    sql(
        pair.blue(),
        &format!(
            "ALTER TABLE accounts OWNER TO {owner}; GRANT SELECT ON accounts TO {reader}; \
             ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {reader};"
        ),
    )
    .await;
    let (_, h) = clone::clone(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
        2,
        false,
        Output::Quiet,
    )
    .await
    .expect("clone");
    h.release().await;
    let g = connect(pair.green()).await;
    let (granted, table_owner): (bool, String) = {
        let r = g
            .query_one(
                &format!(
                    "SELECT has_table_privilege('{reader}', 'accounts', 'SELECT'), \
                            pg_get_userbyid(relowner)::text FROM pg_class WHERE relname = 'accounts'"
                ),
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(granted, "the grant survived the clone");
    assert_eq!(table_owner, owner);
    assert_eq!(
        one(pair.green(), "SELECT count(*) FROM pg_default_acl").await,
        1
    );
    let v = verify_now(&pair).await;
    assert!(v.passed, "{}", v.render());
    sql(
        pair.green(),
        &format!("REVOKE SELECT ON accounts FROM {reader}"),
    )
    .await;
    let v = verify_now(&pair).await;
    assert!(!v.passed);
    assert!(
        v.render().contains("grants on public.accounts differ"),
        "{}",
        v.render()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_with_an_unreadable_table_on_blue_leaves_green_untouched() {
    let mut pair = Pair::new("trust_replace").await;
    // The limited role exists on blue's server only: leave grants out.
    pair.config.roles = switchyard_config::RolesMode::Skip;
    let limited = role("limited");
    let blue_postgres = pair.blue().rsplit_once('/').unwrap().0.to_string() + "/postgres";
    sql(&blue_postgres, &format!("CREATE ROLE {limited} LOGIN")).await;
    sql(pair.blue(), SCHEMA).await;
    sql(
        pair.blue(),
        &format!("GRANT SELECT ON accounts TO {limited}; REVOKE ALL ON audit FROM PUBLIC;"),
    )
    .await;
    let (_, h) = clone::clone(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
        2,
        false,
        Output::Quiet,
    )
    .await
    .expect("clone as the owner");
    h.release().await;
    let before = one(pair.green(), "SELECT count(*) FROM accounts").await;
    let mut config = pair.config.clone();
    config.blue = config.blue.replacen("postgres@", &format!("{limited}@"), 1);
    let e = clone::clone(
        &config,
        switchyard_sync::replication::Direction::Forward,
        2,
        true,
        Output::Quiet,
    )
    .await
    .map(drop)
    .expect_err("refused")
    .to_string();
    assert!(e.contains("permission denied"), "{e}");
    assert!(e.contains("nothing in green was changed"), "{e}");
    assert_eq!(
        one(pair.green(), "SELECT count(*) FROM accounts").await,
        before
    );
    let v = verify_now(&pair).await;
    assert!(
        v.passed,
        "green is still the good clone it was: {}",
        v.render()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_ever_appears_on_a_child_process_command_line() {
    let mut pair = Pair::new("trust_secret").await;
    sql(pair.blue(), SCHEMA).await;
    // Many objects, so pg_dump and pg_restore live long enough to be seen.
    let mut ddl = String::new();
    for i in 0..150 {
        ddl.push_str(&format!(
            "CREATE TABLE t{i} (id int PRIMARY KEY, v text); CREATE INDEX t{i}_v ON t{i} (v);"
        ));
    }
    sql(pair.blue(), &ddl).await;
    // Trust authentication ignores the password, but switchyard must still
    // keep it off every command line.
    let secret = "hunter2-s3cr3t";
    pair.config.blue = pair
        .config
        .blue
        .replacen("postgres@", &format!("postgres:{secret}@"), 1);
    pair.config.green = pair
        .config
        .green
        .replacen("postgres@", &format!("postgres:{secret}@"), 1);
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let done = done.clone();
        tokio::task::spawn_blocking(move || {
            let (mut children, mut leaked) = (0, Vec::new());
            while !done.load(Ordering::SeqCst) {
                for e in std::fs::read_dir("/proc").unwrap().flatten() {
                    let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                        continue;
                    };
                    let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                    if cmd.contains("pg_dump") || cmd.contains("pg_restore") {
                        children += 1;
                    }
                    if cmd.contains(secret) {
                        leaked.push(cmd);
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (children, leaked)
        })
    };
    let (_, h) = clone::clone(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
        2,
        false,
        Output::Quiet,
    )
    .await
    .expect("clone");
    h.release().await;
    done.store(true, Ordering::SeqCst);
    let (children, leaked) = watcher.await.unwrap();
    assert!(children > 0, "the watcher saw pg_dump or pg_restore run");
    assert!(leaked.is_empty(), "password on a command line: {leaked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_materialized_view_blue_has_not_refreshed_passes_and_a_wrong_one_still_fails() {
    // Blue's view is stale: its tables changed after its last refresh.
    let pair = Pair::new("trust_stale_mv").await;
    sql(pair.blue(), SCHEMA).await;
    sql(
        pair.blue(),
        "INSERT INTO accounts (owner, balance) SELECT 'late' || g, 100000 + g FROM generate_series(1, 40) g",
    )
    .await;
    let (_, holder) = clone::clone(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
        2,
        false,
        Output::Quiet,
    )
    .await
    .expect("clone");
    holder.release().await;
    // The clone refreshed green's copy: it holds what blue's data gives.
    assert_ne!(
        one(pair.green(), "SELECT count(*) FROM owner_totals").await,
        one(pair.blue(), "SELECT count(*) FROM owner_totals").await,
        "blue's copy is stale, green's is fresh"
    );
    let v = verify_now(&pair).await;
    assert!(v.passed, "{}", v.render());
    let mv = v
        .tables
        .iter()
        .find(|t| t.table == "public.owner_totals")
        .expect("the view is compared");
    assert_eq!(mv.status, "equal");
    assert!(
        mv.note
            .as_deref()
            .unwrap_or("")
            .contains("blue's copy is stale"),
        "the verdict says why: {mv:?}"
    );

    // A green view that matches neither blue's copy nor blue's data fails.
    sql(
        pair.green(),
        "CREATE OR REPLACE FUNCTION public.bump() RETURNS void LANGUAGE sql AS $$ UPDATE accounts SET balance = balance + 1 WHERE id = 1 $$; \
         SELECT public.bump(); REFRESH MATERIALIZED VIEW owner_totals; \
         UPDATE accounts SET balance = balance - 1 WHERE id = 1; DROP FUNCTION public.bump()",
    )
    .await;
    let v = verify_now(&pair).await;
    assert!(!v.passed, "a wrong view fails: {}", v.render());
    let mv = v
        .tables
        .iter()
        .find(|t| t.table == "public.owner_totals")
        .unwrap();
    assert_eq!(mv.status, "differs", "{mv:?}");
    assert!(
        mv.note.as_deref().unwrap_or("").contains("matches neither"),
        "{mv:?}"
    );
}
