//! The new-flow stage: a packet of no tracked flow opens one if it is for a frontend (TCP
//! only with a SYN). The flow gets a server (`select`), an SNAT address and port reserved in
//! the reverse table (full NAT, from the frontend's addresses and port range), and a
//! conntrack entry; everything else goes to the kernel. A TCP flow starts in its handshake,
//! not counted as open; a SYN that finds its SNAT port held by a flow that never completed
//! its handshake, idle for `SYN_RECLAIM_NS`, takes the port over, so a flood of spoofed SYNs
//! cannot hold a server's ports for longer than that.
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys and values go by reference: by value they would be copied onto the 512-byte BPF stack"
)]

use aya_ebpf::bindings::BPF_NOEXIST;
use lb_common::{
    flow::never_established,
    hash::flow_hash,
    maps::{
        ENTRY_COUNTED, ENTRY_DSR, ENTRY_ESTABLISHED, ENTRY_REVERSE, ENTRY_STICKY, FLOW_ESTABLISHED,
        FLOW_SYN_SEEN, FLOW_UDP, FRONTEND_FLAG_DSR, FRONTEND_FLAG_STATELESS_FALLBACK,
        FRONTEND_FLAG_USERSPACE, FlowKey, FrontendInfo, FrontendKey, MAX_SNAT_ADDRS, NatEntry,
        SNAT_PORT_RETRIES, SYN_RECLAIM_NS,
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
    mem::{copy, zero},
    parse::{Packet, same_addr},
    select::{choose_server, remember_client},
};

const SNAT_HASH_SEED: u32 = 0x5a7;

/// Open a flow for the packet if it is for a frontend, filling `nat` with its rewrite.
#[inline(never)]
pub fn open(pkt: &Packet, nat: &mut NatEntry, now: u64) -> Next {
    zero(nat);
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
    // that never saw the handshake. With the stateless fallback (DSR, maglev) the table
    // gives the server the flow's SYN got on whichever node saw it, so it goes on there.
    let mid_stream = is_tcp && !pkt.is_tcp_syn();
    if mid_stream && frontend.flags & FRONTEND_FLAG_STATELESS_FALLBACK == 0 {
        return Next::drop(Stat::DROP_TCP_NO_FLOW);
    }
    match track(pkt, frontend, now, nat) {
        Ok(()) => {
            count(if mid_stream {
                Stat::FLOW_STATELESS_FALLBACK
            } else {
                Stat::FLOW_NEW
            });
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
    // Only the stateless fallback lets a mid-stream packet here (`open`): its handshake is
    // long done. Derived here, not passed: BPF calls take five arguments at most.
    let established = is_tcp && !pkt.is_tcp_syn();

    to_server.server_id = server_id;
    to_server.last_seen_ns = now;
    to_server.frontend_id = frontend.frontend_id as u16;
    to_server.backend_id = frontend.backend_id as u16;
    // A TCP flow counts as open once the client completes the handshake (conntrack); a UDP
    // flow from its first packet.
    to_server.state = match (is_tcp, established) {
        (false, _) => FLOW_UDP,
        (true, false) => FLOW_SYN_SEEN,
        (true, true) => FLOW_ESTABLISHED,
    };
    let counted = !is_tcp || established;
    to_server.flags = if counted { ENTRY_COUNTED } else { 0 }
        | if established { ENTRY_ESTABLISHED } else { 0 }
        | if sticky { ENTRY_STICKY } else { 0 };
    if frontend.flags & FRONTEND_FLAG_DSR != 0 {
        // Addresses and ports stay; the server holds the VIP and answers the client directly.
        to_server.flags |= ENTRY_DSR;
        copy(&mut to_server.src, &pkt.key.src);
        copy(&mut to_server.dst, &server.addr);
        to_server.sport = pkt.key.sport;
        to_server.dport = pkt.key.dport;
    } else {
        copy(&mut to_server.dst, &server.addr);
        to_server.dport = server.port;
        reserve_snat_port(pkt, frontend, to_server, now)?;
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
    if counted {
        active_add(server_id, 1);
    }
    if sticky {
        remember_client(frontend.backend_id, &pkt.key.src, server_id, now);
    }
    Ok(())
}

/// Reserve an SNAT address and port by inserting the reverse entry only if its tuple is
/// free; sets `to_server.src` and `to_server.sport`. The pairs tried are drawn from the flow
/// hash over the frontend's whole space (its addresses x its port range), so flows spread
/// over every address, and one address's ports towards a server being taken does not stop
/// a flow from finding another's. The reverse entry and key are built in the scratch slot,
/// off the stack.
#[inline(always)]
fn reserve_snat_port(
    pkt: &Packet,
    frontend: &FrontendInfo,
    to_server: &mut NatEntry,
    now: u64,
) -> Result<(), Stat> {
    if frontend.snat_count == 0 {
        return Err(Stat::DROP_SNAT_EXHAUSTED);
    }
    let scratch = LB_SCRATCH.get_ptr_mut(0).ok_or(Stat::DROP_MAP_ERROR)?;
    // SAFETY: per-CPU slot of this program run; `reverse*` are not used elsewhere.
    let (to_client, reply_key) = unsafe { (&mut (*scratch).reverse, &mut (*scratch).reverse_key) };
    copy(&mut to_client.src, &pkt.key.dst);
    copy(&mut to_client.dst, &pkt.key.src);
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
    // Both are bounded so that the verifier (and the compiler) see no zero divisor and no
    // index past the array: 1..=65536 ports, 1..=MAX_SNAT_ADDRS addresses (validation keeps
    // the count there and the range the right way round).
    let min = u32::from(frontend.snat_port_min);
    let ports = (u32::from(frontend.snat_port_max).wrapping_sub(min) & 0xffff) + 1;
    let addrs = (frontend.snat_count.wrapping_sub(1) & (MAX_SNAT_ADDRS as u32 - 1)) + 1;
    let space = ports * addrs;
    let mut attempt = 0;
    while attempt < SNAT_PORT_RETRIES {
        let slot = hash.rotate_left(attempt * 5).wrapping_add(attempt) % space;
        let addr = (slot / ports) as usize & (MAX_SNAT_ADDRS - 1);
        copy(&mut reply_key.dst, &frontend.snat_addrs[addr]);
        reply_key.dport = ((min + slot % ports) as u16).to_be();
        if LB_SNAT
            .insert(&*reply_key, &*to_client, u64::from(BPF_NOEXIST))
            .is_ok()
            || (pkt.key.proto == IPPROTO_TCP
                && reclaim_half_open(reply_key, now)
                && LB_SNAT
                    .insert(&*reply_key, &*to_client, u64::from(BPF_NOEXIST))
                    .is_ok())
        {
            copy(&mut to_server.src, &reply_key.dst);
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
    // The holder must be the flow this port was reserved for (same SNAT address and port,
    // same server): a client whose entry was evicted and re-created may hold another pair
    // now.
    if !never_established(holder.state, holder.flags)
        || holder.sport != reply_key.dport
        || !same_addr(&holder.src, &reply_key.dst)
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
