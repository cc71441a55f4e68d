//! The daemon's log: the filter it starts with, and a per-call-site rate limit for every line a
//! client (or a peer) can trigger, so that nobody can flood the log by connecting.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing_subscriber::EnvFilter;

/// Libraries whose warnings a remote client can cause (rustls warns once per connection
/// that sends an IP address as SNI; h3 once per ignored control frame). They log at `error`
/// unless `RUST_LOG` names them.
const CLIENT_DRIVEN_LIBRARIES: &[&str] = &[
    "rustls",
    "tokio_rustls",
    "h2",
    "hyper",
    "hyper_util",
    "h3",
    "h3_quinn",
    "quinn",
    "quinn_proto",
];

/// `RUST_LOG`'s directives (or `info`), with the client-driven libraries held at `error`
/// where `RUST_LOG` does not name them.
pub fn filter(rust_log: Option<&str>) -> EnvFilter {
    let spec = rust_log.filter(|s| !s.trim().is_empty()).unwrap_or("info");
    let mut filter = EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new("info"));
    for library in CLIENT_DRIVEN_LIBRARIES {
        let named = spec
            .split(',')
            .any(|d| d.split(['=', '[']).next().map(str::trim) == Some(library));
        if !named && let Ok(directive) = format!("{library}=error").parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

/// A call site's budget: [`LogLimit::BURST`] lines per [`LogLimit::WINDOW_S`] seconds; the
/// first line after a quiet spell says how many were left out.
pub struct LogLimit {
    /// The window's start, in seconds since the epoch (0: never logged).
    window: AtomicU64,
    written: AtomicU64,
    suppressed: AtomicU64,
}

impl Default for LogLimit {
    fn default() -> Self {
        Self::new()
    }
}

impl LogLimit {
    pub const BURST: u64 = 5;
    pub const WINDOW_S: u64 = 10;

    pub const fn new() -> Self {
        Self {
            window: AtomicU64::new(0),
            written: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(left out since the last written line)` when this line may be written now.
    pub fn admit(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_secs().max(1));
        self.admit_at(now)
    }

    pub fn admit_at(&self, now_s: u64) -> Option<u64> {
        let start = self.window.load(Relaxed);
        if (start == 0 || now_s >= start + Self::WINDOW_S)
            && self
                .window
                .compare_exchange(start, now_s, Relaxed, Relaxed)
                .is_ok()
        {
            self.written.store(0, Relaxed);
        }
        if self.written.fetch_add(1, Relaxed) < Self::BURST {
            Some(self.suppressed.swap(0, Relaxed))
        } else {
            self.suppressed.fetch_add(1, Relaxed);
            None
        }
    }
}

/// `tracing::warn!` under a [`LogLimit`] of its own call site; the line gains a `suppressed`
/// field (lines left out since the last one written).
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::logging::LogLimit = $crate::logging::LogLimit::new();
        if let Some(suppressed) = LIMIT.admit() {
            ::tracing::warn!(suppressed, $($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_silence_then_the_count_left_out() {
        let limit = LogLimit::new();
        let t = 1_000;
        for _ in 0..LogLimit::BURST {
            assert_eq!(limit.admit_at(t), Some(0));
        }
        for _ in 0..1000 {
            assert_eq!(limit.admit_at(t + 1), None);
        }
        assert_eq!(limit.admit_at(t + LogLimit::WINDOW_S - 1), None);
        assert_eq!(limit.admit_at(t + LogLimit::WINDOW_S), Some(1001));
        assert_eq!(limit.admit_at(t + LogLimit::WINDOW_S), Some(0));
    }

    #[test]
    fn libraries_are_held_at_error_unless_named() {
        let directives = |f: EnvFilter| -> Vec<String> {
            f.to_string().split(',').map(str::to_string).collect()
        };
        let quiet = directives(filter(None));
        for d in ["rustls=error", "quinn_proto=error", "h3=error", "info"] {
            assert!(quiet.iter().any(|q| q == d), "{d} not in {quiet:?}");
        }
        let named = directives(filter(Some("debug,rustls=warn")));
        assert!(named.iter().any(|d| d == "rustls=warn"), "{named:?}");
        assert!(!named.iter().any(|d| d == "rustls=error"), "{named:?}");
        assert!(named.iter().any(|d| d == "h2=error"), "{named:?}");
    }
}
