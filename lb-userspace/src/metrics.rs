//! Prometheus metrics at `[metrics] listen`, `/metrics`, with HAProxy's exporter names under
//! an `lb_` prefix where they fit. The daemon renders a snapshot of the maps on every
//! garbage-collection tick; the admin runtime serves the latest one.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use anyhow::{Context as _, Result};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use lb_common::{
    stats::StatKind,
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

/// A server as the daemon runs it: configured weight, and state (`publish::server_state`).
#[derive(Clone, Copy, Debug)]
pub struct ServerView {
    pub weight: u32,
    pub state: &'static str,
}

/// What the daemon knows beyond the maps.
pub struct DaemonView<'a> {
    pub servers: &'a HashMap<(String, IpAddr), ServerView>,
    /// The proxy's counts (empty without userspace frontends).
    pub proxy: &'a crate::proxy::Served,
    pub checks: &'a HashMap<(String, IpAddr), CheckStats>,
    pub ha: Option<&'a crate::api::types::HaStatus>,
    pub reloads: &'a DaemonInfo,
}

/// Render every metric from the data plane's maps and the last GC pass.
pub fn render(
    dataplane: &Dataplane,
    gc: &GcReport,
    conntrack_size: u32,
    view: &DaemonView,
) -> Result<String> {
    let (checks, ha) = (view.checks, view.ha);
    let mut r = Registry::default();
    register_daemon(&mut r, view.reloads);
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
    let srv_effective = gauge(
        &mut r,
        "lb_server_effective_weight",
        "The weight new flows see: 0 while DOWN, DRAIN or MAINT",
    );
    let srv_state = gauge(
        &mut r,
        "lb_server_state",
        "1 for the server's state: up, down (failing its check), drain (no new flows, set or \
         weight 0) or maint (maintenance: no new flows, not checked)",
    );
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
    let check_changed = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    r.register(
        "lb_server_check_last_change_seconds",
        "Seconds since the server's check state last changed (or checks began)",
        check_changed.clone(),
    );
    for ((backend, address), stats) in checks {
        let address = address.to_string();
        let l = labels(&[("backend", backend), ("server", &address)]);
        if let Some(at) = stats.last_change {
            check_changed
                .get_or_create(&l)
                .set(at.elapsed().as_secs_f64());
        }
        check_status.get_or_create(&l).set(i64::from(stats.last_ok));
        check_duration
            .get_or_create(&l)
            .set(stats.last_duration.as_secs_f64());
        check_failures.get_or_create(&l).inc_by(stats.failures);
        check_up_down.get_or_create(&l).inc_by(stats.transitions);
    }
    let xdp = [
        (StatKind::Verdict, "XDP actions returned, one per packet"),
        (
            StatKind::PassReason,
            "Why packets were passed to the kernel",
        ),
        (StatKind::DropReason, "Why packets were dropped"),
        (
            StatKind::Event,
            "What happened to balanced traffic: flows opened, closed, NAT, sticky hits...",
        ),
    ]
    .map(|(kind, help)| (kind, counter(&mut r, kind.metric().0, help)));
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
        "SNAT source ports of each SNAT address (address) towards each server's address and port, \
         per protocol: used = held by a tracked flow; free = the rest of the address's snat_ports \
         (the union of the ranges of the frontends that use the address for this backend). \
         used + free bounds the flows to one server port through one address; free = 0 means \
         new flows must find another address or are dropped (snat_exhausted)",
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
        let shown = view.servers.get(&(server.backend.clone(), server.address));
        srv_weight
            .get_or_create(&l)
            .set(i64::from(shown.map_or(server.weight, |s| s.weight)));
        srv_effective
            .get_or_create(&l)
            .set(i64::from(server.weight));
        if let Some(shown) = shown {
            for state in ["up", "down", "drain", "maint"] {
                srv_state
                    .get_or_create(&labels(&[
                        ("backend", &server.backend),
                        ("server", &address),
                        ("state", state),
                    ]))
                    .set(i64::from(shown.state == state));
            }
        }
        srv_current
            .get_or_create(&l)
            .set(gc.active.get(&server.id).copied().unwrap_or(0) as i64);
        srv_sessions.get_or_create(&l).inc_by(s.new_flows);
        srv_in.get_or_create(&l).inc_by(s.bytes_in);
        srv_out.get_or_create(&l).inc_by(s.bytes_out);
        // Each SNAT address has its ports per server port and protocol: the pool a flood of
        // SYNs would exhaust. Addresses no longer configured are shown while flows hold
        // their ports (with none free).
        for (protocol, number) in [("tcp", IPPROTO_TCP), ("udp", IPPROTO_UDP)] {
            let mut pools: std::collections::BTreeMap<IpAddr, (u64, u64)> = server
                .snat_pools
                .iter()
                .map(|(a, ports)| (*a, (u64::from(*ports), 0)))
                .collect();
            for ((id, proto, addr), used) in &gc.snat_ports_used {
                if *id == server.id && *proto == number {
                    pools
                        .entry(crate::dataplane::plan::ip_of(addr))
                        .or_default()
                        .1 += used;
                }
            }
            for (snat, (ports, used)) in pools {
                if !server.present && used == 0 {
                    continue;
                }
                let snat = snat.to_string();
                let free = ports.saturating_sub(used);
                for (state, value) in [("used", used), ("free", free)] {
                    snat_ports
                        .get_or_create(&labels(&[
                            ("backend", &server.backend),
                            ("server", &address),
                            ("protocol", protocol),
                            ("address", &snat),
                            ("state", state),
                        ]))
                        .set(value as i64);
                }
            }
        }
    }
    // The proxy's share: its sessions, open connections and bytes, in the same series.
    for (frontend, stats, open) in &view.proxy.frontends {
        let l = labels(&[("frontend", frontend)]);
        fe_sessions
            .get_or_create(&l)
            .inc_by(stats.sessions.load(Relaxed));
        fe_current.get_or_create(&l).inc_by(*open as i64);
        fe_in
            .get_or_create(&l)
            .inc_by(stats.traffic.read.load(Relaxed));
        fe_out
            .get_or_create(&l)
            .inc_by(stats.traffic.written.load(Relaxed));
    }
    for (backend, address, stats, open) in &view.proxy.servers {
        let address = address.to_string();
        let l = labels(&[("backend", backend), ("server", &address)]);
        let (sessions, sent, received) = (
            stats.sessions.load(Relaxed),
            stats.traffic.written.load(Relaxed),
            stats.traffic.read.load(Relaxed),
        );
        srv_sessions.get_or_create(&l).inc_by(sessions);
        srv_current.get_or_create(&l).inc_by(*open as i64);
        srv_in.get_or_create(&l).inc_by(sent);
        srv_out.get_or_create(&l).inc_by(received);
        if let Some(b) = backends.get_mut(backend.as_str()) {
            b[2] += open;
            b[3] += sessions;
            b[4] += sent;
            b[5] += received;
        }
    }
    register_http(&mut r, view.proxy);
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
        let (kind, name) = StatKind::of(label);
        let family = &xdp.iter().find(|(k, _)| *k == kind).expect("every kind").1;
        family
            .get_or_create(&labels(&[(kind.metric().1, name)]))
            .inc_by(value);
    }
    let attached = gauge(
        &mut r,
        "lb_xdp_attached",
        "1 for each interface and the XDP mode the kernel reports for it (native, generic)",
    );
    for (iface, mode) in dataplane.xdp_modes() {
        attached
            .get_or_create(&labels(&[("interface", iface), ("mode", mode)]))
            .set(1);
    }
    fill.set(gc.flows as i64);
    capacity.set(i64::from(conntrack_size));
    half_open.set(gc.half_open as i64);
    cycles.inc_by(gc.cycles);
    if let Some(ha) = ha {
        register_ha(&mut r, ha);
    }
    let mut text = String::new();
    encode(&mut text, &r)?;
    Ok(stable_order(&text))
}

/// The encoder writes a family's series in its hash map's order, which differs on every
/// render. Sort each family's samples by their labels; a stable sort keeps the lines of one
/// series (a histogram's buckets, sum and count) in the order written.
fn stable_order(text: &str) -> String {
    fn series_key(line: &str) -> String {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let labels = line[name_end..]
            .strip_prefix('{')
            .and_then(|rest| rest.split_once('}'))
            .map_or("", |(labels, _)| labels);
        // `le` orders a histogram's buckets, which the encoder writes in order already.
        let kept: Vec<&str> = labels
            .split(',')
            .filter(|l| !l.starts_with("le="))
            .collect();
        let base = name
            .strip_suffix("_bucket")
            .or_else(|| name.strip_suffix("_sum"))
            .or_else(|| name.strip_suffix("_count"))
            .unwrap_or(name);
        format!("{base}{{{}", kept.join(","))
    }
    let mut out = String::with_capacity(text.len());
    let mut samples: Vec<&str> = Vec::new();
    let flush = |samples: &mut Vec<&str>, out: &mut String| {
        samples.sort_by_cached_key(|l| series_key(l));
        for line in samples.drain(..) {
            out.push_str(line);
            out.push('\n');
        }
    };
    for line in text.lines() {
        if line.starts_with('#') {
            flush(&mut samples, &mut out);
            out.push_str(line);
            out.push('\n');
        } else if !line.is_empty() {
            samples.push(line);
        }
    }
    flush(&mut samples, &mut out);
    out
}

/// What the daemon knows of itself: reloads, for `lb_build_info` and the reload metrics.
#[derive(Clone, Debug, Default)]
pub struct DaemonInfo {
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// When the last reload (or the start) succeeded, in seconds since the epoch.
    pub last_reload_success: f64,
}

/// The version and commit this binary was built from, and the embedded XDP object's hash.
pub fn build_info() -> (&'static str, &'static str, String) {
    (
        env!("CARGO_PKG_VERSION"),
        env!("LB_GIT_COMMIT"),
        crate::dataplane::ebpf_object_hash(),
    )
}

fn register_daemon(r: &mut Registry, daemon: &DaemonInfo) {
    let (version, commit, ebpf) = build_info();
    gauge(
        r,
        "lb_build_info",
        "Always 1: the version, commit and XDP object hash of the running binary",
    )
    .get_or_create(&labels(&[
        ("version", version),
        ("commit", commit),
        ("ebpf_object", &ebpf),
    ]))
    .set(1);
    let reloads = counter(r, "lb_config_reloads", "Config reloads, by result");
    for (result, n) in [
        ("success", daemon.reloads_ok),
        ("failure", daemon.reloads_failed),
    ] {
        reloads
            .get_or_create(&labels(&[("result", result)]))
            .inc_by(n);
    }
    let last = Gauge::<f64, AtomicU64>::default();
    r.register(
        "lb_config_last_reload_success_timestamp_seconds",
        "When the config was last loaded successfully (start or reload), Unix time",
        last.clone(),
    );
    last.set(daemon.last_reload_success);
    register_process(r);
}

/// The standard `process_*` metrics, from /proc/self.
fn register_process(r: &mut Registry) {
    let Some(p) = ProcessStats::read() else {
        return;
    };
    let cpu = Counter::<f64, AtomicU64>::default();
    r.register(
        "process_cpu_seconds",
        "User and system CPU time spent, in seconds",
        cpu.clone(),
    );
    cpu.inc_by(p.cpu_seconds);
    for (name, help, value) in [
        (
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            p.resident_bytes,
        ),
        (
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            p.virtual_bytes,
        ),
        ("process_open_fds", "Open file descriptors", p.open_fds),
        (
            "process_max_fds",
            "Maximum open file descriptors",
            p.max_fds,
        ),
        (
            "process_start_time_seconds",
            "Start time of the process since the epoch, in seconds",
            p.start_time,
        ),
    ] {
        let g = Gauge::<f64, AtomicU64>::default();
        r.register(name, help, g.clone());
        g.set(value);
    }
}

struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    open_fds: f64,
    max_fds: f64,
    start_time: f64,
}

impl ProcessStats {
    fn read() -> Option<ProcessStats> {
        // SAFETY: sysconf has no preconditions.
        let (hz, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK) as f64,
                libc::sysconf(libc::_SC_PAGESIZE) as f64,
            )
        };
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command's closing parenthesis, from field 3 (state) on.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse::<f64>()
            .ok()?;
        let max_fds = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .ok()?
            .0 as f64;
        Some(ProcessStats {
            cpu_seconds: (field(14)? + field(15)?) / hz,
            virtual_bytes: field(23)?,
            resident_bytes: field(24)? * page,
            open_fds: std::fs::read_dir("/proc/self/fd").ok()?.count() as f64,
            max_fds,
            start_time: boot + field(22)? / hz,
        })
    }
}

/// The proxy's requests by status class, its server errors, retries and response times.
fn register_http(r: &mut Registry, served: &crate::proxy::Served) {
    use crate::proxy::observe::CLASSES;
    let requests = counter(
        r,
        "lb_http_requests",
        "HTTP requests answered by a proxied frontend, by status class (lb's own answers too)",
    );
    for (frontend, stats, _) in &served.frontends {
        for (code, n) in CLASSES.iter().zip(&stats.requests) {
            requests
                .get_or_create(&labels(&[("frontend", frontend), ("code", code)]))
                .inc_by(n.load(Relaxed));
        }
    }
    let responses = counter(
        r,
        "lb_http_server_responses",
        "HTTP responses from each server, by status class",
    );
    let connect_errors = counter(
        r,
        "lb_http_server_connect_errors",
        "Connections to the server that failed (refused, timed out, TLS)",
    );
    let retries = counter(
        r,
        "lb_http_server_retries",
        "Requests that failed on the server and were sent again",
    );
    let redispatches = counter(
        r,
        "lb_http_server_redispatches",
        "Requests that failed on the server and went to another (every retry does)",
    );
    let server_times = Family::<Labels, ConstHistogram>::default();
    r.register(
        "lb_http_server_response_time_seconds",
        "From request sent to response head received (HAProxy's Tr), per server",
        server_times.clone(),
    );
    let backend_times = Family::<Labels, ConstHistogram>::default();
    r.register(
        "lb_http_backend_response_time_seconds",
        "From request sent to response head received (HAProxy's Tr), per backend",
        backend_times.clone(),
    );
    let mut per_backend: std::collections::BTreeMap<&str, HistogramSnapshot> = Default::default();
    for (backend, address, stats, _) in &served.servers {
        let address = address.to_string();
        let l = labels(&[("backend", backend), ("server", &address)]);
        for (code, n) in CLASSES.iter().zip(&stats.requests) {
            responses
                .get_or_create(&labels(&[
                    ("backend", backend),
                    ("server", &address),
                    ("code", code),
                ]))
                .inc_by(n.load(Relaxed));
        }
        connect_errors
            .get_or_create(&l)
            .inc_by(stats.connect_errors.load(Relaxed));
        let retried = stats.retries.load(Relaxed);
        retries.get_or_create(&l).inc_by(retried);
        redispatches.get_or_create(&l).inc_by(retried);
        let (sum, count, buckets) = stats.response_time.snapshot();
        let total = per_backend
            .entry(backend)
            .or_insert_with(|| (0.0, 0, buckets.iter().map(|(b, _)| (*b, 0)).collect()));
        total.0 += sum;
        total.1 += count;
        for (t, (_, n)) in total.2.iter_mut().zip(&buckets) {
            t.1 += n;
        }
        server_times.get_or_create(&l).set(sum, count, buckets);
    }
    for (backend, (sum, count, buckets)) in per_backend {
        backend_times
            .get_or_create(&labels(&[("backend", backend)]))
            .set(sum, count, buckets);
    }
}

use crate::proxy::observe::HistogramSnapshot;

/// A histogram whose buckets were counted elsewhere (the proxy's atomics): encoded as is.
#[derive(Clone, Debug, Default)]
struct ConstHistogram(Arc<std::sync::Mutex<HistogramSnapshot>>);

impl ConstHistogram {
    fn set(&self, sum: f64, count: u64, buckets: Vec<(f64, u64)>) {
        *self.0.lock().expect("histogram lock") = (sum, count, buckets);
    }
}

impl prometheus_client::metrics::TypedMetric for ConstHistogram {
    const TYPE: prometheus_client::metrics::MetricType =
        prometheus_client::metrics::MetricType::Histogram;
}

impl prometheus_client::encoding::EncodeMetric for ConstHistogram {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.0.lock().expect("histogram lock").clone();
        encoder
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        <Self as prometheus_client::metrics::TypedMetric>::TYPE
    }
}

/// The HA pair: this node's role, the sync's state and its totals.
fn register_ha(r: &mut Registry, ha: &crate::api::types::HaStatus) {
    let role = gauge(r, "lb_ha_role", "1 for the role keepalived gave this node");
    for name in ["starting", "backup", "master", "fault"] {
        role.get_or_create(&labels(&[("role", name)]))
            .set(i64::from(ha.role == name));
    }
    let peer_role = gauge(
        r,
        "lb_ha_peer_role",
        "1 for the role the peer last reported",
    );
    for name in ["starting", "backup", "master", "fault"] {
        peer_role
            .get_or_create(&labels(&[("role", name)]))
            .set(i64::from(ha.peer_role == name));
    }
    let state = gauge(
        r,
        "lb_ha_sync_state",
        "1 when true: sending, receiving, synced, split_brain",
    );
    for (name, on) in [
        ("sending", ha.sending),
        ("receiving", ha.receiving),
        ("synced", ha.synced),
        ("split_brain", ha.split_brain),
    ] {
        state
            .get_or_create(&labels(&[("state", name)]))
            .set(i64::from(on));
    }
    let lag = gauge(
        r,
        "lb_ha_sync_lag_entries",
        "Changed entries the last sync scan found",
    );
    lag.get_or_create(&Labels::new()).set(ha.lag_entries as i64);
    let lag_s = Gauge::<f64, AtomicU64>::default();
    r.register(
        "lb_ha_sync_lag_seconds",
        "How far behind this node's tables the peer's may be",
        lag_s.clone(),
    );
    lag_s.set(if ha.lag_seconds.is_finite() {
        ha.lag_seconds
    } else {
        -1.0
    });
    let entries = counter(
        r,
        "lb_ha_sync_entries",
        "Entries synced, by direction and kind",
    );
    for (direction, kind, n) in [
        ("sent", "flow", ha.flows_sent),
        ("received", "flow", ha.flows_received),
        ("sent", "sticky", ha.sticky_sent),
        ("received", "sticky", ha.sticky_received),
    ] {
        entries
            .get_or_create(&labels(&[("direction", direction), ("kind", kind)]))
            .inc_by(n);
    }
    for (name, help, n) in [
        ("lb_ha_sync_errors", "Sync sessions that failed", ha.errors),
        (
            "lb_ha_sync_unmapped",
            "Synced entries naming what this node lacks",
            ha.unmapped,
        ),
        (
            "lb_ha_failovers",
            "Times this node became master",
            ha.failovers,
        ),
        (
            "lb_ha_split_brains",
            "Times both nodes were master",
            ha.split_brains,
        ),
    ] {
        counter(r, name, help)
            .get_or_create(&Labels::new())
            .inc_by(n);
    }
}

/// Serve `GET /metrics` at `listen` on the admin runtime (call within it): OpenMetrics to a
/// client that asks for it (Prometheus does), the Prometheus text format to the rest (curl,
/// promtool), each with its own content type.
pub fn serve(listen: SocketAddr, shared: Shared) -> Result<()> {
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("metrics: cannot listen on {listen} ([metrics] listen)"))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let text = shared.read().map(|t| t.clone()).unwrap_or_default();
            let openmetrics = headers
                .get_all(axum::http::header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("application/openmetrics-text"));
            async move {
                if openmetrics {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                } else {
                    (
                        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                        to_prometheus_text(&text),
                    )
                }
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(())
}

/// The Prometheus text format (0.0.4) of the OpenMetrics text the encoder writes: a counter's
/// HELP and TYPE name its `_total` samples, and OpenMetrics' own lines (`# EOF`, `# UNIT`,
/// `_created` samples) go.
fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => {
                let name = line.split(['{', ' ']).next().unwrap_or("");
                if name
                    .strip_suffix("_created")
                    .is_some_and(|family| counters.contains(family))
                {
                    continue;
                }
                out.push_str(line);
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_sorted_within_each_family_and_histograms_keep_their_order() {
        let text = "# TYPE a counter\na_total{x=\"b\"} 1\na_total{x=\"a\"} 2\n\
                    # TYPE h histogram\nh_sum{s=\"b\"} 1\nh_count{s=\"b\"} 1\n\
                    h_bucket{s=\"b\",le=\"10.0\"} 1\nh_bucket{s=\"b\",le=\"+Inf\"} 1\n\
                    h_sum{s=\"a\"} 0\nh_count{s=\"a\"} 0\n\
                    h_bucket{s=\"a\",le=\"10.0\"} 0\nh_bucket{s=\"a\",le=\"+Inf\"} 0\n# EOF\n";
        assert_eq!(
            stable_order(text),
            "# TYPE a counter\na_total{x=\"a\"} 2\na_total{x=\"b\"} 1\n\
             # TYPE h histogram\nh_sum{s=\"a\"} 0\nh_count{s=\"a\"} 0\n\
             h_bucket{s=\"a\",le=\"10.0\"} 0\nh_bucket{s=\"a\",le=\"+Inf\"} 0\n\
             h_sum{s=\"b\"} 1\nh_count{s=\"b\"} 1\n\
             h_bucket{s=\"b\",le=\"10.0\"} 1\nh_bucket{s=\"b\",le=\"+Inf\"} 1\n# EOF\n"
        );
    }

    #[test]
    fn prometheus_text_names_counters_by_their_samples() {
        let om = "# HELP a Flows.\n# TYPE a counter\na_total{x=\"1\"} 2\na_created{x=\"1\"} 1.5\n\
                  # HELP g Open.\n# TYPE g gauge\n# UNIT g seconds\ng 3\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_total Flows.\n# TYPE a_total counter\na_total{x=\"1\"} 2\n\
             # HELP g Open.\n# TYPE g gauge\ng 3\n"
        );
    }

    #[test]
    fn process_stats_are_read() {
        let p = ProcessStats::read().expect("/proc/self");
        assert!(p.resident_bytes > 0.0 && p.open_fds > 0.0 && p.start_time > 1.0e9);
    }
}
