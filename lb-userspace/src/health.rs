//! Health checks: the rise/fall state machine and expected HTTP codes (probes: `probe.rs`).
//!
//! A server with a check starts DOWN and takes traffic only after `rise` consecutive
//! successes; `fall` consecutive failures take it out of the selection table. Probes of
//! different servers run concurrently and are spread in time, so none waits for another.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `options.health_check` of a backend, as written in the config.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(rename = "type")]
    pub kind: String,
    /// http: the request's path, method and Host header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Defaults to the server's port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// http: "200", "200,204" or "200-399"; default any 2xx or 3xx.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_header: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rise: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fall: Option<u32>,
    /// mysql: log in as this user (no password) and quit; postgres: the startup user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A DOWN server's established flows: "keep" (default) lets them run on, "reset"
    /// answers the client's next packet of each with a TCP RST (HAProxy's
    /// `on-marked-down shutdown-sessions`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_down: Option<String>,
}

/// Check types the prober implements.
pub const KINDS: &[&str] = &["tcp", "http", "mysql", "postgres", "redis", "tls"];
/// What `on_down` may say happens to a DOWN server's established flows.
pub const ON_DOWN: &[&str] = &["keep", "reset"];

impl HealthCheck {
    pub fn interval(&self) -> Duration {
        self.interval
            .as_deref()
            .and_then(crate::config::duration)
            .unwrap_or(Duration::from_secs(2))
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
            .as_deref()
            .and_then(crate::config::duration)
            .unwrap_or(Duration::from_secs(1))
    }

    pub fn rise(&self) -> u32 {
        self.rise.unwrap_or(2)
    }

    pub fn fall(&self) -> u32 {
        self.fall.unwrap_or(3)
    }

    pub fn resets_flows(&self) -> bool {
        self.on_down.as_deref() == Some("reset")
    }

    pub fn expected(&self) -> Result<ExpectedCodes, String> {
        ExpectedCodes::parse(self.expected_code.as_deref())
    }
}

/// Which HTTP status codes count as healthy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedCodes(Vec<(u16, u16)>);

impl ExpectedCodes {
    /// `None`: any 2xx or 3xx. Otherwise codes and ranges separated by commas.
    pub fn parse(text: Option<&str>) -> Result<Self, String> {
        let Some(text) = text else {
            return Ok(ExpectedCodes(vec![(200, 399)]));
        };
        let mut ranges = Vec::new();
        for part in text.split(',').map(str::trim) {
            let (lo, hi) = match part.split_once('-') {
                Some((lo, hi)) => (lo.trim(), hi.trim()),
                None => (part, part),
            };
            let code = |s: &str| {
                s.parse::<u16>()
                    .ok()
                    .filter(|c| (100..=599).contains(c))
                    .ok_or_else(|| format!("{s:?} is not an HTTP status code (100-599)"))
            };
            let (lo, hi) = (code(lo)?, code(hi)?);
            if lo > hi {
                return Err(format!("range {part:?} is backwards"));
            }
            ranges.push((lo, hi));
        }
        Ok(ExpectedCodes(ranges))
    }

    pub fn accepts(&self, code: u16) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&code))
    }
}

/// A server's health as the rise/fall rules see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    pub up: bool,
    streak: u32,
}

impl Health {
    /// Checked servers start DOWN; unchecked ones are UP and stay so.
    pub fn new(checked: bool) -> Self {
        Health {
            up: !checked,
            streak: 0,
        }
    }

    /// Record a probe result; returns the new state when it changes.
    pub fn record(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if ok { rise } else { fall };
        if self.streak >= needed.max(1) {
            self.up = ok;
            self.streak = 0;
            return Some(ok);
        }
        None
    }
}

/// A server's probe history, for metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckStats {
    pub last_ok: bool,
    /// Why the last probe failed, if it did.
    pub last_error: Option<String>,
    pub last_duration: Duration,
    pub failures: u64,
    /// UP/DOWN transitions.
    pub transitions: u64,
}

/// What a probe found: healthy, or why not.
pub type ProbeResult = Result<(), String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall() {
        let mut h = Health::new(true);
        assert!(!h.up, "a checked server starts down");
        assert_eq!(h.record(true, 2, 3), None);
        assert_eq!(h.record(true, 2, 3), Some(true), "up after rise successes");
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(
            h.record(true, 2, 3),
            None,
            "a success resets the failure streak"
        );
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(
            h.record(false, 2, 3),
            Some(false),
            "down after fall failures in a row"
        );
        assert!(Health::new(false).up, "unchecked servers are up");
    }

    #[test]
    fn expected_codes() {
        let default = ExpectedCodes::parse(None).unwrap();
        assert!(
            default.accepts(200)
                && default.accepts(302)
                && !default.accepts(404)
                && !default.accepts(503)
        );
        let list = ExpectedCodes::parse(Some("200, 204")).unwrap();
        assert!(list.accepts(204) && !list.accepts(201));
        let range = ExpectedCodes::parse(Some("200-399")).unwrap();
        assert!(range.accepts(399) && !range.accepts(400));
        assert!(ExpectedCodes::parse(Some("2xx")).is_err());
        assert!(ExpectedCodes::parse(Some("399-200")).is_err());
    }
}
