//! Reloading the config file: on SIGHUP and when the file changes. Only the difference is
//! applied; an invalid file is reported and the running config stays.

use std::{
    path::Path,
    time::{Duration, SystemTime},
};

use tracing::{error, info};

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
            Err(e) => error!(reason = why, error = %e, "config reload failed"),
            Ok(Err(e)) => error!(
                reason = why,
                "config reload rejected; the running config stays:\n{e}"
            ),
            Ok(Ok(config)) if config == self.config => info!(reason = why, "config unchanged"),
            Ok(Ok(config)) => match self.install(config).await {
                Ok(()) => info!(reason = why, "config reloaded"),
                Err(e) => {
                    error!(reason = why, error = %format!("{e:#}"), "config reload failed part-way")
                }
            },
        }
    }
}
