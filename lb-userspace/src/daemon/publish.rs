//! What the daemon publishes of the running data plane and proxy: the live status the API
//! serves (and `lb status` prints), and the rendered metrics. Refreshed on every change and
//! after every collection pass; rates are taken between collection passes.

use std::{collections::HashMap, net::IpAddr, time::Instant};

use lb_common::maps::TrafficStats;
use tracing::warn;

use super::Daemon;
use crate::{
    api::types::{FrontendStatus, Live, ServerStatus},
    dataplane::GcReport,
    metrics,
};

/// Totals at the last collection pass, for rates.
#[derive(Default)]
pub struct Publisher {
    last: Option<Sample>,
    /// The last pass's report: open flows per frontend, table size.
    report: GcReport,
}

struct Sample {
    at: Instant,
    servers: HashMap<(String, IpAddr), u64>,
    frontends: HashMap<String, TrafficStats>,
}

/// What one blocking read of the data plane gives.
struct Counters {
    /// (backend, address) -> (open flows, traffic).
    servers: HashMap<(String, IpAddr), (u64, TrafficStats)>,
    /// Frontend name -> (id, traffic).
    frontends: HashMap<String, (u32, TrafficStats)>,
    /// Interface -> attached XDP mode.
    xdp: std::collections::BTreeMap<String, String>,
    metrics: Option<anyhow::Result<String>>,
}

/// A server's state as status and metrics show it: what the operator set first, then health.
/// A weight of 0 is a drain (as in HAProxy).
pub fn server_state(s: &crate::config::ResolvedServer, up: bool) -> &'static str {
    use crate::config::AdminState;
    match s.state {
        AdminState::Maint => "maint",
        AdminState::Drain => "drain",
        AdminState::Ready if !up => "down",
        AdminState::Ready if s.weight == 0 => "drain",
        AdminState::Ready => "up",
    }
}

fn per_s(now: u64, before: u64, seconds: f64) -> f64 {
    now.saturating_sub(before) as f64 / seconds
}

impl Daemon {
    /// Refresh the live status, and with a collection pass's `report` the rates and the
    /// metrics.
    pub(super) async fn publish(&mut self, report: Option<GcReport>) {
        let pass = report.is_some();
        if let Some(report) = report {
            self.publisher.report = report;
        }
        let render = (pass && self.metrics.is_some()).then(|| {
            let mut servers = HashMap::new();
            for backend in &self.config.backends {
                for s in backend.resolved_servers(&self.config.computers) {
                    let key = (backend.name.clone(), s.address);
                    let up = self.health.get(&key).is_none_or(|h| h.up);
                    servers.insert(
                        key,
                        metrics::ServerView {
                            weight: s.weight,
                            state: server_state(&s, up),
                        },
                    );
                }
            }
            let served = self.proxy.as_ref().map(|p| p.served()).unwrap_or_default();
            (
                (servers, served),
                self.publisher.report.clone(),
                self.checks.clone(),
                self.config.dataplane.conntrack_size,
                self.ha.as_ref().map(|h| h.status()),
                self.reloads.clone(),
            )
        });
        let read = self
            .with_dataplane(move |dp| {
                let inventory = dp.inventory();
                let mut servers = HashMap::new();
                for s in inventory.servers.iter().filter(|s| s.present) {
                    let open = dp.server_active(s.id)?;
                    servers.insert(
                        (s.backend.clone(), s.address),
                        (open, dp.server_stats(s.id)?),
                    );
                }
                let mut frontends = HashMap::new();
                for (id, name) in &inventory.frontends {
                    frontends.insert(name.clone(), (*id, dp.frontend_stats(*id)?));
                }
                let metrics =
                    render.map(|((servers, served), report, checks, size, ha, reloads)| {
                        let daemon = metrics::DaemonView {
                            servers: &servers,
                            proxy: &served,
                            checks: &checks,
                            ha: ha.as_ref(),
                            reloads: &reloads,
                        };
                        metrics::render(dp, &report, size, &daemon)
                    });
                let xdp = dp
                    .xdp_modes()
                    .iter()
                    .map(|(i, m)| (i.clone(), m.to_string()))
                    .collect();
                Ok(Counters {
                    servers,
                    frontends,
                    xdp,
                    metrics,
                })
            })
            .await;
        let counters = match read {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "reading the data plane's counters failed");
                return;
            }
        };
        match (&self.metrics, &counters.metrics) {
            (Some(shared), Some(Ok(text))) => *shared.write().expect("metrics lock") = text.clone(),
            (_, Some(Err(e))) => warn!(error = %e, "rendering metrics failed"),
            _ => {}
        }
        let previous = self.live.read().expect("live lock").clone();
        let elapsed = self
            .publisher
            .last
            .as_ref()
            .map(|s| s.at.elapsed().as_secs_f64())
            .filter(|s| pass && *s > 0.0);
        let mut live = Live {
            conntrack_entries: self.publisher.report.flows as u64,
            conntrack_capacity: u64::from(self.config.dataplane.conntrack_size),
            ha: self.ha.as_ref().map(|h| h.status()),
            xdp: counters.xdp.clone(),
            ..Live::default()
        };
        for backend in &self.config.backends {
            let shown = backend
                .resolved_servers(&self.config.computers)
                .into_iter()
                .map(|s| {
                    let key = (backend.name.clone(), s.address);
                    let health = match self.health.get(&key) {
                        None => "unchecked",
                        Some(h) if h.up => "up",
                        Some(_) => "down",
                    };
                    let up = health != "down";
                    let (xdp, traffic) = counters.servers.get(&key).copied().unwrap_or_default();
                    let proxy = self
                        .proxy
                        .as_ref()
                        .and_then(|p| p.active(&backend.name, s.address))
                        .unwrap_or(0);
                    let new_flows_per_s = match (elapsed, &self.publisher.last) {
                        (Some(seconds), Some(last)) => per_s(
                            traffic.new_flows,
                            last.servers.get(&key).copied().unwrap_or(traffic.new_flows),
                            seconds,
                        ),
                        _ => previous
                            .servers
                            .get(&backend.name)
                            .and_then(|l| l.iter().find(|p| p.address == s.address.to_string()))
                            .map_or(0.0, |p| p.new_flows_per_s),
                    };
                    ServerStatus {
                        backend: backend.name.clone(),
                        name: s.name.clone(),
                        address: s.address.to_string(),
                        port: backend.port.number,
                        state: server_state(&s, up).into(),
                        weight: s.weight,
                        effective_weight: if up { s.serving_weight() } else { 0 },
                        max_conn: (s.max_conn > 0).then_some(s.max_conn),
                        health: health.into(),
                        up,
                        active: xdp + proxy,
                        flows_total: traffic.new_flows,
                        new_flows_per_s,
                    }
                })
                .collect();
            live.servers.insert(backend.name.clone(), shown);
        }
        for frontend in &self.config.frontends {
            let (id, traffic) = counters
                .frontends
                .get(&frontend.name)
                .copied()
                .unwrap_or_default();
            let mut shown = FrontendStatus {
                name: frontend.name.clone(),
                open_flows: self
                    .publisher
                    .report
                    .active_per_frontend
                    .get(&id)
                    .copied()
                    .unwrap_or(0),
                flows_total: traffic.new_flows,
                ..FrontendStatus::default()
            };
            match (elapsed, &self.publisher.last) {
                (Some(seconds), Some(last)) => {
                    let before = last
                        .frontends
                        .get(&frontend.name)
                        .copied()
                        .unwrap_or(traffic);
                    shown.new_flows_per_s = per_s(traffic.new_flows, before.new_flows, seconds);
                    shown.bytes_in_per_s = per_s(traffic.bytes_in, before.bytes_in, seconds);
                    shown.bytes_out_per_s = per_s(traffic.bytes_out, before.bytes_out, seconds);
                }
                _ => {
                    if let Some(p) = previous.frontends.get(&frontend.name) {
                        shown.new_flows_per_s = p.new_flows_per_s;
                        shown.bytes_in_per_s = p.bytes_in_per_s;
                        shown.bytes_out_per_s = p.bytes_out_per_s;
                    }
                }
            }
            live.frontends.insert(frontend.name.clone(), shown);
        }
        if pass {
            self.publisher.last = Some(Sample {
                at: Instant::now(),
                servers: counters
                    .servers
                    .iter()
                    .map(|(k, (_, t))| (k.clone(), t.new_flows))
                    .collect(),
                frontends: counters
                    .frontends
                    .iter()
                    .map(|(k, (_, t))| (k.clone(), *t))
                    .collect(),
            });
        }
        *self.live.write().expect("live lock") = live;
    }
}
