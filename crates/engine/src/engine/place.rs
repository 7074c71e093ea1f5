//! Placement as the pass uses it: the placer and its request for a job, the demand profile
//! the scorers read, and tentative placements that preemption undoes.

use super::*;

pub(super) fn new_placer<'a>(
    scorers: &'a [(Box<dyn Scorer>, f64)],
    profile: &'a Profile,
    cfg: &EngineConfig,
) -> Placer<'a> {
    Placer {
        scorers,
        profile,
        score_candidates: cfg.score_candidates,
        seed: cfg.seed,
        visited: Default::default(),
    }
}

pub(super) fn request_for<'a>(
    job: &Job,
    shapes: &'a [Shape],
    tenants: &'a [Tenant],
    uses: &'a GroupUses,
    bound: bool,
) -> Request<'a> {
    let shape = &shapes[job.shape as usize];
    Request {
        job: job.id,
        shape,
        tenant: &tenants[job.tenant as usize],
        preemptible: job.preemptible,
        bound_by_reservation: bound,
        group_use: group_use_of(uses, job.tenant, shape),
    }
}

/// Where the running replicas of the group of a job of `tenant` and `shape` are.
pub(super) fn group_use_of<'a>(
    uses: &'a GroupUses,
    tenant: TenantIdx,
    shape: &Shape,
) -> Option<&'a GroupUse> {
    let group = shape.rules.as_ref()?.group.as_ref()?;
    uses.get(&(tenant, group.clone()))
}

impl Engine {
    pub(super) fn refresh_profile(&mut self) {
        if !self.profile_dirty {
            return;
        }
        self.profile_dirty = false;
        self.demand_totals.refresh(&self.cluster, &mut self.profile);
    }

    /// The bucket-count upper bound of a placement: cheap, and never says no when the job
    /// would fit.
    pub(super) fn could_fit_now(&self, id: JobId) -> bool {
        let placer = new_placer(&self.scorers, &self.profile, &self.cfg);
        placer.could_fit(&self.cluster, &self.shapes[self.jobs[&id].shape as usize])
    }

    /// Places the job on the cluster as it is now (taking the holds), honouring the
    /// reservation unless the job holds it or ends before it begins.
    pub(super) fn place_now(
        &mut self,
        id: JobId,
    ) -> Result<(Vec<Placed>, IdMap<NodeIdx, Slack>), Blocker> {
        self.place_as(id, self.bound_by_reservation(id))
    }

    /// Places the job, held off the reservation's capacity if `bound`.
    pub(super) fn place_as(
        &mut self,
        id: JobId,
        bound: bool,
    ) -> Result<(Vec<Placed>, IdMap<NodeIdx, Slack>), Blocker> {
        let job = &self.jobs[&id];
        let placer = new_placer(&self.scorers, &self.profile, &self.cfg);
        let request = request_for(job, &self.shapes, &self.tenants, &self.group_uses, bound);
        let result = placer.place(&mut self.cluster, &request, Some(&self.reservation));
        self.stats.placements += 1;
        self.stats.nodes_visited += placer.visited.get();
        result
    }

    /// Starts a placed job, charging the reservation slack it used.
    pub(super) fn start_placed(
        &mut self,
        id: JobId,
        placed: Vec<Placed>,
        slack_used: IdMap<NodeIdx, Slack>,
        out: &mut Vec<Decision>,
    ) {
        for (n, used) in slack_used {
            if let Some(s) = self.reservation.slack.get_mut(&n) {
                s.accel_milli -= used.accel_milli;
                s.cpu_milli -= used.cpu_milli;
                s.mem_mib -= used.mem_mib;
            }
        }
        self.start(id, placed, out);
    }
}
