//! The daemon's Prometheus endpoint, scraped after known traffic.

use std::{process::Command, time::Duration};

use lb_tests::{
    require_root,
    topology::{SERVER_PORT, Topology, VIP, VIP_TCP_PORT, lb_binary},
    traffic::{drive_tcp, metric, promtool_accepts, scrape_metrics_when},
};

/// The value of the sample whose line starts with `prefix`.
fn value(text: &str, prefix: &str) -> f64 {
    metric(text, prefix).unwrap_or_else(|| panic!("no sample {prefix} in:\n{text}"))
}

/// The series (name and labels) of a scrape, in order.
fn series(body: &str) -> Vec<&str> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').map(|(series, _)| series))
        .collect()
}

/// Every `lb_*` or `process_*` metric the alert rules and the dashboard under deploy/ name
/// is in the scrape, and promtool accepts the rules.
fn deploy_files_name_only_scraped_metrics(body: &str) {
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
    let scraped: std::collections::BTreeSet<&str> = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    for file in ["prometheus/lb-alerts.yml", "grafana/lb.json"] {
        let text = std::fs::read_to_string(format!("{deploy}/{file}")).unwrap();
        let named: std::collections::BTreeSet<&str> = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("lb_") || w.starts_with("process_"))
            .collect();
        assert!(!named.is_empty(), "{file} names no metric");
        let missing: Vec<_> = named.difference(&scraped).collect();
        assert!(
            missing.is_empty(),
            "{file} names metrics no scrape has: {missing:?}"
        );
    }
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(format!("{deploy}/prometheus/lb-alerts.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    // A TCP check (starting UP, so traffic needs no wait) gives the check metrics the alert
    // rules name.
    let demo = lb_userspace::DEFAULT_DEMO_CONFIG.replace(
        "port = 8080\n",
        "port = 8080\noptions = { health_check = { type = \"tcp\", interval = \"200ms\", init_state = \"up\" } }\n",
    );
    assert_ne!(demo, lb_userspace::DEFAULT_DEMO_CONFIG);
    let text = format!(
        "{demo}\n[metrics]\nlisten = \"198.18.0.1:9100\"\n[dataplane]\ngc_interval = \"200ms\"\n[api]\nlisten = \"198.18.0.1:8081\"\ntoken_file = \"{}\"\n",
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
        "50 flows opened, none open any more, and every server probed",
        Duration::from_secs(10),
        |text| {
            metric(text, "lb_frontend_sessions_total{frontend=\"demo\"}").is_some_and(|n| n >= 50.0)
                && metric(text, "lb_frontend_current_sessions{frontend=\"demo\"}") == Some(0.0)
                && (11..14).all(|n| {
                    metric(
                        text,
                        &format!("lb_server_check_status{{backend=\"demo-servers\",server=\"198.18.{n}.2\"}}"),
                    )
                    .is_some()
                })
        },
    )
    .unwrap();
    assert!(
        text.starts_with("HTTP/1.") && text.contains("200"),
        "{text}"
    );
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "the content type names the format written (Prometheus text, asked for nothing else):\n{head}"
    );
    // Prometheus asks for OpenMetrics, and gets it, with its content type.
    let openmetrics = topo
        .client
        .exec(&[
            "curl",
            "-sf",
            "--max-time",
            "5",
            "-D",
            "-",
            "-H",
            "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            "http://198.18.0.1:9100/metrics",
        ])
        .unwrap();
    assert!(
        openmetrics
            .to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0")
            && openmetrics.trim_end().ends_with("# EOF"),
        "{openmetrics}"
    );
    promtool_accepts(body);
    deploy_files_name_only_scraped_metrics(body);
    // Every packet has one verdict; the reasons are apart.
    assert!(value(&text, "lb_xdp_verdicts_total{verdict=\"pass\"}") >= 0.0);
    assert!(!text.contains("lb_xdp_verdicts_total{verdict=\"not_vip\"}"));
    // Each family's series come in one order on every scrape.
    let again = scrape_metrics_when(
        &topo.client,
        ([198, 18, 0, 1], 9100).into(),
        "a later snapshot",
        Duration::from_secs(10),
        |_| true,
    )
    .unwrap();
    assert_eq!(
        series(body),
        series(again.split_once("\r\n\r\n").unwrap().1),
        "series in a stable order"
    );
    assert_eq!(
        value(&text, "lb_build_info{"),
        1.0,
        "lb_build_info is always 1"
    );
    assert!(text.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))));
    assert!(value(&text, "process_resident_memory_bytes ") > 0.0);
    assert!(value(&text, "lb_config_last_reload_success_timestamp_seconds ") > 1.0e9);
    assert_eq!(
        value(
            &text,
            "lb_server_check_status{backend=\"demo-servers\",server=\"198.18.11.2\"}"
        ),
        1.0
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
        value(&text, "lb_xdp_events_total{event=\"flow_new\"}"),
        50.0
    );
    assert!(value(&text, "lb_xdp_verdicts_total{verdict=\"redirect\"}") > 0.0);
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
