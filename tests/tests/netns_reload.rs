//! Live reload of the `lb` daemon: SIGHUP and a change of the config file apply only the
//! difference; long-lived connections never notice; an invalid file is rejected and the
//! running config stays.

use std::{net::SocketAddr, time::Duration};

use lb_tests::{
    require_root,
    topology::{
        SERVER_PORT, Topology, VIP, lb_binary, nat_frontend_toml, server_name, start_logged,
        wait_for_log,
    },
    traffic::{LongConn, exchange_all},
};

fn config(servers: &[(usize, u32)]) -> String {
    let list: Vec<String> = servers
        .iter()
        .map(|(i, w)| format!(r#"{{ address = "198.18.{}.2", weight = {w} }}"#, 11 + i))
        .collect();
    format!(
        r#"{web}
[[backends]]
name = "web"
mode = "tcp"
balancing_method = "leastconn"
port = {SERVER_PORT}
servers = {{ type = "addresses", addresses = [{}] }}
"#,
        list.join(", "),
        web = nat_frontend_toml("web", 80, 3)
    )
}

#[test]
fn a_hundred_connections_survive_twenty_reloads_and_a_rejected_one() {
    if !require_root("netns_reload") {
        return;
    }
    let lb = lb_binary().unwrap();
    let topo = Topology::new(&format!("lbr{}", std::process::id()), 3).unwrap();
    topo.start_peers(&lb).unwrap();
    let _servers = topo.start_name_servers(SERVER_PORT).unwrap();
    let dir = std::env::temp_dir().join(format!("lbr{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lb.toml");
    std::fs::write(&path, config(&[(0, 1), (1, 1)])).unwrap();
    let (pid, log) =
        start_logged(&topo.lb, &lb, &["run", "--config", path.to_str().unwrap()]).unwrap();

    let target: SocketAddr = (VIP, 80).into();
    let mut conns = topo
        .client
        .run(move || {
            (0..100)
                .map(|_| LongConn::open(None, target).unwrap())
                .collect::<Vec<_>>()
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(
        conns
            .iter()
            .all(|c| c.server == server_name(0) || c.server == server_name(1))
    );

    // Twenty changes to other servers: server 3 comes and goes, weights change. Even ones
    // are announced by SIGHUP, odd ones only by the file changing.
    for round in 0..20usize {
        let servers: Vec<(usize, u32)> = match round % 4 {
            0 => vec![(0, 1), (1, 1), (2, 1)],
            1 => vec![(0, 2), (1, 1), (2, 3)],
            2 => vec![(0, 1), (1, 2)],
            _ => vec![(0, 1), (1, 1), (2, 0)],
        };
        std::fs::write(&path, config(&servers)).unwrap();
        if round % 2 == 0 {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGHUP,
            )
            .unwrap();
        }
        wait_for_log(&log, "config reloaded", round + 1, Duration::from_secs(10)).unwrap();
        conns = exchange_all(&topo.client, conns).unwrap();
    }

    // A broken file is rejected with its line, and nothing changes.
    std::fs::write(&path, config(&[(0, 1), (1, 101)])).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_for_log(&log, "config reload rejected", 1, Duration::from_secs(10)).unwrap();
    assert!(
        log.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("weight 101 is outside 0..100"))
    );
    topo.client
        .run(move || {
            for c in conns.iter_mut() {
                assert_eq!(c.exchange().unwrap(), c.server);
            }
            // New connections still follow the last good config (server 3 weight 0).
            for _ in 0..20 {
                let c = LongConn::open(None, target).unwrap();
                assert_ne!(c.server, server_name(2));
            }
        })
        .unwrap()
        .join()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
