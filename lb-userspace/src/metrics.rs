//! Prometheus metrics at `[metrics] listen`, `/metrics`, with HAProxy's exporter names under
//! an `lb_` prefix where they fit. The daemon renders a snapshot of the maps on every
//! garbage-collection tick; the admin runtime serves the latest one.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, RwLock, atomic::AtomicU64},
};

use anyhow::{Context as _, Result};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use lb_common::{
    maps::SNAT_PORTS,
    wire::{IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    dataplane::{Dataplane, GcReport},
    health::CheckStats,
};

type Labels = Vec<(String, String)>;

/// The latest rendered metrics, shared with the HTTP thread.
pub type Shared = Arc<RwLock<String>>;

fn counter(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    registry.register(name, help, family.clone());
    family
}

fn gauge(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    registry.register(name, help, family.clone());
    family
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Render every metric from the data plane's maps and the last GC pass.
pub fn render(
    dataplane: &Dataplane,
    gc: &GcReport,
    conntrack_size: u32,
    checks: &HashMap<(String, IpAddr), CheckStats>,
) -> Result<String> {
    let mut r = Registry::default();
    let fe_in = counter(
        &mut r,
        "lb_frontend_bytes_in",
        "Bytes from clients (frame length)",
    );
    let fe_out = counter(
        &mut r,
        "lb_frontend_bytes_out",
        "Bytes to clients (frame length)",
    );
    let fe_pkts_in = counter(&mut r, "lb_frontend_packets_in", "Packets from clients");
    let fe_pkts_out = counter(&mut r, "lb_frontend_packets_out", "Packets to clients");
    let fe_sessions = counter(&mut r, "lb_frontend_sessions", "Flows opened");
    let fe_current = gauge(&mut r, "lb_frontend_current_sessions", "Open flows");
    let fe_denied = counter(
        &mut r,
        "lb_frontend_denied_connections",
        "New flows dropped, by reason",
    );
    let be_status = gauge(
        &mut r,
        "lb_backend_status",
        "1 when at least one server takes new flows",
    );
    let be_active = gauge(
        &mut r,
        "lb_backend_active_servers",
        "Servers that take new flows",
    );
    let be_weight = gauge(
        &mut r,
        "lb_backend_weight",
        "Total weight of the servers that take new flows",
    );
    let be_current = gauge(&mut r, "lb_backend_current_sessions", "Open flows");
    let be_sessions = counter(&mut r, "lb_backend_sessions", "Flows opened");
    let be_in = counter(&mut r, "lb_backend_bytes_in", "Bytes sent to servers");
    let be_out = counter(
        &mut r,
        "lb_backend_bytes_out",
        "Bytes received from servers",
    );
    let srv_status = gauge(
        &mut r,
        "lb_server_status",
        "1 when the server takes new flows",
    );
    let srv_weight = gauge(&mut r, "lb_server_weight", "Configured weight");
    let srv_current = gauge(&mut r, "lb_server_current_sessions", "Open flows");
    let srv_sessions = counter(&mut r, "lb_server_sessions", "Flows opened");
    let srv_in = counter(&mut r, "lb_server_bytes_in", "Bytes sent to the server");
    let srv_out = counter(
        &mut r,
        "lb_server_bytes_out",
        "Bytes received from the server",
    );
    let check_status = gauge(
        &mut r,
        "lb_server_check_status",
        "1 when the last health probe passed",
    );
    let check_duration = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    r.register(
        "lb_server_check_duration_seconds",
        "Duration of the last health probe",
        check_duration.clone(),
    );
    let check_failures = counter(&mut r, "lb_server_check_failures", "Failed health probes");
    let check_up_down = counter(&mut r, "lb_server_check_up_down", "UP/DOWN transitions");
    for ((backend, address), stats) in checks {
        let address = address.to_string();
        let l = labels(&[("backend", backend), ("server", &address)]);
        check_status.get_or_create(&l).set(i64::from(stats.last_ok));
        check_duration
            .get_or_create(&l)
            .set(stats.last_duration.as_secs_f64());
        check_failures.get_or_create(&l).inc_by(stats.failures);
        check_up_down.get_or_create(&l).inc_by(stats.transitions);
    }
    let xdp = counter(
        &mut r,
        "lb_xdp_packets",
        "XDP verdicts and the reasons behind them",
    );
    let fill = Gauge::<i64>::default();
    r.register("lb_conntrack_entries", "Tracked flows", fill.clone());
    let capacity = Gauge::<i64>::default();
    r.register(
        "lb_conntrack_capacity",
        "Flows the table can hold",
        capacity.clone(),
    );
    let cycles = Counter::<u64>::default();
    r.register(
        "lb_conntrack_gc_cycles",
        "Complete sweeps of the connection table (the table-wide counts are the last one's)",
        cycles.clone(),
    );
    let half_open = Gauge::<i64>::default();
    r.register(
        "lb_conntrack_half_open",
        "TCP flows whose handshake the client has not completed (not counted as sessions)",
        half_open.clone(),
    );
    let snat_ports = gauge(
        &mut r,
        "lb_snat_ports",
        "SNAT source ports towards each server, used (held by a tracked flow) and free, per protocol",
    );

    let inventory = dataplane.inventory();
    for (id, name) in &inventory.frontends {
        let s = dataplane.frontend_stats(*id)?;
        let l = labels(&[("frontend", name)]);
        fe_in.get_or_create(&l).inc_by(s.bytes_in);
        fe_out.get_or_create(&l).inc_by(s.bytes_out);
        fe_pkts_in.get_or_create(&l).inc_by(s.packets_in);
        fe_pkts_out.get_or_create(&l).inc_by(s.packets_out);
        fe_sessions.get_or_create(&l).inc_by(s.new_flows);
        fe_current
            .get_or_create(&l)
            .set(gc.active_per_frontend.get(id).copied().unwrap_or(0) as i64);
        for (reason, v) in [
            ("no_server", s.drop_no_server),
            ("snat_exhausted", s.drop_snat_exhausted),
            ("other", s.drop_other),
        ] {
            fe_denied
                .get_or_create(&labels(&[("frontend", name), ("reason", reason)]))
                .inc_by(v);
        }
    }
    let mut backends: std::collections::BTreeMap<&str, [u64; 6]> = Default::default();
    for server in &inventory.servers {
        let s = dataplane.server_stats(server.id)?;
        let takes_flows = server.present && server.weight > 0;
        let open = gc.active.get(&server.id).copied().unwrap_or(0);
        let b = backends.entry(&server.backend).or_default();
        for (total, add) in b.iter_mut().zip([
            u64::from(takes_flows),
            if takes_flows {
                u64::from(server.weight)
            } else {
                0
            },
            open,
            s.new_flows,
            s.bytes_in,
            s.bytes_out,
        ]) {
            *total += add;
        }
        let address = server.address.to_string();
        let l = labels(&[("backend", &server.backend), ("server", &address)]);
        srv_status
            .get_or_create(&l)
            .set(i64::from(server.present && server.weight > 0));
        srv_weight.get_or_create(&l).set(i64::from(server.weight));
        srv_current
            .get_or_create(&l)
            .set(gc.active.get(&server.id).copied().unwrap_or(0) as i64);
        srv_sessions.get_or_create(&l).inc_by(s.new_flows);
        srv_in.get_or_create(&l).inc_by(s.bytes_in);
        srv_out.get_or_create(&l).inc_by(s.bytes_out);
        // Each SNAT address has SNAT_PORTS ports per server port and protocol: the pool a
        // flood of SYNs would exhaust.
        for (protocol, number) in [("tcp", IPPROTO_TCP), ("udp", IPPROTO_UDP)] {
            let used = gc
                .snat_ports_used
                .get(&(server.id, number))
                .copied()
                .unwrap_or(0);
            if !server.present && used == 0 {
                continue;
            }
            let free = u64::from(SNAT_PORTS).saturating_sub(used);
            for (state, value) in [("used", used), ("free", free)] {
                snat_ports
                    .get_or_create(&labels(&[
                        ("backend", &server.backend),
                        ("server", &address),
                        ("protocol", protocol),
                        ("state", state),
                    ]))
                    .set(value as i64);
            }
        }
    }
    for (backend, [active, weight, open, sessions, bytes_in, bytes_out]) in backends {
        let l = labels(&[("backend", backend)]);
        be_status.get_or_create(&l).set(i64::from(active > 0));
        be_active.get_or_create(&l).set(active as i64);
        be_weight.get_or_create(&l).set(weight as i64);
        be_current.get_or_create(&l).set(open as i64);
        be_sessions.get_or_create(&l).inc_by(sessions);
        be_in.get_or_create(&l).inc_by(bytes_in);
        be_out.get_or_create(&l).inc_by(bytes_out);
    }
    for (label, value) in dataplane.stats()? {
        xdp.get_or_create(&labels(&[("counter", label)]))
            .inc_by(value);
    }
    fill.set(gc.flows as i64);
    capacity.set(i64::from(conntrack_size));
    half_open.set(gc.half_open as i64);
    cycles.inc_by(gc.cycles);
    let mut text = String::new();
    encode(&mut text, &r)?;
    Ok(text)
}

/// Serve `GET /metrics` at `listen` on the admin runtime (call within it).
pub fn serve(listen: SocketAddr, shared: Shared) -> Result<()> {
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("metrics: cannot listen on {listen} ([metrics] listen)"))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let text = shared.read().map(|t| t.clone()).unwrap_or_default();
            async move {
                (
                    [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                    text,
                )
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(())
}
