//! The cluster while pods arrive: what is left on every node and GPU.
//!
//! Filtering follows the simulator the experiment reproduces: a pod fits a node when the node
//! has the CPU and memory left, its GPU model is allowed, and either one GPU has the pod's
//! fraction left (a shared-GPU pod) or `gpu_count` GPUs are entirely free (whole-GPU pods).

use crate::model::{Cluster, Demand, GpuModelId, MAX_GPUS_PER_NODE, MILLI_PER_GPU};

/// A set of GPU indices of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GpuSet(pub u8);

impl GpuSet {
    pub const EMPTY: GpuSet = GpuSet(0);

    pub fn single(index: usize) -> GpuSet {
        GpuSet(1u8 << index)
    }

    pub fn with(self, index: usize) -> GpuSet {
        GpuSet(self.0 | (1u8 << index))
    }

    pub fn contains(self, index: usize) -> bool {
        self.0 & (1u8 << index) != 0
    }

    pub fn len(self) -> u32 {
        self.0.count_ones()
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// Slot of the per-kind pod counts a node keeps for GPU-clustering: 0 counts shared-GPU pods,
/// `k` counts pods of `k` whole GPUs.
pub const AFFINITY_KINDS: usize = MAX_GPUS_PER_NODE + 1;

/// One node while pods arrive.
#[derive(Debug, Clone)]
pub struct NodeState {
    pub cpu_capacity: u32,
    pub cpu_left: u32,
    pub memory_left_mib: u64,
    pub gpu_count: u8,
    pub model: Option<GpuModelId>,
    /// Milli-GPUs left on each GPU; entries past `gpu_count` are 0.
    pub gpu_left: [u16; MAX_GPUS_PER_NODE],
    /// GPUs with all 1000 milli-GPUs left.
    pub full_gpus: u8,
    /// The most milli-GPUs left on any one GPU.
    pub max_gpu_left: u16,
    pub gpu_left_total: u32,
    /// Pods on the node by GPU kind (see [`AFFINITY_KINDS`]).
    pub pods_by_kind: [u16; AFFINITY_KINDS],
    /// The step at which the node last changed (0 = never); lets policies cache per node.
    pub version: u32,
}

impl NodeState {
    /// The GPUs in use on this node, as a slice of milli-GPUs left.
    pub fn gpus(&self) -> &[u16] {
        &self.gpu_left[..usize::from(self.gpu_count)]
    }

    /// Whether `demand` (and `memory_mib`) fits this node now.
    #[inline]
    pub fn fits(&self, demand: &Demand, memory_mib: u64) -> bool {
        if self.cpu_left < demand.cpu_milli || self.memory_left_mib < memory_mib {
            return false;
        }
        self.fits_gpu(demand)
    }

    /// Whether the GPU part of `demand` fits this node now (CPU and memory not checked).
    #[inline]
    pub fn fits_gpu(&self, demand: &Demand) -> bool {
        if !demand.wants_gpu() {
            return true;
        }
        let Some(model) = self.model else {
            return false;
        };
        if !demand.models.allows(model) {
            return false;
        }
        if demand.is_shared_gpu() {
            self.max_gpu_left >= demand.gpu_milli
        } else {
            self.full_gpus >= demand.gpu_count
        }
    }

    /// How many distinct GPU kinds of pods the node hosts.
    pub fn kinds_hosted(&self) -> usize {
        self.pods_by_kind.iter().filter(|&&c| c > 0).count()
    }

    /// The first `count` entirely free GPUs in index order (the simulator's choice for
    /// whole-GPU pods); `None` when there are not enough.
    pub fn first_free_gpus(&self, count: u8) -> Option<GpuSet> {
        let mut set = GpuSet::EMPTY;
        let mut need = count;
        for (i, &left) in self.gpus().iter().enumerate() {
            if need == 0 {
                break;
            }
            if u32::from(left) == MILLI_PER_GPU {
                set = set.with(i);
                need -= 1;
            }
        }
        (need == 0).then_some(set)
    }

    /// The GPU with the fewest milli-GPUs left that still holds `gpu_milli` (lowest index on
    /// ties): the simulator's "best" GPU selection for a shared-GPU pod.
    pub fn tightest_gpu(&self, gpu_milli: u16) -> Option<usize> {
        let mut best: Option<(usize, u16)> = None;
        for (i, &left) in self.gpus().iter().enumerate() {
            if left >= gpu_milli && best.is_none_or(|(_, b)| left < b) {
                best = Some((i, left));
            }
        }
        best.map(|(i, _)| i)
    }

    /// The GPUs the simulator's "best" selection gives `demand` on this node.
    pub fn best_fit_gpus(&self, demand: &Demand) -> Option<GpuSet> {
        if !demand.wants_gpu() {
            Some(GpuSet::EMPTY)
        } else if demand.is_shared_gpu() {
            self.tightest_gpu(demand.gpu_milli).map(GpuSet::single)
        } else {
            self.first_free_gpus(demand.gpu_count)
        }
    }

    fn refresh(&mut self) {
        let gpus = &self.gpu_left[..usize::from(self.gpu_count)];
        self.full_gpus = gpus
            .iter()
            .filter(|&&l| u32::from(l) == MILLI_PER_GPU)
            .count() as u8;
        self.max_gpu_left = gpus.iter().copied().max().unwrap_or(0);
        self.gpu_left_total = gpus.iter().map(|&l| u32::from(l)).sum();
    }
}

/// The whole cluster while pods arrive.
#[derive(Debug, Clone)]
pub struct ClusterState {
    pub nodes: Vec<NodeState>,
    pub total_gpu_milli: u64,
    pub used_gpu_milli: u64,
    /// Placements made so far.
    pub step: u32,
}

/// Why a placement was refused (a policy picked GPUs the node does not have).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node {node}: {problem}")]
pub struct PlaceError {
    pub node: usize,
    pub problem: String,
}

impl ClusterState {
    /// An empty cluster.
    pub fn new(cluster: &Cluster) -> ClusterState {
        let nodes = cluster
            .nodes
            .iter()
            .map(|n| {
                let mut gpu_left = [0u16; MAX_GPUS_PER_NODE];
                for g in gpu_left.iter_mut().take(usize::from(n.gpu_count)) {
                    *g = MILLI_PER_GPU as u16;
                }
                let mut s = NodeState {
                    cpu_capacity: n.cpu_milli,
                    cpu_left: n.cpu_milli,
                    memory_left_mib: n.memory_mib,
                    gpu_count: n.gpu_count,
                    model: n.model,
                    gpu_left,
                    full_gpus: 0,
                    max_gpu_left: 0,
                    gpu_left_total: 0,
                    pods_by_kind: [0; AFFINITY_KINDS],
                    version: 0,
                };
                s.refresh();
                s
            })
            .collect();
        ClusterState {
            nodes,
            total_gpu_milli: cluster.total_gpu_milli(),
            used_gpu_milli: 0,
            step: 0,
        }
    }

    /// Places `demand` on `node`, taking `gpu_milli` from each GPU of `gpus`.
    ///
    /// Refuses (and changes nothing) when the node lacks CPU or memory or the chosen GPUs do
    /// not match the demand, so a faulty policy cannot corrupt the books.
    pub fn place(
        &mut self,
        node: usize,
        demand: &Demand,
        memory_mib: u64,
        gpus: GpuSet,
    ) -> Result<(), PlaceError> {
        let fail = |problem: String| PlaceError { node, problem };
        let Some(n) = self.nodes.get_mut(node) else {
            return Err(fail("no such node".into()));
        };
        if n.cpu_left < demand.cpu_milli || n.memory_left_mib < memory_mib {
            return Err(fail(format!("not enough CPU or memory for {demand}")));
        }
        let want = if demand.wants_gpu() {
            u32::from(demand.gpu_count)
        } else {
            0
        };
        if gpus.len() != want || (u32::from(gpus.0) >> n.gpu_count) != 0 {
            return Err(fail(format!(
                "GPU set {:#010b} does not fit {demand}",
                gpus.0
            )));
        }
        if want > 0 {
            let Some(model) = n.model else {
                return Err(fail("the node has no GPUs".into()));
            };
            if !demand.models.allows(model) {
                return Err(fail("GPU model not allowed for this pod".into()));
            }
        }
        for i in 0..usize::from(n.gpu_count) {
            if gpus.contains(i) && n.gpu_left[i] < demand.gpu_milli {
                return Err(fail(format!("GPU {i} has only {} m left", n.gpu_left[i])));
            }
        }
        for i in 0..usize::from(n.gpu_count) {
            if gpus.contains(i) {
                n.gpu_left[i] -= demand.gpu_milli;
            }
        }
        n.cpu_left -= demand.cpu_milli;
        n.memory_left_mib -= memory_mib;
        if want > 0 {
            let kind = if demand.is_shared_gpu() {
                0
            } else {
                usize::from(demand.gpu_count).min(AFFINITY_KINDS - 1)
            };
            n.pods_by_kind[kind] = n.pods_by_kind[kind].saturating_add(1);
        }
        n.refresh();
        self.step += 1;
        n.version = self.step;
        self.used_gpu_milli += u64::from(demand.total_gpu_milli());
        Ok(())
    }

    /// Allocated share of all GPUs, in percent.
    pub fn allocated_gpu_pct(&self) -> f64 {
        if self.total_gpu_milli == 0 {
            0.0
        } else {
            100.0 * self.used_gpu_milli as f64 / self.total_gpu_milli as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GpuModels, ModelMask, NodeSpec};

    pub(crate) fn two_node_cluster() -> Cluster {
        let mut models = GpuModels::default();
        let t4 = models.intern("T4").unwrap();
        let g2 = models.intern("G2").unwrap();
        Cluster {
            models,
            nodes: vec![
                NodeSpec {
                    name: "a".into(),
                    cpu_milli: 16000,
                    memory_mib: 1000,
                    gpu_count: 2,
                    model: Some(t4),
                },
                NodeSpec {
                    name: "b".into(),
                    cpu_milli: 64000,
                    memory_mib: 4000,
                    gpu_count: 8,
                    model: Some(g2),
                },
            ],
            skipped_rows: vec![],
        }
    }

    fn d(cpu: u32, milli: u16, count: u8) -> Demand {
        Demand {
            cpu_milli: cpu,
            gpu_milli: milli,
            gpu_count: count,
            models: ModelMask::ANY,
        }
    }

    #[test]
    fn fits_checks_cpu_memory_model_and_gpus() {
        let c = two_node_cluster();
        let mut s = ClusterState::new(&c);
        assert!(s.nodes[0].fits(&d(16000, 1000, 2), 1000));
        assert!(!s.nodes[0].fits(&d(16001, 0, 0), 0));
        assert!(!s.nodes[0].fits(&d(1, 0, 0), 1001));
        assert!(!s.nodes[0].fits(&d(1, 1000, 4), 0));
        let only_g2 = Demand {
            models: ModelMask::ANY.with(c.models.id("G2").unwrap()),
            ..d(1, 500, 1)
        };
        assert!(!s.nodes[0].fits(&only_g2, 0));
        assert!(s.nodes[1].fits(&only_g2, 0));
        s.place(0, &d(1000, 600, 1), 10, GpuSet::single(1)).unwrap();
        assert_eq!(s.nodes[0].gpus(), [1000, 400]);
        assert_eq!(s.nodes[0].full_gpus, 1);
        assert!(!s.nodes[0].fits(&d(1, 1000, 2), 0));
        assert!(s.nodes[0].fits(&d(1, 400, 1), 0));
        assert_eq!(s.nodes[0].tightest_gpu(300), Some(1));
        assert_eq!(s.nodes[0].tightest_gpu(500), Some(0));
        assert_eq!(s.nodes[0].first_free_gpus(1), Some(GpuSet::single(0)));
        assert_eq!(s.used_gpu_milli, 600);
        assert_eq!(s.nodes[0].version, 1);
        assert_eq!(s.nodes[0].pods_by_kind[0], 1);
    }

    #[test]
    fn place_refuses_bad_gpu_choices_without_changing_anything() {
        let c = two_node_cluster();
        let mut s = ClusterState::new(&c);
        assert!(s.place(0, &d(1, 1000, 2), 0, GpuSet::single(0)).is_err());
        assert!(s.place(0, &d(1, 500, 1), 0, GpuSet::single(5)).is_err());
        assert!(s.place(9, &d(1, 0, 0), 0, GpuSet::EMPTY).is_err());
        s.place(0, &d(1, 800, 1), 0, GpuSet::single(0)).unwrap();
        assert!(s.place(0, &d(1, 300, 1), 0, GpuSet::single(0)).is_err());
        assert_eq!(s.nodes[0].gpus(), [200, 1000]);
        assert_eq!(s.step, 1);
    }
}
