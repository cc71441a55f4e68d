//! Two data planes and their HA sync in one process, in a namespace whose loopback holds
//! both nodes' sync addresses (the ha_sync tests and the ha bench).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use lb_common::maps::{ENTRY_COUNTED, ENTRY_ESTABLISHED, FLOW_ESTABLISHED, FlowKey, NatEntry};
use lb_tests::netns::NetNs;
use lb_userspace::{
    config::Config,
    dataplane::{Dataplane, monotonic_now_ns},
    ha::{
        sync::{self, Shared},
        wire::Secret,
    },
};

pub const A: &str = "198.18.50.1:7946";
pub const B: &str = "198.18.50.2:7946";

pub const CONFIG: &str = r#"
[[frontends]]
name = "web"
mode = "tcp"
address = "198.18.100.1"
binds = [{ port = 80 }]
default_backend = "pool"
interfaces = ["lo"]
snat_address = "198.18.2.1"

[[backends]]
name = "pool"
mode = "tcp"
port = 8080
balancing_method = "maglev"
servers = { type = "addresses", addresses = [{ address = "198.18.11.2" }, { address = "198.18.12.2" }] }
options = { sticky_session = { type = "source_ip", ttl = "10m" } }
"#;

/// A frontend and backend only node B has, listed first, so that B's ids differ from A's.
pub const EXTRA: &str = r#"
[[frontends]]
name = "extra"
mode = "tcp"
address = "198.18.100.9"
binds = [{ port = 81 }]
default_backend = "extra-pool"
interfaces = ["lo"]
snat_address = "198.18.2.9"

[[backends]]
name = "extra-pool"
mode = "tcp"
port = 9090
balancing_method = "roundrobin"
servers = { type = "addresses", addresses = [{ address = "198.18.13.2" }] }
"#;

fn v4(ip: u32) -> [u8; 16] {
    std::net::Ipv4Addr::from(ip).to_ipv6_mapped().octets()
}

/// A namespace whose loopback holds both nodes' addresses.
pub fn pair_namespace(name: &str) -> anyhow::Result<NetNs> {
    let ns = NetNs::new(name)?;
    ns.exec(&["ip", "link", "set", "lo", "up"])?;
    ns.exec(&["ip", "addr", "add", "198.18.50.1/24", "dev", "lo"])?;
    ns.exec(&["ip", "addr", "add", "198.18.50.2/24", "dev", "lo"])?;
    Ok(ns)
}

pub fn addr(ip: &str) -> [u8; 16] {
    let ip: std::net::IpAddr = ip.parse().unwrap();
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    }
}

pub struct Node {
    pub dataplane: Arc<Mutex<Dataplane>>,
    pub shared: Arc<Shared>,
}

pub fn node(
    config: &str,
    conntrack_size: u32,
    interval: Duration,
    listen: &str,
    peer: &str,
    secret: &[u8],
) -> Node {
    let config = Config::parse("ha_sync.toml", config).unwrap();
    let mut dp = Dataplane::load_with(conntrack_size).unwrap();
    dp.apply_config(&config).unwrap();
    let shared = Shared::new(dp.names());
    let dataplane = Arc::new(Mutex::new(dp));
    let tables = {
        let dataplane = dataplane.clone();
        move || dataplane.lock().unwrap().flow_tables()
    };
    sync::start(
        sync::Settings {
            listen: listen.parse::<SocketAddr>().unwrap(),
            peer: peer.parse::<SocketAddr>().unwrap(),
            secret: Secret::new(secret),
            interval,
            timeouts: config.dataplane.timeouts(),
        },
        tables,
        shared.clone(),
    )
    .unwrap();
    Node { dataplane, shared }
}

/// `n` established flows from distinct clients to the frontend "web", on A's ids.
pub fn flows(dp: &Dataplane, n: u32, age_ns: u64) -> (Vec<FlowKey>, Vec<NatEntry>) {
    let names = dp.names();
    let id = |m: &std::collections::HashMap<u32, String>, name: &str| {
        *m.iter().find(|(_, n)| *n == name).unwrap().0
    };
    let server = *names
        .servers
        .iter()
        .find(|(_, (b, a, _))| b == "pool" && a.to_string() == "198.18.12.2")
        .unwrap()
        .0;
    let now = monotonic_now_ns();
    (0..n)
        .map(|i| {
            let key = FlowKey {
                src: v4(u32::from(std::net::Ipv4Addr::new(198, 19, 0, 0)) + i / 50_000),
                dst: addr("198.18.100.1"),
                sport: (10_000 + (i % 50_000) as u16).to_be(),
                dport: 80u16.to_be(),
                proto: 6,
                _pad: [0; 3],
            };
            let entry = NatEntry {
                src: v4(u32::from(std::net::Ipv4Addr::new(198, 18, 2, 1)) + i / 60_000),
                dst: addr("198.18.12.2"),
                sport: (1024 + (i % 60_000) as u16).to_be(),
                dport: 8080u16.to_be(),
                server_id: server,
                last_seen_ns: now - age_ns,
                frontend_id: id(&names.frontends, "web") as u16,
                backend_id: id(&names.backends, "pool") as u16,
                state: FLOW_ESTABLISHED,
                flags: ENTRY_COUNTED | ENTRY_ESTABLISHED,
                _pad: 0,
            };
            (key, entry)
        })
        .unzip()
}

pub fn count_flows(dp: &Mutex<Dataplane>) -> usize {
    let mut tables = dp.lock().unwrap().flow_tables().unwrap();
    let mut n = 0;
    tables
        .each_flow(4096, |k, _| {
            n += k.len();
            Ok(())
        })
        .unwrap();
    n
}
