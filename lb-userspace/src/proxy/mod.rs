//! The userspace proxy: http frontends (HTTP/1.1 and HTTP/2, TLS termination, ACL routing,
//! sticky cookies, X-Forwarded-*), and tcp frontends whose backend sends a PROXY header
//! (bytes XDP cannot insert into a stream). XDP passes these frontends' packets to the
//! kernel; the VIP must be an address of this host.
//!
//! `[http] workers` threads each run a runtime of their own. HTTP/1.x is relayed by `h1`,
//! HTTP/2 by hyper (`http`). `update` swaps in new routes (servers keep their open
//! connection counts) and opens or closes listeners to match the config.

pub mod balance;
pub mod h1;
pub mod http;
pub mod upstream;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, RwLock, atomic::AtomicU32},
    time::Duration,
};

use anyhow::{Context as _, Result};
use http::ConnInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::{debug, info, warn};

use crate::config::{Config, HttpConfig, Mode, cidr_contains, parse_cidr};
use balance::{Balancer, Method, ServerState};
use upstream::{Dialer, Pool, ProxyVersion};

/// The sticky cookie of a backend (HAProxy's `cookie NAME insert`).
#[derive(Debug)]
pub struct CookieConfig {
    pub name: String,
    pub ttl: Option<Duration>,
}

impl CookieConfig {
    /// Remove a same-named cookie the server set (insert mode owns that name) and set ours,
    /// unless the client already holds the right one and there is no TTL to refresh.
    pub fn insert(&self, headers: &mut ::http::HeaderMap, server: &str, already: bool) {
        let kept: Vec<::http::HeaderValue> = headers
            .get_all(::http::header::SET_COOKIE)
            .iter()
            .filter(|v| !http::sets_cookie(v.as_bytes(), &self.name))
            .cloned()
            .collect();
        headers.remove(::http::header::SET_COOKIE);
        for v in kept {
            headers.append(::http::header::SET_COOKIE, v);
        }
        if let Some(cookie) = self.set_cookie(server, already)
            && let Ok(v) = ::http::HeaderValue::from_str(&cookie)
        {
            headers.append(::http::header::SET_COOKIE, v);
        }
    }

    /// Our Set-Cookie value for `server`, unless the client already holds it and there is
    /// no TTL to refresh.
    pub fn set_cookie(&self, server: &str, already: bool) -> Option<String> {
        if already && self.ttl.is_none() {
            return None;
        }
        let mut cookie = format!("{}={server}; Path=/; HttpOnly", self.name);
        if let Some(ttl) = self.ttl {
            cookie += &format!("; Max-Age={}", ttl.as_secs());
        }
        Some(cookie)
    }
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
    /// Idle keep-alive connections to its servers: hyper's (HTTP/2 clients) and the
    /// HTTP/1 path's own.
    pub pool: Arc<Pool<upstream::Sender>>,
    pub h1_pool: Arc<Pool<upstream::Upstream>>,
    /// How its connections are made (TLS, verification, PROXY header): pools are kept
    /// across a reload only while this stays the same.
    pub dial_settings: String,
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
    pub rules: Vec<(String, String, String)>,
    pub redirect_ssl: bool,
    pub https_port: u16,
    pub forward_for: bool,
    pub trusted: Vec<(IpAddr, u8)>,
}

impl FrontendRoute {
    /// The backend for a request: the first rule whose ACL matches, else the default.
    pub fn route(&self, path: &str, host: Option<&str>) -> &str {
        for (criterion, value, backend) in &self.rules {
            let hit = match criterion.as_str() {
                "path_beg" => path.starts_with(value.as_str()),
                "hdr_host" => host.is_some_and(|h| h.eq_ignore_ascii_case(value)),
                _ => false,
            };
            if hit {
                return backend;
            }
        }
        &self.default_backend
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|&net| cidr_contains(net, ip))
    }
}

#[derive(Default)]
pub struct Routes {
    frontends: HashMap<String, Arc<FrontendRoute>>,
    backends: HashMap<String, Arc<BackendRoute>>,
}

/// State every connection task reads.
pub struct Shared {
    routes: RwLock<Arc<Routes>>,
    http: RwLock<Arc<HttpConfig>>,
}

impl Shared {
    pub fn backend(&self, name: &str) -> Option<Arc<BackendRoute>> {
        self.routes.read().unwrap().backends.get(name).cloned()
    }

    fn frontend(&self, name: &str) -> Option<Arc<FrontendRoute>> {
        self.routes.read().unwrap().frontends.get(name).cloned()
    }

    pub fn http(&self) -> Arc<HttpConfig> {
        self.http.read().unwrap().clone()
    }
}

/// What a listener serves; a change restarts it.
#[derive(Clone, Debug, PartialEq)]
struct ListenerSpec {
    frontend: String,
    http: bool,
    certificate: Option<String>,
}

/// One proxy thread with a runtime of its own. Each accepts on its own SO_REUSEPORT socket
/// of every bind, and a client connection, its upstream connections and their tasks stay
/// on that thread: no cross-thread wakeups per request (as HAProxy's and nginx's workers).
struct Worker {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub struct Proxy {
    workers: Vec<Worker>,
    shared: Arc<Shared>,
    listeners: HashMap<SocketAddr, (ListenerSpec, Vec<JoinHandle<()>>)>,
}

impl Proxy {
    pub fn new(workers: usize) -> Result<Proxy> {
        let mut started = Vec::new();
        for i in 0..workers.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = rt.handle().clone();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("proxy-{i}"))
                .spawn(move || {
                    upstream::WORKER.set(i);
                    rt.block_on(async {
                        let _ = stopped.await;
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
            shared: Arc::new(Shared {
                routes: RwLock::default(),
                http: RwLock::default(),
            }),
            listeners: HashMap::new(),
        })
    }

    /// Install `config`'s userspace frontends and their backends; `up(backend, address)`
    /// is a server's health.
    pub fn update(&mut self, config: &Config, up: &dyn Fn(&str, IpAddr) -> bool) -> Result<()> {
        let old = self.shared.routes.read().unwrap().clone();
        let http = Arc::new(config.http.clone());
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
            let port = backend.port.get().unwrap_or_default();
            let servers = backend
                .resolved_servers(&config.computers)
                .into_iter()
                .map(|s| {
                    let address = SocketAddr::new(s.address, port);
                    let active = old
                        .backends
                        .get(&backend.name)
                        .and_then(|b| b.balancer.servers.iter().find(|o| o.address == address))
                        .map_or_else(|| Arc::new(AtomicU32::new(0)), |o| o.active.clone());
                    Arc::new(ServerState::new(
                        &backend.name,
                        address,
                        s.weight,
                        s.max_conn,
                        up(&backend.name, s.address),
                        active,
                    ))
                })
                .collect();
            let o = &backend.options;
            let tls = if o.tls == Some(true) {
                Some(upstream::client_config(
                    o.tls_verify == Some(true),
                    o.tls_ca.as_deref(),
                )?)
            } else {
                None
            };
            let sticky = o.sticky_session.as_ref();
            let dial_settings = format!(
                "{:?} {:?} {:?} {:?}",
                o.tls, o.tls_verify, o.tls_ca, o.proxy_protocol
            );
            // A reload keeps the warm connections of a backend that stays and connects the
            // same way.
            let kept = old
                .backends
                .get(&backend.name)
                .filter(|b| b.dial_settings == dial_settings);
            let ttl = sticky
                .and_then(|s| s.ttl.as_deref())
                .and_then(crate::config::duration);
            routes.backends.insert(
                backend.name.clone(),
                Arc::new(BackendRoute {
                    name: backend.name.clone(),
                    balancer: Balancer::new(
                        Method::parse(&backend.balancing_method),
                        servers,
                        Config::table_size(backend),
                    ),
                    dialer: Dialer {
                        connect_timeout: http.connect_timeout(),
                        proxy_protocol: match o.proxy_protocol.as_deref() {
                            Some("v1") => Some(ProxyVersion::V1),
                            Some("v2") => Some(ProxyVersion::V2),
                            _ => None,
                        },
                        tls,
                    },
                    cookie: sticky.filter(|s| s.kind == "cookie").map(|s| CookieConfig {
                        name: s.cookie.clone().unwrap_or_else(|| "SERVERID".into()),
                        ttl,
                    }),
                    sticky_source: sticky.filter(|s| s.kind == "source_ip").map(|_| {
                        (
                            ttl.unwrap_or(Duration::from_secs(300)),
                            std::sync::Mutex::default(),
                        )
                    }),
                    forward_for: o.forward_for,
                    pool: kept.map_or_else(
                        || Arc::new(Pool::new(self.workers.len(), http.pool_idle_per_server)),
                        |b| b.pool.clone(),
                    ),
                    h1_pool: kept.map_or_else(
                        || Arc::new(Pool::new(self.workers.len(), http.pool_idle_per_server)),
                        |b| b.h1_pool.clone(),
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
            routes.frontends.insert(
                f.name.clone(),
                Arc::new(FrontendRoute {
                    name: f.name.clone(),
                    default_backend: f.default_backend.clone(),
                    rules: f
                        .backends
                        .iter()
                        .filter_map(|r| {
                            let acl = f.acls.iter().find(|a| a.name == r.test)?;
                            Some((acl.criterion.clone(), acl.value.clone(), r.backend.clone()))
                        })
                        .collect(),
                    redirect_ssl: f.options.redirect_ssl == Some(true),
                    https_port,
                    forward_for: f.options.forward_for.unwrap_or(true),
                    trusted: f
                        .options
                        .trusted_proxies
                        .iter()
                        .filter_map(|c| parse_cidr(c))
                        .collect(),
                }),
            );
        }
        *self.shared.routes.write().unwrap() = Arc::new(routes);
        *self.shared.http.write().unwrap() = http;

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
            info!(%addr, frontend = %spec.frontend, http = spec.http, tls = spec.certificate.is_some(), workers = tasks.len(), "proxy listening");
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

    fn listen(&self, addr: SocketAddr, spec: &ListenerSpec) -> Result<Vec<JoinHandle<()>>> {
        let tls = spec.certificate.as_deref().map(tls_acceptor).transpose()?;
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
        Ok(tasks)
    }
}

async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
    frontend: String,
    http: bool,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(%addr, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(addr);
        let conn = ConnInfo {
            client,
            local,
            tls: tls.is_some(),
        };
        let (shared, frontend, tls) = (shared.clone(), frontend.clone(), tls.clone());
        tokio::spawn(async move {
            if http {
                serve_http(shared, frontend, conn, stream, tls).await;
            } else {
                serve_stream(shared, frontend, conn, stream).await;
            }
        });
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

fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    // One socket per worker; the kernel spreads connections over them.
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into()).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrNotAvailable {
            format!(
                "; the userspace proxy needs the VIP on this host: `ip addr add {}/{} dev lo`",
                addr.ip(),
                if addr.is_ipv4() { 32 } else { 128 }
            )
        } else {
            String::new()
        };
        anyhow::anyhow!("proxy: cannot listen on {addr}: {e}{hint}")
    })?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// TLS termination from a PEM file holding the certificate chain and its private key.
fn tls_acceptor(path: &str) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("ssl_certificate {path:?}"))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("ssl_certificate {path:?}: bad certificate"))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "ssl_certificate {path:?} holds no certificate"
    );
    let key = PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("ssl_certificate {path:?}: no private key in the file"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| format!("ssl_certificate {path:?}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn serve_http(
    shared: Arc<Shared>,
    frontend: String,
    conn: ConnInfo,
    stream: tokio::net::TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let http = shared.http();
    let Some(acceptor) = tls else {
        // Plain: HTTP/1.x unless the first bytes are the HTTP/2 preface (h2c).
        let mut stream = stream;
        let mut first = bytes::BytesMut::with_capacity(16 * 1024);
        let deadline = tokio::time::Instant::now() + http.request_timeout();
        while first.len() < h1::H2_PREFACE.len() && h1::may_be_h2_preface(&first) {
            use tokio::io::AsyncReadExt as _;
            match tokio::time::timeout_at(deadline, stream.read_buf(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        }
        if first.starts_with(h1::H2_PREFACE) {
            let io = h1::Prefixed {
                prefix: first,
                inner: stream,
            };
            return serve_hyper(shared, frontend, conn, io).await;
        }
        return h1::serve(shared, frontend, conn, stream, first).await;
    };
    match tokio::time::timeout(http.request_timeout(), acceptor.accept(stream)).await {
        Ok(Ok(s)) if s.get_ref().1.alpn_protocol() == Some(b"h2") => {
            serve_hyper(shared, frontend, conn, s).await
        }
        Ok(Ok(s)) => h1::serve(shared, frontend, conn, s, bytes::BytesMut::new()).await,
        Ok(Err(e)) => debug!(client = %conn.client, error = %e, "TLS handshake failed"),
        Err(_) => {}
    }
}

/// A connection served by hyper (HTTP/2, with HTTP/1 should it come to that).
async fn serve_hyper<I>(shared: Arc<Shared>, frontend: String, conn: ConnInfo, io: I)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let http = shared.http();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(http.request_timeout())
        .max_buf_size(http.max_header_bytes.max(8192))
        .max_headers(http.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(http.max_header_bytes as u32);
    let private = Arc::new(Pool::new(1, 4));
    let service = hyper::service::service_fn(move |req| {
        let (shared, private) = (shared.clone(), private.clone());
        let frontend = shared.frontend(&frontend);
        async move {
            Ok::<_, std::convert::Infallible>(match frontend {
                Some(f) => http::handle(shared, f, conn, private, req).await,
                None => http::error(
                    ::http::StatusCode::SERVICE_UNAVAILABLE,
                    "frontend removed",
                    true,
                ),
            })
        }
    });
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .await
    {
        debug!(client = %conn.client, error = %e, "client connection ended");
    }
}

/// A tcp frontend served in userspace: pick a server, connect (PROXY header first), splice.
async fn serve_stream(
    shared: Arc<Shared>,
    frontend: String,
    conn: ConnInfo,
    mut stream: tokio::net::TcpStream,
) {
    let Some(route) = shared.frontend(&frontend) else {
        return;
    };
    let Some(backend) = shared.backend(&route.default_backend) else {
        return;
    };
    let client_ip = conn.client.ip();
    let sticky = backend.sticky_source(client_ip);
    let mut tried = Vec::new();
    for attempt in 0..backend.balancer.servers.len().clamp(1, 3) {
        let chosen = match (attempt, sticky) {
            (0, Some(i)) => Some(i),
            _ => backend.balancer.pick(client_ip, &tried),
        };
        let Some(index) = chosen else { break };
        tried.push(index);
        let server = backend.balancer.servers[index].clone();
        let _guard = server.open();
        match backend
            .dialer
            .connect(server.address, conn.client, conn.local)
            .await
        {
            Ok(mut upstream) => {
                backend.remember_source(client_ip, index);
                let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
                return;
            }
            Err(e) => {
                warn!(backend = %backend.name, server = %server.address, error = %e, "server unreachable; trying another");
            }
        }
    }
    debug!(client = %conn.client, backend = %backend.name, "no server reachable; closing");
}
