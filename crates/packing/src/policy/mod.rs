//! Placement policies: one trait, one type per policy.
//!
//! The runner filters the nodes a pod fits, asks the policy for a score of each, and places the
//! pod on a node of the highest score; the policy then chooses the GPUs on that node.
//!
//! Ties go to the node that comes first in a random order of the nodes drawn once per seed.
//! This is what the simulator of the published experiment does: its kube-scheduler was changed
//! to pick, among the nodes of the highest score, the one with the smallest name "for
//! reproducibility", and every node name starts with a random permutation index. A fixed
//! priority among equals makes every policy pack ties onto the same nodes, which matters a lot
//! for the integer scores of the baselines (0..=100), so it is reproduced exactly.

use std::fmt;
use std::str::FromStr;

use rand_chacha::ChaCha8Rng;

use crate::model::Demand;
use crate::state::{ClusterState, GpuSet};

mod bestfit;
mod clustering;
mod dotprod;
mod fgd;
mod gosok;
mod packing;
mod random;

pub use bestfit::BestFit;
pub use clustering::Clustering;
pub use dotprod::DotProd;
pub use fgd::Fgd;
pub use gosok::{Gosok, GosokModel};
pub use packing::Packing;
pub use random::RandomPolicy;

/// The largest CPU of a node the simulator normalises by (milli-CPU).
pub const MAX_SPEC_CPU_MILLI: f64 = 128_000.0;
/// The largest GPU of a node the simulator normalises by (milli-GPU, 8 GPUs).
pub const MAX_SPEC_GPU_MILLI: f64 = 8_000.0;
/// kube-scheduler's highest node score.
pub const MAX_NODE_SCORE: i64 = 100;

/// The pod being placed, as the policies see it.
#[derive(Debug, Clone, Copy)]
pub struct PodView {
    pub demand: Demand,
    /// A small integer naming the pod's [`Demand`]: equal demands have equal shapes, so a
    /// policy may cache per-shape results.
    pub shape: u32,
}

/// How the runner picks among the nodes a pod fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeChoice {
    /// The highest score; ties go to the node first in the seed's node order.
    BestScore,
    /// Uniformly at random (scores are not asked for).
    Uniform,
}

/// A placement policy.
pub trait Policy: Send {
    /// The policy's name as the command line spells it.
    fn name(&self) -> &'static str;

    /// Called before the first pod of a run: `shapes` is how many distinct pod shapes the run
    /// will ask about (shape ids are `0..shapes`).
    fn start(&mut self, _state: &ClusterState, _shapes: usize) {}

    /// How the runner picks among the nodes a pod fits.
    fn node_choice(&self) -> NodeChoice {
        NodeChoice::BestScore
    }

    /// The score of placing `pod` on `node`, which it fits. Higher is better; among equal
    /// scores the runner takes the node that comes first in the seed's node order.
    fn score(&mut self, state: &ClusterState, node: usize, pod: &PodView) -> f64;

    /// The GPUs of `node` that `pod` gets (empty for a pod without GPUs).
    fn pick_gpus(
        &mut self,
        state: &ClusterState,
        node: usize,
        pod: &PodView,
        rng: &mut ChaCha8Rng,
    ) -> Option<GpuSet>;
}

/// The policies of the experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyKind {
    Random,
    DotProd,
    Clustering,
    Packing,
    BestFit,
    Fgd,
    Gosok,
}

impl PolicyKind {
    /// Every policy, in the order of the paper's figures, gosok last.
    pub const ALL: [PolicyKind; 7] = [
        PolicyKind::Random,
        PolicyKind::DotProd,
        PolicyKind::Clustering,
        PolicyKind::Packing,
        PolicyKind::BestFit,
        PolicyKind::Fgd,
        PolicyKind::Gosok,
    ];

    /// The six policies with published results.
    pub const PUBLISHED: [PolicyKind; 6] = [
        PolicyKind::Random,
        PolicyKind::DotProd,
        PolicyKind::Clustering,
        PolicyKind::Packing,
        PolicyKind::BestFit,
        PolicyKind::Fgd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Random => "random",
            PolicyKind::DotProd => "dotprod",
            PolicyKind::Clustering => "clustering",
            PolicyKind::Packing => "packing",
            PolicyKind::BestFit => "bestfit",
            PolicyKind::Fgd => "fgd",
            PolicyKind::Gosok => "gosok",
        }
    }

    /// The policy's name in the published results (`sc_policy` column).
    pub fn published_name(self) -> Option<&'static str> {
        match self {
            PolicyKind::Random => Some("01-Random"),
            PolicyKind::DotProd => Some("02-DotProd"),
            PolicyKind::Clustering => Some("03-GpuClustering"),
            PolicyKind::Packing => Some("04-GpuPacking"),
            PolicyKind::BestFit => Some("05-BestFit"),
            PolicyKind::Fgd => Some("06-FGD"),
            PolicyKind::Gosok => None,
        }
    }

    /// Parses a comma-separated list of policy names, or `all`.
    pub fn parse_list(text: &str) -> Result<Vec<PolicyKind>, UnknownPolicy> {
        if text.trim() == "all" {
            return Ok(PolicyKind::ALL.to_vec());
        }
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let kind: PolicyKind = part.parse()?;
            if !out.contains(&kind) {
                out.push(kind);
            }
        }
        if out.is_empty() {
            return Err(UnknownPolicy(text.to_string()));
        }
        Ok(out)
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A policy name that is not one of [`PolicyKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown policy {0:?}: choose from random, dotprod, clustering, packing, bestfit, fgd, gosok, \
     a comma-separated list of them, or all"
)]
pub struct UnknownPolicy(pub String);

impl FromStr for PolicyKind {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        PolicyKind::ALL
            .into_iter()
            .find(|k| k.name() == lower)
            .ok_or_else(|| UnknownPolicy(s.to_string()))
    }
}

/// `int64(x)` of Go: truncation toward zero.
pub(crate) fn go_int(x: f64) -> f64 {
    x.trunc()
}

#[cfg(test)]
pub(crate) mod testkit {
    //! Tiny hand-made clusters for the policies' unit tests.
    use crate::model::{Cluster, Demand, GpuModels, ModelMask, NodeSpec};
    use crate::state::{ClusterState, GpuSet};

    use super::PodView;

    /// Nodes of `(cpu_milli, gpu_count)`, all of model "T4".
    pub fn cluster(nodes: &[(u32, u8)]) -> (Cluster, ClusterState) {
        let mut models = GpuModels::default();
        let t4 = models.intern("T4").unwrap();
        let c = Cluster {
            models,
            nodes: nodes
                .iter()
                .enumerate()
                .map(|(i, &(cpu, gpus))| NodeSpec {
                    name: format!("n{i}"),
                    cpu_milli: cpu,
                    memory_mib: 1 << 20,
                    gpu_count: gpus,
                    model: Some(t4),
                })
                .collect(),
            skipped_rows: vec![],
        };
        let s = ClusterState::new(&c);
        (c, s)
    }

    pub fn pod(cpu: u32, milli: u16, count: u8) -> PodView {
        PodView {
            demand: Demand {
                cpu_milli: cpu,
                gpu_milli: milli,
                gpu_count: count,
                models: ModelMask::ANY,
            },
            shape: 0,
        }
    }

    /// Takes `milli` from GPU `gpu` of `node` (and `cpu` milli-CPU).
    pub fn use_gpu(s: &mut ClusterState, node: usize, gpu: usize, cpu: u32, milli: u16) {
        let d = pod(cpu, milli, 1).demand;
        s.place(node, &d, 0, GpuSet::single(gpu)).unwrap();
    }
}
