//! Drains with a timeout (`lb server drain --timeout`): when each began, and which have
//! ended. A drain's clock is the server's `drain_started` time, which `lb server drain`
//! writes to the file, so a restart mid-drain keeps it; a drain written by hand without one
//! counts from when the daemon first runs the server as draining.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::{Duration, Instant, SystemTime},
};

use tracing::{info, warn};

use super::Daemon;
use crate::config::{AdminState, Config, OnDown};

type Key = (String, IpAddr);

/// When a drain began: the saved wall-clock time, else when this daemon first saw it.
#[derive(Clone, Copy, PartialEq)]
enum Since {
    Saved(SystemTime),
    Seen(Instant),
}

impl Since {
    fn elapsed(self) -> Duration {
        match self {
            // A start in the future (the clock stepped back) has not begun.
            Since::Saved(t) => SystemTime::now().duration_since(t).unwrap_or_default(),
            Since::Seen(t) => t.elapsed(),
        }
    }
}

#[derive(Default)]
pub struct Drains {
    /// Servers draining with a timeout, and since when.
    started: HashMap<Key, Since>,
    /// Those whose timeout passed with `on_drain_timeout = "reset"`, as last applied.
    ended: HashSet<Key>,
    /// Those whose timeout passed with `on_drain_timeout = "keep"` (logged once).
    kept: HashSet<Key>,
}

impl Drains {
    /// Follow `config`: a server newly set to drain with a timeout starts its clock (its
    /// saved start, if any); one no longer draining is forgotten, and so is the end of a
    /// drain whose saved start changed (drained again).
    pub fn follow(&mut self, config: &Config) {
        let mut draining = HashMap::new();
        for backend in &config.backends {
            for s in backend.resolved_servers(&config.computers) {
                if s.state == AdminState::Drain && s.drain_timeout.is_some() {
                    draining.insert((backend.name.clone(), s.address), s.drain_started);
                }
            }
        }
        self.started.retain(|k, _| draining.contains_key(k));
        self.ended.retain(|k| draining.contains_key(k));
        self.kept.retain(|k| draining.contains_key(k));
        for (key, saved) in draining {
            match (self.started.get(&key), saved) {
                (Some(Since::Saved(was)), Some(now)) if *was == now => {}
                (Some(Since::Seen(_)), None) => {}
                (known, _) => {
                    if known.is_some() {
                        self.ended.remove(&key);
                        self.kept.remove(&key);
                    }
                    let since = saved.map_or_else(|| Since::Seen(Instant::now()), Since::Saved);
                    self.started.insert(key, since);
                }
            }
        }
    }

    /// Servers whose drain timed out with `on_drain_timeout = "reset"`, as of now.
    fn due(&mut self, config: &Config) -> HashSet<Key> {
        let mut due = HashSet::new();
        for backend in &config.backends {
            let resets = backend.options.on_drain_timeout.unwrap_or(OnDown::Reset) == OnDown::Reset;
            for s in backend.resolved_servers(&config.computers) {
                let key = (backend.name.clone(), s.address);
                if let (Some(timeout), Some(since)) = (s.drain_timeout, self.started.get(&key))
                    && s.state == AdminState::Drain
                    && since.elapsed() >= timeout
                {
                    if resets {
                        due.insert(key);
                    } else if self.kept.insert(key.clone()) {
                        // Logged once: `keep` leaves the flows alone.
                        info!(backend = %key.0, server = %key.1, "drain timeout: on_drain_timeout = \"keep\", its flows run on");
                    }
                }
            }
        }
        due
    }

    /// The servers whose flows are reset now (for the plan).
    pub fn ended(&self) -> HashSet<Key> {
        self.ended.clone()
    }
}

impl Daemon {
    /// Apply the drains whose timeout passed since the last call.
    pub(super) async fn end_due_drains(&mut self) {
        let due = self.drains.due(&self.config);
        let new: HashSet<Key> = due
            .iter()
            .filter(|k| !self.drains.ended.contains(*k))
            .cloned()
            .collect();
        if new.is_empty() {
            return;
        }
        for (backend, server) in &new {
            info!(%backend, %server, "drain timeout: resetting the flows left");
        }
        self.drains.ended.extend(new);
        let config = self.config.clone();
        if let Err(e) = self.apply(&config).await {
            warn!(error = %format!("{e:#}"), "applying the end of a drain failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(server: &str) -> Config {
        Config::parse(
            "lb.toml",
            &format!(
                r#"
[[frontends]]
name = "web"
mode = "http"
address = "198.18.100.3"
binds = [{{ port = 80 }}]
default_backend = "web"

[[backends]]
name = "web"
mode = "http"
balancing_method = "roundrobin"
port = 80
servers = {{ type = "addresses", addresses = [{server}] }}
"#
            ),
        )
        .unwrap()
    }

    fn started(ago: Duration) -> String {
        humantime::format_rfc3339_seconds(SystemTime::now() - ago).to_string()
    }

    #[test]
    fn a_saved_start_survives_a_restart_and_a_new_drain_starts_again() {
        let key = ("web".to_string(), IpAddr::from([198, 18, 11, 2]));
        let drained = |since: &str| {
            config(&format!(
                r#"{{ address = "198.18.11.2", state = "drain", drain_timeout = "5m", drain_started = "{since}" }}"#
            ))
        };
        // A fresh daemon (restarted 6 minutes into the drain): due at once.
        let six_minutes_in = drained(&started(Duration::from_secs(360)));
        let mut drains = Drains::default();
        drains.follow(&six_minutes_in);
        assert!(drains.due(&six_minutes_in).contains(&key));
        drains.ended.insert(key.clone());
        // Drained again (a new start): the earlier end is forgotten, the clock restarts.
        let again = drained(&started(Duration::from_secs(1)));
        drains.follow(&again);
        assert!(drains.ended().is_empty());
        assert!(drains.due(&again).is_empty());
        // Written by hand without a start: from when this daemon saw it.
        let by_hand =
            config(r#"{ address = "198.18.11.2", state = "drain", drain_timeout = "5m" }"#);
        let mut fresh = Drains::default();
        fresh.follow(&by_hand);
        assert!(fresh.due(&by_hand).is_empty());
    }

    #[test]
    fn drain_started_needs_a_drain_timeout() {
        let e = Config::parse(
            "lb.toml",
            r#"
[[backends]]
name = "web"
mode = "http"
balancing_method = "roundrobin"
port = 80
servers = { type = "addresses", addresses = [{ address = "198.18.11.2", state = "drain", drain_started = "2026-12-03T17:40:00Z" }] }
"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("drain_started"), "{e}");
        let bad_time = Config::parse(
            "lb.toml",
            r#"
[[backends]]
name = "web"
mode = "http"
balancing_method = "roundrobin"
port = 80
servers = { type = "addresses", addresses = [{ address = "198.18.11.2", state = "drain", drain_timeout = "5m", drain_started = "yesterday" }] }
"#,
        )
        .unwrap_err();
        assert!(bad_time.to_string().contains("not a time"), "{bad_time}");
    }
}
