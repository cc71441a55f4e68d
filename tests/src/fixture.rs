//! The namespace BPF_PROG_TEST_RUN fixtures and microbenchmarks run in: a client-side
//! interface `fxc` and a server-side interface `fxs` with fixed MACs, routes and permanent
//! neighbour entries, so `bpf_fib_lookup` succeeds and rewritten frames carry real MACs.

use anyhow::Result;

use crate::netns::NetNs;

/// MAC of lb's client-side interface `fxc`.
pub const CLIENT_SIDE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// MAC of lb's server-side interface `fxs`.
pub const SERVER_SIDE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// The client 198.18.0.2 / 2001:2::2 (neighbour on `fxc`).
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc1];
/// The server 198.18.11.2 / 2001:2:0:11::2 (neighbour on `fxs`), also the gateway to
/// 198.18.128.0/17, where microbenchmarks put hundreds of servers.
pub const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x51];

const SETUP: &[&str] = &[
    "ip link add fxc address 02:00:00:00:00:01 type veth peer name fxc-peer",
    "ip link add fxs address 02:00:00:00:00:02 type veth peer name fxs-peer",
    "ip link set fxc up",
    "ip link set fxc-peer up",
    "ip link set fxs up",
    "ip link set fxs-peer up",
    "ip addr add 198.18.0.1/24 dev fxc",
    "ip addr add 198.18.11.1/24 dev fxs",
    "ip addr add 2001:2::1/64 dev fxc nodad",
    "ip addr add 2001:2:0:11::1/64 dev fxs nodad",
    "ip neigh add 198.18.0.2 lladdr 02:00:00:00:00:c1 dev fxc nud permanent",
    "ip neigh add 198.18.0.3 lladdr 02:00:00:00:00:c3 dev fxc nud permanent",
    "ip neigh add 198.18.11.2 lladdr 02:00:00:00:00:51 dev fxs nud permanent",
    "ip neigh add 2001:2::2 lladdr 02:00:00:00:00:c1 dev fxc nud permanent",
    "ip neigh add 2001:2:0:11::2 lladdr 02:00:00:00:00:51 dev fxs nud permanent",
    "ip route add 198.18.128.0/17 via 198.18.11.2 dev fxs",
    "sysctl -qw net.ipv4.ip_forward=1",
    "sysctl -qw net.ipv6.conf.all.forwarding=1",
];

pub fn fixture_namespace(name: &str) -> Result<NetNs> {
    let ns = NetNs::new(name)?;
    for cmd in SETUP {
        ns.exec(&cmd.split_whitespace().collect::<Vec<_>>())?;
    }
    Ok(ns)
}
