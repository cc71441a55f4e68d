//! The HA flow sync between two data planes, in-process in a namespace of its own: each
//! node's sync listens on its own address of the namespace's loopback, as two machines'
//! daemons would on their link. Proves the bulk transfer, ids mapped by name (the nodes'
//! ids differ), ages carried across, reverse entries derived, stickiness synced, changes
//! streamed after the bulk, no echo, and that a wrong secret is refused.

use std::{sync::atomic::Ordering::Relaxed, time::Duration};

use lb_common::maps::{StickyEntry, StickyKey};
use lb_tests::{require_root, wait_until};
use lb_userspace::dataplane::monotonic_now_ns;

/// Short, so the tests wait little.
const INTERVAL: Duration = Duration::from_millis(50);

#[path = "common/sync_nodes.rs"]
mod sync_nodes;
use sync_nodes::{
    A as A_ADDR, B as B_ADDR, CONFIG, EXTRA, Node, addr, count_flows, flows, node, pair_namespace,
};

#[test]
fn two_nodes_sync_their_flows_and_stickiness_by_name_with_ages() {
    if !require_root("two_nodes_sync_their_flows_and_stickiness_by_name_with_ages") {
        return;
    }
    let ns = pair_namespace("hasync").unwrap();
    ns.run(|| {
        let secret = b"a shared secret of the pair";
        let a = node(CONFIG, 65536, INTERVAL, A_ADDR, B_ADDR, secret);
        // B's config names an extra frontend and backend first: its ids differ from A's.
        let b = node(
            &format!("{EXTRA}{CONFIG}"),
            65536,
            INTERVAL,
            B_ADDR,
            A_ADDR,
            secret,
        );
        let (keys, entries) = flows(&a.dataplane.lock().unwrap(), 500, 5_000_000_000);
        let tables = a.dataplane.lock().unwrap().flow_tables().unwrap();
        tables.write_flows(&keys, &entries).unwrap();
        let sticky_key = StickyKey {
            backend_id: u32::from(entries[0].backend_id),
            addr: addr("198.18.0.7"),
        };
        tables
            .write_sticky(
                &[sticky_key],
                &[StickyEntry {
                    server_id: entries[0].server_id,
                    _pad: 0,
                    last_seen_ns: monotonic_now_ns(),
                }],
            )
            .unwrap();

        wait_until("B holds A's 500 flows", Duration::from_secs(20), || {
            Ok((count_flows(&b.dataplane) == 500).then_some(()))
        })
        .unwrap();
        wait_until("both nodes synced", Duration::from_secs(20), || {
            Ok((a.shared.synced() && b.shared.synced()).then_some(()))
        })
        .unwrap_or_else(|e| {
            let s = |n: &Node| {
                let st = &n.shared.stats;
                format!(
                    "sending {} receiving {} errors {} bulks {} sent {} received {}",
                    st.sending.load(Relaxed),
                    st.receiving.load(Relaxed),
                    st.errors.load(Relaxed),
                    st.bulks_received.load(Relaxed),
                    st.flows_sent.load(Relaxed),
                    st.flows_received.load(Relaxed)
                )
            };
            panic!("{e}: A {} / B {}", s(&a), s(&b))
        });

        // B's copy, in B's ids and clock.
        let b_dp = b.dataplane.lock().unwrap();
        let names = b_dp.names();
        let b_tables = b_dp.flow_tables().unwrap();
        let got = b_tables.flow(&keys[7]).expect("flow synced");
        assert_eq!(names.frontends[&u32::from(got.frontend_id)], "web");
        assert_eq!(names.backends[&u32::from(got.backend_id)], "pool");
        let (backend, server, port) = &names.servers[&got.server_id];
        assert_eq!(
            (backend.as_str(), server.to_string().as_str(), *port),
            ("pool", "198.18.12.2", 8080)
        );
        assert_ne!(
            got.frontend_id, entries[7].frontend_id,
            "B's ids differ from A's"
        );
        assert_eq!(
            (got.src, got.dst, got.sport, got.dport),
            (
                entries[7].src,
                entries[7].dst,
                entries[7].sport,
                entries[7].dport
            )
        );
        assert_eq!((got.state, got.flags), (entries[7].state, entries[7].flags));
        let age = monotonic_now_ns() - got.last_seen_ns;
        assert!(
            (4_900_000_000..30_000_000_000).contains(&age),
            "the age carried across: {age} ns"
        );
        // The reverse entry is derived, so the server's replies are translated.
        let reverse = b_tables
            .reverse(&got.reply_key(6))
            .expect("reverse entry for the server's replies");
        assert_eq!((reverse.dst, reverse.dport), (keys[7].src, keys[7].sport));
        // Stickiness, in B's backend id.
        let b_sticky = StickyKey {
            backend_id: u32::from(got.backend_id),
            addr: addr("198.18.0.7"),
        };
        assert_eq!(
            b_tables.sticky(&b_sticky).map(|s| s.server_id),
            Some(got.server_id)
        );
        drop(b_dp);

        // Changes after the bulk are streamed; what B received is not echoed back.
        let before = a.shared.stats.flows_received.load(Relaxed);
        let (more_keys, more_entries) = flows(&a.dataplane.lock().unwrap(), 600, 0);
        tables
            .write_flows(&more_keys[500..], &more_entries[500..])
            .unwrap();
        wait_until("B holds the 100 new flows", Duration::from_secs(20), || {
            Ok((count_flows(&b.dataplane) == 600).then_some(()))
        })
        .unwrap();
        let sent = a.shared.stats.flows_sent.load(Relaxed);
        assert!(sent >= 600, "A sent {sent}");
        // A few scans later neither side has sent anything more.
        let b_sent = b.shared.stats.flows_sent.load(Relaxed);
        let scans = a.shared.stats.synced_as_of_ns.load(Relaxed);
        wait_until("two more scans", Duration::from_secs(10), || {
            Ok((a.shared.stats.synced_as_of_ns.load(Relaxed) > scans + 100_000_000).then_some(()))
        })
        .unwrap();
        assert_eq!(
            b.shared.stats.flows_sent.load(Relaxed),
            b_sent,
            "B echoes nothing"
        );
        assert_eq!(
            a.shared.stats.flows_sent.load(Relaxed),
            sent,
            "A resends nothing unchanged"
        );
        assert!(a.shared.stats.flows_received.load(Relaxed) - before <= 600);
        assert_eq!(b.shared.stats.unmapped.load(Relaxed), 0);
    })
    .unwrap()
    .join()
    .unwrap();
}

#[test]
fn a_peer_with_another_secret_is_refused_and_nothing_is_written() {
    if !require_root("a_peer_with_another_secret_is_refused_and_nothing_is_written") {
        return;
    }
    let ns = pair_namespace("hasecret").unwrap();
    ns.run(|| {
        let a = node(
            CONFIG,
            65536,
            INTERVAL,
            A_ADDR,
            B_ADDR,
            b"the secret of node A",
        );
        let b = node(
            CONFIG,
            65536,
            INTERVAL,
            B_ADDR,
            A_ADDR,
            b"a different secret!!",
        );
        let (keys, entries) = flows(&a.dataplane.lock().unwrap(), 10, 0);
        a.dataplane
            .lock()
            .unwrap()
            .flow_tables()
            .unwrap()
            .write_flows(&keys, &entries)
            .unwrap();
        wait_until("B refuses A's frames", Duration::from_secs(20), || {
            Ok((b.shared.stats.errors.load(Relaxed) > 0
                && a.shared.stats.flows_sent.load(Relaxed) > 0)
                .then_some(()))
        })
        .unwrap();
        assert_eq!(count_flows(&b.dataplane), 0);
        assert_eq!(b.shared.stats.flows_received.load(Relaxed), 0);
        assert!(
            !b.shared.synced(),
            "no bulk from the peer, which is reachable"
        );
    })
    .unwrap()
    .join()
    .unwrap();
}
