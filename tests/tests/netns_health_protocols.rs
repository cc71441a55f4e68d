//! Health checks that speak real protocols, against real servers from Debian's packages:
//! PostgreSQL (StartupMessage), MariaDB (handshake, then a login and COM_QUIT), Redis
//! (PING) and an openssl TLS server (handshake). Each backend pairs a live server with an
//! address where nothing answers: the live one comes UP, the other never gets traffic, and
//! real clients (psql, mariadb, redis-cli) through the VIP all succeed. A server that stops
//! goes DOWN with its reason logged.

use std::{net::IpAddr, time::Duration};

use lb_tests::{
    require_root,
    services::{start_mariadb, start_postgres, start_redis, start_tls_server},
    topology::{Topology, VIP, lb_binary, nat_frontend_toml, start_logged, wait_for_log},
    traffic::{metric, scrape_metrics_when},
};

fn server(i: u8) -> IpAddr {
    [198, 18, 10 + i, 2].into()
}

#[test]
fn protocol_checks_against_real_servers() {
    if !require_root("netns_health_protocols") {
        return;
    }
    let lb = lb_binary().unwrap();
    let topo = Topology::new(&format!("lbp{}", std::process::id()), 4).unwrap();
    topo.start_peers(&lb).unwrap();
    let (_pg, _pg_dir) = start_postgres(&topo.servers[0], server(1), 5432).unwrap();
    let (_my, _my_dir) = start_mariadb(&topo.servers[1], server(2), 3306, "lbcheck").unwrap();
    let redis = start_redis(&topo.servers[2], server(3), 6379).unwrap();
    let (_tls, _tls_dir) = start_tls_server(&topo.servers[3], server(4), 8443).unwrap();

    let check = |kind: &str, extra: &str| {
        format!(
            "health_check = {{ type = \"{kind}\", interval = \"300ms\", timeout = \"1s\", rise = 2, fall = 2{extra} }}"
        )
    };
    let backend = |name: &str, port: u16, live: u8, dead: u8, check: String| {
        format!(
            r#"
[[backends]]
name = "{name}"
mode = "tcp"
balancing_method = "roundrobin"
port = {port}
servers = {{ type = "addresses", addresses = [{{ address = "{}" }}, {{ address = "{}" }}] }}
options = {{ {check} }}
"#,
            server(live),
            server(dead)
        )
    };
    let frontend = |name: &str, port: u16| nat_frontend_toml(name, port, 4);
    let mut config = String::new();
    for (name, port, live, dead, check) in [
        ("pg", 5432, 1, 2, check("postgres", ", user = \"postgres\"")),
        ("my", 3306, 2, 3, check("mysql", ", user = \"lbcheck\"")),
        ("redis", 6379, 3, 4, check("redis", "")),
        ("tls", 8443, 4, 1, check("tls", "")),
    ] {
        config += &frontend(name, port);
        config += &backend(name, port, live, dead, check);
    }
    // The same MariaDB, checked as a user it does not know: never UP.
    config += &backend(
        "my-stranger",
        3306,
        2,
        3,
        check("mysql", ", user = \"stranger\""),
    );
    config += "\n[metrics]\nlisten = \"198.18.0.1:9100\"\n\n[dataplane]\ngc_interval = \"100ms\"\n";

    let path = std::env::temp_dir().join(format!("lbp{}.toml", std::process::id()));
    std::fs::write(&path, &config).unwrap();
    let (_pid, log) =
        start_logged(&topo.lb, &lb, &["run", "--config", path.to_str().unwrap()]).unwrap();
    let _ = std::fs::remove_file(&path);
    wait_for_log(&log, "server UP", 4, Duration::from_secs(20)).unwrap();
    let logged = |needle: &[&str]| {
        log.lock()
            .unwrap()
            .iter()
            .any(|l| needle.iter().all(|n| l.contains(n)))
    };
    for live in 1..=4 {
        assert!(
            logged(&["server UP", &server(live).to_string()]),
            "server {live} did not come up"
        );
    }

    // Real clients through the VIP: the dead half of each backend never gets a connection.
    let vip = VIP.to_string();
    for i in 0..10 {
        let out = topo
            .client
            .exec(&["redis-cli", "-h", &vip, "-p", "6379", "PING"])
            .unwrap();
        assert_eq!(out.trim(), "PONG", "redis request {i}");
        let out = topo
            .client
            .exec(&[
                "psql",
                "-h",
                &vip,
                "-p",
                "5432",
                "-U",
                "postgres",
                "-tAc",
                "SELECT 41 + 1",
            ])
            .unwrap();
        assert_eq!(out.trim(), "42", "psql request {i}");
        let out = topo
            .client
            .exec(&[
                "mariadb",
                "-h",
                &vip,
                "-P",
                "3306",
                "-u",
                "lbcheck",
                "-N",
                "-e",
                "SELECT 6 * 7",
            ])
            .unwrap();
        assert_eq!(out.trim(), "42", "mariadb request {i}");
        let out = topo
            .client
            .exec(&[
                "sh",
                "-c",
                &format!("echo | openssl s_client -connect {vip}:8443 -brief 2>&1"),
            ])
            .unwrap();
        assert!(out.contains("CONNECTION ESTABLISHED"), "tls {i}: {out}");
    }

    // Redis stops: DOWN, with the reason.
    topo.servers[2].stop(redis);
    wait_for_log(&log, "server DOWN", 1, Duration::from_secs(5)).unwrap();
    assert!(logged(&["server DOWN", &server(3).to_string(), "refused"]));
    // Metrics are a snapshot taken every gc_interval: wait for one taken after the DOWN.
    let redis_status = format!(
        "lb_server_status{{backend=\"redis\",server=\"{}\"}}",
        server(3)
    );
    let text = scrape_metrics_when(
        &topo.client,
        ([198, 18, 0, 1], 9100).into(),
        &format!("{redis_status} 0 (the stopped redis out of the selection)"),
        Duration::from_secs(10),
        move |text| metric(text, &redis_status) == Some(0.0),
    )
    .unwrap();
    let status = |backend: &str, s: u8| {
        metric(
            &text,
            &format!(
                "lb_server_check_status{{backend=\"{backend}\",server=\"{}\"}}",
                server(s)
            ),
        )
        .unwrap_or_else(|| panic!("no check status for {backend}/{s} in:\n{text}"))
    };
    for (backend, live, dead) in [("pg", 1, 2), ("my", 2, 3), ("tls", 4, 1)] {
        assert_eq!(status(backend, live), 1.0, "{backend} live server");
        assert_eq!(status(backend, dead), 0.0, "{backend} absent server");
    }
    assert_eq!(status("redis", 3), 0.0, "stopped redis");
    assert_eq!(status("my-stranger", 2), 0.0, "unknown user");
    assert!(
        logged(&["health check failing", "stranger", "refused"]),
        "the refused login is logged with its reason"
    );
}
