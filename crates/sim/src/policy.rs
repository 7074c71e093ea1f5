//! Scheduling policies and placements of the digital twin, as engine configurations.
//!
//! The twin runs the production engine; a "policy" is only a configuration of it. The classic
//! policies of the literature are there to compare gosok with (Helios, SC'21: FIFO, SJF and
//! SRTF with "consolidate" placement), and `gosok` is what ships.

use std::fmt;

use gosok_engine::{EngineConfig, QueuePolicy};

/// Checkpoint overhead added to a job's remaining work each time it is preempted, for jobs of
/// 1, up to 8, and more accelerators (Helios' SRTF: 7 / 30 / 60 s).
pub const CHECKPOINT_OVERHEAD_S: [u64; 3] = [7, 30, 60];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Submit order, head-of-line blocking, no backfill, no preemption.
    Fifo,
    /// Shortest true duration first (oracle), head-of-line blocking, no preemption.
    Sjf,
    /// Shortest remaining true duration first (oracle), preemptive with checkpoint overhead.
    Srtf,
    /// gosok's default: fair share across tenants, least attained service within a tenant
    /// (preemptive), reservations and backfill, with the jobs' own estimates only (never the
    /// true duration).
    Gosok,
    /// gosok with the age order within a tenant (`QueuePolicy::FairShare`, the default before
    /// the attained-service ladder), for comparison.
    GosokAge,
    /// The attained-service ladder without learned sizes.
    GosokLas,
}

impl Policy {
    pub const ALL: [Policy; 6] = [
        Policy::Fifo,
        Policy::Sjf,
        Policy::Srtf,
        Policy::Gosok,
        Policy::GosokAge,
        Policy::GosokLas,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Policy::Fifo => "fifo",
            Policy::Sjf => "sjf",
            Policy::Srtf => "srtf",
            Policy::Gosok => "gosok",
            Policy::GosokAge => "gosok-age",
            Policy::GosokLas => "gosok-las",
        }
    }

    pub fn parse(s: &str) -> Result<Policy, String> {
        Policy::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!(
                    "no policy named {s:?}; known: fifo, sjf, srtf, gosok, gosok-age, gosok-las"
                )
            })
    }

    /// `fifo,sjf` or `all`; duplicates are dropped, order kept.
    pub fn parse_list(s: &str) -> Result<Vec<Policy>, String> {
        if s.trim() == "all" {
            return Ok(Policy::ALL.to_vec());
        }
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let p = Policy::parse(part)?;
            if !out.contains(&p) {
                out.push(p);
            }
        }
        if out.is_empty() {
            return Err("no policy given; use e.g. fifo,sjf,srtf,gosok".into());
        }
        Ok(out)
    }

    /// Whether the simulator hands the engine the true duration as the runtime estimate.
    pub fn oracle(self) -> bool {
        matches!(self, Policy::Sjf | Policy::Srtf)
    }

    /// gosok's own policies (its placement mix, the jobs' own estimates).
    pub fn is_gosok(self) -> bool {
        matches!(self, Policy::Gosok | Policy::GosokAge | Policy::GosokLas)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the runtime estimates the engine sees come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Estimates {
    /// The oracle for SJF and SRTF, the jobs' own for the others.
    Auto,
    /// Only what the workload's job specs give (`runtime_estimate_s`).
    Given,
    /// For a job that gives none: the median run time of the last completed jobs of its
    /// tenant and size (else of its tenant), as a controller could learn it. Never the
    /// job's own true duration.
    History,
    /// The true duration (capped by the job's limit).
    Oracle,
}

impl Estimates {
    pub fn parse(s: &str) -> Result<Estimates, String> {
        match s {
            "auto" => Ok(Estimates::Auto),
            "given" => Ok(Estimates::Given),
            "history" => Ok(Estimates::History),
            "oracle" => Ok(Estimates::Oracle),
            _ => Err(format!("{s:?}: use auto, given, history or oracle")),
        }
    }

    /// What `Auto` means for a policy.
    pub fn resolve(self, policy: Policy) -> Estimates {
        match self {
            Estimates::Auto if policy.oracle() => Estimates::Oracle,
            Estimates::Auto => Estimates::Given,
            e => e,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Estimates::Auto => "auto",
            Estimates::Given => "given",
            Estimates::History => "history",
            Estimates::Oracle => "oracle",
        }
    }
}

/// Where jobs land: scorers and their weights.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Placement {
    pub name: String,
    pub scorers: Vec<(String, f64)>,
}

impl Placement {
    /// `consolidate` (Helios: best fit on one node for up to 8 accelerators; with the
    /// importers' shape rule, larger jobs take whole nodes), `gosok` (the engine's default
    /// mix), one engine scorer by name (`bestfit`, `fgd`, `power`, ...), or a weighted list
    /// `bestfit:1,consolidate:2` (this is how the engine's own `consolidate` scorer, which
    /// keeps a gang within one domain, is reached).
    pub fn parse(s: &str) -> Result<Placement, String> {
        let s = s.trim();
        let scorers = match s {
            "consolidate" => vec![("bestfit".to_string(), 1.0)],
            "gosok" | "default" => EngineConfig::default().scorers,
            _ if s.contains(':') => {
                let mut v = Vec::new();
                for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    let (n, w) = part.split_once(':').ok_or_else(|| {
                        format!("{part:?}: write name:weight, e.g. bestfit:1,fgd:0.5")
                    })?;
                    let w: f64 = w
                        .trim()
                        .parse()
                        .map_err(|_| format!("{part:?}: {w:?} is not a weight"))?;
                    v.push((n.trim().to_string(), w));
                }
                v
            }
            _ => vec![(s.to_string(), 1.0)],
        };
        let known = gosok_engine::scorers::SCORER_NAMES;
        for (n, w) in &scorers {
            if !known.contains(&n.as_str()) {
                return Err(format!(
                    "no placement named {n:?}; known: consolidate, gosok, {}, or a weighted list such as bestfit:1,fgd:0.5",
                    known.join(", ")
                ));
            }
            if !w.is_finite() || *w < -1.0 || *w > 1000.0 {
                return Err(format!("{n}: weight {w} must be between -1 and 1000"));
            }
        }
        Ok(Placement {
            name: s.to_string(),
            scorers,
        })
    }

    /// The placement a policy uses unless told otherwise: the classic policies are compared
    /// with Helios' consolidate, gosok uses its own mix.
    pub fn default_for(policy: Policy) -> Placement {
        let name = if policy.is_gosok() {
            "gosok"
        } else {
            "consolidate"
        };
        // Both names are built in.
        Placement::parse(name).unwrap_or(Placement {
            name: name.into(),
            scorers: Vec::new(),
        })
    }
}

/// The engine configuration of a policy and placement.
pub fn engine_config(policy: Policy, placement: &Placement, seed: u64) -> EngineConfig {
    let mut c = EngineConfig {
        seed,
        scorers: placement.scorers.clone(),
        ..EngineConfig::default()
    };
    match policy {
        Policy::Fifo => {
            c.queue_policy = QueuePolicy::Fifo;
            c.head_of_line_blocking = true;
            c.backfill = false;
            c.max_preemption_attempts_per_pass = 0;
        }
        Policy::Sjf => {
            c.queue_policy = QueuePolicy::ShortestFirst;
            c.head_of_line_blocking = true;
            c.backfill = false;
            c.max_preemption_attempts_per_pass = 0;
        }
        Policy::Srtf => {
            c.queue_policy = QueuePolicy::ShortestRemainingFirst {
                overhead_s: CHECKPOINT_OVERHEAD_S,
            };
            c.head_of_line_blocking = false;
            c.backfill = false;
        }
        Policy::Gosok => {}
        Policy::GosokAge => c.queue_policy = QueuePolicy::FairShare,
        Policy::GosokLas => {
            if let QueuePolicy::FairShareLas(las) = &mut c.queue_policy {
                las.learned_sizes = false;
            }
        }
    }
    c
}

/// The checkpoint overhead of one preemption of a job holding `accelerators` (whole devices
/// and fractions rounded up).
pub fn checkpoint_overhead_s(accel_milli: u64) -> u64 {
    match accel_milli {
        0..=1000 => CHECKPOINT_OVERHEAD_S[0],
        1001..=8000 => CHECKPOINT_OVERHEAD_S[1],
        _ => CHECKPOINT_OVERHEAD_S[2],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_alone_in_lists_and_as_all() {
        assert_eq!(
            Policy::parse_list("fifo, srtf,fifo").unwrap(),
            [Policy::Fifo, Policy::Srtf]
        );
        assert_eq!(Policy::parse_list("all").unwrap().len(), 6);
        assert_eq!(
            Policy::parse_list("gosok,gosok-age").unwrap(),
            [Policy::Gosok, Policy::GosokAge]
        );
        assert!(Policy::parse_list("lifo").unwrap_err().contains("lifo"));
        assert!(Policy::parse_list(" , ").is_err());
    }

    #[test]
    fn placements_map_onto_engine_scorers() {
        assert_eq!(
            Placement::parse("consolidate").unwrap().scorers,
            [("bestfit".to_string(), 1.0)]
        );
        assert_eq!(
            Placement::parse("fgd").unwrap().scorers,
            [("fgd".to_string(), 1.0)]
        );
        assert_eq!(
            Placement::parse("bestfit:1,consolidate:2")
                .unwrap()
                .scorers
                .len(),
            2
        );
        assert!(Placement::parse("tetris").unwrap_err().contains("known"));
        assert!(Placement::parse("fgd:x").is_err());
    }

    #[test]
    fn classic_policies_configure_the_engine_as_helios_did() {
        let p = Placement::default_for(Policy::Fifo);
        let c = engine_config(Policy::Fifo, &p, 7);
        assert_eq!(c.seed, 7);
        assert_eq!(c.queue_policy, QueuePolicy::Fifo);
        assert!(c.head_of_line_blocking && !c.backfill);
        assert_eq!(c.max_preemption_attempts_per_pass, 0);
        let c = engine_config(Policy::Srtf, &p, 7);
        assert!(matches!(
            c.queue_policy,
            QueuePolicy::ShortestRemainingFirst {
                overhead_s: [7, 30, 60]
            }
        ));
        let g = engine_config(Policy::Gosok, &Placement::default_for(Policy::Gosok), 7);
        assert_eq!(
            g,
            EngineConfig {
                seed: 7,
                ..EngineConfig::default()
            }
        );
        assert!(matches!(g.queue_policy, QueuePolicy::FairShareLas(_)));
        let a = engine_config(
            Policy::GosokAge,
            &Placement::default_for(Policy::GosokAge),
            7,
        );
        assert_eq!(a.queue_policy, QueuePolicy::FairShare);
        assert_eq!(a.scorers, g.scorers);
        assert_eq!(checkpoint_overhead_s(1000), 7);
        assert_eq!(checkpoint_overhead_s(8000), 30);
        assert_eq!(checkpoint_overhead_s(16000), 60);
    }
}
