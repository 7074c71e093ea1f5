//! What goes into the engine (events) and what comes out (decisions).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use gosok_model::{JobSpec, NodeSpec, NodeState, TenantSpec};

use crate::ids::JobId;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The clock moved forward (the engine never reads one).
    AdvanceTime {
        now_s: u64,
    },
    Submit {
        id: JobId,
        tenant: String,
        spec: JobSpec,
    },
    Cancel {
        id: JobId,
    },
    NodeState {
        node: String,
        state: NodeState,
    },
    /// A task's process ended. `attempt` fences reports from an earlier run of the job.
    TaskEnded {
        id: JobId,
        attempt: u32,
        task: u32,
        exit_code: i32,
    },
    SitePowerBudget {
        site: String,
        power_budget_mw: f64,
    },
    RackPowerCap {
        rack: String,
        power_cap_kw: f64,
    },
    UpsertTenant {
        tenant: TenantSpec,
    },
    /// A node joins an existing rack in place (running work is untouched). `node.name` is
    /// final (`count` must be absent); its `state` applies at once.
    AddNode {
        node: NodeSpec,
    },
    /// A pending job stops being eligible (its owner held it, or the controller waits on
    /// its dependencies); it keeps its admission and its place in the engine.
    Hold {
        id: JobId,
    },
    /// A held job is eligible again: back in its queue, in line by its order key.
    Release {
        id: JobId,
    },
    /// Stop a running job and put it back in the queue (a user's requeue), as a failed node
    /// would; a later start is a new attempt.
    Requeue {
        id: JobId,
        reason: String,
    },
}

/// Where one task of a started job runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskPlacement {
    pub task: u32,
    pub group: u16,
    pub node: Arc<str>,
    pub model: Option<Arc<str>>,
    /// Device indices on the node.
    pub devices: Vec<u8>,
    /// Thousandths of each device (1000 for whole devices).
    pub milli: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Rejected,
    /// Admitted but not eligible until released (`Event::Hold`).
    Held,
    /// Ended at its runtime limit.
    TimedOut,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobState::Pending | JobState::Running | JobState::Held)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PreemptReason {
    /// Made room for a job of a higher priority class.
    Priority { by: JobId },
    /// SRTF: a job with less time left needed the room.
    ShorterRemaining { by: JobId },
    /// Least attained service: a job of its tenant and class on a lower level of the ladder
    /// needed the room (it had run its minimum time).
    LeastAttained { by: JobId },
    /// Its tenant was borrowing; the owner of the guarantee took it back.
    Reclaim { by: JobId },
    /// Its site's power budget was lowered below the draw.
    Curtailment { site: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    Start {
        job: JobId,
        attempt: u32,
        tasks: Vec<TaskPlacement>,
    },
    /// Stop every task of the job; the job goes back to the queue.
    Preempt {
        job: JobId,
        attempt: u32,
        reason: PreemptReason,
    },
    /// The job lost tasks (node down): stop the rest of its gang and queue it again.
    Requeue {
        job: JobId,
        attempt: u32,
        reason: String,
        retry: u64,
    },
    /// Stop every task of the job; the job ends (`Finish` follows).
    Stop {
        job: JobId,
        attempt: u32,
        reason: String,
    },
    Reject {
        job: JobId,
        reason: String,
    },
    Finish {
        job: JobId,
        state: JobState,
        reason: String,
    },
    /// What a lowered power budget cost.
    Shed {
        site: String,
        budget_w: u64,
        draw_before_w: u64,
        draw_after_w: u64,
        jobs: Vec<JobId>,
        /// Non-preemptible work alone still exceeds the budget: an operator must act.
        still_over: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("time cannot go backwards: now is {now_s} s, event says {event_s} s")]
    TimeWentBack { now_s: u64, event_s: u64 },
    #[error("job {0} is not known")]
    UnknownJob(JobId),
    #[error("job {0} was already submitted")]
    DuplicateJob(JobId),
    #[error("node {0:?} is not known")]
    UnknownNode(String),
    #[error("site {0:?} is not known")]
    UnknownSite(String),
    #[error("rack {0:?} is not known")]
    UnknownRack(String),
    #[error("report for attempt {got} of job {job}, which is at attempt {current}: stale, ignored")]
    StaleAttempt { job: JobId, got: u32, current: u32 },
    #[error("job {job} has no task {task}")]
    UnknownTask { job: JobId, task: u32 },
    #[error("job {0} is not running")]
    NotRunning(JobId),
    #[error("job {job} is {state}: {message}")]
    WrongState {
        job: JobId,
        state: &'static str,
        message: &'static str,
    },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

impl From<gosok_model::SpecError> for EngineError {
    fn from(e: gosok_model::SpecError) -> Self {
        EngineError::Invalid {
            field: e.field,
            message: e.message,
        }
    }
}
