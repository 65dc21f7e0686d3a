//! An operator drives a whole rollout with `switchyard ctl` alone.

mod support;

use support::{eventually, Switchyard};

fn ctl(sy: Option<&Switchyard>, admin: &str, token: Option<&str>, args: &[&str]) -> support::Run {
    let mut cmd = support::switchyard_command();
    cmd.arg("ctl")
        .env_remove("SWITCHYARD_TOKEN")
        .env_remove("SWITCHYARD_ADMIN");
    let admin = sy
        .map(|s| format!("http://{}", s.admin))
        .unwrap_or(admin.to_string());
    cmd.env("SWITCHYARD_ADMIN", admin);
    if let Some(t) = token {
        cmd.env("SWITCHYARD_TOKEN", t);
    }
    support::run(cmd.args(args))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_drives_a_rollout_with_ctl_alone() {
    let (_blue, _green, sy) = support::deployment(|b| {
        b.extra(
            "[rollout]\nsteps = [10, { weight = 50, bake = \"1h\" }, 100]\nbake = \"200ms\"\n\
             [rollout.analysis]\nwindow = \"2s\"\ninterval = \"50ms\"\nmin_requests = 5\n",
        )
    })
    .await;
    let token = Some(support::switchyard::TOKEN);
    // Traffic so analysis can judge the candidate.
    let url = sy.url("/");
    let client = sy.client.clone();
    let traffic = tokio::spawn(async move {
        for _ in 0..20_000 {
            let _ = client.get(&url).await;
        }
    });

    let r = ctl(Some(&sy), "", token, &["status"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("idle"), "{}", r.stdout);

    let r = ctl(Some(&sy), "", token, &["start", "--reason", "release 2.0"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    // The second step bakes for an hour: the rollout parks at 50%.
    let parked = eventually(30, async || sy.status().await["weights"]["green"] == 50.0).await;
    assert!(parked, "{}", sy.status().await);

    let r = ctl(Some(&sy), "", token, &["pause"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let r = ctl(Some(&sy), "", token, &["status", "--json"]);
    let s: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(s["rollout"]["state"], "paused");

    let r = ctl(Some(&sy), "", token, &["weights", "--green", "20"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("green 20"), "{}", r.stdout);
    let r = ctl(Some(&sy), "", token, &["resume"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let r = ctl(Some(&sy), "", token, &["promote", "--reason", "looks good"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let promoted = eventually(10, async || {
        sy.status().await["rollout"]["state"] == "promoted"
    })
    .await;
    assert!(promoted, "{}", sy.status().await);
    assert_eq!(sy.status().await["weights"]["green"], 100.0);

    let r = ctl(Some(&sy), "", token, &["history"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("release 2.0") && r.stdout.contains("looks good"),
        "{}",
        r.stdout
    );

    // Mistakes get messages that say what to fix, and change nothing.
    let r = ctl(Some(&sy), "", Some("wrong"), &["abort"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.to_lowercase().contains("token"), "{}", r.stderr);
    let r = ctl(Some(&sy), "", None, &["status"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("SWITCHYARD_TOKEN"), "{}", r.stderr);
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let r = ctl(None, &format!("http://{dead}"), token, &["status"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains(&dead.to_string()),
        "names the admin it tried: {}",
        r.stderr
    );
    assert_eq!(sy.status().await["rollout"]["state"], "promoted");
    traffic.abort();
}
