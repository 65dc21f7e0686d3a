//! Request bodies and TLS on switchyard's own HTTP/1.1 upstream client
//! (issue 11): a body is streamed to the upstream while its answer is read,
//! so an upstream that echoes as it reads never deadlocks the proxy, and one
//! that answers before reading everything (a `413`) is heard; a body
//! without a length goes out chunked; connections are reused after clean
//! exchanges only; and the same holds over TLS, where an idle connection the
//! upstream closed (`close_notify`) is never handed a request. Real
//! switchyard, real sockets, real TLS.

mod support;

use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use support::{Backend, Switchyard};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// An HTTP/1.1 upstream (hyper's server), over TLS when given an acceptor:
/// `/echo` streams the request body back as it reads it, with the request's
/// framing in `x-framing`; anything else answers `ok`. Counts connections.
struct EchoUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

async fn echo_upstream(tls: Option<tokio_rustls::TlsAcceptor>) -> EchoUpstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, SeqCst);
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => serve_echo(tcp).await,
                    Some(acceptor) => {
                        if let Ok(s) = acceptor.accept(tcp).await {
                            serve_echo(s).await;
                        }
                    }
                }
            });
        }
    });
    EchoUpstream { addr, connections }
}

async fn serve_echo<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: S) {
    let svc = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
        let framing = if req.headers().contains_key("transfer-encoding") {
            "chunked".to_string()
        } else {
            match req.headers().get("content-length") {
                Some(v) => format!("length {}", v.to_str().unwrap()),
                None => "none".to_string(),
            }
        };
        let resp = if req.uri().path() == "/echo" {
            hyper::Response::builder()
                .header("x-framing", framing)
                .body(req.into_body().boxed())
                .unwrap()
        } else {
            hyper::Response::builder()
                .header("x-framing", framing)
                .body(
                    http_body_util::Full::new(Bytes::from_static(b"ok"))
                        .map_err(|e| match e {})
                        .boxed(),
                )
                .unwrap()
        };
        Ok::<_, std::convert::Infallible>(resp)
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
        .await;
}

/// A body of `len` bytes that is not all the same byte, so that a shifted
/// or truncated copy is caught.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// POSTs `body` on one client connection in `frame`-sized pieces, without a
/// length when `chunked`, and returns the status, the `x-framing` the
/// upstream saw, and the response body.
async fn upload(
    proxy: SocketAddr,
    path: &str,
    body: &[u8],
    frame: usize,
    chunked: bool,
) -> (u16, String, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake::<_, _>(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let frames: Vec<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>> = body
        .chunks(frame)
        .map(|c| Ok(hyper::body::Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let stream = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let mut req = hyper::Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("host", "app");
    if !chunked {
        req = req.header("content-length", body.len());
    }
    let resp = tx.send_request(req.body(stream).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let framing = resp
        .headers()
        .get("x-framing")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let got = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, framing, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_at_once_and_the_connection_is_reused() {
    let up = echo_upstream(None).await;
    let green = Backend::start("green").await;
    let sy = Switchyard::builder()
        .blue(up.addr)
        .green(green.addr)
        .start();

    // 8 MiB echoed while it is sent: far more than the sockets' buffers,
    // so a proxy that wrote the whole body before reading would stall.
    let body = pattern(8 << 20);
    let (status, framing, got) = upload(sy.proxy, "/echo", &body, 64 * 1024, false).await;
    assert_eq!((status, framing.as_str()), (200, "length 8388608"));
    assert!(
        got == body,
        "the echoed body differs ({} bytes back)",
        got.len()
    );

    // Without a length the body goes out chunked, and comes back whole.
    let body = pattern(3 << 20);
    let (status, framing, got) = upload(sy.proxy, "/echo", &body, 10_000, true).await;
    assert_eq!((status, framing.as_str()), (200, "chunked"));
    assert!(
        got == body,
        "the echoed body differs ({} bytes back)",
        got.len()
    );

    // Small bodies, frames of one byte, and an empty chunked body.
    for (len, frame, chunked) in [
        (1, 1, false),
        (100, 1, true),
        (20_000, 7, false),
        (0, 1, true),
    ] {
        let body = pattern(len);
        let (status, _, got) = upload(sy.proxy, "/echo", &body, frame, chunked).await;
        assert_eq!(status, 200);
        assert!(got == body, "{len} bytes in {frame}-byte frames");
    }

    // Bodiless and bodied requests alternate on the same pooled connection.
    for i in 0..20 {
        let r = if i % 2 == 0 {
            sy.client.get(&sy.url("/")).await.unwrap()
        } else {
            sy.client
                .request(Method::POST, &sy.url("/echo"), &[], format!("body {i}"))
                .await
                .unwrap()
        };
        assert_eq!(r.status, 200);
        if i % 2 == 1 {
            assert_eq!(r.text(), format!("body {i}"));
        }
    }
    assert_eq!(
        up.connections.load(SeqCst),
        1,
        "every exchange was clean, so one upstream connection carried them all"
    );
}

/// An upstream that answers `/early` with a `413` as soon as it has the
/// head, reads none of the body, and keeps the connection open (sloppy, but
/// common); anything else it answers `ok` after reading the head.
async fn early_answer_upstream(connections: Arc<AtomicUsize>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            connections.fetch_add(1, SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    if head.starts_with("POST /early ") {
                        let _ = s
                            .write_all(
                                b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\n\r\ntoo big!",
                            )
                            .await;
                        // Reads and throws away whatever else comes.
                        while let Ok(n) = s.read(&mut chunk).await {
                            if n == 0 {
                                return;
                            }
                        }
                        return;
                    }
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_answers_before_reading_the_body_is_heard_and_its_connection_dropped() {
    let connections = Arc::new(AtomicUsize::new(0));
    let blue = early_answer_upstream(connections.clone()).await;
    let green = Backend::start("green").await;
    let sy = Switchyard::builder()
        .blue(blue)
        .green(green.addr)
        .proxy_extra("max_body_size = \"64m\"\nupstream_timeout = \"5s\"")
        .start();

    let r = sy.client.get(&sy.url("/first")).await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert_eq!(connections.load(SeqCst), 1);

    // 16 MiB announced; the upstream answers after the head.
    let mut s = tokio::net::TcpStream::connect(sy.proxy).await.unwrap();
    let len = 16 << 20;
    s.write_all(
        format!("POST /early HTTP/1.1\r\nhost: app\r\ncontent-length: {len}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let piece = vec![b'x'; 65536];
        let mut sent = 0;
        while sent < len {
            if wr.write_all(&piece).await.is_err() {
                break;
            }
            sent += piece.len();
        }
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let answered = tokio::time::timeout(Duration::from_secs(20), async {
        while !got.windows(8).any(|w| w == b"too big!") {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    writer.abort();
    let got = String::from_utf8_lossy(&got);
    assert!(answered.is_ok(), "no answer while the body was being sent");
    assert!(got.starts_with("HTTP/1.1 413"), "{got}");
    assert!(got.ends_with("too big!"), "{got}");

    // The connection that still had a body half sent is not reused: the
    // next request opens another and gets its own answer.
    let r = sy.client.get(&sy.url("/after")).await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert_eq!(
        connections.load(SeqCst),
        2,
        "a connection with a request half sent was reused"
    );
}

/// Switchyard with both colours on `upstream` over TLS, trusting `ca`.
fn over_tls(upstream: SocketAddr, ca: &str) -> Switchyard {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca).unwrap();
    let pool = format!(
        "upstreams = [\"{upstream}\"]\ntls = {{ ca = \"ca.pem\", server_name = \"localhost\" }}\n"
    );
    Switchyard::builder()
        .dir(dir)
        .config(&format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n[pools.blue]\n{pool}[pools.green]\n{pool}[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{}\"\n[state]\npath = \"state.json\"\n",
            support::switchyard::TOKEN
        ))
        .start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_requests_with_and_without_bodies_share_one_verified_connection() {
    let (acceptor, ca) = support::tls::localhost_acceptor(&[b"http/1.1"]);
    let up = echo_upstream(Some(acceptor)).await;
    let sy = over_tls(up.addr, &ca);

    for i in 0..10 {
        let r = sy.client.get(&sy.url("/")).await.unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));
        let r = sy
            .client
            .request(Method::POST, &sy.url("/echo"), &[], format!("secret {i}"))
            .await
            .unwrap();
        assert_eq!((r.status, r.text()), (200, format!("secret {i}")));
    }
    let body = pattern(2 << 20);
    let (status, framing, got) = upload(sy.proxy, "/echo", &body, 30_000, true).await;
    assert_eq!((status, framing.as_str()), (200, "chunked"));
    assert!(
        got == body,
        "the echoed body differs ({} bytes back)",
        got.len()
    );
    // TLS 1.3 session tickets arrive on the connection after the handshake:
    // they must not make it look unusable.
    assert_eq!(
        up.connections.load(SeqCst),
        1,
        "the TLS connection was not reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tls_connection_the_upstream_closed_is_not_handed_a_request() {
    let (acceptor, ca) = support::tls::localhost_acceptor(&[b"http/1.1"]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    // Answers one request per connection (keep-alive, as far as the proxy
    // can tell), then sends `close_notify` and closes a moment later.
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = s.shutdown().await;
            });
        }
    });
    let sy = over_tls(upstream, &ca);
    // Requests with a body: a proxy that sent one on the closed connection
    // could not send it again, and the client would get a 502.
    for i in 0..3 {
        let r = sy
            .client
            .request(Method::POST, &sy.url("/"), &[], "a body")
            .await
            .unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "ok"), "request {i}");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(connections.load(SeqCst), 3);
}
