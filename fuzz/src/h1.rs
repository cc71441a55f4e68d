//! The HTTP/1 path (`proxy::h1`) on a client's bytes and a server's answer: a request
//! head, its body, then a response head and its body, as one stream. Nothing panics, and
//! what lb writes is what it decided: the head sent to the server parses whole with the
//! same method, version and body framing (no request smuggling), keeps no hop-by-hop or
//! (untrusted) forwarding header of the client's, and carries lb's own X-Forwarded-*; the
//! head sent back to the client parses whole with the same status and framing; answers lb
//! gives itself are whole responses; the end of a head is found at the same byte however
//! much of it has arrived.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, OnceLock},
};

use lb_userspace::{
    config::{Config, HttpConfig},
    proxy::{
        h1::fuzzing::{self, Framing, Request, RequestHead},
        policy::ConnInfo,
        routes::{FrontendRoute, Routes, Shared},
    },
};

use super::{h1_chunked, support::Input};

/// The HTTP frontend of examples/full.toml (ACLs by path and host, trusted proxies
/// 198.18.0.0/24, a cookie-sticky backend, one without X-Forwarded-For, one with PROXY v2).
const FULL: &str = include_str!("../../examples/full.toml");
/// Headers the server-side head may hold at most: the client's, and lb's own.
const MAX_UPSTREAM_HEADERS: usize = 600;

struct World {
    shared: Shared,
    site: Arc<FrontendRoute>,
    /// The same frontend answering plain HTTP with a redirect to https on port 8443.
    redirect: FrontendRoute,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let config = Config::parse("full.toml", FULL).expect("examples/full.toml parses");
        let routes = Routes::build(&config, &Routes::default(), &|_, _| true, &|_, _| false, 1)
            .expect("the routes of examples/full.toml");
        let site = routes.frontends["site"].clone();
        let redirect = FrontendRoute {
            name: site.name.clone(),
            default_backend: site.default_backend.clone(),
            rules: site.rules.clone(),
            redirect_ssl: true,
            https_port: 8443,
            forward_for: site.forward_for,
            trusted: site.trusted.clone(),
            max_connections: site.max_connections,
            open: site.open.clone(),
            stats: site.stats.clone(),
            log: site.log,
            alt_svc: None,
        };
        let shared = Shared::default();
        *shared.routes.write().unwrap() = Arc::new(routes);
        *shared.http.write().unwrap() = Arc::new(config.http.clone());
        World {
            shared,
            site,
            redirect,
        }
    })
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let limits = input.u8();
    let world = world();
    let frontend = if flags & 1 == 0 {
        &*world.site
    } else {
        &world.redirect
    };
    let client = match (flags >> 1) & 3 {
        0 => IpAddr::V4(Ipv4Addr::new(198, 18, 0, 7)), // a trusted proxy
        1 => IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)),
        2 => IpAddr::V6(Ipv4Addr::new(198, 18, 0, 7).to_ipv6_mapped()),
        _ => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9)),
    };
    let local = if client.is_ipv4() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 100, 3)), 80)
    } else {
        SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            8080,
        )
    };
    let conn = ConnInfo {
        client: SocketAddr::new(client, 40000),
        local,
        tls: flags & 8 != 0,
    };
    let defaults = HttpConfig::default();
    let http = HttpConfig {
        max_headers: match limits & 15 {
            0..=7 => defaults.max_headers,
            n => usize::from(n) - 7,
        },
        max_header_bytes: if limits & 16 == 0 {
            defaults.max_header_bytes
        } else {
            8192
        },
        ..defaults
    };
    let stream = input.rest();
    let request = |buf: &[u8]| fuzzing::request(buf, &world.shared, &http, frontend, conn);
    let parsed = request(stream);
    if super::support::tracing() {
        trace(&parsed);
    }
    let head = match parsed {
        Request::Partial => {
            assert!(
                stream.len() <= http.max_header_bytes,
                "{} bytes of an unfinished head are waited on",
                stream.len()
            );
            return;
        }
        Request::Answer {
            response,
            continue_after,
        } => {
            let status = whole_response(&response);
            assert!(status >= 300, "lb answered {status} itself");
            if let Some(n) = continue_after {
                assert!(n <= stream.len() && status == 301, "goes on after {n}");
            }
            return;
        }
        Request::Ready(head) => head,
    };
    assert!(head.head_len <= stream.len());
    assert!(
        matches!(request(&stream[..head.head_len - 1]), Request::Partial),
        "a head is found before its end"
    );
    let trusted = frontend.trusts(client);
    check_upstream(&head, world, frontend, trusted, conn);

    // The request body, then the server's answer.
    let rest = &stream[head.head_len..];
    let Some(request_body) = body_len(head.body, rest, flags) else {
        return;
    };
    let rest = &rest[request_body..];
    let answer = |buf: &[u8]| fuzzing::response(buf, &head, "c0ffee", head.keep_alive);
    let response = match answer(rest) {
        Err(_) => return, // a 502 to the client
        Ok(None) => {
            assert!(
                rest.len() <= 64 * 1024,
                "an unfinished response head is waited on"
            );
            return;
        }
        Ok(Some(r)) => r,
    };
    assert!(
        response.head_len > 64 * 1024 || matches!(answer(&rest[..response.head_len - 1]), Ok(None)),
        "a response head is found before its end"
    );
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut parsed = httparse::Response::new(&mut headers);
    let status = parsed.parse(&response.downstream);
    assert!(
        matches!(status, Ok(httparse::Status::Complete(n)) if n == response.downstream.len()),
        "the head for the client does not parse whole ({status:?}): {:?}",
        text(&response.downstream)
    );
    assert_eq!(parsed.code, Some(response.status));
    assert_eq!(parsed.version, Some(1), "always HTTP/1.1 to the client");
    let framing = fuzzing::response_framing(response.status, parsed.headers, head.head_method);
    assert_eq!(
        framing,
        Ok(response.body),
        "the client reads another body than lb relays: {:?}",
        text(&response.downstream)
    );
    let switching = response.status == 101;
    for h in parsed.headers.iter() {
        let hop = ["keep-alive", "proxy-connection", "te"]
            .iter()
            .any(|n| h.name.eq_ignore_ascii_case(n))
            || (h.name.eq_ignore_ascii_case("upgrade") && !switching);
        assert!(!hop, "hop-by-hop {:?} to the client", h.name);
        if h.name.eq_ignore_ascii_case("connection") {
            assert!(
                [&b"close"[..], b"keep-alive", b"upgrade"].contains(&h.value),
                "the server's Connection reached the client: {:?}",
                text(h.value)
            );
        }
    }
    if response.body == Framing::UntilClose {
        assert!(
            parsed
                .headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("connection") && h.value == b"close"),
            "a close-delimited body without connection: close"
        );
    }
    // A backend with a sticky cookie owns its name: the server's are removed, lb sets one.
    let backend = world
        .shared
        .backend(&head.backend)
        .expect("routed to a backend");
    if let Some(cookie) = &backend.cookie {
        let prefix = format!("{}=", cookie.name);
        let cookies = parsed
            .headers
            .iter()
            .filter(|h| {
                h.name.eq_ignore_ascii_case("set-cookie")
                    && h.value.trim_ascii_start().starts_with(prefix.as_bytes())
            })
            .count();
        assert!(cookies <= 1, "{cookies} {} cookies set", cookie.name);
    }
    let _ = body_len(response.body, &rest[response.head_len..], flags);
}

/// The head lb sends to the server.
fn check_upstream(
    head: &RequestHead,
    world: &World,
    frontend: &FrontendRoute,
    trusted: bool,
    conn: ConnInfo,
) {
    let up = &head.upstream;
    let mut headers = [httparse::EMPTY_HEADER; MAX_UPSTREAM_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let status = parsed.parse(up);
    assert!(
        matches!(status, Ok(httparse::Status::Complete(n)) if n == up.len()),
        "the head for the server does not parse whole ({status:?}): {:?}",
        text(up)
    );
    assert_eq!(parsed.version, Some(u8::from(head.http11)));
    let framing = fuzzing::request_framing(parsed.headers, head.http11);
    assert_eq!(
        framing,
        Ok(head.body),
        "the server reads another body than lb relays: {:?}",
        text(up)
    );
    let headers = &*parsed.headers;
    let named = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
    };
    assert!(named("host").count() >= 1, "no Host: {:?}", text(up));
    for h in headers {
        let hop = ["keep-alive", "proxy-connection", "te"]
            .iter()
            .any(|n| h.name.eq_ignore_ascii_case(n))
            || (h.name.eq_ignore_ascii_case("upgrade") && !head.upgrade);
        assert!(
            !hop,
            "hop-by-hop {:?} to the server: {:?}",
            h.name,
            text(up)
        );
        if h.name.eq_ignore_ascii_case("connection") {
            assert!(head.upgrade && h.value == b"upgrade", "{:?}", text(up));
        }
        if head.expect_continue {
            assert!(
                !h.name.eq_ignore_ascii_case("expect"),
                "Expect is answered by lb"
            );
        }
    }
    let backend = world
        .shared
        .backend(&head.backend)
        .expect("routed to a backend");
    let forward_for = backend.forward_for.unwrap_or(frontend.forward_for);
    let xff: Vec<&[u8]> = named("x-forwarded-for").map(|h| h.value).collect();
    if forward_for {
        assert_eq!(xff.len(), 1, "one X-Forwarded-For: {:?}", text(up));
        let client = conn.client.ip().to_canonical().to_string();
        assert!(
            xff[0].ends_with(client.as_bytes()),
            "X-Forwarded-For ends with the client: {:?}",
            text(up)
        );
        if !trusted {
            assert_eq!(xff[0], client.as_bytes(), "an untrusted client's XFF kept");
        }
        // A trusted proxy's own X-Forwarded-Port/-Proto are kept instead of lb's.
        for name in ["x-forwarded-port", "x-forwarded-proto"] {
            let count = named(name).count();
            assert!(
                count == 1 || (trusted && count > 1),
                "{count} {name}: {:?}",
                text(up)
            );
        }
    }
    if !trusted {
        assert_eq!(named("forwarded").count(), 0, "an untrusted Forwarded kept");
        if !forward_for {
            assert!(xff.is_empty(), "an untrusted X-Forwarded-For kept");
        }
    }
}

/// A response lb wrote itself: whole, and its status.
fn whole_response(bytes: &[u8]) -> u16 {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut parsed = httparse::Response::new(&mut headers);
    let status = parsed.parse(bytes);
    assert!(
        matches!(status, Ok(httparse::Status::Complete(_))),
        "lb's own answer does not parse ({status:?}): {:?}",
        text(bytes)
    );
    let code = parsed.code.expect("a status");
    let framing = fuzzing::response_framing(code, parsed.headers, false);
    let head_len = match status {
        Ok(httparse::Status::Complete(n)) => n,
        _ => unreachable!(),
    };
    assert_eq!(
        framing,
        Ok(if head_len == bytes.len() {
            Framing::Empty
        } else {
            Framing::Length((bytes.len() - head_len) as u64)
        }),
        "lb's own answer is framed by its length: {:?}",
        text(bytes)
    );
    code
}

/// How long a body framed by `framing` at the start of `data` is, when it is all there.
fn body_len(framing: Framing, data: &[u8], split: u8) -> Option<usize> {
    match framing {
        Framing::Empty => Some(0),
        Framing::Length(n) => usize::try_from(n).ok().filter(|n| *n <= data.len()),
        Framing::Chunked => h1_chunked::body_end(data, split).ok().flatten(),
        Framing::UntilClose => None,
    }
}

fn trace(parsed: &Request) {
    match parsed {
        Request::Partial => eprintln!("request: partial"),
        Request::Answer { response, .. } => eprintln!("request: answered {:?}", text(response)),
        Request::Ready(head) => eprintln!(
            "request: to {} with {:?} body:\n{}",
            head.backend,
            head.body,
            text(&head.upstream)
        ),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
