//! Synthetic highways: sites, racks with power caps, nodes of a mix of accelerator models,
//! and tenants of every tier.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use gosok_model::topology::{MAX_NODE_ACCELERATORS, MAX_NODES, MAX_SITES};
use gosok_model::{
    Catalog, ClusterSpec, NodeSpec, NodeState, QuotaSpec, RackSpec, SiteSpec, TenantSpec, Tier,
};

use crate::{ParamError, check_count, check_real};

/// Site names in the order a highway grows: the first three are the founding sites; the rest
/// follow Korean cities that host or plan AI data centres. `(name, rack prefix, region)`.
pub const SITES: &[(&str, &str, &str)] = &[
    ("pohang", "ph", "gyeongbuk"),
    ("jeonnam", "jn", "jeonnam"),
    ("ulsan", "us", "ulsan"),
    ("gwangju", "gj", "gwangju"),
    ("daejeon", "dj", "chungnam"),
    ("busan", "bs", "busan"),
    ("gangneung", "gn", "gangwon"),
    ("cheongju", "cj", "chungbuk"),
    ("jeju", "jj", "jeju"),
    ("sejong", "sj", "sejong"),
    ("wonju", "wj", "gangwon"),
    ("gumi", "gm", "gyeongbuk"),
];

/// The first tenants of a highway: one anchor, public and academic institutes, companies and
/// start-ups. `(name, tier, fair-share weight)`. More tenants are numbered.
const TENANTS: &[(&str, Tier, f64)] = &[
    ("national-ai", Tier::Anchor, 4.0),
    ("kisti-hpc", Tier::Public, 2.0),
    ("hanbit-ai", Tier::Commercial, 1.5),
    ("snu-vision", Tier::Academic, 1.0),
    ("kaist-nlp", Tier::Academic, 1.0),
    ("dalbit-labs", Tier::Startup, 0.75),
    ("mirae-bio", Tier::Commercial, 1.0),
    ("saebyeok-robotics", Tier::Startup, 0.5),
];

/// What a synthetic highway looks like. `Default` is a mid-size three-site highway.
#[derive(Debug, Clone, PartialEq)]
pub struct HighwayParams {
    pub sites: usize,
    /// Nodes in all, spread evenly over the sites.
    pub nodes: usize,
    /// Accelerators in each node (all nodes hold the same number).
    pub accelerators_per_node: u64,
    pub nodes_per_rack: usize,
    /// Racks that share one scale-up domain (all nodes of a domain have the same model).
    pub racks_per_domain: usize,
    pub tenants: usize,
    /// Facility power budget of every site.
    pub site_power_budget_mw: f64,
    pub pue: f64,
    /// Headroom of a rack's power cap over the full draw of its nodes (0.1: 10 %).
    pub rack_power_margin: f64,
    /// Fraction of racks in older halls whose cap is only 80 % of their nodes' full draw, so
    /// that rack caps bind somewhere.
    pub constrained_rack_fraction: f64,
    /// Accelerator models (catalog names) and their relative frequency by scale-up domain.
    pub model_mix: Vec<(String, f64)>,
}

impl Default for HighwayParams {
    fn default() -> Self {
        HighwayParams {
            sites: 3,
            nodes: 1_000,
            accelerators_per_node: 8,
            nodes_per_rack: 4,
            racks_per_domain: 2,
            tenants: 8,
            site_power_budget_mw: 20.0,
            pue: 1.25,
            rack_power_margin: 0.10,
            constrained_rack_fraction: 0.10,
            model_mix: vec![
                ("H100".into(), 0.45),
                ("H200".into(), 0.30),
                ("B200".into(), 0.12),
                ("MI300X".into(), 0.08),
                ("RNGD".into(), 0.05),
            ],
        }
    }
}

impl HighwayParams {
    /// Checks every parameter; `highway` clamps instead, so call this first to tell a user.
    pub fn validate(&self) -> Result<(), ParamError> {
        check_count("sites", self.sites as u64, 1, MAX_SITES as u64)?;
        check_count("nodes", self.nodes as u64, 1, MAX_NODES)?;
        check_count(
            "accelerators_per_node",
            self.accelerators_per_node,
            1,
            MAX_NODE_ACCELERATORS,
        )?;
        check_count("nodes_per_rack", self.nodes_per_rack as u64, 1, 1024)?;
        check_count("racks_per_domain", self.racks_per_domain as u64, 1, 1024)?;
        check_count("tenants", self.tenants as u64, 1, 10_000)?;
        check_real(
            "site_power_budget_mw",
            self.site_power_budget_mw,
            0.001,
            10_000.0,
        )?;
        check_real("pue", self.pue, 1.0, 5.0)?;
        check_real("rack_power_margin", self.rack_power_margin, 0.0, 10.0)?;
        check_real(
            "constrained_rack_fraction",
            self.constrained_rack_fraction,
            0.0,
            1.0,
        )?;
        let catalog = Catalog::builtin();
        if self.model_mix.is_empty() {
            return Err(ParamError::new(
                "model_mix",
                "name at least one accelerator model",
            ));
        }
        for (name, weight) in &self.model_mix {
            if catalog.id(name).is_none() {
                return Err(ParamError::new(
                    "model_mix",
                    format!("{name:?} is not in the accelerator catalog"),
                ));
            }
            check_real("model_mix", *weight, 0.0, 1e6)?;
        }
        if self.model_mix.iter().all(|(_, w)| *w == 0.0) {
            return Err(ParamError::new(
                "model_mix",
                "at least one weight must be positive",
            ));
        }
        Ok(())
    }

    /// The nearest parameters that `validate` accepts.
    fn clamped(&self) -> HighwayParams {
        let clamp = |v: f64, lo: f64, hi: f64, default: f64| {
            if v.is_finite() {
                v.clamp(lo, hi)
            } else {
                default
            }
        };
        let d = HighwayParams::default();
        let catalog = Catalog::builtin();
        let mut mix: Vec<(String, f64)> = self
            .model_mix
            .iter()
            .filter(|(n, w)| catalog.id(n).is_some() && w.is_finite() && *w > 0.0)
            .map(|(n, w)| (n.clone(), w.min(1e6)))
            .collect();
        if mix.is_empty() {
            mix = d.model_mix.clone();
        }
        HighwayParams {
            sites: self.sites.clamp(1, MAX_SITES),
            nodes: self.nodes.clamp(1, MAX_NODES as usize),
            accelerators_per_node: self.accelerators_per_node.clamp(1, MAX_NODE_ACCELERATORS),
            nodes_per_rack: self.nodes_per_rack.clamp(1, 1024),
            racks_per_domain: self.racks_per_domain.clamp(1, 1024),
            tenants: self.tenants.clamp(1, 10_000),
            site_power_budget_mw: clamp(
                self.site_power_budget_mw,
                0.001,
                10_000.0,
                d.site_power_budget_mw,
            ),
            pue: clamp(self.pue, 1.0, 5.0, d.pue),
            rack_power_margin: clamp(self.rack_power_margin, 0.0, 10.0, d.rack_power_margin),
            constrained_rack_fraction: clamp(self.constrained_rack_fraction, 0.0, 1.0, 0.0),
            model_mix: mix,
        }
    }
}

/// A node's host hardware for an accelerator model, per 8 accelerators: CPU cores, memory
/// and the draw of everything but the accelerators (CPUs, memory, NICs, fans), from typical
/// 8-way servers of that generation (e.g. DGX H100: 2 × 56 cores, 2 TiB, 10.2 kW max of
/// which 5.6 kW are GPUs).
fn host(model: &str) -> (u64, u64, u64) {
    const GIB: u64 = 1024;
    match model {
        "H100" | "H200" => (112, 2048 * GIB, 2000),
        "B200" | "GB200" => (112, 4096 * GIB, 2500),
        "MI300X" => (128, 3072 * GIB, 2000),
        "RNGD" => (128, 1024 * GIB, 800),
        _ => (96, 1024 * GIB, 1500),
    }
}

/// Picks an index with probability proportional to its weight.
pub(crate) fn pick_weighted(rng: &mut ChaCha8Rng, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut x = rng.r#gen::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.iter().rposition(|w| *w > 0.0).unwrap_or(0)
}

/// The site's name, rack prefix and region; beyond the named sites, numbered ones.
fn site_names(i: usize) -> (String, String, String) {
    match SITES.get(i) {
        Some((n, p, r)) => (n.to_string(), p.to_string(), r.to_string()),
        None => (
            format!("kr-site-{:02}", i + 1),
            format!("s{:02}", i + 1),
            "kr".into(),
        ),
    }
}

/// Builds a highway. Parameters out of range are clamped to the nearest valid value (call
/// [`HighwayParams::validate`] first to report them instead), so this never fails and the
/// result always passes `ClusterSpec::resolve` against the built-in catalog.
pub fn highway(p: &HighwayParams, seed: u64) -> ClusterSpec {
    let p = p.clamped();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let catalog = Catalog::builtin();
    let weights: Vec<f64> = p.model_mix.iter().map(|m| m.1).collect();
    let apn = p.accelerators_per_node;
    let scale = apn.div_ceil(8);
    let mut spec = ClusterSpec::default();
    for s in 0..p.sites {
        let (name, prefix, region) = site_names(s);
        spec.site.push(SiteSpec {
            name: name.clone(),
            region,
            jurisdiction: "KR".into(),
            power_budget_mw: p.site_power_budget_mw,
            pue: p.pue,
        });
        let site_nodes = p.nodes / p.sites + usize::from(s < p.nodes % p.sites);
        let racks = site_nodes.div_ceil(p.nodes_per_rack);
        let mut model = String::new();
        for r in 0..racks {
            if r % p.racks_per_domain == 0 {
                model = p.model_mix[pick_weighted(&mut rng, &weights)].0.clone();
            }
            let domain = format!("{prefix}-d{:04}", r / p.racks_per_domain);
            let rack = format!("{prefix}-r{r:04}");
            let in_rack = (site_nodes - r * p.nodes_per_rack).min(p.nodes_per_rack);
            let (cores, mem_mib, base_w) = host(&model);
            let board_w = catalog
                .id(&model)
                .map_or(700, |m| catalog.get(m).board_power_w as u64);
            let full_w = (in_rack as u64 * (base_w * scale + apn * board_w)) as f64;
            let factor = if rng.gen_bool(p.constrained_rack_fraction) {
                0.8
            } else {
                1.0 + p.rack_power_margin
            };
            spec.rack.push(RackSpec {
                name: rack.clone(),
                site: name.clone(),
                power_cap_kw: (full_w * factor / 1000.0).round().max(1.0),
                scale_up_domain: Some(domain),
                allow_undeclared_nodes: false,
                max_nodes: None,
            });
            spec.node.push(NodeSpec {
                name: format!("{rack}-n"),
                rack,
                count: Some(in_rack as u64),
                cpu_cores: cores * scale,
                mem_mib: mem_mib * scale,
                accelerator: Some(model.clone()),
                accelerators: apn,
                base_power_w: base_w * scale,
                labels: Default::default(),
                taints: Vec::new(),
                state: NodeState::Up,
            });
        }
    }
    spec.tenant = tenants(&p, &mut rng);
    spec
}

fn tenants(p: &HighwayParams, rng: &mut ChaCha8Rng) -> Vec<TenantSpec> {
    let total = p.nodes as u64 * p.accelerators_per_node;
    // A share of the highway in whole accelerators, never less than one node's worth.
    let share = |f: f64| ((total as f64 * f).round() as u64).max(p.accelerators_per_node);
    (0..p.tenants)
        .map(|i| {
            let mut t = match TENANTS.get(i) {
                Some(&(name, tier, weight)) => {
                    let mut t = TenantSpec::new(name, tier);
                    t.weight = weight;
                    t
                }
                None => {
                    const TIERS: [Tier; 4] = [
                        Tier::Commercial,
                        Tier::Academic,
                        Tier::Startup,
                        Tier::Public,
                    ];
                    let mut t = TenantSpec::new(&format!("tenant-{:03}", i + 1), TIERS[i % 4]);
                    t.weight = (rng.gen_range(0.5..2.0f64) * 4.0).round() / 4.0;
                    t
                }
            };
            match i {
                // The anchor tenant financed the highway; its cap keeps room for everyone else.
                0 => t.share_cap = 0.4,
                // A public institute with a guarantee over every model, and data that must
                // stay in Korea.
                1 => {
                    t.quotas.push(QuotaSpec {
                        accelerator: "*".into(),
                        guaranteed: share(0.10),
                        borrow_limit: share(0.10),
                    });
                    t.allowed_jurisdictions = vec!["KR".into()];
                }
                // A company that bought a Hopper guarantee and may borrow more.
                2 => t.quotas.push(QuotaSpec {
                    accelerator: "nvidia-hopper".into(),
                    guaranteed: share(0.08),
                    borrow_limit: share(0.12),
                }),
                _ => {}
            }
            t
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_highway_and_another_seed_another() {
        let p = HighwayParams {
            nodes: 300,
            ..HighwayParams::default()
        };
        assert_eq!(highway(&p, 7), highway(&p, 7));
        assert_ne!(highway(&p, 7), highway(&p, 8));
    }

    #[test]
    fn a_highway_resolves_with_every_node_up_and_the_asked_sizes() {
        let p = HighwayParams {
            sites: 4,
            nodes: 1001,
            ..HighwayParams::default()
        };
        let c = highway(&p, 1);
        let nodes = c.resolve(&Catalog::builtin()).unwrap();
        assert_eq!(nodes.len(), 1001);
        assert!(
            nodes
                .iter()
                .all(|n| n.spec.state == NodeState::Up && n.spec.accelerators == 8)
        );
        let names: Vec<&str> = c.site.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["pohang", "jeonnam", "ulsan", "gwangju"]);
        assert!(
            c.site
                .iter()
                .all(|s| s.jurisdiction == "KR" && s.power_budget_mw == 20.0)
        );
        assert_eq!(c.tenant.len(), 8);
        assert_eq!(c.tenant[0].share_cap, 0.4);
        assert!(c.tenant[1..].iter().all(|t| t.share_cap == 1.0));
        assert_eq!(c.tenant.iter().filter(|t| !t.quotas.is_empty()).count(), 2);
    }

    #[test]
    fn the_model_mix_is_mostly_hopper_with_some_of_the_others() {
        let c = highway(
            &HighwayParams {
                nodes: 4000,
                ..HighwayParams::default()
            },
            3,
        );
        let count = |m: &str| {
            c.node
                .iter()
                .filter(|n| n.accelerator.as_deref() == Some(m))
                .map(|n| n.count.unwrap_or(1))
                .sum::<u64>()
        };
        let hopper = count("H100") + count("H200");
        assert!(hopper > 2400, "{hopper} of 4000 nodes are Hopper");
        for m in ["B200", "MI300X", "RNGD"] {
            assert!(count(m) > 0, "no {m} nodes");
        }
    }

    #[test]
    fn rack_caps_cover_full_draw_except_in_constrained_racks() {
        let c = highway(&HighwayParams::default(), 5);
        let catalog = Catalog::builtin();
        let mut constrained = 0;
        for (r, n) in c.rack.iter().zip(&c.node) {
            let board = catalog
                .get(catalog.id(n.accelerator.as_deref().unwrap()).unwrap())
                .board_power_w;
            let full_kw =
                n.count.unwrap() as f64 * (n.base_power_w + 8 * board as u64) as f64 / 1000.0;
            if r.power_cap_kw < full_kw {
                constrained += 1;
                assert!((r.power_cap_kw - 0.8 * full_kw).abs() <= 1.0);
            } else {
                assert!((r.power_cap_kw - 1.1 * full_kw).abs() <= 1.0);
            }
        }
        assert!(
            constrained > 0 && constrained < c.rack.len() / 4,
            "{constrained} constrained racks"
        );
    }

    #[test]
    fn bad_parameters_are_named_and_clamped() {
        let bad = HighwayParams {
            nodes: 0,
            ..HighwayParams::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "nodes");
        let c = highway(&bad, 1);
        assert_eq!(c.resolve(&Catalog::builtin()).unwrap().len(), 1);
        let bad = HighwayParams {
            sites: 65,
            ..HighwayParams::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "sites");
        assert_eq!(highway(&bad, 1).site.len(), 64);
        let bad = HighwayParams {
            model_mix: vec![("H999".into(), 1.0)],
            ..HighwayParams::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "model_mix");
        assert!(highway(&bad, 1).resolve(&Catalog::builtin()).is_ok());
        let bad = HighwayParams {
            pue: f64::NAN,
            ..HighwayParams::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "pue");
        assert!(HighwayParams::default().validate().is_ok());
    }

    #[test]
    fn many_sites_and_tenants_get_valid_names() {
        let p = HighwayParams {
            sites: 20,
            nodes: 40,
            tenants: 12,
            ..HighwayParams::default()
        };
        let c = highway(&p, 2);
        assert!(c.resolve(&Catalog::builtin()).is_ok());
        assert_eq!(c.site[19].name, "kr-site-20");
        assert_eq!(c.tenant[11].name, "tenant-012");
    }
}
