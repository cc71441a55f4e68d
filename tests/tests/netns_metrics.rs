//! The daemon's Prometheus endpoint, scraped after known traffic.

use std::time::Duration;

use lb_tests::{
    require_root,
    topology::{SERVER_PORT, Topology, VIP, VIP_TCP_PORT, lb_binary},
    traffic::{drive_tcp, metric, scrape_metrics_when},
};

/// The value of the sample whose line starts with `prefix`.
fn value(text: &str, prefix: &str) -> f64 {
    metric(text, prefix).unwrap_or_else(|| panic!("no sample {prefix} in:\n{text}"))
}

#[test]
fn metrics_count_the_traffic_that_was_sent() {
    if !require_root("netns_metrics") {
        return;
    }
    let lb = lb_binary().unwrap();
    let topo = Topology::new(&format!("lbm{}", std::process::id()), 3).unwrap();
    topo.start_peers(&lb).unwrap();
    let _servers = topo.start_name_servers(SERVER_PORT).unwrap();
    let config = std::env::temp_dir().join(format!("lbm{}.toml", std::process::id()));
    // `lb status --config` reads the daemon through the API that config names.
    let tokens = std::env::temp_dir().join(format!("lbm{}.tokens", std::process::id()));
    std::fs::write(&tokens, "ro status-reader\n").unwrap();
    let text = format!(
        "{}\n[metrics]\nlisten = \"198.18.0.1:9100\"\n[dataplane]\ngc_interval = \"200ms\"\n[api]\nlisten = \"198.18.0.1:8081\"\ntoken_file = \"{}\"\n",
        lb_userspace::DEFAULT_DEMO_CONFIG,
        tokens.display()
    );
    std::fs::write(&config, text).unwrap();
    topo.start_lb(&lb, &config).unwrap();

    let tally = drive_tcp(&topo.client, (VIP, VIP_TCP_PORT).into(), 50, 2, 2).unwrap();
    assert_eq!(tally.failed, 0);
    // The snapshot is taken every gc_interval: wait for one taken after the traffic, which
    // has counted the 50 flows and seen every one of them closed.
    let text = scrape_metrics_when(
        &topo.client,
        ([198, 18, 0, 1], 9100).into(),
        "50 flows opened and none open any more",
        Duration::from_secs(10),
        |text| {
            metric(text, "lb_frontend_sessions_total{frontend=\"demo\"}").is_some_and(|n| n >= 50.0)
                && metric(text, "lb_frontend_current_sessions{frontend=\"demo\"}") == Some(0.0)
        },
    )
    .unwrap();
    assert!(
        text.starts_with("HTTP/1.") && text.contains("200"),
        "{text}"
    );

    assert_eq!(
        value(&text, "lb_frontend_sessions_total{frontend=\"demo\"}"),
        50.0
    );
    // Per connection: SYN, ACK, 2 requests, FIN/ACK handshake... at least 5 packets in.
    assert!(value(&text, "lb_frontend_packets_in_total{frontend=\"demo\"}") >= 250.0);
    assert!(value(&text, "lb_frontend_bytes_out_total{frontend=\"demo\"}") > 0.0);
    let per_server: f64 = (11..14)
        .map(|n| {
            value(
                &text,
                &format!(
                    "lb_server_sessions_total{{backend=\"demo-servers\",server=\"198.18.{n}.2\"}}"
                ),
            )
        })
        .sum();
    assert_eq!(per_server, 50.0);
    let backend = |name: &str| value(&text, &format!("{name}{{backend=\"demo-servers\"}}"));
    assert_eq!(backend("lb_backend_sessions_total"), 50.0);
    assert_eq!(backend("lb_backend_status"), 1.0);
    assert_eq!(backend("lb_backend_active_servers"), 3.0);
    assert_eq!(backend("lb_backend_weight"), 4.0, "1 + 1 + 2");
    assert!(backend("lb_backend_bytes_out_total") > 0.0);
    assert_eq!(
        value(
            &text,
            "lb_server_weight{backend=\"demo-servers\",server=\"198.18.13.2\"}"
        ),
        2.0
    );
    assert_eq!(
        value(
            &text,
            "lb_server_status{backend=\"demo-servers\",server=\"198.18.11.2\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&text, "lb_xdp_packets_total{counter=\"flow_new\"}"),
        50.0
    );
    assert!(value(&text, "lb_xdp_packets_total{counter=\"verdict_redirect\"}") > 0.0);
    assert!(value(&text, "lb_conntrack_entries ") >= 50.0);
    assert_eq!(value(&text, "lb_conntrack_capacity "), 1_048_576.0);

    // `lb status` reads the same endpoint.
    let json = topo
        .client
        .exec(&[
            lb.to_str().unwrap(),
            "status",
            "--config",
            config.to_str().unwrap(),
            "-o",
            "json",
        ])
        .unwrap();
    let _ = std::fs::remove_file(&config);
    let _ = std::fs::remove_file(&tokens);
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(status["frontends"][0]["name"], "demo");
    assert_eq!(status["frontends"][0]["flows_total"], 50);
    let servers = status["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 3);
    assert!(servers.iter().all(|s| s["up"] == true));
    assert_eq!(
        servers
            .iter()
            .map(|s| s["flows_total"].as_u64().unwrap())
            .sum::<u64>(),
        50
    );
}
