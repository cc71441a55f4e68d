//! Turns a validated config into what the maps hold: ids, keys and selection tables. Pure, so
//! it is tested without a kernel.

use std::net::IpAddr;

use lb_common::{
    maglev::{MaglevServer, build_table},
    maps::{Addr, FrontendInfo, FrontendKey, PROTO_TCP, PROTO_UDP, RING_SIZE_DEFAULT, ServerInfo},
};

use crate::config::{Config, Protocol};

#[derive(Debug, Default)]
pub struct Plan {
    pub frontends: Vec<(FrontendKey, FrontendInfo)>,
    /// Server id -> server.
    pub servers: Vec<(u32, ServerInfo)>,
    /// Backend id -> selection table (server ids; empty when no server takes new flows).
    pub tables: Vec<(u32, Vec<u32>)>,
}

pub fn addr16(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

impl Plan {
    /// Backend ids follow config order; server ids are dense, backend by backend.
    pub fn from_config(config: &Config) -> Plan {
        let mut plan = Plan::default();
        let mut next_server = 0u32;
        for (backend_id, backend) in config.backends.iter().enumerate() {
            let port = backend.port.get().unwrap_or_default();
            let mut members = Vec::new();
            for s in backend.resolved_servers(&config.computers) {
                let id = next_server;
                next_server += 1;
                let addr = addr16(s.address);
                plan.servers.push((
                    id,
                    ServerInfo {
                        addr,
                        port: port.to_be(),
                        _pad: 0,
                        weight: s.weight,
                    },
                ));
                let mut identity = addr.to_vec();
                identity.extend_from_slice(&port.to_be_bytes());
                members.push(MaglevServer {
                    id,
                    identity,
                    weight: s.weight,
                });
            }
            plan.tables
                .push((backend_id as u32, build_table(&members, RING_SIZE_DEFAULT)));
        }
        for f in &config.frontends {
            let Some(backend_id) = config
                .backends
                .iter()
                .position(|b| b.name == f.default_backend)
            else {
                continue;
            };
            for bind in &f.binds {
                let key = FrontendKey {
                    addr: addr16(f.address),
                    port: bind.port.to_be(),
                    proto: match bind.protocol {
                        Protocol::Tcp => PROTO_TCP,
                        Protocol::Udp => PROTO_UDP,
                    },
                    _pad: 0,
                };
                let info = FrontendInfo {
                    backend_id: backend_id as u32,
                    flags: 0,
                    snat_addr: f.snat_address.map(addr16).unwrap_or_default(),
                };
                plan.frontends.push((key, info));
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_one_one_two_give_a_quarter_quarter_half_table() {
        let config = Config::parse("t.toml", crate::DEFAULT_DEMO_CONFIG).unwrap();
        let plan = Plan::from_config(&config);
        assert_eq!(plan.servers.len(), 3);
        let (_, table) = &plan.tables[0];
        let counts = lb_common::maglev::slot_counts(table);
        let share = |id| counts[&id] as f64 / table.len() as f64;
        assert!((share(0) - 0.25).abs() < 0.01);
        assert!((share(1) - 0.25).abs() < 0.01);
        assert!((share(2) - 0.50).abs() < 0.01);
        assert_eq!(plan.frontends.len(), 2, "one tcp and one udp bind");
        assert_eq!(plan.frontends[0].0.port, 80u16.to_be());
    }
}
