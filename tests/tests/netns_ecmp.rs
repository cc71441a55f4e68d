//! Active/active behind ECMP: three lb nodes in DSR mode announce the VIP over eBGP (BIRD,
//! configs from `lb ha bird-config`) to a router namespace running BIRD, whose kernel
//! spreads flows over the three by a hash of the 5-tuple (`fib_multipath_hash_policy=3`).
//! Flows spread over every node; the nodes' Maglev tables are byte-identical; when a node
//! dies its established flows go on through the other nodes' stateless fallback, to the
//! same servers, and the other nodes' flows are untouched.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, Result};
use lb_tests::{
    netns::{NetNs, sh},
    pair::LongFlow,
    require_root,
    services::ScratchDir,
    topology::{lb_binary, start_and_wait_ready, veth},
    traffic::start_name_servers,
    wait_until,
};

const NODES: usize = 3;
const SERVERS: usize = 3;
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 90, 10);
const PORT: u16 = 8080;
const FLOWS: usize = 30;

fn node_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 61 + i as u8, 2)
}

fn router_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 61 + i as u8, 1)
}

fn server_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 80, 21 + i as u8)
}

fn run(ns: &NetNs, cmd: &str) -> Result<()> {
    ns.exec(&cmd.split_whitespace().collect::<Vec<_>>())
        .map(|_| ())
}

fn node_config(i: usize, pins: &Path) -> String {
    let servers: Vec<String> = (0..SERVERS)
        .map(|s| format!("{{ address = \"{}\" }}", server_addr(s)))
        .collect();
    format!(
        r#"[[frontends]]
name = "web"
mode = "tcp"
address = "{VIP}"
binds = [{{ port = {PORT} }}]
default_backend = "web"
interfaces = ["eth-r", "eth-s"]
forwarding = "dsr"
dsr_stateless_fallback = true

[[backends]]
name = "web"
mode = "tcp"
balancing_method = "maglev"
port = {PORT}
servers = {{ type = "addresses", addresses = [{servers}] }}

[metrics]
listen = "127.0.0.1:9100"

[dataplane]
pin_path = "{pins}"

[bgp]
local_as = 65001
router_id = "{id}"
neighbors = [{{ address = "{router}", remote_as = 65000 }}]
hold_time = "3s"
"#,
        servers = servers.join(", "),
        pins = pins.display(),
        id = node_addr(i),
        router = router_addr(i),
    )
}

fn router_bird() -> String {
    let mut conf = String::from(
        "router id 198.18.70.1;\nprotocol device {}\nprotocol kernel {\n  ipv4 { export all; };\n  merge paths on;\n}\n",
    );
    for i in 0..NODES {
        conf += &format!(
            "protocol bgp node{i} {{\n  local as 65000;\n  neighbor {} as 65001;\n  hold time 3;\n  ipv4 {{ import all; export none; }};\n}}\n",
            node_addr(i)
        );
    }
    conf
}

fn xdp_counter(ns: &NetNs, counter: &str) -> u64 {
    lb_tests::pair::xdp_counter(ns, "127.0.0.1:9100", counter).unwrap_or(0)
}

/// The live half of the backend's Maglev table, read from a node's pinned maps.
fn maglev_table(pins: &Path) -> Result<Vec<u32>> {
    use aya::maps::{Array, Map, MapData};
    use lb_common::maps::{BackendInfo, MAP_BACKENDS, MAP_RING};
    let dir = lb_userspace::dataplane::pin_dir(pins);
    let backends: Array<MapData, BackendInfo> = Array::try_from(Map::Array(
        MapData::from_pin(dir.join(MAP_BACKENDS)).context("pinned backends")?,
    ))?;
    // The only backend has id 0.
    let info = backends.get(&0, 0)?;
    let ring: Array<MapData, u32> = Array::try_from(Map::Array(
        MapData::from_pin(dir.join(MAP_RING)).context("pinned ring")?,
    ))?;
    let base = BackendInfo::ring_base(0, info.active);
    (0..info.ring_size[info.active as usize])
        .map(|slot| Ok(ring.get(&(base + slot), 0)?))
        .collect()
}

#[test]
fn ecmp_spreads_flows_over_three_dsr_nodes_and_a_dead_nodes_flows_go_on() {
    if !require_root("netns_ecmp") {
        return;
    }
    let lb = lb_binary().unwrap();
    let scratch = ScratchDir::new("ecmp").unwrap();
    let bpffs = scratch.0.join("bpffs");
    std::fs::create_dir_all(&bpffs).unwrap();
    sh(&["mount", "-t", "bpf", "bpf", bpffs.to_str().unwrap()]).unwrap();
    struct Unmount(String);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = sh(&["umount", &self.0]);
        }
    }
    // Declared first, dropped last: after every namespace (and lb) is gone.
    let _unmount = Unmount(bpffs.to_str().unwrap().to_string());

    let client = NetNs::new("ecmp-client").unwrap();
    let router = NetNs::new("ecmp-router").unwrap();
    let switch = NetNs::new("ecmp-sw").unwrap();
    let nodes: Vec<NetNs> = (0..NODES)
        .map(|i| NetNs::new(&format!("ecmp-n{}", i + 1)).unwrap())
        .collect();
    let servers: Vec<NetNs> = (0..SERVERS)
        .map(|i| NetNs::new(&format!("ecmp-s{}", i + 1)).unwrap())
        .collect();

    // Client -- router.
    veth(&client, "eth0", &router, "eth-c").unwrap();
    run(&client, "ip addr add 198.18.70.2/24 dev eth0").unwrap();
    run(&client, "ip route add default via 198.18.70.1").unwrap();
    run(&router, "ip addr add 198.18.70.1/24 dev eth-c").unwrap();
    for cmd in [
        "sysctl -qw net.ipv4.ip_forward=1",
        "sysctl -qw net.ipv4.fib_multipath_hash_policy=3",
        "sysctl -qw net.ipv4.fib_multipath_hash_fields=0x37",
        // DSR replies come from the VIP on the server segment, not from where the VIP routes.
        "sysctl -qw net.ipv4.conf.all.rp_filter=0",
        "sysctl -qw net.ipv4.conf.default.rp_filter=0",
    ] {
        run(&router, cmd).unwrap();
    }
    // The server segment: a bridge joining the servers, the nodes and the router (the
    // servers' way back to the client, which DSR replies take).
    run(&switch, "ip link add br0 type bridge").unwrap();
    run(&switch, "ip link set br0 up").unwrap();
    let mut switch_ports = Vec::new();
    let mut join = |ns: &NetNs, ifname: &str, port: String| {
        veth(ns, ifname, &switch, &port).unwrap();
        run(&switch, &format!("ip link set {port} master br0")).unwrap();
        switch_ports.push(port);
    };
    join(&router, "eth-s", "p-router".into());
    for (i, n) in nodes.iter().enumerate() {
        join(n, "eth-s", format!("p-n{}", i + 1));
    }
    for (i, s) in servers.iter().enumerate() {
        join(s, "eth0", format!("p-s{}", i + 1));
    }
    run(&router, "ip addr add 198.18.80.1/24 dev eth-s").unwrap();
    for (i, s) in servers.iter().enumerate() {
        run(s, &format!("ip addr add {}/24 dev eth0", server_addr(i))).unwrap();
        run(s, "ip route add default via 198.18.80.1").unwrap();
        run(s, &format!("ip addr add {VIP}/32 dev lo")).unwrap();
        run(s, "sysctl -qw net.ipv4.conf.all.arp_ignore=1").unwrap();
        run(s, "sysctl -qw net.ipv4.conf.all.arp_announce=2").unwrap();
    }
    // Router -- each node.
    for (i, n) in nodes.iter().enumerate() {
        let port = format!("eth-n{}", i + 1);
        veth(&router, &port, n, "eth-r").unwrap();
        run(
            &router,
            &format!("ip addr add {}/24 dev {port}", router_addr(i)),
        )
        .unwrap();
        run(n, &format!("ip addr add {}/24 dev eth-r", node_addr(i))).unwrap();
        run(n, &format!("ip addr add 198.18.80.{}/24 dev eth-s", 11 + i)).unwrap();
        // XDP's FIB lookups need forwarding on.
        run(n, "sysctl -qw net.ipv4.ip_forward=1").unwrap();
    }
    // Frames XDP redirects into a veth are delivered only if its peer runs XDP.
    let mut peer_args: Vec<&str> = vec!["peer"];
    peer_args.extend(switch_ports.iter().map(String::as_str));
    switch
        .spawn(
            &std::iter::once(lb.to_str().unwrap())
                .chain(peer_args.iter().copied())
                .collect::<Vec<_>>(),
            Stdio::null(),
            Stdio::inherit(),
        )
        .unwrap();
    let names: Vec<(&NetNs, String)> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| (s, format!("server{}", i + 1)))
        .collect();
    let _name_servers = start_name_servers(&names, PORT).unwrap();

    // The nodes: lb and BIRD each.
    let mut pins = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let dir = scratch.0.join(format!("n{}", i + 1));
        std::fs::create_dir_all(&dir).unwrap();
        let pin = bpffs.join(format!("n{}", i + 1));
        let config = dir.join("lb.toml");
        std::fs::write(&config, node_config(i, &pin)).unwrap();
        start_and_wait_ready(n, &lb, &["run", "--config", config.to_str().unwrap()]).unwrap();
        let bird = n
            .exec(&[
                lb.to_str().unwrap(),
                "ha",
                "bird-config",
                "--config",
                config.to_str().unwrap(),
            ])
            .unwrap();
        let bird_conf = dir.join("bird.conf");
        std::fs::write(&bird_conf, bird).unwrap();
        start_bird(n, &bird_conf, &dir).unwrap();
        pins.push(pin);
    }
    let dir = scratch.0.join("router");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bird.conf"), router_bird()).unwrap();
    start_bird(&router, &dir.join("bird.conf"), &dir).unwrap();
    wait_until(
        "the router's route to the VIP over 3 nodes",
        Duration::from_secs(30),
        || {
            let route = router.exec(&["ip", "route", "show", &format!("{VIP}")])?;
            Ok((route.matches("nexthop").count() == NODES).then_some(()))
        },
    )
    .unwrap();

    // Every node computes the same Maglev table.
    let tables: Vec<Vec<u32>> = pins.iter().map(|p| maglev_table(p).unwrap()).collect();
    assert!(!tables[0].is_empty());
    for t in &tables[1..] {
        assert!(t == &tables[0], "the nodes' Maglev tables differ");
    }

    // Long-lived flows spread over the nodes.
    let target = SocketAddr::V4(SocketAddrV4::new(VIP, PORT));
    let flows: Vec<LongFlow> = (0..FLOWS)
        .map(|_| {
            LongFlow::open(
                &client,
                target,
                Duration::from_millis(100),
                Duration::from_secs(3),
            )
            .unwrap()
        })
        .collect();
    for f in &flows {
        f.wait_exchanges(2, Duration::from_secs(10)).unwrap();
    }
    let opened: Vec<u64> = nodes.iter().map(|n| xdp_counter(n, "flow_new")).collect();
    wait_until("metrics of every node", Duration::from_secs(5), || {
        let opened: Vec<u64> = nodes.iter().map(|n| xdp_counter(n, "flow_new")).collect();
        Ok((opened.iter().sum::<u64>() >= FLOWS as u64).then_some(opened))
    })
    .unwrap();
    let opened_now: Vec<u64> = nodes.iter().map(|n| xdp_counter(n, "flow_new")).collect();
    assert!(
        opened_now.iter().all(|n| *n > 0),
        "flows on every node: {opened_now:?} (before the wait {opened:?})"
    );

    // Node 1 dies: its links go down (the router drops its next hop), its lb and BIRD are
    // killed.
    let dead = &nodes[0];
    run(dead, "ip link set eth-r down").unwrap();
    run(dead, "ip link set eth-s down").unwrap();
    dead.stop_children();
    for f in &flows {
        f.wait_exchanges(10, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("a flow after node 1 died: {e:#} {:?}", f.stats()));
    }
    wait_until("the survivors' metrics", Duration::from_secs(5), || {
        Ok((nodes[1..]
            .iter()
            .map(|n| xdp_counter(n, "flow_stateless_fallback"))
            .sum::<u64>()
            > 0)
        .then_some(()))
    })
    .unwrap();
    for n in &nodes[1..] {
        assert_eq!(xdp_counter(n, "drop_tcp_no_flow"), 0, "{}", n.name);
    }
    for f in flows {
        let stats = f.stop();
        assert!(stats.broken.is_none(), "a flow broke: {stats:?}");
    }
}

fn start_bird(ns: &NetNs, conf: &Path, dir: &Path) -> Result<u32> {
    let sock = dir.join("bird.ctl");
    let pid = ns.spawn(
        &[
            "bird",
            "-f",
            "-c",
            conf.to_str().context("UTF-8")?,
            "-s",
            sock.to_str().context("UTF-8")?,
            "-P",
            dir.join("bird.pid").to_str().context("UTF-8")?,
        ],
        Stdio::null(),
        Stdio::inherit(),
    )?;
    Ok(pid)
}
