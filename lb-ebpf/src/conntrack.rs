//! The tracked-flow stage. A client's packet matches its flow's conntrack entry, a server's
//! reply the reverse (SNAT) entry; either moves the flow's TCP state and, at most once a
//! second, refreshes its timestamp and its client's stickiness. A TCP flow counts as open
//! from the client's ACK that completes the handshake until it closes. A flow whose server
//! went DOWN with `on_down = "reset"` ends here.
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys go by reference: by value they would be copied onto the 512-byte BPF stack"
)]

use lb_common::{
    flow::next_tcp_state,
    maps::{
        ENTRY_COUNTED, ENTRY_DSR, ENTRY_ESTABLISHED, ENTRY_STICKY, FLOW_CLOSING, FLOW_ESTABLISHED,
        FLOW_SYN_SEEN, NatEntry, SERVER_RESET_FLOWS,
    },
    stats::Stat,
    wire::{IPPROTO_TCP, TCP_FIN, TCP_RST, TCP_SYN},
};

use crate::{
    Next,
    maps::{LB_CONNTRACK, LB_SERVERS, LB_SNAT, account, active_add, count},
    mem::copy,
    parse::Packet,
    select::{remember_client, takes_new_flows},
};

/// Refresh a tracked entry's timestamp at most this often, to keep the hot path read-mostly.
const TOUCH_INTERVAL_NS: u64 = 1_000_000_000;

/// The client-side entry of the packet's flow, if it has one: `nat` is then its rewrite.
/// `None`: no live flow, for the new-flow stage.
#[inline(always)]
pub fn from_client(pkt: &Packet, nat: &mut NatEntry, now: u64) -> Option<Next> {
    let entry = LB_CONNTRACK.get_ptr_mut(&pkt.key)?;
    // SAFETY: map value pointer from a successful lookup.
    let entry = unsafe { &mut *entry };
    if server_resets_flows(entry.server_id) {
        return end_flow_of_down_server(pkt, entry);
    }
    if pkt.key.proto == IPPROTO_TCP {
        if pkt.is_tcp_syn() && entry.state == FLOW_CLOSING && !takes_new_flows(entry.server_id) {
            return forget_closed_flow(pkt, entry);
        }
        track_tcp(entry, pkt, false);
    }
    touch(entry, &pkt.key.src, now);
    account(entry.frontend_id, entry.server_id, pkt.len, false);
    copy(nat, entry);
    count(if entry.flags & ENTRY_DSR != 0 {
        Stat::DSR_FORWARD
    } else {
        Stat::NAT_FORWARD
    });
    Some(Next::Forward)
}

/// A server's reply, matched by its reverse entry: `nat` is then the rewrite back to the
/// client. `None`: no flow has this SNAT tuple.
#[inline(always)]
pub fn from_server(pkt: &Packet, nat: &mut NatEntry, now: u64) -> Option<Next> {
    let reverse = LB_SNAT.get_ptr(&pkt.key)?;
    // SAFETY: map value pointer from a successful lookup.
    copy(nat, unsafe { &*reverse });
    // Only a SYN-ACK, FIN or RST from the server moves a TCP flow's state, and the client's
    // own packets keep the flow fresh: other TCP replies skip the client-side entry.
    if pkt.key.proto != IPPROTO_TCP || pkt.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 {
        track_reply(pkt, nat, now);
    }
    account(nat.frontend_id, nat.server_id, pkt.len, true);
    count(Stat::NAT_REPLY);
    Some(Next::Forward)
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

/// Track a TCP packet's effect on the flow's state (kept in the client-side entry). The
/// entry is written only when the state changes.
#[inline(always)]
fn track_tcp(entry: &mut NatEntry, pkt: &Packet, from_server: bool) {
    if !from_server && pkt.is_tcp_syn() && entry.state == FLOW_CLOSING {
        // The client reuses the tuple for a new connection: same server, in its handshake
        // again (open once the client completes it).
        entry.state = FLOW_SYN_SEEN;
        entry.flags &= !ENTRY_ESTABLISHED;
        count(Stat::FLOW_REOPENED);
        return;
    }
    let dsr = entry.flags & ENTRY_DSR != 0;
    let next = next_tcp_state(entry.state, pkt.tcp_flags, from_server, dsr);
    if next == entry.state {
        return;
    }
    if next == FLOW_CLOSING {
        close(entry);
    } else if next == FLOW_ESTABLISHED && entry.flags & ENTRY_COUNTED == 0 {
        // The client completed the handshake: from now on the flow counts as open, and its
        // SNAT port is its own until it expires.
        entry.flags |= ENTRY_COUNTED | ENTRY_ESTABLISHED;
        active_add(entry.server_id, 1);
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

/// Whether the server is DOWN in a backend that resets its flows. One array lookup: the
/// flag lives with the server, so marking a server needs no walk over the flow table.
#[inline(always)]
fn server_resets_flows(server_id: u32) -> bool {
    LB_SERVERS
        .get(server_id)
        .is_some_and(|s| s.flags & SERVER_RESET_FLOWS != 0)
}

/// Forget a flow whose server went DOWN with `on_down = "reset"`: TCP gets a RST back to
/// the client; UDP (no connection to reset) goes on as untracked, to be balanced afresh onto
/// a healthy server.
#[inline(never)]
fn end_flow_of_down_server(pkt: &Packet, entry: &mut NatEntry) -> Option<Next> {
    if entry.flags & ENTRY_COUNTED != 0 {
        active_add(entry.server_id, -1);
    }
    if entry.flags & ENTRY_DSR == 0 {
        let _ = LB_SNAT.remove(&entry.reply_key(pkt.key.proto));
    }
    let _ = LB_CONNTRACK.remove(&pkt.key);
    count(Stat::FLOW_CLOSED);
    if pkt.key.proto == IPPROTO_TCP {
        return Some(Next::Reset);
    }
    count(Stat::FLOW_RESET_REBALANCED);
    None
}

/// A new connection on a closed flow's tuple whose server no longer takes new flows: a
/// drain or a removal must not be undone by a client that reuses its ports. The flow is
/// already closed (not counted), so only its entries go; `None` sends the SYN to the
/// new-flow stage.
#[inline(never)]
fn forget_closed_flow(pkt: &Packet, entry: &NatEntry) -> Option<Next> {
    if entry.flags & ENTRY_DSR == 0 {
        let _ = LB_SNAT.remove(&entry.reply_key(pkt.key.proto));
    }
    let _ = LB_CONNTRACK.remove(&pkt.key);
    count(Stat::FLOW_REOPEN_REBALANCED);
    None
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
