//! Connections to servers: TCP, then an optional PROXY header, then optional TLS; and a pool
//! of idle HTTP/1.1 connections per server.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::TcpStream,
};

use super::limits::Deadlined;
use crate::config::ProxyVersion;

/// How to reach the servers of a backend.
#[derive(Clone)]
pub struct Dialer {
    pub connect_timeout: Duration,
    /// A write to the server must make progress within this (`[http] server_timeout`).
    pub write_timeout: Duration,
    pub proxy_protocol: Option<ProxyVersion>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// The PROXY protocol header for a connection from `client` to `local` (the VIP).
pub fn proxy_header(version: ProxyVersion, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (client, local) = (canonical(client), canonical(local));
    match version {
        ProxyVersion::V1 => ppp::v1::Addresses::from((client, local))
            .to_string()
            .into_bytes(),
        ProxyVersion::V2 => ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (client, local),
        )
        .build()
        .expect("a v2 header of two socket addresses always builds"),
    }
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// Why a server could not be reached; each is worth trying another server for.
#[derive(Debug)]
pub enum ConnectError {
    Timeout,
    Io(std::io::Error),
    Tls(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Timeout => write!(f, "connect timeout"),
            ConnectError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                write!(f, "connection refused")
            }
            ConnectError::Io(e) => write!(f, "connect: {e}"),
            ConnectError::Tls(e) => write!(f, "TLS: {e}"),
        }
    }
}

/// A connection to a server, with a deadline on its writes.
pub type ServerIo = Deadlined<ServerStream>;

/// A plain or TLS stream to a server.
pub enum ServerStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Dialer {
    /// A connection to `server`'s `stats.traffic` counts; a failure counts as a connection
    /// error.
    pub async fn connect(
        &self,
        server: SocketAddr,
        client: SocketAddr,
        local: SocketAddr,
        stats: &super::observe::ServerStats,
    ) -> Result<ServerIo, ConnectError> {
        match self.connect_stream(server, client, local).await {
            Ok(stream) => {
                Ok(Deadlined::new(stream, self.write_timeout).counted(stats.traffic.clone()))
            }
            Err(e) => {
                stats
                    .connect_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(e)
            }
        }
    }

    async fn connect_stream(
        &self,
        server: SocketAddr,
        client: SocketAddr,
        local: SocketAddr,
    ) -> Result<ServerStream, ConnectError> {
        let mut tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(server))
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(ConnectError::Io)?;
        let _ = tcp.set_nodelay(true);
        if let Some(version) = self.proxy_protocol {
            tcp.write_all(&proxy_header(version, client, local))
                .await
                .map_err(ConnectError::Io)?;
        }
        let Some(tls) = &self.tls else {
            return Ok(ServerStream::Plain(tcp));
        };
        let name = rustls::pki_types::ServerName::IpAddress(server.ip().into());
        let connector = tokio_rustls::TlsConnector::from(tls.clone());
        let stream = tokio::time::timeout(self.connect_timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(|e| ConnectError::Tls(e.to_string()))?;
        Ok(ServerStream::Tls(Box::new(stream)))
    }
}

impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

pub type Sender = hyper::client::conn::http1::SendRequest<super::body::ProxyBody>;

/// A connection that can wait in a pool; a closed one is skipped.
pub trait Reusable {
    fn is_closed(&self) -> bool;
}

/// A server connection the HTTP/1 path drives itself, with what was read past the last
/// response (nothing, for one that can be reused).
pub struct Upstream {
    pub io: ServerIo,
    pub buf: bytes::BytesMut,
}

impl Reusable for Upstream {
    /// Closed if its socket became readable while idle (EOF, or bytes nobody asked for).
    /// tokio answers from the readiness epoll reported, with no syscall when there is none.
    fn is_closed(&self) -> bool {
        let tcp = match self.io.get_ref() {
            ServerStream::Plain(s) => s,
            ServerStream::Tls(s) => s.get_ref().0,
        };
        !matches!(tcp.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

thread_local! {
    /// The proxy worker this thread is (0 elsewhere): pools keep each worker's connections
    /// apart, so a connection is only used on the thread whose runtime drives it.
    pub static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// An idle connection and when it was given back.
struct Parked<T> {
    since: Instant,
    conn: T,
}

/// Per server, oldest first: connections are taken from the back (warmest), aged out from
/// the front.
type IdleLists<T> = Mutex<HashMap<SocketAddr, VecDeque<Parked<T>>>>;

/// Idle keep-alive connections per server, per worker thread. A connection comes back when
/// its response was read to the end, so whatever is taken is free (or closed, and then
/// skipped). Sharing them across workers would wake another thread's runtime per request.
///
/// Sized by use, as HAProxy's idle pools are: every connection a burst needed is kept
/// (up to `max_idle`), so the next burst finds them instead of dialling again; one unused
/// for `idle_timeout` is closed, before a server's own keep-alive timeout races a reuse.
pub struct Pool<T> {
    idle: Vec<IdleLists<T>>,
    max_idle: AtomicUsize,
    idle_timeout_ms: AtomicU64,
}

impl<T: Reusable> Pool<T> {
    pub fn new(workers: usize, max_idle: usize, idle_timeout: Duration) -> Pool<T> {
        let pool = Pool {
            idle: (0..workers.max(1)).map(|_| Mutex::default()).collect(),
            max_idle: AtomicUsize::new(0),
            idle_timeout_ms: AtomicU64::new(0),
        };
        pool.set_limits(max_idle, idle_timeout);
        pool
    }

    /// New limits from a reload that keeps this pool; they apply from the next return.
    pub fn set_limits(&self, max_idle: usize, idle_timeout: Duration) {
        self.max_idle.store(max_idle, Relaxed);
        self.idle_timeout_ms
            .store(idle_timeout.as_millis().max(1) as u64, Relaxed);
    }

    fn mine(&self) -> &IdleLists<T> {
        &self.idle[WORKER.get() % self.idle.len()]
    }

    fn stale(&self, since: Instant, now: Instant) -> bool {
        now.saturating_duration_since(since).as_millis() as u64
            >= self.idle_timeout_ms.load(Relaxed)
    }

    /// The most recently returned open connection (warmest first).
    pub fn take(&self, server: SocketAddr) -> Option<T> {
        self.take_at(server, Instant::now())
    }

    fn take_at(&self, server: SocketAddr, now: Instant) -> Option<T> {
        let mut idle = self.mine().lock().unwrap();
        let list = idle.get_mut(&server)?;
        while let Some(parked) = list.pop_back() {
            if self.stale(parked.since, now) {
                // The warmest is stale, so are all older ones.
                list.clear();
                return None;
            }
            if !parked.conn.is_closed() {
                return Some(parked.conn);
            }
        }
        None
    }

    pub fn put(&self, server: SocketAddr, conn: T) {
        self.put_at(server, conn, Instant::now());
    }

    fn put_at(&self, server: SocketAddr, conn: T, now: Instant) {
        let max_idle = self.max_idle.load(Relaxed);
        if max_idle == 0 || conn.is_closed() {
            return;
        }
        let mut idle = self.mine().lock().unwrap();
        let list = idle.entry(server).or_default();
        while list.front().is_some_and(|p| self.stale(p.since, now)) || list.len() >= max_idle {
            list.pop_front();
        }
        list.push_back(Parked { since: now, conn });
    }

    /// Close this worker's connections idle for the timeout or longer; how many.
    pub fn sweep(&self) -> usize {
        self.sweep_at(Instant::now())
    }

    fn sweep_at(&self, now: Instant) -> usize {
        let mut idle = self.mine().lock().unwrap();
        let mut closed = 0;
        idle.retain(|_, list| {
            while list.front().is_some_and(|p| self.stale(p.since, now)) {
                list.pop_front();
                closed += 1;
            }
            !list.is_empty()
        });
        closed
    }

    /// Idle connections this worker holds for `server`.
    #[cfg(test)]
    fn idle(&self, server: SocketAddr) -> usize {
        self.mine()
            .lock()
            .unwrap()
            .get(&server)
            .map_or(0, VecDeque::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection that is open unless its flag says closed.
    struct Fake(u32, Arc<std::sync::atomic::AtomicBool>);

    impl Reusable for Fake {
        fn is_closed(&self) -> bool {
            self.1.load(Relaxed)
        }
    }

    fn fake(id: u32) -> Fake {
        Fake(id, Arc::default())
    }

    #[test]
    fn a_burst_keeps_its_connections_and_the_warmest_is_taken_first() {
        let server = SocketAddr::from(([198, 18, 0, 10], 80));
        let pool = Pool::new(1, 512, Duration::from_secs(10));
        let t0 = Instant::now();
        // 160 concurrent exchanges end: every connection waits for the next burst.
        for id in 0..160 {
            pool.put_at(server, fake(id), t0);
        }
        assert_eq!(pool.idle(server), 160);
        assert_eq!(pool.take_at(server, t0).map(|c| c.0), Some(159));
        // One that closed while idle is skipped.
        pool.put_at(server, fake(501), t0);
        let closing = fake(500);
        let flag = closing.1.clone();
        pool.put_at(server, closing, t0);
        flag.store(true, Relaxed);
        assert_eq!(pool.take_at(server, t0).map(|c| c.0), Some(501));
    }

    #[test]
    fn the_cap_closes_the_coldest_and_zero_keeps_none() {
        let server = SocketAddr::from(([198, 18, 0, 10], 80));
        let pool = Pool::new(1, 3, Duration::from_secs(10));
        let t0 = Instant::now();
        for id in 0..5 {
            pool.put_at(server, fake(id), t0);
        }
        let left: Vec<u32> = std::iter::from_fn(|| pool.take_at(server, t0).map(|c| c.0)).collect();
        assert_eq!(left, [4, 3, 2]);
        pool.set_limits(0, Duration::from_secs(10));
        pool.put_at(server, fake(9), t0);
        assert_eq!(pool.idle(server), 0);
    }

    #[test]
    fn connections_idle_for_the_timeout_are_closed() {
        let (a, b) = (
            SocketAddr::from(([198, 18, 0, 10], 80)),
            SocketAddr::from(([198, 18, 0, 11], 80)),
        );
        let pool = Pool::new(1, 512, Duration::from_secs(10));
        let t0 = Instant::now();
        for id in 0..4 {
            pool.put_at(a, fake(id), t0);
        }
        pool.put_at(a, fake(10), t0 + Duration::from_secs(5));
        pool.put_at(b, fake(20), t0);
        // At 10 s the first four (and b's) have idled 10 s; the one from 5 s stays.
        assert_eq!(pool.sweep_at(t0 + Duration::from_secs(10)), 5);
        assert_eq!((pool.idle(a), pool.idle(b)), (1, 0));
        // Taking a stale one gives none (and drops it): dial afresh.
        assert!(pool.take_at(a, t0 + Duration::from_secs(15)).is_none());
        assert_eq!(pool.idle(a), 0);
        // Returning ages out the stale ones in front.
        pool.put_at(a, fake(30), t0);
        pool.put_at(a, fake(31), t0 + Duration::from_secs(20));
        assert_eq!(pool.idle(a), 1);
    }

    #[test]
    fn proxy_headers_match_the_reference() {
        let (client, local) = (
            SocketAddr::from(([127, 0, 0, 1], 42)),
            SocketAddr::from(([127, 0, 0, 1], 1337)),
        );
        // ../shared/reference/proxy-protocol.md, without its AUTHORITY TLV.
        let v2 = proxy_header(ProxyVersion::V2, client, local);
        let hex: String = v2.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "0d0a0d0a000d0a515549540a2111000c7f0000017f000001002a0539"
        );
        let v1 = proxy_header(
            ProxyVersion::V1,
            "192.168.0.1:56324".parse().unwrap(),
            "192.168.0.11:443".parse().unwrap(),
        );
        assert_eq!(v1, b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n");
        let mapped = proxy_header(
            ProxyVersion::V1,
            "[::ffff:198.18.0.2]:1000".parse().unwrap(),
            "198.18.100.1:80".parse().unwrap(),
        );
        assert_eq!(mapped, b"PROXY TCP4 198.18.0.2 198.18.100.1 1000 80\r\n");
    }

    #[test]
    fn reference_v2_vector_parses_with_its_tlv() {
        let bytes: Vec<u8> =
            "0d0a0d0a000d0a515549540a21110014 7f000001 7f000001 002a 0539 02 0005 3132333435"
                .split_whitespace()
                .collect::<String>()
                .as_bytes()
                .chunks(2)
                .map(|h| u8::from_str_radix(std::str::from_utf8(h).unwrap(), 16).unwrap())
                .collect();
        let header = ppp::v2::Header::try_from(bytes.as_slice()).unwrap();
        let tlvs: Vec<_> = header.tlvs().collect::<Result<_, _>>().unwrap();
        assert_eq!(tlvs.len(), 1);
        assert_eq!(tlvs[0].kind, 0x02);
        assert_eq!(&tlvs[0].value[..], b"12345");
        // A TLV that runs past the declared length is an error.
        let mut bad = bytes.clone();
        bad[15] -= 1;
        bad.pop();
        let bad = ppp::v2::Header::try_from(bad.as_slice())
            .map(|h| h.tlvs().collect::<Result<Vec<_>, _>>().is_err());
        assert!(bad.is_err() || bad == Ok(true));
    }
}
