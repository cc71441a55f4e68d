//! HTTP/1.1 to servers for requests that came over HTTP/2 or HTTP/3: written and parsed by
//! lb itself on the h1 path's pooled connections, in the stream's own task. hyper's client
//! would add a connection task and a dispatch channel per server connection, two task wakes
//! per request; this is what put HTTP/2 behind HAProxy.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Buf as _, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Response, StatusCode, header, request::Parts};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, SizeHint};
use tokio::{io::AsyncWriteExt as _, time::Instant};

use super::{
    Framing, MAX_RESPONSE_HEADERS, READ_SIZE, Remaining, Wait, has_token, header_is, hop_by_hop,
    named_in_connection, read_more, response_framing,
};
use crate::proxy::{
    balance::ActiveGuard,
    body::{BoxError, ProxyBody},
    upstream::{Pool, Upstream},
};

/// Why an exchange failed.
#[derive(Debug)]
pub enum ExchangeError {
    /// The request could not be sent, or no response head came: nothing reached the client,
    /// so a request that may be repeated can go to another server.
    Failed(String),
    /// No response head within `server_timeout`.
    Timeout,
    /// The request body failed (the client's side): no other server can help.
    RequestBody(String),
}

/// Where a response's connection goes back once its body is read to the end.
pub struct Reuse {
    pub pool: Arc<Pool<Upstream>>,
    pub server: SocketAddr,
}

/// Send `parts` (an origin-form target, hop-by-hop headers already removed) and `body` over
/// `up`, and read the response head within `server_timeout`. The response's body reads the
/// rest from `up`, each read within `server_timeout`, and hands `up` back to `reuse` at its
/// end when the server keeps the connection.
pub async fn exchange<B>(
    mut up: Upstream,
    parts: &Parts,
    body: B,
    server_timeout: Duration,
    reuse: Reuse,
    guard: ActiveGuard,
) -> Result<Response<ProxyBody>, ExchangeError>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let empty = body.is_end_stream();
    let chunked = !empty && !parts.headers.contains_key(header::CONTENT_LENGTH);
    let mut out = Vec::with_capacity(512);
    write_head(&mut out, parts, chunked);
    let failed = |e: std::io::Error| ExchangeError::Failed(e.to_string());
    if empty {
        up.io.write_all(&out).await.map_err(failed)?;
    } else {
        send_body(&mut up, out, body, chunked).await?;
    }
    let head_method = parts.method == http::Method::HEAD;
    let wait = Wait::Until(Instant::now() + server_timeout);
    loop {
        let parsed = parse_head(&up.buf, head_method).map_err(ExchangeError::Failed)?;
        match parsed {
            Some(head) if (100..200).contains(&head.status.as_u16()) => {
                // Interim (100 Continue, 103 Early Hints): wait for the final one.
                up.buf.advance(head.len);
                continue;
            }
            Some(head) => {
                up.buf.advance(head.len);
                let (reusable, framing) = (head.reusable, head.framing);
                let mut response = Response::new(());
                *response.status_mut() = head.status;
                *response.headers_mut() = head.headers;
                let body = UpstreamBody {
                    up: Some(up),
                    remaining: Remaining::new(framing),
                    left: match framing {
                        Framing::Length(n) => Some(n),
                        Framing::Empty => Some(0),
                        _ => None,
                    },
                    reuse: reusable.then_some(reuse),
                    timeout: server_timeout,
                    sleep: None,
                    waiting: false,
                    trailer: Vec::new(),
                    _guard: guard,
                };
                return Ok(response.map(|()| body.boxed()));
            }
            None => {}
        }
        match read_more(&mut up.io, &mut up.buf, wait).await {
            Ok(0) => return Err(ExchangeError::Failed("closed without a response".into())),
            Ok(_) => {}
            Err(e) if e == "timed out" => return Err(ExchangeError::Timeout),
            Err(e) => return Err(ExchangeError::Failed(e)),
        }
    }
}

/// The request line and headers, and `Transfer-Encoding: chunked` for a body of unknown
/// length (HTTP/2 and HTTP/3 requests need not declare one).
fn write_head(out: &mut Vec<u8>, parts: &Parts, chunked: bool) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The head in `out`, then the body's data frames as they come (the first with the head).
async fn send_body<B>(
    up: &mut Upstream,
    mut out: Vec<u8>,
    body: B,
    chunked: bool,
) -> Result<(), ExchangeError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut body = body;
    loop {
        let frame = match body.frame().await {
            None => None,
            Some(Ok(frame)) => Some(frame),
            Some(Err(e)) => return Err(ExchangeError::RequestBody(e.into().to_string())),
        };
        let Some(frame) = frame else {
            if chunked {
                out.extend_from_slice(b"0\r\n\r\n");
            }
            up.io
                .write_all(&out)
                .await
                .map_err(|e| ExchangeError::Failed(e.to_string()))?;
            return Ok(());
        };
        // Trailers are not forwarded to HTTP/1 servers.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        }
        if out.is_empty() && !chunked {
            up.io.write_all(&data).await
        } else {
            out.extend_from_slice(&data);
            if chunked {
                out.extend_from_slice(b"\r\n");
            }
            up.io.write_all(&out).await
        }
        .map_err(|e| ExchangeError::Failed(e.to_string()))?;
        out.clear();
    }
}

struct Head {
    len: usize,
    status: StatusCode,
    headers: http::HeaderMap,
    framing: Framing,
    /// HTTP/1.1 without `Connection: close`, and a body that ends before the connection.
    reusable: bool,
}

/// A complete response head at the start of `buf`, or `None` while it is partial. Hop-by-hop
/// headers, those the Connection header names, and the HTTP/1 framing (Transfer-Encoding,
/// Trailer: the client's protocol frames the body its own way) are left out.
fn parse_head(buf: &[u8], head_method: bool) -> Result<Option<Head>, String> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut response = httparse::Response::new(&mut slots);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= READ_SIZE * 4 => {
            return Err("response head too large".into());
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("invalid response head: {e}")),
    };
    let code = response.code.unwrap_or_default();
    let status = StatusCode::from_u16(code).map_err(|e| e.to_string())?;
    let framing = response_framing(code, response.headers, head_method)?;
    let connection: Vec<&[u8]> = response
        .headers
        .iter()
        .filter(|h| header_is(h.name, "connection"))
        .map(|h| h.value)
        .collect();
    let close = connection.iter().any(|v| has_token(v, "close"));
    let reusable = response.version == Some(1) && !close && framing != Framing::UntilClose;
    let mut headers = http::HeaderMap::with_capacity(response.headers.len());
    for h in response.headers.iter() {
        if hop_by_hop(h.name)
            || header_is(h.name, "transfer-encoding")
            || header_is(h.name, "trailer")
            || named_in_connection(h.name, &connection)
        {
            continue;
        }
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|e| e.to_string())?;
        let value = HeaderValue::from_bytes(h.value).map_err(|e| e.to_string())?;
        headers.append(name, value);
    }
    Ok(Some(Head {
        len,
        status,
        headers,
        framing,
        reusable,
    }))
}

/// A response body read from its server connection as the client takes it, de-chunked;
/// the connection goes back to its pool at the body's end.
struct UpstreamBody {
    up: Option<Upstream>,
    remaining: Remaining,
    /// Bytes still to come, when the length is known.
    left: Option<u64>,
    reuse: Option<Reuse>,
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A read is pending: its deadline runs (a new wait, after the client took its time to
    /// ask for more, starts a new one).
    waiting: bool,
    /// A chunked body's trailer section as it came (field lines with their CRLFs), for
    /// HTTP/2 and HTTP/3 clients; taken once the body is done.
    trailer: Vec<u8>,
    _guard: ActiveGuard,
}

/// Trailer bytes kept from one response, past which it fails.
const MAX_TRAILER_BYTES: usize = 8 * 1024;

impl UpstreamBody {
    fn finish(&mut self) {
        if let (Some(up), Some(reuse)) = (self.up.take(), self.reuse.take())
            && up.buf.is_empty()
        {
            reuse.pool.put(reuse.server, up);
        }
    }

    /// The body's bytes at the start of the connection's buffer, consumed.
    fn take_buffered(&mut self) -> Result<Option<Bytes>, BoxError> {
        let Some(up) = self.up.as_mut() else {
            return Ok(None);
        };
        if up.buf.is_empty() {
            return Ok(None);
        }
        let data = match &mut self.remaining {
            Remaining::Bytes(left) => {
                let n = (*left).min(up.buf.len() as u64) as usize;
                *left -= n as u64;
                up.buf.split_to(n).freeze()
            }
            Remaining::UntilClose => up.buf.split().freeze(),
            Remaining::Chunked(chunk) => {
                let mut data = BytesMut::new();
                let buf = &up.buf;
                let trailer = &mut self.trailer;
                let consumed = chunk.feed_parts(
                    buf,
                    |from, to| data.extend_from_slice(&buf[from..to]),
                    |b| trailer.push(b),
                )?;
                if trailer.len() > MAX_TRAILER_BYTES {
                    return Err("response trailers too large".into());
                }
                up.buf.advance(consumed);
                data.freeze()
            }
        };
        if let Some(left) = &mut self.left {
            *left -= data.len() as u64;
        }
        Ok(Some(data))
    }
}

/// A trailer section's fields, without those that may not be trailers (RFC 9110 6.5.1:
/// framing, routing, and connection fields) and any that do not parse.
fn parse_trailers(section: &[u8]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    let mut with_end = section.to_vec();
    with_end.extend_from_slice(b"\r\n");
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let Ok(httparse::Status::Complete((_, fields))) =
        httparse::parse_headers(&with_end, &mut fields)
    else {
        return map;
    };
    for field in fields.iter() {
        if hop_by_hop(field.name)
            || ["content-length", "transfer-encoding", "host", "trailer"]
                .iter()
                .any(|n| header_is(field.name, n))
        {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(field.name.as_bytes()),
            HeaderValue::from_bytes(field.value),
        ) {
            map.append(name, value);
        }
    }
    map
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if self.remaining.done() {
            self.finish();
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.remaining.done() {
                this.finish();
                if !this.trailer.is_empty() {
                    let trailers = parse_trailers(&std::mem::take(&mut this.trailer));
                    if !trailers.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                }
                return Poll::Ready(None);
            }
            match this.take_buffered() {
                Err(e) => return Poll::Ready(Some(Err(e))),
                Ok(Some(data)) if !data.is_empty() => {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(_) => {}
            }
            if this.remaining.done() {
                continue;
            }
            let Some(up) = this.up.as_mut() else {
                return Poll::Ready(None);
            };
            if up.buf.capacity() - up.buf.len() < 4096 {
                up.buf.reserve(READ_SIZE);
            }
            let timeout = this.timeout;
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
            if !this.waiting {
                sleep.as_mut().reset(Instant::now() + timeout);
            }
            let read = tokio_util::io::poll_read_buf(Pin::new(&mut up.io), cx, &mut up.buf);
            this.waiting = read.is_pending();
            match read {
                Poll::Ready(Ok(0)) => {
                    if matches!(this.remaining, Remaining::UntilClose) {
                        // The server's close ends the body; the connection is spent.
                        this.remaining = Remaining::Bytes(0);
                        this.up = None;
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err("server closed before the body ended".into())));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Pending => {
                    ready!(sleep.as_mut().poll(cx));
                    return Poll::Ready(Some(Err("server timeout reading the body".into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining.done()
    }

    fn size_hint(&self) -> SizeHint {
        self.left
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Chunk;
    use super::*;

    #[test]
    fn response_heads_lose_hop_by_hop_headers_and_know_their_framing() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: x-private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: yes\r\n\r\nhello";
        let parsed = parse_head(head, false).unwrap().unwrap();
        assert_eq!(parsed.len, head.len() - 5);
        assert_eq!(parsed.framing, Framing::Length(5));
        assert!(parsed.reusable);
        assert!(parsed.headers.get("x-private").is_none());
        assert!(parsed.headers.get("keep-alive").is_none());
        assert_eq!(parsed.headers["x-kept"], "yes");
        assert_eq!(parsed.headers["content-length"], "5");

        let close = parse_head(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(close.framing, Framing::Chunked);
        assert!(!close.reusable);
        assert!(close.headers.get("transfer-encoding").is_none());
        let old = parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(!old.reusable, "HTTP/1.0 closes unless asked otherwise");
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Le", false)
                .unwrap()
                .map(|h| h.len),
            None
        );
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", false).is_err());
        let head_only = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(head_only.framing, Framing::Empty);
    }

    #[test]
    fn request_heads_are_origin_form_and_chunked_when_unsized() {
        let (mut parts, ()) = http::Request::post("/up?x=1")
            .header("host", "site")
            .body(())
            .unwrap()
            .into_parts();
        let mut out = Vec::new();
        write_head(&mut out, &parts, true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /up?x=1 HTTP/1.1\r\nhost: site\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        parts.uri = "/".parse().unwrap();
        let mut out = Vec::new();
        write_head(&mut out, &parts, false);
        assert!(out.starts_with(b"POST / HTTP/1.1\r\n"));
    }

    #[test]
    fn chunked_bodies_are_decoded_across_reads() {
        let mut chunk = Chunk::new();
        let mut data = Vec::new();
        let wire = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let mut consumed = 0;
        for piece in wire.chunks(3) {
            if chunk == Chunk::Done {
                break;
            }
            consumed += chunk
                .feed_with(piece, |from, to| data.extend_from_slice(&piece[from..to]))
                .unwrap();
        }
        assert_eq!(data, b"hello world");
        assert_eq!(chunk, Chunk::Done);
        assert_eq!(&wire[consumed..], b"NEXT");
    }

    #[test]
    fn trailers_are_kept_for_multiplexed_clients_without_forbidden_fields() {
        let wire = b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\nContent-Length: 3\r\nX-Sum: a1\r\n\r\n";
        let (mut chunk, mut data, mut trailer) = (Chunk::new(), Vec::new(), Vec::new());
        for piece in wire.chunks(2) {
            chunk
                .feed_parts(
                    piece,
                    |from, to| data.extend_from_slice(&piece[from..to]),
                    |b| trailer.push(b),
                )
                .unwrap();
        }
        assert_eq!(chunk, Chunk::Done);
        assert_eq!(data, b"abc");
        assert_eq!(
            trailer,
            b"grpc-status: 0\r\nContent-Length: 3\r\nX-Sum: a1\r\n"
        );
        let fields = parse_trailers(&trailer);
        assert_eq!(fields["grpc-status"], "0");
        assert_eq!(fields["x-sum"], "a1");
        assert!(fields.get("content-length").is_none());
        assert_eq!(fields.len(), 2);

        // No trailer section: nothing kept.
        let (mut chunk, mut trailer) = (Chunk::new(), Vec::new());
        chunk
            .feed_parts(b"0\r\n\r\n", |_, _| {}, |b| trailer.push(b))
            .unwrap();
        assert_eq!(chunk, Chunk::Done);
        assert!(trailer.is_empty());
    }
}
