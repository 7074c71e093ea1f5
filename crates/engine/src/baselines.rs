//! The six placement policies the FGD paper (Weng et al., ATC '23) compares, as engine
//! scorers: `random`, `dotprod`, `clustering`, `packing`, `bestfit` and `fgd`.
//!
//! They score as the Kubernetes scheduler simulator of that paper does: integer node scores
//! 0..=100 (here divided by 100), so different nodes often tie, and ties go to the engine's
//! seeded node order — which packs equal choices onto the same nodes, as the simulator's
//! "smallest node name among equals" does. `bestfit`, `dotprod` and `clustering` scale by the
//! largest node of the highway (the simulator's 128 CPUs and 8 GPUs on its trace).
//! Fractional replicas take the fullest device they fit (the simulator's best GPU), except
//! under `fgd` (the device whose use fragments least) and `random` (a random device).

use crate::cluster::Node;
use crate::fragmentation::FragTarget;
use crate::ids::mix64;
use crate::job::AccelReq;
use crate::scorers::{MEMO_FGD, ScoreInput, Scorer, best_device};

/// kube-scheduler's highest node score.
const MAX_NODE_SCORE: f64 = 100.0;

/// An integer score as the simulator computes it (Go's `int64()` truncates), in [0, 1].
fn integer_score(x: f64) -> f64 {
    x.trunc().clamp(0.0, MAX_NODE_SCORE) / MAX_NODE_SCORE
}

fn node<'a>(i: &ScoreInput<'a>) -> &'a Node {
    &i.cluster.nodes[i.node as usize]
}

fn free_accel_milli(n: &Node) -> f64 {
    n.free_milli() as f64
}

fn scale(v: u64) -> f64 {
    v.max(1) as f64
}

/// BestFit: the node left with the least, CPU and accelerators weighted equally:
/// `int(100 × (1 − ½ cpu_left/max_cpu − ½ accel_left/max_accel))` after the placement.
pub struct BestFit;

impl Scorer for BestFit {
    fn name(&self) -> &'static str {
        "bestfit"
    }
    fn score(&self, i: &ScoreInput) -> f64 {
        let n = node(i);
        let cpu_after = n.cpu_free_milli as f64 - i.cpu_milli as f64;
        let accel_after = free_accel_milli(n) - i.req.milli() as f64;
        if cpu_after < 0.0 || accel_after < 0.0 {
            return 0.0;
        }
        let p = i.profile;
        let left = 0.5 * cpu_after / scale(p.max_node_cpu_milli)
            + 0.5 * accel_after / scale(p.max_node_accel_milli);
        integer_score((1.0 - left) * MAX_NODE_SCORE)
    }
}

/// DotProd (Tetris): `int(100 × (1 − (free · request) / 2))` over (CPU, accelerators), both
/// scaled by the largest node. A larger dot product scores lower, as in the simulator.
pub struct DotProd;

impl Scorer for DotProd {
    fn name(&self) -> &'static str {
        "dotprod"
    }
    fn score(&self, i: &ScoreInput) -> f64 {
        let n = node(i);
        if n.cpu_free_milli < i.cpu_milli {
            return 0.0;
        }
        let (cpu, accel) = (
            scale(i.profile.max_node_cpu_milli),
            scale(i.profile.max_node_accel_milli),
        );
        let dot = (n.cpu_free_milli as f64 / cpu * (i.cpu_milli as f64 / cpu)
            + free_accel_milli(n) / accel * (i.req.milli() as f64 / accel))
            / 2.0;
        integer_score(MAX_NODE_SCORE * (1.0 - dot))
    }
}

/// GPU packing: fractions onto partly used devices (the fuller the better), then free
/// devices of busy nodes, then idle nodes; accelerator-less replicas score 0.
pub struct Packing;

impl Scorer for Packing {
    fn name(&self) -> &'static str {
        "packing"
    }
    fn score(&self, i: &ScoreInput) -> f64 {
        let n = node(i);
        let (per_device, mut need) = match i.req {
            AccelReq::None => return 0.0,
            AccelReq::Whole(k) => (1000u16, k),
            AccelReq::Milli(m) => (m, 1),
        };
        let full = n.free_whole as i64;
        let max = MAX_NODE_SCORE as i64;
        if n.free_whole == n.devices() {
            return (max / 3 - full).max(full) as f64 / MAX_NODE_SCORE;
        }
        // Devices from the least free to the most (stable on ties), as the simulator walks.
        let mut order: Vec<u16> = n.used_milli.iter().map(|&u| 1000 - u).collect();
        order.sort_unstable();
        let (mut free_used, mut percent_left) = (0i64, 0i64);
        for free in order {
            if need == 0 {
                break;
            }
            if per_device <= free {
                need -= 1;
                percent_left += free as i64 * 100 / 1000;
                if free == 1000 {
                    free_used += 1;
                }
            }
        }
        if need != 0 {
            return 0.0;
        }
        let s = if free_used > 0 {
            (max / 2 - free_used).max(max / 3)
        } else {
            (max - percent_left / 10).max(max / 2)
        };
        s as f64 / MAX_NODE_SCORE
    }
}

/// GPU clustering: replicas of the same kind (a fraction, or k whole devices) together.
/// Node hosting only the kind: 75; the kind among others: 50; no accelerator work: 25; only
/// other kinds: 0; plus `25 × used / max_accel` (integer). Accelerator-less replicas score 0.
pub struct Clustering;

/// Kinds a node's accelerator tasks are counted in: 0 a fraction, k (up to 8) k devices.
const KINDS: usize = 9;

impl Scorer for Clustering {
    fn name(&self) -> &'static str {
        "clustering"
    }
    fn score(&self, i: &ScoreInput) -> f64 {
        let kind_of = |shared: bool, whole: u16| {
            if shared {
                Some(0)
            } else if whole > 0 {
                Some((whole as usize).min(KINDS - 1))
            } else {
                None
            }
        };
        let Some(kind) = (match i.req {
            AccelReq::None => None,
            AccelReq::Milli(_) => Some(0),
            AccelReq::Whole(k) => kind_of(false, k),
        }) else {
            return 0.0;
        };
        let n = node(i);
        let mut hosted = [false; KINDS];
        for t in &n.tasks {
            if let Some(k) = kind_of(t.shared, t.whole) {
                hosted[k] = true;
            }
        }
        let kinds = hosted.iter().filter(|&&h| h).count();
        let max_accel = i.profile.max_node_accel_milli.max(1) as i64;
        let quarter = MAX_NODE_SCORE as i64 / 4;
        let used = quarter * (max_accel - n.free_milli() as i64) / max_accel;
        let base = if hosted[kind] {
            if kinds == 1 { 3 * quarter } else { 2 * quarter }
        } else if kinds == 0 {
            quarter
        } else {
            0
        };
        (base + used) as f64 / MAX_NODE_SCORE
    }
}

/// Random: every feasible node equally likely, drawn per job (a uniform hash of job and
/// node, so the engine stays deterministic); a fraction goes to a random device it fits.
pub struct Random;

/// Salts that keep the node draw and the device draw apart.
const NODE_DRAW: u64 = 0x6e6f_6465;
const DEVICE_DRAW: u64 = 0x6465_7669;

impl Scorer for Random {
    fn name(&self) -> &'static str {
        "random"
    }
    fn score(&self, i: &ScoreInput) -> f64 {
        let h = mix64(mix64(i.job.0, NODE_DRAW), i.node as u64);
        (h >> 11) as f64 / (1u64 << 53) as f64
    }
    fn devices(&self, i: &ScoreInput) -> Option<Vec<u8>> {
        let AccelReq::Milli(m) = i.req else {
            return None;
        };
        let used = &node(i).used_milli;
        let fitting: Vec<usize> = (0..used.len()).filter(|&d| used[d] + m <= 1000).collect();
        if fitting.is_empty() {
            return None;
        }
        let h = mix64(mix64(i.job.0, DEVICE_DRAW), i.node as u64);
        Some(vec![fitting[(h % fitting.len() as u64) as usize] as u8])
    }
}

/// Fragmentation gradient descent (FGD): the node whose expected fragmentation against the
/// workload's typical shapes (`Profile::typical`) grows least,
/// `int(100 × sigmoid((before − after) / 1000))`; a fraction takes the device that
/// fragments least.
#[derive(Default)]
pub struct Fragmentation;

impl Fragmentation {
    fn best(&self, i: &ScoreInput) -> (f64, Option<usize>) {
        // A function of the node's devices and CPU, the replica and the profile.
        i.memoised(MEMO_FGD, || self.best_afresh(i))
    }

    fn best_afresh(&self, i: &ScoreInput) -> (f64, Option<usize>) {
        let n = node(i);
        let target: &FragTarget = &i.profile.typical;
        let before = i.memoised_before(MEMO_FGD, || {
            target.node_frag_milli(&n.used_milli, n.cpu_free_milli, n.model)
        });
        let cpu_after = n.cpu_free_milli.saturating_sub(i.cpu_milli);
        best_device(&n.used_milli, i.req, |after| {
            let change = before - target.node_frag_milli(after, cpu_after, n.model);
            integer_score(MAX_NODE_SCORE / (1.0 + (-change / 1000.0).exp()))
        })
    }
}

impl Scorer for Fragmentation {
    fn name(&self) -> &'static str {
        "fgd"
    }
    fn score(&self, i: &ScoreInput) -> f64 {
        self.best(i).0.max(0.0)
    }
    fn memoises(&self) -> bool {
        true
    }
    fn devices(&self, i: &ScoreInput) -> Option<Vec<u8>> {
        // Only a fraction has a device to choose; whole devices go best fit.
        if !matches!(i.req, AccelReq::Milli(_)) {
            return None;
        }
        self.best(i).1.map(|d| vec![d as u8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scorers::after_taking;

    /// The devices of a node after a replica took its best-fit share.
    fn after(used: &[u16], req: AccelReq) -> Vec<u16> {
        after_taking(used, req, None, |a| a.to_vec())
    }

    #[test]
    fn integer_scores_truncate_like_go() {
        assert_eq!(integer_score(84.375), 0.84);
        assert_eq!(integer_score(-3.0), 0.0);
        assert_eq!(integer_score(100.0), 1.0);
    }

    #[test]
    fn best_fit_device_choice_for_fractions_and_whole_devices() {
        assert_eq!(after(&[0, 700, 1000], AccelReq::Milli(200)), [0, 900, 1000]);
        assert_eq!(after(&[0, 700, 0], AccelReq::Whole(2)), [1000, 700, 1000]);
    }
}
