//! A master/backup pair of lb nodes in network namespaces, with keepalived moving the
//! floating addresses between them (README "High availability"):
//!
//! ```text
//!                  client 198.18.0.2 on br0 (in the client namespace)
//!                      |ca                          |cb          VIP 198.18.0.10/24
//!                 eth-c 198.18.0.3             eth-c 198.18.0.4    (floating, on the master)
//!   lb-a (master, 150)  eth-h 198.18.50.1 =brh= 198.18.50.2 eth-h  lb-b (backup, 100)
//!                 eth-s 198.18.10.2            eth-s 198.18.10.3   gateway 198.18.10.1/24
//!                      |sa                          |sb             (floating, on the master)
//!                  br0 in the switch namespace, with v1 v2 v3 (brh, the nodes' link, too)
//!                      |                |                |
//!               server1 .10.11   server2 .10.12   server3 .10.13   default via 198.18.10.1
//! ```
//!
//! Both nodes run `lb run` (full NAT through 198.18.2.1, routed by the servers to the
//! floating gateway, so replies reach whichever node is master) and keepalived with the
//! config `lb ha keepalived-config` renders. VRRP (and the lead's flow sync) use the
//! eth-h link. Clients follow the VIP by ARP: keepalived sends gratuitous ARP for every
//! floating address when a node becomes master.
//!
//! Everything lives in namespaces named `<prefix>client`, `<prefix>lb-a`, `<prefix>lb-b`,
//! `<prefix>sw`, `<prefix>s1`...; all are removed on drop, with the processes started in
//! them, even when a test panics.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    netns::{NetNs, sh},
    services::ScratchDir,
    topology::{Log, start_logged, veth},
    traffic::{LongConn, NameServers},
};

/// The floating VIP clients connect to (on the master's eth-c).
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// The client, on the bridge both nodes' eth-c are on.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The servers' default gateway (floating, on the master's eth-s).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 10, 1);
/// Full NAT's source address; not assigned anywhere: servers route it to the gateway.
pub const SNAT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
pub const VIP_TCP_PORT: u16 = 80;
pub const VIP_UDP_PORT: u16 = 53;
pub const SERVER_PORT: u16 = 8080;
/// Where each node's flow sync listens (on its eth-h address).
pub const SYNC_PORT: u16 = 7946;
/// Each node's `[api] listen` and `[metrics] listen`, inside its own namespace.
pub const API_LISTEN: &str = "127.0.0.1:8081";
pub const METRICS_LISTEN: &str = "127.0.0.1:9100";
/// The read-write API token of both nodes.
pub const API_TOKEN: &str = "pair-rig-token-0123456789";
pub const VIRTUAL_ROUTER_ID: u8 = 51;
/// The interfaces of a node: client side, server side, and the link to its peer.
pub const CLIENT_IF: &str = "eth-c";
pub const SERVER_IF: &str = "eth-s";
pub const HA_IF: &str = "eth-h";

pub fn server_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 10, 11 + i as u8)
}

pub fn server_name(i: usize) -> String {
    format!("server{}", i + 1)
}

/// One of the two nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    /// Role "master" (priority 150): keepalived elects it when both are ready.
    A,
    /// Role "backup" (priority 100).
    B,
}

impl Node {
    pub const BOTH: [Node; 2] = [Node::A, Node::B];

    pub fn index(self) -> usize {
        match self {
            Node::A => 0,
            Node::B => 1,
        }
    }

    pub fn other(self) -> Node {
        match self {
            Node::A => Node::B,
            Node::B => Node::A,
        }
    }

    /// "lb-a" or "lb-b".
    pub fn name(self) -> &'static str {
        match self {
            Node::A => "lb-a",
            Node::B => "lb-b",
        }
    }

    /// The `[ha] role` it is configured with.
    pub fn role(self) -> &'static str {
        match self {
            Node::A => "master",
            Node::B => "backup",
        }
    }

    /// Its own address on the client bridge.
    pub fn client_side_addr(self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, 3 + self.index() as u8)
    }

    /// Its own address on the server bridge.
    pub fn server_side_addr(self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 10, 2 + self.index() as u8)
    }

    /// Its address on the eth-h link: keepalived's unicast source and the sync listener.
    pub fn ha_addr(self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 50, 1 + self.index() as u8)
    }
}

/// How the pair is built.
#[derive(Clone, Debug)]
pub struct PairOptions {
    pub servers: usize,
    /// VRRP's advert interval (a multiple of 10 ms).
    pub advert_int: Duration,
    /// Source-IP stickiness (`sticky_session = { type = "source_ip" }`) on the backend.
    pub sticky: bool,
    /// The rig plays the daemon's part of the track file: "0" written before keepalived
    /// starts and rewritten every second while the node's lb runs and is not paused; "1"
    /// when the rig stops the node's lb. Turn it off once the daemon writes the track file
    /// itself (then keepalived holds a node in FAULT until its lb says "0").
    pub rig_writes_track_file: bool,
    /// Mount a BPF filesystem under the scratch directory and pin each node's data plane
    /// there (so a restarted daemon takes over its flows); otherwise nothing is pinned.
    pub bpffs: bool,
    /// Keep a managed neighbour entry for the client on both nodes' eth-c (set up with
    /// the links, again by `links_up`). Without one a node cannot answer the client: when
    /// XDP finds no neighbour for a reply it hands the translated packet to the kernel,
    /// which drops it because its source, the VIP, is one of the master's own addresses;
    /// and a backup never talked to the client, and taking a link down flushes its
    /// neighbours. Turn it off to see that (a daemon-side fix would make this moot).
    pub client_neighbour: bool,
    /// Addresses the client has besides CLIENT_ADDR ([`extra_client`]), as other clients.
    pub extra_clients: usize,
    /// TOML added to both nodes' configs after the backend (start it with a table header;
    /// do not repeat `[api]`, `[metrics]`, `[dataplane]` or `[ha]`).
    pub extra_toml: String,
}

impl Default for PairOptions {
    fn default() -> Self {
        PairOptions {
            servers: 3,
            advert_int: Duration::from_millis(100),
            sticky: false,
            rig_writes_track_file: false,
            bpffs: false,
            client_neighbour: true,
            extra_clients: 0,
            extra_toml: String::new(),
        }
    }
}

/// One lb node: its namespace, files and processes.
pub struct PairNode {
    pub node: Node,
    pub ns: NetNs,
    /// Its lb config (written by the rig; rewrite it before `start_lb` to change it).
    pub config: PathBuf,
    /// keepalived's config, from `lb ha keepalived-config --config <config>`.
    pub keepalived_config: PathBuf,
    /// `[ha] notify_fifo` (created by the rig as a FIFO before keepalived starts).
    pub notify_fifo: PathBuf,
    /// `[ha] track_file`.
    pub track_file: PathBuf,
    /// keepalived's console output.
    pub keepalived_log: PathBuf,
    keepalived_pidfile: PathBuf,
    vrrp_pidfile: PathBuf,
    dir: PathBuf,
    lb: Mutex<Option<(u32, Log)>>,
    keepalived: Mutex<Option<u32>>,
    /// Paused processes, resumed before they are stopped.
    paused: Mutex<Vec<u32>>,
}

impl PairNode {
    /// The running lb's pid and log lines.
    pub fn lb(&self) -> Option<(u32, Log)> {
        self.lb.lock().unwrap().clone()
    }

    /// The pid of keepalived's VRRP child (from its `-r` pid file).
    pub fn vrrp_pid(&self) -> Result<u32> {
        let text = std::fs::read_to_string(&self.vrrp_pidfile)
            .with_context(|| format!("reading {}", self.vrrp_pidfile.display()))?;
        text.trim()
            .parse()
            .with_context(|| format!("{} holds {text:?}", self.vrrp_pidfile.display()))
    }

    /// Whether this node holds `addr` on `ifname` (`ip addr`), as keepalived's master does.
    pub fn holds(&self, addr: Ipv4Addr, ifname: &str) -> Result<bool> {
        let out = self
            .ns
            .exec(&["ip", "-4", "-o", "addr", "show", "dev", ifname])?;
        let needle = format!(" {addr}/");
        Ok(out.contains(&needle))
    }

    /// The scratch directory of this node.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The pair, its client, switch and servers. Dropping it stops every process and removes
/// every namespace.
pub struct Pair {
    pub options: PairOptions,
    /// Both nodes, indexed by [`Node::index`].
    pub nodes: [PairNode; 2],
    pub client: NetNs,
    /// The servers' bridge.
    pub switch: NetNs,
    pub servers: Vec<NetNs>,
    pub lb_bin: PathBuf,
    _name_servers: NameServers,
    /// Rig-written track files: which nodes' are refreshed.
    heartbeat_on: Arc<[AtomicBool; 2]>,
    heartbeat_stop: Arc<AtomicBool>,
    heartbeat: Option<JoinHandle<()>>,
    _bpffs: Option<Unmount>,
    pub scratch: ScratchDir,
}

/// Unmounts the rig's BPF filesystem when dropped (after the nodes' lb have stopped).
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = sh(&["umount", self.0.to_str().unwrap_or_default()]);
    }
}

impl Pair {
    /// Build the namespaces, links, bridges, peers (pass-only XDP on the bridge side of
    /// every lb veth), name servers on [`SERVER_PORT`], and both nodes' lb and keepalived
    /// configs. Nothing runs on the nodes yet: see [`Pair::start`].
    pub fn new(prefix: &str, lb_bin: &Path, options: PairOptions) -> Result<Pair> {
        let scratch = ScratchDir::new(&format!("{prefix}rig"))?;
        let bpffs = if options.bpffs {
            let dir = scratch.0.join("bpffs");
            std::fs::create_dir_all(&dir)?;
            sh(&["mount", "-t", "bpf", "bpf", dir.to_str().context("UTF-8")?])?;
            Some(Unmount(dir))
        } else {
            None
        };
        let make_node = |node: Node| -> Result<PairNode> {
            let dir = scratch.0.join(node.name());
            std::fs::create_dir_all(&dir)?;
            Ok(PairNode {
                node,
                ns: NetNs::new(&format!("{prefix}{}", node.name()))?,
                config: dir.join("lb.toml"),
                keepalived_config: dir.join("keepalived.conf"),
                notify_fifo: dir.join("keepalived.fifo"),
                track_file: dir.join("track"),
                keepalived_log: dir.join("keepalived.log"),
                keepalived_pidfile: dir.join("keepalived.pid"),
                vrrp_pidfile: dir.join("vrrp.pid"),
                dir,
                lb: Mutex::new(None),
                keepalived: Mutex::new(None),
                paused: Mutex::new(Vec::new()),
            })
        };
        let nodes = [make_node(Node::A)?, make_node(Node::B)?];
        let client = NetNs::new(&format!("{prefix}client"))?;
        let switch = NetNs::new(&format!("{prefix}sw"))?;
        let mut servers = Vec::new();
        for i in 0..options.servers {
            servers.push(NetNs::new(&format!("{prefix}s{}", i + 1))?);
        }
        wire(&nodes, &client, &switch, &servers, &options).context("building the pair topology")?;
        // Frames a node's XDP redirects into its veth are only delivered if the far end
        // runs an XDP program.
        let peer_of = |side: &str| -> Vec<String> {
            Node::BOTH
                .iter()
                .map(|n| format!("{side}{}", &n.name()[3..]))
                .collect()
        };
        for (ns, ifs) in [(&client, peer_of("c")), (&switch, peer_of("s"))] {
            let mut args = vec!["peer"];
            args.extend(ifs.iter().map(String::as_str));
            start_logged(ns, lb_bin, &args)?;
        }
        let named: Vec<_> = servers
            .iter()
            .enumerate()
            .map(|(i, ns)| (ns, server_name(i)))
            .collect();
        let name_servers = crate::traffic::start_name_servers(&named, SERVER_PORT)?;

        let secret = scratch.0.join("ha.secret");
        std::fs::write(&secret, "pair-rig-shared-secret-0123456789abcdef\n")?;
        let tokens = scratch.0.join("api.tokens");
        std::fs::write(&tokens, format!("rw {API_TOKEN}\n"))?;
        for n in &nodes {
            let pin = match &bpffs {
                Some(Unmount(dir)) => dir.join(n.node.name()),
                None => n.dir.join("pins"),
            };
            let toml = node_config(n, &options, &secret, &tokens, &pin);
            std::fs::write(&n.config, toml)?;
            let rendered = sh(&[
                lb_bin.to_str().context("UTF-8")?,
                "ha",
                "keepalived-config",
                "--config",
                n.config.to_str().context("UTF-8")?,
            ])
            .with_context(|| format!("lb ha keepalived-config for {}", n.node.name()))?;
            std::fs::write(&n.keepalived_config, rendered)?;
            // lb reads the FIFO; made here so keepalived never creates (and removes) it.
            nix::unistd::mkfifo(
                &n.notify_fifo,
                nix::sys::stat::Mode::from_bits_truncate(0o600),
            )
            .with_context(|| format!("mkfifo {}", n.notify_fifo.display()))?;
        }

        let heartbeat_on = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
        let heartbeat_stop = Arc::new(AtomicBool::new(false));
        let heartbeat = if options.rig_writes_track_file {
            let tracks: Vec<PathBuf> = nodes.iter().map(|n| n.track_file.clone()).collect();
            let (on, stop) = (heartbeat_on.clone(), heartbeat_stop.clone());
            Some(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for (i, track) in tracks.iter().enumerate() {
                        if on[i].load(Ordering::Relaxed) {
                            let _ = write_track(track, true);
                        }
                    }
                    // Kept: the daemon's once-a-second rewrite is what this imitates.
                    for _ in 0..10 {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }))
        } else {
            None
        };
        Ok(Pair {
            options,
            nodes,
            client,
            switch,
            servers,
            lb_bin: lb_bin.to_path_buf(),
            _name_servers: name_servers,
            heartbeat_on,
            heartbeat_stop,
            heartbeat,
            _bpffs: bpffs,
            scratch,
        })
    }

    /// [`Pair::new`], then lb on both nodes (each ready), then keepalived on both. Wait for
    /// the election with [`Pair::wait_master`].
    pub fn start(prefix: &str, lb_bin: &Path, options: PairOptions) -> Result<Pair> {
        let pair = Pair::new(prefix, lb_bin, options)?;
        for n in Node::BOTH {
            pair.start_lb(n)?;
        }
        for n in Node::BOTH {
            pair.start_keepalived(n)?;
        }
        Ok(pair)
    }

    pub fn node(&self, n: Node) -> &PairNode {
        &self.nodes[n.index()]
    }

    /// TCP on the VIP.
    pub fn vip_tcp(&self) -> SocketAddr {
        (VIP, VIP_TCP_PORT).into()
    }

    /// UDP on the VIP.
    pub fn vip_udp(&self) -> SocketAddr {
        (VIP, VIP_UDP_PORT).into()
    }

    /// How long a failover may take: a backup declares the master down after about 3
    /// advert intervals; the second is for gratuitous ARP, scheduling and the first SYN.
    pub fn failover_bound(&self) -> Duration {
        3 * self.options.advert_int + Duration::from_secs(1)
    }

    /// Start `lb run` on `n` and wait until it is ready. With `rig_writes_track_file`, the
    /// rig then says "0" for it every second.
    pub fn start_lb(&self, n: Node) -> Result<u32> {
        let node = self.node(n);
        let config = node.config.to_str().context("UTF-8")?;
        let (pid, log) = start_logged(&node.ns, &self.lb_bin, &["run", "--config", config])?;
        *node.lb.lock().unwrap() = Some((pid, log));
        if self.options.rig_writes_track_file {
            write_track(&node.track_file, true)?;
            self.heartbeat_on[n.index()].store(true, Ordering::Relaxed);
        }
        Ok(pid)
    }

    /// Stop `n`'s lb (SIGTERM, SIGKILL after 5 s). With `rig_writes_track_file`, its track
    /// file says "1" from then on, as the daemon's would at exit.
    pub fn stop_lb(&self, n: Node) -> Result<()> {
        let node = self.node(n);
        if self.options.rig_writes_track_file {
            self.heartbeat_on[n.index()].store(false, Ordering::Relaxed);
            write_track(&node.track_file, false)?;
        }
        if let Some((pid, _)) = node.lb.lock().unwrap().take() {
            resume(node, pid);
            node.ns.stop(pid);
        }
        Ok(())
    }

    /// SIGKILL `n`'s lb: a crash (no exit path runs; with `bpffs` its pinned data plane
    /// keeps forwarding, and keepalived learns of it from the stale heartbeat).
    pub fn kill_lb(&self, n: Node) -> Result<()> {
        let node = self.node(n);
        let (pid, _) = node
            .lb
            .lock()
            .unwrap()
            .take()
            .context("lb is not running")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        node.ns.stop(pid);
        Ok(())
    }

    /// A number field anywhere in `n`'s `lb status` JSON, such as "conntrack_entries".
    pub fn status_number(&self, n: Node, field: &str) -> u64 {
        let status = self.api(n, "/v1/lbs/1/status").unwrap_or_default();
        status
            .split(&format!("\"{field}\":"))
            .nth(1)
            .and_then(|r| r.split([',', '}']).next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// SIGSTOP `n`'s lb: a hung daemon. With `rig_writes_track_file`, its track file is no
    /// longer refreshed either, so keepalived's heartbeat fails as it would.
    pub fn pause_lb(&self, n: Node) -> Result<()> {
        let node = self.node(n);
        let (pid, _) = node.lb().context("lb is not running")?;
        self.heartbeat_on[n.index()].store(false, Ordering::Relaxed);
        pause(node, pid)
    }

    /// SIGCONT `n`'s lb (and the rig's refreshing of its track file).
    pub fn resume_lb(&self, n: Node) -> Result<()> {
        let node = self.node(n);
        let (pid, _) = node.lb().context("lb is not running")?;
        resume(node, pid);
        if self.options.rig_writes_track_file {
            write_track(&node.track_file, true)?;
            self.heartbeat_on[n.index()].store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Start keepalived on `n` (`-n -l -D`, its own pid files, output to
    /// [`PairNode::keepalived_log`]) and wait until its VRRP child runs.
    pub fn start_keepalived(&self, n: Node) -> Result<u32> {
        let node = self.node(n);
        let _ = std::fs::remove_file(&node.vrrp_pidfile);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.keepalived_log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &node.ns.name, "/usr/sbin/keepalived"])
            .args(["-n", "-l", "-D", "-f"])
            .arg(&node.keepalived_config)
            .arg("-p")
            .arg(&node.keepalived_pidfile)
            .arg("-r")
            .arg(&node.vrrp_pidfile)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting keepalived (is it installed? cargo xtask setup)")?;
        let pid = node.ns.adopt(child);
        *node.keepalived.lock().unwrap() = Some(pid);
        crate::wait_until(
            &format!("keepalived's VRRP child on {}", n.name()),
            Duration::from_secs(10),
            || {
                let vrrp = node.vrrp_pid()?;
                if std::path::Path::new(&format!("/proc/{vrrp}")).exists() {
                    Ok(Some(()))
                } else {
                    bail!("pid {vrrp} is not running")
                }
            },
        )
        .with_context(|| self.keepalived_tail(n))?;
        Ok(pid)
    }

    /// Stop `n`'s keepalived (SIGTERM: it removes the floating addresses and exits).
    pub fn stop_keepalived(&self, n: Node) {
        let node = self.node(n);
        if let Some(pid) = node.keepalived.lock().unwrap().take() {
            if let Ok(vrrp) = node.vrrp_pid() {
                resume(node, vrrp);
            }
            resume(node, pid);
            node.ns.stop(pid);
        }
    }

    /// SIGSTOP keepalived on `n` (parent and VRRP child): a hung node, adverts stop.
    pub fn pause_keepalived(&self, n: Node) -> Result<()> {
        let node = self.node(n);
        let pid = (*node.keepalived.lock().unwrap()).context("keepalived is not running")?;
        pause(node, node.vrrp_pid()?)?;
        pause(node, pid)
    }

    /// SIGCONT keepalived on `n`.
    pub fn resume_keepalived(&self, n: Node) -> Result<()> {
        let node = self.node(n);
        let pid = (*node.keepalived.lock().unwrap()).context("keepalived is not running")?;
        resume(node, pid);
        resume(node, node.vrrp_pid()?);
        Ok(())
    }

    /// Take all of `n`'s links down (client side, server side, the link to its peer).
    pub fn links_down(&self, n: Node) -> Result<()> {
        self.set_links(n, "down")
    }

    /// Bring `n`'s links up again (and its managed neighbour entry for the client, which
    /// the links going down flushed, with `client_neighbour`).
    pub fn links_up(&self, n: Node) -> Result<()> {
        self.set_links(n, "up")?;
        if self.options.client_neighbour {
            add_client_neighbour(&self.node(n).ns, self.options.extra_clients)?;
        }
        Ok(())
    }

    fn set_links(&self, n: Node, state: &str) -> Result<()> {
        for ifname in [CLIENT_IF, SERVER_IF, HA_IF] {
            self.node(n)
                .ns
                .exec(&["ip", "link", "set", ifname, state])?;
        }
        Ok(())
    }

    /// The nodes holding the VIP on eth-c (normally one; both or none for a moment during
    /// a change).
    pub fn vip_holders(&self) -> Result<Vec<Node>> {
        let mut out = Vec::new();
        for n in Node::BOTH {
            if self.node(n).holds(VIP, CLIENT_IF)? {
                out.push(n);
            }
        }
        Ok(out)
    }

    /// Wait until `n` alone holds the floating addresses (the VIP on eth-c and the
    /// gateway on eth-s), at most `timeout`.
    pub fn wait_master(&self, n: Node, timeout: Duration) -> Result<()> {
        let what = format!("{} to hold the floating addresses alone", n.name());
        crate::wait_until(&what, timeout, || {
            let (me, other) = (self.node(n), self.node(n.other()));
            let state = (
                me.holds(VIP, CLIENT_IF)?,
                me.holds(GATEWAY, SERVER_IF)?,
                other.holds(VIP, CLIENT_IF)?,
                other.holds(GATEWAY, SERVER_IF)?,
            );
            if state == (true, true, false, false) {
                Ok(Some(()))
            } else {
                bail!(
                    "{} holds VIP {} gateway {}; {} holds VIP {} gateway {}",
                    n.name(),
                    state.0,
                    state.1,
                    n.other().name(),
                    state.2,
                    state.3
                )
            }
        })
        .with_context(|| {
            format!(
                "{}\n{}",
                self.keepalived_tail(Node::A),
                self.keepalived_tail(Node::B)
            )
        })
    }

    /// `GET path` of `n`'s REST API (the body).
    pub fn api(&self, n: Node, path: &str) -> Result<String> {
        self.node(n).ns.exec(&[
            "curl",
            "-sf",
            "--max-time",
            "2",
            "-H",
            &format!("Authorization: Bearer {API_TOKEN}"),
            &format!("http://{API_LISTEN}{path}"),
        ])
    }

    /// The HA part of `n`'s `lb status` (JSON), empty when its daemon does not answer.
    pub fn ha_status(&self, n: Node) -> String {
        let status = self.api(n, "/v1/lbs/1/status").unwrap_or_default();
        status
            .find("\"ha\":")
            .map(|at| status[at..].to_string())
            .unwrap_or_default()
    }

    /// The role `n`'s lb reports (what keepalived told it): "master", "backup", ...
    pub fn ha_role(&self, n: Node) -> String {
        let ha = self.ha_status(n);
        ha.split("\"role\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("")
            .to_string()
    }

    /// A number field of `n`'s HA status, such as "flows_received".
    pub fn ha_number(&self, n: Node, field: &str) -> u64 {
        let ha = self.ha_status(n);
        ha.split(&format!("\"{field}\":"))
            .nth(1)
            .and_then(|r| r.split([',', '}']).next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// An XDP counter of `n` (`lb_common::stats::metric_sample` in its metrics).
    pub fn xdp_counter(&self, n: Node, counter: &str) -> Result<u64> {
        xdp_counter(&self.node(n).ns, METRICS_LISTEN, counter)
    }

    /// Addresses, neighbours and XDP of both nodes and the client, for failure messages.
    pub fn debug_state(&self) -> String {
        let mut out = String::new();
        let show = |ns: &NetNs, args: &[&str]| ns.exec(args).unwrap_or_else(|e| format!("{e:#}\n"));
        for n in Node::BOTH {
            let ns = &self.node(n).ns;
            out.push_str(&format!("--- {}\n", n.name()));
            out.push_str(&show(ns, &["ip", "-4", "-br", "addr"]));
            out.push_str(&show(ns, &["ip", "-4", "neigh"]));
            out.push_str(&show(
                ns,
                &[
                    "nstat",
                    "-az",
                    "IpExtInNoRoutes",
                    "IpInAddrErrors",
                    "TcpExtIPReversePathFilter",
                ],
            ));
        }
        out.push_str("--- client\n");
        out.push_str(&show(&self.client, &["ip", "-4", "neigh"]));
        out
    }

    /// The last lines of `n`'s keepalived output, for failure messages.
    /// The state `n`'s keepalived last entered ("MASTER", "BACKUP", "FAULT"), from its log:
    /// readable while its lb is hung.
    pub fn keepalived_state(&self, n: Node) -> String {
        let text = std::fs::read_to_string(&self.node(n).keepalived_log).unwrap_or_default();
        text.lines()
            .rev()
            .find_map(|l| {
                let at = l.to_ascii_uppercase();
                let rest = at.split("ENTERING ").nth(1)?;
                rest.split(' ').next().map(str::to_string)
            })
            .unwrap_or_default()
    }

    pub fn keepalived_tail(&self, n: Node) -> String {
        let text = std::fs::read_to_string(&self.node(n).keepalived_log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("ending gratuitous ARP"))
            .collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("keepalived on {}:\n{tail}", n.name())
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.heartbeat_stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
        }
        // A stopped process would not act on SIGTERM.
        for node in &self.nodes {
            for pid in node.paused.lock().unwrap().drain(..) {
                signal(pid, nix::sys::signal::Signal::SIGCONT);
            }
        }
        // Processes first (lb detaches, keepalived removes its addresses); then the fields
        // drop: the namespaces, the BPF filesystem, the scratch directory last.
        for node in &self.nodes {
            node.ns.stop_children();
        }
    }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

fn pause(node: &PairNode, pid: u32) -> Result<()> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .with_context(|| format!("SIGSTOP {pid}"))?;
    node.paused.lock().unwrap().push(pid);
    Ok(())
}

fn resume(node: &PairNode, pid: u32) {
    let mut paused = node.paused.lock().unwrap();
    if let Some(i) = paused.iter().position(|p| *p == pid) {
        paused.remove(i);
        signal(pid, nix::sys::signal::Signal::SIGCONT);
    }
}

/// "0\n" or "1\n", written as the daemon does: a temporary file renamed over the track file.
fn write_track(path: &Path, healthy: bool) -> Result<()> {
    let tmp = path.with_extension("rig-tmp");
    std::fs::write(&tmp, if healthy { "0\n" } else { "1\n" })?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn add_client_neighbour(ns: &NetNs, extra_clients: usize) -> Result<()> {
    for client in std::iter::once(CLIENT_ADDR).chain((0..extra_clients).map(extra_client)) {
        let client = client.to_string();
        ns.exec(&[
            "ip", "neigh", "replace", &client, "dev", CLIENT_IF, "managed",
        ])?;
    }
    Ok(())
}

/// An XDP counter of the daemon in `ns` whose metrics listen at `listen`
/// (`lb_xdp_*_total`, `lb_common::stats::metric_sample`; 0 when absent).
pub fn xdp_counter(ns: &NetNs, listen: &str, counter: &str) -> Result<u64> {
    let metrics = ns.exec(&[
        "curl",
        "-sf",
        "--max-time",
        "2",
        &format!("http://{listen}/metrics"),
    ])?;
    let sample = lb_common::stats::metric_sample(counter);
    Ok(metrics
        .lines()
        .find(|l| l.starts_with(&sample))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64))
}

/// The `i`th of the client's extra addresses (198.18.0.100 and on).
pub fn extra_client(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 100 + i as u8)
}

fn wire(
    nodes: &[PairNode; 2],
    client: &NetNs,
    switch: &NetNs,
    servers: &[NetNs],
    options: &PairOptions,
) -> Result<()> {
    let run = |ns: &NetNs, cmd: &str| -> Result<()> {
        ns.exec(&cmd.split_whitespace().collect::<Vec<_>>())
            .map(|_| ())
    };
    for (ns, bridge) in [(client, "br0"), (switch, "br0")] {
        run(ns, &format!("ip link add {bridge} type bridge"))?;
        run(
            ns,
            &format!("ip link set {bridge} type bridge forward_delay 0"),
        )?;
        run(ns, &format!("ip link set {bridge} up"))?;
    }
    for n in nodes {
        let tag = &n.node.name()[3..];
        veth(&n.ns, CLIENT_IF, client, &format!("c{tag}"))?;
        run(client, &format!("ip link set c{tag} master br0"))?;
        veth(&n.ns, SERVER_IF, switch, &format!("s{tag}"))?;
        run(switch, &format!("ip link set s{tag} master br0"))?;
        let node = n.node;
        run(
            &n.ns,
            &format!("ip addr add {}/24 dev {CLIENT_IF}", node.client_side_addr()),
        )?;
        run(
            &n.ns,
            &format!("ip addr add {}/24 dev {SERVER_IF}", node.server_side_addr()),
        )?;
        run(&n.ns, "sysctl -qw net.ipv4.ip_forward=1")?;
        if options.client_neighbour {
            add_client_neighbour(&n.ns, options.extra_clients)?;
        }
    }
    // The nodes' link is a bridge too, so that one node's link going down is not its
    // peer's (a veth's carrier follows its other end).
    run(switch, "ip link add brh type bridge")?;
    run(switch, "ip link set brh type bridge forward_delay 0")?;
    run(switch, "ip link set brh up")?;
    for n in nodes {
        let port = format!("h{}", &n.node.name()[3..]);
        veth(&n.ns, HA_IF, switch, &port)?;
        run(switch, &format!("ip link set {port} master brh"))?;
        run(
            &n.ns,
            &format!("ip addr add {}/24 dev {HA_IF}", n.node.ha_addr()),
        )?;
    }
    run(client, &format!("ip addr add {CLIENT_ADDR}/24 dev br0"))?;
    for i in 0..options.extra_clients {
        run(
            client,
            &format!("ip addr add {}/24 dev br0", extra_client(i)),
        )?;
    }
    run(client, "ethtool -K br0 tx off")?;
    // A gratuitous ARP that comes within `locktime` (1 s) of the entry's last update is
    // ignored; the VIP's new owner must win at once.
    run(client, "sysctl -qw net.ipv4.neigh.br0.locktime=0")?;
    for (i, server) in servers.iter().enumerate() {
        let port = format!("v{}", i + 1);
        veth(server, "eth0", switch, &port)?;
        run(switch, &format!("ip link set {port} master br0"))?;
        run(
            server,
            &format!("ip addr add {}/24 dev eth0", server_addr(i)),
        )?;
        run(server, &format!("ip route add default via {GATEWAY}"))?;
        run(server, "sysctl -qw net.ipv4.neigh.eth0.locktime=0")?;
    }
    Ok(())
}

fn node_config(
    n: &PairNode,
    options: &PairOptions,
    secret: &Path,
    tokens: &Path,
    pin: &Path,
) -> String {
    let node = n.node;
    let servers: Vec<String> = (0..options.servers)
        .map(|i| format!("{{ address = \"{}\" }}", server_addr(i)))
        .collect();
    let sticky = if options.sticky {
        "options = { sticky_session = { type = \"source_ip\", ttl = \"5m\" } }\n"
    } else {
        ""
    };
    let peer = node.other();
    let advert_ms = options.advert_int.as_millis();
    format!(
        r#"# lb node {name} of the pair rig (lb_tests::pair).
[[frontends]]
name = "web"
mode = "tcp"
address = "{VIP}"
binds = [{{ port = {VIP_TCP_PORT} }}, {{ port = {VIP_UDP_PORT}, protocol = "udp" }}]
default_backend = "web"
interfaces = ["{CLIENT_IF}", "{SERVER_IF}"]
snat_address = "{SNAT_ADDR}"

[[backends]]
name = "web"
mode = "tcp"
balancing_method = "maglev"
port = {SERVER_PORT}
servers = {{ type = "addresses", addresses = [{servers}] }}
{sticky}
{extra}

[api]
listen = "{API_LISTEN}"
token_file = "{tokens}"

[metrics]
listen = "{METRICS_LISTEN}"

[dataplane]
pin_path = "{pin}"

[ha]
role = "{role}"
listen = "{listen}:{SYNC_PORT}"
peer = "{peer_addr}:{SYNC_PORT}"
secret_file = "{secret}"
notify_fifo = "{fifo}"
track_file = "{track}"

[ha.vrrp]
interface = "{HA_IF}"
virtual_router_id = {VIRTUAL_ROUTER_ID}
advert_int = "{advert_ms}ms"
addresses = [
  {{ address = "{VIP}/24", interface = "{CLIENT_IF}" }},
  {{ address = "{GATEWAY}/24", interface = "{SERVER_IF}" }},
]
"#,
        name = node.name(),
        servers = servers.join(", "),
        extra = options.extra_toml,
        tokens = tokens.display(),
        pin = pin.display(),
        role = node.role(),
        listen = node.ha_addr(),
        peer_addr = peer.ha_addr(),
        secret = secret.display(),
        fifo = n.notify_fifo.display(),
        track = n.track_file.display(),
    )
}

/// A long-lived TCP flow from the client that exchanges a line every `interval` on its
/// own thread, and records what happened: the place for assertions about established
/// flows across a failover. The first failed exchange ends it (a lost line leaves the
/// request/response stream out of step).
pub struct LongFlow {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<FlowStats>>,
    handle: Option<JoinHandle<()>>,
}

/// What a [`LongFlow`] saw.
#[derive(Clone, Debug, Default)]
pub struct FlowStats {
    /// The server that answered first.
    pub server: String,
    /// Exchanges answered by that server.
    pub exchanges: usize,
    /// What ended the flow early (a failed exchange or another server answering), and
    /// how long after the flow opened.
    pub broken: Option<(Duration, String)>,
}

impl LongFlow {
    /// Open the connection (within `timeout`) from `client`, then exchange every `interval`.
    pub fn open(
        client: &NetNs,
        target: SocketAddr,
        interval: Duration,
        timeout: Duration,
    ) -> Result<LongFlow> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(FlowStats::default()));
        let (tx, rx) = std::sync::mpsc::channel();
        let (s, st) = (stop.clone(), stats.clone());
        let handle = client.run(move || {
            let mut conn = match LongConn::open_within(None, target, timeout) {
                Ok(c) => {
                    st.lock().unwrap().server = c.server.clone();
                    let _ = tx.send(Ok(()));
                    c
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let opened = Instant::now();
            while !s.load(Ordering::Relaxed) {
                // Kept: the pacing of the flow is the point, not a wait for anything.
                std::thread::sleep(interval);
                let answer = conn.exchange();
                let mut st = st.lock().unwrap();
                match answer {
                    Ok(name) if name == conn.server => st.exchanges += 1,
                    Ok(name) => {
                        st.broken = Some((opened.elapsed(), format!("answered by {name}")));
                        return;
                    }
                    Err(e) => {
                        st.broken = Some((opened.elapsed(), format!("{e:#}")));
                        return;
                    }
                }
            }
        })?;
        rx.recv().context("the flow's thread died")??;
        Ok(LongFlow {
            stop,
            stats,
            handle: Some(handle),
        })
    }

    pub fn stats(&self) -> FlowStats {
        self.stats.lock().unwrap().clone()
    }

    /// Wait until at least `count` more exchanges than now have been answered, or the flow
    /// broke (an error saying how), at most `timeout`.
    pub fn wait_exchanges(&self, count: usize, timeout: Duration) -> Result<FlowStats> {
        let target = self.stats().exchanges + count;
        crate::wait_until(&format!("{count} more exchanges"), timeout, || {
            let st = self.stats();
            if let Some((after, why)) = &st.broken {
                bail!("the flow broke after {after:?}: {why}");
            }
            Ok((st.exchanges >= target).then_some(st))
        })
    }

    /// Stop exchanging; what it saw.
    pub fn stop(mut self) -> FlowStats {
        self.halt();
        self.stats()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for LongFlow {
    fn drop(&mut self) {
        self.halt();
    }
}
