//! One HTTP request through the proxy: redirect to https, ACL routing, server choice
//! (sticky cookie, sticky source, balancing), X-Forwarded-*, the upstream exchange with
//! retries, and the sticky cookie on the way back.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::config::{AccessLog, UnderscoreHeaders};

use super::{
    balance::{ActiveGuard, ServerState},
    body::{BoxError, DeadlineBody, ProxyBody, empty, error},
    h1::client::{self, ExchangeError},
    observe::{Exchange, Trace},
    policy::{ConnInfo, cookie_in, is_forwarded_header, is_idempotent_method, without_port},
    routes::{BackendRoute, FrontendRoute, Shared},
    upstream::{Pool, Sender, Upstream},
};

/// Headers that describe one hop's connection, never forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// A response body (of an upgrade request hyper's client sent) that keeps its server's
/// connection counted until it is done.
struct CountedBody {
    inner: Incoming,
    _guard: ActiveGuard,
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map(|f| f.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serve one request of a client connection of frontend `frontend`. `private` holds the
/// connection's own upstream connections (PROXY protocol makes them per client).
pub async fn handle<B>(
    shared: Arc<Shared>,
    frontend: Arc<FrontendRoute>,
    conn: ConnInfo,
    private: Arc<Pool<Upstream>>,
    req: Request<B>,
) -> Response<ProxyBody>
where
    B: Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    // hyper hands over a request once its head is in.
    let started = tokio::time::Instant::now();
    let logged = frontend.log != AccessLog::Off;
    let (method, path) = if logged {
        (req.method().to_string(), req.uri().path().to_string())
    } else {
        (String::new(), String::new())
    };
    let mut trace = Trace::default();
    let mut response = answer(&shared, &frontend, conn, &private, req, &mut trace).await;
    if conn.tls
        && let Some(v) = &frontend.alt_svc
        && !response.headers().contains_key(header::ALT_SVC)
    {
        response.headers_mut().insert(header::ALT_SVC, v.clone());
    }
    let record = Record {
        frontend,
        client: conn.client,
        method,
        path,
        started,
        trace,
        status: response.status().as_u16(),
    };
    if !logged {
        // Counted now; no line waits for the body.
        record.finish(None);
        return response;
    }
    // The line is written once the body is sent, or given up, with its bytes (as HAProxy
    // logs at the end of a stream).
    let (parts, body) = response.into_parts();
    let body = LoggedBody {
        inner: body,
        sent: 0,
        record: Some(record),
    };
    Response::from_parts(parts, body.boxed())
}

/// One request's access-log record, kept until its response body is done.
struct Record {
    frontend: Arc<FrontendRoute>,
    client: std::net::SocketAddr,
    method: String,
    path: String,
    started: tokio::time::Instant,
    trace: Trace,
    status: u16,
}

impl Record {
    /// Count the answer and write its line; `bytes_out`: the body bytes sent.
    fn finish(self, bytes_out: Option<u64>) {
        Exchange {
            log: self.frontend.log,
            frontend: &self.frontend.name,
            stats: &self.frontend.stats,
            client: self.client,
            method: &self.method,
            path: &self.path,
            started: self.started,
            head_done: self.started,
            trace: self.trace,
            status: self.status,
            bytes_out,
        }
        .finish();
    }
}

/// A response body that counts what it yields and logs its request when it ends, fails, or
/// is dropped unfinished (a stream the client reset: the bytes sent so far).
struct LoggedBody {
    inner: ProxyBody,
    sent: u64,
    record: Option<Record>,
}

impl LoggedBody {
    fn done(&mut self) {
        if let Some(record) = self.record.take() {
            record.finish(Some(self.sent));
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.done();
                }
            }
            Poll::Ready(None | Some(Err(_))) => self.done(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        self.done();
    }
}

async fn answer<B>(
    shared: &Arc<Shared>,
    frontend: &Arc<FrontendRoute>,
    conn: ConnInfo,
    private: &Arc<Pool<Upstream>>,
    req: Request<B>,
    trace: &mut Trace,
) -> Response<ProxyBody>
where
    B: Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let h = req.headers();
    // RFC 9112 6.1: both framing headers is a smuggling attempt; reject and close. (hyper's
    // HTTP/1 parser already drops Content-Length when chunked and closes after the response;
    // this also covers what reaches here by other paths.)
    if h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH) {
        return error(
            StatusCode::BAD_REQUEST,
            "both Transfer-Encoding and Content-Length",
            true,
        );
    }
    if let Some(te) = h.get(header::TRANSFER_ENCODING)
        && !te.to_str().is_ok_and(|v| {
            v.rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
        })
    {
        return error(
            StatusCode::BAD_REQUEST,
            "Transfer-Encoding must end in chunked",
            true,
        );
    }
    if let Err(why) = check_request_headers(&req, shared.http().underscore_headers) {
        return error(StatusCode::BAD_REQUEST, why, true);
    }
    if frontend.redirect_ssl && !conn.tls {
        return redirect_to_https(&req, frontend.https_port);
    }
    let host = request_host(&req);
    let backend_name = frontend.route(req.uri().path(), host.as_deref());
    let Some(backend) = shared.backend(backend_name) else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no such backend", false);
    };
    trace.backend = backend.name.clone();
    forward(shared, frontend, &backend, conn, private, req, trace).await
}

/// The HTTP/1 path's header rules (`h1::check_request_headers`) where hyper and h2 do not
/// apply them already (h2 refuses names that are not lowercase tokens, connection headers
/// such as Upgrade, and a Content-Length it cannot parse or two that differ):
/// - Host more than once (RFC 9112 3.2), or naming another authority than `:authority`
///   (RFC 9113 8.3.1: malformed);
/// - Content-Length twice, even with equal values (RFC 9110 8.6);
/// - an underscore in a field name under `underscore_headers = "reject"`.
fn check_request_headers<B>(
    req: &Request<B>,
    underscores: UnderscoreHeaders,
) -> Result<(), &'static str> {
    let h = req.headers();
    let mut hosts = h.get_all(header::HOST).iter();
    if let Some(host) = hosts.next() {
        if hosts.next().is_some() {
            return Err("more than one Host");
        }
        if let Some(authority) = req.uri().authority()
            && !host
                .as_bytes()
                .eq_ignore_ascii_case(authority.as_str().as_bytes())
        {
            return Err("Host differs from :authority");
        }
    }
    let lengths = h.get_all(header::CONTENT_LENGTH);
    if lengths.iter().count() > 1 || lengths.iter().any(|v| v.as_bytes().contains(&b',')) {
        return Err("Content-Length must be one number");
    }
    if underscores == UnderscoreHeaders::Reject && h.keys().any(|k| k.as_str().contains('_')) {
        return Err("underscore in a header name");
    }
    Ok(())
}

fn request_host<B>(req: &Request<B>) -> Option<String> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))?;
    Some(without_port(host).to_string())
}

fn redirect_to_https<B>(req: &Request<B>, port: u16) -> Response<ProxyBody> {
    let host = request_host(req).unwrap_or_default();
    let authority = if port == 443 {
        host
    } else {
        format!("{host}:{port}")
    };
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Ok(v) = HeaderValue::from_str(&format!("https://{authority}{path}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// The sticky cookie's value in the request, if any.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| cookie_in(v, name))
}

/// A WebSocket-style upgrade to pass on; never h2c (RFC 9113 3.1), which is for one hop.
fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !v.split(',').any(|p| p.trim().eq_ignore_ascii_case("h2c")))
        && req
            .headers()
            .get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"))
}

/// Set X-Forwarded-For/-Port/-Proto. Values from the client are kept (and appended to) only
/// when it is a trusted proxy; anyone else's are removed first.
fn forwarded_headers(
    headers: &mut HeaderMap,
    frontend: &FrontendRoute,
    backend: &BackendRoute,
    conn: ConnInfo,
) {
    let trusted = frontend.trusts(conn.client.ip());
    if !trusted {
        let spoofed: Vec<_> = headers
            .keys()
            .filter(|k| is_forwarded_header(k.as_str()))
            .cloned()
            .collect();
        for name in spoofed {
            headers.remove(name);
        }
    }
    if !backend.forward_for.unwrap_or(frontend.forward_for) {
        return;
    }
    let client = conn.client.ip().to_canonical().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {client}"),
        None => client,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    if !headers.contains_key("x-forwarded-port") {
        headers.insert("x-forwarded-port", HeaderValue::from(conn.local.port()));
    }
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert(
            "x-forwarded-proto",
            HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
        );
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for name in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        headers.remove(name);
    }
}

async fn forward<B>(
    shared: &Arc<Shared>,
    frontend: &FrontendRoute,
    backend: &Arc<BackendRoute>,
    conn: ConnInfo,
    private: &Arc<Pool<Upstream>>,
    mut req: Request<B>,
    trace: &mut Trace,
) -> Response<ProxyBody>
where
    B: Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let http = shared.http();
    let upgrade = is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let sticky_cookie = backend.cookie.as_ref().and_then(|c| {
        cookie_value(req.headers(), &c.name).and_then(|v| backend.balancer.by_cookie(v))
    });
    let preferred = sticky_cookie.or_else(|| backend.sticky_source(conn.client.ip()));
    let (mut parts, body) = req.into_parts();
    let upgrade_headers = upgrade.then(|| {
        (
            parts.headers.get(header::UPGRADE).cloned(),
            parts.headers.get(header::CONNECTION).cloned(),
        )
    });
    strip_hop_by_hop(&mut parts.headers);
    if http.underscore_headers == UnderscoreHeaders::Drop {
        let underscored: Vec<_> = parts
            .headers
            .keys()
            .filter(|k| k.as_str().contains('_'))
            .cloned()
            .collect();
        for name in underscored {
            parts.headers.remove(name);
        }
    }
    if let Some((Some(up), _)) = &upgrade_headers {
        parts.headers.insert(header::UPGRADE, up.clone());
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    forwarded_headers(&mut parts.headers, frontend, backend, conn);
    // Servers get origin-form targets; HTTP/2 clients' :authority becomes Host.
    if !parts.headers.contains_key(header::HOST)
        && let Some(a) = parts.uri.authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    parts.uri = path.parse().unwrap_or_default();
    parts.version = http::Version::HTTP_11;
    let body_empty = body.is_end_stream();
    // Without a body, a request can be rebuilt for a retry after it was sent.
    let retry_after_send = body_empty && is_idempotent_method(parts.method.as_str()) && !upgrade;
    // The head is copied only when a retry after sending may need it again.
    parts.extensions = http::Extensions::new();
    let mut head = Some(parts);
    let mut body = Some(if body_empty {
        empty()
    } else {
        DeadlineBody::new(body, http.body_timeout).boxed()
    });

    let mut tried = Vec::new();
    let mut last_error = String::from("no server is available");
    let attempts = backend.balancer.servers.len().clamp(1, 3);
    for attempt in 0..attempts {
        let chosen = match (attempt, preferred) {
            (0, Some(i)) => Some(i),
            _ => backend.balancer.pick(conn.client.ip(), &tried),
        };
        let Some(index) = chosen else { break };
        tried.push(index);
        let server = backend.balancer.servers[index].clone();
        let guard = server.open();
        trace.attempt(server.address, &server.stats);
        if !upgrade {
            // lb's own HTTP/1.1 on the h1 path's pooled connections.
            let pool = if backend.dialer.proxy_protocol.is_some() {
                private.clone()
            } else {
                backend.h1_pool.clone()
            };
            let up = match pool.take(server.address) {
                Some(up) => up,
                None => match dial(backend, &server, conn).await {
                    Ok((up, took)) => {
                        trace.connect = Some(took);
                        up
                    }
                    Err(e) => {
                        last_error = e;
                        continue;
                    }
                },
            };
            let request_body = match body.take() {
                Some(b) => b,
                None if retry_after_send => empty(),
                None => break,
            };
            let Some(request_head) = &head else { break };
            let sent_at = std::time::Instant::now();
            let reuse = client::Reuse {
                pool,
                server: server.address,
            };
            let exchanged = client::exchange(
                up,
                request_head,
                request_body,
                http.server_timeout,
                reuse,
                guard,
            )
            .await;
            let response = match exchanged {
                Ok(r) => r,
                Err(ExchangeError::Timeout) => {
                    crate::warn_limited!(backend = %backend.name, server = %server.address, "server timeout");
                    return error(
                        StatusCode::GATEWAY_TIMEOUT,
                        &format!("server did not answer within {:?}", http.server_timeout),
                        false,
                    );
                }
                Err(ExchangeError::RequestBody(e)) => {
                    debug!(client = %conn.client, error = %e, "request body failed");
                    return error(StatusCode::BAD_REQUEST, "request body failed", false);
                }
                Err(ExchangeError::Failed(e)) => {
                    debug!(backend = %backend.name, server = %server.address, error = %e, "request failed");
                    last_error = format!("server {}: {e}", server.address);
                    if retry_after_send {
                        continue;
                    }
                    return error(StatusCode::BAD_GATEWAY, &last_error, false);
                }
            };
            trace.response = Some(sent_at.elapsed());
            backend.remember_source(conn.client.ip(), index);
            let (mut rparts, rbody) = response.into_parts();
            if let Some(cookie) = &backend.cookie {
                cookie.insert(
                    &mut rparts.headers,
                    &server.cookie,
                    sticky_cookie == Some(index),
                );
            }
            return Response::from_parts(rparts, rbody);
        }
        // Upgrades (WebSocket from HTTP/1 clients served by hyper): hyper's client, on a
        // connection of their own.
        let sender = match connect(backend, &server, conn).await {
            Ok((s, took)) => {
                trace.connect = Some(took);
                s
            }
            Err(e) => {
                last_error = e;
                continue;
            }
        };
        let request_body = match body.take() {
            Some(b) => b,
            None if retry_after_send => empty(),
            None => break,
        };
        let request_head = match &head {
            Some(h) if retry_after_send => h.clone(),
            _ => match head.take() {
                Some(h) => h,
                None => break,
            },
        };
        let upstream_req = Request::from_parts(request_head, request_body);
        let mut sender = sender;
        let sent_at = std::time::Instant::now();
        let sent = tokio::time::timeout(http.server_timeout, sender.send_request(upstream_req));
        let mut response = match sent.await {
            Err(_) => {
                crate::warn_limited!(backend = %backend.name, server = %server.address, "server timeout");
                return error(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!("server did not answer within {:?}", http.server_timeout),
                    false,
                );
            }
            Ok(Err(e)) => {
                debug!(backend = %backend.name, server = %server.address, error = %e, "request failed");
                last_error = format!("server {}: {e}", server.address);
                if retry_after_send {
                    continue;
                }
                return error(StatusCode::BAD_GATEWAY, &last_error, false);
            }
            Ok(Ok(r)) => r,
        };
        trace.response = Some(sent_at.elapsed());
        backend.remember_source(conn.client.ip(), index);
        // An upgrade's connection is never pooled: it becomes the tunnel, or is spent.
        drop(sender);
        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let server_upgrade = hyper::upgrade::on(&mut response);
            let cut = server.cut_signal();
            tokio::spawn(async move {
                let _guard = guard;
                if let (Ok(client), Ok(server)) = (client_upgrade.await, server_upgrade.await) {
                    // Until either side closes, or the server's flows are reset.
                    let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        () = cut => {}
                    }
                }
            });
            let (mut rparts, _) = response.into_parts();
            let up = rparts.headers.get(header::UPGRADE).cloned();
            strip_hop_by_hop(&mut rparts.headers);
            if let Some(up) = up {
                rparts.headers.insert(header::UPGRADE, up);
                rparts
                    .headers
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
            return Response::from_parts(rparts, empty());
        }
        let (mut rparts, rbody) = response.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        if let Some(cookie) = &backend.cookie {
            cookie.insert(
                &mut rparts.headers,
                &server.cookie,
                sticky_cookie == Some(index),
            );
        }
        let body = CountedBody {
            inner: rbody,
            _guard: guard,
        };
        return Response::from_parts(rparts, body.boxed());
    }
    if tried.is_empty() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("backend {:?} has no server available", backend.name),
            false,
        );
    }
    error(StatusCode::BAD_GATEWAY, &last_error, false)
}

/// A new connection to `server` for lb's own HTTP/1.1 (PROXY header and TLS per the
/// backend).
async fn dial(
    backend: &BackendRoute,
    target: &ServerState,
    conn: ConnInfo,
) -> Result<(Upstream, std::time::Duration), String> {
    let (server, started) = (target.address, std::time::Instant::now());
    match backend
        .dialer
        .connect(server, conn.client, conn.local, &target.stats)
        .await
    {
        Ok(io) => Ok((
            Upstream {
                io,
                buf: bytes::BytesMut::new(),
            },
            started.elapsed(),
        )),
        Err(e) => {
            if matches!(e, super::upstream::ConnectError::Tls(_)) {
                crate::warn_limited!(backend = %backend.name, server = %server, error = %e, "TLS to server failed");
            } else {
                crate::warn_limited!(backend = %backend.name, server = %server, error = %e, "server unreachable; trying another");
            }
            Err(format!("server {server}: {e}"))
        }
    }
}

/// A new connection to `server` through hyper's HTTP/1.1 client, for an upgrade (made by
/// [`dial`]).
async fn connect(
    backend: &BackendRoute,
    target: &ServerState,
    conn: ConnInfo,
) -> Result<(Sender, std::time::Duration), String> {
    let (up, took) = dial(backend, target, conn).await?;
    let server = target.address;
    let started = std::time::Instant::now() - took;
    let stream = up.io;
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("server {server}: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            debug!(%server, error = %e, "server connection ended");
        }
    });
    Ok((sender, started.elapsed()))
}
