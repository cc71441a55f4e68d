//! High availability, master/backup: keepalived elects the preferred node, moves the
//! floating addresses (VIP and the servers' gateway) to the backup when the master fails
//! and back when it recovers; new connections through the VIP are served within about 3
//! advert intervals. keepalived reports each change on the notify FIFO, which lb reads and reports in
//! `lb status`.
//!
//! Established flows across a failover are the flow sync's part: each test keeps a
//! long-lived flow ([`LongFlow`]) across the failovers and prints what it saw, where
//! assertions about survival go once the sync lands.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use lb_tests::{
    pair::{LongFlow, Node, Pair, PairOptions},
    require_root,
    topology::lb_binary,
    traffic::connect_by,
    wait_until,
};
use lb_userspace::ha::{
    keepalived::{HEARTBEAT_STALE_SECS, PREEMPT_DELAY_SECS},
    role::Role,
};

/// The tests measure failovers against a bound of a few advert intervals: one pair at a
/// time, so two pairs do not compete for the CPUs.
static ONE_PAIR: Mutex<()> = Mutex::new(());

/// The roles keepalived gave both nodes, as their lb reports them (from its notify FIFO)
/// in `lb status`.
struct Roles<'a>(&'a Pair);

impl Roles<'_> {
    fn follow(pair: &Pair) -> Roles<'_> {
        Roles(pair)
    }

    /// Wait until `n`'s keepalived enters `want` (from its log, readable while lb hangs).
    fn keepalived(&self, n: Node, want: Role, timeout: Duration) {
        let want = want.as_str().to_ascii_uppercase();
        let got = wait_until(&format!("{} entering {want}", n.name()), timeout, || {
            Ok((self.0.keepalived_state(n) == want).then_some(()))
        });
        assert!(got.is_ok(), "{}", self.0.keepalived_tail(n));
    }

    /// Wait until `n`'s lb reports `want` (at most `timeout`, plus the second its status
    /// may lag).
    fn wait(&self, n: Node, want: Role, timeout: Duration) {
        let got = wait_until(
            &format!("{} reporting {want}", n.name()),
            timeout + Duration::from_secs(2),
            || Ok((self.0.ha_role(n) == want.as_str()).then_some(())),
        );
        assert!(
            got.is_ok(),
            "{}: wanted {want} within {timeout:?}: {}",
            n.name(),
            self.0.ha_status(n)
        );
    }
}

/// A new connection through the VIP by `deadline` (each attempt at most 250 ms).
fn new_connection_by(pair: &Pair, deadline: Instant, when: &str) {
    let conns = connect_by(&pair.client, pair.vip_tcp(), 1, deadline).unwrap_or_else(|e| {
        panic!(
            "{when}: {e:#}\n{}\n{}",
            pair.keepalived_tail(Node::B),
            pair.debug_state()
        )
    });
    assert!(!conns[0].server.is_empty());
}

#[test]
fn keepalived_elects_lb_a_and_the_vip_follows_its_links() {
    if !require_root("netns_ha_pair") {
        return;
    }
    let _one = ONE_PAIR.lock().unwrap_or_else(|e| e.into_inner());
    let lb = lb_binary().unwrap();
    let pair = Pair::start("pair-", &lb, PairOptions::default()).unwrap();
    let roles = Roles::follow(&pair);
    let bound = pair.failover_bound();

    // Both start as BACKUP; lb-a (priority 150) takes the addresses.
    pair.wait_master(Node::A, Duration::from_secs(10)).unwrap();
    roles.wait(Node::A, Role::Master, Duration::from_secs(5));
    roles.wait(Node::B, Role::Backup, Duration::from_secs(5));
    let conns = connect_by(
        &pair.client,
        pair.vip_tcp(),
        3,
        Instant::now() + Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(conns.len(), 3);
    let udp = pair.vip_udp();
    let answered = pair
        .client
        .run(move || lb_tests::traffic::udp_request(udp))
        .unwrap()
        .join()
        .unwrap();
    assert!(answered.is_ok(), "UDP through the VIP: {answered:?}");
    // An established flow across both failovers (survival: the sync's part).
    let flow = LongFlow::open(
        &pair.client,
        pair.vip_tcp(),
        Duration::from_millis(100),
        Duration::from_secs(3),
    )
    .unwrap();
    flow.wait_exchanges(3, Duration::from_secs(5)).unwrap();

    // lb-a loses its links: lb-b takes over.
    let down = Instant::now();
    pair.links_down(Node::A).unwrap();
    new_connection_by(
        &pair,
        down + bound,
        "a new connection after lb-a's links went down",
    );
    pair.wait_master(Node::B, bound).unwrap();
    roles.wait(Node::A, Role::Fault, bound);
    roles.wait(Node::B, Role::Master, bound);
    eprintln!("established flow after the failover: {:?}", flow.stats());

    // lb-a's links come back: it takes the addresses back (preemption).
    let up = Instant::now();
    pair.links_up(Node::A).unwrap();
    new_connection_by(&pair, up + bound, "a new connection while lb-a comes back");
    // lb-a preempts after keepalived's preempt_delay, once it has lb-b's bulk sync.
    let failback = bound + Duration::from_secs(u64::from(PREEMPT_DELAY_SECS) + 2);
    pair.wait_master(Node::A, failback).unwrap();
    new_connection_by(
        &pair,
        Instant::now() + bound,
        "a new connection after the failback",
    );
    roles.wait(Node::A, Role::Master, bound);
    roles.wait(Node::B, Role::Backup, bound);
    eprintln!("established flow after the failback: {:?}", flow.stop());
    drop(conns);
}

/// keepalived gives a node's addresses up when its lb hangs (the track file's heartbeat
/// goes stale) or stops (the track file says 1), and takes them back when it recovers.
#[test]
fn a_hung_or_stopped_lb_gives_the_addresses_up() {
    if !require_root("netns_ha_pair") {
        return;
    }
    let _one = ONE_PAIR.lock().unwrap_or_else(|e| e.into_inner());
    let lb = lb_binary().unwrap();
    let pair = Pair::start("pair-h-", &lb, PairOptions::default()).unwrap();
    let roles = Roles::follow(&pair);
    let bound = pair.failover_bound();
    // A stale heartbeat is seen by the next run of the script, once a second.
    let stale = Duration::from_secs(u64::from(HEARTBEAT_STALE_SECS) + 2) + bound;
    pair.wait_master(Node::A, Duration::from_secs(10)).unwrap();

    // Hung: SIGSTOP; the track file is not refreshed any more.
    pair.pause_lb(Node::A).unwrap();
    pair.wait_master(Node::B, stale).unwrap();
    roles.keepalived(Node::A, Role::Fault, bound);
    new_connection_by(&pair, Instant::now() + bound, "a new connection via lb-b");
    pair.resume_lb(Node::A).unwrap();
    // Back: lb-b's sync session reaches lb-a again, which waits for its bulk, then
    // preempts after keepalived's preempt_delay.
    let failback = bound + Duration::from_secs(u64::from(PREEMPT_DELAY_SECS) + 4);
    pair.wait_master(Node::A, failback).unwrap();

    // Stopped: the track file says 1, FAULT at once.
    pair.stop_lb(Node::A).unwrap();
    pair.wait_master(Node::B, bound).unwrap();
    roles.keepalived(Node::A, Role::Fault, bound);
    pair.start_lb(Node::A).unwrap();
    pair.wait_master(Node::A, failback).unwrap();
    new_connection_by(&pair, Instant::now() + bound, "a new connection via lb-a");
}
