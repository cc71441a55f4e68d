//! Value types of the config that are parsed once, when the file or an API body is read:
//! the closed sets (spelled as the config spells them), ports, CIDRs, durations and
//! expected HTTP codes.

use std::{fmt, net::IpAddr};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A closed set of words: a serde enum whose `as_str` and `Display` give the config's own
/// spelling, so messages say `tcp`, not `Tcp`.
macro_rules! spelled {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        // snake_case names every word of these sets; written out (not per variant through the
        // macro's literals) so that the OpenAPI derive sees it too. `as_str` is checked
        // against it by a test.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every word of the set, in the order the config reference lists them.
            pub const ALL: &[$name] = &[$($name::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

spelled! {
    /// A frontend's or backend's protocol mode.
    pub enum Mode {
        Tcp = "tcp",
        Http = "http",
    }
}

spelled! {
    /// A bind's transport protocol.
    #[derive(Default)]
    pub enum Protocol {
        #[default]
        Tcp = "tcp",
        Udp = "udp",
    }
}

spelled! {
    /// How packets reach servers.
    #[derive(Default)]
    pub enum Forwarding {
        /// Full NAT: servers see lb's SNAT address; replies come back through lb.
        #[default]
        Nat = "nat",
        /// L2 direct server return: servers hold the VIP and answer clients directly.
        Dsr = "dsr",
    }
}

spelled! {
    /// Which node of an HA pair should be master when both are healthy and synced.
    #[derive(Default)]
    pub enum HaRole {
        #[default]
        Master = "master",
        Backup = "backup",
    }
}

spelled! {
    /// What the proxy does with a request header whose name has an underscore, such as
    /// `X_Forwarded_For`: CGI-style servers (PHP, WSGI, Rack) read `_` and `-` alike, so it
    /// could pass for a header the proxy rewrote. nginx drops them
    /// (`underscores_in_headers off`), Envoy may drop or reject them.
    #[derive(Default)]
    pub enum UnderscoreHeaders {
        /// Not forwarded; the request goes on.
        #[default]
        Drop = "drop",
        /// The request is answered 400.
        Reject = "reject",
        /// Forwarded like any other header.
        Allow = "allow",
    }
}

spelled! {
    /// A backend's balancing method.
    pub enum Method {
        Roundrobin = "roundrobin",
        Leastconn = "leastconn",
        First = "first",
        Source = "source",
        Maglev = "maglev",
    }
}

impl Method {
    /// The methods of the userspace proxy (http backends): all but maglev.
    pub const HTTP: &[Method] = &[
        Method::Roundrobin,
        Method::Leastconn,
        Method::First,
        Method::Source,
    ];

    /// Whether it enforces `max_conn` (it scans servers per new flow).
    pub fn enforces_max_conn(self) -> bool {
        matches!(self, Method::First | Method::Leastconn)
    }

    /// Whether it uses a Maglev table (and so `table_size`).
    pub fn uses_maglev(self) -> bool {
        matches!(self, Method::Source | Method::Maglev)
    }
}

spelled! {
    /// What an ACL tests.
    pub enum AclCriterion {
        /// The path begins with the value.
        PathBeg = "path_beg",
        /// The Host header equals the value (port ignored).
        HdrHost = "hdr_host",
    }
}

spelled! {
    /// The condition of a routing rule.
    pub enum RouteCond {
        If = "if",
    }
}

spelled! {
    /// The PROXY protocol version a backend sends.
    pub enum ProxyVersion {
        /// Text.
        V1 = "v1",
        /// Binary.
        V2 = "v2",
    }
}

spelled! {
    /// How a backend keeps a client on its server.
    pub enum StickyKind {
        SourceIp = "source_ip",
        Cookie = "cookie",
    }
}

spelled! {
    /// The protocol of a health check.
    pub enum CheckKind {
        Tcp = "tcp",
        Http = "http",
        Mysql = "mysql",
        Postgres = "postgres",
        Redis = "redis",
        Tls = "tls",
    }
}

spelled! {
    /// What happens to a DOWN server's established flows.
    #[derive(Default)]
    pub enum OnDown {
        /// They run on.
        #[default]
        Keep = "keep",
        /// The client's next packet of each is answered with a TCP RST (HAProxy's
        /// `on-marked-down shutdown-sessions`).
        Reset = "reset",
    }
}

spelled! {
    /// What an operator set a server to (HAProxy's `set server state`), apart from its
    /// health: `lb server drain|maint|ready`, or the file.
    #[derive(Default)]
    pub enum AdminState {
        /// Takes new flows when healthy.
        #[default]
        Ready = "ready",
        /// No new flows; its flows run on, until `drain_timeout` if one is set.
        Drain = "drain",
        /// No new flows and no health checks; its flows run on.
        Maint = "maint",
    }
}

spelled! {
    /// A proxied frontend's access log.
    #[derive(Default)]
    pub enum AccessLog {
        #[default]
        Off = "off",
        Text = "text",
        Json = "json",
    }
}

spelled! {
    /// How XDP attaches to an interface.
    #[derive(Default)]
    pub enum XdpAttach {
        /// Native (driver) mode, else generic with a warning.
        #[default]
        Auto = "auto",
        /// Native (driver) mode or fail: no silent fallback to the slower generic mode.
        Native = "native",
        /// Generic (skb) mode: any interface, slower.
        Generic = "generic",
    }
}

/// Separates what is wrong from how to fix it in the errors of these types, so that a
/// config error can show both on their lines.
pub const FIX: &str = "\nfix: ";

spelled! {
    /// How a checked server starts when nothing is known of it (HAProxy's `init-state`):
    /// on a fresh start, and for a server new to the config. Taking over a pinned data
    /// plane restores the state the earlier daemon left.
    #[derive(Default)]
    pub enum InitState {
        Up = "up",
        #[default]
        Down = "down",
    }
}

/// Every word of a closed set, for a fix line: "use one of: tcp, http".
pub fn one_of<T: fmt::Display>(all: &[T]) -> String {
    all.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A port, written as an integer or a numeric string (the API accepts both); it is written
/// back the way it came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Port {
    pub number: u16,
    as_text: bool,
}

/// How a port may be written, for the OpenAPI document.
#[derive(utoipa::ToSchema)]
#[serde(untagged)]
pub enum PortDocument {
    Number(i64),
    Text(String),
}

impl Port {
    pub fn new(number: u16) -> Port {
        Port {
            number,
            as_text: false,
        }
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Number(i64),
            Text(String),
        }
        let (number, as_text) = match Written::deserialize(d)? {
            Written::Number(n) => (u16::try_from(n).ok(), false),
            Written::Text(s) => (s.trim().parse::<u16>().ok(), true),
        };
        match number.filter(|p| *p != 0) {
            Some(number) => Ok(Port { number, as_text }),
            None => Err(de::Error::custom(format!(
                "not a port number{FIX}use an integer (or numeric string) from 1 to 65535"
            ))),
        }
    }
}

impl Serialize for Port {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.as_text {
            s.serialize_str(&self.number.to_string())
        } else {
            s.serialize_u16(self.number)
        }
    }
}

/// A range of ports, both ends included, written "1024-65535" (or one port, "5000"); written
/// back as it was written. Its ends are 1 to 65535 and the first is not past the last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
    text: String,
}

impl PortRange {
    pub fn new(min: u16, max: u16) -> PortRange {
        PortRange {
            min,
            max,
            text: format!("{min}-{max}"),
        }
    }

    /// Ports in the range.
    pub fn len(&self) -> u32 {
        u32::from(self.max) - u32::from(self.min) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.min..=self.max).contains(&port)
    }

    /// Whether the two ranges share a port.
    pub fn overlaps(&self, min: u16, max: u16) -> bool {
        self.min <= max && min <= self.max
    }

    pub fn parse(text: &str) -> Result<PortRange, String> {
        let (lo, hi) = match text.split_once('-') {
            Some((lo, hi)) => (lo.trim(), hi.trim()),
            None => (text.trim(), text.trim()),
        };
        let port = |s: &str| {
            s.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{s:?} in {text:?} is not a port from 1 to 65535"))
        };
        let (min, max) = (port(lo)?, port(hi)?);
        if min > max {
            return Err(format!(
                "port range {text:?} is backwards ({min} is past {max})"
            ));
        }
        Ok(PortRange {
            min,
            max,
            text: text.to_string(),
        })
    }
}

impl Default for PortRange {
    /// The default SNAT range: every unprivileged port.
    fn default() -> Self {
        PortRange::new(
            lb_common::maps::DEFAULT_SNAT_PORT_MIN,
            lb_common::maps::DEFAULT_SNAT_PORT_MAX,
        )
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        PortRange::parse(&text).map_err(|e| {
            de::Error::custom(format!(
                "{e}{FIX}write the first and last port, such as \"1024-65535\""
            ))
        })
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// An address or prefix: "198.18.0.0/24", "2001:2::/48", "198.18.0.1".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub net: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Option<Cidr> {
        let (net, len) = match text.trim().split_once('/') {
            Some((a, l)) => (a.parse::<IpAddr>().ok()?, l.parse::<u8>().ok()?),
            None => {
                let a = text.trim().parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if net.is_ipv4() { 32 } else { 128 };
        (len <= max).then_some(Cidr { net, len })
    }

    /// Whether `addr` is inside (IPv4-mapped addresses count as IPv4).
    pub fn contains(self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, addr) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.len)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Cidr::parse(&text).ok_or_else(|| {
            de::Error::custom(format!(
                "{text:?} is not an address or CIDR{FIX}write an address or a prefix such as \"198.18.0.0/24\""
            ))
        })
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Durations written as "500ms", "10s", "5m" or "1h" (humantime), for `#[serde(with)]`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de};

    use super::FIX;

    fn parse<E: de::Error>(text: &str) -> Result<Duration, E> {
        humantime::parse_duration(text.trim()).map_err(|e| {
            E::custom(format!(
                "{text:?} is not a duration ({e}){FIX}write a duration such as \"500ms\", \"10s\", \"5m\" or \"1h\""
            ))
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        parse(&String::deserialize(d)?)
    }

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*value))
    }

    /// The same for optional durations.
    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        use super::parse;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|t| parse(&t))
                .transpose()
        }

        pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match value {
                Some(v) => s.collect_str(&humantime::format_duration(*v)),
                None => s.serialize_none(),
            }
        }
    }
}

/// An optional point in time, written as RFC 3339 UTC ("2026-12-03T17:40:00Z").
pub mod timestamp_option {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer, de};

    use super::FIX;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| {
                humantime::parse_rfc3339_weak(text.trim()).map_err(|e| {
                    de::Error::custom(format!(
                        "{text:?} is not a time ({e}){FIX}write it as \"2026-12-03T17:40:00Z\""
                    ))
                })
            })
            .transpose()
    }

    pub fn serialize<S: Serializer>(value: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(t) => s.collect_str(&humantime::format_rfc3339_seconds(*t)),
            None => s.serialize_none(),
        }
    }
}

/// Which HTTP status codes count as healthy: "200", "200,204" or "200-399"; written back as
/// it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedCodes {
    text: String,
    ranges: Vec<(u16, u16)>,
}

impl Default for ExpectedCodes {
    /// Any 2xx or 3xx.
    fn default() -> Self {
        ExpectedCodes {
            text: "200-399".into(),
            ranges: vec![(200, 399)],
        }
    }
}

impl ExpectedCodes {
    /// Codes and ranges separated by commas.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut ranges = Vec::new();
        for part in text.split(',').map(str::trim) {
            let (lo, hi) = match part.split_once('-') {
                Some((lo, hi)) => (lo.trim(), hi.trim()),
                None => (part, part),
            };
            let code = |s: &str| {
                s.parse::<u16>()
                    .ok()
                    .filter(|c| (100..=599).contains(c))
                    .ok_or_else(|| format!("{s:?} is not an HTTP status code (100-599)"))
            };
            let (lo, hi) = (code(lo)?, code(hi)?);
            if lo > hi {
                return Err(format!("range {part:?} is backwards"));
            }
            ranges.push((lo, hi));
        }
        Ok(ExpectedCodes {
            text: text.to_string(),
            ranges,
        })
    }

    pub fn accepts(&self, code: u16) -> bool {
        self.ranges
            .iter()
            .any(|(lo, hi)| (*lo..=*hi).contains(&code))
    }
}

impl<'de> Deserialize<'de> for ExpectedCodes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        ExpectedCodes::parse(&text).map_err(|e| {
            de::Error::custom(format!(
                "{e}{FIX}write a code, a list such as \"200,204\", or a range such as \"200-399\""
            ))
        })
    }
}

impl Serialize for ExpectedCodes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_contain_what_they_should() {
        let net = Cidr::parse("198.18.0.0/24").unwrap();
        assert!(net.contains("198.18.0.77".parse().unwrap()));
        assert!(net.contains("::ffff:198.18.0.77".parse().unwrap()));
        assert!(!net.contains("198.18.1.1".parse().unwrap()));
        let six = Cidr::parse("2001:2::/48").unwrap();
        assert!(six.contains("2001:2:0:11::2".parse().unwrap()));
        assert!(Cidr::parse("198.18.0.1").is_some() && Cidr::parse("x/8").is_none());
    }

    #[test]
    fn expected_codes() {
        let default = ExpectedCodes::default();
        assert!(
            default.accepts(200)
                && default.accepts(302)
                && !default.accepts(404)
                && !default.accepts(503)
        );
        let list = ExpectedCodes::parse("200, 204").unwrap();
        assert!(list.accepts(204) && !list.accepts(201));
        let range = ExpectedCodes::parse("200-399").unwrap();
        assert!(range.accepts(399) && !range.accepts(400));
        assert!(ExpectedCodes::parse("2xx").is_err());
        assert!(ExpectedCodes::parse("399-200").is_err());
    }

    #[test]
    fn port_ranges() {
        let r = PortRange::parse("1024-65535").unwrap();
        assert_eq!((r.min, r.max, r.len()), (1024, 65535, 64512));
        assert_eq!(PortRange::parse(" 5000 ").unwrap().len(), 1);
        assert_eq!(PortRange::default(), PortRange::new(1024, 65535));
        assert!(r.overlaps(32768, 60999) && !r.overlaps(1, 1023));
        assert_eq!(
            PortRange::parse("2000-1000").unwrap_err(),
            "port range \"2000-1000\" is backwards (2000 is past 1000)"
        );
        assert_eq!(
            PortRange::parse("0-100").unwrap_err(),
            "\"0\" in \"0-100\" is not a port from 1 to 65535"
        );
        assert!(PortRange::parse("1024-65536").is_err());
        assert!(PortRange::parse("low-high").is_err());
        let json = serde_json::to_string(&PortRange::parse("1024 - 2047").unwrap()).unwrap();
        assert_eq!(json, "\"1024 - 2047\"", "written back as written");
    }

    #[test]
    fn every_word_serialises_as_it_is_spelled() {
        fn check<T: serde::Serialize + fmt::Display>(all: &[T]) {
            for w in all {
                assert_eq!(serde_json::to_string(w).unwrap(), format!("\"{w}\""));
            }
        }
        check(Mode::ALL);
        check(Protocol::ALL);
        check(Forwarding::ALL);
        check(Method::ALL);
        check(AclCriterion::ALL);
        check(RouteCond::ALL);
        check(ProxyVersion::ALL);
        check(StickyKind::ALL);
        check(CheckKind::ALL);
        check(OnDown::ALL);
        check(InitState::ALL);
        check(UnderscoreHeaders::ALL);
        check(HaRole::ALL);
    }

    #[test]
    fn the_openapi_document_spells_the_words_as_the_config_does() {
        use utoipa::PartialSchema as _;
        let schema = serde_json::to_string(&Method::schema()).unwrap();
        assert!(
            schema.contains("\"roundrobin\"") && !schema.contains("Roundrobin"),
            "{schema}"
        );
    }

    #[test]
    fn words_are_spelled_as_the_config_spells_them() {
        assert_eq!(Mode::Tcp.to_string(), "tcp");
        assert_eq!(StickyKind::SourceIp.to_string(), "source_ip");
        assert_eq!(one_of(Method::HTTP), "roundrobin, leastconn, first, source");
        assert_eq!(
            serde_json::to_string(&AclCriterion::PathBeg).unwrap(),
            "\"path_beg\""
        );
    }
}
