//! `switchyard demo`: a complete blue-green deployment on this machine. A
//! small shop (blue v1, green v2) behind the proxy, each release with its
//! own PostgreSQL database when PostgreSQL is installed, shoppers placing
//! orders and visitors browsing the whole time, and a real rollout in
//! replicate mode: preflight, clone, migrate, verify, replicate, the steps
//! to 100%, cutover with the write hold, reverse sync. What happens is
//! printed as it happens; the dashboard's address comes first. At the end
//! the demo checks that every order a shopper was told about is in the
//! database that now takes writes.
//!
//! `--releases N` ships N releases in a row, alternating colours (blue →
//! green → blue → ...), each with its own migration; from the second on,
//! the candidate's database is the live replica reverse sync kept, reused
//! rather than copied. At the end every acknowledged order is checked on
//! the final primary and, by reverse sync, on the other side.
//!
//! `--fail-green` breaks green half-way to show the automatic rollback;
//! `--once` ends when the rollouts do, `--duration` after that long;
//! otherwise it serves until Ctrl-C. Everything it started (apps, clusters,
//! temporary folders) is removed when it ends.

mod app;
mod traffic;

use anyhow::Context;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use switchyard_admin::model::phase::Phase;
use switchyard_admin::wire;
use switchyard_admin::{Event, EventKind};
use switchyard_config::Config;

use crate::cli::DemoArgs;
use app::App;
use traffic::Traffic;

const TOKEN: &str = "demo-token";
const USERS: usize = 200;

pub fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let duration = match &args.duration {
        Some(d) => Some(
            switchyard_config::parse_duration(d)
                .map_err(|e| anyhow::anyhow!("--duration {d:?}: {e}"))?,
        ),
        None => None,
    };
    // Claim the ports before anything starts: a taken port is refused
    // with a message, never silently talked to.
    let listen = match claim(&args.listen, "--listen") {
        Ok(a) => a,
        Err(e) => {
            eprintln!("switchyard demo: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let admin = match claim(&args.admin, "--admin") {
        Ok(a) => a,
        Err(e) => {
            eprintln!("switchyard demo: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let runtime = crate::run::build_runtime(0)?;
    runtime.block_on(run(args, listen, admin, duration))
}

/// Checks that `addr` can be listened on (port 0: picks a free port).
fn claim(addr: &str, flag: &str) -> anyhow::Result<SocketAddr> {
    let a: SocketAddr = addr
        .parse()
        .map_err(|_| anyhow::anyhow!("{flag} {addr:?} is not IP:PORT, e.g. 127.0.0.1:8080"))?;
    match std::net::TcpListener::bind(a) {
        Ok(l) => Ok(l.local_addr()?),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => anyhow::bail!(
            "{a} is already taken by another program: stop it, or pass {flag} 127.0.0.1:<a free port>"
        ),
        Err(e) => anyhow::bail!("cannot listen on {a} ({flag}): {e}"),
    }
}

async fn run(
    args: DemoArgs,
    listen: SocketAddr,
    admin: SocketAddr,
    duration: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("switchyard-demo-")
        .tempdir()
        .context("creating the demo's temporary folder")?;
    println!("switchyard demo");
    println!("  dashboard  http://{admin}/#token={TOKEN}");
    println!("  proxy      http://{listen}/   (try: curl -b session=alice http://{listen}/)");
    println!("  admin API  http://{admin}/api/v1/status  (token: {TOKEN})\n");

    let databases = if args.no_database {
        None
    } else {
        match switchyard_sync::ephemeral::find_bindir() {
            Some(bindir) => Some(Databases::start(bindir, dir.path()).await?),
            None => {
                println!("(no PostgreSQL server found via pg_config: the demo runs without its database part)\n");
                None
            }
        }
    };
    let taken = [listen, admin];
    let blue = App::start(
        "blue",
        1,
        databases.as_ref().map(|d| d.blue_url.clone()),
        &taken,
    )
    .await?;
    let green = App::start(
        "green",
        2,
        databases.as_ref().map(|d| d.green_url.clone()),
        &taken,
    )
    .await?;
    println!(
        "  blue  (v1) shop on {}, green (v2) shop on {}",
        blue.addr, green.addr
    );
    let path = dir.path().join("switchyard.toml");
    let database_toml = databases.as_ref().map(Databases::toml).unwrap_or_default();
    std::fs::write(
        &path,
        format!(
            r#"[proxy]
listen = "{listen}"
sticky = "hash"
sticky_key = "cookie:session"

[pools.blue]
upstreams = ["{b}"]
health = {{ path = "/healthz", interval = "1s" }}

[pools.green]
upstreams = ["{g}"]
health = {{ path = "/healthz", interval = "1s" }}

[admin]
listen = "{admin}"
token = "{TOKEN}"

[state]
path = "state.json"

[rollout]
steps = [5, 25, 50, 100]
bake = "{bake}s"

[rollout.analysis]
window = "5s"
interval = "100ms"
min_requests = 10
max_error_rate = 0.05

[log]
level = "warn"
{database_toml}"#,
            b = blue.addr,
            g = green.addr,
            bake = args.step_seconds,
        ),
    )?;
    println!("  config     {}\n", path.display());
    let config = Config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::run::init_logging(&config);
    let db_config = config.database.clone();
    let server = tokio::spawn({
        let path = path.clone();
        async move { crate::run::serve(config, &path).await }
    });
    if let Err(e) = wait_for(admin, &server).await {
        // Its own reason (a port taken, say) beats "did not start".
        if server.is_finished() {
            if let Ok(Err(why)) = server.await {
                return Err(why.context("switchyard did not start"));
            }
        }
        return Err(e);
    }
    let printer = tokio::spawn(print_events(admin));
    let traffic = Traffic::start(listen, 2, 2);

    let releases = args.releases.clamp(1, 10);
    let mut broke_green = false;
    let mut outcome = None;
    for n in 1..=releases {
        // Release n goes to green when n is odd, to blue when even, as
        // version v(n+1) of the shop.
        let (candidate, app) = if n % 2 == 1 {
            ("green", &green)
        } else {
            ("blue", &blue)
        };
        if n > 1 {
            app.deploy(n + 1);
            if let Some(dbs) = &databases {
                dbs.add_migration(n)?;
            }
            println!(
                "\nrelease {n}: v{} is deployed on {candidate}; switchyard ctl start ships it{}\n",
                n + 1,
                if databases.is_some() {
                    format!(" (its database gets migration V{n}, prepared from the primary)")
                } else {
                    String::new()
                }
            );
        }
        admin_call::<wire::Status>(
            admin,
            "POST",
            "/api/v1/rollout/start",
            &format!(r#"{{"reason": "demo release {n}"}}"#),
        )
        .await?;
        if n == 1 {
            println!("rollout started: green's database is prepared, then the controller raises green step by step while analysis passes\n");
        }
        let ended = follow(
            admin,
            listen,
            &args,
            &green,
            &mut broke_green,
            started,
            duration,
        )
        .await?;
        let promoted = matches!(ended.0, Ending::Ended(Phase::Promoted));
        outcome = Some(ended);
        if !promoted {
            break;
        }
    }
    let outcome = outcome.expect("at least one release");
    let (state, status) = outcome;
    // Let the last events print, and writes land on the new primary.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let tally = traffic.stop().await;
    let acked = tally.acked.lock().expect("tally").clone();
    println!();
    let reason = status.rollout.reason.as_deref().unwrap_or("");
    let mut ok = match state {
        Ending::Ended(Phase::Promoted) if !args.fail_green => {
            let stable = status.rollout.stable;
            let version = if releases == 1 { 2 } else { releases + 1 };
            println!(
                "all traffic is on {} (v{version}), now the stable colour{}.",
                if stable == wire::Colour::Green {
                    "green"
                } else {
                    "blue"
                },
                if releases > 1 {
                    format!(", after {releases} releases")
                } else {
                    String::new()
                }
            );
            true
        }
        Ending::Ended(Phase::Aborted) if args.fail_green => {
            println!("green was rolled back automatically: {reason}");
            true
        }
        Ending::Ended(Phase::Aborted) => {
            println!("the rollout was rolled back: {reason}");
            false
        }
        other => {
            println!(
                "the rollout did not finish ({}): state {}, step {:?}, {reason}",
                match other {
                    Ending::Interrupted => "interrupted",
                    _ => "unfinished",
                },
                status.rollout.state.as_str(),
                status.rollout.step,
            );
            false
        }
    };
    let unanswered = tally.unanswered.load(std::sync::atomic::Ordering::Relaxed);
    let blue_errors = tally.blue_errors.load(std::sync::atomic::Ordering::Relaxed);
    let green_errors = tally
        .green_errors
        .load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "users: {} orders placed, {} pages read, {blue_errors} errors from blue, {green_errors} from green{}, {unanswered} requests unanswered",
        acked.len(),
        tally.reads.load(std::sync::atomic::Ordering::Relaxed),
        if args.fail_green { " (its simulated bug)" } else { "" }
    );
    ok &= unanswered == 0 && blue_errors == 0 && (args.fail_green || green_errors == 0);
    if let (Some(dbs), Some(cfg)) = (&databases, &db_config) {
        let writer = status
            .database
            .as_ref()
            .map_or(wire::Colour::Blue, |d| d.writer);
        let url = if writer == wire::Colour::Green {
            &dbs.green_url
        } else {
            &dbs.blue_url
        };
        let present = count_ids(url, &acked).await?;
        let lost = acked.len() as i64 - present;
        if lost == 0 {
            println!("every one of the {} acknowledged orders is in {writer}'s database: no write was lost", acked.len());
        } else {
            println!(
                "LOST: {lost} of {} acknowledged orders are not in {writer}'s database",
                acked.len()
            );
            ok = false;
        }
        // With reverse sync the other colour's database has them too.
        if cfg.reverse
            && cfg.mode == switchyard_config::SyncMode::Replicate
            && matches!(state, Ending::Ended(Phase::Promoted))
        {
            let (other, other_url) = if writer == wire::Colour::Green {
                ("blue", &dbs.blue_url)
            } else {
                ("green", &dbs.green_url)
            };
            let mut present = 0;
            for _ in 0..150 {
                present = count_ids(other_url, &acked).await?;
                if present == acked.len() as i64 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if present == acked.len() as i64 {
                println!("and, by reverse sync, in {other}'s database too: a rollback would lose nothing");
            } else {
                println!(
                    "MISSING on {other}: {} of {} acknowledged orders did not reach it by reverse sync",
                    acked.len() as i64 - present,
                    acked.len()
                );
                ok = false;
            }
        }
        // Nothing of switchyard's stays in either database.
        if let Ok(r) = switchyard_sync::replication::cleanup(cfg).await {
            if !r.removed.is_empty() {
                println!(
                    "(switchyard sync cleanup removed {} replication objects)",
                    r.removed.len()
                );
            }
        }
    }
    if !args.once && !matches!(state, Ending::Interrupted) {
        match duration {
            Some(d) => {
                let left = d.saturating_sub(started.elapsed());
                if !left.is_zero() {
                    println!(
                        "serving for {} more (--duration)",
                        switchyard_config::format_duration(Duration::from_secs(left.as_secs()))
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(left) => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                }
            }
            None => {
                println!("\nTry, in another terminal:");
                println!("  export SWITCHYARD_ADMIN=http://{admin} SWITCHYARD_TOKEN={TOKEN}");
                println!("  switchyard ctl status        # weights, rollout, analysis, pools");
                println!("  switchyard ctl history       # who did what, when and why");
                println!("serving until Ctrl-C");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    printer.abort();
    server.abort();
    drop((blue, green));
    drop(databases);
    drop(dir);
    println!("demo finished: apps, databases and temporary files removed");
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn count_ids(url: &str, ids: &[i64]) -> anyhow::Result<i64> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client
        .query_one("SELECT count(*) FROM orders WHERE id = ANY($1)", &[&ids])
        .await?
        .get(0))
}

/// Follows one rollout until it ends (or the demo's time is up, or
/// Ctrl-C), printing the traffic at every step; breaks green once it has
/// traffic with `--fail-green`.
async fn follow(
    admin: SocketAddr,
    listen: SocketAddr,
    args: &DemoArgs,
    green: &App,
    broke_green: &mut bool,
    started: Instant,
    duration: Option<Duration>,
) -> anyhow::Result<(Ending, wire::Status)> {
    let mut last = (None, Phase::Idle);
    let deadline = Instant::now() + Duration::from_secs(300 + 10 * args.step_seconds);
    loop {
        let status: wire::Status = admin_call(admin, "GET", "/api/v1/status", "").await?;
        let state = status.rollout.state;
        let step = status.rollout.step;
        if (step, state) != last && state != Phase::Preparing {
            last = (step, state);
            // The bar is the candidate's share (green's in odd releases,
            // blue's in even ones).
            let (name, pct) = if status.rollout.candidate == wire::Colour::Blue {
                ("blue", status.weights.blue)
            } else {
                ("green", status.weights.green)
            };
            let (b, g) = sample(listen).await?;
            let c = if name == "blue" { b } else { g };
            println!(
                "  traffic   {:<11} {name:<5} {pct:>5}%  {}{}  blue {b:>3} / green {g:>3} of {USERS} users",
                "\u{2588}".repeat(c * 30 / USERS),
                "\u{2591}".repeat(30 - c * 30 / USERS),
                state.as_str(),
            );
        }
        if args.fail_green && !*broke_green && step.is_some_and(|s| s >= 1) {
            *broke_green = true;
            green.start_failing();
            println!("  demo      green (v2) now fails half of its requests (--fail-green): watch the automatic rollback");
        }
        if matches!(state, Phase::Promoted | Phase::Aborted) {
            return Ok((Ending::Ended(state), status));
        }
        if Instant::now() > deadline || duration.is_some_and(|d| started.elapsed() > d) {
            return Ok((Ending::Unfinished, status));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = tokio::signal::ctrl_c() => return Ok((Ending::Interrupted, status)),
        }
    }
}

/// Prints every event of the rollout as it happens.
async fn print_events(admin: SocketAddr) -> anyhow::Result<()> {
    let stream = tokio::net::TcpStream::connect(admin).await?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get("/api/v1/events")
        .header("host", admin.to_string())
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::new()))?;
    let mut body = tx.send_request(req).await?.into_body();
    let mut buf = String::new();
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.push_str(&String::from_utf8_lossy(&data));
        while let Some(i) = buf.find("\n\n") {
            let block: String = buf.drain(..i + 2).collect();
            for line in block.lines().filter_map(|l| l.strip_prefix("data:")) {
                if let Ok(e) = serde_json::from_str::<Event>(line.trim()) {
                    if let Some(text) = describe(&e) {
                        println!("{text}");
                    }
                }
            }
        }
    }
    Ok(())
}

/// One line for an event, or `None` for the ones the traffic line shows.
fn describe(e: &Event) -> Option<String> {
    let reason = e.reason.as_deref().unwrap_or("");
    let detail = e.detail.as_ref();
    let primary = detail.and_then(|d| d["primary"].as_str());
    Some(match e.kind {
        EventKind::DatabaseStep | EventKind::DatabaseCleanup => format!("  database  {reason}"),
        EventKind::CutoverStarted => format!("  cutover   {reason}"),
        EventKind::CutoverCompleted if detail.is_some_and(|d| d["reverse"] == true) => format!(
            "  cutover   {reason}; reverse sync now carries {} writes back to {}",
            primary.unwrap_or("the new primary's"),
            if primary == Some("green") {
                "blue"
            } else {
                "green"
            }
        ),
        EventKind::CutoverCompleted => format!("  cutover   {reason}"),
        EventKind::CutoverTimedOut => format!("  cutover   TIMED OUT: {reason}"),
        EventKind::RolledBack => format!("  ROLLBACK  {reason}"),
        EventKind::Paused | EventKind::Aborted | EventKind::Fallback => {
            format!("  rollout   {}: {reason}", e.kind)
        }
        _ => return None,
    })
}

/// How the demo's wait for the rollout ended.
#[derive(Clone, Copy)]
enum Ending {
    /// The rollout reached this final state.
    Ended(Phase),
    /// `--duration` (or the demo's own limit) ran out first.
    Unfinished,
    /// Ctrl-C.
    Interrupted,
}

async fn wait_for(
    addr: SocketAddr,
    server: &tokio::task::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if server.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("switchyard did not start listening on {addr}")
}

async fn send(
    addr: SocketAddr,
    req: Request<Full<Bytes>>,
) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(tx.send_request(req).await?)
}

/// One admin API call with the demo token; returns the JSON answer.
async fn admin_call<T: serde::de::DeserializeOwned>(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<T> {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{admin}{path}"))
        .header("host", admin.to_string())
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .header("x-switchyard-actor", "demo")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let resp = send(admin, req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        status.is_success(),
        "{method} {path} failed: {status} {}",
        String::from_utf8_lossy(&bytes)
    );
    Ok(serde_json::from_slice(&bytes)?)
}

/// Sends one request per demo user and counts the colours that answered.
async fn sample(proxy: SocketAddr) -> anyhow::Result<(usize, usize)> {
    let stream = tokio::net::TcpStream::connect(proxy).await?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let (mut blue, mut green) = (0, 0);
    for user in 0..USERS {
        tx.ready().await?;
        let req = Request::get("/")
            .header("host", proxy.to_string())
            .header("cookie", format!("session=user{user}"))
            .body(Full::new(Bytes::new()))?;
        let resp = tx.send_request(req).await?;
        let is_green = resp.headers().get("x-colour").is_some_and(|v| v == "green");
        resp.into_body().collect().await?;
        if is_green {
            green += 1;
        } else {
            blue += 1;
        }
    }
    Ok((blue, green))
}

/// Each release's migration (expand only, so the older release keeps
/// writing while the newer one's database replicates): V1 for v2, V2 for
/// v3, V3 for v4; later releases add a column of their own.
const MIGRATIONS: [(&str, &str); 3] = [
    (
        "V1__order_status.sql",
        "ALTER TABLE orders ADD COLUMN status text NOT NULL DEFAULT 'placed';\n",
    ),
    (
        "V2__gift_notes.sql",
        "ALTER TABLE orders ADD COLUMN gift_note text;\n",
    ),
    (
        "V3__coupons.sql",
        "CREATE TABLE coupons (code text PRIMARY KEY, percent int NOT NULL CHECK (percent BETWEEN 1 AND 90));\n\
         INSERT INTO coupons VALUES ('WELCOME', 10), ('LOYAL', 15);\n",
    ),
];

/// The demo's own blue and green PostgreSQL clusters (stopped and removed
/// on drop).
struct Databases {
    _blue: switchyard_sync::ephemeral::EphemeralCluster,
    _green: switchyard_sync::ephemeral::EphemeralCluster,
    blue_url: String,
    green_url: String,
    migrations: std::path::PathBuf,
}

impl Databases {
    /// Starts both clusters, seeds blue's "shop" database and writes green's
    /// migration.
    async fn start(bindir: std::path::PathBuf, dir: &std::path::Path) -> anyhow::Result<Databases> {
        use switchyard_sync::ephemeral::EphemeralCluster;
        println!("  starting two throwaway PostgreSQL clusters (blue and green)...");
        let (blue, green) = tokio::task::spawn_blocking(move || {
            Ok::<_, switchyard_sync::ephemeral::EphemeralError>((
                EphemeralCluster::start(&bindir)?,
                EphemeralCluster::start(&bindir)?,
            ))
        })
        .await??;
        let blue_url = blue.create_db("shop").await?;
        let green_url = green.create_db("shop").await?;
        let (client, conn) = tokio_postgres::connect(&blue_url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client
            .batch_execute(
                "CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL);
                 CREATE TABLE orders (id bigserial PRIMARY KEY,
                                      customer_id bigint NOT NULL REFERENCES customers(id),
                                      total numeric(10,2) NOT NULL,
                                      placed_at timestamptz NOT NULL DEFAULT now());
                 INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 2000) g;
                 INSERT INTO orders (customer_id, total)
                   SELECT 1 + g % 2000, (g % 997) / 10.0 FROM generate_series(1, 50000) g;",
            )
            .await
            .context("seeding the demo's blue database")?;
        let migrations = dir.join("migrations");
        std::fs::create_dir_all(&migrations)?;
        // v2's migration: expand only (a column with a default), so blue v1
        // keeps writing while green replicates.
        std::fs::write(migrations.join(MIGRATIONS[0].0), MIGRATIONS[0].1)?;
        Ok(Databases {
            _blue: blue,
            _green: green,
            blue_url,
            green_url,
            migrations,
        })
    }

    /// Writes release `n`'s migration (V`n`).
    fn add_migration(&self, n: u32) -> anyhow::Result<()> {
        let (name, sql) = MIGRATIONS
            .get(n as usize - 1)
            .map(|(f, s)| (f.to_string(), s.to_string()))
            .unwrap_or_else(|| {
                (
                    format!("V{n}__release_{n}_note.sql"),
                    format!("ALTER TABLE orders ADD COLUMN release_{n}_note text;\n"),
                )
            });
        std::fs::write(self.migrations.join(name), sql)?;
        Ok(())
    }

    fn toml(&self) -> String {
        format!(
            "\n[database]\nblue = \"{}\"\ngreen = \"{}\"\nmigrations = \"{}\"\nmode = \"replicate\"\nmax_lag = \"2s\"\nread_your_writes = \"1s\"\n",
            self.blue_url,
            self.green_url,
            self.migrations.display()
        )
    }
}
