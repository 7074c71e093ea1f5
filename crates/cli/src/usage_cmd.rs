//! The accounting commands: `gosok usage`, `gosok statement`, `gosok programme`,
//! `gosok grant`, `gosok allocations`, `gosok prices`.

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::client::{Client, Conn, Output, enc, s, table};

#[derive(Subcommand)]
pub enum Command {
    /// Metered usage: accelerator-hours, HBM, CPU, memory, energy and cost, grouped as
    /// asked (tenants see their own).
    Usage(UsageArgs),
    /// A tenant's statement for a month: the attempts that ended in it, what they cost, and
    /// each allocation's draw-down and balance.
    Statement(StatementArgs),
    /// Programmes accelerator time is granted from: `create`, `list`.
    Programme(ProgrammeArgs),
    /// Grant a tenant accelerator-hours from a programme.
    Grant(GrantArgs),
    /// Allocations and their balances; `policy TENANT` sets what running out does.
    Allocations(AllocationsArgs),
    /// Prices (KRW per accelerator-hour and per kWh), every version; `set` adds one.
    Prices(PricesArgs),
    /// Operators' reports over a window: `share` (each tenant's peak and average share of
    /// the highway against its cap: anti-monopoly evidence) and `fairness`.
    Report(ReportArgs),
}

#[derive(Args)]
pub struct ReportArgs {
    #[command(subcommand)]
    kind: ReportKind,
    /// Window start: YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ, UTC (default: 30 days before --to).
    #[arg(long, global = true)]
    from: Option<String>,
    /// Window end (default: now).
    #[arg(long, global = true)]
    to: Option<String>,
    #[command(flatten)]
    c: Conn,
}

#[derive(Subcommand, Clone, Copy)]
enum ReportKind {
    /// Peak and average share of the highway by accelerator value, against each cap.
    Share,
    /// Share received against entitlement, Jain's index, preemptions suffered and caused.
    Fairness,
}

/// Quota use as `accelerator used/guaranteed+borrow` per quota.
pub fn quota_use(v: &Value) -> String {
    let parts: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|q| {
                    format!(
                        "{} {}/{}",
                        s(&q["accelerator"]),
                        s(&q["used"]),
                        s(&q["limit"])
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

#[derive(Args)]
pub struct UsageArgs {
    /// Only this tenant (admin tokens; a tenant token sees its own).
    #[arg(long)]
    tenant: Option<String>,
    /// Window start: YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ, UTC (default: 30 days before --to).
    #[arg(long)]
    from: Option<String>,
    /// Window end (default: now).
    #[arg(long)]
    to: Option<String>,
    /// Comma-separated: tenant, model, site, job, programme, day (default tenant,model,site).
    #[arg(long)]
    group_by: Option<String>,
    #[command(flatten)]
    c: Conn,
}

#[derive(Args)]
pub struct StatementArgs {
    tenant: String,
    /// The month, YYYY-MM.
    #[arg(long)]
    month: String,
    #[command(flatten)]
    c: Conn,
}

#[derive(Args)]
pub struct ProgrammeArgs {
    #[command(subcommand)]
    action: ProgrammeAction,
    #[command(flatten)]
    c: Conn,
}

#[derive(Subcommand)]
enum ProgrammeAction {
    /// Create a programme for a period.
    Create {
        name: String,
        /// First day, YYYY-MM-DD (UTC).
        #[arg(long)]
        from: String,
        /// The day after the last, YYYY-MM-DD (UTC).
        #[arg(long)]
        to: String,
        /// anchor, commercial, public, academic or startup.
        #[arg(long)]
        tier: Option<String>,
        /// What an accelerator-hour of it is worth, in KRW (shown with allocations).
        #[arg(long)]
        price_krw_per_hour: Option<f64>,
    },
    /// List programmes.
    List,
}

#[derive(Args)]
pub struct GrantArgs {
    tenant: String,
    programme: String,
    #[arg(long)]
    accelerator_hours: f64,
    /// Only for this accelerator model.
    #[arg(long, conflicts_with = "class")]
    model: Option<String>,
    /// Only for this model class (e.g. nvidia-hopper).
    #[arg(long)]
    class: Option<String>,
    #[command(flatten)]
    c: Conn,
}

#[derive(Args)]
pub struct AllocationsArgs {
    #[command(subcommand)]
    action: Option<AllocationsAction>,
    /// Only this tenant's (admin tokens).
    #[arg(long)]
    tenant: Option<String>,
    #[command(flatten)]
    c: Conn,
}

#[derive(Subcommand)]
enum AllocationsAction {
    /// A tenant's accounting policy.
    Policy {
        tenant: String,
        /// Let its scavenger-class work run without drawing from (or needing) a balance.
        #[arg(long)]
        allow_scavenger: Option<bool>,
        /// What running out does to running work: finish (run on) or preempt (stop it).
        #[arg(long)]
        on_exhaustion: Option<String>,
    },
}

#[derive(Args)]
pub struct PricesArgs {
    #[command(subcommand)]
    action: Option<PricesAction>,
    #[command(flatten)]
    c: Conn,
}

#[derive(Subcommand)]
enum PricesAction {
    /// A new price version, in force from `--from` (default now) on.
    Set {
        #[arg(long)]
        krw_per_accelerator_hour: f64,
        #[arg(long, default_value_t = 0.0)]
        krw_per_kwh: f64,
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        tier: Option<String>,
        #[arg(long)]
        from: Option<String>,
    },
}

/// Comma-separated values, quoted where needed.
fn csv(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let cell = |c: &str| {
        if c.contains([',', '"', '\n']) {
            format!("\"{}\"", c.replace('"', "\"\""))
        } else {
            c.to_string()
        }
    };
    let mut out = header.join(",");
    out.push('\n');
    for r in rows {
        out.push_str(&r.iter().map(|c| cell(c)).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}

/// Prints `rows` under `header` as the output format asks (JSON prints `v` itself).
fn emit(cl: &Client, v: &Value, header: &[&str], rows: Vec<Vec<String>>) {
    match cl.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
        Output::Csv => print!("{}", csv(header, rows)),
        Output::Table | Output::Wide => print!("{}", table(header, rows)),
    }
}

/// A cell: numbers as the server wrote them, absent values empty in CSV, `-` in tables.
fn cell(cl: &Client, v: &Value) -> String {
    match (cl.output, v) {
        (Output::Csv, Value::Null) => String::new(),
        _ => s(v),
    }
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Report(a) => {
            let cl = Client::new(&a.c)?;
            let mut q = Vec::new();
            for (k, v) in [("from", &a.from), ("to", &a.to)] {
                if let Some(v) = v {
                    q.push(format!("{k}={}", enc(v)));
                }
            }
            let (path, header): (&str, &[&str]) = match a.kind {
                ReportKind::Share => (
                    "share",
                    &[
                        "tenant",
                        "share_cap",
                        "peak_share",
                        "peak_at",
                        "average_share",
                        "seconds_over_cap",
                        "accelerator_value_hours",
                        "within_cap",
                    ],
                ),
                ReportKind::Fairness => (
                    "fairness",
                    &[
                        "tenant",
                        "accelerator_hours",
                        "share_received",
                        "entitlement",
                        "preemptions_suffered",
                        "work_lost_accelerator_hours",
                        "preemptions_caused",
                        "work_caused_lost_accelerator_hours",
                    ],
                ),
            };
            let v = cl.get(&format!("/v1/reports/{path}?{}", q.join("&")))?;
            let rows: Vec<Vec<String>> = v["tenants"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|r| header.iter().map(|h| cell(&cl, &r[*h])).collect())
                        .collect()
                })
                .unwrap_or_default();
            emit(&cl, &v, header, rows);
            if matches!(cl.output, Output::Table | Output::Wide) {
                match a.kind {
                    ReportKind::Share => println!(
                        "window {} to {}; highway accelerator value {}",
                        s(&v["from"]),
                        s(&v["to"]),
                        s(&v["highway_accelerator_value"])
                    ),
                    ReportKind::Fairness => println!(
                        "window {} to {}; Jain's index {}",
                        s(&v["from"]),
                        s(&v["to"]),
                        s(&v["jain_index"])
                    ),
                }
            }
        }
        Command::Usage(a) => {
            let cl = Client::new(&a.c)?;
            let mut q = Vec::new();
            for (k, v) in [
                ("tenant", &a.tenant),
                ("from", &a.from),
                ("to", &a.to),
                ("group_by", &a.group_by),
            ] {
                if let Some(v) = v {
                    q.push(format!("{k}={}", enc(v)));
                }
            }
            let v = cl.get(&format!("/v1/usage?{}", q.join("&")))?;
            let keys: Vec<String> = v["group_by"]
                .as_array()
                .map(|a| a.iter().map(s).collect())
                .unwrap_or_default();
            let measures = [
                "accelerator_hours",
                "hbm_gib_hours",
                "cpu_core_hours",
                "memory_gib_hours",
                "energy_kwh",
                "measured_energy_kwh",
                "cost_krw",
                "attempts",
            ];
            let mut header: Vec<&str> = keys.iter().map(String::as_str).collect();
            header.extend(measures);
            let mut rows: Vec<Vec<String>> = v["rows"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|r| header.iter().map(|h| cell(&cl, &r[*h])).collect())
                        .collect()
                })
                .unwrap_or_default();
            if matches!(cl.output, Output::Table | Output::Wide) {
                let mut total: Vec<String> = keys.iter().map(|_| String::new()).collect();
                if let Some(first) = total.first_mut() {
                    *first = "total".into();
                }
                total.extend(measures.iter().map(|m| cell(&cl, &v["totals"][*m])));
                rows.push(total);
            }
            emit(&cl, &v, &header, rows);
        }
        Command::Statement(a) => {
            let cl = Client::new(&a.c)?;
            let v = cl.get(&format!(
                "/v1/tenants/{}/statement?month={}",
                enc(&a.tenant),
                enc(&a.month)
            ))?;
            let header = [
                "job",
                "attempt",
                "model",
                "site",
                "started",
                "ended",
                "end",
                "accelerator_seconds",
                "energy_kwh",
                "measured_energy_kwh",
                "cost_krw",
            ];
            let mut rows: Vec<Vec<String>> = v["lines"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|r| header.iter().map(|h| cell(&cl, &r[*h])).collect())
                        .collect()
                })
                .unwrap_or_default();
            let t = &v["totals"];
            let mut total = vec!["total".to_string()];
            total.extend(std::iter::repeat_n(String::new(), 6));
            for k in [
                "accelerator_seconds",
                "energy_kwh",
                "measured_energy_kwh",
                "cost_krw",
            ] {
                total.push(cell(&cl, &t[k]));
            }
            rows.push(total);
            emit(&cl, &v, &header, rows);
            if cl.output != Output::Json {
                let allocs: Vec<Vec<String>> = v["allocations"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|x| {
                                vec![
                                    s(&x["allocation"]),
                                    s(&x["programme"]),
                                    s(&x["granted_accelerator_seconds"]),
                                    s(&x["drawn_before_accelerator_seconds"]),
                                    s(&x["drawn_accelerator_seconds"]),
                                    s(&x["balance_accelerator_seconds"]),
                                ]
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if !allocs.is_empty() {
                    let h = [
                        "allocation",
                        "programme",
                        "granted_accelerator_seconds",
                        "drawn_before_accelerator_seconds",
                        "drawn_accelerator_seconds",
                        "balance_accelerator_seconds",
                    ];
                    println!();
                    match cl.output {
                        Output::Csv => print!("{}", csv(&h, allocs)),
                        _ => print!("{}", table(&h, allocs)),
                    }
                }
            }
        }
        Command::Programme(a) => {
            let cl = Client::new(&a.c)?;
            match a.action {
                ProgrammeAction::Create {
                    name,
                    from,
                    to,
                    tier,
                    price_krw_per_hour,
                } => {
                    let mut b = json!({"name": name, "from": from, "to": to});
                    if let Some(t) = tier {
                        b["tier"] = json!(t);
                    }
                    if let Some(p) = price_krw_per_hour {
                        b["price_krw_per_accelerator_hour"] = json!(p);
                    }
                    let v = cl.post("/v1/programmes", &b)?;
                    cl.print(&v, |p| {
                        format!(
                            "created programme {} ({} to {})\n",
                            s(&p["name"]),
                            s(&p["from"]),
                            s(&p["to"])
                        )
                    });
                }
                ProgrammeAction::List => {
                    let v = cl.get("/v1/programmes")?;
                    cl.print(&v, |v| {
                        let rows = v["programmes"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .map(|p| {
                                        vec![
                                            s(&p["name"]),
                                            s(&p["tier"]),
                                            s(&p["from"]),
                                            s(&p["to"]),
                                            s(&p["price_krw_per_accelerator_hour"]),
                                        ]
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        table(&["NAME", "TIER", "FROM", "TO", "KRW/H"], rows)
                    });
                }
            }
        }
        Command::Grant(a) => {
            let cl = Client::new(&a.c)?;
            let mut b = json!({"tenant": a.tenant, "programme": a.programme,
                "accelerator_hours": a.accelerator_hours});
            if let Some(m) = a.model {
                b["model"] = json!(m);
            }
            if let Some(c) = a.class {
                b["class"] = json!(c);
            }
            let v = cl.post("/v1/allocations", &b)?;
            cl.print(&v, |x| {
                format!(
                    "allocation {}: {} accelerator-hours of {} for {}\n",
                    s(&x["id"]),
                    s(&x["granted_accelerator_hours"]),
                    s(&x["programme"]),
                    s(&x["tenant"])
                )
            });
        }
        Command::Allocations(a) => {
            let cl = Client::new(&a.c)?;
            match a.action {
                Some(AllocationsAction::Policy {
                    tenant,
                    allow_scavenger,
                    on_exhaustion,
                }) => {
                    let mut b = json!({});
                    if let Some(x) = allow_scavenger {
                        b["allow_scavenger"] = json!(x);
                    }
                    if let Some(x) = on_exhaustion {
                        b["on_exhaustion"] = json!(x);
                    }
                    let v = cl.call(
                        "PUT",
                        &format!("/v1/tenants/{}/accounting", enc(&tenant)),
                        Some(("application/json", serde_json::to_vec(&b)?)),
                        &[],
                    )?;
                    cl.print(&v, |p| {
                        format!(
                            "{}: allow_scavenger = {}, on_exhaustion = {}\n",
                            s(&p["tenant"]),
                            s(&p["allow_scavenger"]),
                            s(&p["on_exhaustion"])
                        )
                    });
                }
                None => {
                    let path = match &a.tenant {
                        Some(t) => format!("/v1/allocations?tenant={}", enc(t)),
                        None => "/v1/allocations".into(),
                    };
                    let v = cl.get(&path)?;
                    let header = [
                        "id",
                        "tenant",
                        "programme",
                        "model",
                        "class",
                        "from",
                        "to",
                        "granted_accelerator_hours",
                        "drawn_accelerator_hours",
                        "balance_accelerator_hours",
                        "state",
                    ];
                    let rows: Vec<Vec<String>> = v["allocations"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|r| header.iter().map(|h| cell(&cl, &r[*h])).collect())
                                .collect()
                        })
                        .unwrap_or_default();
                    emit(&cl, &v, &header, rows);
                }
            }
        }
        Command::Prices(a) => {
            let cl = Client::new(&a.c)?;
            match a.action {
                Some(PricesAction::Set {
                    krw_per_accelerator_hour,
                    krw_per_kwh,
                    model,
                    site,
                    tier,
                    from,
                }) => {
                    let mut b = json!({"krw_per_accelerator_hour": krw_per_accelerator_hour,
                        "krw_per_kwh": krw_per_kwh});
                    for (k, v) in [
                        ("model", model),
                        ("site", site),
                        ("tier", tier),
                        ("from", from),
                    ] {
                        if let Some(v) = v {
                            b[k] = json!(v);
                        }
                    }
                    let v = cl.post("/v1/prices", &b)?;
                    cl.print(&v, |p| {
                        format!(
                            "price version {} from {}\n",
                            s(&p["version"]),
                            s(&p["from"])
                        )
                    });
                }
                None => {
                    let v = cl.get("/v1/prices")?;
                    let header = [
                        "version",
                        "from",
                        "model",
                        "site",
                        "tier",
                        "krw_per_accelerator_hour",
                        "krw_per_kwh",
                    ];
                    let rows: Vec<Vec<String>> = v["prices"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|r| header.iter().map(|h| cell(&cl, &r[*h])).collect())
                                .collect()
                        })
                        .unwrap_or_default();
                    emit(&cl, &v, &header, rows);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let out = csv(
            &["a", "b"],
            vec![
                vec!["x,y".into(), "say \"hi\"".into()],
                vec!["1".into(), String::new()],
            ],
        );
        assert_eq!(out, "a,b\n\"x,y\",\"say \"\"hi\"\"\"\n1,\n");
    }
}
