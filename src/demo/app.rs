//! The demo's application: a tiny shop, released as blue (v1) and green
//! (v2) and redeployed with each later release (v3 on blue, v4 on green,
//! ...), each reading and writing its own database when one is given.
//! `POST /orders` places an order (201 with its id), `GET /` says who
//! answered and the newest order it can see, `/healthz` is always 200.
//! Green can be told to fail (`--fail-green`).

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use tokio::net::TcpListener;

struct Shop {
    colour: &'static str,
    /// The release this colour runs: `v1`, `v2`, ...
    release: AtomicU32,
    url: Option<String>,
    pool: Vec<tokio::sync::Mutex<Option<tokio_postgres::Client>>>,
    next: AtomicUsize,
    failing: AtomicBool,
    /// Counts requests while failing, to fail every other one.
    failed: AtomicUsize,
}

/// A running release of the shop.
pub struct App {
    pub addr: SocketAddr,
    shop: Arc<Shop>,
    task: tokio::task::JoinHandle<()>,
}

impl App {
    /// Starts release `version` of the `colour` shop on a free port other
    /// than those in `taken` (the proxy's and the admin API's, not bound
    /// yet: the kernel may hand out the same port), using the database at
    /// `url` if any.
    pub async fn start(
        colour: &'static str,
        release: u32,
        url: Option<String>,
        taken: &[SocketAddr],
    ) -> anyhow::Result<App> {
        let mut held = Vec::new();
        let listener = loop {
            let l = TcpListener::bind("127.0.0.1:0").await?;
            let port = l.local_addr()?.port();
            if taken.iter().any(|t| t.port() == port) && held.len() < 16 {
                // Kept open until a port not taken is found.
                held.push(l);
                continue;
            }
            break l;
        };
        drop(held);
        let addr = listener.local_addr()?;
        let shop = Arc::new(Shop {
            colour,
            release: AtomicU32::new(release),
            url,
            pool: (0..4).map(|_| tokio::sync::Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
            failed: AtomicUsize::new(0),
        });
        let s = shop.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shop = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(shop.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(App { addr, shop, task })
    }

    /// From now on, answer every other request with a 500 (a bad release).
    pub fn start_failing(&self) {
        self.shop.failing.store(true, Relaxed);
    }

    /// Deploys release `n` on this colour (the demo's next release).
    pub fn deploy(&self, n: u32) {
        self.shop.release.store(n, Relaxed);
    }
}

impl Shop {
    fn version(&self) -> String {
        format!("v{}", self.release.load(Relaxed))
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shop {
    async fn query<T>(
        &self,
        f: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, String> {
        let url = self.url.as_deref().ok_or("no database")?;
        let i = self.next.fetch_add(1, Relaxed) % self.pool.len();
        let mut slot = self.pool[i].lock().await;
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .map_err(|e| format!("database: {e}"))?;
            tokio::spawn(conn);
            *slot = Some(c);
        }
        f(slot.as_ref().expect("connected"))
            .await
            .map_err(|e| format!("database: {e}"))
    }
}

fn answer(shop: &Shop, status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("x-colour", http::HeaderValue::from_static(shop.colour));
    r.headers_mut().insert(
        "x-version",
        http::HeaderValue::from_str(&shop.version()).expect("a version is ASCII"),
    );
    r
}

async fn handle(
    shop: Arc<Shop>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let (parts, body) = req.into_parts();
    let _ = body.collect().await;
    if parts.uri.path() == "/healthz" {
        return Ok(answer(&shop, StatusCode::OK, "ok\n".into()));
    }
    if shop.failing.load(Relaxed) && shop.failed.fetch_add(1, Relaxed).is_multiple_of(2) {
        return Ok(answer(
            &shop,
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "{} ({}) crashed: a simulated bug\n",
                shop.colour,
                shop.version()
            ),
        ));
    }
    let r = match (parts.method.as_str(), parts.uri.path()) {
        ("POST", "/orders") => {
            let placed = shop
                .query(async |c| {
                    // v2 and later know the column v2's migration added.
                    let sql = if shop.release.load(Relaxed) >= 2 {
                        "INSERT INTO orders (customer_id, total, status) \
                         VALUES (1 + (random() * 1999)::int, round((random() * 100)::numeric, 2), 'placed by v2') RETURNING id"
                    } else {
                        "INSERT INTO orders (customer_id, total) \
                         VALUES (1 + (random() * 1999)::int, round((random() * 100)::numeric, 2)) RETURNING id"
                    };
                    c.query_one(sql, &[]).await.map(|r| r.get::<_, i64>(0))
                })
                .await;
            match placed {
                Ok(id) => answer(&shop, StatusCode::CREATED, format!("{id}\n")),
                Err(e) if shop.url.is_none() => {
                    answer(&shop, StatusCode::CREATED, format!("0 ({e})\n"))
                }
                Err(e) => answer(&shop, StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        ("GET", _) => {
            let newest = shop
                .query(async |c| {
                    c.query_one("SELECT coalesce(max(id), 0) FROM orders", &[])
                        .await
                        .map(|r| r.get::<_, i64>(0))
                })
                .await;
            let tail = match newest {
                Ok(n) => format!(", newest order #{n}"),
                Err(_) if shop.url.is_none() => String::new(),
                Err(e) => {
                    return Ok(answer(
                        &shop,
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("{e}\n"),
                    ))
                }
            };
            answer(
                &shop,
                StatusCode::OK,
                format!("hello from {} ({}){tail}\n", shop.colour, shop.version()),
            )
        }
        _ => answer(&shop, StatusCode::NOT_FOUND, "not found\n".into()),
    };
    Ok(r)
}
