//! Job sizes learned from the jobs that ended, and the Gittins index they give.
//!
//! The engine does not know how long a job will run. It does know how long the jobs of the
//! same tenant and shape ran before it, and how long this job has run so far. The Gittins
//! index of a job that has attained `a` accelerator-seconds is the best rate at which more
//! service can finish it:
//!
//! ```text
//!   G(a) = max over b > a of  P(S ≤ b | S > a) / E[min(S, b) − a | S > a]
//! ```
//!
//! Serving the highest index first minimises mean response time for a known size
//! distribution (Gittins; Scully and Harchol-Balter's SOAP analysis). Where the sizes have a
//! decreasing hazard rate it orders exactly as least attained service (the index falls as a
//! job runs); where a job has reached an age at which jobs like it usually end, its index
//! rises again and it is not put behind newcomers. `SizeHistory` keeps the distribution as
//! a log-binned histogram (bounded memory, the same bins at every scale) that halves its
//! counts when full, so it follows a tenant whose work changes.

use serde::{Deserialize, Serialize};

/// Bins of a size histogram. Bin 0 holds sizes below one accelerator-second; bin `i ≥ 1`
/// holds `[2^((i−1)/2), 2^(i/2))`: √2 apart, so 72 bins reach 2^35.5 accelerator-seconds
/// (a 1,024-accelerator gang running for 18 months); larger sizes fall in the last bin.
pub const BINS: usize = 72;

/// Counts at which a history halves (its older half then weighs half as much as new jobs).
pub const HISTORY_CAP: u32 = 1024;

/// The lower edge of bin `i`, in accelerator-seconds.
fn lower_edge(i: usize) -> f64 {
    if i == 0 {
        return 0.0;
    }
    let k = (i - 1) as i32;
    let whole = 2f64.powi(k / 2);
    if k % 2 == 0 {
        whole
    } else {
        whole * std::f64::consts::SQRT_2
    }
}

/// The upper edge of bin `i` (the last bin is closed at √2 times its lower edge).
fn upper_edge(i: usize) -> f64 {
    if i == 0 { 1.0 } else { lower_edge(i + 1) }
}

/// The bin of a size of `accel_s` accelerator-seconds.
fn bin_of(accel_s: u64) -> usize {
    if accel_s == 0 {
        return 0;
    }
    // floor(2·log2(x)) = floor(log2(x²)), exact in integers.
    let sq = (accel_s as u128) * (accel_s as u128);
    let doubled_log = 127 - sq.leading_zeros() as usize;
    (doubled_log + 1).min(BINS - 1)
}

/// The sizes (accelerator-seconds) of the jobs of one tenant and shape that ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SizeHistory {
    counts: Vec<u32>,
    total: u32,
    /// Jobs recorded since it began (never halved).
    recorded: u64,
    /// What orders jobs: the index at each bin's lower edge (0: nothing known past it) and
    /// the jobs it was taken from, as of the last milestone (`record`). Taken at milestones
    /// only, so that an index costs a lookup and waiting jobs are re-keyed when it changes.
    published: Vec<f64>,
    published_samples: u32,
}

impl Default for SizeHistory {
    fn default() -> Self {
        SizeHistory {
            counts: vec![0; BINS],
            total: 0,
            recorded: 0,
            published: Vec::new(),
            published_samples: 0,
        }
    }
}

impl SizeHistory {
    /// How many jobs the published index was taken from (0 before the first milestone).
    pub fn samples(&self) -> u32 {
        self.published_samples
    }

    /// A job that ran `accel_s` accelerator-seconds in all ended. At a milestone
    /// (`milestone`) the index is published again and the table it replaces is returned
    /// (empty the first time): the jobs waiting under this history may need ordering again.
    pub fn record(&mut self, accel_s: u64, min_samples: u32) -> Option<Vec<f64>> {
        self.add(accel_s);
        if !self.milestone(min_samples) {
            return None;
        }
        let table = (0..BINS)
            .map(|i| self.live_index(lower_edge(i)).unwrap_or(0.0))
            .collect();
        self.published_samples = self.total;
        Some(std::mem::replace(&mut self.published, table))
    }

    /// The published index per bin (0: nothing known past the bin; empty before the first
    /// milestone).
    pub fn published(&self) -> &[f64] {
        &self.published
    }

    /// The published Gittins index of a job that has attained `age_accel_s`
    /// accelerator-seconds (at the lower edge of its bin); None before the first milestone or
    /// when no job of this history ran longer.
    pub fn index(&self, age_accel_s: f64) -> Option<f64> {
        let g = *self.published.get(self.bin_at(age_accel_s.max(0.0)))?;
        (g > 0.0).then_some(g)
    }

    fn add(&mut self, accel_s: u64) {
        if self.total >= HISTORY_CAP {
            // Halve, rounding up so that no size seen is forgotten outright.
            self.total = 0;
            for c in &mut self.counts {
                *c = c.div_ceil(2);
                self.total += *c;
            }
        }
        self.counts[bin_of(accel_s)] += 1;
        self.total += 1;
        self.recorded += 1;
    }

    /// Whether the last record changed the history enough that the jobs waiting under it
    /// should be ordered again: when it first has `min_samples`, each time that doubles, and
    /// every half of `HISTORY_CAP` after (a bounded number of times per job that ends).
    fn milestone(&self, min_samples: u32) -> bool {
        let (n, min) = (self.recorded, min_samples.max(1) as u64);
        let half_cap = HISTORY_CAP as u64 / 2;
        n >= min && ((n % min == 0 && (n / min).is_power_of_two()) || n % half_cap == 0)
    }

    /// The Gittins index over the history as it is now of a job that has attained
    /// `age_accel_s` accelerator-seconds, in completions per accelerator-second; None when no
    /// job of this history ran longer (nothing is known of what comes next). Sizes are taken
    /// as spread evenly within their bin. O(BINS).
    fn live_index(&self, age_accel_s: f64) -> Option<f64> {
        let a = age_accel_s.max(0.0);
        let start = self.bin_at(a);
        // Counts of bin i at or below x.
        let within = |i: usize, x: f64| -> f64 {
            let (lo, hi) = (lower_edge(i), upper_edge(i));
            self.counts[i] as f64 * ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
        };
        let above_start: f64 = self.counts[start + 1..].iter().map(|&c| c as f64).sum();
        let alive_at_a = above_start + self.counts[start] as f64 - within(start, a);
        if alive_at_a <= 0.0 {
            return None;
        }
        let mut best = 0.0f64;
        let mut done = 0.0; // counts ended in (a, x]
        let mut spent = 0.0; // ∫ from a to x of the counts still running
        let mut alive = alive_at_a;
        for i in start..BINS {
            let lo = lower_edge(i).max(a);
            let hi = upper_edge(i);
            let ends_here = self.counts[i] as f64 - within(i, lo);
            spent += (hi - lo) * (alive + (alive - ends_here)) / 2.0;
            done += ends_here;
            alive -= ends_here;
            if spent > 0.0 && ends_here > 0.0 {
                best = best.max(done / spent);
            }
            if alive <= 1e-9 {
                break;
            }
        }
        (best > 0.0).then_some(best)
    }

    /// The bin of an age (whole accelerator-seconds: a fraction never moves a job's level).
    fn bin_at(&self, a: f64) -> usize {
        bin_of(a as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_are_root_two_apart() {
        assert_eq!(bin_of(0), 0);
        assert_eq!(bin_of(1), 1); // [1, 1.41)
        assert_eq!(bin_of(2), 3); // [2, 2.83)
        assert_eq!(bin_of(3), 4); // [2.83, 4)
        assert_eq!(bin_of(4), 5);
        assert_eq!(bin_of(u64::MAX), BINS - 1);
        for i in 1..BINS - 1 {
            let lo = lower_edge(i).ceil() as u64;
            if (lo as f64) < upper_edge(i) && lo > 0 {
                assert_eq!(bin_of(lo), i, "bin {i}");
            }
        }
    }

    /// A history of these (size, how many) with its index published on all of it.
    fn history(sizes: &[(u64, u32)]) -> SizeHistory {
        let mut h = SizeHistory::default();
        for &(s, n) in sizes {
            for _ in 0..n {
                h.add(s);
            }
        }
        let n = h.total;
        h.recorded = 0;
        h.total = 0;
        h.counts.iter_mut().for_each(|c| *c = 0);
        // Record again with min_samples = n: the last record publishes.
        for &(s, k) in sizes {
            for _ in 0..k {
                h.record(s, n);
            }
        }
        assert_eq!(h.samples(), n);
        h
    }

    /// One job of each bin from 1 to 59: sizes over six orders of magnitude.
    fn heavy_tail() -> SizeHistory {
        let sizes: Vec<(u64, u32)> = (1..60).map(|i| (lower_edge(i).ceil() as u64, 1)).collect();
        history(&sizes)
    }

    #[test]
    fn a_decreasing_hazard_orders_as_least_attained_service() {
        // The longer a job has run, the longer it is likely still to run: its index only
        // falls.
        let h = heavy_tail();
        let mut last = f64::INFINITY;
        for a in [0.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6] {
            let g = h.index(a).unwrap();
            assert!(g < last, "index at {a} = {g} not below {last}");
            last = g;
        }
    }

    #[test]
    fn a_job_near_the_usual_end_outranks_one_that_is_not() {
        // A quarter of the jobs end within 100 s, the rest at about 100,000 s. A new job may
        // be one of the short ones: worth a try first. A job that has run 1,000 s is one of
        // the long ones with all its run ahead; one that has run 95,000 s is nearly done and
        // goes before it (least attained service would put it last).
        let h = history(&[(100, 25), (100_000, 75)]);
        let new = h.index(0.0).unwrap();
        let middle = h.index(1_000.0).unwrap();
        let old = h.index(95_000.0).unwrap();
        assert!(new > old, "new {new} old {old}");
        assert!(old > 2.0 * middle, "old {old} middle {middle}");
    }

    #[test]
    fn the_index_is_published_at_milestones_only() {
        let mut h = SizeHistory::default();
        let mut at = Vec::new();
        for n in 1..=2048u64 {
            if h.record(100, 16).is_some() {
                at.push(n);
            }
        }
        assert_eq!(at, [16, 32, 64, 128, 256, 512, 1024, 1536, 2048]);
        // Between milestones the published index stays as it was.
        let mut h = SizeHistory::default();
        for _ in 0..16 {
            h.record(100, 16);
        }
        let before = h.index(0.0);
        for _ in 0..15 {
            h.record(1_000_000, 16);
        }
        assert_eq!(h.index(0.0), before);
        assert_eq!(h.samples(), 16);
        h.record(1_000_000, 16);
        assert!(h.index(0.0).unwrap() < before.unwrap());
        assert_eq!(h.samples(), 32);
        assert!(SizeHistory::default().index(0.0).is_none());
    }

    #[test]
    fn nothing_known_past_the_longest_job() {
        let h = history(&[(100, 10)]);
        assert!(h.index(1_000.0).is_none());
        assert!(h.index(10.0).is_some());
    }

    #[test]
    fn a_full_history_halves_and_follows_new_work() {
        let mut h = history(&[(10, HISTORY_CAP)]);
        for _ in 0..3 * HISTORY_CAP {
            h.record(100_000, 16);
        }
        assert!(h.total <= HISTORY_CAP + 1);
        // The short jobs are now a small minority.
        let short = h.counts[bin_of(10)];
        assert!(short * 10 < h.total, "{short} of {}", h.total);
    }
}
