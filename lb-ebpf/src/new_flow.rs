//! The new-flow stage: a packet of no tracked flow opens one if it is for a frontend (TCP
//! only with a SYN). The flow gets a server (`select`), an SNAT port reserved in the reverse
//! table (full NAT), and a conntrack entry; everything else goes to the kernel. A TCP flow
//! starts in its handshake, not counted as open; a SYN that finds its SNAT port held by a
//! flow that never completed its handshake, idle for `SYN_RECLAIM_NS`, takes the port over,
//! so a flood of spoofed SYNs cannot hold a server's ports for longer than that.
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys and values go by reference: by value they would be copied onto the 512-byte BPF stack"
)]

use aya_ebpf::bindings::BPF_NOEXIST;
use lb_common::{
    flow::never_established,
    hash::flow_hash,
    maps::{
        ENTRY_COUNTED, ENTRY_DSR, ENTRY_REVERSE, ENTRY_STICKY, FLOW_SYN_SEEN, FLOW_UDP,
        FRONTEND_FLAG_DSR, FRONTEND_FLAG_USERSPACE, FlowKey, FrontendInfo, FrontendKey, NatEntry,
        SNAT_PORT_MAX, SNAT_PORT_MIN, SNAT_PORT_RETRIES, SYN_RECLAIM_NS,
    },
    stats::Stat,
    wire::IPPROTO_TCP,
};

use crate::{
    Next,
    maps::{
        LB_BACKENDS, LB_CONNTRACK, LB_FRONTENDS, LB_SCRATCH, LB_SERVERS, LB_SNAT, account,
        active_add, count, frontend_event, server_new_flow,
    },
    parse::{Packet, same_addr},
    select::{choose_server, remember_client},
};

const SNAT_HASH_SEED: u32 = 0x5a7;

/// Open a flow for the packet if it is for a frontend, filling `nat` with its rewrite.
#[inline(never)]
pub fn open(pkt: &Packet, nat: &mut NatEntry, now: u64) -> Next {
    *nat = NatEntry::default();
    let is_tcp = pkt.key.proto == IPPROTO_TCP;
    let fkey = FrontendKey {
        addr: pkt.key.dst,
        port: pkt.key.dport,
        proto: pkt.key.proto,
        _pad: 0,
    };
    let Some(frontend) = LB_FRONTENDS.get_ptr(&fkey) else {
        return Next::pass(Stat::PASS_NOT_VIP);
    };
    // SAFETY: map value pointer from a successful lookup.
    let frontend = unsafe { &*frontend };
    if frontend.flags & FRONTEND_FLAG_USERSPACE != 0 {
        return Next::pass(Stat::PASS_USERSPACE_FRONTEND);
    }
    // Only a SYN may open a TCP flow: a mid-stream packet without state would reach a server
    // that never saw the handshake.
    if is_tcp && !pkt.is_tcp_syn() {
        return Next::drop(Stat::DROP_TCP_NO_FLOW);
    }
    match track(pkt, frontend, now, nat) {
        Ok(()) => {
            count(Stat::FLOW_NEW);
            frontend_event(frontend.frontend_id, |s| s.new_flows += 1);
            server_new_flow(nat.server_id);
            account(nat.frontend_id, nat.server_id, pkt.len, false);
            Next::Forward
        }
        Err(stat) => {
            frontend_event(frontend.frontend_id, |s| match stat {
                Stat::DROP_NO_SERVER | Stat::DROP_ALL_SERVERS_FULL => s.drop_no_server += 1,
                Stat::DROP_SNAT_EXHAUSTED => s.drop_snat_exhausted += 1,
                _ => s.drop_other += 1,
            });
            Next::drop(stat)
        }
    }
}

/// Pick a server, reserve an SNAT port (full NAT) and track the flow. Kept out of line: its
/// locals need not share the caller's stack frame.
#[inline(never)]
fn track(
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
    let is_tcp = pkt.key.proto == IPPROTO_TCP;

    to_server.server_id = server_id;
    to_server.last_seen_ns = now;
    to_server.frontend_id = frontend.frontend_id as u16;
    to_server.backend_id = frontend.backend_id as u16;
    // A TCP flow counts as open once the client completes the handshake (conntrack); a UDP
    // flow from its first packet.
    to_server.state = if is_tcp { FLOW_SYN_SEEN } else { FLOW_UDP };
    to_server.flags =
        if is_tcp { 0 } else { ENTRY_COUNTED } | if sticky { ENTRY_STICKY } else { 0 };
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
    if !is_tcp {
        active_add(server_id, 1);
    }
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
    to_client.flags = ENTRY_REVERSE;
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
            || (pkt.key.proto == IPPROTO_TCP
                && reclaim_half_open(reply_key, now)
                && LB_SNAT
                    .insert(&*reply_key, &*to_client, u64::from(BPF_NOEXIST))
                    .is_ok())
        {
            to_server.sport = reply_key.dport;
            return Ok(());
        }
        attempt += 1;
    }
    Err(Stat::DROP_SNAT_EXHAUSTED)
}

/// Free the SNAT port `reply_key` names if the flow holding it is a TCP flow that never
/// completed its handshake, idle for [`SYN_RECLAIM_NS`]: its conntrack entry and its reverse
/// entry are removed. Only when
/// another SYN finds the port taken, so only under pressure. Deleting the flow's entry
/// decides between CPUs reclaiming the same port: the one whose delete succeeds removes the
/// reverse entry, and the insert that follows (`BPF_NOEXIST`) gives the port to one flow.
#[inline(never)]
fn reclaim_half_open(reply_key: &FlowKey, now: u64) -> bool {
    let Some(scratch) = LB_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    let Some(reverse) = LB_SNAT.get_ptr(reply_key) else {
        // Freed meanwhile: the caller's insert may now succeed.
        return true;
    };
    // SAFETY: per-CPU slot of this program run; `holder_key` is used here only. The key
    // lives there rather than on the stack, which the caller's frames already fill.
    let holder_key = unsafe { &mut (*scratch).holder_key };
    // SAFETY: map value pointer from a successful lookup.
    *holder_key = unsafe { (*reverse).reply_key(reply_key.proto) };
    let Some(holder) = LB_CONNTRACK.get_ptr(&*holder_key) else {
        // An orphan (its flow evicted): the collector removes it after its grace period.
        return false;
    };
    // SAFETY: as above.
    let holder = unsafe { &*holder };
    // The holder must be the flow this port was reserved for (same port, same server): a
    // client whose entry was evicted and re-created may hold another port now.
    if !never_established(holder.state, holder.flags)
        || holder.sport != reply_key.dport
        || !same_addr(&holder.dst, &reply_key.src)
        || now < holder.last_seen_ns.saturating_add(SYN_RECLAIM_NS)
    {
        return false;
    }
    if LB_CONNTRACK.remove(&*holder_key).is_err() {
        return false;
    }
    let _ = LB_SNAT.remove(reply_key);
    count(Stat::FLOW_SYN_RECLAIMED);
    true
}
