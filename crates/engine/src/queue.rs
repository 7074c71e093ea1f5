//! Pending jobs, grouped so that a pass costs what changed, not what waits.
//!
//! Within a tenant, jobs that would fit or fail alike — same shape, priority class,
//! preemptibility and runtime class — form one class queue, oldest first. A pass looks at the
//! head of each class queue; when the head cannot start, the rest of that class waits for the
//! next pass behind it. So a pass over 100,000 pending jobs in a few hundred classes costs a
//! few hundred placement attempts, not 100,000.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasherDefault;

use gosok_model::PriorityClass;

use crate::explain::WaitReason;
use crate::ids::{IdHasher, JobId, TenantIdx};
use crate::job::ShapeId;

pub type ClassId = u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClassKey {
    pub shape: ShapeId,
    pub priority: PriorityClass,
    pub preemptible: bool,
    /// Runtime bounds within about 19 % of each other share a class (see `runtime_class`).
    pub runtime: u16,
}

/// Quarter-octave buckets of the runtime bound: backfill decisions depend on it, and jobs in
/// one bucket are close enough that the oldest stands for the rest.
pub fn runtime_class(bound_s: Option<u64>) -> u16 {
    match bound_s {
        None => u16::MAX,
        Some(0) => 0,
        Some(b) => {
            let octave = 63 - b.leading_zeros();
            let quarter = if octave >= 2 {
                (b >> (octave - 2)) & 3
            } else {
                0
            };
            (octave * 4 + quarter as u32) as u16
        }
    }
}

pub struct ClassQueue {
    pub jobs: BTreeSet<(u64, JobId)>,
    /// Why the head waited at the last pass; the rest of the class waits behind it.
    pub wait: WaitReason,
}

#[derive(Default)]
pub struct Queues {
    keys: Vec<ClassKey>,
    ids: HashMap<ClassKey, ClassId, BuildHasherDefault<IdHasher>>,
    tenants: Vec<BTreeMap<ClassId, ClassQueue>>,
    len: usize,
}

/// The head of one class queue, ordered for a max-heap: higher priority, then older.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubHead {
    pub priority: PriorityClass,
    pub submit_s: u64,
    pub job: JobId,
    pub class: ClassId,
}

impl Ord for SubHead {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.priority
            .cmp(&o.priority)
            .then(o.submit_s.cmp(&self.submit_s))
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

    pub fn push(&mut self, t: TenantIdx, class: ClassId, submit_s: u64, job: JobId) {
        let q = self.tenants[t as usize]
            .entry(class)
            .or_insert_with(|| ClassQueue {
                jobs: BTreeSet::new(),
                wait: WaitReason::Queued,
            });
        if q.jobs.insert((submit_s, job)) {
            self.len += 1;
        }
    }

    pub fn remove(&mut self, t: TenantIdx, class: ClassId, submit_s: u64, job: JobId) -> bool {
        let classes = &mut self.tenants[t as usize];
        let Some(q) = classes.get_mut(&class) else {
            return false;
        };
        let removed = q.jobs.remove(&(submit_s, job));
        if removed {
            self.len -= 1;
            if q.jobs.is_empty() {
                classes.remove(&class);
            }
        }
        removed
    }

    pub fn contains(&self, t: TenantIdx, class: ClassId, submit_s: u64, job: JobId) -> bool {
        self.tenants[t as usize]
            .get(&class)
            .is_some_and(|q| q.jobs.contains(&(submit_s, job)))
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
        let &(submit_s, job) = q.jobs.first()?;
        Some(SubHead {
            priority: self.keys[class as usize].priority,
            submit_s,
            job,
            class,
        })
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

    /// Every pending job: (tenant, class, submit time, id).
    pub fn iter(&self) -> impl Iterator<Item = (TenantIdx, ClassId, u64, JobId)> + '_ {
        self.tenants.iter().enumerate().flat_map(|(t, classes)| {
            classes.iter().flat_map(move |(&c, q)| {
                q.jobs.iter().map(move |&(s, j)| (t as TenantIdx, c, s, j))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_classes_are_quarter_octaves() {
        assert_eq!(runtime_class(Some(3600)), runtime_class(Some(3700)));
        assert_ne!(runtime_class(Some(3600)), runtime_class(Some(4600)));
        assert!(runtime_class(Some(60)) < runtime_class(Some(3600)));
        assert_eq!(runtime_class(None), u16::MAX);
    }
}
