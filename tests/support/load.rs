//! (Include with `#[path = "support/load.rs"] mod load;` next to `mod support;`.)
//!
//! Steady background load through the proxy, bounded in request count and
//! time, tallying answers per colour (from the backends' `x-colour` header)
//! and status. Requests carry no sticky key, so each is weighted at random:
//! the candidate sees its share of traffic at every step.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::Client;

/// Counters shared by the load tasks.
#[derive(Default)]
pub struct Tally {
    pub sent: AtomicU64,
    pub blue_ok: AtomicU64,
    pub green_ok: AtomicU64,
    pub blue_5xx: AtomicU64,
    pub green_5xx: AtomicU64,
    /// 5xx without a colour (from the proxy itself) and transport errors.
    pub other_failures: AtomicU64,
    /// When the last green 5xx reached a client.
    pub last_green_failure: Mutex<Option<Instant>>,
    /// When the first green 5xx reached a client.
    pub first_green_failure: Mutex<Option<Instant>>,
}

/// A snapshot of a [`Tally`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub sent: u64,
    pub blue_ok: u64,
    pub green_ok: u64,
    pub blue_5xx: u64,
    pub green_5xx: u64,
    pub other_failures: u64,
}

impl Tally {
    pub fn counts(&self) -> Counts {
        Counts {
            sent: self.sent.load(Relaxed),
            blue_ok: self.blue_ok.load(Relaxed),
            green_ok: self.green_ok.load(Relaxed),
            blue_5xx: self.blue_5xx.load(Relaxed),
            green_5xx: self.green_5xx.load(Relaxed),
            other_failures: self.other_failures.load(Relaxed),
        }
    }
}

/// Running load. Stops when dropped, after `max_requests`, or after
/// `max_time`, whichever comes first.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub tally: Arc<Tally>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `concurrency` keep-alive loops sending `GET url`.
    pub fn start(url: String, concurrency: usize, max_requests: u64, max_time: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let deadline = Instant::now() + max_time;
        let tasks = (0..concurrency)
            .map(|_| {
                let (stop, tally, url) = (stop.clone(), tally.clone(), url.clone());
                tokio::spawn(async move {
                    let client = Client::new();
                    while !stop.load(Relaxed) && Instant::now() < deadline {
                        if tally.sent.fetch_add(1, Relaxed) >= max_requests {
                            return;
                        }
                        match client.get(&url).await {
                            Ok(r) => {
                                let colour = r.header("x-colour").unwrap_or("").to_string();
                                let bad = r.status >= 500;
                                match (colour.as_str(), bad) {
                                    ("blue", false) => tally.blue_ok.fetch_add(1, Relaxed),
                                    ("green", false) => tally.green_ok.fetch_add(1, Relaxed),
                                    ("blue", true) => tally.blue_5xx.fetch_add(1, Relaxed),
                                    ("green", true) => {
                                        let now = Instant::now();
                                        *tally.last_green_failure.lock().unwrap() = Some(now);
                                        tally
                                            .first_green_failure
                                            .lock()
                                            .unwrap()
                                            .get_or_insert(now);
                                        tally.green_5xx.fetch_add(1, Relaxed)
                                    }
                                    _ => tally.other_failures.fetch_add(u64::from(bad), Relaxed),
                                };
                            }
                            Err(_) => {
                                tally.other_failures.fetch_add(1, Relaxed);
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Load { stop, tally, tasks }
    }

    pub fn counts(&self) -> Counts {
        self.tally.counts()
    }

    /// Stops the loops and waits for them.
    pub async fn stop(mut self) -> Counts {
        self.stop.store(true, Relaxed);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        self.tally.counts()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}
