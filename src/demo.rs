//! `switchyard demo`: two built-in apps (blue "v1" and green "v2") behind the
//! proxy, and a real rollout driven by the controller (short bakes, live
//! analysis) while a sample of users is sent through and tallied per colour.

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;
use switchyard_config::Config;
use tokio::net::TcpListener;

use crate::cli::DemoArgs;

const TOKEN: &str = "demo-token";
const USERS: usize = 200;

pub fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let runtime = crate::run::build_runtime(0)?;
    runtime.block_on(async move {
        let blue = spawn_app("blue", "v1").await?;
        let green = spawn_app("green", "v2").await?;
        let dir = std::env::temp_dir().join(format!("switchyard-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("switchyard.toml");
        // With PostgreSQL installed, the demo also prepares green's database
        // (clone, migrate, verify) and the rollout waits on it.
        let database = if args.no_database {
            None
        } else {
            match switchyard_sync::ephemeral::find_bindir() {
                Some(bindir) => Some(Databases::start(bindir, &dir).await?),
                None => {
                    println!("(no PostgreSQL server found via pg_config: the demo runs without its database part)\n");
                    None
                }
            }
        };
        let database_toml = database.as_ref().map(Databases::toml).unwrap_or_default();
        let toml = format!(
            r#"[proxy]
listen = "{listen}"
sticky = "hash"
sticky_key = "cookie:session"

[pools.blue]
upstreams = ["{blue}"]
health = {{ path = "/healthz", interval = "1s" }}

[pools.green]
upstreams = ["{green}"]
health = {{ path = "/healthz", interval = "1s" }}

[admin]
listen = "{admin}"
token = "{TOKEN}"

[state]
path = "state.json"

[rollout]
steps = [1, 5, 25, 50, 100]
bake = "{bake}s"

[rollout.analysis]
window = "5s"
interval = "100ms"
min_requests = 10
max_error_rate = 0.05

[log]
level = "warn"
{database_toml}
"#,
            listen = args.listen,
            admin = args.admin,
            bake = args.step_seconds,
        );
        std::fs::write(&path, &toml)?;
        let config = Config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
        crate::run::init_logging(&config);
        let proxy: SocketAddr = config.proxy.listen;
        let admin: SocketAddr = config.admin.listen;
        println!("switchyard demo: blue app on {blue}, green app on {green}");
        println!("  proxy      http://{proxy}/   (try: curl -b session=alice http://{proxy}/)");
        println!("  admin API  http://{admin}/api/v1/status  (token: {TOKEN})");
        println!("  config     {}\n", path.display());
        if let (Some(db), Some(cfg)) = (&database, &config.database) {
            db.prepare(cfg).await?;
        }

        let server = tokio::spawn({
            let path = path.clone();
            async move { crate::run::serve(config, &path).await }
        });
        wait_for(admin).await?;
        // Background traffic without a sticky key, so analysis sees the
        // candidate's share at every step.
        let traffic = tokio::spawn(background_traffic(proxy));
        admin_call(admin, "POST", "/api/v1/rollout/start", "{\"reason\": \"demo\"}").await?;
        println!("rollout started: the controller raises green step by step while analysis passes\n");
        let mut last_step = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120 + 10 * args.step_seconds);
        loop {
            let status = admin_call(admin, "GET", "/api/v1/status", "").await?;
            let state = status["rollout"]["state"].as_str().unwrap_or("?").to_string();
            let step = status["rollout"]["step"].as_u64();
            if step != last_step || state == "promoted" {
                last_step = step;
                let green_pct = status["weights"]["green"].as_f64().unwrap_or(0.0);
                let (b, g) = sample(proxy).await?;
                println!(
                    "{state:<12} green {green_pct:>5}%  {}{}  blue {b:>3} / green {g:>3} of {USERS} users",
                    "\u{2588}".repeat(g * 40 / USERS),
                    "\u{2591}".repeat(40 - g * 40 / USERS),
                );
            }
            match state.as_str() {
                "promoted" => break,
                "aborted" => anyhow::bail!(
                    "the demo rollout was rolled back: {}",
                    status["rollout"]["reason"]
                ),
                _ => {}
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the demo rollout did not finish: {status}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        traffic.abort();
        println!("\nall traffic is on green, now the stable colour.");
        if let Some(db) = &database {
            println!("green's database ({}) was cloned, migrated and verified before any user moved.", db.green_url);
        }
        if args.once {
            return Ok(ExitCode::SUCCESS);
        }
        println!("Try, in another terminal:");
        println!("  export SWITCHYARD_ADMIN=http://{admin} SWITCHYARD_TOKEN={TOKEN}");
        println!("  switchyard ctl status        # weights, rollout, analysis, pools");
        println!("  switchyard ctl history       # who did what, when and why");
        println!("  switchyard ctl start         # the next rollout goes back to blue");
        println!("serving until Ctrl-C");
        server.await.context("demo server panicked")??;
        Ok(ExitCode::SUCCESS)
    })
}

/// A tiny app that says which colour and version it is.
async fn spawn_app(colour: &'static str, version: &'static str) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    let body = if req.uri().path() == "/healthz" {
                        "ok\n".to_string()
                    } else {
                        format!("hello from {colour} ({version})\n")
                    };
                    Ok::<_, std::convert::Infallible>(
                        Response::builder()
                            .header("x-colour", colour)
                            .body(Full::new(Bytes::from(body)))
                            .expect("static response"),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn wait_for(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("switchyard did not start listening on {addr}")
}

async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> anyhow::Result<Response<Incoming>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(tx.send_request(req).await?)
}

/// One admin API call with the demo token; returns the JSON answer.
async fn admin_call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<serde_json::Value> {
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

/// Keyless requests in a loop (weighted at random), until aborted.
async fn background_traffic(proxy: SocketAddr) -> anyhow::Result<()> {
    loop {
        let stream = tokio::net::TcpStream::connect(proxy).await?;
        let (mut tx, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        for _ in 0..10_000 {
            if tx.ready().await.is_err() {
                break;
            }
            let req = Request::get("/")
                .header("host", proxy.to_string())
                .body(Empty::new())?;
            match tx.send_request(req).await {
                Ok(resp) => {
                    let _ = resp.into_body().collect().await;
                }
                Err(_) => break,
            }
            // About 500 requests per second: plenty for analysis, light on CPU.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Sends one request per demo user and counts the colours that answered.
async fn sample(proxy: SocketAddr) -> anyhow::Result<(usize, usize)> {
    let stream = tokio::net::TcpStream::connect(proxy).await?;
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let (mut blue, mut green) = (0, 0);
    for user in 0..USERS {
        tx.ready().await?;
        let req = Request::get("/")
            .header("host", proxy.to_string())
            .header("cookie", format!("session=user{user}"))
            .body(Empty::new())?;
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

/// The demo's own blue and green PostgreSQL clusters (stopped on drop).
struct Databases {
    _blue: switchyard_sync::ephemeral::EphemeralCluster,
    _green: switchyard_sync::ephemeral::EphemeralCluster,
    blue_url: String,
    green_url: String,
    migrations: std::path::PathBuf,
}

impl Databases {
    /// Starts both clusters, seeds blue's "shop" database and writes one
    /// migration for green.
    async fn start(bindir: std::path::PathBuf, dir: &std::path::Path) -> anyhow::Result<Databases> {
        use switchyard_sync::ephemeral::EphemeralCluster;
        println!("starting two throwaway PostgreSQL clusters (blue and green)...");
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
        std::fs::write(
            migrations.join("V1__order_status.sql"),
            "ALTER TABLE orders ADD COLUMN status text NOT NULL DEFAULT 'placed';\n",
        )?;
        Ok(Databases {
            _blue: blue,
            _green: green,
            blue_url,
            green_url,
            migrations,
        })
    }

    fn toml(&self) -> String {
        format!(
            "\n[database]\nblue = \"{}\"\ngreen = \"{}\"\nmigrations = \"{}\"\nmode = \"snapshot\"\n",
            self.blue_url,
            self.green_url,
            self.migrations.display()
        )
    }

    /// Clone, migrate and verify green, as an operator would with
    /// `switchyard sync`.
    async fn prepare(&self, db: &switchyard_config::DatabaseConfig) -> anyhow::Result<()> {
        use switchyard_sync::{Command, Output};
        for (title, cmd) in [
            (
                "switchyard sync clone",
                Command::Clone {
                    jobs: 2,
                    replace: false,
                    verify: false,
                },
            ),
            (
                "switchyard sync migrate",
                Command::Migrate { dry_run: false },
            ),
            ("switchyard sync verify", Command::Verify { jobs: 2 }),
        ] {
            println!("$ {title}");
            let report = switchyard_sync::run(db, cmd, Output::Terminal).await?;
            anyhow::ensure!(
                report.code == 0,
                "{title} found problems: {}",
                report.summary
            );
        }
        println!();
        Ok(())
    }
}
