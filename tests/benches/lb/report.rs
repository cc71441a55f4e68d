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

/// `SYSTEM:min` / `SYSTEM:max` rows: the spread of repeated runs around SYSTEM's median.
fn spread_of(system: &str) -> Option<(&str, bool)> {
    system
        .strip_suffix(":min")
        .map(|s| (s, false))
        .or_else(|| system.strip_suffix(":max").map(|s| (s, true)))
}

/// One panel per workload, one labelled bar per system, with a whisker from the lowest to
/// the highest run where the workload was repeated; the microbenchmarks share one panel with
/// their baselines. Ratios are left to the table.
pub fn chart(rows: &[Row], path: &Path) -> Result<()> {
    // (workload, system) -> (lowest, highest)
    let mut spreads: BTreeMap<(&str, &str), (f64, f64)> = BTreeMap::new();
    for r in rows {
        if let Some((system, high)) = spread_of(&r.system) {
            let entry = spreads
                .entry((r.workload.as_str(), system))
                .or_insert((r.value, r.value));
            if high {
                entry.1 = r.value;
            } else {
                entry.0 = r.value;
            }
        }
    }
    // (title, unit) -> bars of (label, value, spread)
    type Bar = (String, f64, Option<(f64, f64)>);
    let mut panels: BTreeMap<(String, String), Vec<Bar>> = BTreeMap::new();
    for r in rows
        .iter()
        .filter(|r| !r.system.starts_with("ratio:") && spread_of(&r.system).is_none())
    {
        let spread = spreads
            .get(&(r.workload.as_str(), r.system.as_str()))
            .copied();
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
            .push((label, r.value, spread));
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
        let max = bars
            .iter()
            .map(|b| b.2.map_or(b.1, |s| s.1.max(b.1)))
            .fold(0.0, f64::max)
            .max(1e-9);
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
        for (i, (label, value, spread)) in bars.iter().enumerate() {
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
            let mut text = format!("{label}: {}", human(*value));
            if let Some((low, high)) = spread {
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(*low, y + 0.5), (*high, y + 0.5)],
                        BLACK.stroke_width(2),
                    )))
                    .map_err(|e| anyhow!("{e}"))?;
                text += &format!(" ({}..{})", human(*low), human(*high));
            }
            chart
                .draw_series(std::iter::once(Text::new(
                    text,
                    (
                        spread.map_or(*value, |s| s.1.max(*value)) + max * 0.02,
                        y + 0.62,
                    ),
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
