//! The engine's compact form of a job: specs resolved to catalog and site indices.

use gosok_model::{PriorityClass, TopologyConstraint};

use crate::cluster::Hold;
use crate::event::JobState;
use crate::ids::{JobId, ModelSet, SiteSet, TenantIdx};

/// What one replica asks of the accelerators of its node.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum AccelReq {
    None,
    Whole(u16),
    /// Thousandths of one shareable device.
    Milli(u16),
}

impl AccelReq {
    pub fn milli(self) -> u64 {
        match self {
            AccelReq::None => 0,
            AccelReq::Whole(k) => k as u64 * 1000,
            AccelReq::Milli(m) => m as u64,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct GroupReq {
    pub replicas: u32,
    pub accel: AccelReq,
    /// Acceptable models (already narrowed by minimum HBM).
    pub models: ModelSet,
    pub cpu_milli: u64,
    pub mem_mib: u64,
}

impl GroupReq {
    pub fn accel_milli_total(&self) -> u64 {
        self.accel.milli() * self.replicas as u64
    }
}

impl Shape {
    /// Accelerators (thousandths) a job of this shape holds when it runs: the unit of its
    /// service on the ladder.
    pub fn accel_milli_total(&self) -> u64 {
        self.groups.iter().map(|g| g.accel_milli_total()).sum()
    }
}

/// Everything placement needs to know; jobs with equal shapes fit or fail alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Shape {
    pub groups: Box<[GroupReq]>,
    pub sites: SiteSet,
    pub topology: Option<TopologyConstraint>,
    /// Node selectors, tolerations, anti-affinity and spread (None: none of them).
    pub rules: Option<Box<crate::constraints::NodeRules>>,
}

pub type ShapeId = u32;

/// One running task.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Task {
    pub group: u16,
    pub model: Option<u16>,
    pub hold: Hold,
    pub exit_code: Option<i32>,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Job {
    pub id: JobId,
    pub tenant: TenantIdx,
    pub priority: PriorityClass,
    pub preemptible: bool,
    pub submit_s: u64,
    pub estimate_s: Option<u64>,
    pub limit_s: Option<u64>,
    pub max_retries: u64,
    /// A task's failure fails the gang at once (else the others run on).
    pub fail_fast: bool,
    pub retries: u64,
    pub shape: ShapeId,
    pub state: JobState,
    /// Bumped at every start: reports from an earlier attempt are refused.
    pub attempt: u32,
    pub started_s: u64,
    pub tasks: Vec<Task>,
    pub preemptions: u32,
    /// Its class queue while pending (see `queue`).
    pub class: crate::queue::ClassId,
    /// Its place in line within the class queue (see `queue::Pending::order_s`).
    pub order_s: u64,
    /// Run time of earlier attempts (preempted or requeued).
    pub run_s: u64,
    /// Checkpoint overhead added by SRTF and LAS preemptions.
    pub overhead_s: u64,
    /// Thousandth-accelerator-seconds run in earlier attempts since the job was last
    /// promoted: its place on the attained-service ladder (`config::Las`).
    pub attained_milli_s: u64,
    /// Its name's family (`gittins::name_family_key`; 0: no name): whose sizes it learns
    /// from first.
    pub name_key: u64,
}

impl Job {
    /// Start + estimate, start + limit, start + default runtime (0 where not given): what
    /// its nodes keep to plan when it ends (see `cluster::NodeTask`).
    pub fn ends_s(&self, default_runtime_s: u64) -> [u64; 3] {
        let at = |d: Option<u64>| d.map_or(0, |d| self.started_s.saturating_add(d));
        [
            at(self.estimate_s),
            at(self.limit_s),
            at(Some(default_runtime_s)),
        ]
    }

    /// The latest time this job's run could still plausibly need, for planning.
    pub fn runtime_bound_s(&self) -> Option<u64> {
        self.limit_s.or(self.estimate_s)
    }

    /// How the queues keep it while it is pending.
    pub fn pending(&self) -> crate::queue::Pending {
        crate::queue::Pending {
            job: self.id,
            order_s: self.order_s,
            bound_s: self.runtime_bound_s().unwrap_or(u64::MAX),
        }
    }

    /// Estimated time still to run: estimate (else limit, else the default) plus checkpoint
    /// overheads, less what it ran.
    pub fn remaining_s(&self, now_s: u64, default_runtime_s: u64) -> u64 {
        let total = self
            .estimate_s
            .or(self.limit_s)
            .unwrap_or(default_runtime_s)
            + self.overhead_s;
        let ran = self.run_s
            + if self.state == JobState::Running {
                now_s.saturating_sub(self.started_s)
            } else {
                0
            };
        total.saturating_sub(ran)
    }

    /// Attained service now, this attempt included (thousandth-accelerator-seconds).
    pub fn attained_now_milli_s(&self, now_s: u64) -> u64 {
        let current = if self.state == JobState::Running {
            self.accel_milli()
                .saturating_mul(now_s.saturating_sub(self.started_s))
        } else {
            0
        };
        self.attained_milli_s.saturating_add(current)
    }

    pub fn accel_milli(&self) -> u64 {
        self.tasks
            .iter()
            .map(|t| t.hold.devices.len() as u64 * t.hold.milli as u64)
            .sum()
    }
}
