//! When servers are probed: one task per checked server on the admin runtime, each
//! starting at an offset within its interval (derived from its address) so that probes
//! spread in time and none waits for another. Results go to the daemon as reports.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use tokio::{sync::mpsc, task::JoinHandle};

use super::state::ProbeResult;
use crate::config::Config;

/// One probe's result, for the daemon.
pub struct ProbeReport {
    pub backend: String,
    pub address: IpAddr,
    pub result: ProbeResult,
    pub took: Duration,
}

/// The probe tasks of the running config.
pub struct Prober {
    tasks: Vec<JoinHandle<()>>,
    reports: mpsc::UnboundedSender<ProbeReport>,
}

impl Prober {
    pub fn new(reports: mpsc::UnboundedSender<ProbeReport>) -> Self {
        Prober {
            tasks: Vec::new(),
            reports,
        }
    }

    /// Replace every probe task with one per checked server of `config`. Call within the
    /// admin runtime.
    pub fn restart(&mut self, config: &Config) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        for backend in &config.backends {
            let Some(check) = backend.options.health_check.clone() else {
                continue;
            };
            // A server in maintenance is not checked (HAProxy's MAINT): its health stays
            // as it was until `lb server ready`.
            for server in backend
                .resolved_servers(&config.computers)
                .into_iter()
                .filter(|s| s.state != crate::config::AdminState::Maint)
            {
                let target =
                    SocketAddr::new(server.address, check.port.unwrap_or(backend.port.number));
                let interval = check.interval();
                let offset = interval.mul_f64(
                    f64::from(
                        lb_common::hash::hash_bytes(server.address.to_string().as_bytes(), 7)
                            % 1000,
                    ) / 1000.0,
                );
                let (check, tx) = (check.clone(), self.reports.clone());
                let (backend, address) = (backend.name.clone(), server.address);
                self.tasks.push(tokio::spawn(async move {
                    tokio::time::sleep(offset).await;
                    let mut ticks = tokio::time::interval(interval);
                    loop {
                        ticks.tick().await;
                        let started = Instant::now();
                        let result = super::probe::probe(&check, target).await;
                        let report = ProbeReport {
                            backend: backend.clone(),
                            address,
                            result,
                            took: started.elapsed(),
                        };
                        if tx.send(report).is_err() {
                            return;
                        }
                    }
                }));
            }
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}
