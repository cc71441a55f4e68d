//! Connection tracking and full NAT: a new flow picks its server and an SNAT port; tracked
//! flows and server replies are rewritten in place with incremental checksum updates.
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys and values go by reference: by value they would be copied onto the 512-byte BPF stack"
)]

use aya_ebpf::{
    bindings::{BPF_NOEXIST, xdp_action},
    helpers::bpf_ktime_get_ns,
    programs::XdpContext,
};
use lb_common::{
    checksum::CsumDelta,
    hash::flow_hash,
    maps::{
        FRONTEND_FLAG_USERSPACE, FrontendInfo, FrontendKey, NatEntry, PROTO_TCP, RING_STRIDE,
        SNAT_PORT_MAX, SNAT_PORT_MIN, SNAT_PORT_RETRIES,
    },
    stats::Stat,
};
use network_types::{
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::{
    egress,
    maps::{LB_BACKENDS, LB_CONNTRACK, LB_FRONTENDS, LB_RING, LB_SERVERS, LB_SNAT, count},
    parse::{Packet, parse, ptr_at},
};

/// Refresh a tracked entry's timestamp at most this often, to keep the hot path read-mostly.
const TOUCH_INTERVAL_NS: u64 = 1_000_000_000;
const FLOW_HASH_SEED: u32 = 0;

#[inline(always)]
fn pass(stat: Stat) -> u32 {
    count(stat);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn drop(stat: Stat) -> u32 {
    count(stat);
    xdp_action::XDP_DROP
}

#[inline(always)]
pub fn process(ctx: &XdpContext) -> u32 {
    let pkt = match parse(ctx) {
        Ok(p) => p,
        Err(stat) => return pass(stat),
    };
    // One rewrite target, chosen by whichever path matches; a single forward() call keeps the
    // rewrite and FIB code (and their stack) in one place.
    let mut nat = NatEntry::default();
    if let Err(action) = choose_rewrite(&pkt, &mut nat) {
        return action;
    }
    forward(ctx, &pkt, &nat)
}

/// Fill `nat` with the rewrite for this packet, or return the final action.
#[inline(always)]
fn choose_rewrite(pkt: &Packet, nat: &mut NatEntry) -> Result<(), u32> {
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(entry) = LB_CONNTRACK.get_ptr_mut(&pkt.key) {
        // SAFETY: map value pointer from a successful lookup.
        unsafe { touch(entry, now, nat) };
        count(Stat::NAT_FORWARD);
        return Ok(());
    }
    if let Some(entry) = LB_SNAT.get_ptr_mut(&pkt.key) {
        // SAFETY: as above.
        unsafe { touch(entry, now, nat) };
        count(Stat::NAT_REPLY);
        return Ok(());
    }
    let fkey = FrontendKey {
        addr: pkt.key.dst,
        port: pkt.key.dport,
        proto: pkt.key.proto,
        _pad: 0,
    };
    let Some(frontend) = LB_FRONTENDS.get_ptr(&fkey) else {
        return Err(pass(Stat::PASS_NOT_VIP));
    };
    // SAFETY: map value pointer from a successful lookup.
    let frontend = unsafe { &*frontend };
    if frontend.flags & FRONTEND_FLAG_USERSPACE != 0 {
        return Err(pass(Stat::PASS_USERSPACE_FRONTEND));
    }
    // Only a SYN may open a TCP flow: a mid-stream packet without state would reach a server
    // that never saw the handshake.
    if pkt.key.proto == PROTO_TCP && !pkt.is_tcp_syn() {
        return Err(drop(Stat::DROP_TCP_NO_FLOW));
    }
    match new_flow(pkt, frontend, now, nat) {
        Ok(()) => {
            count(Stat::FLOW_NEW);
            Ok(())
        }
        Err(stat) => Err(drop(stat)),
    }
}

/// Pick a server from the frontend's backend table, reserve an SNAT port and track the flow
/// in both directions. Kept out of line: its locals need not share the caller's stack frame.
#[inline(never)]
fn new_flow(
    pkt: &Packet,
    frontend: &FrontendInfo,
    now: u64,
    to_server: &mut NatEntry,
) -> Result<(), Stat> {
    let backend = LB_BACKENDS
        .get(frontend.backend_id)
        .ok_or(Stat::DROP_MAP_ERROR)?;
    if backend.ring_size == 0 {
        return Err(Stat::DROP_NO_SERVER);
    }
    let hash = flow_hash(&pkt.key, FLOW_HASH_SEED);
    let slot = frontend.backend_id * RING_STRIDE + hash % backend.ring_size;
    let server_id = *LB_RING.get(slot).ok_or(Stat::DROP_MAP_ERROR)?;
    let server = LB_SERVERS.get(server_id).ok_or(Stat::DROP_MAP_ERROR)?;

    to_server.src = frontend.snat_addr;
    to_server.dst = server.addr;
    to_server.dport = server.port;
    to_server.server_id = server_id;
    to_server.last_seen_ns = now;
    let to_client = NatEntry {
        src: pkt.key.dst,
        dst: pkt.key.src,
        sport: pkt.key.dport,
        dport: pkt.key.sport,
        server_id,
        last_seen_ns: now,
    };
    // Reserve an SNAT port by inserting the reverse entry only if that tuple is free. The key
    // is built once and only its port changes per attempt.
    let range = u32::from(SNAT_PORT_MAX - SNAT_PORT_MIN) + 1;
    let mut reply_key = to_server.reply_key(pkt.key.proto);
    let mut reserved = false;
    let mut attempt = 0;
    while attempt < SNAT_PORT_RETRIES {
        let port =
            u32::from(SNAT_PORT_MIN) + hash.rotate_left(attempt * 5).wrapping_add(attempt) % range;
        reply_key.dport = (port as u16).to_be();
        if LB_SNAT
            .insert(&reply_key, &to_client, u64::from(BPF_NOEXIST))
            .is_ok()
        {
            reserved = true;
            break;
        }
        attempt += 1;
    }
    if !reserved {
        return Err(Stat::DROP_SNAT_EXHAUSTED);
    }
    to_server.sport = reply_key.dport;
    if LB_CONNTRACK.insert(&pkt.key, &*to_server, 0).is_err() {
        let _ = LB_SNAT.remove(&reply_key);
        return Err(Stat::DROP_MAP_ERROR);
    }
    Ok(())
}

/// Copy a tracked entry into `out`, refreshing its timestamp when it is stale.
#[inline(always)]
unsafe fn touch(entry: *mut NatEntry, now: u64, out: &mut NatEntry) {
    unsafe {
        if now.wrapping_sub((*entry).last_seen_ns) > TOUCH_INTERVAL_NS {
            (*entry).last_seen_ns = now;
        }
        *out = *entry;
    }
}

/// Rewrite, then send. Each step is its own subprogram so their stack frames do not add up.
#[inline(always)]
fn forward(ctx: &XdpContext, pkt: &Packet, nat: &NatEntry) -> u32 {
    if rewrite(ctx, pkt, nat).is_none() {
        return pass(Stat::PASS_TRUNCATED);
    }
    egress::send(ctx, pkt, nat)
}

/// Rewrite addresses and ports to `nat`'s, updating the IPv4 and L4 checksums incrementally.
/// Addresses move as 32-bit words: byte-wise copies cost the verifier's 512-byte stack.
#[inline(never)]
fn rewrite(ctx: &XdpContext, pkt: &Packet, nat: &NatEntry) -> Option<()> {
    let mut addr_delta = CsumDelta::new();
    let new_src = nat.src.as_ptr() as *const u32;
    let new_dst = nat.dst.as_ptr() as *const u32;
    // SAFETY (all blocks below): every pointer is bounds-checked by ptr_at for the whole
    // header it points into; word accesses are unaligned-safe.
    if pkt.is_v6 {
        let ip: *mut Ipv6Hdr = ptr_at(ctx, pkt.l3_offset)?;
        let src = unsafe { (*ip).src_addr.as_mut_ptr() } as *mut u32;
        let dst = unsafe { (*ip).dst_addr.as_mut_ptr() } as *mut u32;
        for i in 0..4 {
            unsafe {
                let (n_src, n_dst) = (
                    new_src.add(i).read_unaligned(),
                    new_dst.add(i).read_unaligned(),
                );
                addr_delta.word32(src.add(i).read_unaligned(), n_src);
                addr_delta.word32(dst.add(i).read_unaligned(), n_dst);
                src.add(i).write_unaligned(n_src);
                dst.add(i).write_unaligned(n_dst);
            }
        }
    } else {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, pkt.l3_offset)?;
        unsafe {
            let src = (*ip).src_addr.as_mut_ptr() as *mut u32;
            let dst = (*ip).dst_addr.as_mut_ptr() as *mut u32;
            // The IPv4 address is the last word of the mapped form.
            let (n_src, n_dst) = (
                new_src.add(3).read_unaligned(),
                new_dst.add(3).read_unaligned(),
            );
            addr_delta.word32(src.read_unaligned(), n_src);
            addr_delta.word32(dst.read_unaligned(), n_dst);
            src.write_unaligned(n_src);
            dst.write_unaligned(n_dst);
            (*ip).check = addr_delta.apply((*ip).check);
        }
    }
    let mut l4_delta = addr_delta;
    l4_delta.word(pkt.key.sport, nat.sport);
    l4_delta.word(pkt.key.dport, nat.dport);
    if pkt.key.proto == PROTO_TCP {
        let tcp: *mut TcpHdr = ptr_at(ctx, pkt.l4_offset)?;
        unsafe {
            (*tcp).source = nat.sport.to_ne_bytes();
            (*tcp).dest = nat.dport.to_ne_bytes();
            (*tcp).check = l4_delta.apply((*tcp).check);
        }
    } else {
        let udp: *mut UdpHdr = ptr_at(ctx, pkt.l4_offset)?;
        unsafe {
            (*udp).src = nat.sport.to_ne_bytes();
            (*udp).dst = nat.dport.to_ne_bytes();
            (*udp).check = l4_delta.apply_udp((*udp).check);
        }
    }
    Some(())
}
