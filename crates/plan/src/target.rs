//! Planning targets: `p95-wait<=1h`, `avg-wait<=30m`, `p99-wait<=2h30m`.
//!
//! A job's wait is all the time it spent pending, from submission to its end, across
//! preemptions. A job that never finishes in the replay (rejected, or still waiting when
//! nothing more can happen) has waited forever: a percentile is met only if fewer such jobs
//! exist than the percentile leaves out, an average never.

use serde::Serialize;

use crate::PlanError;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Statistic {
    /// The p-th percentile, p in (0, 100].
    Percentile(f64),
    Average,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    pub statistic: Statistic,
    pub limit_s: u64,
    /// As the user wrote it.
    pub text: String,
}

/// Parses `1h`, `30m`, `90s`, `2h30m`, `1d`, `3600` (seconds).
pub fn parse_duration_s(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(v) = s.parse::<u64>() {
        return Some(v);
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1.0,
            'm' => 60.0,
            'h' => 3600.0,
            'd' => 86400.0,
            _ => return None,
        };
        let v: f64 = num.parse().ok()?;
        num.clear();
        if !v.is_finite() || v < 0.0 {
            return None;
        }
        total = total.checked_add((v * unit).round() as u64)?;
    }
    if !num.is_empty() {
        return None;
    }
    Some(total)
}

impl Target {
    pub fn parse(text: &str) -> Result<Target, PlanError> {
        let bad = |why: &str| {
            PlanError::usage(
                "--target",
                format!(
                    "{text:?}: {why} (write e.g. \"p95-wait<=1h\", \"p99-wait<=2h\" or \"avg-wait<=30m\")"
                ),
            )
        };
        let t: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let Some((lhs, rhs)) = t.split_once("<=") else {
            return Err(bad("no \"<=\""));
        };
        let Some(stat) = lhs.strip_suffix("-wait") else {
            return Err(bad("the measure must be a wait: pNN-wait or avg-wait"));
        };
        let statistic = if stat == "avg" || stat == "mean" {
            Statistic::Average
        } else if let Some(p) = stat.strip_prefix('p') {
            match p.parse::<f64>() {
                Ok(p) if p > 0.0 && p <= 100.0 => Statistic::Percentile(p),
                _ => return Err(bad("the percentile must be in (0, 100]")),
            }
        } else {
            return Err(bad("unknown statistic"));
        };
        let Some(limit_s) = parse_duration_s(rhs) else {
            return Err(bad("the limit is not a duration"));
        };
        Ok(Target {
            statistic,
            limit_s,
            text: text.to_string(),
        })
    }

    /// The statistic over `waits` (`None` = never finished); `None` when it is infinite.
    pub fn measure(&self, waits: &[Option<u64>]) -> Option<f64> {
        if waits.is_empty() {
            return Some(0.0);
        }
        match self.statistic {
            Statistic::Average => {
                let mut sum = 0.0;
                for w in waits {
                    sum += (*w)? as f64;
                }
                Some(sum / waits.len() as f64)
            }
            Statistic::Percentile(p) => {
                // Nearest rank; a never-started job sorts last.
                let mut v: Vec<u64> = waits.iter().map(|w| w.unwrap_or(u64::MAX)).collect();
                v.sort_unstable();
                let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
                let x = v[rank.min(v.len()) - 1];
                (x != u64::MAX).then_some(x as f64)
            }
        }
    }

    pub fn met(&self, value: Option<f64>) -> bool {
        value.is_some_and(|v| v <= self.limit_s as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let t = Target::parse("p95-wait<=1h").unwrap();
        assert_eq!(t.statistic, Statistic::Percentile(95.0));
        assert_eq!(t.limit_s, 3600);
        let t = Target::parse(" avg-wait <= 2h30m ").unwrap();
        assert_eq!(t.statistic, Statistic::Average);
        assert_eq!(t.limit_s, 9000);
        for bad in [
            "p95-wait<1h",
            "p95-jct<=1h",
            "p0-wait<=1h",
            "p101-wait<=1h",
            "p95-wait<=soon",
            "",
        ] {
            let e = Target::parse(bad).unwrap_err();
            assert!(e.to_string().starts_with("--target"), "{e}");
        }
    }

    #[test]
    fn measures_with_never_started_jobs() {
        let t = Target::parse("p50-wait<=10s").unwrap();
        assert_eq!(t.measure(&[Some(1), Some(5), None]), Some(5.0));
        assert_eq!(t.measure(&[Some(1), None, None]), None);
        let a = Target::parse("avg-wait<=10s").unwrap();
        assert_eq!(a.measure(&[Some(2), Some(4)]), Some(3.0));
        assert_eq!(a.measure(&[Some(2), None]), None);
        assert!(!a.met(None));
        assert!(a.met(Some(10.0)));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_s("90"), Some(90));
        assert_eq!(parse_duration_s("1.5h"), Some(5400));
        assert_eq!(parse_duration_s("1d2h"), Some(93600));
        assert_eq!(parse_duration_s("h"), None);
        assert_eq!(parse_duration_s("5x"), None);
    }
}
