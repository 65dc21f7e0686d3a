//! The demo's users: shoppers placing orders (`POST /orders`, one sticky
//! user each) and browsers (`GET /`, many users), through the proxy. Every
//! acknowledged order id is kept, so the demo can show that none was lost.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the users saw.
#[derive(Default)]
pub struct Tally {
    pub acked: Mutex<Vec<i64>>,
    pub reads: AtomicU64,
    /// Answers with a 5xx, per colour that gave them.
    pub blue_errors: AtomicU64,
    pub green_errors: AtomicU64,
    /// Requests that got no answer at all.
    pub unanswered: AtomicU64,
}

/// Running traffic; stops when dropped.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    pub tally: Arc<Tally>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    /// `writers` shoppers and `readers` browsers, each about 100 requests a
    /// second (light on the CPU, plenty for analysis).
    pub fn start(proxy: SocketAddr, writers: usize, readers: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let mut tasks = Vec::new();
        for i in 0..writers + readers {
            let (stop, tally) = (stop.clone(), tally.clone());
            let write = i < writers;
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Relaxed) {
                    let stream = match tokio::net::TcpStream::connect(proxy).await {
                        Ok(s) => s,
                        Err(_) => {
                            tally.unanswered.fetch_add(1, Relaxed);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let Ok((mut tx, conn)) =
                        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
                    else {
                        continue;
                    };
                    tokio::spawn(conn);
                    while !stop.load(Relaxed) && tx.ready().await.is_ok() {
                        n += 1;
                        let user = if write {
                            format!("session=shopper{i}")
                        } else {
                            format!("session=visitor{}", n % 500)
                        };
                        let req = Request::builder()
                            .method(if write { "POST" } else { "GET" })
                            .uri(if write { "/orders" } else { "/" })
                            .header("host", proxy.to_string())
                            .header("cookie", user)
                            .body(Full::new(Bytes::new()))
                            .expect("a valid request");
                        match tx.send_request(req).await {
                            Ok(resp) => {
                                let status = resp.status();
                                let green =
                                    resp.headers().get("x-colour").is_some_and(|v| v == "green");
                                let body = resp.into_body().collect().await.map(|b| b.to_bytes());
                                if status.is_server_error() {
                                    if green {
                                        tally.green_errors.fetch_add(1, Relaxed);
                                    } else {
                                        tally.blue_errors.fetch_add(1, Relaxed);
                                    }
                                } else if write && status == http::StatusCode::CREATED {
                                    let id = body.ok().and_then(|b| {
                                        String::from_utf8_lossy(&b)
                                            .split_whitespace()
                                            .next()?
                                            .parse()
                                            .ok()
                                    });
                                    if let Some(id) = id.filter(|&id: &i64| id > 0) {
                                        tally.acked.lock().expect("tally").push(id);
                                    }
                                } else {
                                    tally.reads.fetch_add(1, Relaxed);
                                }
                            }
                            Err(_) => {
                                tally.unanswered.fetch_add(1, Relaxed);
                                break;
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }));
        }
        Traffic { stop, tally, tasks }
    }

    /// Stops the users and waits for them.
    pub async fn stop(mut self) -> Arc<Tally> {
        self.stop.store(true, Relaxed);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        self.tally.clone()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}
