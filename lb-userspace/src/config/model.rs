//! The config model: a TOML rendering of the product's object model (frontends and
//! backends, see README "Config reference"), typed: closed sets are enums, durations are
//! `Duration`s, addresses are `IpAddr`s. The API's bodies are the same types.

use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
    path::PathBuf,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::values::{
    AccessLog, AclCriterion, AdminState, CheckKind, Cidr, ExpectedCodes, Forwarding, InitState,
    Method, Mode, OnDown, Port, PortRange, Protocol, ProxyVersion, RouteCond, StickyKind,
    UnderscoreHeaders, XdpAttach, duration, timestamp_option,
};

/// Largest server weight (0 drains).
pub const MAX_WEIGHT: u32 = 100;
/// Most request headers the proxy accepts (`[http] max_headers` is at most this).
pub const MAX_REQUEST_HEADERS: usize = 512;
/// Largest Maglev table the maps hold.
pub const MAX_TABLE_SIZE: u32 = lb_common::maps::RING_STRIDE;

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
    /// The master/backup pair (README "High availability"); absent = a single node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<super::HaConfig>,
    /// Active/active behind ECMP: the BGP announcement of the VIPs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<super::BgpConfig>,
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
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Waiting for a server's response headers (then 504), for each read of a response
    /// body, and for any write to make progress: a client (or server) that stops reading is
    /// cut off after this, with the connection on the other side.
    #[serde(with = "duration")]
    pub server_timeout: Duration,
    /// A client's whole request head must arrive within this, and an idle keep-alive
    /// connection is closed after it: slow clients (slowloris) cannot hold connections.
    /// An HTTP/2 connection with no open stream for this long is sent GOAWAY and closed.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// A request body must arrive within this after its head.
    #[serde(with = "duration")]
    pub body_timeout: Duration,
    /// Largest request head, in bytes (at least 8192).
    pub max_header_bytes: usize,
    /// Most request headers.
    pub max_headers: usize,
    /// Most idle connections kept per server and proxy worker (0: none, every request
    /// dials); past it the one idle longest is closed. Below it the pool keeps whatever a
    /// burst opened, so concurrency up to it reuses connections instead of dialling.
    pub pool_idle_per_server: usize,
    /// A pooled connection unused for this long is closed (1s..=1h); keep it below the
    /// servers' own keep-alive timeout, so a reuse does not race their close.
    #[serde(with = "duration")]
    pub pool_idle_timeout: Duration,
    /// Proxy worker threads.
    pub workers: usize,
    /// Most client connections the proxy holds at once, over all its frontends; past it a
    /// plain HTTP connection is answered 503 and others are closed. Absent: what the open
    /// file limit allows, (RLIMIT_NOFILE - 1024) / 2 (a client connection and a server one
    /// each), so the API, metrics and health checks always have descriptors left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Request headers whose name has an underscore: "drop" (default), "reject" (400) or
    /// "allow".
    #[serde(default)]
    pub underscore_headers: UnderscoreHeaders,
    /// An HTTP/3 (QUIC) connection with no packet for this long is closed (1s..=10m).
    #[serde(with = "duration")]
    pub http3_idle_timeout: Duration,
    /// Requests (bidirectional streams) an HTTP/3 client may have open at once on a
    /// connection (1..=10000).
    pub http3_max_streams: u32,
    /// Largest UDP payload lb accepts and probes up to, in bytes (1200..=65527; 1472 fits
    /// an Ethernet MTU of 1500 over IPv4).
    pub http3_max_udp_payload: u16,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connect_timeout: Duration::from_secs(3),
            server_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            max_header_bytes: 16384,
            max_headers: 100,
            pool_idle_per_server: 512,
            pool_idle_timeout: Duration::from_secs(10),
            workers: 2,
            max_connections: None,
            underscore_headers: UnderscoreHeaders::Drop,
            http3_idle_timeout: Duration::from_secs(30),
            http3_max_streams: 100,
            http3_max_udp_payload: 1472,
        }
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
    #[serde(with = "duration")]
    pub tcp_syn_timeout: Duration,
    #[serde(with = "duration")]
    pub tcp_established_timeout: Duration,
    #[serde(with = "duration")]
    pub tcp_closing_timeout: Duration,
    #[serde(with = "duration")]
    pub udp_timeout: Duration,
    /// How often expired flows are removed and open-flow counts reconciled.
    #[serde(with = "duration")]
    pub gc_interval: Duration,
    /// Where maps and XDP links are pinned (a BPF filesystem), so a restarted daemon takes
    /// over the running data plane and every tracked flow.
    pub pin_path: std::path::PathBuf,
    /// How XDP attaches: "auto" (native, else generic with a warning), "native" (or fail)
    /// or "generic".
    #[serde(default)]
    pub xdp_mode: XdpAttach,
    /// Per interface, overriding `xdp_mode`: `xdp_modes = { eth0 = "native" }`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xdp_modes: BTreeMap<String, XdpAttach>,
}

impl DataplaneConfig {
    /// How XDP attaches to `iface`.
    pub fn xdp_mode_of(&self, iface: &str) -> XdpAttach {
        self.xdp_modes.get(iface).copied().unwrap_or(self.xdp_mode)
    }
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            conntrack_size: lb_common::maps::CONNTRACK_ENTRIES,
            tcp_syn_timeout: Duration::from_secs(10),
            tcp_established_timeout: Duration::from_secs(3600),
            tcp_closing_timeout: Duration::from_secs(10),
            udp_timeout: Duration::from_secs(30),
            gc_interval: Duration::from_secs(1),
            pin_path: "/sys/fs/bpf/lb".into(),
            xdp_mode: XdpAttach::Auto,
            xdp_modes: BTreeMap::new(),
        }
    }
}

impl DataplaneConfig {
    /// The flow timeouts as the data plane's garbage collector compares them.
    pub fn timeouts(&self) -> lb_common::flow::Timeouts {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        lb_common::flow::Timeouts {
            syn_ns: ns(self.tcp_syn_timeout),
            established_ns: ns(self.tcp_established_timeout),
            closing_ns: ns(self.tcp_closing_timeout),
            udp_ns: ns(self.udp_timeout),
        }
    }
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
    /// Source address for packets sent to servers; replies must route back to it. The
    /// same as `snat_addresses = [it]`; set one of the two, not both.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub snat_address: Option<IpAddr>,
    /// Source addresses for packets sent to servers (1 to 8, of the frontend's family);
    /// replies must route back to each. A new flow's address and port are drawn from its
    /// hash over every address's ports, so each address adds `snat_ports` flows per server
    /// port and protocol.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub snat_addresses: Vec<IpAddr>,
    /// SNAT source ports, "MIN-MAX", both included; default "1024-65535".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub snat_ports: Option<PortRange>,
    #[serde(default)]
    pub forwarding: Forwarding,
    /// dsr: a mid-stream TCP packet of a flow this node does not track (another ECMP node's,
    /// or one older than the last sync) is sent to the server the Maglev table gives,
    /// and tracked from then on, instead of being dropped (as Katran and Cilium do).
    /// Needs `balancing_method = "maglev"` so that every node picks the same server.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dsr_stateless_fallback: bool,
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

impl Frontend {
    /// The SNAT addresses, in order: `snat_address` or `snat_addresses` (validation refuses
    /// both).
    pub fn snat_addresses(&self) -> Vec<IpAddr> {
        self.snat_address
            .iter()
            .chain(&self.snat_addresses)
            .copied()
            .collect()
    }

    /// The SNAT port range, default 1024-65535.
    pub fn snat_ports(&self) -> PortRange {
        self.snat_ports.clone().unwrap_or_default()
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Acl {
    pub name: String,
    pub criterion: AclCriterion,
    pub value: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    pub backend: String,
    pub cond: RouteCond,
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
    #[schema(value_type = Vec<String>)]
    pub trusted_proxies: Vec<Cidr>,
    /// Most client connections of this frontend at once (as HAProxy's frontend `maxconn`);
    /// past it a plain HTTP connection is answered 503 and others are closed. Proxied
    /// frontends only. Absent: only `[http] max_connections` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// An access log line per request of a proxied frontend: "text" (HAProxy's order:
    /// client, frontend, backend/server, Tq/Tw/Tc/Tr/Tt, status, bytes, retries, request) or
    /// "json"; absent or "off": none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<AccessLog>,
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
    #[schema(value_type = Option<String>)]
    pub ssl_certificate: Option<PathBuf>,
    /// With `ssl = true`: also serve HTTP/3 (QUIC) on this UDP port, advertised to TCP
    /// clients with Alt-Svc. `[http] http3_*` set QUIC's limits.
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
    pub balancing_method: Method,
    #[schema(value_type = super::values::PortDocument)]
    pub port: Port,
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
    #[schema(value_type = Option<String>)]
    pub tls_ca: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_for: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyVersion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sticky_session: Option<StickySession>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Maglev table size M (a prime, at least 100 x servers); default 65537.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u32>,
    /// What happens to a draining server's flows left at its `drain_timeout`: "reset"
    /// (default: TCP flows get a RST at their next packet, UDP flows are balanced afresh) or
    /// "keep".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_drain_timeout: Option<OnDown>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StickySession {
    #[serde(rename = "type")]
    pub kind: StickyKind,
    /// cookie: its name (default SERVERID).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub ttl: Option<Duration>,
}

impl StickySession {
    /// How long a source-IP entry (and a sticky cookie's Max-Age) lasts.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
    pub const DEFAULT_COOKIE: &str = "SERVERID";
}

/// `options.health_check` of a backend.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(rename = "type")]
    pub kind: CheckKind,
    /// http: the request's path, method and Host header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Defaults to the server's port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// http: "200", "200,204" or "200-399"; default any 2xx or 3xx.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub expected_code: Option<ExpectedCodes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_header: Option<String>,
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub interval: Option<Duration>,
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rise: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fall: Option<u32>,
    /// mysql: log in as this user (no password) and quit; postgres: the startup user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A DOWN server's established flows: "keep" (default) or "reset".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_down: Option<OnDown>,
    /// How a server starts when nothing is known of it: "down" (default) or "up".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_state: Option<InitState>,
}

/// The defaults of a health check's optional fields, in one place.
impl HealthCheck {
    pub fn interval(&self) -> Duration {
        self.interval.unwrap_or(Duration::from_secs(2))
    }

    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(Duration::from_secs(1))
    }

    pub fn rise(&self) -> u32 {
        self.rise.unwrap_or(2)
    }

    pub fn fall(&self) -> u32 {
        self.fall.unwrap_or(3)
    }

    pub fn on_down(&self) -> OnDown {
        self.on_down.unwrap_or_default()
    }

    pub fn init_state(&self) -> InitState {
        self.init_state.unwrap_or_default()
    }

    pub fn expected(&self) -> ExpectedCodes {
        self.expected_code.clone().unwrap_or_default()
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
#[serde(try_from = "ServersDocument")]
pub enum Servers {
    Addresses { addresses: Vec<ServerAddress> },
    Computer { computer_ids: Vec<String> },
}

/// `servers` as written. A tagged enum would buffer its content, so a bad address inside
/// could only be reported at `servers`; a plain struct lets every field name its path.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServersDocument {
    #[serde(rename = "type")]
    kind: ServersKind,
    addresses: Option<Vec<ServerAddress>>,
    computer_ids: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum ServersKind {
    Addresses,
    Computer,
}

impl TryFrom<ServersDocument> for Servers {
    type Error = &'static str;

    fn try_from(d: ServersDocument) -> Result<Self, Self::Error> {
        match (d.kind, d.addresses, d.computer_ids) {
            (ServersKind::Addresses, Some(addresses), None) => Ok(Servers::Addresses { addresses }),
            (ServersKind::Computer, None, Some(computer_ids)) => {
                Ok(Servers::Computer { computer_ids })
            }
            (ServersKind::Addresses, _, _) => Err(
                "type = \"addresses\" takes `addresses = [{ address = \"...\" }]` (and no computer_ids)",
            ),
            (ServersKind::Computer, _, _) => {
                Err("type = \"computer\" takes `computer_ids = [\"...\"]` (and no addresses)")
            }
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerAddress {
    /// What `lb server` commands, status and metrics call it besides its address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[schema(value_type = String)]
    pub address: IpAddr,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Most open flows for `first` and `leastconn`; absent = no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_conn: Option<u32>,
    /// "ready" (default), "drain" or "maint".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<AdminState>,
    /// With `state = "drain"`: how long its flows may run on; then the backend's
    /// `on_drain_timeout` says what happens to those left.
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub drain_timeout: Option<Duration>,
    /// When the drain with a timeout began (RFC 3339, written by `lb server drain`): the
    /// timeout counts from it, across daemon restarts. Absent (a hand-written drain): from
    /// when the daemon first runs the server as draining.
    #[serde(
        default,
        with = "timestamp_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub drain_started: Option<std::time::SystemTime>,
}

impl ServerAddress {
    /// Whether `given` names this server: its name, or its address as written.
    pub fn is(&self, given: &str) -> bool {
        self.name.as_deref() == Some(given) || given.parse::<IpAddr>() == Ok(self.address)
    }
}

fn default_weight() -> u32 {
    1
}

/// One resolved server of a backend.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedServer {
    pub name: Option<String>,
    pub address: IpAddr,
    /// As configured.
    pub weight: u32,
    pub max_conn: u32,
    pub state: AdminState,
    pub drain_timeout: Option<Duration>,
    pub drain_started: Option<std::time::SystemTime>,
}

impl From<&ResolvedServer> for ServerAddress {
    fn from(s: &ResolvedServer) -> ServerAddress {
        ServerAddress {
            name: s.name.clone(),
            address: s.address,
            weight: s.weight,
            max_conn: (s.max_conn > 0).then_some(s.max_conn),
            state: (s.state != AdminState::Ready).then_some(s.state),
            drain_timeout: s.drain_timeout,
            drain_started: s.drain_started,
        }
    }
}

impl ResolvedServer {
    /// The weight new flows see by the server's admin state (health aside): 0 unless ready.
    pub fn serving_weight(&self) -> u32 {
        if self.state == AdminState::Ready {
            self.weight
        } else {
            0
        }
    }
}

impl Backend {
    /// Whether a server its check marks DOWN has its flows reset (`on_down = "reset"`).
    pub fn resets_flows_when_down(&self) -> bool {
        self.options
            .health_check
            .as_ref()
            .is_some_and(|c| c.on_down() == OnDown::Reset)
    }

    /// Servers with computer ids resolved through the inventory. Call after validation.
    pub fn resolved_servers(&self, computers: &BTreeMap<String, IpAddr>) -> Vec<ResolvedServer> {
        match &self.servers {
            Servers::Addresses { addresses } => addresses
                .iter()
                .map(|s| ResolvedServer {
                    name: s.name.clone(),
                    address: s.address,
                    weight: s.weight,
                    max_conn: s.max_conn.unwrap_or(0),
                    state: s.state.unwrap_or_default(),
                    drain_timeout: s.drain_timeout,
                    drain_started: s.drain_started,
                })
                .collect(),
            // Validation refuses ids missing from the inventory.
            Servers::Computer { computer_ids } => computer_ids
                .iter()
                .filter_map(|id| computers.get(id))
                .map(|&address| ResolvedServer {
                    name: None,
                    address,
                    weight: 1,
                    max_conn: 0,
                    state: AdminState::Ready,
                    drain_timeout: None,
                    drain_started: None,
                })
                .collect(),
        }
    }
}

impl Config {
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
            Some(s) if s.kind == StickyKind::SourceIp => {
                s.ttl.unwrap_or(StickySession::DEFAULT_TTL).as_secs().max(1) as u32
            }
            _ => 0,
        }
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
}
