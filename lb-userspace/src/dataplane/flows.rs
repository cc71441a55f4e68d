//! Tracked flows and stickiness entries read and written in bulk, for the HA sync: handles
//! of its own to the maps, so the sync runs on threads of its own; and the names behind
//! the ids, which are local to one daemon.

use std::{collections::HashMap, net::IpAddr, os::fd::AsFd as _};

use anyhow::{Context as _, Result, anyhow};
use aya::maps::MapData;
use lb_common::maps::{
    ENTRY_DSR, ENTRY_REVERSE, FlowKey, MAP_CONNTRACK, MAP_SNAT, MAP_STICKY, NatEntry, StickyEntry,
    StickyKey,
};

use super::{
    Dataplane,
    batch::{BatchMap, Cursor},
};

/// The flow and stickiness tables.
pub struct FlowTables {
    conntrack: BatchMap<FlowKey, NatEntry>,
    snat: BatchMap<FlowKey, NatEntry>,
    sticky: BatchMap<StickyKey, StickyEntry>,
}

/// Local ids and the names they stand for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    pub frontends: HashMap<u32, String>,
    pub backends: HashMap<u32, String>,
    /// (backend, address, port).
    pub servers: HashMap<u32, (String, IpAddr, u16)>,
}

impl Dataplane {
    /// Handles of their own to the flow tables.
    pub fn flow_tables(&self) -> Result<FlowTables> {
        let own = |name: &str| -> Result<MapData> {
            let (aya::maps::Map::HashMap(data) | aya::maps::Map::LruHashMap(data)) =
                self.map_ref(name)?
            else {
                return Err(anyhow!("map {name} is not a hash map"));
            };
            let fd = data.fd().as_fd().try_clone_to_owned()?;
            MapData::from_fd(fd).with_context(|| format!("reopening map {name}"))
        };
        Ok(FlowTables {
            conntrack: BatchMap::new(own(MAP_CONNTRACK)?)?,
            snat: BatchMap::new(own(MAP_SNAT)?)?,
            sticky: BatchMap::new(own(MAP_STICKY)?)?,
        })
    }

    /// Every id in use or retired, with its name.
    pub fn names(&self) -> Names {
        Names {
            frontends: self
                .ids
                .frontends
                .iter()
                .map(|(n, id)| (id, n.clone()))
                .collect(),
            backends: self
                .ids
                .backends
                .iter()
                .map(|(n, id)| (id, n.clone()))
                .collect(),
            servers: self
                .ids
                .servers
                .iter()
                .map(|(k, id)| (id, k.clone()))
                .collect(),
        }
    }
}

impl FlowTables {
    /// Every tracked flow (client-side entries only), `chunk` at a time.
    pub fn each_flow(
        &mut self,
        chunk: usize,
        f: impl FnMut(&[FlowKey], &[NatEntry]) -> Result<()>,
    ) -> Result<()> {
        walk(&mut self.conntrack, chunk, f)
    }

    /// Every stickiness entry, `chunk` at a time.
    pub fn each_sticky(
        &mut self,
        chunk: usize,
        f: impl FnMut(&[StickyKey], &[StickyEntry]) -> Result<()>,
    ) -> Result<()> {
        walk(&mut self.sticky, chunk, f)
    }

    pub fn flow(&self, key: &FlowKey) -> Option<NatEntry> {
        self.conntrack.get(key)
    }

    /// A full-NAT flow's reverse entry, by its reply key.
    pub fn reverse(&self, key: &FlowKey) -> Option<NatEntry> {
        self.snat.get(key)
    }

    pub fn sticky(&self, key: &StickyKey) -> Option<StickyEntry> {
        self.sticky.get(key)
    }

    /// Write flows' client-side entries and, for full NAT, the reverse entries that
    /// translate their servers' replies (derived as the new-flow stage builds them).
    pub fn write_flows(&self, keys: &[FlowKey], entries: &[NatEntry]) -> Result<()> {
        let (mut rkeys, mut rvalues) = (Vec::new(), Vec::new());
        for (k, e) in keys.iter().zip(entries) {
            if e.flags & ENTRY_DSR != 0 {
                continue;
            }
            rkeys.push(e.reply_key(k.proto));
            rvalues.push(reverse_of(k, e));
        }
        // Reverse first: a reply that races the write finds its translation.
        self.snat.update(&rkeys, &rvalues)?;
        self.conntrack.update(keys, entries)
    }

    pub fn write_sticky(&self, keys: &[StickyKey], entries: &[StickyEntry]) -> Result<()> {
        self.sticky.update(keys, entries)
    }
}

/// A whole map, `chunk` entries at a time.
fn walk<K: aya::Pod + Default, V: aya::Pod + Default>(
    map: &mut BatchMap<K, V>,
    chunk: usize,
    mut f: impl FnMut(&[K], &[V]) -> Result<()>,
) -> Result<()> {
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    let mut cursor = Cursor::Start;
    while cursor != Cursor::End {
        keys.clear();
        values.clear();
        map.lookup(&mut cursor, chunk, &mut keys, &mut values)?;
        f(&keys, &values)?;
    }
    Ok(())
}

/// The reverse entry of a full-NAT flow: replies are rewritten back to the client.
pub fn reverse_of(key: &FlowKey, entry: &NatEntry) -> NatEntry {
    NatEntry {
        src: key.dst,
        dst: key.src,
        sport: key.dport,
        dport: key.sport,
        server_id: entry.server_id,
        last_seen_ns: entry.last_seen_ns,
        frontend_id: entry.frontend_id,
        backend_id: entry.backend_id,
        state: 0,
        flags: ENTRY_REVERSE,
        _pad: 0,
    }
}
