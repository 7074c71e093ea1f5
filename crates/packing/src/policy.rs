//! The policies of the packing experiment, by name. Each one is a configuration of the
//! engine's placement: the six published ones are engine scorers of the same names
//! (`gosok_engine::baselines`), scored over every feasible node as the published experiment's
//! scheduler does; `gosok` is the engine's default placement (expected waste).

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyKind {
    Random,
    DotProd,
    Clustering,
    Packing,
    BestFit,
    Fgd,
    Gosok,
}

impl PolicyKind {
    /// Every policy, in the order of the paper's figures, gosok last.
    pub const ALL: [PolicyKind; 7] = [
        PolicyKind::Random,
        PolicyKind::DotProd,
        PolicyKind::Clustering,
        PolicyKind::Packing,
        PolicyKind::BestFit,
        PolicyKind::Fgd,
        PolicyKind::Gosok,
    ];

    /// The six policies with published results.
    pub const PUBLISHED: [PolicyKind; 6] = [
        PolicyKind::Random,
        PolicyKind::DotProd,
        PolicyKind::Clustering,
        PolicyKind::Packing,
        PolicyKind::BestFit,
        PolicyKind::Fgd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Random => "random",
            PolicyKind::DotProd => "dotprod",
            PolicyKind::Clustering => "clustering",
            PolicyKind::Packing => "packing",
            PolicyKind::BestFit => "bestfit",
            PolicyKind::Fgd => "fgd",
            PolicyKind::Gosok => "gosok",
        }
    }

    /// The policy's name in the published results (`sc_policy` column).
    pub fn published_name(self) -> Option<&'static str> {
        match self {
            PolicyKind::Random => Some("01-Random"),
            PolicyKind::DotProd => Some("02-DotProd"),
            PolicyKind::Clustering => Some("03-GpuClustering"),
            PolicyKind::Packing => Some("04-GpuPacking"),
            PolicyKind::BestFit => Some("05-BestFit"),
            PolicyKind::Fgd => Some("06-FGD"),
            PolicyKind::Gosok => None,
        }
    }

    /// Parses a comma-separated list of policy names, or `all`.
    pub fn parse_list(text: &str) -> Result<Vec<PolicyKind>, UnknownPolicy> {
        if text.trim() == "all" {
            return Ok(PolicyKind::ALL.to_vec());
        }
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let kind: PolicyKind = part.parse()?;
            if !out.contains(&kind) {
                out.push(kind);
            }
        }
        if out.is_empty() {
            return Err(UnknownPolicy(text.to_string()));
        }
        Ok(out)
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A policy name that is not one of [`PolicyKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown policy {0:?}: choose from random, dotprod, clustering, packing, bestfit, fgd, gosok, \
     a comma-separated list of them, or all"
)]
pub struct UnknownPolicy(pub String);

impl FromStr for PolicyKind {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        PolicyKind::ALL
            .into_iter()
            .find(|k| k.name() == lower)
            .ok_or_else(|| UnknownPolicy(s.to_string()))
    }
}

impl PolicyKind {
    /// The engine scorers and weights this policy places with.
    pub fn scorers(self) -> Vec<(String, f64)> {
        match self {
            PolicyKind::Gosok => gosok_engine::config::default_scorers(),
            other => vec![(other.name().to_string(), 1.0)],
        }
    }
}
