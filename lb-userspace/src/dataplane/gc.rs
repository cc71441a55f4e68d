//! The connection-tracking garbage collector. It holds handles of its own to the maps it
//! sweeps, so it runs on a thread of its own while the daemon keeps applying changes.

use std::{
    collections::{HashMap, HashSet},
    os::fd::AsFd as _,
};

use anyhow::{Context as _, Result, anyhow};
use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use lb_common::{
    flow::{Timeouts, is_half_open},
    maps::{
        ENTRY_COUNTED, ENTRY_DSR, FlowKey, MAP_CONNTRACK, MAP_SERVER_ACTIVE, MAP_SNAT, MAP_STICKY,
        NatEntry, StickyEntry, StickyKey,
    },
    wire::IPPROTO_TCP,
};
use tracing::debug;

use super::{Dataplane, plan::Retired};

/// A reverse entry younger than this is never an orphan: its flow's entry may be about to
/// be inserted.
const ORPHAN_GRACE_NS: u64 = 2_000_000_000;

/// What one garbage-collection pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub flows: usize,
    pub expired: usize,
    pub orphans: usize,
    /// TCP flows left whose handshake the client has not completed (they do not count as
    /// open).
    pub half_open: usize,
    /// SNAT ports held (reverse entries left) per server id and IP protocol; each server
    /// has `SNAT_PORTS` per protocol and SNAT address.
    pub snat_ports_used: HashMap<(u32, u8), u64>,
    /// Open flows per server id after reconciliation.
    pub active: HashMap<u32, u64>,
    /// Open flows per frontend id.
    pub active_per_frontend: HashMap<u32, u64>,
    /// The retired ids this pass found nothing referring to: free to release.
    pub unused: Retired,
}

/// The maps a pass sweeps, through file descriptors of its own.
pub struct Collector {
    conntrack: BpfHashMap<MapData, FlowKey, NatEntry>,
    snat: BpfHashMap<MapData, FlowKey, NatEntry>,
    active: Array<MapData, u64>,
    sticky: BpfHashMap<MapData, StickyKey, StickyEntry>,
}

impl Dataplane {
    /// A collector over this data plane's maps.
    pub fn collector(&self) -> Result<Collector> {
        // A second descriptor of the same kernel map, for a thread of its own.
        let own = |name: &str| -> Result<aya::maps::Map> {
            let (aya::maps::Map::HashMap(data)
            | aya::maps::Map::LruHashMap(data)
            | aya::maps::Map::Array(data)) = self.map_ref(name)?
            else {
                return Err(anyhow!("map {name} is not a hash or array map"));
            };
            let fd = data.fd().as_fd().try_clone_to_owned()?;
            let data = MapData::from_fd(fd).with_context(|| format!("reopening map {name}"))?;
            Ok(aya::maps::Map::from_map_data(data)?)
        };
        Ok(Collector {
            conntrack: BpfHashMap::try_from(own(MAP_CONNTRACK)?)?,
            snat: BpfHashMap::try_from(own(MAP_SNAT)?)?,
            active: Array::try_from(own(MAP_SERVER_ACTIVE)?)?,
            sticky: BpfHashMap::try_from(own(MAP_STICKY)?)?,
        })
    }

    /// One pass now (see [`Collector::run`]) over every server this data plane knows.
    pub fn gc(&mut self, now_ns: u64, timeouts: &Timeouts) -> Result<GcReport> {
        let servers: Vec<u32> = self.servers.keys().copied().collect();
        self.collector()?
            .run(now_ns, timeouts, &servers, &self.ids.retired())
    }
}

impl Collector {
    /// The retired ids that no surviving flow (either side) and no sticky entry names.
    fn unused(
        &mut self,
        retired: &Retired,
        flows: &[(FlowKey, NatEntry)],
        expired: &[(FlowKey, NatEntry)],
        reverse: &[(FlowKey, NatEntry)],
        orphans: &[FlowKey],
    ) -> Result<Retired> {
        if retired.is_empty() {
            return Ok(Retired::default());
        }
        let (mut servers, mut backends, mut frontends) =
            (HashSet::new(), HashSet::new(), HashSet::new());
        let gone: HashSet<FlowKey> = expired
            .iter()
            .map(|(k, _)| *k)
            .chain(orphans.iter().copied())
            .collect();
        for (key, entry) in flows.iter().chain(reverse) {
            if gone.contains(key) {
                continue;
            }
            servers.insert(entry.server_id);
            backends.insert(u32::from(entry.backend_id));
            frontends.insert(u32::from(entry.frontend_id));
        }
        let stale: Vec<StickyKey> = self
            .sticky
            .iter()
            .filter_map(Result::ok)
            .filter(|(key, entry)| {
                retired.backends.contains(&key.backend_id)
                    || retired.servers.contains(&entry.server_id)
            })
            .map(|(key, _)| key)
            .collect();
        for key in &stale {
            let _ = self.sticky.remove(key);
        }
        let free = |ids: &[u32], used: &HashSet<u32>| -> Vec<u32> {
            ids.iter()
                .filter(|id| !used.contains(id))
                .copied()
                .collect()
        };
        Ok(Retired {
            servers: free(&retired.servers, &servers),
            backends: free(&retired.backends, &backends),
            frontends: free(&retired.frontends, &frontends),
        })
    }

    /// Remove flows idle past their state's timeout (and reverse entries whose flow is
    /// gone), then set the open-flow count of every server in `servers` from what
    /// remains, so the counts the data plane keeps can never drift. Sticky entries that
    /// name a `retired` server or backend are removed (they can never be used), and the
    /// retired ids no remaining entry refers to are reported unused. The report also says
    /// how many handshakes are pending and how many SNAT ports each server's flows hold.
    pub fn run(
        &mut self,
        now_ns: u64,
        timeouts: &Timeouts,
        servers: &[u32],
        retired: &Retired,
    ) -> Result<GcReport> {
        let mut report = GcReport::default();
        let flows: Vec<(FlowKey, NatEntry)> =
            self.conntrack.iter().filter_map(|r| r.ok()).collect();
        report.flows = flows.len();
        let mut expired = Vec::new();
        for (key, entry) in &flows {
            if timeouts.expired(entry.state, entry.last_seen_ns, now_ns) {
                expired.push((*key, *entry));
                continue;
            }
            if key.proto == IPPROTO_TCP && is_half_open(entry.state) {
                report.half_open += 1;
            }
            if entry.flags & ENTRY_COUNTED != 0 {
                *report.active.entry(entry.server_id).or_default() += 1;
                *report
                    .active_per_frontend
                    .entry(u32::from(entry.frontend_id))
                    .or_default() += 1;
            }
        }
        for (key, entry) in &expired {
            // Only a flow this pass removed takes its reverse entry along, and only while
            // that entry is still the flow's own: the data plane may have removed the flow
            // first, to give its port to a new flow (a handshake idle past SYN_RECLAIM_NS).
            if self.conntrack.remove(key).is_ok() && entry.flags & ENTRY_DSR == 0 {
                let reverse_key = entry.reply_key(key.proto);
                let own = self
                    .snat
                    .get(&reverse_key, 0)
                    .is_ok_and(|r| r.reply_key(key.proto) == *key);
                if own {
                    let _ = self.snat.remove(&reverse_key);
                }
            }
        }
        report.expired = expired.len();
        // A reverse entry is an orphan when its flow is gone (LRU eviction) now, not in the
        // snapshot above (a flow may have opened since), and it is older than a grace period
        // (the data plane inserts it just before the flow's own entry). It is read again
        // before it goes: its port may have been given to a new flow meanwhile. (Collected
        // first: removing keys while the kernel walks them would restart the walk.)
        let reverse: Vec<(FlowKey, NatEntry)> = self.snat.iter().filter_map(|r| r.ok()).collect();
        let mut orphans = Vec::new();
        for (key, entry) in &reverse {
            let orphan = now_ns.saturating_sub(entry.last_seen_ns) > ORPHAN_GRACE_NS
                && self.conntrack.get(&entry.reply_key(key.proto), 0).is_err();
            if orphan && self.snat.get(key, 0).is_ok_and(|now| now == *entry) {
                let _ = self.snat.remove(key);
                orphans.push(*key);
                continue;
            }
            *report
                .snat_ports_used
                .entry((entry.server_id, key.proto))
                .or_default() += 1;
        }
        report.orphans = orphans.len();
        report.unused = self.unused(retired, &flows, &expired, &reverse, &orphans)?;
        for id in servers {
            self.active
                .set(*id, report.active.get(id).copied().unwrap_or(0), 0)?;
        }
        if report.expired > 0 || report.orphans > 0 {
            debug!(
                flows = report.flows,
                expired = report.expired,
                orphans = report.orphans,
                "conntrack gc"
            );
        }
        Ok(report)
    }
}
