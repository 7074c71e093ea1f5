//! Trace importers: each reads a published trace and writes gosok's own two files,
//! `cluster.toml` (a `ClusterSpec`) and `workload.jsonl` (see [`crate::workload`]), so that
//! every replay runs from documented formats a user can read and edit.

pub mod mapped;
pub mod openb;
pub mod philly;
pub mod synth;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use gosok_model::{ClusterSpec, TaskGroupSpec};

use crate::error::{InputError, Skipped};
use crate::workload::{WorkloadJob, workload_text};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Input(#[from] InputError),
    /// A command-line value that cannot be used.
    #[error("{flag}: {message}")]
    Param { flag: String, message: String },
    // The reason is in the message, not in `source()`, so that it is said once.
    #[error("{}: cannot write: {reason}", path.display())]
    Write {
        path: PathBuf,
        reason: std::io::Error,
    },
}

impl ImportError {
    pub fn param(flag: &str, message: impl Into<String>) -> ImportError {
        ImportError::Param {
            flag: flag.into(),
            message: message.into(),
        }
    }
}

/// What an importer made of a trace.
#[derive(Debug, Clone)]
pub struct Imported {
    pub cluster: ClusterSpec,
    pub jobs: Vec<WorkloadJob>,
    pub summary: ImportSummary,
}

/// What was read, what was written, and what was left out and why.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ImportSummary {
    pub source: String,
    pub rows_read: u64,
    pub jobs_written: u64,
    /// Rows left out by the importer's documented rules (outside the window, not a GPU job,
    /// never scheduled), by rule.
    pub dropped: BTreeMap<String, u64>,
    /// Rows that did not validate, left out under `--skip-bad-rows`.
    pub skipped_bad_rows: Skipped,
    pub sites: u64,
    pub nodes: u64,
    pub accelerators: u64,
    pub tenants: u64,
    /// Anything the user should know about how the trace was mapped.
    pub notes: Vec<String>,
    /// The seed, for generated workloads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl ImportSummary {
    pub fn drop(&mut self, rule: &str) {
        *self.dropped.entry(rule.to_string()).or_default() += 1;
    }

    /// Fills the cluster counts from the spec.
    pub fn count_cluster(&mut self, c: &ClusterSpec) {
        self.sites = c.site.len() as u64;
        self.nodes = c.node.iter().map(|n| n.count.unwrap_or(1)).sum();
        self.accelerators = c
            .node
            .iter()
            .map(|n| n.count.unwrap_or(1) * n.accelerators)
            .sum();
        self.tenants = c.tenant.len() as u64;
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "imported {}", self.source);
        let _ = writeln!(
            s,
            "  {} rows read, {} jobs written; cluster: {} sites, {} nodes, {} accelerators, {} tenants",
            self.rows_read,
            self.jobs_written,
            self.sites,
            self.nodes,
            self.accelerators,
            self.tenants
        );
        for (rule, n) in &self.dropped {
            let _ = writeln!(s, "  left out: {n} rows: {rule}");
        }
        if self.skipped_bad_rows.rows > 0 {
            let _ = writeln!(
                s,
                "  skipped: {} bad rows (--skip-bad-rows); the first:",
                self.skipped_bad_rows.rows
            );
            for e in &self.skipped_bad_rows.first {
                let _ = writeln!(s, "    {e}");
            }
        }
        for n in &self.notes {
            let _ = writeln!(s, "  note: {n}");
        }
        if let Some(seed) = self.seed {
            let _ = writeln!(s, "  seed: {seed}");
        }
        s
    }
}

/// Writes `DIR/cluster.toml` and `DIR/workload.jsonl` (and `DIR/import.json`, the summary).
pub fn write_dir(dir: &Path, imported: &Imported, header: &str) -> Result<(), ImportError> {
    std::fs::create_dir_all(dir).map_err(|reason| ImportError::Write {
        path: dir.to_path_buf(),
        reason,
    })?;
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|reason| ImportError::Write { path, reason })
    };
    let mut cluster = String::new();
    for l in header.lines() {
        let _ = writeln!(cluster, "# {l}");
    }
    cluster.push('\n');
    cluster.push_str(&imported.cluster.to_toml());
    write("cluster.toml", &cluster)?;
    write("workload.jsonl", &workload_text(&imported.jobs))?;
    let summary = serde_json::to_string_pretty(&imported.summary).unwrap_or_default();
    write("import.json", &(summary + "\n"))?;
    Ok(())
}

/// The task groups of a job of `gpus` accelerators on nodes of `per_node`: one replica when
/// it fits one node, else as many full nodes as it fills plus one replica for the rest
/// (Helios' "consolidate": whole nodes for the bulk of a large job).
pub fn consolidated_groups(gpus: u64, per_node: u64) -> Vec<TaskGroupSpec> {
    let group = |replicas: u64, accelerators: u64| {
        let mut g = TaskGroupSpec::whole(replicas, accelerators);
        // Only accelerators are accounted (the traces give no CPU or memory per job).
        g.cpu_milli = 0;
        g.mem_mib = 0;
        g
    };
    let per_node = per_node.max(1);
    if gpus <= per_node {
        return vec![group(1, gpus)];
    }
    let mut v = vec![group(gpus / per_node, per_node)];
    if !gpus.is_multiple_of(per_node) {
        v.push(group(1, gpus % per_node));
    }
    v
}

/// Seconds since 1970-01-01 of a civil date and time (proleptic Gregorian, no time zone:
/// traces give local wall-clock times, and only differences matter).
pub fn civil_to_s(y: i64, m: u32, d: u32, hh: u32, mm: u32, ss: u32) -> i64 {
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + hh as i64 * 3600 + mm as i64 * 60 + ss as i64
}

/// Parses `YYYY-MM-DD` or `YYYY-MM-DD HH:MM:SS` (also with `T`) into seconds since 1970.
pub fn parse_datetime(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, time) = match s.split_once([' ', 'T']) {
        Some((d, t)) => (d, Some(t.trim())),
        None => (s, None),
    };
    let mut dp = date.split('-');
    let y: i64 = dp.next()?.parse().ok()?;
    let m: u32 = dp.next()?.parse().ok()?;
    let d: u32 = dp.next()?.parse().ok()?;
    if dp.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let (hh, mm, ss) = match time {
        None => (0, 0, 0),
        Some(t) => {
            let mut tp = t.split(':');
            let hh: u32 = tp.next()?.parse().ok()?;
            let mm: u32 = tp.next()?.parse().ok()?;
            let ss: f64 = tp.next().unwrap_or("0").parse().ok()?;
            if tp.next().is_some() || hh > 23 || mm > 59 || !(0.0..61.0).contains(&ss) {
                return None;
            }
            (hh, mm, ss as u32)
        }
    };
    Some(civil_to_s(y, m, d, hh, mm, ss))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_count_seconds_from_1970() {
        assert_eq!(parse_datetime("1970-01-01"), Some(0));
        assert_eq!(parse_datetime("2017-10-01 00:00:00"), Some(1_506_816_000));
        assert_eq!(parse_datetime("2017-10-09 07:01:55"), Some(1_507_532_515));
        assert_eq!(parse_datetime("2000-03-01T12:00:00"), Some(951_912_000));
        for bad in [
            "2017-13-01",
            "2017-10",
            "yesterday",
            "2017-10-01 25:00:00",
            "",
        ] {
            assert_eq!(parse_datetime(bad), None, "{bad}");
        }
    }

    #[test]
    fn large_jobs_take_whole_nodes_and_one_for_the_rest() {
        let shape = |g| {
            consolidated_groups(g, 8)
                .iter()
                .map(|g| (g.replicas, g.accelerators.unwrap()))
                .collect::<Vec<_>>()
        };
        assert_eq!(shape(1), [(1, 1)]);
        assert_eq!(shape(8), [(1, 8)]);
        assert_eq!(shape(16), [(2, 8)]);
        assert_eq!(shape(12), [(1, 8), (1, 4)]);
        assert_eq!(shape(128), [(16, 8)]);
    }
}
