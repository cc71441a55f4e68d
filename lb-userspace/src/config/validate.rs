//! The config's rules, checked once when a file or an API change is loaded. Every problem
//! is reported at once, each with its field path, what is wrong and how to fix it.

use std::{collections::HashSet, time::Duration};

use super::{
    error::Problem,
    model::{Backend, Config, Frontend, MAX_REQUEST_HEADERS, MAX_TABLE_SIZE, MAX_WEIGHT, Servers},
    values::{AdminState, CheckKind, Forwarding, Method, Mode, Protocol, StickyKind, one_of},
};

/// Names (and load balancer ids) are path segments of the API and keys of the data
/// plane's id map: 1 to 64 characters of `[A-Za-z0-9._-]`.
pub const NAME_MAX: usize = lb_common::maps::NAME_LEN;
const NAME_FIX: &str = "use 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-'";

/// What is wrong with a name, if anything.
fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("name is empty".into());
    }
    if name.len() > NAME_MAX {
        return Some(format!("name is {} characters long", name.len()));
    }
    name.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        .map(|c| format!("name {name:?} has the character {c:?}"))
}

impl Config {
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
            if let Some(wrong) = name_problem(&b.name) {
                problem(format!("{at}.name"), format!("backend {wrong}"), NAME_FIX);
            } else if !backend_names.insert(b.name.as_str()) {
                problem(
                    format!("{at}.name"),
                    format!("backend name {:?} is used twice", b.name),
                    "give each backend a unique name",
                );
            }
            let method = b.balancing_method;
            self.validate_options(b, &at, &mut problem);
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
                    let mut seen_names = HashSet::new();
                    for (j, s) in addresses.iter().enumerate() {
                        let sat = format!("{at}.servers.addresses[{j}]");
                        if s.max_conn.is_some() && !method.enforces_max_conn() {
                            problem(
                                format!("{sat}.max_conn"),
                                format!(
                                    "max_conn is enforced only by first and leastconn, not {method}"
                                ),
                                "remove max_conn, or use balancing_method = \"first\" or \"leastconn\"",
                            );
                        }
                        if s.weight > MAX_WEIGHT {
                            problem(
                                format!("{sat}.weight"),
                                format!("weight {} is outside 0..100", s.weight),
                                "use a weight from 0 (drain) to 100",
                            );
                        }
                        if let Some(name) = &s.name {
                            let well_formed = !name.is_empty()
                                && name.len() <= 64
                                && name
                                    .chars()
                                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                                && name.parse::<std::net::IpAddr>().is_err();
                            if !well_formed {
                                problem(
                                    format!("{sat}.name"),
                                    format!("server name {name:?} is not a plain name"),
                                    "use 1 to 64 letters, digits, '-', '_' or '.', not an address",
                                );
                            } else if !seen_names.insert(name.as_str()) {
                                problem(
                                    format!("{sat}.name"),
                                    format!("server name {name:?} is used twice in this backend"),
                                    "give each server of a backend its own name",
                                );
                            }
                        }
                        if s.drain_timeout.is_some() && s.state != Some(AdminState::Drain) {
                            problem(
                                format!("{sat}.drain_timeout"),
                                "drain_timeout applies only to a draining server".to_string(),
                                "set state = \"drain\", or remove drain_timeout",
                            );
                        }
                        if s.drain_started.is_some() && s.drain_timeout.is_none() {
                            problem(
                                format!("{sat}.drain_started"),
                                "drain_started is when a drain's timeout began, and this server has no drain_timeout".to_string(),
                                "remove drain_started, or set state = \"drain\" with a drain_timeout",
                            );
                        }
                        let a = s.address;
                        if a.is_unspecified() || a.is_multicast() {
                            problem(
                                format!("{sat}.address"),
                                format!("{a} cannot be a server address"),
                                "use the server's unicast address",
                            );
                        } else if !seen.insert(a) {
                            problem(
                                format!("{sat}.address"),
                                format!("server {a} is listed twice"),
                                "list each server once; use weight for a larger share",
                            );
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
            if value.is_zero() {
                problem(
                    format!("dataplane.{field}"),
                    "a zero duration never comes".into(),
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
            if let Some(wrong) = name_problem(&lb.id) {
                problem(
                    format!("lbs[{i}].id"),
                    format!("load balancer id: {wrong}"),
                    NAME_FIX,
                );
            } else if !lb_ids.insert(lb.id.as_str()) {
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
            if let Some(wrong) = name_problem(&f.name) {
                problem(format!("{at}.name"), format!("frontend {wrong}"), NAME_FIX);
            } else if !frontend_names.insert(f.name.as_str()) {
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
                    if f.dsr_stateless_fallback && f.forwarding != Forwarding::Dsr {
                        problem(
                            format!("{at}.dsr_stateless_fallback"),
                            "dsr_stateless_fallback needs forwarding = \"dsr\": with full NAT a flow's SNAT port lives on one node only".into(),
                            "set forwarding = \"dsr\", or remove dsr_stateless_fallback",
                        );
                    } else if f.dsr_stateless_fallback && b.balancing_method != Method::Maglev {
                        problem(
                            format!("{at}.dsr_stateless_fallback"),
                            format!(
                                "dsr_stateless_fallback needs backend {:?} to use maglev, not {}: only a table every node computes alike sends an untracked packet to its flow's server",
                                b.name, b.balancing_method
                            ),
                            "set balancing_method = \"maglev\" on the backend",
                        );
                    }
                    if f.forwarding == Forwarding::Dsr
                        && let Some(bind) = f.binds.iter().find(|bind| bind.port != b.port.number)
                    {
                        problem(
                            format!("{at}.binds"),
                            format!(
                                "DSR cannot translate ports, but bind port {} differs from backend {:?} port {}",
                                bind.port, b.name, b.port.number
                            ),
                            "with forwarding = \"dsr\", give the backend the same port as every bind",
                        );
                    }
                    if b.mode != f.mode {
                        problem(
                            format!("{at}.mode"),
                            format!(
                                "frontend mode {} differs from backend {:?} mode {}",
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
                        format!("{}:{} ({}) is bound twice", f.address, b.port, b.protocol),
                        "each address, port and protocol may be bound by one frontend only",
                    );
                }
                if b.use_http3 == Some(true)
                    && !listeners.insert((f.address, b.port, Protocol::Udp))
                {
                    problem(
                        format!("{at}.binds[{j}].use_http3"),
                        format!(
                            "{}:{} (udp) is bound twice: HTTP/3 serves the bind's port over UDP",
                            f.address, b.port
                        ),
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
            self.validate_snat(f, &at, in_xdp, &mut problem);
        }
        let h = &self.http;
        for (field, value) in [
            ("connect_timeout", &h.connect_timeout),
            ("server_timeout", &h.server_timeout),
            ("request_timeout", &h.request_timeout),
            ("body_timeout", &h.body_timeout),
            ("http3_idle_timeout", &h.http3_idle_timeout),
            ("pool_idle_timeout", &h.pool_idle_timeout),
        ] {
            if value.is_zero() {
                problem(
                    format!("http.{field}"),
                    "a zero timeout expires at once".into(),
                    "use a number with a unit, such as \"500ms\", \"10s\" or \"2m\"",
                );
            }
        }
        let max = MAX_REQUEST_HEADERS;
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
        if h.max_connections == Some(0) {
            problem(
                "http.max_connections".into(),
                "max_connections 0 would refuse every connection".into(),
                "remove it (the open file limit decides), or use a count such as 100000",
            );
        }
        if h.http3_idle_timeout > Duration::from_secs(600) {
            problem(
                "http.http3_idle_timeout".into(),
                format!(
                    "http3_idle_timeout {} is more than 10m",
                    humantime::format_duration(h.http3_idle_timeout)
                ),
                "use a duration such as \"30s\" (the default)",
            );
        }
        if h.pool_idle_timeout > Duration::from_secs(3600) {
            problem(
                "http.pool_idle_timeout".into(),
                format!(
                    "pool_idle_timeout {} is more than 1h",
                    humantime::format_duration(h.pool_idle_timeout)
                ),
                "use a duration such as \"10s\" (the default), below the servers' keep-alive timeout",
            );
        }
        if h.pool_idle_per_server > 65_536 {
            problem(
                "http.pool_idle_per_server".into(),
                format!(
                    "pool_idle_per_server {} is more than 65536",
                    h.pool_idle_per_server
                ),
                "use a count such as 512 (the default), or 0 to keep no idle connection",
            );
        }
        if !(1..=10_000).contains(&h.http3_max_streams) {
            problem(
                "http.http3_max_streams".into(),
                format!(
                    "http3_max_streams {} is outside 1..=10000",
                    h.http3_max_streams
                ),
                "use a count such as 100 (the default)",
            );
        }
        if !(1200..=65527).contains(&h.http3_max_udp_payload) {
            problem(
                "http.http3_max_udp_payload".into(),
                format!(
                    "http3_max_udp_payload {} is outside 1200..=65527 (QUIC's bounds)",
                    h.http3_max_udp_payload
                ),
                "use a size in bytes such as 1472 (the default, for an MTU of 1500)",
            );
        }
        if !(1..=256).contains(&h.workers) {
            problem(
                "http.workers".into(),
                format!("workers {} is outside 1..=256", h.workers),
                "use about one worker per core, such as 2 (the default)",
            );
        }
        if let Some(ha) = &self.ha {
            self.validate_ha(ha, &mut problem);
        }
        if let Some(bgp) = &self.bgp
            && bgp.neighbors.is_empty()
        {
            problem(
                "bgp.neighbors".into(),
                "no BGP neighbor to announce the VIPs to".into(),
                "add neighbors = [{ address = \"198.18.60.1\", remote_as = 65000 }]",
            );
        }
        out
    }

    fn validate_ha(&self, ha: &super::HaConfig, problem: &mut impl FnMut(String, String, &str)) {
        if ha.listen.is_ipv4() != ha.peer.is_ipv4() || ha.listen.ip() == ha.peer.ip() {
            problem(
                "ha.peer".into(),
                format!(
                    "peer {} must be another address of the same family as listen {}",
                    ha.peer, ha.listen
                ),
                "give the other node's sync address, such as \"198.18.50.2:7946\"",
            );
        }
        if ha.listen.ip().is_unspecified() {
            problem(
                "ha.listen".into(),
                format!("listen {} is not an address of this node", ha.listen),
                "give this node's own address on the link to its peer: keepalived sends its adverts from it",
            );
        }
        let ms = ha.sync_interval.as_millis();
        if !(10..=10_000).contains(&ms) {
            problem(
                "ha.sync_interval".into(),
                format!("sync_interval {ms}ms is outside 10ms..=10s"),
                "use a short interval such as \"200ms\" (the default): younger flows may be lost at a failover",
            );
        }
        let v = &ha.vrrp;
        if v.interface.is_empty() {
            problem(
                "ha.vrrp.interface".into(),
                "no interface for VRRP adverts".into(),
                "name the interface that holds ha.listen's address, such as \"eth1\"",
            );
        }
        if v.virtual_router_id == 0 {
            problem(
                "ha.vrrp.virtual_router_id".into(),
                "virtual_router_id 0 is not a VRRP router id".into(),
                "use 1 to 255, the same on both nodes",
            );
        }
        let cs = v.advert_int.as_millis();
        if !(10..=40_950).contains(&cs) || !cs.is_multiple_of(10) {
            problem(
                "ha.vrrp.advert_int".into(),
                format!("advert_int {cs}ms is not a VRRPv3 interval"),
                "use a multiple of 10ms from \"10ms\" to \"40s\", such as \"100ms\" (the default)",
            );
        }
        if v.addresses.is_empty() {
            problem(
                "ha.vrrp.addresses".into(),
                "no floating address".into(),
                "list the VIP (or the clients' next hop) and the servers' gateway, such as [{ address = \"198.18.0.1/24\", interface = \"eth0\" }]",
            );
        }
        for (i, a) in v.addresses.iter().enumerate() {
            if a.interface.is_empty() {
                problem(
                    format!("ha.vrrp.addresses[{i}].interface"),
                    format!("floating address {} has no interface", a.address.net),
                    "name the interface that holds it on the master",
                );
            }
        }
    }

    /// `snat_address` / `snat_addresses`: one of the two (the first is a one-address list),
    /// needed by a full-NAT frontend in XDP, at most `MAX_SNAT_ADDRS` unicast addresses of
    /// the frontend's family, each once.
    fn validate_snat(
        &self,
        f: &Frontend,
        at: &str,
        in_xdp: bool,
        problem: &mut impl FnMut(String, String, &str),
    ) {
        let max = lb_common::maps::MAX_SNAT_ADDRS;
        if let (Some(one), false) = (f.snat_address, f.snat_addresses.is_empty()) {
            problem(
                format!("{at}.snat_addresses"),
                format!("snat_address ({one}) and snat_addresses are both set"),
                "keep one: snat_address = \"A\" is the same as snat_addresses = [\"A\"], so \
                 move it into the list",
            );
            return;
        }
        let addresses = f.snat_addresses();
        if addresses.is_empty() {
            if in_xdp && f.forwarding == Forwarding::Nat {
                problem(
                    format!("{at}.snat_address"),
                    "a tcp frontend needs an SNAT address for full NAT".into(),
                    "set snat_address (or snat_addresses) to addresses of this host that servers \
                     route back to",
                );
            }
            return;
        }
        if addresses.len() > max {
            problem(
                format!("{at}.snat_addresses"),
                format!(
                    "{} SNAT addresses; a frontend has at most {max}",
                    addresses.len()
                ),
                &format!(
                    "list at most {max} addresses (each adds snat_ports flows per server port)"
                ),
            );
        }
        let field = |j: usize| match f.snat_address {
            Some(_) => format!("{at}.snat_address"),
            None => format!("{at}.snat_addresses[{j}]"),
        };
        let name = if f.snat_address.is_some() {
            "snat_address"
        } else {
            "snat_addresses"
        };
        let mut seen = HashSet::new();
        for (j, a) in addresses.iter().enumerate() {
            if a.is_ipv4() != f.address.is_ipv4() {
                problem(
                    field(j),
                    format!(
                        "{name} {a} is not of the same family as address {}",
                        f.address
                    ),
                    "use an SNAT address of the frontend's family",
                );
            } else if a.is_unspecified() || a.is_multicast() || a.is_loopback() {
                problem(
                    field(j),
                    format!("{a} cannot be an SNAT address"),
                    "use a unicast address of this host that servers route back to",
                );
            } else if !seen.insert(*a) {
                problem(
                    field(j),
                    format!("SNAT address {a} is listed twice"),
                    "list each address once",
                );
            }
        }
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
            if bind.use_http3 == Some(true) && (!http || bind.ssl != Some(true)) {
                problem(
                    format!("{at}.use_http3"),
                    "HTTP/3 needs mode \"http\" and TLS on the bind (QUIC is always encrypted)"
                        .into(),
                    "set ssl = true and ssl_certificate on this bind, or remove use_http3",
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
                    // Whether the file can be read is checked by loading (`check_files`).
                    Some(_) => {}
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
        }
        for (j, rule) in f.backends.iter().enumerate() {
            let at = format!("{at}.backends[{j}]");
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
                        "backend {:?} has mode {}, the frontend {}",
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
        match f.options.max_connections {
            Some(0) => problem(
                format!("{at}.options.max_connections"),
                "max_connections 0 would refuse every connection".into(),
                "remove it (then only [http] max_connections applies), or use a count such as 10000",
            ),
            Some(_) if !self.in_userspace(f) => problem(
                format!("{at}.options.max_connections"),
                "max_connections is counted by the proxy, which serves http frontends and tcp \
                 frontends whose backend sends a PROXY header; XDP does not limit this frontend"
                    .into(),
                "remove max_connections, or use mode = \"http\"",
            ),
            _ => {}
        }
        if !http && (f.options.redirect_ssl.is_some() || f.options.forward_for.is_some()) {
            problem(
                format!("{at}.options"),
                "redirect_ssl and forward_for need mode \"http\"".into(),
                "remove them, or use mode = \"http\"",
            );
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
            if !b.balancing_method.uses_maglev() {
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
        if b.balancing_method.uses_maglev()
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
            if s.kind == StickyKind::Cookie && b.mode == Mode::Tcp {
                problem(
                    format!("{at}.options.sticky_session.type"),
                    "cookie stickiness needs mode \"http\"; a tcp backend cannot see cookies"
                        .into(),
                    "use type = \"source_ip\"",
                );
            }
            if let Some(ttl) = s.ttl
                && ttl.as_secs() == 0
            {
                problem(
                    format!("{at}.options.sticky_session.ttl"),
                    format!(
                        "{} is not a duration of at least one second",
                        humantime::format_duration(ttl)
                    ),
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
        if o.tls_ca.is_some() && o.tls_verify != Some(true) {
            problem(
                format!("{at}.options.tls_ca"),
                "tls_ca is only used with tls_verify = true".into(),
                "set tls_verify = true, or remove tls_ca",
            );
        }
        if b.mode == Mode::Http && !Method::HTTP.contains(&b.balancing_method) {
            problem(
                format!("{at}.balancing_method"),
                format!(
                    "\"{}\" is not a method of http backends",
                    b.balancing_method
                ),
                &format!("use one of: {}", one_of(Method::HTTP)),
            );
        }
        if let Some(check) = &o.health_check {
            let at = format!("{at}.options.health_check");
            let kind = check.kind;
            if check.user.is_some() && !matches!(kind, CheckKind::Mysql | CheckKind::Postgres) {
                problem(
                    format!("{at}.user"),
                    format!("user means nothing to a \"{kind}\" check"),
                    "remove it, or use type = \"mysql\" or \"postgres\"",
                );
            }
            for (field, value) in [("interval", check.interval), ("timeout", check.timeout)] {
                if value.is_some_and(|d| d.is_zero()) {
                    problem(
                        format!("{at}.{field}"),
                        "a zero duration is not a positive duration".into(),
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
            if kind != CheckKind::Http
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
