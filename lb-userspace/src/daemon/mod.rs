//! `lb run`: the daemon, an actor on the admin runtime. It owns the running config, the
//! health of every checked server and the data plane, and acts on one event at a time:
//! SIGHUP or a change of the config file reloads (`reload`), an API change is applied and
//! saved, a probe result may take a server in or out, a collection pass refreshes what the
//! API and the metrics show (`publish`), SIGINT/SIGTERM stop it. Map I/O runs on the
//! runtime's blocking threads; the garbage collector runs on its own (`collect`), and so
//! does an HA pair's flow sync (`ha`).

mod collect;
mod drain;
mod ha;
mod linger;
mod publish;
mod reload;

use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::{Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use lb_common::maps::PROG_LB;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::{
    api,
    config::{Config, InitState},
    dataplane::{
        BYTES_PER_FLOW, Dataplane, GcReport, follow_routing_changes, on_bpffs, pin_dir, remove_pins,
    },
    health::{CheckStats, Health, ProbeReport, Prober},
    metrics,
};

/// How `lb run` starts and ends.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions {
    /// Remove a pinned data plane first instead of taking it over.
    pub fresh: bool,
    /// On SIGINT/SIGTERM remove the pins, detaching XDP, instead of leaving the data plane
    /// running for the next daemon.
    pub detach_on_exit: bool,
}

/// What the daemon acts on.
enum Event {
    Api(Box<api::Change>),
    Stop,
    Reload(&'static str),
    Watch,
    Probe(ProbeReport),
    Collected(Result<GcReport>),
}

/// What the daemon shares with the API.
struct ApiLink {
    current: Arc<RwLock<Config>>,
    changes: mpsc::UnboundedReceiver<api::Change>,
}

pub struct Daemon {
    path: PathBuf,
    config: Config,
    /// Locked by one blocking task at a time; the collector has handles of its own.
    dataplane: Arc<Mutex<Dataplane>>,
    file_stamp: Option<(SystemTime, u64)>,
    /// Health of every checked server, by (backend, address); unchecked servers are absent
    /// and count as up.
    health: HashMap<(String, IpAddr), Health>,
    /// Health an earlier daemon left in the pinned maps, by (address, port): used once, at
    /// the first install.
    restored: HashMap<(IpAddr, u16), bool>,
    /// Servers that left backends with no UP server yet (make before break).
    lingering: HashMap<String, linger::Lingering>,
    /// Probe history per checked server, for metrics.
    checks: HashMap<(String, IpAddr), CheckStats>,
    prober: Prober,
    probes: mpsc::UnboundedReceiver<ProbeReport>,
    /// The userspace proxy, started when a frontend needs it.
    proxy: Option<crate::proxy::Proxy>,
    api: Option<ApiLink>,
    /// What the API reads of servers and frontends.
    live: Arc<RwLock<api::types::Live>>,
    publisher: publish::Publisher,
    /// Reloads and their last success, for the metrics.
    reloads: metrics::DaemonInfo,
    /// Drains with a timeout.
    drains: drain::Drains,
    /// The rendered metrics, when `[metrics] listen` is set.
    metrics: Option<metrics::Shared>,
    collect: watch::Sender<collect::Settings>,
    collected: mpsc::UnboundedReceiver<Result<GcReport>>,
    /// The HA pair's sync, when `[ha]` is set.
    ha: Option<ha::HaLink>,
    detach_on_exit: bool,
}

impl Daemon {
    /// Load the data plane, attach it and apply `config` (already loaded from `path`).
    /// Call within the admin runtime.
    pub async fn start(path: &Path, config: Config, options: RunOptions) -> Result<Daemon> {
        let size = config.dataplane.conntrack_size;
        let base = &config.dataplane.pin_path;
        if !on_bpffs(base) {
            // Without one, the default pin_path would give no restart safety at all.
            match crate::dataplane::mount_bpffs_for(base) {
                Ok(point) => info!(
                    at = %point.display(),
                    "mounted a BPF filesystem for the pinned data plane (none was mounted there)"
                ),
                Err(e) => warn!(error = %format!("{e:#}"), "could not mount a BPF filesystem"),
            }
        }
        let pins = if on_bpffs(base) {
            let dir = pin_dir(base);
            if options.fresh {
                remove_pins(&dir)?;
                info!(pins = %dir.display(), "--fresh: removed the pinned data plane");
            } else if dir.exists() {
                info!(pins = %dir.display(), "re-attaching to the pinned data plane");
            }
            Some(dir)
        } else {
            warn!(
                pin_path = %base.display(),
                "not a BPF filesystem: the data plane is not pinned, so a restart loses every tracked flow (mount bpffs there, or set [dataplane] pin_path)"
            );
            None
        };
        let dataplane =
            tokio::task::spawn_blocking(move || Dataplane::load_pinned(size, pins.as_deref()))
                .await??;
        info!(
            flows = size,
            mib = (u64::from(size) * BYTES_PER_FLOW) >> 20,
            "connection table allocated (client-side and server-side entries)"
        );
        info!(
            syn_reclaim_ms = lb_common::maps::SYN_RECLAIM_NS / 1_000_000,
            "SNAT source ports: each frontend's snat_ports per SNAT address, server port and protocol; handshakes idle past syn_reclaim_ms give theirs to new SYNs"
        );
        let restored = dataplane.pinned_health()?;
        if !restored.is_empty() {
            let down = restored.values().filter(|up| !**up).count();
            info!(
                servers = restored.len(),
                down, "health taken over from the pinned data plane"
            );
        }
        let (collect, collected) = collect::spawn(dataplane.collector()?, &config);
        let generation = dataplane.egress_generation()?;
        tokio::spawn(async move {
            if let Err(e) = follow_routing_changes(generation).await {
                // Cached egress then still expires after EGRESS_TTL_NS.
                warn!("not following routing changes: {e:#}");
            }
        });
        let (reports, probes) = mpsc::unbounded_channel();
        let live = Arc::new(RwLock::new(api::types::Live::default()));
        let mut daemon = Daemon {
            path: path.to_path_buf(),
            config: Config::default(),
            dataplane: Arc::new(Mutex::new(dataplane)),
            file_stamp: reload::stamp(path),
            health: HashMap::new(),
            restored,
            lingering: HashMap::new(),
            checks: HashMap::new(),
            prober: Prober::new(reports),
            probes,
            proxy: None,
            api: None,
            live: live.clone(),
            publisher: publish::Publisher::default(),
            drains: drain::Drains::default(),
            reloads: metrics::DaemonInfo {
                last_reload_success: unix_now(),
                ..metrics::DaemonInfo::default()
            },
            metrics: None,
            collect,
            collected,
            ha: None,
            detach_on_exit: options.detach_on_exit,
        };
        if let Some(listen) = config.api.listen {
            let tokens = api::Tokens::load(config.api.token_file.as_deref())?;
            let (tx, changes) = mpsc::unbounded_channel();
            let current = Arc::new(RwLock::new(config.clone()));
            api::serve(
                listen,
                Arc::new(api::Api::new(current.clone(), live, tx)),
                tokens,
            )?;
            info!(%listen, "REST API at /v1 (OpenAPI document at /v1/openapi.json)");
            daemon.api = Some(ApiLink { current, changes });
        }
        if let Some(listen) = config.metrics.listen {
            let shared = metrics::Shared::default();
            metrics::serve(listen, shared.clone())?;
            info!(%listen, "metrics at /metrics");
            daemon.metrics = Some(shared);
        }
        let ha = config.ha.clone();
        daemon.install(config).await?;
        if let Some(ha) = &ha {
            daemon.ha = Some(ha::start(&daemon.config, ha, &daemon.dataplane)?);
        }
        info!(
            frontends = daemon.config.frontends.len(),
            backends = daemon.config.backends.len(),
            "ready"
        );
        // Under systemd (Type=notify) the unit is started from here on; elsewhere a no-op.
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        Ok(daemon)
    }

    /// Run `f` on the data plane on a blocking thread.
    async fn with_dataplane<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Dataplane) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let dataplane = self.dataplane.clone();
        tokio::task::spawn_blocking(move || f(&mut dataplane.lock().expect("dataplane lock")))
            .await
            .context("the data plane task panicked")?
    }

    /// Attach to new interfaces, apply the config's difference, detach from interfaces no
    /// longer named.
    async fn install(&mut self, config: Config) -> Result<()> {
        for w in config.host_warnings() {
            warn!(field = %w.field, fix = %w.fix, "{}", w.message);
        }
        let wanted = config.interfaces();
        let settings = config.dataplane.clone();
        let attached = self
            .with_dataplane(move |dp| {
                let attached = dp.attached(PROG_LB);
                for iface in wanted.iter().filter(|i| !attached.contains(i)) {
                    let ifindex =
                        nix::net::if_::if_nametoindex(iface.as_str()).with_context(|| {
                            format!("interface {iface:?} (frontends[].interfaces) does not exist")
                        })?;
                    let mode = dp.attach(PROG_LB, iface, settings.xdp_mode_of(iface))?;
                    dp.add_tx_port(ifindex)?;
                    info!(%iface, ifindex, mode, "XDP attached");
                }
                Ok(attached)
            })
            .await?;
        // Servers that stay keep their health; the others start as the earlier daemon left
        // them (a takeover of pinned maps), else per their check's init_state.
        let mut health = HashMap::new();
        for backend in &config.backends {
            let Some(check) = &backend.options.health_check else {
                continue;
            };
            for server in backend.resolved_servers(&config.computers) {
                let key = (backend.name.clone(), server.address);
                let state = self.health.get(&key).copied().unwrap_or_else(|| {
                    let restored = self.restored.get(&(server.address, backend.port.number));
                    Health::starting(
                        restored
                            .copied()
                            .unwrap_or(check.init_state() == InitState::Up),
                    )
                });
                health.insert(key, state);
            }
        }
        let previous = std::mem::replace(&mut self.health, health);
        self.restored.clear();
        for (name, linger) in linger::leaving(&self.config, &config, &self.health, &previous) {
            info!(
                backend = %name,
                servers = linger.servers.len(),
                "servers that leave keep taking new flows until a new one is UP"
            );
            self.lingering.insert(name, linger);
        }
        self.lingering
            .retain(|name, _| config.backends.iter().any(|b| &b.name == name));
        let written = self.apply(&config).await?;
        self.prober.restart(&config);
        let wanted = config.interfaces();
        self.with_dataplane(move |dp| {
            for iface in attached.iter().filter(|i| !wanted.contains(i)) {
                dp.detach(PROG_LB, iface)?;
                info!(%iface, "XDP detached");
            }
            Ok(())
        })
        .await?;
        info!(slots_written = written, "config applied");
        if let Some(link) = &self.api {
            *link.current.write().expect("config lock") = config.clone();
        }
        self.config = config;
        self.publish(None).await;
        Ok(())
    }

    /// Apply `config` with unhealthy servers given weight 0, to the data plane and the
    /// proxy; the collector learns the servers it reconciles.
    async fn apply(&mut self, config: &Config) -> Result<usize> {
        let effective = linger::with_lingering(config, &self.lingering);
        let config = &effective;
        let health = self.health.clone();
        let up = move |backend: &str, address: IpAddr| {
            health
                .get(&(backend.to_string(), address))
                .is_none_or(|h| h.up)
        };
        self.drains.follow(config);
        let ended = self.drains.ended();
        // As the data plane's plan: a drain that timed out with on_drain_timeout = "reset",
        // or down with the check's on_down = "reset".
        let reset = {
            let (ended, up) = (ended.clone(), up.clone());
            let resets_when_down: std::collections::HashSet<String> = config
                .backends
                .iter()
                .filter(|b| b.resets_flows_when_down())
                .map(|b| b.name.clone())
                .collect();
            move |backend: &str, address: IpAddr| {
                ended.contains(&(backend.to_string(), address))
                    || (!up(backend, address) && resets_when_down.contains(backend))
            }
        };
        let (written, servers, retired, names) = {
            let (config, up) = (config.clone(), up.clone());
            self.with_dataplane(move |dp| {
                let drain_ended = |backend: &str, address: IpAddr| {
                    ended.contains(&(backend.to_string(), address))
                };
                let written = dp.apply_config_with_health(&config, &up, &drain_ended)?;
                Ok((written, dp.server_ids(), dp.retired(), dp.names()))
            })
            .await?
        };
        if let Some(ha) = &self.ha {
            ha.shared.set_names(names);
        }
        self.collect
            .send_replace(collect::Settings::of(config, servers, retired));
        if self.proxy.is_none() && config.frontends.iter().any(|f| config.in_userspace(f)) {
            self.proxy = Some(crate::proxy::Proxy::new(config.http.workers)?);
        }
        if let Some(proxy) = &mut self.proxy {
            proxy.update(config, &up, &reset)?;
        }
        Ok(written)
    }

    /// A change from the API: apply it, then persist it; if either fails, the running
    /// config and the file stay as they were.
    async fn on_api_change(&mut self, change: api::Change) {
        let old = self.config.clone();
        let started = Instant::now();
        let mut result = self.install(change.config.clone()).await;
        let applied = started.elapsed();
        if result.is_ok() {
            result = crate::config::persist(&self.path, &change.config)
                .context("persisting the config file");
        }
        if let Err(e) = &result {
            error!(error = %format!("{e:#}"), "API change failed; restoring the running config");
            if let Err(e) = self.install(old).await {
                error!(error = %format!("{e:#}"), "restoring the previous config failed");
            }
        } else {
            info!(
                applied_ms = applied.as_secs_f64() * 1e3,
                saved_ms = (started.elapsed() - applied).as_secs_f64() * 1e3,
                "API change applied and saved"
            );
        }
        self.file_stamp = reload::stamp(&self.path);
        let _ = change.reply.send(result.map_err(|e| format!("{e:#}")));
    }

    /// Record a probe result; a change of state is logged with its reason and takes the
    /// server in or out of the selection table at once.
    async fn on_probe(&mut self, report: ProbeReport) {
        let key = (report.backend, report.address);
        let Some(check) = self
            .config
            .backends
            .iter()
            .find(|b| b.name == key.0)
            .and_then(|b| b.options.health_check.clone())
        else {
            return;
        };
        let Some(state) = self.health.get_mut(&key) else {
            return;
        };
        let stats = self.checks.entry(key.clone()).or_default();
        stats.last_change.get_or_insert_with(Instant::now);
        stats.last_ok = report.result.is_ok();
        stats.last_duration = report.took;
        stats.failures += u64::from(report.result.is_err());
        let new_error = report.result.as_ref().err();
        if let Some(reason) = new_error
            && !state.up
            && stats.last_error.as_ref() != Some(reason)
        {
            // A DOWN server's failures are logged when their reason changes, so an operator
            // learns why a server never comes up without a line per probe.
            warn!(backend = %key.0, server = %key.1, check = %check.kind, %reason, "health check failing");
        }
        stats.last_error = new_error.cloned();
        let Some(up) = state.record(report.result.is_ok(), check.rise(), check.fall()) else {
            return;
        };
        stats.transitions += 1;
        stats.last_change = Some(Instant::now());
        self.settle_lingering();
        match &report.result {
            Ok(()) => info!(backend = %key.0, server = %key.1, check = %check.kind, "server UP"),
            Err(reason) => {
                warn!(backend = %key.0, server = %key.1, check = %check.kind, %reason, "server DOWN")
            }
        }
        let config = self.config.clone();
        if let Err(e) = self.apply(&config).await {
            error!(error = %format!("{e:#}"), up, "applying a health change failed");
        }
        self.publish(None).await;
    }

    /// Release the retired ids a collection pass found unused, so that API churn never
    /// exhausts them; the collector learns what stays retired.
    async fn release(&mut self, unused: &crate::dataplane::Retired) {
        if unused.is_empty() {
            return;
        }
        let unused = unused.clone();
        match self
            .with_dataplane(move |dp| Ok((dp.release(&unused)?, dp.retired())))
            .await
        {
            Ok((released, retired)) => {
                if released > 0 {
                    debug!(
                        released,
                        "ids of removed servers, backends and frontends released"
                    );
                }
                self.collect.send_modify(|s| s.retired = retired);
            }
            Err(e) => warn!(error = %format!("{e:#}"), "releasing retired ids failed"),
        }
    }

    /// The event loop, until SIGINT or SIGTERM.
    pub async fn run(mut self) -> Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let (mut term, mut hup) = (
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        );
        let mut watch = tokio::time::interval(reload::WATCH_INTERVAL);
        loop {
            let event = tokio::select! {
                _ = tokio::signal::ctrl_c() => Event::Stop,
                _ = term.recv() => Event::Stop,
                _ = hup.recv() => Event::Reload("SIGHUP"),
                _ = watch.tick() => Event::Watch,
                Some(report) = self.probes.recv() => Event::Probe(report),
                Some(pass) = self.collected.recv() => Event::Collected(pass),
                Some(change) = async {
                    match &mut self.api {
                        Some(link) => link.changes.recv().await,
                        None => std::future::pending().await,
                    }
                } => Event::Api(Box::new(change)),
            };
            match event {
                Event::Stop => break,
                Event::Reload(why) => self.reload(why).await,
                Event::Watch => {
                    if reload::stamp(&self.path) != self.file_stamp {
                        self.reload("config file changed").await;
                    }
                    self.end_due_drains().await;
                    if self.settle_lingering() {
                        let config = self.config.clone();
                        if let Err(e) = self.apply(&config).await {
                            error!(error = %format!("{e:#}"), "applying the end of lingering failed");
                        }
                    }
                }
                Event::Collected(Ok(report)) => {
                    self.release(&report.unused).await;
                    self.publish(Some(report)).await;
                }
                Event::Collected(Err(e)) => warn!(error = %format!("{e:#}"), "conntrack gc failed"),
                Event::Probe(report) => self.on_probe(report).await,
                Event::Api(change) => self.on_api_change(*change).await,
            }
        }
        self.stop().await
    }

    async fn stop(self) -> Result<()> {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        warn!("signal received; detaching");
        if let Some(ha) = &self.ha {
            ha.stop();
        }
        let detach = self.detach_on_exit;
        let proxy = self.proxy;
        let dataplane = self.dataplane;
        tokio::task::spawn_blocking(move || {
            drop(proxy);
            let dataplane = dataplane.lock().expect("dataplane lock");
            for (label, value) in dataplane.stats()? {
                if value > 0 {
                    info!(counter = label, value, "xdp counter");
                }
            }
            if detach {
                dataplane.unpin_all()?;
                info!("XDP detached and pins removed; bye");
            } else {
                info!("bye; a pinned data plane keeps forwarding until the next lb run or lb stop");
            }
            Ok::<(), anyhow::Error>(())
        })
        .await?
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
