//! gRPC services behind switchyard: pools that speak HTTP/2 to their
//! upstreams (`protocol = "h2c"`, or `"h2"` over TLS), trailers end to end,
//! gRPC's own answer when no upstream answers, `grpc.health.v1` health
//! checks, and analysis that counts a gRPC failure status as a failure.
//!
//! The services are real gRPC servers (tonic's `grpc.health.v1`
//! implementation) and hand-written HTTP/2 servers where a test needs to
//! control trailers exactly.

mod support;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;
use support::{eventually, Switchyard};
use tokio::net::{TcpListener, TcpStream};
use tonic_health::pb::health_check_response::ServingStatus as Pb;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// A real gRPC server (tonic) offering `grpc.health.v1` with `orders`
/// serving. It stops when the returned task is dropped... or the test ends.
async fn grpc_server() -> (SocketAddr, HealthReporter) {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("orders", ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, reporter)
}

type Handler = fn(Request<Incoming>) -> futures_util::future::BoxFuture<'static, Response<Reply>>;
type Reply = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A hand-written HTTP/2 (prior knowledge) server answering with `handler`.
async fn h2_server(handler: Handler) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| async move {
                    Ok::<_, Infallible>(handler(req).await)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A body of `data` followed by `trailers`.
fn with_trailers(data: &'static [u8], trailers: http::HeaderMap) -> Reply {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
        Ok(Frame::data(Bytes::from_static(data))),
        Ok(Frame::trailers(trailers)),
    ];
    BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)))
}

fn grpc_response(body: Reply) -> Response<Reply> {
    Response::builder()
        .header("content-type", "application/grpc")
        .body(body)
        .unwrap()
}

/// Echoes the request trailer `x-sent` back as the response trailer
/// `x-got`, with `grpc-status: 0`.
fn echo_trailers(
    req: Request<Incoming>,
) -> futures_util::future::BoxFuture<'static, Response<Reply>> {
    Box::pin(async move {
        let te = req
            .headers()
            .get("te")
            .map(|v| v.to_str().unwrap().to_string());
        let collected = req.into_body().collect().await.unwrap();
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", "0".parse().unwrap());
        if let Some(v) = collected.trailers().and_then(|t| t.get("x-sent")) {
            t.insert("x-got", v.clone());
        }
        if let Some(te) = te {
            t.insert("x-te", te.parse().unwrap());
        }
        grpc_response(with_trailers(b"\0\0\0\0\0", t))
    })
}

/// Answers every call with HTTP 200 and `grpc-status: 13` (INTERNAL) in
/// the trailers: a broken release, as gRPC reports it.
fn failing(_req: Request<Incoming>) -> futures_util::future::BoxFuture<'static, Response<Reply>> {
    Box::pin(async move {
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", "13".parse().unwrap());
        t.insert("grpc-message", "boom".parse().unwrap());
        grpc_response(with_trailers(b"\0\0\0\0\0", t))
    })
}

fn succeeding(
    _req: Request<Incoming>,
) -> futures_util::future::BoxFuture<'static, Response<Reply>> {
    Box::pin(async move {
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", "0".parse().unwrap());
        grpc_response(with_trailers(b"\0\0\0\0\0", t))
    })
}

/// An HTTP/2 (prior knowledge) connection to switchyard's proxy port.
async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Reply> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    tx
}

fn proxy_addr(sy: &Switchyard) -> SocketAddr {
    sy.url("/")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

async fn health_client(sy: &Switchyard) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", proxy_addr(sy)))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_service_answers_unary_and_streaming_calls_through_switchyard() {
    let (blue, reporter) = grpc_server().await;
    let (green, _green_reporter) = grpc_server().await;
    let sy = Switchyard::builder()
        .blue(blue)
        .green(green)
        .pool_extra("protocol = \"h2c\"")
        .start();
    let mut client = health_client(&sy).await;

    // Unary: the answer and its status travel back from blue.
    let serving = client
        .check(HealthCheckRequest {
            service: "orders".into(),
        })
        .await
        .expect("a unary call through switchyard");
    assert_eq!(serving.into_inner().status, Pb::Serving as i32);
    // A gRPC error status (trailers-only) reaches the client unchanged.
    let unknown = client
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .expect_err("an unknown service is NOT_FOUND");
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");

    // Server streaming: messages arrive as the server sends them, on a
    // stream that stays open.
    let mut watch = client
        .watch(HealthCheckRequest {
            service: "orders".into(),
        })
        .await
        .expect("a streaming call through switchyard")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("the first message in time")
        .unwrap()
        .unwrap();
    assert_eq!(first.status, Pb::Serving as i32);
    reporter
        .set_service_status("orders", ServingStatus::NotServing)
        .await;
    let next = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("the change streamed in time")
        .unwrap()
        .unwrap();
    assert_eq!(next.status, Pb::NotServing as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_and_te_pass_through_both_ways() {
    let echo = h2_server(echo_trailers).await;
    let sy = Switchyard::builder()
        .blue(echo)
        .green(echo)
        .pool_extra("protocol = \"h2c\"")
        .start();
    let mut tx = h2_client(proxy_addr(&sy)).await;
    let mut sent = http::HeaderMap::new();
    sent.insert("x-sent", "from-the-client".parse().unwrap());
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
        Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
        Ok(Frame::trailers(sent)),
    ];
    let req = Request::post("http://example.test/echo.Echo/Call")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
            frames,
        ))))
        .unwrap();
    let resp = tx.send_request(req).await.expect("an answer");
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("response trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(
        trailers["x-got"], "from-the-client",
        "request trailers reached the upstream"
    );
    assert_eq!(
        trailers["x-te"], "trailers",
        "TE: trailers reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_client_gets_unavailable_when_no_upstream_answers() {
    // A port nothing listens on.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let sy = Switchyard::builder()
        .blue(dead)
        .green(dead)
        .pool_extra("protocol = \"h2c\"")
        .start();
    let mut client = health_client(&sy).await;
    let err = client
        .check(HealthCheckRequest {
            service: "orders".into(),
        })
        .await
        .expect_err("no upstream");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("switchyard"), "{err:?}");
    // A plain HTTP client still gets the HTTP answer.
    let plain = sy.client.get(&sy.url("/")).await.unwrap();
    assert_eq!(plain.status, 502, "{}", plain.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_health_check_takes_a_not_serving_upstream_out_of_rotation() {
    let (one, reporter_one) = grpc_server().await;
    let (two, _reporter_two) = grpc_server().await;
    let (blue, _blue_reporter) = grpc_server().await;
    let sy = Switchyard::builder()
        .blue(blue)
        .green(one)
        .green(two)
        .pool_extra(
            "protocol = \"h2c\"\nhealth = { kind = \"grpc\", service = \"orders\", interval = \"100ms\", timeout = \"1s\", fall = 1, rise = 1 }",
        )
        .start();
    let healthy = |s: serde_json::Value| -> Vec<bool> {
        s["pools"]["green"]["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["healthy"].as_bool().unwrap())
            .collect()
    };
    assert!(
        eventually(10, async || healthy(sy.status().await) == [true, true]).await,
        "both serving: {}",
        sy.status().await
    );
    reporter_one
        .set_service_status("orders", ServingStatus::NotServing)
        .await;
    assert!(
        eventually(10, async || healthy(sy.status().await) == [false, true]).await,
        "NOT_SERVING is unhealthy: {}",
        sy.status().await
    );
    assert!(
        sy.log().contains("NOT_SERVING"),
        "the log says why: {}",
        sy.log()
    );
    reporter_one
        .set_service_status("orders", ServingStatus::Serving)
        .await;
    assert!(
        eventually(10, async || healthy(sy.status().await) == [true, true]).await,
        "serving again: {}",
        sy.status().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn green_answering_grpc_internal_errors_is_rolled_back() {
    let blue = h2_server(succeeding).await;
    let green = h2_server(failing).await;
    let sy = Switchyard::builder()
        .blue(blue)
        .green(green)
        .pool_extra("protocol = \"h2c\"")
        .proxy_extra("sticky = \"none\"")
        .extra(
            "[rollout]\nsteps = [{ weight = 50, bake = \"1h\" }, 100]\n[rollout.analysis]\nwindow = \"2s\"\ninterval = \"50ms\"\nmin_requests = 10\nmax_error_rate = 0.05\n",
        )
        .start();
    let started = sy.admin(Method::POST, "/api/v1/rollout/start", "").await;
    assert_eq!(started.status, 200, "{}", started.text());
    let addr = proxy_addr(&sy);
    let mut tx = h2_client(addr).await;
    let mut rolled_back = false;
    for _ in 0..3000 {
        let req = Request::post("http://example.test/orders.Orders/Place")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(BodyExt::boxed(Full::new(Bytes::from_static(b"\0\0\0\0\0"))))
            .unwrap();
        let resp = tx.send_request(req).await.expect("an answer");
        // HTTP says 200 either way: only the trailers tell.
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
        if sy.status().await["rollout"]["state"] == "aborted" {
            rolled_back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = sy.status().await;
    assert!(rolled_back, "gRPC INTERNAL counts as a failure: {status}");
    let reason = status["rollout"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("rolled back: candidate error rate")
            && reason.contains("requests failed"),
        "{status}"
    );
    assert_eq!(
        status["pools"]["blue"]["window"]["server_errors"], 0,
        "grpc-status 0 is a success: {status}"
    );
}

/// A CA, and an HTTPS server for `localhost` with a certificate it signed,
/// offering `alpn`, answering `grpc-status: 0` over HTTP/2 or `tls ok`
/// over HTTP/1.1. Returns the server's address and the CA's PEM.
async fn tls_server(alpn: &'static [u8]) -> (SocketAddr, String) {
    let (acceptor, ca_pem) = support::tls::localhost_acceptor(&[alpn]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if alpn == b"h2" {
                    let svc = hyper::service::service_fn(|req| async move {
                        Ok::<_, Infallible>(succeeding(req).await)
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                } else {
                    let svc = hyper::service::service_fn(|_req| async move {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"tls ok"))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                }
            });
        }
    });
    (addr, ca_pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_over_tls_are_verified_against_the_pools_ca() {
    let (h2, h2_ca) = tls_server(b"h2").await;
    let (h1, h1_ca) = tls_server(b"http/1.1").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("h2-ca.pem"), &h2_ca).unwrap();
    std::fs::write(dir.path().join("h1-ca.pem"), &h1_ca).unwrap();
    // Blue speaks h2 over TLS, green HTTP/1.1 over TLS; each pool trusts
    // its own CA and checks the name `localhost` (the upstreams are
    // addressed by IP).
    let extra = "[pools.blue.tls]\nca = \"h2-ca.pem\"\nserver_name = \"localhost\"\n";
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nsticky = \"none\"\n[pools.blue]\nupstreams = [\"{h2}\"]\nprotocol = \"h2\"\n{extra}[pools.green]\nupstreams = [\"{h1}\"]\ntls = {{ ca = \"h1-ca.pem\", server_name = \"localhost\" }}\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{}\"\n[state]\npath = \"state.json\"\n",
        support::switchyard::TOKEN
    );
    let config = dir.path().join("switchyard.toml");
    std::fs::write(&config, &text).unwrap();
    let check = support::run(
        support::switchyard_command()
            .arg("check")
            .arg("-c")
            .arg(&config),
    );
    assert_eq!(check.code, 0, "{}", check.output());

    let sy = Switchyard::builder().dir(dir).config(&text).start();
    let mut tx = h2_client(proxy_addr(&sy)).await;
    let req = Request::post("http://example.test/orders.Orders/Place")
        .header("content-type", "application/grpc")
        .body(BodyExt::boxed(Full::new(Bytes::from_static(b"\0\0\0\0\0"))))
        .unwrap();
    let resp = tx.send_request(req).await.expect("an answer");
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(
        collected.trailers().map(|t| t["grpc-status"].clone()),
        Some("0".parse().unwrap()),
        "blue answered over h2 + TLS"
    );
    sy.set_green(100.0).await;
    let green = sy.client.get(&sy.url("/")).await.unwrap();
    assert_eq!(green.text(), "tls ok", "green answered over HTTP/1.1 + TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_whose_certificate_the_ca_did_not_sign_is_refused() {
    let (h2, _its_ca) = tls_server(b"h2").await;
    let (_other, other_ca) = tls_server(b"h2").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &other_ca).unwrap();
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[pools.blue]\nupstreams = [\"{h2}\"]\nprotocol = \"h2\"\ntls = {{ ca = \"ca.pem\", server_name = \"localhost\" }}\n[pools.green]\nupstreams = [\"{h2}\"]\nprotocol = \"h2\"\ntls = {{ ca = \"ca.pem\", server_name = \"localhost\" }}\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{}\"\n[state]\npath = \"state.json\"\n",
        support::switchyard::TOKEN
    );
    let sy = Switchyard::builder().dir(dir).config(&text).start();
    let resp = sy.client.get(&sy.url("/")).await.unwrap();
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert!(
        resp.text().contains("TLS handshake failed"),
        "{}",
        resp.text()
    );
    assert!(
        eventually(5, async || sy.log().contains("UnknownIssuer")
            || sy.log().contains("invalid peer certificate"))
        .await,
        "the log names the certificate problem: {}",
        sy.log()
    );
}

#[test]
fn pool_protocol_mistakes_are_reported_by_check_with_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        "[proxy]\nlisten = \"127.0.0.1:0\"\n\n[pools.blue]\nupstreams = [\"127.0.0.1:1\"]\nprotocol = \"h2\"\n\n[pools.green]\nupstreams = [\"127.0.0.1:2\"]\nhealth = { kind = \"grpc\" }\n\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"t\"\n",
    )
    .unwrap();
    let out = support::run(
        support::switchyard_command()
            .arg("check")
            .arg("-c")
            .arg(&config),
    );
    assert_ne!(out.code, 0);
    let text = out.output();
    let shown = config.display().to_string();
    assert!(
        text.contains(&format!("{shown}:6:1")) && text.contains("needs pools.blue.tls"),
        "{text}"
    );
    assert!(
        text.contains(&format!("{shown}:10:1"))
            && text.contains("pools.green.health.kind = \"grpc\" needs an HTTP/2 pool"),
        "{text}"
    );
    // A CA file that does not exist is refused too, before anything starts.
    std::fs::write(
        &config,
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[pools.blue]\nupstreams = [\"127.0.0.1:1\"]\nprotocol = \"h2\"\ntls = { ca = \"missing.pem\" }\n[pools.green]\nupstreams = [\"127.0.0.1:2\"]\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"t\"\n",
    )
    .unwrap();
    let out = support::run(
        support::switchyard_command()
            .arg("check")
            .arg("-c")
            .arg(&config),
    );
    assert_ne!(out.code, 0);
    assert!(out.output().contains("missing.pem"), "{}", out.output());
}

/// The gRPC backend of `bench/grpc/run.sh`: tonic's `grpc.health.v1` on
/// `127.0.0.1:$BENCH_GRPC_PORT` for `$BENCH_SECS` seconds (at most 600).
/// Run by the script in release mode; ignored by `cargo test`.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
#[ignore = "benchmark backend: bench/grpc/run.sh runs it"]
async fn bench_grpc_backend() {
    let port: u16 = std::env::var("BENCH_GRPC_PORT")
        .expect("BENCH_GRPC_PORT")
        .parse()
        .unwrap();
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120)
        .min(600);
    let (_reporter, service) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    println!(
        "serving grpc.health.v1 on {}",
        listener.local_addr().unwrap()
    );
    let serve = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let _ = tokio::time::timeout(Duration::from_secs(secs), serve).await;
}

/// The upstreams' certificates are re-issued by a new CA: the operator
/// replaces the pool's CA file in place and sends `SIGHUP`; new upstream
/// connections then trust the new CA (the unchanged config kept the old
/// one before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_rotated_in_place_is_trusted_after_sighup() {
    // An HTTPS server that closes every connection after one answer (so
    // each request makes a new handshake), its certificate swappable.
    let (first, first_ca) = support::tls::localhost_acceptor(&[b"http/1.1"]);
    let (second, second_ca) = support::tls::localhost_acceptor(&[b"http/1.1"]);
    let serving = std::sync::Arc::new(std::sync::Mutex::new(first));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let current = serving.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = current.lock().unwrap().clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|_req| async move {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"tls ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &first_ca).unwrap();
    let pool = format!(
        "upstreams = [\"{upstream}\"]\ntls = {{ ca = \"ca.pem\", server_name = \"localhost\" }}\n"
    );
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nsticky = \"none\"\n[pools.blue]\n{pool}[pools.green]\n{pool}[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{}\"\n[state]\npath = \"state.json\"\n",
        support::switchyard::TOKEN
    );
    let sy = Switchyard::builder().dir(dir).config(&text).start();
    let answer = async || sy.client.get(&sy.url("/")).await.unwrap();
    assert_eq!(answer().await.text(), "tls ok");

    // Re-issued: the upstream's new certificate is not trusted yet.
    *serving.lock().unwrap() = second;
    let r = answer().await;
    assert_eq!(r.status, 502, "{}", r.text());

    std::fs::write(sy.dir.path().join("ca.pem"), &second_ca).unwrap();
    sy.signal("HUP");
    assert!(
        eventually(10, async || answer().await.text() == "tls ok").await,
        "{}",
        sy.log()
    );
}

/// More concurrent calls than the upstream allows on one HTTP/2 connection
/// (its SETTINGS_MAX_CONCURRENT_STREAMS is 100): switchyard opens another
/// connection instead of queueing them behind the first 100, so all of
/// them reach the upstream at once; when they are done the connections are
/// shared again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_concurrent_calls_than_one_connection_carries_open_another() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    const CALLS: usize = 150;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let (release, released) = tokio::sync::watch::channel(false);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    {
        let (in_flight, connections) = (in_flight.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                connections.fetch_add(1, SeqCst);
                let (in_flight, released) = (in_flight.clone(), released.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                        let (in_flight, mut released) = (in_flight.clone(), released.clone());
                        async move {
                            in_flight.fetch_add(1, SeqCst);
                            let _ = released.wait_for(|r| *r).await;
                            in_flight.fetch_sub(1, SeqCst);
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                                b"done",
                            ))))
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .max_concurrent_streams(100)
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
    }
    let sy = Switchyard::builder()
        .blue(upstream)
        .green(upstream)
        .pool_extra("protocol = \"h2c\"")
        .start();
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let (client, url) = (sy.client.clone(), sy.url("/"));
            tokio::spawn(async move { client.get(&url).await.map(|r| r.text()) })
        })
        .collect();
    assert!(
        eventually(30, async || in_flight.load(SeqCst) == CALLS).await,
        "only {} of {CALLS} calls reached the upstream at once over {} connections",
        in_flight.load(SeqCst),
        connections.load(SeqCst)
    );
    assert!(
        connections.load(SeqCst) >= 2,
        "{}",
        connections.load(SeqCst)
    );
    release.send(true).unwrap();
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap(), "done");
    }
    // Done: the next calls share the connections already open.
    let opened = connections.load(SeqCst);
    for _ in 0..20 {
        assert_eq!(sy.client.get(&sy.url("/")).await.unwrap().text(), "done");
    }
    assert_eq!(connections.load(SeqCst), opened);
}

/// An HTTP/2 connection to an upstream that carries no stream for the
/// pool's `keepalive_timeout` is closed, as idle HTTP/1.1 ones are (a
/// middlebox that forgot the flow would otherwise hang the next call on
/// it); the next call opens a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_upstream_connection_idle_past_keepalive_timeout_is_closed() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    let open = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    {
        let (open, accepted) = (open.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                open.fetch_add(1, SeqCst);
                accepted.fetch_add(1, SeqCst);
                let open = open.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                    open.fetch_sub(1, SeqCst);
                });
            }
        });
    }
    let sy = Switchyard::builder()
        .blue(upstream)
        .green(upstream)
        .pool_extra("protocol = \"h2c\"\nkeepalive_timeout = \"1s\"")
        .start();
    assert_eq!(sy.client.get(&sy.url("/")).await.unwrap().text(), "ok");
    assert_eq!(sy.client.get(&sy.url("/")).await.unwrap().text(), "ok");
    assert_eq!(accepted.load(SeqCst), 1, "calls share one connection");
    assert!(
        eventually(20, async || open.load(SeqCst) == 0).await,
        "the idle HTTP/2 connection is still open: {} of {}",
        open.load(SeqCst),
        accepted.load(SeqCst)
    );
    assert_eq!(sy.client.get(&sy.url("/")).await.unwrap().text(), "ok");
    assert_eq!(
        accepted.load(SeqCst),
        2,
        "a new connection for the next call"
    );
}
