//! What the controller writes to its event log: every change, with everything needed to
//! apply it again in the same way (job ids, token hashes and clock readings are decided
//! before an entry is written, never while it is replayed).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use gosok_model::{AcceleratorModel, ClusterSpec, JobSpec, NodeState, TenantSpec};

pub use crate::core::JobControl;

/// The log format; bumped when an entry changes incompatibly.
pub const LOG_FORMAT: &str = "2";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// Written externally tagged (`{"submit": {...}}`): serde reads that without buffering,
/// which matters when a long log is replayed.
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Entry {
    /// The first entry: an empty highway and the first admin token.
    Init {
        now_s: u64,
        admin_token: TokenEntry,
    },
    Submit {
        job: u64,
        tenant: String,
        // Boxed: a spec is several times larger than any other entry.
        spec: Box<JobSpec>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        command: Vec<String>,
        /// Environment the job's tasks get on top of the agent's.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workdir: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency: Option<Idempotency>,
        /// An array, dependencies, a hold (`core/dependencies.rs`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        control: Option<Box<JobControl>>,
        by: String,
    },
    Cancel {
        job: u64,
        by: String,
    },
    /// A user held a pending job: not eligible until released.
    Hold {
        job: u64,
        by: String,
    },
    Release {
        job: u64,
        by: String,
    },
    /// A user put a running job back in the queue (held there with `hold`).
    Requeue {
        job: u64,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        hold: bool,
        by: String,
    },
    /// The clock moved to `now_s` and a scheduling pass ran.
    Tick {
        now_s: u64,
    },
    NodeState {
        node: String,
        state: NodeState,
        by: String,
    },
    SitePowerBudget {
        site: String,
        power_budget_mw: f64,
        by: String,
    },
    RackPowerCap {
        rack: String,
        power_cap_kw: f64,
        by: String,
    },
    Tenant {
        spec: TenantSpec,
        by: String,
    },
    /// A structural change of the highway (sites, racks or nodes added, removed or changed):
    /// the engine is rebuilt on the new topology.
    Topology {
        cluster: ClusterSpec,
        by: String,
    },
    CatalogAdd {
        model: AcceleratorModel,
        by: String,
    },
    TokenCreate {
        token: TokenEntry,
        by: String,
    },
    TokenRevoke {
        id: String,
        by: String,
    },
    /// An agent claimed nodes: each is up under a new epoch (its fencing token).
    AgentRegister {
        agent: String,
        /// Where the nodes' tasks can be reached (`MASTER_ADDR`).
        address: String,
        nodes: Vec<NodeClaim>,
        by: String,
    },
    /// A node's lease expired: it is down, and its epoch is dead.
    NodeLost {
        node: String,
        epoch: u64,
    },
    /// An agent reported that a task's process ended.
    TaskEnded {
        job: u64,
        attempt: u32,
        task: u32,
        node: String,
        epoch: u64,
        /// What the engine sees: the exit code, 128 + a signal, 127 when it could not start.
        status: i32,
        detail: String,
        /// Accelerator energy the agent measured over the task (NVML's total-energy
        /// counter), millijoules; absent: not measured.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        energy_mj: Option<u64>,
        /// The agent stopped it at its runtime limit: the job ends timed out.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        limit: bool,
        by: String,
    },
    /// Programmes, allocations, accounting policies and prices (`core/accounts.rs`).
    Account {
        change: crate::core::AccountChange,
        by: String,
    },
    /// `gosok server recover` repaired the store, as an operator chose: what it dropped.
    Recovered {
        /// Records dropped (first, last), if any: their changes are lost.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dropped_records: Option<[u64; 2]>,
        /// Snapshots dropped (damaged, or ahead of the log), by sequence number.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        dropped_snapshots: Vec<u64>,
        /// What was found.
        reason: String,
        by: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeClaim {
    pub name: String,
    pub epoch: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub id: String,
    /// None: an operator (admin) token, or an agent token.
    pub tenant: Option<String>,
    /// An agent token: it may call only `/v1/agent/*`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub agent: bool,
    /// SHA-256 of the token, hex: the token itself is never stored.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Idempotency {
    pub key: String,
    /// SHA-256 of the request (tenant and body), hex.
    pub request_sha256: String,
}

impl Entry {
    pub fn kind(&self) -> &'static str {
        match self {
            Entry::Init { .. } => "init",
            Entry::Submit { .. } => "submit",
            Entry::Cancel { .. } => "cancel",
            Entry::Hold { .. } => "hold",
            Entry::Release { .. } => "release",
            Entry::Requeue { .. } => "requeue",
            Entry::Tick { .. } => "tick",
            Entry::NodeState { .. } => "node_state",
            Entry::SitePowerBudget { .. } => "site_power_budget",
            Entry::RackPowerCap { .. } => "rack_power_cap",
            Entry::Tenant { .. } => "tenant",
            Entry::Topology { .. } => "topology",
            Entry::CatalogAdd { .. } => "catalog_add",
            Entry::TokenCreate { .. } => "token_create",
            Entry::TokenRevoke { .. } => "token_revoke",
            Entry::AgentRegister { .. } => "agent_register",
            Entry::NodeLost { .. } => "node_lost",
            Entry::TaskEnded { .. } => "task_ended",
            Entry::Recovered { .. } => "recovered",
            Entry::Account { .. } => "account",
        }
    }
}
