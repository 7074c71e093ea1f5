//! SVG charts of an experiment: unallocated GPU vs arrived workload with every policy on one
//! chart (the paper's Figure 9(a)), and FGD's fragmentation measure the same way (Figure 7(a)).

use std::path::Path;

use plotters::prelude::*;

use crate::report::{Curve, PolicySummary, REPORT_MAX_X_PCT};

/// A chart could not be drawn or written.
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot draw the chart: {message}", path.display())]
pub struct ChartError {
    pub path: std::path::PathBuf,
    pub message: String,
}

/// Line colours by policy, steady across charts (the paper's order: random first, gosok last).
fn colour(policy: &str) -> RGBColor {
    match policy {
        "random" => RGBColor(127, 127, 127),
        "dotprod" => RGBColor(31, 119, 180),
        "clustering" => RGBColor(44, 160, 44),
        "packing" => RGBColor(148, 103, 189),
        "bestfit" => RGBColor(255, 127, 14),
        "fgd" => RGBColor(214, 39, 40),
        "gosok" => RGBColor(0, 0, 0),
        _ => RGBColor(140, 86, 75),
    }
}

/// Draws one line per `(name, curve)` into an SVG at `path`, for arrived workload from `x_from`
/// to 130 %.
pub fn line_chart(
    path: &Path,
    title: &str,
    y_label: &str,
    x_from: usize,
    lines: &[(&str, &Curve)],
) -> Result<(), ChartError> {
    let fail = |e: &dyn std::fmt::Display| ChartError {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let y_max = lines
        .iter()
        .flat_map(|(_, c)| c.0.iter().filter(|&&(x, _)| x >= x_from).map(|&(_, v)| v))
        .filter(|v| v.is_finite())
        .fold(1.0_f64, f64::max);
    // Leave a little room above the highest line, in whole percent.
    let y_top = (y_max * 1.05).ceil();
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(x_from as f64..REPORT_MAX_X_PCT as f64, 0.0..y_top)
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("Arrived workload (% of cluster GPU capacity)")
        .y_desc(y_label)
        .draw()
        .map_err(|e| fail(&e))?;
    for &(name, curve) in lines {
        let c = colour(name);
        chart
            .draw_series(LineSeries::new(
                curve
                    .0
                    .iter()
                    .filter(|&&(x, _)| x >= x_from)
                    .map(|&(x, v)| (x as f64, v)),
                c.stroke_width(2),
            ))
            .map_err(|e| fail(&e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

/// Figure 9(a): median unallocated GPU over seeds vs arrived workload, every policy. Below 80 %
/// every policy places nearly everything (unallocated is 100 - x), so the chart starts at 80.
pub fn unallocated_chart(
    path: &Path,
    workload: &str,
    summaries: &[PolicySummary],
) -> Result<(), ChartError> {
    let lines: Vec<(&str, &Curve)> = summaries
        .iter()
        .map(|s| (s.policy.as_str(), &s.unallocated_gpu_pct_median))
        .collect();
    line_chart(
        path,
        &format!("Unallocated GPU vs arrived workload ({workload}, median over seeds)"),
        "Unallocated GPU (% of capacity)",
        80,
        &lines,
    )
}

/// Figure 7(a): median fragmented GPU (FGD's measure) vs arrived workload, every policy.
pub fn frag_chart(
    path: &Path,
    workload: &str,
    summaries: &[PolicySummary],
) -> Result<(), ChartError> {
    let lines: Vec<(&str, &Curve)> = summaries
        .iter()
        .map(|s| (s.policy.as_str(), &s.frag_gpu_pct_median))
        .collect();
    line_chart(
        path,
        &format!("GPU fragmentation vs arrived workload ({workload}, median over seeds)"),
        "Fragmented GPU (% of capacity)",
        0,
        &lines,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg_with_a_line_per_policy() {
        let dir = std::env::temp_dir().join(format!("gosok-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.svg");
        let a = Curve((0..=130).map(|x| (x, 20.0 - x as f64 / 10.0)).collect());
        let b = Curve((0..=130).map(|x| (x, 15.0 - x as f64 / 20.0)).collect());
        line_chart(&path, "t", "y", 0, &[("fgd", &a), ("bestfit", &b)]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..50.min(svg.len())]);
        assert!(svg.contains("fgd") && svg.contains("bestfit"));
        assert!(svg.matches("<polyline").count() >= 2);
        let bad = line_chart(&dir.join("no/such/dir/c.svg"), "t", "y", 80, &[("fgd", &a)]);
        assert!(bad.is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
