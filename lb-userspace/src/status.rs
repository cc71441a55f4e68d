//! `lb status`: frontends and servers of a running daemon, with health, weight, open flows
//! and rates, read from its metrics endpoint (two scrapes a second apart give the rates).

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

/// Samples by metric name and label set (`{a="b",c="d"}` kept as text).
type Samples = BTreeMap<(String, String), f64>;

fn scrape(addr: SocketAddr) -> Result<Samples> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .with_context(|| format!("connecting to the daemon's metrics at {addr}: is lb running?"))?;
    conn.set_read_timeout(Some(Duration::from_secs(3)))?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let mut samples = Samples::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (name, labels) = match series.find('{') {
            Some(i) => (&series[..i], &series[i..]),
            None => (series, ""),
        };
        if let Ok(v) = value.parse() {
            samples.insert((name.to_string(), labels.to_string()), v);
        }
    }
    Ok(samples)
}

fn label<'a>(labels: &'a str, key: &str) -> &'a str {
    let pat = format!("{key}=\"");
    labels
        .find(&pat)
        .map(|i| &labels[i + pat.len()..])
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("")
}

#[derive(Debug, Serialize)]
pub struct FrontendStatus {
    pub name: String,
    pub open_flows: u64,
    pub flows_total: u64,
    pub new_flows_per_s: f64,
    pub bytes_in_per_s: f64,
    pub bytes_out_per_s: f64,
}

#[derive(Debug, Serialize)]
pub struct ServerStatus {
    pub backend: String,
    pub server: String,
    pub up: bool,
    pub weight: u64,
    pub open_flows: u64,
    pub flows_total: u64,
    pub new_flows_per_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub frontends: Vec<FrontendStatus>,
    pub servers: Vec<ServerStatus>,
    pub conntrack_entries: u64,
    pub conntrack_capacity: u64,
}

pub fn collect(addr: SocketAddr) -> Result<Status> {
    let first = scrape(addr)?;
    std::thread::sleep(Duration::from_secs(1));
    let now = scrape(addr)?;
    let get = |s: &Samples, name: &str, labels: &str| {
        s.get(&(name.to_string(), labels.to_string()))
            .copied()
            .unwrap_or(0.0)
    };
    let rate =
        |name: &str, labels: &str| (get(&now, name, labels) - get(&first, name, labels)).max(0.0);
    let mut frontends = Vec::new();
    let mut servers = Vec::new();
    for (name, labels) in now.keys() {
        if name == "lb_frontend_sessions_total" {
            frontends.push(FrontendStatus {
                name: label(labels, "frontend").to_string(),
                open_flows: get(&now, "lb_frontend_current_sessions", labels) as u64,
                flows_total: get(&now, name, labels) as u64,
                new_flows_per_s: rate(name, labels),
                bytes_in_per_s: rate("lb_frontend_bytes_in_total", labels),
                bytes_out_per_s: rate("lb_frontend_bytes_out_total", labels),
            });
        } else if name == "lb_server_sessions_total" {
            servers.push(ServerStatus {
                backend: label(labels, "backend").to_string(),
                server: label(labels, "server").to_string(),
                up: get(&now, "lb_server_status", labels) > 0.0,
                weight: get(&now, "lb_server_weight", labels) as u64,
                open_flows: get(&now, "lb_server_current_sessions", labels) as u64,
                flows_total: get(&now, name, labels) as u64,
                new_flows_per_s: rate(name, labels),
            });
        }
    }
    if frontends.is_empty() && servers.is_empty() {
        bail!("the metrics at {addr} have no lb frontends or servers: is this lb's address?");
    }
    Ok(Status {
        frontends,
        servers,
        conntrack_entries: get(&now, "lb_conntrack_entries", "") as u64,
        conntrack_capacity: get(&now, "lb_conntrack_capacity", "") as u64,
    })
}

pub fn table(s: &Status) -> String {
    let mut out = format!(
        "{:<20} {:>10} {:>12} {:>10} {:>12} {:>12}\n",
        "FRONTEND", "OPEN", "FLOWS", "NEW/S", "IN B/S", "OUT B/S"
    );
    for f in &s.frontends {
        out += &format!(
            "{:<20} {:>10} {:>12} {:>10.1} {:>12.0} {:>12.0}\n",
            f.name,
            f.open_flows,
            f.flows_total,
            f.new_flows_per_s,
            f.bytes_in_per_s,
            f.bytes_out_per_s
        );
    }
    out += &format!(
        "\n{:<20} {:<40} {:<6} {:>6} {:>10} {:>12} {:>10}\n",
        "BACKEND", "SERVER", "STATE", "WEIGHT", "OPEN", "FLOWS", "NEW/S"
    );
    for v in &s.servers {
        out += &format!(
            "{:<20} {:<40} {:<6} {:>6} {:>10} {:>12} {:>10.1}\n",
            v.backend,
            v.server,
            if v.up { "UP" } else { "DOWN" },
            v.weight,
            v.open_flows,
            v.flows_total,
            v.new_flows_per_s
        );
    }
    out += &format!(
        "\nconnection table: {} of {} flows\n",
        s.conntrack_entries, s.conntrack_capacity
    );
    out
}
