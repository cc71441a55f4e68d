//! The maps. Names are the constants in `lb_common::maps` (each static is named after its map).

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    maps::{
        BackendInfo, CONNTRACK_ENTRIES, FlowKey, FrontendInfo, FrontendKey, MAX_BACKENDS,
        MAX_FRONTENDS, MAX_SERVERS, MAX_TX_PORTS, NatEntry, RING_STRIDE, ServerInfo,
    },
    stats::{STAT_COUNT, Stat},
};

#[map]
pub static LB_FRONTENDS: HashMap<FrontendKey, FrontendInfo> =
    HashMap::with_max_entries(MAX_FRONTENDS, 0);

#[map]
pub static LB_BACKENDS: Array<BackendInfo> = Array::with_max_entries(MAX_BACKENDS, 0);

#[map]
pub static LB_RING: Array<u32> = Array::with_max_entries(MAX_BACKENDS * RING_STRIDE, 0);

#[map]
pub static LB_SERVERS: Array<ServerInfo> = Array::with_max_entries(MAX_SERVERS, 0);

#[map]
pub static LB_CONNTRACK: LruHashMap<FlowKey, NatEntry> =
    LruHashMap::with_max_entries(CONNTRACK_ENTRIES, 0);

#[map]
pub static LB_SNAT: LruHashMap<FlowKey, NatEntry> =
    LruHashMap::with_max_entries(CONNTRACK_ENTRIES, 0);

#[map]
pub static LB_TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_TX_PORTS, 0);

#[map]
pub static LB_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

#[inline(always)]
pub fn count(stat: Stat) {
    if let Some(c) = LB_STATS.get_ptr_mut(stat.0) {
        // SAFETY: per-CPU slot, no other writer while this program runs on this CPU.
        unsafe { *c += 1 };
    }
}
