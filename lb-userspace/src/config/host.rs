//! Checks of a valid config against the host it runs on: warnings, not errors, since the
//! host may change before the config is used (and `lb check` may run elsewhere).

use std::{collections::HashSet, net::IpAddr};

use super::{error::Problem, model::Config, values::PortRange};

/// The kernel's ephemeral ports (`net.ipv4.ip_local_port_range`, which IPv6 shares) and the
/// ports it never picks from them (`net.ipv4.ip_local_reserved_ports`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ephemeral {
    pub range: (u16, u16),
    pub reserved: Vec<(u16, u16)>,
}

impl Ephemeral {
    /// Read from /proc; None when it cannot be read.
    pub fn of_host() -> Option<Ephemeral> {
        let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
        let mut ends = text.split_whitespace().map(|p| p.parse::<u16>().ok());
        let range = (ends.next()??, ends.next()??);
        let reserved = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports")
            .map(|t| parse_port_list(&t))
            .unwrap_or_default();
        Some(Ephemeral { range, reserved })
    }

    /// The ports of `snat` the kernel may give a socket: in the ephemeral range and not
    /// reserved.
    pub fn shared_with(&self, snat: &PortRange) -> u32 {
        let (lo, hi) = (self.range.0.max(snat.min), self.range.1.min(snat.max));
        (lo..=hi)
            .filter(|p| !self.reserved.iter().any(|(a, b)| (a..=b).contains(&p)))
            .count() as u32
    }
}

/// "1-100,200" as ranges.
fn parse_port_list(text: &str) -> Vec<(u16, u16)> {
    text.trim()
        .split(',')
        .filter_map(|part| PortRange::parse(part.trim()).ok())
        .map(|r| (r.min, r.max))
        .collect()
}

/// The host's own addresses.
pub fn local_addresses() -> HashSet<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return HashSet::new();
    };
    addrs
        .filter_map(|a| {
            let sa = a.address?;
            sa.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| sa.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .collect()
}

impl Config {
    /// Warnings for this host: see [`Config::snat_port_warnings`].
    pub fn host_warnings(&self) -> Vec<Problem> {
        match Ephemeral::of_host() {
            Some(ephemeral) => self.snat_port_warnings(&local_addresses(), &ephemeral),
            None => Vec::new(),
        }
    }

    /// A full-NAT frontend whose SNAT address is one of the host's own (`local`) and whose
    /// `snat_ports` share ports with the kernel's ephemeral range: a socket of the host
    /// (such as a health probe of lb itself) connecting from that address to a server may
    /// be given a port a flow holds towards the same server, and then the server's replies
    /// to one of the two go to the other.
    pub fn snat_port_warnings(
        &self,
        local: &HashSet<IpAddr>,
        ephemeral: &Ephemeral,
    ) -> Vec<Problem> {
        let mut out = Vec::new();
        for (i, f) in self.frontends.iter().enumerate() {
            if self.in_userspace(f) || f.forwarding != super::values::Forwarding::Nat {
                continue;
            }
            let ports = f.snat_ports();
            let shared = ephemeral.shared_with(&ports);
            if shared == 0 {
                continue;
            }
            for a in f.snat_addresses().iter().filter(|a| local.contains(a)) {
                let (lo, hi) = ephemeral.range;
                out.push(Problem::new(
                    if f.snat_ports.is_some() {
                        format!("frontends[{i}].snat_ports")
                    } else {
                        format!("frontends[{i}]")
                    },
                    format!(
                        "SNAT address {a} is an address of this host and snat_ports {ports} \
                         shares {shared} ports with the kernel's ephemeral ports {lo}-{hi} \
                         (net.ipv4.ip_local_port_range): a host socket from {a} to a server, \
                         such as a health probe, may take a port a flow holds, and the \
                         server's replies to one go to the other"
                    ),
                    {
                        let outside = format!(
                            "set snat_ports outside {lo}-{hi} (such as \"1024-{}\")",
                            lo.saturating_sub(1).max(1024)
                        );
                        let (from, to) = (lo.max(ports.min), hi.min(ports.max));
                        let kernel = if (from, to) == (lo, hi) {
                            // Reserving all of them would leave the host no ephemeral port.
                            "move the kernel's ephemeral ports off them \
                             (net.ipv4.ip_local_port_range)"
                                .to_string()
                        } else {
                            format!(
                                "keep the kernel off them with sysctl \
                                 net.ipv4.ip_local_reserved_ports={from}-{to}"
                            )
                        };
                        format!(
                            "{outside}, or {kernel}, or use an SNAT address that is not \
                             assigned on this host"
                        )
                    },
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[[frontends]]
name = "web"
mode = "tcp"
address = "198.18.100.1"
binds = [{ port = 80 }]
default_backend = "app"
interfaces = ["eth0"]
snat_addresses = ["198.18.2.1", "198.18.2.2"]
SNAT_PORTS

[[backends]]
name = "app"
mode = "tcp"
balancing_method = "maglev"
port = 8080
servers = { type = "addresses", addresses = [{ address = "198.18.11.2" }] }
"#;

    fn warnings(ports: &str, reserved: Vec<(u16, u16)>) -> Vec<Problem> {
        let config = Config::parse("lb.toml", &CONFIG.replace("SNAT_PORTS", ports)).unwrap();
        let local = HashSet::from(["198.18.2.2".parse().unwrap()]);
        let ephemeral = Ephemeral {
            range: (32768, 60999),
            reserved,
        };
        config.snat_port_warnings(&local, &ephemeral)
    }

    #[test]
    fn a_local_snat_address_whose_ports_overlap_the_ephemeral_range_is_warned_of() {
        let w = warnings("", vec![]);
        assert_eq!(w.len(), 1, "only the local address: {w:?}");
        assert_eq!(w[0].field, "frontends[0]");
        assert!(
            w[0].message.starts_with(
                "SNAT address 198.18.2.2 is an address of this host and snat_ports 1024-65535 \
                 shares 28232 ports with the kernel's ephemeral ports 32768-60999"
            ),
            "{}",
            w[0].message
        );
        assert!(w[0].fix.contains("\"1024-32767\""), "{}", w[0].fix);
        assert!(
            w[0].fix
                .contains("move the kernel's ephemeral ports off them"),
            "reserving the whole ephemeral range is no fix: {}",
            w[0].fix
        );
        let w = warnings("snat_ports = \"40000-40999\"", vec![]);
        assert_eq!(w[0].field, "frontends[0].snat_ports");
        assert!(
            w[0].message.contains("shares 1000 ports"),
            "{}",
            w[0].message
        );
    }

    #[test]
    fn no_warning_outside_the_ephemeral_range_or_when_reserved() {
        assert!(warnings("snat_ports = \"1024-32767\"", vec![]).is_empty());
        assert!(warnings("snat_ports = \"61000-65535\"", vec![]).is_empty());
        assert!(warnings("snat_ports = \"40000-40999\"", vec![(39000, 41000)]).is_empty());
        assert_eq!(parse_port_list("1-100, 200\n"), vec![(1, 100), (200, 200)]);
        assert!(parse_port_list("\n").is_empty());
    }
}
