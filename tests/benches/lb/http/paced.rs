//! Latency at a fixed rate, for each workload: requests sent on a schedule (open loop), each
//! one's latency counted from when it was due, so a request that waits behind a slow one
//! counts its wait (no coordinated omission).
//!
//! HTTP/1 kinds run one thread per connection, each sending on its own share of the
//! schedule; HTTP/2 sends every request as its own stream, due times set by one pacing
//! thread, over a few connections.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;

use super::multiplexed::h3_client;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// HTTP/1.1 keep-alive.
    KeepAlive,
    /// A connection per request.
    NewConnection,
    /// A TLS connection per request, full handshake (no resumption).
    TlsHandshake,
    /// HTTP/1.1 keep-alive over TLS.
    TlsKeepAlive,
    /// HTTP/2 over TLS, a stream per request.
    H2,
    /// HTTP/1.1 keep-alive, 1 MiB responses.
    Large,
}

impl Kind {
    pub fn tls(self) -> bool {
        matches!(self, Kind::TlsHandshake | Kind::TlsKeepAlive | Kind::H2)
    }

    fn keep_alive(self) -> bool {
        !matches!(self, Kind::NewConnection | Kind::TlsHandshake)
    }

    fn path(self) -> &'static str {
        if self == Kind::Large {
            "/payload/1m"
        } else {
            "/"
        }
    }
}

/// `rate` requests/s for `seconds` over `connections` to `target` (its TLS port for the
/// TLS kinds); each request's latency in microseconds, unsorted. Call from the client's
/// namespace.
pub fn run(
    kind: Kind,
    target: SocketAddr,
    rate: u64,
    connections: u64,
    seconds: u64,
) -> Result<Vec<u64>> {
    let tls = if kind.tls() {
        let alpn: &[u8] = if kind == Kind::H2 { b"h2" } else { b"http/1.1" };
        let mut config = h3_client::tls_config(alpn)?;
        config.resumption = rustls::client::Resumption::disabled();
        Some(Arc::new(config))
    } else {
        None
    };
    if kind == Kind::H2 {
        return h2(
            target,
            tls.expect("h2 is over TLS"),
            rate,
            connections,
            seconds,
        );
    }
    let gap = Duration::from_nanos(1_000_000_000 * connections / rate.max(1));
    let handles: Vec<_> = (0..connections)
        .map(|i| {
            let tls = tls.clone();
            std::thread::spawn(move || -> Result<Vec<u64>> {
                let request = format!(
                    "GET {} HTTP/1.1\r\nHost: bench\r\n{}\r\n",
                    kind.path(),
                    if kind.keep_alive() {
                        ""
                    } else {
                        "Connection: close\r\n"
                    }
                );
                // Spread the connections' sends over the gap.
                let start = Instant::now() + gap * i as u32 / connections as u32;
                let mut due = start;
                let mut latencies = Vec::new();
                let mut buf = vec![0u8; 64 * 1024];
                let mut conn = None;
                while due < start + Duration::from_secs(seconds) {
                    let now = Instant::now();
                    if due > now {
                        // Kept: pacing to the fixed request rate, not a wait for anything.
                        std::thread::sleep(due - now);
                    }
                    let mut stream = match conn.take() {
                        Some(s) => s,
                        None => connect(target, tls.as_ref())?,
                    };
                    stream.write_all(request.as_bytes())?;
                    read_response(&mut stream, &mut buf)?;
                    latencies.push(due.elapsed().as_micros() as u64);
                    if kind.keep_alive() {
                        conn = Some(stream);
                    }
                    due += gap;
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(
            h.join()
                .map_err(|_| anyhow::anyhow!("paced client thread panicked"))??,
        );
    }
    Ok(all)
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

fn connect(target: SocketAddr, tls: Option<&Arc<rustls::ClientConfig>>) -> Result<Box<dyn Stream>> {
    let tcp = TcpStream::connect(target)?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(match tls {
        None => Box::new(tcp),
        Some(config) => {
            let session = rustls::ClientConnection::new(config.clone(), "lb.test".try_into()?)?;
            Box::new(rustls::StreamOwned::new(session, tcp))
        }
    })
}

/// Read one response with a Content-Length body of any size (the body is counted, not kept).
fn read_response(conn: &mut dyn Stream, buf: &mut [u8]) -> Result<()> {
    let mut read = 0;
    loop {
        let n = conn.read(&mut buf[read..])?;
        if n == 0 {
            bail!("connection closed mid-response");
        }
        read += n;
        let Some(end) = buf[..read].windows(4).position(|w| w == b"\r\n\r\n") else {
            if read == buf.len() {
                bail!("response head over {} bytes", buf.len());
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200") {
            bail!("answer: {}", head.lines().next().unwrap_or_default());
        }
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .context("response without Content-Length")?;
        let mut left = (end + 4 + length).saturating_sub(read);
        while left > 0 {
            let want = left.min(buf.len());
            let n = conn.read(&mut buf[..want])?;
            if n == 0 {
                bail!("connection closed mid-body");
            }
            left -= n;
        }
        return Ok(());
    }
}

/// HTTP/2: one pacing thread hands each due time to the runtime, which sends it as a stream
/// on the next connection in turn.
fn h2(
    target: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    rate: u64,
    connections: u64,
    seconds: u64,
) -> Result<Vec<u64>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let senders = runtime.block_on(async {
        let mut senders = Vec::new();
        for _ in 0..connections {
            let tcp = tokio::net::TcpStream::connect(target).await?;
            tcp.set_nodelay(true)?;
            let stream = tokio_rustls::TlsConnector::from(tls.clone())
                .connect("lb.test".try_into()?, tcp)
                .await
                .context("TLS handshake")?;
            let (sender, connection) = h2::client::handshake(stream).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            senders.push(sender);
        }
        anyhow::Ok(senders)
    })?;
    let uri: http::Uri = format!("https://{}/", target.ip()).parse()?;
    let gap = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let start = Instant::now();
    let mut due = start;
    let mut requests = Vec::new();
    let mut turn = 0;
    while due < start + Duration::from_secs(seconds) {
        let now = Instant::now();
        if due > now {
            // Kept: pacing to the fixed request rate, not a wait for anything.
            std::thread::sleep(due - now);
        }
        let (sender, uri) = (senders[turn % senders.len()].clone(), uri.clone());
        turn += 1;
        let sent_due = due;
        requests.push(runtime.spawn(async move {
            let mut ready = sender.ready().await?;
            let (response, _) = ready.send_request(http::Request::get(uri).body(())?, true)?;
            let response = response.await?;
            anyhow::ensure!(response.status() == 200, "{}", response.status());
            let mut body = response.into_body();
            while let Some(chunk) = body.data().await {
                let chunk: Bytes = chunk?;
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            anyhow::Ok(sent_due.elapsed().as_micros() as u64)
        }));
        due += gap;
    }
    runtime.block_on(async {
        let mut latencies = Vec::with_capacity(requests.len());
        for r in requests {
            latencies.push(r.await??);
        }
        Ok(latencies)
    })
}
