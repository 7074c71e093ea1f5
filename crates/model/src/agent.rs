//! The agent protocol's messages (`docs/AGENTS.md`): what a node agent and the controller
//! say to each other under `/v1/agent/`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Most nodes one agent may register or sync in one call.
pub const MAX_AGENT_NODES: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Random per agent process start.
    pub agent: String,
    /// Where the nodes' tasks can be reached by other tasks (`MASTER_ADDR`).
    pub address: String,
    /// The agent's log server and the bearer token the controller uses on it.
    pub logs_url: String,
    pub logs_secret: String,
    pub nodes: Vec<RegisterNode>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterNode {
    pub name: String,
    pub site: String,
    pub rack: String,
    pub cpu_cores: u64,
    pub mem_mib: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<String>,
    #[serde(default)]
    pub accelerators: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `key` or `key=value` (see `NodeSpec::taints`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterResponse {
    pub lease_ms: u64,
    pub nodes: Vec<NodeEpoch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEpoch {
    pub name: String,
    pub epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    pub agent: String,
    pub nodes: Vec<NodeEpoch>,
    /// The version of the last answer acted on (0 at first).
    #[serde(default)]
    pub version: u64,
    /// Hold the request up to this long while nothing changes.
    #[serde(default)]
    pub wait_ms: u64,
    pub logs_url: String,
    pub logs_secret: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncResponse {
    pub version: u64,
    pub lease_ms: u64,
    pub nodes: Vec<NodeLease>,
    /// The whole desired set of tasks on the agent's valid nodes.
    pub tasks: Vec<Assignment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeLease {
    pub name: String,
    pub epoch: u64,
    /// False: the lease is lost; kill the node's tasks and register it again.
    pub valid: bool,
}

/// One task an agent must run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    pub node: String,
    pub epoch: u64,
    pub job: u64,
    pub attempt: u32,
    pub task: u32,
    pub command: Vec<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    /// The complete environment to add (accelerators, torchrun, the job's own).
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub limit_s: Option<u64>,
    /// Between SIGTERM and SIGKILL.
    pub grace_s: u64,
    /// The job's tenant: the agent runs the task as this tenant's Unix account.
    #[serde(default)]
    pub tenant: String,
    /// The task's memory (its control group's limit; 0: no limit of its own).
    #[serde(default)]
    pub mem_mib: u64,
    /// The task's CPU in thousandths of a core (its control group's CPU weight).
    #[serde(default)]
    pub cpu_milli: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportRequest {
    pub agent: String,
    pub reports: Vec<TaskReport>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The process ended by itself (`exit_code`, or `signal`).
    Exited,
    /// Stopped at its runtime limit.
    Limit,
    /// The command could not be started.
    SpawnFailed,
    /// Killed by the kernel because the task used more memory than its `mem_mib`.
    OutOfMemory,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskReport {
    pub node: String,
    pub epoch: u64,
    pub job: u64,
    pub attempt: u32,
    pub task: u32,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
    pub reason: EndReason,
    #[serde(default)]
    pub message: String,
    /// Energy the task's accelerators used, from NVML's total-energy counter read at its
    /// start and end (millijoules); absent where the agent has no NVML or the task shares
    /// its devices: "not measured".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_mj: Option<u64>,
}

impl TaskReport {
    /// The status the engine sees: the exit code, 128 + a signal, 127 for a spawn failure,
    /// 137 (SIGKILL) when the kernel killed a process of the task for memory, whatever the
    /// task's first process made of it.
    pub fn status(&self) -> i32 {
        match (self.reason, self.exit_code, self.signal) {
            (EndReason::SpawnFailed, _, _) => 127,
            (EndReason::OutOfMemory, _, _) => 128 + 9,
            (_, _, Some(s)) => 128 + s,
            (_, Some(c), None) => c,
            (_, None, None) => 255,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportResponse {
    pub results: Vec<ReportResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportResult {
    pub job: u64,
    pub task: u32,
    pub accepted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}
