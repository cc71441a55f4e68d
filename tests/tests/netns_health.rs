//! Health checks in the `lb` daemon, against real servers: a server that never comes up gets
//! no traffic; a server that dies loses its traffic once it is DOWN and no client
//! connection fails after that; when it comes back it gets traffic again after rise
//! successes.

use std::{net::SocketAddr, time::Duration};

use lb_tests::{
    require_root,
    topology::{
        SERVER_PORT, Topology, VIP, lb_binary, nat_frontend_toml, server_name, start_logged,
        wait_for_log,
    },
    traffic::{drive_tcp, metric, scrape_metrics_when},
    wait_until,
};

/// Where the daemons of these tests serve metrics (from the client's side).
const METRICS: ([u8; 4], u16) = ([198, 18, 0, 1], 9100);

/// `lb_server_status` (1 when the server takes new flows) of `server` in `backend`.
fn server_status(text: &str, backend: &str, server: &str) -> Option<f64> {
    metric(
        text,
        &format!("lb_server_status{{backend=\"{backend}\",server=\"{server}\"}}"),
    )
}

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
        r#"{web}
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
"#,
        web = nat_frontend_toml("web", 80, 3)
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
    // Once the DOWN is applied (the server is out of the selection table), no new
    // connection may fail.
    scrape_metrics_when(
        &topo.client,
        METRICS.into(),
        "198.18.13.2 out of the selection (lb_server_status 0)",
        Duration::from_secs(10),
        |text| server_status(text, "web", "198.18.13.2") == Some(0.0),
    )
    .unwrap();
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

    // The check metrics tell the same story, once the snapshot (taken every gc_interval)
    // has the server back.
    let text = scrape_metrics_when(
        &topo.client,
        METRICS.into(),
        "198.18.13.2 back in the selection (lb_server_status 1)",
        Duration::from_secs(10),
        |text| server_status(text, "web", "198.18.13.2") == Some(1.0),
    )
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

/// A server whose HTTP check flaps obeys rise/fall exactly: the lb's UP/DOWN transitions
/// equal what the rules give for the answers the server actually sent, in order.
#[test]
fn a_flapping_server_obeys_rise_and_fall() {
    use lb_tests::services::ScriptedHttp;
    if !require_root("netns_health_flapping") {
        return;
    }
    const RISE: usize = 3;
    const FALL: usize = 2;
    let lb = lb_binary().unwrap();
    let topo = Topology::new(&format!("lbf{}", std::process::id()), 1).unwrap();
    topo.start_peers(&lb).unwrap();
    let health = ScriptedHttp::start(&topo.servers[0], 8081, 200).unwrap();
    // Short of rise, then up; short of fall, then down; then up for good.
    let script = [
        200, 200, 503, 200, 200, 503, 200, 503, // never RISE in a row: stays DOWN
        200, 200, 200, // UP
        503, 200, 503, 200, 503, 200, // never FALL in a row: stays UP
        503, 503, // DOWN
        200, 200, 200, // UP, and 200 from here on
    ];
    health.script.lock().unwrap().extend(script);
    let config = format!(
        r#"
[[backends]]
name = "flappy"
mode = "tcp"
balancing_method = "roundrobin"
port = 8080
servers = {{ type = "addresses", addresses = [{{ address = "198.18.11.2" }}] }}
options = {{ health_check = {{ type = "http", port = 8081, path = "/health", interval = "100ms", timeout = "500ms", rise = {RISE}, fall = {FALL} }} }}

[metrics]
listen = "198.18.0.1:9100"

[dataplane]
gc_interval = "100ms"
"#
    );
    let path = std::env::temp_dir().join(format!("lbf{}.toml", std::process::id()));
    std::fs::write(&path, config).unwrap();
    let (_pid, log) =
        start_logged(&topo.lb, &lb, &["run", "--config", path.to_str().unwrap()]).unwrap();
    let _ = std::fs::remove_file(&path);
    let probes = script.len() + 3;
    wait_until(
        &format!("the health server to answer {probes} probes"),
        Duration::from_secs(20),
        || match health.answer_count() {
            n if n >= probes => Ok(Some(())),
            n => anyhow::bail!("probes stopped coming after {n}"),
        },
    )
    .unwrap();
    wait_for_log(&log, "server UP", 2, Duration::from_secs(5)).unwrap();
    // Metrics are a snapshot taken every gc_interval: wait for one taken after the last UP,
    // which counts every failed probe of the script and has the server selected.
    let failed = script.iter().filter(|&&code| code != 200).count() as f64;
    let text = scrape_metrics_when(
        &topo.client,
        METRICS.into(),
        &format!("{failed} failed probes and the server selected"),
        Duration::from_secs(10),
        move |text| {
            let failures = metric(
                text,
                "lb_server_check_failures_total{backend=\"flappy\",server=\"198.18.11.2\"}",
            );
            failures.is_some_and(|f| f >= failed)
                && server_status(text, "flappy", "198.18.11.2") == Some(1.0)
        },
    )
    .unwrap();

    // The rules, applied to what was answered.
    let (mut up, mut streak, mut transitions) = (false, 0, 0);
    for code in health.answers.lock().unwrap().iter() {
        let ok = *code == 200;
        if ok == up {
            streak = 0;
            continue;
        }
        streak += 1;
        if streak == if ok { RISE } else { FALL } {
            (up, streak, transitions) = (ok, 0, transitions + 1);
        }
    }
    assert_eq!(
        (up, transitions),
        (true, 3),
        "the script itself: UP, DOWN, UP"
    );

    let sample = |name: &str| {
        metric(
            &text,
            &format!("{name}{{backend=\"flappy\",server=\"198.18.11.2\"}}"),
        )
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    assert_eq!(sample("lb_server_check_up_down_total"), transitions as f64);
    assert_eq!(sample("lb_server_check_status"), 1.0);
    let changes: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("server UP") || l.contains("server DOWN"))
        .cloned()
        .collect();
    assert_eq!(changes.len(), 3, "{changes:#?}");
    assert!(
        changes[1].contains("code 503"),
        "the reason is logged: {}",
        changes[1]
    );
}

/// With `on_down = "reset"`, established connections to a server that goes DOWN are reset
/// at their next packet (the client sees a reset at once, not a timeout); connections to
/// healthy servers carry on.
#[test]
fn established_flows_of_a_down_server_are_reset_when_configured() {
    use lb_tests::traffic::LongConn;
    if !require_root("netns_health_reset") {
        return;
    }
    let lb = lb_binary().unwrap();
    let topo = Topology::new(&format!("lbr{}", std::process::id()), 3).unwrap();
    topo.start_peers(&lb).unwrap();
    let _servers = topo.start_name_servers(SERVER_PORT).unwrap();
    let config = format!(
        r#"{web}
[[backends]]
name = "web"
mode = "tcp"
balancing_method = "roundrobin"
port = {SERVER_PORT}
servers = {{ type = "addresses", addresses = [
  {{ address = "198.18.11.2" }}, {{ address = "198.18.12.2" }}, {{ address = "198.18.13.2" }},
] }}
options = {{ health_check = {{ type = "tcp", interval = "200ms", timeout = "150ms", rise = 1, fall = 2, on_down = "reset" }} }}
"#,
        web = nat_frontend_toml("web", 80, 3)
    );
    let path = std::env::temp_dir().join(format!("lbr{}.toml", std::process::id()));
    std::fs::write(&path, config).unwrap();
    // Structured logs: every line is a JSON object.
    let (_pid, log) = start_logged(
        &topo.lb,
        &lb,
        &[
            "--log-format",
            "json",
            "run",
            "--config",
            path.to_str().unwrap(),
        ],
    )
    .unwrap();
    let _ = std::fs::remove_file(&path);
    wait_for_log(&log, "server UP", 3, Duration::from_secs(10)).unwrap();

    let target: SocketAddr = (VIP, 80).into();
    let conns = topo
        .client
        .run(move || {
            (0..30)
                .map(|_| LongConn::open(None, target))
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    let dying = server_name(2);
    let on_dying = conns.iter().filter(|c| c.server == dying).count();
    assert!(on_dying > 0, "round robin put some connections on {dying}");

    topo.servers[2]
        .exec(&["ip", "link", "set", "eth0", "down"])
        .unwrap();
    wait_for_log(&log, "server DOWN", 1, Duration::from_secs(10)).unwrap();
    let down: serde_json::Value = log
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("server DOWN"))
        .map(|l| serde_json::from_str(l).expect("a JSON log line"))
        .unwrap();
    assert_eq!(down["level"], "WARN");
    assert_eq!(down["fields"]["server"], "198.18.13.2");
    assert_eq!(down["fields"]["backend"], "web");
    assert!(down["fields"]["reason"].is_string(), "{down}");

    let outcomes = topo
        .client
        .run(move || {
            conns
                .into_iter()
                .map(|mut c| {
                    let started = std::time::Instant::now();
                    let result = c.exchange().map_err(|e| format!("{e:#}"));
                    (c.server.clone(), result, started.elapsed())
                })
                .collect::<Vec<_>>()
        })
        .unwrap()
        .join()
        .unwrap();
    for (server, result, _took) in &outcomes {
        if *server == dying {
            let err = result
                .as_ref()
                .expect_err("a flow of the DOWN server carried on");
            assert!(err.contains("reset"), "expected a reset, got {err}");
        } else {
            assert_eq!(result.as_deref(), Ok(server.as_str()));
        }
    }
}
