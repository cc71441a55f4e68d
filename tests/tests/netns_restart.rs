//! Restart without loss: with the data plane pinned on a BPF filesystem, the daemon can stop
//! and start again (or be upgraded) while tracked flows keep flowing; `lb stop` removes it.

use std::{net::SocketAddr, time::Duration};

use lb_tests::{
    netns::sh,
    require_root,
    topology::{SERVER_PORT, Topology, VIP, lb_binary, start_logged, wait_for_log},
    traffic::{LongConn, exchange_all, udp_request},
    wait_until,
};

#[test]
fn connections_survive_a_daemon_restart_and_lb_stop_detaches() {
    if !require_root("netns_restart") {
        return;
    }
    let lb = lb_binary().unwrap();
    let id = std::process::id();
    let topo = Topology::new(&format!("lbp{id}"), 3).unwrap();
    topo.start_peers(&lb).unwrap();
    let _servers = topo.start_name_servers(SERVER_PORT).unwrap();
    // A BPF filesystem of this test's own, so nothing else's pins are touched.
    let bpffs = std::env::temp_dir().join(format!("lbp{id}-bpffs"));
    std::fs::create_dir_all(&bpffs).unwrap();
    sh(&["mount", "-t", "bpf", "bpf", bpffs.to_str().unwrap()]).unwrap();
    let unmount = Unmount(bpffs.clone());
    let path = std::env::temp_dir().join(format!("lbp{id}.toml"));
    let config = format!(
        "{}\n[dataplane]\npin_path = \"{}\"\n",
        lb_userspace::DEFAULT_DEMO_CONFIG,
        bpffs.join("lb").display()
    );
    std::fs::write(&path, config).unwrap();
    let run = ["run", "--config", path.to_str().unwrap()];

    let (pid, _) = start_logged(&topo.lb, &lb, &run).unwrap();
    let target: SocketAddr = (VIP, 80).into();
    let mut conns = topo
        .client
        .run(move || {
            (0..30)
                .map(|_| LongConn::open(None, target).unwrap())
                .collect::<Vec<_>>()
        })
        .unwrap()
        .join()
        .unwrap();

    // The daemon stops (SIGTERM, no --detach-on-exit): the pinned data plane keeps
    // forwarding with nobody running.
    topo.lb.stop(pid);
    conns = exchange_all(&topo.client, conns).unwrap();
    let fresh = topo
        .client
        .run(move || LongConn::open(None, target).map(|c| c.server))
        .unwrap()
        .join()
        .unwrap();
    assert!(
        fresh.is_ok(),
        "new connections are served meanwhile: {fresh:?}"
    );

    let dns: SocketAddr = (VIP, 53).into();
    let answered = |topo: &Topology| {
        topo.client
            .run(move || udp_request(dns).is_ok())
            .unwrap()
            .join()
            .unwrap()
    };
    assert!(
        answered(&topo),
        "the UDP bind forwards while no daemon runs"
    );
    // Meanwhile the operator removes the UDP bind from the config.
    let config = std::fs::read_to_string(&path).unwrap();
    let without_udp = config.replace(", { port = 53, protocol = \"udp\" }", "");
    assert_ne!(config, without_udp);
    std::fs::write(&path, without_udp).unwrap();

    // A new daemon takes over the pinned maps and links.
    let (pid, log) = start_logged(&topo.lb, &lb, &run).unwrap();
    wait_for_log(
        &log,
        "took over the pinned XDP link",
        1,
        Duration::from_secs(5),
    )
    .unwrap();
    conns = exchange_all(&topo.client, conns).unwrap();
    assert!(
        !answered(&topo),
        "a bind removed while the daemon was stopped is gone from the pinned map"
    );
    topo.lb.stop(pid);

    // `lb stop` removes the pins: XDP is gone from the interfaces.
    topo.lb
        .exec(&[
            lb.to_str().unwrap(),
            "stop",
            "--config",
            path.to_str().unwrap(),
        ])
        .unwrap();
    let link = wait_until(
        "XDP to be detached from eth-c after lb stop",
        Duration::from_secs(5),
        || {
            let link = topo.lb.exec(&["ip", "link", "show", "eth-c"])?;
            if link.contains("xdp") {
                anyhow::bail!("still attached: {link}");
            }
            Ok(Some(link))
        },
    )
    .unwrap();
    assert!(!link.contains("xdp"), "{link}");
    drop(conns);
    let _ = std::fs::remove_file(&path);
    drop(unmount);
}

/// Unmounts the test's BPF filesystem when dropped, even on failure.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = sh(&["umount", self.0.to_str().unwrap()]);
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// With health checks on, a restart keeps every server's state: no established flow is
/// reset (`on_down = "reset"`), and new flows are served at once, before any probe.
#[test]
fn a_restart_keeps_health_so_no_flow_is_reset_or_refused() {
    if !require_root("netns_restart") {
        return;
    }
    let lb = lb_binary().unwrap();
    let id = std::process::id();
    let topo = Topology::new(&format!("lbq{id}"), 3).unwrap();
    topo.start_peers(&lb).unwrap();
    let _servers = topo.start_name_servers(SERVER_PORT).unwrap();
    let bpffs = std::env::temp_dir().join(format!("lbq{id}-bpffs"));
    std::fs::create_dir_all(&bpffs).unwrap();
    sh(&["mount", "-t", "bpf", "bpf", bpffs.to_str().unwrap()]).unwrap();
    let unmount = Unmount(bpffs.clone());
    let path = std::env::temp_dir().join(format!("lbq{id}.toml"));
    let checked = lb_userspace::DEFAULT_DEMO_CONFIG.replacen(
        "port = 8080\n",
        "port = 8080\noptions = { health_check = { type = \"tcp\", interval = \"200ms\", timeout = \"100ms\", on_down = \"reset\" } }\n",
        1,
    );
    assert_ne!(checked, lb_userspace::DEFAULT_DEMO_CONFIG);
    let config = format!(
        "{checked}\n[dataplane]\npin_path = \"{}\"\n",
        bpffs.join("lb").display()
    );
    std::fs::write(&path, config).unwrap();
    let run = ["run", "--config", path.to_str().unwrap()];

    let (pid, log) = start_logged(&topo.lb, &lb, &run).unwrap();
    wait_for_log(&log, "server UP", 3, Duration::from_secs(10)).unwrap();
    let target: SocketAddr = (VIP, 80).into();
    let mut conns = topo
        .client
        .run(move || {
            (0..40)
                .map(|_| LongConn::open(None, target).unwrap())
                .collect::<Vec<_>>()
        })
        .unwrap()
        .join()
        .unwrap();

    topo.lb.stop(pid);
    let (pid, log) = start_logged(&topo.lb, &lb, &run).unwrap();
    wait_for_log(
        &log,
        "health taken over from the pinned data plane",
        1,
        Duration::from_secs(5),
    )
    .unwrap();
    // Before any probe has run again: new flows are served, and none of the 40 is reset.
    let fresh = topo
        .client
        .run(move || LongConn::open(None, target).map(|c| c.server))
        .unwrap()
        .join()
        .unwrap();
    assert!(
        fresh.is_ok(),
        "a new connection right after the restart: {fresh:?}"
    );
    conns = exchange_all(&topo.client, conns).unwrap();
    assert_eq!(conns.len(), 40);
    topo.lb.stop(pid);
    topo.lb
        .exec(&[
            lb.to_str().unwrap(),
            "stop",
            "--config",
            path.to_str().unwrap(),
        ])
        .unwrap();
    drop(conns);
    let _ = std::fs::remove_file(&path);
    drop(unmount);
}
