//! The XDP data plane: parse, look up the flow or the frontend, pick a server, full-NAT the
//! packet and send it out. Parsing, NAT, egress and maps each live in their own module.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic_xadd: the bpf target has atomic add but no CAS, so core::sync::atomic lacks fetch_add"
)]

mod bench;
mod egress;
mod icmp;
mod maps;
mod nat;
mod parse;
mod reset;
mod select;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::stats::Stat;

/// Balances packets to frontends and translates their replies; passes everything else.
#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let action = nat::process(&ctx);
    maps::count(match action {
        xdp_action::XDP_PASS => Stat::VERDICT_PASS,
        xdp_action::XDP_DROP => Stat::VERDICT_DROP,
        xdp_action::XDP_TX => Stat::VERDICT_TX,
        xdp_action::XDP_REDIRECT => Stat::VERDICT_REDIRECT,
        _ => Stat::VERDICT_ABORTED,
    });
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
