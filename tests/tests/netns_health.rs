//! Health checks in the `lb` daemon, against real servers: a server that never comes up gets
//! no traffic; a server that dies loses its traffic within fall x interval + 1 s and no
//! client connection fails after that; when it comes back it gets traffic again after rise
//! successes.

use std::{net::SocketAddr, time::Duration};

use lb_tests::{
    require_root,
    topology::{SERVER_PORT, Topology, VIP, lb_binary, server_name, start_logged, wait_for_log},
    traffic::{drive_tcp, metric, scrape_metrics},
};

const INTERVAL_MS: u64 = 200;
const FALL: u64 = 2;

#[test]
fn traffic_follows_tcp_health_checks() {
    if !require_root("netns_health") {
        return;
    }
    let lb = lb_binary().unwrap();
    let topo = Topology::new(&format!("lbh{}", std::process::id()), 3).unwrap();
    topo.start_peers(&lb).unwrap();
    let _servers = topo.start_name_servers(SERVER_PORT).unwrap();
    // Server 4 (198.18.14.2) never exists.
    let config = format!(
        r#"
[[frontends]]
name = "web"
mode = "tcp"
address = "{VIP}"
binds = [{{ port = 80 }}]
default_backend = "web"
interfaces = ["eth-c", "s1", "s2", "s3"]
snat_address = "198.18.2.1"

[[backends]]
name = "web"
mode = "tcp"
balancing_method = "maglev"
port = {SERVER_PORT}
servers = {{ type = "addresses", addresses = [
  {{ address = "198.18.11.2" }}, {{ address = "198.18.12.2" }},
  {{ address = "198.18.13.2" }}, {{ address = "198.18.14.2" }},
] }}
options = {{ health_check = {{ type = "tcp", interval = "{INTERVAL_MS}ms", timeout = "150ms", rise = 2, fall = {FALL} }} }}

[metrics]
listen = "198.18.0.1:9100"

[dataplane]
gc_interval = "200ms"
"#
    );
    let path = std::env::temp_dir().join(format!("lbh{}.toml", std::process::id()));
    std::fs::write(&path, config).unwrap();
    let (_pid, log) =
        start_logged(&topo.lb, &lb, &["run", "--config", path.to_str().unwrap()]).unwrap();
    let _ = std::fs::remove_file(&path);
    wait_for_log(&log, "server UP", 3, Duration::from_secs(10)).unwrap();

    let target: SocketAddr = (VIP, 80).into();
    let tally = drive_tcp(&topo.client, target, 300, 1, 2).unwrap();
    assert_eq!(
        tally.failed, 0,
        "the never-up server got traffic: {:?}",
        tally.errors
    );
    assert_eq!(tally.per_server.len(), 3);

    // Server 3 dies (its link goes down: probes time out, like a crashed host).
    topo.servers[2]
        .exec(&["ip", "link", "set", "eth0", "down"])
        .unwrap();
    wait_for_log(&log, "server DOWN", 1, Duration::from_secs(10)).unwrap();
    assert!(
        log.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("server DOWN") && l.contains("198.18.13.2"))
    );
    // fall x interval + 1 s after the death, no new connection may fail.
    std::thread::sleep(Duration::from_millis(FALL * INTERVAL_MS + 1000));
    let tally = drive_tcp(&topo.client, target, 300, 1, 2).unwrap();
    assert_eq!(tally.failed, 0, "{:?}", tally.errors);
    assert!(!tally.per_server.contains_key(&server_name(2)));

    // It comes back: after `rise` successes it takes traffic again.
    topo.servers[2]
        .exec(&["ip", "link", "set", "eth0", "up"])
        .unwrap();
    topo.servers[2]
        .exec(&["ip", "route", "replace", "default", "via", "198.18.13.1"])
        .unwrap();
    wait_for_log(&log, "server UP", 4, Duration::from_secs(10)).unwrap();
    let tally = drive_tcp(&topo.client, target, 300, 1, 2).unwrap();
    assert_eq!(tally.failed, 0, "{:?}", tally.errors);
    assert!(
        tally.per_server.contains_key(&server_name(2)),
        "{}",
        tally.summary()
    );

    // The check metrics tell the same story.
    std::thread::sleep(Duration::from_millis(500));
    let text = topo
        .client
        .run(|| scrape_metrics(([198, 18, 0, 1], 9100).into()).unwrap())
        .unwrap()
        .join()
        .unwrap();
    let sample = |name: &str, server: &str| {
        metric(
            &text,
            &format!("{name}{{backend=\"web\",server=\"{server}\"}}"),
        )
        .unwrap_or_else(|| panic!("no {name} for {server} in:\n{text}"))
    };
    assert_eq!(
        sample("lb_server_check_up_down_total", "198.18.13.2"),
        3.0,
        "UP, DOWN, UP"
    );
    assert!(sample("lb_server_check_failures_total", "198.18.13.2") >= FALL as f64);
    assert_eq!(sample("lb_server_check_status", "198.18.13.2"), 1.0);
    assert_eq!(sample("lb_server_check_status", "198.18.14.2"), 0.0);
    assert_eq!(sample("lb_server_check_up_down_total", "198.18.14.2"), 0.0);
    assert!(sample("lb_server_check_duration_seconds", "198.18.11.2") < 1.0);
    assert_eq!(
        sample("lb_server_status", "198.18.14.2"),
        0.0,
        "never up, never selected"
    );
}
