//! Programmes, allocations (grants), prices and their draw-down: the accounting half of the
//! core. Every change is a log entry ([`AccountChange`]); usage is drawn from allocations as
//! the meter closes attempts, so a replay or a restored snapshot gives the same balances.
//!
//! - A programme (a national support scheme, an anchor contract) has a period and a tier.
//! - An allocation grants a tenant accelerator time from a programme, for any model or for
//!   one model or model class. Usage draws from the tenant's allocations that cover the
//!   model and are in their period when the attempt ends, earliest expiry first; what no
//!   allocation covers is recorded as uncovered. An allocation past its period's end stops
//!   counting (what is left of it is forfeited).
//! - Admission (before a submission is written, under the core lock) reserves accelerators ×
//!   runtime bound of each job against the balance (`encumbered`), so that racing clients
//!   cannot together take more than is left.
//! - Prices are versioned by the time they take effect; a cost uses the price in force when
//!   the attempt ended, so a statement computed again is identical.

use std::collections::{BTreeMap, BTreeSet};

use gosok_model::{Catalog, JobSpec, PriorityClass, Tier};
use serde::{Deserialize, Serialize};

use super::Refusal;
use super::meter::{Meter, UsageRow};

/// What happens to a tenant's running work when its allocations run out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExhaustion {
    /// Running work runs to its end; new work is refused at admission.
    #[default]
    Finish,
    /// Running work that draws from the allocations is stopped (cancelled, with the reason
    /// in its history).
    Preempt,
}

impl OnExhaustion {
    pub fn name(self) -> &'static str {
        match self {
            OnExhaustion::Finish => "finish",
            OnExhaustion::Preempt => "preempt",
        }
    }
}

/// One accounting change, as the log holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AccountChange {
    Programme {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tier: Option<Tier>,
        from_s: u64,
        to_s: u64,
        /// What an accelerator-hour of it is worth, for statements.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        price_krw_per_accelerator_hour: Option<f64>,
    },
    Grant {
        tenant: String,
        programme: String,
        /// Thousandths of an accelerator × seconds (hours × 3,600,000).
        accelerator_milli_s: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        class: Option<String>,
    },
    Policy {
        tenant: String,
        /// Scavenger-class work of the tenant runs without drawing (and without a balance).
        allow_scavenger: bool,
        on_exhaustion: OnExhaustion,
    },
    Price {
        from_s: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        site: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tier: Option<Tier>,
        krw_per_accelerator_hour: f64,
        krw_per_kwh: f64,
    },
    /// Written by the controller's tick when a tenant's balance reached zero while its work
    /// ran: the audit log's record of the action taken.
    Exhausted {
        tenant: String,
        action: OnExhaustion,
        /// The running jobs drawing from the allocations (stopped when `action` is preempt).
        jobs: Vec<u64>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Programme {
    pub name: String,
    pub tier: Option<Tier>,
    pub from_s: u64,
    pub to_s: u64,
    pub price_krw_per_accelerator_hour: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    pub id: u32,
    pub tenant: String,
    pub programme: u32,
    pub model: Option<String>,
    pub class: Option<String>,
    pub granted_milli_s: u64,
    pub drawn_milli_s: u64,
    pub granted_at_s: u64,
}

impl Allocation {
    pub fn remaining_milli_s(&self) -> u64 {
        self.granted_milli_s.saturating_sub(self.drawn_milli_s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Policy {
    pub allow_scavenger: bool,
    pub on_exhaustion: OnExhaustion,
}

/// What one usage row drew from one allocation (None: no allocation covered it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Draw {
    pub row: u64,
    pub allocation: Option<u32>,
    pub milli_s: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Price {
    /// The order prices were set in (a later one wins a tie).
    pub version: u32,
    pub from_s: u64,
    pub model: Option<String>,
    pub site: Option<String>,
    pub tier: Option<Tier>,
    pub krw_per_accelerator_hour: f64,
    pub krw_per_kwh: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExhaustionRecord {
    pub at_s: u64,
    pub tenant: String,
    pub action: OnExhaustion,
    pub jobs: Vec<u64>,
}

/// A live job's reservation against its tenant's balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Encumbrance {
    tenant: String,
    need_milli_s: u64,
    drawn_milli_s: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Accounts {
    programmes: Vec<Programme>,
    allocations: Vec<Allocation>,
    policies: BTreeMap<String, Policy>,
    prices: Vec<Price>,
    draws: Vec<Draw>,
    exhaustions: Vec<ExhaustionRecord>,
    /// Live (pending or running) jobs admitted against a balance.
    encumbered: BTreeMap<u64, Encumbrance>,
    /// Jobs that run without drawing (scavenger work the tenant's policy allows).
    exempt: BTreeSet<u64>,
    /// Tenants whose exhaustion was recorded (until their next grant).
    exhausted: BTreeSet<String>,
    /// Meter rows drawn so far.
    settled_rows: u64,
}

/// Whether an allocation for `model`/`class` covers accelerators of model `name`.
fn covers(catalog: &Catalog, a: &Allocation, name: &str) -> bool {
    match (&a.model, &a.class) {
        (Some(m), _) => m == name,
        (None, Some(c)) => catalog
            .id(name)
            .is_some_and(|id| catalog.get(id).class == *c),
        (None, None) => !name.is_empty(),
    }
}

impl Accounts {
    pub fn programmes(&self) -> &[Programme] {
        &self.programmes
    }
    pub fn allocations(&self) -> &[Allocation] {
        &self.allocations
    }
    pub fn prices(&self) -> &[Price] {
        &self.prices
    }
    pub fn draws(&self) -> &[Draw] {
        &self.draws
    }
    pub fn exhaustions(&self) -> &[ExhaustionRecord] {
        &self.exhaustions
    }
    pub fn policy(&self, tenant: &str) -> Policy {
        self.policies.get(tenant).copied().unwrap_or_default()
    }
    pub fn programme(&self, name: &str) -> Option<(u32, &Programme)> {
        self.programmes
            .iter()
            .enumerate()
            .find(|(_, p)| p.name == name)
            .map(|(i, p)| (i as u32, p))
    }
    pub fn has_allocations(&self, tenant: &str) -> bool {
        self.allocations.iter().any(|a| a.tenant == tenant)
    }
    pub fn is_exempt(&self, job: u64) -> bool {
        self.exempt.contains(&job)
    }

    /// Whether an allocation is in its period at `t_s`.
    pub fn active(&self, a: &Allocation, t_s: u64) -> bool {
        let p = &self.programmes[a.programme as usize];
        p.from_s <= t_s && t_s < p.to_s
    }

    /// Checks a change against the current state; nothing is changed.
    pub fn check(
        &self,
        change: &AccountChange,
        catalog: &Catalog,
        tenants: &dyn Fn(&str) -> bool,
        sites: &dyn Fn(&str) -> bool,
        now_s: u64,
    ) -> Result<(), Refusal> {
        let finite = |field: &str, v: f64| {
            if v.is_finite() && (0.0..=1e12).contains(&v) {
                Ok(())
            } else {
                Err(Refusal::invalid(
                    field,
                    format!("{v} is not a number in 0..=1e12"),
                ))
            }
        };
        match change {
            AccountChange::Programme {
                name,
                from_s,
                to_s,
                price_krw_per_accelerator_hour,
                ..
            } => {
                gosok_model::error::check_name("name", name).map_err(|e| Refusal::spec("", e))?;
                if to_s <= from_s {
                    return Err(Refusal::invalid(
                        "to",
                        "the period must end after it begins",
                    ));
                }
                if let Some(p) = price_krw_per_accelerator_hour {
                    finite("price_krw_per_accelerator_hour", *p)?;
                }
                if let Some((_, p)) = self.programme(name) {
                    let overlap = *from_s < p.to_s && p.from_s < *to_s;
                    return Err(Refusal::conflict(
                        Some(if overlap { "from" } else { "name" }),
                        format!(
                            "programme {name:?} exists ({} to {}){}; name another period as another programme",
                            crate::dates::date(p.from_s),
                            crate::dates::date(p.to_s),
                            if overlap {
                                " and overlaps this period"
                            } else {
                                ""
                            }
                        ),
                    ));
                }
            }
            AccountChange::Grant {
                tenant,
                programme,
                accelerator_milli_s,
                model,
                class,
            } => {
                if !tenants(tenant) {
                    return Err(
                        Refusal::not_found(format!("tenant {tenant:?} is not known"))
                            .field("tenant"),
                    );
                }
                let Some((pi, p)) = self.programme(programme) else {
                    return Err(Refusal::not_found(format!(
                        "programme {programme:?} is not known"
                    ))
                    .field("programme"));
                };
                if *accelerator_milli_s == 0 {
                    return Err(Refusal::invalid(
                        "accelerator_hours",
                        "must be more than zero",
                    ));
                }
                if p.to_s <= now_s {
                    return Err(Refusal::invalid(
                        "programme",
                        format!(
                            "programme {programme:?} ended on {}",
                            crate::dates::date(p.to_s)
                        ),
                    ));
                }
                match (model, class) {
                    (Some(_), Some(_)) => {
                        return Err(Refusal::invalid(
                            "class",
                            "give a model or a class, not both",
                        ));
                    }
                    (Some(m), None) if catalog.id(m).is_none() => {
                        return Err(Refusal::invalid(
                            "model",
                            format!("{m:?} is not a model in the accelerator catalog"),
                        ));
                    }
                    (None, Some(c)) if !catalog.models().iter().any(|x| x.class == *c) => {
                        return Err(Refusal::invalid(
                            "class",
                            format!("{c:?} is not a model class in the accelerator catalog"),
                        ));
                    }
                    _ => {}
                }
                if self.allocations.iter().any(|a| {
                    a.tenant == *tenant
                        && a.programme == pi
                        && a.model == *model
                        && a.class == *class
                }) {
                    return Err(Refusal::conflict(
                        Some("programme"),
                        format!(
                            "tenant {tenant:?} already holds an allocation of {programme:?} for the same accelerators in the same period"
                        ),
                    ));
                }
            }
            AccountChange::Policy { tenant, .. } => {
                if !tenants(tenant) {
                    return Err(
                        Refusal::not_found(format!("tenant {tenant:?} is not known"))
                            .field("tenant"),
                    );
                }
            }
            AccountChange::Price {
                from_s,
                model,
                site,
                krw_per_accelerator_hour,
                krw_per_kwh,
                ..
            } => {
                finite("krw_per_accelerator_hour", *krw_per_accelerator_hour)?;
                finite("krw_per_kwh", *krw_per_kwh)?;
                if *from_s < now_s {
                    return Err(Refusal::invalid(
                        "from",
                        "a price takes effect now or later: statements already issued keep their prices",
                    ));
                }
                if let Some(m) = model
                    && catalog.id(m).is_none()
                {
                    return Err(Refusal::invalid(
                        "model",
                        format!("{m:?} is not a model in the accelerator catalog"),
                    ));
                }
                if let Some(s) = site
                    && !sites(s)
                {
                    return Err(Refusal::invalid("site", format!("site {s:?} is not known")));
                }
            }
            AccountChange::Exhausted { tenant, .. } => {
                if !tenants(tenant) {
                    return Err(
                        Refusal::not_found(format!("tenant {tenant:?} is not known"))
                            .field("tenant"),
                    );
                }
            }
        }
        Ok(())
    }

    /// Applies a checked change (the caller checked it with [`Accounts::check`]).
    pub fn apply(&mut self, change: &AccountChange, now_s: u64) {
        match change.clone() {
            AccountChange::Programme {
                name,
                tier,
                from_s,
                to_s,
                price_krw_per_accelerator_hour,
            } => self.programmes.push(Programme {
                name,
                tier,
                from_s,
                to_s,
                price_krw_per_accelerator_hour,
            }),
            AccountChange::Grant {
                tenant,
                programme,
                accelerator_milli_s,
                model,
                class,
            } => {
                let Some((pi, _)) = self.programme(&programme) else {
                    return;
                };
                self.exhausted.remove(&tenant);
                self.allocations.push(Allocation {
                    id: self.allocations.len() as u32 + 1,
                    tenant,
                    programme: pi,
                    model,
                    class,
                    granted_milli_s: accelerator_milli_s,
                    drawn_milli_s: 0,
                    granted_at_s: now_s,
                });
            }
            AccountChange::Policy {
                tenant,
                allow_scavenger,
                on_exhaustion,
            } => {
                self.policies.insert(
                    tenant,
                    Policy {
                        allow_scavenger,
                        on_exhaustion,
                    },
                );
            }
            AccountChange::Price {
                from_s,
                model,
                site,
                tier,
                krw_per_accelerator_hour,
                krw_per_kwh,
            } => self.prices.push(Price {
                version: self.prices.len() as u32 + 1,
                from_s,
                model,
                site,
                tier,
                krw_per_accelerator_hour,
                krw_per_kwh,
            }),
            AccountChange::Exhausted {
                tenant,
                action,
                jobs,
            } => {
                self.exhausted.insert(tenant.clone());
                self.exhaustions.push(ExhaustionRecord {
                    at_s: now_s,
                    tenant,
                    action,
                    jobs,
                });
            }
        }
    }

    /// Thousandth-accelerator-seconds a job may run for: its accelerators × its runtime
    /// limit (else its estimate, else the engine's default runtime) and one second more,
    /// because the engine stops a job at the first whole second past its limit.
    pub fn need_milli_s(spec: &JobSpec, default_runtime_s: u64) -> u64 {
        let bound = spec
            .runtime_limit_s
            .or(spec.runtime_estimate_s)
            .unwrap_or(default_runtime_s);
        spec.total_accelerator_milli()
            .saturating_mul(bound.saturating_add(1))
    }

    /// Whether the job runs without drawing: scavenger work of a tenant whose policy allows it.
    fn runs_free(&self, tenant: &str, class: PriorityClass) -> bool {
        class == PriorityClass::Scavenger && self.policy(tenant).allow_scavenger
    }

    /// What is left to the tenant now for a job of `spec` (allocations in their period that
    /// cover one of its models, less what live jobs reserved), in thousandth-seconds; None:
    /// the tenant holds no allocation (it pays by price) or the job runs free.
    pub fn available_for(
        &self,
        catalog: &Catalog,
        tenant: &str,
        spec: &JobSpec,
        class: PriorityClass,
        now_s: u64,
    ) -> Option<(u64, u64)> {
        if !self.has_allocations(tenant) || self.runs_free(tenant, class) {
            return None;
        }
        // The models the job could run on.
        let mut models: BTreeSet<&str> = BTreeSet::new();
        for g in &spec.groups {
            if g.models.is_empty() {
                models.extend(catalog.models().iter().map(|m| m.name.as_str()));
            }
            for m in &g.models {
                for id in catalog.matching(m) {
                    models.insert(catalog.get(id).name.as_str());
                }
            }
        }
        let left: u64 = self
            .allocations
            .iter()
            .filter(|a| a.tenant == tenant && self.active(a, now_s))
            .filter(|a| models.iter().any(|m| covers(catalog, a, m)))
            .map(Allocation::remaining_milli_s)
            .sum();
        Some((left, self.reserved_milli_s(tenant)))
    }

    /// What the tenant's live jobs reserved and have not drawn yet.
    pub fn reserved_milli_s(&self, tenant: &str) -> u64 {
        self.encumbered
            .values()
            .filter(|e| e.tenant == tenant)
            .map(|e| e.need_milli_s.saturating_sub(e.drawn_milli_s))
            .sum()
    }

    /// A submission was admitted: it reserves its need, or runs free.
    pub fn admitted(&mut self, job: u64, tenant: &str, need_milli_s: u64, class: PriorityClass) {
        if !self.has_allocations(tenant) {
            return;
        }
        if self.runs_free(tenant, class) {
            self.exempt.insert(job);
            return;
        }
        self.encumbered.insert(
            job,
            Encumbrance {
                tenant: tenant.to_string(),
                need_milli_s,
                drawn_milli_s: 0,
            },
        );
    }

    /// The job ended: its reservation is released.
    pub fn ended(&mut self, job: u64) {
        self.encumbered.remove(&job);
    }

    /// Draws the meter's new rows from their tenants' allocations.
    pub fn settle(&mut self, meter: &Meter, catalog: &Catalog) {
        let rows = meter.rows();
        while (self.settled_rows as usize) < rows.len() {
            let i = self.settled_rows;
            self.settled_rows += 1;
            let r = &rows[i as usize];
            let tenant = meter.name(r.tenant);
            if r.accel_milli_s == 0 || self.exempt.contains(&r.job) || !self.has_allocations(tenant)
            {
                continue;
            }
            self.draw_row(i, r, meter, catalog, tenant);
        }
    }

    fn draw_row(&mut self, i: u64, r: &UsageRow, meter: &Meter, catalog: &Catalog, tenant: &str) {
        let model = meter.name(r.model);
        let mut order: Vec<usize> = (0..self.allocations.len())
            .filter(|&k| {
                let a = &self.allocations[k];
                a.tenant == tenant
                    && a.remaining_milli_s() > 0
                    && self.active(a, r.end_s)
                    && covers(catalog, a, model)
            })
            .collect();
        // Earliest expiry first, then the oldest grant.
        order.sort_by_key(|&k| {
            let a = &self.allocations[k];
            (self.programmes[a.programme as usize].to_s, a.id)
        });
        let mut left = r.accel_milli_s;
        for k in order {
            if left == 0 {
                break;
            }
            let a = &mut self.allocations[k];
            let take = left.min(a.remaining_milli_s());
            a.drawn_milli_s += take;
            left -= take;
            self.draws.push(Draw {
                row: i,
                allocation: Some(a.id),
                milli_s: take,
            });
        }
        if left > 0 {
            self.draws.push(Draw {
                row: i,
                allocation: None,
                milli_s: left,
            });
        }
        if let Some(e) = self.encumbered.get_mut(&r.job) {
            e.drawn_milli_s += r.accel_milli_s;
        }
    }

    /// Tenants whose balance the running work has used up (allocations in their period, less
    /// what closed attempts drew, less what running ones accrued so far), not yet recorded:
    /// each with the running jobs that draw.
    pub fn newly_exhausted(
        &self,
        meter: &Meter,
        catalog: &Catalog,
        now_s: u64,
    ) -> Vec<(String, OnExhaustion, Vec<u64>)> {
        let mut running: BTreeMap<&str, (u64, Vec<u64>)> = BTreeMap::new();
        if self.allocations.is_empty() {
            return Vec::new();
        }
        for (job, tenant, model, milli_s) in meter.open_accrual(now_s) {
            let tenant = meter.name(tenant);
            if self.exempt.contains(&job)
                || !self.has_allocations(tenant)
                || self.exhausted.contains(tenant)
            {
                continue;
            }
            let model = meter.name(model);
            if self
                .allocations
                .iter()
                .any(|a| a.tenant == tenant && covers(catalog, a, model))
            {
                let e = running.entry(tenant).or_default();
                e.0 += milli_s;
                if e.1.last() != Some(&job) {
                    e.1.push(job);
                }
            }
        }
        let mut out = Vec::new();
        for (tenant, (accrued, jobs)) in running {
            if jobs.is_empty() {
                continue;
            }
            let left: u64 = self
                .allocations
                .iter()
                .filter(|a| a.tenant == tenant && self.active(a, now_s))
                .map(Allocation::remaining_milli_s)
                .sum();
            if accrued >= left {
                out.push((tenant.to_string(), self.policy(tenant).on_exhaustion, jobs));
            }
        }
        out
    }

    /// The price in force at `t_s` for a model at a site and a tier: the most specific one
    /// (model, site, tier given), then the latest to take effect, then the latest set.
    pub fn price_at(
        &self,
        t_s: u64,
        model: &str,
        site: &str,
        tier: Option<Tier>,
    ) -> Option<&Price> {
        self.prices
            .iter()
            .filter(|p| p.from_s <= t_s)
            .filter(|p| p.model.as_deref().is_none_or(|m| m == model))
            .filter(|p| p.site.as_deref().is_none_or(|s| s == site))
            .filter(|p| p.tier.is_none() || p.tier == tier)
            .max_by_key(|p| {
                let specific =
                    p.model.is_some() as u8 + p.site.is_some() as u8 + p.tier.is_some() as u8;
                (specific, p.from_s, p.version)
            })
    }
}
