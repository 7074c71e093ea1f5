//! The published results of FGD's artifact (`analysis_allo_discrete.csv`) and statistics over
//! seeds.
//!
//! The file has one row per run: `workload,sc_policy,tune,seed,total_gpus,0,1,...,130`, where
//! the value under column `k` is the GPU allocation ratio (% of capacity) when the arrived GPU
//! demand is `k` % of capacity. Unallocated GPU % is `100 - value`.

use std::collections::BTreeSet;
use std::path::Path;

use crate::csv::{CsvError, CsvTable};

/// One published run.
#[derive(Debug, Clone)]
pub struct PublishedRun {
    pub workload: String,
    /// The artifact's policy name, e.g. `06-FGD`.
    pub policy: String,
    pub tune: f64,
    pub seed: u64,
    pub total_gpus: u64,
    /// Allocated GPU % by arrived workload x (index = x).
    pub allocated_pct: Vec<Option<f64>>,
}

/// All published runs of a file.
#[derive(Debug, Clone, Default)]
pub struct Published {
    pub runs: Vec<PublishedRun>,
}

impl Published {
    /// Reads `analysis_allo_discrete.csv` (or a file of the same layout).
    pub fn read(path: &Path) -> Result<Published, CsvError> {
        let table = CsvTable::read(path)?;
        Published::from_table(&table)
    }

    pub fn from_table(table: &CsvTable) -> Result<Published, CsvError> {
        let workload = table.column("workload")?;
        let policy = table.column("sc_policy")?;
        let tune = table.column("tune")?;
        let seed = table.column("seed")?;
        let total = table.column("total_gpus")?;
        let mut x_columns: Vec<(usize, usize)> = Vec::new();
        for (i, name) in table.header().iter().enumerate() {
            if let Ok(x) = name.parse::<usize>() {
                x_columns.push((x, i));
            }
        }
        if x_columns.is_empty() {
            return Err(table.column("0").err().unwrap_or_else(|| {
                CsvError::at(
                    table.path(),
                    1,
                    1,
                    "no arrived-workload columns (0, 1, ...)",
                )
            }));
        }
        let max_x = x_columns.iter().map(|&(x, _)| x).max().unwrap_or(0);
        let mut runs = Vec::with_capacity(table.rows().len());
        for row in table.rows() {
            let mut allocated = vec![None; max_x + 1];
            for &(x, col) in &x_columns {
                let text = row.field(col).trim();
                if text.is_empty() || text.eq_ignore_ascii_case("nan") {
                    continue;
                }
                allocated[x] = Some(table.parse_f64(row, col)?);
            }
            runs.push(PublishedRun {
                workload: row.field(workload).trim().to_string(),
                policy: row.field(policy).trim().to_string(),
                tune: table.parse_f64(row, tune)?,
                seed: table.parse_u64(row, seed, u64::MAX)?,
                total_gpus: table.parse_u64(row, total, u64::MAX)?,
                allocated_pct: allocated,
            });
        }
        Ok(Published { runs })
    }

    /// The workloads with published runs, sorted.
    pub fn workloads(&self) -> Vec<String> {
        self.runs
            .iter()
            .map(|r| r.workload.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Unallocated GPU % at `x` of every published run of `workload` and `policy`.
    pub fn unallocated_at(&self, workload: &str, policy: &str, x: usize) -> Vec<f64> {
        self.runs
            .iter()
            .filter(|r| r.workload == workload && r.policy == policy)
            .filter_map(|r| r.allocated_pct.get(x).copied().flatten())
            .map(|a| 100.0 - a)
            .collect()
    }
}

/// Median, extremes and mean of a sample.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub n: usize,
}

impl Stats {
    /// `None` for an empty sample. The median of an even count is the mean of the middle two
    /// (as numpy computes it, which the published plots use).
    pub fn of(values: &[f64]) -> Option<Stats> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stats {
            median,
            min: v[0],
            max: v[n - 1],
            mean: v.iter().sum::<f64>() / n as f64,
            n,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_runs_and_gives_unallocated_shares() {
        let text = "workload,sc_policy,tune,seed,total_gpus,0,1,2\n\
            w,06-FGD,1.3,42,6212,0.5,1.0,2.0\n\
            w,06-FGD,1.3,43,6212,0.4,,3.0\n\
            v,01-Random,1.3,42,6212,0.1,0.2,0.3\n";
        let t = CsvTable::parse(Path::new("a.csv"), text).unwrap();
        let p = Published::from_table(&t).unwrap();
        assert_eq!(p.workloads(), ["v", "w"]);
        assert_eq!(p.unallocated_at("w", "06-FGD", 2), [98.0, 97.0]);
        assert_eq!(p.unallocated_at("w", "06-FGD", 1), [99.0]);
        let bad = "workload,sc_policy,tune,seed,total_gpus,0\nw,x,1.3,42,6212,abc\n";
        let t = CsvTable::parse(Path::new("a.csv"), bad).unwrap();
        let e = Published::from_table(&t).unwrap_err().to_string();
        assert!(e.starts_with("a.csv:2:"), "{e}");
    }

    #[test]
    fn stats_use_the_numpy_median() {
        let s = Stats::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.mean), (2.5, 1.0, 4.0, 2.5));
        assert_eq!(Stats::of(&[5.0, 1.0, 3.0]).unwrap().median, 3.0);
        assert!(Stats::of(&[]).is_none());
    }
}
