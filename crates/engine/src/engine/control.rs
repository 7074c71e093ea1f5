//! Job control by users and by the controller: hold a pending job (not eligible until
//! released), release it, and requeue a running one. The controller gates dependencies and
//! job arrays with the same hold, so what waits on them is never considered by a pass.

use super::*;

impl Engine {
    pub(super) fn hold(&mut self, id: JobId) -> Result<(), EngineError> {
        let job = self.jobs.get_mut(&id).ok_or(EngineError::UnknownJob(id))?;
        match job.state {
            JobState::Held => return Ok(()),
            JobState::Pending => {}
            s => {
                return Err(EngineError::WrongState {
                    job: id,
                    state: state_word(s),
                    message: "only a pending job can be held",
                });
            }
        }
        self.queues.remove(job.tenant, job.class, job.pending());
        job.state = JobState::Held;
        self.las_retry.remove(&id);
        if self.reservation.job == Some(id) {
            self.reservation = Reservation::default();
        }
        Ok(())
    }

    pub(super) fn release(&mut self, id: JobId) -> Result<(), EngineError> {
        let job = self.jobs.get_mut(&id).ok_or(EngineError::UnknownJob(id))?;
        match job.state {
            JobState::Pending => return Ok(()),
            JobState::Held => {}
            s => {
                return Err(EngineError::WrongState {
                    job: id,
                    state: state_word(s),
                    message: "only a held job can be released",
                });
            }
        }
        job.state = JobState::Pending;
        let order_s = self.order_key(&self.jobs[&id]);
        let job = self.jobs.get_mut(&id).expect("found above");
        job.order_s = order_s;
        self.queues.push(job.tenant, job.class, job.pending());
        Ok(())
    }

    /// A running job back to the queue; its next start is a new attempt. A user's requeue
    /// does not count against the job's retries (those are for failures).
    pub(super) fn requeue_running(
        &mut self,
        id: JobId,
        reason: String,
        out: &mut Vec<Decision>,
    ) -> Result<(), EngineError> {
        let job = self.jobs.get(&id).ok_or(EngineError::UnknownJob(id))?;
        if job.state != JobState::Running {
            return Err(EngineError::WrongState {
                job: id,
                state: state_word(job.state),
                message: "only a running job can be requeued",
            });
        }
        let (attempt, retry) = (job.attempt, job.retries);
        self.unrun(id, JobState::Pending);
        out.push(Decision::Requeue {
            job: id,
            attempt,
            reason,
            retry,
        });
        Ok(())
    }
}

fn state_word(s: JobState) -> &'static str {
    match s {
        JobState::Pending => "pending",
        JobState::Running => "running",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
        JobState::Rejected => "rejected",
        JobState::Held => "held",
        JobState::TimedOut => "timed out",
    }
}
