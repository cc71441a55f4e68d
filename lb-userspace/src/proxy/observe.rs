//! What the proxy counts for metrics and logs: per frontend and per server, connections,
//! bytes (at the sockets), requests by status class, retries, connection errors and
//! response times; and the access log line of each request (HAProxy's timers: Tq, Tw, Tc,
//! Tr, Tt). Counters are atomics shared by the worker threads; the daemon reads them when
//! it renders the metrics.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use tokio::time::Instant;

use crate::config::AccessLog;

/// Bytes through a socket, counted by `limits::Deadlined`.
#[derive(Debug, Default)]
pub struct Traffic {
    pub read: AtomicU64,
    pub written: AtomicU64,
}

/// Upper bounds of the response-time histograms, in seconds.
pub const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A histogram as read: (sum in seconds, count, (upper bound, count) per bucket, +Inf last).
pub type HistogramSnapshot = (f64, u64, Vec<(f64, u64)>);

/// A histogram of durations: a count per bucket (the last is +Inf), their sum.
#[derive(Debug, Default)]
pub struct Timings {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Timings {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<(f64, u64)> = BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.buckets.iter().map(|b| b.load(Relaxed)))
            .collect();
        let count = counts.iter().map(|(_, n)| n).sum();
        (self.sum_ns.load(Relaxed) as f64 / 1e9, count, counts)
    }
}

/// Status classes: 1xx..5xx, then anything else (a request answered by nothing).
pub const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

fn class(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => 5,
    }
}

/// A userspace frontend's counts.
#[derive(Debug, Default)]
pub struct FrontendStats {
    /// Client connections accepted.
    pub sessions: AtomicU64,
    /// Client sockets: read = from clients, written = to them.
    pub traffic: Arc<Traffic>,
    pub requests: [AtomicU64; 6],
}

/// One server's counts, as the proxy uses it.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Requests (HTTP) or connections (tcp) sent to it.
    pub sessions: AtomicU64,
    /// Server sockets: written = to the server, read = from it.
    pub traffic: Arc<Traffic>,
    pub requests: [AtomicU64; 6],
    /// Connections that failed to open (refused, timed out, TLS).
    pub connect_errors: AtomicU64,
    /// Requests that failed on it and were sent again to another server.
    pub retries: AtomicU64,
    /// From request sent to response head received (Tr).
    pub response_time: Timings,
}

impl ServerStats {
    pub fn answered(&self, status: u16, response_time: Duration) {
        self.requests[class(status)].fetch_add(1, Relaxed);
        self.response_time.observe(response_time);
    }
}

impl FrontendStats {
    pub fn answered(&self, status: u16) {
        self.requests[class(status)].fetch_add(1, Relaxed);
    }
}

/// What happened upstream of one request, filled in by the HTTP paths as they go.
#[derive(Default)]
pub struct Trace {
    pub backend: String,
    /// The server that answered (or was tried last).
    pub server: Option<(SocketAddr, Arc<ServerStats>)>,
    /// Time to connect to it; None for a pooled connection.
    pub connect: Option<Duration>,
    /// From request sent to response head: set when the server answered.
    pub response: Option<Duration>,
    /// Attempts after the first (each on another server).
    pub retries: u32,
    /// HTTP/1: the status and bytes of the answer written to the client.
    pub answer: Option<(u16, u64)>,
}

impl Trace {
    /// An attempt on `server` begins; an earlier one failed.
    pub fn attempt(&mut self, address: SocketAddr, stats: &Arc<ServerStats>) {
        if let Some((_, before)) = &self.server {
            before.retries.fetch_add(1, Relaxed);
            self.retries += 1;
        }
        stats.sessions.fetch_add(1, Relaxed);
        self.server = Some((address, stats.clone()));
        self.connect = None;
        self.response = None;
    }
}

/// One request's record, counted and logged once it is answered.
pub struct Exchange<'a> {
    pub log: AccessLog,
    pub frontend: &'a str,
    pub stats: &'a FrontendStats,
    pub client: SocketAddr,
    pub method: &'a str,
    pub path: &'a str,
    /// When the request's first byte was seen.
    pub started: Instant,
    /// When its head was complete.
    pub head_done: Instant,
    pub trace: Trace,
    pub status: u16,
    /// Bytes of the answer: HTTP/1, head and body as written; HTTP/2 and HTTP/3, the body's
    /// bytes once it was sent (or given up).
    pub bytes_out: Option<u64>,
}

impl Exchange<'_> {
    /// Count the answer (frontend, and the server that gave it) and write the access log
    /// line, if the frontend keeps one.
    pub fn finish(&self) {
        self.stats.answered(self.status);
        if let (Some((_, server)), Some(took)) = (&self.trace.server, self.trace.response) {
            server.answered(self.status, took);
        }
        let ms = |d: Option<Duration>| d.map_or(-1, |d| d.as_millis() as i64);
        let tq = ms(Some(self.head_done.duration_since(self.started)));
        let t = &self.trace;
        let tc = match (&t.server, t.connect) {
            (None, _) => -1,
            (Some(_), None) => 0,
            (Some(_), Some(d)) => ms(Some(d)),
        };
        let tr = ms(t.response);
        let tt = ms(Some(self.started.elapsed()));
        let server = t
            .server
            .as_ref()
            .map_or_else(|| "-".to_string(), |(s, _)| s.to_string());
        let backend = if t.backend.is_empty() {
            "-"
        } else {
            &t.backend
        };
        let bytes = self.bytes_out.map_or(-1, |b| b as i64);
        match self.log {
            AccessLog::Off => {}
            AccessLog::Text => tracing::info!(
                target: "lb::access",
                "{} {} {}/{} {}/{}/{}/{}/{} {} {} {} \"{} {}\"",
                self.client,
                self.frontend,
                backend,
                server,
                tq,
                0,
                tc,
                tr,
                tt,
                self.status,
                bytes,
                t.retries,
                self.method,
                self.path
            ),
            AccessLog::Json => tracing::info!(
                target: "lb::access",
                "{}",
                serde_json::json!({
                    "client": self.client.to_string(),
                    "frontend": self.frontend,
                    "backend": backend,
                    "server": server,
                    "method": self.method,
                    "path": self.path,
                    "status": self.status,
                    "bytes": bytes,
                    "retries": t.retries,
                    "Tq": tq, "Tw": 0, "Tc": tc, "Tr": tr, "Tt": tt,
                })
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_buckets() {
        assert_eq!(
            [
                class(101),
                class(200),
                class(302),
                class(404),
                class(503),
                class(0)
            ],
            [0, 1, 2, 3, 4, 5]
        );
        let t = Timings::default();
        t.observe(Duration::from_micros(500));
        t.observe(Duration::from_millis(30));
        t.observe(Duration::from_secs(9));
        let (sum, count, buckets) = t.snapshot();
        assert_eq!(count, 3);
        assert!((sum - 9.0305).abs() < 1e-6);
        assert_eq!(buckets[0], (0.001, 1));
        assert_eq!(buckets[5], (0.05, 1));
        assert_eq!(buckets[12].1, 1);
    }
}
