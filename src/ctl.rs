//! `switchyard ctl`: a thin client of the admin API. Every command is one
//! HTTP call; the output is a human table (or the raw JSON with `--json`).
//! Wrong tokens and unreachable admins get a message saying what to fix.

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use std::process::ExitCode;
use std::time::Duration;

use crate::cli::{CtlArgs, CtlCommand};
use switchyard_admin::wire;

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
    let base = args.admin.trim_end_matches('/').to_string();
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        bail!("admin URL {base:?} must start with http:// or https:// (set --admin or SWITCHYARD_ADMIN)");
    }
    let client = switchyard_admin::https_client(args.ca_file.as_deref(), "--ca-file")
        .map_err(|e| anyhow::anyhow!("{e}: point it at the PEM certificate of the CA that signed [admin] tls's certificate"))?;
    let api = Api {
        base,
        token,
        client,
    };
    match args.command {
        CtlCommand::Status { json } => {
            let s = api.call("GET", "/api/v1/status", None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print_status(&typed(s)?);
            }
        }
        CtlCommand::Weights { green } => {
            let r = api
                .call(
                    "PUT",
                    "/api/v1/weights",
                    Some(serde_json::to_value(wire::SetWeights { green })?),
                )
                .await?;
            let s: wire::Status = typed(r)?;
            println!(
                "weights: blue {}%  green {}%   (rollout {})",
                pct(s.weights.blue),
                pct(s.weights.green),
                s.rollout.state.as_str()
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
                print_history(&typed(h)?);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn action(api: &Api, name: &str, reason: Option<String>) -> anyhow::Result<()> {
    let body = reason
        .map(|r| serde_json::to_value(wire::ActionBody { reason: Some(r) }))
        .transpose()?;
    let s = api
        .call("POST", &format!("/api/v1/rollout/{name}"), body)
        .await?;
    println!("{name}: ok");
    print_status(&typed(s)?);
    Ok(())
}

struct Api {
    base: String,
    token: String,
    client: switchyard_admin::HttpsClient,
}

impl Api {
    /// One call; maps failures to messages that say what to fix.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
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
        let resp =
            match tokio::time::timeout(Duration::from_secs(10), self.client.request(req)).await {
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

/// Reads an answer as its API type; a mismatch means another switchyard version.
fn typed<T: serde::de::DeserializeOwned>(v: Value) -> anyhow::Result<T> {
    serde_json::from_value(v).context(
        "the admin API's answer is not what this switchyard expects: is the server another version?",
    )
}

/// A percentage without trailing zeros.
fn pct(f: f64) -> String {
    if f.fract() == 0.0 {
        format!("{f:.0}")
    } else {
        format!("{f}")
    }
}

fn print_status(s: &wire::Status) {
    let r = &s.rollout;
    let steps: Vec<String> = r.steps.iter().map(|w| pct(*w)).collect();
    // `step` is the 0-based index into `steps`, in JSON and here alike.
    let step = match r.step {
        Some(i) => format!("step {i} ({}%)", steps.get(i).map_or("?", String::as_str)),
        None => "no step".into(),
    };
    println!(
        "rollout   {:<12} {step}   candidate {}, stable {}   steps [{}]",
        r.state.as_str(),
        r.candidate,
        r.stable,
        steps.join(", ")
    );
    println!(
        "weights   blue {}%  green {}%",
        pct(s.weights.blue),
        pct(s.weights.green)
    );
    if let Some(h) = &r.holding {
        println!("holding   {h}");
    }
    if let Some(why) = &r.reason {
        println!("reason    {why}");
    }
    let a = &s.analysis;
    if let Some(v) = a.verdict {
        match &a.detail {
            Some(d) => println!("analysis  {v}: {d}"),
            None => println!("analysis  {v}"),
        }
    }
    for (name, g) in &s.gates {
        println!(
            "gate      {name}: {}{}",
            g.gate,
            g.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
    }
    if let Some(d) = &s.database {
        let lag = d
            .replication
            .as_ref()
            .map(|r| {
                format!(
                    "replication {} {}, lag {}",
                    r.state,
                    r.direction.as_deref().unwrap_or(""),
                    r.lag_seconds
                        .map(|l| format!("{l:.3}s"))
                        .unwrap_or_else(|| "unknown".into())
                )
            })
            .unwrap_or_default();
        println!(
            "database  writes go to {}{}; verified {}; schema {}; {lag}",
            d.writer,
            if d.write_gate.held {
                " (held for cutover)"
            } else {
                ""
            },
            d.verified.map_or("?".into(), |v| v.to_string()),
            d.schema_version.as_deref().unwrap_or("none"),
        );
    }
    println!(
        "{:<9} {:>8} {:>9} {:>8} {:>10} {:>10}   window {}s",
        "pool",
        "healthy",
        "requests",
        "errors",
        "p50 ms",
        "p99 ms",
        pct(a.window_seconds)
    );
    for (c, p) in [("blue", &s.pools.blue), ("green", &s.pools.green)] {
        let w = &p.window;
        let ms = |v: Option<f64>| v.map_or("-".into(), |f| format!("{:.1}", f * 1000.0));
        println!(
            "{c:<9} {:>8} {:>9} {:>8} {:>10} {:>10}",
            format!("{}/{}", p.healthy, p.upstreams.len()),
            w.requests,
            w.server_errors + w.transport_failures,
            ms(w.p50_seconds),
            ms(w.p99_seconds),
        );
    }
}

fn print_history(h: &wire::History) {
    if h.events.is_empty() {
        println!("no events yet");
        return;
    }
    for e in &h.events {
        let step = e.step.map_or("-".to_string(), |i| i.to_string());
        println!(
            "{}  #{:<4} {:<16} {:<16} {:<12} step {:<3} green {:>5}%  {}",
            e.at,
            e.seq,
            e.actor,
            e.kind,
            e.state.as_str(),
            step,
            pct(e.weights.green),
            e.reason.as_deref().unwrap_or("")
        );
    }
}
