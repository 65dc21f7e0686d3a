//! `switchyard ctl`: a thin client of the admin API. Every command is one
//! HTTP call; the output is a human table (or the raw JSON with `--json`).
//! Wrong tokens and unreachable admins get a message saying what to fix.

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::process::ExitCode;
use std::time::Duration;

use crate::cli::{CtlArgs, CtlCommand};

/// Runs one `ctl` command. Called from `main`.
pub fn ctl(args: CtlArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: CtlArgs) -> anyhow::Result<ExitCode> {
    let token = match args.token.as_deref() {
        Some(t) if !t.is_empty() => t.to_string(),
        _ => bail!("no admin token: pass --token or set SWITCHYARD_TOKEN (the [admin] token of the config)"),
    };
    let api = Api {
        base: args.admin.trim_end_matches('/').to_string(),
        token,
    };
    match args.command {
        CtlCommand::Status { json } => {
            let s = api.call("GET", "/api/v1/status", None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print_status(&s);
            }
        }
        CtlCommand::Weights { green } => {
            let r = api
                .call("PUT", "/api/v1/weights", Some(json!({ "green": green })))
                .await?;
            println!(
                "weights: blue {}%  green {}%   (rollout {})",
                num(&r["weights"]["blue"]),
                num(&r["weights"]["green"]),
                r["rollout"]["state"].as_str().unwrap_or("?")
            );
        }
        CtlCommand::Start(r) => action(&api, "start", r.reason).await?,
        CtlCommand::Pause(r) => action(&api, "pause", r.reason).await?,
        CtlCommand::Resume(r) => action(&api, "resume", r.reason).await?,
        CtlCommand::Promote(r) => action(&api, "promote", r.reason).await?,
        CtlCommand::Abort(r) => action(&api, "abort", r.reason).await?,
        CtlCommand::History { limit, json } => {
            let path = match limit {
                Some(n) => format!("/api/v1/history?limit={n}"),
                None => "/api/v1/history".to_string(),
            };
            let h = api.call("GET", &path, None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&h)?);
            } else {
                print_history(&h);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn action(api: &Api, name: &str, reason: Option<String>) -> anyhow::Result<()> {
    let body = reason.map(|r| json!({ "reason": r }));
    let s = api
        .call("POST", &format!("/api/v1/rollout/{name}"), body)
        .await?;
    println!("{name}: ok");
    print_status(&s);
    Ok(())
}

struct Api {
    base: String,
    token: String,
}

impl Api {
    /// One call; maps failures to messages that say what to fix.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        if !self.base.starts_with("http://") {
            bail!(
                "admin URL {:?} must start with http:// (set --admin or SWITCHYARD_ADMIN)",
                self.base
            );
        }
        let actor = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown".into());
        let req = http::Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .header("x-switchyard-actor", format!("ctl:{actor}"))
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .with_context(|| format!("bad admin URL {url:?} (set --admin or SWITCHYARD_ADMIN)"))?;
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let resp = match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
            Err(_) => bail!("the admin API at {} did not answer within 10s", self.base),
            Ok(Err(e)) => {
                let mut cause = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    cause = s.to_string();
                    src = s.source();
                }
                bail!(
                    "cannot reach the admin API at {}: {cause}. Is switchyard running? \
                     Point --admin (or SWITCHYARD_ADMIN) at its [admin] listen address",
                    self.base
                )
            }
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .context("the admin API's answer broke off")?
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or_else(
            |_| json!({ "error": String::from_utf8_lossy(&bytes).trim().to_string() }),
        );
        let msg = v["error"].as_str().unwrap_or("").to_string();
        match status.as_u16() {
            200..=299 => Ok(v),
            401 => bail!(
                "the admin API refused the token ({msg}): check --token or SWITCHYARD_TOKEN against [admin] token"
            ),
            409 => bail!("not allowed now: {msg}"),
            400 => bail!("rejected: {msg}"),
            404 => bail!("{url}: not found ({msg}); is {} a switchyard admin API?", self.base),
            s => bail!("the admin API answered {s}: {msg}"),
        }
    }
}

/// A percentage or count without trailing zeros.
fn num(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 => format!("{f:.0}"),
        Some(f) => format!("{f}"),
        None => "-".into(),
    }
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

fn print_status(s: &Value) {
    let r = &s["rollout"];
    let steps: Vec<String> = r["steps"]
        .as_array()
        .map(|a| a.iter().map(num).collect())
        .unwrap_or_default();
    let step = match r["step"].as_u64() {
        Some(i) => format!(
            "step {}/{} ({}%)",
            i + 1,
            steps.len(),
            steps.get(i as usize).map_or("?", String::as_str)
        ),
        None => "no step".into(),
    };
    println!(
        "rollout   {:<12} {step}   candidate {}, stable {}   steps [{}]",
        text(&r["state"]),
        text(&r["candidate"]),
        text(&r["stable"]),
        steps.join(", ")
    );
    println!(
        "weights   blue {}%  green {}%",
        num(&s["weights"]["blue"]),
        num(&s["weights"]["green"])
    );
    if let Some(h) = r["holding"].as_str() {
        println!("holding   {h}");
    }
    if let Some(why) = r["reason"].as_str() {
        println!("reason    {why}");
    }
    let a = &s["analysis"];
    if let Some(v) = a["verdict"].as_str() {
        match a["detail"].as_str() {
            Some(d) => println!("analysis  {v}: {d}"),
            None => println!("analysis  {v}"),
        }
    }
    println!(
        "{:<9} {:>8} {:>9} {:>8} {:>10} {:>10}   window {}s",
        "pool",
        "healthy",
        "requests",
        "errors",
        "p50 ms",
        "p99 ms",
        num(&a["window_seconds"])
    );
    for c in ["blue", "green"] {
        let p = &s["pools"][c];
        let w = &p["window"];
        let errors = w["server_errors"].as_u64().unwrap_or(0)
            + w["transport_failures"].as_u64().unwrap_or(0);
        let ms = |v: &Value| v.as_f64().map_or("-".into(), |f| format!("{f:.1}"));
        println!(
            "{c:<9} {:>8} {:>9} {:>8} {:>10} {:>10}",
            format!(
                "{}/{}",
                num(&p["healthy"]),
                p["upstreams"].as_array().map_or(0, Vec::len)
            ),
            num(&w["requests"]),
            errors,
            ms(&w["p50"]),
            ms(&w["p99"]),
        );
    }
}

fn print_history(h: &Value) {
    let events = h["events"].as_array().cloned().unwrap_or_default();
    if events.is_empty() {
        println!("no events yet");
        return;
    }
    for e in events {
        let step = e["step"]
            .as_u64()
            .map_or("-".to_string(), |i| (i + 1).to_string());
        println!(
            "{}  #{:<4} {:<16} {:<16} {:<12} step {:<3} green {:>5}%  {}",
            text(&e["at"]),
            num(&e["seq"]),
            text(&e["actor"]),
            text(&e["kind"]),
            text(&e["state"]),
            step,
            num(&e["weights"]["green"]),
            e["reason"].as_str().unwrap_or("")
        );
    }
}
