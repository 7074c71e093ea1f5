//! Random: any node the pod fits, uniformly; a shared-GPU pod goes on a random GPU that holds it.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{NodeChoice, PodView, Policy};
use crate::state::{ClusterState, GpuSet};

/// The simulator's `RandomScore` with `-gpusel random`.
#[derive(Debug, Default)]
pub struct RandomPolicy;

impl Policy for RandomPolicy {
    fn name(&self) -> &'static str {
        "random"
    }

    /// The simulator's RandomScore draws one of the fitting nodes uniformly.
    fn node_choice(&self) -> NodeChoice {
        NodeChoice::Uniform
    }

    /// Not asked for (see [`Policy::node_choice`]); all nodes are equal.
    fn score(&mut self, _: &ClusterState, _: usize, _: &PodView) -> f64 {
        0.0
    }

    fn pick_gpus(
        &mut self,
        state: &ClusterState,
        node: usize,
        pod: &PodView,
        rng: &mut ChaCha8Rng,
    ) -> Option<GpuSet> {
        let n = &state.nodes[node];
        if !pod.demand.is_shared_gpu() {
            return n.best_fit_gpus(&pod.demand);
        }
        let fitting = n
            .gpus()
            .iter()
            .filter(|&&l| l >= pod.demand.gpu_milli)
            .count();
        if fitting == 0 {
            return None;
        }
        let pick = rng.gen_range(0..fitting);
        n.gpus()
            .iter()
            .enumerate()
            .filter(|&(_, &l)| l >= pod.demand.gpu_milli)
            .nth(pick)
            .map(|(i, _)| GpuSet::single(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testkit::{cluster, pod, use_gpu};
    use rand::SeedableRng;

    #[test]
    fn shared_pods_land_on_every_fitting_gpu_and_never_on_a_full_one() {
        let (_, mut s) = cluster(&[(8000, 4)]);
        use_gpu(&mut s, 0, 2, 0, 900);
        let mut p = RandomPolicy;
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut seen = [0; 4];
        for _ in 0..400 {
            let g = p.pick_gpus(&s, 0, &pod(1, 500, 1), &mut rng).unwrap();
            for (i, count) in seen.iter_mut().enumerate() {
                if g.contains(i) {
                    *count += 1;
                }
            }
        }
        assert_eq!(seen[2], 0);
        assert!(
            seen.iter().enumerate().all(|(i, &c)| i == 2 || c > 80),
            "{seen:?}"
        );
        assert_eq!(p.score(&s, 0, &pod(1, 500, 1)), 0.0);
    }
}
