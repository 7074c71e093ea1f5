//! Queue order: each job's place in its line under the queue policy, the tenants' heads in
//! the pass-wide merge (priority class, fair share, age), and promotion down the
//! attained-service ladder.

use super::*;
use crate::gittins::MAX_NAME_HISTORIES;

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

/// Whether a pending job is scheduled for promotion: it ran (with learned sizes: its level
/// may rise as the histories grow), or its attained service put it past the first level.
pub(super) fn down_the_ladder(las: &Las, job: &Job) -> bool {
    if las.learned_sizes {
        job.attained_milli_s > 0
    } else {
        las.level(job.attained_milli_s) > 0
    }
}

/// The attained service (thousandth-accelerator-seconds) at which a job stands on the ladder
/// when its Gittins index is `g` (completions per accelerator-second): 1 / g.
fn like_attained_milli_s(g: f64) -> u64 {
    (1000.0 / g).min(u64::MAX as f64) as u64
}

/// A pending job's sort key in queue order: priority class, fair share, place in line, id.
type QueueOrder = (Reverse<PriorityClass>, u64, u64, JobId);

/// Bits of a `FairShareLas` place in line below the level: the submit time.
const LAS_LEVEL_SHIFT: u32 = 48;

/// A pending job's place in its line under `policy` (`level`: its level on the ladder).
pub(super) fn order_key(policy: QueuePolicy, job: &Job, default_runtime_s: u64, level: u8) -> u64 {
    match policy {
        // The level, then age: one integer keeps the class queues' order.
        QueuePolicy::FairShareLas(_) => {
            (level as u64) << LAS_LEVEL_SHIFT | job.submit_s.min((1 << LAS_LEVEL_SHIFT) - 1)
        }
        QueuePolicy::FairShare | QueuePolicy::Fifo => job.submit_s,
        QueuePolicy::ShortestFirst => job.estimate_s.or(job.limit_s).unwrap_or(u64::MAX),
        QueuePolicy::ShortestRemainingFirst { .. } => job.remaining_s(0, default_runtime_s),
    }
}

impl Engine {
    pub(super) fn order_key(&self, job: &Job) -> u64 {
        let level = self.las().map_or(0, |las| self.level_of(&las, job));
        order_key(
            self.cfg.queue_policy,
            job,
            self.cfg.default_runtime_s,
            level,
        )
    }

    /// Accelerators (thousandths) a job holds when it runs: the unit of its service.
    fn job_accel_milli(&self, job: &Job) -> u64 {
        self.shapes[job.shape as usize].accel_milli_total()
    }

    /// A job's level on the ladder now. With learned sizes and enough of them, the level a
    /// job of attained service 1 / G would have, G being its Gittins index over the sizes of
    /// its tenant's jobs of its name's family and as many accelerators, else of all its
    /// tenant's jobs of as many accelerators, else of all its tenant's jobs; else, or once
    /// it has outrun every job it is compared with, by its attained service. A job with a
    /// runtime limit ends by it, so its index is at least 1 / (service left to the limit).
    /// A promoted job (attained service counted from zero again, below what it ran) climbs
    /// the ladder from its first level by attained service.
    pub(super) fn level_of(&self, las: &Las, job: &Job) -> u8 {
        let now = self.now_s;
        let attained = job.attained_now_milli_s(now);
        if !las.learned_sizes {
            return las.level(attained);
        }
        let accel = self.job_accel_milli(job);
        let ran_s = job.run_s
            + if job.state == JobState::Running {
                now.saturating_sub(job.started_s)
            } else {
                0
            };
        let age_milli_s = accel.saturating_mul(ran_s);
        if accel == 0 || attained < age_milli_s {
            return las.level(attained);
        }
        let enough = |h: &&SizeHistory| h.samples() >= las.min_samples;
        let named = (job.name_key != 0)
            .then(|| self.name_sizes.get(&(job.tenant, job.name_key, accel)))
            .flatten();
        let history = named
            .filter(enough)
            .or_else(|| self.sizes.get(&(job.tenant, accel)).filter(enough))
            .or_else(|| self.tenant_sizes.get(&job.tenant).filter(enough));
        let like = history
            .and_then(|h| h.index(age_milli_s as f64 / 1000.0))
            .map_or(attained, like_attained_milli_s);
        let to_limit = job.limit_s.map_or(u64::MAX, |l| {
            accel.saturating_mul(l.saturating_sub(ran_s).max(1))
        });
        las.level(like.min(to_limit))
    }

    /// A job that ran ended: its size joins its tenant's histories.
    pub(super) fn learn_size(&mut self, id: JobId) {
        let Some(las) = self.las().filter(|l| l.learned_sizes) else {
            return;
        };
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        let accel = self.job_accel_milli(job);
        if accel == 0 || job.run_s == 0 {
            return;
        }
        let accel_s = accel.saturating_mul(job.run_s) / 1000;
        let (t, name) = (job.tenant, job.name_key);
        let min = las.min_samples;
        // Waiting jobs need new keys only where a bin's level moved.
        let moved = |old: Vec<f64>, new: &SizeHistory| {
            let level = |g: f64| (g > 0.0).then(|| las.level(like_attained_milli_s(g)));
            old.is_empty()
                || old
                    .iter()
                    .zip(new.published())
                    .any(|(&a, &b)| level(a) != level(b))
        };
        let key = (t, name, accel);
        if name != 0
            && (self.name_sizes.contains_key(&key) || self.name_sizes.len() < MAX_NAME_HISTORIES)
        {
            // Jobs of other names wait under other histories: only this family's move.
            let family = self.name_sizes.entry(key).or_default();
            if family
                .record(accel_s, min)
                .is_some_and(|old| moved(old, family))
            {
                self.reorder(t, |a| a == accel, |j| j.name_key == name);
            }
        }
        let shape = self.sizes.entry((t, accel)).or_default();
        if shape
            .record(accel_s, min)
            .is_some_and(|old| moved(old, shape))
        {
            self.reorder(t, |a| a == accel, |_| true);
        }
        let all = self.tenant_sizes.entry(t).or_default();
        if all.record(accel_s, min).is_some_and(|old| moved(old, all)) {
            // The tenant's history orders the shapes whose own history is too short.
            let own: BTreeSet<u64> = self
                .sizes
                .range((t, 0)..=(t, u64::MAX))
                .filter(|(_, h)| h.samples() >= min)
                .map(|(&(_, a), _)| a)
                .collect();
            self.reorder(t, |a| !own.contains(&a), |_| true);
        }
    }

    /// A pending job's key is taken when it joins its line; when its tenant's histories have
    /// changed enough (`SizeHistory::record`) the waiting jobs they order (of the
    /// accelerator counts `of` chooses, and those of them `only` chooses) are placed again.
    fn reorder(&mut self, t: TenantIdx, of: impl Fn(u64) -> bool, only: impl Fn(&Job) -> bool) {
        let shapes = &self.shapes;
        let waiting: Vec<JobId> = self
            .queues
            .tenant_jobs(t, |s| of(shapes[s as usize].accel_milli_total()))
            .collect();
        for id in waiting {
            if !only(&self.jobs[&id]) {
                continue;
            }
            let order_s = self.order_key(&self.jobs[&id]);
            let job = self.jobs.get_mut(&id).expect("queued jobs are known");
            if order_s != job.order_s {
                self.queues.remove(t, job.class, job.pending());
                job.order_s = order_s;
                self.queues.push(t, job.class, job.pending());
            }
        }
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
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        if job.state != JobState::Pending || job.attempt != attempt {
            return;
        }
        self.queues.remove(job.tenant, job.class, job.pending());
        job.attained_milli_s = 0;
        let order_s = self.order_key(&self.jobs[&id]);
        let job = self.jobs.get_mut(&id).expect("checked above");
        job.order_s = order_s;
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
