//! The planning parameters (`catalog/planning.toml`): servers, HBM construction, wafers, yields,
//! network, energy price and exchange rate, each with the source it comes from.

use serde::{Deserialize, Serialize};

use crate::PlanError;

/// The parameters gosok ships with.
pub const BUILTIN_PLANNING_TOML: &str = include_str!("../../../catalog/planning.toml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wafer {
    pub diameter_mm: f64,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HbmYield {
    /// Fraction of core dies that test good before stacking.
    pub die: f64,
    /// Fraction of assembled stacks that pass.
    pub stack: f64,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Energy {
    pub price_krw_per_kwh: f64,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Currency {
    pub krw_per_usd: f64,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub switch_w_per_port: f64,
    pub switch_ports_per_host_port: f64,
    pub source: String,
}

/// The reference server of one accelerator model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub model: String,
    pub name: String,
    pub accelerators: u64,
    /// The vendor's published maximum system power.
    pub max_power_w: f64,
    pub network_ports: u64,
    #[serde(default)]
    pub price_usd: Option<f64>,
    pub source: String,
}

/// How one accelerator model's memory is built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hbm {
    pub model: String,
    pub stacks: u64,
    pub dies_per_stack: u64,
    pub die_gbit: u64,
    pub die_area_mm2: f64,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parameters {
    pub wafer: Wafer,
    pub hbm_yield: HbmYield,
    pub energy: Energy,
    pub currency: Currency,
    pub network: Network,
    #[serde(default)]
    pub server: Vec<Server>,
    #[serde(default)]
    pub hbm: Vec<Hbm>,
}

impl Parameters {
    /// The built-in parameters; they are part of the binary and tested, so they always parse.
    pub fn builtin() -> Parameters {
        match Parameters::from_toml(BUILTIN_PLANNING_TOML) {
            Ok(p) => p,
            Err(e) => unreachable!("built-in planning parameters are invalid: {e}"),
        }
    }

    /// Parses and checks a parameter file: every number finite and in its range, one entry
    /// per model.
    pub fn from_toml(text: &str) -> Result<Parameters, PlanError> {
        let p: Parameters =
            toml::from_str(text).map_err(|e| PlanError::usage("--parameters", e.to_string()))?;
        p.check()?;
        Ok(p)
    }

    fn check(&self) -> Result<(), PlanError> {
        let positive = |field: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(PlanError::usage(
                    "--parameters",
                    format!("{field} must be a positive number, not {v}"),
                ))
            }
        };
        let fraction = |field: &str, v: f64| {
            if v.is_finite() && v > 0.0 && v <= 1.0 {
                Ok(())
            } else {
                Err(PlanError::usage(
                    "--parameters",
                    format!("{field} must be in (0, 1], not {v}"),
                ))
            }
        };
        positive("wafer.diameter_mm", self.wafer.diameter_mm)?;
        fraction("hbm_yield.die", self.hbm_yield.die)?;
        fraction("hbm_yield.stack", self.hbm_yield.stack)?;
        positive("energy.price_krw_per_kwh", self.energy.price_krw_per_kwh)?;
        positive("currency.krw_per_usd", self.currency.krw_per_usd)?;
        positive("network.switch_w_per_port", self.network.switch_w_per_port)?;
        positive(
            "network.switch_ports_per_host_port",
            self.network.switch_ports_per_host_port,
        )?;
        let mut seen = std::collections::BTreeSet::new();
        for s in &self.server {
            if !seen.insert(("server", s.model.to_ascii_lowercase())) {
                return Err(PlanError::usage(
                    "--parameters",
                    format!("two [[server]] entries for model {:?}", s.model),
                ));
            }
            positive(&format!("server {:?} max_power_w", s.model), s.max_power_w)?;
            positive(
                &format!("server {:?} accelerators", s.model),
                s.accelerators as f64,
            )?;
            if let Some(p) = s.price_usd {
                positive(&format!("server {:?} price_usd", s.model), p)?;
            }
        }
        for h in &self.hbm {
            if !seen.insert(("hbm", h.model.to_ascii_lowercase())) {
                return Err(PlanError::usage(
                    "--parameters",
                    format!("two [[hbm]] entries for model {:?}", h.model),
                ));
            }
            positive(&format!("hbm {:?} stacks", h.model), h.stacks as f64)?;
            positive(
                &format!("hbm {:?} dies_per_stack", h.model),
                h.dies_per_stack as f64,
            )?;
            positive(&format!("hbm {:?} die_gbit", h.model), h.die_gbit as f64)?;
            positive(&format!("hbm {:?} die_area_mm2", h.model), h.die_area_mm2)?;
        }
        Ok(())
    }

    /// The reference server of a model (by its catalog name).
    pub fn server(&self, model: &str) -> Option<&Server> {
        self.server
            .iter()
            .find(|s| s.model.eq_ignore_ascii_case(model))
    }

    /// How a model's memory is built (by its catalog name).
    pub fn hbm(&self, model: &str) -> Option<&Hbm> {
        self.hbm
            .iter()
            .find(|h| h.model.eq_ignore_ascii_case(model))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_parses_and_names_catalog_models() {
        let p = Parameters::builtin();
        let catalog = gosok_model::Catalog::builtin();
        for s in &p.server {
            assert!(catalog.id(&s.model).is_some(), "server model {}", s.model);
        }
        for h in &p.hbm {
            assert!(catalog.id(&h.model).is_some(), "hbm model {}", h.model);
        }
        assert!(p.server("h100").is_some());
    }

    #[test]
    fn bad_parameters_are_named() {
        let text = BUILTIN_PLANNING_TOML.replace("die = 0.8", "die = 1.5");
        let e = Parameters::from_toml(&text).unwrap_err().to_string();
        assert!(e.contains("hbm_yield.die"), "{e}");
        let text = BUILTIN_PLANNING_TOML.replace("max_power_w = 14300", "max_power_w = -1");
        let e = Parameters::from_toml(&text).unwrap_err().to_string();
        assert!(e.contains("B200") && e.contains("max_power_w"), "{e}");
    }
}
