//! Programs for `cargo xtask bench` only; `lb run` never attaches them. Two baselines (the
//! cost of XDP itself, and of parsing), and a wrapper that restores the frame before each
//! BPF_PROG_TEST_RUN iteration and tail-calls the balancer, because `repeat` otherwise
//! feeds the program its own rewritten output.

use aya_ebpf::{
    EbpfContext as _,
    bindings::xdp_action,
    helpers::generated::bpf_xdp_store_bytes,
    macros::{map, xdp},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use lb_common::{
    maps::{BENCH_MODE_NEW_FLOW, BENCH_RESTORE_LEN, BenchTemplate},
    wire::{ETH_HLEN, IPV4_HLEN},
};

use crate::parse::{Packet, parse};

/// In the template frame (Ethernet, IPv4 without options, TCP): the TCP source port, and the
/// low byte of the IPv4 source address (the last of its 4 bytes at IPv4 offset 12).
const SPORT_AT: u32 = (ETH_HLEN + IPV4_HLEN) as u32;
const SRC_ADDR_LOW_AT: u32 = (ETH_HLEN + 15) as u32;

#[map]
static BENCH_TEMPLATE: Array<BenchTemplate> = Array::with_max_entries(1, 0);

#[map]
static BENCH_JUMP: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[map]
static BENCH_COUNTER: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Baseline: XDP's own cost.
#[xdp]
pub fn bench_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Baseline: parse Ethernet/IP/TCP-UDP as the balancer does, and bounce the frame. Also the
/// packet generator (XDP live frames transmit what it returns XDP_TX for).
#[xdp]
pub fn bench_parse_tx(ctx: XdpContext) -> u32 {
    // On the stack: this program has no deep call chain to make room for.
    let mut pkt = Packet::default();
    match parse(&ctx, &mut pkt) {
        Ok(()) => xdp_action::XDP_TX,
        Err(_) => xdp_action::XDP_PASS,
    }
}

/// Restore the template frame's headers (new-flow mode: with a fresh source port), then
/// run the balancer. With an empty jump slot it measures its own cost.
#[xdp]
pub fn bench_restore(ctx: XdpContext) -> u32 {
    let Some(template) = BENCH_TEMPLATE.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: map value pointer; the helper bounds-checks the packet side.
    unsafe {
        if bpf_xdp_store_bytes(
            ctx.as_ptr().cast(),
            0,
            (*template).frame.as_mut_ptr().cast(),
            BENCH_RESTORE_LEN,
        ) != 0
        {
            return xdp_action::XDP_ABORTED;
        }
        if (*template).mode == BENCH_MODE_NEW_FLOW
            && let Some(counter) = BENCH_COUNTER.get_ptr_mut(0)
        {
            *counter = (*counter).wrapping_add(1);
            // The source port and the low source-address byte vary, so each iteration is a
            // flow the balancer has not seen.
            let n = *counter;
            let mut port = [(n >> 8) as u8, n as u8];
            let mut addr = [(n >> 16) as u8];
            bpf_xdp_store_bytes(ctx.as_ptr().cast(), SPORT_AT, port.as_mut_ptr().cast(), 2);
            bpf_xdp_store_bytes(
                ctx.as_ptr().cast(),
                SRC_ADDR_LOW_AT,
                addr.as_mut_ptr().cast(),
                1,
            );
        }
        BENCH_JUMP.tail_call(&ctx, 0);
    }
    xdp_action::XDP_DROP
}
