//! Turns a validated config into what the maps hold: ids, keys, selection tables and server
//! lists. Pure, so it is tested without a kernel. Ids are stable across plans made with the
//! same [`Ids`], so a reload keeps every surviving server's id (and its flows and slots);
//! an id leaves with its key only when released (see [`IdSpace`]).

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use lb_common::{
    maglev::{MaglevServer, build_table, round_robin_sequence},
    maps::{
        ADDR_SNAT, ADDR_VIP, Addr, FRONTEND_FLAG_DSR, FRONTEND_FLAG_STATELESS_FALLBACK,
        FRONTEND_FLAG_USERSPACE, FrontendInfo, FrontendKey, MAX_BACKENDS, MAX_FRONTENDS,
        MAX_SERVERS, MAX_SNAT_ADDRS, METHOD_FIRST, METHOD_LEASTCONN, METHOD_MAGLEV,
        METHOD_ROUNDROBIN, METHOD_SOURCE, SERVER_CHECK_DOWN, SERVER_PRESENT, SERVER_RESET_FLOWS,
        ServerInfo,
    },
    wire::{IPPROTO_TCP, IPPROTO_UDP},
};

use crate::config::{Config, Forwarding, Method, Protocol};

/// Ids of one kind: stable for a key while it is in the config, retired when it leaves,
/// and free for another key only once released (when no tracked flow or sticky entry
/// refers to it any more: the garbage collector says so). A stale reference can therefore
/// never point at a different server, and churn never exhausts the id space.
#[derive(Debug)]
pub struct IdSpace<K> {
    ids: HashMap<K, u32>,
    /// Ids whose key was in the last plan.
    live: HashSet<u32>,
    free: BTreeSet<u32>,
    next: u32,
    limit: u32,
    what: &'static str,
}

impl<K: std::hash::Hash + Eq + Clone> IdSpace<K> {
    fn new(limit: u32, what: &'static str) -> Self {
        IdSpace {
            ids: HashMap::new(),
            live: HashSet::new(),
            free: BTreeSet::new(),
            next: 0,
            limit,
            what,
        }
    }

    /// The key's id, a released one (lowest first), or a new one.
    fn assign(&mut self, key: K) -> anyhow::Result<u32> {
        let id = match self.ids.get(&key) {
            Some(&id) => id,
            None => {
                let id = match self.free.pop_first() {
                    Some(id) => id,
                    None => {
                        anyhow::ensure!(
                            self.next < self.limit,
                            "more than {} {} at once (removed ones free their ids once their flows end)",
                            self.limit,
                            self.what
                        );
                        self.next += 1;
                        self.next - 1
                    }
                };
                self.ids.insert(key, id);
                id
            }
        };
        self.live.insert(id);
        Ok(id)
    }

    pub fn get(&self, key: &K) -> Option<u32> {
        self.ids.get(key).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, u32)> {
        self.ids.iter().map(|(k, v)| (k, *v))
    }

    /// Ids whose key left the config, not yet released.
    pub fn retired(&self) -> Vec<u32> {
        let mut out: Vec<u32> = self
            .ids
            .values()
            .filter(|id| !self.live.contains(id))
            .copied()
            .collect();
        out.sort_unstable();
        out
    }

    /// Free a retired id for reuse; false (and nothing done) when its key came back.
    pub fn release(&mut self, id: u32) -> bool {
        if self.live.contains(&id) {
            return false;
        }
        let before = self.ids.len();
        self.ids.retain(|_, v| *v != id);
        if self.ids.len() == before {
            return false;
        }
        self.free.insert(id);
        true
    }
}

/// Stable ids for frontends (by name), backends (by name) and servers (by backend, address
/// and port).
#[derive(Debug)]
pub struct Ids {
    pub frontends: IdSpace<String>,
    pub backends: IdSpace<String>,
    pub servers: IdSpace<(String, IpAddr, u16)>,
}

impl Default for Ids {
    fn default() -> Self {
        Ids {
            frontends: IdSpace::new(MAX_FRONTENDS, "frontends"),
            backends: IdSpace::new(MAX_BACKENDS, "backends"),
            servers: IdSpace::new(MAX_SERVERS, "servers"),
        }
    }
}

/// Retired ids of each kind: what the garbage collector checks for references, and what
/// it reports free of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retired {
    pub frontends: Vec<u32>,
    pub backends: Vec<u32>,
    pub servers: Vec<u32>,
}

impl Retired {
    pub fn is_empty(&self) -> bool {
        self.frontends.is_empty() && self.backends.is_empty() && self.servers.is_empty()
    }
}

impl Ids {
    pub fn retired(&self) -> Retired {
        Retired {
            frontends: self.frontends.retired(),
            backends: self.backends.retired(),
            servers: self.servers.retired(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackendPlan {
    pub id: u32,
    pub name: String,
    pub method: u32,
    pub sticky_ttl_s: u32,
    /// Maglev table (maglev, source) or round-robin sequence: server ids. Empty for
    /// leastconn and first, and when no server takes new flows.
    pub table: Vec<u32>,
    /// Server ids in config order (leastconn and first scan it).
    pub servers: Vec<u32>,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub frontends: Vec<(FrontendKey, FrontendInfo)>,
    /// Server id -> server.
    pub servers: Vec<(u32, ServerInfo)>,
    pub backends: Vec<BackendPlan>,
}

impl Plan {
    /// `LB_ADDRS`: each frontend's address, and each full-NAT frontend's SNAT addresses,
    /// with their kinds (an address may be both).
    pub fn addresses(&self) -> HashMap<Addr, u32> {
        let mut addrs: HashMap<Addr, u32> = HashMap::new();
        for (key, info) in &self.frontends {
            *addrs.entry(key.addr).or_default() |= ADDR_VIP;
            if info.flags & (FRONTEND_FLAG_DSR | FRONTEND_FLAG_USERSPACE) == 0 {
                for addr in &info.snat_addrs[..info.snat_count as usize] {
                    *addrs.entry(*addr).or_default() |= ADDR_SNAT;
                }
            }
        }
        addrs
    }
}

impl Plan {
    /// The SNAT ports each backend's flows can be given, per SNAT address: backend id ->
    /// address -> how many ports (the union of the ranges of the full-NAT frontends that
    /// send to the backend through that address). Each server port of the backend has that
    /// many per address and protocol.
    pub fn snat_pools(&self) -> HashMap<u32, HashMap<Addr, u32>> {
        let mut ranges: HashMap<(u32, Addr), Vec<(u16, u16)>> = HashMap::new();
        for (_, info) in &self.frontends {
            if info.flags & (FRONTEND_FLAG_DSR | FRONTEND_FLAG_USERSPACE) != 0 {
                continue;
            }
            for addr in &info.snat_addrs[..(info.snat_count as usize).min(MAX_SNAT_ADDRS)] {
                ranges
                    .entry((info.backend_id, *addr))
                    .or_default()
                    .push((info.snat_port_min, info.snat_port_max));
            }
        }
        let mut pools: HashMap<u32, HashMap<Addr, u32>> = HashMap::new();
        for ((backend, addr), mut list) in ranges {
            list.sort_unstable();
            let (mut ports, mut next) = (0u32, 0u32);
            for (min, max) in list {
                let (min, max) = (u32::from(min).max(next), u32::from(max) + 1);
                ports += max.saturating_sub(min);
                next = next.max(max);
            }
            pools.entry(backend).or_default().insert(addr, ports);
        }
        pools
    }
}

pub fn addr16(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address of a 16-byte map address (IPv4-mapped ones as IPv4).
pub fn ip_of(addr: &Addr) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(*addr);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

/// The data plane's id of a balancing method.
pub fn method_id(method: Method) -> u32 {
    match method {
        Method::Source => METHOD_SOURCE,
        Method::Roundrobin => METHOD_ROUNDROBIN,
        Method::Leastconn => METHOD_LEASTCONN,
        Method::First => METHOD_FIRST,
        Method::Maglev => METHOD_MAGLEV,
    }
}

impl Plan {
    /// `up(backend, address)` says whether a server passes its health check; a server that
    /// does not is planned with weight 0 (no new flows). Its tracked flows continue, unless
    /// the backend's check says `on_down = "reset"`. A server drained or in maintenance is
    /// planned with weight 0 too; `drain_ended(backend, address)` says its drain timed out
    /// with `on_drain_timeout = "reset"`, and its flows are reset.
    pub fn from_config(
        config: &Config,
        ids: &mut Ids,
        up: &dyn Fn(&str, IpAddr) -> bool,
        drain_ended: &dyn Fn(&str, IpAddr) -> bool,
    ) -> anyhow::Result<Plan> {
        let mut plan = Plan::default();
        ids.frontends.live.clear();
        ids.backends.live.clear();
        ids.servers.live.clear();
        for backend in &config.backends {
            let backend_id = ids.backends.assign(backend.name.clone())?;
            let port = backend.port.number;
            let mut members = Vec::new();
            let mut list = Vec::new();
            let resets = backend.resets_flows_when_down();
            for mut s in backend.resolved_servers(&config.computers) {
                let mut flags = SERVER_PRESENT;
                s.weight = s.serving_weight();
                if drain_ended(&backend.name, s.address) {
                    flags |= SERVER_RESET_FLOWS;
                }
                if !up(&backend.name, s.address) {
                    s.weight = 0;
                    flags |= SERVER_CHECK_DOWN;
                    if resets {
                        flags |= SERVER_RESET_FLOWS;
                    }
                }
                let id = ids
                    .servers
                    .assign((backend.name.clone(), s.address, port))?;
                let addr = addr16(s.address);
                plan.servers.push((
                    id,
                    ServerInfo {
                        addr,
                        port: port.to_be(),
                        flags,
                        weight: s.weight,
                        max_conn: s.max_conn,
                        _pad: 0,
                    },
                ));
                let mut identity = addr.to_vec();
                identity.extend_from_slice(&port.to_be_bytes());
                members.push(MaglevServer {
                    id,
                    identity,
                    weight: s.weight,
                });
                list.push(id);
            }
            let method = method_id(backend.balancing_method);
            let table = match method {
                METHOD_MAGLEV | METHOD_SOURCE => build_table(&members, Config::table_size(backend)),
                METHOD_ROUNDROBIN => round_robin_sequence(
                    &members.iter().map(|m| (m.id, m.weight)).collect::<Vec<_>>(),
                ),
                _ => Vec::new(),
            };
            plan.backends.push(BackendPlan {
                id: backend_id,
                name: backend.name.clone(),
                method,
                sticky_ttl_s: Config::sticky_ttl_s(backend),
                table,
                servers: list,
            });
        }
        for f in &config.frontends {
            let frontend_id = ids.frontends.assign(f.name.clone())?;
            let Some(backend_id) = ids.backends.get(&f.default_backend) else {
                continue;
            };
            for bind in &f.binds {
                let key = FrontendKey {
                    addr: addr16(f.address),
                    port: bind.port.to_be(),
                    proto: match bind.protocol {
                        Protocol::Tcp => IPPROTO_TCP,
                        Protocol::Udp => IPPROTO_UDP,
                    },
                    _pad: 0,
                };
                let mut snat_addrs = [Addr::default(); MAX_SNAT_ADDRS];
                let addresses = f.snat_addresses();
                // Validation keeps the list within MAX_SNAT_ADDRS.
                for (slot, a) in snat_addrs.iter_mut().zip(&addresses) {
                    *slot = addr16(*a);
                }
                let ports = f.snat_ports();
                let info = FrontendInfo {
                    backend_id,
                    flags: if config.in_userspace(f) {
                        FRONTEND_FLAG_USERSPACE
                    } else if f.forwarding == Forwarding::Dsr {
                        // Validation allows the fallback only for DSR on maglev.
                        FRONTEND_FLAG_DSR
                            | if f.dsr_stateless_fallback {
                                FRONTEND_FLAG_STATELESS_FALLBACK
                            } else {
                                0
                            }
                    } else {
                        0
                    },
                    snat_addrs,
                    frontend_id,
                    snat_port_min: ports.min,
                    snat_port_max: ports.max,
                    snat_count: addresses.len().min(MAX_SNAT_ADDRS) as u32,
                    _pad: 0,
                };
                if bind.use_http3 == Some(true) {
                    // HTTP/3 on the same port: XDP passes it to the proxy's QUIC socket.
                    let quic = FrontendKey {
                        proto: IPPROTO_UDP,
                        ..key
                    };
                    plan.frontends.push((quic, info));
                }
                plan.frontends.push((key, info));
            }
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str, ids: &mut Ids) -> Plan {
        Plan::from_config(
            &Config::parse("t.toml", text).unwrap(),
            ids,
            &|_, _| true,
            &|_, _| false,
        )
        .unwrap()
    }

    #[test]
    fn weights_one_one_two_give_a_quarter_quarter_half_table() {
        let plan = plan(crate::DEFAULT_DEMO_CONFIG, &mut Ids::default());
        assert_eq!(plan.servers.len(), 3);
        let table = &plan.backends[0].table;
        let counts = lb_common::maglev::slot_counts(table);
        let share = |id| counts[&id] as f64 / table.len() as f64;
        assert!((share(0) - 0.25).abs() < 0.01);
        assert!((share(1) - 0.25).abs() < 0.01);
        assert!((share(2) - 0.50).abs() < 0.01);
        assert_eq!(plan.frontends.len(), 2, "one tcp and one udp bind");
        assert_eq!(plan.frontends[0].0.port, 80u16.to_be());
        let info = &plan.frontends[0].1;
        assert_eq!(info.snat_count, 1);
        assert_eq!((info.snat_port_min, info.snat_port_max), (1024, 65535));
    }

    #[test]
    fn every_snat_address_and_the_range_reach_the_frontend_and_lb_addrs() {
        let text = crate::DEFAULT_DEMO_CONFIG.replace(
            "snat_address = \"198.18.2.1\"",
            "snat_addresses = [\"198.18.2.1\", \"198.18.2.2\"]\nsnat_ports = \"20000-20999\"",
        );
        let p = plan(&text, &mut Ids::default());
        let info = &p.frontends[0].1;
        assert_eq!(info.snat_count, 2);
        assert_eq!((info.snat_port_min, info.snat_port_max), (20000, 20999));
        assert_eq!(info.snat_space(), 2000);
        let two = addr16("198.18.2.2".parse().unwrap());
        assert_eq!(info.snat_addrs[1], two);
        assert_eq!(info.snat_addrs[2], Addr::default());
        let addrs = p.addresses();
        assert_eq!(addrs[&two], ADDR_SNAT);
        assert_eq!(p.snat_pools()[&0][&two], 1000);
        assert_eq!(addrs[&addr16("198.18.2.1".parse().unwrap())], ADDR_SNAT);
    }

    #[test]
    fn snat_pools_count_overlapping_ranges_once() {
        let second = crate::DEFAULT_DEMO_CONFIG
            .split("[[backends]]")
            .next()
            .unwrap()
            .replace("name = \"demo\"", "name = \"demo2\"")
            .replace("198.18.100.1", "198.18.100.2");
        let text = format!("{}\n{second}", crate::DEFAULT_DEMO_CONFIG)
            .replacen(
                "snat_address = \"198.18.2.1\"",
                "snat_address = \"198.18.2.1\"\nsnat_ports = \"2000-2999\"",
                1,
            )
            .replacen(
                "snat_address = \"198.18.2.1\"\n\n",
                "snat_address = \"198.18.2.1\"\nsnat_ports = \"2500-3499\"\n\n",
                1,
            );
        let p = plan(&text, &mut Ids::default());
        let one = addr16("198.18.2.1".parse().unwrap());
        assert_eq!(p.snat_pools()[&0][&one], 1500, "2000-3499:\n{text}");
    }

    #[test]
    fn ids_survive_a_reload_and_are_never_reused() {
        let mut ids = Ids::default();
        let first = plan(crate::DEFAULT_DEMO_CONFIG, &mut ids);
        // Remove the first server and add a new one.
        let changed = crate::DEFAULT_DEMO_CONFIG
            .replace("  { address = \"198.18.11.2\", weight = 1 },\n", "")
            .replace(
                "weight = 2 },",
                "weight = 2 },\n  { address = \"198.18.14.2\", weight = 1 },",
            );
        let second = plan(&changed, &mut ids);
        let id_of = |p: &Plan, last: u8| {
            p.servers
                .iter()
                .find(|(_, s)| s.addr[15] == 2 && s.addr[14] == last)
                .map(|(id, _)| *id)
        };
        assert_eq!(id_of(&first, 12), id_of(&second, 12));
        assert_eq!(id_of(&first, 13), id_of(&second, 13));
        assert_eq!(
            id_of(&second, 14),
            Some(3),
            "a new server gets a new id, not the freed 0"
        );
        assert_eq!(id_of(&second, 11), None);
    }

    #[test]
    fn retired_ids_are_reused_only_once_released() {
        let mut ids = Ids::default();
        plan(crate::DEFAULT_DEMO_CONFIG, &mut ids);
        let without_first = crate::DEFAULT_DEMO_CONFIG
            .replace("  { address = \"198.18.11.2\", weight = 1 },\n", "");
        plan(&without_first, &mut ids);
        assert_eq!(ids.retired().servers, vec![0]);
        // While flows may still name it, id 0 is kept; once released, a new server takes it.
        assert!(ids.servers.release(0));
        assert!(!ids.servers.release(1), "a live id is never released");
        let with_new = without_first.replace(
            "weight = 2 },",
            "weight = 2 },\n  { address = \"198.18.14.2\", weight = 1 },",
        );
        let p = plan(&with_new, &mut ids);
        assert!(p.servers.iter().any(|(id, s)| *id == 0 && s.addr[14] == 14));
        assert!(ids.retired().servers.is_empty());
    }

    #[test]
    fn churn_never_exhausts_backend_ids_once_released() {
        let mut ids = Ids::default();
        for round in 0..1000 {
            let text = crate::DEFAULT_DEMO_CONFIG.replace("demo-servers", &format!("b{round}"));
            plan(&text, &mut ids);
            for id in ids.retired().backends {
                ids.backends.release(id);
            }
        }
        assert_eq!(ids.backends.iter().count(), 1);
    }

    #[test]
    fn unhealthy_servers_get_no_new_flows() {
        let config = Config::parse("t.toml", crate::DEFAULT_DEMO_CONFIG).unwrap();
        let down: IpAddr = "198.18.13.2".parse().unwrap();
        let p = Plan::from_config(&config, &mut Ids::default(), &|_, a| a != down, &|_, _| {
            false
        })
        .unwrap();
        assert!(!p.backends[0].table.contains(&2));
        assert_eq!(p.servers[2].1.weight, 0);
    }

    #[test]
    fn round_robin_and_scanning_methods_get_their_tables() {
        let text = crate::DEFAULT_DEMO_CONFIG.replace("\"maglev\"", "\"roundrobin\"");
        let p = plan(&text, &mut Ids::default());
        assert_eq!(p.backends[0].method, METHOD_ROUNDROBIN);
        assert_eq!(p.backends[0].table.len(), 4, "1:1:2");
        let text = crate::DEFAULT_DEMO_CONFIG.replace("\"maglev\"", "\"leastconn\"");
        let p = plan(&text, &mut Ids::default());
        assert!(p.backends[0].table.is_empty());
        assert_eq!(p.backends[0].servers, vec![0, 1, 2]);
    }
}
