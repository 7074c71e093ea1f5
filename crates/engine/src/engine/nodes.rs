//! Node and power events: a node added, drained, down or back, and the load shed when a
//! site's power budget or a rack's cap falls below what runs there.

use super::*;

impl Engine {
    pub(super) fn add_node(&mut self, node: gosok_model::NodeSpec) -> Result<(), EngineError> {
        gosok_model::error::check_name("node.name", &node.name)?;
        if node.count.is_some() {
            return Err(EngineError::Invalid {
                field: "node.count".into(),
                message: "a node added in place is one node: give its final name, no count".into(),
            });
        }
        if self.cluster.node_by_name.contains_key(node.name.as_str()) {
            return Err(EngineError::Invalid {
                field: "node.name".into(),
                message: format!("node {:?} exists", node.name),
            });
        }
        node.validate_machine("node", &self.catalog)?;
        let &rack = self
            .cluster
            .rack_by_name
            .get(&node.rack)
            .ok_or_else(|| EngineError::UnknownRack(node.rack.clone()))?;
        self.cluster.add_node(
            &self.catalog,
            &node.name,
            rack,
            &node,
            self.cfg.accelerator_utilisation,
        );
        // Model pressure is relative to the capacity of each model.
        self.profile_dirty = true;
        Ok(())
    }

    pub(super) fn node_state(&mut self, n: NodeIdx, state: NodeState, out: &mut Vec<Decision>) {
        self.cluster.set_state(n, state);
        if state != NodeState::Down {
            return;
        }
        let mut lost: Vec<JobId> = self.cluster.nodes[n as usize]
            .tasks
            .iter()
            .map(|t| t.job)
            .collect();
        lost.sort_unstable();
        lost.dedup();
        let node = self.cluster.nodes[n as usize].name.clone();
        for id in lost {
            let Some(job) = self.jobs.get_mut(&id) else {
                continue;
            };
            job.retries += 1;
            let (retry, max, attempt) = (job.retries, job.max_retries, job.attempt);
            if retry > max {
                self.end_running(
                    id,
                    JobState::Failed,
                    format!("node {node} went down and the job has used its {max} retries"),
                    true,
                    out,
                );
            } else {
                self.unrun(id, JobState::Pending);
                out.push(Decision::Requeue {
                    job: id,
                    attempt,
                    reason: format!("node {node} went down"),
                    retry,
                });
            }
        }
    }

    /// Sheds preemptible work, lowest priority and least work lost first, until the site (or
    /// rack) is within its power budget again.
    pub(super) fn shed(&mut self, site: Option<u16>, rack: Option<u32>, out: &mut Vec<Decision>) {
        let over = |c: &Cluster| match (site, rack) {
            (Some(s), _) => c.site_facility_draw_w(s) > c.sites[s as usize].budget_w,
            (_, Some(r)) => c.racks[r as usize].it_w > c.racks[r as usize].cap_w,
            _ => false,
        };
        let draw = |c: &Cluster| match (site, rack) {
            (Some(s), _) => c.site_facility_draw_w(s),
            (_, Some(r)) => c.racks[r as usize].it_w,
            _ => 0,
        };
        if !over(&self.cluster) {
            return;
        }
        let before = draw(&self.cluster);
        let mut victims: Vec<JobId> = self
            .cluster
            .nodes
            .iter()
            .filter(|n| site.is_none_or(|s| n.site == s) && rack.is_none_or(|r| n.rack == r))
            .flat_map(|n| n.tasks.iter().map(|t| t.job))
            .collect();
        victims.sort_unstable();
        victims.dedup();
        victims.retain(|id| self.jobs[id].preemptible);
        victims.sort_by_key(|id| {
            let j = &self.jobs[id];
            (j.priority, Reverse(j.started_s), *id)
        });
        let name = match (site, rack) {
            (Some(s), _) => self.cluster.sites[s as usize].name.to_string(),
            (_, Some(r)) => self.cluster.racks[r as usize].name.to_string(),
            _ => String::new(),
        };
        let mut shed = Vec::new();
        for id in victims {
            if !over(&self.cluster) {
                break;
            }
            self.preempt(id, PreemptReason::Curtailment { site: name.clone() }, out);
            shed.push(id);
        }
        let budget_w = match (site, rack) {
            (Some(s), _) => self.cluster.sites[s as usize].budget_w,
            (_, Some(r)) => self.cluster.racks[r as usize].cap_w,
            _ => 0,
        };
        out.push(Decision::Shed {
            site: name,
            budget_w,
            draw_before_w: before,
            draw_after_w: draw(&self.cluster),
            jobs: shed,
            still_over: over(&self.cluster),
        });
    }
}
