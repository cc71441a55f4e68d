//! The proxy's limits and header rules with real sockets, against a Python server that
//! shows what it received: clients that never read (HTTP/1, HTTP/2 and a tcp stream) are
//! cut off at server_timeout with their server connections, idle h2c connections get
//! GOAWAY and are closed, per-frontend and global max_connections are answered 503,
//! headers HAProxy would refuse get 400 or are sanitised, and 10,000 idle connections leave
//! the API and /metrics answering (the daemon's RSS is printed, never asserted).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::Stdio,
    time::{Duration, Instant},
};

use lb_tests::{
    netns::NetNs,
    require_root,
    services::{ScratchDir, wait_listening},
    topology::{Topology, VIP, lb_binary, server_addr, start_logged, wait_for_log},
    traffic::raw_http,
    wait_until,
};

/// /echo answers with the header lines it received; /big sends 64 MiB; POST /hold reads
/// its body (which the test never finishes sending); /stats counts responses cut off.
/// Port 9000 reads a PROXY line and then sends until the connection breaks.
const SERVER: &str = r#"
import http.server, socket, sys, threading

stats = {"big_aborted": 0, "stream_aborted": 0}
CHUNK = b"x" * 65536

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def reply(self, text):
        body = text.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path == "/big":
            self.send_response(200)
            self.send_header("Content-Length", str(1024 * len(CHUNK)))
            self.end_headers()
            try:
                for _ in range(1024):
                    self.wfile.write(CHUNK)
            except OSError:
                stats["big_aborted"] += 1
                self.close_connection = True
        elif self.path == "/stats":
            self.reply(" ".join(f"{k}={v}" for k, v in sorted(stats.items())))
        else:
            self.reply(str(self.headers))
    def do_POST(self):
        try:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.reply("held")
        except OSError:
            self.close_connection = True

def stream(conn):
    try:
        conn.makefile("rb").readline()
        while True:
            conn.sendall(CHUNK)
    except OSError:
        stats["stream_aborted"] += 1

def streams():
    s = socket.create_server((sys.argv[1], 9000))
    while True:
        conn, _ = s.accept()
        threading.Thread(target=stream, args=(conn,), daemon=True).start()

class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 1024

threading.Thread(target=streams, daemon=True).start()
Server((sys.argv[1], 8080), H).serve_forever()
"#;

const API: &str = "127.0.0.1:8081";
const METRICS: &str = "127.0.0.1:9100";
const TOKEN: &str = "limits-token";

fn config(http: &str, tokens: &std::path::Path) -> String {
    let server = server_addr(0);
    format!(
        r#"
[http]
{http}

[api]
listen = "{API}"
token_file = "{tokens}"

[metrics]
listen = "{METRICS}"

[[frontends]]
name = "web"
mode = "http"
address = "{VIP}"
binds = [{{ port = 80 }}]
default_backend = "py"

[[frontends]]
name = "small"
mode = "http"
address = "{VIP}"
binds = [{{ port = 81 }}]
default_backend = "py"
options = {{ max_connections = 2 }}

[[frontends]]
name = "stream"
mode = "tcp"
address = "{VIP}"
binds = [{{ port = 9000 }}]
default_backend = "stream"

[[backends]]
name = "py"
mode = "http"
balancing_method = "roundrobin"
port = 8080
servers = {{ type = "addresses", addresses = [{{ address = "{server}" }}] }}

[[backends]]
name = "stream"
mode = "tcp"
balancing_method = "roundrobin"
port = 9000
servers = {{ type = "addresses", addresses = [{{ address = "{server}" }}] }}
options = {{ proxy_protocol = "v1" }}
"#,
        tokens = tokens.display()
    )
}

fn vip(port: u16) -> SocketAddr {
    (VIP, port).into()
}

/// Write `request` at once and read until the proxy closes the connection.
fn raw(ns: &NetNs, port: u16, request: &str) -> String {
    raw_http(
        ns,
        vip(port),
        vec![request.as_bytes().to_vec()],
        Duration::ZERO,
    )
    .0
}

/// The body of a 200 answer to `request` (what the server received, for /echo).
fn echo(ns: &NetNs, request: &str) -> String {
    let answer = raw(ns, 80, request);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// The lb namespace's established TCP connections on local port `port`.
fn established(lb: &NetNs, port: u16) -> usize {
    let filter = format!("( sport = :{port} )");
    lb.exec(&["ss", "-Htn", "state", "established", &filter])
        .unwrap()
        .lines()
        .count()
}

fn wait_closed(lb: &NetNs, port: u16, what: &str) {
    wait_until(what, Duration::from_secs(20), || {
        let n = established(lb, port);
        if n == 0 {
            Ok(Some(()))
        } else {
            anyhow::bail!("{n} still established")
        }
    })
    .unwrap();
}

/// The server's counter `name` (of /stats), fetched through the proxy.
fn stat(ns: &NetNs, name: &str) -> u64 {
    let text = echo(
        ns,
        "GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    text.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .parse()
        .unwrap()
}

/// `curl` in the lb namespace; the HTTP status, or 0 when nothing answered.
fn status_in_lb(lb: &NetNs, url: &str, token: bool) -> u16 {
    let mut args = vec!["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"];
    args.extend(["--max-time", "5"]);
    let auth = format!("Authorization: Bearer {TOKEN}");
    if token {
        args.extend(["-H", &auth]);
    }
    args.push(url);
    lb.exec(&args)
        .map_or(0, |code| code.trim().parse().unwrap_or(0))
}

fn api_and_metrics_answer(lb: &NetNs) {
    assert_eq!(status_in_lb(lb, &format!("http://{API}/v1/lbs"), true), 200);
    assert_eq!(
        status_in_lb(lb, &format!("http://{METRICS}/metrics"), false),
        200
    );
}

/// An HTTP/2 frame header: length, type, flags, stream.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The h2c preface, an empty SETTINGS frame and, with `path`, a GET on stream 1 (HPACK:
/// indexed :method GET and :scheme http, literal :path and :authority without indexing).
fn h2c_start(path: Option<&str>) -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    if let Some(path) = path {
        let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
        block.extend_from_slice(path.as_bytes());
        block.extend_from_slice(&[0x01, 1, b'x']);
        // HEADERS with END_STREAM | END_HEADERS.
        out.extend(frame(0x1, 0x5, 1, &block));
    }
    out
}

/// Read HTTP/2 frames until the proxy closes the connection (at most 20 s); their
/// (type, flags, stream), and whether it closed.
fn h2_frames_until_closed(s: &mut TcpStream) -> (Vec<(u8, u8, u32)>, bool) {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut frames = Vec::new();
    loop {
        let mut head = [0u8; 9];
        match s.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) => {
                let closed = matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                );
                return (frames, closed);
            }
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        if s.read_exact(&mut payload).is_err() {
            return (frames, true);
        }
        frames.push((head[3], head[4], stream));
    }
}

#[test]
fn proxy_limits_and_header_rules() {
    if !require_root("netns_proxy_limits") {
        return;
    }
    // This process holds the client ends of 10,000 connections; lb inherits the limit and
    // raises its own soft limit to the hard one.
    let hard = raise_open_file_limit();
    assert!(
        hard >= 10_500,
        "RLIMIT_NOFILE hard limit {hard}: the 10,000-connection check needs at least 10500"
    );
    let lb = lb_binary().unwrap();
    let topo = Topology::for_proxy(&format!("lbl{}", std::process::id()), 1, &lb).unwrap();
    let dir = ScratchDir::new("limits").unwrap();
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
    for port in [8080, 9000] {
        wait_listening(
            &topo.servers[0],
            (server, port).into(),
            Duration::from_secs(10),
        )
        .unwrap();
    }
    let tokens = dir.0.join("tokens");
    std::fs::write(&tokens, format!("rw {TOKEN}\n")).unwrap();
    let path = dir.0.join("lb.toml");
    let short = "server_timeout = \"2s\"\nrequest_timeout = \"2s\"\nmax_connections = 12";
    std::fs::write(&path, config(short, &tokens)).unwrap();
    let (pid, log) =
        start_logged(&topo.lb, &lb, &["run", "--config", path.to_str().unwrap()]).unwrap();
    let c = &topo.client;

    headers_are_checked_and_sanitised(c);
    clients_that_never_read_are_cut_off(&topo);
    idle_h2c_connections_are_closed(c);
    connection_limits_answer_503(&topo, &log);
    a_drain_timeout_cuts_tcp_tunnels(&topo, &lb, &log);

    // 10,000 idle connections under a global limit just above them.
    topo.lb.stop(pid);
    let long = "request_timeout = \"120s\"\nmax_connections = 10050";
    std::fs::write(&path, config(long, &tokens)).unwrap();
    let (pid, _log) =
        start_logged(&topo.lb, &lb, &["run", "--config", path.to_str().unwrap()]).unwrap();
    ten_thousand_idle_connections(&topo, pid);
    drop(dir);
}

/// A tcp stream through the proxy (PROXY header to the server) that the client keeps
/// reading ends when its server's drain times out (`on_drain_timeout` defaults to reset), as
/// XDP resets the flows of a drained server: it does not run on for ever.
fn a_drain_timeout_cuts_tcp_tunnels(
    topo: &Topology,
    lb: &std::path::Path,
    log: &lb_tests::topology::Log,
) {
    let (flowing_tx, flowing) = std::sync::mpsc::channel();
    let reader = topo
        .client
        .run(move || -> anyhow::Result<u64> {
            let mut s = TcpStream::connect_timeout(&vip(9000), Duration::from_secs(5))?;
            s.write_all(b"hello\n")?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let (mut buf, mut total, mut told) = (vec![0u8; 65536], 0u64, false);
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return Ok(total),
                    Ok(n) => total += n as u64,
                }
                if !told && total >= 1 << 20 {
                    told = true;
                    let _ = flowing_tx.send(());
                }
                // A steady reader: never stalled long enough for server_timeout.
                std::thread::sleep(Duration::from_millis(5));
            }
            anyhow::bail!("the stream still ran 30 s later ({total} bytes)")
        })
        .unwrap();
    flowing
        .recv_timeout(Duration::from_secs(10))
        .expect("the stream flows");
    topo.lb
        .exec(&[
            lb.to_str().unwrap(),
            "server",
            "drain",
            "stream",
            &server_addr(0).to_string(),
            "--timeout",
            "1s",
            "--api",
            &format!("http://{API}"),
            "--token",
            TOKEN,
        ])
        .unwrap();
    let read = reader.join().unwrap().unwrap();
    assert!(read >= 1 << 20);
    wait_for_log(
        log,
        "drain timeout: resetting the flows left",
        1,
        Duration::from_secs(5),
    )
    .unwrap();
}

fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the one struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    limit.rlim_max
}

fn headers_are_checked_and_sanitised(c: &NetNs) {
    // An underscore look-alike of X-Forwarded-For is dropped; the real one is rewritten.
    let seen = echo(
        c,
        "GET /echo HTTP/1.1\r\nHost: x\r\nX_Forwarded_For: 203.0.113.9\r\nX-Forwarded-For: 203.0.113.8\r\nX_Custom: 1\r\nConnection: close\r\n\r\n",
    );
    assert!(!seen.contains("203.0.113"), "{seen}");
    assert!(!seen.contains('_'), "{seen}");
    assert!(seen.contains("x-forwarded-for: 198.18.0.2"), "{seen}");

    // An h2c upgrade is not passed on: served as HTTP/1.1, without Upgrade or
    // HTTP2-Settings (listed in Connection or not).
    for connection in ["Upgrade, HTTP2-Settings", "Upgrade"] {
        let seen = echo(
            c,
            &format!(
                "GET /echo HTTP/1.1\r\nHost: x\r\nConnection: {connection}\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
            ),
        );
        let lower = seen.to_ascii_lowercase();
        assert!(
            !lower.contains("upgrade") && !lower.contains("http2-settings"),
            "{seen}"
        );
    }

    // Refused with 400 before any server sees them.
    for (request, why) in [
        (
            "GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "more than one Host",
        ),
        (
            "GET /echo HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
            "more than one Host",
        ),
        ("GET /echo HTTP/1.1\r\nHost: a/b\r\n\r\n", "invalid Host"),
        (
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n",
            "Content-Length must be one number",
        ),
        (
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            "Content-Length must be one number",
        ),
        (
            "GET /echo HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n",
            "invalid header name",
        ),
        (
            "GET /echo HTTP/1.1\r\nHost: x\r\nX(Y): 1\r\n\r\n",
            "invalid header name",
        ),
    ] {
        let answer = raw(c, 80, request);
        assert!(
            answer.starts_with("HTTP/1.1 400") && answer.contains(why),
            "{request:?}: {answer}"
        );
    }

    // HTTP/2: the same underscore rule.
    let seen = lb_tests::traffic::curl(
        c,
        &[
            "--http2-prior-knowledge",
            "-H",
            "X_Forwarded_For: 203.0.113.9",
            &format!("http://{VIP}/echo"),
        ],
    );
    assert!(!seen.contains("203.0.113") && !seen.contains('_'), "{seen}");
    assert!(
        seen.to_ascii_lowercase()
            .contains("x-forwarded-for: 198.18.0.2"),
        "{seen}"
    );
}

fn clients_that_never_read_are_cut_off(topo: &Topology) {
    let (c, lb) = (&topo.client, &topo.lb);
    // HTTP/1: 64 MiB asked for, nothing read. server_timeout (2 s) after the proxy's
    // writes stop moving, both of its connections are closed.
    let aborted = stat(c, "big_aborted");
    let mut stalled = c
        .run(|| {
            let mut s = TcpStream::connect(vip(80)).unwrap();
            s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            s
        })
        .unwrap()
        .join()
        .unwrap();
    wait_closed(lb, 80, "the never-reading HTTP/1 client to be cut off");
    wait_until(
        "the server's response to be cut off",
        Duration::from_secs(20),
        || Ok((stat(c, "big_aborted") > aborted).then_some(())),
    )
    .unwrap();
    // What the client can read now ends well before 64 MiB.
    stalled
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut got = Vec::new();
    let _ = stalled.read_to_end(&mut got);
    assert!(got.len() < 64 << 20, "{} bytes", got.len());
    drop(stalled);

    // HTTP/2: the same request on stream 1; the client reads nothing, so its
    // flow-control window stays shut.
    let aborted = stat(c, "big_aborted");
    let stalled = c
        .run(|| {
            let mut s = TcpStream::connect(vip(80)).unwrap();
            s.write_all(&h2c_start(Some("/big"))).unwrap();
            s
        })
        .unwrap()
        .join()
        .unwrap();
    wait_closed(lb, 80, "the never-reading HTTP/2 client to be cut off");
    wait_until(
        "the server's HTTP/2-bound response to be cut off",
        Duration::from_secs(20),
        || Ok((stat(c, "big_aborted") > aborted).then_some(())),
    )
    .unwrap();
    drop(stalled);

    // A tcp stream (PROXY protocol): the server sends until its connection breaks.
    let aborted = stat(c, "stream_aborted");
    let stalled = c
        .run(|| TcpStream::connect(vip(9000)).unwrap())
        .unwrap()
        .join()
        .unwrap();
    wait_until(
        "the stream to reach the server",
        Duration::from_secs(10),
        || Ok((established(lb, 9000) == 1).then_some(())),
    )
    .unwrap();
    wait_closed(lb, 9000, "the never-reading stream client to be cut off");
    wait_until(
        "the stream's server side to be cut off",
        Duration::from_secs(20),
        || Ok((stat(c, "stream_aborted") > aborted).then_some(())),
    )
    .unwrap();
    drop(stalled);
}

fn idle_h2c_connections_are_closed(c: &NetNs) {
    // Idle from the start, and idle after one request: GOAWAY, then closed (request_timeout
    // 2 s, and as long again for the client to close; the bound is 20 s).
    for path in [None, Some("/echo")] {
        let (frames, closed) = c
            .run(move || {
                let mut s = TcpStream::connect(vip(80)).unwrap();
                s.write_all(&h2c_start(path)).unwrap();
                h2_frames_until_closed(&mut s)
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(closed, "{path:?}: not closed; frames {frames:?}");
        assert!(
            frames.iter().any(|&(kind, _, _)| kind == 0x7),
            "{path:?}: no GOAWAY in {frames:?}"
        );
        if path.is_some() {
            // The response came first: HEADERS and DATA on stream 1, ending it.
            assert!(
                frames
                    .iter()
                    .any(|&(kind, flags, s)| s == 1 && kind <= 1 && flags & 1 == 1),
                "{frames:?}"
            );
        }
    }
}

/// Connections that stay open: a POST whose body never finishes (body_timeout is 60 s).
fn hold(c: &NetNs, port: u16, count: usize) -> Vec<TcpStream> {
    c.run(move || {
        (0..count)
            .map(|_| {
                let mut s = TcpStream::connect(vip(port)).unwrap();
                s.write_all(b"POST /hold HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
                    .unwrap();
                s
            })
            .collect()
    })
    .unwrap()
    .join()
    .unwrap()
}

/// Hold connections (`holds`: port and count), then expect a new request on `probe`'s
/// port to be answered with its status and text; returns the held connections. A held
/// connection lasts only server_timeout (2 s: its server waits for a body that never
/// ends, so the proxy answers 504 and closes), so each attempt holds afresh: on a busy
/// machine, connections held before a slow first attempt are gone by the next.
fn hold_until_answered(
    c: &NetNs,
    holds: &[(u16, usize)],
    probe: (u16, &str, &str),
    what: &str,
) -> Vec<TcpStream> {
    let (port, status, text) = probe;
    let mut held = Vec::new();
    wait_until(what, Duration::from_secs(20), || {
        held.clear();
        for &(p, n) in holds {
            held.extend(hold(c, p, n));
        }
        let answer = raw(
            c,
            port,
            "GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        if answer.starts_with(status) && answer.contains(text) {
            Ok(Some(()))
        } else {
            anyhow::bail!("answered {:?}", answer.lines().next())
        }
    })
    .unwrap();
    held
}

/// Wait until a new request on `port` is answered with `status`.
fn wait_answered(c: &NetNs, port: u16, status: &str, what: &str) {
    wait_until(what, Duration::from_secs(20), || {
        let answer = raw(
            c,
            port,
            "GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        if answer.starts_with(status) {
            Ok(Some(()))
        } else {
            anyhow::bail!("answered {:?}", answer.lines().next())
        }
    })
    .unwrap();
}

fn connection_limits_answer_503(topo: &Topology, log: &lb_tests::topology::Log) {
    let (c, lb) = (&topo.client, &topo.lb);
    // The frontend "small" takes 2 connections; a third is answered 503 and closed.
    let mut held = hold_until_answered(
        c,
        &[(81, 2)],
        (81, "HTTP/1.1 503", "too many connections"),
        "a third connection to small to get 503",
    );
    // Other frontends are not affected; one closed, small takes another.
    wait_answered(c, 80, "HTTP/1.1 200", "web to answer");
    held.pop();
    wait_answered(c, 81, "HTTP/1.1 200", "small to take a connection again");

    // [http] max_connections = 12 over all frontends: 1 + 11 held, then 503 everywhere,
    // and the API and metrics still answer.
    drop(held);
    let held = hold_until_answered(
        c,
        &[(81, 1), (80, 11)],
        (80, "HTTP/1.1 503", ""),
        "a 13th connection to get 503",
    );
    api_and_metrics_answer(lb);
    wait_for_log(log, "connection limit reached", 1, Duration::from_secs(10)).unwrap();
    drop(held);
    wait_answered(
        c,
        80,
        "HTTP/1.1 200",
        "web to answer once the held connections closed",
    );
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// `count` connections opened one after another from the client namespace (at most 120 s
/// in all), each sending nothing (request_timeout is 120 s here).
fn idle(c: &NetNs, count: usize) -> Vec<TcpStream> {
    let conns = c
        .run(move || {
            let start = Instant::now();
            let mut conns = Vec::with_capacity(count);
            while conns.len() < count && start.elapsed() < Duration::from_secs(120) {
                conns.push(TcpStream::connect_timeout(&vip(80), Duration::from_secs(5)).unwrap());
            }
            conns
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(conns.len(), count);
    conns
}

fn ten_thousand_idle_connections(topo: &Topology, pid: u32) {
    const COUNT: usize = 10_000;
    let (c, lb) = (&topo.client, &topo.lb);
    api_and_metrics_answer(lb);
    let before = rss_kb(pid);
    let conns = idle(c, COUNT);
    wait_until(
        "lb to hold 10,000 connections",
        Duration::from_secs(60),
        || {
            let n = established(lb, 80);
            if n >= COUNT {
                Ok(Some(()))
            } else {
                anyhow::bail!("{n} established")
            }
        },
    )
    .unwrap();
    api_and_metrics_answer(lb);
    let open = rss_kb(pid);
    // 50 more reach max_connections = 10050; the next is answered 503. They are added one
    // at a time past the first 40, each followed by a probe: one the kernel completed late
    // (its accept queue overflowed) may come after a probe and be the one refused.
    let mut more = idle(c, 40);
    wait_until(
        "a connection past max_connections = 10050 to get 503",
        Duration::from_secs(60),
        || {
            anyhow::ensure!(more.len() < 200, "still admitted with {} more", more.len());
            more.extend(idle(c, 1));
            let answer = raw(
                c,
                80,
                "GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            );
            if answer.starts_with("HTTP/1.1 503") {
                Ok(Some(()))
            } else {
                anyhow::bail!(
                    "answered {:?} with {} more",
                    answer.lines().next(),
                    more.len()
                )
            }
        },
    )
    .unwrap();
    api_and_metrics_answer(lb);
    drop(more);
    drop(conns);
    wait_closed(lb, 80, "the 10,000 connections to close");
    // Memory goes back within a few seconds (workers collect every 2 s); only reported.
    let grown = open.saturating_sub(before);
    let closed = wait_until("RSS to fall back", Duration::from_secs(10), || {
        let now = rss_kb(pid);
        Ok((now < before + grown / 4).then_some(now))
    })
    .unwrap_or_else(|_| rss_kb(pid));
    eprintln!(
        "lb RSS: {before} KiB before, {open} KiB with {COUNT} idle connections ({:.2} KiB each), {closed} KiB after they closed",
        grown as f64 / COUNT as f64
    );
    api_and_metrics_answer(lb);
    wait_answered(c, 80, "HTTP/1.1 200", "web to answer after the crowd");
}
