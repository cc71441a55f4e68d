//! Whole systems side by side on one topology, one after another: the kernel's own
//! forwarding (`direct`), nftables DNAT, HAProxy in TCP mode, and lb's XDP NAT path, each
//! measured for packet rate, connection rate, throughput and latency.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lb_tests::{
    netns::NetNs,
    packets::{Frame, L4},
    topology::{CLIENT_ADDR, SERVER_PORT, Topology, VIP, server_addr, start_and_wait_ready},
    traffic::tcp_session,
    wait_until,
};

use crate::Row;

const DISCARD_PORT: u16 = 9;
const IPERF_PORT: u16 = 5201;
const VIP_TCP_PORT: u16 = 80;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Direct,
    Nftables,
    HaproxyTcp,
    LbNat,
}

impl System {
    pub const ALL: [System; 4] = [
        System::Direct,
        System::Nftables,
        System::HaproxyTcp,
        System::LbNat,
    ];

    pub fn name(self) -> &'static str {
        match self {
            System::Direct => "direct",
            System::Nftables => "nftables",
            System::HaproxyTcp => "haproxy-tcp",
            System::LbNat => "lb-nat",
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
        if self.quick { 2 } else { 10 }
    }
}

pub fn run(settings: &Settings) -> Result<Vec<Row>> {
    let topo = Topology::new(&format!("lbb{}", std::process::id()), 3)?;
    for ns in std::iter::once(&topo.client).chain(&topo.servers) {
        start_and_wait_ready(ns, &settings.lb_bin, &["peer", "eth0"])?;
    }
    // Many short connections: reuse TIME_WAIT ports, and use a wide port range.
    topo.client
        .exec(&["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"])?;
    topo.client
        .exec(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=10000 65000"])?;
    let _name_servers = topo.start_name_servers(SERVER_PORT)?;
    let _sinks = start_discard_sinks(&topo.servers)?;
    topo.servers[0].spawn(
        &["iperf3", "-s", "-p", &IPERF_PORT.to_string()],
        Stdio::null(),
        Stdio::null(),
    )?;

    let mut rows = Vec::new();
    for system in System::ALL {
        eprintln!("bench: {}", system.name());
        let running = start_system(system, &topo, settings)?;
        wait_until_serving(&topo.client, system.target(VIP_TCP_PORT))?;
        let result = measure(system, &topo, settings);
        running.stop(&topo);
        rows.extend(result.with_context(|| format!("measuring {}", system.name()))?);
    }
    Ok(rows)
}

fn measure(system: System, topo: &Topology, settings: &Settings) -> Result<Vec<Row>> {
    let name = system.name();
    let mut rows = Vec::new();
    if system == System::HaproxyTcp {
        eprintln!("bench: haproxy has no UDP mode; no packet-rate row for it");
    } else {
        let pps = packet_rate(topo, system.target(DISCARD_PORT), settings)?;
        rows.push(Row::new("packet-rate", name, pps, "packets/s"));
    }
    let cps = connection_rate(
        &topo.client,
        system.target(VIP_TCP_PORT),
        settings.seconds(),
    )?;
    rows.push(Row::new("connection-rate", name, cps, "connections/s"));
    let gbps = throughput(&topo.client, system.target(IPERF_PORT), settings.seconds())?;
    rows.push(Row::new("throughput", name, gbps, "Gbit/s"));
    let (p50, p99) = latency(
        &topo.client,
        system.target(VIP_TCP_PORT),
        settings.seconds(),
    )?;
    rows.push(Row::new("latency-p50", name, p50, "us"));
    rows.push(Row::new("latency-p99", name, p99, "us"));
    Ok(rows)
}

/// What a system left running, to undo after its measurements.
struct Running {
    lb_pids: Vec<u32>,
    undo: Vec<Vec<String>>,
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
    }
}

fn start_system(system: System, topo: &Topology, settings: &Settings) -> Result<Running> {
    let lb = &topo.lb;
    let mut running = Running {
        lb_pids: Vec::new(),
        undo: Vec::new(),
    };
    if system != System::LbNat {
        // Packet-rate frames arrive as XDP frames; a veth delivers them only if it runs an
        // XDP program, so the kernel-only systems get the pass-only one.
        running.lb_pids.push(start_and_wait_ready(
            lb,
            &settings.lb_bin,
            &["peer", "eth-c"],
        )?);
    }
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
                "global\n    maxconn 8000\n    nbthread 2\n\
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
            running.lb_pids.push(pid);
        }
        System::LbNat => {
            let servers_toml = |port: u16, n: usize| {
                let list: Vec<String> = servers[..n]
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        format!(
                            r#"{{ address = "{s}", weight = {} }}"#,
                            if i == 2 { 2 } else { 1 }
                        )
                    })
                    .collect();
                format!(
                    "port = {port}\nservers = {{ type = \"addresses\", addresses = [{}] }}",
                    list.join(", ")
                )
            };
            let frontend = |name: &str, port: u16, proto: &str, backend: &str| {
                format!(
                    "[[frontends]]\nname = \"{name}\"\nmode = \"tcp\"\naddress = \"{VIP}\"\n\
                     binds = [{{ port = {port}, protocol = \"{proto}\" }}]\ndefault_backend = \"{backend}\"\n\
                     interfaces = [\"eth-c\", \"s1\", \"s2\", \"s3\"]\nsnat_address = \"198.18.2.1\"\n\n"
                )
            };
            let backend = |name: &str, body: String| {
                format!(
                    "[[backends]]\nname = \"{name}\"\nmode = \"tcp\"\nbalancing_method = \"maglev\"\n{body}\n\n"
                )
            };
            let config = [
                frontend("web", VIP_TCP_PORT, "tcp", "web"),
                frontend("discard", DISCARD_PORT, "udp", "discard"),
                frontend("iperf", IPERF_PORT, "tcp", "iperf"),
                backend("web", servers_toml(SERVER_PORT, 3)),
                backend("discard", servers_toml(DISCARD_PORT, 3)),
                backend("iperf", servers_toml(IPERF_PORT, 1)),
            ]
            .concat();
            let file = std::env::temp_dir().join(format!("lbbench-{}.toml", std::process::id()));
            std::fs::write(&file, config)?;
            let pid = topo.start_lb(&settings.lb_bin, &file);
            let _ = std::fs::remove_file(&file);
            running.lb_pids.push(pid?);
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

/// In each server, a UDP socket on the discard port that is never read: packets are
/// received (and counted on the interface) without a reply or an ICMP error. The sockets
/// stay bound until the returned vector is dropped.
fn start_discard_sinks(servers: &[NetNs]) -> Result<Vec<UdpSocket>> {
    let mut sinks = Vec::new();
    for ns in servers {
        let sock = ns
            .run(|| UdpSocket::bind(("0.0.0.0", DISCARD_PORT)))?
            .join()
            .map_err(|_| anyhow::anyhow!("discard sink thread panicked"))?
            .with_context(|| format!("discard sink in {}", ns.name))?;
        sinks.push(sock);
    }
    Ok(sinks)
}

fn rx_packets(ns: &NetNs) -> Result<u64> {
    Ok(ns
        .exec(&["cat", "/sys/class/net/eth0/statistics/rx_packets"])?
        .trim()
        .parse()?)
}

/// Small UDP packets from the client, sent as raw frames (AF_PACKET with qdisc bypass,
/// `sendmmsg` in batches of 64) from one thread for a fixed time; the rate is what the
/// servers' interfaces receive per second of sending.
///
/// XDP live frames (BPF_PROG_TEST_RUN) generate faster, but on this kernel frames they
/// transmit into a veth are dropped by the receiving stack after XDP_PASS, so every
/// kernel-forwarded system would measure near zero.
fn packet_rate(topo: &Topology, target: SocketAddr, settings: &Settings) -> Result<f64> {
    let seconds = if settings.quick { 1 } else { 5 };
    let mac = |ns: &NetNs, ifname: &str| -> Result<[u8; 6]> {
        let text = ns.exec(&["cat", &format!("/sys/class/net/{ifname}/address")])?;
        let bytes: Vec<u8> = text
            .trim()
            .split(':')
            .map(|h| u8::from_str_radix(h, 16))
            .collect::<Result<_, _>>()?;
        bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("bad MAC {text}"))
    };
    let frame = Frame {
        dst_mac: mac(&topo.lb, "eth-c")?,
        src_mac: mac(&topo.client, "eth0")?,
        vlan: None,
        src: IpAddr::V4(CLIENT_ADDR),
        dst: target.ip(),
        sport: 40000,
        dport: target.port(),
        l4: L4::Udp,
    }
    .build(&[0u8; 18]); // 60-byte frame: the Ethernet minimum
    let before: u64 = topo.servers.iter().map(rx_packets).sum::<Result<u64>>()?;
    let (elapsed, sent) = topo
        .client
        .run(move || raw_flood(&frame, "eth0", Duration::from_secs(seconds)))?
        .join()
        .map_err(|_| anyhow::anyhow!("generator thread panicked"))??;
    // Frames still in flight when the generator stops are counted once the servers'
    // counters have stopped growing (the same sum for at least 50 ms).
    let mut last = (before, Instant::now());
    let after = wait_until(
        "the servers' rx_packets to stop growing",
        Duration::from_secs(5),
        || {
            let now: u64 = topo.servers.iter().map(rx_packets).sum::<Result<u64>>()?;
            if now != last.0 {
                last = (now, Instant::now());
            }
            Ok((last.1.elapsed() >= Duration::from_millis(50)).then_some(now))
        },
    )?;
    let received = after - before;
    eprintln!(
        "bench: packet rate to {target}: sent {sent}, servers received {received} in {elapsed:?}"
    );
    Ok(received as f64 / elapsed.as_secs_f64())
}

/// Send `frame` out of `ifname` as fast as one thread can for `duration`.
fn raw_flood(frame: &[u8], ifname: &str, duration: Duration) -> Result<(Duration, u64)> {
    const BATCH: usize = 64;
    let ifindex = nix::net::if_::if_nametoindex(ifname)?;
    // SAFETY: plain socket syscalls on a descriptor this function owns and closes.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        );
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        let mut iov = libc::iovec {
            iov_base: frame.as_ptr() as *mut libc::c_void,
            iov_len: frame.len(),
        };
        let mut msgs: Vec<libc::mmsghdr> = (0..BATCH)
            .map(|_| {
                let mut m: libc::mmsghdr = std::mem::zeroed();
                m.msg_hdr.msg_name = (&mut addr as *mut libc::sockaddr_ll).cast();
                m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                m.msg_hdr.msg_iov = &mut iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < duration {
            let n = libc::sendmmsg(fd, msgs.as_mut_ptr(), BATCH as u32, 0);
            if n > 0 {
                sent += n as u64;
            }
        }
        let elapsed = start.elapsed();
        libc::close(fd);
        Ok((elapsed, sent))
    }
}

/// Short TCP connections, one request and one response each, from 4 client threads.
fn connection_rate(client: &NetNs, target: SocketAddr, seconds: u64) -> Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut threads = Vec::new();
    for _ in 0..4 {
        let (done, failed) = (done.clone(), failed.clone());
        threads.push(client.run(move || {
            while Instant::now() < deadline {
                match tcp_session(target, 1) {
                    Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })?);
    }
    for t in threads {
        let _ = t.join();
    }
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        eprintln!("bench: {failed} connections to {target} failed");
    }
    Ok(done.load(Ordering::Relaxed) as f64 / seconds as f64)
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
