//! Idle passes, skipped. A pass reads the engine's state and the events since the last pass;
//! when it decided nothing and left everything it reads as it found it, the next pass would
//! meet the same state and do the same nothing — until an event arrives. So such a pass
//! leaves the engine quiescent, and passes until the next event return at once instead of
//! walking every class-queue head again: on a full highway an idle pass costs nanoseconds,
//! not milliseconds, and decides exactly what a full pass would (nothing).
//!
//! What a pass may change without a decision — the reservation (planned, replanned, dropped),
//! its bookkeeping (whose turn it is, who waits) and the attained-service retry times — is
//! compared before and after. A preemption search that finds no victims takes them off their
//! nodes and puts them back: the counts it touches are integers, restored exactly; only the
//! order of a node's task list changes, which nothing decides by (every reader sorts or
//! sums). What else a pass writes (wait reasons for explanations, the pass's counters, the
//! memo of static fits, the scorers' demand profile, refreshed once at its start) no later
//! pass decides by differently. The property tests hold a skipped pass to a full one.

use super::*;

/// What a pass may change without deciding anything.
#[derive(PartialEq)]
pub(super) struct PassInputs {
    reservation: Reservation,
    planned_s: u64,
    epoch: u64,
    reason: WaitReason,
    hold: Hold,
    las_retry: BTreeMap<JobId, u64>,
}

impl Engine {
    pub(super) fn pass_inputs(&self) -> PassInputs {
        PassInputs {
            reservation: self.reservation.clone(),
            planned_s: self.reservation_planned_s,
            epoch: self.reservation_epoch,
            reason: self.reservation_reason,
            hold: self.hold.clone(),
            las_retry: self.las_retry.clone(),
        }
    }

    /// After a pass: whether the next one, with no event between, would be the same.
    pub(super) fn settle(&mut self, before: &PassInputs, decided: bool) {
        self.quiescent = !decided && *before == self.pass_inputs();
    }
}
