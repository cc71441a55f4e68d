//! HTTP/3 (RFC 9114) on a TLS bind with `use_http3`: QUIC from quinn, HTTP/3 framing from
//! h3, on the bind's UDP port. Each worker has its own SO_REUSEPORT UDP socket and QUIC
//! endpoint: the kernel hashes a client's address and port to one socket, so a connection
//! stays on one worker as a TCP one does (a client that migrates to a new address is not
//! followed). Every request is served by `h2::handle`, as HTTP/2 requests are: the same
//! routing, balancing, stickiness, X-Forwarded-*, retries and server connections.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, atomic::Ordering::Relaxed},
    task::{Context, Poll},
};

use anyhow::{Context as _, Result};
use bytes::{Buf as _, Bytes};
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, SizeHint};
use tracing::debug;

use super::{
    body::{self, BoxError, ProxyBody},
    h2,
    policy::ConnInfo,
    routes::Shared,
    upstream::{Pool, Upstream},
};
use crate::config::HttpConfig;

/// Header fields that are connection-specific: a request carrying one is malformed
/// (RFC 9114 4.2), and a response must not carry one.
const CONNECTION_SPECIFIC: &[header::HeaderName] = &[
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
];

/// QUIC's server side of an HTTP/3 bind: the certificate's TLS, and `[http]`'s limits.
pub fn server_config(
    certificate: &std::path::Path,
    http: &HttpConfig,
) -> Result<quinn::ServerConfig> {
    let crypto = crate::tls::quic_server_config(certificate)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(http.http3_max_streams))
        // The client's control and QPACK streams; HTTP/3 servers use no other.
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(3))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(http.http3_idle_timeout)
                .context("[http] http3_idle_timeout")?,
        ));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// The endpoint's settings: the largest UDP payload it accepts.
pub fn endpoint_config(http: &HttpConfig) -> Result<quinn::EndpointConfig> {
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(http.http3_max_udp_payload)
        .context("[http] http3_max_udp_payload")?;
    Ok(config)
}

/// One worker's UDP socket of a bind (SO_REUSEPORT, one per worker).
pub fn bind_udp(addr: SocketAddr) -> Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("proxy: cannot listen on {addr}/udp (HTTP/3)"))?;
    Ok(socket.into())
}

/// Accept QUIC connections on `endpoint` for `frontend` until the task is aborted (its
/// open connections go on until they end).
pub async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>, frontend: String) {
    let local = endpoint.local_addr().ok();
    while let Some(incoming) = endpoint.accept().await {
        let Ok(slot) = shared.admit(&frontend) else {
            // Past a connection limit: refused before the handshake, as a TCP one is closed.
            incoming.refuse();
            continue;
        };
        let (shared, frontend) = (shared.clone(), frontend.clone());
        let client = incoming.remote_address();
        tokio::spawn(async move {
            let _slot = slot;
            let connection = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    debug!(%client, error = %e, "QUIC handshake failed");
                    return;
                }
            };
            let conn = ConnInfo {
                client,
                local: local.unwrap_or(client),
                tls: true,
            };
            let stats = shared.frontend(&frontend).map(|f| f.stats.clone());
            if let Some(stats) = &stats {
                stats.sessions.fetch_add(1, Relaxed);
            }
            serve(shared, frontend, conn, connection.clone()).await;
            if let Some(stats) = stats {
                // What crossed the client's UDP path, QUIC's framing included.
                let udp = connection.stats();
                stats.traffic.read.fetch_add(udp.udp_rx.bytes, Relaxed);
                stats.traffic.written.fetch_add(udp.udp_tx.bytes, Relaxed);
            }
        });
    }
}

/// The requests of one HTTP/3 connection, each in a task of its own.
async fn serve(
    shared: Arc<Shared>,
    frontend: String,
    conn: ConnInfo,
    connection: quinn::Connection,
) {
    let http = shared.http();
    let mut h3 = match h3::server::builder()
        .max_field_section_size(http.max_header_bytes as u64)
        .build::<_, Bytes>(h3_quinn::Connection::new(connection))
        .await
    {
        Ok(h3) => h3,
        Err(e) => {
            debug!(client = %conn.client, error = %e, "HTTP/3 connection setup failed");
            return;
        }
    };
    // Connections to servers that get a PROXY header carry this client's address.
    let private = Arc::new(Pool::new(
        1,
        http.pool_idle_per_server,
        http.pool_idle_timeout,
    ));
    loop {
        match h3.accept().await {
            Ok(Some(resolver)) => {
                let (shared, frontend, private) =
                    (shared.clone(), frontend.clone(), private.clone());
                tokio::spawn(async move {
                    match resolver.resolve_request().await {
                        Ok((req, stream)) => {
                            request(shared, &frontend, conn, private, req, stream).await
                        }
                        Err(e) => {
                            debug!(client = %conn.client, error = %e, "HTTP/3 request refused")
                        }
                    }
                });
            }
            Ok(None) => break,
            Err(e) => {
                debug!(client = %conn.client, error = %e, "HTTP/3 connection ended");
                break;
            }
        }
    }
}

type Stream<S> = h3::server::RequestStream<S, Bytes>;

async fn request(
    shared: Arc<Shared>,
    frontend: &str,
    conn: ConnInfo,
    private: Arc<Pool<Upstream>>,
    req: Request<()>,
    stream: Stream<h3_quinn::BidiStream<Bytes>>,
) {
    let (mut send, mut recv) = stream.split();
    let http = shared.http();
    let response = if req
        .headers()
        .keys()
        .any(|k| CONNECTION_SPECIFIC.contains(k))
    {
        body::error(
            StatusCode::BAD_REQUEST,
            "connection-specific header in HTTP/3",
            false,
        )
    } else {
        // A request without a length is read until its first data or its end, so that one
        // with no body goes on as HTTP/2's do (retried on another server if one fails).
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let first = match declared {
            Some(n) if n > 0 => Ok(Some(Bytes::new())),
            _ => match tokio::time::timeout(http.body_timeout, recv.recv_data()).await {
                Ok(Ok(Some(mut chunk))) => Ok(Some(chunk.copy_to_bytes(chunk.remaining()))),
                Ok(Ok(None)) => Ok(None),
                Ok(Err(e)) => Err(format!("{e}")),
                Err(_) => Err("request body deadline passed".into()),
            },
        };
        match (first, shared.frontend(frontend)) {
            (Err(e), _) => {
                debug!(client = %conn.client, error = %e, "HTTP/3 request body failed");
                return;
            }
            (Ok(_), None) => {
                body::error(StatusCode::SERVICE_UNAVAILABLE, "frontend removed", false)
            }
            (Ok(first), Some(route)) => {
                let done = first.is_none();
                let body = RequestBody {
                    stream: Mutex::new(recv),
                    first: first.filter(|b| !b.is_empty()),
                    done,
                    length: declared,
                };
                // Boxed, as for HTTP/2: the request's state machine is kilobytes.
                Box::pin(h2::handle(
                    shared.clone(),
                    route,
                    conn,
                    private,
                    req.map(|()| body),
                ))
                .await
            }
        }
    };
    if let Err(e) = respond(&mut send, response).await {
        debug!(client = %conn.client, error = %e, "HTTP/3 response not sent");
        send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
    }
}

async fn respond(
    send: &mut Stream<h3_quinn::SendStream<Bytes>>,
    response: Response<ProxyBody>,
) -> Result<(), BoxError> {
    let (mut parts, mut body) = response.into_parts();
    for name in CONNECTION_SPECIFIC
        .iter()
        .chain([&header::HeaderName::from_static("keep-alive")])
    {
        parts.headers.remove(name);
    }
    parts.version = http::Version::HTTP_3;
    send.send_response(Response::from_parts(parts, ())).await?;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(data) => send.send_data(data).await?,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    send.send_trailers(trailers).await?;
                    return Ok(());
                }
            }
        }
    }
    send.finish().await?;
    Ok(())
}

/// A client's request body on its QUIC stream, as hyper's bodies are read. The stream is
/// polled through `&mut self` only; the mutex is never locked, and only makes the body
/// `Sync`, as the boxed bodies of the HTTP/2 path must be.
struct RequestBody {
    stream: Mutex<Stream<h3_quinn::RecvStream>>,
    /// Read ahead to see whether the request has a body.
    first: Option<Bytes>,
    done: bool,
    length: Option<u64>,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        let stream = self.stream.get_mut().unwrap_or_else(|e| e.into_inner());
        match stream.poll_recv_data(cx) {
            Poll::Ready(Ok(Some(mut chunk))) => Poll::Ready(Some(Ok(Frame::data(
                chunk.copy_to_bytes(chunk.remaining()),
            )))),
            Poll::Ready(Ok(None)) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Err(e)) => {
                self.done = true;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.first.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(n) => SizeHint::with_exact(n),
            None if self.is_end_stream() => SizeHint::with_exact(0),
            None => SizeHint::default(),
        }
    }
}
