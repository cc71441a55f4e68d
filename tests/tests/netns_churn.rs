//! API churn never exhausts the data plane's ids: 1000 backends created and deleted through
//! the REST API (ids are released once no flow refers to them), then traffic still flows
//! and one more backend can be created.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use lb_tests::{
    require_root,
    services::ScratchDir,
    topology::{SERVER_PORT, Topology, VIP, VIP_TCP_PORT, lb_binary},
    traffic::drive_tcp,
};

const CYCLES: usize = 1000;

/// One API call on 127.0.0.1:8081 (from the lb namespace): its status code.
fn call(method: &str, path: &str, body: &str) -> anyhow::Result<u16> {
    let mut conn = TcpStream::connect("127.0.0.1:8081")?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: lb\r\nAuthorization: Bearer churn\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status in {answer:?}"))?;
    Ok(status)
}

#[test]
fn a_thousand_backends_created_and_deleted_leave_ids_to_spare() {
    if !require_root("netns_churn") {
        return;
    }
    let lb = lb_binary().unwrap();
    let topo = Topology::new(&format!("lbc{}", std::process::id()), 3).unwrap();
    topo.start_peers(&lb).unwrap();
    let _servers = topo.start_name_servers(SERVER_PORT).unwrap();
    let dir = ScratchDir::new("churn").unwrap();
    let tokens = dir.0.join("tokens");
    std::fs::write(&tokens, "rw churn\n").unwrap();
    let config = format!(
        "{}\n[dataplane]\ngc_interval = \"200ms\"\n\n[api]\nlisten = \"127.0.0.1:8081\"\ntoken_file = \"{}\"\n",
        lb_userspace::DEFAULT_DEMO_CONFIG,
        tokens.display()
    );
    let path = dir.0.join("lb.toml");
    std::fs::write(&path, config).unwrap();
    topo.start_lb(&lb, &path).unwrap();

    let failures = topo
        .lb
        .run(|| {
            let mut failures = Vec::new();
            for i in 0..=CYCLES {
                let body = format!(
                    r#"{{"name": "churn-{i}", "mode": "tcp", "balancing_method": "maglev", "port": {SERVER_PORT},
                    "servers": {{"type": "addresses", "addresses": [{{"address": "198.18.11.2"}}, {{"address": "198.18.12.2"}}]}}}}"#
                );
                match call("POST", "/v1/lbs/1/backends", &body) {
                    Ok(201) => {}
                    other => failures.push(format!("create {i}: {other:?}")),
                }
                // The last one stays: a backend can still be created after the churn.
                if i < CYCLES {
                    match call("DELETE", &format!("/v1/lbs/1/backends/churn-{i}"), "") {
                        Ok(204) => {}
                        other => failures.push(format!("delete {i}: {other:?}")),
                    }
                }
            }
            failures
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );

    let tally = drive_tcp(&topo.client, (VIP, VIP_TCP_PORT).into(), 40, 2, 1).unwrap();
    assert_eq!(tally.failed, 0, "{:?}", tally.errors);
    assert_eq!(tally.per_server.values().sum::<usize>(), 40);
}
