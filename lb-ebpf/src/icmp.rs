//! ICMP errors about NATed flows ("fragmentation needed", "packet too big", "port
//! unreachable"): translated like the flow's own packets, so path-MTU discovery and error
//! reporting work through the balancer.
//!
//! The error quotes a packet of the flow going the other way. With `n` the rewrite this
//! direction's packets get, the outer header becomes `n.src -> n.dst`, and the quoted one
//! becomes what its sender really sent: `n.dst:n.dport -> n.src:n.sport`. Checksums are
//! updated incrementally: the outer IPv4 header, the quoted IPv4 header and transport
//! checksum (when quoted), and the ICMP checksum over all of it (ICMPv6: also the pseudo
//! header).
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys go by reference: by value they would be copied onto the 512-byte BPF stack"
)]

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_ktime_get_coarse_ns, programs::XdpContext,
};
use lb_common::{
    checksum::CsumDelta,
    maps::{ENTRY_DSR, NatEntry},
    stats::Stat,
    wire::{IPPROTO_TCP, TCP_CHECKSUM_OFFSET, UDP_CHECKSUM_OFFSET},
};

use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    egress,
    maps::{LB_CONNTRACK, LB_SNAT, count},
    mem::copy,
    parse::{Packet, ptr_at},
};

#[inline(always)]
pub fn translate(ctx: &XdpContext, pkt: &Packet, nat: &mut NatEntry) -> u32 {
    // SAFETY (both lookups): the value is copied out at once.
    if let Some(entry) = LB_CONNTRACK.get_ptr(&pkt.key) {
        copy(nat, unsafe { &*entry });
    } else if let Some(entry) = LB_SNAT.get_ptr(&pkt.key) {
        copy(nat, unsafe { &*entry });
    } else {
        count(Stat::PASS_ICMP_NO_FLOW);
        return xdp_action::XDP_PASS;
    }
    if nat.flags & ENTRY_DSR != 0 {
        // Nothing was translated, so there is nothing to translate back.
        count(Stat::PASS_ICMP_NO_FLOW);
        return xdp_action::XDP_PASS;
    }
    if rewrite(ctx, pkt, nat).is_none() {
        count(Stat::PASS_TRUNCATED);
        return xdp_action::XDP_PASS;
    }
    count(Stat::ICMP_TRANSLATED);
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    egress::send(ctx, pkt, nat, now)
}

/// Swap `count` words at `field` (inside a header already bounds-checked as a whole) for
/// the words at `new`, accounting the change.
///
/// SAFETY: `field` and `new` must be valid for `count` words.
#[inline(always)]
unsafe fn replace_words(field: *mut u8, new: *const u8, count: usize, delta: &mut CsumDelta) {
    let (field, new) = (field as *mut u32, new as *const u32);
    for i in 0..4 {
        if i < count {
            // SAFETY: per the contract; unaligned-safe accesses.
            unsafe {
                let value = new.add(i).read_unaligned();
                delta.word32(field.add(i).read_unaligned(), value);
                field.add(i).write_unaligned(value);
            }
        }
    }
}

/// Apply `delta` to a checksum field, accounting the field's own change in `outer`.
#[inline(always)]
fn fix(field: &mut [u8; 2], delta: CsumDelta, udp: bool, outer: &mut CsumDelta) {
    let old = *field;
    let new = if udp {
        delta.apply_udp(old)
    } else {
        delta.apply(old)
    };
    outer.word(u16::from_ne_bytes(old), u16::from_ne_bytes(new));
    *field = new;
}

/// An offset read back from the scratch map is an unbounded scalar to the verifier; bound it
/// once, before any arithmetic on it.
#[inline(always)]
fn bounded(offset: usize) -> Option<usize> {
    if offset > 160 { None } else { Some(offset) }
}

/// Checksum changes made by the address rewrite, for the rest of the translation.
#[derive(Clone, Copy)]
struct Deltas {
    /// The outer addresses (ICMPv6's pseudo header).
    outer: CsumDelta,
    /// The quoted addresses (the quoted transport checksum's pseudo header).
    inner_addrs: CsumDelta,
    /// Everything changed so far inside the ICMP payload.
    payload: CsumDelta,
}

/// Rewrite, in two out-of-line halves whose stack frames do not add up.
#[inline(always)]
fn rewrite(ctx: &XdpContext, pkt: &Packet, n: &NatEntry) -> Option<()> {
    let deltas = if pkt.is_v6 {
        rewrite_addresses_v6(ctx, pkt, n)?
    } else {
        rewrite_addresses_v4(ctx, pkt, n)?
    };
    rewrite_ports_and_checksums(ctx, pkt, n, deltas)
}

#[inline(never)]
fn rewrite_addresses_v6(ctx: &XdpContext, pkt: &Packet, n: &NatEntry) -> Option<Deltas> {
    let ip: *mut Ipv6Hdr = ptr_at(ctx, bounded(pkt.l3_offset)?)?;
    let inner: *mut Ipv6Hdr = ptr_at(ctx, bounded(pkt.inner_l3_offset)?)?;
    let (mut outer, mut inner_addrs) = (CsumDelta::new(), CsumDelta::new());
    // SAFETY: headers bounds-checked as a whole by ptr_at; map value fields are 16 bytes.
    unsafe {
        replace_words((*ip).src_addr.as_mut_ptr(), n.src.as_ptr(), 4, &mut outer);
        replace_words((*ip).dst_addr.as_mut_ptr(), n.dst.as_ptr(), 4, &mut outer);
        replace_words(
            (*inner).src_addr.as_mut_ptr(),
            n.dst.as_ptr(),
            4,
            &mut inner_addrs,
        );
        replace_words(
            (*inner).dst_addr.as_mut_ptr(),
            n.src.as_ptr(),
            4,
            &mut inner_addrs,
        );
    }
    Some(Deltas {
        outer,
        inner_addrs,
        payload: inner_addrs,
    })
}

#[inline(never)]
fn rewrite_addresses_v4(ctx: &XdpContext, pkt: &Packet, n: &NatEntry) -> Option<Deltas> {
    let ip: *mut Ipv4Hdr = ptr_at(ctx, bounded(pkt.l3_offset)?)?;
    let inner: *mut Ipv4Hdr = ptr_at(ctx, bounded(pkt.inner_l3_offset)?)?;
    let (mut outer, mut inner_addrs, mut payload) =
        (CsumDelta::new(), CsumDelta::new(), CsumDelta::new());
    // SAFETY: headers bounds-checked as a whole by ptr_at; the IPv4 address is the last
    // word of a 16-byte mapped address.
    unsafe {
        replace_words(
            (*ip).src_addr.as_mut_ptr(),
            n.src.as_ptr().add(12),
            1,
            &mut outer,
        );
        replace_words(
            (*ip).dst_addr.as_mut_ptr(),
            n.dst.as_ptr().add(12),
            1,
            &mut outer,
        );
        let mut unused = CsumDelta::new();
        fix(&mut (*ip).check, outer, false, &mut unused);
        replace_words(
            (*inner).src_addr.as_mut_ptr(),
            n.dst.as_ptr().add(12),
            1,
            &mut inner_addrs,
        );
        replace_words(
            (*inner).dst_addr.as_mut_ptr(),
            n.src.as_ptr().add(12),
            1,
            &mut inner_addrs,
        );
        // The quoted IPv4 header's own checksum is part of the ICMP payload too.
        fix(&mut (*inner).check, inner_addrs, false, &mut payload);
    }
    Some(Deltas {
        outer,
        inner_addrs,
        payload: payload.plus(inner_addrs),
    })
}

#[inline(never)]
fn rewrite_ports_and_checksums(
    ctx: &XdpContext,
    pkt: &Packet,
    n: &NatEntry,
    d: Deltas,
) -> Option<()> {
    let l4 = bounded(pkt.l4_offset)?;
    let inner_l4 = bounded(pkt.inner_l4_offset)?;
    let icmp: *mut [u8; 8] = ptr_at(ctx, l4)?;
    let ports: *mut [u8; 4] = ptr_at(ctx, inner_l4)?;
    let mut payload = d.payload;
    let mut port_delta = CsumDelta::new();
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        let new = [n.dport.to_ne_bytes(), n.sport.to_ne_bytes()];
        port_delta.word(
            u16::from_ne_bytes([(*ports)[0], (*ports)[1]]),
            u16::from_ne_bytes(new[0]),
        );
        port_delta.word(
            u16::from_ne_bytes([(*ports)[2], (*ports)[3]]),
            u16::from_ne_bytes(new[1]),
        );
        *ports = [new[0][0], new[0][1], new[1][0], new[1][1]];
    }
    payload = payload.plus(port_delta);
    // The quoted transport checksum, when the error quotes that far.
    let udp = pkt.key.proto != IPPROTO_TCP;
    let checksum_at = inner_l4
        + if udp {
            UDP_CHECKSUM_OFFSET
        } else {
            TCP_CHECKSUM_OFFSET
        };
    if let Some(field) = ptr_at::<[u8; 2]>(ctx, checksum_at) {
        // SAFETY: bounds checked by ptr_at.
        fix(
            unsafe { &mut *field },
            d.inner_addrs.plus(port_delta),
            udp,
            &mut payload,
        );
    }
    // ICMPv6's checksum also covers a pseudo header with the outer addresses.
    let icmp_delta = if pkt.is_v6 {
        payload.plus(d.outer)
    } else {
        payload
    };
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        let mut field = [(*icmp)[2], (*icmp)[3]];
        let mut unused = CsumDelta::new();
        fix(&mut field, icmp_delta, false, &mut unused);
        (*icmp)[2] = field[0];
        (*icmp)[3] = field[1];
    }
    Some(())
}
