//! `cargo xtask bench`: lb against the kernel, nftables and HAProxy on one topology in one
//! run, the XDP object against the cost of XDP itself, Maglev's quality, and the SYN flood
//! rate lb survives, and the daemon at a full connection table. Writes a table to stdout, `results.json` and `results.svg`.
//!
//! Usage: `lb --out DIR [--quick] [--check] [--only GROUP]` (run through `cargo xtask bench`).

mod flood;
mod ha;
mod http;
mod maglev;
mod micro;
mod report;
mod scale;
mod systems;

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub workload: String,
    pub system: String,
    pub value: f64,
    pub unit: String,
}

impl Row {
    pub fn new(workload: &str, system: &str, value: f64, unit: &str) -> Row {
        Row {
            workload: workload.into(),
            system: system.into(),
            value,
            unit: unit.into(),
        }
    }
}

/// A config with one TCP frontend (VIP 198.18.100.1:80, SNAT 198.18.2.1) and one maglev
/// backend of `servers` servers in 198.18.128.0/17 (behind the fixture's gateway route).
pub fn large_backend_config(servers: usize, interfaces: &str) -> String {
    let list: Vec<String> = (0..servers)
        .map(|i| {
            format!(
                r#"{{ address = "198.18.{}.{}" }}"#,
                128 + i / 250,
                1 + i % 250
            )
        })
        .collect();
    format!(
        r#"
[[frontends]]
name = "bench"
mode = "tcp"
address = "198.18.100.1"
binds = [{{ port = 80 }}]
default_backend = "bench"
interfaces = [{interfaces}]
snat_address = "198.18.2.1"

[[backends]]
name = "bench"
mode = "tcp"
balancing_method = "maglev"
port = 8080
servers = {{ type = "addresses", addresses = [{}] }}
"#,
        list.join(", ")
    )
}

/// Workloads where several systems compete, and the peers lb-nat is compared with.
const SYSTEM_WORKLOADS: &[&str] = &[
    "cpu-per-packet",
    "max-packet-rate",
    "cpu-per-packet-1m-flows",
    "packet-rate-1m-flows",
    "cpu-per-connection",
    "connection-rate",
    "throughput",
    "latency-p50",
    "latency-p99",
];
/// The systems workloads HAProxy has no row in (it has no UDP mode).
const UDP_WORKLOADS: &[&str] = &[
    "cpu-per-packet",
    "max-packet-rate",
    "cpu-per-packet-1m-flows",
    "packet-rate-1m-flows",
    "balancer-share-cpu1",
    "balancer-core-load",
];
const PEERS: &[&str] = &["direct", "nftables", "haproxy-tcp"];

/// `ratio:lb-nat/<peer>` = lb-nat's value / the peer's, for every workload both measured.
fn add_ratios(rows: &mut Vec<Row>) {
    let mut ratios = Vec::new();
    for workload in SYSTEM_WORKLOADS {
        let value = |system: &str| {
            rows.iter()
                .find(|r| r.workload == *workload && r.system == system)
                .map(|r| r.value)
        };
        let Some(lb) = value("lb-nat") else { continue };
        for peer in PEERS {
            if let Some(p) = value(peer).filter(|p| *p > 0.0) {
                ratios.push(Row::new(
                    workload,
                    &format!("ratio:lb-nat/{peer}"),
                    lb / p,
                    "x",
                ));
            }
        }
    }
    for workload in http_workloads() {
        let value = |system: &str| {
            rows.iter()
                .find(|r| r.workload == workload && r.system == system)
                .map(|r| r.value)
        };
        let Some(lb) = value("lb-http") else { continue };
        for peer in HTTP_PEERS {
            if let Some(p) = value(peer).filter(|p| *p > 0.0) {
                ratios.push(Row::new(
                    workload,
                    &format!("ratio:lb-http/{peer}"),
                    lb / p,
                    "x",
                ));
            }
        }
    }
    for (workload, _) in http::H3_ROWS {
        let value = |system: &str| {
            rows.iter()
                .find(|r| r.workload == *workload && r.system == system)
                .map(|r| r.value)
        };
        let [h2, h3] = http::H3_SYSTEMS;
        if let (Some(a), Some(b)) = (value(h3), value(h2).filter(|v| *v > 0.0)) {
            ratios.push(Row::new(workload, &format!("ratio:{h3}/{h2}"), a / b, "x"));
        }
    }
    rows.extend(ratios);
}

/// The HTTP workloads every proxy runs.
fn http_workloads() -> impl Iterator<Item = &'static str> {
    http::THROUGHPUT
        .iter()
        .chain(http::CPU)
        .copied()
        .chain(http::latency_rows())
}
const HTTP_PEERS: &[&str] = &["haproxy-http", "nginx"];

/// The group (`--only`) a workload's rows come from.
fn group_of(workload: &str) -> &'static str {
    match workload.split('-').next() {
        // The SNAT capacity rows come from the micro group's BPF_PROG_TEST_RUN.
        Some("micro" | "snat") => "micro",
        Some("maglev") => "maglev",
        Some("syn") => "flood",
        Some("scale") => "scale",
        Some("http") => "http",
        Some("ha") => "ha",
        _ => "systems",
    }
}

/// Every row a run must produce (HAProxy has no UDP, so no packet rows for it).
fn expected_rows() -> Vec<(String, String)> {
    let mut expected = Vec::new();
    for workload in SYSTEM_WORKLOADS
        .iter()
        .chain(["balancer-share-cpu1", "balancer-core-load"].iter())
    {
        for system in ["direct", "nftables", "haproxy-tcp", "lb-nat", "lb-dsr"] {
            if UDP_WORKLOADS.contains(workload) && system == "haproxy-tcp" {
                continue;
            }
            expected.push((workload.to_string(), system.to_string()));
            if PEERS.contains(&system) && SYSTEM_WORKLOADS.contains(workload) {
                expected.push((workload.to_string(), format!("ratio:lb-nat/{system}")));
            }
        }
    }
    for (workload, system) in [
        ("micro-baseline", "xdp-drop"),
        ("micro-baseline", "parse-tx"),
        ("micro-new-flow-syn", "lb-nat"),
        ("micro-new-flow-syn", "lb-dsr"),
        ("micro-established", "lb-nat"),
        ("micro-established", "lb-dsr"),
        ("micro-nat-reply", "lb-nat"),
        ("micro-non-vip-pass", "lb-nat"),
        ("micro-new-flow-syn-1m-flows", "lb-nat"),
        ("micro-new-flow-syn-1m-flows", "lb-dsr"),
        ("micro-new-flow-syn-1m-flows", "ratio:lb-nat/parse-tx"),
        ("micro-floor", "two-inserts"),
        ("micro-floor", "one-insert"),
        ("micro-floor", "two-lookups"),
        ("micro-new-flow-syn", "ratio:lb-nat/xdp-drop"),
        ("micro-new-flow-syn", "ratio:lb-nat/parse-tx"),
        ("micro-new-flow-syn", "ratio:lb-dsr/parse-tx"),
        ("micro-established", "ratio:lb-nat/parse-tx"),
        ("micro-established", "ratio:lb-dsr/parse-tx"),
        ("micro-nat-reply", "ratio:lb-nat/parse-tx"),
        ("micro-non-vip-pass", "ratio:lb-nat/parse-tx"),
        ("micro-established", "lb-nat:min"),
        ("micro-established", "lb-nat:max"),
        ("snat-concurrent-flows", "1-address"),
        ("snat-concurrent-flows", "1-address:1%-failing"),
        ("snat-concurrent-flows", "4-addresses"),
        ("snat-concurrent-flows", "4-addresses:1%-failing"),
        ("maglev-build", "lb"),
        ("maglev-balance", "lb"),
        ("maglev-disruption", "lb"),
        ("maglev-apply-500-servers", "lb"),
        ("maglev-apply-remove-1-of-500", "lb"),
        ("syn-flood-survived", "lb-nat"),
        ("scale-flows", "lb"),
        ("scale-daemon-cpu-empty", "lb"),
        ("scale-daemon-cpu", "lb"),
        ("scale-daemon-cpu-peak-1s", "lb"),
        ("scale-gc-cycle", "lb"),
        ("scale-sighup-applied", "lb"),
        ("scale-api-put", "lb"),
        ("scale-sigterm-exit", "lb"),
        ("ha-bulk-sync", "lb"),
        ("ha-failover-new-connection", "lb+keepalived"),
        ("ha-failover-old-flow-answers", "lb+keepalived"),
        ("ha-sync-throughput", "lb"),
        ("ha-sync-lag-5k-new-flows-per-s", "lb:median"),
        ("ha-sync-lag-5k-new-flows-per-s", "lb:p99"),
    ] {
        expected.push((workload.into(), system.into()));
    }
    for workload in http_workloads() {
        for system in http::SYSTEMS {
            expected.push((workload.to_string(), system.to_string()));
            expected.push((workload.to_string(), format!("{system}:min")));
            expected.push((workload.to_string(), format!("{system}:max")));
        }
        for peer in HTTP_PEERS {
            expected.push((workload.to_string(), format!("ratio:lb-http/{peer}")));
        }
    }
    let [h2, h3] = http::H3_SYSTEMS;
    for (workload, _) in http::H3_ROWS {
        for system in http::H3_SYSTEMS {
            expected.push((workload.to_string(), system.to_string()));
        }
        expected.push((workload.to_string(), format!("ratio:{h3}/{h2}")));
    }
    expected
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut quick, mut check, mut replot, mut out) = (false, false, false, None);
    // One group only (micro, maglev, systems, http, flood, scale, ha): for working on one part.
    let mut only: Option<String> = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--check" => check = true,
            // Redraw the chart from an existing results.json, measuring nothing.
            "--replot" => replot = true,
            "--out" => out = args.next().map(PathBuf::from),
            "--only" => only = args.next(),
            // cargo bench passes --bench to harness=false targets.
            "--bench" => {}
            other => bail!(
                "unknown argument {other:?}; usage: --out DIR [--quick] [--check] [--only micro|maglev|systems|http|flood|scale|ha]"
            ),
        }
    }
    let out = out.context("--out DIR is required")?;
    if replot {
        let rows: Vec<Row> =
            serde_json::from_str(&std::fs::read_to_string(out.join("results.json"))?)?;
        return report::chart(&rows, &out.join("results.svg"));
    }
    if !lb_tests::require_root("bench") {
        return Ok(());
    }
    let settings = systems::Settings {
        quick,
        lb_bin: lb_tests::topology::lb_binary()?,
    };

    let runs = |group: &str| only.as_deref().is_none_or(|o| o == group);
    let mut rows = Vec::new();
    if runs("micro") {
        rows.extend(micro::run(quick).context("microbenchmarks")?);
    }
    if runs("maglev") {
        rows.extend(maglev::run(quick).context("Maglev quality")?);
    }
    if runs("systems") {
        rows.extend(systems::run(&settings).context("system comparison")?);
    }
    if runs("http") {
        rows.extend(http::run(&settings).context("HTTP proxy comparison")?);
    }
    if runs("flood") {
        rows.extend(flood::run(&settings).context("SYN flood")?);
    }
    if runs("scale") {
        rows.extend(scale::run(&settings).context("a full connection table")?);
    }
    if runs("ha") {
        rows.extend(ha::run(quick, &settings.lb_bin).context("HA")?);
    }
    add_ratios(&mut rows);

    std::fs::create_dir_all(&out)?;
    print!("{}", report::table(&rows));
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&rows)?,
    )?;
    report::chart(&rows, &out.join("results.svg"))?;
    println!(
        "wrote {} and {}",
        out.join("results.json").display(),
        out.join("results.svg").display()
    );

    if check {
        // With --only, the rows of that group.
        let expected: Vec<(String, String)> = expected_rows()
            .into_iter()
            .filter(|(w, _)| runs(group_of(w)))
            .collect();
        let missing: Vec<String> = expected
            .iter()
            .filter(|(w, s)| {
                !rows
                    .iter()
                    .any(|r| r.workload == *w && r.system == *s && r.value > 0.0)
            })
            .map(|(w, s)| format!("{w}/{s}"))
            .collect();
        if !missing.is_empty() {
            bail!("bench rows missing or zero: {}", missing.join(", "));
        }
        println!(
            "bench check: all {} expected rows present and non-zero",
            expected.len()
        );
    }
    Ok(())
}
