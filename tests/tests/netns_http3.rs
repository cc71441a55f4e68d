//! HTTP/3 through the proxy with a real HTTP/3 client (quinn + h3, `common/h3_client.rs`),
//! against two Python servers that name themselves and digest request bodies: a GET with
//! X-Forwarded-*, Alt-Svc on the TCP TLS bind, a 3 MiB POST, cookie stickiness, a server
//! down, and XDP passing the bind's UDP port to the proxy. HTTP/2 (curl) beside it: both
//! reach the servers through lb's own HTTP/1.1 client, so an unsized upload goes chunked, a
//! chunked response is decoded, and HEAD has no body.

#[path = "common/h3_client.rs"]
mod h3_client;

use std::{net::SocketAddr, process::Stdio, time::Duration};

use bytes::Bytes;
use lb_tests::{
    require_root,
    services::{ScratchDir, self_signed, wait_listening},
    topology::{Topology, VIP, lb_binary, server_addr, start_logged},
    traffic::{curl, metric, scrape_metrics_when},
};

/// GET: the server's name and the forwarded headers; POST: its name, the body's length and
/// sha256.
const SERVER: &str = r#"
import hashlib, http.server, sys

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def reply(self, text):
        body = text.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length", "0")))
        data = b""
        while True:
            size = int(self.rfile.readline().split(b";")[0], 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b""):
                    pass
                return data
            data += self.rfile.read(size)
            self.rfile.readline()
    def do_POST(self):
        data = self.read_body()
        te = self.headers.get("Transfer-Encoding")
        self.reply(f"{sys.argv[2]} te={te} {len(data)} {hashlib.sha256(data).hexdigest()}")
    do_PUT = do_POST
    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
    def do_GET(self):
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\nX-Checksum: c0ffee\r\n\r\n")
            return
        h = self.headers
        self.reply(f"{sys.argv[2]} path={self.path} xff={h.get('X-Forwarded-For')} proto={h.get('X-Forwarded-Proto')}")

http.server.ThreadingHTTPServer((sys.argv[1], 8080), H).serve_forever()
"#;

fn get(path: &str, cookie: Option<&str>) -> http::Request<Bytes> {
    let mut r = http::Request::get(format!("https://{VIP}{path}"));
    if let Some(c) = cookie {
        r = r.header("cookie", c);
    }
    r.body(Bytes::new()).unwrap()
}

fn first_word(s: &str) -> &str {
    s.split_whitespace().next().unwrap_or("")
}

/// Whether `server` of backend "py" takes new requests, in a scrape.
fn up(text: &str, server: std::net::Ipv4Addr) -> bool {
    metric(
        text,
        &format!("lb_server_status{{backend=\"py\",server=\"{server}\"}}"),
    ) == Some(1.0)
}

#[test]
fn http3_get_post_stickiness_and_a_server_down() {
    if !require_root("netns_http3") {
        return;
    }
    let lb = lb_binary().unwrap();
    let topo = Topology::for_proxy(&format!("lbq{}", std::process::id()), 2, &lb).unwrap();
    let dir = ScratchDir::new("http3").unwrap();
    let script = dir.0.join("server.py");
    std::fs::write(&script, SERVER).unwrap();
    let mut servers = Vec::new();
    for (i, ns) in topo.servers.iter().enumerate() {
        let addr = server_addr(i);
        let name = format!("server{}", i + 1);
        servers.push(
            ns.spawn(
                &[
                    "python3",
                    script.to_str().unwrap(),
                    &addr.to_string(),
                    &name,
                ],
                Stdio::null(),
                Stdio::inherit(),
            )
            .unwrap(),
        );
        wait_listening(ns, (addr, 8080).into(), Duration::from_secs(10)).unwrap();
    }
    let (_, _, pem) = self_signed(&dir.0, "lb", VIP.into()).unwrap();
    let config = format!(
        r#"
[metrics]
listen = "198.18.0.1:9100"

[http]
http3_idle_timeout = "10s"
http3_max_streams = 50

[[frontends]]
name = "quic"
mode = "http"
address = "{VIP}"
binds = [{{ port = 443, ssl = true, ssl_certificate = "{pem}", use_http3 = true }}]
default_backend = "py"
interfaces = ["eth-c"]

[[backends]]
name = "py"
mode = "http"
balancing_method = "roundrobin"
port = 8080
servers = {{ type = "addresses", addresses = [{{ address = "{s1}" }}, {{ address = "{s2}" }}] }}
options = {{ sticky_session = {{ type = "cookie", cookie = "SERVERID", ttl = "5m" }}, health_check = {{ type = "tcp", interval = "200ms", timeout = "150ms", rise = 1, fall = 2 }} }}
"#,
        pem = pem.display(),
        s1 = server_addr(0),
        s2 = server_addr(1),
    );
    let path = dir.0.join("lb.toml");
    std::fs::write(&path, config).unwrap();
    let (_pid, log) =
        start_logged(&topo.lb, &lb, &["run", "--config", path.to_str().unwrap()]).unwrap();
    lb_tests::topology::wait_for_log(&log, "proxy listening", 1, Duration::from_secs(20)).unwrap();
    let metrics_at: SocketAddr = ([198, 18, 0, 1], 9100).into();
    scrape_metrics_when(
        &topo.client,
        metrics_at,
        "both servers up",
        Duration::from_secs(10),
        |text| up(text, server_addr(0)) && up(text, server_addr(1)),
    )
    .unwrap();
    let target: SocketAddr = (VIP, 443).into();
    let exchange = |requests: Vec<http::Request<Bytes>>| {
        topo.client
            .run(move || h3_client::exchange(target, requests))
            .unwrap()
            .join()
            .unwrap()
            .unwrap()
    };

    // The TCP TLS bind advertises HTTP/3 on the same port.
    let head = curl(
        &topo.client,
        &[
            "-sk",
            "-D",
            "-",
            "-o",
            "/dev/null",
            &format!("https://{VIP}/"),
        ],
    );
    assert!(
        head.to_ascii_lowercase().contains("alt-svc: h3=\":443\""),
        "no Alt-Svc in:\n{head}"
    );

    // GETs over one connection: balanced over both servers, forwarded headers set.
    let answers = exchange((0..6).map(|i| get(&format!("/n{i}"), None)).collect());
    let mut seen = std::collections::BTreeSet::new();
    for (i, a) in answers.iter().enumerate() {
        let text = a.text();
        assert_eq!(a.status, 200, "{text}");
        assert!(text.contains(&format!("path=/n{i} ")), "{text}");
        assert!(text.contains("xff=198.18.0.2 proto=https"), "{text}");
        seen.insert(first_word(&text).to_string());
    }
    assert_eq!(seen.len(), 2, "roundrobin over both servers: {seen:?}");

    // A 3 MiB POST arrives whole.
    let data: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let body_file = dir.0.join("body.bin");
    std::fs::write(&body_file, &data).unwrap();
    let digest = topo
        .client
        .exec(&["sha256sum", body_file.to_str().unwrap()])
        .unwrap();
    let digest = first_word(&digest).to_string();
    let post = http::Request::post(format!("https://{VIP}/upload"))
        .header("content-length", data.len())
        .body(Bytes::from(data))
        .unwrap();
    let answer = &exchange(vec![post])[0];
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(
        answer
            .text()
            .ends_with(&format!(" te=None 3145728 {digest}")),
        "{}",
        answer.text()
    );

    // HTTP/2 over the TCP bind goes through the same HTTP/1.1 client to the servers: a body
    // of unknown length arrives chunked and whole, a chunked response is decoded, a HEAD
    // answer has no body.
    let upload = topo
        .client
        .exec(&[
            "sh",
            "-c",
            &format!(
                "curl -sS --max-time 10 -k --http2 -T - https://{VIP}/put < {}",
                body_file.display()
            ),
        ])
        .unwrap();
    assert!(
        upload.ends_with(&format!(" te=chunked 3145728 {digest}")),
        "{upload}"
    );
    let chunked = curl(
        &topo.client,
        &[
            "-k",
            "--http2",
            "-w",
            " %{http_version}",
            &format!("https://{VIP}/chunked"),
        ],
    );
    assert_eq!(chunked, "hello chunked world 2");
    // The chunked response's trailer reaches an HTTP/3 client as trailers.
    let trailed = &exchange(vec![get("/chunked", None)])[0];
    assert_eq!(trailed.text(), "hello chunked world");
    assert_eq!(
        trailed
            .trailers
            .as_ref()
            .and_then(|t| t.get("x-checksum"))
            .map(|v| v.to_str().unwrap_or_default()),
        Some("c0ffee"),
        "{:?}",
        trailed.trailers
    );
    let head = curl(
        &topo.client,
        &["-k", "--http2", "-I", &format!("https://{VIP}/")],
    );
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.starts_with("http/2 200") && lower.contains("content-length: 5"),
        "{head}"
    );

    // Cookie stickiness: the cookie lb sets keeps every later request on its server.
    let first = &exchange(vec![get("/", None)])[0];
    let cookie = first
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("SERVERID="))
        .expect("lb sets its sticky cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let sticky_to = first_word(&first.text()).to_string();
    let answers = exchange((0..8).map(|_| get("/", Some(&cookie))).collect());
    for a in &answers {
        assert_eq!(first_word(&a.text()), sticky_to, "{cookie}: {}", a.text());
    }

    // The sticky server goes down: every request is answered by the other one.
    let index = if sticky_to == "server1" { 0 } else { 1 };
    topo.servers[index].stop(servers[index]);
    scrape_metrics_when(
        &topo.client,
        metrics_at,
        "the stopped server down",
        Duration::from_secs(10),
        move |text| !up(text, server_addr(index)),
    )
    .unwrap();
    let answers = exchange((0..8).map(|_| get("/", Some(&cookie))).collect());
    for a in &answers {
        assert_eq!(a.status, 200, "{}", a.text());
        assert_ne!(first_word(&a.text()), sticky_to, "{}", a.text());
    }

    // Counted as requests of the frontend, and XDP passed the QUIC packets to the proxy as a
    // userspace frontend's (a UDP packet to no frontend would count as not_vip).
    let text = scrape_metrics_when(
        &topo.client,
        metrics_at,
        "the HTTP/3 requests counted",
        Duration::from_secs(10),
        |text| {
            metric(text, r#"lb_http_requests_total{frontend="quic",code="2xx"}"#)
                // curl's four (HTTP/1.1 and HTTP/2), and the 25 over HTTP/3.
                == Some(29.0)
        },
    )
    .unwrap();
    // The 3 MiB POST alone is over 2,000 packets; curl's TLS request a dozen.
    let passed = metric(
        &text,
        &lb_common::stats::metric_sample("pass_userspace_frontend"),
    )
    .unwrap_or(0.0);
    assert!(passed > 1000.0, "packets XDP passed to the proxy: {passed}");
}
