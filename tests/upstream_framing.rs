//! An upstream whose HTTP/1.1 responses are framed badly, or unusually but
//! correctly (issue 11: the parsing switchyard owns on its upstream side).
//! What is ambiguous (two lengths, a length beside chunking, a transfer
//! coding other than chunked, a folded header, a chunk size that overflows)
//! is refused with a 502 or cut off, counted against the upstream, and the
//! connection never reused; what is odd but exact (chunk extensions,
//! trailers, a 1xx before the answer, a body delimited by the close) comes
//! through. Bytes an upstream sends beyond its response never become the
//! answer to the next request. Real switchyard, a real socket upstream.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::client::exchange;
use support::{eventually, Backend, Switchyard};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What an upstream does after its answer.
#[derive(Clone)]
enum Then {
    KeepOpen,
    Close,
    /// Sends these bytes unasked a moment later, and keeps the connection.
    Later(&'static [u8]),
    /// Closes its side a moment later, as a keep-alive timeout would, and
    /// waits for the proxy to close its side too.
    CloseLater,
}

/// An upstream answering each request by its path with fixed bytes, on
/// keep-alive connections, then doing what [`Then`] says.
struct RawUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    /// Connections it closed on which the proxy then closed its side.
    closed_back: Arc<AtomicUsize>,
}

async fn raw_upstream(answers: HashMap<&'static str, (Vec<u8>, Then)>) -> RawUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    let closed_back = Arc::new(AtomicUsize::new(0));
    let closed = closed_back.clone();
    let answers = Arc::new(answers);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let answers = answers.clone();
            let closed = closed.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let (bytes, then) = answers.get(path.as_str()).cloned().unwrap_or((
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec(),
                        Then::KeepOpen,
                    ));
                    if s.write_all(&bytes).await.is_err() {
                        return;
                    }
                    match then {
                        Then::KeepOpen => {}
                        Then::Close => {
                            let _ = s.shutdown().await;
                            return;
                        }
                        Then::CloseLater => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            let _ = s.shutdown().await;
                            let mut rest = [0u8; 64];
                            let eof =
                                tokio::time::timeout(Duration::from_secs(10), s.read(&mut rest));
                            if let Ok(Ok(0)) = eof.await {
                                closed.fetch_add(1, Ordering::SeqCst);
                            }
                            return;
                        }
                        Then::Later(more) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            if s.write_all(more).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    RawUpstream {
        addr,
        connections,
        closed_back,
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n").into_bytes()
}

async fn transport_failures(sy: &Switchyard) -> u64 {
    sy.colour_metric("switchyard_transport_failures_total", "blue")
        .await
}

fn answers() -> HashMap<&'static str, (Vec<u8>, Then)> {
    let mut a: HashMap<&'static str, (Vec<u8>, Then)> = HashMap::new();
    let mut add = |path, bytes: &[u8], close| {
        let then = if close { Then::Close } else { Then::KeepOpen };
        a.insert(path, (bytes.to_vec(), then));
    };
    add(
        "/plain",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nplain",
        false,
    );
    // Refused: ambiguous framing.
    add(
        "/two-lengths",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nplain!",
        false,
    );
    add(
        "/length-list",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\nplain!",
        false,
    );
    add(
        "/bad-length",
        b"HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\nplain",
        false,
    );
    add(
        "/gzip-coding",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nplain",
        true,
    );
    add(
        "/chunked-then-gzip",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n5\r\nplain\r\n0\r\n\r\n",
        true,
    );
    add("/chunked-and-length", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n5\r\nplain\r\n0\r\n\r\n", false);
    add(
        "/folded",
        b"HTTP/1.1 200 OK\r\nx-note: one\r\n two\r\ncontent-length: 5\r\n\r\nplain",
        false,
    );
    add(
        "/bad-status",
        b"HTTP/1.1 2000 OK\r\ncontent-length: 5\r\n\r\nplain",
        false,
    );
    add(
        "/space-before-colon",
        b"HTTP/1.1 200 OK\r\ncontent-length : 5\r\n\r\nplain",
        false,
    );
    // Cut off after the head: the chunk size is not a size.
    add("/huge-chunk", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffff\r\nplain\r\n0\r\n\r\n", false);
    add(
        "/bad-chunk",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nplain\r\n0\r\n\r\n",
        false,
    );
    add(
        "/chunk-too-long",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nplain\r\n0\r\n\r\n",
        false,
    );
    // Odd but exact: through.
    add("/extensions", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;name=value\r\npl\r\n3 ; q=\"x;y\"\r\nain\r\n0\r\n\r\n", false);
    add("/trailers", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nplain\r\n0\r\nx-checksum: abc\r\n\r\n", false);
    add("/continue", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nplain", false);
    add(
        "/until-close",
        b"HTTP/1.0 200 OK\r\n\r\nplain until close",
        true,
    );
    add("/no-content", b"HTTP/1.1 204 No Content\r\n\r\n", false);
    add(
        "/not-modified",
        b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n",
        false,
    );
    add(
        "/head",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
        false,
    );
    add(
        "/closes",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nplain",
        true,
    );
    add(
        "/big-head",
        &[
            b"HTTP/1.1 200 OK\r\nx-big: ".as_slice(),
            &[b'a'; 200_000],
            b"\r\ncontent-length: 5\r\n\r\nplain",
        ]
        .concat(),
        false,
    );
    // After the response, unasked, while the connection sits idle: the
    // next request on it must not read this as its answer.
    a.insert(
        "/late-408",
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nplain".to_vec(),
            Then::Later(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n"),
        ),
    );
    a.insert(
        "/then-close",
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nplain".to_vec(),
            Then::CloseLater,
        ),
    );
    let mut add = |path, bytes: &[u8], close| {
        let then = if close { Then::Close } else { Then::KeepOpen };
        a.insert(path, (bytes.to_vec(), then));
    };
    // Beyond the response: a second response nobody asked for.
    add("/extra", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nplainHTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled", false);
    a
}

/// The raw upstream as blue (green a well-behaved backend, at weight 0)
/// behind a real switchyard.
async fn behind_switchyard() -> (RawUpstream, Backend, Switchyard) {
    let blue = raw_upstream(answers()).await;
    let green = Backend::start("green").await;
    let sy = Switchyard::builder()
        .blue(blue.addr)
        .green(green.addr)
        .start();
    (blue, green, sy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_frames_its_responses_ambiguously_is_refused_and_blamed() {
    let (_blue, _green, sy) = behind_switchyard().await;

    for path in [
        "/two-lengths",
        "/length-list",
        "/bad-length",
        "/gzip-coding",
        "/chunked-then-gzip",
        "/chunked-and-length",
        "/folded",
        "/bad-status",
        "/space-before-colon",
        "/big-head",
    ] {
        let before = transport_failures(&sy).await;
        let (r, closed) = exchange(sy.proxy, &get(path), 10).await;
        assert!(closed, "{path}: the client was left waiting: {r:?}");
        assert!(r.starts_with("HTTP/1.1 502"), "{path}: {r}");
        assert!(
            !r.contains("\r\n\r\nplain"),
            "{path}: the ambiguous body was passed on: {r}"
        );
        assert!(
            eventually(5, async || transport_failures(&sy).await > before).await,
            "{path}: not counted against the upstream"
        );
    }

    for path in ["/huge-chunk", "/bad-chunk", "/chunk-too-long"] {
        let before = transport_failures(&sy).await;
        let (r, closed) = exchange(sy.proxy, &get(path), 10).await;
        assert!(closed, "{path}: the client was left waiting: {r:?}");
        // The head may have gone out; the body must not end as if complete.
        assert!(
            !r.ends_with("0\r\n\r\n"),
            "{path}: a broken body ended as complete: {r:?}"
        );
        assert!(!r.contains("plain\r\n0"), "{path}: {r:?}");
        assert!(
            eventually(5, async || transport_failures(&sy).await > before).await,
            "{path}: not counted against the upstream"
        );
    }

    // Nothing refused above left a connection that answers wrongly now.
    for _ in 0..20 {
        let r = sy.client.get(&sy.url("/plain")).await.unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "plain"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_but_exact_responses_come_through_and_connections_are_reused_only_when_clean() {
    let (blue, _green, sy) = behind_switchyard().await;

    for (path, body) in [
        ("/extensions", "plain"),
        ("/trailers", "plain"),
        ("/continue", "plain"),
        ("/until-close", "plain until close"),
        ("/plain", "plain"),
    ] {
        let r = sy.client.get(&sy.url(path)).await.unwrap();
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.text(), body, "{path}");
    }
    for (path, status) in [("/no-content", 204), ("/not-modified", 304)] {
        let (r, closed) = exchange(sy.proxy, &get(path), 10).await;
        assert!(
            closed,
            "{path}: waiting for a body that does not come: {r:?}"
        );
        assert!(r.starts_with(&format!("HTTP/1.1 {status}")), "{path}: {r}");
    }
    // HEAD: a length but no body.
    let (r, closed) = exchange(
        sy.proxy,
        b"HEAD /head HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
        10,
    )
    .await;
    assert!(closed, "HEAD waited for a body: {r:?}");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.to_ascii_lowercase().contains("content-length: 5"), "{r}");

    // Sequential requests share one upstream connection...
    let before = blue.connections.load(Ordering::SeqCst);
    for _ in 0..10 {
        let r = sy.client.get(&sy.url("/plain")).await.unwrap();
        assert_eq!(r.text(), "plain");
    }
    let reused = blue.connections.load(Ordering::SeqCst) - before;
    assert!(
        reused <= 1,
        "{reused} connections for 10 sequential requests"
    );

    // ...but not one the upstream said it would close: the first of these
    // takes the idle one, each after it needs a new one.
    let before = blue.connections.load(Ordering::SeqCst);
    for path in ["/closes", "/closes", "/closes", "/plain"] {
        let r = sy.client.get(&sy.url(path)).await.unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "plain"));
    }
    assert_eq!(blue.connections.load(Ordering::SeqCst) - before, 3);

    // Bytes an upstream sends on an idle connection never answer the next
    // request on it.
    for _ in 0..5 {
        let r = sy.client.get(&sy.url("/late-408")).await.unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "plain"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = sy.client.get(&sy.url("/plain")).await.unwrap();
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "plain"),
            "the upstream's unasked 408 was served"
        );
    }

    // Bytes beyond a response never answer the next request.
    for _ in 0..10 {
        let r = sy.client.get(&sy.url("/extra")).await.unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "plain"));
        let r = sy.client.get(&sy.url("/plain")).await.unwrap();
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "plain"),
            "the smuggled response was served"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_the_upstream_closes_is_closed_here_too() {
    // No task watches an idle connection of the own client: a sweep must
    // find the upstream's close, or the socket sits in CLOSE_WAIT holding a
    // descriptor until the next request.
    let (blue, _green, sy) = behind_switchyard().await;
    let r = sy.client.get(&sy.url("/then-close")).await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "plain"));
    assert!(
        eventually(8, async || blue.closed_back.load(Ordering::SeqCst) == 1).await,
        "switchyard kept the idle connection the upstream had closed"
    );
    // And the next request is served on a new connection.
    let r = sy.client.get(&sy.url("/plain")).await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "plain"));
}
