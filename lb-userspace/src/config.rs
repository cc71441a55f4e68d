//! The config file: a TOML rendering of the product's object model (frontends and backends,
//! see README "Config reference"), its parsing and its validation.
//!
//! Validation reports every problem at once, each with the field path, the file line, what is
//! wrong and how to fix it.

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    net::IpAddr,
    path::Path,
};

use serde::{Deserialize, Serialize};

pub const MAX_WEIGHT: i64 = 100;

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The load balancers frontends and backends belong to (`lb`); none listed means one,
    /// with id "1".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lbs: Vec<LoadBalancer>,
    #[serde(default)]
    pub frontends: Vec<Frontend>,
    #[serde(default)]
    pub backends: Vec<Backend>,
    /// Inventory for `servers = { type = "computer", ... }`: computer id -> address.
    #[serde(default)]
    pub computers: BTreeMap<String, IpAddr>,
    #[serde(default)]
    pub dataplane: DataplaneConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub api: ApiConfig,
}

/// A load balancer of the product's API (`/v1/lbs/{id}`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancer {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Ports published through `POST /v1/lbs/{id}/public_ports`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public_ports: Vec<PublicPort>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublicPort {
    pub port: u16,
    #[serde(default)]
    pub desc: String,
    pub public_port: u16,
}

/// The REST API (`/v1/...`), off unless `listen` is set.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address and port, for example "127.0.0.1:8081".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<std::net::SocketAddr>,
    /// Bearer tokens, one per line: `rw TOKEN` (may change things) or `ro TOKEN` (may only
    /// read); `#` starts a comment. Tokens may also come from the environment:
    /// LB_API_TOKEN (read-write) and LB_API_READONLY_TOKEN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<std::path::PathBuf>,
}

/// The id of the load balancer that frontends and backends without `lb` belong to.
pub const DEFAULT_LB: &str = "1";

/// Limits and timeouts of the userspace proxy (http frontends, and tcp frontends whose
/// backend sends a PROXY header).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Establishing a connection to a server (then the next server is tried).
    pub connect_timeout: String,
    /// Waiting for a server's response headers (then 504).
    pub server_timeout: String,
    /// A client's whole request head must arrive within this, and an idle keep-alive
    /// connection is closed after it: slow clients (slowloris) cannot hold connections.
    pub request_timeout: String,
    /// A request body must arrive within this after its head.
    pub body_timeout: String,
    /// Largest request head, in bytes (at least 8192).
    pub max_header_bytes: usize,
    /// Most request headers.
    pub max_headers: usize,
    /// Idle pooled connections kept per server.
    pub pool_idle_per_server: usize,
    /// Proxy worker threads.
    pub workers: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connect_timeout: "3s".into(),
            server_timeout: "30s".into(),
            request_timeout: "10s".into(),
            body_timeout: "60s".into(),
            max_header_bytes: 16384,
            max_headers: 100,
            pool_idle_per_server: 64,
            workers: 2,
        }
    }
}

impl HttpConfig {
    fn get(text: &str, default: u64) -> std::time::Duration {
        duration(text).unwrap_or(std::time::Duration::from_secs(default))
    }
    pub fn connect_timeout(&self) -> std::time::Duration {
        Self::get(&self.connect_timeout, 3)
    }
    pub fn server_timeout(&self) -> std::time::Duration {
        Self::get(&self.server_timeout, 30)
    }
    pub fn request_timeout(&self) -> std::time::Duration {
        Self::get(&self.request_timeout, 10)
    }
    pub fn body_timeout(&self) -> std::time::Duration {
        Self::get(&self.body_timeout, 60)
    }
}

/// Prometheus metrics.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address and port of `/metrics`, for example "127.0.0.1:9100"; absent = off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<std::net::SocketAddr>,
}

/// Connection tracking: capacity and the idle timeouts of each flow state.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataplaneConfig {
    /// Flows tracked at once (each flow also holds a reverse entry).
    pub conntrack_size: u32,
    pub tcp_syn_timeout: String,
    pub tcp_established_timeout: String,
    pub tcp_closing_timeout: String,
    pub udp_timeout: String,
    /// How often expired flows are removed and open-flow counts reconciled.
    pub gc_interval: String,
    /// Where maps and XDP links are pinned (a BPF filesystem), so a restarted daemon takes
    /// over the running data plane and every tracked flow.
    pub pin_path: std::path::PathBuf,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            conntrack_size: lb_common::maps::CONNTRACK_ENTRIES,
            tcp_syn_timeout: "10s".into(),
            tcp_established_timeout: "1h".into(),
            tcp_closing_timeout: "10s".into(),
            udp_timeout: "30s".into(),
            gc_interval: "1s".into(),
            pin_path: "/sys/fs/bpf/lb".into(),
        }
    }
}

impl DataplaneConfig {
    /// The timeouts, after validation.
    pub fn timeouts(&self) -> lb_common::flow::Timeouts {
        let ns = |s: &str| duration(s).map_or(0, |d| d.as_nanos() as u64);
        lb_common::flow::Timeouts {
            syn_ns: ns(&self.tcp_syn_timeout),
            established_ns: ns(&self.tcp_established_timeout),
            closing_ns: ns(&self.tcp_closing_timeout),
            udp_ns: ns(&self.udp_timeout),
        }
    }

    pub fn gc_interval(&self) -> std::time::Duration {
        duration(&self.gc_interval).unwrap_or(std::time::Duration::from_secs(1))
    }
}

/// An address or prefix: "198.18.0.0/24", "2001:2::/48", "198.18.0.1".
pub fn parse_cidr(text: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = match text.trim().split_once('/') {
        Some((a, l)) => (a.parse::<IpAddr>().ok()?, l.parse::<u8>().ok()?),
        None => {
            let a = text.trim().parse::<IpAddr>().ok()?;
            (a, if a.is_ipv4() { 32 } else { 128 })
        }
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((addr, len))
}

/// Whether `addr` is inside the prefix `net`/`len` (IPv4-mapped addresses count as IPv4).
pub fn cidr_contains((net, len): (IpAddr, u8), addr: IpAddr) -> bool {
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    };
    match (net, addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// A duration such as "500ms", "10s", "5m" or "1h".
pub fn duration(text: &str) -> Option<std::time::Duration> {
    humantime::parse_duration(text.trim()).ok()
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Tcp,
    Http,
}

#[derive(
    Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Frontend {
    /// The load balancer it belongs to (default: the first of `lbs`, or "1").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lb: Option<String>,
    pub name: String,
    pub mode: Mode,
    /// The virtual IP clients connect to.
    #[schema(value_type = String)]
    pub address: IpAddr,
    pub binds: Vec<Bind>,
    pub default_backend: String,
    /// Interfaces the XDP program is attached to for this frontend: where client traffic
    /// arrives and where server replies arrive.
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// Source address for packets sent to servers; replies must route back to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub snat_address: Option<IpAddr>,
    #[serde(default)]
    pub forwarding: Forwarding,
    /// http: named conditions for `backends` rules.
    #[serde(default)]
    pub acls: Vec<Acl>,
    /// http: routing rules, evaluated in order; the first whose ACL matches wins, else
    /// `default_backend`.
    #[serde(default)]
    pub backends: Vec<RouteRule>,
    #[serde(default)]
    pub options: FrontendOptions,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Acl {
    pub name: String,
    /// `path_beg` (path begins with) or `hdr_host` (Host equals, port ignored).
    pub criterion: String,
    pub value: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    pub backend: String,
    /// Only "if".
    pub cond: String,
    /// The name of an ACL of this frontend.
    pub test: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FrontendOptions {
    /// Answer plain-HTTP requests with a 301 to https.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_ssl: Option<bool>,
    /// Add X-Forwarded-For/-Port/-Proto (default on for http); a backend may turn it off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_for: Option<bool>,
    /// Clients (CIDRs) whose X-Forwarded-* headers are kept and appended to; everyone
    /// else's are replaced.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// Full NAT: servers see lb's SNAT address; replies come back through lb.
    #[default]
    Nat,
    /// L2 direct server return: servers hold the VIP and answer clients directly.
    Dsr,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Bind {
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    /// http: terminate TLS on this bind with `ssl_certificate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl: Option<bool>,
    /// PEM file with the certificate chain and its private key (as HAProxy's `crt`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_certificate: Option<String>,
    /// Not supported; refused when true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_http3: Option<bool>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// The load balancer it belongs to (default: the first of `lbs`, or "1").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lb: Option<String>,
    pub name: String,
    pub mode: Mode,
    pub balancing_method: String,
    pub port: PortValue,
    pub servers: Servers,
    #[serde(default)]
    pub options: BackendOptions,
}

/// Backend options of the product's object model. Those a later part of lb implements are
/// accepted by the parser and refused by validation with a clear message, never ignored.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_verify: Option<bool>,
    /// PEM file of CA certificates that `tls_verify` trusts instead of the system roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_for: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sticky_session: Option<StickySession>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<crate::health::HealthCheck>,
    /// Maglev table size M (a prime, at least 100 x servers); default 65537.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u32>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StickySession {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// The API accepts a port as an integer or a numeric string.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(untagged)]
pub enum PortValue {
    Number(i64),
    Text(String),
}

impl PortValue {
    pub fn get(&self) -> Option<u16> {
        match self {
            PortValue::Number(n) => u16::try_from(*n).ok().filter(|p| *p != 0),
            PortValue::Text(s) => s.trim().parse::<u16>().ok().filter(|p| *p != 0),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Servers {
    Addresses { addresses: Vec<ServerAddress> },
    Computer { computer_ids: Vec<String> },
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerAddress {
    /// Kept as text and parsed in validation: inside the tagged `servers` enum the TOML
    /// parser can only point at the whole table, validation can point at the field.
    pub address: String,
    #[serde(default = "default_weight")]
    pub weight: i64,
    /// Most open flows for `first` and `leastconn`; absent = no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_conn: Option<u32>,
}

fn default_weight() -> i64 {
    1
}

/// The balancing methods the XDP data plane implements.
pub const XDP_METHODS: &[&str] = &["roundrobin", "leastconn", "first", "source", "maglev"];
/// The balancing methods of the userspace proxy (http backends).
pub const HTTP_METHODS: &[&str] = &["roundrobin", "leastconn", "first", "source"];
/// Methods that enforce `max_conn` (they scan servers per new flow).
pub const MAX_CONN_METHODS: &[&str] = &["first", "leastconn"];
/// Methods that use a Maglev table (and so `table_size`).
pub const MAGLEV_METHODS: &[&str] = &["source", "maglev"];
/// Largest Maglev table the maps hold.
pub const MAX_TABLE_SIZE: u32 = lb_common::maps::RING_STRIDE;

/// One resolved server of a backend.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedServer {
    pub address: IpAddr,
    pub weight: u32,
    pub max_conn: u32,
}

impl Backend {
    /// Servers with computer ids resolved through the inventory. Call after validation.
    pub fn resolved_servers(&self, computers: &BTreeMap<String, IpAddr>) -> Vec<ResolvedServer> {
        match &self.servers {
            Servers::Addresses { addresses } => addresses
                .iter()
                .filter_map(|s| {
                    Some(ResolvedServer {
                        address: s.address.parse().ok()?,
                        weight: s.weight.clamp(0, MAX_WEIGHT) as u32,
                        max_conn: s.max_conn.unwrap_or(0),
                    })
                })
                .collect(),
            Servers::Computer { computer_ids } => computer_ids
                .iter()
                .filter_map(|id| computers.get(id))
                .map(|&address| ResolvedServer {
                    address,
                    weight: 1,
                    max_conn: 0,
                })
                .collect(),
        }
    }
}

/// One validation problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Field path, for example `backends[0].servers.addresses[2].weight`.
    pub field: String,
    pub message: String,
    pub fix: String,
}

/// Everything wrong with a config file, located in the file.
#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<(Option<usize>, Problem)>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} has {} problem(s):", self.file, self.problems.len())?;
        for (line, p) in &self.problems {
            match line {
                Some(line) => write!(f, "  {}:{}: ", self.file, line)?,
                None => write!(f, "  {}: ", self.file)?,
            }
            writeln!(f, "{}: {}\n    fix: {}", p.field, p.message, p.fix)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            problems: vec![(
                None,
                Problem {
                    field: "(file)".into(),
                    message: format!("cannot read the file: {e}"),
                    fix: "check the path given to --config".into(),
                },
            )],
        })?;
        Config::parse(&file, &text)
    }

    /// Parse and validate config text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            ConfigError {
                file: file.to_string(),
                problems: vec![(
                    line,
                    Problem {
                        field: "(syntax)".into(),
                        message: e.message().trim().to_string(),
                        fix: "see the config reference in README.md and examples/".into(),
                    },
                )],
            }
        })?;
        let problems = config.validate();
        if problems.is_empty() {
            return Ok(config);
        }
        let doc = toml_edit::Document::parse(text).ok();
        Err(ConfigError {
            file: file.to_string(),
            problems: problems
                .into_iter()
                .map(|p| {
                    let line = doc
                        .as_ref()
                        .and_then(|d| locate(d, &p.field))
                        .map(|offset| line_of(text, offset));
                    (line, p)
                })
                .collect(),
        })
    }

    /// The Maglev table size of a backend (validated to be prime and large enough).
    pub fn table_size(backend: &Backend) -> u32 {
        backend
            .options
            .table_size
            .unwrap_or(lb_common::maps::RING_SIZE_DEFAULT)
    }

    /// Source-IP stickiness TTL in seconds (0 = off), after validation.
    pub fn sticky_ttl_s(backend: &Backend) -> u32 {
        match &backend.options.sticky_session {
            Some(s) if s.kind == "source_ip" => s
                .ttl
                .as_deref()
                .and_then(duration)
                .map_or(300, |d| d.as_secs().max(1) as u32),
            _ => 0,
        }
    }

    /// Check every rule; an empty list means the config is valid.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut problem = |field: String, message: String, fix: &str| {
            out.push(Problem {
                field,
                message,
                fix: fix.to_string(),
            })
        };

        let mut backend_names = HashSet::new();
        for (i, b) in self.backends.iter().enumerate() {
            let at = format!("backends[{i}]");
            if b.name.trim().is_empty() {
                problem(
                    format!("{at}.name"),
                    "a backend needs a name".into(),
                    "set name = \"...\"",
                );
            } else if !backend_names.insert(b.name.as_str()) {
                problem(
                    format!("{at}.name"),
                    format!("backend name {:?} is used twice", b.name),
                    "give each backend a unique name",
                );
            }
            let method = b.balancing_method.as_str();
            if !XDP_METHODS.contains(&method) {
                problem(
                    format!("{at}.balancing_method"),
                    format!("unknown balancing_method {method:?}"),
                    "use one of: roundrobin, leastconn, first, source, maglev",
                );
            }
            self.validate_options(b, &at, &mut problem);
            if b.port.get().is_none() {
                problem(
                    format!("{at}.port"),
                    format!("port {:?} is not a port number", b.port),
                    "use an integer (or numeric string) from 1 to 65535",
                );
            }
            match &b.servers {
                Servers::Addresses { addresses } => {
                    if addresses.len() > lb_common::maps::MAX_SERVERS_PER_BACKEND as usize {
                        problem(
                            format!("{at}.servers.addresses"),
                            format!("{} servers; a backend has at most 500", addresses.len()),
                            "split the servers across backends",
                        );
                    }
                    let mut seen = HashSet::new();
                    for (j, s) in addresses.iter().enumerate() {
                        let sat = format!("{at}.servers.addresses[{j}]");
                        if s.max_conn.is_some() && !MAX_CONN_METHODS.contains(&method) {
                            problem(
                                format!("{sat}.max_conn"),
                                format!(
                                    "max_conn is enforced only by first and leastconn, not {method}"
                                ),
                                "remove max_conn, or use balancing_method = \"first\" or \"leastconn\"",
                            );
                        }
                        if !(0..=MAX_WEIGHT).contains(&s.weight) {
                            problem(
                                format!("{sat}.weight"),
                                format!("weight {} is outside 0..100", s.weight),
                                "use a weight from 0 (drain) to 100",
                            );
                        }
                        match s.address.parse::<IpAddr>() {
                            Err(_) => problem(
                                format!("{sat}.address"),
                                format!("{:?} is not an IP address", s.address),
                                "write an IPv4 or IPv6 address, such as \"198.18.1.10\"",
                            ),
                            Ok(a) if a.is_unspecified() || a.is_multicast() => problem(
                                format!("{sat}.address"),
                                format!("{a} cannot be a server address"),
                                "use the server's unicast address",
                            ),
                            Ok(a) if !seen.insert(a) => problem(
                                format!("{sat}.address"),
                                format!("server {a} is listed twice"),
                                "list each server once; use weight for a larger share",
                            ),
                            Ok(_) => {}
                        }
                    }
                }
                Servers::Computer { computer_ids } => {
                    if computer_ids.len() > lb_common::maps::MAX_SERVERS_PER_BACKEND as usize {
                        problem(
                            format!("{at}.servers.computer_ids"),
                            format!("{} servers; a backend has at most 500", computer_ids.len()),
                            "split the servers across backends",
                        );
                    }
                    for (j, id) in computer_ids.iter().enumerate() {
                        if !self.computers.contains_key(id) {
                            problem(
                                format!("{at}.servers.computer_ids[{j}]"),
                                format!("computer id {id:?} is not in [computers]"),
                                "add it to [computers] as \"id\" = \"address\"",
                            );
                        }
                    }
                }
            }
        }
        let dp = &self.dataplane;
        for (field, value) in [
            ("tcp_syn_timeout", &dp.tcp_syn_timeout),
            ("tcp_established_timeout", &dp.tcp_established_timeout),
            ("tcp_closing_timeout", &dp.tcp_closing_timeout),
            ("udp_timeout", &dp.udp_timeout),
            ("gc_interval", &dp.gc_interval),
        ] {
            if duration(value).is_none_or(|d| d.is_zero()) {
                problem(
                    format!("dataplane.{field}"),
                    format!("{value:?} is not a positive duration"),
                    "write a duration such as \"500ms\", \"10s\", \"5m\" or \"1h\"",
                );
            }
        }
        if dp.conntrack_size < 1024 {
            problem(
                "dataplane.conntrack_size".into(),
                format!("{} flows is too small", dp.conntrack_size),
                "use at least 1024 (the default is 1048576)",
            );
        }
        if self.backends.len() > lb_common::maps::MAX_BACKENDS as usize {
            problem(
                "backends".into(),
                format!(
                    "{} backends; this build supports {}",
                    self.backends.len(),
                    lb_common::maps::MAX_BACKENDS
                ),
                "merge backends",
            );
        }

        let mut lb_ids = HashSet::new();
        for (i, lb) in self.lbs.iter().enumerate() {
            if lb.id.trim().is_empty() || !lb_ids.insert(lb.id.as_str()) {
                problem(
                    format!("lbs[{i}].id"),
                    format!("load balancer id {:?} is empty or used twice", lb.id),
                    "give each [[lbs]] entry a unique, non-empty id",
                );
            }
        }
        for (kind, at, lb) in self
            .frontends
            .iter()
            .enumerate()
            .map(|(i, f)| ("frontends", i, &f.lb))
            .chain(
                self.backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| ("backends", i, &b.lb)),
            )
        {
            if let Some(id) = lb
                && self.lb(id).is_none()
            {
                problem(
                    format!("{kind}[{at}].lb"),
                    format!("no load balancer has id {id:?}"),
                    "name the id of an [[lbs]] entry (or leave lb out for the default one)",
                );
            }
        }

        let mut frontend_names = HashSet::new();
        let mut listeners = HashSet::new();
        for (i, f) in self.frontends.iter().enumerate() {
            let at = format!("frontends[{i}]");
            let lb = self.lb_of(&f.lb);
            for name in
                std::iter::once(&f.default_backend).chain(f.backends.iter().map(|r| &r.backend))
            {
                if let Some(b) = self.backends.iter().find(|b| &b.name == name)
                    && self.lb_of(&b.lb) != lb
                {
                    problem(
                        format!("{at}.default_backend"),
                        format!(
                            "backend {name:?} belongs to load balancer {:?}, this frontend to {lb:?}",
                            self.lb_of(&b.lb)
                        ),
                        "use a backend of the frontend's own load balancer",
                    );
                }
            }
            if !frontend_names.insert(f.name.as_str()) {
                problem(
                    format!("{at}.name"),
                    format!("frontend name {:?} is used twice", f.name),
                    "give each frontend a unique name",
                );
            }
            self.validate_http_frontend(f, &at, &mut problem);
            match self.backends.iter().find(|b| b.name == f.default_backend) {
                None => problem(
                    format!("{at}.default_backend"),
                    format!("no backend is named {:?}", f.default_backend),
                    "name one of the [[backends]] entries",
                ),
                Some(b) => {
                    if f.forwarding == Forwarding::Dsr
                        && let Some(bind) =
                            f.binds.iter().find(|bind| Some(bind.port) != b.port.get())
                    {
                        problem(
                            format!("{at}.binds"),
                            format!(
                                "DSR cannot translate ports, but bind port {} differs from backend {:?} port {:?}",
                                bind.port, b.name, b.port
                            ),
                            "with forwarding = \"dsr\", give the backend the same port as every bind",
                        );
                    }
                    if b.mode != f.mode {
                        problem(
                            format!("{at}.mode"),
                            format!(
                                "frontend mode {:?} differs from backend {:?} mode {:?}",
                                f.mode, b.name, b.mode
                            ),
                            "a frontend and its backends must have the same mode",
                        );
                    }
                    for s in b.resolved_servers(&self.computers) {
                        if s.address.is_ipv4() != f.address.is_ipv4() {
                            problem(
                                format!("{at}.address"),
                                format!(
                                    "frontend address {} and server {} of backend {:?} are different IP families",
                                    f.address, s.address, b.name
                                ),
                                "use servers of the frontend's family (NAT46/64 is not supported)",
                            );
                        }
                    }
                }
            }
            if f.binds.is_empty() {
                problem(
                    format!("{at}.binds"),
                    "a frontend needs at least one bind".into(),
                    "add binds = [{ port = 80 }]",
                );
            }
            for (j, b) in f.binds.iter().enumerate() {
                if b.port == 0 {
                    problem(
                        format!("{at}.binds[{j}].port"),
                        "port 0 cannot be bound".into(),
                        "use a port from 1 to 65535",
                    );
                }
                if !listeners.insert((f.address, b.port, b.protocol)) {
                    problem(
                        format!("{at}.binds[{j}]"),
                        format!("{}:{} ({:?}) is bound twice", f.address, b.port, b.protocol),
                        "each address, port and protocol may be bound by one frontend only",
                    );
                }
            }
            let in_xdp = !self.in_userspace(f);
            if in_xdp && f.interfaces.is_empty() {
                problem(
                    format!("{at}.interfaces"),
                    "a tcp frontend needs the interfaces to attach XDP to".into(),
                    "list them, for example interfaces = [\"eth0\"]",
                );
            }
            match f.snat_address {
                None if in_xdp && f.forwarding == Forwarding::Nat => problem(
                    format!("{at}.snat_address"),
                    "a tcp frontend needs an SNAT address for full NAT".into(),
                    "set snat_address to an address of this host that servers route back to",
                ),
                Some(a) if a.is_ipv4() != f.address.is_ipv4() => problem(
                    format!("{at}.snat_address"),
                    format!(
                        "snat_address {a} is not of the same family as address {}",
                        f.address
                    ),
                    "use an SNAT address of the frontend's family",
                ),
                _ => {}
            }
        }
        let h = &self.http;
        for (field, text) in [
            ("connect_timeout", &h.connect_timeout),
            ("server_timeout", &h.server_timeout),
            ("request_timeout", &h.request_timeout),
            ("body_timeout", &h.body_timeout),
        ] {
            if duration(text).is_none_or(|d| d.is_zero()) {
                problem(
                    format!("http.{field}"),
                    format!("{text:?} is not a duration"),
                    "use a number with a unit, such as \"500ms\", \"10s\" or \"2m\"",
                );
            }
        }
        let max = crate::proxy::h1::MAX_REQUEST_HEADERS;
        if !(1..=max).contains(&h.max_headers) {
            problem(
                "http.max_headers".into(),
                format!("max_headers {} is outside 1..={max}", h.max_headers),
                "use a count such as 100 (the default)",
            );
        }
        if !(1024..=1 << 20).contains(&h.max_header_bytes) {
            problem(
                "http.max_header_bytes".into(),
                format!(
                    "max_header_bytes {} is outside 1024..=1048576",
                    h.max_header_bytes
                ),
                "use a size in bytes such as 16384 (the default)",
            );
        }
        if !(1..=256).contains(&h.workers) {
            problem(
                "http.workers".into(),
                format!("workers {} is outside 1..=256", h.workers),
                "use about one worker per core, such as 2 (the default)",
            );
        }
        out
    }

    /// Every interface any frontend forwards through, once each, in config order.
    pub fn interfaces(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        self.frontends
            .iter()
            .flat_map(|f| f.interfaces.iter())
            .filter(|i| seen.insert(i.as_str()))
            .cloned()
            .collect()
    }
}

impl Config {
    /// The id of the load balancer an entity with `lb` belongs to.
    pub fn lb_of<'a>(&'a self, lb: &'a Option<String>) -> &'a str {
        match lb {
            Some(id) => id,
            None => self.lbs.first().map_or(DEFAULT_LB, |l| l.id.as_str()),
        }
    }

    /// The load balancer with `id`; with no `lbs` listed, only the default "1" exists.
    pub fn lb(&self, id: &str) -> Option<LoadBalancer> {
        if self.lbs.is_empty() {
            return (id == DEFAULT_LB).then(|| LoadBalancer {
                id: DEFAULT_LB.into(),
                name: "default".into(),
                description: String::new(),
                public_ports: Vec::new(),
            });
        }
        self.lbs.iter().find(|l| l.id == id).cloned()
    }

    /// Whether the userspace proxy serves this frontend (XDP passes its packets): http mode,
    /// or a tcp backend that sends a PROXY header (bytes XDP cannot insert).
    pub fn in_userspace(&self, f: &Frontend) -> bool {
        f.mode == Mode::Http
            || self
                .backends
                .iter()
                .find(|b| b.name == f.default_backend)
                .is_some_and(|b| b.options.proxy_protocol.is_some())
    }

    fn validate_http_frontend(
        &self,
        f: &Frontend,
        at: &str,
        problem: &mut impl FnMut(String, String, &str),
    ) {
        let http = f.mode == Mode::Http;
        for (j, bind) in f.binds.iter().enumerate() {
            let at = format!("{at}.binds[{j}]");
            if bind.use_http3 == Some(true) {
                problem(
                    format!("{at}.use_http3"),
                    "HTTP/3 is not supported".into(),
                    "remove use_http3 (HTTP/1.1 and HTTP/2 are served)",
                );
            }
            if bind.ssl == Some(true) || bind.ssl_certificate.is_some() {
                if !http {
                    problem(
                        format!("{at}.ssl"),
                        "TLS termination needs mode \"http\"".into(),
                        "remove ssl and ssl_certificate, or use mode = \"http\"",
                    );
                }
                match &bind.ssl_certificate {
                    None => problem(
                        format!("{at}.ssl_certificate"),
                        "ssl = true needs a certificate".into(),
                        "set ssl_certificate to a PEM file with the certificate chain and key",
                    ),
                    Some(path) if bind.ssl != Some(true) => problem(
                        format!("{at}.ssl"),
                        format!("ssl_certificate {path:?} is set but ssl is not true"),
                        "set ssl = true, or remove ssl_certificate",
                    ),
                    Some(path) => {
                        if let Err(e) = std::fs::metadata(path) {
                            problem(
                                format!("{at}.ssl_certificate"),
                                format!("cannot read {path:?}: {e}"),
                                "give the path of a PEM file with the certificate chain and key",
                            );
                        }
                    }
                }
            }
            if http && bind.protocol == Protocol::Udp {
                problem(
                    format!("{at}.protocol"),
                    "an http frontend cannot bind UDP".into(),
                    "remove protocol = \"udp\"",
                );
            }
        }
        if http && f.forwarding == Forwarding::Dsr {
            problem(
                format!("{at}.forwarding"),
                "an http frontend is a proxy; it cannot use direct server return".into(),
                "remove forwarding = \"dsr\"",
            );
        }
        let mut acl_names = HashSet::new();
        for (j, acl) in f.acls.iter().enumerate() {
            if !http {
                problem(
                    format!("{at}.acls"),
                    "ACLs need mode \"http\"".into(),
                    "remove acls, or use mode = \"http\"",
                );
                break;
            }
            if !acl_names.insert(acl.name.as_str()) {
                problem(
                    format!("{at}.acls[{j}].name"),
                    format!("ACL name {:?} is used twice", acl.name),
                    "give each ACL of a frontend a unique name",
                );
            }
            if acl.criterion != "path_beg" && acl.criterion != "hdr_host" {
                problem(
                    format!("{at}.acls[{j}].criterion"),
                    format!("unknown ACL criterion {:?}", acl.criterion),
                    "use \"path_beg\" (path begins with) or \"hdr_host\" (Host equals)",
                );
            }
        }
        for (j, rule) in f.backends.iter().enumerate() {
            let at = format!("{at}.backends[{j}]");
            if rule.cond != "if" {
                problem(
                    format!("{at}.cond"),
                    format!("unknown condition {:?}", rule.cond),
                    "use cond = \"if\"",
                );
            }
            if !f.acls.iter().any(|a| a.name == rule.test) {
                problem(
                    format!("{at}.test"),
                    format!("no ACL of this frontend is named {:?}", rule.test),
                    "name one of the frontend's acls",
                );
            }
            match self.backends.iter().find(|b| b.name == rule.backend) {
                None => problem(
                    format!("{at}.backend"),
                    format!("no backend is named {:?}", rule.backend),
                    "name one of the [[backends]] entries",
                ),
                Some(b) if b.mode != f.mode => problem(
                    format!("{at}.backend"),
                    format!(
                        "backend {:?} has mode {:?}, the frontend {:?}",
                        b.name, b.mode, f.mode
                    ),
                    "a frontend and its backends must have the same mode",
                ),
                Some(_) => {}
            }
        }
        if f.options.redirect_ssl == Some(true) && !f.binds.iter().any(|b| b.ssl == Some(true)) {
            problem(
                format!("{at}.options.redirect_ssl"),
                "redirect_ssl sends clients to https, but no bind has ssl = true".into(),
                "add a bind with ssl = true and ssl_certificate",
            );
        }
        if !http && (f.options.redirect_ssl.is_some() || f.options.forward_for.is_some()) {
            problem(
                format!("{at}.options"),
                "redirect_ssl and forward_for need mode \"http\"".into(),
                "remove them, or use mode = \"http\"",
            );
        }
        for (j, cidr) in f.options.trusted_proxies.iter().enumerate() {
            if parse_cidr(cidr).is_none() {
                problem(
                    format!("{at}.options.trusted_proxies[{j}]"),
                    format!("{cidr:?} is not an address or CIDR"),
                    "write an address or a prefix such as \"198.18.0.0/24\"",
                );
            }
        }
    }

    fn validate_options(
        &self,
        b: &Backend,
        at: &str,
        problem: &mut impl FnMut(String, String, &str),
    ) {
        let o = &b.options;
        let servers = b
            .resolved_servers(&self.computers)
            .len()
            .max(match &b.servers {
                Servers::Addresses { addresses } => addresses.len(),
                Servers::Computer { computer_ids } => computer_ids.len(),
            });
        if let Some(m) = o.table_size {
            if !MAGLEV_METHODS.contains(&b.balancing_method.as_str()) {
                problem(
                    format!("{at}.options.table_size"),
                    format!(
                        "table_size applies to source and maglev, not {}",
                        b.balancing_method
                    ),
                    "remove table_size",
                );
            } else if !lb_common::maglev::is_prime(m) || m > MAX_TABLE_SIZE {
                problem(
                    format!("{at}.options.table_size"),
                    format!("table_size {m} is not a prime up to {MAX_TABLE_SIZE}"),
                    "use a prime such as 251, 4093, 16381 or 65537",
                );
            }
        }
        if MAGLEV_METHODS.contains(&b.balancing_method.as_str())
            && u64::from(Config::table_size(b)) < 100 * servers as u64
        {
            problem(
                format!("{at}.options.table_size"),
                format!(
                    "table_size {} is less than 100 x {servers} servers, so shares would be uneven",
                    Config::table_size(b)
                ),
                "use a prime of at least 100 x the server count (65537 fits 500 servers)",
            );
        }
        if let Some(s) = &o.sticky_session {
            match s.kind.as_str() {
                "source_ip" => {}
                "cookie" if b.mode == Mode::Tcp => problem(
                    format!("{at}.options.sticky_session.type"),
                    "cookie stickiness needs mode \"http\"; a tcp backend cannot see cookies"
                        .into(),
                    "use type = \"source_ip\"",
                ),
                "cookie" => {}
                other => problem(
                    format!("{at}.options.sticky_session.type"),
                    format!("unknown sticky_session type {other:?}"),
                    "use \"source_ip\" (or \"cookie\" in http mode)",
                ),
            }
            if let Some(ttl) = &s.ttl
                && duration(ttl).is_none_or(|d| d.as_secs() == 0)
            {
                problem(
                    format!("{at}.options.sticky_session.ttl"),
                    format!("{ttl:?} is not a duration of at least one second"),
                    "write a duration such as \"30s\" or \"5m\"",
                );
            }
        }
        let http_only = |field: &str, set: bool, problem: &mut dyn FnMut(String, String, &str)| {
            if set && b.mode == Mode::Tcp {
                problem(
                    format!("{at}.options.{field}"),
                    format!("{field} needs mode \"http\""),
                    "remove it, or make the backend (and its frontends) mode = \"http\"",
                );
            }
        };
        {
            let mut p = |a: String, b: String, c: &str| problem(a, b, c);
            http_only("tls", o.tls == Some(true), &mut p);
            http_only("forward_for", o.forward_for == Some(true), &mut p);
        }
        if o.tls_verify == Some(true) && o.tls != Some(true) {
            problem(
                format!("{at}.options.tls_verify"),
                "tls_verify checks the certificates of TLS connections, but tls is off".into(),
                "set tls = true, or remove tls_verify",
            );
        }
        if let Some(ca) = &o.tls_ca {
            if o.tls_verify != Some(true) {
                problem(
                    format!("{at}.options.tls_ca"),
                    "tls_ca is only used with tls_verify = true".into(),
                    "set tls_verify = true, or remove tls_ca",
                );
            } else if let Err(e) = std::fs::metadata(ca) {
                problem(
                    format!("{at}.options.tls_ca"),
                    format!("cannot read {ca:?}: {e}"),
                    "give the path of a PEM file of CA certificates",
                );
            }
        }
        if let Some(v) = &o.proxy_protocol
            && v != "v1"
            && v != "v2"
        {
            problem(
                format!("{at}.options.proxy_protocol"),
                format!("unknown PROXY protocol version {v:?}"),
                "use \"v1\" (text) or \"v2\" (binary)",
            );
        }
        if b.mode == Mode::Http && !HTTP_METHODS.contains(&b.balancing_method.as_str()) {
            problem(
                format!("{at}.balancing_method"),
                format!("{:?} is not a method of http backends", b.balancing_method),
                "use one of: roundrobin, leastconn, first, source",
            );
        }
        if let Some(check) = &o.health_check {
            let at = format!("{at}.options.health_check");
            let kind = check.kind.as_str();
            if !crate::health::KINDS.contains(&kind) {
                problem(
                    format!("{at}.type"),
                    format!("unknown health check type {kind:?}"),
                    "use one of: tcp, http, mysql, postgres, redis, tls",
                );
            }
            if let Some(on_down) = &check.on_down
                && !crate::health::ON_DOWN.contains(&on_down.as_str())
            {
                problem(
                    format!("{at}.on_down"),
                    format!("unknown on_down {on_down:?}"),
                    "use \"keep\" (established flows continue) or \"reset\" (they are reset)",
                );
            }
            if check.user.is_some() && kind != "mysql" && kind != "postgres" {
                problem(
                    format!("{at}.user"),
                    format!("user means nothing to a {kind:?} check"),
                    "remove it, or use type = \"mysql\" or \"postgres\"",
                );
            }
            for (field, value) in [("interval", &check.interval), ("timeout", &check.timeout)] {
                if let Some(v) = value
                    && duration(v).is_none_or(|d| d.is_zero())
                {
                    problem(
                        format!("{at}.{field}"),
                        format!("{v:?} is not a positive duration"),
                        "write a duration such as \"500ms\" or \"2s\"",
                    );
                }
            }
            for (field, value) in [("rise", check.rise), ("fall", check.fall)] {
                if value == Some(0) {
                    problem(
                        format!("{at}.{field}"),
                        format!("{field} must be at least 1"),
                        "use 1 or more",
                    );
                }
            }
            if let Err(e) = check.expected() {
                problem(
                    format!("{at}.expected_code"),
                    e,
                    "write a code, a list such as \"200,204\", or a range such as \"200-399\"",
                );
            }
            if kind != "http"
                && (check.path.is_some()
                    || check.method.is_some()
                    || check.host_header.is_some()
                    || check.expected_code.is_some())
            {
                problem(
                    at.clone(),
                    "path, method, host_header and expected_code apply to http checks only".into(),
                    "remove them, or use type = \"http\"",
                );
            }
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Byte offset of a field path such as `backends[0].servers.addresses[2].weight`, or of its
/// closest existing ancestor.
fn locate(doc: &toml_edit::Document<&str>, path: &str) -> Option<usize> {
    use toml_edit::{Item, Table, Value};
    #[derive(Clone, Copy)]
    enum Node<'a> {
        Table(&'a Table),
        Item(&'a Item),
        Value(&'a Value),
    }
    impl<'a> Node<'a> {
        fn span(self) -> Option<usize> {
            match self {
                Node::Table(t) => t.span(),
                Node::Item(i) => i.span(),
                Node::Value(v) => v.span(),
            }
            .map(|s| s.start)
        }
        fn key(self, k: &str) -> Option<Node<'a>> {
            match self {
                Node::Table(t) | Node::Item(Item::Table(t)) => t.get(k).map(Node::Item),
                Node::Item(Item::Value(Value::InlineTable(t)))
                | Node::Value(Value::InlineTable(t)) => t.get(k).map(Node::Value),
                _ => None,
            }
        }
        fn index(self, i: usize) -> Option<Node<'a>> {
            match self {
                Node::Item(Item::ArrayOfTables(a)) => a.get(i).map(Node::Table),
                Node::Item(Item::Value(Value::Array(a))) | Node::Value(Value::Array(a)) => {
                    a.get(i).map(Node::Value)
                }
                _ => None,
            }
        }
    }
    let mut node = Node::Table(doc.as_table());
    let mut best = None;
    for part in path.split('.') {
        let (key, indices) = match part.find('[') {
            Some(b) => (&part[..b], &part[b..]),
            None => (part, ""),
        };
        let Some(next) = node.key(key) else { break };
        node = next;
        best = node.span().or(best);
        for idx in indices
            .split(['[', ']'])
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse().ok())
        {
            let Some(next) = node.index(idx) else {
                return best;
            };
            node = next;
            best = node.span().or(best);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[frontends]]
name = "web"
mode = "tcp"
address = "198.18.100.1"
binds = [{ port = 80 }, { port = 53, protocol = "udp" }]
default_backend = "app"
interfaces = ["eth0"]
snat_address = "198.18.2.1"

[[backends]]
name = "app"
mode = "tcp"
balancing_method = "maglev"
port = "8080"
servers = { type = "addresses", addresses = [
  { address = "198.18.11.2", weight = 1 },
  { address = "198.18.12.2", weight = 2 },
] }
"#;

    fn errors(text: &str) -> ConfigError {
        Config::parse("lb.toml", text).expect_err("config should be rejected")
    }

    #[test]
    fn every_example_config_is_valid() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
                seen += 1;
            }
        }
        assert!(seen >= 2);
    }

    #[test]
    fn dsr_needs_equal_ports() {
        let text = GOOD.replace("snat_address = \"198.18.2.1\"", "forwarding = \"dsr\"");
        let e = errors(&text);
        assert_eq!(e.problems[0].1.field, "frontends[0].binds");
        assert!(
            e.problems[0]
                .1
                .message
                .contains("DSR cannot translate ports")
        );
    }

    #[test]
    fn good_config_parses() {
        let c = Config::parse("lb.toml", GOOD).unwrap();
        assert_eq!(c.backends[0].port.get(), Some(8080));
        assert_eq!(c.frontends[0].binds[1].protocol, Protocol::Udp);
        assert_eq!(c.interfaces(), vec!["eth0".to_string()]);
    }

    #[test]
    fn weight_out_of_range_names_field_and_line() {
        let e = errors(&GOOD.replace("weight = 2", "weight = 101"));
        let (line, p) = &e.problems[0];
        assert_eq!(p.field, "backends[0].servers.addresses[1].weight");
        assert_eq!(*line, Some(18));
        let shown = e.to_string();
        assert!(shown.contains("lb.toml:18:"), "{shown}");
        assert!(shown.contains("fix:"), "{shown}");
    }

    #[test]
    fn mode_mismatch_unknown_backend_and_bad_address_are_reported() {
        let e = errors(&GOOD.replacen(r#"mode = "tcp""#, r#"mode = "http""#, 1));
        assert!(
            e.problems
                .iter()
                .any(|(l, p)| p.field == "frontends[0].mode"
                    && p.message.contains("differs")
                    && *l == Some(4))
        );

        let e = errors(&GOOD.replace(r#"default_backend = "app""#, r#"default_backend = "nope""#));
        assert_eq!(e.problems[0].1.field, "frontends[0].default_backend");
        assert_eq!(e.problems[0].0, Some(7));

        let e = errors(&GOOD.replace("198.18.12.2", "198.18.12.999"));
        assert_eq!(
            e.problems[0].1.field,
            "backends[0].servers.addresses[1].address"
        );
        assert_eq!(e.problems[0].0, Some(18));
    }

    #[test]
    fn more_than_500_servers_is_rejected() {
        let servers: Vec<String> = (0..501)
            .map(|i| {
                format!(
                    "{{ address = \"198.18.{}.{}\" }}",
                    20 + i / 250,
                    1 + i % 250
                )
            })
            .collect();
        let text = GOOD.replace(
            "{ address = \"198.18.11.2\", weight = 1 },",
            &format!("{},", servers.join(",")),
        );
        let e = errors(&text);
        assert!(
            e.problems
                .iter()
                .any(|(_, p)| p.field == "backends[0].servers.addresses"
                    && p.message.contains("at most 500"))
        );
    }

    #[test]
    fn http_frontends_are_validated_field_by_field() {
        let http = r#"
[[frontends]]
name = "site"
mode = "http"
address = "198.18.100.3"
binds = [{ port = 80, use_http3 = true }, { port = 443, ssl = true }]
default_backend = "site"
acls = [{ name = "a", criterion = "path_end", value = "/x" }]
backends = [{ backend = "nope", cond = "unless", test = "b" }]
options = { trusted_proxies = ["198.18.0.0/33"] }

[[backends]]
name = "site"
mode = "http"
balancing_method = "maglev"
port = 80
servers = { type = "addresses", addresses = [{ address = "198.18.11.2" }] }
options = { tls_verify = true, proxy_protocol = "v3" }
"#;
        let e = errors(http);
        let fields: Vec<&str> = e.problems.iter().map(|(_, p)| p.field.as_str()).collect();
        for field in [
            "frontends[0].binds[0].use_http3",
            "frontends[0].binds[1].ssl_certificate",
            "frontends[0].acls[0].criterion",
            "frontends[0].backends[0].cond",
            "frontends[0].backends[0].test",
            "frontends[0].backends[0].backend",
            "frontends[0].options.trusted_proxies[0]",
            "backends[0].balancing_method",
            "backends[0].options.tls_verify",
            "backends[0].options.proxy_protocol",
        ] {
            assert!(fields.contains(&field), "{field} not in {fields:?}");
        }
        assert!(e.problems.iter().all(|(line, _)| line.is_some()), "{e}");
    }

    #[test]
    fn cidrs_contain_what_they_should() {
        let net = parse_cidr("198.18.0.0/24").unwrap();
        assert!(cidr_contains(net, "198.18.0.77".parse().unwrap()));
        assert!(cidr_contains(net, "::ffff:198.18.0.77".parse().unwrap()));
        assert!(!cidr_contains(net, "198.18.1.1".parse().unwrap()));
        let six = parse_cidr("2001:2::/48").unwrap();
        assert!(cidr_contains(six, "2001:2:0:11::2".parse().unwrap()));
        assert!(parse_cidr("198.18.0.1").is_some() && parse_cidr("x/8").is_none());
    }

    #[test]
    fn options_methods_and_dataplane_are_validated() {
        let e = errors(&GOOD.replace("\"maglev\"", "\"fastest\""));
        assert!(e.problems[0].1.message.contains("unknown balancing_method"));

        let with_options = GOOD.replace(
            "port = \"8080\"",
            "port = \"8080\"\noptions = { table_size = 65536, sticky_session = { type = \"cookie\" }, health_check = { type = \"smtp\", on_down = \"close\", user = \"x\" } }",
        );
        let e = errors(&with_options);
        let fields: Vec<&str> = e.problems.iter().map(|(_, p)| p.field.as_str()).collect();
        assert!(
            fields.contains(&"backends[0].options.table_size"),
            "{fields:?}"
        );
        assert!(
            fields.contains(&"backends[0].options.sticky_session.type"),
            "{fields:?}"
        );
        for field in ["type", "on_down", "user"] {
            let field = format!("backends[0].options.health_check.{field}");
            assert!(
                fields.contains(&field.as_str()),
                "{field} not in {fields:?}"
            );
        }

        let small = GOOD.replace(
            "port = \"8080\"",
            "port = \"8080\"\noptions = { table_size = 101 }",
        );
        let e = errors(&small);
        assert!(e.problems[0].1.message.contains("100 x 2 servers"), "{e}");

        let max_conn = GOOD.replace("weight = 2 }", "weight = 2, max_conn = 10 }");
        let e = errors(&max_conn);
        assert_eq!(
            e.problems[0].1.field,
            "backends[0].servers.addresses[1].max_conn"
        );
        assert!(Config::parse("t", &max_conn.replace("\"maglev\"", "\"first\"")).is_ok());

        let e = errors(&format!("{GOOD}\n[dataplane]\nudp_timeout = \"soon\"\n"));
        assert_eq!(e.problems[0].1.field, "dataplane.udp_timeout");
        assert_eq!(e.problems[0].0, Some(22));
    }

    #[test]
    fn sticky_ttl_defaults_to_five_minutes() {
        let c = Config::parse(
            "t",
            &GOOD.replace(
                "port = \"8080\"",
                "port = \"8080\"\noptions = { sticky_session = { type = \"source_ip\" } }",
            ),
        )
        .unwrap();
        assert_eq!(Config::sticky_ttl_s(&c.backends[0]), 300);
    }
}
