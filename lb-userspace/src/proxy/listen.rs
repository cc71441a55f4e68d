//! Listening: one SO_REUSEPORT socket per bind and worker, the connection limits (a
//! connection past one is answered 503 or closed), and what each accepted connection is
//! served by (HTTP/1 by `h1`, HTTP/2 by `h2` through hyper, tcp streams spliced to a
//! server).

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Result;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    time::Instant,
};
use tracing::{debug, warn};

use super::{
    body, h1, h2,
    limits::{Activity, Deadlined, Readable as _, Verdict},
    policy::ConnInfo,
    routes::{Refused, Shared},
    upstream::Pool,
};
use crate::config::HttpConfig;

/// What a listener serves; a change restarts it.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerSpec {
    pub frontend: String,
    pub http: bool,
    pub certificate: Option<PathBuf>,
    /// HTTP/3 on the same port over UDP (a TLS bind with `use_http3`).
    pub http3: bool,
}

pub async fn accept_loop(
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
                crate::warn_limited!(%addr, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let slot = match shared.admit(&frontend) {
            Ok(slot) => slot,
            Err(why) => {
                refuse(&shared, &frontend, why, stream, http && tls.is_none());
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
        let stats = shared.frontend(&frontend).map(|f| f.stats.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let limits = shared.http();
            // Every write to the client must make progress within server_timeout.
            let mut stream = Deadlined::new(stream, limits.server_timeout);
            if let Some(stats) = stats {
                stats
                    .sessions
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                stream = stream.counted(stats.traffic.clone());
            }
            if http {
                serve_http(shared, frontend, conn, stream, tls, &limits).await;
            } else {
                // Boxed, as HTTP/2 and TLS below: an idle HTTP/1 connection's task is
                // then the size of its own state.
                Box::pin(serve_stream(shared, frontend, conn, stream)).await;
            }
        });
    }
}

thread_local! {
    /// Refused connections of this worker still being told 503.
    static TELLING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// At most this many refused connections per worker are told 503 at once; past that (a
/// flood) they are closed at once.
const MAX_TELLING: usize = 256;

/// A connection past a limit: a plain HTTP client is answered 503 (then, so that closing
/// does not reset the connection before it reads the answer, what it sends is read until it
/// closes, for at most a second); TLS and tcp connections are closed at once.
fn refuse(shared: &Shared, frontend: &str, why: Refused, stream: TcpStream, plain_http: bool) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if let Some(refused) = shared.refusal_to_log(now) {
        let (limit, field) = match why {
            Refused::Global(n) => (n, "[http] max_connections"),
            Refused::Frontend(n) => (n as usize, "options.max_connections"),
        };
        let open = shared.open.load(std::sync::atomic::Ordering::Relaxed);
        warn!(%frontend, limit, field, refused, open, "connection limit reached; refusing connections");
    }
    if !plain_http || TELLING.get() >= MAX_TELLING {
        return;
    }
    TELLING.set(TELLING.get() + 1);
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = stream;
        let answer = h1::error_response(
            ::http::StatusCode::SERVICE_UNAVAILABLE,
            "too many connections",
            true,
        );
        // A fresh socket's send buffer takes the whole answer at once.
        if stream.try_write(&answer).is_ok() && stream.shutdown().await.is_ok() {
            let mut sink = [0u8; 512];
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while let Ok(n) = stream.read(&mut sink).await
                    && n > 0
                {}
            })
            .await;
        }
        TELLING.set(TELLING.get() - 1);
    });
}

pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
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

async fn serve_http(
    shared: Arc<Shared>,
    frontend: String,
    conn: ConnInfo,
    stream: Deadlined<TcpStream>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    http: &HttpConfig,
) {
    let Some(acceptor) = tls else {
        // Plain: HTTP/1.x unless the first bytes are the HTTP/2 preface (h2c). Nothing is
        // allocated for a connection that has sent nothing yet.
        let mut stream = stream;
        let deadline = tokio::time::Instant::now() + http.request_timeout;
        if tokio::time::timeout_at(deadline, stream.readable())
            .await
            .is_err()
        {
            return;
        }
        let mut first = bytes::BytesMut::with_capacity(16 * 1024);
        while first.len() < h1::H2_PREFACE.len() && h1::may_be_h2_preface(&first) {
            use tokio::io::AsyncReadExt as _;
            match tokio::time::timeout_at(deadline, stream.read_buf(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        }
        if first.starts_with(h1::H2_PREFACE) {
            // What was read goes on with the connection, not the read buffer it came in.
            let io = h1::Prefixed {
                prefix: bytes::BytesMut::from(&first[..]),
                inner: stream,
            };
            drop(first);
            return Box::pin(serve_hyper(shared, frontend, conn, io)).await;
        }
        return h1::serve(shared, frontend, conn, stream, first).await;
    };
    Box::pin(serve_tls(shared, frontend, conn, stream, acceptor, http)).await;
}

async fn serve_tls(
    shared: Arc<Shared>,
    frontend: String,
    conn: ConnInfo,
    stream: Deadlined<TcpStream>,
    acceptor: tokio_rustls::TlsAcceptor,
    http: &HttpConfig,
) {
    match tokio::time::timeout(http.request_timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) if s.get_ref().1.alpn_protocol() == Some(b"h2") => {
            serve_hyper(shared, frontend, conn, s).await
        }
        Ok(Ok(s)) => h1::serve(shared, frontend, conn, s, bytes::BytesMut::new()).await,
        Ok(Err(e)) => debug!(client = %conn.client, error = %e, "TLS handshake failed"),
        Err(_) => {}
    }
}

/// An HTTP/2 connection served by hyper, watched: with
/// no stream for `request_timeout` it is sent GOAWAY, and closed if the client has not
/// closed it `request_timeout` later; while responses are being sent, one of them must move
/// within `server_timeout` (a client that stops reading, or never opens its flow-control
/// window, is closed: hyper alone would keep it, and its server connections, for ever).
async fn serve_hyper<I>(shared: Arc<Shared>, frontend: String, conn: ConnInfo, io: I)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let http = shared.http();
    // Only HTTP/2 comes here (the preface, or ALPN h2): no version sniffing.
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(http.max_header_bytes as u32)
        // Servers' responses carry their own Date.
        .auto_date_header(false);
    let private = Arc::new(Pool::new(
        1,
        http.pool_idle_per_server,
        http.pool_idle_timeout,
    ));
    let activity = Activity::new(Instant::now());
    let watched = activity.clone();
    let service = hyper::service::service_fn(move |req| {
        let (shared, private) = (shared.clone(), private.clone());
        let frontend = shared.frontend(&frontend);
        let request = watched.request();
        async move {
            let response = match frontend {
                // Boxed: the request's whole state machine is kilobytes, and hyper moves
                // the service's future into each stream's task by value.
                Some(f) => Box::pin(h2::handle(shared, f, conn, private, req)).await,
                None => body::error(
                    ::http::StatusCode::SERVICE_UNAVAILABLE,
                    "frontend removed",
                    true,
                ),
            };
            Ok::<_, std::convert::Infallible>(response.map(|b| request.body(b)))
        }
    });
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let (idle, stall) = (http.request_timeout, http.server_timeout);
    let check = tokio::time::sleep(idle);
    tokio::pin!(check);
    // When GOAWAY was sent.
    let mut closing: Option<Instant> = None;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    debug!(client = %conn.client, error = %e, "client connection ended");
                }
                return;
            }
            () = check.as_mut() => {}
        }
        let now = Instant::now();
        match (activity.verdict(now, idle, stall), closing) {
            (Verdict::CheckAt(at), _) => check.as_mut().reset(at),
            (Verdict::Stalled, _) => {
                debug!(client = %conn.client, "HTTP/2 responses made no progress within server_timeout; closing");
                return;
            }
            (Verdict::Idle, None) => {
                debug!(client = %conn.client, "HTTP/2 connection idle; GOAWAY");
                connection.as_mut().graceful_shutdown();
                closing = Some(now);
                check.as_mut().reset(now + idle);
            }
            (Verdict::Idle, Some(since)) if now >= since + idle => {
                debug!(client = %conn.client, "HTTP/2 client kept its connection after GOAWAY; closing");
                return;
            }
            (Verdict::Idle, Some(since)) => check.as_mut().reset(since + idle),
        }
    }
}

/// A tcp frontend served in userspace: pick a server, connect (PROXY header first), splice.
async fn serve_stream(
    shared: Arc<Shared>,
    frontend: String,
    conn: ConnInfo,
    mut stream: Deadlined<TcpStream>,
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
            .connect(server.address, conn.client, conn.local, &server.stats)
            .await
        {
            Ok(mut upstream) => {
                server
                    .stats
                    .sessions
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                backend.remember_source(client_ip, index);
                // Until either side closes, or the server's flows are reset.
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream) => {}
                    () = server.cut_signal() => {}
                }
                return;
            }
            Err(e) => {
                crate::warn_limited!(backend = %backend.name, server = %server.address, error = %e, "server unreachable; trying another");
            }
        }
    }
    debug!(client = %conn.client, backend = %backend.name, "no server reachable; closing");
}
