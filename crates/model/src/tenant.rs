//! Tenants: who drives on the highway, how much they are guaranteed, how much they may take.

use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::error::{SpecError, check_f64, check_name, check_range};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Anchor,
    Commercial,
    Public,
    Academic,
    Startup,
}

/// Priority classes, lowest first. Priority decides queue order before fair share does, and
/// only a strictly higher class may preempt.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum PriorityClass {
    /// Runs on whatever is idle; the first to go.
    Scavenger,
    Low,
    #[default]
    Normal,
    High,
    /// Reserved for operators (e.g. grid-emergency or national-priority work).
    Critical,
}

impl PriorityClass {
    pub fn name(self) -> &'static str {
        match self {
            PriorityClass::Scavenger => "scavenger",
            PriorityClass::Low => "low",
            PriorityClass::Normal => "normal",
            PriorityClass::High => "high",
            PriorityClass::Critical => "critical",
        }
    }
}

/// A guarantee and a borrowing limit, in whole accelerators, for a model or class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSpec {
    /// An accelerator model name, a class name, or "*" for every accelerator.
    pub accelerator: String,
    /// Accelerators the tenant can always get back, preempting borrowers if need be.
    pub guaranteed: u64,
    /// Accelerators the tenant may use above its guarantee while others leave them idle.
    /// Borrowed capacity can be reclaimed, so only preemptible jobs may borrow.
    #[serde(default)]
    pub borrow_limit: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    pub name: String,
    pub tier: Tier,
    /// Fair-share weight: a tenant of weight 2 is entitled to twice the share of weight 1.
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// No entries: no quota limit (share cap and fair share still apply).
    #[serde(default)]
    pub quotas: Vec<QuotaSpec>,
    /// Jurisdiction codes (e.g. "KR") where this tenant's work may run. Empty: anywhere.
    #[serde(default)]
    pub allowed_jurisdictions: Vec<String>,
    /// Largest fraction of the highway's accelerators this tenant may hold at once.
    #[serde(default = "default_share_cap")]
    pub share_cap: f64,
    #[serde(default)]
    pub default_priority: PriorityClass,
    /// The highest priority class the tenant's own tokens may submit at. None: `normal`, or
    /// `default_priority` where the operator set that higher. Only operators change it.
    #[serde(default)]
    pub max_priority: Option<PriorityClass>,
    /// Most jobs the tenant may have pending at once. None: the server's default.
    #[serde(default)]
    pub max_pending_jobs: Option<u64>,
    /// Most bytes of command, env and workdir one job may carry. None: the server's default.
    #[serde(default)]
    pub max_job_bytes: Option<u64>,
    /// Most bytes of command, env and workdir over the tenant's pending and running jobs
    /// together. None: the server's default.
    #[serde(default)]
    pub max_stored_bytes: Option<u64>,
}

fn default_weight() -> f64 {
    1.0
}

fn default_share_cap() -> f64 {
    1.0
}

impl TenantSpec {
    pub fn new(name: &str, tier: Tier) -> TenantSpec {
        TenantSpec {
            name: name.to_string(),
            tier,
            weight: 1.0,
            quotas: Vec::new(),
            allowed_jurisdictions: Vec::new(),
            share_cap: 1.0,
            default_priority: PriorityClass::Normal,
            max_priority: None,
            max_pending_jobs: None,
            max_job_bytes: None,
            max_stored_bytes: None,
        }
    }

    /// The highest class the tenant may submit at: `max_priority`, else `normal` (or the
    /// default class, if an operator set that higher).
    pub fn priority_entitlement(&self) -> PriorityClass {
        self.max_priority
            .unwrap_or(PriorityClass::Normal.max(self.default_priority))
    }

    pub fn validate(&self, catalog: &Catalog) -> Result<(), SpecError> {
        check_name("name", &self.name)?;
        check_f64("weight", self.weight, 0.0, 1e6)?;
        check_f64("share_cap", self.share_cap, 0.0, 1.0)?;
        for (i, q) in self.quotas.iter().enumerate() {
            if q.accelerator != "*" && catalog.matching(&q.accelerator).is_empty() {
                return Err(SpecError::new(
                    format!("quotas[{i}].accelerator"),
                    format!(
                        "{:?} is neither a model nor a class in the catalog (or \"*\")",
                        q.accelerator
                    ),
                ));
            }
            check_range(
                &format!("quotas[{i}].guaranteed"),
                q.guaranteed,
                0,
                10_000_000,
            )?;
            check_range(
                &format!("quotas[{i}].borrow_limit"),
                q.borrow_limit,
                0,
                10_000_000,
            )?;
        }
        for (i, j) in self.allowed_jurisdictions.iter().enumerate() {
            check_name(&format!("allowed_jurisdictions[{i}]"), j)?;
        }
        if let Some(m) = self.max_priority
            && self.default_priority > m
        {
            return Err(SpecError::new(
                "default_priority",
                format!(
                    "{} is above max_priority ({}): raise max_priority or lower the default",
                    self.default_priority.name(),
                    m.name()
                ),
            ));
        }
        if let Some(n) = self.max_pending_jobs {
            check_range("max_pending_jobs", n, 1, 100_000_000)?;
        }
        if let Some(n) = self.max_job_bytes {
            check_range("max_job_bytes", n, 1024, 1 << 40)?;
        }
        if let Some(n) = self.max_stored_bytes {
            check_range("max_stored_bytes", n, 1024, 1 << 50)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_priority_entitlement_defaults_to_normal_and_bounds_the_default_class() {
        let cat = Catalog::builtin();
        let mut t = TenantSpec::new("lab", Tier::Academic);
        assert_eq!(t.priority_entitlement(), PriorityClass::Normal);
        // An operator who set a higher default class entitled the tenant to it.
        t.default_priority = PriorityClass::High;
        assert_eq!(t.priority_entitlement(), PriorityClass::High);
        assert!(t.validate(&cat).is_ok());
        t.max_priority = Some(PriorityClass::Low);
        let e = t.validate(&cat).unwrap_err();
        assert_eq!(e.field, "default_priority");
        t.default_priority = PriorityClass::Scavenger;
        assert!(t.validate(&cat).is_ok());
        assert_eq!(t.priority_entitlement(), PriorityClass::Low);
        t.max_pending_jobs = Some(0);
        assert_eq!(t.validate(&cat).unwrap_err().field, "max_pending_jobs");
        t.max_pending_jobs = Some(10);
        t.max_job_bytes = Some(10);
        assert_eq!(t.validate(&cat).unwrap_err().field, "max_job_bytes");
    }

    #[test]
    fn limits_read_from_toml() {
        let t: TenantSpec = toml::from_str(
            "name = \"a\"\ntier = \"anchor\"\nmax_priority = \"critical\"\nmax_pending_jobs = 5\nmax_stored_bytes = 4096\n",
        )
        .unwrap();
        assert_eq!(t.max_priority, Some(PriorityClass::Critical));
        assert_eq!(t.max_pending_jobs, Some(5));
        assert_eq!(t.max_stored_bytes, Some(4096));
        assert_eq!(t.max_job_bytes, None);
    }
}
