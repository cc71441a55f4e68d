//! Listening: one SO_REUSEPORT socket per bind and worker, and what each accepted
//! connection is served by (HTTP/1 by `h1`, HTTP/2 by `h2` through hyper, tcp streams
//! spliced to a server).

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Result;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use super::{body, h1, h2, policy::ConnInfo, routes::Shared, upstream::Pool};

/// What a listener serves; a change restarts it.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerSpec {
    pub frontend: String,
    pub http: bool,
    pub certificate: Option<PathBuf>,
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
    stream: tokio::net::TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let http = shared.http();
    let Some(acceptor) = tls else {
        // Plain: HTTP/1.x unless the first bytes are the HTTP/2 preface (h2c).
        let mut stream = stream;
        let mut first = bytes::BytesMut::with_capacity(16 * 1024);
        let deadline = tokio::time::Instant::now() + http.request_timeout;
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
    match tokio::time::timeout(http.request_timeout, acceptor.accept(stream)).await {
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
        .header_read_timeout(http.request_timeout)
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
                Some(f) => h2::handle(shared, f, conn, private, req).await,
                None => body::error(
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
