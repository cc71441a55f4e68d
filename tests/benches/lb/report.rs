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

/// One panel per workload, one bar per system (ratios are left to the table), each bar
/// labelled with its value, and the panel titled with what is better.
pub fn chart(rows: &[Row], path: &Path) -> Result<()> {
    let mut panels: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for r in rows.iter().filter(|r| !r.system.starts_with("ratio:")) {
        panels.entry(r.workload.as_str()).or_default().push(r);
    }
    let columns = 2;
    let panel_rows = panels.len().div_ceil(columns);
    let root = SVGBackend::new(path, (1400, 260 * panel_rows as u32 + 60)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (title, body) = root.split_vertically(60);
    title
        .titled(
            "lb benchmarks: each panel one workload, each bar one system (same topology, same run)",
            ("sans-serif", 22),
        )
        .map_err(|e| anyhow!("{e}"))?;
    let areas = body.split_evenly((panel_rows, columns));
    for ((workload, bars), area) in panels.iter().zip(areas.iter()) {
        let unit = &bars[0].unit;
        let better = if unit.starts_with("ns")
            || unit == "us"
            || unit == "ms"
            || unit.contains("moved")
            || unit == "max/mean"
        {
            "lower is better"
        } else {
            "higher is better"
        };
        let max = bars.iter().map(|b| b.value).fold(0.0, f64::max).max(1e-9);
        let n = bars.len();
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{workload} ({unit}, {better})"), ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(25)
            .y_label_area_size(150)
            .build_cartesian_2d(0.0..max * 1.3, 0.0..n as f64)
            .map_err(|e| anyhow!("{e}"))?;
        let names: Vec<String> = bars.iter().map(|b| b.system.clone()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&|y| {
                let i = (*y - 0.5).round() as isize;
                if i >= 0 && (i as usize) < names.len() && (*y - 0.5 - i as f64).abs() < 0.01 {
                    names[i as usize].clone()
                } else {
                    String::new()
                }
            })
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        for (i, bar) in bars.iter().enumerate() {
            let color = if bar.system.starts_with("lb") {
                RGBColor(220, 80, 40)
            } else {
                RGBColor(90, 120, 180)
            };
            let y = i as f64;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(0.0, y + 0.15), (bar.value, y + 0.85)],
                    color.filled(),
                )))
                .map_err(|e| anyhow!("{e}"))?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{:.3}", bar.value),
                    (bar.value + max * 0.02, y + 0.6),
                    ("sans-serif", 14),
                )))
                .map_err(|e| anyhow!("{e}"))?;
        }
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
