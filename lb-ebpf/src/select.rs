//! Choosing a server for a new flow: source-IP stickiness first, then the backend's method.
//! Maglev, source hash and round robin index a table computed in userspace; leastconn and
//! first scan the backend's servers, which only they need. The stickiness a choice leaves
//! behind is recorded here too.

use aya_ebpf::{cty::c_void, helpers::generated::bpf_loop};
use lb_common::{
    hash::flow_hash,
    maps::{
        BackendInfo, MAX_SERVERS_PER_BACKEND, METHOD_FIRST, METHOD_LEASTCONN, METHOD_MAGLEV,
        METHOD_ROUNDROBIN, METHOD_SOURCE, SERVER_PRESENT, StickyEntry, StickyKey,
    },
    stats::Stat,
};

use crate::{
    maps::{LB_BACKEND_SRV, LB_RING, LB_RR, LB_SERVERS, LB_SRV_ACTIVE, LB_STICKY, count},
    parse::Packet,
};

const FLOW_HASH_SEED: u32 = 0;
const SOURCE_HASH_SEED: u32 = 0x5eed;

#[inline(always)]
fn pick2(pair: &[u32; 2], half: u32) -> u32 {
    if half == 0 { pair[0] } else { pair[1] }
}

/// The next position of this backend's per-CPU round-robin counter.
#[inline(always)]
fn rr_next(backend_id: u32) -> u32 {
    match LB_RR.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot.
        Some(p) => unsafe {
            let v = *p;
            *p = v.wrapping_add(1);
            v
        },
        None => 0,
    }
}

/// Present with a weight above 0: neither drained, DOWN nor removed.
#[inline(always)]
pub fn takes_new_flows(server_id: u32) -> bool {
    LB_SERVERS
        .get(server_id)
        .is_some_and(|s| s.flags & SERVER_PRESENT != 0 && s.weight > 0)
}

#[inline(always)]
fn active(server_id: u32) -> u64 {
    LB_SRV_ACTIVE.get(server_id).copied().unwrap_or(0)
}

/// The server for a new flow, or why there is none.
#[inline(always)]
pub fn choose_server(
    pkt: &Packet,
    backend_id: u32,
    backend: &BackendInfo,
    now: u64,
) -> Result<u32, Stat> {
    if backend.sticky_ttl_s != 0 {
        let key = StickyKey {
            backend_id,
            addr: pkt.key.src,
        };
        // SAFETY: copied out at once.
        if let Some(sticky) = unsafe { LB_STICKY.get(key) }.copied()
            && now.wrapping_sub(sticky.last_seen_ns)
                < u64::from(backend.sticky_ttl_s) * 1_000_000_000
            && takes_new_flows(sticky.server_id)
        {
            count(Stat::STICKY_HIT);
            return Ok(sticky.server_id);
        }
    }
    let half = backend.active & 1;
    match backend.method {
        METHOD_LEASTCONN | METHOD_FIRST => scan(backend_id, backend, half),
        method => {
            let size = pick2(&backend.ring_size, half);
            if size == 0 {
                return Err(Stat::DROP_NO_SERVER);
            }
            let position = match method {
                METHOD_MAGLEV => flow_hash(&pkt.key, FLOW_HASH_SEED),
                METHOD_SOURCE => {
                    let mut by_source = pkt.key;
                    by_source.dst = [0; 16];
                    by_source.sport = 0;
                    by_source.dport = 0;
                    by_source.proto = 0;
                    flow_hash(&by_source, SOURCE_HASH_SEED)
                }
                METHOD_ROUNDROBIN => rr_next(backend_id),
                _ => return Err(Stat::DROP_MAP_ERROR),
            };
            let slot = BackendInfo::ring_base(backend_id, half) + position % size;
            LB_RING.get(slot).copied().ok_or(Stat::DROP_MAP_ERROR)
        }
    }
}

/// Record (or refresh) which server a client sticks to. Out of line: the key and value
/// need not sit in the caller's stack frame.
#[inline(never)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "the key and value go by reference: by value they would be copied onto the 512-byte BPF stack"
)]
pub fn remember_client(backend_id: u32, client: &[u8; 16], server_id: u32, now: u64) {
    let key = StickyKey {
        backend_id,
        addr: *client,
    };
    let entry = StickyEntry {
        server_id,
        _pad: 0,
        last_seen_ns: now,
    };
    let _ = LB_STICKY.insert(&key, &entry, 0);
}

/// State of a scan over a backend's servers, shared with the `bpf_loop` callback.
#[repr(C)]
struct Scan {
    base: u32,
    count: u32,
    start: u32,
    least: u32,
    best: u32,
    any_weight: u32,
    best_active: u64,
    best_weight: u64,
}

/// One server of a scan. Returns 1 to stop (`first` found room), 0 to go on. Run through
/// `bpf_loop`, so the verifier checks the body once instead of once per server.
extern "C" fn scan_one(i: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer to the caller's `Scan`.
    let scan = unsafe { &mut *(ctx as *mut Scan) };
    if scan.count == 0 {
        return 1;
    }
    let j = if scan.least != 0 {
        scan.start.wrapping_add(i) % scan.count
    } else {
        i
    };
    let Some(&id) = LB_BACKEND_SRV.get(scan.base + j) else {
        return 0;
    };
    let Some(server) = LB_SERVERS.get(id) else {
        return 0;
    };
    if server.weight == 0 || server.flags & SERVER_PRESENT == 0 {
        return 0;
    }
    scan.any_weight = 1;
    let open = active(id);
    if server.max_conn != 0 && open >= u64::from(server.max_conn) {
        return 0;
    }
    if scan.least == 0 {
        scan.best = id;
        return 1;
    }
    let weight = u64::from(server.weight);
    // open/weight < best_active/best_weight, without division; ties keep the earlier one,
    // and the starting point rotates, so ties rotate.
    if scan.best == u32::MAX || open * scan.best_weight < scan.best_active * weight {
        scan.best = id;
        scan.best_active = open;
        scan.best_weight = weight;
    }
    0
}

/// leastconn: the lowest active/weight among servers under their max_conn.
/// first: the first server in id order with room under its max_conn.
#[inline(always)]
fn scan(backend_id: u32, backend: &BackendInfo, half: u32) -> Result<u32, Stat> {
    let least = backend.method == METHOD_LEASTCONN;
    let count = pick2(&backend.server_count, half).min(MAX_SERVERS_PER_BACKEND);
    let mut scan = Scan {
        base: BackendInfo::list_base(backend_id, half),
        count,
        start: if least { rr_next(backend_id) } else { 0 },
        least: u32::from(least),
        best: u32::MAX,
        any_weight: 0,
        best_active: 0,
        best_weight: 1,
    };
    // SAFETY: the callback only touches `scan` through the pointer it is given.
    unsafe {
        bpf_loop(
            count,
            scan_one as *const () as *mut c_void,
            (&mut scan as *mut Scan).cast(),
            0,
        );
    }
    if scan.best != u32::MAX {
        Ok(scan.best)
    } else if scan.any_weight != 0 {
        Err(Stat::DROP_ALL_SERVERS_FULL)
    } else {
        Err(Stat::DROP_NO_SERVER)
    }
}
