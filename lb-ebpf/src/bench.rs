//! Programs for `cargo xtask bench` only; `lb run` never attaches them. Two baselines (the
//! cost of XDP itself, and of parsing), a wrapper that restores the frame before each
//! BPF_PROG_TEST_RUN iteration and tail-calls the balancer, because `repeat` otherwise
//! feeds the program its own rewritten output, and the systems bench's packet generator
//! and server-side sink.

use aya_ebpf::{
    EbpfContext as _,
    bindings::xdp_action,
    helpers::generated::bpf_xdp_store_bytes,
    macros::{map, xdp},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use lb_common::{
    maps::{
        BENCH_FLOW_ADDRS, BENCH_FLOW_PORT_MIN, BENCH_FLOW_PORTS, BENCH_MODE_MANY_FLOWS,
        BENCH_MODE_NEW_FLOW, BENCH_RESTORE_LEN, BENCH_SINK_PORT, BenchTemplate,
    },
    wire::{ETH_HLEN, IPPROTO_UDP, IPV4_HLEN},
};

use crate::{
    maps::{LB_ADDRS, LB_CONNTRACK, LB_SCRATCH, LB_SNAT},
    mem::zero,
    parse::{Packet, Scratch, parse},
};

/// In the template frame (Ethernet, IPv4 without options, TCP): the TCP source port, and the
/// low byte of the IPv4 source address (the last of its 4 bytes at IPv4 offset 12).
const SPORT_AT: u32 = (ETH_HLEN + IPV4_HLEN) as u32;
const SRC_ADDR_LOW_AT: u32 = (ETH_HLEN + 15) as u32;
/// The IPv4 header checksum.
const IP_CSUM_AT: u32 = (ETH_HLEN + 10) as u32;

#[map]
static BENCH_TEMPLATE: Array<BenchTemplate> = Array::with_max_entries(1, 0);

#[map]
static BENCH_JUMP: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[map]
static BENCH_COUNTER: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[map]
static BENCH_SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The floor programs' own run counter, so their keys never meet `bench_restore`'s.
#[map]
static BENCH_FLOOR_COUNTER: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Baseline: XDP's own cost.
#[xdp]
pub fn bench_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Baseline: parse Ethernet/IP/TCP-UDP as the balancer does, and bounce the frame. Also the
/// packet generator (XDP live frames transmit what it returns XDP_TX for).
#[xdp]
pub fn bench_parse_tx(ctx: XdpContext) -> u32 {
    // On the stack (no scratch lookup): the cheapest parse, so multiples of it are not
    // flattered.
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
    let Some(template) = restore_template(&ctx) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: map value pointer; the helper bounds-checks the packet side.
    unsafe {
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

/// The packet generator, run by BPF_PROG_TEST_RUN with live frames: every frame gets the
/// template's headers (live frames recycle pages that still hold what the receiving stack
/// rewrote, which it would drop as not addressed to it), in many-flows mode with the next
/// source (address, port) of the cycle, and is transmitted.
#[xdp]
pub fn bench_generate(ctx: XdpContext) -> u32 {
    let Some(template) = restore_template(&ctx) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: map value pointers; the helper bounds-checks the packet side.
    unsafe {
        if (*template).mode == BENCH_MODE_MANY_FLOWS
            && let Some(counter) = BENCH_COUNTER.get_ptr_mut(0)
        {
            let n = *counter;
            *counter = if n + 1 >= BENCH_FLOW_ADDRS * BENCH_FLOW_PORTS {
                0
            } else {
                n + 1
            };
            let mut port = ((BENCH_FLOW_PORT_MIN + n % BENCH_FLOW_PORTS) as u16).to_be_bytes();
            let k = n / BENCH_FLOW_PORTS;
            let frame = &(*template).frame;
            let mut addr = [frame[SRC_ADDR_LOW_AT as usize].wrapping_add(k as u8)];
            // Adding k to the address's low byte adds k to its last 16-bit word: the
            // one's-complement checksum follows incrementally (the kernel's forwarding path
            // verifies it).
            let old =
                u16::from_be_bytes([frame[IP_CSUM_AT as usize], frame[IP_CSUM_AT as usize + 1]]);
            let sum = u32::from(!old) + k;
            let mut csum = (!(((sum & 0xffff) + (sum >> 16)) as u16)).to_be_bytes();
            for (at, bytes, len) in [
                (SPORT_AT, port.as_mut_ptr(), 2),
                (SRC_ADDR_LOW_AT, addr.as_mut_ptr(), 1),
                (IP_CSUM_AT, csum.as_mut_ptr(), 2),
            ] {
                bpf_xdp_store_bytes(ctx.as_ptr().cast(), at, bytes.cast(), len);
            }
        }
    }
    xdp_action::XDP_TX
}

/// The servers' end of the systems bench: counts and drops UDP to the discard port, so a
/// server costs next to nothing and says what arrived; everything else goes to the stack.
#[xdp]
pub fn bench_sink(ctx: XdpContext) -> u32 {
    let Some(Scratch { pkt, .. }) = scratch() else {
        return xdp_action::XDP_ABORTED;
    };
    if parse(&ctx, pkt).is_ok()
        && !pkt.icmp
        && pkt.key.proto == IPPROTO_UDP
        && pkt.key.dport == BENCH_SINK_PORT.to_be()
    {
        if let Some(count) = BENCH_SINK.get_ptr_mut(0) {
            // SAFETY: a per-CPU map value, written by this CPU only.
            unsafe { *count += 1 };
        }
        return xdp_action::XDP_DROP;
    }
    xdp_action::XDP_PASS
}

/// Floor of the established path: parse, then the two lookups no tracked packet avoids
/// (whose address, which flow), and XDP_TX. No rewrite, no counters, no egress.
#[xdp]
pub fn bench_floor_lookups(ctx: XdpContext) -> u32 {
    let Some(Scratch { pkt, .. }) = scratch() else {
        return xdp_action::XDP_ABORTED;
    };
    if parse(&ctx, pkt).is_err() {
        return xdp_action::XDP_PASS;
    }
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "map keys go by reference: by value they would be copied onto the 512-byte BPF stack"
    )]
    let found =
        LB_ADDRS.get_ptr(&pkt.key.dst).is_some() && LB_CONNTRACK.get_ptr(&pkt.key).is_some();
    if found {
        xdp_action::XDP_TX
    } else {
        xdp_action::XDP_PASS
    }
}

/// Floor of a full-NAT new flow: one insert into each flow table under a key no packet has
/// (the run counter in bytes 4..8 of the source address, which an IPv4 key keeps zero).
#[xdp]
pub fn bench_floor_inserts(ctx: XdpContext) -> u32 {
    floor_insert(&ctx, true)
}

/// Floor of a DSR new flow: one insert into the conntrack table.
#[xdp]
pub fn bench_floor_insert(ctx: XdpContext) -> u32 {
    floor_insert(&ctx, false)
}

#[inline(always)]
fn floor_insert(ctx: &XdpContext, both: bool) -> u32 {
    let Some(Scratch {
        pkt, nat: entry, ..
    }) = scratch()
    else {
        return xdp_action::XDP_ABORTED;
    };
    if parse(ctx, pkt).is_err() {
        return xdp_action::XDP_PASS;
    }
    let Some(counter) = BENCH_FLOOR_COUNTER.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: per-CPU slot of this program run.
    let n = unsafe {
        *counter = (*counter).wrapping_add(1);
        *counter
    };
    pkt.key.src[4..8].copy_from_slice(&n.to_be_bytes());
    zero(entry);
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "map keys go by reference: by value they would be copied onto the 512-byte BPF stack"
    )]
    let inserted = LB_CONNTRACK.insert(&pkt.key, &*entry, 0).is_ok()
        && (!both || LB_SNAT.insert(&pkt.key, &*entry, 0).is_ok());
    if inserted {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_ABORTED
    }
}

/// The balancer's per-CPU scratch slot: the bench programs parse into it as `lb_xdp` does
/// (a `Packet` built on the stack would add its own zeroing).
#[inline(always)]
fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: per-CPU slot, used by this program run only.
    LB_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Write the template's headers over the frame; the template, or `None` if it could not.
#[inline(always)]
fn restore_template(ctx: &XdpContext) -> Option<*mut BenchTemplate> {
    let template = BENCH_TEMPLATE.get_ptr_mut(0)?;
    // SAFETY: map value pointer; the helper bounds-checks the packet side.
    let stored = unsafe {
        bpf_xdp_store_bytes(
            ctx.as_ptr().cast(),
            0,
            (*template).frame.as_mut_ptr().cast(),
            BENCH_RESTORE_LEN,
        )
    };
    (stored == 0).then_some(template)
}
