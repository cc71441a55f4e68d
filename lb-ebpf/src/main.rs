//! The XDP data plane, one stage per module: `parse` the headers, match a tracked flow
//! (`conntrack`) or open a new one (`new_flow`, which asks `select` for a server), `rewrite`
//! addresses, ports and checksums, and send the frame out (`egress`). ICMP errors about
//! tracked flows (`icmp`) and resets to clients of a DOWN server (`reset`) branch off; `maps`
//! holds the maps and counters, `bench` the benchmark-only programs.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic_xadd: the bpf target has atomic add but no CAS, so core::sync::atomic lacks fetch_add"
)]

mod bench;
mod conntrack;
mod egress;
mod icmp;
mod maps;
mod mem;
mod new_flow;
mod parse;
mod reset;
mod rewrite;
mod select;

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_ktime_get_coarse_ns, macros::xdp,
    programs::XdpContext,
};
use lb_common::{
    maps::{ADDR_SNAT, ADDR_VIP, ENTRY_DSR},
    stats::Stat,
};

use crate::{
    maps::{LB_ADDRS, LB_SCRATCH, count},
    parse::Scratch,
};

/// What happens to a packet once the conntrack or new-flow stage has decided. Fieldless on
/// purpose: a payload (the reason, say) is undefined in the other variants, so where the two
/// stages' results merge LLVM spills a register it never set, which the verifier refuses.
pub enum Next {
    /// Send it on as the scratch slot's NAT entry says (rewritten to it, unless DSR).
    Forward,
    /// Answer the client with a RST: the flow's server is DOWN and its backend resets flows.
    Reset,
    /// Leave it to the kernel; made by [`Next::pass`], which counts why.
    Pass,
    /// Drop it; made by [`Next::drop`], which counts why.
    Drop,
}

impl Next {
    #[inline(always)]
    pub fn pass(reason: Stat) -> Next {
        count(reason);
        Next::Pass
    }

    #[inline(always)]
    pub fn drop(reason: Stat) -> Next {
        count(reason);
        Next::Drop
    }
}

/// Balances packets to frontends and translates their replies; passes everything else.
#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let action = balance(&ctx);
    count(match action {
        xdp_action::XDP_PASS => Stat::VERDICT_PASS,
        xdp_action::XDP_DROP => Stat::VERDICT_DROP,
        xdp_action::XDP_TX => Stat::VERDICT_TX,
        xdp_action::XDP_REDIRECT => Stat::VERDICT_REDIRECT,
        _ => Stat::VERDICT_ABORTED,
    });
    action
}

/// The pipeline: parse -> whose address? -> tracked flow? -> else a new flow -> rewrite ->
/// egress.
#[inline(always)]
fn balance(ctx: &XdpContext) -> u32 {
    // The parsed packet and its rewrite live in a per-CPU scratch slot: on the stack they
    // would push the deepest call chain past the verifier's 512 bytes.
    let Some(scratch) = LB_SCRATCH.get_ptr_mut(0) else {
        return counted(xdp_action::XDP_PASS, Stat::DROP_MAP_ERROR);
    };
    // SAFETY: per-CPU slot, used by this program run only.
    let Scratch { pkt, nat, .. } = unsafe { &mut *scratch };
    if let Err(reason) = parse::parse(ctx, pkt) {
        // Inconsistent headers never reach a lookup: no flow opens, none moves.
        let action = if reason.is_malformed() {
            xdp_action::XDP_DROP
        } else {
            xdp_action::XDP_PASS
        };
        return counted(action, reason);
    }
    if pkt.icmp {
        return icmp::translate(ctx, pkt, nat);
    }
    // Classify by destination: traffic for an address lb does not answer for costs this
    // one lookup.
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "map keys go by reference: by value they would be copied onto the 512-byte BPF stack"
    )]
    let kind = match LB_ADDRS.get_ptr(&pkt.key.dst) {
        // SAFETY: map value pointer from a successful lookup.
        Some(kind) => unsafe { *kind },
        None => return counted(xdp_action::XDP_PASS, Stat::PASS_NOT_VIP),
    };
    // The coarse clock (a jiffy's resolution, no clock-source read) is enough for timeouts
    // of a second and more.
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // One rewrite target, filled by whichever stage matches, so the rewrite and egress code
    // exist once.
    let tracked = if kind & ADDR_VIP != 0 {
        conntrack::from_client(pkt, nat, now)
    } else {
        None
    };
    let tracked = match tracked {
        None if kind & ADDR_SNAT != 0 => conntrack::from_server(pkt, nat, now),
        other => other,
    };
    let next = match tracked {
        Some(next) => next,
        None if kind & ADDR_VIP != 0 => new_flow::open(pkt, nat, now),
        None => Next::pass(Stat::PASS_NOT_VIP),
    };
    match next {
        Next::Forward => {}
        Next::Reset => return reset::send_rst(ctx, pkt),
        Next::Pass => return xdp_action::XDP_PASS,
        Next::Drop => return xdp_action::XDP_DROP,
    }
    // DSR keeps addresses and ports: only the destination MAC changes, which egress sets.
    // Rewrite and egress are separate subprograms, so their stack frames do not add up.
    if nat.flags & ENTRY_DSR == 0 && rewrite::apply(ctx, pkt, nat).is_none() {
        return counted(xdp_action::XDP_PASS, Stat::PASS_TRUNCATED);
    }
    egress::send(ctx, pkt, nat, now)
}

/// A final action, with the reason for it counted.
#[inline(always)]
fn counted(action: u32, reason: Stat) -> u32 {
    count(reason);
    action
}

/// Attached to the far end of a veth so frames redirected into it are delivered (the kernel
/// drops XDP frames sent into a veth whose peer has no XDP program).
#[xdp]
pub fn lb_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path.
    unsafe { core::hint::unreachable_unchecked() }
}
