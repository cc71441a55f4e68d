//! HTTP proxies side by side on one topology, one after another: lb's proxy (`lb-http`),
//! HAProxy in HTTP mode and nginx as a reverse proxy, in front of three nginx servers.
//! Requests/s with keep-alive (wrk) and latency percentiles at a fixed request rate.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lb_tests::{
    netns::NetNs,
    services::{ScratchDir, start_nginx, wait_listening},
    topology::{Topology, VIP, server_addr},
};

use crate::{Row, systems::Settings};

const PORT: u16 = 80;
const SERVER_PORT: u16 = 8080;
pub const SYSTEMS: [&str; 3] = ["lb-http", "haproxy-http", "nginx"];
/// Requests per second of the latency workload: well under every proxy's capacity here.
const FIXED_RATE: u64 = 2000;
const CONNECTIONS: u64 = 4;

pub fn run(settings: &Settings) -> Result<Vec<Row>> {
    let topo = Topology::new(&format!("lbh{}", std::process::id()), 3)?;
    topo.lb
        .exec(&["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
    let dir = ScratchDir::new("httpbench")?;
    for (i, ns) in topo.servers.iter().enumerate() {
        start_nginx(
            ns,
            &format!("server{}", i + 1),
            server_addr(i).into(),
            &dir.0,
        )?;
    }
    let seconds = if settings.quick { 2 } else { 10 };
    let mut rows = Vec::new();
    for system in SYSTEMS {
        eprintln!("bench: {system}");
        let pid = start(system, &topo, settings, &dir)?;
        wait_listening(&topo.client, (VIP, PORT).into(), Duration::from_secs(15))?;
        let cpu_before = cpu_seconds(pid);
        let result = measure(&topo.client, seconds);
        let cpu = cpu_seconds(pid) - cpu_before;
        topo.lb.stop(pid);
        let (rps, p50, p99) = result.with_context(|| format!("measuring {system}"))?;
        rows.push(Row::new("http-requests", system, rps, "requests/s"));
        // The proxy's own CPU (user + system, all its processes) per request served, over
        // the wrk run and the fixed-rate run together.
        let requests = rps * seconds as f64 + (FIXED_RATE * seconds) as f64;
        rows.push(Row::new(
            "http-cpu-per-request",
            system,
            cpu * 1e6 / requests,
            "us",
        ));
        rows.push(Row::new("http-latency-p50", system, p50, "us"));
        rows.push(Row::new("http-latency-p99", system, p99, "us"));
    }
    Ok(rows)
}

fn measure(client: &NetNs, seconds: u64) -> Result<(f64, f64, f64)> {
    let url = format!("http://{VIP}:{PORT}/");
    let out = client.exec(&[
        "wrk",
        "-t2",
        "-c32",
        &format!("-d{seconds}s"),
        "--timeout",
        "5s",
        &url,
    ])?;
    if out.contains("Non-2xx") || out.contains("Socket errors") {
        bail!("wrk saw errors:\n{out}");
    }
    let rps: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{out}"))?;
    let target: SocketAddr = (VIP, PORT).into();
    let mut latencies = client
        .run(move || fixed_rate(target, seconds))?
        .join()
        .map_err(|_| anyhow::anyhow!("latency client panicked"))??;
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize] as f64;
    Ok((rps, pct(0.50), pct(0.99)))
}

/// `FIXED_RATE` requests/s over `CONNECTIONS` keep-alive connections for `seconds`;
/// returns each request's latency in microseconds.
fn fixed_rate(target: SocketAddr, seconds: u64) -> Result<Vec<u64>> {
    let handles: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            std::thread::spawn(move || -> Result<Vec<u64>> {
                let mut conn = TcpStream::connect(target)?;
                conn.set_nodelay(true)?;
                conn.set_read_timeout(Some(Duration::from_secs(5)))?;
                let gap = Duration::from_micros(1_000_000 * CONNECTIONS / FIXED_RATE);
                let start = Instant::now();
                let mut next = start;
                let mut latencies = Vec::new();
                let mut buf = vec![0u8; 4096];
                while start.elapsed() < Duration::from_secs(seconds) {
                    let now = Instant::now();
                    if next > now {
                        // Kept: pacing to the fixed request rate, not a wait for anything.
                        std::thread::sleep(next - now);
                    }
                    next += gap;
                    let sent = Instant::now();
                    conn.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")?;
                    read_response(&mut conn, &mut buf)?;
                    latencies.push(sent.elapsed().as_micros() as u64);
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(
            h.join()
                .map_err(|_| anyhow::anyhow!("latency thread panicked"))??,
        );
    }
    Ok(all)
}

/// Read one response with a Content-Length body.
fn read_response(conn: &mut TcpStream, buf: &mut [u8]) -> Result<()> {
    let mut read = 0;
    loop {
        let n = conn.read(&mut buf[read..])?;
        if n == 0 {
            bail!("connection closed mid-response");
        }
        read += n;
        let Some(end) = buf[..read].windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .context("response without Content-Length")?;
        while read < end + 4 + length {
            let n = conn.read(&mut buf[read..])?;
            if n == 0 {
                bail!("connection closed mid-body");
            }
            read += n;
        }
        return Ok(());
    }
}

fn start(system: &str, topo: &Topology, settings: &Settings, dir: &ScratchDir) -> Result<u32> {
    let servers: Vec<String> = (0..3)
        .map(|i| format!("{}:{SERVER_PORT}", server_addr(i)))
        .collect();
    let lb = &topo.lb;
    match system {
        "lb-http" => {
            let list: Vec<String> = (0..3)
                .map(|i| format!("{{ address = \"{}\" }}", server_addr(i)))
                .collect();
            let config = format!(
                "[[frontends]]\nname = \"web\"\nmode = \"http\"\naddress = \"{VIP}\"\n\
                 binds = [{{ port = {PORT} }}]\ndefault_backend = \"web\"\n\n\
                 [[backends]]\nname = \"web\"\nmode = \"http\"\nbalancing_method = \"roundrobin\"\n\
                 port = {SERVER_PORT}\nservers = {{ type = \"addresses\", addresses = [{}] }}\n",
                list.join(", ")
            );
            let file = dir.0.join("lb-http.toml");
            std::fs::write(&file, config)?;
            topo.start_lb(&settings.lb_bin, &file)
        }
        "haproxy-http" => {
            let lines: Vec<String> = servers
                .iter()
                .enumerate()
                .map(|(i, s)| format!("    server s{i} {s}"))
                .collect();
            let cfg = format!(
                "global\n    maxconn 8000\n    nbthread 2\n\
                 defaults\n    mode http\n    option forwardfor\n    http-reuse safe\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\
                 frontend web\n    bind {VIP}:{PORT}\n    default_backend servers\n\
                 backend servers\n    balance roundrobin\n{}\n",
                lines.join("\n")
            );
            let file = dir.0.join("haproxy.cfg");
            std::fs::write(&file, cfg)?;
            lb.spawn(
                &["haproxy", "-db", "-f", file.to_str().unwrap()],
                Stdio::null(),
                Stdio::inherit(),
            )
        }
        "nginx" => {
            let upstreams: Vec<String> = servers.iter().map(|s| format!("server {s};")).collect();
            let conf = format!(
                "worker_processes 2;\ndaemon off;\npid {d}/proxy.pid;\nerror_log stderr error;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{\n access_log off;\n client_body_temp_path {d}/proxy-body;\n proxy_temp_path {d}/proxy-temp;\n\
                 upstream servers {{ {} keepalive 64; }}\n\
                 server {{ listen {VIP}:{PORT}; keepalive_requests 100000;\n  location / {{ proxy_pass http://servers; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header X-Forwarded-For $remote_addr; }} }}\n}}\n",
                upstreams.join(" "),
                d = dir.0.display()
            );
            let file = dir.0.join("proxy.conf");
            std::fs::write(&file, conf)?;
            lb.spawn(
                &["nginx", "-c", file.to_str().unwrap(), "-e", "stderr"],
                Stdio::null(),
                Stdio::inherit(),
            )
        }
        other => bail!("unknown HTTP system {other}"),
    }
}

/// CPU time (user + system) used so far by `pid` and its child processes (nginx's workers).
fn cpu_seconds(pid: u32) -> f64 {
    let ticks = |stat: &str| -> Option<(u32, u64)> {
        // Fields after the parenthesised name: state ppid ... utime(14) stime(15).
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ppid = fields.get(1)?.parse().ok()?;
        let used = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some((ppid, used))
    };
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some((ppid, used)) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| ticks(&s))
            && (id == pid || ppid == pid)
        {
            total += used;
        }
    }
    // USER_HZ is 100 on Linux.
    total as f64 / 100.0
}
