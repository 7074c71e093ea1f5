//! The node and pod model of the arrival-only packing experiment.
//!
//! A node has CPU (milli-cores), memory (MiB) and up to [`MAX_GPUS_PER_NODE`] GPUs of one model;
//! each GPU is 1000 milli-GPUs and can be shared. A pod asks for CPU, memory and either nothing,
//! a fraction of ONE GPU (`gpu_count == 1`, `gpu_milli < 1000`) or `gpu_count` whole GPUs,
//! optionally restricted to a set of GPU models.

use std::fmt;

/// Milli-GPUs in one GPU.
pub const MILLI_PER_GPU: u32 = 1000;

/// The most GPUs one node may have (the openb nodes have at most 8, as does the simulator).
pub const MAX_GPUS_PER_NODE: usize = 8;

/// The most distinct GPU models a cluster may have (they are kept in a 32-bit mask).
pub const MAX_GPU_MODELS: usize = 32;

/// A GPU model of the cluster, an index into [`GpuModels`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GpuModelId(pub u8);

/// A set of GPU models; the empty set means "any model".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ModelMask(pub u32);

impl ModelMask {
    /// Any GPU model will do.
    pub const ANY: ModelMask = ModelMask(0);

    pub fn with(self, model: GpuModelId) -> ModelMask {
        ModelMask(self.0 | (1u32 << model.0))
    }

    /// Whether a GPU of `model` satisfies this constraint.
    pub fn allows(self, model: GpuModelId) -> bool {
        self.0 == 0 || self.0 & (1u32 << model.0) != 0
    }

    pub fn is_any(self) -> bool {
        self.0 == 0
    }
}

/// The GPU model names of a cluster, in order of first appearance in the node list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuModels {
    names: Vec<String>,
}

impl GpuModels {
    /// The id of `name`, adding it if new; `None` when the cluster already has the most models.
    pub fn intern(&mut self, name: &str) -> Option<GpuModelId> {
        if let Some(id) = self.id(name) {
            return Some(id);
        }
        if self.names.len() >= MAX_GPU_MODELS {
            return None;
        }
        self.names.push(name.to_string());
        Some(GpuModelId((self.names.len() - 1) as u8))
    }

    pub fn id(&self, name: &str) -> Option<GpuModelId> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| GpuModelId(i as u8))
    }

    pub fn name(&self, id: GpuModelId) -> &str {
        self.names
            .get(id.0 as usize)
            .map(String::as_str)
            .unwrap_or("?")
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The model names of `mask`, `|`-separated as in the trace; empty for "any".
    pub fn mask_names(&self, mask: ModelMask) -> String {
        let mut out = Vec::new();
        for (i, name) in self.names.iter().enumerate() {
            if mask.0 & (1u32 << i) != 0 {
                out.push(name.as_str());
            }
        }
        out.join("|")
    }
}

/// One node of the cluster as the node list gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    pub cpu_milli: u32,
    pub memory_mib: u64,
    pub gpu_count: u8,
    /// The GPU model; `None` for a node without GPUs.
    pub model: Option<GpuModelId>,
}

/// The cluster: its GPU models and nodes.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    pub models: GpuModels,
    pub nodes: Vec<NodeSpec>,
    /// Rows left out because `--skip-bad-rows` was given, with the reason of each.
    pub skipped_rows: Vec<String>,
}

impl Cluster {
    /// All GPUs of the cluster, in milli-GPUs.
    pub fn total_gpu_milli(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| u64::from(n.gpu_count) * u64::from(MILLI_PER_GPU))
            .sum()
    }

    pub fn total_gpus(&self) -> u64 {
        self.nodes.iter().map(|n| u64::from(n.gpu_count)).sum()
    }
}

/// What a pod asks for. Pods with the same demand are interchangeable for every policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Demand {
    pub cpu_milli: u32,
    /// Milli-GPUs on each GPU: `1..=999` shares one GPU, `1000` takes whole GPUs, 0 for no GPU.
    pub gpu_milli: u16,
    pub gpu_count: u8,
    /// Allowed GPU models; [`ModelMask::ANY`] when unconstrained or when the pod wants no GPU.
    pub models: ModelMask,
}

impl Demand {
    /// All milli-GPUs the pod takes.
    pub fn total_gpu_milli(&self) -> u32 {
        u32::from(self.gpu_milli) * u32::from(self.gpu_count)
    }

    /// A fraction of one GPU.
    pub fn is_shared_gpu(&self) -> bool {
        self.gpu_count == 1 && u32::from(self.gpu_milli) < MILLI_PER_GPU
    }

    pub fn wants_gpu(&self) -> bool {
        self.gpu_count > 0 && self.gpu_milli > 0
    }
}

impl fmt::Display for Demand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpu {} m, {} x {} m GPU",
            self.cpu_milli, self.gpu_count, self.gpu_milli
        )
    }
}

/// One pod of a pod list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    pub name: String,
    pub memory_mib: u64,
    pub demand: Demand,
}

/// A pod list: the workload of one experiment.
#[derive(Debug, Clone, Default)]
pub struct Workload {
    /// The file stem, e.g. `openb_pod_list_default`.
    pub name: String,
    pub pods: Vec<PodSpec>,
    /// Rows left out because `--skip-bad-rows` was given, with the reason of each.
    pub skipped_rows: Vec<String>,
}

impl Workload {
    pub fn total_gpu_milli(&self) -> u64 {
        self.pods
            .iter()
            .map(|p| u64::from(p.demand.total_gpu_milli()))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_allows_listed_models_or_any() {
        let mut models = GpuModels::default();
        let t4 = models.intern("T4").unwrap();
        let g2 = models.intern("G2").unwrap();
        assert_eq!(models.intern("T4"), Some(t4));
        let only_t4 = ModelMask::ANY.with(t4);
        assert!(only_t4.allows(t4));
        assert!(!only_t4.allows(g2));
        assert!(ModelMask::ANY.allows(g2));
        assert_eq!(models.mask_names(only_t4.with(g2)), "T4|G2");
    }

    #[test]
    fn demand_kinds() {
        let share = Demand {
            cpu_milli: 1000,
            gpu_milli: 500,
            gpu_count: 1,
            models: ModelMask::ANY,
        };
        assert!(share.is_shared_gpu() && share.wants_gpu());
        let two = Demand {
            gpu_milli: 1000,
            gpu_count: 2,
            ..share
        };
        assert!(!two.is_shared_gpu());
        assert_eq!(two.total_gpu_milli(), 2000);
        let cpu = Demand {
            gpu_milli: 0,
            gpu_count: 0,
            ..share
        };
        assert!(!cpu.wants_gpu());
    }
}
