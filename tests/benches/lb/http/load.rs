//! The load generators: wrk (HTTP/1.1, plain or TLS, keep-alive or one request per
//! connection), h2load (HTTP/2 over TLS).

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
    if std::env::var_os("LB_BENCH_VERBOSE").is_some() {
        eprintln!("{out}");
    }
    // "finished in 2.00s, 24612.50 req/s, 4.87MB/s"
    out.lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1)?.strip_suffix(" req/s")?.parse().ok())
        .with_context(|| format!("no req/s in h2load output:\n{out}"))
}

/// The `p` quantile (0..=1) of sorted values.
pub fn quantile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64
}
