//! `gosok server status`: the controller replicas as one of them sees them.

use std::time::Duration;

use clap::Args;
use serde_json::Value;

use crate::client::{Client, Conn, Output};

#[derive(Args)]
pub struct StatusArgs {
    /// `--server` may name several replicas, comma-separated: the first that answers is
    /// asked. The status needs an admin token (`--token`, GOSOK_TOKEN or the client config).
    #[command(flatten)]
    c: Conn,
}

pub fn status(a: StatusArgs) -> anyhow::Result<()> {
    let client = Client::new(&a.c)?;
    let (bases, http, token) = client.parts();
    let mut errors = Vec::new();
    for base in bases {
        let mut req = http
            .get(&format!("{base}/v1/replica"))
            .timeout(Duration::from_secs(5));
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        match req.call() {
            Ok(r) => {
                let v: Value = serde_json::from_str(&r.into_string()?)?;
                print(&v, client.output);
                return Ok(());
            }
            Err(ureq::Error::Status(404, _)) => errors.push(format!(
                "{base}: not a replica (a controller on SQLite has no replicas; see /healthz)"
            )),
            Err(ureq::Error::Status(code @ (401 | 403), r)) => {
                let v: Value = serde_json::from_str(&r.into_string().unwrap_or_default())
                    .unwrap_or(Value::Null);
                errors.push(format!(
                    "{base}: {code}: {}\nhint: the replicas' status needs an admin token: pass --token (the one `gosok server init` printed), set GOSOK_TOKEN, or put `token = \"...\"` in the client config",
                    v["error"]["message"].as_str().unwrap_or("refused")
                ))
            }
            Err(e) => errors.push(format!("{base}: {e}")),
        }
    }
    anyhow::bail!("no controller answered: {}", errors.join("; "))
}

fn print(v: &Value, output: Output) {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        return;
    }
    let s = |x: &Value| match x {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        x => x.to_string(),
    };
    println!("store:   {}", s(&v["store"]));
    println!(
        "term:    {}    leader: {}    log: {} records    lease: {} ms",
        s(&v["term"]),
        s(&v["leader_url"]),
        s(&v["log_seq"]),
        s(&v["lease_ms"])
    );
    if let Some(e) = v["error"].as_str() {
        println!("error:   {e}");
    }
    println!(
        "{:<32} {:<12} {:<7} {:>10} {:>8} {:>9}",
        "URL", "ROLE", "LEADER", "APPLIED", "LAG", "SEEN_MS"
    );
    for r in v["replicas"].as_array().into_iter().flatten() {
        println!(
            "{:<32} {:<12} {:<7} {:>10} {:>8} {:>9}",
            s(&r["url"]),
            s(&r["role"]),
            s(&r["leader"]),
            s(&r["applied_seq"]),
            s(&r["lag_records"]),
            s(&r["seen_ms_ago"])
        );
    }
}
