//! HTTP/1.x proxied by hand over httparse, the way HAProxy and nginx do it: the request head
//! is parsed once and rewritten into the upstream head in one pass, bodies are relayed as
//! they arrive with their framing checked (never buffered whole), and a connection's client
//! side, server side and bodies all run in one task. hyper's server and client cost twice
//! HAProxy's CPU per request (channels and a task per upstream connection); HTTP/2 (ALPN
//! "h2" or the h2c preface) is still served by hyper's server, and reaches servers through
//! this path's connections and parsers (`client`).

use std::{
    io::Write as _,
    mem::MaybeUninit,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf as _, BytesMut};
use http::StatusCode;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    time::Instant,
};
use tracing::debug;

use crate::config::{AccessLog, HttpConfig, MAX_REQUEST_HEADERS, UnderscoreHeaders};

use super::{
    limits::Readable,
    observe::{Exchange, Trace},
    policy::ConnInfo,
    routes::{BackendRoute, FrontendRoute, Shared},
    upstream::{Pool, Upstream},
};

/// HTTP/1.1 to servers for HTTP/2 and HTTP/3 requests, on this path's pooled connections.
pub mod client;
/// The parsers below as plain functions, for the fuzz targets (`fuzz/`).
pub mod fuzzing;

/// What starts an HTTP/2 connection without TLS (RFC 9113 3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Headers a response may carry at most (a server's, so not the client limit).
const MAX_RESPONSE_HEADERS: usize = 128;
/// The most `[http] max_headers` can allow.
const READ_SIZE: usize = 16 * 1024;
/// What a request's upstream head and a response head start with.
const HEAD_SIZE: usize = 1024;
/// How long a keep-alive connection keeps its buffers while waiting for its next request.
const IDLE_RELEASE: Duration = Duration::from_secs(1);

/// How a message's body is delimited (RFC 9112 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the server closes (responses only).
    UntilClose,
}

/// A request head, checked and rewritten for the server.
struct Prepared {
    head_len: usize,
    backend: Arc<BackendRoute>,
    /// The server the client sticks to (cookie or source address), and whether by cookie.
    preferred: Option<usize>,
    by_cookie: bool,
    body: Framing,
    http11: bool,
    keep_alive: bool,
    /// No body and idempotent: may be sent again after a failed attempt.
    retry_after_send: bool,
    head_method: bool,
    upgrade: bool,
    expect_continue: bool,
    /// Alt-Svc to add to the response (TLS connections of a frontend serving HTTP/3).
    alt_svc: Option<http::HeaderValue>,
}

/// After an answer without a server: close, or skip this many bytes of head and go on.
#[derive(Clone, Copy)]
enum Close {
    Yes,
    No { head_len: usize },
}

enum Parsed {
    Partial,
    Ready(Prepared),
    /// Answer the client without a server, then close, or go on after the head's length.
    Answer(Vec<u8>, Close),
}

/// The method and target of a request head, for the access log ("-" where unreadable).
fn request_line(head: &[u8]) -> (&str, &str) {
    let line = head
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or(&[]);
    let line = std::str::from_utf8(line).unwrap_or("");
    let mut parts = line.split(' ');
    let method = parts.next().filter(|m| !m.is_empty()).unwrap_or("-");
    (method, parts.next().unwrap_or("-"))
}

/// The status of a response lb wrote itself ("HTTP/1.1 503 ...").
fn answer_status(response: &[u8]) -> u16 {
    response
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A short plain-text response: the same bodies as the HTTP/2 path's.
pub fn error_response(status: StatusCode, detail: &str, close: bool) -> Vec<u8> {
    let reason = status.canonical_reason().unwrap_or("");
    let body = format!("{} {reason}: {detail}\n", status.as_u16());
    format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{}\r\n{body}",
        status.as_u16(),
        body.len(),
        if close { "connection: close\r\n" } else { "" },
    )
    .into_bytes()
}

fn header_is(name: &str, wanted: &str) -> bool {
    name.eq_ignore_ascii_case(wanted)
}

fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Headers that describe one hop's connection (RFC 9110 7.6.1); Transfer-Encoding is kept
/// because bodies are relayed with their framing as received. HTTP2-Settings belongs to an
/// h2c upgrade of this hop (RFC 7540 3.2.1), which is never forwarded.
fn hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "http2-settings",
    ]
    .iter()
    .any(|h| header_is(name, h))
}

/// Named in Connection, so hop-by-hop too, except the framing and Host headers: dropping
/// those on a client's say-so would desynchronise the server (a smuggling trick).
fn named_in_connection(name: &str, connection: &[&[u8]]) -> bool {
    !["content-length", "transfer-encoding", "host"]
        .iter()
        .any(|h| header_is(name, h))
        && connection.iter().any(|v| has_token(v, name))
}

/// The body framing of a request (RFC 9112 6.3): both Content-Length and
/// Transfer-Encoding, a coding list not ending in chunked, or conflicting lengths are
/// refused.
fn request_framing(headers: &[httparse::Header], http11: bool) -> Result<Framing, &'static str> {
    let mut te: Option<&[u8]> = None;
    let mut length: Option<u64> = None;
    for h in headers {
        if header_is(h.name, "transfer-encoding") {
            if te.is_some() {
                return Err("more than one Transfer-Encoding");
            }
            te = Some(h.value);
        } else if header_is(h.name, "content-length") {
            for part in h.value.split(|&b| b == b',') {
                let n = parse_length(part.trim_ascii()).ok_or("invalid Content-Length")?;
                if length.is_some_and(|l| l != n) {
                    return Err("conflicting Content-Length values");
                }
                length = Some(n);
            }
        }
    }
    match (te, length) {
        (Some(_), Some(_)) => Err("both Transfer-Encoding and Content-Length"),
        (Some(_), None) if !http11 => Err("Transfer-Encoding in an HTTP/1.0 request"),
        (Some(v), None) => {
            let last = v.rsplit(|&b| b == b',').next().unwrap_or_default();
            if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                Ok(Framing::Chunked)
            } else {
                Err("Transfer-Encoding must end in chunked")
            }
        }
        (None, Some(0)) | (None, None) => Ok(Framing::Empty),
        (None, Some(n)) => Ok(Framing::Length(n)),
    }
}

/// The request header rules HAProxy and Envoy apply beyond the message syntax, case by case.
/// (The syntax is httparse's: a field name is a token, RFC 9110 5.1, so `X Y`, `X(Y)` or
/// `"X"` is a 400 before this; a value holds no CR, LF or NUL, RFC 9110 5.5.)
/// - Host more than once: RFC 9112 3.2 requires a 400 (the server might use the other).
/// - Host that is not `uri-host [":" port]` (RFC 9112 3.2, RFC 3986 3.2.2): a 400 too; `/`,
///   `@`, `?`, `#` or spaces in it would make it mean something else further on.
/// - Content-Length that is not one number: a list ("5, 5") or the header twice. RFC 9110
///   8.6 lets a recipient take equal values as one, but a server that splits the list
///   differently reads another body (HAProxy refuses a list, as Envoy does).
/// - A field name with an underscore under `underscore_headers = "reject"`: CGI-style
///   servers read `X_Forwarded_For` as `X-Forwarded-For`.
fn check_request_headers(
    headers: &[httparse::Header],
    underscores: UnderscoreHeaders,
) -> Result<(), &'static str> {
    let (mut hosts, mut lengths) = (0, 0);
    for h in headers {
        if header_is(h.name, "host") {
            hosts += 1;
            if hosts > 1 {
                return Err("more than one Host");
            }
            if !valid_host(h.value) {
                return Err("invalid Host");
            }
        } else if header_is(h.name, "content-length") {
            lengths += 1;
            if lengths > 1 || parse_length(h.value.trim_ascii()).is_none() {
                return Err("Content-Length must be one number");
            }
        }
        if underscores == UnderscoreHeaders::Reject && h.name.contains('_') {
            return Err("underscore in a header name");
        }
    }
    Ok(())
}

/// Whether a request's Upgrade goes to the server: WebSocket and the like (HTTP/1.1, named
/// in Connection), never h2c. An h2c upgrade (RFC 9113 3.1, deprecated) is for this hop
/// only; the request is then served as HTTP/1.1, as RFC 9110 7.8 lets a server do, and its
/// Upgrade and HTTP2-Settings are dropped as hop-by-hop.
fn forwards_upgrade(http11: bool, in_connection: bool, upgrade: Option<&[u8]>) -> bool {
    http11 && in_connection && upgrade.is_some_and(|v| !has_token(v, "h2c"))
}

/// A Host value's characters (RFC 3986 3.2.2 and 3.2.3): reg-name (unreserved,
/// pct-encoded, sub-delims), an IP literal in brackets, a port after a colon; or empty.
fn valid_host(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:[]".contains(&b))
}

fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The body framing of a response to `head_method`/a request (RFC 9112 6.3).
fn response_framing(
    status: u16,
    headers: &[httparse::Header],
    head_method: bool,
) -> Result<Framing, &'static str> {
    if head_method || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(Framing::Empty);
    }
    if let Some(te) = headers
        .iter()
        .find(|h| header_is(h.name, "transfer-encoding"))
    {
        let last = te.value.rsplit(|&b| b == b',').next().unwrap_or_default();
        return Ok(if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    let mut length = None;
    for h in headers
        .iter()
        .filter(|h| header_is(h.name, "content-length"))
    {
        for part in h.value.split(|&b| b == b',') {
            let n = parse_length(part.trim_ascii()).ok_or("invalid Content-Length")?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting Content-Length values");
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}

/// Where a chunked body is (RFC 9112 7.1), fed bytes as they arrive, strict about CRLF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    Size { digits: u8, size: u64 },
    Extension { size: u64 },
    SizeLf { size: u64 },
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

impl Chunk {
    fn new() -> Chunk {
        Chunk::Size { digits: 0, size: 0 }
    }

    /// Consume from `data` up to the end of the body: how many bytes belong to it.
    fn feed(&mut self, data: &[u8]) -> Result<usize, &'static str> {
        self.feed_with(data, |_, _| {})
    }

    /// [`Chunk::feed`], calling `on_data(from, to)` for each run of chunk data in `data`.
    fn feed_with(
        &mut self,
        data: &[u8],
        on_data: impl FnMut(usize, usize),
    ) -> Result<usize, &'static str> {
        self.feed_parts(data, on_data, |_| {})
    }

    /// [`Chunk::feed_with`], also calling `on_trailer(byte)` for each byte of the trailer
    /// section's fields (their lines with CRLFs, without the empty line that ends them).
    fn feed_parts(
        &mut self,
        data: &[u8],
        mut on_data: impl FnMut(usize, usize),
        mut on_trailer: impl FnMut(u8),
    ) -> Result<usize, &'static str> {
        let mut i = 0;
        while i < data.len() {
            if let Chunk::Data(left) = self {
                let n = (*left).min((data.len() - i) as u64);
                *left -= n;
                on_data(i, i + n as usize);
                i += n as usize;
                if *left == 0 {
                    *self = Chunk::DataCr;
                }
                continue;
            }
            let b = data[i];
            i += 1;
            let before = *self;
            *self = match (*self, b) {
                (Chunk::Size { digits, size }, b) if b.is_ascii_hexdigit() => {
                    if digits >= 15 {
                        return Err("chunk size too large");
                    }
                    let v = (b as char).to_digit(16).unwrap_or_default() as u64;
                    Chunk::Size {
                        digits: digits + 1,
                        size: size * 16 + v,
                    }
                }
                (Chunk::Size { digits, size }, b';') if digits > 0 => Chunk::Extension { size },
                (Chunk::Size { digits, size }, b'\r') if digits > 0 => Chunk::SizeLf { size },
                (Chunk::Size { digits, size }, b' ' | b'\t') if digits > 0 => {
                    Chunk::Extension { size }
                }
                (Chunk::Extension { size }, b'\r') => Chunk::SizeLf { size },
                (Chunk::Extension { .. }, b'\n') => return Err("bare LF in a chunk extension"),
                (Chunk::Extension { size }, _) => Chunk::Extension { size },
                (Chunk::SizeLf { size: 0 }, b'\n') => Chunk::TrailerStart,
                (Chunk::SizeLf { size }, b'\n') => Chunk::Data(size),
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataLf, b'\n') => Chunk::Size { digits: 0, size: 0 },
                (Chunk::TrailerStart, b'\r') => Chunk::EndLf,
                (Chunk::TrailerStart | Chunk::TrailerLine, b'\n') => {
                    return Err("bare LF in a trailer");
                }
                (Chunk::TrailerLine, b'\r') => Chunk::TrailerLf,
                (Chunk::TrailerStart | Chunk::TrailerLine, _) => Chunk::TrailerLine,
                (Chunk::TrailerLf, b'\n') => Chunk::TrailerStart,
                (Chunk::EndLf, b'\n') => {
                    *self = Chunk::Done;
                    return Ok(i);
                }
                _ => return Err("malformed chunked encoding"),
            };
            if matches!(
                before,
                Chunk::TrailerStart | Chunk::TrailerLine | Chunk::TrailerLf
            ) && *self != Chunk::EndLf
            {
                on_trailer(b);
            }
        }
        Ok(i)
    }
}

/// How much of a body is still to come.
enum Remaining {
    Bytes(u64),
    Chunked(Chunk),
    UntilClose,
}

impl Remaining {
    fn new(framing: Framing) -> Remaining {
        match framing {
            Framing::Empty => Remaining::Bytes(0),
            Framing::Length(n) => Remaining::Bytes(n),
            Framing::Chunked => Remaining::Chunked(Chunk::new()),
            Framing::UntilClose => Remaining::UntilClose,
        }
    }

    fn done(&self) -> bool {
        matches!(self, Remaining::Bytes(0) | Remaining::Chunked(Chunk::Done))
    }

    /// How many of `data`'s bytes belong to the body.
    fn take(&mut self, data: &[u8]) -> Result<usize, &'static str> {
        match self {
            Remaining::Bytes(left) => {
                let n = (*left).min(data.len() as u64);
                *left -= n;
                Ok(n as usize)
            }
            Remaining::Chunked(chunk) => chunk.feed(data),
            Remaining::UntilClose => Ok(data.len()),
        }
    }
}

/// Which side failed while relaying.
#[derive(Debug)]
enum RelayError {
    /// Reading: the sender closed early, sent a malformed body, or was too slow.
    Source(String),
    /// Writing to the receiver.
    Sink(String),
}

/// How long reads may wait.
#[derive(Clone, Copy)]
enum Wait {
    EachRead(Duration),
    Until(Instant),
}

impl Wait {
    fn deadline(self) -> Instant {
        match self {
            Wait::EachRead(d) => Instant::now() + d,
            Wait::Until(at) => at,
        }
    }
}

async fn read_more<R: AsyncRead + Unpin>(
    src: &mut R,
    buf: &mut BytesMut,
    wait: Wait,
) -> Result<usize, String> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(READ_SIZE);
    }
    match tokio::time::timeout_at(wait.deadline(), src.read_buf(buf)).await {
        Err(_) => Err("timed out".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(n)) => Ok(n),
    }
}

/// Write `out` (a head, possibly empty) and then the body framed by `framing` from `src`
/// (whose bytes already read are in `buf`) to `dst`, without holding more than a read's
/// worth. Leaves in `buf` whatever follows the body.
async fn relay<R, W>(
    src: &mut R,
    buf: &mut BytesMut,
    dst: &mut W,
    out: &mut Vec<u8>,
    framing: Framing,
    wait: Wait,
) -> Result<u64, RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut remaining = Remaining::new(framing);
    let mut written = 0u64;
    loop {
        let n = remaining
            .take(buf)
            .map_err(|e| RelayError::Source(e.into()))?;
        out.extend_from_slice(&buf[..n]);
        buf.advance(n);
        if !out.is_empty() {
            dst.write_all(out)
                .await
                .map_err(|e| RelayError::Sink(e.to_string()))?;
            written += out.len() as u64;
            out.clear();
        }
        if remaining.done() {
            return Ok(written);
        }
        match read_more(src, buf, wait).await {
            Ok(0) if matches!(remaining, Remaining::UntilClose) => return Ok(written),
            Ok(0) => return Err(RelayError::Source("closed before the body ended".into())),
            Ok(_) => {}
            Err(e) => return Err(RelayError::Source(e)),
        }
    }
}

/// Parse a request head in `buf` and, when complete, write the upstream head into `out`.
fn prepare(
    buf: &[u8],
    shared: &Shared,
    http: &HttpConfig,
    frontend: &FrontendRoute,
    conn: ConnInfo,
    out: &mut Vec<u8>,
) -> Parsed {
    let too_large = || {
        Parsed::Answer(
            error_response(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request head too large",
                true,
            ),
            Close::Yes,
        )
    };
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_REQUEST_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let parsed = req.parse_with_uninit_headers(
        buf,
        &mut slots[..http.max_headers.clamp(1, MAX_REQUEST_HEADERS)],
    );
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > http.max_header_bytes => return too_large(),
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Answer(
                error_response(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "too many headers",
                    true,
                ),
                Close::Yes,
            );
        }
        Err(e) => {
            return Parsed::Answer(
                error_response(
                    StatusCode::BAD_REQUEST,
                    &format!("malformed request: {e}"),
                    true,
                ),
                Close::Yes,
            );
        }
    };
    if head_len > http.max_header_bytes {
        return too_large();
    }
    let bad = |why: &str| {
        Parsed::Answer(
            error_response(StatusCode::BAD_REQUEST, why, true),
            Close::Yes,
        )
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return bad("incomplete request line");
    };
    let http11 = version == 1;
    let headers = &*req.headers;
    if let Err(why) = check_request_headers(headers, http.underscore_headers) {
        return bad(why);
    }
    let body = match request_framing(headers, http11) {
        Ok(f) => f,
        Err(why) => return bad(why),
    };
    let connection: Vec<&[u8]> = headers
        .iter()
        .filter(|h| header_is(h.name, "connection"))
        .map(|h| h.value)
        .collect();
    let connection_has = |t: &str| connection.iter().any(|v| has_token(v, t));
    let keep_alive = if http11 {
        !connection_has("close")
    } else {
        connection_has("keep-alive")
    };
    let upgrade_value = headers
        .iter()
        .find(|h| header_is(h.name, "upgrade"))
        .map(|h| h.value);
    let upgrade = forwards_upgrade(http11, connection_has("upgrade"), upgrade_value);
    let expect_continue = body != Framing::Empty
        && headers
            .iter()
            .any(|h| header_is(h.name, "expect") && h.value.eq_ignore_ascii_case(b"100-continue"));

    // Absolute-form targets become origin-form; their authority stands in for Host.
    let (authority, origin) = match target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        Some(rest) => match rest.find('/') {
            Some(i) => (Some(&rest[..i]), &rest[i..]),
            None => (Some(rest), "/"),
        },
        None => (None, target),
    };
    let host_header = headers
        .iter()
        .find(|h| header_is(h.name, "host"))
        .and_then(|h| std::str::from_utf8(h.value).ok());
    let host = super::policy::without_port(host_header.or(authority).unwrap_or(""));
    let path = origin.split('?').next().unwrap_or("/");

    if frontend.redirect_ssl && !conn.tls {
        let port = frontend.https_port;
        let location = if port == 443 {
            format!("https://{host}{origin}")
        } else {
            format!("https://{host}:{port}{origin}")
        };
        let response = format!(
            "HTTP/1.1 301 Moved Permanently\r\nlocation: {location}\r\ncontent-length: 0\r\n{}\r\n",
            if keep_alive {
                ""
            } else {
                "connection: close\r\n"
            }
        );
        // A body would have to be read past; closing is simpler for a redirect.
        let close = if keep_alive && body == Framing::Empty {
            Close::No { head_len }
        } else {
            Close::Yes
        };
        return Parsed::Answer(response.into_bytes(), close);
    }
    let route = frontend.route(path, (!host.is_empty()).then_some(host));
    let Some(backend) = shared.backend(route) else {
        return Parsed::Answer(
            error_response(StatusCode::SERVICE_UNAVAILABLE, "no such backend", true),
            Close::Yes,
        );
    };
    let cookie_server = backend.cookie.as_ref().and_then(|c| {
        headers
            .iter()
            .filter(|h| header_is(h.name, "cookie"))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .find_map(|v| super::policy::cookie_in(v, &c.name))
            .and_then(|v| backend.balancer.by_cookie(v))
    });
    let preferred = cookie_server.or_else(|| backend.sticky_source(conn.client.ip()));

    // The upstream head: request line, the client's headers minus hop-by-hop ones (and
    // untrusted X-Forwarded-*), then ours.
    let trusted = frontend.trusts(conn.client.ip());
    let forward_for = backend.forward_for.unwrap_or(frontend.forward_for);
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(origin.as_bytes());
    out.extend_from_slice(if http11 {
        b" HTTP/1.1\r\n"
    } else {
        b" HTTP/1.0\r\n"
    });
    let mut prior_xff: Vec<&[u8]> = Vec::new();
    let (mut has_port, mut has_proto) = (false, false);
    for h in headers {
        let name = h.name;
        let kept_upgrade = upgrade && header_is(name, "upgrade");
        if !kept_upgrade
            && (hop_by_hop(name)
                || named_in_connection(name, &connection)
                || (expect_continue && header_is(name, "expect")))
        {
            continue;
        }
        if http.underscore_headers == UnderscoreHeaders::Drop && name.contains('_') {
            continue;
        }
        if super::policy::is_forwarded_header(name) {
            if !trusted {
                continue;
            }
            if forward_for && header_is(name, "x-forwarded-for") {
                prior_xff.push(h.value);
                continue;
            }
            has_port |= header_is(name, "x-forwarded-port");
            has_proto |= header_is(name, "x-forwarded-proto");
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if host_header.is_none() {
        out.extend_from_slice(b"host: ");
        match authority {
            Some(a) => out.extend_from_slice(a.as_bytes()),
            None => {
                let _ = write!(out, "{}", conn.local);
            }
        }
        out.extend_from_slice(b"\r\n");
    }
    if upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    if forward_for {
        out.extend_from_slice(b"x-forwarded-for: ");
        for prior in prior_xff {
            out.extend_from_slice(prior);
            out.extend_from_slice(b", ");
        }
        let _ = write!(out, "{}\r\n", conn.client.ip().to_canonical());
        if !has_port {
            let _ = write!(out, "x-forwarded-port: {}\r\n", conn.local.port());
        }
        if !has_proto {
            out.extend_from_slice(if conn.tls {
                b"x-forwarded-proto: https\r\n"
            } else {
                b"x-forwarded-proto: http\r\n"
            });
        }
    }
    out.extend_from_slice(b"\r\n");
    Parsed::Ready(Prepared {
        head_len,
        preferred,
        by_cookie: cookie_server.is_some(),
        body,
        http11,
        keep_alive,
        retry_after_send: body == Framing::Empty
            && super::policy::is_idempotent_method(method)
            && !upgrade,
        head_method: method == "HEAD",
        upgrade,
        expect_continue,
        alt_svc: frontend.alt_svc.clone().filter(|_| conn.tls),
        backend,
    })
}

/// A response head from a server, rewritten for the client into `out`.
struct ResponseHead {
    head_len: usize,
    status: u16,
    body: Framing,
    /// The server keeps the connection open after this response.
    reusable: bool,
}

fn rewrite_response(
    buf: &[u8],
    request: &Prepared,
    server_cookie: &str,
    client_keep_alive: bool,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > 64 * 1024 => {
            return Err("response head too large".into());
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("malformed response: {e}")),
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else {
        return Err("malformed response status line".into());
    };
    // httparse takes any three digits; 000-099 is no status (RFC 9110 15), and would be
    // written back as fewer digits.
    if status < 100 {
        return Err(format!("malformed response status {status:03}"));
    }
    let headers = &*resp.headers;
    let body = response_framing(status, headers, request.head_method)?;
    let connection: Vec<&[u8]> = headers
        .iter()
        .filter(|h| header_is(h.name, "connection"))
        .map(|h| h.value)
        .collect();
    let connection_has = |t: &str| connection.iter().any(|v| has_token(v, t));
    let reusable = body != Framing::UntilClose
        && if version == 1 {
            !connection_has("close")
        } else {
            connection_has("keep-alive")
        };
    let switching = status == 101;
    let _ = write!(out, "HTTP/1.1 {status} ");
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let cookie = request.backend.cookie.as_ref();
    let mut alt_svc = request.alt_svc.as_ref();
    for h in headers {
        let name = h.name;
        if header_is(name, "alt-svc") {
            // The server's own advertisement wins.
            alt_svc = None;
        }
        let kept_upgrade = switching && header_is(name, "upgrade");
        if !kept_upgrade && (hop_by_hop(name) || named_in_connection(name, &connection)) {
            continue;
        }
        if let Some(c) = cookie
            && header_is(name, "set-cookie")
            && super::policy::sets_cookie(h.value, &c.name)
        {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(c) = cookie
        && let Some(set) = c.set_cookie(server_cookie, request.by_cookie)
    {
        out.extend_from_slice(b"set-cookie: ");
        out.extend_from_slice(set.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(v) = alt_svc {
        out.extend_from_slice(b"alt-svc: ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if switching {
        out.extend_from_slice(b"connection: upgrade\r\n");
    } else if !client_keep_alive || body == Framing::UntilClose {
        out.extend_from_slice(b"connection: close\r\n");
    } else if !request.http11 {
        // HTTP/1.0 clients close unless told otherwise.
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(ResponseHead {
        head_len,
        status,
        body,
        reusable,
    }))
}

/// A prepared request and its upstream head.
struct Request<'a> {
    head: &'a [u8],
    prepared: Prepared,
}

/// What became of one request.
enum Outcome {
    /// Answered; the client connection may serve another request.
    KeepAlive,
    Close,
}

/// Serve HTTP/1.x on a client connection; `buf` holds bytes already read from it.
pub async fn serve<S>(
    shared: Arc<Shared>,
    frontend: String,
    conn: ConnInfo,
    mut client: S,
    mut buf: BytesMut,
) where
    S: AsyncRead + AsyncWrite + Unpin + Readable,
{
    let mut out = Vec::with_capacity(HEAD_SIZE);
    let mut response_head = Vec::with_capacity(HEAD_SIZE);
    // Connections to servers that get a PROXY header carry this client's address: never
    // shared with another client. Its requests come one at a time: one is all it reuses.
    let private = {
        let http = shared.http();
        Pool::new(1, http.pool_idle_per_server.min(1), http.pool_idle_timeout)
    };
    loop {
        let Some(route) = shared.frontend(&frontend) else {
            let _ = client
                .write_all(&error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "frontend removed",
                    true,
                ))
                .await;
            return;
        };
        // The whole head within request_timeout of waiting for it (slowloris), which also
        // bounds how long an idle keep-alive connection stays.
        // The limits are read once per request: a reload applies from the next one.
        let http = shared.http();
        let head_wait = Wait::Until(Instant::now() + http.request_timeout);
        let mut released = false;
        // When the request's first byte was seen (Tq runs from here).
        let mut started = (!buf.is_empty()).then(Instant::now);
        let prepared = loop {
            if !buf.is_empty() {
                match prepare(&buf, &shared, &http, &route, conn, &mut out) {
                    Parsed::Ready(p) => break p,
                    Parsed::Answer(bytes, close) => {
                        // Answered without a server (a bad request, a redirect): counted
                        // and logged all the same.
                        let head = match close {
                            Close::No { head_len } => &buf[..head_len],
                            Close::Yes => &buf[..],
                        };
                        let (method, path) = request_line(head);
                        let now = Instant::now();
                        Exchange {
                            log: route.log,
                            frontend: &route.name,
                            stats: &route.stats,
                            client: conn.client,
                            method,
                            path,
                            started: started.unwrap_or(now),
                            head_done: now,
                            trace: Trace::default(),
                            status: answer_status(&bytes),
                            bytes_out: Some(bytes.len() as u64),
                        }
                        .finish();
                        started = None;
                        let written = client.write_all(&bytes).await.is_ok();
                        match close {
                            Close::No { head_len } if written => {
                                buf.advance(head_len);
                                continue;
                            }
                            _ => {
                                let _ = client.shutdown().await;
                                return;
                            }
                        }
                    }
                    Parsed::Partial => {}
                }
            }
            // A connection quiet for IDLE_RELEASE gives its buffers back and waits for its
            // next request without them (10,000 idle keep-alive clients are common); a busy
            // one keeps them, with no syscall or allocation more per request.
            let hot = Instant::now() + IDLE_RELEASE;
            let quiet = buf.is_empty() && !released && hot < head_wait.deadline();
            let wait = if quiet { Wait::Until(hot) } else { head_wait };
            match read_more(&mut client, &mut buf, wait).await {
                Ok(0) => return,
                Ok(_) => {
                    started.get_or_insert_with(Instant::now);
                }
                Err(e) if quiet && e == "timed out" => {
                    released = true;
                    super::routes::FREED.set(super::routes::FREED.get() + 1);
                    buf = BytesMut::new();
                    out = Vec::new();
                    response_head = Vec::new();
                    let readable = client.readable();
                    if tokio::time::timeout_at(head_wait.deadline(), readable)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    out.reserve(HEAD_SIZE);
                    response_head.reserve(HEAD_SIZE);
                }
                Err(_) => return,
            }
        };
        let head_done = Instant::now();
        // The request line is copied for the access log only.
        let (method, path) = if route.log == AccessLog::Off {
            (String::new(), String::new())
        } else {
            let (m, p) = request_line(&buf[..prepared.head_len]);
            (m.to_string(), p.to_string())
        };
        buf.advance(prepared.head_len);
        let mut trace = Trace::default();
        let request = Request {
            head: &out,
            prepared,
        };
        // Boxed: a connection waiting for its next request then holds a small task, not
        // one the size of an exchange's state.
        let outcome = Box::pin(exchange(
            &http,
            conn,
            &mut client,
            &mut buf,
            request,
            &mut response_head,
            &private,
            &mut trace,
        ))
        .await;
        let (status, bytes) = trace.answer.unwrap_or((0, 0));
        Exchange {
            log: route.log,
            frontend: &route.name,
            stats: &route.stats,
            client: conn.client,
            method: &method,
            path: &path,
            started: started.unwrap_or(head_done),
            head_done,
            trace,
            status,
            bytes_out: Some(bytes),
        }
        .finish();
        match outcome {
            Outcome::KeepAlive => {}
            Outcome::Close => {
                let _ = client.shutdown().await;
                return;
            }
        }
    }
}

/// Send one request to a server (trying others on failure) and relay its response.
#[expect(
    clippy::too_many_arguments,
    reason = "the connection's buffers and pools, lent for one exchange"
)]
async fn exchange<S>(
    http: &HttpConfig,
    conn: ConnInfo,
    client: &mut S,
    buf: &mut BytesMut,
    request: Request<'_>,
    out: &mut Vec<u8>,
    private: &Pool<Upstream>,
    trace: &mut Trace,
) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Request {
        head,
        prepared: req,
    } = request;
    let backend = &req.backend;
    trace.backend = backend.name.clone();
    let answer = |status, detail: &str| error_response(status, detail, !req.keep_alive);
    let mut tried = [usize::MAX; 3];
    let mut last_error = String::from("no server is available");
    // False once a request body was cut off midway: the client's stream is out of step.
    let mut in_step = true;
    let mut continue_sent = false;
    let mut attempts = 0;
    while attempts < backend.balancer.servers.len().clamp(1, tried.len()) {
        let chosen = match (attempts, req.preferred) {
            (0, Some(i)) => Some(i),
            _ => backend.balancer.pick(conn.client.ip(), &tried[..attempts]),
        };
        let Some(index) = chosen else { break };
        tried[attempts] = index;
        attempts += 1;
        let server = backend.balancer.servers[index].clone();
        let _guard = server.open();
        trace.attempt(server.address, &server.stats);
        let pool = if backend.dialer.proxy_protocol.is_some() {
            private
        } else {
            &*backend.h1_pool
        };
        let dial_at = Instant::now();
        let pooled = (!req.upgrade).then(|| pool.take(server.address)).flatten();
        let reused = pooled.is_some();
        let mut up = match pooled {
            Some(up) => up,
            None => match backend
                .dialer
                .connect(server.address, conn.client, conn.local, &server.stats)
                .await
            {
                Ok(io) => {
                    trace.connect = Some(dial_at.elapsed());
                    Upstream {
                        io,
                        buf: BytesMut::new(),
                    }
                }
                Err(e) => {
                    if matches!(e, super::upstream::ConnectError::Tls(_)) {
                        crate::warn_limited!(backend = %backend.name, server = %server.address, error = %e, "TLS to server failed");
                    } else {
                        crate::warn_limited!(backend = %backend.name, server = %server.address, error = %e, "server unreachable; trying another");
                    }
                    last_error = format!("server {}: {e}", server.address);
                    continue;
                }
            },
        };
        if req.expect_continue && !continue_sent {
            if client
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
            {
                return Outcome::Close;
            }
            continue_sent = true;
        }
        out.clear();
        out.extend_from_slice(head);
        let sent_at = Instant::now();
        let body_wait = Wait::Until(Instant::now() + http.body_timeout);
        match relay(client, buf, &mut up.io, out, req.body, body_wait).await {
            Ok(_) => {}
            Err(RelayError::Source(e)) => {
                debug!(client = %conn.client, error = %e, "request body failed");
                return Outcome::Close;
            }
            Err(RelayError::Sink(e)) => {
                last_error = format!("server {}: {e}", server.address);
                if req.retry_after_send {
                    continue;
                }
                // What is left of the body cannot go anywhere.
                in_step = req.body == Framing::Empty;
                break;
            }
        }
        // The response head, within server_timeout.
        let response_wait = Wait::Until(Instant::now() + http.server_timeout);
        let response = loop {
            if !up.buf.is_empty() {
                out.clear();
                match rewrite_response(&up.buf, &req, &server.cookie, req.keep_alive, out) {
                    Ok(Some(r)) if (100..200).contains(&r.status) && r.status != 101 => {
                        // Interim (103 Early Hints, ...): pass on, wait for the final one.
                        up.buf.advance(r.head_len);
                        if client.write_all(out).await.is_err() {
                            return Outcome::Close;
                        }
                        continue;
                    }
                    Ok(Some(r)) => break Ok(r),
                    Ok(None) => {}
                    Err(e) => break Err(e),
                }
            }
            match read_more(&mut up.io, &mut up.buf, response_wait).await {
                Ok(0) => break Err("closed without a response".into()),
                Ok(_) => {}
                Err(e) if e == "timed out" => {
                    crate::warn_limited!(backend = %backend.name, server = %server.address, "server timeout");
                    let timeout = answer(
                        StatusCode::GATEWAY_TIMEOUT,
                        &format!("server did not answer within {:?}", http.server_timeout),
                    );
                    trace.answer = Some((504, timeout.len() as u64));
                    let _ = client.write_all(&timeout).await;
                    return if req.keep_alive {
                        Outcome::KeepAlive
                    } else {
                        Outcome::Close
                    };
                }
                Err(e) => break Err(e),
            }
        };
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                debug!(backend = %backend.name, server = %server.address, error = %e, reused, "request failed");
                last_error = format!("server {}: {e}", server.address);
                if req.retry_after_send {
                    continue;
                }
                break;
            }
        };
        trace.response = Some(sent_at.elapsed());
        backend.remember_source(conn.client.ip(), index);
        up.buf.advance(response.head_len);
        // relay writes the head in `out` with the body: its count is the answer's bytes.
        trace.answer = Some((response.status, 0));
        if response.status == 101 {
            if !req.upgrade {
                last_error = format!(
                    "server {}: 101 to a request without Upgrade",
                    server.address
                );
                break;
            }
            return tunnel(client, buf, up, out, server.cut_signal()).await;
        }
        let relayed = relay(
            &mut up.io,
            &mut up.buf,
            client,
            out,
            response.body,
            Wait::EachRead(http.server_timeout),
        )
        .await;
        if let (Ok(body), Some((_, head))) = (&relayed, &mut trace.answer) {
            *head += body;
        }
        return match relayed {
            Ok(_) => {
                if response.reusable && up.buf.is_empty() {
                    pool.put(server.address, up);
                }
                if req.keep_alive && response.body != Framing::UntilClose {
                    Outcome::KeepAlive
                } else {
                    Outcome::Close
                }
            }
            Err(e) => {
                debug!(backend = %backend.name, server = %server.address, error = ?e, "response relay failed");
                Outcome::Close
            }
        };
    }
    let response = if attempts == 0 {
        answer(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("backend {:?} has no server available", backend.name),
        )
    } else {
        answer(StatusCode::BAD_GATEWAY, &last_error)
    };
    let status = if attempts == 0 { 503 } else { 502 };
    trace.answer = Some((status, response.len() as u64));
    if client.write_all(&response).await.is_err() || !req.keep_alive || !in_step {
        return Outcome::Close;
    }
    Outcome::KeepAlive
}

/// After 101 Switching Protocols: the head to the client, then bytes both ways until
/// either side closes.
async fn tunnel<S>(
    client: &mut S,
    buf: &mut BytesMut,
    mut up: Upstream,
    out: &mut Vec<u8>,
    cut: impl Future<Output = ()>,
) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    out.extend_from_slice(&up.buf);
    up.buf.clear();
    if client.write_all(out).await.is_err() {
        return Outcome::Close;
    }
    if !buf.is_empty() {
        if up.io.write_all(buf).await.is_err() {
            return Outcome::Close;
        }
        buf.clear();
    }
    // Until either side closes, or the server's flows are reset.
    tokio::select! {
        _ = tokio::io::copy_bidirectional(client, &mut up.io) => {}
        () = cut => {}
    }
    Outcome::Close
}

/// A stream whose first bytes were already read: they are read again first (handing a
/// connection that began with the HTTP/2 preface to hyper).
pub struct Prefixed<S> {
    pub prefix: BytesMut,
    pub inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(out.remaining());
            out.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Whether `buf` (the first bytes of a connection) is, or may still become, the h2c
/// preface.
pub fn may_be_h2_preface(buf: &[u8]) -> bool {
    let n = buf.len().min(H2_PREFACE.len());
    buf[..n] == H2_PREFACE[..n]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(input: &[u8]) -> (Result<usize, &'static str>, Chunk) {
        let mut c = Chunk::new();
        // Byte by byte: the result must not depend on how reads split the stream.
        let mut total = 0;
        for b in input {
            match c.feed(std::slice::from_ref(b)) {
                Ok(n) => total += n,
                Err(e) => return (Err(e), c),
            }
            if c == Chunk::Done {
                break;
            }
        }
        (Ok(total), c)
    }

    #[test]
    fn chunked_bodies_end_where_they_say() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1\r\n";
        let end = body.len() - b"GET / HTTP/1.1\r\n".len();
        assert_eq!(Chunk::new().feed(body), Ok(end));
        let (n, state) = feed_all(&body[..end]);
        assert_eq!((n, state), (Ok(end), Chunk::Done));
        assert_eq!(Chunk::new().feed(b"0\r\n\r\nrest"), Ok(5));
    }

    #[test]
    fn malformed_chunking_is_refused() {
        for bad in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"\r\n",
            b"10000000000000000\r\n",
            b"0\r\n\n",
        ] {
            assert!(
                Chunk::new().feed(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    fn headers(list: &[(&'static str, &'static [u8])]) -> Vec<httparse::Header<'static>> {
        list.iter()
            .map(|(name, value)| httparse::Header { name, value })
            .collect()
    }

    #[test]
    fn request_framing_follows_rfc_9112() {
        let f = |h: &[(&'static str, &'static [u8])]| request_framing(&headers(h), true);
        assert_eq!(f(&[]), Ok(Framing::Empty));
        assert_eq!(f(&[("Content-Length", b"12")]), Ok(Framing::Length(12)));
        assert_eq!(f(&[("content-length", b"7, 7")]), Ok(Framing::Length(7)));
        assert!(f(&[("content-length", b"7, 8")]).is_err());
        assert!(f(&[("content-length", b"-1")]).is_err());
        assert!(f(&[("content-length", b"+1")]).is_err());
        assert_eq!(
            f(&[("Transfer-Encoding", b"gzip, chunked")]),
            Ok(Framing::Chunked)
        );
        assert!(f(&[("transfer-encoding", b"chunked, gzip")]).is_err());
        assert!(f(&[("transfer-encoding", b"chunked"), ("content-length", b"4")]).is_err());
        assert!(request_framing(&headers(&[("transfer-encoding", b"chunked")]), false).is_err());
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let f = |status, h: &[(&'static str, &'static [u8])], head| {
            response_framing(status, &headers(h), head)
        };
        assert_eq!(
            f(200, &[("content-length", b"5")], true),
            Ok(Framing::Empty)
        );
        assert_eq!(f(204, &[], false), Ok(Framing::Empty));
        assert_eq!(
            f(304, &[("content-length", b"5")], false),
            Ok(Framing::Empty)
        );
        assert_eq!(f(200, &[], false), Ok(Framing::UntilClose));
        assert_eq!(
            f(200, &[("transfer-encoding", b"chunked")], false),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            f(200, &[("transfer-encoding", b"gzip")], false),
            Ok(Framing::UntilClose)
        );
        assert_eq!(
            f(200, &[("content-length", b"5")], false),
            Ok(Framing::Length(5))
        );
    }

    #[test]
    fn connection_cannot_strip_framing_headers() {
        let connection: Vec<&[u8]> = vec![b"close, Content-Length, X-Secret, host"];
        assert!(!named_in_connection("content-length", &connection));
        assert!(!named_in_connection("Host", &connection));
        assert!(named_in_connection("x-secret", &connection));
        assert!(!named_in_connection("x-other", &connection));
    }

    #[test]
    fn request_header_rules_follow_rfc_9110_and_9112() {
        let f = |h: &[(&'static str, &'static [u8])], u| check_request_headers(&headers(h), u);
        let drop = UnderscoreHeaders::Drop;
        assert_eq!(
            f(
                &[("Host", b"example.com:8080"), ("Content-Length", b"5")],
                drop
            ),
            Ok(())
        );
        assert_eq!(f(&[("Host", b"[2001:2::1]:80")], drop), Ok(()));
        assert_eq!(f(&[("Host", b"")], drop), Ok(()));
        // RFC 9112 3.2: one Host, and a valid one.
        assert_eq!(
            f(&[("Host", b"a"), ("host", b"a")], drop),
            Err("more than one Host")
        );
        for bad in [&b"a b"[..], b"a/b", b"user@a", b"a?b", b"a#b", b"\xc3\xa9"] {
            assert_eq!(f(&[("Host", bad)], drop), Err("invalid Host"), "{bad:?}");
        }
        // RFC 9110 8.6: one number; not a list, even of equal values, nor the header twice.
        for bad in [
            &[("Content-Length", &b"5, 5"[..])][..],
            &[("Content-Length", b"")],
        ] {
            assert!(f(bad, drop).is_err(), "{bad:?}");
        }
        assert!(f(&[("Content-Length", b"5"), ("content-length", b"5")], drop).is_err());
        // Underscores: dropped while forwarding (the request goes on), refused, or kept.
        let xff = [("X_Forwarded_For", &b"198.18.0.9"[..])];
        assert_eq!(f(&xff, drop), Ok(()));
        assert_eq!(f(&xff, UnderscoreHeaders::Allow), Ok(()));
        assert_eq!(
            f(&xff, UnderscoreHeaders::Reject),
            Err("underscore in a header name")
        );
        // Even where underscores are allowed, an untrusted client's look-alike of a
        // forwarded header is removed with the real ones.
        assert!(super::super::policy::is_forwarded_header("X_Forwarded_For"));
        assert!(super::super::policy::is_forwarded_header(
            "x-forwarded-proto"
        ));
        assert!(!super::super::policy::is_forwarded_header("X_Forwarded_Fo"));
    }

    #[test]
    fn header_names_must_be_tokens() {
        // RFC 9110 5.1: field-name = token. httparse refuses anything else, and prepare
        // answers its errors 400; this keeps that true should httparse ever relax.
        for bad in [
            &b"X Y"[..],
            b"X(Y)",
            b"\"X\"",
            b"X@Y",
            b"X\x7fY",
            b"X/Y",
            b"",
        ] {
            let mut head = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
            head.extend_from_slice(bad);
            head.extend_from_slice(b": 1\r\n\r\n");
            let mut slots = [httparse::EMPTY_HEADER; 4];
            let parsed = httparse::Request::new(&mut slots).parse(&head);
            assert!(parsed.is_err(), "{:?} parsed", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn h2c_upgrades_are_never_forwarded() {
        assert!(forwards_upgrade(true, true, Some(b"websocket")));
        assert!(!forwards_upgrade(true, true, Some(b"h2c")));
        assert!(!forwards_upgrade(true, true, Some(b"websocket, H2C")));
        assert!(!forwards_upgrade(true, false, Some(b"websocket")));
        assert!(!forwards_upgrade(false, true, Some(b"websocket")));
        assert!(hop_by_hop("HTTP2-Settings"));
    }

    #[test]
    fn the_preface_is_recognised_from_its_first_bytes() {
        assert!(may_be_h2_preface(b"PRI * HT"));
        assert!(may_be_h2_preface(H2_PREFACE));
        assert!(!may_be_h2_preface(b"GET / HTTP/1.1\r\n"));
    }
}
