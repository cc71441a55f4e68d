//! Egress: the interface and MAC addresses for the rewritten destination come from this
//! CPU's cache of FIB answers, or from a FIB lookup that refills it; the frame leaves by
//! XDP_TX on the same interface or XDP_REDIRECT through the DEVMAP.
//!
//! The cache is per CPU (no cache line shared between CPUs, and written only on a miss),
//! direct-mapped by destination and ingress interface. An entry is used while the routing
//! generation the daemon bumps on every neighbour, route or link change is the one it was
//! filled under, and for at most `EGRESS_TTL_NS`, so it never answers differently from the
//! FIB for longer than a missed netlink event. One answer serves every flow to that
//! destination: with a multipath route, flows to one destination share one next hop.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{bpf_fib_lookup, xdp_action},
    helpers::generated::bpf_fib_lookup as fib_lookup,
    programs::XdpContext,
};
use lb_common::{
    maps::{EGRESS_TTL_NS, EgressEntry, NatEntry, egress_slot},
    stats::Stat,
};
use network_types::eth::EthHdr;

use crate::{
    maps::{LB_EGRESS_CACHE, LB_EGRESS_GEN, LB_TX_PORTS, count},
    mem::copy,
    parse::{Packet, ptr_at, same_addr},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;

#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

#[inline(never)]
pub fn send(ctx: &XdpContext, pkt: &Packet, nat: &NatEntry, now: u64) -> u32 {
    let ingress = ctx.ingress_ifindex() as u32;
    let Some(cached) = LB_EGRESS_CACHE.get_ptr_mut(egress_slot(&nat.dst, ingress)) else {
        count(Stat::DROP_MAP_ERROR);
        return xdp_action::XDP_PASS;
    };
    // SAFETY: per-CPU slot, no other writer while this program runs on this CPU.
    let cached = unsafe { &mut *cached };
    let generation = LB_EGRESS_GEN.get(0).copied().unwrap_or(0);
    let fresh = cached.ingress_ifindex == ingress
        && cached.generation == generation
        && now.wrapping_sub(cached.filled_ns) < EGRESS_TTL_NS
        && cached.ifindex != 0
        && same_addr(&cached.dst, &nat.dst);
    if !fresh && {
        cached.ingress_ifindex = ingress;
        cached.generation = generation;
        cached.filled_ns = now;
        !refill(ctx, pkt, nat, cached)
    } {
        // No route or no neighbour entry yet: the kernel forwards the rewritten packet and
        // resolves the neighbour, so the next packets take the fast path.
        count(Stat::PASS_FIB_MISS);
        return xdp_action::XDP_PASS;
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        count(Stat::PASS_TRUNCATED);
        return xdp_action::XDP_PASS;
    };
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        copy(&mut (*eth).dst_addr, &cached.dmac);
        copy(&mut (*eth).src_addr, &cached.smac);
    }
    if cached.ifindex == ingress {
        return xdp_action::XDP_TX;
    }
    match LB_TX_PORTS.redirect(cached.ifindex, u64::from(xdp_action::XDP_PASS)) {
        Ok(action) => action,
        Err(_) => {
            count(Stat::PASS_NO_TX_PORT);
            xdp_action::XDP_PASS
        }
    }
}

/// Ask the FIB for the rewritten destination and cache its answer in `cached` (whose
/// ingress, generation and time the caller has set); false if it has none.
#[inline(never)]
fn refill(ctx: &XdpContext, pkt: &Packet, nat: &NatEntry, cached: &mut EgressEntry) -> bool {
    count(Stat::EGRESS_FIB_LOOKUP);
    // SAFETY: an all-zero bpf_fib_lookup is a valid request skeleton.
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    let (src, dst) = (words(&nat.src), words(&nat.dst));
    fib.l4_protocol = pkt.key.proto;
    fib.sport = nat.sport;
    fib.dport = nat.dport;
    fib.ifindex = cached.ingress_ifindex;
    if pkt.is_v6 {
        fib.family = AF_INET6;
        fib.__bindgen_anon_3.ipv6_src = src;
        fib.__bindgen_anon_4.ipv6_dst = dst;
    } else {
        fib.family = AF_INET;
        fib.__bindgen_anon_3.ipv4_src = src[3];
        fib.__bindgen_anon_4.ipv4_dst = dst[3];
    }
    // SAFETY: fib is a valid, correctly sized request.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut fib,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS {
        // Nothing cached: a later packet asks again.
        cached.ifindex = 0;
        return false;
    }
    copy(&mut cached.dst, &nat.dst);
    cached.ifindex = fib.ifindex;
    copy(&mut cached.smac, &fib.smac);
    copy(&mut cached.dmac, &fib.dmac);
    true
}
