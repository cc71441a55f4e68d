//! What the proxy routes by, built from the config on every change: frontends (ACL rules,
//! redirect, X-Forwarded-* trust) and backends (balancer, dialer, stickiness, pools).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

use anyhow::Result;

use super::{
    balance::{Balancer, ServerState},
    policy::CookieConfig,
    upstream::{self, Dialer, Pool},
};
use crate::config::{
    AclCriterion, Cidr, Config, HttpConfig, ProxyVersion, StickyKind, StickySession,
};

/// How a backend's connections are made (TLS, verification, PROXY header).
#[derive(Clone, Debug, PartialEq)]
pub struct DialSettings {
    pub tls: bool,
    pub tls_verify: bool,
    pub tls_ca: Option<PathBuf>,
    pub proxy_protocol: Option<ProxyVersion>,
}

/// Source-IP stickiness: client -> (server index, last use).
pub type SourceTable = std::sync::Mutex<HashMap<IpAddr, (usize, std::time::Instant)>>;

/// A backend as the proxy uses it.
pub struct BackendRoute {
    pub name: String,
    pub balancer: Balancer,
    pub dialer: Dialer,
    pub cookie: Option<CookieConfig>,
    /// Source-IP stickiness: client -> (server index, last use).
    pub sticky_source: Option<(Duration, SourceTable)>,
    /// The backend's own forward_for, over the frontend's.
    pub forward_for: Option<bool>,
    /// Idle keep-alive connections to its servers, lb's own HTTP/1.1 (requests from HTTP/1,
    /// HTTP/2 and HTTP/3 clients alike).
    pub h1_pool: Arc<Pool<upstream::Upstream>>,
    /// How its connections are made: pools are kept across a reload only while this stays
    /// the same.
    pub dial_settings: DialSettings,
}

impl BackendRoute {
    /// The server a client sticks to by source address, while within the TTL and usable.
    pub fn sticky_source(&self, client: IpAddr) -> Option<usize> {
        let (ttl, map) = self.sticky_source.as_ref()?;
        let map = map.lock().unwrap();
        map.get(&client)
            .filter(|(i, at)| at.elapsed() < *ttl && self.balancer.servers[*i].usable())
            .map(|(i, _)| *i)
    }

    pub fn remember_source(&self, client: IpAddr, index: usize) {
        if let Some((ttl, map)) = &self.sticky_source {
            let mut map = map.lock().unwrap();
            // Bounded: expired clients go whenever the table grows large.
            if map.len() > 100_000 {
                map.retain(|_, (_, at)| at.elapsed() < *ttl);
            }
            map.insert(client, (index, std::time::Instant::now()));
        }
    }
}

/// A frontend as the proxy uses it.
pub struct FrontendRoute {
    pub name: String,
    pub default_backend: String,
    /// (criterion, value, backend) in rule order.
    pub rules: Vec<(AclCriterion, String, String)>,
    pub redirect_ssl: bool,
    pub https_port: u16,
    pub forward_for: bool,
    pub trusted: Vec<Cidr>,
    /// `options.max_connections`, and its open client connections (kept across reloads).
    pub max_connections: Option<u32>,
    pub open: Arc<AtomicUsize>,
    /// What it served (kept across reloads), and its access log.
    pub stats: Arc<super::observe::FrontendStats>,
    pub log: crate::config::AccessLog,
    /// `h3=":PORT"` for TLS responses when a bind serves HTTP/3 (RFC 7838).
    pub alt_svc: Option<http::HeaderValue>,
}

impl FrontendRoute {
    /// The backend for a request: the first rule whose ACL matches, else the default.
    pub fn route(&self, path: &str, host: Option<&str>) -> &str {
        for (criterion, value, backend) in &self.rules {
            let hit = match criterion {
                AclCriterion::PathBeg => path.starts_with(value.as_str()),
                AclCriterion::HdrHost => host.is_some_and(|h| h.eq_ignore_ascii_case(value)),
            };
            if hit {
                return backend;
            }
        }
        &self.default_backend
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(ip))
    }
}

#[derive(Default)]
pub struct Routes {
    pub frontends: HashMap<String, Arc<FrontendRoute>>,
    pub backends: HashMap<String, Arc<BackendRoute>>,
}

/// State every connection task reads.
#[derive(Default)]
pub struct Shared {
    pub routes: RwLock<Arc<Routes>>,
    pub http: RwLock<Arc<HttpConfig>>,
    /// Open client connections over all frontends, and how many may be (0: no limit).
    pub open: AtomicUsize,
    pub max_connections: AtomicUsize,
    /// Connections refused since the last warning, and when that was (seconds).
    refused: AtomicU64,
    refused_logged: AtomicU64,
}

/// Why a connection was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// `[http] max_connections`.
    Global(usize),
    /// The frontend's `options.max_connections`.
    Frontend(u32),
}

thread_local! {
    /// Client connections this thread has closed, or whose buffers it took back while they
    /// idle: a worker gives freed memory back to the system after that
    /// (`proxy::give_back_memory`).
    pub static FREED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A client connection, counted against `[http] max_connections` and its frontend's
/// `max_connections` while it lives.
pub struct Slot {
    shared: Arc<Shared>,
    frontend: Option<Arc<AtomicUsize>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Relaxed);
        if let Some(f) = &self.frontend {
            f.fetch_sub(1, Relaxed);
        }
        FREED.set(FREED.get() + 1);
    }
}

impl Shared {
    pub fn backend(&self, name: &str) -> Option<Arc<BackendRoute>> {
        self.routes.read().unwrap().backends.get(name).cloned()
    }

    pub fn frontend(&self, name: &str) -> Option<Arc<FrontendRoute>> {
        self.routes.read().unwrap().frontends.get(name).cloned()
    }

    pub fn http(&self) -> Arc<HttpConfig> {
        self.http.read().unwrap().clone()
    }

    /// Count a new client connection of `frontend`, unless that would pass the global or
    /// the frontend's limit.
    pub fn admit(self: &Arc<Self>, frontend: &str) -> Result<Slot, Refused> {
        let max = self.max_connections.load(Relaxed);
        if self.open.fetch_add(1, Relaxed) >= max && max != 0 {
            self.open.fetch_sub(1, Relaxed);
            return Err(Refused::Global(max));
        }
        let route = self.frontend(frontend);
        let frontend = match route {
            Some(f) => {
                let open = f.open.fetch_add(1, Relaxed);
                if let Some(max) = f.max_connections
                    && open >= max as usize
                {
                    f.open.fetch_sub(1, Relaxed);
                    self.open.fetch_sub(1, Relaxed);
                    return Err(Refused::Frontend(max));
                }
                Some(f.open.clone())
            }
            None => None,
        };
        Ok(Slot {
            shared: self.clone(),
            frontend,
        })
    }

    /// Count a refusal; true when it is time to warn again (at most every 10 s), with how
    /// many were refused since the last warning.
    pub fn refusal_to_log(&self, now_s: u64) -> Option<u64> {
        let count = self.refused.fetch_add(1, Relaxed) + 1;
        let last = self.refused_logged.load(Relaxed);
        if (last == 0 || now_s >= last + 10)
            && self
                .refused_logged
                .compare_exchange(last, now_s.max(1), Relaxed, Relaxed)
                .is_ok()
        {
            self.refused.fetch_sub(count, Relaxed);
            return Some(count);
        }
        None
    }
}

impl Routes {
    /// The routes of `config`'s userspace frontends and the backends they use. Servers keep
    /// their open connection counts from `old`, and a backend that connects the same way
    /// keeps its warm pools. `up(backend, address)` is a server's health; `reset(backend,
    /// address)` says its flows are reset now, and its open tunnels are cut.
    pub fn build(
        config: &Config,
        old: &Routes,
        up: &dyn Fn(&str, IpAddr) -> bool,
        reset: &dyn Fn(&str, IpAddr) -> bool,
        workers: usize,
    ) -> Result<Routes> {
        let http = &config.http;
        let mut routes = Routes::default();
        let userspace: Vec<_> = config
            .frontends
            .iter()
            .filter(|f| config.in_userspace(f))
            .collect();
        for backend in &config.backends {
            let used = userspace.iter().any(|f| {
                f.default_backend == backend.name
                    || f.backends.iter().any(|r| r.backend == backend.name)
            });
            if !used {
                continue;
            }
            let port = backend.port.number;
            let servers = backend
                .resolved_servers(&config.computers)
                .into_iter()
                .map(|s| {
                    let address = SocketAddr::new(s.address, port);
                    let kept = old
                        .backends
                        .get(&backend.name)
                        .and_then(|b| b.balancer.servers.iter().find(|o| o.address == address));
                    let active =
                        kept.map_or_else(|| Arc::new(AtomicU32::new(0)), |o| o.active.clone());
                    let mut state = ServerState::new(
                        &backend.name,
                        address,
                        s.serving_weight(),
                        s.max_conn,
                        up(&backend.name, s.address),
                        active,
                    );
                    if let Some(o) = kept {
                        state.stats = o.stats.clone();
                        state.cut = o.cut.clone();
                    }
                    if reset(&backend.name, s.address) {
                        state.cut_all();
                    }
                    Arc::new(state)
                })
                .collect();
            let o = &backend.options;
            let dial_settings = DialSettings {
                tls: o.tls == Some(true),
                tls_verify: o.tls_verify == Some(true),
                tls_ca: o.tls_ca.clone(),
                proxy_protocol: o.proxy_protocol,
            };
            let tls = if dial_settings.tls {
                Some(crate::tls::client_config(
                    dial_settings.tls_verify,
                    dial_settings.tls_ca.as_deref(),
                )?)
            } else {
                None
            };
            // A reload keeps the warm connections of a backend that stays and connects the
            // same way.
            let kept = old
                .backends
                .get(&backend.name)
                .filter(|b| b.dial_settings == dial_settings);
            let sticky = o.sticky_session.as_ref();
            let ttl = sticky.and_then(|s| s.ttl);
            routes.backends.insert(
                backend.name.clone(),
                Arc::new(BackendRoute {
                    name: backend.name.clone(),
                    balancer: Balancer::new(
                        backend.balancing_method,
                        servers,
                        Config::table_size(backend),
                    ),
                    dialer: Dialer {
                        connect_timeout: http.connect_timeout,
                        write_timeout: http.server_timeout,
                        proxy_protocol: o.proxy_protocol,
                        tls,
                    },
                    cookie: sticky
                        .filter(|s| s.kind == StickyKind::Cookie)
                        .map(|s| CookieConfig {
                            name: s
                                .cookie
                                .clone()
                                .unwrap_or_else(|| StickySession::DEFAULT_COOKIE.into()),
                            ttl,
                        }),
                    sticky_source: sticky.filter(|s| s.kind == StickyKind::SourceIp).map(|_| {
                        (
                            ttl.unwrap_or(StickySession::DEFAULT_TTL),
                            std::sync::Mutex::default(),
                        )
                    }),
                    forward_for: o.forward_for,
                    h1_pool: kept.map_or_else(
                        || {
                            Arc::new(Pool::new(
                                workers,
                                http.pool_idle_per_server,
                                http.pool_idle_timeout,
                            ))
                        },
                        |b| {
                            b.h1_pool
                                .set_limits(http.pool_idle_per_server, http.pool_idle_timeout);
                            b.h1_pool.clone()
                        },
                    ),
                    dial_settings,
                }),
            );
        }
        for f in &userspace {
            let https_port = f
                .binds
                .iter()
                .find(|b| b.ssl == Some(true))
                .map_or(443, |b| b.port);
            let alt_svc = f
                .binds
                .iter()
                .find(|b| b.use_http3 == Some(true))
                .and_then(|b| {
                    http::HeaderValue::from_str(&format!("h3=\":{}\"; ma=86400", b.port)).ok()
                });
            routes.frontends.insert(
                f.name.clone(),
                Arc::new(FrontendRoute {
                    alt_svc,
                    name: f.name.clone(),
                    default_backend: f.default_backend.clone(),
                    rules: f
                        .backends
                        .iter()
                        .filter_map(|r| {
                            let acl = f.acls.iter().find(|a| a.name == r.test)?;
                            Some((acl.criterion, acl.value.clone(), r.backend.clone()))
                        })
                        .collect(),
                    redirect_ssl: f.options.redirect_ssl == Some(true),
                    https_port,
                    forward_for: f.options.forward_for.unwrap_or(true),
                    trusted: f.options.trusted_proxies.clone(),
                    max_connections: f.options.max_connections,
                    // Connections already open still count after a reload.
                    open: old
                        .frontends
                        .get(&f.name)
                        .map_or_else(Arc::default, |o| o.open.clone()),
                    stats: old
                        .frontends
                        .get(&f.name)
                        .map_or_else(Arc::default, |o| o.stats.clone()),
                    log: f.options.log.unwrap_or_default(),
                }),
            );
        }
        Ok(routes)
    }
}
