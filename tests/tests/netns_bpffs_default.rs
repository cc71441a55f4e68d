//! On a host with no BPF filesystem, `lb run` with the default pin_path mounts one at
//! /sys/fs/bpf (as Cilium does), so its flows survive a restart. The daemon runs in the
//! host's mount namespace here (`nsenter --net`): in one of its own (`ip netns exec`) a mount
//! would vanish with it, and lb declines to make one. The test unmounts what lb mounted.

use std::{net::SocketAddr, path::Path};

use lb_tests::{
    netns::sh,
    require_root,
    topology::{SERVER_PORT, Topology, VIP, lb_binary, start_logged_via, wait_for_log},
    traffic::{LongConn, exchange_all},
};

/// Unmounts /sys/fs/bpf when the test mounted it, whatever happens.
struct Unmount(bool);

impl Drop for Unmount {
    fn drop(&mut self) {
        if self.0 {
            let _ = sh(&["umount", "-l", "/sys/fs/bpf"]);
        }
    }
}

#[test]
fn the_default_pin_path_gets_a_bpffs_and_flows_survive_a_restart() {
    if !require_root("netns_bpffs_default") {
        return;
    }
    let was_mounted = lb_userspace::dataplane::on_bpffs(Path::new("/sys/fs/bpf"));
    let lb = lb_binary().unwrap();
    let id = std::process::id();
    let topo = Topology::new(&format!("lbfs{id}"), 3).unwrap();
    topo.start_peers(&lb).unwrap();
    let _servers = topo.start_name_servers(SERVER_PORT).unwrap();
    let path = std::env::temp_dir().join(format!("lbfs{id}.toml"));
    // The demo's config: pin_path is the default, /sys/fs/bpf/lb.
    std::fs::write(&path, lb_userspace::DEFAULT_DEMO_CONFIG).unwrap();
    let netns = format!("--net=/run/netns/{}", topo.lb.name);
    let launcher = ["nsenter", netns.as_str()];
    let run = ["run", "--config", path.to_str().unwrap()];

    let (pid, log) = start_logged_via(&topo.lb, &launcher, &lb, &run).unwrap();
    let _unmount = Unmount(!was_mounted);
    if was_mounted {
        eprintln!("netns_bpffs_default: /sys/fs/bpf was a BPF filesystem already");
    } else {
        wait_for_log(
            &log,
            "mounted a BPF filesystem",
            1,
            std::time::Duration::from_secs(1),
        )
        .unwrap();
        assert!(lb_userspace::dataplane::on_bpffs(Path::new("/sys/fs/bpf")));
    }

    let target: SocketAddr = (VIP, 80).into();
    let mut conns = topo
        .client
        .run(move || {
            (0..20)
                .map(|_| LongConn::open(None, target).unwrap())
                .collect::<Vec<_>>()
        })
        .unwrap()
        .join()
        .unwrap();
    topo.lb.stop(pid);
    conns = exchange_all(&topo.client, conns).unwrap();
    let (pid, log) = start_logged_via(&topo.lb, &launcher, &lb, &run).unwrap();
    wait_for_log(
        &log,
        "re-attaching to the pinned data plane",
        1,
        std::time::Duration::from_secs(1),
    )
    .unwrap();
    exchange_all(&topo.client, conns).unwrap();
    topo.lb.stop(pid);
    // The pins go; a bpffs that was there before stays.
    sh(&[
        lb.to_str().unwrap(),
        "stop",
        "--config",
        path.to_str().unwrap(),
    ])
    .unwrap();
    let _ = std::fs::remove_file(&path);
}
