//! Whole systems side by side on one topology, one after another: the kernel's own
//! forwarding (`direct`), nftables DNAT, HAProxy in TCP mode, and lb's XDP NAT and DSR
//! paths. The balancer runs alone on its own CPU (see `rig`); the primary figures are its
//! CPU time per forwarded packet and per connection, next to the rates it reached with
//! that CPU saturated, then throughput and latency.

mod conn_rate;
mod generator;
mod rig;

use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lb_common::maps::{BENCH_FLOW_ADDRS, BENCH_FLOW_PORTS, BENCH_SINK_PORT};
use lb_tests::{
    netns::NetNs,
    topology::{SERVER_PORT, Topology, VIP, server_addr, start_and_wait_ready},
    traffic::tcp_session,
    wait_until,
};

use crate::Row;
use generator::Packets;
use rig::{BALANCER_CPU, OTHERS_CPU, Rig, Spent};

const DISCARD_PORT: u16 = BENCH_SINK_PORT;
const IPERF_PORT: u16 = 5201;
const VIP_TCP_PORT: u16 = 80;
/// Addresses per server for the UDP backends: lb's SNAT reserves a port per (server
/// address, port), 22768 of them, so the 1M-flow run needs about 72 server addresses.
const UDP_ADDRS_PER_SERVER: usize = 24;
/// Connections in flight at once in the connection-rate run.
const CONCURRENCY: usize = 32;
/// Distinct source tuples of the many-flows runs.
const FLOWS: u64 = (BENCH_FLOW_ADDRS * BENCH_FLOW_PORTS) as u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Direct,
    Nftables,
    HaproxyTcp,
    LbNat,
    LbDsr,
}

impl System {
    pub const ALL: [System; 5] = [
        System::Direct,
        System::Nftables,
        System::HaproxyTcp,
        System::LbNat,
        System::LbDsr,
    ];

    pub fn name(self) -> &'static str {
        match self {
            System::Direct => "direct",
            System::Nftables => "nftables",
            System::HaproxyTcp => "haproxy-tcp",
            System::LbNat => "lb-nat",
            System::LbDsr => "lb-dsr",
        }
    }

    /// Where the client sends each kind of traffic.
    fn target(self, port: u16) -> SocketAddr {
        match self {
            // No balancer: straight to server 1, routed by lb's kernel.
            System::Direct => (
                server_addr(0),
                if port == VIP_TCP_PORT {
                    SERVER_PORT
                } else {
                    port
                },
            )
                .into(),
            _ => (VIP, port).into(),
        }
    }
}

pub struct Settings {
    pub quick: bool,
    pub lb_bin: std::path::PathBuf,
}

impl Settings {
    fn seconds(&self) -> u64 {
        if self.quick { 1 } else { 10 }
    }

    fn packet_seconds(&self) -> Duration {
        Duration::from_secs(if self.quick { 1 } else { 5 })
    }
}

/// The address of server `server`'s `n`th UDP address (0 is its main one).
fn udp_server_addr(server: usize, n: usize) -> Ipv4Addr {
    let [a, b, c, _] = server_addr(server).octets();
    Ipv4Addr::new(a, b, c, 2 + n as u8)
}

pub fn run(settings: &Settings) -> Result<Vec<Row>> {
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if cpus <= BALANCER_CPU as libc::c_long {
        bail!("the systems bench needs CPU {BALANCER_CPU} for the balancer; {cpus} online");
    }
    // Everything this process starts from here on (namespaces' daemons, clients, iperf3)
    // inherits CPU 0; the balancer is moved to its CPU once started.
    let mask = rig::pin_self(OTHERS_CPU)?;
    let rows = run_pinned(settings);
    rig::restore_affinity(&mask);
    rows
}

fn run_pinned(settings: &Settings) -> Result<Vec<Row>> {
    let topo = Topology::new(&format!("lbb{}", std::process::id()), 3)?;
    start_and_wait_ready(&topo.client, &settings.lb_bin, &["peer", "eth0"])?;
    // Many short connections: reuse TIME_WAIT ports, and use a wide port range.
    topo.client
        .exec(&["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"])?;
    topo.client
        .exec(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=10000 65000"])?;
    for (i, server) in topo.servers.iter().enumerate() {
        let mut cmds: Vec<String> = (1..UDP_ADDRS_PER_SERVER)
            .map(|n| format!("ip addr add {}/24 dev eth0", udp_server_addr(i, n)))
            .collect();
        // DSR: the servers hold the VIP on an interface that does not answer ARP for it.
        cmds.push(format!("ip addr add {VIP}/32 dev lo"));
        cmds.push("sysctl -qw net.ipv4.conf.all.arp_ignore=1".into());
        cmds.push("sysctl -qw net.ipv4.conf.all.arp_announce=2".into());
        for cmd in cmds {
            server.exec(&cmd.split_whitespace().collect::<Vec<_>>())?;
        }
    }
    // Declared after `topo`, so dropped (sinks detached) before it.
    let mut packets = Packets::new(&topo)?;
    let rig = Rig::new(&topo)?;
    let _servers = conn_rate::start_servers(&topo.servers, &[SERVER_PORT, VIP_TCP_PORT])?;
    topo.servers[0].spawn(
        &["iperf3", "-s", "-p", &IPERF_PORT.to_string()],
        Stdio::null(),
        Stdio::null(),
    )?;

    let mut rows = Vec::new();
    for system in System::ALL {
        eprintln!("bench: {}", system.name());
        let running = start_system(system, &topo, settings)?;
        let result = wait_until_serving(&topo.client, system.target(VIP_TCP_PORT)).and_then(|()| {
            for pid in &running.lb_pids {
                rig::pin_process(*pid, BALANCER_CPU)?;
            }
            measure(
                system,
                &topo,
                &rig,
                &mut packets,
                &running.lb_pids,
                settings,
            )
        });
        running.stop(&topo);
        rows.extend(result.with_context(|| format!("measuring {}", system.name()))?);
    }
    Ok(rows)
}

/// One packet-rate run's figures.
struct PacketRun {
    rate: f64,
    elapsed: Duration,
    ns_per_packet: f64,
    spent: Spent,
}

/// The generator at full speed for `settings.packet_seconds()`, the balancer's CPU
/// saturated: what the sinks received per second, and the balancer's CPU time per packet
/// received. With `many_flows`, 1M source tuples, after a warm-up that creates the flows.
fn packet_rate(
    topo: &Topology,
    rig: &Rig,
    packets: &mut Packets,
    processes: &[u32],
    target: SocketAddr,
    many_flows: bool,
    settings: &Settings,
) -> Result<PacketRun> {
    packets.set_flow(target, many_flows)?;
    if many_flows {
        // Frames refused by a full ring make no flow, and which are refused is as good as
        // random over a 1M-frame cycle: after 3M frames through, about 95 % of the 1M
        // tuples have made a flow (1 - e^-3).
        let start = packets.settled()?;
        let (target_frames, limit) = if settings.quick {
            (0, 1)
        } else {
            (3 * FLOWS, 12)
        };
        let mut rounds = 0;
        while rounds < limit {
            packets.generate(topo, Duration::from_secs(1))?;
            rounds += 1;
            if packets.received()? - start >= target_frames {
                break;
            }
        }
        let through = packets.settled()? - start;
        eprintln!(
            "bench: warm-up: {through} frames through in {rounds} s, so about {:.0} % of the \
             {FLOWS} tuples have made a flow",
            100.0 * (1.0 - (-(through as f64) / FLOWS as f64).exp())
        );
    }
    let before = packets.settled()?;
    let s0 = rig.sample(processes);
    let (elapsed, made) = packets.generate(topo, settings.packet_seconds())?;
    let after = packets.settled()?;
    let spent = Spent::between(&s0, &rig.sample(processes));
    let received = after - before;
    let ns_per_packet = if received == 0 {
        0.0
    } else {
        spent.balancer_ns as f64 / received as f64
    };
    eprintln!(
        "bench: packets to {target}{}: generated {made}, servers received {received} in \
         {elapsed:?}; balancer CPU {:.3} s ({ns_per_packet:.0} ns/packet), {:.1} % of CPU \
         {BALANCER_CPU}'s busy time; NET_RX softirqs per CPU {:?}",
        if many_flows { " (1M flows)" } else { "" },
        spent.balancer_ns as f64 / 1e9,
        spent.balancer_share(),
        spent.net_rx,
    );
    Ok(PacketRun {
        rate: received as f64 / elapsed.as_secs_f64(),
        elapsed,
        ns_per_packet,
        spent,
    })
}

fn measure(
    system: System,
    topo: &Topology,
    rig: &Rig,
    packets: &mut Packets,
    processes: &[u32],
    settings: &Settings,
) -> Result<Vec<Row>> {
    let name = system.name();
    rig.check()?;
    let mut rows = Vec::new();
    if system == System::HaproxyTcp {
        eprintln!("bench: haproxy has no UDP mode; no packet rows for it");
    } else {
        let target = system.target(DISCARD_PORT);
        let one = packet_rate(topo, rig, packets, processes, target, false, settings)?;
        rows.push(Row::new(
            "cpu-per-packet",
            name,
            one.ns_per_packet,
            "ns/packet",
        ));
        rows.push(Row::new("max-packet-rate", name, one.rate, "packets/s"));
        rows.push(Row::new(
            "balancer-share-cpu1",
            name,
            one.spent.balancer_share(),
            "%",
        ));
        // Below 100 %, the rate is what reached the balancer (the generator's, less what the
        // ring refused while its thread was waking), not the most it could forward.
        rows.push(Row::new(
            "balancer-core-load",
            name,
            100.0 * one.spent.balancer_ns as f64 / 1e9 / one.elapsed.as_secs_f64(),
            "% core",
        ));
        for (cpu, count) in one.spent.net_rx.iter().enumerate() {
            rows.push(Row::new(
                &format!("net-rx-softirqs-cpu{cpu}"),
                name,
                *count as f64,
                "softirqs",
            ));
        }
    }

    let target = system.target(VIP_TCP_PORT);
    let s0 = rig.sample(processes);
    let conns = conn_rate::connection_rate(
        &topo.client,
        target,
        Duration::from_secs(settings.seconds()),
        CONCURRENCY,
    )?;
    let spent = Spent::between(&s0, &rig.sample(processes));
    eprintln!(
        "bench: connections to {target}: {} done, {} failed in {:?}; balancer CPU {:.3} s, \
         {:.1} % of CPU {BALANCER_CPU}'s busy time",
        conns.done,
        conns.failed,
        conns.elapsed,
        spent.balancer_ns as f64 / 1e9,
        spent.balancer_share(),
    );
    rows.push(Row::new(
        "connection-rate",
        name,
        conns.done as f64 / conns.elapsed.as_secs_f64(),
        "connections/s",
    ));
    rows.push(Row::new(
        "cpu-per-connection",
        name,
        spent.balancer_ns as f64 / conns.done.max(1) as f64 / 1000.0,
        "us/connection",
    ));
    let gbps = throughput(&topo.client, system.target(IPERF_PORT), settings.seconds())?;
    rows.push(Row::new("throughput", name, gbps, "Gbit/s"));
    let (p50, p99) = latency(
        &topo.client,
        system.target(VIP_TCP_PORT),
        settings.seconds().max(2),
    )?;
    rows.push(Row::new("latency-p50", name, p50, "us"));
    rows.push(Row::new("latency-p99", name, p99, "us"));

    // Last: it leaves lb's flow table full (about 1M UDP flows in 1M entries), which the TCP
    // workloads above would otherwise run against.
    if system != System::HaproxyTcp {
        let target = system.target(DISCARD_PORT);
        let many = packet_rate(topo, rig, packets, processes, target, true, settings)?;
        rows.push(Row::new(
            "cpu-per-packet-1m-flows",
            name,
            many.ns_per_packet,
            "ns/packet",
        ));
        rows.push(Row::new(
            "packet-rate-1m-flows",
            name,
            many.rate,
            "packets/s",
        ));
    }
    Ok(rows)
}

/// What a system left running, to undo after its measurements.
struct Running {
    lb_pids: Vec<u32>,
    undo: Vec<Vec<String>>,
    files: Vec<std::path::PathBuf>,
}

impl Running {
    fn stop(self, topo: &Topology) {
        for pid in self.lb_pids {
            topo.lb.stop(pid);
        }
        for cmd in self.undo {
            let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
            let _ = topo.lb.exec(&args);
        }
        for file in self.files {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// lb's config, NAT or (`dsr`) DSR: web (TCP 80), discard (UDP 9) and iperf
/// (TCP 5201) frontends on the VIP.
fn lb_config(dsr: bool) -> String {
    let servers: Vec<Ipv4Addr> = (0..3).map(server_addr).collect();
    let list = |addrs: Vec<(Ipv4Addr, u32)>| -> String {
        let list: Vec<String> = addrs
            .iter()
            .map(|(a, w)| format!(r#"{{ address = "{a}", weight = {w} }}"#))
            .collect();
        format!(
            "servers = {{ type = \"addresses\", addresses = [{}] }}",
            list.join(", ")
        )
    };
    let weighted = servers
        .iter()
        .enumerate()
        .map(|(i, s)| (*s, if i == 2 { 2 } else { 1 }))
        .collect();
    let udp = (0..3)
        .flat_map(|i| (0..UDP_ADDRS_PER_SERVER).map(move |n| (udp_server_addr(i, n), 1)))
        .collect();
    let forwarding = if dsr {
        "forwarding = \"dsr\"".to_string()
    } else {
        "snat_address = \"198.18.2.1\"".to_string()
    };
    let frontend = |name: &str, port: u16, proto: &str| {
        format!(
            "[[frontends]]\nname = \"{name}\"\nmode = \"tcp\"\naddress = \"{VIP}\"\n\
             binds = [{{ port = {port}, protocol = \"{proto}\" }}]\ndefault_backend = \"{name}\"\n\
             interfaces = [\"eth-c\", \"s1\", \"s2\", \"s3\"]\n{forwarding}\n\n"
        )
    };
    let backend = |name: &str, port: u16, servers: String| {
        format!(
            "[[backends]]\nname = \"{name}\"\nmode = \"tcp\"\nbalancing_method = \"maglev\"\n\
             port = {port}\n{servers}\n\n"
        )
    };
    // DSR cannot translate ports: its servers answer on the VIP's.
    let web_port = if dsr { VIP_TCP_PORT } else { SERVER_PORT };
    [
        frontend("web", VIP_TCP_PORT, "tcp"),
        frontend("discard", DISCARD_PORT, "udp"),
        frontend("iperf", IPERF_PORT, "tcp"),
        backend("web", web_port, list(weighted)),
        backend("discard", DISCARD_PORT, list(udp)),
        backend("iperf", IPERF_PORT, list(vec![(servers[0], 1)])),
    ]
    .concat()
}

fn start_system(system: System, topo: &Topology, settings: &Settings) -> Result<Running> {
    let lb = &topo.lb;
    let mut running = Running {
        lb_pids: Vec::new(),
        undo: Vec::new(),
        files: Vec::new(),
    };
    let servers: Vec<Ipv4Addr> = (0..3).map(server_addr).collect();
    match system {
        System::Direct => {}
        System::Nftables => {
            let map = |port: u16| {
                let entries: Vec<String> = servers
                    .iter()
                    .enumerate()
                    .map(|(i, s)| format!("{i} : {s} . {port}"))
                    .collect();
                format!("numgen inc mod 3 map {{ {} }}", entries.join(", "))
            };
            let ruleset = format!(
                "table ip lbbench {{\n chain pre {{\n  type nat hook prerouting priority dstnat;\n  \
                 ip daddr {VIP} tcp dport {VIP_TCP_PORT} dnat ip to {};\n  \
                 ip daddr {VIP} udp dport {DISCARD_PORT} dnat ip to {};\n  \
                 ip daddr {VIP} tcp dport {IPERF_PORT} dnat ip to {}:{IPERF_PORT};\n }}\n}}\n",
                map(SERVER_PORT),
                map(DISCARD_PORT),
                servers[0]
            );
            let file = std::env::temp_dir().join(format!("lbbench-{}.nft", std::process::id()));
            std::fs::write(&file, ruleset)?;
            let loaded = lb.exec(&["nft", "-f", file.to_str().unwrap()]);
            let _ = std::fs::remove_file(&file);
            loaded?;
            running.undo.push(vec![
                "nft".into(),
                "delete".into(),
                "table".into(),
                "ip".into(),
                "lbbench".into(),
            ]);
        }
        System::HaproxyTcp => {
            lb.exec(&["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
            running.undo.push(
                ["ip", "addr", "del", &format!("{VIP}/32"), "dev", "lo"]
                    .map(String::from)
                    .to_vec(),
            );
            let server_lines: Vec<String> = servers
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    format!(
                        "    server s{i} {s}:{SERVER_PORT} weight {}",
                        if i == 2 { 2 } else { 1 }
                    )
                })
                .collect();
            let cfg = format!(
                "global\n    maxconn 8000\n    nbthread 1\n\
                 defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\
                 frontend web\n    bind {VIP}:{VIP_TCP_PORT}\n    default_backend servers\n\
                 backend servers\n    balance roundrobin\n{}\n\
                 frontend iperf\n    bind {VIP}:{IPERF_PORT}\n    default_backend iperf\n\
                 backend iperf\n    server s0 {}:{IPERF_PORT}\n",
                server_lines.join("\n"),
                servers[0]
            );
            let file =
                std::env::temp_dir().join(format!("lbbench-{}.haproxy.cfg", std::process::id()));
            std::fs::write(&file, cfg)?;
            let pid = lb.spawn(
                &["haproxy", "-db", "-f", file.to_str().unwrap()],
                Stdio::null(),
                Stdio::inherit(),
            )?;
            running.files.push(file);
            running.lb_pids.push(pid);
        }
        System::LbNat | System::LbDsr => {
            let file = std::env::temp_dir().join(format!("lbbench-{}.toml", std::process::id()));
            std::fs::write(&file, lb_config(system == System::LbDsr))?;
            // Kept while lb runs: it watches its config file.
            running.files.push(file.clone());
            running
                .lb_pids
                .push(topo.start_lb(&settings.lb_bin, &file)?);
        }
    }
    Ok(running)
}

fn wait_until_serving(client: &NetNs, target: SocketAddr) -> Result<()> {
    client
        .run(move || {
            wait_until(
                &format!("{target} to answer a TCP exchange"),
                Duration::from_secs(15),
                || tcp_session(target, 1).map(|_| Some(())),
            )
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("probe thread panicked"))?
}

fn throughput(client: &NetNs, target: SocketAddr, seconds: u64) -> Result<f64> {
    let json = client.exec(&[
        "iperf3",
        "-c",
        &target.ip().to_string(),
        "-p",
        &target.port().to_string(),
        "-t",
        &seconds.to_string(),
        "-J",
    ])?;
    let v: serde_json::Value = serde_json::from_str(&json).context("iperf3 JSON")?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 reported no received rate")?;
    Ok(bps / 1e9)
}

/// Round-trip times of requests sent at a fixed 2000/s (two connections at 1000/s each),
/// well below saturation; p50 and p99 in microseconds.
fn latency(client: &NetNs, target: SocketAddr, seconds: u64) -> Result<(f64, f64)> {
    use std::io::{BufRead as _, BufReader, Write as _};
    let mut threads = Vec::new();
    for _ in 0..2 {
        threads.push(client.run(move || -> Result<Vec<u64>> {
            let conn = TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
            conn.set_nodelay(true)?;
            conn.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut writer = conn.try_clone()?;
            let mut reader = BufReader::new(conn);
            let interval = Duration::from_millis(1);
            let start = Instant::now();
            let mut next = start;
            let mut samples = Vec::new();
            let mut line = String::new();
            while start.elapsed() < Duration::from_secs(seconds) {
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    // Kept: pacing to the fixed request rate, not a wait for anything.
                    std::thread::sleep(wait);
                }
                next += interval;
                let sent = Instant::now();
                writer.write_all(b"ping\n")?;
                line.clear();
                reader.read_line(&mut line)?;
                samples.push(sent.elapsed().as_nanos() as u64);
            }
            Ok(samples)
        })?);
    }
    let mut all = Vec::new();
    for t in threads {
        all.extend(
            t.join()
                .map_err(|_| anyhow::anyhow!("latency thread panicked"))??,
        );
    }
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    Ok((pct(0.50), pct(0.99)))
}
