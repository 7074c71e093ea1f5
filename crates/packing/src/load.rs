//! Loading the node list and pod lists of the openb trace into the experiment's model.
//!
//! Columns are found by name, so both pod-list layouts of the trace read the same: the full one
//! (`name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,...`) and the five-column one of the
//! `multigpu` variants (`name,cpu_milli,memory_mib,num_gpu,gpu_milli`, no GPU-type constraints).
//! Every bad value is an error naming file, line, column and problem, unless the caller asked
//! to skip bad rows: then the row is left out and its error is kept in the result's
//! `skipped_rows`, so that reports can count them.

use std::path::Path;

use crate::csv::{CsvError, CsvRow, CsvTable};
use crate::model::{
    Cluster, Demand, GpuModels, MAX_GPUS_PER_NODE, MILLI_PER_GPU, ModelMask, NodeSpec, PodSpec,
    Workload,
};

/// What to do with a row that does not validate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BadRows {
    /// Stop at the first bad row with its error (the default).
    #[default]
    Fail,
    /// Leave the row out and record why.
    Skip,
}

/// Reads a node list (`sn,cpu_milli,memory_mib,gpu,model`).
pub fn load_nodes(path: &Path, bad_rows: BadRows) -> Result<Cluster, CsvError> {
    let table = CsvTable::read(path)?;
    nodes_from_table(&table, bad_rows)
}

/// Reads a pod list against `cluster`, whose GPU models are the only ones a pod may ask for.
pub fn load_pods(path: &Path, cluster: &Cluster, bad_rows: BadRows) -> Result<Workload, CsvError> {
    let table = CsvTable::read(path)?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    pods_from_table(&table, &name, &cluster.models, bad_rows)
}

/// Builds a cluster from a parsed node list.
pub fn nodes_from_table(table: &CsvTable, bad_rows: BadRows) -> Result<Cluster, CsvError> {
    // The openb node lists call the node name `sn` (serial number); accept `name` too.
    let name_col = table
        .optional_column("sn")
        .or_else(|| table.optional_column("name"))
        .map_or_else(|| table.column("sn"), Ok)?;
    let cpu_col = table.column("cpu_milli")?;
    let mem_col = table.column("memory_mib")?;
    let gpu_col = table.column("gpu")?;
    let model_col = table.column("model")?;
    let mut cluster = Cluster::default();
    for row in table.rows() {
        let parsed = (|| -> Result<NodeSpec, CsvError> {
            let name = row.field(name_col).trim().to_string();
            if name.is_empty() {
                return Err(table.error(row, name_col, "is empty; every node needs a name"));
            }
            let cpu_milli = table.parse_u64(row, cpu_col, u64::from(u32::MAX))? as u32;
            let memory_mib = table.parse_u64(row, mem_col, u64::MAX / 2)?;
            let gpu_count = table.parse_u64(row, gpu_col, MAX_GPUS_PER_NODE as u64)? as u8;
            let model_name = row.field(model_col).trim();
            let model = if gpu_count == 0 {
                None
            } else if model_name.is_empty() {
                return Err(table.error(
                    row,
                    model_col,
                    format!("is empty, but the node has {gpu_count} GPUs: name their model"),
                ));
            } else if model_name.contains('|') {
                return Err(table.error(
                    row,
                    model_col,
                    format!("{model_name:?} names several models; a node has one GPU model"),
                ));
            } else {
                Some(cluster.models.intern(model_name).ok_or_else(|| {
                    table.error(
                        row,
                        model_col,
                        format!(
                            "{model_name:?} would be GPU model number {}, more than the {} supported",
                            cluster.models.len() + 1,
                            crate::model::MAX_GPU_MODELS
                        ),
                    )
                })?)
            };
            Ok(NodeSpec {
                name,
                cpu_milli,
                memory_mib,
                gpu_count,
                model,
            })
        })();
        match parsed {
            Ok(node) => cluster.nodes.push(node),
            Err(e) => skip_or_fail(e, bad_rows, &mut cluster.skipped_rows)?,
        }
    }
    if cluster.nodes.is_empty() {
        return Err(CsvError::at(
            table.path(),
            table.rows().last().map_or(2, |r| r.line() + 1),
            1,
            "the node list has no (valid) nodes",
        ));
    }
    Ok(cluster)
}

/// Builds a workload from a parsed pod list.
pub fn pods_from_table(
    table: &CsvTable,
    workload_name: &str,
    models: &GpuModels,
    bad_rows: BadRows,
) -> Result<Workload, CsvError> {
    let name_col = table.column("name")?;
    let cpu_col = table.column("cpu_milli")?;
    let mem_col = table.column("memory_mib")?;
    let count_col = table.column("num_gpu")?;
    let milli_col = table.column("gpu_milli")?;
    let spec_col = table.optional_column("gpu_spec");
    let mut workload = Workload {
        name: workload_name.to_string(),
        ..Workload::default()
    };
    for row in table.rows() {
        match pod_from_row(
            table, row, models, name_col, cpu_col, mem_col, count_col, milli_col, spec_col,
        ) {
            Ok(pod) => workload.pods.push(pod),
            Err(e) => skip_or_fail(e, bad_rows, &mut workload.skipped_rows)?,
        }
    }
    if workload.pods.is_empty() {
        return Err(CsvError::at(
            table.path(),
            table.rows().last().map_or(2, |r| r.line() + 1),
            1,
            "the pod list has no (valid) pods",
        ));
    }
    Ok(workload)
}

#[allow(clippy::too_many_arguments)]
fn pod_from_row(
    table: &CsvTable,
    row: &CsvRow,
    models: &GpuModels,
    name_col: usize,
    cpu_col: usize,
    mem_col: usize,
    count_col: usize,
    milli_col: usize,
    spec_col: Option<usize>,
) -> Result<PodSpec, CsvError> {
    let name = row.field(name_col).trim().to_string();
    if name.is_empty() {
        return Err(table.error(row, name_col, "is empty; every pod needs a name"));
    }
    let cpu_milli = table.parse_u64(row, cpu_col, u64::from(u32::MAX))? as u32;
    let memory_mib = table.parse_u64(row, mem_col, u64::MAX / 2)?;
    let gpu_count = table.parse_u64(row, count_col, u64::from(u8::MAX))? as u8;
    let gpu_milli = table.parse_u64(row, milli_col, u64::from(u32::MAX))?;
    if gpu_milli > u64::from(MILLI_PER_GPU) {
        return Err(table.error(
            row,
            milli_col,
            format!("{gpu_milli} is more than one GPU: gpu_milli is per GPU, 1..=1000"),
        ));
    }
    if gpu_count == 0 && gpu_milli != 0 {
        return Err(table.error(
            row,
            milli_col,
            format!("is {gpu_milli} but num_gpu is 0; a pod without GPUs has gpu_milli 0"),
        ));
    }
    if gpu_count > 0 && gpu_milli == 0 {
        return Err(table.error(
            row,
            milli_col,
            format!("is 0 but num_gpu is {gpu_count}; a GPU pod needs 1..=1000 milli-GPUs per GPU"),
        ));
    }
    if gpu_count > 1 && gpu_milli < u64::from(MILLI_PER_GPU) {
        return Err(table.error(
            row,
            milli_col,
            format!(
                "is {gpu_milli} with num_gpu {gpu_count}: only single-GPU pods may share a GPU"
            ),
        ));
    }
    let mut mask = ModelMask::ANY;
    if let Some(spec_col) = spec_col {
        let spec = row.field(spec_col).trim();
        // The trace gives a GPU-type constraint only for GPU pods; the simulator ignores it on
        // pods without GPUs, and so do we, but an unknown model is an error wherever it is.
        for model in spec.split('|').map(str::trim).filter(|m| !m.is_empty()) {
            match models.id(model) {
                Some(id) => mask = mask.with(id),
                None => {
                    return Err(table.error(
                        row,
                        spec_col,
                        format!(
                            "unknown GPU model {model:?}: the node list has {}",
                            models.names().join(", ")
                        ),
                    ));
                }
            }
        }
        if gpu_count == 0 {
            mask = ModelMask::ANY;
        }
    }
    Ok(PodSpec {
        name,
        memory_mib,
        demand: Demand {
            cpu_milli,
            gpu_milli: gpu_milli as u16,
            gpu_count,
            models: mask,
        },
    })
}

fn skip_or_fail(e: CsvError, bad_rows: BadRows, skipped: &mut Vec<String>) -> Result<(), CsvError> {
    match bad_rows {
        BadRows::Fail => Err(e),
        BadRows::Skip => {
            skipped.push(e.to_string());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const NODES: &str = "sn,cpu_milli,memory_mib,gpu,model\n\
        n0,64000,262144,2,P100\n\
        n1,96000,393216,8,G2\n\
        n2,32000,131072,0,\n";

    fn cluster() -> Cluster {
        let t = CsvTable::parse(Path::new("nodes.csv"), NODES).unwrap();
        nodes_from_table(&t, BadRows::Fail).unwrap()
    }

    fn pods(text: &str, bad: BadRows) -> Result<Workload, CsvError> {
        let t = CsvTable::parse(Path::new("pods.csv"), text)?;
        pods_from_table(&t, "pods", &cluster().models, bad)
    }

    #[test]
    fn nodes_load_with_models_and_cpu_only_nodes() {
        let c = cluster();
        assert_eq!(c.nodes.len(), 3);
        assert_eq!(c.models.names(), ["P100", "G2"]);
        assert_eq!(c.nodes[2].model, None);
        assert_eq!(c.total_gpus(), 10);
    }

    #[test]
    fn both_pod_layouts_load_by_header_name() {
        let full = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos\n\
            p0,4000,1024,1,500,G2|P100,LS\np1,1000,10,0,0,,BE\n";
        let w = pods(full, BadRows::Fail).unwrap();
        assert_eq!(w.pods.len(), 2);
        let c = cluster();
        let d = w.pods[0].demand;
        assert!(d.models.allows(c.models.id("G2").unwrap()));
        assert!(d.models.allows(c.models.id("P100").unwrap()));
        let five = "gpu_milli,num_gpu,name,cpu_milli,memory_mib\n1000,2,p0,8000,0\n";
        let w = pods(five, BadRows::Fail).unwrap();
        assert_eq!(w.pods[0].demand.gpu_count, 2);
        assert!(w.pods[0].demand.models.is_any());
    }

    fn err(text: &str) -> String {
        pods(text, BadRows::Fail).unwrap_err().to_string()
    }

    #[test]
    fn bad_pod_values_name_file_line_column_and_problem() {
        let h = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n";
        let e = err(&format!("{h}p0,-4,1,0,0,\n"));
        assert!(e.starts_with("pods.csv:2:4: column `cpu_milli`:"), "{e}");
        assert!(e.contains("negative"), "{e}");
        let e = err(&format!("{h}p0,4,1,0,0,\np1,4,x,0,0,\n"));
        assert!(e.starts_with("pods.csv:3:6: column `memory_mib`:"), "{e}");
        let e = err(&format!("{h}p0,4,1,1,500,H100\n"));
        assert!(
            e.starts_with("pods.csv:2:14: column `gpu_spec`: unknown GPU model \"H100\""),
            "{e}"
        );
        let e = err(&format!("{h}p0,4,1,2,500,\n"));
        assert!(e.contains("only single-GPU pods may share"), "{e}");
        let e = err(&format!("{h}p0,4,1,1,1500,\n"));
        assert!(e.contains("per GPU"), "{e}");
        let e = err(&format!("{h}p0,4,1,1,0,\n"));
        assert!(e.contains("needs 1..=1000"), "{e}");
        let e = err("name,cpu_milli,memory_mib,num_gpu\np0,1,1,0\n");
        assert!(e.starts_with("pods.csv:1:"), "{e}");
        assert!(e.contains("missing column `gpu_milli`"), "{e}");
        let e = err(h);
        assert!(e.contains("no (valid) pods"), "{e}");
    }

    #[test]
    fn skipped_rows_are_counted_with_their_reason() {
        let h = "name,cpu_milli,memory_mib,num_gpu,gpu_milli\n";
        let w = pods(
            &format!("{h}p0,4,1,0,0\np1,4,1,1,x\np2,8,1,1,200\n"),
            BadRows::Skip,
        )
        .unwrap();
        assert_eq!(w.pods.len(), 2);
        assert_eq!(w.skipped_rows.len(), 1);
        assert!(
            w.skipped_rows[0].starts_with("pods.csv:3:"),
            "{:?}",
            w.skipped_rows
        );
    }

    #[test]
    fn bad_nodes_are_errors() {
        let t = CsvTable::parse(
            Path::new("n.csv"),
            "sn,cpu_milli,memory_mib,gpu,model\na,1,1,2,\n",
        )
        .unwrap();
        let e = nodes_from_table(&t, BadRows::Fail).unwrap_err().to_string();
        assert!(e.starts_with("n.csv:2:9: column `model`"), "{e}");
        let t = CsvTable::parse(
            Path::new("n.csv"),
            "sn,cpu_milli,memory_mib,gpu,model\na,1,1,9,T4\n",
        )
        .unwrap();
        let e = nodes_from_table(&t, BadRows::Fail).unwrap_err().to_string();
        assert!(e.contains("too large"), "{e}");
        let t =
            CsvTable::parse(Path::new("n.csv"), "sn,cpu_milli,memory_mib,gpu\na,1,1,1\n").unwrap();
        let e = nodes_from_table(&t, BadRows::Fail).unwrap_err().to_string();
        assert!(e.contains("missing column `model`"), "{e}");
    }
}
