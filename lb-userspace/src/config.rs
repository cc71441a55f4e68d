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

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub frontends: Vec<Frontend>,
    #[serde(default)]
    pub backends: Vec<Backend>,
    /// Inventory for `servers = { type = "computer", ... }`: computer id -> address.
    #[serde(default)]
    pub computers: BTreeMap<String, IpAddr>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Tcp,
    Http,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Frontend {
    pub name: String,
    pub mode: Mode,
    /// The virtual IP clients connect to.
    pub address: IpAddr,
    pub binds: Vec<Bind>,
    pub default_backend: String,
    /// Interfaces the XDP program is attached to for this frontend: where client traffic
    /// arrives and where server replies arrive.
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// Source address for packets sent to servers; replies must route back to it.
    pub snat_address: Option<IpAddr>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Bind {
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub name: String,
    pub mode: Mode,
    pub balancing_method: String,
    pub port: PortValue,
    pub servers: Servers,
}

/// The API accepts a port as an integer or a numeric string.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
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

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Servers {
    Addresses { addresses: Vec<ServerAddress> },
    Computer { computer_ids: Vec<String> },
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerAddress {
    /// Kept as text and parsed in validation: inside the tagged `servers` enum the TOML
    /// parser can only point at the whole table, validation can point at the field.
    pub address: String,
    #[serde(default = "default_weight")]
    pub weight: i64,
}

fn default_weight() -> i64 {
    1
}

/// The balancing methods the XDP data plane implements today.
pub const XDP_METHODS: &[&str] = &["maglev"];
/// Methods the product names; accepted as words, reported as not yet implemented.
pub const PLANNED_METHODS: &[&str] = &["roundrobin", "leastconn", "first", "source"];

/// One resolved server of a backend.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedServer {
    pub address: IpAddr,
    pub weight: u32,
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
                    })
                })
                .collect(),
            Servers::Computer { computer_ids } => computer_ids
                .iter()
                .filter_map(|id| computers.get(id))
                .map(|&address| ResolvedServer { address, weight: 1 })
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
            if PLANNED_METHODS.contains(&method) {
                problem(
                    format!("{at}.balancing_method"),
                    format!(
                        "balancing_method {method:?} is not implemented by the XDP data plane yet"
                    ),
                    "use balancing_method = \"maglev\" (weighted consistent hashing)",
                );
            } else if !XDP_METHODS.contains(&method) {
                problem(
                    format!("{at}.balancing_method"),
                    format!("unknown balancing_method {method:?}"),
                    "use one of: maglev",
                );
            }
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

        let mut frontend_names = HashSet::new();
        let mut listeners = HashSet::new();
        for (i, f) in self.frontends.iter().enumerate() {
            let at = format!("frontends[{i}]");
            if !frontend_names.insert(f.name.as_str()) {
                problem(
                    format!("{at}.name"),
                    format!("frontend name {:?} is used twice", f.name),
                    "give each frontend a unique name",
                );
            }
            if f.mode == Mode::Http {
                problem(
                    format!("{at}.mode"),
                    "mode \"http\" needs the userspace HTTP proxy, which this version does not have yet".into(),
                    "use mode = \"tcp\" (and a tcp backend)",
                );
            }
            match self.backends.iter().find(|b| b.name == f.default_backend) {
                None => problem(
                    format!("{at}.default_backend"),
                    format!("no backend is named {:?}", f.default_backend),
                    "name one of the [[backends]] entries",
                ),
                Some(b) => {
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
            if f.mode == Mode::Tcp && f.interfaces.is_empty() {
                problem(
                    format!("{at}.interfaces"),
                    "a tcp frontend needs the interfaces to attach XDP to".into(),
                    "list them, for example interfaces = [\"eth0\"]",
                );
            }
            match f.snat_address {
                None if f.mode == Mode::Tcp => problem(
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
    fn planned_methods_are_refused_honestly() {
        let e = errors(&GOOD.replace("\"maglev\"", "\"leastconn\""));
        assert!(e.problems[0].1.message.contains("not implemented"));
    }
}
