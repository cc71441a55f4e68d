//! Maglev quality for M = 65537 and 500 servers: build time, balance, disruption when one
//! server leaves, and the time to apply a 500-server backend to the live maps.

use std::time::Instant;

use anyhow::Result;
use lb_common::maglev::{MaglevServer, build_table, changed_slots, slot_counts};
use lb_userspace::{config::Config, dataplane::Dataplane};

use crate::Row;

const M: u32 = 65537;
const N: usize = 500;

fn servers(n: usize) -> Vec<MaglevServer> {
    (0..n)
        .map(|i| MaglevServer {
            id: i as u32,
            identity: format!("198.18.{}.{}:8080", 128 + i / 250, 1 + i % 250).into_bytes(),
            weight: 1,
        })
        .collect()
}

pub fn run(quick: bool) -> Result<Vec<Row>> {
    let all = servers(N);
    let builds = if quick { 3 } else { 20 };
    let start = Instant::now();
    let mut table = Vec::new();
    for _ in 0..builds {
        table = build_table(&all, M);
    }
    let build_ms = start.elapsed().as_secs_f64() * 1000.0 / f64::from(builds);

    let counts = slot_counts(&table);
    let mean = f64::from(M) / N as f64;
    let max = *counts.values().max().unwrap_or(&0) as f64;

    let without_one = build_table(&all[1..], M);
    let moved = changed_slots(&table, &without_one).len() as f64 / f64::from(M);
    let ideal = 1.0 / N as f64;

    // Live maps: write a 500-server backend, then remove one server (only changed slots).
    let mut dataplane = Dataplane::load()?;
    let parse = |n| {
        Config::parse("bench.toml", &crate::large_backend_config(n, "\"lo\""))
            .map_err(|e| anyhow::anyhow!("{e}"))
    };
    let full = parse(N)?;
    let start = Instant::now();
    dataplane.apply_config(&full)?;
    let apply_full_ms = start.elapsed().as_secs_f64() * 1000.0;
    let smaller = parse(N - 1)?;
    let start = Instant::now();
    dataplane.apply_config(&smaller)?;
    let apply_change_ms = start.elapsed().as_secs_f64() * 1000.0;

    Ok(vec![
        Row::new("maglev-build", "lb", build_ms, "ms"),
        Row::new("maglev-balance", "lb", max / mean, "max/mean"),
        Row::new("maglev-disruption", "lb", moved * 100.0, "% slots moved"),
        Row::new(
            "maglev-disruption",
            "ideal-1/N",
            ideal * 100.0,
            "% slots moved",
        ),
        Row::new("maglev-apply-500-servers", "lb", apply_full_ms, "ms"),
        Row::new("maglev-apply-remove-1-of-500", "lb", apply_change_ms, "ms"),
    ])
}
