//! Queue order: each job's place in its line under the queue policy, the tenants' heads in
//! the pass-wide merge (priority class, fair share, age), and promotion down the
//! attained-service ladder.

use super::*;

/// One tenant's next job in the pass-wide merge. Ordered so that the heap's top is the job
/// to consider next: higher priority class, then lower fair-share key, then older.
#[derive(PartialEq, Eq)]
pub(super) struct Head {
    pub(super) fair_bits: u64,
    pub(super) sub: SubHead,
    pub(super) tenant: TenantIdx,
}

impl Ord for Head {
    fn cmp(&self, o: &Self) -> Ordering {
        self.sub
            .priority
            .cmp(&o.sub.priority)
            .then(o.fair_bits.cmp(&self.fair_bits))
            .then(self.sub.cmp(&o.sub))
    }
}

impl PartialOrd for Head {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

/// A pending job's sort key in queue order: priority class, fair share, place in line, id.
type QueueOrder = (Reverse<PriorityClass>, u64, u64, JobId);

/// Bits of a `FairShareLas` place in line below the level: the submit time.
const LAS_LEVEL_SHIFT: u32 = 48;

/// A pending job's place in its line under `policy`.
pub(super) fn order_key(policy: QueuePolicy, job: &Job, default_runtime_s: u64) -> u64 {
    match policy {
        // The level, then age: one integer keeps the class queues' order.
        QueuePolicy::FairShareLas(las) => {
            (las.level(job.attained_milli_s) as u64) << LAS_LEVEL_SHIFT
                | job.submit_s.min((1 << LAS_LEVEL_SHIFT) - 1)
        }
        QueuePolicy::FairShare | QueuePolicy::Fifo => job.submit_s,
        QueuePolicy::ShortestFirst => job.estimate_s.or(job.limit_s).unwrap_or(u64::MAX),
        QueuePolicy::ShortestRemainingFirst { .. } => job.remaining_s(0, default_runtime_s),
    }
}

impl Engine {
    pub(super) fn order_key(&self, job: &Job) -> u64 {
        order_key(self.cfg.queue_policy, job, self.cfg.default_runtime_s)
    }

    /// The attained-service ladder, when the queue policy has one.
    pub(super) fn las(&self) -> Option<Las> {
        match self.cfg.queue_policy {
            QueuePolicy::FairShareLas(las) => Some(las),
            _ => None,
        }
    }

    /// Whether tenants are weighed against each other by fair share.
    pub(super) fn fair_share(&self) -> bool {
        matches!(
            self.cfg.queue_policy,
            QueuePolicy::FairShare | QueuePolicy::FairShareLas(_)
        )
    }

    /// A pending job that was sent down the ladder goes back to its first level, its
    /// attained service counted from zero again (Tiresias' promotion against starvation) —
    /// unless it has started again since (`attempt` is the attempt that sent it down).
    pub(super) fn promote(&mut self, id: JobId, attempt: u32) {
        let policy = self.cfg.queue_policy;
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        if job.state != JobState::Pending || job.attempt != attempt {
            return;
        }
        self.queues.remove(job.tenant, job.class, job.pending());
        job.attained_milli_s = 0;
        job.order_s = order_key(policy, job, self.cfg.default_runtime_s);
        self.queues.push(job.tenant, job.class, job.pending());
    }

    pub(super) fn head(&self, t: TenantIdx, sub: SubHead, cap: [u64; 3]) -> Head {
        // Only fair share weighs tenants against each other; the classic policies order
        // by their key alone.
        let fair_bits = if self.fair_share() {
            self.tenants[t as usize].fair_key(cap).to_bits()
        } else {
            0
        };
        Head {
            fair_bits,
            sub,
            tenant: t,
        }
    }

    /// Pending jobs in queue order (priority class, then fair share, then age), as a pass
    /// would meet them if nothing started.
    pub fn queue(&self) -> Vec<JobId> {
        let mut all: Vec<QueueOrder> = self.queue_keys().collect();
        all.sort_unstable();
        all.into_iter().map(|k| k.3).collect()
    }

    /// Every pending job's sort key in `queue` order.
    fn queue_keys(&self) -> impl Iterator<Item = QueueOrder> + '_ {
        let cap = self.capacity();
        let fair: Vec<u64> = if self.fair_share() {
            self.tenants
                .iter()
                .map(|t| t.fair_key(cap).to_bits())
                .collect()
        } else {
            vec![0; self.tenants.len()]
        };
        self.queues.iter().map(move |(t, c, order_s, id)| {
            (
                Reverse(self.queues.key(c).priority),
                fair[t as usize],
                order_s,
                id,
            )
        })
    }

    /// A pending job's place in `queue` order, counted without sorting the queue.
    pub fn queue_position(&self, id: JobId) -> Option<usize> {
        let mine = self.queue_keys().find(|k| k.3 == id)?;
        Some(self.queue_keys().filter(|k| *k < mine).count())
    }
}
