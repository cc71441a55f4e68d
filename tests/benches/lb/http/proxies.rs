//! The three proxies' configs, as alike as each allows: two threads (workers), plain HTTP on
//! port 80 and TLS 1.3 on 443 with the same P-256 certificate, HTTP/2 by ALPN on 443,
//! roundrobin over the same three nginx servers, keep-alive to them, X-Forwarded-For set.

use std::{path::Path, process::Stdio};

use anyhow::{Result, bail};
use lb_tests::topology::{Topology, VIP, server_addr};

use super::{PORT, SERVER_PORT, TLS_PORT};
use crate::systems::Settings;

/// Start `system` in the lb namespace; its pid (the parent of nginx's workers).
pub fn start(
    system: &str,
    topo: &Topology,
    settings: &Settings,
    dir: &Path,
    pem: &Path,
    (cert, key): (&Path, &Path),
) -> Result<u32> {
    // LB_BENCH_ONE_SERVER=1: one server behind every proxy (its pool under 80 concurrent
    // HTTP/2 streams per worker), for working on upstream reuse; the rows are not comparable.
    let n = if std::env::var_os("LB_BENCH_ONE_SERVER").is_some() {
        1
    } else {
        3
    };
    let servers: Vec<String> = (0..n)
        .map(|i| format!("{}:{SERVER_PORT}", server_addr(i)))
        .collect();
    let lb = &topo.lb;
    match system {
        "lb-http" => {
            let list: Vec<String> = (0..n)
                .map(|i| format!("{{ address = \"{}\" }}", server_addr(i)))
                .collect();
            let config = format!(
                "[[frontends]]\nname = \"web\"\nmode = \"http\"\naddress = \"{VIP}\"\n\
                 binds = [{{ port = {PORT} }}, {{ port = {TLS_PORT}, ssl = true, ssl_certificate = \"{pem}\", use_http3 = true }}]\n\
                 default_backend = \"web\"\n\n\
                 [[backends]]\nname = \"web\"\nmode = \"http\"\nbalancing_method = \"roundrobin\"\n\
                 port = {SERVER_PORT}\nservers = {{ type = \"addresses\", addresses = [{}] }}\n",
                list.join(", "),
                pem = pem.display(),
            );
            let file = dir.join("lb-http.toml");
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
                 frontend web\n    bind {VIP}:{PORT}\n    bind {VIP}:{TLS_PORT} ssl crt {pem} alpn h2,http/1.1\n    default_backend servers\n\
                 backend servers\n    balance roundrobin\n{}\n",
                lines.join("\n"),
                pem = pem.display(),
            );
            let file = dir.join("haproxy.cfg");
            std::fs::write(&file, cfg)?;
            lb.spawn(
                &["haproxy", "-db", "-f", file.to_str().unwrap()],
                Stdio::null(),
                Stdio::inherit(),
            )
        }
        "nginx" => {
            let upstreams: Vec<String> = servers.iter().map(|s| format!("server {s};")).collect();
            let location = "location / { proxy_pass http://servers; proxy_http_version 1.1; \
                            proxy_set_header Connection \"\"; proxy_set_header X-Forwarded-For $remote_addr; }";
            let conf = format!(
                "worker_processes 2;\ndaemon off;\npid {d}/proxy.pid;\nerror_log stderr error;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{\n access_log off;\n client_body_temp_path {d}/proxy-body;\n proxy_temp_path {d}/proxy-temp;\n\
                 upstream servers {{ {} keepalive 64; }}\n\
                 server {{ listen {VIP}:{PORT}; keepalive_requests 100000;\n  {location} }}\n\
                 server {{ listen {VIP}:{TLS_PORT} ssl http2; keepalive_requests 100000;\n  \
                 ssl_certificate {cert}; ssl_certificate_key {key}; ssl_protocols TLSv1.3;\n  {location} }}\n}}\n",
                upstreams.join(" "),
                d = dir.display(),
                cert = cert.display(),
                key = key.display(),
            );
            let file = dir.join("proxy.conf");
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
pub fn cpu_seconds(pid: u32) -> f64 {
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
