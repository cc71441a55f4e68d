//! The garbage collector's task: a tick every `gc_interval` on a blocking thread, with map
//! handles of its own, so that the daemon's events never wait behind a sweep of the
//! connection table. Each tick sweeps a bounded slice ([`SLICE`]); its report goes to the
//! daemon.

use std::time::Duration;

use anyhow::Result;
use lb_common::flow::Timeouts;
use tokio::sync::{mpsc, watch};

use crate::{
    config::Config,
    dataplane::{Collector, GcReport, Retired, SLICE, monotonic_now_ns},
};

/// What a pass needs from the running config and data plane.
#[derive(Clone, Debug)]
pub struct Settings {
    pub interval: Duration,
    pub timeouts: Timeouts,
    /// Server ids whose open-flow counts are reconciled.
    pub servers: Vec<u32>,
    /// Ids that left the config, checked for references before they are released.
    pub retired: Retired,
}

impl Settings {
    pub fn of(config: &Config, servers: Vec<u32>, retired: Retired) -> Settings {
        Settings {
            interval: config.dataplane.gc_interval,
            timeouts: config.dataplane.timeouts(),
            servers,
            retired,
        }
    }
}

/// Start the collector on the admin runtime; returns where to send new settings and
/// where the reports arrive.
pub fn spawn(
    mut collector: Collector,
    config: &Config,
) -> (
    watch::Sender<Settings>,
    mpsc::UnboundedReceiver<Result<GcReport>>,
) {
    let (settings, mut current) =
        watch::channel(Settings::of(config, Vec::new(), Retired::default()));
    let (reports, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut period = current.borrow_and_update().interval;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        // A tick that overran is followed by a full interval, never by a burst.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let now = current.borrow_and_update().clone();
            if now.interval != period {
                period = now.interval;
                ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
            let pass = tokio::task::spawn_blocking(move || {
                let report = collector.tick(
                    monotonic_now_ns(),
                    &now.timeouts,
                    &now.servers,
                    &now.retired,
                    SLICE,
                );
                (collector, report)
            })
            .await;
            let Ok((back, report)) = pass else { return };
            collector = back;
            if reports.send(report).is_err() {
                return;
            }
        }
    });
    (settings, received)
}
