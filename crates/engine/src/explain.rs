//! Why a pending job waits, in words a tenant understands.

use serde::{Deserialize, Serialize};

/// The last reason the engine found for a pending job; kept small because there is one per
/// pending job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WaitReason {
    /// No scheduling pass has looked at it yet.
    Queued,
    /// Its tenant would exceed its maximum share of the highway.
    ShareCap,
    /// Its tenant's quota plus borrowing limit is used up for every acceptable model.
    Quota,
    /// It is not preemptible, so it may not borrow, and the guarantee is used up.
    GuaranteeUsed,
    /// It fits the highway only on nodes that are down or draining right now.
    NodesUnavailable,
    /// Not enough free accelerators (or CPU or memory) where it may run.
    Resources { blocker: Blocker },
    /// It holds the reservation: it starts at `start_s` when running work ends as planned.
    Reserved { start_s: u64 },
}

/// What stopped most of the nodes the search looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Blocker {
    Accelerators,
    Cpu,
    Memory,
    RackPower,
    SitePower,
    /// The free capacity is held for an earlier job's reservation.
    Reservation,
    /// Enough is free, but not together as the topology constraint requires.
    Topology,
    /// The free nodes lack the labels `constraints.node_labels` asks for.
    NodeLabels,
    /// The free nodes carry taints the job does not tolerate.
    Taints,
    /// The free nodes already hold `constraints.max_replicas_per_node` of its replicas.
    AntiAffinity,
    /// The free racks or sites already hold `constraints.spread.max_replicas` of them.
    Spread,
}

impl Blocker {
    pub fn describe(self) -> &'static str {
        match self {
            Blocker::Accelerators => "not enough free accelerators",
            Blocker::Cpu => "not enough free CPU",
            Blocker::Memory => "not enough free memory",
            Blocker::RackPower => "rack power cap",
            Blocker::SitePower => "site power budget",
            Blocker::Reservation => "free capacity is reserved for an earlier job",
            Blocker::Topology => {
                "free capacity is not together as the topology constraint requires"
            }
            Blocker::NodeLabels => {
                "constraints.node_labels: no node with free capacity has the labels asked for"
            }
            Blocker::Taints => {
                "node taints: the nodes with free capacity carry taints the job does not tolerate (constraints.tolerations)"
            }
            Blocker::AntiAffinity => {
                "constraints.max_replicas_per_node: the nodes with free capacity already hold as many of its replicas as allowed"
            }
            Blocker::Spread => {
                "constraints.spread: the racks or sites with free capacity already hold as many of its replicas as allowed"
            }
        }
    }
}

/// A human-readable duration: "2h10m", "45s".
pub fn human_duration(s: u64) -> String {
    let (d, h, m) = (s / 86400, s % 86400 / 3600, s % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h{m:02}m"),
        (d, h, _) => format!("{d}d{h}h"),
    }
}

impl WaitReason {
    pub fn describe(self, now_s: u64) -> String {
        match self {
            WaitReason::Queued => "not yet considered by a scheduling pass".into(),
            WaitReason::ShareCap => "tenant at its share cap".into(),
            WaitReason::Quota => "tenant at its quota and borrowing limit".into(),
            WaitReason::GuaranteeUsed => {
                "tenant's guarantee is in use and a non-preemptible job may not borrow".into()
            }
            WaitReason::NodesUnavailable => {
                "fits only on nodes that are down or draining right now".into()
            }
            WaitReason::Resources { blocker } => blocker.describe().into(),
            WaitReason::Reserved { start_s } => {
                format!(
                    "reserved start in {}",
                    human_duration(start_s.saturating_sub(now_s))
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_person_wrote_them() {
        assert_eq!(human_duration(7800), "2h10m");
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(90_000), "1d1h");
    }
}
