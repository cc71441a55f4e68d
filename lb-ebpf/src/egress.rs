//! Egress: a FIB lookup for the rewritten destination gives the interface and MAC addresses;
//! the frame leaves by XDP_TX on the same interface or XDP_REDIRECT through the DEVMAP.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{bpf_fib_lookup, xdp_action},
    helpers::generated::bpf_fib_lookup as fib_lookup,
    programs::XdpContext,
};
use lb_common::{maps::NatEntry, stats::Stat};
use network_types::eth::EthHdr;

use crate::{
    maps::{LB_TX_PORTS, count},
    parse::{Packet, ptr_at},
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
pub fn send(ctx: &XdpContext, pkt: &Packet, nat: &NatEntry) -> u32 {
    // SAFETY: an all-zero bpf_fib_lookup is a valid request skeleton.
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    let (src, dst) = (words(&nat.src), words(&nat.dst));
    fib.l4_protocol = pkt.key.proto;
    fib.sport = nat.sport;
    fib.dport = nat.dport;
    fib.ifindex = ctx.ingress_ifindex() as u32;
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
        (*eth).dst_addr = fib.dmac;
        (*eth).src_addr = fib.smac;
    }
    if fib.ifindex == ctx.ingress_ifindex() as u32 {
        return xdp_action::XDP_TX;
    }
    match LB_TX_PORTS.redirect(fib.ifindex, u64::from(xdp_action::XDP_PASS)) {
        Ok(action) => action,
        Err(_) => {
            count(Stat::PASS_NO_TX_PORT);
            xdp_action::XDP_PASS
        }
    }
}
