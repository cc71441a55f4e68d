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
    flow::next_tcp_state,
    hash::flow_hash,
    maps::{
        ENTRY_COUNTED, ENTRY_DSR, ENTRY_STICKY, FLOW_CLOSING, FLOW_SYN_SEEN, FLOW_UDP,
        FRONTEND_FLAG_DSR, FRONTEND_FLAG_USERSPACE, FrontendInfo, FrontendKey, NatEntry,
        SERVER_RESET_FLOWS, SNAT_PORT_MAX, SNAT_PORT_MIN, SNAT_PORT_RETRIES, StickyEntry,
        StickyKey,
    },
    stats::Stat,
    wire::IPPROTO_TCP,
};
use network_types::{
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::{
    egress,
    maps::{
        LB_BACKENDS, LB_CONNTRACK, LB_FRONTENDS, LB_SCRATCH, LB_SERVERS, LB_SNAT, LB_STICKY,
        account, active_add, count, frontend_event, server_new_flow,
    },
    parse::{Packet, Scratch, parse, ptr_at},
    select::choose_server,
};

/// Refresh a tracked entry's timestamp at most this often, to keep the hot path read-mostly.
const TOUCH_INTERVAL_NS: u64 = 1_000_000_000;
const SNAT_HASH_SEED: u32 = 0x5a7;
/// Not an XDP action: `choose_rewrite` asks `process` to answer the packet with a RST.
const ACTION_SEND_RST: u32 = u32::MAX;

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
    // The parsed packet and its rewrite live in a per-CPU scratch slot: on the stack they
    // would push the deepest call chain past the verifier's 512 bytes.
    let Some(scratch) = LB_SCRATCH.get_ptr_mut(0) else {
        return pass(Stat::DROP_MAP_ERROR);
    };
    // SAFETY: per-CPU slot, used by this program run only.
    let Scratch { pkt, nat, .. } = unsafe { &mut *scratch };
    if let Err(stat) = parse(ctx, pkt) {
        return pass(stat);
    }
    if pkt.icmp {
        return crate::icmp::translate(ctx, pkt, nat);
    }
    // One rewrite target, chosen by whichever path matches; a single forward() call keeps the
    // rewrite and FIB code in one place.
    *nat = NatEntry::default();
    if let Err(action) = choose_rewrite(pkt, nat) {
        if action == ACTION_SEND_RST {
            return crate::reset::send_rst(ctx, pkt);
        }
        return action;
    }
    if nat.flags & ENTRY_DSR != 0 {
        // Only the destination MAC changes: the FIB lookup towards the server gives it.
        return egress::send(ctx, pkt, nat);
    }
    forward(ctx, pkt, nat)
}

/// A flow leaves the open state: it no longer counts in its server's active flows.
#[inline(always)]
fn close(entry: &mut NatEntry) {
    if entry.flags & ENTRY_COUNTED != 0 {
        entry.flags &= !ENTRY_COUNTED;
        active_add(entry.server_id, -1);
    }
    count(Stat::FLOW_CLOSED);
}

/// Track a TCP packet's effect on the flow's state (kept in the client-side entry).
#[inline(always)]
fn track_tcp(entry: &mut NatEntry, pkt: &Packet, from_server: bool) {
    if !from_server && pkt.is_tcp_syn() && entry.state == FLOW_CLOSING {
        // The client reuses the tuple for a new connection: same server, open again.
        entry.state = FLOW_SYN_SEEN;
        if entry.flags & ENTRY_COUNTED == 0 {
            entry.flags |= ENTRY_COUNTED;
            active_add(entry.server_id, 1);
        }
        count(Stat::FLOW_REOPENED);
        return;
    }
    let next = next_tcp_state(entry.state, pkt.tcp_flags, from_server);
    if next == FLOW_CLOSING && entry.state != FLOW_CLOSING {
        close(entry);
    }
    entry.state = next;
}

/// Refresh a client-side entry's timestamp (and its client's stickiness) when stale.
#[inline(always)]
fn touch(entry: &mut NatEntry, client: &[u8; 16], now: u64) {
    if now.wrapping_sub(entry.last_seen_ns) > TOUCH_INTERVAL_NS {
        entry.last_seen_ns = now;
        if entry.flags & ENTRY_STICKY != 0 {
            remember_client(u32::from(entry.backend_id), client, entry.server_id, now);
        }
    }
}

/// Record (or refresh) which server a client sticks to. Out of line: the key and value
/// need not sit in the caller's stack frame.
#[inline(never)]
fn remember_client(backend_id: u32, client: &[u8; 16], server_id: u32, now: u64) {
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

/// Fill `nat` with the rewrite for this packet, or return the final action.
#[inline(always)]
fn choose_rewrite(pkt: &Packet, nat: &mut NatEntry) -> Result<(), u32> {
    let now = unsafe { bpf_ktime_get_ns() };
    let is_tcp = pkt.key.proto == IPPROTO_TCP;
    if let Some(entry) = LB_CONNTRACK.get_ptr_mut(&pkt.key) {
        // SAFETY: map value pointer from a successful lookup.
        let entry = unsafe { &mut *entry };
        if server_resets_flows(entry.server_id) {
            return end_flow_of_down_server(pkt, entry, nat, now);
        }
        if is_tcp {
            track_tcp(entry, pkt, false);
        }
        touch(entry, &pkt.key.src, now);
        account(entry.frontend_id, entry.server_id, pkt.len, false);
        *nat = *entry;
        count(if entry.flags & ENTRY_DSR != 0 {
            Stat::DSR_FORWARD
        } else {
            Stat::NAT_FORWARD
        });
        return Ok(());
    }
    if let Some(reverse) = LB_SNAT.get_ptr(&pkt.key) {
        // SAFETY: as above.
        *nat = unsafe { *reverse };
        track_reply(pkt, nat, now);
        account(nat.frontend_id, nat.server_id, pkt.len, true);
        count(Stat::NAT_REPLY);
        return Ok(());
    }
    open_flow(pkt, nat, now)
}

/// Whether the server is DOWN in a backend that resets its flows. One array lookup: the
/// flag lives with the server, so marking a server needs no walk over the flow table.
#[inline(always)]
fn server_resets_flows(server_id: u32) -> bool {
    LB_SERVERS
        .get(server_id)
        .is_some_and(|s| s.flags & SERVER_RESET_FLOWS != 0)
}

/// Forget a flow whose server went DOWN with `on_down = "reset"`: TCP gets a RST back to
/// the client; UDP (no connection to reset) is balanced afresh onto a healthy server.
#[inline(never)]
fn end_flow_of_down_server(
    pkt: &Packet,
    entry: &mut NatEntry,
    nat: &mut NatEntry,
    now: u64,
) -> Result<(), u32> {
    if entry.flags & ENTRY_COUNTED != 0 {
        active_add(entry.server_id, -1);
    }
    if entry.flags & ENTRY_DSR == 0 {
        let _ = LB_SNAT.remove(&entry.reply_key(pkt.key.proto));
    }
    let _ = LB_CONNTRACK.remove(&pkt.key);
    count(Stat::FLOW_CLOSED);
    if pkt.key.proto == IPPROTO_TCP {
        return Err(ACTION_SEND_RST);
    }
    count(Stat::FLOW_RESET_REBALANCED);
    open_flow(pkt, nat, now)
}

/// A server's reply moves the flow's state, which the client-side entry holds; its key is
/// the reverse rewrite's reply key.
#[inline(never)]
fn track_reply(pkt: &Packet, reverse: &NatEntry, now: u64) {
    let client_key = reverse.reply_key(pkt.key.proto);
    if let Some(entry) = LB_CONNTRACK.get_ptr_mut(&client_key) {
        // SAFETY: map value pointer from a successful lookup.
        let entry = unsafe { &mut *entry };
        if pkt.key.proto == IPPROTO_TCP {
            track_tcp(entry, pkt, true);
        }
        touch(entry, &client_key.src, now);
    }
}

/// A packet of no tracked flow: a new flow if it is for a frontend, else the kernel's.
#[inline(never)]
fn open_flow(pkt: &Packet, nat: &mut NatEntry, now: u64) -> Result<(), u32> {
    let is_tcp = pkt.key.proto == IPPROTO_TCP;
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
    if is_tcp && !pkt.is_tcp_syn() {
        return Err(drop(Stat::DROP_TCP_NO_FLOW));
    }
    match new_flow(pkt, frontend, now, nat) {
        Ok(()) => {
            count(Stat::FLOW_NEW);
            frontend_event(frontend.frontend_id, |s| s.new_flows += 1);
            server_new_flow(nat.server_id);
            account(nat.frontend_id, nat.server_id, pkt.len, false);
            Ok(())
        }
        Err(stat) => {
            frontend_event(frontend.frontend_id, |s| match stat {
                Stat::DROP_NO_SERVER | Stat::DROP_ALL_SERVERS_FULL => s.drop_no_server += 1,
                Stat::DROP_SNAT_EXHAUSTED => s.drop_snat_exhausted += 1,
                _ => s.drop_other += 1,
            });
            Err(drop(stat))
        }
    }
}

/// Pick a server, reserve an SNAT port (full NAT) and track the flow. Kept out of line: its
/// locals need not share the caller's stack frame.
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
    let server_id = choose_server(pkt, frontend.backend_id, backend, now)?;
    let server = LB_SERVERS.get(server_id).ok_or(Stat::DROP_MAP_ERROR)?;
    let sticky = backend.sticky_ttl_s != 0;

    to_server.server_id = server_id;
    to_server.last_seen_ns = now;
    to_server.frontend_id = frontend.frontend_id as u16;
    to_server.backend_id = frontend.backend_id as u16;
    to_server.state = if pkt.key.proto == IPPROTO_TCP {
        FLOW_SYN_SEEN
    } else {
        FLOW_UDP
    };
    to_server.flags = ENTRY_COUNTED | if sticky { ENTRY_STICKY } else { 0 };
    if frontend.flags & FRONTEND_FLAG_DSR != 0 {
        // Addresses and ports stay; the server holds the VIP and answers the client directly.
        to_server.flags |= ENTRY_DSR;
        to_server.src = pkt.key.src;
        to_server.dst = server.addr;
        to_server.sport = pkt.key.sport;
        to_server.dport = pkt.key.dport;
    } else {
        to_server.src = frontend.snat_addr;
        to_server.dst = server.addr;
        to_server.dport = server.port;
        reserve_snat_port(pkt, to_server, now)?;
    }
    if LB_CONNTRACK.insert(&pkt.key, &*to_server, 0).is_err() {
        if to_server.flags & ENTRY_DSR == 0
            && let Some(scratch) = LB_SCRATCH.get_ptr(0)
        {
            // SAFETY: per-CPU slot; reverse_key still holds the reserved tuple.
            let _ = LB_SNAT.remove(unsafe { &(*scratch).reverse_key });
        }
        return Err(Stat::DROP_MAP_ERROR);
    }
    active_add(server_id, 1);
    if sticky {
        remember_client(frontend.backend_id, &pkt.key.src, server_id, now);
    }
    Ok(())
}

/// Reserve an SNAT port by inserting the reverse entry only if its tuple is free; sets
/// `to_server.sport`. The reverse entry and key are built in the scratch slot, off the stack.
#[inline(always)]
fn reserve_snat_port(pkt: &Packet, to_server: &mut NatEntry, now: u64) -> Result<(), Stat> {
    let scratch = LB_SCRATCH.get_ptr_mut(0).ok_or(Stat::DROP_MAP_ERROR)?;
    // SAFETY: per-CPU slot of this program run; `reverse*` are not used elsewhere.
    let (to_client, reply_key) = unsafe { (&mut (*scratch).reverse, &mut (*scratch).reverse_key) };
    to_client.src = pkt.key.dst;
    to_client.dst = pkt.key.src;
    to_client.sport = pkt.key.dport;
    to_client.dport = pkt.key.sport;
    to_client.server_id = to_server.server_id;
    to_client.last_seen_ns = now;
    to_client.frontend_id = to_server.frontend_id;
    to_client.backend_id = to_server.backend_id;
    to_client.state = 0;
    to_client.flags = lb_common::maps::ENTRY_REVERSE;
    to_client._pad = 0;
    *reply_key = to_server.reply_key(pkt.key.proto);
    let hash = flow_hash(&pkt.key, SNAT_HASH_SEED);
    let range = u32::from(SNAT_PORT_MAX - SNAT_PORT_MIN) + 1;
    let mut attempt = 0;
    while attempt < SNAT_PORT_RETRIES {
        let port =
            u32::from(SNAT_PORT_MIN) + hash.rotate_left(attempt * 5).wrapping_add(attempt) % range;
        reply_key.dport = (port as u16).to_be();
        if LB_SNAT
            .insert(&*reply_key, &*to_client, u64::from(BPF_NOEXIST))
            .is_ok()
        {
            to_server.sport = reply_key.dport;
            return Ok(());
        }
        attempt += 1;
    }
    Err(Stat::DROP_SNAT_EXHAUSTED)
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
    if pkt.key.proto == IPPROTO_TCP {
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
