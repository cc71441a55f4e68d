//! HTTP mode through the `lb` daemon's proxy, with real clients (curl, wrk, raw sockets) and
//! real servers (nginx): balancing, cookie stickiness, X-Forwarded-*, ACL routing, PROXY
//! protocol checked by nginx, TLS termination (HTTP/1.1 and HTTP/2), redirect to https,
//! TLS to servers with and without verification, slowloris and smuggling defences, and
//! retries when a server dies.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use lb_tests::{
    require_root,
    services::{ScratchDir, self_signed, start_nginx},
    topology::{Topology, VIP, lb_binary, start_logged, wait_for_log},
    traffic::{curl, raw_http as raw},
};

fn first_word(s: &str) -> String {
    s.split_whitespace().next().unwrap_or("").to_string()
}

#[test]
fn http_mode_end_to_end() {
    if !require_root("netns_http") {
        return;
    }
    let lb = lb_binary().unwrap();
    let topo = Topology::for_proxy(&format!("lbx{}", std::process::id()), 3, &lb).unwrap();
    let dir = ScratchDir::new("http").unwrap();
    let mut nginx = Vec::new();
    for i in 0..3 {
        let addr = [198, 18, 11 + i as u8, 2].into();
        nginx.push(
            start_nginx(&topo.servers[i], &format!("server{}", i + 1), addr, &dir.0).unwrap(),
        );
    }
    let (_, _, lb_pem) = self_signed(&dir.0, "lb", VIP.into()).unwrap();
    let servers = |port: u16| {
        format!(
            r#"servers = {{ type = "addresses", addresses = [{{ address = "198.18.11.2" }}, {{ address = "198.18.12.2" }}, {{ address = "198.18.13.2" }}] }}
port = {port}"#
        )
    };
    let config = format!(
        r#"
[http]
request_timeout = "1s"

[[frontends]]
name = "web"
mode = "http"
address = "{VIP}"
binds = [{{ port = 80 }}]
default_backend = "web"
acls = [
  {{ name = "is_api", criterion = "path_beg", value = "/api" }},
  {{ name = "is_admin", criterion = "hdr_host", value = "admin.example" }},
]
backends = [
  {{ backend = "api", cond = "if", test = "is_api" }},
  {{ backend = "admin", cond = "if", test = "is_admin" }},
]

[[frontends]]
name = "behind-proxy"
mode = "http"
address = "{VIP}"
binds = [{{ port = 8082 }}]
default_backend = "web"
options = {{ trusted_proxies = ["198.18.0.0/24"] }}

[[frontends]]
name = "secure"
mode = "http"
address = "{VIP}"
binds = [{{ port = 8088 }}, {{ port = 8443, ssl = true, ssl_certificate = "{pem}" }}]
default_backend = "web"
options = {{ redirect_ssl = true }}

[[frontends]]
name = "sticky"
mode = "http"
address = "{VIP}"
binds = [{{ port = 8083 }}]
default_backend = "sticky"

[[frontends]]
name = "weighted"
mode = "http"
address = "{VIP}"
binds = [{{ port = 8091 }}]
default_backend = "weighted"

[[frontends]]
name = "first"
mode = "http"
address = "{VIP}"
binds = [{{ port = 8092 }}]
default_backend = "first"

[[frontends]]
name = "least"
mode = "http"
address = "{VIP}"
binds = [{{ port = 8093 }}]
default_backend = "least"

[[frontends]]
name = "pp-http"
mode = "http"
address = "{VIP}"
binds = [{{ port = 8084 }}]
default_backend = "pp-http"

[[frontends]]
name = "pp-tcp"
mode = "tcp"
address = "{VIP}"
binds = [{{ port = 9000 }}]
default_backend = "pp-tcp"

[[frontends]]
name = "tls-servers"
mode = "http"
address = "{VIP}"
binds = [{{ port = 8085 }}]
default_backend = "tls-servers"

[[frontends]]
name = "tls-verify"
mode = "http"
address = "{VIP}"
binds = [{{ port = 8086 }}]
default_backend = "tls-verify"

[[frontends]]
name = "websocket"
mode = "http"
address = "{VIP}"
binds = [{{ port = 8087 }}]
default_backend = "websocket"

[[frontends]]
name = "source-sticky"
mode = "http"
address = "{VIP}"
binds = [{{ port = 8089 }}]
default_backend = "source-sticky"

[[backends]]
name = "websocket"
mode = "http"
balancing_method = "roundrobin"
servers = {{ type = "addresses", addresses = [{{ address = "198.18.11.2" }}] }}
port = 8090

[[backends]]
name = "source-sticky"
mode = "http"
balancing_method = "roundrobin"
{web}
options = {{ sticky_session = {{ type = "source_ip", ttl = "1m" }} }}

[[backends]]
name = "web"
mode = "http"
balancing_method = "roundrobin"
{web}

[[backends]]
name = "sticky"
mode = "http"
balancing_method = "roundrobin"
{web}
options = {{ sticky_session = {{ type = "cookie", cookie = "SERVERID", ttl = "5m" }} }}

[[backends]]
name = "weighted"
mode = "http"
balancing_method = "roundrobin"
port = 8080
servers = {{ type = "addresses", addresses = [{{ address = "198.18.11.2", weight = 1 }}, {{ address = "198.18.12.2", weight = 2 }}, {{ address = "198.18.13.2", weight = 0 }}] }}

[[backends]]
name = "first"
mode = "http"
balancing_method = "first"
{web}

[[backends]]
name = "least"
mode = "http"
balancing_method = "leastconn"
{web}

[[backends]]
name = "api"
mode = "http"
balancing_method = "first"
servers = {{ type = "addresses", addresses = [{{ address = "198.18.13.2" }}] }}
port = 8080

[[backends]]
name = "admin"
mode = "http"
balancing_method = "leastconn"
servers = {{ type = "addresses", addresses = [{{ address = "198.18.12.2" }}] }}
port = 8080

[[backends]]
name = "pp-http"
mode = "http"
balancing_method = "roundrobin"
{pp}
options = {{ proxy_protocol = "v1" }}

[[backends]]
name = "pp-tcp"
mode = "tcp"
balancing_method = "roundrobin"
{pp}
options = {{ proxy_protocol = "v2" }}

[[backends]]
name = "tls-servers"
mode = "http"
balancing_method = "roundrobin"
{tls}
options = {{ tls = true }}

[[backends]]
name = "tls-verify"
mode = "http"
balancing_method = "roundrobin"
{tls}
options = {{ tls = true, tls_verify = true }}
"#,
        pem = lb_pem.display(),
        web = servers(8080),
        pp = servers(8081),
        tls = servers(8443),
    );
    let path = dir.0.join("lb.toml");
    std::fs::write(&path, config).unwrap();
    let (_pid, log) =
        start_logged(&topo.lb, &lb, &["run", "--config", path.to_str().unwrap()]).unwrap();
    let c = &topo.client;
    let vip = VIP.to_string();
    let url = |port: u16, path: &str| format!("http://{vip}:{port}{path}");

    let tally = |port: u16, n: usize| {
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            *counts
                .entry(first_word(&curl(c, &[&url(port, "/")])))
                .or_insert(0) += 1;
        }
        counts
    };
    // Round robin over three servers: 30 requests, 10 each.
    let counts = tally(80, 30);
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        vec![10, 10, 10],
        "{counts:?}"
    );

    // Weights 1:2:0 in the proxy: exactly 10/20/0 of 30; `first` keeps to the first server
    // while it has room; `leastconn` with nothing open rotates its ties.
    let weighted = tally(8091, 30);
    assert_eq!(
        (
            weighted.get("server1"),
            weighted.get("server2"),
            weighted.get("server3")
        ),
        (Some(&10), Some(&20), None),
        "{weighted:?}"
    );
    let first = tally(8092, 10);
    assert_eq!(first.get("server1"), Some(&10), "{first:?}");
    let least = tally(8093, 30);
    assert_eq!(
        least.values().copied().collect::<Vec<_>>(),
        vec![10, 10, 10],
        "{least:?}"
    );

    // X-Forwarded-*: a client's own values are replaced unless it is trusted.
    let answer = curl(c, &["-H", "X-Forwarded-For: 6.6.6.6", &url(80, "/x?y=1")]);
    assert!(answer.contains("xff=198.18.0.2 "), "{answer}");
    assert!(answer.contains("port=80 proto=http"), "{answer}");
    assert!(answer.contains("uri=/x?y=1"), "{answer}");
    let answer = curl(c, &["-H", "X-Forwarded-For: 6.6.6.6", &url(8082, "/")]);
    assert!(answer.contains("xff=6.6.6.6, 198.18.0.2 "), "{answer}");

    // ACL routing, in order, then the default.
    assert_eq!(first_word(&curl(c, &[&url(80, "/api/v1")])), "server3");
    for _ in 0..3 {
        assert_eq!(
            first_word(&curl(c, &["-H", "Host: admin.example", &url(80, "/")])),
            "server2"
        );
    }

    // Cookie stickiness: 100 requests with a cookie jar stay on one server.
    let jar = dir.0.join("jar");
    let jar = jar.to_str().unwrap();
    let mut seen = BTreeMap::new();
    for _ in 0..100 {
        let answer = curl(c, &["-c", jar, "-b", jar, &url(8083, "/")]);
        *seen.entry(first_word(&answer)).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
    let jar_text = std::fs::read_to_string(jar).unwrap();
    let value = jar_text
        .lines()
        .find(|l| l.contains("\tSERVERID\t"))
        .and_then(|l| l.split('\t').next_back())
        .unwrap_or_else(|| panic!("no SERVERID cookie: {jar_text}"));
    assert!(
        !value.contains("198.18.") && !value.contains("server"),
        "the cookie names no address: {value}"
    );
    // A forged cookie falls back to balancing, and gets a real one.
    let headers = curl(
        c,
        &[
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-b",
            "SERVERID=forged",
            &url(8083, "/"),
        ],
    );
    assert!(headers.contains("200"), "{headers}");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("set-cookie: serverid="),
        "{headers}"
    );
    // The server's own SERVERID cookie is replaced by the proxy's; others pass.
    let headers = curl(c, &["-D", "-", "-o", "/dev/null", &url(8083, "/setcookie")]);
    let cookies: Vec<&str> = headers
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .collect();
    assert_eq!(cookies.len(), 2, "{headers}");
    assert!(cookies.iter().any(|l| l.contains("other=1")));
    assert!(!headers.contains("from-server"), "{headers}");

    // Source-IP stickiness: one client, one server.
    let mut seen = BTreeMap::new();
    for _ in 0..20 {
        *seen
            .entry(first_word(&curl(c, &[&url(8089, "/")])))
            .or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 1, "{seen:?}");

    // A WebSocket passes through the Upgrade: a real handshake and echoed messages.
    // Bound before the client starts, so it is listening when the proxy connects.
    let listener = topo.servers[0]
        .run(|| std::net::TcpListener::bind(("198.18.11.2", 8090)).unwrap())
        .unwrap()
        .join()
        .unwrap();
    let ws_server = topo.servers[0]
        .run(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut ws = tungstenite::accept(stream).unwrap();
            while let Ok(msg) = ws.read() {
                if msg.is_close() {
                    break;
                }
                ws.send(msg).unwrap();
            }
        })
        .unwrap();
    let echoed = c
        .run(move || {
            let stream = TcpStream::connect((VIP, 8087)).unwrap();
            let (mut ws, response) =
                tungstenite::client(format!("ws://{VIP}:8087/chat"), stream).unwrap();
            assert_eq!(response.status(), 101);
            let mut echoed = Vec::new();
            for i in 0..5 {
                ws.send(tungstenite::Message::text(format!("hello {i}")))
                    .unwrap();
                echoed.push(ws.read().unwrap().into_text().unwrap().to_string());
            }
            let _ = ws.close(None);
            let _ = ws.read();
            echoed
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(
        echoed,
        (0..5).map(|i| format!("hello {i}")).collect::<Vec<_>>()
    );
    ws_server.join().unwrap();

    // PROXY protocol, parsed by nginx: v1 from the HTTP proxy, v2 from the stream proxy.
    let answer = curl(c, &[&url(8084, "/")]);
    assert!(answer.contains("pp=198.18.0.2:"), "{answer}");
    let answer = curl(c, &[&url(9000, "/")]);
    assert!(answer.contains("pp=198.18.0.2:"), "{answer}");

    // TLS termination, HTTP/1.1 and HTTP/2; plain HTTP is redirected.
    let answer = curl(c, &["-k", "--http1.1", &format!("https://{vip}:8443/")]);
    assert!(answer.starts_with("server"), "{answer}");
    let answer = curl(
        c,
        &[
            "-k",
            "--http2",
            "-w",
            "%{http_version}",
            &format!("https://{vip}:8443/"),
        ],
    );
    assert!(answer.ends_with('2'), "HTTP/2 over TLS: {answer}");
    let headers = curl(c, &["-D", "-", "-o", "/dev/null", &url(8088, "/a?b")]);
    assert!(headers.starts_with("HTTP/1.1 301"), "{headers}");
    assert!(
        headers.contains(&format!("https://{vip}:8443/a?b")),
        "{headers}"
    );

    // TLS to servers: without verification it works; with it, a self-signed server
    // certificate is a 502 and a log line.
    assert!(curl(c, &[&url(8085, "/")]).contains("tls"));
    let status = curl(
        c,
        &["-o", "/dev/null", "-w", "%{http_code}", &url(8086, "/")],
    );
    assert_eq!(status, "502");
    wait_for_log(&log, "TLS to server failed", 1, Duration::from_secs(2)).unwrap();

    // Smuggling: Content-Length with Transfer-Encoding is refused and the connection closed.
    let target: SocketAddr = (VIP, 80).into();
    let (answer, closed) = raw(
        c,
        target,
        vec![b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()],
        Duration::ZERO,
    );
    // Refused with a 400 (RFC 9112 6.1), one response, then closed.
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert!(closed && !answer.contains("smuggled"), "{answer}");
    // Malformed chunking: the connection is closed without a second request served.
    let (answer, closed) = raw(
        c,
        target,
        vec![b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()],
        Duration::ZERO,
    );
    assert!(closed && !answer.contains("uri=/smuggled"), "{answer}");

    // Slowloris: a client that sends its head one byte at a time is cut off.
    let head =
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let (answer, closed) = raw(
        c,
        target,
        head.iter().map(|b| vec![*b]).collect(),
        Duration::from_millis(100),
    );
    assert!(closed, "the slow client was not cut off");
    assert!(!answer.contains("server"), "{answer}");

    // wrk with keep-alive: every response a 2xx.
    let out = c
        .exec(&["wrk", "-t1", "-c8", "-d2s", &url(80, "/")])
        .unwrap();
    assert!(out.contains("requests in"), "{out}");
    assert!(
        !out.contains("Non-2xx") && !out.contains("Socket errors"),
        "{out}"
    );

    // A server dies (no health check here): requests are retried on the others.
    topo.servers[0].stop(nginx[0]);
    for i in 0..20 {
        let status = curl(c, &["-o", "/dev/null", "-w", "%{http_code}", &url(80, "/")]);
        assert_eq!(status, "200", "request {i} after server1 died");
    }
    drop(dir);
}
