//! The worker pool clone and verify share: `workers` tasks take items from
//! one queue, largest first as given, each with its own database sessions;
//! the first error stops the others at their next item and is returned. An
//! item's work may hand back a follow-up item (clone: a table's index build
//! once its last chunk is copied), which goes to the front of the queue.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::SyncError;

/// Runs `work` over `items` on at most `workers` tasks. Each task first
/// opens its sessions with `open`, then takes items until the queue is
/// empty. Results come back in no particular order.
pub(crate) async fn run<I, S, R, O, OF, W, WF>(
    items: Vec<I>,
    workers: usize,
    open: O,
    work: W,
) -> Result<Vec<R>, SyncError>
where
    I: Send + 'static,
    S: Send + Sync + 'static,
    R: Send + 'static,
    O: Fn() -> OF + Send + Sync + 'static,
    OF: Future<Output = Result<S, SyncError>> + Send,
    W: Fn(Arc<S>, I) -> WF + Send + Sync + 'static,
    WF: Future<Output = Result<R, SyncError>> + Send,
{
    run_with_follow_ups(items, workers, open, move |s, i| {
        let f = work(s, i);
        async move { f.await.map(|r| (r, None)) }
    })
    .await
}

/// [`run`], where each item's work may return a follow-up item, queued
/// first so that the next free task (usually the same one) takes it.
pub(crate) async fn run_with_follow_ups<I, S, R, O, OF, W, WF>(
    items: Vec<I>,
    workers: usize,
    open: O,
    work: W,
) -> Result<Vec<R>, SyncError>
where
    I: Send + 'static,
    S: Send + Sync + 'static,
    R: Send + 'static,
    O: Fn() -> OF + Send + Sync + 'static,
    OF: Future<Output = Result<S, SyncError>> + Send,
    W: Fn(Arc<S>, I) -> WF + Send + Sync + 'static,
    WF: Future<Output = Result<(R, Option<I>), SyncError>> + Send,
{
    let workers = workers.min(items.len()).max(1);
    let queue = Arc::new(Mutex::new(items.into_iter().collect::<VecDeque<_>>()));
    let (open, work) = (Arc::new(open), Arc::new(work));
    let failed = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (queue, open, work) = (queue.clone(), open.clone(), work.clone());
        let failed = failed.clone();
        handles.push(tokio::spawn(async move {
            let stop = |e: SyncError| {
                // The others stop at their next item, and queue no follow-ups.
                let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
                failed.store(true, Ordering::Relaxed);
                q.clear();
                e
            };
            let sessions = Arc::new(open().await.map_err(stop)?);
            let mut done = Vec::new();
            loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                let Some(item) = next else { break };
                let (result, follow_up) = work(sessions.clone(), item).await.map_err(stop)?;
                done.push(result);
                if let Some(next) = follow_up {
                    let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
                    if !failed.load(Ordering::Relaxed) {
                        q.push_front(next);
                    }
                }
            }
            Ok::<_, SyncError>(done)
        }));
    }
    let mut results = Vec::new();
    let mut first_err = None;
    for h in handles {
        match h.await {
            Ok(Ok(v)) => results.extend(v),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(SyncError::Other(format!("a worker panicked: {e}")));
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(results),
    }
}
