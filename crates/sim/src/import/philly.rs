//! Microsoft Philly (as pre-processed by Pollux, `philly.csv`) with Helios' virtual-cluster
//! sizes (`philly_vc.csv`), set up as Helios (SC'21) replayed it:
//!
//! - every virtual cluster (VC) is its own site, holding `node num` nodes of 8 GPUs, and its
//!   own tenant; its jobs are pinned to it (`constraints.sites`), so a VC's jobs run only on
//!   its nodes, as if each VC were simulated alone;
//! - GPU jobs only, of the VCs in `philly_vc.csv`, submitted in `[from, to)`;
//! - a job of G ≤ 8 GPUs is 1 replica × G; a larger one is ⌊G/8⌋ replicas × 8, plus one
//!   replica of G mod 8 (Helios' consolidate placement takes whole free nodes for it);
//! - the trace gives no CPU, memory, user or GPU type: jobs ask for GPUs only, and the nodes
//!   are labelled with one catalog model (default P100; only power figures depend on it).
//!
//! `philly.csv`: `timestamp,duration,num_gpus,gpu_time,cluster` (submit time
//! `YYYY-MM-DD HH:MM:SS`, duration in seconds). `philly_vc.csv`: `vc,node num`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use gosok_model::{
    Catalog, ClusterSpec, Constraints, JobSpec, NodeSpec, NodeState, RackSpec, SiteSpec,
    TenantSpec, Tier,
};

use crate::csv::Table;
use crate::error::{BadRows, InputError};
use crate::import::{ImportError, ImportSummary, Imported, consolidated_groups, parse_datetime};
use crate::workload::WorkloadJob;

/// GPUs per Philly node, as Helios assumes.
pub const GPUS_PER_NODE: u64 = 8;
/// Nodes per rack in the generated cluster (a power domain; nothing in the trace says more).
const NODES_PER_RACK: u64 = 8;

/// A job row kept: (submit, seconds since 1970; line; VC index; duration s; GPUs).
type Row = (i64, usize, usize, u64, u64);

#[derive(Debug, Clone)]
pub struct PhillyParams {
    pub jobs: PathBuf,
    pub vcs: PathBuf,
    /// Submit-time window, `from` inclusive, `to` exclusive (`YYYY-MM-DD[ HH:MM:SS]`).
    pub from: Option<String>,
    pub to: Option<String>,
    /// Catalog model the nodes are labelled with.
    pub gpu_model: String,
    /// Submit times (from the window's start) are divided by this: K × the offered load.
    /// 1 replays the trace as it is; other values are sensitivity experiments.
    pub arrival_compression: f64,
    pub bad: BadRows,
}

impl PhillyParams {
    pub fn new(jobs: PathBuf, vcs: PathBuf) -> PhillyParams {
        PhillyParams {
            jobs,
            vcs,
            from: None,
            to: None,
            gpu_model: "P100".into(),
            arrival_compression: 1.0,
            bad: BadRows::Fail,
        }
    }
}

/// Reads the VC sizes: `(vc, nodes)` in file order.
pub fn read_vcs(path: &std::path::Path, bad: BadRows) -> Result<Vec<(String, u64)>, ImportError> {
    let t = Table::read(path)?;
    let vc = t.column("vc")?;
    let nodes = t.column("node num")?;
    let mut out: Vec<(String, u64)> = Vec::new();
    let mut skipped = crate::Skipped::default();
    for r in &t.rows {
        let res = (|| -> Result<(String, u64), InputError> {
            let name = t.text(r, vc)?.to_string();
            gosok_model::error::check_name("vc", &name).map_err(|e| t.error(r, vc, e.message))?;
            let n = t.whole(r, nodes)?;
            if n == 0 || n > 100_000 {
                return Err(t.error(r, nodes, format!("{n} nodes; give 1 to 100000")));
            }
            if out.iter().any(|(v, _)| *v == name) {
                return Err(t.error(r, vc, format!("VC {name:?} is listed twice")));
            }
            Ok((name, n))
        })();
        match res {
            Ok(x) => out.push(x),
            Err(e) => skipped.handle(bad, e)?,
        }
    }
    if out.is_empty() {
        return Err(InputError::at(path, 1, 1, "no virtual clusters are listed").into());
    }
    Ok(out)
}

fn window(flag: &str, v: &Option<String>) -> Result<Option<i64>, ImportError> {
    v.as_deref()
        .map(|s| {
            parse_datetime(s).ok_or_else(|| {
                ImportError::param(
                    flag,
                    format!("{s:?} is not a date; write YYYY-MM-DD or \"YYYY-MM-DD HH:MM:SS\""),
                )
            })
        })
        .transpose()
}

pub fn import_philly(p: &PhillyParams, catalog: &Catalog) -> Result<Imported, ImportError> {
    let Some(model) = catalog.id(&p.gpu_model) else {
        return Err(ImportError::param(
            "--gpu-model",
            format!(
                "{:?} is not a model of the accelerator catalog",
                p.gpu_model
            ),
        ));
    };
    let model_name = catalog.get(model).name.clone();
    let k = p.arrival_compression;
    if !(k.is_finite() && (0.01..=1000.0).contains(&k)) {
        return Err(ImportError::param(
            "--arrival-compression",
            format!("{k}: give a factor between 0.01 and 1000 (1: the trace as it is)"),
        ));
    }
    let from = window("--from", &p.from)?;
    let to = window("--to", &p.to)?;
    if let (Some(f), Some(t)) = (from, to)
        && t <= f
    {
        return Err(ImportError::param(
            "--to",
            "the window is empty: --to must come after --from",
        ));
    }
    let vcs = read_vcs(&p.vcs, p.bad)?;
    let t = Table::read(&p.jobs)?;
    let c_time = t.column("timestamp")?;
    let c_dur = t.column("duration")?;
    let c_gpus = t.column("num_gpus")?;
    let c_vc = t.column("cluster")?;
    let vc_index: BTreeMap<&str, usize> = vcs
        .iter()
        .enumerate()
        .map(|(i, (v, _))| (v.as_str(), i))
        .collect();

    let mut summary = ImportSummary {
        source: format!("{} with {}", p.jobs.display(), p.vcs.display()),
        ..ImportSummary::default()
    };
    let mut rows: Vec<Row> = Vec::new();
    for r in &t.rows {
        summary.rows_read += 1;
        let res = (|| -> Result<Option<Row>, InputError> {
            let ts = t.text(r, c_time)?;
            let submit = parse_datetime(ts).ok_or_else(|| {
                t.error(
                    r,
                    c_time,
                    format!("{ts:?} is not a time (YYYY-MM-DD HH:MM:SS)"),
                )
            })?;
            let dur = t.number(r, c_dur)?;
            if dur > 1.0e9 {
                return Err(t.error(r, c_dur, format!("{dur} s is beyond any trace")));
            }
            let gpus = t.whole(r, c_gpus)?;
            if gpus > 100_000 {
                return Err(t.error(r, c_gpus, format!("{gpus} GPUs is beyond any cluster")));
            }
            let vc = t.text(r, c_vc)?;
            Ok(vc_index
                .get(vc)
                .map(|&v| (submit, r.line, v, dur.ceil() as u64, gpus)))
        })();
        match res {
            Ok(Some((submit, line, v, dur, gpus))) => {
                if from.is_some_and(|f| submit < f) || to.is_some_and(|t| submit >= t) {
                    summary.drop("submitted outside --from/--to");
                } else if gpus == 0 {
                    summary.drop("not a GPU job (num_gpus = 0)");
                } else {
                    rows.push((submit, line, v, dur, gpus));
                }
            }
            Ok(None) => summary.drop("VC not listed in the --vcs file"),
            Err(e) => summary.skipped_bad_rows.handle(p.bad, e)?,
        }
    }
    // Submit order; the file's own order breaks ties.
    rows.sort_by_key(|r| (r.0, r.1));
    let origin = from.or(rows.first().map(|r| r.0)).unwrap_or(0);

    let mut cluster = ClusterSpec::default();
    for (vc, nodes) in &vcs {
        cluster.site.push(SiteSpec {
            name: vc.clone(),
            region: "philly".into(),
            jurisdiction: "US".into(),
            power_budget_mw: 10.0,
            pue: 1.25,
        });
        let racks = nodes.div_ceil(NODES_PER_RACK);
        for k in 0..racks {
            let rack = format!("{vc}-r{k:02}");
            let count = (nodes - k * NODES_PER_RACK).min(NODES_PER_RACK);
            cluster.rack.push(RackSpec {
                name: rack.clone(),
                site: vc.clone(),
                // Far above what 8 nodes draw: the trace has no power limits to replay.
                power_cap_kw: 100.0,
                scale_up_domain: None,
                allow_undeclared_nodes: false,
                max_nodes: None,
            });
            cluster.node.push(NodeSpec {
                name: format!("{rack}-n"),
                rack,
                count: Some(count),
                cpu_cores: 48,
                mem_mib: 256 * 1024,
                accelerator: Some(model_name.clone()),
                accelerators: GPUS_PER_NODE,
                base_power_w: 1000,
                labels: Default::default(),
                taints: Vec::new(),
                state: NodeState::Up,
            });
        }
        cluster.tenant.push(TenantSpec::new(vc, Tier::Commercial));
    }
    let jobs: Vec<WorkloadJob> = rows
        .iter()
        .map(|&(submit, line, v, dur, gpus)| {
            let vc = &vcs[v].0;
            WorkloadJob {
                id: Some(format!("{vc}-{line}")),
                tenant: vc.clone(),
                submit_s: ((submit - origin).max(0) as f64 / k).floor() as u64,
                duration_s: dur,
                duration_measured_on: None,
                spec: JobSpec {
                    groups: consolidated_groups(gpus, GPUS_PER_NODE),
                    constraints: Constraints {
                        sites: vec![vc.clone()],
                        ..Constraints::default()
                    },
                    ..JobSpec::single(gosok_model::TaskGroupSpec::whole(1, 1))
                },
            }
        })
        .collect();
    summary.jobs_written = jobs.len() as u64;
    summary.count_cluster(&cluster);
    summary.notes.push(format!(
        "each VC is a site and a tenant; its jobs are pinned to it; {GPUS_PER_NODE} {model_name} GPUs per node; submit_s counts from {}",
        p.from.as_deref().unwrap_or("the first job in the window")
    ));
    summary.notes.push(
        "jobs ask for GPUs only (no CPU or memory in the trace) and give no runtime estimate"
            .into(),
    );
    if k != 1.0 {
        summary.notes.push(format!(
            "arrival times divided by {k}: {k} × the trace's offered load (a sensitivity experiment)"
        ));
    }
    Ok(Imported {
        cluster,
        jobs,
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn files(dir: &Path, jobs: &str) -> PhillyParams {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("vc.csv"), "vc,node num\naaa,2\nbbb,9\n").unwrap();
        std::fs::write(dir.join("philly.csv"), jobs).unwrap();
        let mut p = PhillyParams::new(dir.join("philly.csv"), dir.join("vc.csv"));
        p.from = Some("2017-10-01".into());
        p.to = Some("2017-10-03".into());
        p
    }

    const GOOD: &str = "timestamp,duration,num_gpus,gpu_time,cluster\n\
        2017-10-01 00:00:10,66.0,1,66.0,aaa\n\
        2017-10-02 23:59:59,100.5,12,1206.0,bbb\n\
        2017-10-03 00:00:00,5.0,1,5.0,aaa\n\
        2017-09-30 23:59:59,5.0,1,5.0,aaa\n\
        2017-10-01 00:00:00,5.0,0,0.0,aaa\n\
        2017-10-01 00:00:01,5.0,1,5.0,zzz\n";

    #[test]
    fn vcs_become_sites_and_tenants_and_the_window_is_half_open() {
        let dir = std::env::temp_dir().join(format!("gosok-philly-{}", std::process::id()));
        let p = files(&dir, GOOD);
        let im = import_philly(&p, &Catalog::builtin()).unwrap();
        let s = &im.summary;
        assert_eq!(s.rows_read, 6);
        assert_eq!(s.jobs_written, 2);
        assert_eq!(s.dropped["submitted outside --from/--to"], 2);
        assert_eq!(s.dropped["not a GPU job (num_gpus = 0)"], 1);
        assert_eq!(s.dropped["VC not listed in the --vcs file"], 1);
        assert_eq!(
            (s.sites, s.nodes, s.accelerators, s.tenants),
            (2, 11, 88, 2)
        );
        let j = &im.jobs;
        assert_eq!((j[0].submit_s, j[0].duration_s), (10, 66));
        assert_eq!(j[0].tenant, "aaa");
        assert_eq!(j[0].spec.constraints.sites, ["aaa"]);
        assert_eq!(j[1].submit_s, 2 * 86_400 - 1);
        assert_eq!(j[1].duration_s, 101);
        assert_eq!(j[1].spec.total_accelerator_milli(), 12_000);
        assert_eq!(j[1].spec.groups.len(), 2);
        assert_eq!(j[1].id.as_deref(), Some("bbb-3"));
        // bbb's 9 nodes: a rack of 8 and a rack of 1.
        let bbb: Vec<u64> = im
            .cluster
            .node
            .iter()
            .filter(|n| n.rack.starts_with("bbb"))
            .map(|n| n.count.unwrap())
            .collect();
        assert_eq!(bbb, [8, 1]);
        im.cluster.resolve(&Catalog::builtin()).unwrap();
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bad_rows_name_their_place_or_are_counted() {
        let dir = std::env::temp_dir().join(format!("gosok-philly-bad-{}", std::process::id()));
        let bad = format!(
            "{GOOD}2017-10-01 00:00:10,-3,1,5.0,aaa\n2017-10-01 0x:00:10,3,1,5.0,aaa\n2017-10-01 00:00:10,3,two,5.0,aaa\n"
        );
        let mut p = files(&dir, &bad);
        let e = import_philly(&p, &Catalog::builtin())
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("philly.csv:8:21: column \"duration\": -3 is negative"),
            "{e}"
        );
        p.bad = BadRows::Skip;
        let im = import_philly(&p, &Catalog::builtin()).unwrap();
        assert_eq!(im.summary.skipped_bad_rows.rows, 3);
        assert!(im.summary.skipped_bad_rows.first[1].contains(":9:1: column \"timestamp\""));
        assert!(
            im.summary.skipped_bad_rows.first[2]
                .contains(":10:23: column \"num_gpus\": \"two\" is not a number")
        );
        assert_eq!(im.summary.jobs_written, 2);
        p.from = Some("October".into());
        let e = import_philly(&p, &Catalog::builtin())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--from: \"October\" is not a date"), "{e}");
        p.from = None;
        std::fs::write(dir.join("vc.csv"), "vc,nodes\naaa,2\n").unwrap();
        let e = import_philly(&p, &Catalog::builtin())
            .unwrap_err()
            .to_string();
        assert!(e.contains("vc.csv:1:1: no column \"node num\""), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
