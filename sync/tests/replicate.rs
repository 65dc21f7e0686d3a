//! Replication stories against two real PostgreSQL clusters: the clone and
//! the stream meet with no gap and no duplicate, a cutover moves the primary
//! and replicates back, a breaking migration is refused, and cleanup leaves
//! nothing behind.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{connect, lock_table, sql, switchyard_objects, texts, Pair};
use switchyard_config::SyncMode;
use switchyard_sync::cutover::{self, SwitchError};
use switchyard_sync::replicate::{self, CatchUp, Direction, ReplicationState};
use switchyard_sync::{clone, migrate, verify, Output};

async fn replicate_pair(test: &str) -> Pair {
    let mut pair = Pair::new(test).await;
    pair.config.mode = SyncMode::Replicate;
    pair
}

/// Migrates green as the rollout does: migrations must keep what blue
/// publishes replicable (`published`).
async fn migrate_under(
    pair: &Pair,
    published: &switchyard_sync::compat::PublishedSchema,
) -> Result<migrate::MigrateReport, switchyard_sync::SyncError> {
    migrate::migrate(
        &pair.config.migrations,
        switchyard_sync::Side::Green,
        pair.green(),
        migrate::MigrateOptions {
            published: Some(published),
            ..Default::default()
        },
    )
    .await
}

async fn count(url: &str, sql: &str) -> i64 {
    connect(url).await.query_one(sql, &[]).await.unwrap().get(0)
}

async fn caught_up(pair: &Pair, dir: Direction) {
    match replicate::wait_caught_up(&pair.config, dir, Duration::from_secs(60))
        .await
        .unwrap()
    {
        CatchUp::CaughtUp { .. } => {}
        other => panic!("replication {} did not catch up: {other:?}", dir.arrow()),
    }
}

/// Inserts into blue's `orders` until stopped; returns the acknowledged ids.
fn writer(url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<i64>> {
    tokio::spawn(async move {
        let c = connect(&url).await;
        let mut ids = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline && ids.len() < 200_000 {
            let id: i64 = c
                .query_one(
                    "INSERT INTO orders (item, qty) VALUES ('w', 1) RETURNING id",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            ids.push(id);
        }
        ids
    })
}

const SCHEMA: &str =
    "CREATE TABLE orders (id bigserial PRIMARY KEY, item text NOT NULL, qty int NOT NULL);
     INSERT INTO orders (item, qty) SELECT 'seed', g FROM generate_series(1, 5000) g;
     CREATE TABLE customers (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text);
     INSERT INTO customers (name) SELECT 'c' || g FROM generate_series(1, 100) g;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_and_after_the_clone_reach_green_exactly_once() {
    let pair = replicate_pair("repl_exact").await;
    sql(pair.blue(), SCHEMA).await;
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(pair.blue().to_string(), stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (report, holder) = clone::clone(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
        2,
        false,
        Output::Quiet,
    )
    .await
    .unwrap();
    assert!(report.slot.is_some(), "replicate mode clones from a slot");
    let v = verify::verify(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
        2,
        Some(&holder.id),
        Output::Quiet,
    )
    .await
    .unwrap();
    assert!(
        v.passed,
        "green equals the clone's snapshot: {}",
        v.render()
    );
    holder.release().await;
    let sub = replicate::subscribe(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
    )
    .await
    .unwrap();
    assert!(!sub.already_running);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Verify while replicating and while blue takes writes: lag is not
    // divergence.
    let v = verify::verify(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
        2,
        None,
        Output::Quiet,
    )
    .await
    .unwrap();
    assert!(v.passed, "verify while replicating: {}", v.render());

    stop.store(true, Ordering::SeqCst);
    let ids = w.await.unwrap();
    assert!(ids.len() > 10, "the writer wrote during the clone");
    caught_up(&pair, Direction::Forward).await;
    let (b, g) = (
        count(pair.blue(), "SELECT count(*) FROM orders").await,
        count(pair.green(), "SELECT count(*) FROM orders").await,
    );
    assert_eq!(b, g, "no gap and no duplicate between copy and stream");
    let green = connect(pair.green()).await;
    let present: i64 = green
        .query_one("SELECT count(*) FROM orders WHERE id = ANY($1)", &[&ids])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        present as usize,
        ids.len(),
        "every acknowledged write is on green"
    );
    let st = replicate::status(&pair.config).await;
    assert_eq!(st.state, ReplicationState::Streaming, "{st:?}");
    assert_eq!(st.direction, Some(Direction::Forward));

    let removed = replicate::cleanup(&pair.config).await.unwrap();
    assert_eq!(removed.removed.len(), 3, "{removed:?}");
    assert!(switchyard_objects(pair.blue()).await.is_empty());
    let left = switchyard_objects(pair.green()).await;
    assert!(left.is_empty(), "{left:?}");
    let again = replicate::cleanup(&pair.config).await.unwrap();
    assert!(again.removed.is_empty(), "cleanup is idempotent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_divergence_on_green_is_named_by_key_while_replicating() {
    let pair = replicate_pair("repl_diverge").await;
    sql(pair.blue(), SCHEMA).await;
    let (_, holder) = clone::clone(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
        2,
        false,
        Output::Quiet,
    )
    .await
    .unwrap();
    holder.release().await;
    replicate::subscribe(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
    )
    .await
    .unwrap();
    caught_up(&pair, Direction::Forward).await;
    // Someone writes on the replica by hand.
    sql(pair.green(), "UPDATE orders SET qty = -1 WHERE id = 42").await;
    let v = verify::verify(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
        2,
        None,
        Output::Quiet,
    )
    .await
    .unwrap();
    assert!(!v.passed, "a divergence must fail verify: {}", v.render());
    let orders = v
        .tables
        .iter()
        .find(|t| t.table == "public.orders")
        .unwrap();
    assert_eq!(orders.differences.len(), 1, "{}", v.render());
    assert_eq!(orders.differences[0].key, "id=42");
    replicate::cleanup(&pair.config).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_moves_the_primary_and_replicates_back_even_to_a_table_that_gained_a_column() {
    let pair = replicate_pair("repl_cutover").await;
    sql(pair.blue(), SCHEMA).await;
    std::fs::write(
        pair.migrations.path().join("V1__add_note.sql"),
        "ALTER TABLE orders ADD COLUMN note text;",
    )
    .unwrap();
    let (_, holder) = clone::clone(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
        2,
        false,
        Output::Quiet,
    )
    .await
    .unwrap();
    holder.release().await;
    let blue = connect(pair.blue()).await;
    let published = switchyard_sync::compat::published_schema(
        &blue,
        switchyard_sync::Side::Blue,
        "switchyard_fwd",
    )
    .await
    .unwrap();
    migrate_under(&pair, &published).await.unwrap();
    replicate::subscribe(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
    )
    .await
    .unwrap();
    sql(
        pair.blue(),
        "INSERT INTO orders (item, qty) SELECT 'late', 1 FROM generate_series(1, 50);
                      INSERT INTO customers (name) VALUES ('late')",
    )
    .await;

    let deadline = Instant::now() + Duration::from_secs(10);
    let report = cutover::switch(
        &pair.config,
        Direction::Forward,
        switchyard_sync::CutoverKind::Promote,
        deadline,
    )
    .await
    .unwrap();
    assert_eq!(report.primary, switchyard_sync::Side::Green);
    assert!(report.reverse);
    assert!(
        report
            .not_replicated
            .iter()
            .any(|s| s.contains("public.orders.note")),
        "{:?}",
        report.not_replicated
    );
    cutover::finish(&pair.config, Direction::Forward)
        .await
        .unwrap();
    assert_eq!(
        count(pair.blue(), "SELECT count(*) FROM orders").await,
        count(pair.green(), "SELECT count(*) FROM orders").await
    );
    // Green's sequences continue after blue's: no duplicate keys.
    let green = connect(pair.green()).await;
    let id: i64 = green
        .query_one(
            "INSERT INTO orders (item, qty, note) VALUES ('on green', 7, 'only green has notes') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let blue_max = count(pair.blue(), "SELECT max(id) FROM orders").await;
    assert!(
        id > blue_max - 1,
        "green's sequence is ahead: got {id}, blue max {blue_max}"
    );
    green
        .batch_execute("INSERT INTO customers (name) VALUES ('green customer')")
        .await
        .unwrap();
    caught_up(&pair, Direction::Reverse).await;
    assert_eq!(
        count(
            pair.blue(),
            &format!("SELECT count(*) FROM orders WHERE id = {id} AND qty = 7")
        )
        .await,
        1,
        "a write on green reached blue, on a table that gained a column on green"
    );
    assert_eq!(
        count(
            pair.blue(),
            "SELECT count(*) FROM customers WHERE name = 'green customer'"
        )
        .await,
        1
    );
    let st = replicate::status(&pair.config).await;
    assert_eq!(st.direction, Some(Direction::Reverse), "{st:?}");
    assert_eq!(st.state, ReplicationState::Streaming, "{st:?}");

    // Green is production now: a clone over it (what the next rollout's
    // prepare did) is refused and changes nothing.
    let orders_on_green = count(pair.green(), "SELECT count(*) FROM orders").await;
    let refused = clone::clone(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
        2,
        true,
        Output::Quiet,
    )
    .await;
    let err = refused.err().expect("replacing the primary is refused");
    assert!(
        matches!(err, switchyard_sync::SyncError::TargetIsPrimary { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("Nothing was changed"), "{err}");
    assert!(
        err.to_string()
            .contains("green's database has been the primary since"),
        "the cutover was recorded: {err}"
    );
    assert_eq!(
        count(pair.green(), "SELECT count(*) FROM orders").await,
        orders_on_green
    );
    let st = replicate::status(&pair.config).await;
    assert_eq!(
        (st.direction, st.state),
        (Some(Direction::Reverse), ReplicationState::Streaming),
        "reverse sync survives the refusal: {st:?}"
    );

    // And back: blue becomes the primary again, nothing lost.
    let report = cutover::switch(
        &pair.config,
        Direction::Reverse,
        switchyard_sync::CutoverKind::Rollback,
        Instant::now() + Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(report.primary, switchyard_sync::Side::Blue);
    cutover::finish(&pair.config, Direction::Reverse)
        .await
        .unwrap();
    let id2: i64 = connect(pair.blue())
        .await
        .query_one(
            "INSERT INTO orders (item, qty) VALUES ('blue again', 1) RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(id2 > id, "blue's sequence moved past green's writes");
    // Blue is the primary again: green may be replaced.
    switchyard_sync::primary::primary(&pair.config)
        .await
        .unwrap()
        .refuse_target(switchyard_sync::Side::Green)
        .expect("green is a replica again");
    caught_up(&pair, Direction::Forward).await;
    assert_eq!(
        count(
            pair.green(),
            &format!("SELECT count(*) FROM orders WHERE id = {id2}")
        )
        .await,
        1
    );

    replicate::cleanup(&pair.config).await.unwrap();
    assert!(switchyard_objects(pair.blue()).await.is_empty());
    let left = switchyard_objects(pair.green()).await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_that_cannot_catch_up_in_time_changes_nothing() {
    let pair = replicate_pair("repl_timeout").await;
    sql(pair.blue(), SCHEMA).await;
    let (_, holder) = clone::clone(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
        2,
        false,
        Output::Quiet,
    )
    .await
    .unwrap();
    holder.release().await;
    replicate::subscribe(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
    )
    .await
    .unwrap();
    caught_up(&pair, Direction::Forward).await;
    // Green's apply worker is blocked behind a lock, so it cannot catch up.
    let locker = lock_table(pair.green(), "orders").await;
    sql(
        pair.blue(),
        "INSERT INTO orders (item, qty) VALUES ('stuck', 1)",
    )
    .await;
    let r = cutover::switch(
        &pair.config,
        Direction::Forward,
        switchyard_sync::CutoverKind::Promote,
        Instant::now() + Duration::from_millis(1500),
    )
    .await;
    assert!(matches!(r, Err(SwitchError::Timeout { .. })), "{r:?}");
    let st = replicate::status(&pair.config).await;
    assert_eq!(
        st.direction,
        Some(Direction::Forward),
        "still blue -> green: {st:?}"
    );
    locker.batch_execute("ROLLBACK").await.unwrap();
    caught_up(&pair, Direction::Forward).await;
    assert_eq!(
        count(
            pair.green(),
            "SELECT count(*) FROM orders WHERE item = 'stuck'"
        )
        .await,
        1,
        "replication carries on once the lock is gone"
    );
    assert!(
        switchyard_objects(pair.green())
            .await
            .iter()
            .all(|o| !o.contains("rev")),
        "no reverse object is left behind"
    );
    replicate::cleanup(&pair.config).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_that_renames_a_published_column_is_refused_before_it_commits() {
    let pair = replicate_pair("repl_compat").await;
    sql(pair.blue(), SCHEMA).await;
    let (_, holder) = clone::clone(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
        2,
        false,
        Output::Quiet,
    )
    .await
    .unwrap();
    holder.release().await;
    let dir = pair.migrations.path();
    std::fs::write(
        dir.join("V1__add_nullable.sql"),
        "ALTER TABLE orders ADD COLUMN note text;",
    )
    .unwrap();
    std::fs::write(
        dir.join("V2__rename.sql"),
        "ALTER TABLE orders RENAME COLUMN qty TO quantity;",
    )
    .unwrap();
    let blue = connect(pair.blue()).await;
    let published = switchyard_sync::compat::published_schema(
        &blue,
        switchyard_sync::Side::Blue,
        "switchyard_fwd",
    )
    .await
    .unwrap();
    let e = migrate_under(&pair, &published)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("V2__rename.sql"), "{e}");
    assert!(e.contains("public.orders.qty"), "{e}");
    assert!(e.contains("after cutover"), "{e}");
    // V1 (compatible) was applied; V2 was rolled back and not recorded.
    let green = connect(pair.green()).await;
    let versions = texts(
        &green,
        "SELECT version FROM flyway_schema_history ORDER BY installed_rank",
    )
    .await;
    assert_eq!(versions, vec!["1".to_string()]);
    assert_eq!(count(pair.green(), "SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'qty'").await, 1);

    std::fs::write(
        dir.join("V2__rename.sql"),
        "ALTER TABLE orders ADD COLUMN must text NOT NULL DEFAULT 'x'; ALTER TABLE orders ALTER COLUMN must DROP DEFAULT;",
    )
    .unwrap();
    let e = migrate_under(&pair, &published)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("NOT NULL without a default"), "{e}");
    std::fs::write(
        dir.join("V2__rename.sql"),
        "ALTER TABLE orders ALTER COLUMN qty TYPE text;",
    )
    .unwrap();
    let e = migrate_under(&pair, &published)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("changed type from integer to text"), "{e}");
    replicate::cleanup(&pair.config).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_a_replica_identity_is_never_published() {
    let pair = replicate_pair("repl_noident").await;
    sql(
        pair.blue(),
        "CREATE TABLE keyed (id int PRIMARY KEY); CREATE TABLE loose (v text);",
    )
    .await;
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
    assert!(e.contains("public.loose"), "{e}");
    assert!(e.contains("REPLICA IDENTITY FULL"), "{e}");
    assert!(
        switchyard_objects(pair.blue()).await.is_empty(),
        "nothing created on blue"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_green_cloned_without_a_slot_cannot_be_caught_up_and_says_to_replace_it() {
    let mut pair = Pair::new("repl_noslot").await;
    sql(pair.blue(), SCHEMA).await;
    // Cloned in snapshot mode: no slot holds blue's changes since.
    let (_, holder) = clone::clone(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
        2,
        false,
        Output::Quiet,
    )
    .await
    .unwrap();
    holder.release().await;
    pair.config.mode = SyncMode::Replicate;
    let e = replicate::subscribe(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("cloned without a replication slot"), "{e}");
    assert!(e.contains("clone --replace"), "{e}");
    assert!(
        switchyard_objects(pair.green()).await.is_empty(),
        "nothing was created"
    );
    // The advice works: a replacing clone in replicate mode can be caught up.
    let (_, holder) = clone::clone(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
        2,
        true,
        Output::Quiet,
    )
    .await
    .unwrap();
    holder.release().await;
    replicate::subscribe(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
    )
    .await
    .unwrap();
    sql(
        pair.blue(),
        "INSERT INTO orders (item, qty) VALUES ('after', 1)",
    )
    .await;
    caught_up(&pair, Direction::Forward).await;
    assert_eq!(
        count(
            pair.green(),
            "SELECT count(*) FROM orders WHERE item = 'after'"
        )
        .await,
        1
    );
    replicate::cleanup(&pair.config).await.unwrap();
}

/// `url` with user `role` instead of `postgres` (the clusters trust local
/// connections).
fn as_role(url: &str, role: &str) -> String {
    url.replacen("postgres://postgres@", &format!("postgres://{role}@"), 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_primary_is_fenced_at_cutover_and_a_write_after_the_switch_is_named_by_key() {
    let pair = replicate_pair("repl_fence").await;
    sql(pair.blue(), SCHEMA).await;
    // The application's role, on both servers (roles are the cluster's).
    for url in [pair.blue(), pair.green()] {
        sql(
            url,
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app_fence') \
             THEN CREATE ROLE app_fence LOGIN; END IF; END $$",
        )
        .await;
    }
    sql(
        pair.blue(),
        "GRANT ALL ON orders, customers TO app_fence; GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO app_fence",
    )
    .await;
    let (_, holder) = clone::clone(&pair.config, Direction::Forward, 2, false, Output::Quiet)
        .await
        .unwrap();
    holder.release().await;
    replicate::subscribe(&pair.config, Direction::Forward)
        .await
        .unwrap();
    caught_up(&pair, Direction::Forward).await;

    // A batch job holds a transaction open on blue that has written.
    let job = connect(&as_role(pair.blue(), "app_fence")).await;
    job.batch_execute("BEGIN; INSERT INTO orders (item, qty) VALUES ('job', 1); UPDATE orders SET qty = -1 WHERE id = 1")
        .await
        .unwrap();
    let report = cutover::switch(
        &pair.config,
        Direction::Forward,
        switchyard_sync::CutoverKind::Promote,
        Instant::now() + Duration::from_secs(10),
    )
    .await
    .unwrap();
    let fence = report.fence.expect("the old primary was fenced");
    assert!(fence.roles.contains(&"app_fence".to_string()), "{fence:?}");
    assert!(
        fence
            .ended
            .iter()
            .any(|e| e.contains("app_fence") && e.contains("had written")),
        "the session is named: {fence:?}"
    );
    // Its writes were refused: on neither side, never on blue alone.
    assert!(job.batch_execute("COMMIT").await.is_err());
    for url in [pair.blue(), pair.green()] {
        assert_eq!(
            count(
                url,
                "SELECT count(*) FROM orders WHERE item = 'job' OR qty = -1"
            )
            .await,
            0
        );
    }
    // New sessions of the role are read-only on blue, and write on green.
    let late = connect(&as_role(pair.blue(), "app_fence")).await;
    let e = late
        .batch_execute("INSERT INTO orders (item, qty) VALUES ('late job', 1)")
        .await
        .unwrap_err();
    assert!(
        switchyard_sync::error::pg_message(&e).contains("read-only transaction"),
        "{e:?}"
    );
    connect(&as_role(pair.green(), "app_fence"))
        .await
        .batch_execute("INSERT INTO orders (item, qty) VALUES ('on green', 1)")
        .await
        .unwrap();

    // A superuser (not fenced) writes to blue directly after the switch:
    // the check after the cutover names the row.
    sql(
        pair.blue(),
        "INSERT INTO orders (id, item, qty) VALUES (10000001, 'sneaky', 1)",
    )
    .await;
    let f = cutover::finish(&pair.config, Direction::Forward)
        .await
        .unwrap();
    assert!(f.checked, "{f:?}");
    assert_eq!(f.writes_after, 1, "{f:?}");
    assert_eq!(f.rows, vec!["public.orders id=10000001 insert"], "{f:?}");
    assert!(!f.nothing_lost());
    assert!(f.describe().contains("sync verify"), "{}", f.describe());

    // Back to blue: blue is unfenced, green fenced, and the check finds
    // nothing this time.
    caught_up(&pair, Direction::Reverse).await;
    let back = cutover::switch(
        &pair.config,
        Direction::Reverse,
        switchyard_sync::CutoverKind::Rollback,
        Instant::now() + Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert!(back.unfenced.contains(&"app_fence".to_string()), "{back:?}");
    connect(&as_role(pair.blue(), "app_fence"))
        .await
        .batch_execute("INSERT INTO orders (item, qty) VALUES ('blue again', 1)")
        .await
        .unwrap();
    assert!(connect(&as_role(pair.green(), "app_fence"))
        .await
        .batch_execute("INSERT INTO orders (item, qty) VALUES ('green now read-only', 1)")
        .await
        .is_err());
    let f = cutover::finish(&pair.config, Direction::Reverse)
        .await
        .unwrap();
    assert!(f.nothing_lost(), "{f:?}");
    assert!(f.describe().starts_with("checked:"), "{}", f.describe());
    replicate::cleanup(&pair.config).await.unwrap();
}
