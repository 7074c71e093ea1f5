//! Lifecycle of a job's tasks: start, finish, fail, time out, preempt, cancel and requeue,
//! with the accounting each change carries (allocations, fair share, groups, limits).

use super::*;

impl Engine {
    /// The tenant and group whose replicas a job's count with (`constraints.group`).
    fn group_key(&self, id: JobId) -> Option<(TenantIdx, String)> {
        let job = self.jobs.get(&id)?;
        let group = self.shapes[job.shape as usize]
            .rules
            .as_ref()?
            .group
            .clone()?;
        Some((job.tenant, group))
    }

    /// Counts a job's live tasks into (or, with `remove`, out of) its group's use.
    fn count_group(&mut self, id: JobId, remove: bool) {
        let Some(key) = self.group_key(id) else {
            return;
        };
        let uses = self.group_uses.entry(key.clone()).or_default();
        for t in self.jobs[&id]
            .tasks
            .iter()
            .filter(|t| t.exit_code.is_none())
        {
            uses.count(&self.cluster, t.hold.node, remove);
        }
        if uses.is_empty() {
            self.group_uses.remove(&key);
        }
    }

    pub(super) fn charge(&mut self, job: JobId, give_back: bool) {
        self.count_group(job, give_back);
        let Some(j) = self.jobs.get(&job) else { return };
        let t = j.tenant as usize;
        for (i, task) in j.tasks.iter().enumerate() {
            if task.exit_code.is_some() {
                continue;
            }
            let r = TaskRef {
                job,
                task: i as u32,
            };
            let milli = task.hold.devices.len() as u64 * task.hold.milli as u64;
            if give_back {
                self.cluster.give(&task.hold, r);
                self.tenants[t].refund(task.model, milli, task.hold.cpu_milli, task.hold.mem_mib);
            } else {
                self.cluster.take(&task.hold, r);
                self.cluster
                    .set_task_ends(task.hold.node, r, j.ends_s(self.cfg.default_runtime_s));
                self.tenants[t].charge(task.model, milli, task.hold.cpu_milli, task.hold.mem_mib);
            }
        }
    }

    pub(super) fn start(&mut self, id: JobId, placed: Vec<Placed>, out: &mut Vec<Decision>) {
        let now = self.now_s;
        self.las_retry.remove(&id);
        let las = self.las();
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        self.queues.remove(job.tenant, job.class, job.pending());
        job.state = JobState::Running;
        job.attempt += 1;
        job.started_s = now;
        let t = job.tenant as usize;
        let mut tasks = Vec::with_capacity(placed.len());
        let mut decisions = Vec::with_capacity(placed.len());
        for p in placed {
            let milli = p.hold.devices.len() as u64 * p.hold.milli as u64;
            self.tenants[t].charge(p.model, milli, p.hold.cpu_milli, p.hold.mem_mib);
            decisions.push(TaskPlacement {
                task: p.task,
                group: p.group,
                node: self.cluster.nodes[p.hold.node as usize].name.clone(),
                model: p
                    .model
                    .map(|m| self.cluster.model_names[m as usize].clone()),
                devices: p.hold.devices.clone(),
                milli: p.hold.milli,
            });
            tasks.push(Task {
                group: p.group,
                model: p.model,
                hold: p.hold,
                exit_code: None,
            });
        }
        let ends_s = job.ends_s(self.cfg.default_runtime_s);
        for (i, t) in tasks.iter().enumerate() {
            self.cluster.set_task_ends(
                t.hold.node,
                TaskRef {
                    job: id,
                    task: i as u32,
                },
                ends_s,
            );
        }
        job.tasks = tasks;
        if let Some(l) = job.limit_s {
            self.limits.insert((now.saturating_add(l), id));
        }
        self.count_group(id, false);
        let job = &self.jobs[&id];
        if job.preemptible {
            self.preemptible_running.insert((job.priority, id));
            if let Some(las) = las {
                self.las_ready.extend(las_ready_key(&las, job));
            }
        }
        if self.reservation.job == Some(id) {
            self.reservation = Reservation::default();
            self.hold.released();
        }
        self.stats.started += 1;
        out.push(Decision::Start {
            job: id,
            attempt: job.attempt,
            tasks: decisions,
        });
    }

    /// Takes a running job off its nodes, leaving it in `state`.
    pub(super) fn unrun(&mut self, id: JobId, state: JobState) {
        self.charge(id, true);
        let now = self.now_s;
        let las = self.las();
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        if let Some(l) = job.limit_s {
            self.limits.remove(&(job.started_s.saturating_add(l), id));
        }
        let was_running = job.state == JobState::Running;
        if job.preemptible && was_running {
            self.preemptible_running.remove(&(job.priority, id));
            if let Some(k) = las.and_then(|las| las_ready_key(&las, job)) {
                self.las_ready.remove(&k);
            }
        }
        if was_running {
            job.attained_milli_s = job.attained_now_milli_s(now);
        }
        job.tasks.clear();
        job.run_s += now.saturating_sub(job.started_s);
        job.state = state;
        if state.is_terminal() && was_running {
            self.learn_size(id);
        }
        if state == JobState::Pending {
            let order_s = self.order_key(&self.jobs[&id]);
            let job = self.jobs.get_mut(&id).expect("taken off its nodes above");
            job.order_s = order_s;
            self.queues.push(job.tenant, job.class, job.pending());
            // Down the ladder: promoted back to its first level after waiting a multiple
            // of the time it has run.
            if let Some(las) = las
                && las.promote_after_runs > 0
                && order::down_the_ladder(&las, job)
            {
                let at = now
                    .saturating_add(job.run_s.saturating_mul(las.promote_after_runs as u64))
                    .max(1);
                self.promotions.insert((at, id, job.attempt));
            }
        }
    }

    pub(super) fn end_running(
        &mut self,
        id: JobId,
        state: JobState,
        reason: String,
        stop: bool,
        out: &mut Vec<Decision>,
    ) {
        let attempt = self.jobs.get(&id).map_or(0, |j| j.attempt);
        self.unrun(id, state);
        if stop {
            out.push(Decision::Stop {
                job: id,
                attempt,
                reason: reason.clone(),
            });
        }
        out.push(Decision::Finish {
            job: id,
            state,
            reason,
        });
    }

    pub(super) fn preempt(&mut self, id: JobId, reason: PreemptReason, out: &mut Vec<Decision>) {
        let attempt = self.jobs.get(&id).map_or(0, |j| j.attempt);
        let overhead = match self.cfg.queue_policy {
            QueuePolicy::ShortestRemainingFirst { overhead_s } => Some(overhead_s),
            QueuePolicy::FairShareLas(las) => Some(las.overhead_s),
            _ => None,
        };
        if let Some(overhead_s) = overhead
            && let Some(j) = self.jobs.get_mut(&id)
        {
            // Checkpoint and restart cost, by job size (1, up to 8, more accelerators).
            let accel = j.accel_milli().div_ceil(1000);
            j.overhead_s += overhead_s[if accel <= 1 {
                0
            } else if accel <= 8 {
                1
            } else {
                2
            }];
        }
        self.unrun(id, JobState::Pending);
        if let Some(j) = self.jobs.get_mut(&id) {
            j.preemptions += 1;
        }
        self.stats.preempted += 1;
        out.push(Decision::Preempt {
            job: id,
            attempt,
            reason,
        });
    }

    pub(super) fn cancel(&mut self, id: JobId, out: &mut Vec<Decision>) -> Result<(), EngineError> {
        let job = self.jobs.get(&id).ok_or(EngineError::UnknownJob(id))?;
        if job.state == JobState::Pending {
            self.las_retry.remove(&id);
        }
        let job = self.jobs.get_mut(&id).ok_or(EngineError::UnknownJob(id))?;
        match job.state {
            JobState::Pending => {
                self.queues.remove(job.tenant, job.class, job.pending());
                job.state = JobState::Cancelled;
                if self.reservation.job == Some(id) {
                    self.drop_reservation();
                }
                out.push(Decision::Finish {
                    job: id,
                    state: JobState::Cancelled,
                    reason: "cancelled".into(),
                });
            }
            JobState::Running => {
                self.end_running(id, JobState::Cancelled, "cancelled".into(), true, out)
            }
            JobState::Held => {
                // Not queued while held: nothing else to undo.
                job.state = JobState::Cancelled;
                out.push(Decision::Finish {
                    job: id,
                    state: JobState::Cancelled,
                    reason: "cancelled".into(),
                });
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) fn task_ended(
        &mut self,
        id: JobId,
        attempt: u32,
        task: u32,
        exit_code: i32,
        out: &mut Vec<Decision>,
    ) -> Result<(), EngineError> {
        let job = self.jobs.get_mut(&id).ok_or(EngineError::UnknownJob(id))?;
        if attempt != job.attempt {
            return Err(EngineError::StaleAttempt {
                job: id,
                got: attempt,
                current: job.attempt,
            });
        }
        if job.state != JobState::Running {
            return Err(EngineError::NotRunning(id));
        }
        let t = job.tenant as usize;
        let tk = job
            .tasks
            .get_mut(task as usize)
            .ok_or(EngineError::UnknownTask { job: id, task })?;
        if tk.exit_code.is_some() {
            return Ok(());
        }
        if exit_code != 0 && job.fail_fast {
            // A gang fails as a whole when one member fails.
            self.end_running(
                id,
                JobState::Failed,
                format!("task {task} exited with status {exit_code}"),
                true,
                out,
            );
            return Ok(());
        }
        // The task's share is released now; the job ends when the last task does.
        let hold = tk.hold.clone();
        let model = tk.model;
        self.cluster.give(&hold, TaskRef { job: id, task });
        if let Some(group) = self.shapes[job.shape as usize]
            .rules
            .as_ref()
            .and_then(|r| r.group.clone())
        {
            let key = (job.tenant, group);
            let uses = self.group_uses.entry(key.clone()).or_default();
            uses.count(&self.cluster, hold.node, true);
            if uses.is_empty() {
                self.group_uses.remove(&key);
            }
        }
        self.tenants[t].refund(
            model,
            hold.devices.len() as u64 * hold.milli as u64,
            hold.cpu_milli,
            hold.mem_mib,
        );
        tk.exit_code = Some(exit_code);
        if job.tasks.iter().all(|t| t.exit_code.is_some()) {
            let failed: Vec<String> = job
                .tasks
                .iter()
                .enumerate()
                .filter(|(_, t)| t.exit_code != Some(0))
                .map(|(i, t)| format!("task {i} exited with status {}", t.exit_code.unwrap_or(0)))
                .collect();
            let (state, reason) = if failed.is_empty() {
                (JobState::Succeeded, "all tasks exited 0".to_string())
            } else {
                (JobState::Failed, failed.join("; "))
            };
            self.end_running(id, state, reason, false, out);
        }
        Ok(())
    }
}
