//! Servers that answer with their own name, and clients that record who answered.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::netns::NetNs;

const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// Name servers running in their namespaces until dropped.
pub struct NameServers {
    stop: Arc<AtomicBool>,
}

impl Drop for NameServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// In each namespace, answer every TCP line and every UDP datagram on `port` with the
/// server's name.
pub fn start_name_servers(servers: &[(&NetNs, String)], port: u16) -> Result<NameServers> {
    let stop = Arc::new(AtomicBool::new(false));
    for (ns, name) in servers {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (name, stop) = (name.clone(), stop.clone());
        ns.run(move || {
            let setup = (|| -> Result<(TcpListener, UdpSocket)> {
                // [::] is dual-stack: IPv4 and IPv6 clients alike.
                let tcp = TcpListener::bind(("::", port))?;
                tcp.set_nonblocking(true)?;
                let udp = UdpSocket::bind(("::", port))?;
                udp.set_read_timeout(Some(Duration::from_millis(50)))?;
                Ok((tcp, udp))
            })();
            let (tcp, udp) = match setup {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let udp_name = name.clone();
            let udp_stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !udp_stop.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                        let _ = udp.send_to(udp_name.as_bytes(), peer);
                    }
                }
            });
            while !stop.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((conn, _)) => {
                        let name = name.clone();
                        std::thread::spawn(move || serve_lines(conn, &name));
                    }
                    // Kept: the idle back-off of a nonblocking accept loop that must
                    // notice `stop`; it waits for nothing in particular.
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        })?;
        ready_rx
            .recv()
            .context("name server thread died")?
            .with_context(|| format!("starting the name server in {}", ns.name))?;
    }
    Ok(NameServers { stop })
}

fn serve_lines(conn: TcpStream, name: &str) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    for line in BufReader::new(conn).lines() {
        if line.is_err() || writer.write_all(format!("{name}\n").as_bytes()).is_err() {
            return;
        }
    }
}

/// One TCP connection with `exchanges` request/response rounds. Returns the server's name,
/// failing if any round is unanswered or answered by a different server.
pub fn tcp_session(target: SocketAddr, exchanges: usize) -> Result<String> {
    let conn = TcpStream::connect_timeout(&target, IO_TIMEOUT).context("connect")?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_nodelay(true)?;
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    let mut first: Option<String> = None;
    for round in 0..exchanges {
        writer.write_all(format!("request {round}\n").as_bytes())?;
        let mut line = String::new();
        if reader.read_line(&mut line).context("read")? == 0 {
            bail!("connection closed after {round} exchanges");
        }
        let name = line.trim().to_string();
        match &first {
            None => first = Some(name),
            Some(f) if *f != name => bail!("exchange {round} answered by {name}, not {f}"),
            Some(_) => {}
        }
    }
    first.context("no exchange made")
}

/// One UDP request; returns the answering server's name.
pub fn udp_request(target: SocketAddr) -> Result<String> {
    let any: SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    udp_request_from(any, target)
}

/// One UDP request from `source` (a fixed address and port: the same flow each time).
pub fn udp_request_from(source: SocketAddr, target: SocketAddr) -> Result<String> {
    let sock = UdpSocket::bind(source)?;
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.send_to(b"who", target)?;
    let mut buf = [0u8; 256];
    let (n, _) = sock.recv_from(&mut buf).context("no UDP answer")?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Who answered how many connections, and what failed.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub per_server: BTreeMap<String, usize>,
    pub failed: usize,
    pub errors: Vec<String>,
}

impl Tally {
    pub fn connections(&self) -> usize {
        self.per_server.values().sum::<usize>() + self.failed
    }

    pub fn record(&mut self, r: Result<String>) {
        match r {
            Ok(name) => *self.per_server.entry(name).or_default() += 1,
            Err(e) => {
                self.failed += 1;
                if self.errors.len() < 10 {
                    self.errors.push(format!("{e:#}"));
                }
            }
        }
    }

    pub fn merge(&mut self, other: Tally) {
        for (k, v) in other.per_server {
            *self.per_server.entry(k).or_default() += v;
        }
        self.failed += other.failed;
        self.errors.extend(other.errors.into_iter().take(10));
    }

    /// Share of answered connections per server, in percent.
    pub fn shares(&self) -> BTreeMap<String, f64> {
        let answered: usize = self.per_server.values().sum();
        self.per_server
            .iter()
            .map(|(k, &v)| (k.clone(), 100.0 * v as f64 / answered.max(1) as f64))
            .collect()
    }

    /// `connections=N failed=F server1=25.0% ...`
    pub fn summary(&self) -> String {
        let mut s = format!("connections={} failed={}", self.connections(), self.failed);
        for (name, share) in self.shares() {
            s.push_str(&format!(" {name}={share:.1}%"));
        }
        s
    }
}

/// Run `count` TCP sessions from `client` over `parallel` threads.
pub fn drive_tcp(
    client: &NetNs,
    target: SocketAddr,
    count: usize,
    exchanges: usize,
    parallel: usize,
) -> Result<Tally> {
    let mut handles = Vec::new();
    for worker in 0..parallel {
        let n = count / parallel + usize::from(worker < count % parallel);
        handles.push(client.run(move || {
            let mut tally = Tally::default();
            for _ in 0..n {
                tally.record(tcp_session(target, exchanges));
            }
            tally
        })?);
    }
    let mut total = Tally::default();
    for h in handles {
        total.merge(
            h.join()
                .map_err(|_| anyhow::anyhow!("client thread panicked"))?,
        );
    }
    Ok(total)
}

/// A long-lived TCP connection that exchanges a line whenever asked.
pub struct LongConn {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    /// The server that answered the first exchange.
    pub server: String,
}

impl LongConn {
    /// Connect (optionally from a fixed source address) and make a first exchange.
    pub fn open(source: Option<SocketAddr>, target: SocketAddr) -> Result<LongConn> {
        Self::open_within(source, target, IO_TIMEOUT)
    }

    /// As [`LongConn::open`], with `timeout` for the connect and for the first exchange
    /// (later exchanges wait as long as [`LongConn::open`]'s).
    pub fn open_within(
        source: Option<SocketAddr>,
        target: SocketAddr,
        timeout: Duration,
    ) -> Result<LongConn> {
        let domain = socket2::Domain::for_address(target);
        let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
        if let Some(source) = source {
            sock.set_reuse_address(true)?;
            sock.bind(&source.into())?;
        }
        sock.connect_timeout(&target.into(), timeout)
            .context("connect")?;
        let conn: TcpStream = sock.into();
        conn.set_read_timeout(Some(timeout))?;
        conn.set_nodelay(true)?;
        let mut c = LongConn {
            writer: conn.try_clone()?,
            reader: BufReader::new(conn),
            server: String::new(),
        };
        c.server = c.exchange()?;
        c.writer.set_read_timeout(Some(IO_TIMEOUT))?;
        Ok(c)
    }

    /// One request/response; returns the answering server's name.
    pub fn exchange(&mut self) -> Result<String> {
        self.writer.write_all(b"ping\n")?;
        let mut line = String::new();
        if self.reader.read_line(&mut line).context("read")? == 0 {
            bail!("connection closed");
        }
        Ok(line.trim().to_string())
    }
}

/// Open `count` new connections to `target` from `client`, each attempt bounded by a short
/// timeout, retrying until `deadline`; fails with what the last attempt said if the deadline
/// passes first.
pub fn connect_by(
    client: &NetNs,
    target: SocketAddr,
    count: usize,
    deadline: std::time::Instant,
) -> Result<Vec<LongConn>> {
    client
        .run(move || {
            let (mut conns, mut failed, mut last) = (Vec::new(), 0, None);
            while conns.len() < count {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    bail!(
                        "{} of {count} new connections by the deadline ({failed} attempts failed, the last: {})",
                        conns.len(),
                        last.unwrap_or_default()
                    );
                }
                match LongConn::open_within(None, target, left.min(Duration::from_millis(250))) {
                    Ok(c) => conns.push(c),
                    Err(e) => {
                        failed += 1;
                        last = Some(format!("{e:#}"));
                    }
                }
            }
            Ok(conns)
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))?
}

/// `GET /metrics` over HTTP/1.0; returns the whole response, headers included.
pub fn scrape_metrics(target: SocketAddr) -> Result<String> {
    use std::io::Read as _;
    let mut conn = TcpStream::connect_timeout(&target, IO_TIMEOUT).context("connect")?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: lb\r\n\r\n")?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    Ok(text)
}

/// `GET /metrics` on `target` from `ns`, repeated until the text satisfies `ready` (at most
/// `timeout`); returns that text. The daemon renders its metrics every gc_interval, so a
/// scrape can lag what just happened: `ready` names a sample that shows the snapshot is
/// recent enough, and `what` says which, for the timeout's message.
pub fn scrape_metrics_when(
    ns: &NetNs,
    target: SocketAddr,
    what: &str,
    timeout: Duration,
    ready: impl Fn(&str) -> bool + Send + 'static,
) -> Result<String> {
    let what = format!("metrics on {target} showing {what}");
    ns.run(move || {
        crate::wait_until(&what, timeout, || {
            let text = scrape_metrics(target)?;
            if ready(&text) {
                Ok(Some(text))
            } else {
                bail!("the last scrape:\n{text}")
            }
        })
    })?
    .join()
    .map_err(|_| anyhow::anyhow!("scrape thread panicked"))?
}

/// The value of the Prometheus sample whose line starts with `prefix`.
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// Make one exchange on every connection, from `client`; each must still be answered by the
/// server that answered it first. Returns the connections for later rounds.
pub fn exchange_all(client: &NetNs, mut conns: Vec<LongConn>) -> Result<Vec<LongConn>> {
    client
        .run(move || {
            for c in conns.iter_mut() {
                let answer = c.exchange()?;
                if answer != c.server {
                    bail!("a connection moved from {} to {answer}", c.server);
                }
            }
            Ok(conns)
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))?
}

/// curl in `ns`, silent but for errors, at most 10 s; its output.
pub fn curl(ns: &crate::netns::NetNs, args: &[&str]) -> String {
    let mut full = vec!["curl", "-sS", "--max-time", "10"];
    full.extend_from_slice(args);
    ns.exec(&full).unwrap()
}

/// Send `request` raw from `ns`, one chunk at a time with `pause` between them, and read
/// until the peer closes the connection (or 8 s pass). Returns what was read and whether
/// the peer closed (or refused a later chunk).
pub fn raw_http(
    ns: &crate::netns::NetNs,
    target: SocketAddr,
    request: Vec<Vec<u8>>,
    pause: Duration,
) -> (String, bool) {
    use std::io::Read as _;
    ns.run(move || {
        let mut s = TcpStream::connect(target).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        let mut closed_early = false;
        for (i, chunk) in request.iter().enumerate() {
            if s.write_all(chunk).is_err() {
                closed_early = i > 0;
                break;
            }
            if !pause.is_zero() {
                // Kept: the pacing is the point (a slow client, as slowloris), not a wait.
                std::thread::sleep(pause);
            }
        }
        let mut out = Vec::new();
        let closed = match s.read_to_end(&mut out) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        (
            String::from_utf8_lossy(&out).into_owned(),
            closed || closed_early,
        )
    })
    .unwrap()
    .join()
    .unwrap()
}

/// Debian's promtool lints a scrape's body: any complaint fails (a panic, for tests).
pub fn promtool_accepts(body: &str) {
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; cargo xtask setup installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {}\n{said}",
        out.status
    );
}
