//! A managed-database-like blue that only accepts TLS: switchyard connects
//! with `sslmode=verify-full` and a CA file (sessions, the replication
//! connection and pg_dump alike), refuses a server signed by another CA,
//! accepts a name mismatch only with `verify-ca`, and cannot fall back to
//! plain text.

mod support;

use switchyard_config::SyncMode;
use switchyard_sync::ephemeral::{find_bindir, EphemeralCluster};
use switchyard_sync::{clone, replicate, verify, Output};

struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    other_ca: String,
}

fn pki(names: &[&str]) -> Pki {
    let ca = |cn: &str| {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, cn.to_string());
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        (cert, key)
    };
    let (ca_cert, ca_key) = ca("switchyard test CA");
    let (other, _) = ca("someone else's CA");
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let params = rcgen::CertificateParams::new(names).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
    Pki {
        ca: ca_cert.pem(),
        server_cert: cert.pem(),
        server_key: key.serialize_pem(),
        other_ca: other.pem(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_only_blue_works_with_verify_full_and_is_refused_with_a_wrong_ca() {
    let pki = pki(&["localhost"]);
    let bindir = find_bindir().expect("PostgreSQL installed");
    let blue = EphemeralCluster::start_tls(&bindir, &pki.server_cert, &pki.server_key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ca, other) = (dir.path().join("ca.pem"), dir.path().join("other.pem"));
    std::fs::write(&ca, &pki.ca).unwrap();
    std::fs::write(&other, &pki.other_ca).unwrap();
    // Green's server (running as `postgres`) reads the CA file for its
    // subscription to blue.
    use std::os::unix::fs::PermissionsExt;
    for p in [dir.path(), ca.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    blue.create_db("tls_blue").await.unwrap();
    let url = |mode: &str, root: &std::path::Path| {
        format!(
            "postgres://postgres@localhost:{}/tls_blue?sslmode={mode}&sslrootcert={}",
            blue.port(),
            root.display()
        )
    };
    let mut pair = support::Pair::new("tls_green").await;
    pair.config.blue = url("verify-full", &ca);
    pair.config.mode = SyncMode::Replicate;
    // Plain text is refused by the server, so everything below is over TLS.
    let plain = format!(
        "postgres://postgres@localhost:{}/tls_blue?sslmode=disable",
        blue.port()
    );
    let e = switchyard_sync::pg::connect(switchyard_sync::Side::Blue, &plain)
        .await
        .map(drop)
        .expect_err("plain text refused")
        .to_string();
    assert!(e.contains("no encryption") || e.contains("pg_hba"), "{e}");
    let admin = switchyard_sync::pg::connect_owner(switchyard_sync::Side::Blue, &pair.config.blue)
        .await
        .expect("verify-full with the right CA connects");
    admin
        .batch_execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance numeric);
             INSERT INTO accounts SELECT g, g FROM generate_series(1, 1000) g;",
        )
        .await
        .unwrap();

    // Clone (pg_dump and the replication connection over TLS too), then
    // stream and verify.
    let (_, h) = clone::clone(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
        2,
        false,
        Output::Quiet,
    )
    .await
    .expect("clone from a TLS-only blue");
    let v = verify::verify(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
        2,
        Some(&h.id),
        Output::Quiet,
    )
    .await
    .unwrap();
    assert!(v.passed, "{}", v.render());
    h.release().await;
    // Green's server reaches blue with the same URL: it must trust the CA too,
    // which libpq on the server does with the sslrootcert path.
    replicate::subscribe(
        &pair.config,
        switchyard_sync::replication::Direction::Forward,
    )
    .await
    .unwrap();
    admin
        .batch_execute("INSERT INTO accounts VALUES (1001, 1)")
        .await
        .unwrap();
    match replicate::wait_caught_up(
        &pair.config,
        replicate::Direction::Forward,
        std::time::Duration::from_secs(30),
    )
    .await
    .unwrap()
    {
        replicate::CatchUp::CaughtUp { .. } => {}
        other => panic!("{other:?}"),
    }
    replicate::cleanup(&pair.config).await.unwrap();

    // Someone else's CA: refused, naming the certificate problem.
    let e = switchyard_sync::pg::connect(switchyard_sync::Side::Blue, &url("verify-full", &other))
        .await
        .map(drop)
        .expect_err("a server signed by another CA is refused")
        .to_string();
    assert!(
        e.to_lowercase().contains("certificate") || e.contains("UnknownIssuer"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_accepts_a_certificate_for_another_name_and_verify_full_does_not() {
    let pki = pki(&["db.internal"]);
    let bindir = find_bindir().expect("PostgreSQL installed");
    let blue = EphemeralCluster::start_tls(&bindir, &pki.server_cert, &pki.server_key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca).unwrap();
    let url = |mode: &str| {
        format!(
            "postgres://postgres@localhost:{}/postgres?sslmode={mode}&sslrootcert={}",
            blue.port(),
            ca.display()
        )
    };
    let e = switchyard_sync::pg::connect(switchyard_sync::Side::Blue, &url("verify-full"))
        .await
        .map(drop)
        .expect_err("the name does not match")
        .to_string();
    assert!(
        e.to_lowercase().contains("name") || e.contains("NotValidForName"),
        "{e}"
    );
    switchyard_sync::pg::connect(switchyard_sync::Side::Blue, &url("verify-ca"))
        .await
        .expect("verify-ca checks the chain only");
    switchyard_sync::pg::connect(switchyard_sync::Side::Blue, &url("require"))
        .await
        .expect("require encrypts");
}
