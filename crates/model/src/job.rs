//! Job specs: what a tenant asks for. The same spec travels on the wire (JSON), in workload
//! files and into the engine.

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::error::{SpecError, check_label_key, check_label_value, check_name, check_range};
use crate::tenant::PriorityClass;

/// Bounds that keep every count far from overflow; beyond them a number is a typo.
pub const MAX_GROUPS: usize = 16;
pub const MAX_REPLICAS: u64 = 100_000;
pub const MAX_ACCELERATORS_PER_REPLICA: u64 = 256;
pub const MAX_CPU_MILLI: u64 = 100_000 * 1000;
pub const MAX_MEM_MIB: u64 = 1 << 40;
pub const MAX_RUNTIME_S: u64 = 366 * 24 * 3600;
pub const MAX_RETRIES: u64 = 100;
pub const MAX_CONSTRAINT_VALUES: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A gang: every replica of every group starts together or none does.
    pub groups: Vec<TaskGroupSpec>,
    /// Defaults to the tenant's default priority class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<PriorityClass>,
    #[serde(default = "default_true")]
    pub preemptible: bool,
    /// What the user expects; reservations and backfill plan with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_estimate_s: Option<u64>,
    /// A hard limit: the job is stopped when it runs longer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_limit_s: Option<u64>,
    /// How often the job is requeued after losing a node before it fails. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u64>,
    /// What a task that exits non-zero does to its gang.
    #[serde(default, skip_serializing_if = "OnTaskFailure::is_default")]
    pub on_task_failure: OnTaskFailure,
    #[serde(default)]
    pub constraints: Constraints,
}

/// What a task that exits non-zero does to its gang.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTaskFailure {
    /// The whole gang is stopped and the job fails at once (what collective training needs).
    #[default]
    FailJob,
    /// The other tasks run on; the job fails when the last one has ended.
    Continue,
}

impl OnTaskFailure {
    fn is_default(&self) -> bool {
        *self == OnTaskFailure::FailJob
    }
}

fn default_true() -> bool {
    true
}

fn default_one() -> u64 {
    1
}

fn default_cpu_milli() -> u64 {
    1000
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskGroupSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default = "default_one")]
    pub replicas: u64,
    /// Whole accelerators per replica (all on one node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerators: Option<u64>,
    /// A fraction of one shareable accelerator per replica, in thousandths (1..=999).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator_milli: Option<u64>,
    /// Acceptable models or classes; empty: any model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    #[serde(default)]
    pub min_hbm_gib: u64,
    #[serde(default = "default_cpu_milli")]
    pub cpu_milli: u64,
    #[serde(default)]
    pub mem_mib: u64,
}

impl TaskGroupSpec {
    /// `replicas` × `accelerators` whole accelerators of any model.
    pub fn whole(replicas: u64, accelerators: u64) -> TaskGroupSpec {
        TaskGroupSpec {
            name: None,
            replicas,
            accelerators: Some(accelerators),
            accelerator_milli: None,
            models: Vec::new(),
            min_hbm_gib: 0,
            cpu_milli: 1000,
            mem_mib: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Constraints {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jurisdictions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<TopologyConstraint>,
    /// Node selector: every label here must be on the node with this value (Kubernetes'
    /// `nodeSelector`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_labels: BTreeMap<String, String>,
    /// Node taints this job tolerates: `key` (any value) or `key=value`. A tainted node takes
    /// only replicas that tolerate each of its taints; replicas that ask for accelerators
    /// tolerate `gosok.io/accelerators` by themselves (`ACCELERATOR_TAINT`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<String>,
    /// Anti-affinity: at most this many replicas of the job (of its `group`, with one) on
    /// one node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas_per_node: Option<u64>,
    /// Spread: at most `max_replicas` replicas of the job (of its `group`, with one) in one
    /// rack or site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<SpreadConstraint>,
    /// A name shared by jobs of one tenant whose replicas `max_replicas_per_node` and
    /// `spread` count together (the replicas of one service submitted as several jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// The taint key that replicas asking for accelerators tolerate without saying so: tainting
/// accelerator nodes with it keeps CPU-only work off them (as Kubernetes' extended-resource
/// toleration does for GPU nodes).
pub const ACCELERATOR_TAINT: &str = "gosok.io/accelerators";

/// Most labels a selector, and most tolerations a job, may list.
pub const MAX_SELECTOR_ENTRIES: usize = 32;

/// At most `max_replicas` replicas in one unit at `level` (rack or site).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpreadConstraint {
    pub level: TopologyLevel,
    pub max_replicas: u64,
}

/// A node taint or a job's toleration: `key` or `key=value`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Taint {
    pub key: String,
    pub value: Option<String>,
}

impl Taint {
    /// Parses `key` or `key=value`, naming `field` when it is not one.
    pub fn parse(field: &str, text: &str) -> Result<Taint, SpecError> {
        let (key, value) = match text.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (text, None),
        };
        check_label_key(field, key)?;
        if let Some(v) = value {
            check_label_value(field, v)?;
        }
        Ok(Taint {
            key: key.to_string(),
            value: value.map(str::to_string),
        })
    }

    /// Whether this toleration tolerates `taint`: same key, and same value unless the
    /// toleration gives none.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        self.key == taint.key && (self.value.is_none() || self.value == taint.value)
    }
}

impl std::fmt::Display for Taint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}={v}", self.key),
            None => write!(f, "{}", self.key),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopologyLevel {
    Node,
    ScaleUpDomain,
    Rack,
    Site,
}

impl TopologyLevel {
    pub fn describe(self) -> &'static str {
        match self {
            TopologyLevel::Node => "on one node",
            TopologyLevel::ScaleUpDomain => "in one scale-up domain",
            TopologyLevel::Rack => "in one rack",
            TopologyLevel::Site => "in one site",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TopologyMode {
    #[default]
    Required,
    Preferred,
}

/// Where the replicas of the whole gang must (or should) land together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyConstraint {
    pub level: TopologyLevel,
    #[serde(default)]
    pub mode: TopologyMode,
}

impl JobSpec {
    /// A one-group job; handy in tests and examples.
    pub fn single(group: TaskGroupSpec) -> JobSpec {
        JobSpec {
            name: None,
            groups: vec![group],
            priority: None,
            preemptible: true,
            runtime_estimate_s: None,
            runtime_limit_s: None,
            max_retries: None,
            on_task_failure: OnTaskFailure::FailJob,
            constraints: Constraints::default(),
        }
    }

    /// Checks what can be checked without the highway: shapes, ranges, contradictions.
    /// What depends on the catalog and topology is the engine's admission.
    pub fn validate(&self) -> Result<(), SpecError> {
        if let Some(n) = &self.name {
            check_name("name", n)?;
        }
        if self.groups.is_empty() {
            return Err(SpecError::new(
                "groups",
                "a job needs at least one task group",
            ));
        }
        if self.groups.len() > MAX_GROUPS {
            return Err(SpecError::new(
                "groups",
                format!(
                    "{} task groups; at most {MAX_GROUPS} are allowed",
                    self.groups.len()
                ),
            ));
        }
        for (i, g) in self.groups.iter().enumerate() {
            let f = |x: &str| format!("groups[{i}].{x}");
            if let Some(n) = &g.name {
                check_name(&f("name"), n)?;
            }
            check_range(&f("replicas"), g.replicas, 1, MAX_REPLICAS)?;
            match (g.accelerators, g.accelerator_milli) {
                (Some(_), Some(_)) => {
                    return Err(SpecError::new(
                        f("accelerator_milli"),
                        "give either accelerators (whole devices) or accelerator_milli (a fraction of one), not both",
                    ));
                }
                (Some(a), None) => {
                    check_range(&f("accelerators"), a, 0, MAX_ACCELERATORS_PER_REPLICA)?
                }
                (None, Some(m)) => check_range(&f("accelerator_milli"), m, 1, 999)?,
                (None, None) => {}
            }
            let wants_accel = g.accelerators.unwrap_or(0) > 0 || g.accelerator_milli.is_some();
            if !wants_accel && (!g.models.is_empty() || g.min_hbm_gib > 0) {
                return Err(SpecError::new(
                    f("models"),
                    "models or min_hbm_gib are given but no accelerators are requested",
                ));
            }
            if g.models.len() > MAX_CONSTRAINT_VALUES {
                return Err(SpecError::new(f("models"), "too many values"));
            }
            for (j, m) in g.models.iter().enumerate() {
                check_name(&format!("groups[{i}].models[{j}]"), m)?;
            }
            check_range(&f("min_hbm_gib"), g.min_hbm_gib, 0, 1 << 20)?;
            check_range(&f("cpu_milli"), g.cpu_milli, 0, MAX_CPU_MILLI)?;
            check_range(&f("mem_mib"), g.mem_mib, 0, MAX_MEM_MIB)?;
        }
        if let Some(e) = self.runtime_estimate_s {
            check_range("runtime_estimate_s", e, 1, MAX_RUNTIME_S)?;
        }
        if let Some(l) = self.runtime_limit_s {
            check_range("runtime_limit_s", l, 1, MAX_RUNTIME_S)?;
        }
        if let (Some(e), Some(l)) = (self.runtime_estimate_s, self.runtime_limit_s)
            && e > l
        {
            return Err(SpecError::new(
                "runtime_estimate_s",
                format!(
                    "is {e} s, longer than runtime_limit_s ({l} s): the job would be stopped before it is expected to end"
                ),
            ));
        }
        if let Some(r) = self.max_retries {
            check_range("max_retries", r, 0, MAX_RETRIES)?;
        }
        let c = &self.constraints;
        for (field, values) in [
            ("constraints.sites", &c.sites),
            ("constraints.regions", &c.regions),
            ("constraints.jurisdictions", &c.jurisdictions),
        ] {
            if values.len() > MAX_CONSTRAINT_VALUES {
                return Err(SpecError::new(field, "too many values"));
            }
            for (j, v) in values.iter().enumerate() {
                check_name(&format!("{field}[{j}]"), v)?;
            }
        }
        if c.node_labels.len() > MAX_SELECTOR_ENTRIES {
            return Err(SpecError::new(
                "constraints.node_labels",
                format!("at most {MAX_SELECTOR_ENTRIES} labels"),
            ));
        }
        for (k, v) in &c.node_labels {
            let field = format!("constraints.node_labels.{k}");
            check_label_key(&field, k)?;
            check_label_value(&field, v)?;
        }
        if c.tolerations.len() > MAX_SELECTOR_ENTRIES {
            return Err(SpecError::new(
                "constraints.tolerations",
                format!("at most {MAX_SELECTOR_ENTRIES} tolerations"),
            ));
        }
        for (j, t) in c.tolerations.iter().enumerate() {
            Taint::parse(&format!("constraints.tolerations[{j}]"), t)?;
        }
        if let Some(m) = c.max_replicas_per_node {
            check_range("constraints.max_replicas_per_node", m, 1, MAX_REPLICAS)?;
        }
        if let Some(s) = &c.spread {
            if !matches!(s.level, TopologyLevel::Rack | TopologyLevel::Site) {
                return Err(SpecError::new(
                    "constraints.spread.level",
                    "spread over \"rack\" or \"site\" (for nodes, use max_replicas_per_node)",
                ));
            }
            check_range(
                "constraints.spread.max_replicas",
                s.max_replicas,
                1,
                MAX_REPLICAS,
            )?;
        }
        if let Some(g) = &c.group {
            check_name("constraints.group", g)?;
            if c.max_replicas_per_node.is_none() && c.spread.is_none() {
                return Err(SpecError::new(
                    "constraints.group",
                    "is given without max_replicas_per_node or spread, which are what it counts for",
                ));
            }
        }
        Ok(())
    }

    /// Accelerators of the whole gang, in thousandths.
    pub fn total_accelerator_milli(&self) -> u64 {
        self.groups
            .iter()
            .map(|g| {
                g.replicas
                    * g.accelerators
                        .map(|a| a * 1000)
                        .or(g.accelerator_milli)
                        .unwrap_or(0)
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<JobSpec, String> {
        let spec: JobSpec = serde_json::from_str(json).map_err(|e| e.to_string())?;
        spec.validate().map_err(|e| e.to_string())?;
        Ok(spec)
    }

    #[test]
    fn a_plain_gang_parses_with_defaults() {
        let j = parse(r#"{"groups":[{"replicas":2,"accelerators":4,"models":["H100"]}]}"#).unwrap();
        assert!(j.preemptible);
        assert_eq!(j.groups[0].cpu_milli, 1000);
        assert_eq!(j.total_accelerator_milli(), 8000);
    }

    #[test]
    fn bad_specs_name_the_field() {
        let cases = [
            (r#"{"groups":[]}"#, "groups"),
            (
                r#"{"groups":[{"replicas":0,"accelerators":1}]}"#,
                "groups[0].replicas",
            ),
            (
                r#"{"groups":[{"accelerators":1000000000000}]}"#,
                "groups[0].accelerators",
            ),
            (
                r#"{"groups":[{"accelerators":1,"accelerator_milli":500}]}"#,
                "groups[0].accelerator_milli",
            ),
            (
                r#"{"groups":[{"accelerator_milli":1000}]}"#,
                "groups[0].accelerator_milli",
            ),
            (r#"{"groups":[{"models":["H100"]}]}"#, "groups[0].models"),
            (
                r#"{"groups":[{"accelerators":1}],"runtime_estimate_s":100,"runtime_limit_s":10}"#,
                "runtime_estimate_s",
            ),
            (
                r#"{"groups":[{"accelerators":1}],"constraints":{"sites":["a b"]}}"#,
                "constraints.sites[0]",
            ),
        ];
        for (json, field) in cases {
            let e = parse(json).unwrap_err();
            assert!(e.starts_with(field), "{json}: {e}");
        }
        assert!(
            parse(r#"{"groups":[{"accelerators":-1}]}"#)
                .unwrap_err()
                .contains("invalid value")
        );
        assert!(
            parse(r#"{"groups":[{"accelerators":1}],"colour":"red"}"#)
                .unwrap_err()
                .contains("unknown field")
        );
    }
}
