//! What makes the reservation a promise (`docs/SCHEDULING.md`, "No starving gangs").
//!
//! - **Turns.** When no job holds the reservation, the next one goes to a blocked job of the
//!   tenant whose turn is due among the tenants with blocked work (under fair share; the
//!   classic policies keep one global line). Turns are weighted as stride scheduling does
//!   (Waldspurger & Weihl, 1995): each reservation a tenant takes moves its pass on by
//!   1 / weight, the lowest pass goes next, and a tenant that had none waiting starts from
//!   the pass of the last turn (it banks no credit). So while a tenant of weight w waits,
//!   another of weight v takes at most ⌊v / w⌋ + 1 turns.
//! - **Slips.** The holder's start moves later only when the plan is redone and the new one
//!   is later; the cause is kept for the explanation: a job the holder waits on ran past the
//!   end it was planned to have (its estimate, then its limit), or the nodes changed.

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::{JobId, TenantIdx};

/// Why a reserved start moved later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SlipCause {
    /// A job running on the reserved nodes ran past its planned end (estimate, then limit).
    Overran { job: JobId },
    /// Nodes went down, were drained or were added since the plan.
    NodesChanged,
    /// Neither: a new plan found no start as early (the engine's tests treat it as a bug).
    Unexplained,
}

/// The holder's first reserved start and, if it moved later since, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Slip {
    pub first_start_s: u64,
    pub cause: SlipCause,
}

impl Slip {
    pub fn describe(&self, start_s: u64) -> String {
        let why = match self.cause {
            SlipCause::Overran { job } => format!("job {job} ran past its planned end"),
            SlipCause::NodesChanged => "the nodes it waits for changed".to_string(),
            SlipCause::Unexplained => "a new plan found no earlier start".to_string(),
        };
        format!(
            "moved {} later than first planned: {why}",
            crate::explain::human_duration(start_s.saturating_sub(self.first_start_s))
        )
    }
}

/// How far one turn moves a tenant of `weight` on: 1 / weight, in millionths.
fn stride(weight: f64) -> u64 {
    if weight > 0.0 {
        (1e6 / weight).round().clamp(1.0, 1e12) as u64
    } else {
        1_000_000_000_000
    }
}

/// The reservation's bookkeeping across passes; part of the engine's state (snapshots).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Hold {
    /// The holder's reserved start as last planned (0: no holder).
    pub start_s: u64,
    pub slip: Option<Slip>,
    /// The pass of the last turn taken (stride scheduling's global virtual time).
    vtime: u64,
    /// Per tenant, the pass of its next turn.
    turns: BTreeMap<TenantIdx, u64>,
    /// Tenants with a job that was blocked for want of capacity at the last pass and did not
    /// hold the reservation.
    #[serde(with = "crate::snapshot::sorted_set")]
    waiting: BTreeSet<TenantIdx>,
}

impl Hold {
    /// Tenant `t`'s pass: where its next turn stands, never before the last turn taken.
    fn turn(&self, t: TenantIdx) -> u64 {
        self.turns.get(&t).copied().unwrap_or(0).max(self.vtime)
    }

    /// Whether a blocked job of tenant `t` may take a free reservation now: no other tenant
    /// waiting has an earlier pass.
    pub fn due(&self, t: TenantIdx) -> bool {
        let mine = self.turn(t);
        self.waiting.iter().all(|&u| u == t || self.turn(u) >= mine)
    }

    /// Of the pass's blocked candidates (first blocked job per tenant, in line order), the
    /// index of the one whose tenant's pass is earliest; the first in line among equals.
    pub fn pick(&self, candidates: &[TenantIdx]) -> Option<usize> {
        (0..candidates.len()).min_by_key(|&i| (self.turn(candidates[i]), i))
    }

    /// A new holder of tenant `t`, of fair-share weight `weight`, was given `start_s`.
    pub fn granted(&mut self, t: TenantIdx, weight: f64, start_s: u64) {
        let pass = self.turn(t);
        self.vtime = pass;
        self.turns.insert(t, pass.saturating_add(stride(weight)));
        self.start_s = start_s;
        self.slip = None;
    }

    /// The holder's plan was redone with `start_s`; `cause` is why, should it be later.
    pub fn replanned(&mut self, start_s: u64, cause: SlipCause) {
        if start_s > self.start_s {
            let first = self.slip.map_or(self.start_s, |s| s.first_start_s);
            self.slip = Some(Slip {
                first_start_s: first,
                cause,
            });
        }
        self.start_s = start_s;
    }

    /// No holder any more.
    pub fn released(&mut self) {
        self.start_s = 0;
        self.slip = None;
    }

    /// At the end of a pass: the tenants that had blocked jobs and do not hold the
    /// reservation.
    pub fn set_waiting(
        &mut self,
        blocked: impl Iterator<Item = TenantIdx>,
        holder: Option<TenantIdx>,
    ) {
        self.waiting = blocked.filter(|&t| Some(t) != holder).collect();
    }
}
