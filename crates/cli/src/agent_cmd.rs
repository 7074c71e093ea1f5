//! `gosok agent`: a node agent (`docs/AGENTS.md`, `crates/agent`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use gosok_agent::config::{self, Config, NodeTemplate};
use gosok_agent::discovery::{Discovery, Fake, Nvml};
use gosok_agent::sandbox::{ISOLATION_LABEL, Isolation, SandboxConfig};
use gosok_model::Catalog;
use gosok_model::agent::MAX_AGENT_NODES;
use gosok_model::error::check_name;

#[derive(Args)]
pub struct AgentArgs {
    /// The controller's URL (http://HOST:PORT or https://HOST:PORT), or several replicas'
    /// comma-separated (the agent moves to the next when one fails); else $GOSOK_SERVER.
    #[arg(long)]
    server: Option<String>,
    /// The CA certificate(s) (PEM) an https:// controller's certificate must chain to; else
    /// $GOSOK_CA; default: the public CAs.
    #[arg(long, value_name = "PATH")]
    ca: Option<PathBuf>,
    /// A file holding the agent token (`gosok token create --agent`), readable by its owner
    /// only (mode 0600); else $GOSOK_TOKEN. Never on the command line: every local user can
    /// read a process's arguments.
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// How tasks are isolated: `sandbox` (each task as its tenant's unprivileged account, in
    /// its own control group and mount namespace; needs root and control groups) or `none`
    /// (tasks run as the agent's user, unlimited: only for trusted tenants). The agent refuses
    /// to start when the sandbox cannot be had, unless told `none`.
    #[arg(long, default_value = "sandbox", value_parser = ["sandbox", "none"])]
    isolation: String,
    /// The uids (and gids) of tenants' accounts: FIRST-LAST.
    #[arg(long, value_name = "FIRST-LAST", default_value = "200000-265535")]
    uid_range: String,
    /// The machine-wide tenant → uid map shared by every agent of the machine.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/lib/gosok/tenant-uids"
    )]
    uid_map: PathBuf,
    /// Most processes and threads one task may have (its control group's pids limit).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(16..=4_194_304))]
    task_pids_max: u64,
    /// A directory tasks must not see (repeatable; the work directory is always hidden).
    #[arg(long = "hide", value_name = "PATH")]
    hide: Vec<PathBuf>,
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
    /// A node taint KEY or KEY=VALUE (repeatable): only jobs that tolerate it are placed on
    /// the node. Applies to nodes the cluster file does not declare (a declared node keeps
    /// the taints of its declaration).
    #[arg(long = "taint", value_name = "KEY[=VALUE]")]
    taints: Vec<String>,
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

/// Reads the agent token from a file only its owner can read.
fn read_token_file(path: &std::path::Path) -> anyhow::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(path).with_context(|| format!("--token-file {}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        bail!(
            "--token-file {}: mode {:o} lets other users read the token; chmod 600 it",
            path.display(),
            meta.mode() & 0o777
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--token-file {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() || token.len() > 512 || token.chars().any(char::is_whitespace) {
        bail!(
            "--token-file {}: expected one token on one line",
            path.display()
        );
    }
    Ok(token.to_string())
}

/// `FIRST-LAST`, both above 0 (root) and FIRST ≤ LAST.
fn parse_uid_range(s: &str) -> anyhow::Result<(u32, u32)> {
    let parsed = s
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?)));
    match parsed {
        Some((a, b)) if a > 0 && a <= b && b < u32::MAX => Ok((a, b)),
        _ => bail!(
            "--uid-range {s:?}: expected FIRST-LAST with 0 < FIRST <= LAST < 4294967295, e.g. 200000-265535"
        ),
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
    // One controller, or the replicas of one highway comma-separated.
    for one in server.split(',').map(str::trim) {
        if !one.starts_with("http://") && !one.starts_with("https://") {
            bail!(
                "--server {one:?}: expected http://HOST:PORT or https://HOST:PORT (several replicas: comma-separated)"
            );
        }
    }
    let ca =
        a.ca.clone()
            .or_else(|| std::env::var_os("GOSOK_CA").map(PathBuf::from));
    let tls = match &ca {
        Some(path) => Some(gosok_agent::client::tls_trusting(path)?),
        None => None,
    };
    let token = match &a.token_file {
        Some(path) => read_token_file(path)?,
        None => from_env(None, "GOSOK_TOKEN", "token-file")?,
    };
    let isolation = match a.isolation.as_str() {
        "none" => Isolation::None,
        _ => Isolation::Sandbox,
    };
    let (uid_first, uid_last) = parse_uid_range(&a.uid_range)?;
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
        if k == ISOLATION_LABEL {
            bail!("--label {k:?}: the agent sets this label itself (--isolation)");
        }
        if labels.insert(k.clone(), v).is_some() {
            bail!("--label {k:?} is given twice");
        }
    }
    labels.insert(ISOLATION_LABEL.to_string(), isolation.name().to_string());
    for t in &a.taints {
        gosok_model::Taint::parse("--taint", t).map_err(|e| anyhow::anyhow!("{e}"))?;
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
        taints: a.taints.clone(),
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
    cfg.isolation = isolation;
    cfg.tls = tls;
    cfg.sandbox = SandboxConfig {
        uid_first,
        uid_count: uid_last - uid_first + 1,
        uid_map: a.uid_map,
        pids_max: a.task_pids_max,
        hide: a.hide,
    };
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
