//! `gosok agent`: a node agent (`docs/AGENTS.md`, `crates/agent`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use gosok_agent::config::{self, Config, NodeTemplate};
use gosok_agent::discovery::{Discovery, Fake, Nvml};
use gosok_model::Catalog;
use gosok_model::agent::MAX_AGENT_NODES;
use gosok_model::error::check_name;

#[derive(Args)]
pub struct AgentArgs {
    /// The controller's URL (http://HOST:PORT); else $GOSOK_SERVER.
    #[arg(long)]
    server: Option<String>,
    /// An agent token (`gosok token create --agent`); else $GOSOK_TOKEN.
    #[arg(long)]
    token: Option<String>,
    /// The site the nodes are in.
    #[arg(long)]
    site: String,
    /// The rack the nodes are in.
    #[arg(long)]
    rack: String,
    /// The node's name; with --nodes, the prefix of the virtual nodes' names (NAME-000, …).
    /// Default: this machine's host name.
    #[arg(long)]
    name: Option<String>,
    /// Register N virtual nodes on this machine (for tests and demos), each with the same
    /// accelerators. Their CPU and memory default to the machine's divided by N; given values
    /// may over-commit the machine, which gosok allows for virtual nodes.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_AGENT_NODES as u64))]
    nodes: Option<u64>,
    /// Declare the accelerators instead of discovering them (NVML): COUNTxMODEL with a model
    /// of the catalog, e.g. 8xH100; or `none`.
    #[arg(long, value_name = "COUNTxMODEL")]
    fake_accelerators: Option<String>,
    /// CPU cores of each node (default: the machine's, divided among virtual nodes).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    cpu_cores: Option<u64>,
    /// Memory of each node in MiB (default: the machine's, divided among virtual nodes).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_u64 << 40))]
    mem_mib: Option<u64>,
    /// Where other tasks reach this node's tasks (MASTER_ADDR). Default: 127.0.0.1 when the
    /// controller is on loopback, else this machine's host name.
    #[arg(long)]
    address: Option<String>,
    /// A node label KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Tasks' directories and logs. Default: ./gosok-agent-work, or $TMPDIR/gosok-agent-work
    /// when the current directory is not writable.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// The log server's address (the controller reads task logs there). Port 0: a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    logs_listen: String,
}

fn from_env(flag: Option<String>, var: &str, name: &str) -> anyhow::Result<String> {
    match flag
        .or_else(|| std::env::var(var).ok())
        .filter(|s| !s.trim().is_empty())
    {
        Some(v) => Ok(v.trim().to_string()),
        None => bail!("--{name} (or ${var}) is required"),
    }
}

fn parse_label(s: &str) -> anyhow::Result<(String, String)> {
    let Some((k, v)) = s.split_once('=') else {
        bail!("--label {s:?}: expected KEY=VALUE");
    };
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/');
    if k.is_empty() || k.len() > 128 || !k.chars().all(ok) {
        bail!("--label {s:?}: the key must be 1 to 128 letters, digits, '-', '_', '.' or '/'");
    }
    if v.len() > 256 || v.chars().any(|c| c.is_control()) {
        bail!("--label {s:?}: the value must be at most 256 printable characters");
    }
    Ok((k.to_string(), v.to_string()))
}

fn default_work_dir() -> PathBuf {
    let here = PathBuf::from("gosok-agent-work");
    let writable = std::env::current_dir().is_ok_and(|d| writable(&d));
    if writable {
        here
    } else {
        std::env::temp_dir().join("gosok-agent-work")
    }
}

fn writable(dir: &std::path::Path) -> bool {
    let p = dir.join(format!(".gosok-agent-probe-{}", std::process::id()));
    let ok = std::fs::write(&p, b"").is_ok();
    let _ = std::fs::remove_file(&p);
    ok
}

/// Turns the flags into the agent's configuration, with every flag checked.
pub fn config(a: AgentArgs) -> anyhow::Result<Config> {
    let server = from_env(a.server, "GOSOK_SERVER", "server")?;
    if !server.starts_with("http://") {
        bail!("--server {server:?}: expected http://HOST:PORT (TLS is not supported yet)");
    }
    let token = from_env(a.token, "GOSOK_TOKEN", "token")?;
    check_name("--site", &a.site).map_err(|e| anyhow::anyhow!("{e}"))?;
    check_name("--rack", &a.rack).map_err(|e| anyhow::anyhow!("{e}"))?;
    let name = a.name.unwrap_or_else(config::hostname);
    check_name("--name", &name).map_err(|e| anyhow::anyhow!("{e}"))?;
    let catalog = Catalog::builtin();
    let devices = match &a.fake_accelerators {
        Some(spec) => Fake::parse(spec, &catalog)?.devices,
        None => Nvml::new(catalog)
            .discover()
            .context("discovering NVIDIA accelerators (NVML)")?,
    };
    if let Some(d) = devices.iter().find(|d| d.model != devices[0].model) {
        bail!(
            "this machine has accelerators of two models ({} and {}); a node has one model",
            devices[0].model,
            d.model
        );
    }
    let share = a.nodes.unwrap_or(1);
    let cpu_cores = a
        .cpu_cores
        .unwrap_or_else(|| (config::machine_cpu_cores() / share).max(1));
    let mem_mib = a
        .mem_mib
        .unwrap_or_else(|| (config::machine_mem_mib() / share).max(1));
    let mut labels = BTreeMap::new();
    for l in &a.labels {
        let (k, v) = parse_label(l)?;
        if labels.insert(k.clone(), v).is_some() {
            bail!("--label {k:?} is given twice");
        }
    }
    let logs_listen: SocketAddr = a.logs_listen.parse().map_err(|_| {
        anyhow::anyhow!(
            "--logs-listen {:?}: expected IP:PORT, e.g. 127.0.0.1:0",
            a.logs_listen
        )
    })?;
    let nodes = NodeTemplate {
        name,
        count: a.nodes,
        site: a.site,
        rack: a.rack,
        cpu_cores,
        mem_mib,
        devices,
        labels,
    }
    .expand();
    let mut cfg = Config::new(
        &server,
        &token,
        nodes,
        a.work_dir.unwrap_or_else(default_work_dir),
    );
    if let Some(addr) = a.address {
        if addr.trim().is_empty() || addr.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!("--address {addr:?}: expected a host name or an IP address");
        }
        cfg.address = addr;
    }
    cfg.logs_listen = logs_listen;
    cfg.handle_signals = true;
    // The watchdog is this binary again: `gosok agent-watchdog WORK_DIR`.
    cfg.watchdog = Some(vec![
        std::env::current_exe()
            .context("cannot find the gosok binary for the agent's watchdog")?
            .into_os_string(),
        "agent-watchdog".into(),
    ]);
    Ok(cfg)
}

pub fn run(a: AgentArgs) -> anyhow::Result<()> {
    let cfg = config(a)?;
    crate::server_cmd::init_logging();
    gosok_agent::run(cfg)
}
