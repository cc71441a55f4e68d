//! The results as a table and as a chart a reader understands without the table.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::Row;

pub fn table(rows: &[Row]) -> String {
    let mut s = format!(
        "{:<30} {:<26} {:>14}  {}\n",
        "workload", "system", "value", "unit"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<30} {:<26} {:>14.3}  {}",
            r.workload, r.system, r.value, r.unit
        );
    }
    s
}

/// One panel per workload, one labelled bar per system; the microbenchmarks share one
/// panel with their baselines. Ratios are left to the table.
pub fn chart(rows: &[Row], path: &Path) -> Result<()> {
    // (title, unit) -> bars of (label, value)
    let mut panels: BTreeMap<(String, String), Vec<(String, f64)>> = BTreeMap::new();
    for r in rows.iter().filter(|r| !r.system.starts_with("ratio:")) {
        let (title, label) = match r.workload.strip_prefix("micro-") {
            Some("baseline") => (
                "xdp-cost-per-packet".to_string(),
                format!("baseline {}", r.system),
            ),
            Some(path) => ("xdp-cost-per-packet".to_string(), format!("lb {path}")),
            None => (r.workload.clone(), r.system.clone()),
        };
        panels
            .entry((title, r.unit.clone()))
            .or_default()
            .push((label, r.value));
    }
    let columns = 2;
    let panel_rows = panels.len().div_ceil(columns);
    let root = SVGBackend::new(path, (1400, 280 * panel_rows as u32 + 60)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (title, body) = root.split_vertically(60);
    title
        .titled(
            "lb benchmarks: one panel per workload, one bar per system, all in one run on one topology",
            ("sans-serif", 22),
        )
        .map_err(|e| anyhow!("{e}"))?;
    let areas = body.split_evenly((panel_rows, columns));
    for (((workload, unit), bars), area) in panels.iter().zip(areas.iter()) {
        let lower_better = unit.starts_with("ns")
            || ["us", "ms", "s", "% core", "max/mean"].contains(&unit.as_str())
            || unit.contains("moved");
        let better = if lower_better {
            "lower is better"
        } else {
            "higher is better"
        };
        let max = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1e-9);
        let n = bars.len();
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{workload} ({unit}; {better})"), ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(25)
            .y_label_area_size(5)
            .build_cartesian_2d(0.0..max * 1.8, 0.0..n as f64)
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .disable_y_axis()
            .x_labels(5)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        for (i, (label, value)) in bars.iter().enumerate() {
            let is_lb = label.starts_with("lb");
            let color = if is_lb {
                RGBColor(220, 80, 40)
            } else {
                RGBColor(90, 120, 180)
            };
            // First bar on top.
            let y = (n - 1 - i) as f64;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(0.0, y + 0.15), (*value, y + 0.85)],
                    color.filled(),
                )))
                .map_err(|e| anyhow!("{e}"))?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{label}: {}", human(*value)),
                    (value + max * 0.02, y + 0.62),
                    ("sans-serif", 15),
                )))
                .map_err(|e| anyhow!("{e}"))?;
        }
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

fn human(v: f64) -> String {
    if v >= 100_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}
