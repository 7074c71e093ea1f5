//! Read-only views of the engine for the controller, the CLI and tests: its state, the
//! queue as a pass would meet it, and why a pending job waits.

use super::*;

/// Why a pending job waits, and where it stands.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Explanation {
    pub job: JobId,
    pub state: JobState,
    pub position: Option<usize>,
    pub wait: WaitReason,
    pub text: String,
    pub estimated_start_s: Option<u64>,
}

impl Engine {
    pub fn now_s(&self) -> u64 {
        self.now_s
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Class queues the pending jobs form (see `queue`): what one pass walks.
    pub fn queue_classes(&self) -> usize {
        self.queues.classes()
    }

    pub fn pending_count(&self) -> usize {
        self.queues.len()
    }

    pub fn job_state(&self, id: JobId) -> Option<JobState> {
        self.jobs.get(&id).map(|j| j.state)
    }

    pub fn job(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id)
    }

    /// What one replica of a job's group asks for (accelerators, CPU, memory).
    pub fn group_req(&self, job: &Job, group: u16) -> Option<&crate::job::GroupReq> {
        self.shapes
            .get(job.shape as usize)?
            .groups
            .get(group as usize)
    }

    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values()
    }

    /// Every tenant, in the order they were declared.
    pub fn tenants(&self) -> &[Tenant] {
        &self.tenants
    }

    pub fn tenant(&self, name: &str) -> Option<&Tenant> {
        self.tenant_by_name
            .get(name)
            .map(|&t| &self.tenants[t as usize])
    }

    pub fn tenant_name(&self, t: TenantIdx) -> &str {
        &self.tenants[t as usize].spec.name
    }

    /// Whether the next pass would be skipped: the last one decided nothing and changed
    /// nothing a pass reads, and no event came since (`engine/idle.rs`).
    pub fn is_idle(&self) -> bool {
        self.quiescent
    }
    pub fn reservation(&self) -> &Reservation {
        &self.reservation
    }

    /// If the holder's reserved start moved later than first planned: from when, and why.
    pub fn reservation_slip(&self) -> Option<crate::hold::Slip> {
        self.hold.slip
    }

    /// Why a pending job waits. Jobs behind the head of their class share its reason; only
    /// the holder itself is told its reserved start.
    pub fn wait_reason(&self, id: JobId) -> Option<WaitReason> {
        let job = self.jobs.get(&id)?;
        if job.state != JobState::Pending {
            return None;
        }
        Some(match self.queues.wait(job.tenant, job.class) {
            WaitReason::Reserved { .. } if self.reservation.job != Some(id) => {
                WaitReason::Resources {
                    blocker: Blocker::Reservation,
                }
            }
            w => w,
        })
    }

    pub fn explain(&self, id: JobId) -> Option<Explanation> {
        let job = self.jobs.get(&id)?;
        let wait = self.wait_reason(id).unwrap_or(WaitReason::Queued);
        let (position, text, est) = if job.state == JobState::Pending {
            let pos = self.queue_position(id);
            let est = match wait {
                WaitReason::Reserved { start_s } => Some(start_s),
                _ => None,
            };
            let needs = self.describe_needs(id).unwrap_or_default();
            let mut text = format!("{needs}; {}", wait.describe(self.now_s));
            if let (WaitReason::Reserved { start_s }, Some(slip)) = (wait, self.hold.slip)
                && self.reservation.job == Some(id)
            {
                text.push_str(&format!(" ({})", slip.describe(start_s)));
            }
            (pos, text, est)
        } else {
            (None, format!("{:?}", job.state).to_lowercase(), None)
        };
        Some(Explanation {
            job: id,
            state: job.state,
            position,
            wait,
            text,
            estimated_start_s: est,
        })
    }
}
