//! Tenants as the engine tracks them: what they hold, what they used recently (for fair
//! share), and what their quotas still allow.

use gosok_model::{Catalog, ModelId, PriorityClass, TenantSpec};

use crate::ids::{ModelSet, SiteSet};

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Quota {
    pub models: ModelSet,
    pub guaranteed_milli: u64,
    pub limit_milli: u64,
    pub used_milli: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Tenant {
    pub spec: TenantSpec,
    pub weight: f64,
    pub share_cap: f64,
    pub sites: SiteSet,
    pub quotas: Vec<Quota>,
    pub default_priority: PriorityClass,
    /// Held now: accelerator thousandths, CPU thousandths, memory MiB.
    pub alloc: [u64; 3],
    /// Exponentially decayed average of `alloc`, half-life from the config.
    pub recent: [f64; 3],
}

impl Tenant {
    pub fn new(spec: TenantSpec, catalog: &Catalog, site_jurisdictions: &[String]) -> Tenant {
        let sites = if spec.allowed_jurisdictions.is_empty() {
            SiteSet::all(site_jurisdictions.len())
        } else {
            let mut s = 0u64;
            for (i, j) in site_jurisdictions.iter().enumerate() {
                if spec.allowed_jurisdictions.contains(j) {
                    s |= 1 << i;
                }
            }
            SiteSet(s)
        };
        let quotas = spec
            .quotas
            .iter()
            .map(|q| {
                let models = if q.accelerator == "*" {
                    ModelSet::all(catalog.len())
                } else {
                    catalog
                        .matching(&q.accelerator)
                        .into_iter()
                        .fold(ModelSet::default(), ModelSet::with)
                };
                Quota {
                    models,
                    guaranteed_milli: q.guaranteed * 1000,
                    limit_milli: (q.guaranteed + q.borrow_limit) * 1000,
                    used_milli: 0,
                }
            })
            .collect();
        Tenant {
            weight: spec.weight,
            share_cap: spec.share_cap,
            default_priority: spec.default_priority,
            sites,
            quotas,
            spec,
            alloc: [0; 3],
            recent: [0.0; 3],
        }
    }

    /// Replaces the spec, keeping what the tenant holds and used.
    pub fn update(&mut self, spec: TenantSpec, catalog: &Catalog, site_jurisdictions: &[String]) {
        let mut fresh = Tenant::new(spec, catalog, site_jurisdictions);
        fresh.alloc = self.alloc;
        fresh.recent = self.recent;
        for q in &mut fresh.quotas {
            q.used_milli = self
                .quotas
                .iter()
                .filter(|o| o.models == q.models)
                .map(|o| o.used_milli)
                .next()
                .unwrap_or(0);
        }
        *self = fresh;
    }

    /// Whether `add_milli` more of model `m` stays within every quota that covers `m`:
    /// the guarantee for non-preemptible work, guarantee plus borrowing for the rest.
    pub fn quota_allows(&self, m: ModelId, add_milli: u64, preemptible: bool) -> bool {
        self.quotas
            .iter()
            .filter(|q| q.models.contains(m))
            .all(|q| {
                let limit = if preemptible {
                    q.limit_milli
                } else {
                    q.guaranteed_milli
                };
                q.used_milli + add_milli <= limit
            })
    }

    /// Whether the tenant could ever run `need_milli` of model `m` at once.
    pub fn quota_could_ever_allow(&self, m: ModelId, need_milli: u64, preemptible: bool) -> bool {
        self.quotas
            .iter()
            .filter(|q| q.models.contains(m))
            .all(|q| {
                need_milli
                    <= if preemptible {
                        q.limit_milli
                    } else {
                        q.guaranteed_milli
                    }
            })
    }

    /// Whether `add_milli` of model `m` is entirely within the tenant's guarantees (and at
    /// least one quota guarantees it): the condition for reclaiming borrowed capacity.
    pub fn within_guarantee(&self, m: ModelId, add_milli: u64) -> bool {
        let mut covered = false;
        for q in self.quotas.iter().filter(|q| q.models.contains(m)) {
            if q.used_milli + add_milli > q.guaranteed_milli {
                return false;
            }
            covered |= q.guaranteed_milli > 0;
        }
        covered
    }

    /// Whether giving back `milli` of model `m` leaves the tenant at or above its guarantee
    /// on every quota covering `m`: only then was that capacity borrowed.
    pub fn is_borrowing(&self, m: ModelId, milli: u64) -> bool {
        self.quotas
            .iter()
            .filter(|q| q.models.contains(m))
            .all(|q| q.used_milli >= q.guaranteed_milli + milli)
    }

    pub fn charge(&mut self, m: Option<ModelId>, accel_milli: u64, cpu_milli: u64, mem_mib: u64) {
        self.alloc[0] += accel_milli;
        self.alloc[1] += cpu_milli;
        self.alloc[2] += mem_mib;
        if let Some(m) = m {
            for q in self.quotas.iter_mut().filter(|q| q.models.contains(m)) {
                q.used_milli += accel_milli;
            }
        }
    }

    pub fn refund(&mut self, m: Option<ModelId>, accel_milli: u64, cpu_milli: u64, mem_mib: u64) {
        self.alloc[0] -= accel_milli;
        self.alloc[1] -= cpu_milli;
        self.alloc[2] -= mem_mib;
        if let Some(m) = m {
            for q in self.quotas.iter_mut().filter(|q| q.models.contains(m)) {
                q.used_milli -= accel_milli;
            }
        }
    }

    /// Decays `recent` toward `alloc` over `dt_s` seconds.
    pub fn decay(&mut self, dt_s: u64, half_life_s: u64) {
        if dt_s == 0 {
            return;
        }
        let keep = if half_life_s == 0 {
            0.0
        } else {
            (-(dt_s as f64) / half_life_s as f64).exp2()
        };
        for r in 0..3 {
            self.recent[r] = self.recent[r] * keep + self.alloc[r] as f64 * (1.0 - keep);
        }
    }

    /// Dominant-resource share of held-now plus held-recently, divided by weight: lower goes
    /// first.
    pub fn fair_key(&self, capacity: [u64; 3]) -> f64 {
        let mut dominant: f64 = 0.0;
        for ((cap, held), recent) in capacity.iter().zip(self.alloc).zip(self.recent) {
            if *cap > 0 {
                dominant = dominant.max((held as f64 + recent) / *cap as f64);
            }
        }
        dominant / self.weight
    }
}
