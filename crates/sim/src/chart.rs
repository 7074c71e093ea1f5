//! SVG charts of replays: the CDFs of job completion time and queue delay (log time axis, one
//! line per policy) and utilisation over virtual time.

use std::path::Path;

use plotters::prelude::*;

use crate::replay::{RunResult, Sample};

/// A chart could not be drawn or written.
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot draw the chart: {message}", path.display())]
pub struct ChartError {
    pub path: std::path::PathBuf,
    pub message: String,
}

/// Line colours by policy, steady across charts.
fn colour(policy: &str) -> RGBColor {
    match policy {
        "fifo" => RGBColor(127, 127, 127),
        "sjf" => RGBColor(31, 119, 180),
        "srtf" => RGBColor(44, 160, 44),
        "gosok" => RGBColor(0, 0, 0),
        "target" => RGBColor(127, 127, 127),
        _ => RGBColor(214, 39, 40),
    }
}

/// Most points drawn per line: a CDF of a million jobs needs no million vertices.
const MAX_POINTS: usize = 600;

/// (x, fraction ≤ x) points of the CDF of sorted values, thinned to `MAX_POINTS`.
fn cdf_points(sorted: &[u64]) -> Vec<(f64, f64)> {
    let n = sorted.len();
    if n == 0 {
        return Vec::new();
    }
    let step = n.div_ceil(MAX_POINTS).max(1);
    let mut pts: Vec<(f64, f64)> = (0..n)
        .step_by(step)
        .map(|i| ((sorted[i] as f64).max(1.0), (i + 1) as f64 / n as f64))
        .collect();
    pts.push(((sorted[n - 1] as f64).max(1.0), 1.0));
    pts
}

/// A line chart of named series (`log_x`: a logarithmic x axis), written as SVG.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    log_x: bool,
    lines: &[(String, Vec<(f64, f64)>)],
) -> Result<(), ChartError> {
    let fail = |e: &dyn std::fmt::Display| ChartError {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let finite = |v: f64| v.is_finite();
    let x_max = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(x, _)| x))
        .filter(|&v| finite(v))
        .fold(1.0_f64, f64::max)
        .max(2.0);
    let x_min = if log_x { 1.0 } else { 0.0 };
    let y_max = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
        .filter(|&v| finite(v))
        .fold(0.0_f64, f64::max)
        .max(1e-9)
        * 1.05;
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56);
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc(y_desc)
                .draw()
                .map_err(|e| fail(&e))?;
            for (name, pts) in lines {
                let c = colour(name);
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
                    .map_err(|e| fail(&e))?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| fail(&e))?;
        }};
    }
    if log_x {
        draw!(
            builder
                .build_cartesian_2d((x_min..x_max).log_scale(), 0.0..y_max)
                .map_err(|e| fail(&e))?
        );
    } else {
        draw!(
            builder
                .build_cartesian_2d(x_min..x_max, 0.0..y_max)
                .map_err(|e| fail(&e))?
        );
    }
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

/// CDF of job completion time, one line per run.
pub fn jct_cdf(path: &Path, runs: &[&RunResult]) -> Result<(), ChartError> {
    let lines: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|r| {
            let mut v: Vec<u64> = r.outcomes.iter().filter_map(|o| o.jct_s()).collect();
            v.sort_unstable();
            (r.report.policy.clone(), cdf_points(&v))
        })
        .collect();
    line_chart(
        path,
        "Job completion time (CDF)",
        "JCT (s, log scale)",
        "fraction of completed jobs",
        true,
        &lines,
    )
}

/// CDF of queue delay, one line per run.
pub fn queue_cdf(path: &Path, runs: &[&RunResult]) -> Result<(), ChartError> {
    let lines: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|r| {
            let mut v: Vec<u64> = r
                .outcomes
                .iter()
                .filter(|o| o.jct_s().is_some())
                .map(|o| o.queue_s)
                .collect();
            v.sort_unstable();
            (r.report.policy.clone(), cdf_points(&v))
        })
        .collect();
    line_chart(
        path,
        "Queue delay (CDF; 0 s drawn at 1 s)",
        "queue delay (s, log scale)",
        "fraction of completed jobs",
        true,
        &lines,
    )
}

/// Utilisation over virtual time (hours from the first arrival), one line per run.
pub fn utilization_chart(path: &Path, runs: &[&RunResult]) -> Result<(), ChartError> {
    let lines: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|r| {
            let t0 = r.series.first().map_or(0, |s: &Sample| s.t_s);
            (
                r.report.policy.clone(),
                r.series
                    .iter()
                    .map(|s| ((s.t_s - t0) as f64 / 3600.0, s.utilization * 100.0))
                    .collect(),
            )
        })
        .collect();
    line_chart(
        path,
        "Accelerator utilisation",
        "time (h)",
        "allocated accelerators (%)",
        false,
        &lines,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdfs_end_at_one_and_stay_short() {
        let v: Vec<u64> = (0..10_000).collect();
        let p = cdf_points(&v);
        assert!(p.len() <= MAX_POINTS + 2);
        assert_eq!(p.last().unwrap().1, 1.0);
        assert_eq!(p[0].0, 1.0);
        assert!(cdf_points(&[]).is_empty());
    }

    #[test]
    fn writes_svgs_and_fails_with_the_path() {
        let dir = std::env::temp_dir().join(format!("gosok-sim-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let lines = vec![
            ("fifo".to_string(), cdf_points(&[1, 10, 100, 1000])),
            ("srtf".to_string(), cdf_points(&[1, 2, 3, 50])),
        ];
        let p = dir.join("a.svg");
        line_chart(&p, "t", "x", "y", true, &lines).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("srtf"));
        let bad = line_chart(&dir.join("no/dir/a.svg"), "t", "x", "y", false, &lines);
        assert!(bad.unwrap_err().to_string().contains("no/dir/a.svg"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
