//! Webhooks an operator can trust: delivered over HTTPS to a receiver whose
//! certificate comes from a private CA (`[webhooks] ca_file`), each body
//! signed with HMAC-SHA256 (`X-Switchyard-Signature`), for the notify hook
//! and the confirm gate alike.

#[path = "support/load.rs"]
mod load;
mod support;

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::sync::{Arc, Mutex};
use support::{deployment, eventually};

type Seen = Arc<Mutex<Vec<(String, Option<String>, Bytes)>>>;

/// An HTTPS server for `localhost` with a certificate from its own CA;
/// returns (port, CA PEM, what it received).
async fn receiver() -> (u16, String, Seen) {
    let (acceptor, ca_pem) = support::tls::localhost_acceptor(&[]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, seen) = (acceptor.clone(), s.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let sig = req
                            .headers()
                            .get("x-switchyard-signature")
                            .map(|v| v.to_str().unwrap().to_string());
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        seen.lock().unwrap().push((path, sig, body));
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, ca_pem, seen)
}

fn hmac(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    format!(
        "sha256={}",
        tag.as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_confirm_requests_arrive_over_https_signed_with_the_secret() {
    let (port, ca_pem, seen) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("hooks-ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let extra = format!(
        "[rollout]\nsteps = [100]\nbake = \"100ms\"\n\n[rollout.analysis]\nwindow = \"2s\"\ninterval = \"50ms\"\nmin_requests = 1\n\n\
         [webhooks]\nnotify = \"https://localhost:{port}/events\"\nconfirm = \"https://localhost:{port}/confirm\"\n\
         secret = \"s3cret\"\nca_file = \"{}\"\n",
        ca.display()
    );
    let (_blue, _green, sy) = deployment(|b| b.extra(&extra)).await;
    let _load = load::Load::start(sy.url("/"), 1, 10_000, std::time::Duration::from_secs(60));
    let r = sy.admin(Method::POST, "/api/v1/rollout/start", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        eventually(30, async || sy.status().await["rollout"]["state"]
            == "promoted")
        .await,
        "the confirm gate was asked over HTTPS and let the rollout through: {}",
        sy.status().await
    );
    assert!(
        eventually(10, async || seen.lock().unwrap().iter().any(|(p, _, b)| p
            == "/events"
            && String::from_utf8_lossy(b).contains("\"promoted\"")))
        .await
    );
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|(p, _, _)| p == "/confirm"),
        "the confirm hook was asked"
    );
    for (path, sig, body) in &seen {
        let sig = sig.as_deref().unwrap_or_else(|| panic!("{path}: unsigned"));
        assert_eq!(
            sig,
            hmac("s3cret", body),
            "{path}: the signature matches the body"
        );
        assert_ne!(sig, hmac("another secret", body));
    }
}
