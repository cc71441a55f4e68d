//! `lb run`: the daemon. It applies its config, then waits for events: SIGHUP or a change
//! of the config file reloads (applying only the difference), the garbage-collection tick
//! expires flows, SIGINT/SIGTERM stop it and detach XDP.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use lb_common::maps::PROG_LB;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use std::sync::{Arc, RwLock};

use crate::{
    api,
    config::Config,
    dataplane::{BYTES_PER_FLOW, Dataplane, monotonic_now_ns, on_bpffs, pin_dir, remove_pins},
    health::{self, Health},
    metrics,
};

/// How often the config file is checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

pub struct Daemon {
    path: PathBuf,
    config: Config,
    dataplane: Dataplane,
    file_stamp: Option<(SystemTime, u64)>,
    /// The rendered metrics, when `[metrics] listen` is set.
    metrics: Option<metrics::Shared>,
    /// Health of every checked server, by (backend, address); unchecked servers are absent
    /// and count as up.
    health: HashMap<(String, IpAddr), Health>,
    /// Probe history per checked server, for metrics.
    checks: HashMap<(String, IpAddr), health::CheckStats>,
    prober: Prober,
    /// The userspace proxy, started when a frontend needs it.
    proxy: Option<crate::proxy::Proxy>,
    /// The REST API, when `[api] listen` is set: what it reads, and its changes.
    api: Option<ApiLink>,
    detach_on_exit: bool,
}

/// How `lb run` starts and ends.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions {
    /// Remove a pinned data plane first instead of taking it over.
    pub fresh: bool,
    /// On SIGINT/SIGTERM remove the pins, detaching XDP, instead of leaving the data plane
    /// running for the next daemon.
    pub detach_on_exit: bool,
}

/// Probe tasks, on a runtime of their own so a slow probe never delays the daemon.
struct Prober {
    rt: tokio::runtime::Runtime,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    tx: mpsc::UnboundedSender<ProbeReport>,
    rx: mpsc::UnboundedReceiver<ProbeReport>,
}

struct ProbeReport {
    backend: String,
    address: IpAddr,
    result: health::ProbeResult,
    took: Duration,
}

impl Prober {
    fn new() -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("health")
            .enable_all()
            .build()?;
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Prober {
            rt,
            tasks: Vec::new(),
            tx,
            rx,
        })
    }

    /// Replace every probe task with one per checked server of `config`, each starting at
    /// an offset within its interval (derived from its address) so probes spread in time.
    fn restart(&mut self, config: &Config) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        for backend in &config.backends {
            let Some(check) = backend.options.health_check.clone() else {
                continue;
            };
            let server_port = backend.port.get().unwrap_or_default();
            for server in backend.resolved_servers(&config.computers) {
                let target = SocketAddr::new(server.address, check.port.unwrap_or(server_port));
                let interval = check.interval();
                let offset = interval.mul_f64(
                    f64::from(
                        lb_common::hash::hash_bytes(server.address.to_string().as_bytes(), 7)
                            % 1000,
                    ) / 1000.0,
                );
                let (check, tx) = (check.clone(), self.tx.clone());
                let (backend, address) = (backend.name.clone(), server.address);
                self.tasks.push(self.rt.spawn(async move {
                    tokio::time::sleep(offset).await;
                    let mut ticks = tokio::time::interval(interval);
                    loop {
                        ticks.tick().await;
                        let started = std::time::Instant::now();
                        let result = crate::probe::probe(&check, target).await;
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

/// What the daemon shares with the API thread.
struct ApiLink {
    current: Arc<RwLock<Config>>,
    servers: Arc<api::ServerViews>,
    changes: mpsc::UnboundedReceiver<api::Change>,
}

enum Event {
    Api(Box<api::Change>),
    Stop,
    Reload(&'static str),
    Gc,
    Watch,
    Probe(ProbeReport),
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Daemon {
    /// Load the data plane, attach it and apply `config` (already validated, read from
    /// `path`).
    pub fn start(path: &Path, config: Config, options: RunOptions) -> Result<Daemon> {
        let size = config.dataplane.conntrack_size;
        let base = &config.dataplane.pin_path;
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
        let dataplane = Dataplane::load_pinned(size, pins.as_deref())?;
        info!(
            flows = size,
            mib = (u64::from(size) * BYTES_PER_FLOW) >> 20,
            "connection table allocated (client-side and server-side entries)"
        );
        let mut daemon = Daemon {
            path: path.to_path_buf(),
            config: Config::default(),
            dataplane,
            file_stamp: stamp(path),
            metrics: None,
            health: HashMap::new(),
            checks: HashMap::new(),
            prober: Prober::new()?,
            proxy: None,
            api: None,
            detach_on_exit: options.detach_on_exit,
        };
        if let Some(listen) = config.api.listen {
            let tokens = api::Tokens::load(config.api.token_file.as_deref())?;
            let (tx, changes) = mpsc::unbounded_channel();
            let current = Arc::new(RwLock::new(config.clone()));
            let servers = Arc::new(api::ServerViews::default());
            let shared = Arc::new(api::Api::new(current.clone(), servers.clone(), tx, tokens));
            api::serve(listen, shared)?;
            info!(%listen, "REST API at /v1 (OpenAPI document at /v1/openapi.json)");
            daemon.api = Some(ApiLink {
                current,
                servers,
                changes,
            });
        }
        if let Some(listen) = config.metrics.listen {
            let shared = metrics::Shared::default();
            metrics::serve(listen, shared.clone())?;
            info!(%listen, "metrics at /metrics");
            daemon.metrics = Some(shared);
        }
        daemon.install(config)?;
        info!(
            frontends = daemon.config.frontends.len(),
            backends = daemon.config.backends.len(),
            "ready"
        );
        Ok(daemon)
    }

    /// Attach to new interfaces, apply the config's difference, detach from interfaces no
    /// longer named.
    fn install(&mut self, config: Config) -> Result<()> {
        let attached = self.dataplane.attached(PROG_LB);
        for iface in config.interfaces() {
            if attached.contains(&iface) {
                continue;
            }
            let ifindex = nix::net::if_::if_nametoindex(iface.as_str()).with_context(|| {
                format!("interface {iface:?} (frontends[].interfaces) does not exist")
            })?;
            let mode = self.dataplane.attach(PROG_LB, &iface)?;
            self.dataplane.add_tx_port(ifindex)?;
            info!(%iface, ifindex, ?mode, "XDP attached");
        }
        // Keep the health of servers that stay; new checked servers start down.
        let mut health = HashMap::new();
        for backend in config
            .backends
            .iter()
            .filter(|b| b.options.health_check.is_some())
        {
            for server in backend.resolved_servers(&config.computers) {
                let key = (backend.name.clone(), server.address);
                let state = self.health.get(&key).copied().unwrap_or(Health::new(true));
                health.insert(key, state);
            }
        }
        self.health = health;
        let written = self.apply(&config)?;
        self.prober.restart(&config);
        let wanted = config.interfaces();
        for iface in attached.iter().filter(|i| !wanted.contains(i)) {
            self.dataplane.detach(PROG_LB, iface)?;
            info!(%iface, "XDP detached");
        }
        info!(slots_written = written, "config applied");
        if let Some(link) = &self.api {
            *link.current.write().expect("config lock") = config.clone();
        }
        self.config = config;
        self.publish_servers();
        Ok(())
    }

    /// A change from the API: apply it, then persist it; if either fails, the running
    /// config and the file stay as they were.
    fn on_api_change(&mut self, change: api::Change) {
        let old = self.config.clone();
        let started = std::time::Instant::now();
        let mut applied = Duration::ZERO;
        let result = self.install(change.config.clone()).and_then(|()| {
            applied = started.elapsed();
            api::persist(&self.path, &change.config).context("persisting the config file")
        });
        if let Err(e) = &result {
            error!(error = %format!("{e:#}"), "API change failed; restoring the running config");
            if let Err(e) = self.install(old) {
                error!(error = %format!("{e:#}"), "restoring the previous config failed");
            }
        } else {
            info!(
                applied_ms = applied.as_secs_f64() * 1e3,
                saved_ms = (started.elapsed() - applied).as_secs_f64() * 1e3,
                "API change applied and saved"
            );
        }
        self.file_stamp = stamp(&self.path);
        let _ = change.reply.send(result.map_err(|e| format!("{e:#}")));
    }

    /// Each server's health, weight and open flows, for the API.
    fn publish_servers(&self) {
        let Some(link) = &self.api else { return };
        // Data-plane ids of the servers present, by (backend, address).
        let ids: HashMap<(String, IpAddr), u32> = self
            .dataplane
            .inventory()
            .servers
            .into_iter()
            .filter(|i| i.present)
            .map(|i| ((i.backend, i.address), i.id))
            .collect();
        let mut views = std::collections::BTreeMap::new();
        for backend in &self.config.backends {
            let port = backend.port.get().unwrap_or_default();
            let list = backend
                .resolved_servers(&self.config.computers)
                .into_iter()
                .map(|s| {
                    let key = (backend.name.clone(), s.address);
                    let health = match self.health.get(&key) {
                        None => "unchecked",
                        Some(h) if h.up => "up",
                        Some(_) => "down",
                    };
                    let xdp = ids
                        .get(&key)
                        .and_then(|&id| self.dataplane.server_active(id).ok());
                    let proxy = self
                        .proxy
                        .as_ref()
                        .and_then(|p| p.active(&backend.name, s.address));
                    api::ServerView {
                        address: s.address.to_string(),
                        port,
                        weight: s.weight,
                        max_conn: (s.max_conn > 0).then_some(s.max_conn),
                        health: health.into(),
                        active: xdp.unwrap_or(0) + proxy.unwrap_or(0),
                    }
                })
                .collect();
            views.insert(backend.name.clone(), list);
        }
        *link.servers.write().expect("servers lock") = views;
    }

    /// Apply `config` with unhealthy servers given weight 0.
    fn apply(&mut self, config: &Config) -> Result<usize> {
        let health = &self.health;
        let up = |backend: &str, address: IpAddr| {
            health
                .get(&(backend.to_string(), address))
                .is_none_or(|h| h.up)
        };
        let written = self.dataplane.apply_config_with_health(config, &up)?;
        if self.proxy.is_none() && config.frontends.iter().any(|f| config.in_userspace(f)) {
            self.proxy = Some(crate::proxy::Proxy::new(config.http.workers)?);
        }
        if let Some(proxy) = &mut self.proxy {
            proxy.update(config, &up)?;
        }
        Ok(written)
    }

    /// Record a probe result; a change of state is logged with its reason and takes the
    /// server in or out of the selection table at once.
    fn on_probe(&mut self, report: ProbeReport) {
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
        match &report.result {
            Ok(()) => info!(backend = %key.0, server = %key.1, check = %check.kind, "server UP"),
            Err(reason) => {
                warn!(backend = %key.0, server = %key.1, check = %check.kind, %reason, "server DOWN")
            }
        }
        let config = self.config.clone();
        if let Err(e) = self.apply(&config) {
            error!(error = %format!("{e:#}"), up, "applying a health change failed");
        }
        self.publish_servers();
    }

    /// Re-read the config file. An invalid file is reported and the running config stays.
    pub fn reload(&mut self, why: &str) {
        self.file_stamp = stamp(&self.path);
        match Config::load(&self.path) {
            Err(e) => error!(
                reason = why,
                "config reload rejected; the running config stays:\n{e}"
            ),
            Ok(config) if config == self.config => info!(reason = why, "config unchanged"),
            Ok(config) => match self.install(config) {
                Ok(()) => info!(reason = why, "config reloaded"),
                Err(e) => {
                    error!(reason = why, error = %format!("{e:#}"), "config reload failed part-way")
                }
            },
        }
    }

    /// Expire flows, reconcile counts, and refresh the metrics snapshot.
    fn tick(&mut self) {
        self.publish_servers();
        let timeouts = self.config.dataplane.timeouts();
        let report = match self.dataplane.gc(monotonic_now_ns(), &timeouts) {
            Ok(report) => report,
            Err(e) => {
                warn!(error = %e, "conntrack gc failed");
                return;
            }
        };
        if let Some(shared) = &self.metrics {
            match metrics::render(
                &self.dataplane,
                &report,
                self.config.dataplane.conntrack_size,
                &self.checks,
            ) {
                Ok(text) => *shared.write().expect("metrics lock") = text,
                Err(e) => warn!(error = %e, "rendering metrics failed"),
            }
        }
    }

    pub fn run(mut self) -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // Timers and signal streams are created in the runtime's context.
        let (mut gc, mut watch, mut term, mut hup) = {
            use tokio::signal::unix::{SignalKind, signal};
            let _context = rt.enter();
            (
                tokio::time::interval(self.config.dataplane.gc_interval()),
                tokio::time::interval(WATCH_INTERVAL),
                signal(SignalKind::terminate())?,
                signal(SignalKind::hangup())?,
            )
        };
        loop {
            // Wait inside the runtime; act outside it (applying a config uses its own
            // netlink runtime).
            let event = rt.block_on(async {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => Event::Stop,
                    _ = term.recv() => Event::Stop,
                    _ = hup.recv() => Event::Reload("SIGHUP"),
                    _ = gc.tick() => Event::Gc,
                    _ = watch.tick() => Event::Watch,
                    Some(report) = self.prober.rx.recv() => Event::Probe(report),
                    Some(change) = async {
                        match &mut self.api {
                            Some(link) => link.changes.recv().await,
                            None => std::future::pending().await,
                        }
                    } => Event::Api(Box::new(change)),
                }
            });
            match event {
                Event::Stop => break,
                Event::Reload(why) => self.reload(why),
                Event::Watch => {
                    if stamp(&self.path) != self.file_stamp {
                        self.reload("config file changed");
                    }
                }
                Event::Gc => self.tick(),
                Event::Probe(report) => self.on_probe(report),
                Event::Api(change) => self.on_api_change(*change),
            }
        }
        warn!("signal received; detaching");
        for (label, value) in self.dataplane.stats()? {
            if value > 0 {
                info!(counter = label, value, "xdp counter");
            }
        }
        if self.detach_on_exit {
            self.dataplane.unpin_all()?;
            drop(self.dataplane);
            info!("XDP detached and pins removed; bye");
        } else {
            drop(self.dataplane);
            info!("bye; a pinned data plane keeps forwarding until the next lb run or lb stop");
        }
        Ok(())
    }
}
