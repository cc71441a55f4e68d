//! Real TCP and UDP traffic from a client namespace through lb's XDP path to three servers
//! weighted 1:1:2.

use std::net::SocketAddr;

use lb_tests::{
    require_root,
    topology::{SERVER_PORT, Topology, VIP, VIP_TCP_PORT, VIP_UDP_PORT, lb_binary, server_name},
    traffic::{Tally, drive_tcp, udp_request},
};

#[test]
fn tcp_and_udp_flows_are_balanced_by_weight_and_stay_on_their_server() {
    if !require_root("netns_balance") {
        return;
    }
    let lb_bin = lb_binary().unwrap();
    let prefix = format!("lbt{}", std::process::id());
    let topo = Topology::new(&prefix, 3).unwrap();
    topo.start_peers(&lb_bin).unwrap();
    let _servers = topo.start_name_servers(SERVER_PORT).unwrap();
    let config = std::env::temp_dir().join(format!("{prefix}.toml"));
    std::fs::write(&config, lb_userspace::DEFAULT_DEMO_CONFIG).unwrap();
    topo.start_lb(&lb_bin, &config).unwrap();
    let _ = std::fs::remove_file(&config);

    // 1200 connections, 4 request/response exchanges each; tcp_session fails if any exchange
    // is answered by a different server than the first.
    let tcp: SocketAddr = (VIP, VIP_TCP_PORT).into();
    let tally = drive_tcp(&topo.client, tcp, 1200, 4, 8).unwrap();
    println!("tcp: {}", tally.summary());
    assert_eq!(tally.connections(), 1200);
    assert_eq!(tally.failed, 0, "failed connections: {:?}", tally.errors);
    let shares = tally.shares();
    for (i, expected) in [25.0, 25.0, 50.0].into_iter().enumerate() {
        let share = shares.get(&server_name(i)).copied().unwrap_or(0.0);
        assert!(
            (share - expected).abs() <= 5.0,
            "{} got {share:.1}% of connections, expected {expected}% ± 5",
            server_name(i)
        );
    }

    // UDP: every request from a fresh source port is answered by one of the servers.
    let udp: SocketAddr = (VIP, VIP_UDP_PORT).into();
    let udp_tally = topo
        .client
        .run(move || {
            let mut t = Tally::default();
            for _ in 0..60 {
                t.record(udp_request(udp));
            }
            t
        })
        .unwrap()
        .join()
        .unwrap();
    println!("udp: {}", udp_tally.summary());
    assert_eq!(udp_tally.failed, 0, "UDP failures: {:?}", udp_tally.errors);
    assert!(
        udp_tally
            .per_server
            .keys()
            .all(|k| (0..3).any(|i| *k == server_name(i)))
    );
    assert!(
        udp_tally.per_server.len() >= 2,
        "UDP flows should spread: {udp_tally:?}"
    );
}
