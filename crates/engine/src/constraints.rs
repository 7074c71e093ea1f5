//! Node constraints of a job: which nodes it may use at all (label selectors, taints and
//! tolerations) and how many of its replicas one node, rack or site may hold (anti-affinity
//! and spread). Placement, preemption, reservations and admission all ask the same
//! functions, so none of them can place what another would refuse.

use std::collections::BTreeMap;

use gosok_model::{ACCELERATOR_TAINT, Constraints, SpecError, Taint, TopologyLevel};

use crate::cluster::{Cluster, Node};
use crate::explain::Blocker;
use crate::ids::{NodeIdx, RackIdx, SiteIdx, TenantIdx};

/// A job's node constraints, resolved; part of its shape (jobs of equal shape fit alike).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct NodeRules {
    /// Labels every node must carry with these values.
    pub node_labels: Vec<(String, String)>,
    pub tolerations: Vec<Taint>,
    pub max_per_node: Option<u32>,
    /// At most this many replicas per rack or per site.
    pub spread: Option<(TopologyLevel, u32)>,
    /// Replicas of the tenant's jobs with this group count together.
    pub group: Option<String>,
}

impl NodeRules {
    /// The rules of a spec's constraints, or None when it has none (the common case costs
    /// nothing in placement). The spec is validated.
    pub fn of(c: &Constraints) -> Result<Option<NodeRules>, SpecError> {
        let mut tolerations = Vec::with_capacity(c.tolerations.len());
        for (j, t) in c.tolerations.iter().enumerate() {
            tolerations.push(Taint::parse(&format!("constraints.tolerations[{j}]"), t)?);
        }
        tolerations.sort();
        tolerations.dedup();
        let rules = NodeRules {
            node_labels: c
                .node_labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            tolerations,
            max_per_node: c
                .max_replicas_per_node
                .map(|m| m.min(u32::MAX as u64) as u32),
            spread: c
                .spread
                .map(|s| (s.level, s.max_replicas.min(u32::MAX as u64) as u32)),
            group: c.group.clone(),
        };
        let none = rules.node_labels.is_empty()
            && rules.tolerations.is_empty()
            && rules.max_per_node.is_none()
            && rules.spread.is_none();
        Ok((!none).then_some(rules))
    }

    pub fn counts_replicas(&self) -> bool {
        self.max_per_node.is_some() || self.spread.is_some()
    }
}

/// " on nodes labelled pool=inference, tolerating dedicated, at most 1 per node": what the
/// rules add to a job's needs in an explanation.
pub fn describe(r: &NodeRules) -> String {
    let mut s = String::new();
    if !r.node_labels.is_empty() {
        let l: Vec<String> = r
            .node_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        s.push_str(&format!(" on nodes labelled {}", l.join(", ")));
    }
    if !r.tolerations.is_empty() {
        let t: Vec<String> = r.tolerations.iter().map(|t| t.to_string()).collect();
        s.push_str(&format!(", tolerating {}", t.join(", ")));
    }
    let of = r
        .group
        .as_ref()
        .map_or(String::new(), |g| format!(" of group {g}"));
    if let Some(m) = r.max_per_node {
        s.push_str(&format!(", at most {m}{of} per node"));
    }
    if let Some((level, m)) = r.spread {
        let unit = if level == TopologyLevel::Site {
            "site"
        } else {
            "rack"
        };
        s.push_str(&format!(", at most {m}{of} per {unit}"));
    }
    s
}

/// Whether `node` accepts a replica of a job with `rules` (None: no rules): its labels match
/// the selector and the replica tolerates each of its taints. `wants_accel`: the replica asks
/// for accelerators, so it tolerates `ACCELERATOR_TAINT` by itself.
pub fn node_admits(
    node: &Node,
    rules: Option<&NodeRules>,
    wants_accel: bool,
) -> Result<(), Blocker> {
    if !labels_match(node, rules) {
        return Err(Blocker::NodeLabels);
    }
    if !taints_tolerated(node, rules, wants_accel) {
        return Err(Blocker::Taints);
    }
    Ok(())
}

/// Whether the node has every label the selector asks for, with its value.
pub fn labels_match(node: &Node, rules: Option<&NodeRules>) -> bool {
    rules.is_none_or(|r| {
        r.node_labels
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v))
    })
}

/// Whether a replica tolerates each of the node's taints.
pub fn taints_tolerated(node: &Node, rules: Option<&NodeRules>, wants_accel: bool) -> bool {
    node.taints.iter().all(|t| {
        wants_accel && t.key == ACCELERATOR_TAINT
            || rules.is_some_and(|r| r.tolerations.iter().any(|x| x.tolerates(t)))
    })
}

/// Where the running replicas of one tenant's group are, per node, rack and site.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GroupUse {
    pub node: BTreeMap<NodeIdx, u32>,
    pub rack: BTreeMap<RackIdx, u32>,
    pub site: BTreeMap<SiteIdx, u32>,
}

impl GroupUse {
    /// Adds (or with `remove`, takes away) one replica on node `n`.
    pub fn count(&mut self, cluster: &Cluster, n: NodeIdx, remove: bool) {
        let node = &cluster.nodes[n as usize];
        fn bump<K: Ord>(m: &mut BTreeMap<K, u32>, k: K, remove: bool) {
            if remove {
                if let Some(v) = m.get_mut(&k) {
                    *v -= 1;
                    if *v == 0 {
                        m.remove(&k);
                    }
                }
            } else {
                *m.entry(k).or_default() += 1;
            }
        }
        bump(&mut self.node, n, remove);
        bump(&mut self.rack, node.rack, remove);
        bump(&mut self.site, node.site, remove);
    }

    pub fn is_empty(&self) -> bool {
        self.node.is_empty()
    }
}

/// Running replicas of every tenant's groups.
pub type GroupUses = BTreeMap<(TenantIdx, String), GroupUse>;

/// Whether one more replica on node `n` keeps within `max_per_node` and the spread cap,
/// counting the group's running replicas (`running`) and the replicas of this placement so
/// far (`placed`).
pub fn count_admits(
    cluster: &Cluster,
    n: NodeIdx,
    rules: &NodeRules,
    running: Option<&GroupUse>,
    placed: &[NodeIdx],
) -> Result<(), Blocker> {
    let node = &cluster.nodes[n as usize];
    if let Some(max) = rules.max_per_node {
        let before = running.and_then(|u| u.node.get(&n)).copied().unwrap_or(0)
            + placed.iter().filter(|&&p| p == n).count() as u32;
        if before >= max {
            return Err(Blocker::AntiAffinity);
        }
    }
    if let Some((level, max)) = rules.spread {
        // The rack (or site) of a node, as a number.
        let unit = |m: NodeIdx| {
            let x = &cluster.nodes[m as usize];
            if level == TopologyLevel::Site {
                x.site as u64
            } else {
                x.rack as u64
            }
        };
        let mine = unit(n);
        let running = running.map_or(0, |u| {
            let count = if level == TopologyLevel::Site {
                u.site.get(&node.site)
            } else {
                u.rack.get(&node.rack)
            };
            count.copied().unwrap_or(0)
        });
        let before = running + placed.iter().filter(|&&p| unit(p) == mine).count() as u32;
        if before >= max {
            return Err(Blocker::Spread);
        }
    }
    Ok(())
}

/// The spread unit of node `n` under `rules` (0 when the job does not spread).
pub fn spread_unit(cluster: &Cluster, n: NodeIdx, rules: Option<&NodeRules>) -> u64 {
    let node = &cluster.nodes[n as usize];
    match rules.and_then(|r| r.spread) {
        Some((TopologyLevel::Site, _)) => node.site as u64,
        Some(_) => node.rack as u64,
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerations_match_keys_and_values() {
        let t = |s: &str| Taint::parse("t", s).unwrap();
        assert!(t("dedicated").tolerates(&t("dedicated=inference")));
        assert!(t("dedicated=inference").tolerates(&t("dedicated=inference")));
        assert!(!t("dedicated=training").tolerates(&t("dedicated=inference")));
        assert!(!t("other").tolerates(&t("dedicated")));
        assert!(Taint::parse("t", "a b").is_err());
        assert!(Taint::parse("t", "k=v w").is_err());
    }
}
