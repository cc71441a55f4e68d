//! The connection-tracking garbage collector. It holds handles of its own to the maps it
//! sweeps, so it runs on a thread of its own while the daemon keeps applying changes.
//!
//! The sweep is incremental: each tick reads a bounded slice of entries in batches, from
//! where the last tick stopped, so a tick's cost does not grow with the table. A cycle
//! walks the flow table, then the reverse table, as one pass did. What needs the whole
//! table (open-flow counts, half-open handshakes, SNAT ports, unused ids) is summed over a
//! cycle and applied when it ends; a small table is one tick.

use std::{
    collections::{HashMap, HashSet},
    hash::BuildHasher as _,
    os::fd::AsFd as _,
};

use anyhow::{Context as _, Result, anyhow};
use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use lb_common::{
    flow::{Timeouts, is_half_open},
    maps::{
        Addr, ENTRY_COUNTED, ENTRY_DSR, FlowKey, MAP_CONNTRACK, MAP_SERVER_ACTIVE, MAP_SNAT,
        MAP_STICKY, NatEntry, StickyEntry, StickyKey,
    },
    wire::IPPROTO_TCP,
};
use tracing::debug;

use super::{
    Dataplane,
    batch::{BatchMap, Cursor},
    plan::Retired,
};

/// A reverse entry younger than this is never an orphan: its flow's entry may be about to
/// be inserted.
const ORPHAN_GRACE_NS: u64 = 2_000_000_000;

/// Most flows a cycle remembers (8 bytes each, 32 MiB at most); past it, reverse entries
/// of the flows not remembered are checked with a lookup each.
const SEEN_MAX: usize = 1 << 22;

/// Entries (of both tables) one tick reads. A batch read costs ~0.4 µs an entry (a
/// lookup, ~1 µs, only for a reverse entry whose flow the cycle did not see), so a tick
/// stays near 30-100 ms of CPU (3-10 % of a core at the default 1 s interval) at any
/// size, while a cycle over 1M flows (2M entries) takes 31 ticks, which delays expiry by
/// at most that on top of the state's timeout.
pub const SLICE: usize = 65_536;

/// What one garbage-collection tick did. The counts that need the whole table (`flows`,
/// `half_open`, `snat_ports_used`, `active*`) are those of the last complete cycle;
/// `expired` and `orphans` are this tick's; `unused` is set only when a cycle completes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Whether this tick completed a cycle over both tables.
    pub complete: bool,
    /// Cycles this collector has completed.
    pub cycles: u64,
    pub flows: usize,
    pub expired: usize,
    pub orphans: usize,
    /// TCP flows left whose handshake the client has not completed (they do not count as
    /// open).
    pub half_open: usize,
    /// SNAT ports held (reverse entries left) per server id, IP protocol and SNAT address:
    /// each server has its frontends' `snat_ports` per protocol and SNAT address.
    pub snat_ports_used: HashMap<(u32, u8, Addr), u64>,
    /// Open flows per server id after reconciliation.
    pub active: HashMap<u32, u64>,
    /// Open flows per frontend id.
    pub active_per_frontend: HashMap<u32, u64>,
    /// The retired ids this pass found nothing referring to: free to release.
    pub unused: Retired,
}

/// The maps a sweep reads, through file descriptors of its own, and where it stands.
pub struct Collector {
    conntrack: BatchMap<FlowKey, NatEntry>,
    snat: BatchMap<FlowKey, NatEntry>,
    active: Array<MapData, u64>,
    sticky: BpfHashMap<MapData, StickyKey, StickyEntry>,
    cycle: Option<Cycle>,
    /// The last complete cycle's counts.
    last: GcReport,
    /// Reused slice buffers.
    keys: Vec<FlowKey>,
    values: Vec<NatEntry>,
}

/// A cycle under way: the two walks' cursors and what they summed so far.
#[derive(Default)]
struct Cycle {
    conntrack: Cursor,
    snat: Cursor,
    /// The ids retired when the cycle started: only they can be found unused at its end,
    /// since entries walked before an id was retired were not checked for it.
    retired: Retired,
    sum: GcReport,
    servers: HashSet<u32>,
    backends: HashSet<u32>,
    frontends: HashSet<u32>,
    /// Hashes of the live flows the flow walk saw: their reverse entries are not orphans
    /// this cycle, which saves the lookup that dominates a sweep's cost at 1M flows (an
    /// orphan whose flow went after the walk is found by the next cycle; a collision only
    /// delays one the same way).
    seen: HashSet<u64>,
    hasher: std::hash::RandomState,
}

impl Cycle {
    fn uses(&mut self, entry: &NatEntry) {
        if self.retired.is_empty() {
            return;
        }
        self.servers.insert(entry.server_id);
        self.backends.insert(u32::from(entry.backend_id));
        self.frontends.insert(u32::from(entry.frontend_id));
    }
}

impl Dataplane {
    /// A collector over this data plane's maps.
    pub fn collector(&self) -> Result<Collector> {
        // A second descriptor of the same kernel map, for a thread of its own.
        let own = |name: &str| -> Result<MapData> {
            let (aya::maps::Map::HashMap(data)
            | aya::maps::Map::LruHashMap(data)
            | aya::maps::Map::Array(data)) = self.map_ref(name)?
            else {
                return Err(anyhow!("map {name} is not a hash or array map"));
            };
            let fd = data.fd().as_fd().try_clone_to_owned()?;
            MapData::from_fd(fd).with_context(|| format!("reopening map {name}"))
        };
        let map = |name: &str| -> Result<aya::maps::Map> {
            Ok(aya::maps::Map::from_map_data(own(name)?)?)
        };
        Ok(Collector {
            conntrack: BatchMap::new(own(MAP_CONNTRACK)?)?,
            snat: BatchMap::new(own(MAP_SNAT)?)?,
            active: Array::try_from(map(MAP_SERVER_ACTIVE)?)?,
            sticky: BpfHashMap::try_from(map(MAP_STICKY)?)?,
            cycle: None,
            last: GcReport::default(),
            keys: Vec::new(),
            values: Vec::new(),
        })
    }

    /// One full cycle now (see [`Collector::run`]) over every server this data plane knows.
    pub fn gc(&mut self, now_ns: u64, timeouts: &Timeouts) -> Result<GcReport> {
        let servers: Vec<u32> = self.servers.keys().copied().collect();
        self.collector()?
            .run(now_ns, timeouts, &servers, &self.ids.retired())
    }
}

impl Collector {
    /// A whole cycle at once (a partial one under way is dropped): see [`Collector::tick`].
    pub fn run(
        &mut self,
        now_ns: u64,
        timeouts: &Timeouts,
        servers: &[u32],
        retired: &Retired,
    ) -> Result<GcReport> {
        self.cycle = None;
        self.tick(now_ns, timeouts, servers, retired, usize::MAX)
    }

    /// Read up to `slice` more entries, of the flow table and then of the reverse one.
    /// Remove flows idle past their state's timeout (and reverse entries whose flow is
    /// gone). When the cycle completes, set the open-flow count of every server in
    /// `servers` from what it found, so the counts the data plane keeps never drift for
    /// longer than a cycle; remove sticky entries that name a `retired` server or backend
    /// (they can never be used), and report the ids retired since before the cycle began
    /// that no entry refers to as unused. The report also says how many handshakes are
    /// pending and how many SNAT ports each server's flows hold.
    pub fn tick(
        &mut self,
        now_ns: u64,
        timeouts: &Timeouts,
        servers: &[u32],
        retired: &Retired,
        slice: usize,
    ) -> Result<GcReport> {
        let mut cycle = self.cycle.take().unwrap_or_else(|| Cycle {
            retired: retired.clone(),
            ..Cycle::default()
        });
        let (expired, orphans) = self.slice(&mut cycle, now_ns, timeouts, slice)?;
        let mut report = if cycle.conntrack == Cursor::End && cycle.snat == Cursor::End {
            self.complete(cycle, servers, retired)?
        } else {
            self.cycle = Some(cycle);
            GcReport {
                complete: false,
                unused: Retired::default(),
                ..self.last.clone()
            }
        };
        report.expired = expired;
        report.orphans = orphans;
        if expired > 0 || orphans > 0 {
            debug!(flows = report.flows, expired, orphans, "conntrack gc");
        }
        Ok(report)
    }

    /// One slice of the cycle: flow entries, then (once those are all read) reverse ones;
    /// returns the flows expired and reverse entries orphaned.
    fn slice(
        &mut self,
        cycle: &mut Cycle,
        now_ns: u64,
        timeouts: &Timeouts,
        slice: usize,
    ) -> Result<(usize, usize)> {
        let (mut keys, mut values) = (
            std::mem::take(&mut self.keys),
            std::mem::take(&mut self.values),
        );
        let (mut expired, mut left) = (0, slice);
        if cycle.conntrack != Cursor::End {
            keys.clear();
            values.clear();
            self.conntrack
                .lookup(&mut cycle.conntrack, left, &mut keys, &mut values)?;
            left = left.saturating_sub(keys.len());
            cycle.sum.flows += keys.len();
            let mut gone = Vec::new();
            for (key, entry) in keys.iter().zip(&values) {
                if timeouts.expired(entry.state, entry.last_seen_ns, now_ns) {
                    gone.push((*key, *entry));
                    continue;
                }
                if key.proto == IPPROTO_TCP && is_half_open(entry.state) {
                    cycle.sum.half_open += 1;
                }
                if entry.flags & ENTRY_COUNTED != 0 {
                    *cycle.sum.active.entry(entry.server_id).or_default() += 1;
                    *cycle
                        .sum
                        .active_per_frontend
                        .entry(u32::from(entry.frontend_id))
                        .or_default() += 1;
                }
                cycle.uses(entry);
                if cycle.seen.len() < SEEN_MAX {
                    let hash = cycle.hasher.hash_one(key);
                    cycle.seen.insert(hash);
                }
            }
            let gone_keys: Vec<FlowKey> = gone.iter().map(|(k, _)| *k).collect();
            let removed = self.conntrack.delete(&gone_keys)?;
            for ((key, entry), removed) in gone.iter().zip(removed) {
                // Only a flow this tick removed takes its reverse entry along, and only while
                // that entry is still the flow's own: the data plane may have removed the
                // flow first, to give its port to a new flow (a handshake idle past
                // SYN_RECLAIM_NS). Checked and removed one at a time to keep that window
                // short.
                if removed && entry.flags & ENTRY_DSR == 0 {
                    let reverse_key = entry.reply_key(key.proto);
                    let own = self
                        .snat
                        .get(&reverse_key)
                        .is_some_and(|r| r.reply_key(key.proto) == *key);
                    if own {
                        let _ = self.snat.delete(&[reverse_key]);
                    }
                }
            }
            expired = gone.len();
        }
        // A reverse entry is an orphan when its flow is gone (LRU eviction) now, not when
        // the flow table was walked (a flow may have opened since), and it is older than a
        // grace period (the data plane inserts it just before the flow's own entry). It is
        // read again just before it goes: its port may have been given to a new flow
        // meanwhile.
        let mut orphans = 0;
        if cycle.conntrack == Cursor::End && cycle.snat != Cursor::End && left > 0 {
            keys.clear();
            values.clear();
            self.snat
                .lookup(&mut cycle.snat, left, &mut keys, &mut values)?;
            for (key, entry) in keys.iter().zip(&values) {
                let flow = entry.reply_key(key.proto);
                let orphan = now_ns.saturating_sub(entry.last_seen_ns) > ORPHAN_GRACE_NS
                    && !cycle.seen.contains(&cycle.hasher.hash_one(flow))
                    && self.conntrack.get(&flow).is_none();
                if orphan && self.snat.get(key).is_some_and(|now| now == *entry) {
                    let _ = self.snat.delete(&[*key]);
                    orphans += 1;
                    continue;
                }
                *cycle
                    .sum
                    .snat_ports_used
                    .entry((entry.server_id, key.proto, key.dst))
                    .or_default() += 1;
                cycle.uses(entry);
            }
        }
        (self.keys, self.values) = (keys, values);
        Ok((expired, orphans))
    }

    /// Apply a finished cycle: open-flow counts, sticky cleanup, unused ids.
    fn complete(&mut self, cycle: Cycle, servers: &[u32], retired: &Retired) -> Result<GcReport> {
        let mut report = cycle.sum;
        report.complete = true;
        report.cycles = self.last.cycles + 1;
        if !retired.is_empty() {
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
        }
        // Retired before the cycle began, still retired now, and named by no entry.
        let free = |then: &[u32], now: &[u32], used: &HashSet<u32>| -> Vec<u32> {
            then.iter()
                .filter(|id| now.contains(id) && !used.contains(id))
                .copied()
                .collect()
        };
        report.unused = Retired {
            servers: free(&cycle.retired.servers, &retired.servers, &cycle.servers),
            backends: free(&cycle.retired.backends, &retired.backends, &cycle.backends),
            frontends: free(
                &cycle.retired.frontends,
                &retired.frontends,
                &cycle.frontends,
            ),
        };
        for id in servers {
            self.active
                .set(*id, report.active.get(id).copied().unwrap_or(0), 0)?;
        }
        self.last = report.clone();
        Ok(report)
    }
}
