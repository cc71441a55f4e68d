//! Reloading the config file: on SIGHUP and when the file changes. Only the difference is
//! applied; an invalid file is reported and the running config stays.

use std::{
    path::Path,
    time::{Duration, SystemTime},
};

use tracing::{error, info, warn};

use super::Daemon;
use crate::config::Config;

/// How often the config file is checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// What tells a changed file apart: its modification time and length.
pub fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Daemon {
    /// Re-read the config file.
    pub async fn reload(&mut self, why: &str) {
        self.file_stamp = stamp(&self.path);
        let path = self.path.clone();
        let loaded = tokio::task::spawn_blocking(move || Config::load(&path)).await;
        match loaded {
            Err(e) => {
                self.reloads.reloads_failed += 1;
                error!(reason = why, error = %e, "config reload failed")
            }
            Ok(Err(e)) => {
                self.reloads.reloads_failed += 1;
                error!(
                    reason = why,
                    "config reload rejected; the running config stays:\n{e}"
                )
            }
            Ok(Ok(config)) => {
                let config = keep_restart_only(&self.config, config);
                if config == self.config {
                    self.reload_succeeded();
                    info!(reason = why, "config unchanged");
                    return;
                }
                let removed = removals(&self.config, &config);
                if !removed.is_empty() {
                    warn!(
                        reason = why,
                        removed = %removed.join("; "),
                        "the reloaded config removes what the running one serves"
                    );
                }
                self.install_reloaded(config, why).await;
            }
        }
    }

    async fn install_reloaded(&mut self, config: Config, why: &str) {
        match self.install(config).await {
            Ok(()) => {
                self.reload_succeeded();
                info!(reason = why, "config reloaded")
            }
            Err(e) => {
                self.reloads.reloads_failed += 1;
                error!(reason = why, error = %format!("{e:#}"), "config reload failed part-way")
            }
        }
    }

    fn reload_succeeded(&mut self) {
        self.reloads.reloads_ok += 1;
        self.reloads.last_reload_success = super::unix_now();
    }
}

/// `new` with the settings that take effect only at a restart (`[api]`, `[metrics]`, the
/// pin path, the connection table's size, the proxy's workers, `[ha]`, `[bgp]`) as they run: what the
/// daemon runs, and an API change saves, is never a file's partial view of them. A file
/// that changes them is told so.
fn keep_restart_only(running: &Config, mut new: Config) -> Config {
    let mut ignored = Vec::new();
    if new.api != running.api {
        ignored.push("[api]");
        new.api = running.api.clone();
    }
    if new.metrics != running.metrics {
        ignored.push("[metrics]");
        new.metrics = running.metrics.clone();
    }
    if new.dataplane.pin_path != running.dataplane.pin_path {
        ignored.push("dataplane.pin_path");
        new.dataplane.pin_path = running.dataplane.pin_path.clone();
    }
    if new.dataplane.conntrack_size != running.dataplane.conntrack_size {
        ignored.push("dataplane.conntrack_size");
        new.dataplane.conntrack_size = running.dataplane.conntrack_size;
    }
    if new.ha != running.ha {
        ignored.push("[ha]");
        new.ha = running.ha.clone();
    }
    if new.bgp != running.bgp {
        ignored.push("[bgp]");
        new.bgp = running.bgp.clone();
    }
    if new.http.workers != running.http.workers {
        ignored.push("http.workers");
        new.http.workers = running.http.workers;
    }
    if !ignored.is_empty() {
        warn!(
            settings = %ignored.join(", "),
            "the file changes settings that take effect at the next restart; the running ones stay (and an API change saves them)"
        );
    }
    new
}

/// What `new` stops serving that `old` serves: frontends, their binds, backends.
fn removals(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for f in &old.frontends {
        match new.frontends.iter().find(|n| n.name == f.name) {
            None => out.push(format!("frontend {}", f.name)),
            Some(n) => {
                for b in f.binds.iter().filter(|b| {
                    !n.binds
                        .iter()
                        .any(|nb| nb.port == b.port && nb.protocol == b.protocol)
                        || n.address != f.address
                }) {
                    out.push(format!(
                        "{} {}:{}/{}",
                        f.name, f.address, b.port, b.protocol
                    ));
                }
            }
        }
    }
    for b in &old.backends {
        if !new.backends.iter().any(|n| n.name == b.name) {
            out.push(format!("backend {}", b.name));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo(extra: &str) -> Config {
        Config::parse("t", &format!("{}{extra}", crate::DEFAULT_DEMO_CONFIG)).unwrap()
    }

    #[test]
    fn a_partial_file_cannot_drop_what_takes_effect_at_restart() {
        let running = demo(
            "\n[metrics]\nlisten = \"127.0.0.1:9100\"\n[dataplane]\npin_path = \"/run/lb-pins\"\n",
        );
        let truncated = demo("");
        let kept = keep_restart_only(&running, truncated);
        assert_eq!(kept.metrics, running.metrics);
        assert_eq!(kept.dataplane.pin_path, running.dataplane.pin_path);
        assert_eq!(kept, running, "nothing else differed");
    }

    #[test]
    fn removals_name_frontends_binds_and_backends() {
        let running = demo("");
        let mut new = running.clone();
        new.frontends[0].binds.pop();
        new.backends.clear();
        let removed = removals(&running, &new);
        assert_eq!(
            removed,
            vec![
                "demo 198.18.100.1:53/udp".to_string(),
                "backend demo-servers".to_string()
            ]
        );
    }
}
