//! Make before break. A change that removes a backend's UP servers while the servers it
//! adds still await their first checks would leave the backend with nobody to take new
//! flows. The servers that leave then linger: they keep taking new flows until one server
//! of the backend is UP, or for a bounded time. A weight of 0 (a drain) is not leaving, so
//! it always wins.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use tracing::info;

use super::Daemon;
use crate::{
    config::{Config, ResolvedServer, ServerAddress, Servers},
    health::Health,
};

/// Servers that left a backend but still take new flows, until `until`.
#[derive(Clone, Debug)]
pub struct Lingering {
    pub servers: Vec<ResolvedServer>,
    pub until: Instant,
}

/// How long leaving servers may linger: long enough for a new server's first `rise`
/// checks, with a spare interval.
fn bound(check: &crate::config::HealthCheck) -> Duration {
    check.interval() * (check.rise() + 1) + check.timeout()
}

/// Backends of `new` that would have no UP server while servers of `old` that were UP
/// leave them: those servers, to linger.
pub fn leaving(
    old: &Config,
    new: &Config,
    health: &HashMap<(String, IpAddr), Health>,
    previous: &HashMap<(String, IpAddr), Health>,
) -> HashMap<String, Lingering> {
    let mut out = HashMap::new();
    for backend in &new.backends {
        let Some(check) = &backend.options.health_check else {
            continue;
        };
        let Some(before) = old.backends.iter().find(|b| b.name == backend.name) else {
            continue;
        };
        let now = backend.resolved_servers(&new.computers);
        let any_up = now.iter().any(|s| {
            s.serving_weight() > 0
                && health
                    .get(&(backend.name.clone(), s.address))
                    .is_none_or(|h| h.up)
        });
        if any_up {
            continue;
        }
        let gone: Vec<ResolvedServer> = before
            .resolved_servers(&old.computers)
            .into_iter()
            .filter(|s| s.serving_weight() > 0 && !now.iter().any(|n| n.address == s.address))
            .filter(|s| {
                previous
                    .get(&(backend.name.clone(), s.address))
                    .is_none_or(|h| h.up)
            })
            .collect();
        if !gone.is_empty() {
            out.insert(
                backend.name.clone(),
                Lingering {
                    servers: gone,
                    until: Instant::now() + bound(check),
                },
            );
        }
    }
    out
}

/// `config` with each lingering backend's leaving servers added back.
pub fn with_lingering(config: &Config, lingering: &HashMap<String, Lingering>) -> Config {
    let mut effective = config.clone();
    for backend in effective.backends.iter_mut() {
        let Some(linger) = lingering.get(&backend.name) else {
            continue;
        };
        let mut addresses: Vec<ServerAddress> = backend
            .resolved_servers(&config.computers)
            .into_iter()
            .map(|s| ServerAddress::from(&s))
            .collect();
        addresses.extend(linger.servers.iter().map(ServerAddress::from));
        backend.servers = Servers::Addresses { addresses };
    }
    effective
}

impl Daemon {
    /// Drop the lingering servers of backends that have an UP server again, and of those
    /// whose bound passed; true when anything changed.
    pub(super) fn settle_lingering(&mut self) -> bool {
        let before = self.lingering.len();
        let (config, health) = (&self.config, &self.health);
        self.lingering.retain(|name, linger| {
            let up = config
                .backends
                .iter()
                .find(|b| &b.name == name)
                .is_some_and(|b| {
                    b.resolved_servers(&config.computers).iter().any(|s| {
                        s.serving_weight() > 0
                            && health.get(&(name.clone(), s.address)).is_none_or(|h| h.up)
                    })
                });
            let keep = !up && Instant::now() < linger.until;
            if !keep {
                info!(backend = %name, up, "servers that left stop taking new flows");
            }
            keep
        });
        self.lingering.len() != before
    }
}
