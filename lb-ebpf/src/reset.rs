//! Answer a client's TCP segment with a RST, in place: the flow's server is DOWN and its
//! backend says `on_down = "reset"`, so the client learns at once instead of retrying into
//! silence. The frame is turned around (MACs, addresses, ports swapped), cut to a bare
//! 20-byte TCP header and sent back out of the interface it came in on.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_tail, programs::XdpContext};
use lb_common::{
    checksum::CsumDelta,
    stats::Stat,
    wire::{
        IPPROTO_TCP, TCP_ACK, TCP_CHECKSUM_OFFSET, TCP_FIN, TCP_FLAGS_OFFSET, TCP_HLEN, TCP_RST,
        TCP_SYN,
    },
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    maps::count,
    parse::{Packet, ptr_at},
};

const TTL: u8 = 64;

#[inline(never)]
pub fn send_rst(ctx: &XdpContext, pkt: &Packet) -> u32 {
    if pkt.tcp_flags & TCP_RST != 0 {
        // Never answer a reset with a reset.
        return xdp_action::XDP_DROP;
    }
    if turn_around(ctx, pkt).is_none() {
        count(Stat::PASS_TRUNCATED);
        return xdp_action::XDP_DROP;
    }
    count(Stat::FLOW_RESET_SENT);
    xdp_action::XDP_TX
}

#[inline(always)]
fn swap_words<const N: usize>(a: *mut u32, b: *mut u32) {
    // SAFETY: callers pass pointers to N bounds-checked words each.
    unsafe {
        for i in 0..N {
            let t = a.add(i).read_unaligned();
            a.add(i).write_unaligned(b.add(i).read_unaligned());
            b.add(i).write_unaligned(t);
        }
    }
}

fn turn_around(ctx: &XdpContext, pkt: &Packet) -> Option<()> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY (all blocks): every pointer comes from ptr_at, bounds-checked for its whole
    // header; unaligned accesses only.
    unsafe {
        let macs = eth as *mut [u8; 6];
        let dst = macs.read_unaligned();
        macs.write_unaligned(macs.add(1).read_unaligned());
        macs.add(1).write_unaligned(dst);
    }
    let tcp: *mut [u8; TCP_HLEN] = ptr_at(ctx, pkt.l4_offset)?;
    let tcp_bytes = tcp as *mut u8;
    let (seq, ack, flags, header_len) = unsafe {
        (
            u32::from_be((tcp_bytes.add(4) as *const u32).read_unaligned()),
            u32::from_be((tcp_bytes.add(8) as *const u32).read_unaligned()),
            *tcp_bytes.add(TCP_FLAGS_OFFSET),
            u32::from(*tcp_bytes.add(12) >> 4) * 4,
        )
    };
    let mut sum = CsumDelta::new();
    let segment_len = if pkt.is_v6 {
        let ip: *mut Ipv6Hdr = ptr_at(ctx, pkt.l3_offset)?;
        unsafe {
            let payload = u32::from(u16::from_be_bytes((*ip).payload_len));
            (*ip).payload_len = (TCP_HLEN as u16).to_be_bytes();
            (*ip).hop_limit = TTL;
            let src = (*ip).src_addr.as_mut_ptr() as *mut u32;
            let dst = (*ip).dst_addr.as_mut_ptr() as *mut u32;
            swap_words::<4>(src, dst);
            for i in 0..4 {
                sum.add32(src.add(i).read_unaligned());
                sum.add32(dst.add(i).read_unaligned());
            }
            payload
        }
    } else {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, pkt.l3_offset)?;
        unsafe {
            let total = u32::from(u16::from_be_bytes((*ip).tot_len));
            let ip_header = (pkt.l4_offset - pkt.l3_offset) as u16;
            let mut ip_delta = CsumDelta::new();
            let new_total = (ip_header + TCP_HLEN as u16).to_be_bytes();
            ip_delta.word(
                u16::from_ne_bytes((*ip).tot_len),
                u16::from_ne_bytes(new_total),
            );
            (*ip).tot_len = new_total;
            // TTL shares a word with the protocol, which stays TCP.
            ip_delta.word(
                u16::from_ne_bytes([(*ip).ttl, (*ip).proto]),
                u16::from_ne_bytes([TTL, (*ip).proto]),
            );
            (*ip).ttl = TTL;
            // Swapping the addresses leaves the header's sum as it was.
            let src = (*ip).src_addr.as_mut_ptr() as *mut u32;
            let dst = (*ip).dst_addr.as_mut_ptr() as *mut u32;
            swap_words::<1>(src, dst);
            (*ip).check = ip_delta.apply((*ip).check);
            sum.add32(src.read_unaligned());
            sum.add32(dst.read_unaligned());
            total.saturating_sub(u32::from(ip_header))
        }
    };
    // RFC 9293 3.10.7.1: a segment carrying an ACK gets a RST with that sequence number;
    // one without gets a RST|ACK acknowledging everything it carried.
    let data_len = segment_len.saturating_sub(header_len);
    let (rst_seq, rst_ack, rst_flags) = if flags & TCP_ACK != 0 {
        (ack, 0, TCP_RST)
    } else {
        let consumed = data_len + u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0);
        (0, seq.wrapping_add(consumed), TCP_RST | TCP_ACK)
    };
    unsafe {
        let ports = tcp_bytes as *mut u16;
        let sport = ports.read_unaligned();
        ports.write_unaligned(ports.add(1).read_unaligned());
        ports.add(1).write_unaligned(sport);
        (tcp_bytes.add(4) as *mut u32).write_unaligned(rst_seq.to_be());
        (tcp_bytes.add(8) as *mut u32).write_unaligned(rst_ack.to_be());
        // Data offset 5 (no options), flags; window, checksum and urgent pointer zero.
        (tcp_bytes.add(12) as *mut u32)
            .write_unaligned(u32::from_ne_bytes([0x50, rst_flags, 0, 0]));
        (tcp_bytes.add(16) as *mut u32).write_unaligned(0);
        sum.add32(u32::from(u16::from_ne_bytes([0, IPPROTO_TCP])));
        sum.add32(u32::from(u16::from_ne_bytes([0, TCP_HLEN as u8])));
        let words = tcp_bytes as *const u32;
        for i in 0..TCP_HLEN / 4 {
            sum.add32(words.add(i).read_unaligned());
        }
        let check = sum.finish();
        *tcp_bytes.add(TCP_CHECKSUM_OFFSET) = check[0];
        *tcp_bytes.add(TCP_CHECKSUM_OFFSET + 1) = check[1];
    }
    // Cut options and data: the RST is headers only.
    let keep = pkt.l4_offset + TCP_HLEN;
    let len = ctx.data_end() - ctx.data();
    if len > keep {
        // SAFETY: shrinking by at most the frame's own length beyond the headers.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, -((len - keep) as i32)) } != 0 {
            return None;
        }
    }
    Some(())
}
