//! Server selection in the userspace proxy, with the XDP path's semantics: weights 0..100
//! (0 takes nothing new), `max_conn`, health, and roundrobin, leastconn, first and source.

use std::{
    hash::{Hash as _, Hasher as _},
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicUsize, Ordering},
    },
};

use lb_common::maglev::{MaglevServer, build_table};

use crate::config::Method;

/// One server as the proxy sees it. `active` survives config updates (the `Arc` is kept for
/// servers that stay), so leastconn and max_conn see connections opened before a reload.
#[derive(Debug)]
pub struct ServerState {
    pub address: SocketAddr,
    /// Opaque id of the server in a sticky cookie: it does not reveal the address.
    pub cookie: String,
    pub weight: u32,
    pub max_conn: u32,
    pub up: bool,
    pub active: Arc<AtomicU32>,
    /// What it served through the proxy (kept across reloads, as `active`).
    pub stats: Arc<super::observe::ServerStats>,
    /// Bumped when its flows are reset: the tunnels open to it end (kept across reloads).
    pub cut: Arc<tokio::sync::watch::Sender<u64>>,
}

impl ServerState {
    pub fn new(
        backend: &str,
        address: SocketAddr,
        weight: u32,
        max_conn: u32,
        up: bool,
        active: Arc<AtomicU32>,
    ) -> Self {
        // SipHash with fixed keys: the same server gets the same cookie across restarts.
        let mut h = std::hash::DefaultHasher::new();
        (backend, address).hash(&mut h);
        ServerState {
            address,
            cookie: format!("{:016x}", h.finish()),
            weight,
            max_conn,
            up,
            active,
            stats: Arc::default(),
            cut: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    /// Resolves when this server's flows are reset after this call ([`Self::cut_all`]).
    pub fn cut_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut cut = self.cut.subscribe();
        async move {
            if cut.changed().await.is_err() {
                // Nothing can cut it any more.
                std::future::pending::<()>().await;
            }
        }
    }

    /// End the tunnels open to this server (tcp through the proxy, upgraded connections),
    /// as XDP resets its flows: a drain that timed out, or down with `on_down = "reset"`.
    pub fn cut_all(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// Takes new connections: healthy, weight above 0, below max_conn.
    pub fn usable(&self) -> bool {
        self.up
            && self.weight > 0
            && (self.max_conn == 0 || self.active.load(Ordering::Relaxed) < self.max_conn)
    }

    /// Count an open connection until the guard drops.
    pub fn open(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }
}

/// One open connection (or request) on a server.
#[derive(Debug)]
pub struct ActiveGuard(pub Arc<ServerState>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The servers of one backend and the selection state.
#[derive(Debug)]
pub struct Balancer {
    pub method: Method,
    pub servers: Vec<Arc<ServerState>>,
    /// Smooth weighted round robin (as nginx): current weight per server.
    current: Mutex<Vec<i64>>,
    /// Rotates leastconn ties.
    cursor: AtomicUsize,
    /// source: weighted Maglev table of server indexes, over usable servers.
    table: Vec<u32>,
}

impl Balancer {
    pub fn new(method: Method, servers: Vec<Arc<ServerState>>, table_size: u32) -> Balancer {
        // Through the proxy, maglev is the source hash: its 5-tuple differs per connection.
        let table = if method.uses_maglev() {
            let members: Vec<MaglevServer> = servers
                .iter()
                .enumerate()
                .filter(|(_, s)| s.up && s.weight > 0)
                .map(|(i, s)| MaglevServer {
                    id: i as u32,
                    identity: s.address.to_string().into_bytes(),
                    weight: s.weight,
                })
                .collect();
            if members.is_empty() {
                Vec::new()
            } else {
                build_table(&members, table_size)
            }
        } else {
            Vec::new()
        };
        Balancer {
            method,
            current: Mutex::new(vec![0; servers.len()]),
            servers,
            cursor: AtomicUsize::new(0),
            table,
        }
    }

    /// Pick a usable server not in `exclude` (servers already tried for this request).
    pub fn pick(&self, client: IpAddr, exclude: &[usize]) -> Option<usize> {
        let ok = |i: usize| !exclude.contains(&i) && self.servers[i].usable();
        match self.method {
            Method::First => (0..self.servers.len()).find(|&i| ok(i)),
            Method::Leastconn => {
                let n = self.servers.len();
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                let mut best: Option<usize> = None;
                for k in 0..n {
                    let i = (start + k) % n;
                    if !ok(i) {
                        continue;
                    }
                    // active / weight, compared without division.
                    let load = |j: usize| u64::from(self.servers[j].active.load(Ordering::Relaxed));
                    best = match best {
                        Some(b)
                            if load(b) * u64::from(self.servers[i].weight)
                                <= load(i) * u64::from(self.servers[b].weight) =>
                        {
                            Some(b)
                        }
                        _ => Some(i),
                    };
                }
                best
            }
            Method::Source | Method::Maglev if !self.table.is_empty() => {
                let mut h = std::hash::DefaultHasher::new();
                client.to_canonical().hash(&mut h);
                let i = self.table[(h.finish() % self.table.len() as u64) as usize] as usize;
                if ok(i) {
                    Some(i)
                } else {
                    // The hashed server is full or already failed: weighted round robin
                    // among the rest, as a retry would in the XDP path's next packet.
                    self.round_robin(&ok)
                }
            }
            Method::Source | Method::Maglev | Method::Roundrobin => self.round_robin(&ok),
        }
    }

    fn round_robin(&self, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        let mut current = self.current.lock().unwrap();
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, server) in self.servers.iter().enumerate() {
            if !ok(i) {
                continue;
            }
            let w = i64::from(server.weight);
            current[i] += w;
            total += w;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            current[b] -= total;
        }
        best
    }

    pub fn by_cookie(&self, value: &str) -> Option<usize> {
        self.servers.iter().position(|s| s.cookie == value && s.up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balancer(method: Method, weights: &[u32], max_conn: u32) -> Balancer {
        let servers = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                Arc::new(ServerState::new(
                    "b",
                    SocketAddr::from(([198, 18, 11, i as u8 + 2], 80)),
                    w,
                    max_conn,
                    true,
                    Arc::default(),
                ))
            })
            .collect();
        Balancer::new(method, servers, 251)
    }

    fn shares(b: &Balancer, picks: usize, client: impl Fn(usize) -> IpAddr) -> Vec<usize> {
        let mut counts = vec![0; b.servers.len()];
        for n in 0..picks {
            counts[b.pick(client(n), &[]).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_follows_weights_exactly() {
        let b = balancer(Method::Roundrobin, &[1, 1, 2, 0], 0);
        let client = |_| IpAddr::from([198, 18, 0, 2]);
        assert_eq!(shares(&b, 400, client), vec![100, 100, 200, 0]);
    }

    #[test]
    fn first_fills_to_max_conn_then_moves_on() {
        let b = balancer(Method::First, &[1, 1], 2);
        let c = IpAddr::from([198, 18, 0, 2]);
        let g: Vec<_> = (0..3)
            .map(|_| b.servers[b.pick(c, &[]).unwrap()].open())
            .collect();
        assert_eq!(
            g.iter()
                .filter(|g| g.0.address == b.servers[0].address)
                .count(),
            2
        );
        assert_eq!(g[2].0.address, b.servers[1].address);
        let _more = (b.servers[b.pick(c, &[]).unwrap()]).open();
        assert_eq!(b.pick(c, &[]), None, "all full");
        drop(g);
        assert_eq!(b.pick(c, &[]), Some(0));
    }

    #[test]
    fn leastconn_prefers_lowest_load_per_weight() {
        let b = balancer(Method::Leastconn, &[1, 2], 0);
        let c = IpAddr::from([198, 18, 0, 2]);
        let mut guards = Vec::new();
        for _ in 0..30 {
            let i = b.pick(c, &[]).unwrap();
            guards.push(b.servers[i].open());
        }
        let on_second = guards
            .iter()
            .filter(|g| g.0.address == b.servers[1].address)
            .count();
        assert_eq!(on_second, 20, "weight 2 carries twice the connections");
    }

    #[test]
    fn source_keeps_a_client_on_one_server_and_spreads_clients() {
        let b = balancer(Method::Source, &[1, 1, 1], 0);
        for n in 0..50u8 {
            let c = IpAddr::from([198, 18, 1, n]);
            let first = b.pick(c, &[]);
            assert!((0..5).all(|_| b.pick(c, &[]) == first));
        }
        let counts = shares(&b, 300, |n| {
            IpAddr::from([198, 18, (n / 250) as u8, n as u8])
        });
        assert!(counts.iter().all(|&c| c > 60), "{counts:?}");
    }

    #[test]
    fn excluded_and_down_servers_are_skipped() {
        let mut b = balancer(Method::Roundrobin, &[1, 1, 1], 0);
        let c = IpAddr::from([198, 18, 0, 2]);
        for _ in 0..10 {
            assert_ne!(b.pick(c, &[0]), Some(0));
        }
        let s = &b.servers[1];
        b.servers[1] = Arc::new(ServerState {
            up: false,
            cookie: s.cookie.clone(),
            active: s.active.clone(),
            stats: s.stats.clone(),
            cut: s.cut.clone(),
            ..**s
        });
        for _ in 0..10 {
            assert_eq!(b.pick(c, &[0]), Some(2));
        }
        assert_eq!(b.by_cookie(&b.servers[1].cookie.clone()), None, "down");
        assert_eq!(b.by_cookie(&b.servers[2].cookie.clone()), Some(2));
        assert_eq!(b.by_cookie("forged"), None);
    }
}
