//! Policy shared by the HTTP/1 and HTTP/2 paths: what is known of a client connection,
//! X-Forwarded-* headers, the sticky cookie, Host without its port, and which requests
//! may be retried.

use std::{net::SocketAddr, time::Duration};

/// What the proxy knows of a client connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub client: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
}

/// A Host value without its port; IPv6 brackets are kept whole.
pub fn without_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if port.parse::<u16>().is_ok() && !name.ends_with(':') => name,
        _ => host,
    }
}

/// The value of cookie `name` in one Cookie header value.
pub fn cookie_in<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// Whether a Set-Cookie value sets cookie `name` (insert mode owns that name).
pub fn sets_cookie(value: &[u8], name: &str) -> bool {
    let value = value.trim_ascii_start();
    value.starts_with(name.as_bytes()) && value.get(name.len()) == Some(&b'=')
}

/// Request headers only a trusted proxy may send: anyone else's are removed.
pub const FORWARDED_HEADERS: [&str; 4] = [
    "x-forwarded-for",
    "x-forwarded-port",
    "x-forwarded-proto",
    "forwarded",
];

/// Whether `name` is one of [`FORWARDED_HEADERS`], or would pass for one with `_` for `-`
/// (`X_Forwarded_For`: CGI-style servers read both alike), even where underscores are
/// allowed.
pub fn is_forwarded_header(name: &str) -> bool {
    FORWARDED_HEADERS.iter().any(|f| {
        f.len() == name.len()
            && f.bytes()
                .zip(name.bytes())
                .all(|(f, n)| f == n.to_ascii_lowercase() || (f == b'-' && n == b'_'))
    })
}

/// RFC 9110 9.2.2: may be sent again after a failed attempt.
pub fn is_idempotent_method(m: &str) -> bool {
    matches!(m, "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE")
}

/// The sticky cookie of a backend (HAProxy's `cookie NAME insert`).
#[derive(Debug)]
pub struct CookieConfig {
    pub name: String,
    pub ttl: Option<Duration>,
}

impl CookieConfig {
    /// Remove a same-named cookie the server set (insert mode owns that name) and set ours,
    /// unless the client already holds the right one and there is no TTL to refresh.
    pub fn insert(&self, headers: &mut ::http::HeaderMap, server: &str, already: bool) {
        let kept: Vec<::http::HeaderValue> = headers
            .get_all(::http::header::SET_COOKIE)
            .iter()
            .filter(|v| !sets_cookie(v.as_bytes(), &self.name))
            .cloned()
            .collect();
        headers.remove(::http::header::SET_COOKIE);
        for v in kept {
            headers.append(::http::header::SET_COOKIE, v);
        }
        if let Some(cookie) = self.set_cookie(server, already)
            && let Ok(v) = ::http::HeaderValue::from_str(&cookie)
        {
            headers.append(::http::header::SET_COOKIE, v);
        }
    }

    /// Our Set-Cookie value for `server`, unless the client already holds it and there is
    /// no TTL to refresh.
    pub fn set_cookie(&self, server: &str, already: bool) -> Option<String> {
        if already && self.ttl.is_none() {
            return None;
        }
        let mut cookie = format!("{}={server}; Path=/; HttpOnly", self.name);
        if let Some(ttl) = self.ttl {
            cookie += &format!("; Max-Age={}", ttl.as_secs());
        }
        Some(cookie)
    }
}
