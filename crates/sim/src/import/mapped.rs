//! Any CSV job list, with a column mapping, against a cluster file given separately.
//!
//! `--map submit_s=submission_time,duration_s=duration,accelerators=num_gpu,id=job_id`
//! names which column holds what. Fields: `submit_s`, `duration_s` (required),
//! `accelerators` (default 0: CPU-only), `id`, `tenant` (default `--tenant`), `cpu_milli`,
//! `mem_mib`, `models` (`|`-separated catalog names), `runtime_estimate_s`,
//! `runtime_limit_s`, `duration_measured_on`. Times are in `--time-unit` (default seconds).
//! A job larger than the cluster's largest node takes whole nodes plus one for the rest
//! (the Helios "consolidate" shape). Tenants the cluster file does not declare are added.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use gosok_model::{Catalog, ClusterSpec, JobSpec, TenantSpec, Tier};

use crate::csv::{Col, Table};
use crate::error::{BadRows, InputError};
use crate::import::{ImportError, ImportSummary, Imported, consolidated_groups};
use crate::workload::WorkloadJob;

pub const FIELDS: [&str; 11] = [
    "submit_s",
    "duration_s",
    "accelerators",
    "id",
    "tenant",
    "cpu_milli",
    "mem_mib",
    "models",
    "runtime_estimate_s",
    "runtime_limit_s",
    "duration_measured_on",
];

#[derive(Debug, Clone)]
pub struct MappedParams {
    pub jobs: PathBuf,
    /// `field=column,...`
    pub map: String,
    /// The cluster (already read and checked).
    pub cluster: ClusterSpec,
    /// Tenant of jobs when no column is mapped to `tenant`.
    pub tenant: String,
    /// Seconds per unit of the time columns (1 for s, 0.001 for ms, 60 for min).
    pub seconds_per_unit: f64,
    pub bad: BadRows,
}

/// Parses `field=column,...` into a map, naming what is wrong.
pub fn parse_map(map: &str) -> Result<BTreeMap<String, String>, ImportError> {
    let mut out = BTreeMap::new();
    for part in map.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (f, c) = part.split_once('=').ok_or_else(|| {
            ImportError::param(
                "--map",
                format!("{part:?}: write field=column, e.g. submit_s=submission_time"),
            )
        })?;
        let (f, c) = (f.trim(), c.trim());
        if !FIELDS.contains(&f) {
            return Err(ImportError::param(
                "--map",
                format!(
                    "{f:?} is not a workload field; known: {}",
                    FIELDS.join(", ")
                ),
            ));
        }
        if out.insert(f.to_string(), c.to_string()).is_some() {
            return Err(ImportError::param("--map", format!("{f} is mapped twice")));
        }
    }
    for f in ["submit_s", "duration_s"] {
        if !out.contains_key(f) {
            return Err(ImportError::param(
                "--map",
                format!("{f} is not mapped; say which column holds it, e.g. {f}=<column>"),
            ));
        }
    }
    Ok(out)
}

pub fn import_mapped(p: &MappedParams, catalog: &Catalog) -> Result<Imported, ImportError> {
    let map = parse_map(&p.map)?;
    if !(p.seconds_per_unit.is_finite() && p.seconds_per_unit > 0.0) {
        return Err(ImportError::param(
            "--time-unit",
            "must be a positive number of seconds",
        ));
    }
    gosok_model::error::check_name("--tenant", &p.tenant)
        .map_err(|e| ImportError::param("--tenant", e.message))?;
    let t = Table::read(&p.jobs)?;
    let mut cols: BTreeMap<&str, Col> = BTreeMap::new();
    for (f, c) in &map {
        let col = t.find(c).ok_or_else(|| {
            InputError::at(
                &p.jobs,
                1,
                1,
                format!(
                    "no column {c:?} (mapped to {f} by --map) in the header; the columns are: {}",
                    t.header.join(", ")
                ),
            )
        })?;
        cols.insert(f.as_str(), col);
    }
    let per_node = p
        .cluster
        .node
        .iter()
        .map(|n| n.accelerators)
        .max()
        .unwrap_or(0)
        .max(1);
    let mut summary = ImportSummary {
        source: format!("{} (mapped: {})", p.jobs.display(), p.map),
        ..ImportSummary::default()
    };
    let mut jobs = Vec::new();
    let mut tenants: BTreeSet<String> = BTreeSet::new();
    let unit = p.seconds_per_unit;
    for r in &t.rows {
        summary.rows_read += 1;
        let res = (|| -> Result<WorkloadJob, InputError> {
            let num = |f: &str| -> Result<Option<f64>, InputError> {
                cols.get(f).map(|&c| t.number(r, c)).transpose()
            };
            let whole = |f: &str| -> Result<Option<u64>, InputError> {
                cols.get(f).map(|&c| t.whole(r, c)).transpose()
            };
            let text = |f: &str| -> Result<Option<String>, InputError> {
                cols.get(f)
                    .map(|&c| t.text(r, c).map(str::to_string))
                    .transpose()
            };
            let submit = num("submit_s")?.unwrap_or(0.0) * unit;
            let duration = num("duration_s")?.unwrap_or(0.0) * unit;
            if submit > 1.0e9 || duration > 1.0e9 {
                let f = if submit > 1.0e9 {
                    "submit_s"
                } else {
                    "duration_s"
                };
                return Err(t.error(r, cols[f], "is beyond 10^9 s; check --time-unit"));
            }
            let gpus = whole("accelerators")?.unwrap_or(0);
            if gpus > 100_000 {
                return Err(t.error(r, cols["accelerators"], format!("{gpus} accelerators")));
            }
            let mut groups = consolidated_groups(gpus, per_node);
            let models: Vec<String> = match text("models")? {
                None => Vec::new(),
                Some(s) => {
                    let mut v = Vec::new();
                    for m in s.split('|').map(str::trim).filter(|m| !m.is_empty()) {
                        if catalog.matching(m).is_empty() {
                            return Err(t.error(
                                r,
                                cols["models"],
                                format!("{m:?} is neither a model nor a class of the catalog"),
                            ));
                        }
                        v.push(
                            catalog
                                .id(m)
                                .map_or(m.to_string(), |id| catalog.get(id).name.clone()),
                        );
                    }
                    v
                }
            };
            let cpu = whole("cpu_milli")?;
            let mem = whole("mem_mib")?;
            for g in &mut groups {
                if gpus > 0 {
                    g.models = models.clone();
                }
                // Per replica, in proportion to its accelerators.
                let share = |v: u64| {
                    (v * g.accelerators.unwrap_or(0))
                        .checked_div(gpus)
                        .unwrap_or(v)
                };
                if let Some(c) = cpu {
                    g.cpu_milli = share(c);
                }
                if let Some(m) = mem {
                    g.mem_mib = share(m);
                }
            }
            let secs = |f: &str| -> Result<Option<u64>, InputError> {
                Ok(num(f)?.map(|v| ((v * unit).ceil() as u64).max(1)))
            };
            let mut spec = JobSpec {
                groups,
                ..JobSpec::single(gosok_model::TaskGroupSpec::whole(1, 1))
            };
            spec.runtime_estimate_s = secs("runtime_estimate_s")?;
            spec.runtime_limit_s = secs("runtime_limit_s")?;
            spec.validate().map_err(|e| {
                let col = match e.field.as_str() {
                    "runtime_estimate_s" | "runtime_limit_s" => cols.get(e.field.as_str()).copied(),
                    _ => cols.get("accelerators").copied(),
                };
                match col {
                    Some(c) => t.error(r, c, e.to_string()),
                    None => InputError::at(&t.path, r.line, 1, e.to_string()),
                }
            })?;
            let tenant = match text("tenant")? {
                Some(s) if !s.is_empty() => {
                    gosok_model::error::check_name("tenant", &s)
                        .map_err(|e| t.error(r, cols["tenant"], e.message))?;
                    s
                }
                _ => p.tenant.clone(),
            };
            let measured = match text("duration_measured_on")? {
                Some(m) if !m.is_empty() => Some(
                    catalog
                        .id(&m)
                        .map(|id| catalog.get(id).name.clone())
                        .ok_or_else(|| {
                            t.error(
                                r,
                                cols["duration_measured_on"],
                                format!("{m:?} is not an accelerator model of the catalog"),
                            )
                        })?,
                ),
                _ => None,
            };
            Ok(WorkloadJob {
                id: Some(text("id")?.unwrap_or_else(|| format!("line-{}", r.line))),
                tenant,
                submit_s: submit.floor() as u64,
                duration_s: duration.ceil() as u64,
                duration_measured_on: measured,
                spec,
            })
        })();
        match res {
            Ok(j) => {
                tenants.insert(j.tenant.clone());
                jobs.push(j);
            }
            Err(e) => summary.skipped_bad_rows.handle(p.bad, e)?,
        }
    }
    if jobs.is_empty() && summary.skipped_bad_rows.rows == 0 {
        return Err(InputError::at(&p.jobs, 1, 1, "the job list has no rows").into());
    }
    jobs.sort_by_key(|j| j.submit_s);
    let mut cluster = p.cluster.clone();
    for t in &tenants {
        if !cluster.tenant.iter().any(|x| &x.name == t) {
            cluster.tenant.push(TenantSpec::new(t, Tier::Academic));
            summary.notes.push(format!(
                "tenant {t:?} is not in the cluster file: added (academic, weight 1)"
            ));
        }
    }
    summary.jobs_written = jobs.len() as u64;
    summary.count_cluster(&cluster);
    Ok(Imported {
        cluster,
        jobs,
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::parse_cluster;
    use std::path::Path;

    fn cluster() -> ClusterSpec {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/cluster.toml"
        ))
        .unwrap();
        parse_cluster(Path::new("c.toml"), &text, &Catalog::builtin()).unwrap()
    }

    fn params(dir: &Path, csv: &str, map: &str) -> MappedParams {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("jobs.csv"), csv).unwrap();
        MappedParams {
            jobs: dir.join("jobs.csv"),
            map: map.into(),
            cluster: cluster(),
            tenant: "lab".into(),
            seconds_per_unit: 1.0,
            bad: BadRows::Fail,
        }
    }

    const MAP: &str = "id=job_id,submit_s=submission_time,duration_s=duration,accelerators=num_gpu";

    #[test]
    fn columns_are_mapped_and_unknown_tenants_added() {
        let dir = std::env::temp_dir().join(format!("gosok-mapped-{}", std::process::id()));
        let csv = "job_id,num_gpu,submission_time,duration\n0,1,0,164\n1,16,30,147.5\n2,0,40,10\n";
        let im = import_mapped(&params(&dir, csv, MAP), &Catalog::builtin()).unwrap();
        assert_eq!(im.jobs.len(), 3);
        assert_eq!(im.jobs[0].id.as_deref(), Some("0"));
        assert_eq!(im.jobs[1].duration_s, 148);
        assert_eq!(im.jobs[1].spec.groups[0].replicas, 2);
        assert_eq!(im.jobs[2].spec.total_accelerator_milli(), 0);
        assert!(im.cluster.tenant.iter().any(|t| t.name == "lab"));
        assert_eq!(im.summary.notes.len(), 1);
        let mut p = params(&dir, csv, MAP);
        p.seconds_per_unit = 0.001;
        let im = import_mapped(&p, &Catalog::builtin()).unwrap();
        assert_eq!((im.jobs[1].submit_s, im.jobs[1].duration_s), (0, 1));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bad_maps_and_rows_are_named() {
        let dir = std::env::temp_dir().join(format!("gosok-mapped-bad-{}", std::process::id()));
        let csv = "job_id,num_gpu,submission_time,duration\n0,1,0,164\n1,x,30,147\n2,1,40,-1\n";
        let cat = Catalog::builtin();
        let e = import_mapped(&params(&dir, csv, MAP), &cat)
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("jobs.csv:3:3: column \"num_gpu\": \"x\" is not a number"),
            "{e}"
        );
        let mut p = params(&dir, csv, MAP);
        p.bad = BadRows::Skip;
        let im = import_mapped(&p, &cat).unwrap();
        assert_eq!((im.jobs.len(), im.summary.skipped_bad_rows.rows), (1, 2));
        assert!(
            im.summary.skipped_bad_rows.first[1]
                .contains("jobs.csv:4:8: column \"duration\": -1 is negative")
        );
        let e = import_mapped(
            &params(&dir, csv, "submit_s=when,duration_s=duration"),
            &cat,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("jobs.csv:1:1: no column \"when\" (mapped to submit_s by --map)"),
            "{e}"
        );
        let e = import_mapped(&params(&dir, csv, "submit=submission_time"), &cat)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--map: \"submit\" is not a workload field"),
            "{e}"
        );
        let e = import_mapped(&params(&dir, csv, "submit_s=submission_time"), &cat)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--map: duration_s is not mapped"), "{e}");
        let e = import_mapped(
            &params(&dir, "job_id,num_gpu,submission_time,duration\n", MAP),
            &cat,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("jobs.csv:1:1: the job list has no rows"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
