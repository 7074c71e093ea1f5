//! `gosok plan site`: from a facility power budget to servers, accelerators, HBM, DRAM dies and
//! wafers, capital cost and yearly energy.
//!
//! The arithmetic, every term named after the input it comes from:
//!
//! - IT power = facility budget / PUE.
//! - One server draws `base + n × board × utilisation + network`, the engine's power model
//!   (a node's base draw plus its devices in proportion to their use) plus the server's share
//!   of the scale-out fabric. `base` is the reference server's published maximum minus its
//!   accelerators at full board power; `network = ports × switch ports per host port × switch
//!   watts per port`.
//! - servers = ⌊IT power / server draw⌋ (whole servers only).
//! - HBM: accelerators × stacks per accelerator; dies = stacks × dies per stack; wafers =
//!   dies / (gross dies per wafer × die yield × stack yield), gross dies per wafer by the
//!   standard formula `π(d/2)²/S − πd/√(2S)`.
//! - capex = servers × server price; energy = servers × draw at the average utilisation × PUE
//!   × 8,760 h.

use std::collections::BTreeMap;

use serde::Serialize;

use gosok_model::Catalog;

use crate::PlanError;
use crate::params::Parameters;

/// Hours in a (non-leap) year.
pub const HOURS_PER_YEAR: f64 = 8760.0;

/// What `plan site` is asked; `None` means "from the parameters".
#[derive(Debug, Clone, Default)]
pub struct SiteInputs {
    pub power_mw: f64,
    pub pue: f64,
    pub model: String,
    /// Fraction of board power each accelerator is provisioned for (1 = its maximum).
    pub utilisation: f64,
    /// Average fraction of board power over the year (energy); default: `utilisation`.
    pub average_utilisation: Option<f64>,
    pub node_accelerators: Option<u64>,
    pub node_base_power_w: Option<f64>,
    pub board_power_w: Option<f64>,
    pub network_ports: Option<u64>,
    pub switch_w_per_port: Option<f64>,
    pub switch_ports_per_host_port: Option<f64>,
    pub node_price_krw: Option<f64>,
    pub krw_per_usd: Option<f64>,
    pub energy_price_krw_per_kwh: Option<f64>,
    pub hbm_stacks: Option<u64>,
    pub dies_per_stack: Option<u64>,
    pub die_gbit: Option<u64>,
    pub die_area_mm2: Option<f64>,
    pub die_yield: Option<f64>,
    pub stack_yield: Option<f64>,
    pub wafer_diameter_mm: Option<f64>,
}

/// One input as used: its value and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Input {
    pub value: f64,
    pub from: String,
}

/// The answer; the first keys are the ones the issue names, `inputs` traces every number.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SitePlan {
    pub it_power_mw: f64,
    pub nodes: u64,
    pub accelerators: u64,
    pub hbm_tb: f64,
    pub hbm_stacks: u64,
    pub dram_dies: u64,
    pub dram_wafers: u64,
    /// `None` when no server price is known (the catalog has none and no flag gave one).
    pub capex_krw: Option<f64>,
    pub energy_mwh_per_year: f64,
    pub energy_cost_krw_per_year: f64,
    pub model: String,
    pub server: String,
    /// Draw of one server at the planning utilisation, fabric share included.
    pub node_power_w: f64,
    /// IT power the servers draw at the planning utilisation (≤ the IT budget).
    pub it_power_used_mw: f64,
    pub gross_dies_per_wafer: u64,
    pub inputs: BTreeMap<String, Input>,
    pub notes: Vec<String>,
}

fn check(flag: &str, v: f64, ok: bool, what: &str) -> Result<f64, PlanError> {
    if v.is_finite() && ok {
        Ok(v)
    } else {
        Err(PlanError::usage(flag, format!("{v} is not {what}")))
    }
}

/// The gross dies a wafer of diameter `d_mm` holds for dies of `area_mm2`.
pub fn gross_dies_per_wafer(d_mm: f64, area_mm2: f64) -> u64 {
    let g = std::f64::consts::PI * (d_mm / 2.0).powi(2) / area_mm2
        - std::f64::consts::PI * d_mm / (2.0 * area_mm2).sqrt();
    g.max(0.0).floor() as u64
}

/// A model by name or alias, in any case (the catalog's own matching).
pub fn model_id(catalog: &Catalog, name: &str) -> Option<gosok_model::ModelId> {
    catalog.canonical(name).and_then(|n| catalog.id(n))
}

/// Plans one site.
pub fn plan_site(
    inputs: &SiteInputs,
    catalog: &Catalog,
    params: &Parameters,
) -> Result<SitePlan, PlanError> {
    let i = inputs;
    check(
        "--power-mw",
        i.power_mw,
        i.power_mw > 0.0,
        "a positive power in MW",
    )?;
    check("--pue", i.pue, i.pue >= 1.0, "a PUE (it is at least 1)")?;
    check(
        "--utilisation",
        i.utilisation,
        i.utilisation > 0.0 && i.utilisation <= 1.0,
        "a fraction in (0, 1]",
    )?;
    let Some(model_id) = model_id(catalog, &i.model) else {
        let names: Vec<&str> = catalog.models().iter().map(|m| m.name.as_str()).collect();
        let hint = catalog
            .suggest(&i.model)
            .map_or(String::new(), |s| format!("did you mean {s:?}? "));
        return Err(PlanError::usage(
            "--model",
            format!(
                "{:?} is not in the accelerator catalog ({hint}models: {})",
                i.model,
                names.join(", ")
            ),
        ));
    };
    let m = catalog.get(model_id);
    let server = params.server(&m.name);
    let hbm = params.hbm(&m.name);
    let mut used: BTreeMap<String, Input> = BTreeMap::new();
    let mut notes = Vec::new();
    let mut put = |name: &str, value: f64, from: String| {
        used.insert(name.to_string(), Input { value, from });
        value
    };
    let flag = |f: &str| format!("flag {f}");
    put("power_mw", i.power_mw, flag("--power-mw"));
    put("pue", i.pue, flag("--pue"));
    put("utilisation", i.utilisation, flag("--utilisation"));
    let avg_util = match i.average_utilisation {
        Some(a) => {
            check(
                "--average-utilisation",
                a,
                (0.0..=1.0).contains(&a),
                "a fraction in [0, 1]",
            )?;
            put("average_utilisation", a, flag("--average-utilisation"))
        }
        None => put(
            "average_utilisation",
            i.utilisation,
            "= utilisation (no --average-utilisation)".into(),
        ),
    };

    // One server's draw.
    let board_w = match i.board_power_w {
        Some(b) => put(
            "board_power_w",
            check("--board-power-w", b, b > 0.0, "a positive power in W")?,
            flag("--board-power-w"),
        ),
        None => put(
            "board_power_w",
            m.board_power_w as f64,
            format!("catalog {}.board_power_w ({})", m.name, m.source),
        ),
    };
    let n = match (i.node_accelerators, server) {
        (Some(n), _) => {
            check(
                "--node-accelerators",
                n as f64,
                n > 0,
                "a positive accelerator count",
            )?;
            put("node_accelerators", n as f64, flag("--node-accelerators")) as u64
        }
        (None, Some(s)) => put(
            "node_accelerators",
            s.accelerators as f64,
            format!("planning server {:?} ({})", s.name, s.source),
        ) as u64,
        (None, None) => put(
            "node_accelerators",
            8.0,
            "default 8 (no reference server for this model)".into(),
        ) as u64,
    };
    let base_w = match (i.node_base_power_w, server) {
        (Some(b), _) => put(
            "node_base_power_w",
            check("--node-base-power-w", b, b >= 0.0, "a power in W")?,
            flag("--node-base-power-w"),
        ),
        (None, Some(s)) => {
            let base = s.max_power_w - s.accelerators as f64 * m.board_power_w as f64;
            if base < 0.0 {
                return Err(PlanError::usage(
                    "--node-base-power-w",
                    format!(
                        "the reference server {:?} draws {} W at most, less than its {} accelerators at {} W; give the base power",
                        s.name, s.max_power_w, s.accelerators, m.board_power_w
                    ),
                ));
            }
            put(
                "node_base_power_w",
                base,
                format!(
                    "{:?} maximum {} W − {} × {} W board power ({})",
                    s.name, s.max_power_w, s.accelerators, m.board_power_w, s.source
                ),
            )
        }
        (None, None) => {
            return Err(PlanError::usage(
                "--node-base-power-w",
                format!(
                    "the planning parameters have no reference server for {}; give --node-base-power-w (and --node-accelerators, --network-ports)",
                    m.name
                ),
            ));
        }
    };
    let ports = match (i.network_ports, server) {
        (Some(p), _) => put("network_ports", p as f64, flag("--network-ports")),
        (None, Some(s)) => put(
            "network_ports",
            s.network_ports as f64,
            format!("planning server {:?}", s.name),
        ),
        (None, None) => put("network_ports", n as f64, "one port per accelerator".into()),
    };
    let switch_w = match i.switch_w_per_port {
        Some(v) => put(
            "switch_w_per_port",
            check("--switch-w-per-port", v, v >= 0.0, "a power in W")?,
            flag("--switch-w-per-port"),
        ),
        None => put(
            "switch_w_per_port",
            params.network.switch_w_per_port,
            format!("planning network ({})", params.network.source),
        ),
    };
    let switch_ports = match i.switch_ports_per_host_port {
        Some(v) => put(
            "switch_ports_per_host_port",
            check("--switch-ports-per-host-port", v, v >= 0.0, "a port count")?,
            flag("--switch-ports-per-host-port"),
        ),
        None => put(
            "switch_ports_per_host_port",
            params.network.switch_ports_per_host_port,
            "planning network".into(),
        ),
    };
    let network_w = ports * switch_ports * switch_w;
    let node_w = base_w + n as f64 * board_w * i.utilisation + network_w;
    let it_power_w = i.power_mw * 1e6 / i.pue;
    let nodes = (it_power_w / node_w).floor() as u64;
    let accelerators = nodes * n;
    if nodes == 0 {
        notes.push(format!(
            "the IT budget ({:.1} kW) is less than one server's draw ({:.1} kW)",
            it_power_w / 1e3,
            node_w / 1e3
        ));
    }

    // Memory and wafers.
    let hbm_tb = accelerators as f64 * m.hbm_gib as f64 * (1u64 << 30) as f64 / 1e12;
    put(
        "hbm_gib",
        m.hbm_gib as f64,
        format!("catalog {}.hbm_gib", m.name),
    );
    let from_hbm = |f: &str| match hbm {
        Some(h) => Ok(format!("planning hbm {} ({})", h.model, h.source)),
        None => Err(PlanError::usage(
            f,
            format!(
                "the planning parameters do not say how {}'s memory is built; give --hbm-stacks, --dies-per-stack, --die-gbit and --die-area-mm2",
                m.name
            ),
        )),
    };
    let stacks_per = match i.hbm_stacks {
        Some(v) => put("hbm_stacks_per_accelerator", v as f64, flag("--hbm-stacks")),
        None => put(
            "hbm_stacks_per_accelerator",
            hbm.map_or(0, |h| h.stacks) as f64,
            from_hbm("--hbm-stacks")?,
        ),
    } as u64;
    let dies_per = match i.dies_per_stack {
        Some(v) => put("dies_per_stack", v as f64, flag("--dies-per-stack")),
        None => put(
            "dies_per_stack",
            hbm.map_or(0, |h| h.dies_per_stack) as f64,
            from_hbm("--dies-per-stack")?,
        ),
    } as u64;
    let die_gbit = match i.die_gbit {
        Some(v) => put("die_gbit", v as f64, flag("--die-gbit")),
        None => put(
            "die_gbit",
            hbm.map_or(0, |h| h.die_gbit) as f64,
            from_hbm("--die-gbit")?,
        ),
    };
    let die_area = match i.die_area_mm2 {
        Some(v) => put(
            "die_area_mm2",
            check("--die-area-mm2", v, v > 0.0, "a positive area in mm²")?,
            flag("--die-area-mm2"),
        ),
        None => put(
            "die_area_mm2",
            hbm.map_or(0.0, |h| h.die_area_mm2),
            from_hbm("--die-area-mm2")?,
        ),
    };
    for (f, v) in [("--hbm-stacks", stacks_per), ("--dies-per-stack", dies_per)] {
        check(f, v as f64, v > 0, "a positive count")?;
    }
    check(
        "--die-gbit",
        die_gbit,
        die_gbit > 0.0,
        "a positive capacity",
    )?;
    let die_yield = match i.die_yield {
        Some(v) => put(
            "die_yield",
            check(
                "--die-yield",
                v,
                v > 0.0 && v <= 1.0,
                "a fraction in (0, 1]",
            )?,
            flag("--die-yield"),
        ),
        None => put(
            "die_yield",
            params.hbm_yield.die,
            format!("planning hbm_yield ({})", params.hbm_yield.source),
        ),
    };
    let stack_yield = match i.stack_yield {
        Some(v) => put(
            "stack_yield",
            check(
                "--stack-yield",
                v,
                v > 0.0 && v <= 1.0,
                "a fraction in (0, 1]",
            )?,
            flag("--stack-yield"),
        ),
        None => put(
            "stack_yield",
            params.hbm_yield.stack,
            "planning hbm_yield".into(),
        ),
    };
    let diameter = match i.wafer_diameter_mm {
        Some(v) => put(
            "wafer_diameter_mm",
            check("--wafer-diameter-mm", v, v > 0.0, "a positive diameter")?,
            flag("--wafer-diameter-mm"),
        ),
        None => put(
            "wafer_diameter_mm",
            params.wafer.diameter_mm,
            format!("planning wafer ({})", params.wafer.source),
        ),
    };
    let hbm_stacks = accelerators * stacks_per;
    let dram_dies = hbm_stacks * dies_per;
    let gross = gross_dies_per_wafer(diameter, die_area);
    if gross == 0 {
        return Err(PlanError::usage(
            "--die-area-mm2",
            format!("a {die_area} mm² die does not fit a {diameter} mm wafer"),
        ));
    }
    let good_per_wafer = gross as f64 * die_yield * stack_yield;
    let dram_wafers = (dram_dies as f64 / good_per_wafer).ceil() as u64;
    let raw_gb = stacks_per as f64 * dies_per as f64 * die_gbit / 8.0;
    if raw_gb + 1e-9 < m.hbm_gib as f64 * (1u64 << 30) as f64 / 1e9 * 0.9 {
        notes.push(format!(
            "the HBM construction ({stacks_per} stacks × {dies_per} dies × {die_gbit} Gb = {raw_gb:.0} GB) holds less than the catalog's {} GiB",
            m.hbm_gib
        ));
    }

    // Money and energy.
    let krw_per_usd = match i.krw_per_usd {
        Some(v) => put(
            "krw_per_usd",
            check("--krw-per-usd", v, v > 0.0, "a positive rate")?,
            flag("--krw-per-usd"),
        ),
        None => put(
            "krw_per_usd",
            params.currency.krw_per_usd,
            format!("planning currency ({})", params.currency.source),
        ),
    };
    let price_krw = match (i.node_price_krw, server.and_then(|s| s.price_usd)) {
        (Some(p), _) => Some(put(
            "node_price_krw",
            check("--node-price-krw", p, p >= 0.0, "a price in KRW")?,
            flag("--node-price-krw"),
        )),
        (None, Some(usd)) => Some(put(
            "node_price_krw",
            usd * krw_per_usd,
            format!("planning server price {usd} USD × krw_per_usd"),
        )),
        (None, None) => {
            notes.push(format!(
                "no server price for {} in the planning parameters: capex_krw is null (give --node-price-krw)",
                m.name
            ));
            None
        }
    };
    let energy_price = match i.energy_price_krw_per_kwh {
        Some(v) => put(
            "energy_price_krw_per_kwh",
            check(
                "--energy-price-krw-per-kwh",
                v,
                v >= 0.0,
                "a price in KRW/kWh",
            )?,
            flag("--energy-price-krw-per-kwh"),
        ),
        None => put(
            "energy_price_krw_per_kwh",
            params.energy.price_krw_per_kwh,
            format!("planning energy ({})", params.energy.source),
        ),
    };
    let node_avg_w = base_w + n as f64 * board_w * avg_util + network_w;
    let energy_mwh = nodes as f64 * node_avg_w * i.pue * HOURS_PER_YEAR / 1e6;
    Ok(SitePlan {
        it_power_mw: it_power_w / 1e6,
        nodes,
        accelerators,
        hbm_tb,
        hbm_stacks,
        dram_dies,
        dram_wafers,
        capex_krw: price_krw.map(|p| p * nodes as f64),
        energy_mwh_per_year: energy_mwh,
        energy_cost_krw_per_year: energy_mwh * 1000.0 * energy_price,
        model: m.name.clone(),
        server: server.map_or_else(|| "given by flags".to_string(), |s| s.name.clone()),
        node_power_w: node_w,
        it_power_used_mw: nodes as f64 * node_w / 1e6,
        gross_dies_per_wafer: gross,
        inputs: used,
        notes,
    })
}

/// A readable summary of a plan.
pub fn table(p: &SitePlan) -> String {
    let mut s = String::new();
    let mut row = |k: &str, v: String| s.push_str(&format!("{k:<28} {v}\n"));
    row("model", format!("{} in {}", p.model, p.server));
    row("IT power", format!("{:.3} MW", p.it_power_mw));
    row(
        "server draw",
        format!(
            "{:.2} kW (servers draw {:.3} MW)",
            p.node_power_w / 1e3,
            p.it_power_used_mw
        ),
    );
    row("servers", group(p.nodes));
    row("accelerators", group(p.accelerators));
    row(
        "HBM",
        format!("{:.1} TB in {} stacks", p.hbm_tb, group(p.hbm_stacks)),
    );
    row("DRAM dies", group(p.dram_dies));
    row(
        "DRAM wafers (300 mm class)",
        format!(
            "{} ({} gross dies per wafer)",
            group(p.dram_wafers),
            p.gross_dies_per_wafer
        ),
    );
    row(
        "capital cost",
        match p.capex_krw {
            Some(c) => format!("{} KRW (servers only)", group(c.round() as u64)),
            None => "unknown (no server price)".into(),
        },
    );
    row(
        "energy per year",
        format!(
            "{} MWh, {} KRW",
            group(p.energy_mwh_per_year.round() as u64),
            group(p.energy_cost_krw_per_year.round() as u64)
        ),
    );
    for n in &p.notes {
        s.push_str(&format!("note: {n}\n"));
    }
    s
}

/// 1234567 → "1,234,567".
pub fn group(v: u64) -> String {
    let d = v.to_string();
    let mut out = String::new();
    for (k, c) in d.chars().enumerate() {
        if k > 0 && (d.len() - k).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(model: &str) -> SiteInputs {
        SiteInputs {
            power_mw: 20.0,
            pue: 1.3,
            model: model.into(),
            utilisation: 1.0,
            ..SiteInputs::default()
        }
    }

    #[test]
    fn dgx_h100_maximum_is_reproduced() {
        // NVIDIA's DGX H100 user guide: 10.2 kW maximum for 8 GPUs. With the fabric left out
        // and every GPU at its 700 W board power, one server must draw exactly that.
        let catalog = Catalog::builtin();
        let params = Parameters::builtin();
        let mut i = inputs("H100");
        i.switch_w_per_port = Some(0.0);
        let p = plan_site(&i, &catalog, &params).unwrap();
        assert!(
            (p.node_power_w - 10_200.0).abs() < 1e-9,
            "{}",
            p.node_power_w
        );
        // 20 MW / 1.3 = 15.385 MW of IT power = 1,508 whole servers.
        assert_eq!(p.nodes, (20e6 / 1.3 / 10_200.0_f64).floor() as u64);
        assert_eq!(p.nodes, 1508);
        assert_eq!(p.accelerators, 1508 * 8);
    }

    #[test]
    fn hbm_and_wafers_follow_the_construction() {
        let catalog = Catalog::builtin();
        let params = Parameters::builtin();
        let p = plan_site(&inputs("H100"), &catalog, &params).unwrap();
        assert_eq!(p.hbm_stacks, p.accelerators * 5);
        assert_eq!(p.dram_dies, p.hbm_stacks * 8);
        // 300 mm wafer, 110 mm²: 706.86·…: π·150²/110 − π·300/√220 = 642.6 − 63.5.
        assert_eq!(p.gross_dies_per_wafer, 579);
        let expect = (p.dram_dies as f64 / (579.0 * 0.8 * 0.6)).ceil() as u64;
        assert_eq!(p.dram_wafers, expect);
        assert!((p.hbm_tb - p.accelerators as f64 * 80.0 * 1.073_741_824 / 1000.0).abs() < 1e-6);
        // Network share: 8 ports × 3 switch ports × 26.875 W.
        assert!((p.node_power_w - 10_200.0 - 645.0).abs() < 1e-9);
        assert!(p.capex_krw.unwrap() > 0.0);
        assert!(p.inputs["board_power_w"].from.contains("catalog H100"));
    }

    #[test]
    fn bad_input_names_the_flag() {
        let catalog = Catalog::builtin();
        let params = Parameters::builtin();
        type Change = Box<dyn Fn(&mut SiteInputs)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|i| i.power_mw = -1.0), "--power-mw"),
            (Box::new(|i| i.pue = 0.9), "--pue"),
            (Box::new(|i| i.model = "H1000".into()), "--model"),
            (Box::new(|i| i.utilisation = 1.5), "--utilisation"),
            (Box::new(|i| i.die_yield = Some(0.0)), "--die-yield"),
            (Box::new(|i| i.die_area_mm2 = Some(1e6)), "--die-area-mm2"),
            (Box::new(|i| i.model = "T4".into()), "--node-base-power-w"),
        ];
        for (f, flag) in cases {
            let mut i = inputs("H100");
            f(&mut i);
            let e = plan_site(&i, &catalog, &params).unwrap_err();
            assert!(e.is_usage(), "{e}");
            assert!(e.to_string().contains(flag), "{e} should name {flag}");
        }
    }

    #[test]
    fn model_names_are_case_insensitive() {
        let catalog = Catalog::builtin();
        let params = Parameters::builtin();
        let p = plan_site(&inputs("b200"), &catalog, &params).unwrap();
        assert_eq!(p.model, "B200");
        assert_eq!(p.inputs["node_base_power_w"].value, 14_300.0 - 8.0 * 1000.0);
    }

    #[test]
    fn grouping() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1_234_567), "1,234,567");
    }
}
