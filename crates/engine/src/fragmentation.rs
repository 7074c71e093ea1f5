//! Accelerator fragmentation against a target workload, as FGD (Weng et al., ATC '23, Sec. 3)
//! defines it; the `fgd` and `waste` scorers and the packing experiment's fragmentation curve
//! all measure it here.
//!
//! The target workload is a list of replica shapes (accelerator request, CPU, acceptable
//! models) with weights summing to 1. For one shape, the free thousandths of a node that a
//! replica of that shape could not use are fragments:
//! - all of them when the shape asks for no accelerator (CPU work never uses one), when the
//!   node's model is not acceptable, when the node lacks the CPU, or when too few devices have
//!   the shape's per-device amount free;
//! - otherwise only the devices with less than that amount free.
//!
//! A node's fragmentation is the weighted sum over shapes. Memory is not part of the measure.

use gosok_model::ModelId;

use crate::ids::ModelSet;
use crate::job::AccelReq;

/// One replica shape of the workload.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct TypicalShape {
    pub accel: AccelReq,
    pub cpu_milli: u64,
    /// Acceptable models (all the catalog's when unconstrained).
    pub models: ModelSet,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
struct DeviceShape {
    /// Thousandths needed on each device, and how many devices.
    per_device: u16,
    devices: u16,
    cpu_milli: u64,
    weight: f64,
}

/// A target workload, arranged for fast sums: per model, the shapes that may use it sorted by
/// per-device amount, and the weight of those that may not.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FragTarget {
    /// Weight of the shapes that ask for no accelerator.
    cpu_weight: f64,
    no_access: Vec<f64>,
    accessible: Vec<Vec<DeviceShape>>,
}

impl FragTarget {
    /// `shapes` with their weights (summing to 1), for a catalog of `n_models` models.
    pub fn new(shapes: &[(TypicalShape, f64)], n_models: usize) -> FragTarget {
        let mut t = FragTarget {
            cpu_weight: 0.0,
            no_access: vec![0.0; n_models],
            accessible: vec![Vec::new(); n_models],
        };
        for &(s, weight) in shapes {
            let (per_device, devices) = match s.accel {
                AccelReq::None => {
                    t.cpu_weight += weight;
                    continue;
                }
                AccelReq::Whole(k) => (1000, k),
                AccelReq::Milli(m) => (m, 1),
            };
            for m in 0..n_models {
                if s.models.contains(m as ModelId) {
                    t.accessible[m].push(DeviceShape {
                        per_device,
                        devices,
                        cpu_milli: s.cpu_milli,
                        weight,
                    });
                } else {
                    t.no_access[m] += weight;
                }
            }
        }
        for list in &mut t.accessible {
            list.sort_by_key(|s| (s.per_device, s.devices, s.cpu_milli));
        }
        t
    }

    pub fn is_empty(&self) -> bool {
        self.cpu_weight == 0.0 && self.accessible.iter().all(Vec::is_empty)
    }

    /// Fragmented thousandths of a node of `model` whose devices have `used` thousandths in
    /// use and which has `cpu_free_milli` CPU left.
    pub fn node_frag_milli(
        &self,
        used: &[u16],
        cpu_free_milli: u64,
        model: Option<ModelId>,
    ) -> f64 {
        let total: u64 = used.iter().map(|&u| 1000 - u.min(1000) as u64).sum();
        if total == 0 {
            return 0.0;
        }
        let Some(m) = model else { return 0.0 };
        let total_f = total as f64;
        let (Some(&no_access), Some(shapes)) = (
            self.no_access.get(m as usize),
            self.accessible.get(m as usize),
        ) else {
            return total_f * self.cpu_weight;
        };
        let mut frag = total_f * (self.cpu_weight + no_access);
        if shapes.is_empty() {
            return frag;
        }
        // The devices' free amounts, ascending: as the shapes' per-device amount grows, the
        // devices with too little free are a growing prefix, so one pass over the sorted
        // amounts splits the devices for every amount (same integers as counting afresh).
        let mut stack = [0u16; 16];
        let mut heap = Vec::new();
        let free: &mut [u16] = if used.len() <= stack.len() {
            &mut stack[..used.len()]
        } else {
            heap.resize(used.len(), 0);
            &mut heap
        };
        for (f, &u) in free.iter_mut().zip(used) {
            *f = 1000 - u.min(1000);
        }
        free.sort_unstable();
        let mut too_little = 0usize;
        let mut small = 0u64;
        let mut last = u16::MAX;
        let mut fitting = 0u16;
        for s in shapes {
            if s.per_device != last {
                last = s.per_device;
                while too_little < free.len() && free[too_little] < s.per_device {
                    small += free[too_little] as u64;
                    too_little += 1;
                }
                fitting = (free.len() - too_little) as u16;
            }
            if fitting >= s.devices && cpu_free_milli >= s.cpu_milli {
                frag += s.weight * small as f64;
            } else {
                frag += s.weight * total_f;
            }
        }
        frag
    }
}

/// The shapes counted over a workload, most popular first, cut at the smallest prefix that
/// covers `share` of the replicas (FGD's typical pods use 95 %), weights renormalised to 1.
/// Equal counts go larger shape first, so the cut is deterministic.
pub fn popular(counts: &[(TypicalShape, f64)], share: f64) -> Vec<(TypicalShape, f64)> {
    let mut sorted: Vec<(TypicalShape, f64)> = counts.to_vec();
    sorted.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    let total: f64 = sorted.iter().map(|s| s.1).sum();
    let wanted = share * total;
    let mut covered = 0.0;
    let mut cut = 0;
    while cut < sorted.len() && covered < wanted {
        covered += sorted[cut].1;
        cut += 1;
    }
    sorted.truncate(cut.max(1).min(sorted.len()));
    let kept: f64 = sorted.iter().map(|s| s.1).sum();
    for s in &mut sorted {
        s.1 = if kept > 0.0 { s.1 / kept } else { 0.0 };
    }
    sorted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(accel: AccelReq, cpu_milli: u64, models: ModelSet) -> TypicalShape {
        TypicalShape {
            accel,
            cpu_milli,
            models,
        }
    }

    #[test]
    fn half_gpu_and_cpu_shapes() {
        let any = ModelSet::all(2);
        let t = FragTarget::new(
            &[
                (shape(AccelReq::Milli(500), 1000, any), 0.5),
                (shape(AccelReq::None, 1000, any), 0.5),
            ],
            2,
        );
        // Two idle devices: the GPU shape can use all, the CPU shape none: 0.5 × 2000.
        assert_eq!(t.node_frag_milli(&[0, 0], 8000, Some(0)), 1000.0);
        // 300 free on one device is too little for the GPU shape: 0.5 × 1300 + 0.5 × 300.
        assert_eq!(t.node_frag_milli(&[0, 700], 8000, Some(0)), 800.0);
        // No CPU left: everything free is a fragment for both.
        assert_eq!(t.node_frag_milli(&[0, 700], 500, Some(0)), 1300.0);
        assert_eq!(t.node_frag_milli(&[1000, 1000], 8000, Some(0)), 0.0);
        assert_eq!(t.node_frag_milli(&[], 8000, None), 0.0);
    }

    #[test]
    fn multi_device_shapes_and_model_constraints() {
        let only_1 = ModelSet::default().with(1);
        let t = FragTarget::new(&[(shape(AccelReq::Whole(2), 1000, only_1), 1.0)], 2);
        assert_eq!(t.node_frag_milli(&[0, 0], 8000, Some(0)), 2000.0);
        assert_eq!(t.node_frag_milli(&[0, 0, 500], 8000, Some(1)), 500.0);
        assert_eq!(t.node_frag_milli(&[0, 1], 8000, Some(1)), 1999.0);
    }

    #[test]
    fn the_popular_cut_keeps_the_smallest_prefix_covering_the_share() {
        let any = ModelSet::all(1);
        let counts = [
            (shape(AccelReq::Milli(500), 1000, any), 6.0),
            (shape(AccelReq::Whole(1), 2000, any), 3.0),
            (shape(AccelReq::None, 4000, any), 1.0),
        ];
        let cut = popular(&counts, 0.85);
        assert_eq!(cut.len(), 2);
        assert!((cut[0].1 - 6.0 / 9.0).abs() < 1e-12);
        assert_eq!(popular(&counts, 1.0).len(), 3);
    }
}
