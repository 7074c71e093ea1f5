//! GPU fragmentation as FGD (Weng et al., ATC '23, Sec. 3) defines it.
//!
//! Fragmentation is measured against a *target workload*: a list of pod shapes with weights
//! (their popularity). For each shape, the idle milli-GPUs of a node that a pod of that shape
//! could not use are fragments:
//! - all idle GPU when the shape wants no GPU (a CPU pod can never use a GPU), when the node's
//!   GPU model is not allowed, when too few GPUs have the shape's per-GPU amount left, or when the
//!   node lacks the CPU;
//! - otherwise (the shape fits) only the GPUs with less than the shape's per-GPU amount left.
//!
//! A node's fragmentation is the weighted sum over shapes; the cluster's is the sum over nodes.
//! Memory is not part of the measure (as in the simulator).

use std::collections::HashMap;

use crate::model::{Demand, GpuModelId, GpuModels, MAX_GPU_MODELS, PodSpec};

/// The simulator's popularity cut: the most popular shapes covering this share of all pods.
pub const FGD_POPULARITY_PCT: f64 = 95.0;

/// One shape of the target workload and its weight (the weights of a workload sum to 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TypicalPod {
    pub demand: Demand,
    pub weight: f64,
}

#[derive(Debug, Clone, Copy)]
struct GpuShape {
    cpu_milli: u32,
    gpu_milli: u16,
    gpu_count: u8,
    weight: f64,
}

/// A target workload, prepared for fast fragmentation sums.
#[derive(Debug, Clone)]
pub struct TypicalPods {
    pods: Vec<TypicalPod>,
    /// Total weight of the shapes that want no GPU: all idle GPU is a fragment for them.
    cpu_weight: f64,
    /// Per GPU model: weight of the GPU shapes that may not use the model.
    no_access_weight: Vec<f64>,
    /// Per GPU model: the GPU shapes that may use it, by increasing per-GPU amount.
    accessible: Vec<Vec<GpuShape>>,
}

impl TypicalPods {
    /// The shapes that FGD's simulator uses: pod shapes (CPU, per-GPU milli, GPU count, GPU
    /// models; memory is ignored) counted over `pods`, most popular first, cut at the smallest
    /// prefix covering `popularity_pct` % of the pods, weights renormalised to sum to 1.
    /// Equal counts are ordered as the simulator orders them (larger shape first).
    pub fn popular(pods: &[PodSpec], models: &GpuModels, popularity_pct: f64) -> TypicalPods {
        let mut counts: HashMap<Demand, f64> = HashMap::new();
        for p in pods {
            *counts.entry(p.demand).or_insert(0.0) += 1.0;
        }
        let total: f64 = counts.values().sum();
        let mut shapes: Vec<(Demand, f64)> = counts.into_iter().collect();
        shapes.sort_by(|a, b| {
            b.1.total_cmp(&a.1).then_with(|| {
                let ka = (a.0.cpu_milli, a.0.gpu_milli, a.0.gpu_count);
                let kb = (b.0.cpu_milli, b.0.gpu_milli, b.0.gpu_count);
                kb.cmp(&ka).then_with(|| {
                    models
                        .mask_names(b.0.models)
                        .cmp(&models.mask_names(a.0.models))
                })
            })
        });
        let wanted = popularity_pct / 100.0 * total;
        let mut covered = 0.0;
        let mut cut = 0;
        while cut < shapes.len() && covered < wanted {
            covered += shapes[cut].1;
            cut += 1;
        }
        shapes.truncate(cut.max(1).min(shapes.len()));
        let kept: f64 = shapes.iter().map(|s| s.1).sum();
        let pods = shapes
            .into_iter()
            .map(|(demand, n)| TypicalPod {
                demand,
                weight: if kept > 0.0 { n / kept } else { 0.0 },
            })
            .collect();
        TypicalPods::new(pods, models.len())
    }

    /// Every shape of `pods`, weighted by its share of the pods (no popularity cut).
    pub fn all_shapes(pods: &[PodSpec], models: &GpuModels) -> TypicalPods {
        TypicalPods::popular(pods, models, 100.0)
    }

    /// A target workload from explicit shapes and weights.
    pub fn new(pods: Vec<TypicalPod>, model_count: usize) -> TypicalPods {
        let models = model_count.clamp(1, MAX_GPU_MODELS);
        let mut cpu_weight = 0.0;
        let mut no_access_weight = vec![0.0; models];
        let mut accessible = vec![Vec::new(); models];
        for p in &pods {
            if !p.demand.wants_gpu() {
                cpu_weight += p.weight;
                continue;
            }
            for m in 0..models {
                if p.demand.models.allows(GpuModelId(m as u8)) {
                    accessible[m].push(GpuShape {
                        cpu_milli: p.demand.cpu_milli,
                        gpu_milli: p.demand.gpu_milli,
                        gpu_count: p.demand.gpu_count,
                        weight: p.weight,
                    });
                } else {
                    no_access_weight[m] += p.weight;
                }
            }
        }
        for list in &mut accessible {
            list.sort_by_key(|s| (s.gpu_milli, s.gpu_count, s.cpu_milli));
        }
        TypicalPods {
            pods,
            cpu_weight,
            no_access_weight,
            accessible,
        }
    }

    pub fn pods(&self) -> &[TypicalPod] {
        &self.pods
    }

    /// Fragmented milli-GPUs of a node with `cpu_left` milli-CPU and `gpu_left` milli-GPUs left
    /// on each of its GPUs of `model`.
    pub fn node_frag_milli(
        &self,
        cpu_left: u32,
        gpu_left: &[u16],
        model: Option<GpuModelId>,
    ) -> f64 {
        let total: u32 = gpu_left.iter().map(|&l| u32::from(l)).sum();
        if total == 0 {
            return 0.0;
        }
        let Some(model) = model else {
            return 0.0;
        };
        let m = usize::from(model.0);
        let (Some(no_access), Some(shapes)) =
            (self.no_access_weight.get(m), self.accessible.get(m))
        else {
            return f64::from(total) * self.cpu_weight;
        };
        let total_f = f64::from(total);
        let mut frag = total_f * (self.cpu_weight + no_access);
        // Shapes are sorted by per-GPU amount, so the split of the GPUs into "holds the amount"
        // and "too small" is recomputed only when the amount changes.
        let mut last_milli = u16::MAX;
        let mut fitting = 0u8;
        let mut small = 0u32;
        for s in shapes {
            if s.gpu_milli != last_milli {
                last_milli = s.gpu_milli;
                fitting = 0;
                small = 0;
                for &l in gpu_left {
                    if l >= s.gpu_milli {
                        fitting += 1;
                    } else {
                        small += u32::from(l);
                    }
                }
            }
            if fitting >= s.gpu_count && cpu_left >= s.cpu_milli {
                frag += s.weight * f64::from(small);
            } else {
                frag += s.weight * total_f;
            }
        }
        frag
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelMask, PodSpec};

    fn pod(cpu: u32, milli: u16, count: u8) -> PodSpec {
        PodSpec {
            name: String::new(),
            memory_mib: 0,
            demand: Demand {
                cpu_milli: cpu,
                gpu_milli: milli,
                gpu_count: count,
                models: ModelMask::ANY,
            },
        }
    }

    fn models() -> GpuModels {
        let mut m = GpuModels::default();
        m.intern("T4").unwrap();
        m.intern("G2").unwrap();
        m
    }

    #[test]
    fn popularity_cut_keeps_the_smallest_prefix_covering_the_share() {
        let mut pods = vec![pod(1000, 500, 1); 6];
        pods.extend(vec![pod(2000, 1000, 1); 3]);
        pods.push(pod(4000, 0, 0));
        let t = TypicalPods::popular(&pods, &models(), 85.0);
        assert_eq!(t.pods().len(), 2);
        assert!((t.pods()[0].weight - 6.0 / 9.0).abs() < 1e-12);
        let all = TypicalPods::all_shapes(&pods, &models());
        assert_eq!(all.pods().len(), 3);
        assert!((all.pods()[2].weight - 0.1).abs() < 1e-12);
    }

    #[test]
    fn frag_of_a_node_against_half_gpu_and_cpu_pods() {
        // Half of the pods want 500 m of one GPU, half want no GPU.
        let pods = vec![pod(1000, 500, 1), pod(1000, 0, 0)];
        let t = TypicalPods::popular(&pods, &models(), 100.0);
        let t4 = Some(GpuModelId(0));
        // Two idle GPUs: the GPU pod can use all of it, the CPU pod none: 0.5 * 2000.
        assert_eq!(t.node_frag_milli(8000, &[1000, 1000], t4), 1000.0);
        // 300 m left on one GPU is too small for the GPU pod: 0.5*1300 + 0.5*300.
        assert_eq!(t.node_frag_milli(8000, &[1000, 300], t4), 800.0);
        // No CPU left: everything idle is a fragment for both.
        assert_eq!(t.node_frag_milli(500, &[1000, 300], t4), 1300.0);
        // No GPU left: nothing is a fragment.
        assert_eq!(t.node_frag_milli(8000, &[0, 0], t4), 0.0);
    }

    #[test]
    fn multi_gpu_and_model_constraints() {
        let mut p = pod(1000, 1000, 2);
        p.demand.models = ModelMask::ANY.with(GpuModelId(1));
        let t = TypicalPods::popular(&[p], &models(), 100.0);
        // On a T4 node the G2-only pod has no access: all idle GPU is a fragment.
        assert_eq!(
            t.node_frag_milli(8000, &[1000, 1000], Some(GpuModelId(0))),
            2000.0
        );
        // On a G2 node with two free GPUs it fits and nothing is a fragment.
        assert_eq!(
            t.node_frag_milli(8000, &[1000, 1000, 500], Some(GpuModelId(1))),
            500.0
        );
        // With only one free GPU it does not fit: everything is a fragment.
        assert_eq!(
            t.node_frag_milli(8000, &[1000, 999], Some(GpuModelId(1))),
            1999.0
        );
    }
}
