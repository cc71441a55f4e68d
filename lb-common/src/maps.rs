//! Map names, sizes, keys and values. Every key and value is `#[repr(C)]` with explicit padding,
//! so the kernel and userspace agree byte for byte. Ports are kept in network byte order and
//! addresses as 16 bytes (IPv4 as `::ffff:a.b.c.d`), exactly as they sit in packets.

/// Version of the map layouts. A daemon re-attaches only to a pinned data plane of its own
/// version (pins live under `<pin_path>/v<VERSION>`); bump it whenever a map changes.
/// 2: more counters (`LB_STATS`), and TCP flows count as open only once established.
/// 3: `LB_ADDRS` classifies by destination; egress is cached per CPU (`LB_EGRESS_CACHE`).
/// 4: `FrontendInfo` holds several SNAT addresses and the SNAT port range.
pub const LAYOUT_VERSION: u32 = 4;

/// Maps that hold state across a daemon restart (pinned when a pin path is set).
pub const PINNED_MAPS: &[&str] = &[
    MAP_FRONTENDS,
    MAP_BACKENDS,
    MAP_RING,
    MAP_SERVERS,
    MAP_CONNTRACK,
    MAP_SNAT,
    MAP_TX_PORTS,
    MAP_STATS,
    MAP_BACKEND_SERVERS,
    MAP_SERVER_ACTIVE,
    MAP_RR,
    MAP_STICKY,
    MAP_SERVER_STATS,
    MAP_FRONTEND_STATS,
    MAP_ADDRS,
];

/// Frontend lookup: [`FrontendKey`] -> [`FrontendInfo`].
pub const MAP_FRONTENDS: &str = "LB_FRONTENDS";
/// Per-backend metadata, indexed by backend id: [`BackendInfo`].
pub const MAP_BACKENDS: &str = "LB_BACKENDS";
/// Selection tables of all backends: slot `backend_id * RING_STRIDE + i` holds a server id.
pub const MAP_RING: &str = "LB_RING";
/// Servers, indexed by server id: [`ServerInfo`].
pub const MAP_SERVERS: &str = "LB_SERVERS";
/// Connection tracking, client side: client [`FlowKey`] -> [`NatEntry`] towards the server.
pub const MAP_CONNTRACK: &str = "LB_CONNTRACK";
/// Reverse NAT, server side: server [`FlowKey`] -> [`NatEntry`] back towards the client.
/// An entry here also reserves its SNAT port.
pub const MAP_SNAT: &str = "LB_SNAT";
/// Egress interfaces for XDP_REDIRECT, keyed by ifindex.
pub const MAP_TX_PORTS: &str = "LB_TX_PORTS";
/// Per-CPU counters, indexed by [`crate::stats::Stat`].
pub const MAP_STATS: &str = "LB_STATS";
/// Server ids of each backend half, for methods that scan servers (leastconn, first): slot
/// `(backend_id * 2 + half) * MAX_SERVERS_PER_BACKEND + i`.
pub const MAP_BACKEND_SERVERS: &str = "LB_BACKEND_SRV";
/// Open flows per server (shared, updated atomically), indexed by server id.
pub const MAP_SERVER_ACTIVE: &str = "LB_SRV_ACTIVE";
/// Per-CPU round-robin position of each backend (also rotates leastconn ties).
pub const MAP_RR: &str = "LB_RR";
/// Source-IP stickiness: [`StickyKey`] -> [`StickyEntry`].
pub const MAP_STICKY: &str = "LB_STICKY";
/// Per-CPU [`TrafficStats`] per server id.
pub const MAP_SERVER_STATS: &str = "LB_SRV_STATS";
/// Per-CPU [`TrafficStats`] per frontend id.
pub const MAP_FRONTEND_STATS: &str = "LB_FE_STATS";
/// The addresses lb answers for: [`Addr`] -> `ADDR_*` bits. The first lookup of every
/// packet, so traffic for anything else costs one hash lookup.
pub const MAP_ADDRS: &str = "LB_ADDRS";
/// Per-CPU cache of FIB answers: [`EgressEntry`] in slot [`egress_slot`].
pub const MAP_EGRESS_CACHE: &str = "LB_EGRESS_CACHE";
/// Slot 0: the routing generation. The daemon bumps it on every neighbour, route or link
/// change, which invalidates every cached egress at once.
pub const MAP_EGRESS_GENERATION: &str = "LB_EGRESS_GEN";

/// The XDP program that balances.
pub const PROG_LB: &str = "lb_xdp";
/// A program that only returns XDP_PASS: attached to the far end of a veth so that frames
/// redirected into it are not dropped.
pub const PROG_PASS: &str = "lb_xdp_pass";

/// Benchmark-only programs and maps (`cargo xtask bench`): never attached by `lb run`.
pub const PROG_BENCH_DROP: &str = "bench_drop";
pub const PROG_BENCH_PARSE_TX: &str = "bench_parse_tx";
pub const PROG_BENCH_RESTORE: &str = "bench_restore";
/// Floors: what the established path cannot avoid (parse, then the destination and flow
/// lookups), and what a new flow cannot (one insert into each flow table, or into the
/// conntrack table only, under a fresh key per run). Also how the bench fills the tables.
pub const PROG_BENCH_FLOOR_LOOKUPS: &str = "bench_floor_lookups";
pub const PROG_BENCH_FLOOR_INSERTS: &str = "bench_floor_inserts";
pub const PROG_BENCH_FLOOR_INSERT: &str = "bench_floor_insert";
/// One [`BenchTemplate`]: the frame `bench_restore` writes back before each run.
pub const MAP_BENCH_TEMPLATE: &str = "BENCH_TEMPLATE";
/// Slot 0: the program `bench_restore` tail-calls (the balancer, or nothing to time the
/// wrapper alone).
pub const MAP_BENCH_JUMP: &str = "BENCH_JUMP";
/// Per-CPU iteration counter, mixed into the source port for new-flow runs.
pub const MAP_BENCH_COUNTER: &str = "BENCH_COUNTER";
/// Bytes of header `bench_restore` restores: Ethernet + IPv4 + TCP, all a NAT rewrite touches.
pub const BENCH_RESTORE_LEN: u32 =
    (crate::wire::ETH_HLEN + crate::wire::IPV4_HLEN + crate::wire::TCP_HLEN) as u32;
/// `BenchTemplate::mode`: make every iteration a new flow.
pub const BENCH_MODE_NEW_FLOW: u32 = 1;
/// `BenchTemplate::mode` for `bench_generate`: cycle through
/// `BENCH_FLOW_ADDRS * BENCH_FLOW_PORTS` source (address, port) tuples.
pub const BENCH_MODE_MANY_FLOWS: u32 = 2;
/// Source addresses of the many-flows mode: the template's low address byte plus 0..16.
pub const BENCH_FLOW_ADDRS: u32 = 16;
/// Source ports of the many-flows mode, from `BENCH_FLOW_PORT_MIN`.
pub const BENCH_FLOW_PORTS: u32 = 62_500;
pub const BENCH_FLOW_PORT_MIN: u32 = 1024;
/// The systems bench's packet generator (XDP live frames): writes the template (an IPv4 UDP
/// frame) over every frame and transmits it.
pub const PROG_BENCH_GENERATE: &str = "bench_generate";
/// The systems bench's server end: counts and drops UDP to [`BENCH_SINK_PORT`], passes the rest.
pub const PROG_BENCH_SINK: &str = "bench_sink";
/// Per-CPU u64: frames `bench_sink` dropped.
pub const MAP_BENCH_SINK: &str = "BENCH_SINK";
pub const BENCH_SINK_PORT: u16 = 9;

pub const MAX_FRONTENDS: u32 = 1024;
pub const MAX_BACKENDS: u32 = 64;
/// A backend has at most this many servers (the product's limit).
pub const MAX_SERVERS_PER_BACKEND: u32 = 500;
pub const MAX_SERVERS: u32 = 8192;
/// Default and largest selection table size: a prime, so Maglev permutations cover it.
pub const RING_SIZE_DEFAULT: u32 = 65537;
pub const RING_STRIDE: u32 = RING_SIZE_DEFAULT;
/// Default connection-tracking capacity (flows); `[dataplane] conntrack_size` changes it.
pub const CONNTRACK_ENTRIES: u32 = 1 << 20;
pub const STICKY_ENTRIES: u32 = 1 << 18;
pub const MAX_TX_PORTS: u32 = 256;

/// The default SNAT port range (`snat_ports`), inclusive: every port but the privileged
/// ones. A frontend's range and addresses are in its [`FrontendInfo`]; each (SNAT address,
/// port) pair can be held by one flow per server address, server port and protocol at a
/// time (each flow's reverse entry holds one).
pub const DEFAULT_SNAT_PORT_MIN: u16 = 1024;
pub const DEFAULT_SNAT_PORT_MAX: u16 = 65535;
/// Most SNAT addresses a frontend has (`snat_addresses`).
pub const MAX_SNAT_ADDRS: usize = 8;
/// How many (address, port) pairs a new flow tries before it is dropped as "SNAT ports
/// exhausted".
pub const SNAT_PORT_RETRIES: u32 = 8;
/// A TCP flow that never completed its handshake (still in it, or closed from it, as a
/// spoofed SYN the server reset) idle this long gives its SNAT port up to a new SYN that
/// finds the port taken: the client has not completed the handshake within TCP's initial
/// retransmission timeout (1 s, RFC 6298), so it is a spoofed source, or a client that
/// retransmits its SYN anyway. Flows that were established never give their port up.
pub const SYN_RECLAIM_NS: u64 = 1_000_000_000;

/// `LB_ADDRS`: a frontend's address (its flows' client-side packets arrive to it).
pub const ADDR_VIP: u32 = 1;
/// `LB_ADDRS`: an SNAT address (servers' replies arrive to it).
pub const ADDR_SNAT: u32 = 2;

/// Slots of the per-CPU egress cache (a power of two): direct-mapped by destination.
pub const EGRESS_CACHE_SLOTS: u32 = 4096;
/// A cached egress is used this long at most before the FIB is asked again, even without a
/// routing change seen (a safety net for a missed netlink event).
pub const EGRESS_TTL_NS: u64 = 1_000_000_000;

/// The egress cache slot of a destination reached from `ingress_ifindex`.
#[inline(always)]
pub fn egress_slot(dst: &Addr, ingress_ifindex: u32) -> u32 {
    let w = |i: usize| u32::from_ne_bytes([dst[i], dst[i + 1], dst[i + 2], dst[i + 3]]);
    // Fibonacci hashing: the multiply spreads the low bits that differ between neighbours.
    let h = (w(0) ^ w(4) ^ w(8) ^ w(12) ^ ingress_ifindex).wrapping_mul(0x9e37_79b1);
    (h >> 20) & (EGRESS_CACHE_SLOTS - 1)
}

/// The frontend is served by the userspace proxy: XDP passes its packets to the kernel.
pub const FRONTEND_FLAG_USERSPACE: u32 = 1;
/// L2 direct server return: only the destination MAC is rewritten; replies bypass lb.
pub const FRONTEND_FLAG_DSR: u32 = 2;
/// A DSR frontend on a maglev backend behind ECMP: a mid-stream TCP packet with no flow (its
/// node failed, or ECMP moved it here) is balanced as a new flow would be, since every node
/// computes the same table, and tracked as established.
pub const FRONTEND_FLAG_STATELESS_FALLBACK: u32 = 4;

/// `BackendInfo::method`.
pub const METHOD_MAGLEV: u32 = 0;
pub const METHOD_SOURCE: u32 = 1;
pub const METHOD_ROUNDROBIN: u32 = 2;
pub const METHOD_LEASTCONN: u32 = 3;
pub const METHOD_FIRST: u32 = 4;

/// `NatEntry::state`. A TCP flow goes SYN_SEEN (the client's SYN) -> SYN_RECV (the server's
/// SYN-ACK) -> ESTABLISHED (the client's ACK; in DSR mode, where lb never sees the server's
/// answers, the client's first ACK) -> CLOSING (a FIN or RST).
pub const FLOW_SYN_SEEN: u8 = 1;
pub const FLOW_ESTABLISHED: u8 = 2;
pub const FLOW_CLOSING: u8 = 3;
pub const FLOW_UDP: u8 = 4;
pub const FLOW_SYN_RECV: u8 = 5;

/// `NatEntry::flags`: a reverse (server-side) entry.
pub const ENTRY_REVERSE: u8 = 1;
/// The flow counts in its server's active connections: a UDP flow from its first packet, a
/// TCP flow from its establishment until it closes.
pub const ENTRY_COUNTED: u8 = 2;
/// Direct server return: no NAT, only the MAC changes.
pub const ENTRY_DSR: u8 = 4;
/// The flow's backend has source-IP stickiness.
pub const ENTRY_STICKY: u8 = 8;
/// The TCP connection on this tuple completed its handshake (set at establishment, kept
/// through closing, cleared when the tuple is reused for a new connection).
pub const ENTRY_ESTABLISHED: u8 = 16;

/// `ServerInfo::flags`: the server is in its backend (cleared when it is removed).
pub const SERVER_PRESENT: u16 = 1;
/// `ServerInfo::flags`: the server is DOWN and its backend resets established flows: the
/// next client packet of each is answered with a TCP RST (UDP flows are re-balanced).
pub const SERVER_RESET_FLOWS: u16 = 2;
/// `ServerInfo::flags`: the server fails its health check (its weight is 0 for that). XDP
/// ignores it; a daemon taking over the pinned maps reads it, so health survives restarts.
pub const SERVER_CHECK_DOWN: u16 = 4;
/// Longest name of a frontend or backend (and load balancer id).
pub const NAME_LEN: usize = 64;

pub type Addr = [u8; 16];

/// IPv4 in the 16-byte form used in keys: `::ffff:a.b.c.d`.
#[inline(always)]
pub const fn v4_mapped(a: [u8; 4]) -> Addr {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

#[inline(always)]
pub const fn is_v4_mapped(a: &Addr) -> bool {
    a[0] == 0
        && a[1] == 0
        && a[2] == 0
        && a[3] == 0
        && a[4] == 0
        && a[5] == 0
        && a[6] == 0
        && a[7] == 0
        && a[8] == 0
        && a[9] == 0
        && a[10] == 0xff
        && a[11] == 0xff
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FrontendKey {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// 8-aligned (its size, 152, needs no padding for it), like every map type holding an
/// `Addr`.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrontendInfo {
    pub backend_id: u32,
    /// `FRONTEND_FLAG_*`.
    pub flags: u32,
    /// Source addresses of NATed packets towards servers: the first `snat_count` (1 to
    /// [`MAX_SNAT_ADDRS`] for a full-NAT frontend; 0 otherwise).
    pub snat_addrs: [Addr; MAX_SNAT_ADDRS],
    /// Index into the per-frontend counters.
    pub frontend_id: u32,
    /// SNAT source ports, inclusive, in host byte order: each address has all of them.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    pub snat_count: u32,
    pub _pad: u32,
}

impl FrontendInfo {
    /// (address, port) pairs a flow to one server port may be given: addresses x ports.
    pub const fn snat_space(&self) -> u32 {
        let ports = (self.snat_port_max as u32 + 1).saturating_sub(self.snat_port_min as u32);
        ports * self.snat_count
    }
}

/// A backend. Its selection table and server list are double-buffered: userspace fills the
/// inactive half, then flips `active`, so no packet sees a half-written table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendInfo {
    /// `METHOD_*`.
    pub method: u32,
    /// The live half, 0 or 1.
    pub active: u32,
    /// Slots in use in each half's table; 0 means no server takes new flows.
    pub ring_size: [u32; 2],
    /// Servers in each half's list (leastconn, first).
    pub server_count: [u32; 2],
    /// Source-IP stickiness TTL in seconds; 0 = off.
    pub sticky_ttl_s: u32,
    pub _pad: u32,
}

impl BackendInfo {
    /// First `LB_RING` slot of a half.
    #[inline(always)]
    pub const fn ring_base(backend_id: u32, half: u32) -> u32 {
        (backend_id * 2 + half) * RING_STRIDE
    }

    /// First `LB_BACKEND_SRV` slot of a half.
    #[inline(always)]
    pub const fn list_base(backend_id: u32, half: u32) -> u32 {
        (backend_id * 2 + half) * MAX_SERVERS_PER_BACKEND
    }
}

/// 8-aligned (its size is 32, no padding added), like every map type holding an `Addr`.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerInfo {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    /// `SERVER_*`.
    pub flags: u16,
    pub weight: u32,
    /// Most open flows `first` sends it; 0 = no limit.
    pub max_conn: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StickyKey {
    pub backend_id: u32,
    pub addr: Addr,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StickyEntry {
    pub server_id: u32,
    pub _pad: u32,
    pub last_seen_ns: u64,
}

/// Traffic of one frontend or server. "in" is client -> server, "out" server -> client.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficStats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub new_flows: u64,
    pub drop_no_server: u64,
    pub drop_snat_exhausted: u64,
    pub drop_other: u64,
}

/// A flow's 5-tuple as seen on the wire in one direction. 8-aligned (no padding added: its
/// size is 40), so XDP moves it, and its addresses, in 8-byte words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// What a tracked packet is rewritten to: the new 4-tuple. The same shape serves both
/// directions, so one rewrite routine handles requests and replies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatEntry {
    pub src: Addr,
    pub dst: Addr,
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    pub server_id: u32,
    /// `bpf_ktime_get_ns` of the last packet, refreshed at most once a second.
    pub last_seen_ns: u64,
    pub frontend_id: u16,
    pub backend_id: u16,
    /// `FLOW_*` (kept in the client-side entry).
    pub state: u8,
    /// `ENTRY_*`.
    pub flags: u8,
    pub _pad: u16,
}

impl NatEntry {
    /// The key under which packets that match this rewrite's *result* travel back.
    #[inline(always)]
    pub const fn reply_key(&self, proto: u8) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto,
            _pad: [0; 3],
        }
    }
}

/// A FIB answer cached by one CPU: frames to `dst` that arrived on `ingress_ifindex` leave
/// by `ifindex` with these MAC addresses, while `generation` is current and `filled_ns` is
/// younger than [`EGRESS_TTL_NS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressEntry {
    pub dst: Addr,
    pub ingress_ifindex: u32,
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub generation: u32,
    pub filled_ns: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchTemplate {
    /// 0, or [`BENCH_MODE_NEW_FLOW`].
    pub mode: u32,
    pub _pad: u32,
    pub frame: [u8; 64],
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::BenchTemplate {}
    // SAFETY: all of these are repr(C), Copy, and have explicit padding fields, so every byte
    // pattern is a valid value.
    unsafe impl aya::Pod for super::FrontendKey {}
    unsafe impl aya::Pod for super::FrontendInfo {}
    unsafe impl aya::Pod for super::BackendInfo {}
    unsafe impl aya::Pod for super::ServerInfo {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::NatEntry {}
    unsafe impl aya::Pod for super::StickyKey {}
    unsafe impl aya::Pod for super::StickyEntry {}
    unsafe impl aya::Pod for super::TrafficStats {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_slots_stay_in_the_cache_and_spread() {
        let mut seen = [false; EGRESS_CACHE_SLOTS as usize];
        for i in 0..1024u32 {
            let mut dst = [0u8; 16];
            dst[10] = 0xff;
            dst[11] = 0xff;
            dst[12..].copy_from_slice(&(0xc612_0000 + i).to_be_bytes());
            let slot = egress_slot(&dst, 3);
            assert!(slot < EGRESS_CACHE_SLOTS);
            seen[slot as usize] = true;
        }
        // 1024 consecutive addresses take most of 4096 slots' share, not a few.
        assert!(seen.iter().filter(|s| **s).count() > 800);
    }
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<FrontendKey>(), 16 + 2 + 1 + 1);
        assert_eq!(
            size_of::<FrontendInfo>(),
            4 + 4 + 16 * MAX_SNAT_ADDRS + 4 + 2 + 2 + 4 + 4
        );
        assert_eq!(size_of::<BackendInfo>(), 4 + 4 + 8 + 8 + 4 + 4);
        assert_eq!(size_of::<ServerInfo>(), 16 + 2 + 2 + 4 + 4 + 4);
        assert_eq!(size_of::<FlowKey>(), 16 + 16 + 2 + 2 + 1 + 3);
        assert_eq!(
            size_of::<NatEntry>(),
            16 + 16 + 2 + 2 + 4 + 8 + 2 + 2 + 1 + 1 + 2
        );
        assert_eq!(size_of::<StickyKey>(), 4 + 16);
        assert_eq!(size_of::<EgressEntry>(), 16 + 4 + 4 + 6 + 6 + 4 + 8);
        assert_eq!(size_of::<StickyEntry>(), 4 + 4 + 8);
        assert_eq!(size_of::<TrafficStats>(), 8 * 8);
    }

    #[test]
    fn reply_key_reverses_the_rewrite() {
        let e = NatEntry {
            src: v4_mapped([198, 18, 2, 1]),
            dst: v4_mapped([198, 18, 11, 2]),
            sport: 12345u16.to_be(),
            dport: 80u16.to_be(),
            ..Default::default()
        };
        let k = e.reply_key(crate::wire::IPPROTO_TCP);
        assert_eq!(k.src, e.dst);
        assert_eq!(k.dst, e.src);
        assert_eq!(k.sport, e.dport);
        assert_eq!(k.dport, e.sport);
        assert!(is_v4_mapped(&k.src));
    }
}
