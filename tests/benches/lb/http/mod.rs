//! HTTP proxies side by side on one topology: lb's proxy (`lb-http`), HAProxy in HTTP mode
//! and nginx as a reverse proxy, in front of three nginx servers. Every workload where
//! proxies differ: keep-alive, a connection per request, TLS handshakes, TLS keep-alive,
//! HTTP/2 over TLS, 1 MiB responses, and latency at a fixed rate (half of HAProxy's
//! keep-alive capacity in the same round); the proxy's CPU per request for each; and lb's
//! HTTP/3 beside its HTTP/2 from one Rust client.
//!
//! Three rounds, the systems interleaved within each (HAProxy first, as it sets the fixed
//! rate); each row is the median of the rounds, with `SYSTEM:min` and `SYSTEM:max` beside it.

mod load;
mod multiplexed;
mod paced;
mod proxies;

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result};
use lb_tests::{
    netns::NetNs,
    services::{ScratchDir, self_signed, start_nginx, wait_listening},
    topology::{Topology, VIP, server_addr},
};

use crate::{Row, systems::Settings};

const PORT: u16 = 80;
const TLS_PORT: u16 = 443;
const SERVER_PORT: u16 = 8080;
/// HAProxy first: its keep-alive rate sets the round's fixed rate.
pub const SYSTEMS: [&str; 3] = ["haproxy-http", "lb-http", "nginx"];
const ROUNDS: usize = 3;

/// A throughput workload: its row and unit, its CPU row, and how it loads the proxy (a
/// client namespace and seconds to a rate).
struct Workload {
    row: &'static str,
    unit: &'static str,
    cpu_row: &'static str,
    cpu_unit: &'static str,
    run: fn(&NetNs, u64) -> Result<f64>,
}

pub const THROUGHPUT: &[&str] = &[
    "http-requests",
    "http-new-connections",
    "http-tls-handshakes",
    "http-tls-requests",
    "http-h2-requests",
    "http-1mib-responses",
];
pub const CPU: &[&str] = &[
    "http-cpu-per-request",
    "http-cpu-per-new-connection",
    "http-cpu-per-tls-handshake",
    "http-cpu-per-tls-request",
    "http-cpu-per-h2-request",
    "http-cpu-per-1mib-response",
];
/// Latency at a share of HAProxy's rate in the same round, per workload: the throughput row
/// that sets the rate, the share, how the paced client loads it, its connections, and its
/// p50, p99 and p99.9 rows. Half, but a quarter for HTTP/2: the paced client's streams come
/// one at a time, not in h2load's batches of ten, which about doubles every proxy's CPU per
/// request, and at half all three were overloaded (seconds of queueing).
const PACED: &[(&str, f64, paced::Kind, u64, [&str; 3])] = &[
    (
        "http-requests",
        0.5,
        paced::Kind::KeepAlive,
        16,
        ["http-latency-p50", "http-latency-p99", "http-latency-p999"],
    ),
    (
        "http-new-connections",
        0.5,
        paced::Kind::NewConnection,
        16,
        [
            "http-new-connection-latency-p50",
            "http-new-connection-latency-p99",
            "http-new-connection-latency-p999",
        ],
    ),
    (
        "http-tls-handshakes",
        0.5,
        paced::Kind::TlsHandshake,
        16,
        [
            "http-tls-handshake-latency-p50",
            "http-tls-handshake-latency-p99",
            "http-tls-handshake-latency-p999",
        ],
    ),
    (
        "http-tls-requests",
        0.5,
        paced::Kind::TlsKeepAlive,
        16,
        [
            "http-tls-latency-p50",
            "http-tls-latency-p99",
            "http-tls-latency-p999",
        ],
    ),
    (
        "http-h2-requests",
        0.25,
        paced::Kind::H2,
        16,
        [
            "http-h2-latency-p50",
            "http-h2-latency-p99",
            "http-h2-latency-p999",
        ],
    ),
    (
        "http-1mib-responses",
        0.5,
        paced::Kind::Large,
        8,
        [
            "http-1mib-latency-p50",
            "http-1mib-latency-p99",
            "http-1mib-latency-p999",
        ],
    ),
];

/// Every fixed-rate latency row.
pub fn latency_rows() -> impl Iterator<Item = &'static str> {
    PACED
        .iter()
        .flat_map(|(_, _, _, _, rows)| rows.iter().copied())
}
/// lb only: HTTP/3 beside HTTP/2, from the same client.
pub const H3_ROWS: &[(&str, &str)] = &[
    ("http-h3-vs-h2-requests", "requests/s"),
    ("http-h3-vs-h2-latency-p99", "us"),
    ("http-h3-vs-h2-1mib-responses", "MiB/s"),
];
pub const H3_SYSTEMS: [&str; 2] = ["lb-http-h2", "lb-http-h3"];

fn workloads() -> Vec<Workload> {
    let wl = |i: usize, unit: &'static str, run: fn(&NetNs, u64) -> Result<f64>| Workload {
        row: THROUGHPUT[i],
        unit,
        cpu_row: CPU[i],
        cpu_unit: "us",
        run,
    };
    vec![
        wl(0, "requests/s", |c, s| {
            load::wrk(c, &format!("http://{VIP}:{PORT}/"), 32, false, s)
        }),
        wl(1, "requests/s", |c, s| {
            load::wrk(c, &format!("http://{VIP}:{PORT}/"), 32, true, s)
        }),
        wl(2, "handshakes/s", |c, s| {
            load::wrk(c, &format!("https://{VIP}:{TLS_PORT}/"), 32, true, s)
        }),
        wl(3, "requests/s", |c, s| {
            load::wrk(c, &format!("https://{VIP}:{TLS_PORT}/"), 32, false, s)
        }),
        wl(4, "requests/s", |c, s| {
            load::h2load(c, &format!("https://{VIP}:{TLS_PORT}/"), 16, 10, s)
        }),
        // Requests/s of 1 MiB each: MiB/s.
        wl(5, "MiB/s", |c, s| {
            load::wrk(c, &format!("http://{VIP}:{PORT}/payload/1m"), 8, false, s)
        }),
    ]
}

pub fn run(settings: &Settings) -> Result<Vec<Row>> {
    let topo = Topology::new(&format!("lbh{}", std::process::id()), 3)?;
    topo.lb
        .exec(&["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
    // A connection per request makes tens of thousands of client ports wait in TIME_WAIT.
    topo.client.exec(&[
        "sysctl",
        "-qw",
        "net.ipv4.ip_local_port_range=1024 65000",
        "net.ipv4.tcp_tw_reuse=1",
    ])?;
    let dir = ScratchDir::new("httpbench")?;
    for (i, ns) in topo.servers.iter().enumerate() {
        start_nginx(
            ns,
            &format!("server{}", i + 1),
            server_addr(i).into(),
            &dir.0,
        )?;
    }
    let (cert, key, pem) = self_signed(&dir.0, "proxy", VIP.into())?;
    let seconds = if settings.quick { 2 } else { 10 };
    // For working on one workload (rows missing, so not with --check):
    // LB_BENCH_HTTP=http-h2-requests,lb-http runs the rows and systems named, once.
    let focus: Option<Vec<String>> = std::env::var("LB_BENCH_HTTP")
        .ok()
        .map(|v| v.split(',').map(str::to_string).collect());
    // Of one kind (rows, or systems), all unless some are named.
    let wanted = |name: &str, kind: &[&str]| {
        focus.as_ref().is_none_or(|f| {
            f.iter().any(|w| w == name) || !f.iter().any(|w| kind.contains(&w.as_str()))
        })
    };
    let row_names: Vec<&str> = THROUGHPUT
        .iter()
        .copied()
        .chain(latency_rows())
        .chain([H3_ROWS[0].0])
        .collect();
    let workloads: Vec<Workload> = workloads()
        .into_iter()
        .filter(|w| wanted(w.row, &row_names))
        .collect();
    let rounds = if focus.is_some() { 1 } else { ROUNDS };
    // (row, system) -> (unit, one value per round)
    let mut samples: BTreeMap<(String, String), (String, Vec<f64>)> = BTreeMap::new();
    let mut record = |row: &str, system: &str, unit: &str, value: f64| {
        samples
            .entry((row.to_string(), system.to_string()))
            .or_insert_with(|| (unit.to_string(), Vec::new()))
            .1
            .push(value);
    };
    for round in 1..=rounds {
        // HAProxy's rate of each workload, in requests/s.
        let mut fixed_rates: BTreeMap<&str, f64> = BTreeMap::new();
        for system in SYSTEMS.into_iter().filter(|s| wanted(s, &SYSTEMS)) {
            eprintln!("bench: {system}, round {round} of {rounds}");
            let pid = proxies::start(system, &topo, settings, &dir.0, &pem, (&cert, &key))?;
            let measured = (|| -> Result<()> {
                wait_listening(&topo.client, (VIP, PORT).into(), Duration::from_secs(15))?;
                wait_listening(
                    &topo.client,
                    (VIP, TLS_PORT).into(),
                    Duration::from_secs(15),
                )?;
                for w in &workloads {
                    let before = proxies::cpu_seconds(pid);
                    let rate = (w.run)(&topo.client, seconds).context(w.row)?;
                    let cpu = proxies::cpu_seconds(pid) - before;
                    record(w.row, system, w.unit, rate);
                    let work = rate * seconds as f64;
                    record(w.cpu_row, system, w.cpu_unit, cpu * 1e6 / work.max(1.0));
                    if system == "haproxy-http" {
                        // Every workload's unit is a request each (1 MiB responses: MiB/s).
                        fixed_rates.insert(w.row, rate);
                    }
                }
                for &(workload, share, kind, connections, rows) in PACED {
                    if !wanted(rows[0], &row_names) {
                        continue;
                    }
                    let port = if kind.tls() { TLS_PORT } else { PORT };
                    let target: SocketAddr = (VIP, port).into();
                    // Without HAProxy in this run (LB_BENCH_HTTP), a modest rate.
                    let rate = fixed_rates
                        .get(workload)
                        .map(|r| (r * share) as u64)
                        .unwrap_or(500)
                        .max(50);
                    let before = proxies::cpu_seconds(pid);
                    let mut latencies = topo
                        .client
                        .run(move || paced::run(kind, target, rate, connections, seconds))?
                        .join()
                        .map_err(|_| anyhow::anyhow!("paced client panicked"))?
                        .with_context(|| format!("{} at {rate} requests/s", rows[1]))?;
                    if std::env::var_os("LB_BENCH_VERBOSE").is_some() {
                        let cpu = proxies::cpu_seconds(pid) - before;
                        eprintln!(
                            "bench: {system} {}: {rate} requests/s paced, {:.1} µs CPU each",
                            rows[1],
                            cpu * 1e6 / latencies.len().max(1) as f64
                        );
                    }
                    latencies.sort_unstable();
                    for (row, p) in rows.iter().zip([0.50, 0.99, 0.999]) {
                        record(row, system, "us", load::quantile(&latencies, p));
                    }
                }
                if system == "lb-http" && wanted(H3_ROWS[0].0, &row_names) {
                    multiplexed_rows(&topo.client, seconds, &mut record)?;
                }
                Ok(())
            })();
            topo.lb.stop(pid);
            measured.with_context(|| format!("measuring {system}"))?;
        }
    }
    let mut rows = Vec::new();
    for ((row, system), (unit, mut values)) in samples {
        values.sort_by(f64::total_cmp);
        rows.push(Row::new(&row, &system, values[values.len() / 2], &unit));
        rows.push(Row::new(&row, &format!("{system}:min"), values[0], &unit));
        rows.push(Row::new(
            &row,
            &format!("{system}:max"),
            values[values.len() - 1],
            &unit,
        ));
    }
    Ok(rows)
}

/// HTTP/3 and HTTP/2 over TLS to lb from the same client: 4 connections of 8 streams for
/// small GETs, 4 of 1 for 1 MiB responses.
fn multiplexed_rows(
    client: &NetNs,
    seconds: u64,
    record: &mut impl FnMut(&str, &str, &str, f64),
) -> Result<()> {
    let target: SocketAddr = (VIP, TLS_PORT).into();
    for (protocol, system) in [
        (multiplexed::Protocol::H2, H3_SYSTEMS[0]),
        (multiplexed::Protocol::H3, H3_SYSTEMS[1]),
    ] {
        let small = client
            .run(move || multiplexed::run(protocol, target, "/", 4, 8, seconds))?
            .join()
            .map_err(|_| anyhow::anyhow!("{system} client panicked"))?
            .with_context(|| format!("{system} GETs"))?;
        record(
            H3_ROWS[0].0,
            system,
            H3_ROWS[0].1,
            small.requests as f64 / small.seconds,
        );
        record(
            H3_ROWS[1].0,
            system,
            H3_ROWS[1].1,
            load::quantile(&small.latencies, 0.99),
        );
        let large = client
            .run(move || multiplexed::run(protocol, target, "/payload/1m", 4, 1, seconds))?
            .join()
            .map_err(|_| anyhow::anyhow!("{system} client panicked"))?
            .with_context(|| format!("{system} 1 MiB responses"))?;
        record(
            H3_ROWS[2].0,
            system,
            H3_ROWS[2].1,
            large.bytes as f64 / (1024.0 * 1024.0) / large.seconds,
        );
    }
    Ok(())
}
