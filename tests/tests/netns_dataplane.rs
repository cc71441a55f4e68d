//! The XDP data plane's promises, each proved with real TCP/UDP clients and servers in
//! network namespaces: every balancing method, source stickiness, drain, Maglev disruption,
//! DSR and IPv6. The data plane runs in-process here (the test thread enters the lb
//! namespace), so a test can change the config and run the garbage collector at will.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Mutex,
};

use lb_common::maps::PROG_LB;
use lb_tests::{
    require_root,
    topology::{
        CLIENT_ADDR, CLIENT6_ADDR, SERVER_PORT, Topology, VIP, VIP6, lb_binary, server_addr,
        server_name,
    },
    traffic::{LongConn, NameServers, Tally, drive_tcp, start_name_servers, udp_request_from},
    wait_until,
};
use lb_userspace::{
    config::Config,
    dataplane::{Dataplane, monotonic_now_ns},
};

/// netns tests share two CPUs: one at a time keeps them deterministic.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

struct Bed {
    dataplane: Dataplane,
    topo: Topology,
    _servers: NameServers,
    _lock: std::sync::MutexGuard<'static, ()>,
}

/// One server entry: weight and optional max_conn.
#[derive(Clone, Copy)]
struct Srv(u32, Option<u32>);

/// A config for the topology's VIP (TCP 80, UDP 53) and its servers.
fn config(
    method: &str,
    servers: &[Srv],
    backend_options: &str,
    frontend_extra: &str,
    v6: bool,
) -> String {
    let list: Vec<String> = servers
        .iter()
        .enumerate()
        .map(|(i, Srv(weight, max_conn))| {
            let address = if v6 {
                format!("2001:2:0:{:x}::2", 0x11 + i)
            } else {
                format!("198.18.{}.2", 11 + i)
            };
            match max_conn {
                Some(m) => {
                    format!(r#"{{ address = "{address}", weight = {weight}, max_conn = {m} }}"#)
                }
                None => format!(r#"{{ address = "{address}", weight = {weight} }}"#),
            }
        })
        .collect();
    let interfaces: Vec<String> = std::iter::once("\"eth-c\"".to_string())
        .chain((1..=servers.len()).map(|i| format!("\"s{i}\"")))
        .collect();
    let (vip, snat) = if v6 {
        (VIP6.to_string(), "2001:2:0:2::1".to_string())
    } else {
        (VIP.to_string(), "198.18.2.1".to_string())
    };
    format!(
        r#"
[[frontends]]
name = "test"
mode = "tcp"
address = "{vip}"
binds = [{{ port = 80 }}, {{ port = 53, protocol = "udp" }}]
default_backend = "servers"
interfaces = [{}]
snat_address = "{snat}"
{frontend_extra}

[[backends]]
name = "servers"
mode = "tcp"
balancing_method = "{method}"
port = {SERVER_PORT}
servers = {{ type = "addresses", addresses = [{}] }}
{backend_options}
"#,
        interfaces.join(", "),
        list.join(", ")
    )
}

fn bed(name: &str, server_count: usize, config_text: &str) -> Option<Bed> {
    if !require_root(name) {
        return None;
    }
    let lock = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let topo = Topology::new(
        &format!(
            "lbd{}{}",
            std::process::id() % 10000,
            &name[..name.len().min(6)]
        ),
        server_count,
    )
    .unwrap();
    topo.start_peers(&lb_binary().unwrap()).unwrap();
    topo.client
        .exec(&["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"])
        .unwrap();
    let servers = topo.start_name_servers(SERVER_PORT).unwrap();
    // This test thread now lives in the lb namespace: interfaces resolve there.
    let ns = File::open(format!("/run/netns/{}", topo.lb.name)).unwrap();
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    let config = Config::parse("test.toml", config_text).unwrap_or_else(|e| panic!("{e}"));
    let mut dataplane = Dataplane::load_with(config.dataplane.conntrack_size).unwrap();
    for iface in config.interfaces() {
        dataplane
            .attach(PROG_LB, &iface, lb_userspace::config::XdpAttach::Auto)
            .unwrap();
        dataplane
            .add_tx_port(nix::net::if_::if_nametoindex(iface.as_str()).unwrap())
            .unwrap();
    }
    dataplane.apply_config(&config).unwrap();
    Some(Bed {
        dataplane,
        topo,
        _servers: servers,
        _lock: lock,
    })
}

impl Bed {
    fn apply(&mut self, config_text: &str) {
        let config = Config::parse("test.toml", config_text).unwrap_or_else(|e| panic!("{e}"));
        self.dataplane.apply_config(&config).unwrap();
    }

    /// Run `f` in the client namespace and wait for it.
    fn client<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.topo.client.run(f).unwrap().join().unwrap()
    }

    /// The open flows the data plane counts for server `i` (what `first` and `leastconn`
    /// read).
    fn open_flows(&self, i: usize) -> u64 {
        let address = IpAddr::V4(server_addr(i));
        let id = self
            .dataplane
            .inventory()
            .servers
            .into_iter()
            .find(|s| s.present && s.address == address)
            .unwrap_or_else(|| panic!("{address} is not in the data plane"))
            .id;
        self.dataplane.server_active(id).unwrap()
    }

    /// Wait until the data plane counts `open` flows on server `i`.
    fn wait_open_flows(&self, i: usize, open: u64) {
        wait_until(
            &format!("{open} open flows counted on {}", server_name(i)),
            std::time::Duration::from_secs(5),
            || match self.open_flows(i) {
                n if n == open => Ok(Some(())),
                n => anyhow::bail!("{n} counted"),
            },
        )
        .unwrap();
    }

    fn counter(&self, label: &str) -> u64 {
        self.dataplane
            .stats()
            .unwrap()
            .into_iter()
            .find(|(l, _)| *l == label)
            .unwrap()
            .1
    }
}

fn vip_tcp() -> SocketAddr {
    (VIP, 80).into()
}

fn assert_shares(tally: &Tally, expected: &[f64], tolerance: f64) {
    assert_eq!(tally.failed, 0, "failures: {:?}", tally.errors);
    let shares = tally.shares();
    for (i, e) in expected.iter().enumerate() {
        let share = shares.get(&server_name(i)).copied().unwrap_or(0.0);
        assert!(
            (share - e).abs() <= tolerance,
            "{}: {share:.2}% vs {e}% ± {tolerance}: {}",
            server_name(i),
            tally.summary()
        );
    }
}

#[test]
fn roundrobin_shares_follow_weights_within_two_points_over_10000_connections() {
    let Some(bed) = bed(
        "rr",
        3,
        &config(
            "roundrobin",
            &[Srv(1, None), Srv(1, None), Srv(2, None)],
            "",
            "",
            false,
        ),
    ) else {
        return;
    };
    let tally = drive_tcp(&bed.topo.client, vip_tcp(), 10_000, 1, 4).unwrap();
    println!("roundrobin: {}", tally.summary());
    assert_shares(&tally, &[25.0, 25.0, 50.0], 2.0);
}

#[test]
fn maglev_and_source_hash_follow_weights() {
    let Some(mut bed) = bed(
        "hash",
        3,
        &config(
            "maglev",
            &[Srv(1, None), Srv(1, None), Srv(2, None)],
            "",
            "",
            false,
        ),
    ) else {
        return;
    };
    let tally = drive_tcp(&bed.topo.client, vip_tcp(), 3000, 1, 4).unwrap();
    println!("maglev: {}", tally.summary());
    assert_shares(&tally, &[25.0, 25.0, 50.0], 5.0);

    // Source hash: 50 client addresses, 4 connections each; every address keeps its server
    // while the servers are unchanged.
    bed.apply(&config(
        "source",
        &[Srv(1, None), Srv(1, None), Srv(2, None)],
        "",
        "",
        false,
    ));
    for i in 0..50 {
        bed.topo
            .client
            .exec(&[
                "ip",
                "addr",
                "add",
                &format!("198.18.0.{}/24", 100 + i),
                "dev",
                "eth0",
            ])
            .unwrap();
    }
    let per_address: BTreeMap<u8, Vec<String>> = bed.client(|| {
        (0..50u8)
            .map(|i| {
                let source: SocketAddr = (Ipv4Addr::new(198, 18, 0, 100 + i), 0).into();
                let servers = (0..4)
                    .map(|_| LongConn::open(Some(source), vip_tcp()).unwrap().server)
                    .collect();
                (i, servers)
            })
            .collect()
    });
    let mut distinct = std::collections::BTreeSet::new();
    for (i, servers) in &per_address {
        assert!(
            servers.iter().all(|s| *s == servers[0]),
            "address .{} moved: {servers:?}",
            100 + i
        );
        distinct.insert(servers[0].clone());
    }
    assert_eq!(distinct.len(), 3, "50 addresses spread over all servers");
}

#[test]
fn source_ip_stickiness_keeps_each_of_50_clients_on_one_server_until_ttl() {
    let sticky = "options = { sticky_session = { type = \"source_ip\", ttl = \"5m\" } }";
    let Some(bed) = bed(
        "sticky",
        3,
        &config(
            "roundrobin",
            &[Srv(1, None), Srv(1, None), Srv(1, None)],
            sticky,
            "",
            false,
        ),
    ) else {
        return;
    };
    for i in 0..50 {
        bed.topo
            .client
            .exec(&[
                "ip",
                "addr",
                "add",
                &format!("198.18.0.{}/24", 100 + i),
                "dev",
                "eth0",
            ])
            .unwrap();
    }
    // Round robin would spread each client's 5 connections over all servers; stickiness
    // keeps them together.
    let per_address: Vec<Vec<String>> = bed.client(|| {
        (0..50u8)
            .map(|i| {
                let source: SocketAddr = (Ipv4Addr::new(198, 18, 0, 100 + i), 0).into();
                (0..5)
                    .map(|_| LongConn::open(Some(source), vip_tcp()).unwrap().server)
                    .collect()
            })
            .collect()
    });
    for (i, servers) in per_address.iter().enumerate() {
        assert!(
            servers.iter().all(|s| *s == servers[0]),
            "client {i} moved: {servers:?}"
        );
    }
    assert!(bed.counter("sticky_hit") >= 50 * 4);
}

#[test]
fn first_fills_server_one_to_max_conn_then_server_two() {
    let servers = [Srv(1, Some(5)), Srv(1, Some(5)), Srv(1, Some(5))];
    let Some(bed) = bed("first", 3, &config("first", &servers, "", "", false)) else {
        return;
    };
    let (conns, names) = bed.client(|| {
        let conns: Vec<LongConn> = (0..12)
            .map(|_| LongConn::open(None, vip_tcp()).unwrap())
            .collect();
        let names: Vec<String> = conns.iter().map(|c| c.server.clone()).collect();
        (conns, names)
    });
    assert_eq!(&names[..5], &vec![server_name(0); 5][..], "{names:?}");
    assert_eq!(&names[5..10], &vec![server_name(1); 5][..], "{names:?}");
    assert_eq!(&names[10..], &vec![server_name(2); 2][..], "{names:?}");
    // Closing one on server 1 makes room there again.
    let mut conns = conns;
    conns.remove(0);
    bed.wait_open_flows(0, 4);
    let next = bed.client(|| LongConn::open(None, vip_tcp()).unwrap().server);
    assert_eq!(next, server_name(0));
    drop(conns);
}

#[test]
fn leastconn_sends_new_flows_to_the_least_loaded_by_weight() {
    let Some(bed) = bed(
        "least",
        3,
        &config(
            "leastconn",
            &[Srv(1, None), Srv(1, None), Srv(2, None)],
            "",
            "",
            false,
        ),
    ) else {
        return;
    };
    // Eight long-lived connections end 2:2:4, as weights 1:1:2 ask.
    let conns = bed.client(|| {
        (0..8)
            .map(|_| LongConn::open(None, vip_tcp()).unwrap())
            .collect::<Vec<_>>()
    });
    let mut count: HashMap<String, usize> = HashMap::new();
    for c in &conns {
        *count.entry(c.server.clone()).or_default() += 1;
    }
    assert_eq!(count.get(&server_name(0)), Some(&2), "{count:?}");
    assert_eq!(count.get(&server_name(1)), Some(&2), "{count:?}");
    assert_eq!(count.get(&server_name(2)), Some(&4), "{count:?}");
    // Connections of unequal length: close both of server 1's; the next two new flows go
    // there (it is now the least loaded), then the balance is restored.
    let (mut keep, closed): (Vec<_>, Vec<_>) =
        conns.into_iter().partition(|c| c.server != server_name(0));
    drop(closed);
    bed.wait_open_flows(0, 0);
    let next = bed.client(|| {
        (0..2)
            .map(|_| LongConn::open(None, vip_tcp()).unwrap())
            .collect::<Vec<_>>()
    });
    assert!(
        next.iter().all(|c| c.server == server_name(0)),
        "{:?}",
        next.iter().map(|c| &c.server).collect::<Vec<_>>()
    );
    keep.extend(next);
    // The kernel-side counts match the open connections, and survive reconciliation.
    let report = {
        let mut bed = bed;
        let r = bed
            .dataplane
            .gc(monotonic_now_ns(), &Default::default())
            .unwrap();
        drop(keep);
        r
    };
    let mut open: Vec<u64> = report.active.values().copied().collect();
    open.sort_unstable();
    assert_eq!(open, vec![2, 2, 4]);
    assert_eq!(report.active_per_frontend.get(&0), Some(&8));
}

#[test]
fn weight_zero_drains_existing_flows_continue_and_empty_backends_drop_with_reason() {
    let weights = [Srv(1, None), Srv(1, None), Srv(1, None)];
    let Some(mut bed) = bed("drain", 3, &config("roundrobin", &weights, "", "", false)) else {
        return;
    };
    let mut conns = bed.client(|| {
        (0..9)
            .map(|_| LongConn::open(None, vip_tcp()).unwrap())
            .collect::<Vec<_>>()
    });
    assert!(conns.iter().any(|c| c.server == server_name(2)));
    bed.apply(&config(
        "roundrobin",
        &[Srv(1, None), Srv(1, None), Srv(0, None)],
        "",
        "",
        false,
    ));
    let tally = drive_tcp(&bed.topo.client, vip_tcp(), 300, 1, 2).unwrap();
    assert_eq!(tally.failed, 0, "{:?}", tally.errors);
    assert!(
        !tally.per_server.contains_key(&server_name(2)),
        "drained server got new flows: {}",
        tally.summary()
    );
    // Established flows, including those on the drained server, continue.
    conns = bed.client(move || {
        for c in conns.iter_mut() {
            let s = c.exchange().unwrap();
            assert_eq!(s, c.server);
        }
        conns
    });
    drop(conns);
    // All weights 0: new flows are dropped and counted, per frontend too.
    bed.apply(&config(
        "roundrobin",
        &[Srv(0, None), Srv(0, None), Srv(0, None)],
        "",
        "",
        false,
    ));
    let before = bed.counter("drop_no_server");
    let tally = drive_tcp(&bed.topo.client, vip_tcp(), 3, 1, 1).unwrap();
    assert_eq!(tally.failed, 3);
    assert!(bed.counter("drop_no_server") > before);
    assert!(bed.dataplane.frontend_stats(0).unwrap().drop_no_server > 0);
}

#[test]
fn maglev_removing_one_of_ten_servers_moves_only_its_flows_and_established_survive() {
    let ten = [Srv(1, None); 10];
    let Some(mut bed) = bed("disrupt", 10, &config("maglev", &ten, "", "", false)) else {
        return;
    };
    // 50 established TCP connections, spread over the servers.
    let conns = bed.client(|| {
        (0..50)
            .map(|_| LongConn::open(None, vip_tcp()).unwrap())
            .collect::<Vec<_>>()
    });
    // 2000 UDP flows from fixed source ports: who serves each.
    let probe = || -> Vec<String> {
        (0..2000u16)
            .map(|i| udp_request_from((CLIENT_ADDR, 20000 + i).into(), (VIP, 53).into()).unwrap())
            .collect()
    };
    let before = bed.client(probe);
    bed.apply(&config("maglev", &ten[..9], "", "", false));
    // Forget the probes' UDP flows (older than the UDP timeout), keep the TCP connections.
    let timeouts = Config::parse("t", &config("maglev", &ten[..9], "", "", false))
        .unwrap()
        .dataplane
        .timeouts();
    bed.dataplane
        .gc(
            monotonic_now_ns() + timeouts.udp_ns + 1_000_000_000,
            &timeouts,
        )
        .unwrap();
    let after = bed.client(probe);
    let removed = server_name(9);
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let were_on_removed = before.iter().filter(|b| **b == removed).count();
    let moved_share = 100.0 * moved as f64 / 2000.0;
    println!(
        "maglev disruption: {moved} of 2000 flows moved ({moved_share:.2}%), {were_on_removed} were on the removed server"
    );
    assert!(
        moved_share <= 100.0 / 10.0 + 1.0,
        "{moved_share:.2}% moved; at most 1/N + 1 point allowed"
    );
    assert!(
        moved >= were_on_removed,
        "every flow of the removed server moved"
    );
    assert!(!after.contains(&removed));
    // Established connections continue, each on its server.
    bed.client(move || {
        let mut conns = conns;
        for c in conns.iter_mut() {
            assert_eq!(c.exchange().unwrap(), c.server);
        }
    });
}

#[test]
fn dsr_rewrites_only_the_mac_and_replies_bypass_the_balancer() {
    // L2 DSR cannot translate ports: the servers listen on the VIP's port, and hold the VIP.
    let text = config(
        "maglev",
        &[Srv(1, None), Srv(1, None), Srv(1, None)],
        "",
        "forwarding = \"dsr\"",
        false,
    )
    .replace(&format!("port = {SERVER_PORT}"), "port = 80")
    .replace(", { port = 53, protocol = \"udp\" }", "");
    let Some(bed) = bed("dsr", 3, &text) else {
        return;
    };
    let _on_80 = bed.topo.start_name_servers(80).unwrap();
    for server in &bed.topo.servers {
        for cmd in [
            format!("ip addr add {VIP}/32 dev lo"),
            "sysctl -qw net.ipv4.conf.all.arp_ignore=1".to_string(),
            "sysctl -qw net.ipv4.conf.all.arp_announce=2".to_string(),
        ] {
            server
                .exec(&cmd.split_whitespace().collect::<Vec<_>>())
                .unwrap();
        }
    }
    let tally = drive_tcp(&bed.topo.client, vip_tcp(), 300, 3, 2).unwrap();
    println!("dsr: {}", tally.summary());
    assert_eq!(tally.failed, 0, "{:?}", tally.errors);
    assert_eq!(tally.per_server.len(), 3);
    assert!(bed.counter("dsr_forward") > 0);
    assert_eq!(
        bed.counter("nat_reply"),
        0,
        "no reply went through the balancer's NAT"
    );
    // Replies never reached the balancer's flow table: per-server counters only go in.
    let stats = bed.dataplane.server_stats(0).unwrap();
    assert_eq!(stats.packets_out, 0);
    assert!(stats.packets_in > 0);
}

#[test]
fn ipv6_vips_servers_and_snat_work_for_tcp_and_udp() {
    let Some(bed) = bed(
        "ipv6",
        3,
        &config(
            "roundrobin",
            &[Srv(1, None), Srv(1, None), Srv(2, None)],
            "",
            "",
            true,
        ),
    ) else {
        return;
    };
    let target: SocketAddr = (VIP6, 80).into();
    let tally = drive_tcp(&bed.topo.client, target, 400, 3, 2).unwrap();
    println!("ipv6: {}", tally.summary());
    assert_shares(&tally, &[25.0, 25.0, 50.0], 2.0);
    let udp = bed.client(|| {
        (0..20u16)
            .map(|i| {
                udp_request_from(
                    (IpAddr::from(CLIENT6_ADDR), 30000 + i).into(),
                    (VIP6, 53).into(),
                )
                .unwrap()
            })
            .collect::<Vec<_>>()
    });
    assert_eq!(udp.len(), 20);
}

#[test]
fn counters_per_frontend_and_server_see_both_directions() {
    let Some(bed) = bed(
        "count",
        3,
        &config(
            "roundrobin",
            &[Srv(1, None), Srv(1, None), Srv(1, None)],
            "",
            "",
            false,
        ),
    ) else {
        return;
    };
    let tally = drive_tcp(&bed.topo.client, vip_tcp(), 30, 2, 1).unwrap();
    assert_eq!(tally.failed, 0);
    let fe = bed.dataplane.frontend_stats(0).unwrap();
    assert_eq!(fe.new_flows, 30);
    assert!(
        fe.packets_in >= 30 * 5 && fe.packets_out >= 30 * 4,
        "{fe:?}"
    );
    assert!(fe.bytes_in > fe.packets_in * 40);
    let per_server: Vec<u64> = (0..3)
        .map(|id| bed.dataplane.server_stats(id).unwrap().packets_in)
        .collect();
    assert!(per_server.iter().all(|p| *p > 0), "{per_server:?}");
    assert_eq!(per_server.iter().sum::<u64>(), fe.packets_in);
}

#[test]
fn path_mtu_discovery_works_through_the_balancer() {
    // lb --s1-- router (the s1 namespace) --far0, MTU 1400-- far server 198.18.21.2 (MTU 1500).
    // The far server advertises MSS 1460, so the client's full-size segments reach the
    // router, which answers "fragmentation needed" to the SNAT address. Only if lb
    // translates that error does the client learn the path MTU; else the segments vanish.
    let text = format!(
        r#"
[[frontends]]
name = "test"
mode = "tcp"
address = "{VIP}"
binds = [{{ port = 80 }}]
default_backend = "far"
interfaces = ["eth-c", "s1"]
snat_address = "198.18.2.1"

[[backends]]
name = "far"
mode = "tcp"
balancing_method = "maglev"
port = {SERVER_PORT}
servers = {{ type = "addresses", addresses = [{{ address = "198.18.21.2" }}] }}
"#
    );
    let Some(bed) = bed("pmtu", 1, &text) else {
        return;
    };
    let router = &bed.topo.servers[0];
    let far = lb_tests::netns::NetNs::new(&format!("{}-far", bed.topo.lb.name)).unwrap();
    lb_tests::topology::veth(router, "far0", &far, "eth0").unwrap();
    for (ns, cmd) in [
        (router, "ip link set far0 mtu 1400"),
        (router, "ip addr add 198.18.21.1/24 dev far0"),
        (router, "sysctl -qw net.ipv4.ip_forward=1"),
        (&far, "ip addr add 198.18.21.2/24 dev eth0"),
        (&far, "ip route add default via 198.18.21.1"),
        (&bed.topo.lb, "ip route add 198.18.21.0/24 via 198.18.11.2"),
    ] {
        ns.exec(&cmd.split_whitespace().collect::<Vec<_>>())
            .unwrap();
    }
    let _far_server = start_name_servers(&[(&far, "far".to_string())], SERVER_PORT).unwrap();
    let answer = bed.client(|| -> anyhow::Result<String> {
        use std::io::{BufRead as _, BufReader, Write as _};
        let conn =
            std::net::TcpStream::connect_timeout(&vip_tcp(), std::time::Duration::from_secs(3))?;
        conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
        let mut writer = conn.try_clone()?;
        // 20 kB in one line: many full-size segments.
        let mut line = vec![b'x'; 20_000];
        line.push(b'\n');
        writer.write_all(&line)?;
        let mut reply = String::new();
        BufReader::new(conn).read_line(&mut reply)?;
        Ok(reply.trim().to_string())
    });
    assert_eq!(answer.unwrap(), "far", "the large request got through");
    assert!(
        bed.counter("icmp_translated") > 0,
        "the router's error was translated"
    );
    drop(far);
}

#[test]
fn connections_through_each_of_two_snat_addresses_work() {
    let text = config("maglev", &[Srv(1, None), Srv(1, None)], "", "", false).replace(
        "snat_address = \"198.18.2.1\"",
        "snat_addresses = [\"198.18.2.1\", \"198.18.2.2\"]\nsnat_ports = \"20000-29999\"",
    );
    let Some(mut bed) = bed("snat2", 2, &text) else {
        return;
    };
    // Each connection completes its handshake and exchange through whichever address its
    // hash drew: servers route both back through lb.
    let tally = drive_tcp(&bed.topo.client, vip_tcp(), 200, 1, 4).unwrap();
    assert_eq!(tally.failed, 0, "failures: {:?}", tally.errors);
    // The flows (closing, still tracked) hold ports of both addresses.
    let report = bed
        .dataplane
        .gc(monotonic_now_ns(), &Default::default())
        .unwrap();
    let mut per_address: BTreeMap<IpAddr, u64> = BTreeMap::new();
    for ((_, proto, addr), used) in &report.snat_ports_used {
        if *proto == 6 {
            *per_address
                .entry(lb_userspace::dataplane::plan::ip_of(addr))
                .or_default() += used;
        }
    }
    let one: IpAddr = Ipv4Addr::new(198, 18, 2, 1).into();
    let two: IpAddr = Ipv4Addr::new(198, 18, 2, 2).into();
    assert_eq!(
        per_address.keys().copied().collect::<Vec<_>>(),
        vec![one, two],
        "{per_address:?}"
    );
    // At most one port per connection (a client port the kernel reused shares its flow).
    assert!(per_address.values().sum::<u64>() <= 200, "{per_address:?}");
}
