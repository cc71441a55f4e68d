//! BPF_PROG_TEST_RUN fixtures against the real XDP object: input frame, expected output
//! frame and verdict, and the counter that explains it.
//!
//! The program runs with a real ingress interface (in a namespace this test creates) whose
//! routes and permanent neighbour entries make `bpf_fib_lookup` succeed, so rewritten frames
//! carry the MAC addresses the kernel would use and leave by XDP_REDIRECT.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::{
    maps::{HashMap as BpfHashMap, MapData},
    programs::{TestRun, TestRunOptions},
};
use lb_common::{
    maps::{
        DEFAULT_SNAT_PORT_MAX, DEFAULT_SNAT_PORT_MIN, FlowKey, MAP_CONNTRACK, NatEntry, PROG_LB,
    },
    wire::TCP_SYN,
};
use lb_tests::{
    fixture::{CLIENT_MAC, CLIENT_SIDE_MAC, SERVER_MAC, SERVER_SIDE_MAC, fixture_namespace},
    packets::{Frame, L4, TCP_SYN_ACK, checksums_valid, icmp_error},
    require_root,
};
use lb_userspace::{
    config::Config,
    dataplane::{Dataplane, plan::addr16},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
const SNAT: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 11, 2);
/// The IPv4 frontends' `snat_ports` (the IPv6 one has the default range): small enough that
/// the reclaim fixture fills it quickly.
const SNAT_PORT_MIN: u16 = 10000;
const SNAT_PORT_MAX: u16 = 32767;
const SNAT_PORTS: u32 = SNAT_PORT_MAX as u32 - SNAT_PORT_MIN as u32 + 1;
/// The second SNAT address of the "two-snat" frontend, and its range.
const SNAT2: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
const TWO_SNAT_MIN: u16 = 20000;
const TWO_SNAT_PORTS: u16 = 16;
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x100, 0, 0, 0, 1);
const SNAT6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 1);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x11, 0, 0, 0, 2);

const CONFIG: &str = r#"
[[frontends]]
name = "v4"
mode = "tcp"
address = "198.18.100.1"
binds = [{ port = 80 }, { port = 53, protocol = "udp" }]
default_backend = "v4-servers"
interfaces = ["fxc", "fxs"]
snat_address = "198.18.2.1"
snat_ports = "10000-32767"

[[frontends]]
name = "v6"
mode = "tcp"
address = "2001:2:0:100::1"
binds = [{ port = 80 }]
default_backend = "v6-servers"
interfaces = ["fxc", "fxs"]
snat_address = "2001:2:0:2::1"

[[frontends]]
name = "one-arm"
mode = "tcp"
address = "198.18.100.2"
binds = [{ port = 80 }]
default_backend = "one-arm-servers"
interfaces = ["fxc"]
snat_address = "198.18.2.1"
snat_ports = "10000-32767"

[[frontends]]
name = "sticky"
mode = "tcp"
address = "198.18.100.3"
binds = [{ port = 80 }]
default_backend = "sticky-servers"
interfaces = ["fxc", "fxs"]
snat_address = "198.18.2.1"
snat_ports = "10000-32767"

[[frontends]]
name = "two-snat"
mode = "tcp"
address = "198.18.100.4"
binds = [{ port = 80 }, { port = 53, protocol = "udp" }]
default_backend = "two-snat-servers"
interfaces = ["fxc", "fxs"]
snat_addresses = ["198.18.2.1", "198.18.2.2"]
snat_ports = "20000-20015"

[[backends]]
name = "sticky-servers"
mode = "tcp"
balancing_method = "roundrobin"
port = 8080
servers = { type = "addresses", addresses = [{ address = "198.18.11.2" }, { address = "198.18.11.3" }] }
options = { sticky_session = { type = "source_ip", ttl = "5m" } }

[[backends]]
name = "one-arm-servers"
mode = "tcp"
balancing_method = "maglev"
port = 8080
servers = { type = "addresses", addresses = [{ address = "198.18.0.3" }] }

[[backends]]
name = "v4-servers"
mode = "tcp"
balancing_method = "maglev"
port = 8080
servers = { type = "addresses", addresses = [{ address = "198.18.11.2" }] }

[[backends]]
name = "v6-servers"
mode = "tcp"
balancing_method = "maglev"
port = 8080
servers = { type = "addresses", addresses = [{ address = "2001:2:0:11::2" }] }

[[backends]]
name = "two-snat-servers"
mode = "tcp"
balancing_method = "maglev"
port = 8081
servers = { type = "addresses", addresses = [{ address = "198.18.11.2" }] }
"#;

struct Fixture {
    dataplane: Dataplane,
    client_ifindex: u32,
    server_ifindex: u32,
}

impl Fixture {
    /// Run the program on `frame` as if it arrived on `ifindex`; returns verdict and output.
    fn run(&mut self, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
        let ctx: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        let mut out = vec![0u8; frame.len() + 256];
        let prog = self.dataplane.program(PROG_LB).unwrap();
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    fn counter(&self, label: &str) -> u64 {
        self.dataplane
            .stats()
            .unwrap()
            .into_iter()
            .find(|(l, _)| *l == label)
            .unwrap_or_else(|| panic!("no counter {label}"))
            .1
    }

    fn tracked(&mut self, key: &FlowKey) -> Option<NatEntry> {
        let map = self.dataplane.ebpf_mut().map(MAP_CONNTRACK).unwrap();
        let ct: BpfHashMap<&MapData, FlowKey, NatEntry> = BpfHashMap::try_from(map).unwrap();
        ct.get(key, 0).ok()
    }
}

fn key(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, proto: u8) -> FlowKey {
    FlowKey {
        src: addr16(src),
        dst: addr16(dst),
        sport: sport.to_be(),
        dport: dport.to_be(),
        proto,
        _pad: [0; 3],
    }
}

/// Runs the fixture body inside a fresh [`fixture_namespace`] with the config loaded.
fn with_fixture(test: &'static str, body: impl FnOnce(&mut Fixture) + Send + 'static) {
    with_sized_fixture(test, lb_common::maps::CONNTRACK_ENTRIES, body)
}

fn with_sized_fixture(
    test: &'static str,
    conntrack_size: u32,
    body: impl FnOnce(&mut Fixture) + Send + 'static,
) {
    if !require_root(test) {
        return;
    }
    let ns = fixture_namespace(&format!("lbfx{}-{test}", std::process::id())).unwrap();
    let handle = ns
        .run(move || {
            let mut dataplane = Dataplane::load_with(conntrack_size).unwrap();
            let client_ifindex = nix::net::if_::if_nametoindex("fxc").unwrap();
            let server_ifindex = nix::net::if_::if_nametoindex("fxs").unwrap();
            dataplane.add_tx_port(client_ifindex).unwrap();
            dataplane.add_tx_port(server_ifindex).unwrap();
            let config = Config::parse("fixture.toml", CONFIG).unwrap();
            dataplane.apply_config(&config).unwrap();
            body(&mut Fixture {
                dataplane,
                client_ifindex,
                server_ifindex,
            });
        })
        .unwrap();
    if let Err(panic) = handle.join() {
        drop(ns);
        std::panic::resume_unwind(panic);
    }
}

fn client_frame(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, l4: L4) -> Frame {
    Frame {
        dst_mac: CLIENT_SIDE_MAC,
        src_mac: CLIENT_MAC,
        vlan: None,
        src,
        dst,
        sport,
        dport,
        l4,
    }
}

/// A new flow is NATed to the server, and the server's reply back to the client; both
/// frames come out byte for byte as expected, checksums included.
fn nat_round_trip(
    fx: &mut Fixture,
    client: IpAddr,
    vip: IpAddr,
    snat: IpAddr,
    server: IpAddr,
    l4: L4,
    vport: u16,
) {
    let proto = if matches!(l4, L4::Tcp { .. }) { 6 } else { 17 };
    let payload = b"hello";
    let request = client_frame(client, vip, 40000, vport, l4);
    let new_flows = fx.counter("flow_new");
    let (verdict, out) = fx.run(&request.build(payload), fx.client_ifindex);
    assert_eq!(
        verdict, XDP_REDIRECT,
        "a new flow to a VIP leaves by redirect"
    );
    assert_eq!(fx.counter("flow_new"), new_flows + 1);

    let tracked = fx
        .tracked(&key(client, vip, 40000, vport, proto))
        .expect("the flow is tracked");
    let snat_port = u16::from_be(tracked.sport);
    let range = if client.is_ipv4() {
        SNAT_PORT_MIN..=SNAT_PORT_MAX
    } else {
        DEFAULT_SNAT_PORT_MIN..=DEFAULT_SNAT_PORT_MAX
    };
    assert!(range.contains(&snat_port), "{snat_port} in {range:?}");
    let expected = Frame {
        dst_mac: SERVER_MAC,
        src_mac: SERVER_SIDE_MAC,
        src: snat,
        dst: server,
        sport: snat_port,
        dport: 8080,
        ..request
    }
    .build(payload);
    assert_eq!(out, expected, "request rewritten to SNAT -> server:8080");
    assert!(
        checksums_valid(&out),
        "IP and L4 checksums are valid after NAT"
    );

    // The same flow again follows the tracked entry.
    let (verdict, again) = fx.run(&request.build(payload), fx.client_ifindex);
    assert_eq!((verdict, &again), (XDP_REDIRECT, &expected));

    let reply_l4 = match l4 {
        L4::Tcp { .. } => L4::Tcp { flags: TCP_SYN_ACK },
        L4::Udp => L4::Udp,
    };
    let reply = Frame {
        dst_mac: SERVER_SIDE_MAC,
        src_mac: SERVER_MAC,
        vlan: None,
        src: server,
        dst: snat,
        sport: 8080,
        dport: snat_port,
        l4: reply_l4,
    };
    let replies = fx.counter("nat_reply");
    let (verdict, out) = fx.run(&reply.build(b"world"), fx.server_ifindex);
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(fx.counter("nat_reply"), replies + 1);
    let expected = Frame {
        dst_mac: CLIENT_MAC,
        src_mac: CLIENT_SIDE_MAC,
        src: vip,
        dst: client,
        sport: vport,
        dport: 40000,
        ..reply
    }
    .build(b"world");
    assert_eq!(out, expected, "reply rewritten to VIP -> client");
    assert!(checksums_valid(&out));
}

#[test]
fn tcp_syn_is_natted_and_reply_reverse_translated() {
    with_fixture("tcp_nat", |fx| {
        nat_round_trip(
            fx,
            CLIENT.into(),
            VIP.into(),
            SNAT.into(),
            SERVER.into(),
            L4::Tcp { flags: TCP_SYN },
            80,
        );
    });
}

#[test]
fn udp_is_natted_and_reply_reverse_translated() {
    with_fixture("udp_nat", |fx| {
        nat_round_trip(
            fx,
            CLIENT.into(),
            VIP.into(),
            SNAT.into(),
            SERVER.into(),
            L4::Udp,
            53,
        );
    });
}

#[test]
fn ipv6_tcp_is_natted_and_reply_reverse_translated() {
    with_fixture("v6_nat", |fx| {
        nat_round_trip(
            fx,
            CLIENT6.into(),
            VIP6.into(),
            SNAT6.into(),
            SERVER6.into(),
            L4::Tcp { flags: TCP_SYN },
            80,
        );
    });
}

#[test]
fn server_behind_the_ingress_interface_gets_xdp_tx() {
    with_fixture("one_arm", |fx| {
        let request = client_frame(
            CLIENT.into(),
            Ipv4Addr::new(198, 18, 100, 2).into(),
            40004,
            80,
            L4::Tcp { flags: TCP_SYN },
        );
        let (verdict, out) = fx.run(&request.build(b""), fx.client_ifindex);
        assert_eq!(verdict, XDP_TX, "egress on the ingress interface is XDP_TX");
        assert_eq!(&out[..6], &[0x02, 0, 0, 0, 0, 0xc3], "to the server's MAC");
        assert_eq!(&out[6..12], &CLIENT_SIDE_MAC);
        assert!(checksums_valid(&out));
    });
}

#[test]
fn vlan_tagged_syn_is_natted_keeping_its_tag() {
    with_fixture("vlan", |fx| {
        let request = Frame {
            vlan: Some(42),
            ..client_frame(
                CLIENT.into(),
                VIP.into(),
                40001,
                80,
                L4::Tcp { flags: TCP_SYN },
            )
        };
        let (verdict, out) = fx.run(&request.build(b""), fx.client_ifindex);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(&out[12..16], &[0x81, 0x00, 0, 42], "the 802.1Q tag is kept");
        assert!(checksums_valid(&out));
        assert_eq!(&out[16 + 2 + 16..16 + 2 + 20], &SERVER.octets());
    });
}

#[test]
fn non_vip_packets_pass_byte_identical() {
    with_fixture("pass", |fx| {
        let cases = [
            client_frame(
                CLIENT.into(),
                Ipv4Addr::new(198, 18, 0, 1).into(),
                40000,
                80,
                L4::Tcp { flags: TCP_SYN },
            ),
            client_frame(
                CLIENT.into(),
                VIP.into(),
                40000,
                81,
                L4::Tcp { flags: TCP_SYN },
            ),
            client_frame(CLIENT.into(), VIP.into(), 40000, 80, L4::Udp),
            client_frame(
                CLIENT6.into(),
                "2001:2::1".parse().unwrap(),
                40000,
                80,
                L4::Tcp { flags: TCP_SYN },
            ),
            client_frame(CLIENT6.into(), VIP6.into(), 40000, 80, L4::Udp),
        ];
        let before = fx.counter("pass_not_vip");
        for frame in cases {
            let input = frame.build(b"payload");
            let (verdict, out) = fx.run(&input, fx.client_ifindex);
            assert_eq!(verdict, XDP_PASS, "{frame:?}");
            assert_eq!(out, input, "passed frames are untouched: {frame:?}");
        }
        assert_eq!(fx.counter("pass_not_vip"), before + 5);

        // ARP is not IP: passed and counted.
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&CLIENT_MAC);
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.extend_from_slice(&[0u8; 28]);
        let before = fx.counter("pass_not_ip");
        assert_eq!(fx.run(&arp, fx.client_ifindex), (XDP_PASS, arp.clone()));
        assert_eq!(fx.counter("pass_not_ip"), before + 1);
    });
}

#[test]
fn mid_stream_tcp_without_state_is_dropped_and_counted() {
    with_fixture("midstream", |fx| {
        let ack = client_frame(
            CLIENT.into(),
            VIP.into(),
            40002,
            80,
            L4::Tcp { flags: 0x10 },
        );
        let before = fx.counter("drop_tcp_no_flow");
        let (verdict, _) = fx.run(&ack.build(b""), fx.client_ifindex);
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(fx.counter("drop_tcp_no_flow"), before + 1);
    });
}

#[test]
fn ipv4_fragments_pass_and_are_counted() {
    with_fixture("frag", |fx| {
        let mut frame = client_frame(CLIENT.into(), VIP.into(), 40000, 80, L4::Udp).build(b"x");
        frame[14 + 6] |= 0x20; // more fragments
        let before = fx.counter("pass_fragment");
        assert_eq!(fx.run(&frame, fx.client_ifindex), (XDP_PASS, frame.clone()));
        assert_eq!(fx.counter("pass_fragment"), before + 1);
    });
}

#[test]
fn ip_options_are_skipped_by_ihl() {
    with_fixture("ihl", |fx| {
        // Insert 4 bytes of options (NOPs + EOL) into a SYN's IPv4 header.
        let mut frame = client_frame(
            CLIENT.into(),
            VIP.into(),
            40003,
            80,
            L4::Tcp { flags: TCP_SYN },
        )
        .build(b"");
        frame.splice(34..34, [1, 1, 1, 0]);
        frame[14] = 0x46;
        let total = u16::from_be_bytes([frame[16], frame[17]]) + 4;
        frame[16..18].copy_from_slice(&total.to_be_bytes());
        frame[24..26].copy_from_slice(&[0, 0]);
        let c = lb_common::checksum::checksum(0, &frame[14..38]);
        frame[24..26].copy_from_slice(&c);
        let (verdict, out) = fx.run(&frame, fx.client_ifindex);
        assert_eq!(verdict, XDP_REDIRECT);
        assert!(checksums_valid(&out));
        assert_eq!(
            &out[38 + 2..38 + 4],
            &8080u16.to_be_bytes(),
            "TCP found after the options"
        );
    });
}

#[test]
fn truncated_headers_pass_without_crash_and_are_counted() {
    with_fixture("trunc", |fx| {
        let tcp = client_frame(
            CLIENT.into(),
            VIP.into(),
            40000,
            80,
            L4::Tcp { flags: TCP_SYN },
        )
        .build(b"");
        let udp = client_frame(CLIENT.into(), VIP.into(), 40000, 53, L4::Udp).build(b"");
        let v6 = client_frame(
            CLIENT6.into(),
            VIP6.into(),
            40000,
            80,
            L4::Tcp { flags: TCP_SYN },
        )
        .build(b"");
        let vlan = Frame {
            vlan: Some(7),
            ..client_frame(
                CLIENT.into(),
                VIP.into(),
                40000,
                80,
                L4::Tcp { flags: TCP_SYN },
            )
        }
        .build(b"");
        // Cut inside the 802.1Q tag (the kernel refuses test frames shorter than an
        // Ethernet header), inside IPv4/IPv6, and inside TCP/UDP. A cut inside the transport
        // header with the IP length still claiming all of it is an inconsistent packet
        // (`inconsistent_packets_are_dropped_before_any_lookup_and_counted`); here the IP
        // header says where the packet ends.
        let cuts: Vec<Vec<u8>> = vec![
            vlan[..16].to_vec(),
            tcp[..14 + 10].to_vec(),
            ip_length_to_frame(&tcp[..34 + 12]),
            ip_length_to_frame(&udp[..34 + 4]),
            v6[..14 + 30].to_vec(),
            ip_length_to_frame(&v6[..54 + 10]),
        ];
        let before = fx.counter("pass_truncated");
        for cut in &cuts {
            let (verdict, out) = fx.run(cut, fx.client_ifindex);
            assert_eq!(verdict, XDP_PASS, "cut at {} bytes", cut.len());
            assert_eq!(&out, cut);
        }
        assert_eq!(fx.counter("pass_truncated"), before + cuts.len() as u64);
    });
}

/// `frame` (untagged) with its IPv4 total length or IPv6 payload length set to end where the
/// frame ends (and the IPv4 header checksum updated).
fn ip_length_to_frame(frame: &[u8]) -> Vec<u8> {
    let mut frame = frame.to_vec();
    if frame[12..14] == [0x86, 0xdd] {
        let payload = (frame.len() - 54) as u16;
        frame[18..20].copy_from_slice(&payload.to_be_bytes());
    } else {
        let total = (frame.len() - 14) as u16;
        frame[16..18].copy_from_slice(&total.to_be_bytes());
        fix_ipv4_checksum(&mut frame);
    }
    frame
}

fn fix_ipv4_checksum(frame: &mut [u8]) {
    frame[24..26].copy_from_slice(&[0, 0]);
    let c = lb_common::checksum::checksum(0, &frame[14..34]);
    frame[24..26].copy_from_slice(&c);
}

fn tcp(flags: u8, sport: u16) -> Vec<u8> {
    client_frame(CLIENT.into(), VIP.into(), sport, 80, L4::Tcp { flags }).build(b"")
}

fn server_tcp(flags: u8, snat_port: u16) -> Vec<u8> {
    Frame {
        dst_mac: SERVER_SIDE_MAC,
        src_mac: SERVER_MAC,
        vlan: None,
        src: SERVER.into(),
        dst: SNAT.into(),
        sport: 8080,
        dport: snat_port,
        l4: L4::Tcp { flags },
    }
    .build(b"")
}

const FIN_ACK: u8 = 0x11;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

#[test]
fn tcp_state_follows_handshake_close_reset_and_reuse() {
    use lb_common::maps::{
        ENTRY_COUNTED, ENTRY_ESTABLISHED, FLOW_CLOSING, FLOW_ESTABLISHED, FLOW_SYN_RECV,
        FLOW_SYN_SEEN, FLOW_UDP,
    };
    with_fixture("states", |fx| {
        let k = key(CLIENT.into(), VIP.into(), 41000, 80, 6);
        let state = |fx: &mut Fixture| {
            fx.tracked(&k)
                .map(|e| (e.state, e.flags & ENTRY_COUNTED != 0))
        };
        let server_id = |fx: &mut Fixture| fx.tracked(&k).unwrap().server_id;

        assert_eq!(
            fx.run(&tcp(TCP_SYN, 41000), fx.client_ifindex).0,
            XDP_REDIRECT
        );
        assert_eq!(
            state(fx),
            Some((FLOW_SYN_SEEN, false)),
            "a SYN opens the flow, not yet counted as open"
        );
        let id = server_id(fx);
        assert_eq!(fx.dataplane.server_active(id).unwrap(), 0);
        let snat_port = u16::from_be(fx.tracked(&k).unwrap().sport);

        assert_eq!(
            fx.run(&server_tcp(TCP_SYN_ACK, snat_port), fx.server_ifindex)
                .0,
            XDP_REDIRECT
        );
        assert_eq!(state(fx), Some((FLOW_SYN_RECV, false)));
        fx.run(&tcp(ACK, 41000), fx.client_ifindex);
        assert_eq!(
            state(fx),
            Some((FLOW_ESTABLISHED, true)),
            "the client's ACK establishes, and the flow counts"
        );
        let established = |fx: &mut Fixture| fx.tracked(&k).unwrap().flags & ENTRY_ESTABLISHED != 0;
        assert!(established(fx));
        assert_eq!(fx.dataplane.server_active(id).unwrap(), 1);

        let closed = fx.counter("flow_closed");
        assert_eq!(
            fx.run(&tcp(FIN_ACK, 41000), fx.client_ifindex).0,
            XDP_REDIRECT,
            "a FIN still reaches the server"
        );
        assert_eq!(
            state(fx),
            Some((FLOW_CLOSING, false)),
            "FIN closes and stops counting"
        );
        assert_eq!(fx.dataplane.server_active(id).unwrap(), 0);
        assert_eq!(fx.counter("flow_closed"), closed + 1);
        fx.run(&server_tcp(FIN_ACK, snat_port), fx.server_ifindex);
        assert_eq!(
            fx.counter("flow_closed"),
            closed + 1,
            "closing twice counts once"
        );

        // The client reuses the tuple: same server, in its handshake again.
        assert_eq!(
            fx.run(&tcp(TCP_SYN, 41000), fx.client_ifindex).0,
            XDP_REDIRECT
        );
        assert_eq!(state(fx), Some((FLOW_SYN_SEEN, false)));
        assert!(!established(fx), "a new connection on the tuple");
        assert_eq!(server_id(fx), id);
        assert_eq!(fx.counter("flow_reopened"), 1);
        fx.run(&server_tcp(TCP_SYN_ACK, snat_port), fx.server_ifindex);
        fx.run(&tcp(ACK, 41000), fx.client_ifindex);
        assert_eq!(state(fx), Some((FLOW_ESTABLISHED, true)));
        assert_eq!(fx.dataplane.server_active(id).unwrap(), 1);

        // A reset from the server closes as well.
        fx.run(&server_tcp(RST, snat_port), fx.server_ifindex);
        assert_eq!(state(fx), Some((FLOW_CLOSING, false)));
        assert_eq!(fx.dataplane.server_active(id).unwrap(), 0);

        // UDP flows have their own state, and count from their first packet.
        let u = client_frame(CLIENT.into(), VIP.into(), 41001, 53, L4::Udp).build(b"q");
        fx.run(&u, fx.client_ifindex);
        let ku = key(CLIENT.into(), VIP.into(), 41001, 53, 17);
        let udp = fx.tracked(&ku).unwrap();
        assert_eq!(
            (udp.state, udp.flags & ENTRY_COUNTED != 0),
            (FLOW_UDP, true)
        );
    });
}

#[test]
fn a_closed_tuple_reused_while_its_server_drains_is_balanced_afresh() {
    use lb_common::maps::{FLOW_CLOSING, MAP_SNAT};
    with_fixture("reuse_drained", |fx| {
        let k = key(CLIENT.into(), VIP.into(), 41100, 80, 6);
        fx.run(&tcp(TCP_SYN, 41100), fx.client_ifindex);
        let entry = fx.tracked(&k).unwrap();
        let snat_port = u16::from_be(entry.sport);
        fx.run(&server_tcp(TCP_SYN_ACK, snat_port), fx.server_ifindex);
        fx.run(&tcp(ACK, 41100), fx.client_ifindex);
        fx.run(&tcp(RST, 41100), fx.client_ifindex);
        assert_eq!(fx.tracked(&k).unwrap().state, FLOW_CLOSING);

        // v4-servers' only server is drained; the client reuses the tuple.
        let drained = CONFIG.replacen(
            r#"addresses = [{ address = "198.18.11.2" }]"#,
            r#"addresses = [{ address = "198.18.11.2", weight = 0 }]"#,
            1,
        );
        assert_ne!(drained, CONFIG);
        let config = Config::parse("fixture.toml", &drained).unwrap();
        fx.dataplane.apply_config(&config).unwrap();
        let no_server = fx.counter("drop_no_server");
        assert_eq!(
            fx.run(&tcp(TCP_SYN, 41100), fx.client_ifindex).0,
            XDP_DROP,
            "a new connection does not go to a drained server"
        );
        assert_eq!(fx.counter("flow_reopen_rebalanced"), 1);
        assert_eq!(fx.counter("flow_reopened"), 0);
        assert_eq!(fx.counter("drop_no_server"), no_server + 1);
        assert!(fx.tracked(&k).is_none(), "the closed flow is forgotten");
        let reverse = entry.reply_key(6);
        let map = fx.dataplane.ebpf_mut().map(MAP_SNAT).unwrap();
        let snat: BpfHashMap<&MapData, FlowKey, NatEntry> = BpfHashMap::try_from(map).unwrap();
        assert!(snat.get(&reverse, 0).is_err(), "with its reverse entry");
    });
}

#[test]
fn a_flow_stays_half_open_after_the_servers_syn_ack_until_the_clients_ack() {
    use lb_common::{
        flow::Timeouts,
        maps::{ENTRY_COUNTED, FLOW_ESTABLISHED, FLOW_SYN_RECV},
    };
    with_fixture("half_open", |fx| {
        let state = |fx: &mut Fixture, port| {
            fx.tracked(&key(CLIENT.into(), VIP.into(), port, 80, 6))
                .map(|e| (e.state, e.flags & ENTRY_COUNTED != 0))
        };
        // A spoofed client's SYN: the server answers, the source never does.
        fx.run(&tcp(TCP_SYN, 41200), fx.client_ifindex);
        let k = key(CLIENT.into(), VIP.into(), 41200, 80, 6);
        let entry = fx.tracked(&k).unwrap();
        let (id, snat_port) = (entry.server_id, u16::from_be(entry.sport));
        for _ in 0..3 {
            // The server's SYN-ACK and its retransmissions, the client's SYN retransmitted.
            assert_eq!(
                fx.run(&server_tcp(TCP_SYN_ACK, snat_port), fx.server_ifindex)
                    .0,
                XDP_REDIRECT
            );
            fx.run(&tcp(TCP_SYN, 41200), fx.client_ifindex);
            assert_eq!(
                state(fx, 41200),
                Some((FLOW_SYN_RECV, false)),
                "the server's SYN-ACK does not establish"
            );
            assert_eq!(fx.dataplane.server_active(id).unwrap(), 0);
        }
        // A real client completes its handshake.
        fx.run(&tcp(TCP_SYN, 41201), fx.client_ifindex);
        let real = fx
            .tracked(&key(CLIENT.into(), VIP.into(), 41201, 80, 6))
            .unwrap();
        fx.run(
            &server_tcp(TCP_SYN_ACK, u16::from_be(real.sport)),
            fx.server_ifindex,
        );
        assert_eq!(state(fx, 41201), Some((FLOW_SYN_RECV, false)));
        fx.run(&tcp(ACK, 41201), fx.client_ifindex);
        assert_eq!(state(fx, 41201), Some((FLOW_ESTABLISHED, true)));
        assert_eq!(fx.dataplane.server_active(id).unwrap(), 1);

        // The half-open flow keeps the SYN timeout: gone after 11 s, the other stays.
        let t = Timeouts {
            syn_ns: 10_000_000_000,
            established_ns: 100_000_000_000,
            closing_ns: 5_000_000_000,
            udp_ns: 30_000_000_000,
        };
        let now = lb_userspace::dataplane::monotonic_now_ns();
        let r = fx.dataplane.gc(now + 11_000_000_000, &t).unwrap();
        assert_eq!(r.expired, 1);
        assert_eq!(r.half_open, 0);
        assert_eq!(state(fx, 41200), None, "the unanswered handshake expired");
        assert_eq!(state(fx, 41201), Some((FLOW_ESTABLISHED, true)));
        assert_eq!(r.active.get(&id).copied(), Some(1));
    });
}

#[test]
fn idle_flows_expire_by_state_and_counts_are_reconciled() {
    use lb_common::flow::Timeouts;
    with_fixture("timeouts", |fx| {
        let t = Timeouts {
            syn_ns: 10_000_000_000,
            established_ns: 100_000_000_000,
            closing_ns: 5_000_000_000,
            udp_ns: 30_000_000_000,
        };
        // One flow per state: SYN only (41100), established (41101), closing (41102), UDP.
        fx.run(&tcp(TCP_SYN, 41100), fx.client_ifindex);
        for port in [41101, 41102] {
            fx.run(&tcp(TCP_SYN, port), fx.client_ifindex);
            let k = key(CLIENT.into(), VIP.into(), port, 80, 6);
            let snat = u16::from_be(fx.tracked(&k).unwrap().sport);
            fx.run(&server_tcp(TCP_SYN_ACK, snat), fx.server_ifindex);
            fx.run(&tcp(ACK, port), fx.client_ifindex);
        }
        fx.run(&tcp(FIN_ACK, 41102), fx.client_ifindex);
        fx.run(
            &client_frame(CLIENT.into(), VIP.into(), 41103, 53, L4::Udp).build(b"q"),
            fx.client_ifindex,
        );
        let k = |port, proto| {
            key(
                CLIENT.into(),
                VIP.into(),
                port,
                if proto == 6 { 80 } else { 53 },
                proto,
            )
        };
        let (syn, est, closing, udp) = (k(41100, 6), k(41101, 6), k(41102, 6), k(41103, 17));
        let est_reverse = fx.tracked(&est).unwrap().reply_key(6);
        let server = fx.tracked(&est).unwrap().server_id;
        let now = lb_userspace::dataplane::monotonic_now_ns();

        let r = fx.dataplane.gc(now + 6_000_000_000, &t).unwrap();
        assert_eq!(r.expired, 1, "after 6 s only the closing flow is gone");
        assert!(fx.tracked(&closing).is_none() && fx.tracked(&syn).is_some());
        assert_eq!(
            r.active.get(&server).copied(),
            Some(2),
            "established and UDP stay open; the unanswered SYN stays but does not count"
        );
        assert_eq!(r.half_open, 1);

        let r = fx.dataplane.gc(now + 11_000_000_000, &t).unwrap();
        assert_eq!(r.expired, 1, "after 11 s the unanswered SYN is gone");
        assert!(
            fx.tracked(&syn).is_none() && fx.tracked(&est).is_some() && fx.tracked(&udp).is_some()
        );

        let r = fx.dataplane.gc(now + 31_000_000_000, &t).unwrap();
        assert_eq!(r.expired, 1, "after 31 s the UDP flow is gone");
        assert!(fx.tracked(&udp).is_none() && fx.tracked(&est).is_some());
        assert_eq!(fx.dataplane.server_active(server).unwrap(), 1);

        let r = fx.dataplane.gc(now + 101_000_000_000, &t).unwrap();
        assert_eq!(
            r.expired, 1,
            "after 101 s the idle established flow is gone"
        );
        assert!(fx.tracked(&est).is_none());
        assert_eq!(fx.dataplane.server_active(server).unwrap(), 0);
        let map = fx
            .dataplane
            .ebpf_mut()
            .map(lb_common::maps::MAP_SNAT)
            .unwrap();
        let snat: BpfHashMap<&MapData, FlowKey, NatEntry> = BpfHashMap::try_from(map).unwrap();
        assert!(
            snat.get(&est_reverse, 0).is_err(),
            "its reverse entry went with it"
        );
        assert_eq!(snat.iter().count(), 0);
    });
}

#[test]
fn a_syn_flood_at_twice_the_table_size_leaves_established_and_new_flows_working() {
    const TABLE: u32 = 4096;
    with_sized_fixture("flood", TABLE, |fx| {
        // An established flow first.
        fx.run(&tcp(TCP_SYN, 42000), fx.client_ifindex);
        let k = key(CLIENT.into(), VIP.into(), 42000, 80, 6);
        let snat = u16::from_be(fx.tracked(&k).unwrap().sport);
        fx.run(&server_tcp(TCP_SYN_ACK, snat), fx.server_ifindex);
        let (_, established) = fx.run(&tcp(ACK, 42000), fx.client_ifindex);

        // 8192 spoofed SYNs from 8192 sources; the established flow keeps talking meanwhile.
        let flood = 2 * TABLE;
        let new_before = fx.counter("flow_new");
        for i in 0..flood {
            let src = Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8);
            let syn = client_frame(
                src.into(),
                VIP.into(),
                1024 + (i % 60000) as u16,
                80,
                L4::Tcp { flags: TCP_SYN },
            );
            assert_eq!(fx.run(&syn.build(b""), fx.client_ifindex).0, XDP_REDIRECT);
            if i % 256 == 0 {
                assert_eq!(
                    fx.run(&tcp(ACK, 42000), fx.client_ifindex),
                    (XDP_REDIRECT, established.clone())
                );
                assert_eq!(
                    fx.run(&server_tcp(ACK, snat), fx.server_ifindex).0,
                    XDP_REDIRECT
                );
            }
        }
        assert_eq!(
            fx.counter("flow_new") - new_before,
            u64::from(flood),
            "every SYN was handled"
        );
        // The established flow still follows its entry, to the same server and port.
        assert_eq!(
            fx.run(&tcp(ACK, 42000), fx.client_ifindex),
            (XDP_REDIRECT, established)
        );
        assert_eq!(u16::from_be(fx.tracked(&k).unwrap().sport), snat);
        // A new legitimate client is served.
        assert_eq!(
            fx.run(&tcp(TCP_SYN, 42001), fx.client_ifindex).0,
            XDP_REDIRECT
        );
        assert!(
            fx.tracked(&key(CLIENT.into(), VIP.into(), 42001, 80, 6))
                .is_some()
        );
        // The table held at most its size: the LRU evicted the flood's oldest flows.
        let map = fx
            .dataplane
            .ebpf_mut()
            .map(lb_common::maps::MAP_CONNTRACK)
            .unwrap();
        let ct: BpfHashMap<&MapData, FlowKey, NatEntry> = BpfHashMap::try_from(map).unwrap();
        let tracked = ct.keys().count() as u32;
        assert!(tracked <= TABLE && tracked > TABLE / 2, "{tracked} tracked");
        assert_eq!(fx.counter("drop_snat_exhausted"), 0);
    });
}

/// Path-MTU discovery through the balancer: a router beyond it tells the SNAT address that a
/// NATed packet was too big; the client must hear it about the packet it sent, from the VIP.
fn frag_needed_round_trip(
    fx: &mut Fixture,
    client: IpAddr,
    vip: IpAddr,
    snat: IpAddr,
    server: IpAddr,
) {
    let v6 = client.is_ipv6();
    let syn = client_frame(client, vip, 43000, 80, L4::Tcp { flags: TCP_SYN }).build(b"");
    let (verdict, natted) = fx.run(&syn, fx.client_ifindex);
    assert_eq!(verdict, XDP_REDIRECT);
    let ip_len = if v6 { 40 } else { 20 };
    // Quote the NATed IP and TCP headers, as the router received them.
    let quoted = &natted[14..14 + ip_len + 20];
    let (icmp_type, code, rest) = if v6 { (2, 0, 1400) } else { (3, 4, 1400) };
    let error = icmp_error(
        SERVER_SIDE_MAC,
        SERVER_MAC,
        server,
        snat,
        icmp_type,
        code,
        rest,
        quoted,
    );
    let before = fx.counter("icmp_translated");
    let (verdict, out) = fx.run(&error, fx.server_ifindex);
    assert_eq!(verdict, XDP_REDIRECT, "translated errors go to the client");
    assert_eq!(fx.counter("icmp_translated"), before + 1);
    // Exactly the error the client would get without NAT: from the VIP, quoting its own SYN.
    let expected = icmp_error(
        CLIENT_MAC,
        CLIENT_SIDE_MAC,
        vip,
        client,
        icmp_type,
        code,
        rest,
        &syn[14..14 + ip_len + 20],
    );
    assert_eq!(out, expected);
}

#[test]
fn icmp_fragmentation_needed_is_translated_back_to_the_client() {
    with_fixture("icmp4", |fx| {
        frag_needed_round_trip(fx, CLIENT.into(), VIP.into(), SNAT.into(), SERVER.into())
    });
}

#[test]
fn icmpv6_packet_too_big_is_translated_back_to_the_client() {
    with_fixture("icmp6", |fx| {
        frag_needed_round_trip(
            fx,
            CLIENT6.into(),
            VIP6.into(),
            SNAT6.into(),
            SERVER6.into(),
        )
    });
}

#[test]
fn client_port_unreachable_about_a_reply_is_translated_to_the_server() {
    with_fixture("icmpu", |fx| {
        let request = client_frame(CLIENT.into(), VIP.into(), 43001, 53, L4::Udp).build(b"q");
        fx.run(&request, fx.client_ifindex);
        let k = key(CLIENT.into(), VIP.into(), 43001, 53, 17);
        let snat_port = u16::from_be(fx.tracked(&k).unwrap().sport);
        let reply = Frame {
            dst_mac: SERVER_SIDE_MAC,
            src_mac: SERVER_MAC,
            vlan: None,
            src: SERVER.into(),
            dst: SNAT.into(),
            sport: 8080,
            dport: snat_port,
            l4: L4::Udp,
        }
        .build(b"answer");
        let (_, to_client) = fx.run(&reply, fx.server_ifindex);
        // The client's socket is gone: it answers with port unreachable, quoting the reply.
        let error = icmp_error(
            CLIENT_SIDE_MAC,
            CLIENT_MAC,
            CLIENT.into(),
            VIP.into(),
            3,
            3,
            0,
            &to_client[14..],
        );
        let (verdict, out) = fx.run(&error, fx.client_ifindex);
        assert_eq!(verdict, XDP_REDIRECT);
        let expected = icmp_error(
            SERVER_MAC,
            SERVER_SIDE_MAC,
            SNAT.into(),
            SERVER.into(),
            3,
            3,
            0,
            &reply[14..],
        );
        assert_eq!(out, expected, "the server hears about the packet it sent");
        // An error about no tracked flow is the kernel's.
        let stray = icmp_error(
            CLIENT_SIDE_MAC,
            CLIENT_MAC,
            CLIENT.into(),
            VIP.into(),
            3,
            3,
            0,
            &reply[14..],
        );
        let before = fx.counter("pass_icmp_no_flow");
        assert_eq!(fx.run(&stray, fx.client_ifindex), (XDP_PASS, stray.clone()));
        assert_eq!(fx.counter("pass_icmp_no_flow"), before + 1);
    });
}

#[test]
fn source_stickiness_ends_when_the_ttl_passes_or_the_server_leaves() {
    use lb_common::maps::{MAP_STICKY, StickyEntry, StickyKey};
    with_fixture("sticky_ttl", |fx| {
        let vip: IpAddr = Ipv4Addr::new(198, 18, 100, 3).into();
        let syn = |port| {
            client_frame(CLIENT.into(), vip, port, 80, L4::Tcp { flags: TCP_SYN }).build(b"")
        };
        let server_of = |fx: &mut Fixture, port| {
            fx.tracked(&key(CLIENT.into(), vip, port, 80, 6))
                .unwrap()
                .server_id
        };
        fx.run(&syn(44000), fx.client_ifindex);
        let first = server_of(fx, 44000);
        // Round robin alone would alternate; stickiness keeps the client on one server.
        for port in 44001..44005 {
            fx.run(&syn(port), fx.client_ifindex);
            assert_eq!(server_of(fx, port), first);
        }
        assert_eq!(fx.counter("sticky_hit"), 4);

        // Age the client's entry past the 5 minute TTL: the next flow is balanced afresh.
        let sticky_key = StickyKey {
            backend_id: 0,
            addr: addr16(CLIENT.into()),
        };
        {
            let map = fx.dataplane.ebpf_mut().map_mut(MAP_STICKY).unwrap();
            let mut sticky: BpfHashMap<&mut MapData, StickyKey, StickyEntry> =
                BpfHashMap::try_from(map).unwrap();
            let mut entry = sticky
                .get(&sticky_key, 0)
                .expect("the client is remembered");
            entry.last_seen_ns = lb_userspace::dataplane::monotonic_now_ns() - 301_000_000_000;
            sticky.insert(sticky_key, entry, 0).unwrap();
        }
        fx.run(&syn(44010), fx.client_ifindex);
        assert_eq!(fx.counter("sticky_hit"), 4, "an expired entry is not a hit");
        let now_on = server_of(fx, 44010);
        fx.run(&syn(44011), fx.client_ifindex);
        assert_eq!(server_of(fx, 44011), now_on, "and the new choice sticks");

        // The server leaves the table (weight 0): stickiness yields to balancing.
        let weights = |a: u32, b: u32| {
            CONFIG.replace(
                "addresses = [{ address = \"198.18.11.2\" }, { address = \"198.18.11.3\" }]",
                &format!("addresses = [{{ address = \"198.18.11.2\", weight = {a} }}, {{ address = \"198.18.11.3\", weight = {b} }}]"),
            )
        };
        let sticky_server = server_of(fx, 44011);
        // Drain the server the client sticks to (ids follow config order: .2 is 0, .3 is 1).
        let drain_first = sticky_server == 0;
        let config = Config::parse(
            "fixture.toml",
            &if drain_first {
                weights(0, 1)
            } else {
                weights(1, 0)
            },
        )
        .unwrap();
        fx.dataplane.apply_config(&config).unwrap();
        let hits = fx.counter("sticky_hit");
        fx.run(&syn(44020), fx.client_ifindex);
        assert_eq!(
            fx.counter("sticky_hit"),
            hits,
            "a drained server is not sticky"
        );
        assert_ne!(server_of(fx, 44020), sticky_server);
    });
}

#[test]
fn flows_of_a_down_server_are_reset_when_its_backend_says_so() {
    use lb_common::wire::TCP_RST;
    use lb_tests::packets::{TEST_ACK, TEST_SEQ};
    with_fixture("reset_down", |fx| {
        let syn = tcp(TCP_SYN, 42000);
        assert_eq!(fx.run(&syn, fx.client_ifindex).0, XDP_REDIRECT);
        let k = key(CLIENT.into(), VIP.into(), 42000, 80, 6);
        let tracked = fx.tracked(&k).expect("the flow is tracked");
        let snat = u16::from_be(tracked.sport);
        fx.run(&server_tcp(TCP_SYN_ACK, snat), fx.server_ifindex);
        fx.run(&tcp(ACK, 42000), fx.client_ifindex);
        let udp = client_frame(CLIENT.into(), VIP.into(), 42001, 53, L4::Udp).build(b"q");
        assert_eq!(fx.run(&udp, fx.client_ifindex).0, XDP_REDIRECT);

        // The server fails its check, and its backend resets flows of DOWN servers.
        let config = CONFIG.replace(
            "servers = { type = \"addresses\", addresses = [{ address = \"198.18.11.2\" }] }",
            "servers = { type = \"addresses\", addresses = [{ address = \"198.18.11.2\" }] }\noptions = { health_check = { type = \"tcp\", on_down = \"reset\" } }",
        );
        let config = Config::parse("fixture.toml", &config).unwrap();
        fx.dataplane
            .apply_config_with_health(&config, &|backend, _| backend != "v4-servers", &|_, _| {
                false
            })
            .unwrap();

        let active = fx.dataplane.server_active(tracked.server_id).unwrap();
        // A data segment (with ACK): RST from the VIP, seq = its ack, back where it came from.
        let data = client_frame(
            CLIENT.into(),
            VIP.into(),
            42000,
            80,
            L4::Tcp { flags: 0x18 },
        );
        let (verdict, out) = fx.run(&data.build(b"hello"), fx.client_ifindex);
        assert_eq!(
            verdict, XDP_TX,
            "the RST goes back out of the client's interface"
        );
        let rst = Frame {
            dst_mac: CLIENT_MAC,
            src_mac: CLIENT_SIDE_MAC,
            src: VIP.into(),
            dst: CLIENT.into(),
            sport: 80,
            dport: 42000,
            l4: L4::Tcp { flags: TCP_RST },
            ..data
        };
        assert_eq!(out, rst.build_tcp(TEST_ACK, 0, 0, b""));
        assert!(checksums_valid(&out));
        assert_eq!(fx.counter("flow_reset_sent"), 1);
        assert!(fx.tracked(&k).is_none(), "the flow is forgotten");
        assert_eq!(
            fx.dataplane.server_active(tracked.server_id).unwrap(),
            active - 1,
            "it no longer counts as open"
        );

        // A segment without ACK (a retransmitted SYN of another tracked flow) gets RST|ACK
        // acknowledging its sequence number + 1.
        fx.dataplane
            .apply_config(&Config::parse("fixture.toml", CONFIG).unwrap())
            .unwrap();
        assert_eq!(
            fx.run(&tcp(TCP_SYN, 42002), fx.client_ifindex).0,
            XDP_REDIRECT
        );
        fx.dataplane
            .apply_config_with_health(&config, &|backend, _| backend != "v4-servers", &|_, _| {
                false
            })
            .unwrap();
        let (verdict, out) = fx.run(&tcp(TCP_SYN, 42002), fx.client_ifindex);
        assert_eq!(verdict, XDP_TX);
        let rst_ack = Frame {
            sport: 80,
            dport: 42002,
            l4: L4::Tcp {
                flags: TCP_RST | ACK,
            },
            ..rst
        };
        assert_eq!(out, rst_ack.build_tcp(0, TEST_SEQ + 1, 0, b""));

        // A later segment of the reset flow has no state: dropped as mid-stream.
        assert_eq!(fx.run(&data.build(b"again"), fx.client_ifindex).0, XDP_DROP);

        // UDP has no connection to reset: the flow is re-balanced, and with the only server
        // down there is none to take it.
        assert_eq!(fx.run(&udp, fx.client_ifindex).0, XDP_DROP);
        assert_eq!(fx.counter("flow_reset_rebalanced"), 1);
        assert_eq!(fx.counter("drop_no_server"), 1);
    });
}

/// One class of inconsistent packet: how to break a valid frame, and the counter it lands in.
struct Broken {
    what: &'static str,
    frame: Vec<u8>,
    counter: &'static str,
}

/// Every inconsistent frame, built from valid ones to the VIP (v4: 198.18.0.2:`sport` ->
/// VIP:80/53; v6 likewise).
fn broken_frames(sport: u16) -> Vec<Broken> {
    let syn = |flags| tcp(flags, sport);
    let v4_tcp = syn(TCP_SYN);
    let v4_udp = client_frame(CLIENT.into(), VIP.into(), sport, 53, L4::Udp).build(b"hello");
    let v6_syn = client_frame(
        CLIENT6.into(),
        VIP6.into(),
        sport,
        80,
        L4::Tcp { flags: TCP_SYN },
    )
    .build(b"");
    let edit = |frame: &[u8], at: usize, bytes: &[u8]| {
        let mut f = frame.to_vec();
        f[at..at + bytes.len()].copy_from_slice(bytes);
        if f[12..14] == [0x08, 0x00] {
            fix_ipv4_checksum(&mut f);
        }
        f
    };
    // Offsets: IPv4 total length at 16, TCP data offset at 34 + 12, UDP length at 34 + 4,
    // IPv6 payload length at 18.
    let mut cases = vec![
        Broken {
            what: "TCP data offset 4 (16-byte header)",
            frame: edit(&v4_tcp, 46, &[0x40]),
            counter: "drop_tcp_bad_offset",
        },
        Broken {
            what: "TCP data offset 0",
            frame: edit(&v4_tcp, 46, &[0x00]),
            counter: "drop_tcp_bad_offset",
        },
        Broken {
            what: "TCP data offset 15 (60 bytes) in a 20-byte segment",
            frame: edit(&v4_tcp, 46, &[0xf0]),
            counter: "drop_tcp_bad_offset",
        },
        Broken {
            what: "UDP length beyond the IP payload",
            frame: edit(&v4_udp, 38, &200u16.to_be_bytes()),
            counter: "drop_udp_bad_length",
        },
        Broken {
            what: "UDP length below its own header",
            frame: edit(&v4_udp, 38, &4u16.to_be_bytes()),
            counter: "drop_udp_bad_length",
        },
        Broken {
            what: "IPv4 total length 65535 in a 54-byte frame",
            frame: edit(&v4_tcp, 16, &65535u16.to_be_bytes()),
            counter: "drop_ipv4_bad_length",
        },
        Broken {
            what: "IPv4 total length below the IPv4 header",
            frame: edit(&v4_tcp, 16, &16u16.to_be_bytes()),
            counter: "drop_ipv4_bad_length",
        },
        Broken {
            what: "IPv4 frame cut inside TCP, total length still claiming all of it",
            frame: v4_tcp[..34 + 12].to_vec(),
            counter: "drop_ipv4_bad_length",
        },
        Broken {
            what: "IPv4 total length ending inside the TCP header",
            frame: edit(&v4_tcp, 16, &30u16.to_be_bytes()),
            counter: "drop_tcp_bad_offset",
        },
        Broken {
            what: "IPv6 payload length beyond the frame",
            frame: edit(&v6_syn, 18, &1000u16.to_be_bytes()),
            counter: "drop_ipv6_bad_length",
        },
        Broken {
            what: "IPv6 payload length ending inside the TCP header",
            frame: edit(&v6_syn, 18, &8u16.to_be_bytes()),
            counter: "drop_tcp_bad_offset",
        },
    ];
    for (what, flags) in [
        ("SYN+FIN", TCP_SYN | 0x01),
        ("SYN+RST", TCP_SYN | RST),
        ("SYN+FIN+ACK", TCP_SYN | FIN_ACK),
        ("FIN without ACK", 0x01),
        ("no flags", 0x00),
        ("FIN+PSH+URG (Xmas)", 0x29),
        ("FIN+RST+ACK", FIN_ACK | RST),
    ] {
        cases.push(Broken {
            what,
            frame: syn(flags),
            counter: "drop_tcp_bad_flags",
        });
    }
    cases
}

#[test]
fn inconsistent_packets_are_dropped_before_any_lookup_and_counted() {
    with_fixture("inconsistent", |fx| {
        // Every frontend of the fixture's config (ids 0..4, in config order).
        let fe = |fx: &mut Fixture| {
            (0..4)
                .map(|id| fx.dataplane.frontend_stats(id).unwrap())
                .collect::<Vec<_>>()
        };
        let before_fe = fe(fx);
        for (i, case) in broken_frames(46000).into_iter().enumerate() {
            let sport = 46000;
            let (new_flows, reason, drops) = (
                fx.counter("flow_new"),
                fx.counter(case.counter),
                fx.counter("verdict_drop"),
            );
            let (verdict, _) = fx.run(&case.frame, fx.client_ifindex);
            assert_eq!(verdict, XDP_DROP, "{} ({i})", case.what);
            assert_eq!(
                fx.counter(case.counter),
                reason + 1,
                "{} counts as {}",
                case.what,
                case.counter
            );
            assert_eq!(fx.counter("verdict_drop"), drops + 1);
            assert_eq!(
                fx.counter("flow_new"),
                new_flows,
                "{} opened a flow",
                case.what
            );
            for (client, vip, port, proto) in [
                (IpAddr::from(CLIENT), IpAddr::from(VIP), 80, 6),
                (CLIENT.into(), VIP.into(), 53, 17),
                (CLIENT6.into(), VIP6.into(), 80, 6),
            ] {
                assert!(
                    fx.tracked(&key(client, vip, sport, port, proto)).is_none(),
                    "{} is tracked",
                    case.what
                );
            }
        }
        assert_eq!(
            fe(fx),
            before_fe,
            "nothing was counted on the frontend: not a packet, not a byte"
        );
    });
}

#[test]
fn inconsistent_packets_of_an_established_flow_leave_it_untouched() {
    use lb_common::maps::{ENTRY_COUNTED, FLOW_ESTABLISHED};
    with_fixture("inconsistent_est", |fx| {
        let sport = 46100;
        fx.run(&tcp(TCP_SYN, sport), fx.client_ifindex);
        let k = key(CLIENT.into(), VIP.into(), sport, 80, 6);
        let snat = u16::from_be(fx.tracked(&k).unwrap().sport);
        fx.run(&server_tcp(TCP_SYN_ACK, snat), fx.server_ifindex);
        fx.run(&tcp(ACK, sport), fx.client_ifindex);
        let established = fx.tracked(&k).unwrap();
        assert_eq!(established.state, FLOW_ESTABLISHED);
        let active = fx.dataplane.server_active(established.server_id).unwrap();
        // SYN+FIN, RST+FIN and friends would close the flow if they were tracked.
        for case in broken_frames(sport) {
            assert_eq!(
                fx.run(&case.frame, fx.client_ifindex).0,
                XDP_DROP,
                "{}",
                case.what
            );
        }
        let after = fx.tracked(&k).unwrap();
        assert_eq!(
            (after.state, after.flags & ENTRY_COUNTED != 0),
            (FLOW_ESTABLISHED, true)
        );
        assert_eq!(
            fx.dataplane.server_active(established.server_id).unwrap(),
            active
        );
        assert_eq!(fx.counter("flow_closed"), 0);
        // A real segment still goes through.
        assert_eq!(fx.run(&tcp(ACK, sport), fx.client_ifindex).0, XDP_REDIRECT);
    });
}

#[test]
fn byte_counters_count_the_frame_not_the_ip_headers_claim() {
    with_fixture("frame_bytes", |fx| {
        // A 54-byte SYN padded to the 60-byte Ethernet minimum: balanced, padding and all,
        // and counted as the 60 bytes it is.
        let mut syn = tcp(TCP_SYN, 46200);
        assert_eq!(syn.len(), 54);
        syn.extend_from_slice(&[0; 6]);
        let before = fx.dataplane.frontend_stats(0).unwrap();
        let (verdict, out) = fx.run(&syn, fx.client_ifindex);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(out.len(), 60);
        assert_eq!(&out[54..], &[0; 6]);
        let after = fx.dataplane.frontend_stats(0).unwrap();
        assert_eq!(after.packets_in - before.packets_in, 1);
        assert_eq!(after.bytes_in - before.bytes_in, 60);

        // The issue's 1000 54-byte frames claiming 65535 bytes each: dropped, and not
        // 65 MB on the frontend.
        let mut lying = tcp(TCP_SYN, 46201);
        lying[16..18].copy_from_slice(&65535u16.to_be_bytes());
        fix_ipv4_checksum(&mut lying);
        for _ in 0..1000 {
            assert_eq!(fx.run(&lying, fx.client_ifindex).0, XDP_DROP);
        }
        assert_eq!(fx.counter("drop_ipv4_bad_length"), 1000);
        assert_eq!(fx.dataplane.frontend_stats(0).unwrap(), after);
    });
}

#[test]
fn unestablished_flows_give_their_snat_ports_up_after_a_second_established_ones_never() {
    use lb_common::maps::{
        ENTRY_COUNTED, ENTRY_ESTABLISHED, FLOW_CLOSING, FLOW_ESTABLISHED, FLOW_SYN_RECV, MAP_SNAT,
        SYN_RECLAIM_NS,
    };
    with_fixture("reclaim", |fx| {
        // A first flow gives the shapes of a client-side and a server-side entry.
        fx.run(&tcp(TCP_SYN, 47000), fx.client_ifindex);
        let first_key = key(CLIENT.into(), VIP.into(), 47000, 80, 6);
        let first = fx.tracked(&first_key).unwrap();
        let first_port = u16::from_be(first.sport);
        let reverse_of = |fx: &mut Fixture, port: u16| {
            let map = fx.dataplane.ebpf_mut().map(MAP_SNAT).unwrap();
            let snat: BpfHashMap<&MapData, FlowKey, NatEntry> = BpfHashMap::try_from(map).unwrap();
            let reverse_key = NatEntry {
                sport: port.to_be(),
                ..first
            }
            .reply_key(6);
            snat.get(&reverse_key, 0).ok().map(|r| (reverse_key, r))
        };
        let (_, first_reverse) = reverse_of(fx, first_port).unwrap();

        // Every other port of the server's range is held by a spoofed client's handshake
        // (198.19.x.y:1000 -> VIP:80), the server having answered.
        let holder = |port: u16| {
            let i = u32::from(port);
            key(
                Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8).into(),
                VIP.into(),
                1000,
                80,
                6,
            )
        };
        // `every`: the first flow's port too (its reverse entry is then a spoofed one's).
        let fill = |fx: &mut Fixture, state: u8, flags: u8, last_seen_ns: u64, every: bool| {
            let ports = (SNAT_PORT_MIN..=SNAT_PORT_MAX).filter(move |p| every || *p != first_port);
            {
                let map = fx.dataplane.ebpf_mut().map_mut(MAP_CONNTRACK).unwrap();
                let mut ct: BpfHashMap<&mut MapData, FlowKey, NatEntry> =
                    BpfHashMap::try_from(map).unwrap();
                for port in ports.clone() {
                    let entry = NatEntry {
                        sport: port.to_be(),
                        state,
                        flags,
                        last_seen_ns,
                        ..first
                    };
                    ct.insert(holder(port), entry, 0).unwrap();
                }
            }
            let map = fx.dataplane.ebpf_mut().map_mut(MAP_SNAT).unwrap();
            let mut snat: BpfHashMap<&mut MapData, FlowKey, NatEntry> =
                BpfHashMap::try_from(map).unwrap();
            for port in ports {
                let k = holder(port);
                let reverse = NatEntry {
                    dst: k.src,
                    dport: k.sport,
                    last_seen_ns,
                    ..first_reverse
                };
                let reverse_key = NatEntry {
                    sport: port.to_be(),
                    ..first
                }
                .reply_key(6);
                snat.insert(reverse_key, reverse, 0).unwrap();
            }
        };
        let now = lb_userspace::dataplane::monotonic_now_ns;
        fill(fx, FLOW_SYN_RECV, 0, now(), false);
        let r = fx
            .dataplane
            .gc(now(), &lb_common::flow::Timeouts::default())
            .unwrap();
        assert_eq!(
            r.snat_ports_used
                .get(&(first.server_id, 6, addr16(SNAT.into())))
                .copied(),
            Some(u64::from(SNAT_PORTS)),
            "the collector sees every port of the server taken"
        );

        // Handshakes younger than a second keep their ports: the new SYN finds none.
        assert_eq!(fx.run(&tcp(TCP_SYN, 47001), fx.client_ifindex).0, XDP_DROP);
        assert_eq!(fx.counter("drop_snat_exhausted"), 1);
        assert_eq!(fx.counter("flow_syn_reclaimed"), 0);

        // Idle past SYN_RECLAIM_NS, a handshake gives its port to the next SYN.
        fill(
            fx,
            FLOW_SYN_RECV,
            0,
            now() - SYN_RECLAIM_NS - 1_000_000,
            false,
        );
        assert_eq!(
            fx.run(&tcp(TCP_SYN, 47002), fx.client_ifindex).0,
            XDP_REDIRECT
        );
        assert_eq!(fx.counter("flow_syn_reclaimed"), 1);
        let taken = fx
            .tracked(&key(CLIENT.into(), VIP.into(), 47002, 80, 6))
            .expect("the new flow is tracked");
        let port = u16::from_be(taken.sport);
        assert!(
            fx.tracked(&holder(port)).is_none(),
            "the spoofed handshake that held port {port} is gone"
        );
        let (_, reverse) = reverse_of(fx, port).unwrap();
        assert_eq!(
            (reverse.dst, u16::from_be(reverse.dport)),
            (addr16(CLIENT.into()), 47002),
            "the port's replies go to the new client"
        );

        // Established flows never give their ports up, however idle, nor do they once
        // closing.
        let idle = now() - 100 * SYN_RECLAIM_NS;
        let was_established = ENTRY_ESTABLISHED | ENTRY_COUNTED;
        fill(fx, FLOW_ESTABLISHED, was_established, idle, true);
        let exhausted = fx.counter("drop_snat_exhausted");
        let verdict = fx.run(&tcp(TCP_SYN, 47003), fx.client_ifindex).0;
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(fx.counter("drop_snat_exhausted"), exhausted + 1);
        fill(fx, FLOW_CLOSING, ENTRY_ESTABLISHED, idle, true);
        assert_eq!(fx.run(&tcp(TCP_SYN, 47004), fx.client_ifindex).0, XDP_DROP);
        assert_eq!(fx.counter("drop_snat_exhausted"), exhausted + 2);
        assert_eq!(fx.counter("flow_syn_reclaimed"), 1);

        // A handshake the server reset (closing, never established) gives its port up too.
        fill(fx, FLOW_CLOSING, 0, idle, true);
        assert_eq!(
            fx.run(&tcp(TCP_SYN, 47005), fx.client_ifindex).0,
            XDP_REDIRECT
        );
        assert_eq!(fx.counter("flow_syn_reclaimed"), 2);
    });
}

/// Egress comes from a per-CPU cache of FIB answers: the first packet to a destination asks
/// the FIB, later ones (of any flow to it) do not; a routing change (the generation the
/// daemon bumps on netlink events) makes the next packet ask again, and it follows the new
/// neighbour. Replies toward the client are cached the same way.
#[test]
fn egress_is_cached_per_destination_and_asked_again_after_a_routing_change() {
    with_fixture("egress_cache", |fx| {
        let lookups = |fx: &Fixture| fx.counter("egress_fib_lookup");
        let mut generation = fx.dataplane.egress_generation().unwrap();
        generation.bump().unwrap();
        let to_server = |out: &[u8]| -> [u8; 6] { out[..6].try_into().unwrap() };

        let before = lookups(fx);
        let (verdict, out) = fx.run(&tcp(TCP_SYN, 40200), fx.client_ifindex);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(to_server(&out), SERVER_MAC);
        assert_eq!(lookups(fx), before + 1, "the first packet asks the FIB");
        let (verdict, out) = fx.run(&tcp(ACK, 40200), fx.client_ifindex);
        assert_eq!((verdict, to_server(&out)), (XDP_REDIRECT, SERVER_MAC));
        let (verdict, _) = fx.run(&tcp(TCP_SYN, 40201), fx.client_ifindex);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(
            lookups(fx),
            before + 1,
            "the same flow and another flow to the same server use the cache"
        );

        // The server's neighbour entry changes: until the generation moves the cached MAC
        // stays (for at most EGRESS_TTL_NS); after it, the FIB's new answer is used.
        let moved = [0x02, 0, 0, 0, 0, 0x52];
        let status = std::process::Command::new("ip")
            .args([
                "neigh",
                "replace",
                "198.18.11.2",
                "lladdr",
                "02:00:00:00:00:52",
            ])
            .args(["dev", "fxs", "nud", "permanent"])
            .status()
            .unwrap();
        assert!(status.success());
        generation.bump().unwrap();
        let (verdict, out) = fx.run(&tcp(ACK, 40200), fx.client_ifindex);
        assert_eq!((verdict, to_server(&out)), (XDP_REDIRECT, moved));
        assert_eq!(
            lookups(fx),
            before + 2,
            "a new generation asks the FIB again"
        );

        // No neighbour at all: the FIB has no answer, nothing is cached, and the kernel gets
        // the packet (it resolves the neighbour itself).
        let status = std::process::Command::new("ip")
            .args(["neigh", "del", "198.18.11.2", "dev", "fxs"])
            .status()
            .unwrap();
        assert!(status.success());
        generation.bump().unwrap();
        let misses = fx.counter("pass_fib_miss");
        for _ in 0..2 {
            let (verdict, _) = fx.run(&tcp(ACK, 40200), fx.client_ifindex);
            assert_eq!(verdict, XDP_PASS);
        }
        assert_eq!(fx.counter("pass_fib_miss"), misses + 2);
        assert_eq!(lookups(fx), before + 4, "a failed answer is not cached");

        // Replies toward the client: the first asks the FIB, the next uses the cache.
        let snat_port = u16::from_be(
            fx.tracked(&key(CLIENT.into(), VIP.into(), 40201, 80, 6))
                .expect("tracked")
                .sport,
        );
        let before = lookups(fx);
        for flags in [TCP_SYN_ACK, ACK] {
            let (verdict, out) = fx.run(&server_tcp(flags, snat_port), fx.server_ifindex);
            assert_eq!((verdict, to_server(&out)), (XDP_REDIRECT, CLIENT_MAC));
        }
        assert_eq!(lookups(fx), before + 1);
    });
}

/// The daemon's routing follower bumps the generation when a neighbour changes.
#[test]
fn a_neighbour_change_moves_the_egress_generation() {
    with_fixture("egress_follow", |fx| {
        let follower = fx.dataplane.egress_generation().unwrap();
        let probe = fx.dataplane.egress_generation().unwrap();
        // The thread inherits this fixture thread's namespace, so its netlink socket
        // watches the fixture's interfaces. It ends with the test process.
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(lb_userspace::dataplane::follow_routing_changes(follower))
        });
        let timeout = std::time::Duration::from_secs(10);
        let subscribed = lb_tests::wait_until("the follower's first bump", timeout, || {
            let now = probe.current()?;
            Ok((now > 0).then_some(now))
        })
        .unwrap();
        let status = std::process::Command::new("ip")
            .args([
                "neigh",
                "replace",
                "198.18.11.2",
                "lladdr",
                "02:00:00:00:00:53",
            ])
            .args(["dev", "fxs", "nud", "permanent"])
            .status()
            .unwrap();
        assert!(status.success());
        lb_tests::wait_until("a bump after the neighbour change", timeout, || {
            Ok((probe.current()? != subscribed).then_some(()))
        })
        .unwrap();
    });
}

#[test]
fn the_collector_sweeps_a_slice_per_tick_and_applies_whole_table_counts_per_cycle() {
    use lb_common::{
        flow::Timeouts,
        maps::{ENTRY_COUNTED, FLOW_CLOSING, FLOW_ESTABLISHED, MAP_SNAT},
    };
    use lb_userspace::dataplane::Retired;
    with_fixture("slices", |fx| {
        // A real established flow gives the shapes of both entries and a server id.
        fx.run(&tcp(TCP_SYN, 48000), fx.client_ifindex);
        let first_key = key(CLIENT.into(), VIP.into(), 48000, 80, 6);
        let snat_port = u16::from_be(fx.tracked(&first_key).unwrap().sport);
        fx.run(&server_tcp(TCP_SYN_ACK, snat_port), fx.server_ifindex);
        fx.run(&tcp(ACK, 48000), fx.client_ifindex);
        let first = fx.tracked(&first_key).unwrap();
        let server = first.server_id;
        assert_eq!(fx.dataplane.server_active(server).unwrap(), 1);

        // 3000 more flows written behind the data plane's back (so its counter still says
        // 1): even ones established and fresh, odd ones closing and idle for 20 s.
        let now = lb_userspace::dataplane::monotonic_now_ns();
        let flows: Vec<(FlowKey, NatEntry)> = (0..3000u32)
            .map(|i| {
                let k = key(
                    Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8).into(),
                    VIP.into(),
                    2000,
                    80,
                    6,
                );
                let closing = i % 2 == 1;
                let entry = NatEntry {
                    // Outside the SNAT range: no clash with the real flow's port.
                    sport: (40_000 + i as u16).to_be(),
                    state: if closing {
                        FLOW_CLOSING
                    } else {
                        FLOW_ESTABLISHED
                    },
                    flags: ENTRY_COUNTED,
                    last_seen_ns: if closing { now - 20_000_000_000 } else { now },
                    ..first
                };
                (k, entry)
            })
            .collect();
        let orphans: Vec<(FlowKey, NatEntry)> = (0..10u16)
            .map(|i| {
                let gone = NatEntry {
                    sport: (45_000 + i).to_be(),
                    ..first
                };
                let reverse = NatEntry {
                    src: first_key.dst,
                    dst: first_key.src,
                    sport: first_key.dport,
                    dport: (3000 + i).to_be(),
                    last_seen_ns: now - 5_000_000_000,
                    ..first
                };
                (gone.reply_key(6), reverse)
            })
            .collect();
        {
            let map = fx.dataplane.ebpf_mut().map_mut(MAP_CONNTRACK).unwrap();
            let mut ct: BpfHashMap<&mut MapData, FlowKey, NatEntry> =
                BpfHashMap::try_from(map).unwrap();
            for (k, e) in &flows {
                ct.insert(k, e, 0).unwrap();
            }
        }
        {
            let map = fx.dataplane.ebpf_mut().map_mut(MAP_SNAT).unwrap();
            let mut snat: BpfHashMap<&mut MapData, FlowKey, NatEntry> =
                BpfHashMap::try_from(map).unwrap();
            for (k, e) in &flows {
                let reverse = NatEntry {
                    src: k.dst,
                    dst: k.src,
                    sport: k.dport,
                    dport: k.sport,
                    ..*e
                };
                snat.insert(e.reply_key(6), reverse, 0).unwrap();
            }
            // Ten reverse entries past the grace period whose flows are gone: orphans.
            for (k, e) in &orphans {
                snat.insert(k, e, 0).unwrap();
            }
        }

        let mut collector = fx.dataplane.collector().unwrap();
        let t = Timeouts::default();
        let none = Retired::default();
        // An id retired once the first cycle is under way: not reported by that cycle.
        let retired = Retired {
            servers: vec![9999],
            ..Retired::default()
        };
        let (mut ticks, mut expired, mut orphaned) = (0, 0, 0);
        let report = loop {
            let r = collector
                .tick(
                    now,
                    &t,
                    &[server],
                    if ticks == 0 { &none } else { &retired },
                    500,
                )
                .unwrap();
            ticks += 1;
            expired += r.expired;
            orphaned += r.orphans;
            if r.complete {
                break r;
            }
            assert_eq!(r.flows, 0, "no whole-table count before a cycle completes");
            assert_eq!(
                fx.dataplane.server_active(server).unwrap(),
                1,
                "counts are reconciled only when a cycle completes"
            );
        };
        assert!(
            ticks >= 9,
            "3001 flows, then the 1501 reverse entries left, in slices of 500 took {ticks} ticks"
        );
        assert_eq!(report.flows, 3001);
        assert_eq!(expired, 1500);
        assert_eq!(orphaned, 10, "reverse entries without a flow are removed");
        {
            let map = fx.dataplane.ebpf_mut().map(MAP_SNAT).unwrap();
            let snat: BpfHashMap<&MapData, FlowKey, NatEntry> = BpfHashMap::try_from(map).unwrap();
            assert!(orphans.iter().all(|(k, _)| snat.get(k, 0).is_err()));
        }
        assert_eq!(report.active.get(&server).copied(), Some(1501));
        assert_eq!(fx.dataplane.server_active(server).unwrap(), 1501);
        assert_eq!(
            report
                .snat_ports_used
                .get(&(server, 6, addr16(SNAT.into())))
                .copied()
                .unwrap_or(0),
            1501,
            "the reverse entries of expired flows went with them"
        );
        assert!(
            report.unused.is_empty(),
            "the cycle began before 9999 retired"
        );
        for (i, (k, e)) in flows.iter().enumerate() {
            assert_eq!(fx.tracked(k).is_some(), i % 2 == 0, "flow {i}");
            let map = fx.dataplane.ebpf_mut().map(MAP_SNAT).unwrap();
            let snat: BpfHashMap<&MapData, FlowKey, NatEntry> = BpfHashMap::try_from(map).unwrap();
            assert_eq!(
                snat.get(&e.reply_key(6), 0).is_ok(),
                i % 2 == 0,
                "reverse {i}"
            );
        }

        // The next cycle began with 9999 retired: it is reported unused when that ends.
        let report = loop {
            let r = collector.tick(now, &t, &[server], &retired, 500).unwrap();
            if r.complete {
                break r;
            }
            assert_eq!(r.flows, 3001, "between cycles, the last cycle's counts");
            assert!(r.unused.is_empty());
        };
        assert_eq!(report.unused.servers, vec![9999]);
        assert_eq!(report.cycles, 2);
    });
}

/// The "two-snat" frontend (198.18.100.4, SNAT 198.18.2.1 and .2, ports 20000-20015):
/// flows spread over both addresses; once every port of the first towards the server is
/// held, new flows get the second, and the server's replies to it go back to the client.
#[test]
fn a_second_snat_address_takes_flows_once_the_first_is_exhausted() {
    use lb_common::maps::{ENTRY_REVERSE, MAP_SNAT};
    const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 4);
    with_fixture("two_snat", |fx| {
        let range = TWO_SNAT_MIN..TWO_SNAT_MIN + TWO_SNAT_PORTS;
        // UDP flows spread by hash over both addresses, every port in the range.
        let mut sources = std::collections::HashSet::new();
        let mut server = None;
        for sport in 42000..42016 {
            let frame = client_frame(CLIENT.into(), VIP4.into(), sport, 53, L4::Udp).build(b"x");
            assert_eq!(fx.run(&frame, fx.client_ifindex).0, XDP_REDIRECT);
            let t = fx
                .tracked(&key(CLIENT.into(), VIP4.into(), sport, 53, 17))
                .expect("tracked");
            assert!(
                range.contains(&u16::from_be(t.sport)),
                "{}",
                u16::from_be(t.sport)
            );
            sources.insert(t.src);
            server = Some(t.server_id);
        }
        let server = server.unwrap();
        assert_eq!(
            sources,
            [addr16(SNAT.into()), addr16(SNAT2.into())].into(),
            "16 flows use both addresses"
        );

        // Every port of the first address towards 198.18.11.2:8081 over TCP is held (by
        // entries without a flow, which no SYN reclaims).
        {
            let map = fx.dataplane.ebpf_mut().map_mut(MAP_SNAT).unwrap();
            let mut snat: BpfHashMap<&mut MapData, FlowKey, NatEntry> =
                BpfHashMap::try_from(map).unwrap();
            for port in range.clone() {
                let k = key(SERVER.into(), SNAT.into(), 8081, port, 6);
                let holder = NatEntry {
                    src: addr16(VIP4.into()),
                    dst: addr16(Ipv4Addr::new(198, 19, 0, 1).into()),
                    sport: 80u16.to_be(),
                    dport: port.to_be(),
                    flags: ENTRY_REVERSE,
                    server_id: server,
                    last_seen_ns: lb_userspace::dataplane::monotonic_now_ns(),
                    ..NatEntry::default()
                };
                snat.insert(k, holder, 0).unwrap();
            }
        }
        let exhausted = fx.counter("drop_snat_exhausted");
        let mut opened = Vec::new();
        for sport in 43000..43008 {
            let syn = client_frame(
                CLIENT.into(),
                VIP4.into(),
                sport,
                80,
                L4::Tcp { flags: TCP_SYN },
            )
            .build(b"");
            let (verdict, out) = fx.run(&syn, fx.client_ifindex);
            if verdict == XDP_DROP {
                continue;
            }
            assert_eq!(verdict, XDP_REDIRECT);
            let t = fx
                .tracked(&key(CLIENT.into(), VIP4.into(), sport, 80, 6))
                .expect("tracked");
            assert_eq!(
                t.src,
                addr16(SNAT2.into()),
                "the first address has no port left"
            );
            let port = u16::from_be(t.sport);
            assert!(range.contains(&port));
            let expected = Frame {
                dst_mac: SERVER_MAC,
                src_mac: SERVER_SIDE_MAC,
                vlan: None,
                src: SNAT2.into(),
                dst: SERVER.into(),
                sport: port,
                dport: 8081,
                l4: L4::Tcp { flags: TCP_SYN },
            }
            .build(b"");
            assert_eq!(out, expected, "SYN rewritten to 198.18.2.2 -> server:8081");
            opened.push((sport, port));
        }
        assert!(!opened.is_empty(), "8 SYNs, 16 free pairs: some open");
        assert_eq!(
            fx.counter("drop_snat_exhausted") - exhausted,
            8 - opened.len() as u64,
            "the others tried only taken pairs"
        );

        // The server's answer to the second address goes back to its client.
        let (sport, port) = opened[0];
        let reply = Frame {
            dst_mac: SERVER_SIDE_MAC,
            src_mac: SERVER_MAC,
            vlan: None,
            src: SERVER.into(),
            dst: SNAT2.into(),
            sport: 8081,
            dport: port,
            l4: L4::Tcp { flags: TCP_SYN_ACK },
        };
        let (verdict, out) = fx.run(&reply.build(b""), fx.server_ifindex);
        assert_eq!(verdict, XDP_REDIRECT);
        let expected = Frame {
            dst_mac: CLIENT_MAC,
            src_mac: CLIENT_SIDE_MAC,
            src: VIP4.into(),
            dst: CLIENT.into(),
            sport: 80,
            dport: sport,
            ..reply
        }
        .build(b"");
        assert_eq!(out, expected, "reply rewritten to VIP -> client");
        assert!(checksums_valid(&out));

        // The collector counts ports per address.
        let now = lb_userspace::dataplane::monotonic_now_ns();
        let r = fx
            .dataplane
            .gc(now, &lb_common::flow::Timeouts::default())
            .unwrap();
        assert_eq!(
            fx.tracked(&key(CLIENT.into(), VIP4.into(), sport, 80, 6))
                .unwrap()
                .server_id,
            server
        );
        assert_eq!(
            r.snat_ports_used
                .get(&(server, 6, addr16(SNAT2.into())))
                .copied(),
            Some(opened.len() as u64)
        );
        assert_eq!(
            r.snat_ports_used
                .get(&(server, 6, addr16(SNAT.into())))
                .copied(),
            Some(u64::from(TWO_SNAT_PORTS)),
            "the first address's ports are all held (the holders are younger than the grace period)"
        );
    });
}

/// DSR with `dsr_stateless_fallback`: a mid-stream packet of a flow this node does not track
/// (another ECMP node's) goes to the server the Maglev table gives its tuple, the one a
/// SYN of that tuple gets, and is tracked as established from then on; without the option
/// the same packet is dropped.
#[test]
fn dsr_stateless_fallback_sends_an_untracked_ack_where_its_syn_would_go() {
    use lb_common::maps::{ENTRY_COUNTED, ENTRY_DSR, ENTRY_ESTABLISHED, FLOW_ESTABLISHED};
    with_fixture("dsr_fallback", |fx| {
        const DSR: &str = r#"
[[frontends]]
name = "dsr"
mode = "tcp"
address = "198.18.100.5"
binds = [{ port = 8080 }]
default_backend = "dsr-servers"
interfaces = ["fxc", "fxs"]
forwarding = "dsr"
dsr_stateless_fallback = FALLBACK

[[backends]]
name = "dsr-servers"
mode = "tcp"
balancing_method = "maglev"
port = 8080
servers = { type = "addresses", addresses = [{ address = "198.18.11.2" }, { address = "198.18.11.3" }, { address = "198.18.11.4" }] }
"#;
        let vip: IpAddr = "198.18.100.5".parse().unwrap();
        let apply = |fx: &mut Fixture, fallback: bool| {
            let text = format!("{CONFIG}{}", DSR.replace("FALLBACK", &fallback.to_string()));
            let config = Config::parse("fixture.toml", &text).unwrap();
            fx.dataplane.apply_config(&config).unwrap();
        };
        let frame = |flags: u8, sport: u16| {
            client_frame(CLIENT.into(), vip, sport, 8080, L4::Tcp { flags }).build(b"")
        };
        let forget = |fx: &mut Fixture, k: &FlowKey| {
            let map = fx.dataplane.ebpf_mut().map_mut(MAP_CONNTRACK).unwrap();
            let mut ct: BpfHashMap<&mut MapData, FlowKey, NatEntry> =
                BpfHashMap::try_from(map).unwrap();
            ct.remove(k).unwrap();
        };

        // Without the option: dropped, as any mid-stream packet without state.
        apply(fx, false);
        let no_flow = fx.counter("drop_tcp_no_flow");
        assert_eq!(fx.run(&frame(ACK, 42000), fx.client_ifindex).0, XDP_DROP);
        assert_eq!(fx.counter("drop_tcp_no_flow"), no_flow + 1);

        apply(fx, true);
        for sport in 42001..42009 {
            let k = key(CLIENT.into(), vip, sport, 8080, 6);
            let (verdict, _) = fx.run(&frame(ACK, sport), fx.client_ifindex);
            assert_ne!(verdict, XDP_DROP, "port {sport}");
            let fallback = fx.tracked(&k).expect("tracked from the ACK on");
            assert_eq!(fallback.state, FLOW_ESTABLISHED);
            assert_eq!(
                fallback.flags & (ENTRY_DSR | ENTRY_COUNTED | ENTRY_ESTABLISHED),
                ENTRY_DSR | ENTRY_COUNTED | ENTRY_ESTABLISHED
            );
            // The same tuple's SYN, on a node without the entry, gets the same server.
            forget(fx, &k);
            fx.run(&frame(TCP_SYN, sport), fx.client_ifindex);
            let syn = fx.tracked(&k).expect("tracked from the SYN");
            assert_eq!(syn.server_id, fallback.server_id, "port {sport}");
        }
        assert_eq!(fx.counter("flow_stateless_fallback"), 8);
        assert_eq!(fx.counter("drop_tcp_no_flow"), no_flow + 1);
    });
}
