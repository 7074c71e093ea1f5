//! Stress variants of an openb pod list, beyond the levels the trace publishes, and expected
//! waste against FGD on each, through the engine.
//!
//! Each variant changes one thing of a base pod list (seeded, so the same seed gives the same
//! list), drawing what it adds from the base list itself:
//! - `cpu-xK`: every pod asks K times its CPU (CPU-heavier work on the same GPUs);
//! - `cpupods-xK`: K times as many CPU-only pods, sampled from the base's CPU-only pods;
//! - `gpushare-R`: R % of the GPU pods share a GPU — whole-GPU pods drawn at random become
//!   one-GPU fractions whose size is drawn from the base's fractions;
//! - `multigpu-R`: multi-GPU pods, sampled from the base's, are added until they carry R % of
//!   the GPU demand;
//! - `gpuspec-R`: R % of the GPU pods are restricted to GPU models — unrestricted ones drawn
//!   at random take a restriction drawn from the restricted pods of a pod list that has some
//!   (`openb_pod_list_gpuspec33.csv`).
//!
//! Nothing in the engine knows these levels: expected waste takes every input from the pods
//! submitted and the nodes declared.

use std::fmt;
use std::str::FromStr;

use rand::{Rng, SeedableRng, seq::SliceRandom};
use rand_chacha::ChaCha8Rng;

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::compare::{CompareError, NODE_LIST};
use crate::experiment::{Prepared, RunResult, RunSpec, run, run_jobs};
use crate::load::{BadRows, load_nodes, load_pods};
use crate::model::{Demand, ModelMask, PodSpec, Workload};
use crate::policy::PolicyKind;
use crate::published::Stats;

/// The pod list the variants are made from, and the one restrictions are drawn from.
pub const BASE_POD_LIST: &str = "openb_pod_list_default.csv";
pub const RESTRICTED_POD_LIST: &str = "openb_pod_list_gpuspec33.csv";
/// Where the variants are compared: arrived workload equal to the GPU capacity.
pub const VARIANT_X_PCT: usize = 100;

/// One row of the variant report: unallocated GPU % at x = 100 over seeds.
#[derive(Debug, Clone, Serialize)]
pub struct VariantRow {
    pub variant: String,
    pub pods: usize,
    pub gosok: Stats,
    pub fgd: Stats,
    /// gosok's median below FGD's.
    pub gosok_below: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct VariantReport {
    pub experiment: &'static str,
    pub seeds: Vec<u64>,
    pub tune_ratio: f64,
    pub x_pct: usize,
    pub rows: Vec<VariantRow>,
    pub gosok_below_on: usize,
    pub runs: usize,
    pub wall_time_s: f64,
}

/// Runs gosok (the engine's default placement) and FGD on the base pod list and each
/// variant of it.
pub fn compare_variants(
    traces_dir: &Path,
    variants: &[Variant],
    seeds: &[u64],
    tune_ratio: f64,
    threads: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<VariantReport, CompareError> {
    let started = std::time::Instant::now();
    let csv = traces_dir.join("csv");
    let cluster = Arc::new(load_nodes(&csv.join(NODE_LIST), BadRows::Fail)?);
    let base = load_pods(&csv.join(BASE_POD_LIST), &cluster, BadRows::Fail)?;
    let restricted = if variants.iter().any(|v| v.needs_restrictions()) {
        load_pods(&csv.join(RESTRICTED_POD_LIST), &cluster, BadRows::Fail)?.pods
    } else {
        Vec::new()
    };
    let mut workloads = vec![base.clone()];
    // One seed for the lists: the runs' seeds vary the arrivals.
    workloads.extend(variants.iter().map(|v| v.generate(&base, &restricted, 1)));
    let prepared: Vec<Prepared> = workloads
        .into_iter()
        .map(|w| {
            Prepared::new(cluster.clone(), Arc::new(w))
                .map_err(|e| CompareError::Setup(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let policies = [PolicyKind::Gosok, PolicyKind::Fgd];
    let jobs: Vec<(usize, PolicyKind, u64)> = (0..prepared.len())
        .flat_map(|w| {
            policies
                .iter()
                .flat_map(move |&p| seeds.iter().map(move |&s| (w, p, s)))
        })
        .collect();
    let results: Vec<RunResult> = run_jobs(&jobs, threads, progress, |&(w, p, s)| {
        run(&prepared[w], RunSpec::from(p), s, tune_ratio)
    })?;
    let mut rows = Vec::new();
    for (w, prep) in prepared.iter().enumerate() {
        let stats = |policy: PolicyKind| {
            let values: Vec<f64> = jobs
                .iter()
                .zip(&results)
                .filter(|((jw, jp, _), _)| *jw == w && *jp == policy)
                .filter_map(|(_, r)| r.unallocated_pct(VARIANT_X_PCT))
                .collect();
            Stats::of(&values)
        };
        let (Some(gosok), Some(fgd)) = (stats(PolicyKind::Gosok), stats(PolicyKind::Fgd)) else {
            continue;
        };
        rows.push(VariantRow {
            variant: if w == 0 {
                "default".to_string()
            } else {
                variants[w - 1].to_string()
            },
            pods: prep.workload.pods.len(),
            gosok_below: gosok.median < fgd.median,
            gosok,
            fgd,
        });
    }
    Ok(VariantReport {
        experiment: "fgd-variants",
        seeds: seeds.to_vec(),
        tune_ratio,
        x_pct: VARIANT_X_PCT,
        gosok_below_on: rows.iter().filter(|r| r.gosok_below).count(),
        rows,
        runs: results.len(),
        wall_time_s: started.elapsed().as_secs_f64(),
    })
}

/// The report as a terminal table.
pub fn variant_table(r: &VariantReport) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "Unallocated GPU (% of capacity) at x = {}: median [min-max] over seeds {:?}, through the engine.\n",
        r.x_pct, r.seeds
    );
    let _ = writeln!(
        out,
        "{:<14} {:>6}  {:<22} {:<22} {:>7}",
        "variant", "pods", "gosok (waste)", "fgd", "gosok-fgd"
    );
    for row in &r.rows {
        let cell = |s: &Stats| format!("{:5.2} [{:5.2}-{:5.2}]", s.median, s.min, s.max);
        let _ = writeln!(
            out,
            "{:<14} {:>6}  {:<22} {:<22} {:>+7.2}{}",
            row.variant,
            row.pods,
            cell(&row.gosok),
            cell(&row.fgd),
            row.gosok.median - row.fgd.median,
            if row.gosok_below {
                ""
            } else {
                "  NOT below FGD"
            }
        );
    }
    let _ = writeln!(
        out,
        "gosok below FGD's median on {} of {} workloads; {} runs in {:.1} s.",
        r.gosok_below_on,
        r.rows.len(),
        r.runs,
        r.wall_time_s
    );
    out
}

/// One stress variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    CpuTimes(u32),
    CpuPodsTimes(u32),
    GpuSharePct(u32),
    MultiGpuPct(u32),
    GpuSpecPct(u32),
}

/// The variants `gosok sim fgd-variants` runs by default.
pub const DEFAULT_VARIANTS: [Variant; 12] = [
    Variant::CpuTimes(2),
    Variant::CpuTimes(3),
    Variant::CpuPodsTimes(3),
    Variant::CpuPodsTimes(4),
    Variant::GpuSharePct(60),
    Variant::GpuSharePct(70),
    Variant::GpuSharePct(80),
    Variant::GpuSharePct(90),
    Variant::MultiGpuPct(50),
    Variant::MultiGpuPct(60),
    Variant::GpuSpecPct(50),
    Variant::GpuSpecPct(66),
];

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Variant::CpuTimes(k) => write!(f, "cpu-x{k}"),
            Variant::CpuPodsTimes(k) => write!(f, "cpupods-x{k}"),
            Variant::GpuSharePct(r) => write!(f, "gpushare-{r}"),
            Variant::MultiGpuPct(r) => write!(f, "multigpu-{r}"),
            Variant::GpuSpecPct(r) => write!(f, "gpuspec-{r}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown variant {0:?}: use cpu-xK, cpupods-xK (K = 1..=10), gpushare-R, multigpu-R or gpuspec-R (R = 1..=99), comma-separated"
)]
pub struct UnknownVariant(pub String);

impl FromStr for Variant {
    type Err = UnknownVariant;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || UnknownVariant(s.to_string());
        let t = s.trim().to_ascii_lowercase();
        let (kind, level) = t.rsplit_once('-').ok_or_else(bad)?;
        let times = |l: &str| -> Result<u32, UnknownVariant> {
            let k: u32 = l
                .strip_prefix('x')
                .ok_or_else(bad)?
                .parse()
                .map_err(|_| bad())?;
            if (1..=10).contains(&k) {
                Ok(k)
            } else {
                Err(bad())
            }
        };
        let pct = |l: &str| -> Result<u32, UnknownVariant> {
            let r: u32 = l.parse().map_err(|_| bad())?;
            if (1..=99).contains(&r) {
                Ok(r)
            } else {
                Err(bad())
            }
        };
        Ok(match kind {
            "cpu" => Variant::CpuTimes(times(level)?),
            "cpupods" => Variant::CpuPodsTimes(times(level)?),
            "gpushare" => Variant::GpuSharePct(pct(level)?),
            "multigpu" => Variant::MultiGpuPct(pct(level)?),
            "gpuspec" => Variant::GpuSpecPct(pct(level)?),
            _ => return Err(bad()),
        })
    }
}

impl Variant {
    pub fn parse_list(text: &str) -> Result<Vec<Variant>, UnknownVariant> {
        let list: Vec<Variant> = text
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        if list.is_empty() {
            return Err(UnknownVariant(text.to_string()));
        }
        Ok(list)
    }

    /// Whether it needs restricted pods to draw restrictions from.
    pub fn needs_restrictions(self) -> bool {
        matches!(self, Variant::GpuSpecPct(_))
    }

    /// The variant of `base`; `restricted` supplies the GPU-model restrictions `gpuspec-R`
    /// draws from (pods of it without one are ignored).
    pub fn generate(self, base: &Workload, restricted: &[PodSpec], seed: u64) -> Workload {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut pods = base.pods.clone();
        let gpu_pods = |pods: &[PodSpec]| pods.iter().filter(|p| p.demand.wants_gpu()).count();
        match self {
            Variant::CpuTimes(k) => {
                for p in &mut pods {
                    p.demand.cpu_milli = p.demand.cpu_milli.saturating_mul(k);
                }
            }
            Variant::CpuPodsTimes(k) => {
                let cpu: Vec<PodSpec> = base
                    .pods
                    .iter()
                    .filter(|p| !p.demand.wants_gpu())
                    .cloned()
                    .collect();
                for i in 0..cpu.len() * (k as usize).saturating_sub(1) {
                    pods.push(renamed(&cpu[rng.gen_range(0..cpu.len())], i));
                }
            }
            Variant::GpuSharePct(r) => {
                let fractions: Vec<u16> = base
                    .pods
                    .iter()
                    .filter(|p| p.demand.is_shared_gpu())
                    .map(|p| p.demand.gpu_milli)
                    .collect();
                let shared = pods.iter().filter(|p| p.demand.is_shared_gpu()).count();
                let want = gpu_pods(&pods) * r as usize / 100;
                let mut whole: Vec<usize> = (0..pods.len())
                    .filter(|&i| pods[i].demand.wants_gpu() && !pods[i].demand.is_shared_gpu())
                    .collect();
                whole.shuffle(&mut rng);
                if !fractions.is_empty() {
                    for &i in whole.iter().take(want.saturating_sub(shared)) {
                        let d = &mut pods[i].demand;
                        d.gpu_count = 1;
                        d.gpu_milli = fractions[rng.gen_range(0..fractions.len())];
                    }
                }
            }
            Variant::MultiGpuPct(r) => {
                let multi: Vec<PodSpec> = base
                    .pods
                    .iter()
                    .filter(|p| p.demand.wants_gpu() && p.demand.gpu_count > 1)
                    .cloned()
                    .collect();
                let demand = |pods: &[PodSpec], multi_only: bool| -> u64 {
                    pods.iter()
                        .filter(|p| !multi_only || p.demand.gpu_count > 1)
                        .map(|p| u64::from(p.demand.total_gpu_milli()))
                        .sum()
                };
                let mut i = 0;
                while !multi.is_empty()
                    && demand(&pods, true) * 100 < demand(&pods, false) * u64::from(r)
                {
                    pods.push(renamed(&multi[rng.gen_range(0..multi.len())], i));
                    i += 1;
                }
            }
            Variant::GpuSpecPct(r) => {
                let masks: Vec<ModelMask> = restricted
                    .iter()
                    .filter(|p| p.demand.wants_gpu() && !p.demand.models.is_any())
                    .map(|p| p.demand.models)
                    .collect();
                let have = pods
                    .iter()
                    .filter(|p| p.demand.wants_gpu() && !p.demand.models.is_any())
                    .count();
                let want = gpu_pods(&pods) * r as usize / 100;
                let mut free: Vec<usize> = (0..pods.len())
                    .filter(|&i| pods[i].demand.wants_gpu() && pods[i].demand.models.is_any())
                    .collect();
                free.shuffle(&mut rng);
                if !masks.is_empty() {
                    for &i in free.iter().take(want.saturating_sub(have)) {
                        pods[i].demand.models = masks[rng.gen_range(0..masks.len())];
                    }
                }
            }
        }
        Workload {
            name: format!("{}-{self}", base.name),
            pods,
            skipped_rows: Vec::new(),
        }
    }
}

/// A copy of `pod` under a name of its own (arrival order sorts by name first).
fn renamed(pod: &PodSpec, i: usize) -> PodSpec {
    PodSpec {
        name: format!("{}-v{i:05}", pod.name),
        memory_mib: pod.memory_mib,
        demand: Demand { ..pod.demand },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, cpu: u32, milli: u16, count: u8, models: ModelMask) -> PodSpec {
        PodSpec {
            name: name.into(),
            memory_mib: 1024,
            demand: Demand {
                cpu_milli: cpu,
                gpu_milli: milli,
                gpu_count: count,
                models,
            },
        }
    }

    fn base() -> Workload {
        let mut pods = Vec::new();
        for i in 0..40 {
            pods.push(pod(&format!("w{i:02}"), 8000, 1000, 1, ModelMask::ANY));
        }
        for i in 0..20 {
            pods.push(pod(
                &format!("s{i:02}"),
                4000,
                250 + 10 * i as u16,
                1,
                ModelMask::ANY,
            ));
        }
        for i in 0..4 {
            pods.push(pod(&format!("m{i:02}"), 16000, 1000, 4, ModelMask::ANY));
        }
        for i in 0..10 {
            pods.push(pod(&format!("c{i:02}"), 2000, 0, 0, ModelMask::ANY));
        }
        Workload {
            name: "base".into(),
            pods,
            skipped_rows: vec![],
        }
    }

    #[test]
    fn names_parse_back() {
        for v in DEFAULT_VARIANTS {
            assert_eq!(v.to_string().parse::<Variant>(), Ok(v));
        }
        assert!("cpu-x0".parse::<Variant>().is_err());
        assert!("gpushare-100".parse::<Variant>().is_err());
        assert!("gpu-50".parse::<Variant>().is_err());
    }

    #[test]
    fn each_variant_reaches_its_level_and_is_seeded() {
        let b = base();
        let gpu = |w: &Workload| w.pods.iter().filter(|p| p.demand.wants_gpu()).count();
        let cpu = Variant::CpuTimes(3).generate(&b, &[], 1);
        assert_eq!(cpu.pods[0].demand.cpu_milli, 24_000);
        assert_eq!(cpu.name, "base-cpu-x3");
        let more = Variant::CpuPodsTimes(3).generate(&b, &[], 1);
        assert_eq!(more.pods.len(), b.pods.len() + 20);
        let share = Variant::GpuSharePct(80).generate(&b, &[], 1);
        let shared = share
            .pods
            .iter()
            .filter(|p| p.demand.is_shared_gpu())
            .count();
        assert_eq!(shared, gpu(&share) * 80 / 100);
        // Fraction sizes come from the base's fractions.
        assert!(
            share
                .pods
                .iter()
                .filter(|p| p.demand.is_shared_gpu())
                .all(|p| (250..=440).contains(&p.demand.gpu_milli))
        );
        assert_eq!(
            share.pods,
            Variant::GpuSharePct(80).generate(&b, &[], 1).pods
        );
        assert_ne!(
            share.pods,
            Variant::GpuSharePct(80).generate(&b, &[], 2).pods
        );
        let multi = Variant::MultiGpuPct(50).generate(&b, &[], 1);
        let total: u32 = multi.pods.iter().map(|p| p.demand.total_gpu_milli()).sum();
        let m: u32 = multi
            .pods
            .iter()
            .filter(|p| p.demand.gpu_count > 1)
            .map(|p| p.demand.total_gpu_milli())
            .sum();
        assert!(
            m * 100 >= total * 50 && m * 100 < total * 50 + 4000 * 100,
            "{m} of {total}"
        );
        let only = ModelMask(0b10);
        let restricted = [pod("r", 1, 1000, 1, only)];
        let spec = Variant::GpuSpecPct(50).generate(&b, &restricted, 1);
        let n = spec.pods.iter().filter(|p| p.demand.models == only).count();
        assert_eq!(n, gpu(&spec) / 2);
        // CPU-only pods never get a restriction.
        assert!(
            spec.pods
                .iter()
                .filter(|p| !p.demand.wants_gpu())
                .all(|p| p.demand.models.is_any())
        );
    }
}
