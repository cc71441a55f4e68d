//! The REST API of a running daemon: seed 004's curl example verbatim (host and token
//! changed), a change seen by real traffic and kept across a restart, Bearer auth (401 with
//! WWW-Authenticate, read-only tokens 403), and bad bodies answered 4xx naming the field.

use std::net::SocketAddr;

use lb_tests::{
    netns::NetNs,
    require_root,
    services::ScratchDir,
    topology::{SERVER_PORT, Topology, VIP, lb_binary, start_logged, wait_for_log},
    traffic::tcp_session,
};

const API: &str = "http://127.0.0.1:8081";

/// Seed 004's request body, as the documentation prints it. Its documented response is
/// the same document: the stored backend is echoed.
const SEED_BODY: &str = r#"{
    "name": "api-backend",
    "mode": "http",
    "balancing_method": "roundrobin",
    "port": 8080,
    "servers": {
      "type": "computer",
      "computer_ids": [
        "23",
        "24"
      ]
    },
    "options": {
      "tls": false,
      "tls_verify": false,
      "forward_for": true,
      "proxy_protocol": "v2",
      "sticky_session": {
        "type": "cookie",
        "cookie": "SERVERID",
        "ttl": "5m"
      },
      "health_check": {
        "type": "http",
        "path": "/health",
        "method": "GET",
        "port": 80,
        "expected_code": "200",
        "host_header": "example.com"
      }
    }
  }"#;
const SEED_RESPONSE: &str = SEED_BODY;

/// One API call from the lb namespace: (status, headers, body).
fn call(
    ns: &NetNs,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String, String) {
    call_in(&ns.name, method, path, token, body)
}

/// The same, from the namespace named `ns` (for other threads).
fn call_in(
    ns: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String, String) {
    let url = format!("{API}{path}");
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut args = vec![
        "ip",
        "netns",
        "exec",
        ns,
        "curl",
        "-sS",
        "--max-time",
        "10",
        "-D",
        "-",
        "-X",
        method,
        &url,
    ];
    if let Some(a) = &auth {
        args.extend(["-H", a]);
    }
    if let Some(b) = body {
        args.extend(["-H", "Content-Type: application/json", "-d", b]);
    }
    let out = lb_tests::netns::sh(&args).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Who answers 40 TCP sessions through the VIP (each of 3 servers misses all 40 with p < 1e-4).
fn answering(topo: &Topology) -> std::collections::BTreeSet<String> {
    let target: SocketAddr = (VIP, 80).into();
    topo.client
        .run(move || (0..40).map(|_| tcp_session(target, 1).unwrap()).collect())
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn api_changes_are_live_durable_and_checked() {
    if !require_root("netns_api") {
        return;
    }
    let lb = lb_binary().unwrap();
    let topo = Topology::new(&format!("lba{}", std::process::id()), 3).unwrap();
    topo.start_peers(&lb).unwrap();
    let _servers = topo.start_name_servers(SERVER_PORT).unwrap();
    let dir = ScratchDir::new("api").unwrap();
    let tokens = dir.0.join("tokens");
    std::fs::write(&tokens, "# operators\nrw secret-rw\nro secret-ro\n").unwrap();
    let config = format!(
        r#"{demo}
[[lbs]]
id = "42"
name = "edge"

[computers]
"23" = "198.18.11.2"
"24" = "198.18.12.2"

[[backends]]
name = "my-backend"
mode = "http"
balancing_method = "roundrobin"
port = 8080
servers = {{ type = "computer", computer_ids = ["23"] }}

[api]
listen = "127.0.0.1:8081"
token_file = "{tokens}"
"#,
        demo = lb_userspace::DEFAULT_DEMO_CONFIG,
        tokens = tokens.display()
    );
    let path = dir.0.join("lb.toml");
    std::fs::write(&path, config).unwrap();
    let run = ["run", "--config", path.to_str().unwrap()];
    let (pid, log) = start_logged(&topo.lb, &lb, &run).unwrap();
    let ns = &topo.lb;

    // Auth: no token or a wrong one is 401 with a Bearer challenge; read-only may read.
    let (status, head, body) = call(ns, "GET", "/v1/lbs", None, None);
    assert_eq!(status, 401, "{body}");
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    assert_eq!(json(&body)["error"]["code"], "unauthorized");
    assert_eq!(call(ns, "GET", "/v1/lbs", Some("secret-rx"), None).0, 401);
    let (status, _, body) = call(ns, "GET", "/v1/lbs", Some("secret-ro"), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["lbs"][0]["id"], "42");
    let (status, _, body) = call(
        ns,
        "DELETE",
        "/v1/lbs/42/backends/my-backend",
        Some("secret-ro"),
        None,
    );
    assert_eq!(status, 403, "{body}");

    // Seed 004 verbatim, with this daemon's address and token.
    let url = format!("{API}/v1/lbs/42/backends/my-backend");
    let answer = ns
        .exec(&[
            "curl",
            "-sS",
            "-X",
            "PUT",
            &url,
            "-H",
            "Authorization: Bearer secret-rw",
            "-H",
            "Content-Type: application/json",
            "-d",
            SEED_BODY,
        ])
        .unwrap();
    assert_eq!(json(&answer), json(SEED_RESPONSE), "{answer}");
    let (status, _, body) = call(
        ns,
        "GET",
        "/v1/lbs/42/backends/api-backend",
        Some("secret-ro"),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(json(&body), json(SEED_RESPONSE));
    assert_eq!(
        call(
            ns,
            "GET",
            "/v1/lbs/42/backends/my-backend",
            Some("secret-ro"),
            None
        )
        .0,
        404
    );

    // A change seen by real traffic: the demo backend down to server3 only.
    assert_eq!(answering(&topo).len(), 3);
    let only_server3 = r#"{"name": "demo-servers", "mode": "tcp", "balancing_method": "maglev", "port": "8080",
        "servers": {"type": "addresses", "addresses": [{"address": "198.18.13.2", "weight": 5}]}}"#;
    let (status, _, body) = call(
        ns,
        "PUT",
        "/v1/lbs/42/backends/demo-servers",
        Some("secret-rw"),
        Some(only_server3),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json(&body)["port"],
        "8080",
        "the port comes back as it was given"
    );
    let server3: std::collections::BTreeSet<String> = ["server3".to_string()].into();
    assert_eq!(answering(&topo), server3);
    // The file is edited where the config changed: the operator's comments stay.
    let saved = std::fs::read_to_string(&path).unwrap();
    assert!(
        saved.contains("# Clients reach the VIP 198.18.100.1 through lb")
            && saved.contains("{ address = \"198.18.13.2\", weight = 5 }"),
        "{saved}"
    );
    let (status, _, body) = call(
        ns,
        "GET",
        "/v1/lbs/42/backends/demo-servers/servers",
        Some("secret-ro"),
        None,
    );
    assert_eq!(status, 200);
    let servers = json(&body);
    assert_eq!(servers["servers"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(servers["servers"][0]["address"], "198.18.13.2");
    assert_eq!(servers["servers"][0]["weight"], 5);
    assert_eq!(servers["servers"][0]["health"], "unchecked");

    // Bad bodies: 4xx naming the field, nothing changed.
    for (body, status, field) in [
        (only_server3.replace("\"8080\"", "\"http\""), 422, "port"),
        (
            only_server3.replace("\"weight\": 5", "\"weight\": 101"),
            422,
            "servers.addresses[0].weight",
        ),
        (only_server3.replace("\"mode\": \"tcp\", ", ""), 422, "mode"),
        (
            only_server3.replace("\"maglev\"", "\"random\""),
            422,
            "balancing_method",
        ),
        (only_server3.replace("\"port\"", "\"prot\""), 422, "prot"),
        (
            only_server3.replace("198.18.13.2", "198.18.13"),
            422,
            "servers.addresses[0].address",
        ),
        (
            only_server3.replace(
                "\"tcp\", \"balancing_method\": \"maglev\"",
                "\"http\", \"balancing_method\": \"roundrobin\"",
            ),
            422,
            "frontends[0].mode",
        ),
    ] {
        let (got, _, answer) = call(
            ns,
            "PUT",
            "/v1/lbs/42/backends/demo-servers",
            Some("secret-rw"),
            Some(&body),
        );
        assert_eq!(got, status, "{body} -> {answer}");
        let error = &json(&answer)["error"];
        assert!(
            error["field"]
                .as_str()
                .is_some_and(|f| f.ends_with(field) || f.contains(field)),
            "{body} -> {answer}"
        );
        assert!(!error["message"].as_str().unwrap().is_empty());
    }
    let (status, _, body) = call(
        ns,
        "PUT",
        "/v1/lbs/42/backends/demo-servers",
        Some("secret-rw"),
        Some("{\"name\": "),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        call(
            ns,
            "PUT",
            "/v1/lbs/42/backends/nope",
            Some("secret-rw"),
            Some(only_server3)
        )
        .0,
        404
    );
    assert_eq!(
        call(ns, "GET", "/v1/lbs/7/backends", Some("secret-rw"), None).0,
        404
    );
    let (status, _, body) = call(
        ns,
        "POST",
        "/v1/lbs/42/backends",
        Some("secret-rw"),
        Some(only_server3),
    );
    assert_eq!(
        (status, json(&body)["error"]["field"].clone()),
        (409, "name".into()),
        "{body}"
    );
    let (status, _, body) = call(
        ns,
        "DELETE",
        "/v1/lbs/42/backends/demo-servers",
        Some("secret-rw"),
        None,
    );
    assert_eq!(status, 409, "in use by the frontend: {body}");
    assert_eq!(
        answering(&topo),
        server3,
        "rejected changes changed nothing"
    );

    // A change that validates but cannot be applied (the proxy cannot listen on an address
    // this host does not have): 409, and neither the running state nor the file changes.
    let file_before = std::fs::read(&path).unwrap();
    let unbindable = r#"{"name": "web", "mode": "http", "address": "198.18.200.1",
        "binds": [{"port": 80}], "default_backend": "api-backend"}"#;
    let (status, _, body) = call(
        ns,
        "POST",
        "/v1/lbs/42/frontends",
        Some("secret-rw"),
        Some(unbindable),
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(json(&body)["error"]["code"], "apply_failed");
    assert!(
        body.contains("ip addr add 198.18.200.1/32 dev lo"),
        "the fix is named: {body}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), file_before);
    assert_eq!(
        call(
            ns,
            "GET",
            "/v1/lbs/42/frontends/web",
            Some("secret-ro"),
            None
        )
        .0,
        404
    );
    assert_eq!(answering(&topo), server3);

    // Eight writers at once: each is answered 200, one after another; the daemon and the
    // file end with the same one of them.
    let writers: Vec<_> = (1..=8)
        .map(|w| {
            let body = only_server3.replace("\"weight\": 5", &format!("\"weight\": {w}"));
            let name = ns.name.clone();
            std::thread::spawn(move || {
                call_in(
                    &name,
                    "PUT",
                    "/v1/lbs/42/backends/demo-servers",
                    Some("secret-rw"),
                    Some(&body),
                )
                .0
            })
        })
        .collect();
    for w in writers {
        assert_eq!(w.join().unwrap(), 200);
    }
    let (_, _, body) = call(
        ns,
        "GET",
        "/v1/lbs/42/backends/demo-servers",
        Some("secret-ro"),
        None,
    );
    let weight = json(&body)["servers"]["addresses"][0]["weight"]
        .as_i64()
        .unwrap();
    let saved = lb_userspace::config::Config::load(&path).unwrap();
    let saved_weight = match &saved
        .backends
        .iter()
        .find(|b| b.name == "demo-servers")
        .unwrap()
        .servers
    {
        lb_userspace::config::Servers::Addresses { addresses } => i64::from(addresses[0].weight),
        other => panic!("{other:?}"),
    };
    assert!(
        (1..=8).contains(&weight) && weight == saved_weight,
        "{weight} vs {saved_weight}"
    );

    // Public ports, and a frontend listed.
    let (status, _, body) = call(
        ns,
        "POST",
        "/v1/lbs/42/public_ports",
        Some("secret-rw"),
        Some(r#"{"port": 80, "desc": "web"}"#),
    );
    assert_eq!(
        (status, json(&body)),
        (201, json(r#"{"public_port": 32001}"#))
    );
    let (status, _, body) = call(
        ns,
        "DELETE",
        "/v1/lbs/42/public_ports",
        Some("secret-rw"),
        Some(r#"{"port": 80}"#),
    );
    assert_eq!((status, body.trim()), (200, "null"));
    let (_, _, body) = call(ns, "GET", "/v1/lbs/42/frontends", Some("secret-ro"), None);
    assert_eq!(json(&body)["frontends"][0]["name"], "demo");
    let (status, _, body) = call(ns, "GET", "/v1/openapi.json", None, None);
    assert_eq!(status, 200);
    assert!(json(&body)["paths"]["/v1/lbs/{lb_id}/backends/{backend_name}"]["put"].is_object());

    // The CLI: tables, JSON, and the API's errors as given.
    let lb_path = lb.to_str().unwrap().to_string();
    let cli = |args: &[&str]| {
        let mut full = vec![lb_path.as_str()];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--api", API, "--token", "secret-rw"]);
        ns.exec(&full).unwrap()
    };
    let list = cli(&["backends", "list"]);
    assert!(
        list.starts_with("NAME") && list.contains("demo-servers") && list.contains("api-backend"),
        "{list}"
    );
    let servers: serde_json::Value = json(&cli(&["servers", "demo-servers", "-o", "json"]));
    assert_eq!(servers["servers"][0]["address"], "198.18.13.2");
    assert!(cli(&["frontends", "list"]).contains("198.18.100.1"));
    assert!(cli(&["status"]).contains("backend demo-servers (tcp): 1/1 servers up"));
    let bad = dir.0.join("bad.json");
    std::fs::write(
        &bad,
        only_server3.replace("\"weight\": 5", "\"weight\": 101"),
    )
    .unwrap();
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            &lb_path,
            "backends",
            "put",
            "demo-servers",
            "--file",
        ])
        .arg(&bad)
        .args(["--api", API, "--token", "secret-rw"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("422 invalid_config")
            && stderr.contains("(field: servers.addresses[0].weight)"),
        "{stderr}"
    );

    // Durable: a restarted daemon comes back with the changes.
    wait_for_log(
        &log,
        "API change applied and saved",
        3,
        std::time::Duration::from_secs(2),
    )
    .unwrap();
    topo.lb.stop(pid);
    let _restarted = start_logged(&topo.lb, &lb, &run).unwrap();
    assert_eq!(answering(&topo), server3);
    let (status, _, body) = call(
        ns,
        "GET",
        "/v1/lbs/42/backends/api-backend",
        Some("secret-ro"),
        None,
    );
    assert_eq!((status, json(&body)), (200, json(SEED_RESPONSE)));
    drop(dir);
}

/// Schemathesis (PyPI, installed by `cargo xtask setup`) against the daemon's OpenAPI
/// document, every check on, the auth checks included: no 5xx, no failure.
#[test]
fn schemathesis_finds_no_failure() {
    if !require_root("netns_api schemathesis") {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let schemathesis = root.join(".tools/venv/bin/schemathesis");
    assert!(
        schemathesis.is_file(),
        "{} is missing: run `cargo xtask setup` (cargo xtask test does)",
        schemathesis.display()
    );
    let lb = lb_binary().unwrap();
    let ns = NetNs::new(&format!("lbs{}", std::process::id())).unwrap();
    let dir = ScratchDir::new("schemathesis").unwrap();
    let tokens = dir.0.join("tokens");
    std::fs::write(&tokens, "rw st-token\n").unwrap();
    let path = dir.0.join("lb.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[lbs]]
id = "1"
name = "fuzzed"

[computers]
"23" = "198.18.11.2"

[[backends]]
name = "b1"
mode = "http"
balancing_method = "roundrobin"
port = 8080
servers = {{ type = "addresses", addresses = [{{ address = "198.18.11.2" }}] }}

[api]
listen = "127.0.0.1:8081"
token_file = "{tokens}"

[dataplane]
pin_path = "{pins}"
"#,
            tokens = tokens.display(),
            pins = dir.0.join("unpinned").display()
        ),
    )
    .unwrap();
    let _daemon = start_logged(&ns, &lb, &["run", "--config", path.to_str().unwrap()]).unwrap();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(&schemathesis)
        .arg("--config-file")
        .arg(root.join("tests/api/schemathesis.toml"))
        .args([
            "run",
            &format!("{API}/v1/openapi.json"),
            "-H",
            "Authorization: Bearer st-token",
            "--checks",
            "all",
            // `--checks all` overrides the config file's per-operation switches, and the
            // stateful phase then flags the public-port DELETE after POST /v1/lbs (a port
            // never published on the new lb is rightly 404) as a created resource gone.
            "--exclude-checks",
            "ensure_resource_availability",
            "--max-examples",
            "30",
            "--generation-deterministic",
            "--request-timeout",
            "10",
        ])
        .current_dir(&dir.0)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "schemathesis failed:\n{report}");
    assert!(
        report.contains("passed") && !report.contains("failed"),
        "{report}"
    );
    drop(dir);
}
