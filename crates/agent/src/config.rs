//! What an agent is started with, and the machine facts its defaults come from.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use gosok_model::agent::RegisterNode;
use gosok_model::topology::run_node_name;

use crate::discovery::Device;
use crate::sandbox::{Isolation, SandboxConfig};

/// Everything `run` needs; the CLI fills it from flags and the machine.
#[derive(Debug, Clone)]
pub struct Config {
    /// The controller's base URL (`http://host:port`), or several replicas' comma-separated.
    pub server: String,
    /// An agent token.
    pub token: String,
    /// Random per process start (`hostname-8hex`, see `agent_id`).
    pub agent_id: String,
    /// Where the nodes' tasks can be reached by other tasks.
    pub address: String,
    pub nodes: Vec<RegisterNode>,
    /// Tasks' directories and logs, and the list of started process groups.
    pub work_dir: PathBuf,
    /// The log server's address; port 0 takes a free one.
    pub logs_listen: SocketAddr,
    /// Setting it makes `run` stop every task (with its grace period) and return.
    pub stop: Arc<AtomicBool>,
    /// Whether SIGTERM and SIGINT stop the agent (the binary; tests stop it with `stop`).
    pub handle_signals: bool,
    /// How often running tasks are polled.
    pub tick: Duration,
    /// A command that runs [`crate::leftovers::watchdog`] for the work directory (appended as
    /// its last argument): it kills the tasks if the agent dies, or if the agent's lease runs
    /// out while the agent cannot act (frozen). None: no watchdog.
    pub watchdog: Option<Vec<std::ffi::OsString>>,
    /// How tasks are isolated; `Sandbox` needs root and control groups.
    pub isolation: Isolation,
    pub sandbox: SandboxConfig,
    /// The CAs an `https://` controller is checked against (None: the public ones).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// How long one turn of the main loop may spend starting tasks before it syncs, reports
    /// and polls again: a flood of starts costs time, never the lease.
    pub spawn_budget: Duration,
}

impl Config {
    pub fn new(server: &str, token: &str, nodes: Vec<RegisterNode>, work_dir: PathBuf) -> Config {
        Config {
            server: server.to_string(),
            token: token.to_string(),
            agent_id: agent_id(),
            address: default_address(server),
            nodes,
            work_dir,
            logs_listen: "127.0.0.1:0".parse().expect("a literal address"),
            stop: Arc::new(AtomicBool::new(false)),
            handle_signals: false,
            tick: Duration::from_millis(50),
            watchdog: None,
            isolation: Isolation::None,
            sandbox: SandboxConfig::default(),
            spawn_budget: Duration::from_millis(20),
            tls: None,
        }
    }
}

/// How the nodes of one agent look; `expand` names them.
#[derive(Debug, Clone)]
pub struct NodeTemplate {
    pub name: String,
    /// `Some(n)`: n virtual nodes `NAME-000`…, as the cluster file names a run of `count` nodes.
    pub count: Option<u64>,
    pub site: String,
    pub rack: String,
    /// Per node.
    pub cpu_cores: u64,
    pub mem_mib: u64,
    /// Each node's accelerators (virtual nodes all get the same).
    pub devices: Vec<Device>,
    pub labels: BTreeMap<String, String>,
    /// `key` or `key=value` (see `NodeSpec::taints`).
    pub taints: Vec<String>,
}

/// The label virtual nodes carry.
pub const VIRTUAL_LABEL: &str = "gosok.io/virtual";

impl NodeTemplate {
    pub fn expand(&self) -> Vec<RegisterNode> {
        let accelerator = self.devices.first().map(|d| d.model.clone());
        let node = |name: String, virtual_: bool| {
            let mut labels = self.labels.clone();
            if virtual_ {
                labels.insert(VIRTUAL_LABEL.into(), "true".into());
            }
            RegisterNode {
                name,
                site: self.site.clone(),
                rack: self.rack.clone(),
                cpu_cores: self.cpu_cores,
                mem_mib: self.mem_mib,
                accelerator: accelerator.clone(),
                accelerators: self.devices.len() as u64,
                labels,
                taints: self.taints.clone(),
            }
        };
        match self.count {
            None => vec![node(self.name.clone(), false)],
            Some(n) => (0..n)
                .map(|k| node(run_node_name(&self.name, k, n), true))
                .collect(),
        }
    }
}

/// This machine's host name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).trim().to_string()
    } else {
        String::new()
    };
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// 32 random bytes as hex.
pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).expect("the operating system's random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `hostname-8hex`, new at every start.
pub fn agent_id() -> String {
    format!("{}-{}", hostname(), random_hex(4))
}

/// Whether the URL's host is this machine's loopback.
pub fn is_loopback_url(server: &str) -> bool {
    let rest = server.split_once("://").map_or(server, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// 127.0.0.1 next to a loopback controller, else the host name.
pub fn default_address(server: &str) -> String {
    // Of several replicas, the first says where the controllers are.
    let first = server.split(',').next().unwrap_or(server).trim();
    if is_loopback_url(first) {
        "127.0.0.1".into()
    } else {
        hostname()
    }
}

/// CPU cores this process may use.
pub fn machine_cpu_cores() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

/// Memory of the machine, from /proc/meminfo.
pub fn machine_mem_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(1024, |kib| kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_nodes_are_named_like_cluster_file_runs() {
        let t = NodeTemplate {
            name: "ph-r1-n".into(),
            count: Some(3),
            site: "pohang".into(),
            rack: "ph-r1".into(),
            cpu_cores: 4,
            mem_mib: 1024,
            devices: vec![
                Device {
                    index: 0,
                    model: "H100".into(),
                },
                Device {
                    index: 1,
                    model: "H100".into(),
                },
            ],
            labels: BTreeMap::from([("team".into(), "a".into())]),
            taints: Vec::new(),
        };
        let nodes = t.expand();
        let names: Vec<_> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["ph-r1-n-000", "ph-r1-n-001", "ph-r1-n-002"]);
        assert_eq!(nodes[0].accelerator.as_deref(), Some("H100"));
        assert_eq!(nodes[0].accelerators, 2);
        assert_eq!(nodes[0].labels[VIRTUAL_LABEL], "true");
        assert_eq!(nodes[0].labels["team"], "a");
        let one = NodeTemplate {
            count: None,
            devices: vec![],
            ..t
        }
        .expand();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].name, "ph-r1-n");
        assert!(!one[0].labels.contains_key(VIRTUAL_LABEL));
        assert_eq!(one[0].accelerator, None);
    }

    #[test]
    fn loopback_controllers_are_recognised() {
        assert!(is_loopback_url("http://127.0.0.1:8080"));
        assert!(is_loopback_url("http://localhost:8080/"));
        assert!(is_loopback_url("http://[::1]:8080"));
        assert!(!is_loopback_url("http://gosok.example:8080"));
        assert!(!is_loopback_url("http://10.0.0.1"));
        assert_eq!(random_hex(32).len(), 64);
        assert!(agent_id().starts_with(&hostname()));
    }
}
