//! `gosok server status`: the controller replicas as one of them sees them.

use std::time::Duration;

use clap::Args;
use serde_json::Value;

use crate::client::Output;

#[derive(Args)]
pub struct StatusArgs {
    /// Controller URLs, comma-separated; the first that answers is asked (default:
    /// GOSOK_SERVER, else http://127.0.0.1:8080).
    #[arg(long)]
    server: Option<String>,
    /// `json` prints the API's JSON.
    #[arg(long, short, value_enum, default_value_t = Output::Table)]
    output: Output,
}

pub fn status(a: StatusArgs) -> anyhow::Result<()> {
    let servers = a
        .server
        .or_else(|| std::env::var("GOSOK_SERVER").ok())
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let http = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build();
    let mut errors = Vec::new();
    for base in servers.split(',').map(|s| s.trim().trim_end_matches('/')) {
        if base.is_empty() {
            continue;
        }
        match http.get(&format!("{base}/v1/replica")).call() {
            Ok(r) => {
                let v: Value = serde_json::from_str(&r.into_string()?)?;
                print(&v, a.output);
                return Ok(());
            }
            Err(ureq::Error::Status(404, _)) => errors.push(format!(
                "{base}: not a replica (a controller on SQLite has no replicas; see /healthz)"
            )),
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
