//! High availability with traffic: a client with 50 long-lived TCP flows (an exchange every
//! 100 ms), 20 UDP flows and 20 sticky clients through a pair of lb nodes with keepalived.
//! The master fails three ways (its links go down; it hangs: lb and keepalived SIGSTOPped;
//! lb alone is killed) and each time, on the new master, every flow older than the sync
//! interval still exchanges with its server, UDP flows keep their servers, sticky clients
//! keep theirs, nothing is dropped for want of a flow (`drop_tcp_no_flow` 0), and new
//! connections succeed within 3 advert intervals and a second. Then the old master comes
//! back, stays out until it has the new master's bulk sync, takes over again, and again
//! nothing is lost. A split brain (the link between the nodes cut, both master) loses
//! nothing either, and is counted.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, SocketAddrV4},
    sync::Mutex,
    time::{Duration, Instant},
};

use lb_tests::{
    pair::{
        CLIENT_ADDR, CLIENT_IF, GATEWAY, LongFlow, Node, Pair, PairOptions, SERVER_IF, VIP,
        VIP_UDP_PORT, extra_client,
    },
    require_root,
    topology::lb_binary,
    traffic::{LongConn, connect_by, udp_request_from},
    wait_until,
};
use lb_userspace::ha::keepalived::{HEARTBEAT_STALE_SECS, PREEMPT_DELAY_SECS};

static ONE_PAIR: Mutex<()> = Mutex::new(());

const TCP_FLOWS: usize = 50;
const UDP_FLOWS: u16 = 20;
const STICKY_CLIENTS: usize = 20;

/// The traffic kept across the failovers, and who served it.
struct Traffic {
    flows: Vec<LongFlow>,
    /// UDP source port -> the server that answered.
    udp: BTreeMap<u16, String>,
    /// Sticky client -> its server.
    sticky: Vec<(SocketAddr, String)>,
}

impl Traffic {
    fn start(pair: &Pair) -> Traffic {
        let flows = (0..TCP_FLOWS)
            .map(|_| {
                LongFlow::open(
                    &pair.client,
                    pair.vip_tcp(),
                    Duration::from_millis(100),
                    Duration::from_secs(3),
                )
                .unwrap()
            })
            .collect::<Vec<_>>();
        for f in &flows {
            f.wait_exchanges(2, Duration::from_secs(10)).unwrap();
        }
        let udp = (0..UDP_FLOWS)
            .map(|i| (40_000 + i, udp_from(pair, 40_000 + i).unwrap()))
            .collect();
        let sticky = (0..STICKY_CLIENTS)
            .map(|i| {
                let source = SocketAddr::V4(SocketAddrV4::new(extra_client(i), 0));
                (source, sticky_server(pair, source).unwrap())
            })
            .collect();
        Traffic { flows, udp, sticky }
    }

    /// Every flow of the traffic still goes to its server: the long flows exchange `more`
    /// times again, the UDP flows and the sticky clients are answered by the same servers.
    fn still_served(&self, pair: &Pair, when: &str, more: usize) {
        for (i, f) in self.flows.iter().enumerate() {
            let stats = f.stats();
            assert!(
                stats.broken.is_none(),
                "{when}: TCP flow {i} broke: {stats:?}"
            );
            f.wait_exchanges(more, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("{when}: TCP flow {i}: {e:#} {:?}", f.stats()));
        }
        for (port, server) in &self.udp {
            let now = udp_from(pair, *port)
                .unwrap_or_else(|e| panic!("{when}: UDP flow from port {port}: {e:#}"));
            assert_eq!(&now, server, "{when}: UDP flow from port {port} moved");
        }
        for (source, server) in &self.sticky {
            let now = sticky_server(pair, *source)
                .unwrap_or_else(|e| panic!("{when}: sticky client {source}: {e:#}"));
            assert_eq!(&now, server, "{when}: sticky client {source} moved");
        }
    }
}

/// The server that answers UDP from the client's `port`.
fn udp_from(pair: &Pair, port: u16) -> anyhow::Result<String> {
    let source = SocketAddr::V4(SocketAddrV4::new(CLIENT_ADDR, port));
    let target = SocketAddr::V4(SocketAddrV4::new(VIP, VIP_UDP_PORT));
    // A lost datagram during a switch-over is retried, as a UDP client would.
    let mut last = None;
    for _ in 0..3 {
        match pair
            .client
            .run(move || udp_request_from(source, target))?
            .join()
            .map_err(|_| anyhow::anyhow!("panicked"))?
        {
            Ok(server) => return Ok(server),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("three attempts"))
}

/// The server a new connection from `source` (a sticky client) reaches.
fn sticky_server(pair: &Pair, source: SocketAddr) -> anyhow::Result<String> {
    let target = pair.vip_tcp();
    pair.client
        .run(move || LongConn::open_within(Some(source), target, Duration::from_secs(3)))?
        .join()
        .map_err(|_| anyhow::anyhow!("panicked"))?
        .map(|c| c.server)
}

fn options() -> PairOptions {
    PairOptions {
        sticky: true,
        bpffs: true,
        extra_clients: STICKY_CLIENTS,
        ..PairOptions::default()
    }
}

/// The pair up, lb-a master, the traffic on, and lb-b holding every flow.
fn started(prefix: &str) -> (Pair, Traffic) {
    let pair = Pair::start(prefix, &lb_binary().unwrap(), options()).unwrap();
    pair.wait_master(Node::A, Duration::from_secs(15)).unwrap();
    let traffic = Traffic::start(&pair);
    let flows = (TCP_FLOWS + usize::from(UDP_FLOWS) + STICKY_CLIENTS) as u64;
    wait_until("lb-b holds every flow", Duration::from_secs(20), || {
        Ok((pair.status_number(Node::B, "conntrack_entries") >= flows).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e:#}: {}", pair.ha_status(Node::B)));
    (pair, traffic)
}

enum Failure {
    LinksDown,
    Hang,
    LbKilled,
}

fn fail_and_come_back(prefix: &str, failure: Failure) {
    if !require_root("netns_ha_failover") {
        return;
    }
    let _one = ONE_PAIR.lock().unwrap_or_else(|e| e.into_inner());
    let (pair, traffic) = started(prefix);
    let bound = pair.failover_bound();
    let failed = Instant::now();
    // When the failure makes keepalived move the addresses: at once for links and a hung
    // keepalived; a killed lb is noticed by the stale heartbeat.
    let noticed = match failure {
        Failure::LinksDown => {
            pair.links_down(Node::A).unwrap();
            bound
        }
        Failure::Hang => {
            pair.pause_lb(Node::A).unwrap();
            pair.pause_keepalived(Node::A).unwrap();
            bound
        }
        Failure::LbKilled => {
            pair.kill_lb(Node::A).unwrap();
            bound + Duration::from_secs(u64::from(HEARTBEAT_STALE_SECS) + 2)
        }
    };
    if matches!(failure, Failure::Hang) {
        // A hung node keeps its addresses (its keepalived cannot remove them); lb-b takes
        // them too and its gratuitous ARPs move the traffic.
        let b = pair.node(Node::B);
        wait_until("lb-b holds the floating addresses", noticed, || {
            Ok((b.holds(VIP, CLIENT_IF)? && b.holds(GATEWAY, SERVER_IF)?).then_some(()))
        })
        .unwrap();
    } else {
        pair.wait_master(Node::B, noticed).unwrap();
    }
    connect_by(&pair.client, pair.vip_tcp(), 1, failed + noticed)
        .unwrap_or_else(|e| panic!("a new connection after the failover: {e:#}"));
    traffic.still_served(&pair, "after the failover", 5);
    assert_eq!(
        pair.xdp_counter(Node::B, "drop_tcp_no_flow").unwrap(),
        0,
        "the new master dropped packets of flows it did not know"
    );

    // lb-a comes back; it takes over only once it has lb-b's bulk sync.
    match failure {
        Failure::LinksDown => pair.links_up(Node::A).unwrap(),
        Failure::Hang => {
            pair.resume_keepalived(Node::A).unwrap();
            pair.resume_lb(Node::A).unwrap();
        }
        Failure::LbKilled => {
            pair.start_lb(Node::A).unwrap();
        }
    }
    let failback = bound + Duration::from_secs(u64::from(PREEMPT_DELAY_SECS) + 6);
    pair.wait_master(Node::A, failback).unwrap();
    traffic.still_served(&pair, "after the failback", 5);
    assert_eq!(
        pair.xdp_counter(Node::A, "drop_tcp_no_flow").unwrap(),
        0,
        "the old master, back, dropped packets of flows it did not know"
    );
    connect_by(
        &pair.client,
        pair.vip_tcp(),
        1,
        Instant::now() + Duration::from_secs(3),
    )
    .unwrap();
    for f in traffic.flows {
        let stats = f.stop();
        assert!(stats.broken.is_none(), "a flow broke: {stats:?}");
    }
}

#[test]
fn flows_survive_the_masters_links_going_down_and_coming_back() {
    fail_and_come_back("hf-l-", Failure::LinksDown);
}

#[test]
fn flows_survive_a_hung_master_and_its_return() {
    fail_and_come_back("hf-h-", Failure::Hang);
}

#[test]
fn flows_survive_a_killed_lb_and_its_restart() {
    fail_and_come_back("hf-k-", Failure::LbKilled);
}

/// The link between the nodes cut (VRRP and the sync): both become master. Traffic keeps
/// its servers throughout, and when the link is back lb-a alone is master, nothing is
/// lost, and the split brain is counted.
#[test]
fn a_split_brain_loses_nothing_and_is_counted() {
    if !require_root("netns_ha_failover") {
        return;
    }
    let _one = ONE_PAIR.lock().unwrap_or_else(|e| e.into_inner());
    let (pair, traffic) = started("hf-s-");
    let bound = pair.failover_bound();
    let a = &pair.node(Node::A).ns;
    let peer = Node::B.ha_addr().to_string();
    a.exec(&["nft", "add", "table", "inet", "cut"]).unwrap();
    for (chain, hook, dir) in [("in", "input", "saddr"), ("out", "output", "daddr")] {
        a.exec(&[
            "nft",
            &format!("add chain inet cut {chain} {{ type filter hook {hook} priority 0; }}"),
        ])
        .unwrap();
        a.exec(&[
            "nft",
            &format!("add rule inet cut {chain} ip {dir} {peer} drop"),
        ])
        .unwrap();
    }
    let b = pair.node(Node::B);
    wait_until("lb-b master too", bound, || {
        Ok((b.holds(VIP, CLIENT_IF)? && b.holds(GATEWAY, SERVER_IF)?).then_some(()))
    })
    .unwrap();
    assert!(
        pair.node(Node::A).holds(VIP, CLIENT_IF).unwrap(),
        "lb-a stays master"
    );
    traffic.still_served(&pair, "during the split brain", 5);
    connect_by(
        &pair.client,
        pair.vip_tcp(),
        1,
        Instant::now() + Duration::from_secs(3),
    )
    .unwrap();
    // Long enough for both nodes' sync sessions to give up on each other.
    wait_until("both nodes apart", Duration::from_secs(10), || {
        Ok(Node::BOTH
            .iter()
            .all(|n| {
                let ha = pair.ha_status(*n);
                ha.contains("\"sending\":false") && ha.contains("\"receiving\":false")
            })
            .then_some(()))
    })
    .unwrap();

    a.exec(&["nft", "delete", "table", "inet", "cut"]).unwrap();
    pair.wait_master(Node::A, bound + Duration::from_secs(2))
        .unwrap();
    wait_until("the split brain counted", Duration::from_secs(10), || {
        Ok(
            (pair.ha_number(Node::A, "split_brains") + pair.ha_number(Node::B, "split_brains") > 0)
                .then_some(()),
        )
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}: {} / {}",
            pair.ha_status(Node::A),
            pair.ha_status(Node::B)
        )
    });
    traffic.still_served(&pair, "after the split brain", 5);
    for f in traffic.flows {
        let stats = f.stop();
        assert!(stats.broken.is_none(), "a flow broke: {stats:?}");
    }
}
