//! The highway's physical shape: sites, racks (power domains), nodes.
//!
//! `ClusterSpec` is the TOML cluster file that operators `apply` and the simulator reads.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::error::{SpecError, check_f64, check_label_key, check_name, check_range};
use crate::tenant::TenantSpec;

/// Most sites one highway can have; the engine keeps site sets as 64-bit masks.
pub const MAX_SITES: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSpec {
    pub name: String,
    pub region: String,
    /// Jurisdiction code, e.g. "KR": residency rules are written against it.
    pub jurisdiction: String,
    /// Facility power budget (IT load × PUE must stay within it).
    pub power_budget_mw: f64,
    pub pue: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RackSpec {
    pub name: String,
    pub site: String,
    /// IT power cap of the rack's power domain.
    pub power_cap_kw: f64,
    /// The NVLink-class domain its accelerators share; several racks may share one.
    /// Defaults to the rack's own name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_up_domain: Option<String>,
    /// Whether agents may register nodes in this rack that the topology does not declare
    /// (they join it as they register). Off: an agent can add no capacity the operator did
    /// not declare.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_undeclared_nodes: bool,
    /// The most nodes the rack may hold, declared and joined together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_nodes: Option<u64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Up,
    /// Running work continues; nothing new is placed.
    Draining,
    /// Declared but not (or no longer) running work.
    #[default]
    Down,
}

/// One node, or with `count` a run of identical nodes named `{name}{index:0width}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    pub rack: String,
    /// With `count`, `name` is a prefix and the nodes are `name-000`, `name-001`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    pub cpu_cores: u64,
    pub mem_mib: u64,
    /// Accelerator model name from the catalog; omitted for CPU-only nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<String>,
    #[serde(default)]
    pub accelerators: u64,
    /// Draw of the node itself (CPUs, memory, fans, NICs) while it hosts work.
    #[serde(default = "default_base_power_w")]
    pub base_power_w: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `key` or `key=value`: only replicas that tolerate every taint are placed here
    /// (`ACCELERATOR_TAINT` keeps CPU-only work off accelerator nodes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<String>,
    #[serde(default)]
    pub state: NodeState,
}

impl NodeSpec {
    /// The checks of one machine (not its name, rack or count), fields named under `prefix`.
    pub fn validate_machine(&self, prefix: &str, catalog: &Catalog) -> Result<(), SpecError> {
        let f = |x: &str| format!("{prefix}.{x}");
        check_range(&f("cpu_cores"), self.cpu_cores, 1, MAX_NODE_CPU_CORES)?;
        check_range(&f("mem_mib"), self.mem_mib, 1, MAX_NODE_MEM_MIB)?;
        check_range(
            &f("accelerators"),
            self.accelerators,
            0,
            MAX_NODE_ACCELERATORS,
        )?;
        check_range(&f("base_power_w"), self.base_power_w, 0, 1_000_000)?;
        match &self.accelerator {
            Some(m) if catalog.id(m).is_none() => {
                return Err(SpecError::new(
                    f("accelerator"),
                    format!("model {m:?} is not in the accelerator catalog"),
                ));
            }
            Some(_) if self.accelerators == 0 => {
                return Err(SpecError::new(
                    f("accelerators"),
                    "is 0 but an accelerator model is given; give the count",
                ));
            }
            None if self.accelerators > 0 => {
                return Err(SpecError::new(
                    f("accelerator"),
                    "is missing but accelerators > 0; name the model",
                ));
            }
            _ => {}
        }
        for k in self.labels.keys() {
            check_label_key(&f("labels"), k)?;
        }
        if self.taints.len() > crate::job::MAX_SELECTOR_ENTRIES {
            return Err(SpecError::new(
                f("taints"),
                format!("at most {} taints", crate::job::MAX_SELECTOR_ENTRIES),
            ));
        }
        for (j, t) in self.taints.iter().enumerate() {
            crate::job::Taint::parse(&format!("{prefix}.taints[{j}]"), t)?;
        }
        Ok(())
    }
}

fn default_base_power_w() -> u64 {
    1500
}

/// The name of node `k` of a run of `count` nodes named `prefix` (`prefix-000`, ...): the
/// cluster file and agents with `--nodes N` name virtual nodes alike.
pub fn run_node_name(prefix: &str, k: u64, count: u64) -> String {
    let width = (count.max(1) - 1).to_string().len().max(3);
    format!("{prefix}-{k:0width$}")
}

/// The cluster file: the whole declared highway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    #[serde(default)]
    pub site: Vec<SiteSpec>,
    #[serde(default)]
    pub rack: Vec<RackSpec>,
    #[serde(default)]
    pub node: Vec<NodeSpec>,
    #[serde(default)]
    pub tenant: Vec<TenantSpec>,
}

/// A node with its run expanded and its name final.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedNode {
    pub name: String,
    pub site: usize,
    pub rack: usize,
    pub spec: NodeSpec,
}

/// Per-node upper bounds: beyond them a number is a typo, not a machine.
pub const MAX_NODE_ACCELERATORS: u64 = 256;
pub const MAX_NODE_CPU_CORES: u64 = 100_000;
pub const MAX_NODE_MEM_MIB: u64 = 1 << 40;
pub const MAX_NODES: u64 = 1_000_000;

impl ClusterSpec {
    pub fn from_toml(text: &str) -> Result<ClusterSpec, SpecError> {
        toml::from_str(text).map_err(|e| SpecError::new("cluster", e.to_string()))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks every field and cross-reference, and expands node runs.
    pub fn resolve(&self, catalog: &Catalog) -> Result<Vec<ResolvedNode>, SpecError> {
        if self.site.len() > MAX_SITES {
            return Err(SpecError::new(
                "site",
                format!(
                    "{} sites declared; at most {MAX_SITES} are supported",
                    self.site.len()
                ),
            ));
        }
        let mut sites = BTreeMap::new();
        for (i, s) in self.site.iter().enumerate() {
            let f = |x: &str| format!("site[{i}].{x}");
            check_name(&f("name"), &s.name)?;
            check_name(&f("region"), &s.region)?;
            check_name(&f("jurisdiction"), &s.jurisdiction)?;
            check_f64(&f("power_budget_mw"), s.power_budget_mw, 0.0, 10_000.0)?;
            check_f64(&f("pue"), s.pue, 0.999, 5.0)?;
            if sites.insert(s.name.as_str(), i).is_some() {
                return Err(SpecError::new(
                    f("name"),
                    format!("site {:?} is declared twice", s.name),
                ));
            }
        }
        let mut racks = BTreeMap::new();
        for (i, r) in self.rack.iter().enumerate() {
            let f = |x: &str| format!("rack[{i}].{x}");
            check_name(&f("name"), &r.name)?;
            if !sites.contains_key(r.site.as_str()) {
                return Err(SpecError::new(
                    f("site"),
                    format!("site {:?} is not declared", r.site),
                ));
            }
            check_f64(&f("power_cap_kw"), r.power_cap_kw, 0.0, 1_000_000.0)?;
            if let Some(d) = &r.scale_up_domain {
                check_name(&f("scale_up_domain"), d)?;
            }
            if let Some(m) = r.max_nodes {
                check_range(&f("max_nodes"), m, 1, 1_000_000)?;
            }
            if racks.insert(r.name.as_str(), i).is_some() {
                return Err(SpecError::new(
                    f("name"),
                    format!("rack {:?} is declared twice", r.name),
                ));
            }
        }
        let mut out = Vec::new();
        let mut names = BTreeSet::new();
        for (i, n) in self.node.iter().enumerate() {
            let f = |x: &str| format!("node[{i}].{x}");
            check_name(&f("name"), &n.name)?;
            let Some(&rack) = racks.get(n.rack.as_str()) else {
                return Err(SpecError::new(
                    f("rack"),
                    format!("rack {:?} is not declared", n.rack),
                ));
            };
            let site = sites[self.rack[rack].site.as_str()];
            n.validate_machine(&format!("node[{i}]"), catalog)?;
            let count = n.count.unwrap_or(1);
            check_range(&f("count"), count, 1, MAX_NODES)?;
            if out.len() as u64 + count > MAX_NODES {
                return Err(SpecError::new(
                    f("count"),
                    format!("more than {MAX_NODES} nodes in all"),
                ));
            }
            for k in 0..count {
                let name = match n.count {
                    Some(_) => run_node_name(&n.name, k, count),
                    None => n.name.clone(),
                };
                if !names.insert(name.clone()) {
                    return Err(SpecError::new(
                        f("name"),
                        format!("node {name:?} is declared twice"),
                    ));
                }
                out.push(ResolvedNode {
                    name,
                    site,
                    rack,
                    spec: n.clone(),
                });
            }
        }
        let mut tenants = BTreeSet::new();
        for (i, t) in self.tenant.iter().enumerate() {
            t.validate(catalog).map_err(|e| SpecError {
                field: format!("tenant[{i}].{}", e.field),
                message: e.message,
            })?;
            if !tenants.insert(t.name.as_str()) {
                return Err(SpecError::new(
                    format!("tenant[{i}].name"),
                    format!("tenant {:?} is declared twice", t.name),
                ));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"
[[site]]
name = "pohang"
region = "gyeongbuk"
jurisdiction = "KR"
power_budget_mw = 20.0
pue = 1.25

[[rack]]
name = "ph-r1"
site = "pohang"
power_cap_kw = 120.0

[[node]]
name = "ph-r1-n"
rack = "ph-r1"
count = 4
cpu_cores = 112
mem_mib = 2097152
accelerator = "H100"
accelerators = 8
state = "up"
"#;

    #[test]
    fn a_node_run_expands_to_named_nodes() {
        let c = ClusterSpec::from_toml(SMALL).unwrap();
        let nodes = c.resolve(&Catalog::builtin()).unwrap();
        let names: Vec<_> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            ["ph-r1-n-000", "ph-r1-n-001", "ph-r1-n-002", "ph-r1-n-003"]
        );
    }

    #[test]
    fn bad_clusters_name_the_field() {
        let cat = Catalog::builtin();
        let bad = |from: &str, to: &str| {
            ClusterSpec::from_toml(&SMALL.replace(from, to))
                .and_then(|c| c.resolve(&cat))
                .unwrap_err()
        };
        assert_eq!(
            bad("power_budget_mw = 20.0", "power_budget_mw = -1.0").field,
            "site[0].power_budget_mw"
        );
        assert_eq!(
            bad("site = \"pohang\"", "site = \"ulsan\"").field,
            "rack[0].site"
        );
        assert_eq!(
            bad("accelerator = \"H100\"", "accelerator = \"H999\"").field,
            "node[0].accelerator"
        );
        assert_eq!(
            bad("accelerators = 8", "accelerators = 1000000000000").field,
            "node[0].accelerators"
        );
        assert_eq!(bad("pue = 1.25", "pue = 0.5").field, "site[0].pue");
        assert_eq!(bad("cpu_cores = 112", "cpu_cores = -3").field, "cluster");
        assert_eq!(
            bad("state = \"up\"", "state = \"sideways\"").field,
            "cluster"
        );
    }
}
