//! Alibaba GPU cluster trace v2023 ("openb", FGD ATC'23): a node list and a pod list.
//!
//! - Nodes (`sn,cpu_milli,memory_mib,gpu,model`): one gosok node each, in one site; GPU
//!   codes map to catalog models by name or alias (`V100M16` → `V100-16GB`, `G2` stays `G2`).
//! - Pods (`name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,
//!   creation_time,deletion_time,scheduled_time`): one job each, submitted at
//!   `creation_time`, running `deletion_time − scheduled_time` (what it ran in the real
//!   cluster). `num_gpu` whole GPUs, or `gpu_milli` thousandths of one when below 1000;
//!   `gpu_spec` (`V100M16|V100M32`) the acceptable models; `qos` becomes the tenant.
//! - Pods never scheduled (no `scheduled_time`) have no run time to replay: left out,
//!   counted. Pod lists without the time columns (the `multigpu` variants) are refused.

use std::collections::BTreeSet;
use std::path::PathBuf;

use gosok_model::{
    Catalog, ClusterSpec, JobSpec, NodeSpec, NodeState, RackSpec, SiteSpec, TaskGroupSpec,
    TenantSpec, Tier,
};

use crate::csv::Table;
use crate::error::{BadRows, InputError};
use crate::import::{ImportError, ImportSummary, Imported};
use crate::workload::WorkloadJob;

const NODES_PER_RACK: usize = 16;

#[derive(Debug, Clone)]
pub struct OpenbParams {
    pub nodes: PathBuf,
    pub pods: PathBuf,
    pub bad: BadRows,
}

pub fn import_openb(p: &OpenbParams, catalog: &Catalog) -> Result<Imported, ImportError> {
    let mut summary = ImportSummary {
        source: format!("{} with {}", p.pods.display(), p.nodes.display()),
        ..ImportSummary::default()
    };
    let cluster = read_nodes(p, catalog, &mut summary)?;
    let t = Table::read(&p.pods)?;
    for needed in ["creation_time", "deletion_time", "scheduled_time"] {
        if t.find(needed).is_none() {
            return Err(InputError::at(
                &p.pods,
                1,
                1,
                format!(
                    "this pod list has no {needed:?} column (its columns: {}), so its pods have no arrival or run time to replay; use a pod list with times such as openb_pod_list_default.csv (`gosok sim fgd` replays time-less lists as arrival-only packing)",
                    t.header.join(", ")
                ),
            )
            .into());
        }
    }
    let c_name = t.column("name")?;
    let c_cpu = t.column("cpu_milli")?;
    let c_mem = t.column("memory_mib")?;
    let c_gpu = t.column("num_gpu")?;
    let c_milli = t.column("gpu_milli")?;
    let c_spec = t.column("gpu_spec")?;
    let c_qos = t.column("qos")?;
    let c_created = t.column("creation_time")?;
    let c_deleted = t.column("deletion_time")?;
    let c_sched = t.column("scheduled_time")?;

    let mut jobs: Vec<WorkloadJob> = Vec::new();
    let mut tenants: BTreeSet<String> = BTreeSet::new();
    for r in &t.rows {
        summary.rows_read += 1;
        let res = (|| -> Result<Option<WorkloadJob>, InputError> {
            let name = t.text(r, c_name)?.to_string();
            let cpu_milli = t.whole(r, c_cpu)?;
            let mem_mib = t.whole(r, c_mem)?;
            let gpus = t.whole(r, c_gpu)?;
            let milli = t.whole(r, c_milli)?;
            if gpus > gosok_model::job::MAX_ACCELERATORS_PER_REPLICA {
                return Err(t.error(r, c_gpu, format!("{gpus} GPUs on one node")));
            }
            if milli > 1000 {
                return Err(t.error(r, c_milli, format!("{milli} is more than one GPU (1000)")));
            }
            let mut g = TaskGroupSpec::whole(1, gpus);
            g.cpu_milli = cpu_milli;
            g.mem_mib = mem_mib;
            if gpus > 0 && milli == 0 {
                return Err(t.error(r, c_milli, "is 0 but num_gpu asks for GPUs"));
            }
            if gpus == 1 && milli < 1000 {
                g.accelerators = None;
                g.accelerator_milli = Some(milli);
            } else if gpus > 1 && milli < 1000 {
                return Err(t.error(
                    r,
                    c_milli,
                    format!(
                        "{milli} with num_gpu {gpus}: only a single GPU is shared in fractions"
                    ),
                ));
            }
            let spec_text = t.text(r, c_spec)?;
            if !spec_text.is_empty() {
                if gpus == 0 {
                    return Err(t.error(r, c_spec, "names GPU models but num_gpu is 0"));
                }
                for code in spec_text
                    .split('|')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                {
                    let id = catalog.id(code).ok_or_else(|| {
                        t.error(
                            r,
                            c_spec,
                            format!("GPU code {code:?} is not an accelerator model or alias of the catalog"),
                        )
                    })?;
                    let m = catalog.get(id).name.clone();
                    if !g.models.contains(&m) {
                        g.models.push(m);
                    }
                }
            }
            let qos = t.text(r, c_qos)?.to_ascii_lowercase();
            let tenant = if qos.is_empty() {
                "none".to_string()
            } else {
                qos
            };
            gosok_model::error::check_name("qos", &tenant)
                .map_err(|e| t.error(r, c_qos, e.message))?;
            let created = t.whole(r, c_created)?;
            if t.text(r, c_sched)?.is_empty() {
                return Ok(None);
            }
            let sched = t.whole(r, c_sched)?;
            let deleted = t.whole(r, c_deleted)?;
            if sched < created {
                return Err(t.error(
                    r,
                    c_sched,
                    format!("{sched} is before creation_time {created}"),
                ));
            }
            if deleted < sched {
                return Err(t.error(
                    r,
                    c_deleted,
                    format!("{deleted} is before scheduled_time {sched}"),
                ));
            }
            let spec = JobSpec::single(g);
            spec.validate()
                .map_err(|e| t.error(r, c_gpu, e.to_string()))?;
            Ok(Some(WorkloadJob {
                id: Some(name),
                tenant,
                submit_s: created,
                duration_s: deleted - sched,
                duration_measured_on: None,
                spec,
            }))
        })();
        match res {
            Ok(Some(j)) => {
                tenants.insert(j.tenant.clone());
                jobs.push(j);
            }
            Ok(None) => summary.drop("never scheduled (no scheduled_time): no run time to replay"),
            Err(e) => summary.skipped_bad_rows.handle(p.bad, e)?,
        }
    }
    jobs.sort_by_key(|j| j.submit_s);
    let mut cluster = cluster;
    for t in &tenants {
        cluster.tenant.push(TenantSpec::new(t, Tier::Commercial));
    }
    summary.jobs_written = jobs.len() as u64;
    summary.count_cluster(&cluster);
    summary.notes.push(
        "one site; each pod is a job submitted at creation_time that runs deletion_time − scheduled_time; qos is the tenant"
            .into(),
    );
    Ok(Imported {
        cluster,
        jobs,
        summary,
    })
}

fn read_nodes(
    p: &OpenbParams,
    catalog: &Catalog,
    summary: &mut ImportSummary,
) -> Result<ClusterSpec, ImportError> {
    let t = Table::read(&p.nodes)?;
    let c_sn = t.column("sn")?;
    let c_cpu = t.column("cpu_milli")?;
    let c_mem = t.column("memory_mib")?;
    let c_gpu = t.column("gpu")?;
    let c_model = t.column("model")?;
    let mut nodes: Vec<NodeSpec> = Vec::new();
    let mut names = BTreeSet::new();
    for r in &t.rows {
        let res = (|| -> Result<NodeSpec, InputError> {
            let sn = t.text(r, c_sn)?.to_string();
            gosok_model::error::check_name("sn", &sn).map_err(|e| t.error(r, c_sn, e.message))?;
            if !names.insert(sn.clone()) {
                return Err(t.error(r, c_sn, format!("node {sn:?} is listed twice")));
            }
            let cpu = t.whole(r, c_cpu)?;
            if cpu == 0 {
                return Err(t.error(r, c_cpu, "is 0: a node has CPUs"));
            }
            let mem = t.whole(r, c_mem)?;
            if mem == 0 {
                return Err(t.error(r, c_mem, "is 0: a node has memory"));
            }
            let gpus = t.whole(r, c_gpu)?;
            if gpus > gosok_model::topology::MAX_NODE_ACCELERATORS {
                return Err(t.error(r, c_gpu, format!("{gpus} GPUs on one node")));
            }
            let code = t.text(r, c_model)?;
            let accelerator = if gpus == 0 {
                None
            } else {
                let id = catalog.id(code).ok_or_else(|| {
                    t.error(
                        r,
                        c_model,
                        format!(
                            "GPU code {code:?} is not an accelerator model or alias of the catalog"
                        ),
                    )
                })?;
                Some(catalog.get(id).name.clone())
            };
            Ok(NodeSpec {
                name: sn,
                rack: String::new(),
                count: None,
                cpu_cores: cpu.div_ceil(1000),
                mem_mib: mem,
                accelerator,
                accelerators: gpus,
                base_power_w: 1000,
                labels: Default::default(),
                taints: Vec::new(),
                state: NodeState::Up,
            })
        })();
        match res {
            Ok(n) => nodes.push(n),
            Err(e) => summary.skipped_bad_rows.handle(p.bad, e)?,
        }
    }
    if nodes.is_empty() {
        return Err(InputError::at(&p.nodes, 1, 1, "the node list has no nodes").into());
    }
    let mut cluster = ClusterSpec::default();
    cluster.site.push(SiteSpec {
        name: "alibaba".into(),
        region: "cn".into(),
        jurisdiction: "CN".into(),
        power_budget_mw: 100.0,
        pue: 1.25,
    });
    for (k, chunk) in nodes.chunks_mut(NODES_PER_RACK).enumerate() {
        let rack = format!("ali-r{k:03}");
        cluster.rack.push(RackSpec {
            name: rack.clone(),
            site: "alibaba".into(),
            // The trace has no power limits: far above what 16 nodes draw.
            power_cap_kw: 1000.0,
            scale_up_domain: None,
            allow_undeclared_nodes: false,
            max_nodes: None,
        });
        for n in chunk.iter_mut() {
            n.rack = rack.clone();
        }
    }
    cluster.node = nodes;
    Ok(cluster)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "sn,cpu_milli,memory_mib,gpu,model\nn0,64000,262144,2,P100\nn1,96000,393216,8,G2\nn2,32000,65536,0,\nn3,96000,393216,4,V100M16\n";
    const PODS: &str = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n\
        p0,12000,16384,1,1000,,LS,Running,0,500,10\n\
        p1,6000,12288,1,460,,BE,Running,20,80,30\n\
        p2,8000,2048,2,1000,V100M16|V100M32,LS,Running,40,140,40\n\
        p3,2000,512,0,0,,BE,Succeeded,50,60,55\n\
        p4,2000,512,1,1000,,BE,Pending,60,70,\n";

    fn params(dir: &std::path::Path, nodes: &str, pods: &str) -> OpenbParams {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("nodes.csv"), nodes).unwrap();
        std::fs::write(dir.join("pods.csv"), pods).unwrap();
        OpenbParams {
            nodes: dir.join("nodes.csv"),
            pods: dir.join("pods.csv"),
            bad: BadRows::Fail,
        }
    }

    #[test]
    fn pods_become_jobs_with_run_times_and_codes_become_models() {
        let dir = std::env::temp_dir().join(format!("gosok-openb-{}", std::process::id()));
        let im = import_openb(&params(&dir, NODES, PODS), &Catalog::builtin()).unwrap();
        let cat = Catalog::builtin();
        im.cluster.resolve(&cat).unwrap();
        assert_eq!(im.cluster.node[3].accelerator.as_deref(), Some("V100-16GB"));
        assert_eq!(im.cluster.node[2].accelerator, None);
        assert_eq!(im.summary.accelerators, 14);
        let j = &im.jobs;
        assert_eq!(j.len(), 4);
        assert_eq!(
            (j[0].submit_s, j[0].duration_s, j[0].tenant.as_str()),
            (0, 490, "ls")
        );
        assert_eq!(j[1].spec.groups[0].accelerator_milli, Some(460));
        assert_eq!(j[2].spec.groups[0].models, ["V100-16GB", "V100-32GB"]);
        assert_eq!(j[3].spec.total_accelerator_milli(), 0);
        assert_eq!(
            im.summary.dropped["never scheduled (no scheduled_time): no run time to replay"],
            1
        );
        assert_eq!(im.summary.tenants, 2);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bad_rows_and_time_less_pod_lists_are_refused_with_their_place() {
        let dir = std::env::temp_dir().join(format!("gosok-openb-bad-{}", std::process::id()));
        let cat = Catalog::builtin();
        let e = import_openb(
            &params(
                &dir,
                NODES,
                "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,1,1,1,1000\n",
            ),
            &cat,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("pods.csv:1:1: this pod list has no \"creation_time\" column"),
            "{e}"
        );
        let e = import_openb(
            &params(&dir, &NODES.replace("V100M16", "V100M99"), PODS),
            &cat,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("nodes.csv:5:19: column \"model\": GPU code \"V100M99\""),
            "{e}"
        );
        let bad_pods = format!(
            "{PODS}p5,1,1,1,1000,,LS,Running,10,50,90\np6,1,1,1,1000,A999,LS,Running,1,5,2\n"
        );
        let e = import_openb(&params(&dir, NODES, &bad_pods), &cat)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pods.csv:7:30: column \"deletion_time\": 50 is before scheduled_time 90"),
            "{e}"
        );
        let mut p = params(&dir, NODES, &bad_pods);
        p.bad = BadRows::Skip;
        let im = import_openb(&p, &cat).unwrap();
        assert_eq!(im.summary.skipped_bad_rows.rows, 2);
        assert_eq!(im.jobs.len(), 4);
        std::fs::remove_dir_all(&dir).ok();
    }
}
