//! The capacity curve as an SVG chart and a self-contained HTML report.

use std::path::Path;

use crate::capacity::CapacityPlan;
use crate::site::group;

/// Wait (hours) against accelerators, with the target as a flat line. Capacities where some
/// jobs never finished are left out of the line (their wait is infinite).
pub fn curve_svg(path: &Path, plan: &CapacityPlan) -> Result<(), String> {
    let pts: Vec<(f64, f64)> = plan
        .curve
        .iter()
        .filter_map(|p| {
            p.run
                .target_wait_s
                .map(|w| (p.run.accelerators as f64, w / 3600.0))
        })
        .collect();
    let x_max = plan
        .curve
        .iter()
        .map(|p| p.run.accelerators)
        .max()
        .unwrap_or(1) as f64;
    let x_min = plan
        .curve
        .iter()
        .map(|p| p.run.accelerators)
        .min()
        .unwrap_or(0) as f64;
    let limit_h = plan.target.limit_s as f64 / 3600.0;
    let lines = vec![
        (format!("{} (h)", plan.target.text), pts),
        (
            "target".to_string(),
            vec![(x_min, limit_h), (x_max, limit_h)],
        ),
    ];
    gosok_sim::chart::line_chart(
        path,
        &format!("{} against capacity", plan.target.text),
        "accelerators",
        "hours",
        false,
        &lines,
    )
    .map_err(|e| e.to_string())
}

/// +12 / −3 / 0, thousands grouped.
pub fn signed(v: i64) -> String {
    match v.signum() {
        1 => format!("+{}", group(v as u64)),
        -1 => format!("−{}", group(v.unsigned_abs())),
        _ => "0".into(),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A report that opens in any browser: inputs, the answer, the knee, the chart and the curve.
pub fn report_html(plan: &CapacityPlan, svg: &str, command: &str) -> String {
    let h = |v: Option<f64>| v.map_or("never".to_string(), gosok_sim::report::human_s);
    let mut rows = String::new();
    for p in &plan.curve {
        rows.push_str(&format!(
            "<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1} %</td><td>{}</td></tr>\n",
            if p.added_servers == plan.answer.added_servers { " class=\"answer\"" } else { "" },
            signed(p.added_servers),
            group(p.run.accelerators),
            h(p.run.target_wait_s),
            if p.run.met { "yes" } else { "no" },
            gosok_sim::report::human_s(p.run.avg_wait_s),
            p.run.jobs_never_finished,
            p.run.utilization * 100.0,
            group(p.run.energy_kwh.round() as u64),
        ));
    }
    let mut grow = String::new();
    for g in &plan.grow {
        grow.push_str(&format!(
            "<li>{} / {}: {} servers × {} accelerators now, up to +{} ({})</li>\n",
            esc(&g.site),
            esc(&g.model),
            g.servers_now,
            g.accelerators_per_server,
            g.max_added,
            esc(&g.limited_by)
        ));
    }
    let knee = plan.knee.as_ref().map_or("none found".to_string(), |k| {
        format!(
            "{} accelerators ({} servers): {}",
            group(k.run.accelerators),
            signed(k.added_servers),
            h(k.run.target_wait_s)
        )
    });
    let notes: String = plan
        .notes
        .iter()
        .map(|n| format!("<li>{}</li>", esc(n)))
        .collect();
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gosok plan capacity: {target}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#111}}
table{{border-collapse:collapse}}td,th{{border:1px solid #999;padding:.25em .6em;text-align:right}}
tr.answer{{background:#e8f4e8;font-weight:bold}}code{{background:#f3f3f3;padding:.1em .3em}}</style></head>
<body><h1>Capacity for {target}</h1>
<p><code>{command}</code></p>
<p>{jobs} jobs replayed through the engine (policy {policy}) at {replays} capacities in {wall:.1} s.</p>
<h2>Answer</h2>
<p><strong>{ans_acc} accelerators</strong> ({ans_add} servers; today {now}): {target} = {ans_val}.</p>
<p>Knee (where adding servers stops paying): {knee}.</p>
<h2>Where it grows</h2><ul>{grow}</ul>
<h2>Curve</h2>
<figure>{svg}</figure>
<table><tr><th>+servers</th><th>accelerators</th><th>{target_stat}</th><th>met</th><th>avg wait</th><th>never finished</th><th>utilisation</th><th>energy (kWh)</th></tr>
{rows}</table>
<ul>{notes}</ul>
</body></html>
"#,
        target = esc(&plan.target.text),
        command = esc(command),
        jobs = group(plan.jobs),
        policy = esc(&plan.policy),
        replays = plan.replays,
        wall = plan.wall_s,
        ans_acc = group(plan.answer.run.accelerators),
        ans_add = signed(plan.answer.added_servers),
        now = group(plan.accelerators_now),
        ans_val = h(plan.answer.run.target_wait_s),
        target_stat = "statistic",
    )
}
