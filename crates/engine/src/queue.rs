//! Pending jobs, grouped so that a pass costs what changed, not what waits.
//!
//! Within a tenant, jobs that would fit or fail alike — same shape, priority class and
//! preemptibility — form one class queue, oldest first. A pass looks at the head of each class
//! queue; when the head cannot start, the rest of that class waits for the next pass behind it.
//! So a pass over 100,000 pending jobs in a few thousand classes costs a few thousand
//! placement attempts (most answered from the pass's failed-shape cache), not 100,000.
//!
//! Runtime is the one thing that can make a younger job of a class fit where its head does
//! not: backfill into a reservation's shadow. So each class also indexes its jobs by runtime
//! bound, and the pass tries the shortest one when the head is held off reserved capacity.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasherDefault;

use gosok_model::PriorityClass;

use crate::explain::WaitReason;
use crate::ids::{IdHasher, JobId, TenantIdx};
use crate::job::ShapeId;

pub type ClassId = u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ClassKey {
    pub shape: ShapeId,
    pub priority: PriorityClass,
    pub preemptible: bool,
}

/// What the queues keep of a pending job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub job: JobId,
    /// Its place in line: submit time, or (SJF, SRTF) its estimated (remaining) runtime.
    pub order_s: u64,
    /// Runtime limit, else estimate; u64::MAX when neither is given.
    pub bound_s: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct ClassQueue {
    #[serde(with = "crate::snapshot::sorted_set")]
    pub jobs: BTreeSet<(u64, JobId)>,
    /// The same jobs by runtime bound, then place in line.
    #[serde(with = "crate::snapshot::sorted_set")]
    pub by_bound: BTreeSet<(u64, u64, JobId)>,
    /// Why the head waited at the last pass; the rest of the class waits behind it.
    #[serde(with = "crate::snapshot::WaitReasonDef")]
    pub wait: WaitReason,
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Queues {
    keys: Vec<ClassKey>,
    ids: HashMap<ClassKey, ClassId, BuildHasherDefault<IdHasher>>,
    tenants: Vec<BTreeMap<ClassId, ClassQueue>>,
    len: usize,
}

/// The head of one class queue, ordered for a max-heap: higher priority, then earlier in line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubHead {
    pub priority: PriorityClass,
    pub order_s: u64,
    pub job: JobId,
    pub class: ClassId,
}

impl Ord for SubHead {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.priority
            .cmp(&o.priority)
            .then(o.order_s.cmp(&self.order_s))
            .then(o.job.cmp(&self.job))
    }
}

impl PartialOrd for SubHead {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl Queues {
    pub fn add_tenant(&mut self) {
        self.tenants.push(BTreeMap::new());
    }

    pub fn class(&mut self, key: ClassKey) -> ClassId {
        if let Some(&id) = self.ids.get(&key) {
            return id;
        }
        let id = self.keys.len() as ClassId;
        self.keys.push(key);
        self.ids.insert(key, id);
        id
    }

    pub fn key(&self, class: ClassId) -> ClassKey {
        self.keys[class as usize]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Non-empty class queues in all.
    pub fn classes(&self) -> usize {
        self.tenants.iter().map(|t| t.len()).sum()
    }

    pub fn push(&mut self, t: TenantIdx, class: ClassId, p: Pending) {
        let q = self.tenants[t as usize]
            .entry(class)
            .or_insert_with(|| ClassQueue {
                jobs: BTreeSet::new(),
                by_bound: BTreeSet::new(),
                wait: WaitReason::Queued,
            });
        if q.jobs.insert((p.order_s, p.job)) {
            q.by_bound.insert((p.bound_s, p.order_s, p.job));
            self.len += 1;
        }
    }

    pub fn remove(&mut self, t: TenantIdx, class: ClassId, p: Pending) -> bool {
        let classes = &mut self.tenants[t as usize];
        let Some(q) = classes.get_mut(&class) else {
            return false;
        };
        let removed = q.jobs.remove(&(p.order_s, p.job));
        if removed {
            q.by_bound.remove(&(p.bound_s, p.order_s, p.job));
            self.len -= 1;
            if q.jobs.is_empty() {
                classes.remove(&class);
            }
        }
        removed
    }

    pub fn contains(&self, t: TenantIdx, class: ClassId, p: Pending) -> bool {
        self.tenants[t as usize].get(&class).is_some_and(|q| {
            q.jobs.contains(&(p.order_s, p.job))
                && q.by_bound.contains(&(p.bound_s, p.order_s, p.job))
        })
    }

    /// The head of every class queue of tenant `t`.
    pub fn heads(&self, t: TenantIdx) -> impl Iterator<Item = SubHead> + '_ {
        self.tenants[t as usize]
            .iter()
            .filter_map(|(&class, q)| self.head_of(class, q))
    }

    pub fn head(&self, t: TenantIdx, class: ClassId) -> Option<SubHead> {
        self.tenants[t as usize]
            .get(&class)
            .and_then(|q| self.head_of(class, q))
    }

    fn head_of(&self, class: ClassId, q: &ClassQueue) -> Option<SubHead> {
        let &(order_s, job) = q.jobs.first()?;
        Some(SubHead {
            priority: self.keys[class as usize].priority,
            order_s,
            job,
            class,
        })
    }

    /// The job of the class with the shortest runtime bound, and that bound.
    pub fn shortest(&self, t: TenantIdx, class: ClassId) -> Option<(u64, JobId)> {
        let q = self.tenants[t as usize].get(&class)?;
        q.by_bound.first().map(|&(b, _, j)| (b, j))
    }

    /// A tenant's pending jobs of the shapes `of` chooses, class by class.
    pub fn tenant_jobs<'a>(
        &'a self,
        t: TenantIdx,
        of: impl Fn(ShapeId) -> bool + 'a,
    ) -> impl Iterator<Item = JobId> + 'a {
        self.tenants
            .get(t as usize)
            .into_iter()
            .flat_map(|classes| classes.iter())
            .filter(move |(c, _)| of(self.keys[**c as usize].shape))
            .flat_map(|(_, q)| q.jobs.iter().map(|&(_, id)| id))
    }

    pub fn set_wait(&mut self, t: TenantIdx, class: ClassId, wait: WaitReason) {
        if let Some(q) = self.tenants[t as usize].get_mut(&class) {
            q.wait = wait;
        }
    }

    pub fn wait(&self, t: TenantIdx, class: ClassId) -> WaitReason {
        self.tenants[t as usize]
            .get(&class)
            .map_or(WaitReason::Queued, |q| q.wait)
    }

    /// Every pending job: (tenant, class, place in line, id).
    pub fn iter(&self) -> impl Iterator<Item = (TenantIdx, ClassId, u64, JobId)> + '_ {
        self.tenants.iter().enumerate().flat_map(|(t, classes)| {
            classes.iter().flat_map(move |(&c, q)| {
                q.jobs.iter().map(move |&(s, j)| (t as TenantIdx, c, s, j))
            })
        })
    }
}
