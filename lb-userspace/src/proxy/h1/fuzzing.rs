//! The HTTP/1 path's parsers as plain functions, for the fuzz targets in `fuzz/` (and their
//! corpus replay in `cargo xtask test`): the request head (framing, checks and the rewrite
//! for the server), the response head (framing and the rewrite for the client) and the
//! chunked-body parser, reachable without sockets. Nothing here is used by the proxy.

pub use super::Framing;
use super::{
    Chunk, Close, ConnInfo, FrontendRoute, HttpConfig, Parsed, Prepared, Shared, prepare,
    rewrite_response,
};

/// The body framing of a request with `headers` (RFC 9112 6.3), or why it is refused.
pub fn request_framing(
    headers: &[httparse::Header],
    http11: bool,
) -> Result<Framing, &'static str> {
    super::request_framing(headers, http11)
}

/// The body framing of a response with `status` and `headers` to a request (HEAD or not).
pub fn response_framing(
    status: u16,
    headers: &[httparse::Header],
    head_method: bool,
) -> Result<Framing, &'static str> {
    super::response_framing(status, headers, head_method)
}

/// What the proxy makes of the bytes of a request head.
pub enum Request {
    /// Not a whole head yet: read more.
    Partial,
    /// Answered by the proxy itself (an error or a redirect). `continue_after` is the head's
    /// length when the connection goes on with the next request, `None` when it closes.
    Answer {
        response: Vec<u8>,
        continue_after: Option<usize>,
    },
    /// A request for a server.
    Ready(RequestHead),
}

/// A request head checked and rewritten for a server.
pub struct RequestHead {
    /// The bytes of the client's head.
    pub head_len: usize,
    /// How the request body is delimited.
    pub body: Framing,
    /// The head as sent to the server.
    pub upstream: Vec<u8>,
    /// The backend it is routed to.
    pub backend: String,
    pub http11: bool,
    pub keep_alive: bool,
    pub head_method: bool,
    pub upgrade: bool,
    pub expect_continue: bool,
    prepared: Prepared,
}

/// Parse a request head at the start of `buf` as frontend `frontend` would.
pub fn request(
    buf: &[u8],
    shared: &Shared,
    http: &HttpConfig,
    frontend: &FrontendRoute,
    conn: ConnInfo,
) -> Request {
    let mut out = Vec::new();
    match prepare(buf, shared, http, frontend, conn, &mut out) {
        Parsed::Partial => Request::Partial,
        Parsed::Answer(response, close) => Request::Answer {
            response,
            continue_after: match close {
                Close::Yes => None,
                Close::No { head_len } => Some(head_len),
            },
        },
        Parsed::Ready(p) => Request::Ready(RequestHead {
            head_len: p.head_len,
            body: p.body,
            upstream: out,
            backend: p.backend.name.clone(),
            http11: p.http11,
            keep_alive: p.keep_alive,
            head_method: p.head_method,
            upgrade: p.upgrade,
            expect_continue: p.expect_continue,
            prepared: p,
        }),
    }
}

/// A server's response head, rewritten for the client.
pub struct ResponseHead {
    pub head_len: usize,
    pub status: u16,
    pub body: Framing,
    /// The server connection may serve another request.
    pub reusable: bool,
    /// The head as sent to the client.
    pub downstream: Vec<u8>,
}

/// Parse a response head at the start of `buf`, the answer to `request` from the server
/// whose cookie value is `server_cookie`; `Ok(None)` while incomplete.
pub fn response(
    buf: &[u8],
    request: &RequestHead,
    server_cookie: &str,
    client_keep_alive: bool,
) -> Result<Option<ResponseHead>, String> {
    let mut out = Vec::new();
    let head = rewrite_response(
        buf,
        &request.prepared,
        server_cookie,
        client_keep_alive,
        &mut out,
    )?;
    Ok(head.map(|h| ResponseHead {
        head_len: h.head_len,
        status: h.status,
        body: h.body,
        reusable: h.reusable,
        downstream: out,
    }))
}

/// The chunked-body parser, fed bytes as they arrive.
pub struct Chunked(Chunk);

impl Default for Chunked {
    fn default() -> Self {
        Chunked(Chunk::new())
    }
}

impl Chunked {
    /// How many of `data`'s bytes belong to the body (all of them until it ends).
    pub fn feed(&mut self, data: &[u8]) -> Result<usize, &'static str> {
        self.0.feed(data)
    }

    /// The body has ended (the last chunk and the trailers were read).
    pub fn done(&self) -> bool {
        self.0 == Chunk::Done
    }
}
