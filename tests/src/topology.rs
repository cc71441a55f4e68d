//! The demo topology, shared by `cargo xtask run`, the netns tests and the benchmarks:
//!
//! ```text
//! client 198.18.0.2 --eth0|eth-c-- lb 198.18.0.1 --s1|eth0-- server1 198.18.11.2
//!                          (snat 198.18.2.1, unassigned) --s2|eth0-- server2 198.18.12.2
//!                                                    --s3|eth0-- server3 198.18.13.2
//! ```
//! The client reaches the VIP 198.18.100.1 through lb; every server routes back through lb.

use std::{
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::netns::NetNs;

pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x100, 0, 0, 0, 1);
pub const SNAT6_ADDR: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 1);
pub const CLIENT6_ADDR: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);
pub const VIP_TCP_PORT: u16 = 80;
pub const VIP_UDP_PORT: u16 = 53;
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const SNAT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
pub const SERVER_PORT: u16 = 8080;

pub fn server_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 11 + i as u8, 2)
}

pub fn server6_addr(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 2, 0, 0x11 + i as u16, 0, 0, 0, 2)
}

/// A tcp frontend `name` on VIP:`port`, full NAT through SNAT_ADDR, XDP on the client link
/// and the links of `servers` servers, with backend `name`: the start of most netns configs.
pub fn nat_frontend_toml(name: &str, port: u16, servers: usize) -> String {
    let links: Vec<String> = std::iter::once("\"eth-c\"".to_string())
        .chain((1..=servers).map(|i| format!("\"s{i}\"")))
        .collect();
    format!(
        r#"
[[frontends]]
name = "{name}"
mode = "tcp"
address = "{VIP}"
binds = [{{ port = {port} }}]
default_backend = "{name}"
interfaces = [{}]
snat_address = "{SNAT_ADDR}"
"#,
        links.join(", ")
    )
}

pub fn server_name(i: usize) -> String {
    format!("server{}", i + 1)
}

pub struct Topology {
    pub client: NetNs,
    pub lb: NetNs,
    pub servers: Vec<NetNs>,
}

impl Topology {
    /// Build the namespaces, links, addresses and routes. `prefix` keeps concurrent
    /// topologies apart.
    pub fn new(prefix: &str, server_count: usize) -> Result<Topology> {
        let client = NetNs::new(&format!("{prefix}-client"))?;
        let lb = NetNs::new(&format!("{prefix}-lb"))?;
        let mut servers = Vec::new();
        for i in 0..server_count {
            servers.push(NetNs::new(&format!("{prefix}-s{}", i + 1))?);
        }
        let topo = Topology {
            client,
            lb,
            servers,
        };
        topo.wire().context("building the demo topology")?;
        Ok(topo)
    }

    fn wire(&self) -> Result<()> {
        let lb = &self.lb;
        let run = |ns: &NetNs, cmd: &str| -> Result<()> {
            ns.exec(&cmd.split_whitespace().collect::<Vec<_>>())
                .map(|_| ())
        };
        veth(&self.client, "eth0", lb, "eth-c")?;
        run(&self.client, "ip addr add 198.18.0.2/24 dev eth0")?;
        run(&self.client, "ip addr add 2001:2::2/64 dev eth0 nodad")?;
        run(lb, "ip addr add 198.18.0.1/24 dev eth-c")?;
        run(lb, "ip addr add 2001:2::1/64 dev eth-c nodad")?;
        run(&self.client, "ip route add default via 198.18.0.1")?;
        run(&self.client, "ip -6 route add default via 2001:2::1")?;
        for (i, server) in self.servers.iter().enumerate() {
            let lb_if = format!("s{}", i + 1);
            veth(server, "eth0", lb, &lb_if)?;
            let (net, net6) = (11 + i, format!("2001:2:0:{:x}", 0x11 + i));
            run(server, &format!("ip addr add 198.18.{net}.2/24 dev eth0"))?;
            run(server, &format!("ip addr add {net6}::2/64 dev eth0 nodad"))?;
            run(lb, &format!("ip addr add 198.18.{net}.1/24 dev {lb_if}"))?;
            run(lb, &format!("ip addr add {net6}::1/64 dev {lb_if} nodad"))?;
            run(server, &format!("ip route add default via 198.18.{net}.1"))?;
            run(server, &format!("ip -6 route add default via {net6}::1"))?;
        }
        // The SNAT addresses are deliberately not assigned on lb: servers route them back
        // through lb, where XDP translates replies; and the kernel must be able to forward a
        // first rewritten packet (and resolve the server's MAC) when XDP finds no neighbour
        // entry, which it refuses for a packet whose source is one of its own addresses.
        run(lb, "sysctl -qw net.ipv4.ip_forward=1")?;
        run(lb, "sysctl -qw net.ipv6.conf.all.forwarding=1")?;
        Ok(())
    }

    /// Attach the pass-only XDP program to the client's and servers' veth ends: frames lb
    /// redirects into a veth are dropped unless its peer runs an XDP program.
    /// A topology for the userspace proxy: peers started, and the VIP an address of the lb
    /// host (the proxy serves it from the host's own stack).
    pub fn for_proxy(prefix: &str, server_count: usize, lb_bin: &Path) -> Result<Topology> {
        let topo = Topology::new(prefix, server_count)?;
        topo.start_peers(lb_bin)?;
        topo.lb
            .exec(&["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
        Ok(topo)
    }

    pub fn start_peers(&self, lb_bin: &Path) -> Result<()> {
        for ns in std::iter::once(&self.client).chain(&self.servers) {
            start_and_wait_ready(ns, lb_bin, &["peer", "eth0"])?;
        }
        Ok(())
    }

    /// Start a name server (see [`crate::traffic::start_name_servers`]) on `port` in every
    /// server namespace, answering `server1`, `server2`, ...
    pub fn start_name_servers(&self, port: u16) -> Result<crate::traffic::NameServers> {
        let named: Vec<_> = self
            .servers
            .iter()
            .enumerate()
            .map(|(i, ns)| (ns, server_name(i)))
            .collect();
        crate::traffic::start_name_servers(&named, port)
    }

    /// Run `lb run --config` in the lb namespace and wait until it reports ready. Returns
    /// its pid, for [`NetNs::stop`].
    pub fn start_lb(&self, lb_bin: &Path, config: &Path) -> Result<u32> {
        let config = config.to_str().context("config path is not UTF-8")?;
        start_and_wait_ready(&self.lb, lb_bin, &["run", "--config", config])
    }
}

/// A veth pair with one end in each namespace, both up, with checksum offload off: an XDP
/// frame carries no "checksum pending" state, so partially-checksummed packets from the
/// local stack would arrive with bad checksums after XDP_TX/REDIRECT.
pub fn veth(a: &NetNs, a_if: &str, b: &NetNs, b_if: &str) -> Result<()> {
    crate::netns::sh(&[
        "ip", "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ])?;
    for (ns, ifname) in [(a, a_if), (b, b_if)] {
        ns.exec(&["ethtool", "-K", ifname, "tx", "off"])?;
        ns.exec(&["ip", "link", "set", ifname, "up"])?;
    }
    Ok(())
}

/// Start `lb <args>` in `ns` and wait for its "ready" log line; its output keeps draining to
/// our stderr so a failure shows the daemon's own words. Returns the pid.
pub fn start_and_wait_ready(ns: &NetNs, lb_bin: &Path, args: &[&str]) -> Result<u32> {
    start_logged(ns, lb_bin, args).map(|(pid, _)| pid)
}

/// Every log line a daemon has written so far.
pub type Log = Arc<Mutex<Vec<String>>>;

/// As [`start_and_wait_ready`], also keeping every log line for the caller.
pub fn start_logged(ns: &NetNs, lb_bin: &Path, args: &[&str]) -> Result<(u32, Log)> {
    start_logged_via(ns, &["ip", "netns", "exec", &ns.name], lb_bin, args)
}

/// As [`start_logged`], entering `ns` with `launcher` (such as `nsenter --net=...`, which
/// keeps the caller's mount namespace, where `ip netns exec` makes one of its own).
pub fn start_logged_via(
    ns: &NetNs,
    launcher: &[&str],
    lb_bin: &Path,
    args: &[&str],
) -> Result<(u32, Log)> {
    let mut child = Command::new(launcher[0])
        .args(&launcher[1..])
        .arg(lb_bin)
        .args(args)
        .env("NO_COLOR", "1")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {} {args:?}", lb_bin.display()))?;
    let stderr = child.stderr.take().expect("piped stderr");
    let pid = ns.adopt(child);
    let (tx, rx) = mpsc::channel();
    let command = args.iter().find(|a| !a.starts_with('-')).unwrap_or(&"");
    let label = format!("{}: lb {command}", ns.name);
    let log: Log = Arc::default();
    let keep = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // Text and JSON log formats.
            if line.contains(" ready") || line.contains("\"message\":\"ready\"") {
                let _ = tx.send(());
            }
            let info = line.contains(" INFO ") || line.contains("\"level\":\"INFO\"");
            if std::env::var_os("LB_TEST_VERBOSE").is_some() || !info {
                eprintln!("[{label}] {line}");
            }
            keep.lock().unwrap().push(line);
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(()) => Ok((pid, log)),
        Err(_) => bail!(
            "lb {args:?} in {} did not become ready within 30 s",
            ns.name
        ),
    }
}

/// Wait until `log` has at least `count` lines containing `needle` (at most `timeout`).
pub fn wait_for_log(log: &Log, needle: &str, count: usize, timeout: Duration) -> Result<()> {
    let what = format!("{count} log lines containing {needle:?}");
    crate::wait_until(&what, timeout, || {
        let seen = log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count();
        if seen >= count {
            Ok(Some(()))
        } else {
            bail!("saw {seen}")
        }
    })
}

/// The `lb` binary: `$LB_BIN`, or `target/<profile>/lb` next to the running executable
/// (test binaries live in `target/<profile>/deps`).
pub fn lb_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("LB_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("lb");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "cannot find the lb binary near {}; build it (cargo build -p lb-userspace) or set LB_BIN",
        exe.display()
    )
}
