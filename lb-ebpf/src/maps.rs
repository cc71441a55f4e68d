//! The maps. Names are the constants in `lb_common::maps` (each static is named after its map).

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    maps::{
        Addr, BackendInfo, CONNTRACK_ENTRIES, EGRESS_CACHE_SLOTS, EgressEntry, FlowKey,
        FrontendInfo, FrontendKey, MAX_BACKENDS, MAX_FRONTENDS, MAX_SERVERS,
        MAX_SERVERS_PER_BACKEND, MAX_TX_PORTS, NatEntry, RING_STRIDE, STICKY_ENTRIES, ServerInfo,
        StickyEntry, StickyKey, TrafficStats,
    },
    stats::{STAT_COUNT, Stat},
};

#[map]
pub static LB_FRONTENDS: HashMap<FrontendKey, FrontendInfo> =
    HashMap::with_max_entries(MAX_FRONTENDS, 0);

#[map]
pub static LB_BACKENDS: Array<BackendInfo> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Two halves per backend (see `BackendInfo`).
#[map]
pub static LB_RING: Array<u32> = Array::with_max_entries(MAX_BACKENDS * 2 * RING_STRIDE, 0);

#[map]
pub static LB_BACKEND_SRV: Array<u32> =
    Array::with_max_entries(MAX_BACKENDS * 2 * MAX_SERVERS_PER_BACKEND, 0);

#[map]
pub static LB_SRV_ACTIVE: Array<u64> = Array::with_max_entries(MAX_SERVERS, 0);

#[map]
pub static LB_RR: PerCpuArray<u32> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map]
pub static LB_STICKY: LruHashMap<StickyKey, StickyEntry> =
    LruHashMap::with_max_entries(STICKY_ENTRIES, 0);

#[map]
pub static LB_SRV_STATS: PerCpuArray<TrafficStats> = PerCpuArray::with_max_entries(MAX_SERVERS, 0);

#[map]
pub static LB_FE_STATS: PerCpuArray<TrafficStats> = PerCpuArray::with_max_entries(MAX_FRONTENDS, 0);

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
pub static LB_ADDRS: HashMap<Addr, u32> = HashMap::with_max_entries(MAX_FRONTENDS * 2, 0);

#[map]
pub static LB_EGRESS_CACHE: PerCpuArray<EgressEntry> =
    PerCpuArray::with_max_entries(EGRESS_CACHE_SLOTS, 0);

#[map]
pub static LB_EGRESS_GEN: Array<u32> = Array::with_max_entries(1, 0);

#[map]
pub static LB_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

#[map]
pub static LB_SCRATCH: PerCpuArray<crate::parse::Scratch> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn count(stat: Stat) {
    if let Some(c) = LB_STATS.get_ptr_mut(stat.0) {
        // SAFETY: per-CPU slot, no other writer while this program runs on this CPU.
        unsafe { *c += 1 };
    }
}

/// Count a packet of a tracked flow on its frontend and server.
#[inline(always)]
pub fn account(frontend_id: u16, server_id: u32, len: u64, from_server: bool) {
    if let Some(stats) = LB_FE_STATS.get_ptr_mut(u32::from(frontend_id)) {
        // SAFETY: per-CPU slot.
        add_packet(unsafe { &mut *stats }, len, from_server);
    }
    if let Some(stats) = LB_SRV_STATS.get_ptr_mut(server_id) {
        // SAFETY: per-CPU slot.
        add_packet(unsafe { &mut *stats }, len, from_server);
    }
}

#[inline(always)]
fn add_packet(stats: &mut TrafficStats, len: u64, from_server: bool) {
    if from_server {
        stats.packets_out += 1;
        stats.bytes_out += len;
    } else {
        stats.packets_in += 1;
        stats.bytes_in += len;
    }
}

/// Count a frontend-level event (a new flow, or a drop by reason).
#[inline(always)]
pub fn frontend_event(frontend_id: u32, event: impl FnOnce(&mut TrafficStats)) {
    if let Some(stats) = LB_FE_STATS.get_ptr_mut(frontend_id) {
        // SAFETY: per-CPU slot.
        event(unsafe { &mut *stats });
    }
}

/// Count a new flow on its server.
#[inline(always)]
pub fn server_new_flow(server_id: u32) {
    if let Some(stats) = LB_SRV_STATS.get_ptr_mut(server_id) {
        // SAFETY: per-CPU slot.
        unsafe { (*stats).new_flows += 1 };
    }
}

/// Adjust a server's open-flow count; shared across CPUs, so atomically.
#[inline(always)]
pub fn active_add(server_id: u32, delta: i64) {
    if let Some(p) = LB_SRV_ACTIVE.get_ptr_mut(server_id) {
        // The bpf target has atomic add (BPF_ATOMIC) but no compare-and-swap, so core's
        // AtomicU64 offers no fetch_add here; the intrinsic emits the instruction directly.
        // Adding the two's complement subtracts.
        // SAFETY: an 8-byte aligned map value.
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                p,
                delta as u64,
            );
        }
    }
}
