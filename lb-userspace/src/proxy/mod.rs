//! The userspace proxy: http frontends (HTTP/1.1, HTTP/2 and HTTP/3, TLS termination, ACL routing,
//! sticky cookies, X-Forwarded-*), and tcp frontends whose backend sends a PROXY header
//! (bytes XDP cannot insert into a stream). XDP passes these frontends' packets to the
//! kernel; the VIP must be an address of this host.
//!
//! `[http] workers` threads each run a runtime of their own. HTTP/1.x is relayed by `h1`,
//! HTTP/2 by hyper (`h2`), HTTP/3 by quinn and h3 (`h3`, into `h2`'s request path); `limits` bounds every connection (write deadlines, HTTP/2 idle
//! and stalls). `update` swaps in new routes (servers and frontends keep their open
//! connection counts) and opens or closes listeners to match the config.

pub mod balance;
mod body;
pub mod h1;
pub mod h2;
mod h3;
mod limits;
mod listen;
pub mod observe;
pub mod policy;
pub mod routes;
pub mod upstream;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use anyhow::Result;
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::{info, warn};

use crate::config::{Config, Mode};
use listen::{ListenerSpec, accept_loop, bind};
use routes::{Routes, Shared};

/// One proxy thread with a runtime of its own. Each accepts on its own SO_REUSEPORT socket
/// of every bind, and a client connection, its upstream connections and their tasks stay
/// on that thread: no cross-thread wakeups per request (as HAProxy's and nginx's workers).
struct Worker {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A snapshot of the proxy's counters (`Proxy::served`).
#[derive(Clone, Default)]
pub struct Served {
    /// (frontend, counts, open client connections).
    pub frontends: Vec<(String, Arc<observe::FrontendStats>, u64)>,
    /// (backend, server address, counts, open server connections or requests).
    pub servers: Vec<(String, IpAddr, Arc<observe::ServerStats>, u64)>,
}

pub struct Proxy {
    workers: Vec<Worker>,
    shared: Arc<Shared>,
    listeners: HashMap<SocketAddr, (ListenerSpec, Vec<JoinHandle<()>>)>,
}

impl Proxy {
    pub fn new(workers: usize) -> Result<Proxy> {
        let shared = Arc::new(Shared::default());
        let mut started = Vec::new();
        for i in 0..workers.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = rt.handle().clone();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let pools = shared.clone();
            let thread = std::thread::Builder::new()
                .name(format!("proxy-{i}"))
                .spawn(move || {
                    upstream::WORKER.set(i);
                    rt.block_on(async {
                        tokio::select! {
                            _ = stopped => {}
                            () = give_back_memory() => {}
                            () = close_idle_upstreams(pools) => {}
                        }
                    });
                })?;
            started.push(Worker {
                handle,
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        Ok(Proxy {
            workers: started,
            shared,
            listeners: HashMap::new(),
        })
    }

    /// Install `config`'s userspace frontends and their backends; `up(backend, address)`
    /// is a server's health, `reset(backend, address)` says its flows are reset (the
    /// tunnels open to it are cut).
    pub fn update(
        &mut self,
        config: &Config,
        up: &dyn Fn(&str, IpAddr) -> bool,
        reset: &dyn Fn(&str, IpAddr) -> bool,
    ) -> Result<()> {
        let old = self.shared.routes.read().unwrap().clone();
        let routes = Routes::build(config, &old, up, reset, self.workers.len())?;
        let userspace: Vec<_> = config
            .frontends
            .iter()
            .filter(|f| config.in_userspace(f))
            .collect();
        *self.shared.routes.write().unwrap() = Arc::new(routes);
        *self.shared.http.write().unwrap() = Arc::new(config.http.clone());
        let nofile = open_file_limit();
        let fits = max_connections_for(nofile);
        let limit = config.http.max_connections.unwrap_or(fits);
        if self.shared.max_connections.swap(limit, Relaxed) != limit && !userspace.is_empty() {
            if limit > fits {
                warn!(
                    max_connections = limit,
                    nofile,
                    fits,
                    "[http] max_connections is more than the open file limit allows: past about {fits} connections, accepting (the API and metrics too) may fail; raise LimitNOFILE or lower max_connections"
                );
            } else {
                info!(max_connections = limit, nofile, "proxy connection limit");
            }
        }

        // Listeners: one per bind; a bind whose spec changed is reopened.
        let mut wanted: HashMap<SocketAddr, ListenerSpec> = HashMap::new();
        for f in &userspace {
            for bind in &f.binds {
                wanted.insert(
                    SocketAddr::new(f.address, bind.port),
                    ListenerSpec {
                        frontend: f.name.clone(),
                        http: f.mode == Mode::Http,
                        certificate: bind.ssl.filter(|s| *s).and(bind.ssl_certificate.clone()),
                        http3: bind.use_http3 == Some(true),
                    },
                );
            }
        }
        self.listeners.retain(|addr, (spec, tasks)| {
            let keep = wanted.get(addr) == Some(spec);
            if !keep {
                tasks.iter().for_each(JoinHandle::abort);
                info!(%addr, frontend = %spec.frontend, "proxy listener closed");
            }
            keep
        });
        for (addr, spec) in wanted {
            if self.listeners.contains_key(&addr) {
                continue;
            }
            let tasks = self.listen(addr, &spec)?;
            info!(%addr, frontend = %spec.frontend, http = spec.http, tls = spec.certificate.is_some(), http3 = spec.http3, workers = self.workers.len(), "proxy listening");
            self.listeners.insert(addr, (spec, tasks));
        }
        Ok(())
    }

    /// Open connections of a server of a backend the proxy serves.
    pub fn active(&self, backend: &str, address: IpAddr) -> Option<u64> {
        let routes = self.shared.routes.read().unwrap().clone();
        let server = routes
            .backends
            .get(backend)?
            .balancer
            .servers
            .iter()
            .find(|s| s.address.ip() == address)?
            .active
            .load(std::sync::atomic::Ordering::Relaxed);
        Some(u64::from(server))
    }

    /// What the proxy served, for the metrics: each userspace frontend (its counts and
    /// open connections), and each server of their backends (counts, open connections).
    pub fn served(&self) -> Served {
        let routes = self.shared.routes.read().unwrap().clone();
        Served {
            frontends: routes
                .frontends
                .values()
                .map(|f| (f.name.clone(), f.stats.clone(), f.open.load(Relaxed) as u64))
                .collect(),
            servers: routes
                .backends
                .values()
                .flat_map(|b| {
                    b.balancer.servers.iter().map(|s| {
                        (
                            b.name.clone(),
                            s.address.ip(),
                            s.stats.clone(),
                            u64::from(s.active.load(Relaxed)),
                        )
                    })
                })
                .collect(),
        }
    }

    fn listen(&self, addr: SocketAddr, spec: &ListenerSpec) -> Result<Vec<JoinHandle<()>>> {
        let tls = spec
            .certificate
            .as_deref()
            .map(crate::tls::acceptor)
            .transpose()?;
        let mut tasks = Vec::new();
        for worker in &self.workers {
            let listener = bind(addr)?;
            let _guard = worker.handle.enter();
            let listener = TcpListener::from_std(listener)?;
            tasks.push(worker.handle.spawn(accept_loop(
                listener,
                addr,
                self.shared.clone(),
                spec.frontend.clone(),
                spec.http,
                tls.clone(),
            )));
        }
        if let (true, Some(certificate)) = (spec.http3, &spec.certificate) {
            let http = self.shared.http();
            let server = h3::server_config(certificate, &http)?;
            let endpoint = h3::endpoint_config(&http)?;
            for worker in &self.workers {
                let socket = h3::bind_udp(addr)?;
                let _guard = worker.handle.enter();
                let endpoint = quinn::Endpoint::new(
                    endpoint.clone(),
                    Some(server.clone()),
                    socket,
                    Arc::new(quinn::TokioRuntime),
                )?;
                tasks.push(worker.handle.spawn(h3::accept_loop(
                    endpoint,
                    self.shared.clone(),
                    spec.frontend.clone(),
                )));
            }
        }
        Ok(tasks)
    }
}

/// RLIMIT_NOFILE as it is now (`lb run` raises it to the hard limit first).
fn open_file_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft)
}

/// The default `[http] max_connections`: a client connection may hold a server connection
/// too, and the daemon keeps descriptors for the API, metrics, probes, pools and maps.
fn max_connections_for(nofile: u64) -> usize {
    let reserve = (nofile / 4).min(1024);
    (nofile.saturating_sub(reserve) / 2).max(1) as usize
}

/// mimalloc keeps the pages of freed memory until this thread allocates or frees enough to
/// look at them again: after a crowd of connections closed on an otherwise quiet worker, its
/// RSS stayed where the crowd had taken it. Every 2 s after connections have closed (or
/// given their buffers back while idle), free pages go back to mimalloc's arenas, and on
/// the tick after, what its purge delay (1 s) held back goes back to the system.
async fn give_back_memory() {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut seen = routes::FREED.get();
    let mut pending = false;
    loop {
        tick.tick().await;
        let closed = routes::FREED.get();
        let now = closed != seen;
        if now || pending {
            // SAFETY: mi_collect takes no pointer and only tidies this thread's heap and the
            // arenas; with another global allocator it tidies an unused heap.
            unsafe { libmimalloc_sys::mi_collect(false) };
        }
        seen = closed;
        pending = now;
    }
}

/// Once a second, close this worker's pooled server connections that idled for
/// `[http] pool_idle_timeout` (a pool also ages them out whenever it is used).
async fn close_idle_upstreams(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let routes = shared.routes.read().unwrap().clone();
        for backend in routes.backends.values() {
            backend.h1_pool.sweep();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for (_, (_, tasks)) in self.listeners.drain() {
            tasks.iter().for_each(JoinHandle::abort);
        }
        for worker in &mut self.workers {
            let _ = worker.stop.take().map(|s| s.send(()));
            if let Some(t) = worker.thread.take() {
                let _ = t.join();
            }
        }
    }
}
