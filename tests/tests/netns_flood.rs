//! A spoofed SYN flood against the VIP (issue 13): 10 s at 5000 SYN/s, more than twice the
//! SNAT ports lb has towards its one server. Established connections keep exchanging data
//! during and after it, new connections are served during it and within a second of its
//! end, and the half-open flows it leaves never count as sessions.

use std::{
    net::{SocketAddr, SocketAddrV4},
    sync::mpsc,
    time::{Duration, Instant},
};

use lb_tests::{
    flood::{SPOOFED_NET, Sent, SynFlood, mac_of},
    netns::NetNs,
    require_root,
    topology::{SERVER_PORT, Topology, VIP, VIP_TCP_PORT, lb_binary, nat_frontend_toml},
    traffic::{LongConn, connect_by, exchange_all, metric, scrape_metrics_when},
};

/// The frontend's `snat_ports`: the default range (64512 ports) would take a flood three
/// times as long to exceed twice over.
const SNAT_PORTS_TOML: &str = "10000-32767";
const SNAT_PORTS: u32 = 32767 - 10000 + 1;
const RATE: u64 = 5000;
/// The flood's first part; its second part runs while new connections are tried.
const FIRST: Duration = Duration::from_secs(7);
const SECOND: Duration = Duration::from_secs(3);
const ESTABLISHED: usize = 20;
const NEW: usize = 10;
/// The issue's bound for new connections once the flood is over.
const WITHIN: Duration = Duration::from_secs(1);

/// Start one part of the flood in the client's namespace; its result arrives on the channel.
fn flood(topo: &Topology, first_source: u64, duration: Duration) -> mpsc::Receiver<Sent> {
    let flood = SynFlood {
        ifname: "eth0".into(),
        src_mac: mac_of(&topo.client, "eth0").unwrap(),
        dst_mac: mac_of(&topo.lb, "eth-c").unwrap(),
        target: SocketAddrV4::new(VIP, VIP_TCP_PORT),
        first_source,
    };
    let (tx, rx) = mpsc::channel();
    topo.client
        .run(move || {
            let _ = tx.send(flood.run(Some(RATE), duration).unwrap());
        })
        .unwrap();
    rx
}

/// Exchange on every connection until the flood part reports its end (at least once).
fn exchange_until(
    client: &NetNs,
    mut conns: Vec<LongConn>,
    done: &mpsc::Receiver<Sent>,
    limit: Duration,
) -> (Vec<LongConn>, Sent) {
    let mut rounds = 0;
    loop {
        conns = exchange_all(client, conns).unwrap();
        rounds += 1;
        // A bounded wait for the flood's end, not a guess at how long anything takes.
        match done.recv_timeout(Duration::from_millis(500)) {
            Ok(sent) => {
                eprintln!(
                    "netns_flood: {rounds} rounds of {ESTABLISHED} exchanges during the flood"
                );
                return (conns, sent);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                assert!(
                    rounds < limit.as_millis() as usize / 500 + 10,
                    "the flood did not end"
                );
            }
            Err(e) => panic!("flood thread: {e}"),
        }
    }
}

#[test]
fn established_and_new_connections_survive_a_spoofed_syn_flood() {
    if !require_root("netns_flood") {
        return;
    }
    let lb = lb_binary().unwrap();
    let id = std::process::id();
    let topo = Topology::new(&format!("lbf{id}"), 1).unwrap();
    topo.start_peers(&lb).unwrap();
    let _servers = topo.start_name_servers(SERVER_PORT).unwrap();
    // Spoofed sources never answer: lb's kernel drops the servers' SYN-ACKs to them.
    topo.lb
        .exec(&["ip", "route", "add", "blackhole", SPOOFED_NET])
        .unwrap();
    let config = std::env::temp_dir().join(format!("lbf{id}.toml"));
    let text = format!(
        r#"{}snat_ports = "{SNAT_PORTS_TOML}"

[[backends]]
name = "flood"
mode = "tcp"
balancing_method = "roundrobin"
port = {SERVER_PORT}
servers = {{ type = "addresses", addresses = [{{ address = "198.18.11.2" }}] }}

[metrics]
listen = "198.18.0.1:9100"

[dataplane]
gc_interval = "200ms"
"#,
        nat_frontend_toml("flood", VIP_TCP_PORT, 1)
    );
    std::fs::write(&config, text).unwrap();
    topo.start_lb(&lb, &config).unwrap();

    let target: SocketAddr = (VIP, VIP_TCP_PORT).into();
    let conns = topo
        .client
        .run(move || {
            (0..ESTABLISHED)
                .map(|_| LongConn::open(None, target).unwrap())
                .collect::<Vec<_>>()
        })
        .unwrap()
        .join()
        .unwrap();

    // The first 7 s: 35000 SYNs, half again the server's 22768 SNAT ports. Without the
    // ports of idle handshakes given up, every port would now be held.
    let done = flood(&topo, 0, FIRST);
    let (conns, first) = exchange_until(&topo.client, conns, &done, FIRST);
    assert!(
        first.packets > SNAT_PORTS as u64 * 3 / 2,
        "the flood sent {} SYNs in {:?}",
        first.packets,
        first.elapsed
    );
    // The last 3 s: new connections are served while the flood goes on.
    let done = flood(&topo, first.next_source, SECOND);
    let during = connect_by(&topo.client, target, 1, Instant::now() + WITHIN)
        .expect("a new connection is served during the flood");
    let (conns, second) = exchange_until(&topo.client, conns, &done, SECOND);
    let ended = Instant::now();
    let sent = first.packets + second.packets;
    eprintln!(
        "netns_flood: {sent} spoofed SYNs in {:?}",
        first.elapsed + second.elapsed
    );
    assert!(sent > 2 * u64::from(SNAT_PORTS));

    // Within a second of the flood's end, new connections are served.
    let fresh = connect_by(&topo.client, target, NEW, ended + WITHIN)
        .expect("new connections within 1 s of the flood's end");
    // Every established connection still answers, from its server.
    let conns = exchange_all(&topo.client, conns).unwrap();

    // The flood's handshakes never count as sessions: exactly the connections open now do.
    let open = ESTABLISHED + during.len() + fresh.len();
    let frontend = "{frontend=\"flood\"}";
    let text = scrape_metrics_when(
        &topo.client,
        ([198, 18, 0, 1], 9100).into(),
        &format!("{open} current sessions and the flood's half-open flows"),
        Duration::from_secs(5),
        move |text| {
            metric(text, &format!("lb_frontend_current_sessions{frontend}")) == Some(open as f64)
                && metric(text, "lb_conntrack_half_open ").is_some_and(|n| n > 0.0)
        },
    )
    .unwrap();
    let xdp =
        |counter: &str| metric(&text, &lb_common::stats::metric_sample(counter)).unwrap_or(0.0);
    let syns = xdp("flow_new") + xdp("drop_snat_exhausted");
    eprintln!(
        "netns_flood: lb saw {syns} SYNs of new flows: {} reclaimed a port, {} found none",
        xdp("flow_syn_reclaimed"),
        xdp("drop_snat_exhausted")
    );
    assert!(syns >= sent as f64, "lb saw {syns} of the {sent} SYNs sent");
    assert!(
        xdp("flow_syn_reclaimed") > 0.0,
        "idle handshakes gave their ports to new SYNs"
    );
    let ports = |state: &str| {
        metric(
            &text,
            &format!(
                "lb_snat_ports{{backend=\"flood\",server=\"198.18.11.2\",protocol=\"tcp\",address=\"198.18.2.1\",state=\"{state}\"}}"
            ),
        )
        .unwrap_or_else(|| panic!("no lb_snat_ports {state} sample in:\n{text}"))
    };
    let (used, free) = (ports("used"), ports("free"));
    assert_eq!(used + free, f64::from(SNAT_PORTS));
    assert!(used >= open as f64, "{used} ports used");
    drop((conns, during, fresh));
    let _ = std::fs::remove_file(&config);
}
