//! HTTP/1 message framing through the proxy, against a Python server that digests what it
//! receives: request bodies with Content-Length and chunked (with curl's Expect:
//! 100-continue), chunked and close-delimited responses, pipelining, HTTP/1.0, h2c with
//! prior knowledge, header limits (431) and a server slower than server_timeout (504).

use std::{net::SocketAddr, process::Stdio, time::Duration};

use lb_tests::{
    netns::NetNs,
    require_root,
    services::{ScratchDir, wait_listening},
    topology::{Topology, VIP, lb_binary, server_addr, start_logged},
    traffic::{curl, raw_http},
};

/// Answers POST with the sha256 and length of the body it decoded (Content-Length or
/// chunked), /chunked with a chunked body and a trailer, /until-close with a body ended by
/// closing, /slow only once the proxy has given up; anything else with its path.
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
    def do_POST(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""): pass
                    break
                data += self.rfile.read(size)
                self.rfile.readline()
            framing = "chunked"
        else:
            data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            framing = "length"
        self.reply(f"{framing} {len(data)} {hashlib.sha256(data).hexdigest()}")
    def do_GET(self):
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "X-Sum")
            self.end_headers()
            for part in (b"alpha-", b"beta-", b"gamma"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\nX-Sum: 3\r\n\r\n")
        elif self.path == "/until-close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"no length, ended by close")
            self.close_connection = True
        elif self.path == "/slow":
            # Slower than server_timeout: no answer until the proxy gives up and closes the
            # connection (reading sees its end; at most 10 s), then one that goes nowhere.
            self.connection.settimeout(10)
            try:
                self.rfile.read(1)
                self.reply("slow")
            except OSError:
                pass
            self.close_connection = True
        else:
            self.reply("path=" + self.path)

http.server.ThreadingHTTPServer((sys.argv[1], 8080), H).serve_forever()
"#;

/// Write `request` at once and read until the proxy closes the connection.
fn raw(ns: &NetNs, target: SocketAddr, request: Vec<u8>) -> String {
    raw_http(ns, target, vec![request], Duration::ZERO).0
}

#[test]
fn http1_framing_limits_and_timeouts() {
    if !require_root("netns_http_framing") {
        return;
    }
    let lb = lb_binary().unwrap();
    let topo = Topology::for_proxy(&format!("lbf{}", std::process::id()), 1, &lb).unwrap();
    let dir = ScratchDir::new("framing").unwrap();
    let script = dir.0.join("server.py");
    std::fs::write(&script, SERVER).unwrap();
    let server = server_addr(0);
    topo.servers[0]
        .spawn(
            &["python3", script.to_str().unwrap(), &server.to_string()],
            Stdio::null(),
            Stdio::inherit(),
        )
        .unwrap();
    wait_listening(
        &topo.servers[0],
        (server, 8080).into(),
        Duration::from_secs(10),
    )
    .unwrap();
    let config = format!(
        r#"
[http]
server_timeout = "1s"
max_headers = 20
max_header_bytes = 4096

[[frontends]]
name = "web"
mode = "http"
address = "{VIP}"
binds = [{{ port = 80 }}]
default_backend = "py"

[[backends]]
name = "py"
mode = "http"
balancing_method = "roundrobin"
port = 8080
servers = {{ type = "addresses", addresses = [{{ address = "{server}" }}] }}
"#
    );
    let path = dir.0.join("lb.toml");
    std::fs::write(&path, config).unwrap();
    let (_pid, _log) =
        start_logged(&topo.lb, &lb, &["run", "--config", path.to_str().unwrap()]).unwrap();
    let c = &topo.client;
    let url = |p: &str| format!("http://{VIP}:80{p}");

    // Request bodies of 3 MiB, with a length and chunked, arrive whole and unchanged.
    let body = dir.0.join("body.bin");
    let data: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(&body, &data).unwrap();
    let digest = c.exec(&["sha256sum", body.to_str().unwrap()]).unwrap();
    let digest = digest.split_whitespace().next().unwrap();
    let upload = format!("@{}", body.display());
    let answer = curl(c, &["--data-binary", &upload, &url("/up")]);
    assert_eq!(answer, format!("length {} {digest}", data.len()));
    let answer = curl(
        c,
        &[
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            &upload,
            &url("/up"),
        ],
    );
    assert_eq!(answer, format!("chunked {} {digest}", data.len()));

    // Responses: chunked with a trailer, and delimited by the server closing.
    assert_eq!(curl(c, &[&url("/chunked")]), "alpha-beta-gamma");
    let answer = raw(
        c,
        (VIP, 80).into(),
        b"GET /chunked HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
    );
    assert!(answer.contains("0\r\nX-Sum: 3\r\n\r\n"), "{answer}");
    assert_eq!(
        curl(c, &[&url("/until-close")]),
        "no length, ended by close"
    );

    // Two pipelined requests: two answers, in order; HTTP/1.0: one answer, then closed.
    let answer = raw(
        c,
        (VIP, 80).into(),
        b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            .to_vec(),
    );
    let (one, two) = (answer.find("path=/one"), answer.find("path=/two"));
    assert!(one.is_some() && two.is_some() && one < two, "{answer}");
    let answer = raw(c, (VIP, 80).into(), b"GET /old HTTP/1.0\r\n\r\n".to_vec());
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("path=/old"),
        "{answer}"
    );

    // h2c with prior knowledge goes to the HTTP/2 server.
    let answer = curl(
        c,
        &[
            "--http2-prior-knowledge",
            "-w",
            " %{http_version}",
            &url("/h2"),
        ],
    );
    assert_eq!(answer, "path=/h2 2");

    // Limits: more than max_headers headers, or a head over max_header_bytes, is a 431.
    let mut many = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..30 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert!(raw(c, (VIP, 80).into(), many).starts_with("HTTP/1.1 431"));
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(6000)
    );
    assert!(raw(c, (VIP, 80).into(), big.into_bytes()).starts_with("HTTP/1.1 431"));

    // A server slower than server_timeout: 504 with a body that says so.
    let answer = curl(c, &["-w", " %{http_code}", &url("/slow")]);
    assert!(
        answer.contains("did not answer within") && answer.ends_with("504"),
        "{answer}"
    );
    drop(dir);
}
