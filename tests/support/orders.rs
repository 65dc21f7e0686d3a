//! (Include with `#[path = "support/orders.rs"] mod orders;` next to `mod support;`.)
//!
//! A small real application that uses its own PostgreSQL database, standing
//! in for the blue or green release of a shop: `POST /orders` inserts an
//! order and answers its id (201), `GET /orders/{id}` reads one back,
//! `GET /` answers the colour without touching the database, `/healthz` is
//! always 200. Every answer carries `x-colour`. [`OrderLoad`] sends writes
//! and reads through the proxy and keeps every acknowledged id, so a test can
//! check that no acknowledged write was lost.

#![allow(dead_code)]

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

use crate::support::Client;

/// The table the application uses, on MariaDB.
pub const MYSQL_SCHEMA: &str = "CREATE TABLE orders (id BIGINT AUTO_INCREMENT PRIMARY KEY, item VARCHAR(200) NOT NULL, \
     qty INT NOT NULL DEFAULT 1, created TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB; \
     INSERT INTO orders (item) SELECT CONCAT('seed ', seq) FROM seq_1_to_2000;";

/// The table the application uses.
pub const SCHEMA: &str = "CREATE TABLE orders (id bigserial PRIMARY KEY, item text NOT NULL, \
     qty int NOT NULL DEFAULT 1, created timestamptz NOT NULL DEFAULT now());
     INSERT INTO orders (item) SELECT 'seed ' || g FROM generate_series(1, 2000) g;";

struct App {
    colour: String,
    url: String,
    pool: Vec<tokio::sync::Mutex<Option<tokio_postgres::Client>>>,
    next: AtomicUsize,
    /// Set when the database is MySQL/MariaDB.
    mysql: Option<mysql_async::Pool>,
}

/// The two queries the application makes, on MySQL/MariaDB.
async fn mysql_insert(pool: &mysql_async::Pool, item: &str) -> Result<i64, String> {
    use mysql_async::prelude::Queryable;
    let mut c = pool
        .get_conn()
        .await
        .map_err(|e| format!("database: {e}"))?;
    c.exec_drop("INSERT INTO orders (item) VALUES (?)", (item,))
        .await
        .map_err(|e| format!("insert: {e}"))?;
    Ok(c.last_insert_id().unwrap_or(0) as i64)
}

async fn mysql_select(pool: &mysql_async::Pool, id: i64) -> Result<Option<String>, String> {
    use mysql_async::prelude::Queryable;
    let mut c = pool
        .get_conn()
        .await
        .map_err(|e| format!("database: {e}"))?;
    c.exec_first("SELECT item FROM orders WHERE id = ?", (id,))
        .await
        .map_err(|e| format!("select: {e}"))
}

impl App {
    async fn client(
        &self,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<tokio_postgres::Client>>, String> {
        let i = self.next.fetch_add(1, Relaxed) % self.pool.len();
        let mut slot = self.pool[i].lock().await;
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            let (c, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
                .await
                .map_err(|e| format!("database: {e}"))?;
            tokio::spawn(conn);
            *slot = Some(c);
        }
        Ok(slot)
    }
}

/// A running application instance. Stops when dropped.
pub struct OrdersApp {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl OrdersApp {
    /// Starts the `colour` release, using the database at `url`.
    pub async fn start(colour: &str, url: &str) -> OrdersApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Arc::new(App {
            colour: colour.to_string(),
            url: url.to_string(),
            pool: (0..4).map(|_| tokio::sync::Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            mysql: url.starts_with("mariadb://").then(|| {
                let url = url.replacen("mariadb://", "mysql://", 1);
                mysql_async::Pool::new(mysql_async::Opts::from_url(&url).unwrap())
            }),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let app = app.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(app.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        OrdersApp { addr, task }
    }
}

impl Drop for OrdersApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(app: &App, status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("x-colour", app.colour.parse().unwrap());
    r
}

async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let r = match (parts.method.as_str(), path.as_str()) {
        ("GET", "/healthz") => answer(&app, StatusCode::OK, "ok".into()),
        ("GET", "/") => answer(&app, StatusCode::OK, app.colour.clone()),
        ("POST", "/orders") if app.mysql.is_some() => {
            let item = String::from_utf8_lossy(&body).into_owned();
            match mysql_insert(app.mysql.as_ref().unwrap(), &item).await {
                Ok(id) => answer(&app, StatusCode::CREATED, id.to_string()),
                Err(e) => answer(&app, StatusCode::INTERNAL_SERVER_ERROR, e),
            }
        }
        ("GET", p) if p.starts_with("/orders/") && app.mysql.is_some() => {
            let id: i64 = p["/orders/".len()..].parse().unwrap_or(-1);
            match mysql_select(app.mysql.as_ref().unwrap(), id).await {
                Ok(Some(item)) => answer(&app, StatusCode::OK, item),
                Ok(None) => answer(&app, StatusCode::NOT_FOUND, "no such order".into()),
                Err(e) => answer(&app, StatusCode::INTERNAL_SERVER_ERROR, e),
            }
        }
        ("POST", "/orders") => {
            let item = String::from_utf8_lossy(&body).into_owned();
            match app.client().await {
                Err(e) => answer(&app, StatusCode::INTERNAL_SERVER_ERROR, e),
                Ok(c) => match c
                    .as_ref()
                    .unwrap()
                    .query_one(
                        "INSERT INTO orders (item) VALUES ($1) RETURNING id",
                        &[&item],
                    )
                    .await
                {
                    Ok(row) => answer(&app, StatusCode::CREATED, row.get::<_, i64>(0).to_string()),
                    Err(e) => answer(
                        &app,
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("insert: {e:?}"),
                    ),
                },
            }
        }
        ("GET", p) if p.starts_with("/orders/") => {
            let id: i64 = p["/orders/".len()..].parse().unwrap_or(-1);
            match app.client().await {
                Err(e) => answer(&app, StatusCode::INTERNAL_SERVER_ERROR, e),
                Ok(c) => match c
                    .as_ref()
                    .unwrap()
                    .query_opt("SELECT item FROM orders WHERE id = $1", &[&id])
                    .await
                {
                    Ok(Some(row)) => answer(&app, StatusCode::OK, row.get(0)),
                    Ok(None) => answer(&app, StatusCode::NOT_FOUND, "no such order".into()),
                    Err(e) => answer(
                        &app,
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("select: {e:?}"),
                    ),
                },
            }
        }
        _ => answer(&app, StatusCode::NOT_FOUND, "not found".into()),
    };
    Ok(r)
}

/// What the load saw.
#[derive(Debug, Default, Clone)]
pub struct OrderTally {
    /// Ids of acknowledged writes, with the colour that took them.
    pub acked: Vec<(i64, String)>,
    pub reads_ok: u64,
    /// Every failed request: what was sent and what came back.
    pub failures: Vec<String>,
}

/// Writes (`POST /orders`) and reads (`GET /`) through the proxy from
/// several users (sticky key header `x-user`), bounded in time and count.
pub struct OrderLoad {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<OrderTally>>,
    sent: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl OrderLoad {
    pub fn start(
        proxy: SocketAddr,
        writers: usize,
        readers: usize,
        max_time: Duration,
    ) -> OrderLoad {
        Self::with_pause(proxy, writers, readers, max_time, Duration::from_millis(2))
    }

    /// As [`OrderLoad::start`], each writer pausing `write_pause` between writes.
    pub fn with_pause(
        proxy: SocketAddr,
        writers: usize,
        readers: usize,
        max_time: Duration,
        write_pause: Duration,
    ) -> OrderLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(OrderTally::default()));
        let sent = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + max_time;
        const MAX_REQUESTS: u64 = 400_000;
        let mut tasks = Vec::new();
        for w in 0..writers + readers {
            let (stop, tally, sent) = (stop.clone(), tally.clone(), sent.clone());
            let write = w < writers;
            tasks.push(tokio::spawn(async move {
                let client = Client::new();
                let user = format!("user{w}");
                let mut n = 0u64;
                while !stop.load(Relaxed)
                    && Instant::now() < deadline
                    && sent.fetch_add(1, Relaxed) < MAX_REQUESTS
                {
                    n += 1;
                    let (method, path, body) = if write {
                        (
                            http::Method::POST,
                            "/orders".to_string(),
                            format!("{user} #{n}"),
                        )
                    } else {
                        (http::Method::GET, "/".to_string(), String::new())
                    };
                    let url = format!("http://{proxy}{path}");
                    // Readers are many users (sticky by user), so every colour
                    // sees its share; a writer is one user.
                    let user = if write {
                        user.clone()
                    } else {
                        format!("reader{w}-{}", n % 64)
                    };
                    // Bounded: a request stuck behind a partition is a
                    // failure (never acknowledged), not a hung load.
                    let r = match tokio::time::timeout(
                        Duration::from_secs(10),
                        client.request(
                            method.clone(),
                            &url,
                            &[("x-user", user.as_str())],
                            body.clone(),
                        ),
                    )
                    .await
                    {
                        Ok(r) => r,
                        Err(_) => Err("no answer within 10 s".to_string()),
                    };
                    {
                        let mut t = tally.lock().unwrap();
                        match r {
                            Ok(r) if write && r.status == 201 => {
                                let id: i64 = r.text().trim().parse().unwrap_or(-1);
                                t.acked
                                    .push((id, r.header("x-colour").unwrap_or("?").to_string()));
                            }
                            Ok(r) if !write && r.status == 200 => t.reads_ok += 1,
                            Ok(r) => t.failures.push(format!(
                                "{method} {path} -> {} from {}: {}",
                                r.status,
                                r.header("x-colour").unwrap_or("the proxy"),
                                r.text()
                            )),
                            Err(e) => t.failures.push(format!("{method} {path}: {e}")),
                        }
                    }
                    // Keep the write rate modest and steady (the machine is small).
                    tokio::time::sleep(if write {
                        write_pause
                    } else {
                        Duration::from_millis(5)
                    })
                    .await;
                }
            }));
        }
        OrderLoad {
            stop,
            tally,
            sent,
            tasks,
        }
    }

    /// What was seen so far.
    pub fn tally(&self) -> OrderTally {
        self.tally.lock().unwrap().clone()
    }

    /// Stops and waits for the loops.
    pub async fn stop(mut self) -> OrderTally {
        self.stop.store(true, Relaxed);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        self.tally()
    }
}

impl Drop for OrderLoad {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}
