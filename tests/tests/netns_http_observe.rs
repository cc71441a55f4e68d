//! HTTP mode is visible: requests through the proxy (nginx servers, curl and a raw client)
//! show in the metrics by status class, per frontend and per server, with response-time
//! histograms, sessions and bytes, and in the frontend's JSON access log, each count equal
//! to what was sent; promtool accepts the scrape.

use std::{net::SocketAddr, time::Duration};

use lb_tests::{
    require_root,
    services::{ScratchDir, start_nginx},
    topology::{Topology, VIP, lb_binary, start_logged, wait_for_log},
    traffic::{curl, metric, promtool_accepts, raw_http, scrape_metrics_when},
};

const REQUESTS: usize = 20;

#[test]
fn proxied_requests_show_in_metrics_and_the_access_log() {
    if !require_root("netns_http_observe") {
        return;
    }
    let lb = lb_binary().unwrap();
    let topo = Topology::for_proxy(&format!("lbho{}", std::process::id()), 2, &lb).unwrap();
    let dir = ScratchDir::new("http-observe").unwrap();
    for i in 0..2 {
        let addr = [198, 18, 11 + i as u8, 2].into();
        start_nginx(&topo.servers[i], &format!("server{}", i + 1), addr, &dir.0).unwrap();
    }
    let config = dir.0.join("lb.toml");
    std::fs::write(
        &config,
        format!(
            r#"[[frontends]]
name = "web"
mode = "http"
address = "{VIP}"
binds = [{{ port = 80 }}]
default_backend = "web-servers"
options = {{ log = "json" }}

[[backends]]
name = "web-servers"
mode = "http"
balancing_method = "roundrobin"
port = 8080
servers = {{ type = "addresses", addresses = [{{ address = "198.18.11.2" }}, {{ address = "198.18.12.2" }}] }}

[dataplane]
gc_interval = "200ms"

[metrics]
listen = "198.18.0.1:9100"
"#
        ),
    )
    .unwrap();
    let (_pid, log) = start_logged(
        &topo.lb,
        &lb,
        &["run", "--config", config.to_str().unwrap()],
    )
    .unwrap();

    // 20 requests on one keep-alive connection, then one lb refuses itself (400).
    let urls: Vec<String> = (0..REQUESTS)
        .map(|i| format!("http://{VIP}/r{i}"))
        .collect();
    let mut args = vec!["-o", "/dev/null", "-w", "%{http_code}\n"];
    args.extend(urls.iter().map(String::as_str));
    let codes = curl(&topo.client, &args);
    assert_eq!(
        codes.lines().filter(|c| *c == "200").count(),
        REQUESTS,
        "{codes}"
    );
    let target: SocketAddr = (VIP, 80).into();
    let (answer, _) = raw_http(
        &topo.client,
        target,
        vec![b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()],
        Duration::ZERO,
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    let text = scrape_metrics_when(
        &topo.client,
        ([198, 18, 0, 1], 9100).into(),
        "the 21 requests counted",
        Duration::from_secs(10),
        |text| {
            metric(text, r#"lb_http_requests_total{frontend="web",code="2xx"}"#)
                == Some(REQUESTS as f64)
                && metric(text, r#"lb_http_requests_total{frontend="web",code="4xx"}"#) == Some(1.0)
        },
    )
    .unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    promtool_accepts(body);
    let per_server = |name: &str| -> f64 {
        ["198.18.11.2", "198.18.12.2"]
            .iter()
            .map(|s| {
                let series = name.replace("SERVER", s);
                metric(body, &series).unwrap_or_else(|| panic!("no {series} in:\n{body}"))
            })
            .sum()
    };
    assert_eq!(
        per_server(
            r#"lb_http_server_responses_total{backend="web-servers",server="SERVER",code="2xx"}"#
        ),
        REQUESTS as f64
    );
    assert_eq!(
        per_server(
            r#"lb_http_server_response_time_seconds_count{backend="web-servers",server="SERVER"}"#
        ),
        REQUESTS as f64
    );
    assert_eq!(
        per_server(r#"lb_server_sessions_total{backend="web-servers",server="SERVER"}"#),
        REQUESTS as f64,
        "each request is a session of its server"
    );
    assert!(
        per_server(r#"lb_server_bytes_out_total{backend="web-servers",server="SERVER"}"#) > 0.0
    );
    assert_eq!(
        metric(
            body,
            r#"lb_http_backend_response_time_seconds_count{backend="web-servers"}"#
        ),
        Some(REQUESTS as f64)
    );
    assert_eq!(
        metric(body, r#"lb_frontend_sessions_total{frontend="web"}"#),
        Some(2.0),
        "curl's connection and the raw one"
    );
    assert!(metric(body, r#"lb_frontend_bytes_out_total{frontend="web"}"#).unwrap() > 0.0);
    assert!(
        metric(body, r#"lb_backend_sessions_total{backend="web-servers"}"#)
            == Some(REQUESTS as f64)
    );

    // The access log: one JSON line per request, with HAProxy's timers.
    wait_for_log(&log, "lb::access", REQUESTS + 1, Duration::from_secs(5)).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("lb::access"))
        .map(|l| serde_json::from_str(&l[l.find('{').unwrap()..]).unwrap())
        .collect();
    assert_eq!(lines.len(), REQUESTS + 1);
    let ok: Vec<_> = lines.iter().filter(|l| l["status"] == 200).collect();
    assert_eq!(ok.len(), REQUESTS);
    for l in &ok {
        assert_eq!(l["frontend"], "web");
        assert_eq!(l["backend"], "web-servers");
        assert!(l["server"].as_str().unwrap().ends_with(":8080"), "{l}");
        for timer in ["Tq", "Tw", "Tc", "Tr", "Tt"] {
            assert!(l[timer].as_i64().unwrap() >= 0, "{timer} in {l}");
        }
        assert!(l["bytes"].as_i64().unwrap() > 0, "{l}");
        assert!(l["path"].as_str().unwrap().starts_with("/r"), "{l}");
    }
    let refused = lines.iter().find(|l| l["status"] == 400).unwrap();
    assert_eq!(refused["server"], "-");
    assert_eq!(refused["Tc"], -1);

    // HTTP/2, with a body of unknown length (gzipped by the server, chunked to lb): its
    // line comes once the body is sent, with the bytes the client received.
    let got = curl(
        &topo.client,
        &[
            "--http2-prior-knowledge",
            "-H",
            "Accept-Encoding: gzip",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version} %{size_download}",
            &format!("http://{VIP}/chunked/1m"),
        ],
    );
    let (code, rest) = got.split_once(' ').unwrap();
    let (version, size) = rest.split_once(' ').unwrap();
    assert_eq!((code, version), ("200", "2"), "{got}");
    let size: i64 = size.trim().parse().unwrap();
    assert!(size > 0 && size < 1 << 20, "gzipped: {got}");
    wait_for_log(&log, "lb::access", REQUESTS + 2, Duration::from_secs(5)).unwrap();
    let h2 = log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("lb::access") && l.contains("/chunked/1m"))
        .map(|l| serde_json::from_str::<serde_json::Value>(&l[l.find('{').unwrap()..]).unwrap())
        .next()
        .expect("the HTTP/2 request's line");
    assert_eq!(h2["status"], 200);
    assert_eq!(h2["bytes"].as_i64(), Some(size), "{h2}");
}
