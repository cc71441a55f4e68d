//! The load generators: wrk (HTTP/1.1, plain or TLS, keep-alive or one request per
//! connection), h2load (HTTP/2 over TLS), and a paced client for latency at a fixed rate.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lb_tests::netns::NetNs;

/// wrk's requests per second. `close` sends `Connection: close`, so each request opens a
/// connection (and, over TLS, makes a full handshake: wrk offers no session to resume).
pub fn wrk(client: &NetNs, url: &str, connections: u32, close: bool, seconds: u64) -> Result<f64> {
    let mut args = vec![
        "wrk".to_string(),
        "-t2".into(),
        format!("-c{connections}"),
        format!("-d{seconds}s"),
        "--timeout".into(),
        "5s".into(),
    ];
    if close {
        args.extend(["-H".into(), "Connection: close".into()]);
    }
    args.push(url.into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = client.exec(&args)?;
    if out.contains("Non-2xx") || out.contains("Socket errors") {
        bail!("wrk saw errors:\n{out}");
    }
    out.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{out}"))
}

/// h2load's requests per second: `connections` HTTP/2 connections over TLS, `streams`
/// concurrent streams on each.
pub fn h2load(
    client: &NetNs,
    url: &str,
    connections: u32,
    streams: u32,
    seconds: u64,
) -> Result<f64> {
    let out = client.exec(&[
        "h2load",
        "-t2",
        &format!("-c{connections}"),
        &format!("-m{streams}"),
        &format!("-D{seconds}"),
        url,
    ])?;
    // "requests: 1000 total, 1000 started, 1000 done, 1000 succeeded, 0 failed, 0 errored, 0 timeout"
    let requests = out
        .lines()
        .find(|l| l.starts_with("requests:"))
        .with_context(|| format!("no requests line in h2load output:\n{out}"))?;
    let count = |what: &str| -> Option<u64> {
        requests
            .split(',')
            .find(|f| f.trim().ends_with(what))
            .and_then(|f| f.split_whitespace().rev().nth(1)?.parse().ok())
    };
    if count("failed") != Some(0) || count("errored") != Some(0) {
        bail!("h2load saw errors:\n{out}");
    }
    // "status codes: 1000 2xx, 0 3xx, 0 4xx, 0 5xx"
    if let Some(codes) = out.lines().find(|l| l.starts_with("status codes:"))
        && !codes.contains(" 0 5xx")
    {
        bail!("h2load saw 5xx answers:\n{out}");
    }
    // "finished in 2.00s, 24612.50 req/s, 4.87MB/s"
    out.lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1)?.strip_suffix(" req/s")?.parse().ok())
        .with_context(|| format!("no req/s in h2load output:\n{out}"))
}

/// `rate` requests/s over `connections` keep-alive connections for `seconds`; each
/// request's latency in microseconds, from when it was due (so a request that waits behind
/// a slow one counts its wait: no coordinated omission).
pub fn fixed_rate(
    target: SocketAddr,
    rate: u64,
    connections: u64,
    seconds: u64,
) -> Result<Vec<u64>> {
    let gap = Duration::from_nanos(1_000_000_000 * connections / rate.max(1));
    let handles: Vec<_> = (0..connections)
        .map(|i| {
            std::thread::spawn(move || -> Result<Vec<u64>> {
                let mut conn = TcpStream::connect(target)?;
                conn.set_nodelay(true)?;
                conn.set_read_timeout(Some(Duration::from_secs(5)))?;
                // Spread the connections' sends over the gap.
                let start = Instant::now() + gap * i as u32 / connections as u32;
                let mut due = start;
                let mut latencies = Vec::new();
                let mut buf = vec![0u8; 4096];
                while due < start + Duration::from_secs(seconds) {
                    let now = Instant::now();
                    if due > now {
                        // Kept: pacing to the fixed request rate, not a wait for anything.
                        std::thread::sleep(due - now);
                    }
                    conn.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")?;
                    read_response(&mut conn, &mut buf)?;
                    latencies.push(due.elapsed().as_micros() as u64);
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
                .map_err(|_| anyhow::anyhow!("latency thread panicked"))??,
        );
    }
    Ok(all)
}

/// Read one response with a Content-Length body.
fn read_response(conn: &mut TcpStream, buf: &mut [u8]) -> Result<()> {
    let mut read = 0;
    loop {
        let n = conn.read(&mut buf[read..])?;
        if n == 0 {
            bail!("connection closed mid-response");
        }
        read += n;
        let Some(end) = buf[..read].windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .context("response without Content-Length")?;
        while read < end + 4 + length {
            let n = conn.read(&mut buf[read..])?;
            if n == 0 {
                bail!("connection closed mid-body");
            }
            read += n;
        }
        return Ok(());
    }
}

/// The `p` quantile (0..=1) of sorted values.
pub fn quantile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64
}
