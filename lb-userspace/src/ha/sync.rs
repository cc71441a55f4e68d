//! The flow sync between the two nodes of a pair, on threads of its own (every step is a
//! blocking map syscall or socket write). Each node streams its flows to the peer over a
//! session it dials (`send`) and applies what the peer streams over the session the peer
//! dialed (`receive`): two one-way sessions, so neither side waits on the other and a
//! restarted node gets a bulk transfer the moment it listens. A session starts with every
//! entry (the bulk), then every `sync_interval` sends what a scan finds changed. Writes
//! block on a full socket, so what is buffered is bounded by the socket and one message; a
//! peer that stops reading for `SESSION_TIMEOUT` ends the session, and the next one starts
//! with a bulk again.

use std::{
    collections::HashSet,
    io::{BufReader, BufWriter, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use lb_common::{flow::Timeouts, maps::NatEntry};
use tracing::{debug, error, info, warn};

use super::{
    role::Role,
    table::{IdMap, Shadow, age_ms},
    wire::{
        FLOWS_PER_MESSAGE, FrameError, FrameReader, FrameWriter, Message, Secret, WireFlow,
        WireNames, WireSticky, greet, read_greeting,
    },
};
use crate::dataplane::{FlowTables, Names, monotonic_now_ns};

/// A session that carries nothing (not even a heartbeat) for this long is dead.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(3);
/// A sender reports its role this often (and a silent session is a dead one).
const HEARTBEAT: Duration = Duration::from_millis(250);
/// A node that can reach no peer this long after it started serves without a bulk sync:
/// there is nobody to sync from.
pub const STARTUP_WAIT: Duration = Duration::from_secs(5);

/// What the sync shares with the daemon: its counters, the role keepalived gave this node,
/// and the local names.
pub struct Shared {
    pub stats: Stats,
    role: AtomicU8,
    peer_role: AtomicU8,
    names: Mutex<(u64, Names)>,
    shadow: Mutex<Shadow>,
    started: Instant,
    /// Whether this node has completed a bulk sync from the peer, or found none to reach.
    synced: AtomicBool,
    /// Whether both nodes are master (reported once per episode).
    split_brain: AtomicBool,
    /// Set by [`Shared::stop`]: the sender ends its session, so the peer's receiver does.
    stopped: AtomicBool,
    /// This node was master while neither session to the peer was up.
    mastered_apart: AtomicBool,
    /// The listener's address, for `stop` to wake it.
    listen: std::sync::OnceLock<SocketAddr>,
    /// Set when the listener's thread has ended and its socket is closed.
    listener_closed: (Mutex<bool>, std::sync::Condvar),
}

#[derive(Default)]
pub struct Stats {
    pub flows_sent: AtomicU64,
    pub flows_received: AtomicU64,
    pub sticky_sent: AtomicU64,
    pub sticky_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    /// Sessions that failed (connection, authentication, malformed frames).
    pub errors: AtomicU64,
    /// Entries that named a frontend, backend or server this node does not have.
    pub unmapped: AtomicU64,
    pub split_brains: AtomicU64,
    /// Times this node became master.
    pub failovers: AtomicU64,
    pub sending: AtomicBool,
    pub receiving: AtomicBool,
    /// Bulk transfers completed from the peer.
    pub bulks_received: AtomicU64,
    /// Entries the last scan found changed (what the peer lacked when it began).
    pub lag_entries: AtomicU64,
    /// Monotonic ns when the last completed scan began: the peer holds everything as of
    /// then. 0 before the first.
    pub synced_as_of_ns: AtomicU64,
}

fn role_code(r: Role) -> u8 {
    r as u8
}

fn role_from(code: u8) -> Role {
    [Role::Starting, Role::Backup, Role::Master, Role::Fault]
        .get(usize::from(code))
        .copied()
        .unwrap_or(Role::Starting)
}

impl Shared {
    pub fn new(names: Names) -> Arc<Shared> {
        Arc::new(Shared {
            stats: Stats::default(),
            role: AtomicU8::new(role_code(Role::Starting)),
            peer_role: AtomicU8::new(role_code(Role::Starting)),
            names: Mutex::new((1, names)),
            shadow: Mutex::new(Shadow::default()),
            started: Instant::now(),
            synced: AtomicBool::new(false),
            split_brain: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            mastered_apart: AtomicBool::new(false),
            listen: std::sync::OnceLock::new(),
            listener_closed: Default::default(),
        })
    }

    pub fn role(&self) -> Role {
        role_from(self.role.load(Relaxed))
    }

    pub fn peer_role(&self) -> Role {
        role_from(self.peer_role.load(Relaxed))
    }

    /// keepalived moved this node to `role`.
    pub fn set_role(&self, role: Role) {
        let old = role_from(self.role.swap(role_code(role), Relaxed));
        if role == Role::Master && old != Role::Master {
            self.stats.failovers.fetch_add(1, Relaxed);
            if self.apart() {
                self.mastered_apart.store(true, Relaxed);
            }
        }
        if old != role {
            info!(from = old.as_str(), to = role.as_str(), "ha role changed");
        }
        if role != Role::Master {
            self.check_split_brain();
        }
    }

    /// Neither session to the peer is up.
    fn apart(&self) -> bool {
        !self.stats.sending.load(Relaxed) && !self.stats.receiving.load(Relaxed)
    }

    /// A session ended: a master that is now apart from its peer remembers it.
    fn session_ended(&self) {
        if self.apart() && self.role() == Role::Master {
            self.mastered_apart.store(true, Relaxed);
        }
    }

    /// The peer's session began: both having been master while apart was a split brain
    /// (keepalived may have ended it already), found now that they talk again.
    fn peer_back(&self, peer_mastered_apart: bool) {
        if self.mastered_apart.swap(false, Relaxed) && peer_mastered_apart {
            self.stats.split_brains.fetch_add(1, Relaxed);
            error!(
                "split brain: this node and its peer were both master while they could not reach each other; the bulk syncs merge both sides' flows"
            );
        }
    }

    /// The peer said it is `role` (now: the report is fresh).
    fn set_peer_role(&self, role: Role) {
        self.peer_role.store(role_code(role), Relaxed);
        self.check_split_brain();
    }

    /// Both nodes master: judged when the peer reports, so a report older than this node's
    /// own promotion (a master that just died) never counts.
    fn check_split_brain(&self) {
        let both = self.role() == Role::Master && self.peer_role() == Role::Master;
        if both && !self.split_brain.swap(true, Relaxed) {
            self.stats.split_brains.fetch_add(1, Relaxed);
            error!(
                "split brain: this node and its peer are both master (the VRRP link is cut?); both keep every flow, and the sync merges them when the peer is reachable again"
            );
        } else if !both && self.split_brain.swap(false, Relaxed) {
            info!("split brain over: one master again");
        }
    }

    /// End the sync: the sender ends its session (so the peer's receiver does) and the
    /// listener closes.
    pub fn stop(&self) {
        self.stopped.store(true, Relaxed);
        if let Some(listen) = self.listen.get() {
            // Wakes the listener, which then sees `stopped`.
            let _ = TcpStream::connect_timeout(listen, Duration::from_secs(1));
        }
    }

    /// Wait, at most `timeout`, until the listener has closed its socket after [`Self::stop`]:
    /// it ends once the session it is receiving ends, which the peer's `stop` ends. Whether
    /// it closed; the address can then be bound again (the bench's successive pairs).
    pub fn wait_listener_closed(&self, timeout: Duration) -> bool {
        let (closed, changed) = &self.listener_closed;
        let guard = closed.lock().expect("listener lock");
        let (guard, _) = changed
            .wait_timeout_while(guard, timeout, |closed| !*closed)
            .expect("listener lock");
        *guard
    }

    pub fn split_brain(&self) -> bool {
        self.split_brain.load(Relaxed)
    }

    /// The config changed: the ids the peer must know.
    pub fn set_names(&self, names: Names) {
        let mut current = self.names.lock().expect("names lock");
        if current.1 != names {
            *current = (current.0 + 1, names);
        }
    }

    fn names(&self) -> (u64, Names) {
        self.names.lock().expect("names lock").clone()
    }

    /// Whether this node may serve: it completed a bulk sync from the peer since the peer's
    /// session last began, or no peer is reachable (and [`STARTUP_WAIT`] has passed since
    /// this node started): then there is nothing to sync from, and a backup whose master
    /// died takes over. Until then keepalived holds it in FAULT, so it never takes the
    /// addresses from a master with more flows than it has.
    pub fn synced(&self) -> bool {
        if self.synced.load(Relaxed) {
            return true;
        }
        let reachable = self.stats.sending.load(Relaxed) || self.stats.receiving.load(Relaxed);
        if !reachable && self.started.elapsed() >= STARTUP_WAIT {
            info!("no peer reachable since start: serving without a bulk sync");
            self.synced.store(true, Relaxed);
        }
        self.synced.load(Relaxed)
    }

    /// Seconds the peer's view may be behind this node's.
    pub fn lag_seconds(&self) -> f64 {
        match self.stats.synced_as_of_ns.load(Relaxed) {
            0 => f64::NAN,
            t => monotonic_now_ns().saturating_sub(t) as f64 / 1e9,
        }
    }
}

/// How the sessions run.
#[derive(Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub peer: SocketAddr,
    pub secret: Secret,
    pub interval: Duration,
    pub timeouts: Timeouts,
}

/// Start the listener and the sender; they run until the process exits.
pub fn start(
    settings: Settings,
    tables: impl Fn() -> Result<FlowTables> + Send + Sync + 'static,
    shared: Arc<Shared>,
) -> Result<()> {
    let listener = TcpListener::bind(settings.listen)
        .with_context(|| format!("listening for the HA peer on {}", settings.listen))?;
    let _ = shared.listen.set(listener.local_addr()?);
    let tables = Arc::new(tables);
    {
        let (settings, tables, shared) = (settings.clone(), tables.clone(), shared.clone());
        std::thread::Builder::new()
            .name("ha-listen".into())
            .spawn(move || {
                accept(listener, &settings, &*tables, &shared);
                let (closed, changed) = &shared.listener_closed;
                *closed.lock().expect("listener lock") = true;
                changed.notify_all();
            })?;
    }
    std::thread::Builder::new()
        .name("ha-send".into())
        .spawn(move || {
            let mut backoff = Duration::from_millis(100);
            let mut warned = false;
            while !shared.stopped.load(Relaxed) {
                let result = connect(&settings)
                    .context("connecting")
                    .and_then(|stream| {
                        backoff = Duration::from_millis(100);
                        warned = false;
                        send(stream, &settings, &*tables, &shared)
                    });
                shared.stats.sending.store(false, Relaxed);
                shared.session_ended();
                match result {
                    // Said once per outage; the retries are quiet.
                    Err(e) if !warned => {
                        warn!(peer = %settings.peer, error = %format!("{e:#}"), "ha sync to the peer stopped; retrying");
                        warned = true;
                        shared.stats.errors.fetch_add(1, Relaxed);
                    }
                    Err(e) => debug!(error = %format!("{e:#}"), "ha sync: retrying"),
                    Ok(()) => {}
                }
                // Retrying a dead peer, not waiting on a condition.
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(250));
            }
        })?;
    Ok(())
}

/// Dial the peer from the listen address, which is what the peer accepts sessions from.
fn connect(settings: &Settings) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(settings.peer), Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(settings.listen.ip(), 0).into())?;
    // A peer that stops acknowledging (a cut link) ends the session within the timeout,
    // even though the heartbeats it is sent still fit in the socket's buffer.
    socket.set_tcp_user_timeout(Some(SESSION_TIMEOUT))?;
    socket.connect_timeout(&settings.peer.into(), SESSION_TIMEOUT)?;
    Ok(socket.into())
}

fn accept(
    listener: TcpListener,
    settings: &Settings,
    tables: &(impl Fn() -> Result<FlowTables> + Send + Sync),
    shared: &Arc<Shared>,
) {
    for stream in listener.incoming() {
        if shared.stopped.load(Relaxed) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let from = stream.peer_addr().map(|a| a.ip()).ok();
        if from != Some(settings.peer.ip()) {
            crate::warn_limited!(from = ?from, "ha sync connection from an address other than the peer's: refused");
            shared.stats.errors.fetch_add(1, Relaxed);
            continue;
        }
        shared.stats.receiving.store(true, Relaxed);
        if let Err(e) = receive(stream, settings, tables, shared) {
            let quiet = matches!(e.downcast_ref::<FrameError>(), Some(FrameError::Io(_)));
            if quiet {
                info!(error = %format!("{e:#}"), "ha sync from the peer ended");
            } else {
                error!(error = %format!("{e:#}"), "ha sync from the peer refused");
            }
            shared.stats.errors.fetch_add(1, Relaxed);
        }
        shared.stats.receiving.store(false, Relaxed);
        shared.session_ended();
        shared.set_peer_role(Role::Starting);
    }
}

/// Both ends of a session: a silent peer ends it, small frames go at once; returns a second
/// handle for the greeting.
fn session_socket(stream: &TcpStream) -> std::io::Result<TcpStream> {
    stream.set_read_timeout(Some(SESSION_TIMEOUT))?;
    stream.set_write_timeout(Some(SESSION_TIMEOUT))?;
    stream.set_nodelay(true)?;
    stream.try_clone()
}

/// Apply one session from the peer.
fn receive(
    stream: TcpStream,
    settings: &Settings,
    tables: &(impl Fn() -> Result<FlowTables> + Send + Sync),
    shared: &Shared,
) -> Result<()> {
    let mut writer = session_socket(&stream)?;
    let nonce = greet(&mut writer)?;
    let mut input = BufReader::with_capacity(1 << 16, stream);
    let mut reader = FrameReader::new(settings.secret.clone(), nonce);
    let tables = tables()?;
    let stats = &shared.stats;
    let mut ids: Option<IdMap> = None;
    let mut peer_names: Option<WireNames> = None;
    let mut names_version = 0;
    let (mut keys, mut entries) = (Vec::new(), Vec::new());
    loop {
        let (message, size) = reader.next(&mut input)?;
        stats.bytes_received.fetch_add(size as u64, Relaxed);
        if let Message::Names(peer) = &message {
            peer_names = Some(peer.clone());
            names_version = 0;
        }
        // The local names changed (a reload): map again with the peer's last names.
        if let Some(peer) = &peer_names {
            let (version, local) = shared.names();
            if version != names_version {
                names_version = version;
                ids = Some(IdMap::new(peer, &local));
            }
        }
        match message {
            Message::Hello {
                role,
                mastered_apart,
            } => {
                shared.peer_back(mastered_apart);
                shared.set_peer_role(role);
                // The peer is back (it restarted, or a link came back): what it did since
                // arrives with its bulk; until then this node must not take the addresses.
                // A master keeps them (a split brain resolves without an outage).
                if shared.role() != Role::Master && shared.synced.swap(false, Relaxed) {
                    info!(
                        "ha: the peer is back; holding this node in FAULT until its bulk sync is in"
                    );
                }
            }
            Message::Heartbeat { role } => shared.set_peer_role(role),
            Message::Names(_) => {}
            Message::Flows(flows) => {
                let ids = ids.as_ref().context("flows before names")?;
                let now = monotonic_now_ns();
                keys.clear();
                entries.clear();
                let mut shadow = shared.shadow.lock().expect("shadow lock");
                for f in &flows {
                    let Some(entry) = ids.flow(f, now) else {
                        stats.unmapped.fetch_add(1, Relaxed);
                        continue;
                    };
                    // Fresher wins: both nodes may have served the flow (split brain, a
                    // failback); the one that saw its last packet later holds it as it is.
                    // Recorded as the peer holds it, so this node's scan sends its own back
                    // when it is the fresher one.
                    shadow.flow_known(&f.key, &entry, &settings.timeouts);
                    if tables.flow(&f.key).is_some_and(|l| {
                        l.last_seen_ns > entry.last_seen_ns && !same_flow(&l, &entry)
                    }) {
                        continue;
                    }
                    keys.push(f.key);
                    entries.push(entry);
                }
                drop(shadow);
                tables.write_flows(&keys, &entries)?;
                stats.flows_received.fetch_add(flows.len() as u64, Relaxed);
            }
            Message::Sticky(list) => {
                let ids = ids.as_ref().context("stickiness before names")?;
                let now = monotonic_now_ns();
                let (mut k, mut v) = (Vec::new(), Vec::new());
                let mut shadow = shared.shadow.lock().expect("shadow lock");
                for s in &list {
                    let Some((key, entry)) = ids.sticky(s, now) else {
                        stats.unmapped.fetch_add(1, Relaxed);
                        continue;
                    };
                    shadow.sticky_known(&key, &entry);
                    if tables
                        .sticky(&key)
                        .is_some_and(|l| l.last_seen_ns > entry.last_seen_ns)
                    {
                        continue;
                    }
                    k.push(key);
                    v.push(entry);
                }
                drop(shadow);
                tables.write_sticky(&k, &v)?;
                stats.sticky_received.fetch_add(list.len() as u64, Relaxed);
            }
            Message::BulkDone { flows, sticky } => {
                stats.bulks_received.fetch_add(1, Relaxed);
                if !shared.synced.swap(true, Relaxed) {
                    info!(
                        flows,
                        sticky, "bulk sync from the peer complete: this node may take over"
                    );
                } else {
                    info!(flows, sticky, "bulk sync from the peer complete");
                }
            }
        }
    }
}

/// The same flow on both sides (the digest's fields): nothing to choose between.
fn same_flow(a: &NatEntry, b: &NatEntry) -> bool {
    (a.server_id, a.state, a.flags, a.src, a.sport)
        == (b.server_id, b.state, b.flags, b.src, b.sport)
}

/// One session to the peer: greeting, hello, names, the bulk, then changes.
fn send(
    stream: TcpStream,
    settings: &Settings,
    tables: &(impl Fn() -> Result<FlowTables> + Send + Sync),
    shared: &Shared,
) -> Result<()> {
    let mut greeting = session_socket(&stream)?;
    let nonce = read_greeting(&mut greeting)?;
    let mut out = BufWriter::with_capacity(1 << 18, stream);
    let mut writer = FrameWriter::new(settings.secret.clone(), nonce);
    let mut tables = tables()?;
    let stats = &shared.stats;
    let mut sent = |out: &mut BufWriter<TcpStream>, m: &Message| -> Result<()> {
        let size = writer.send(out, m)?;
        stats.bytes_sent.fetch_add(size as u64, Relaxed);
        Ok(())
    };
    sent(
        &mut out,
        &Message::Hello {
            role: shared.role(),
            mastered_apart: shared.mastered_apart.load(Relaxed),
        },
    )?;
    stats.sending.store(true, Relaxed);
    // A new session: the peer may know nothing.
    *shared.shadow.lock().expect("shadow lock") = Shadow::default();
    let mut names_version = 0;
    let mut bulk = true;
    let (mut scans, mut tracked) = (0u64, (0, 0));
    let mut last_heartbeat = Instant::now();
    loop {
        let began = Instant::now();
        let began_ns = monotonic_now_ns();
        let (version, names) = shared.names();
        if version != names_version {
            sent(&mut out, &Message::Names(wire_names(&names)))?;
            names_version = version;
        }
        // A backup's tables change only by what the peer sends (known, never sent back),
        // so it scans a tenth as often: for flows it took while it was master.
        let quiet = matches!(shared.role(), Role::Backup | Role::Fault) && !bulk;
        scans += 1;
        let scanned = !quiet || scans.is_multiple_of(10);
        let (flows, sticky) = if !scanned {
            (0, 0)
        } else {
            scan(
                &mut tables,
                &mut tracked,
                settings,
                shared,
                &mut out,
                &mut sent,
            )?
        };
        if bulk {
            sent(&mut out, &Message::BulkDone { flows, sticky })?;
            info!(flows, sticky, "bulk sync to the peer sent");
            bulk = false;
        }
        if last_heartbeat.elapsed() >= HEARTBEAT {
            sent(
                &mut out,
                &Message::Heartbeat {
                    role: shared.role(),
                },
            )?;
            last_heartbeat = Instant::now();
        }
        out.flush()?;
        if scanned {
            stats.lag_entries.store(flows + sticky, Relaxed);
            stats.synced_as_of_ns.store(began_ns, Relaxed);
        }
        if shared.stopped.load(Relaxed) {
            return Ok(());
        }
        // The pace of the sync: a scan of a large table is followed by a pause as long,
        // so the sync takes at most half a core.
        std::thread::sleep(settings.interval.max(began.elapsed()));
    }
}

type Sent<'a> = dyn FnMut(&mut BufWriter<TcpStream>, &Message) -> Result<()> + 'a;

/// Send every flow and stickiness entry the peer lacks; returns how many.
fn scan(
    tables: &mut FlowTables,
    tracked: &mut (usize, usize),
    settings: &Settings,
    shared: &Shared,
    out: &mut BufWriter<TcpStream>,
    sent: &mut Sent<'_>,
) -> Result<(u64, u64)> {
    let stats = &shared.stats;
    let (mut flows, mut sticky) = (0u64, 0u64);
    let mut batch: Vec<WireFlow> = Vec::with_capacity(FLOWS_PER_MESSAGE);
    // Digests of flows gone from the tables are dropped when the shadow has grown well
    // past them: only then does a scan collect the keys it sees.
    let (shadow_flows, shadow_sticky) = shared.shadow.lock().expect("shadow lock").len();
    let trim = shadow_flows > 2 * tracked.0 + 1024 || shadow_sticky > 2 * tracked.1 + 1024;
    let (mut live, mut live_sticky) = (HashSet::new(), HashSet::new());
    let (mut seen, mut seen_sticky) = (0, 0);
    tables.each_flow(FLOWS_PER_MESSAGE, |keys, values| {
        let now = monotonic_now_ns();
        seen += keys.len();
        {
            let mut shadow = shared.shadow.lock().expect("shadow lock");
            for (k, v) in keys.iter().zip(values) {
                if trim {
                    live.insert(shadow.key_hash(k));
                }
                if shadow.flow_changed(k, v, &settings.timeouts) {
                    batch.push(WireFlow {
                        key: *k,
                        entry: *v,
                        age_ms: age_ms(v.last_seen_ns, now),
                    });
                }
            }
        }
        if !batch.is_empty() {
            // A failed send ends the session; the next one starts over with a bulk.
            flows += batch.len() as u64;
            sent(out, &Message::Flows(std::mem::take(&mut batch)))?;
        }
        Ok(())
    })?;
    let mut sbatch: Vec<WireSticky> = Vec::new();
    tables.each_sticky(FLOWS_PER_MESSAGE, |keys, values| {
        let now = monotonic_now_ns();
        seen_sticky += keys.len();
        {
            let mut shadow = shared.shadow.lock().expect("shadow lock");
            for (k, v) in keys.iter().zip(values) {
                if trim {
                    live_sticky.insert(shadow.key_hash(k));
                }
                if shadow.sticky_changed(k, v) {
                    sbatch.push(WireSticky {
                        backend: k.backend_id,
                        addr: k.addr,
                        server: v.server_id,
                        age_ms: age_ms(v.last_seen_ns, now),
                    });
                }
            }
        }
        if !sbatch.is_empty() {
            sticky += sbatch.len() as u64;
            sent(out, &Message::Sticky(std::mem::take(&mut sbatch)))?;
        }
        Ok(())
    })?;
    if trim {
        shared
            .shadow
            .lock()
            .expect("shadow lock")
            .trim(&live, &live_sticky);
    }
    *tracked = (seen, seen_sticky);
    stats.flows_sent.fetch_add(flows, Relaxed);
    stats.sticky_sent.fetch_add(sticky, Relaxed);
    Ok((flows, sticky))
}

fn wire_names(names: &Names) -> WireNames {
    let mut w = WireNames {
        frontends: names
            .frontends
            .iter()
            .map(|(id, n)| (*id, n.clone()))
            .collect(),
        backends: names
            .backends
            .iter()
            .map(|(id, n)| (*id, n.clone()))
            .collect(),
        servers: names
            .servers
            .iter()
            .map(|(id, (b, a, p))| (*id, b.clone(), *a, *p))
            .collect(),
    };
    w.frontends.sort_unstable();
    w.backends.sort_unstable();
    w.servers.sort_unstable();
    w
}
