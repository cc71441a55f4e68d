//! Writing plans into the maps: servers, then each backend's inactive table half and the
//! flip to it (only slots that differ are written), then frontends.

use std::collections::HashMap;

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues};
use lb_common::maps::{
    Addr, BackendInfo, FrontendInfo, FrontendKey, MAP_ADDRS, MAP_BACKEND_SERVERS, MAP_BACKENDS,
    MAP_FRONTEND_STATS, MAP_FRONTENDS, MAP_RING, MAP_SERVER_ACTIVE, MAP_SERVER_STATS, MAP_SERVERS,
    ServerInfo, TrafficStats,
};
use tracing::{info, warn};

use super::{
    Dataplane,
    plan::{BackendPlan, Plan, Retired},
    sys::{map_mut, update_batch},
};
use crate::config::Config;

/// What the maps hold for one backend, so updates write only what changes.
#[derive(Default)]
pub(super) struct BackendState {
    info: BackendInfo,
    tables: [Vec<u32>; 2],
    lists: [Vec<u32>; 2],
}

impl Dataplane {
    /// Plan a validated config with this data plane's stable ids and apply it.
    pub fn apply_config(&mut self, config: &Config) -> Result<usize> {
        self.apply_config_with_health(config, &|_, _| true, &|_, _| false)
    }

    /// As [`Dataplane::apply_config`], with servers that fail their health check planned
    /// with weight 0, and the flows of servers whose drain ended reset
    /// ([`Plan::from_config`]).
    pub fn apply_config_with_health(
        &mut self,
        config: &Config,
        up: &dyn Fn(&str, std::net::IpAddr) -> bool,
        drain_ended: &dyn Fn(&str, std::net::IpAddr) -> bool,
    ) -> Result<usize> {
        let plan = Plan::from_config(config, &mut self.ids, up, drain_ended)?;
        let written = self.apply(&plan)?;
        // XDP's FIB lookups need every server's next hop resolved, and kept resolved; once
        // managed, the kernel keeps it so, so only new servers need it.
        let new: Vec<std::net::IpAddr> = config
            .backends
            .iter()
            .flat_map(|b| b.resolved_servers(&config.computers))
            .map(|s| s.address)
            .filter(|a| self.managed_neighbours.insert(*a))
            .collect();
        if !new.is_empty()
            && let Err(e) = super::neighbours::manage(&new)
        {
            warn!(error = %e, "could not manage server neighbours; first packets of new flows may take the slow path");
        }
        Ok(written)
    }

    /// Write a plan: servers, then each backend's inactive half and the flip to it, then
    /// frontends, so nothing is visible before what it points at. Servers that left are
    /// marked absent (their flows continue; nothing new is sent to them). Returns how many
    /// table and list slots were written.
    pub fn apply(&mut self, plan: &Plan) -> Result<usize> {
        {
            let mut servers: Array<&mut MapData, ServerInfo> =
                Array::try_from(map_mut(&mut self.ebpf, MAP_SERVERS)?)?;
            for (id, server) in &plan.servers {
                if self.servers.get(id) != Some(server) {
                    servers.set(*id, server, 0)?;
                }
            }
            let present: HashMap<u32, ServerInfo> = plan.servers.iter().copied().collect();
            for (gone, info) in self
                .servers
                .iter()
                .filter(|(id, _)| !present.contains_key(id))
            {
                // Absent: no new flows; tracked flows keep their own copy of the address.
                servers.set(*gone, ServerInfo { flags: 0, ..*info }, 0)?;
            }
            self.servers = present;
        }
        let mut written = 0;
        for backend in &plan.backends {
            written += self.set_backend(backend)?;
        }
        // Addresses before the frontends that use them, removed after: a packet never
        // finds a frontend whose address XDP would pass as not lb's.
        let addrs = plan.addresses();
        self.write_addresses(&addrs, false)?;
        let mut frontends: BpfHashMap<&mut MapData, FrontendKey, FrontendInfo> =
            BpfHashMap::try_from(self.ebpf.map_mut(MAP_FRONTENDS).context(MAP_FRONTENDS)?)?;
        for (key, value) in &plan.frontends {
            frontends.insert(key, value, 0)?;
        }
        // The map's own keys, not just what this process wrote: a frontend removed from
        // the config while the daemon was stopped is still in a pinned map.
        let stale: Vec<FrontendKey> = frontends
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !plan.frontends.iter().any(|(n, _)| n == k))
            .collect();
        for key in &stale {
            frontends.remove(key)?;
        }
        self.frontends = plan.frontends.iter().map(|(k, _)| *k).collect();
        self.snat_pools = plan.snat_pools();
        self.write_addresses(&addrs, true)?;
        Ok(written)
    }

    /// Write `LB_ADDRS`: every address in `addrs` with its kind; with `remove_stale`, also
    /// remove the map's other keys (a pinned map may hold ones this process never wrote).
    fn write_addresses(&mut self, addrs: &HashMap<Addr, u32>, remove_stale: bool) -> Result<()> {
        let mut map: BpfHashMap<&mut MapData, Addr, u32> =
            BpfHashMap::try_from(self.ebpf.map_mut(MAP_ADDRS).context(MAP_ADDRS)?)?;
        for (addr, kind) in addrs {
            if map.get(addr, 0).ok() != Some(*kind) {
                map.insert(addr, kind, 0)?;
            }
        }
        if remove_stale {
            let stale: Vec<Addr> = map
                .keys()
                .filter_map(Result::ok)
                .filter(|a| !addrs.contains_key(a))
                .collect();
            for addr in &stale {
                map.remove(addr)?;
            }
        }
        Ok(())
    }

    /// Fill the backend's inactive half (only slots that differ from what that half holds),
    /// record its sizes, then flip `active` to it: a reader sees the old half or the new
    /// one, never a mix.
    fn set_backend(&mut self, plan: &BackendPlan) -> Result<usize> {
        let mut state = self.backends.remove(&plan.id).unwrap_or_default();
        let is_new = state.info == BackendInfo::default() && state.tables[0].is_empty();
        let half = if is_new {
            0
        } else {
            1 - (state.info.active & 1)
        };
        // A new backend fills both halves (one batch syscall each), so every later change
        // writes only a difference.
        let halves: &[u32] = if is_new {
            &[0, 1]
        } else {
            std::slice::from_ref(&half)
        };
        let mut written = 0;
        for &fill in halves {
            let f = fill as usize;
            {
                let base = BackendInfo::ring_base(plan.id, fill);
                let slots = lb_common::maglev::changed_slots(&state.tables[f], &plan.table);
                let keys: Vec<u32> = slots.iter().map(|slot| base + slot).collect();
                let values: Vec<u32> = slots.iter().map(|&s| plan.table[s as usize]).collect();
                update_batch(self.map(MAP_RING)?, &keys, &values)?;
                written += keys.len();
            }
            {
                let mut list: Array<&mut MapData, u32> =
                    Array::try_from(self.map(MAP_BACKEND_SERVERS)?)?;
                let base = BackendInfo::list_base(plan.id, fill);
                for slot in lb_common::maglev::changed_slots(&state.lists[f], &plan.servers) {
                    list.set(base + slot, plan.servers[slot as usize], 0)?;
                    written += 1;
                }
            }
            state.tables[f] = plan.table.clone();
            state.lists[f] = plan.servers.clone();
        }
        let mut backends: Array<&mut MapData, BackendInfo> =
            Array::try_from(self.map(MAP_BACKENDS)?)?;
        // Sizes of the new half first, with the old half still live...
        let mut info = state.info;
        for &fill in halves {
            info.ring_size[fill as usize] = plan.table.len() as u32;
            info.server_count[fill as usize] = plan.servers.len() as u32;
        }
        if is_new {
            info.method = plan.method;
            info.sticky_ttl_s = plan.sticky_ttl_s;
        }
        backends.set(plan.id, info, 0)?;
        // ...then the flip, which is the only field (with method and TTL) that changes.
        info.active = half;
        info.method = plan.method;
        info.sticky_ttl_s = plan.sticky_ttl_s;
        backends.set(plan.id, info, 0)?;
        state.info = info;
        info!(backend = %plan.name, half, slots = plan.table.len(), servers = plan.servers.len(), written, "backend updated");
        self.backends.insert(plan.id, state);
        Ok(written)
    }
}

impl Dataplane {
    /// Ids of servers, backends and frontends that left the config and are not released.
    pub fn retired(&self) -> Retired {
        self.ids.retired()
    }

    /// Free the `unused` retired ids (the garbage collector found nothing referring to
    /// them) for reuse, resetting what the maps hold for them: a new owner starts with
    /// clean counters and a backend fills both table halves. Ids whose key came back are
    /// kept. Returns how many were released.
    pub fn release(&mut self, unused: &Retired) -> Result<usize> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let zero_traffic = || PerCpuValues::try_from(vec![TrafficStats::default(); cpus]);
        let mut released = 0;
        for &id in &unused.servers {
            if !self.ids.servers.release(id) {
                continue;
            }
            Array::<&mut MapData, ServerInfo>::try_from(self.map(MAP_SERVERS)?)?.set(
                id,
                ServerInfo::default(),
                0,
            )?;
            Array::<&mut MapData, u64>::try_from(self.map(MAP_SERVER_ACTIVE)?)?.set(id, 0, 0)?;
            PerCpuArray::<&mut MapData, TrafficStats>::try_from(self.map(MAP_SERVER_STATS)?)?.set(
                id,
                zero_traffic()?,
                0,
            )?;
            released += 1;
        }
        for &id in &unused.backends {
            if !self.ids.backends.release(id) {
                continue;
            }
            Array::<&mut MapData, BackendInfo>::try_from(self.map(MAP_BACKENDS)?)?.set(
                id,
                BackendInfo::default(),
                0,
            )?;
            self.backends.remove(&id);
            released += 1;
        }
        for &id in &unused.frontends {
            if !self.ids.frontends.release(id) {
                continue;
            }
            PerCpuArray::<&mut MapData, TrafficStats>::try_from(self.map(MAP_FRONTEND_STATS)?)?
                .set(id, zero_traffic()?, 0)?;
            released += 1;
        }
        Ok(released)
    }
}
