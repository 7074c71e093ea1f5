//! Reservation: the blocked job whose turn it is keeps a planned start on planned nodes,
//! and later jobs may only use that capacity if they end before it begins.

use super::*;

/// How long a reservation's plan is trusted before it is recomputed.
const RESERVATION_REFRESH_S: u64 = 300;

impl Engine {
    /// No job holds the reservation any more.
    pub(super) fn drop_reservation(&mut self) {
        self.reservation = Reservation::default();
        self.hold.released();
    }

    /// Whether the job must leave the reservation's capacity alone: it is not the holder and
    /// would still run when the reservation begins.
    pub(super) fn bound_by_reservation(&self, id: JobId) -> bool {
        let res = &self.reservation;
        let Some(holder) = res.job else {
            return false;
        };
        let job = &self.jobs[&id];
        let fits_before = job
            .runtime_bound_s()
            .is_some_and(|b| self.now_s.saturating_add(b) <= res.start_s);
        holder != id && !fits_before && !self.outranks(id, holder)
    }

    /// Whether `id` may use the reservation's capacity although the holder waits for it: a
    /// job within its tenant's guarantee against a holder whose tenant is borrowing (the
    /// guarantee is a promise made first). A higher priority class does not outrank a held
    /// reservation: it waits for the holder to start (`docs/SCHEDULING.md`).
    fn outranks(&self, id: JobId, holder: JobId) -> bool {
        let (job, Some(h)) = (&self.jobs[&id], self.jobs.get(&holder)) else {
            return true;
        };
        let ht = &self.tenants[h.tenant as usize];
        let borrowing =
            ht.quotas.is_empty() || ht.quotas.iter().any(|q| q.used_milli > q.guaranteed_milli);
        h.tenant != job.tenant && borrowing && self.reclaim_models(id).is_some()
    }

    /// Plans (or keeps) the reservation for `id`, which waits for `blocker`; returns the
    /// reason it waits with, or None if it cannot be planned (nodes down).
    ///
    /// When the capacity profile says the job could start now, what it waits for is power (or
    /// a placement the profile does not see): it keeps the nodes and the power it needs from
    /// later jobs and starts as soon as the power is there.
    pub(super) fn reserve(
        &mut self,
        id: JobId,
        allowed: ModelSet,
        blocker: Blocker,
    ) -> Option<WaitReason> {
        let r = &self.reservation;
        let fresh = r.job == Some(id)
            && self.reservation_epoch == self.cluster.epoch
            && self.now_s < self.reservation_planned_s + RESERVATION_REFRESH_S
            && (self.now_s < r.start_s || r.holds_power());
        if fresh {
            return Some(self.reservation_reason);
        }
        let shape = &self.shapes[self.jobs[&id].shape as usize];
        // Should a new plan of the same holder start later, why: computed before it replaces
        // the old one.
        let replan = (r.job == Some(id)).then(|| self.slip_cause());
        let mut input = PlanInput {
            cluster: &self.cluster,
            now_s: self.now_s,
            grace_s: self.cfg.overrun_grace_s,
            seed: self.cfg.seed,
            group_use: group_use_of(&self.group_uses, self.jobs[&id].tenant, shape),
            by_limits: replan.is_some() && self.hold.slip.is_some(),
        };
        self.stats.reservation_plans += 1;
        let Some(mut plan) = reservation::plan(&input, id, shape, allowed) else {
            self.drop_reservation();
            return None;
        };
        // Estimates proved wrong for this holder: from now on it is planned by the limits of
        // what runs, a bound that holds, so that its start moves later at most once more
        // (and then only past a limit). Planned by estimates again, jobs admitted into the
        // slack of each new plan could move it later without end.
        if replan.is_some() && !input.by_limits && plan.start_s > self.hold.start_s {
            input.by_limits = true;
            self.stats.reservation_plans += 1;
            let Some(p) = reservation::plan(&input, id, shape, allowed) else {
                self.drop_reservation();
                return None;
            };
            plan = p;
        }
        let reason = if plan.start_s <= self.now_s {
            plan.start_s = self.now_s;
            WaitReason::Resources { blocker }
        } else {
            // Power is checked when the job starts; holding it for hours ahead would idle
            // the site.
            plan.rack_w.clear();
            plan.site_w.clear();
            WaitReason::Reserved {
                start_s: plan.start_s,
            }
        };
        plan.job = Some(id);
        match replan {
            Some(cause) => self.hold.replanned(plan.start_s, cause),
            None => {
                let t = self.jobs[&id].tenant;
                self.hold
                    .granted(t, self.tenants[t as usize].weight, plan.start_s)
            }
        }
        self.reservation = plan;
        self.reservation_planned_s = self.now_s;
        self.reservation_epoch = self.cluster.epoch;
        self.reservation_reason = reason;
        Some(reason)
    }

    /// Why the holder's start would move later on a new plan: a job on the reserved nodes
    /// still runs past the end the last plan gave it, else the nodes changed.
    fn slip_cause(&self) -> SlipCause {
        let planned = self.reservation_planned_s;
        let grace = self.cfg.overrun_grace_s;
        let mut nodes: Vec<NodeIdx> = self.reservation.slack.keys().copied().collect();
        nodes.sort_unstable();
        for n in nodes {
            let node = &self.cluster.nodes[n as usize];
            if let Some(t) = node
                .tasks
                .iter()
                .filter(|t| t.planned_end_s(planned, grace) <= self.now_s)
                .min_by_key(|t| t.job)
            {
                return SlipCause::Overran { job: t.job };
            }
        }
        if self.reservation_epoch != self.cluster.epoch {
            SlipCause::NodesChanged
        } else {
            SlipCause::Unexplained
        }
    }
}
