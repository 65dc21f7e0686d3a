//! An operator opens the dashboard in a real (headless) browser while a
//! rollout runs: the page shows the rollout's state, weights and steps, and
//! a click on Pause pauses it. A screenshot is kept in
//! `target/test-artifacts/dashboard.png`.

#[path = "support/browser.rs"]
mod browser;
#[path = "support/load.rs"]
mod load;
mod support;

use browser::Browser;
use http::Method;
use load::Load;
use std::time::Duration;
use support::{deployment, eventually, switchyard::TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_running_rollout_and_its_pause_button_pauses_it() {
    let (_blue, _green, sy) = deployment(|b| {
        b.extra(
            "[rollout]\nsteps = [10, 50, 100]\nbake = \"30s\"\n\n[rollout.analysis]\nwindow = \"3s\"\ninterval = \"100ms\"\nmin_requests = 5\n",
        )
    })
    .await;
    let _load = Load::start(sy.url("/"), 2, 100_000, Duration::from_secs(120));
    let r = sy.admin(Method::POST, "/api/v1/rollout/start", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        eventually(30, async || sy.status().await["rollout"]["state"]
            == "progressing")
        .await,
        "the rollout reached its first step"
    );

    // The page itself needs no token; the API calls it makes do.
    let page = sy.client.get(&sy.admin_url("/")).await.unwrap();
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-security-policy")
        .is_some_and(|p| p.contains("default-src 'self'")));

    let mut b = Browser::open(&format!("{}#token={TOKEN}", sy.admin_url("/"))).await;
    assert!(
        b.wait_for(
            "document.getElementById('state').textContent === 'progressing'",
            30
        )
        .await,
        "the page shows the rollout state: {}",
        b.eval("document.body.innerText").await
    );
    assert!(
        b.wait_for(
            "document.getElementById('weights-green').textContent === '10'",
            10
        )
        .await
    );
    assert!(
        b.wait_for(
            "document.querySelector('#steps li.current')?.textContent === '10%'",
            10
        )
        .await
    );
    assert!(
        b.wait_for("document.getElementById('conn').textContent === 'live'", 10)
            .await,
        "the events stream is connected"
    );
    assert!(
        b.wait_for("document.querySelectorAll('#events li').length >= 2", 10)
            .await,
        "event history shown"
    );
    assert!(
        b.eval("location.hash").await == "",
        "the token is taken out of the address bar"
    );
    let png = b.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dashboard.png"), &png).unwrap();

    // The operator clicks Pause: the rollout pauses, and the page says so.
    b.eval("document.getElementById('action-reason').value = 'looking at logs'; document.getElementById('btn-pause').click(); true")
        .await;
    assert!(
        eventually(10, async || sy.status().await["rollout"]["state"]
            == "paused")
        .await,
        "a click on pause paused the rollout"
    );
    let s = sy.status().await;
    assert_eq!(s["rollout"]["reason"], "looking at logs", "{s:#}");
    assert!(
        b.wait_for(
            "document.getElementById('state').textContent === 'paused'",
            10
        )
        .await
    );
    assert!(
        b.wait_for("[...document.querySelectorAll('#events li')].some(li => li.textContent.includes('paused'))", 10).await,
        "the pause arrived over the events stream"
    );
    // A wrong token is refused and the page asks again.
    let mut b2 = Browser::open(&format!("{}#token=wrong", sy.admin_url("/"))).await;
    assert!(
        b2.wait_for("!document.getElementById('login').hidden", 15)
            .await
    );
}
