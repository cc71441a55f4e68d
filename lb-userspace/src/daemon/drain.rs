//! Drains with a timeout (`lb server drain --timeout`): when each began, and which have
//! ended. A drain's clock starts when the daemon first runs the server as draining (a
//! restart mid-drain starts it again); the file holds the state and the timeout, not a time.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::Instant,
};

use tracing::{info, warn};

use super::Daemon;
use crate::config::{AdminState, Config, OnDown};

type Key = (String, IpAddr);

#[derive(Default)]
pub struct Drains {
    /// Servers draining with a timeout, and since when.
    started: HashMap<Key, Instant>,
    /// Those whose timeout passed with `on_drain_timeout = "reset"`, as last applied.
    ended: HashSet<Key>,
    /// Those whose timeout passed with `on_drain_timeout = "keep"` (logged once).
    kept: HashSet<Key>,
}

impl Drains {
    /// Follow `config`: a server newly set to drain with a timeout starts its clock; one no
    /// longer draining is forgotten.
    pub fn follow(&mut self, config: &Config) {
        let mut draining = HashSet::new();
        for backend in &config.backends {
            for s in backend.resolved_servers(&config.computers) {
                if s.state == AdminState::Drain && s.drain_timeout.is_some() {
                    draining.insert((backend.name.clone(), s.address));
                }
            }
        }
        self.started.retain(|k, _| draining.contains(k));
        self.ended.retain(|k| draining.contains(k));
        self.kept.retain(|k| draining.contains(k));
        for key in draining {
            self.started.entry(key).or_insert_with(Instant::now);
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
