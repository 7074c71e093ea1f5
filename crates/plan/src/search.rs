//! The search both planners share: the smallest x in [min, max] where a replay is good,
//! assuming good is monotone (false below some x, true from there on).
//!
//! From `start` it doubles its distance (`step`, `2·step`, …) towards max while nothing is
//! good, or towards min while everything is, then narrows the interval between the largest
//! bad x and the answer to `resolution`. Each round evaluates up to `threads` values at once
//! (one replay per thread); no value is evaluated twice. The answer is the smallest good x
//! above every bad one, so a non-monotone curve gives the conservative answer.

use std::collections::BTreeMap;

pub struct Search<P> {
    /// Everything evaluated, by x.
    pub done: BTreeMap<i64, P>,
    /// The smallest good x above every bad x; `None` when even `max` is bad.
    pub answer: Option<i64>,
    /// Even `min` was good.
    pub good_at_min: bool,
}

pub struct Bounds {
    pub start: i64,
    pub step: i64,
    pub min: i64,
    pub max: i64,
    pub resolution: i64,
    pub threads: usize,
    /// Where round one spends its spare threads: +1 towards max (the start is expected to be
    /// bad), −1 towards min (expected good).
    pub lean: i64,
}

/// Evaluates a batch of xs, returning one point per x in order.
pub type Eval<'a, P, E> = &'a dyn Fn(&[i64]) -> Result<Vec<P>, E>;

fn answer_of<P>(done: &BTreeMap<i64, P>, good: &dyn Fn(&P) -> bool) -> Option<i64> {
    let top_bad = done
        .iter()
        .filter(|(_, p)| !good(p))
        .map(|(x, _)| *x)
        .last();
    done.iter()
        .find(|(x, p)| good(p) && top_bad.is_none_or(|b| **x > b))
        .map(|(x, _)| *x)
}

/// Runs the search; `eval` evaluates a batch (in parallel as it likes) and returns the points.
pub fn smallest_good<P, E>(
    b: &Bounds,
    eval: Eval<'_, P, E>,
    good: &dyn Fn(&P) -> bool,
) -> Result<Search<P>, E> {
    let threads = b.threads.max(1);
    let step = b.step.max(1);
    let mut done: BTreeMap<i64, P> = BTreeMap::new();
    let run = |xs: Vec<i64>, done: &mut BTreeMap<i64, P>| -> Result<(), E> {
        let mut todo: Vec<i64> = xs.into_iter().filter(|x| !done.contains_key(x)).collect();
        todo.sort_unstable();
        todo.dedup();
        if todo.is_empty() {
            return Ok(());
        }
        for (x, p) in todo.iter().zip(eval(&todo)?) {
            done.insert(*x, p);
        }
        Ok(())
    };
    // Doublings of the distance from `start`, in direction `sign`, `threads` at a time.
    let doublings = |from: i64, sign: i64| -> Vec<i64> {
        let mut v = Vec::new();
        let mut d = ((from - b.start).abs().max(step / 2).max(1)) * 2;
        while v.len() < threads {
            let x = (b.start + sign * d).clamp(b.min, b.max);
            v.push(x);
            if x == b.min || x == b.max {
                break;
            }
            d *= 2;
        }
        v
    };
    // Round one: the start and the first steps beside it, on the side it leans to.
    let lean = if b.lean < 0 { -1 } else { 1 };
    let mut first = vec![b.start.clamp(b.min, b.max)];
    first.extend(
        doublings(b.start + lean * (step / 2), lean)
            .into_iter()
            .take(threads.saturating_sub(1)),
    );
    run(first, &mut done)?;
    let mut good_at_min = false;
    if done.values().next().is_some_and(good) && done.values().all(good) {
        // Everything so far is good: go down until something is bad.
        while done.values().all(good) {
            let lowest = *done.keys().next().unwrap_or(&b.min);
            if lowest <= b.min {
                good_at_min = true;
                break;
            }
            run(doublings(lowest, -1), &mut done)?;
        }
    } else {
        while answer_of(&done, good).is_none() {
            let largest = *done.keys().last().unwrap_or(&b.start);
            if largest >= b.max {
                return Ok(Search {
                    done,
                    answer: None,
                    good_at_min: false,
                });
            }
            run(doublings(largest, 1), &mut done)?;
        }
    }
    // Narrow the interval between the largest bad x and the answer.
    while let Some(hi) = answer_of(&done, good) {
        let Some(lo) = done
            .iter()
            .filter(|(_, p)| !good(p))
            .map(|(x, _)| *x)
            .last()
        else {
            break;
        };
        if hi - lo <= b.resolution.max(1) {
            break;
        }
        let (gap, t) = (hi - lo, threads as i64);
        let batch: Vec<i64> = (1..=t)
            .map(|k| lo + gap * k / (t + 1))
            .filter(|x| *x > lo && *x < hi && !done.contains_key(x))
            .collect();
        if batch.is_empty() {
            break;
        }
        run(batch, &mut done)?;
    }
    Ok(Search {
        answer: answer_of(&done, good),
        done,
        good_at_min,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn search(threshold: i64, b: &Bounds) -> (Search<i64>, usize) {
        let calls = Cell::new(0usize);
        let eval = |xs: &[i64]| -> Result<Vec<i64>, ()> {
            calls.set(calls.get() + xs.len());
            Ok(xs.to_vec())
        };
        let s = smallest_good(b, &eval, &|x: &i64| *x >= threshold).unwrap();
        (s, calls.get())
    }

    fn bounds(threads: usize) -> Bounds {
        Bounds {
            start: 0,
            step: 10,
            min: -90,
            max: 5000,
            resolution: 1,
            threads,
            lean: if threads.is_multiple_of(2) { 1 } else { -1 },
        }
    }

    #[test]
    fn finds_the_threshold_up_and_down() {
        for threads in [1, 2, 4] {
            for threshold in [-90, -37, -1, 0, 1, 7, 123, 4999, 5000] {
                let (s, calls) = search(threshold, &bounds(threads));
                assert_eq!(
                    s.answer,
                    Some(threshold),
                    "threshold {threshold}, {threads} threads"
                );
                assert!(calls < 60, "{calls} evaluations");
            }
        }
    }

    #[test]
    fn reports_unreachable_and_all_good() {
        let (s, _) = search(6000, &bounds(2));
        assert_eq!(s.answer, None);
        assert!(s.done.contains_key(&5000));
        let (s, _) = search(-1000, &bounds(2));
        assert_eq!(s.answer, Some(-90));
        assert!(s.good_at_min);
    }

    #[test]
    fn non_monotone_gives_the_answer_above_every_bad() {
        let b = bounds(1);
        let eval = |xs: &[i64]| -> Result<Vec<i64>, ()> { Ok(xs.to_vec()) };
        // Good at 10..20 and from 100 on: the answer is above the bad stretch.
        let good = |x: &i64| (10..20).contains(x) || *x >= 100;
        let s = smallest_good(&b, &eval, &good).unwrap();
        let a = s.answer.unwrap();
        assert!(s.done.iter().filter(|(_, p)| !good(p)).all(|(x, _)| *x < a));
    }
}
