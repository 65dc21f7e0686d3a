//! A configurable HTTP backend standing in for a blue or green app.
//!
//! Routes: `/` answers its colour; `/healthz` answers 200 or 503 as told;
//! `/echo` streams the request body back; `/bytes/N` streams N bytes;
//! `/headers` lists the request headers it got; `/ws` is a WebSocket echo.
//! Failure and latency can be switched on while it runs.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

#[derive(Default)]
struct State {
    colour: String,
    healthy: AtomicBool,
    /// Per-mille of `/` requests answered 500.
    fail_per_mille: AtomicU32,
    delay_ms: AtomicU64,
    requests: AtomicU64,
    /// Open client connections, and whether the listener still accepts.
    connections: AtomicU64,
    listening: AtomicBool,
}

/// A running backend. Dropping it stops it.
pub struct Backend {
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: watch::Sender<bool>,
}

impl Backend {
    /// Starts a backend that answers `colour` on `/`.
    pub async fn start(colour: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, colour)
    }

    /// Starts a backend on a given address (to bring a "dead" one back).
    pub async fn start_on(addr: SocketAddr, colour: &str) -> Backend {
        let listener = TcpListener::bind(addr).await.unwrap();
        Self::serve(listener, colour)
    }

    fn serve(listener: TcpListener, colour: &str) -> Backend {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            colour: colour.to_string(),
            healthy: AtomicBool::new(true),
            listening: AtomicBool::new(true),
            ..State::default()
        });
        let (stop, mut stopped) = watch::channel(false);
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    _ = stopped.changed() => {
                        drop(listener);
                        st.listening.store(false, SeqCst);
                        return;
                    }
                };
                let st = st.clone();
                let mut stopped = stopped.clone();
                st.connections.fetch_add(1, SeqCst);
                tokio::spawn(async move {
                    let svc = {
                        let st = st.clone();
                        service_fn(move |req| handle(st.clone(), req))
                    };
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades();
                    tokio::select! {
                        _ = conn => {},
                        _ = stopped.changed() => {},
                    }
                    st.connections.fetch_sub(1, SeqCst);
                });
            }
        });
        Backend { addr, state, stop }
    }

    /// Stops accepting and closes every connection: a dead upstream. The
    /// backend's tasks notice asynchronously; use [`Backend::stop`] when the
    /// next step needs it gone.
    pub fn kill(&self) {
        let _ = self.stop.send(true);
    }

    /// Kills the backend and waits until its listener and every one of its
    /// connections are closed.
    pub async fn stop(&self) {
        self.kill();
        let gone = super::eventually(10, async || {
            !self.state.listening.load(SeqCst) && self.state.connections.load(SeqCst) == 0
        })
        .await;
        assert!(gone, "backend {} did not stop", self.addr);
    }

    pub fn set_healthy(&self, v: bool) {
        self.state.healthy.store(v, SeqCst);
    }

    /// Answers this share (0.0..=1.0) of `/` requests with 500.
    pub fn fail(&self, share: f64) {
        self.state
            .fail_per_mille
            .store((share * 1000.0).round() as u32, SeqCst);
    }

    /// Adds this delay before answering `/`.
    pub fn delay(&self, d: Duration) {
        self.state.delay_ms.store(d.as_millis() as u64, SeqCst);
    }

    /// Requests received on `/`.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

async fn handle(st: Arc<State>, mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let resp = |status: StatusCode, body: Body| {
        Response::builder()
            .status(status)
            .header("x-colour", st.colour.as_str())
            .body(body)
            .unwrap()
    };
    if path == "/healthz" {
        return Ok(if st.healthy.load(SeqCst) {
            resp(StatusCode::OK, full("ok"))
        } else {
            resp(StatusCode::SERVICE_UNAVAILABLE, full("down"))
        });
    }
    if path == "/echo" {
        // Stream the request body straight back.
        let body = req.into_body().map_err(|e| Box::new(e) as BoxError).boxed();
        return Ok(resp(StatusCode::OK, body));
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let total: u64 = n.parse().unwrap_or(0);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures_util::stream::unfold(0u64, move |sent| {
            let chunk = chunk.clone();
            async move {
                if sent >= total {
                    return None;
                }
                let n = (total - sent).min(chunk.len() as u64) as usize;
                Some((
                    Ok::<_, BoxError>(Frame::data(chunk.slice(..n))),
                    sent + n as u64,
                ))
            }
        });
        return Ok(resp(
            StatusCode::OK,
            BodyExt::boxed(StreamBody::new(stream)),
        ));
    }
    if path == "/headers" {
        let mut s = String::new();
        for (k, v) in req.headers() {
            s.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
        }
        return Ok(resp(StatusCode::OK, full(s)));
    }
    if path == "/ws" {
        let key = req
            .headers()
            .get("sec-websocket-key")
            .cloned()
            .unwrap_or_else(|| http::HeaderValue::from_static(""));
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                let (mut tx, mut rx) = ws.split();
                while let Some(Ok(msg)) = rx.next().await {
                    if msg.is_text() || msg.is_binary() {
                        if tx.send(msg).await.is_err() {
                            break;
                        }
                    } else if msg.is_close() {
                        break;
                    }
                }
            }
        });
        return Ok(Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-accept", accept)
            .body(full(""))
            .unwrap());
    }
    let n = st.requests.fetch_add(1, SeqCst);
    let delay = st.delay_ms.load(SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let fail = st.fail_per_mille.load(SeqCst) as u64;
    // Deterministic spread: request n fails iff its position in each block
    // of 1000 is below the failure share.
    if fail > 0 && (n * 7919) % 1000 < fail {
        return Ok(resp(
            StatusCode::INTERNAL_SERVER_ERROR,
            full("injected failure"),
        ));
    }
    // Drain any request body.
    let _ = req.into_body().collect().await;
    Ok(resp(StatusCode::OK, full(st.colour.clone())))
}

/// An upstream of raw bytes, for what no well-behaved server does (a
/// response cut off, a close without `Connection: close`): for each
/// connection it reads one request head, then hands the stream to
/// `answer`, which writes what it likes.
pub async fn raw_upstream<F, Fut>(answer: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                answer(s).await;
            });
        }
    });
    addr
}
