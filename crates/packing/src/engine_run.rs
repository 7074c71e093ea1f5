//! The experiment's cluster and pods as the engine sees them, and one arrival through it.
//!
//! Every pod is placed by `gosok_engine`: it is submitted as a one-replica job (CPU, memory,
//! and either no GPU, a fraction of one shareable GPU, or whole GPUs, with the GPU models it
//! accepts), the engine runs a scheduling pass, and its decision says where the pod went. A pod
//! the pass could not start is cancelled: in the arrival-only experiment a pod that fits
//! nowhere is dropped.

use std::collections::HashMap;
use std::sync::Arc;

use gosok_engine::{Decision, Engine, EngineConfig, Event, JobId, QueuePolicy};
use gosok_model::{
    Catalog, ClusterSpec, JobSpec, NodeSpec as EngineNode, NodeState, RackSpec, SiteSpec,
    TaskGroupSpec, TenantSpec, Tier,
};

use crate::model::{Cluster, Demand, MILLI_PER_GPU, PodSpec};

/// The one tenant every pod belongs to.
const TENANT: &str = "openb";
const SITE: &str = "openb";
/// Nodes per rack: racks only group nodes here (the trace has no power limits or topology).
const NODES_PER_RACK: usize = 16;

/// The experiment's cluster as an engine cluster file, with the engine's catalog.
#[derive(Debug, Clone)]
pub struct EngineCluster {
    pub catalog: Catalog,
    pub spec: ClusterSpec,
    /// Node index (in the node list's order) by the engine's node name.
    pub index: HashMap<Arc<str>, usize>,
}

/// Why the cluster or a pod cannot be given to the engine.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct EngineInputError(pub String);

impl EngineCluster {
    pub fn new(cluster: &Cluster) -> Result<EngineCluster, EngineInputError> {
        let catalog = Catalog::builtin();
        let mut spec = ClusterSpec::default();
        spec.site.push(SiteSpec {
            name: SITE.into(),
            region: "cn".into(),
            jurisdiction: "CN".into(),
            // The trace has no power limits: far above what the nodes draw.
            power_budget_mw: 1000.0,
            pue: 1.0,
        });
        let mut index = HashMap::new();
        for (k, chunk) in cluster.nodes.chunks(NODES_PER_RACK).enumerate() {
            let rack = format!("r{k:03}");
            spec.rack.push(RackSpec {
                name: rack.clone(),
                site: SITE.into(),
                power_cap_kw: 100_000.0,
                scale_up_domain: None,
                allow_undeclared_nodes: false,
                max_nodes: None,
            });
            for (j, n) in chunk.iter().enumerate() {
                let i = k * NODES_PER_RACK + j;
                let accelerator = match n.model {
                    None => None,
                    Some(m) => {
                        let code = cluster.models.name(m);
                        let id = catalog.id(code).ok_or_else(|| {
                            EngineInputError(format!(
                                "node {}: GPU model {code:?} is not in the engine's catalog",
                                n.name
                            ))
                        })?;
                        Some(catalog.get(id).name.clone())
                    }
                };
                // Node names are their index: the node list's names need not be valid
                // engine names, and the index is what the experiment records.
                let name = format!("n{i:05}");
                index.insert(Arc::from(name.as_str()), i);
                spec.node.push(EngineNode {
                    name,
                    rack: rack.clone(),
                    count: None,
                    cpu_cores: u64::from(n.cpu_milli).div_ceil(1000),
                    mem_mib: n.memory_mib,
                    accelerator,
                    accelerators: u64::from(n.gpu_count),
                    base_power_w: 100,
                    labels: Default::default(),
                    taints: Vec::new(),
                    state: NodeState::Up,
                });
            }
        }
        spec.tenant.push(TenantSpec::new(TENANT, Tier::Commercial));
        Ok(EngineCluster {
            catalog,
            spec,
            index,
        })
    }

    /// The job a pod becomes.
    pub fn job(&self, cluster: &Cluster, pod: &PodSpec) -> JobSpec {
        let d: &Demand = &pod.demand;
        let mut g = TaskGroupSpec::whole(1, 0);
        g.cpu_milli = u64::from(d.cpu_milli);
        g.mem_mib = pod.memory_mib;
        if d.wants_gpu() {
            if d.is_shared_gpu() {
                g.accelerators = None;
                g.accelerator_milli = Some(u64::from(d.gpu_milli));
            } else {
                g.accelerators = Some(u64::from(d.gpu_count));
            }
            for (i, name) in cluster.models.names().iter().enumerate() {
                if d.models.0 & (1 << i) != 0
                    && let Some(id) = self.catalog.id(name)
                {
                    g.models.push(self.catalog.get(id).name.clone());
                }
            }
        } else {
            g.accelerators = Some(0);
        }
        let _ = MILLI_PER_GPU;
        let mut spec = JobSpec::single(g);
        spec.preemptible = false;
        spec
    }

    /// An engine for one run: the given scorers, every feasible node scored (as the
    /// published experiment's scheduler does) unless `candidates` bounds it.
    pub fn engine(
        &self,
        scorers: Vec<(String, f64)>,
        candidates: Option<usize>,
        seed: u64,
    ) -> Result<Engine, EngineInputError> {
        let cfg = EngineConfig {
            seed,
            scorers,
            score_candidates: candidates.unwrap_or(usize::MAX),
            queue_policy: QueuePolicy::Fifo,
            backfill: false,
            head_of_line_blocking: false,
            ..EngineConfig::default()
        };
        Engine::new(self.catalog.clone(), &self.spec, cfg)
            .map_err(|e| EngineInputError(e.to_string()))
    }
}

/// Where one arriving pod went: `Some((node, devices))`, or `None` when it fit nowhere.
pub fn arrive(
    engine: &mut Engine,
    cluster: &EngineCluster,
    id: u64,
    spec: JobSpec,
) -> Result<Option<(usize, Vec<u8>)>, EngineInputError> {
    let fail = |e: gosok_engine::EngineError| EngineInputError(e.to_string());
    let id = JobId(id);
    let mut decisions = engine
        .apply(Event::Submit {
            id,
            tenant: TENANT.into(),
            spec,
        })
        .map_err(fail)?;
    if decisions
        .iter()
        .any(|d| matches!(d, Decision::Reject { .. }))
    {
        return Ok(None);
    }
    decisions.extend(engine.schedule());
    for d in decisions {
        if let Decision::Start { job, tasks, .. } = d
            && job == id
            && let Some(t) = tasks.first()
        {
            let node = *cluster.index.get(&t.node).ok_or_else(|| {
                EngineInputError(format!("the engine placed on unknown node {}", t.node))
            })?;
            return Ok(Some((node, t.devices.clone())));
        }
    }
    engine.apply(Event::Cancel { id }).map_err(fail)?;
    Ok(None)
}
