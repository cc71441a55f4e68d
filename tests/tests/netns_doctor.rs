//! `lb doctor` on a namespace with a veth (native XDP) and a bridge (generic XDP only), and
//! no BPF filesystem at the default pin_path (`ip netns exec` mounts a fresh /sys): it
//! reports both problems with their fixes and exits non-zero.

use std::{process::Command, time::Duration};

use lb_tests::{netns::NetNs, require_root, topology::lb_binary, topology::veth, wait_until};

#[test]
fn doctor_reports_a_missing_bpffs_and_a_generic_only_interface_with_fixes() {
    if !require_root("netns_doctor") {
        return;
    }
    let id = std::process::id();
    let lb = NetNs::new(&format!("lbdr{id}-lb")).unwrap();
    let server = NetNs::new(&format!("lbdr{id}-s")).unwrap();
    veth(&lb, "dv0", &server, "dv1").unwrap();
    lb.exec(&["ip", "addr", "add", "198.18.50.1/24", "dev", "dv0"])
        .unwrap();
    server
        .exec(&["ip", "addr", "add", "198.18.50.2/24", "dev", "dv1"])
        .unwrap();
    lb.exec(&["ip", "link", "add", "dbr0", "type", "bridge"])
        .unwrap();
    lb.exec(&["ip", "link", "set", "dbr0", "up"]).unwrap();
    // The server's neighbour entry resolved, as traffic would leave it.
    lb.run(|| {
        let socket = std::net::UdpSocket::bind("198.18.50.1:0").unwrap();
        socket.send_to(b"arp, please", "198.18.50.2:9").unwrap();
    })
    .unwrap()
    .join()
    .unwrap();
    wait_until(
        "the server's neighbour entry",
        Duration::from_secs(5),
        || {
            let neigh = lb.exec(&["ip", "neigh", "show", "198.18.50.2"])?;
            Ok(neigh.contains("lladdr").then_some(()))
        },
    )
    .unwrap();

    let config = std::env::temp_dir().join(format!("lbdr{id}.toml"));
    std::fs::write(
        &config,
        r#"[[frontends]]
name = "web"
mode = "tcp"
address = "198.18.100.1"
binds = [{ port = 80 }]
default_backend = "servers"
interfaces = ["dv0", "dbr0"]
snat_address = "198.18.2.1"

[[backends]]
name = "servers"
mode = "tcp"
balancing_method = "maglev"
port = 8080
servers = { type = "addresses", addresses = [{ address = "198.18.50.2" }] }
"#,
    )
    .unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &lb.name])
        .arg(lb_binary().unwrap())
        .args(["doctor", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    // xdp_mode = "native" refuses the bridge instead of falling back to generic.
    let native = config.with_extension("native.toml");
    std::fs::write(
        &native,
        format!(
            "{}\n[dataplane]\nxdp_modes = {{ dbr0 = \"native\" }}\n",
            std::fs::read_to_string(&config).unwrap()
        ),
    )
    .unwrap();
    let run = Command::new("timeout")
        .args(["20", "ip", "netns", "exec", &lb.name])
        .arg(lb_binary().unwrap())
        .args(["run", "--config", native.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&native);
    let _ = std::fs::remove_file(&config);
    let said = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.code() == Some(1)
            && said.contains(r#"attaching XDP to dbr0 (xdp_mode = "native") failed"#),
        "{:?}\n{said}",
        run.status
    );
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "a failed check fails the command");
    let after = |needle: &str| {
        let at = text
            .find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{text}"));
        text[at..].lines().take(2).collect::<Vec<_>>().join("\n")
    };
    let bpffs = after("FAIL /sys/fs/bpf/lb ([dataplane] pin_path) is not on a BPF filesystem");
    assert!(
        bpffs.contains("fix: mount -t bpf bpffs /sys/fs/bpf"),
        "{bpffs}"
    );
    let bridge = after("FAIL dbr0: native XDP is not available");
    assert!(
        bridge.contains(r#"fix: use a NIC whose driver has native XDP, or accept it with [dataplane] xdp_modes = { dbr0 = "generic" }"#),
        "{bridge}"
    );
    assert!(text.contains("ok   dv0: native XDP works"), "{text}");
    assert!(text.contains("ok   kernel "), "{text}");
    assert!(
        text.contains("ok   server 198.18.50.2: next hop 198.18.50.2"),
        "{text}"
    );
}
