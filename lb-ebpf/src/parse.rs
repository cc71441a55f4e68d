//! Header parsing: Ethernet (one optional 802.1Q tag), IPv4 with any IHL, the fixed IPv6
//! header, TCP and UDP, with the lengths and flags checked for consistency before anything
//! looks a flow up. Every failure names the counter that explains it.

use aya_ebpf::{EbpfContext as _, helpers::generated::bpf_xdp_get_buff_len, programs::XdpContext};
use lb_common::{
    flow::valid_tcp_flags,
    maps::{Addr, FlowKey},
    stats::Stat,
    wire::{
        ETH_HLEN, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, ICMP_DEST_UNREACH, ICMP_HLEN,
        ICMPV6_DEST_UNREACH, ICMPV6_PKT_TOOBIG, IPPROTO_FRAGMENT, IPPROTO_ICMP, IPPROTO_ICMPV6,
        IPPROTO_TCP, IPPROTO_UDP, IPV6_HLEN, TCP_ACK, TCP_FLAGS_OFFSET, TCP_HLEN, TCP_SYN,
        UDP_HLEN, VLAN_HLEN,
    },
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::mem::{copy, zero};

// Offsets step by the wire lengths while `ptr_at` checks the header structs' sizes: the two
// must agree.
const _: () = assert!(EthHdr::LEN == ETH_HLEN && Ipv6Hdr::LEN == IPV6_HLEN);

const MAX_HEADER_OFFSET: usize = 256;

/// A bounds-checked pointer to a `T` at `offset` bytes into the packet.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    // Offsets come back from the scratch map as unbounded scalars; headers never start past
    // Ethernet + VLAN + 60-byte IPv4 or 40-byte IPv6, and a bound lets the verifier accept
    // the pointer arithmetic.
    if offset > MAX_HEADER_OFFSET {
        return None;
    }
    let start = ctx.data();
    if start + offset + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Two addresses compared as two 8-byte words. Both must be 8-aligned, as every `Addr`
/// field of lb-common's map types is (an unaligned read would be split into bytes).
#[inline(always)]
pub fn same_addr(a: &Addr, b: &Addr) -> bool {
    let (a, b) = (a.as_ptr() as *const u64, b.as_ptr() as *const u64);
    // SAFETY: both are 16 bytes and 8-aligned (see above).
    unsafe { a.read() == b.read() && a.add(1).read() == b.add(1).read() }
}

/// Write `::ffff:a.b.c.d` into a zeroed address as two word stores (byte-wise stores cost
/// stack spills and instructions).
#[inline(always)]
fn set_v4_mapped(dst: &mut Addr, v4: [u8; 4]) {
    let words = dst.as_mut_ptr() as *mut u32;
    // SAFETY: Addr is 16 bytes; unaligned word writes stay inside it.
    unsafe {
        words.add(2).write_unaligned(u32::from_be(0x0000_ffff));
        words.add(3).write_unaligned(u32::from_ne_bytes(v4));
    }
}

#[repr(C)]
#[derive(Default)]
pub struct Packet {
    pub l3_offset: usize,
    pub l4_offset: usize,
    pub is_v6: bool,
    /// The 5-tuple as it arrived (ports in network byte order).
    pub key: FlowKey,
    pub tcp_flags: u8,
    /// Frame length (never the IP header's claim), for byte counters.
    pub len: u64,
    /// An ICMP error about a TCP/UDP packet: `key` is then the quoted packet's tuple
    /// reversed (the direction of the flow the error belongs to), and the offsets below
    /// locate the quoted headers.
    pub icmp: bool,
    pub inner_l3_offset: usize,
    pub inner_l4_offset: usize,
}

/// Per-CPU working memory of one program run.
#[repr(C)]
pub struct Scratch {
    pub pkt: Packet,
    pub nat: lb_common::maps::NatEntry,
    /// A new flow's server-side entry and its key, while an SNAT port is reserved.
    pub reverse: lb_common::maps::NatEntry,
    pub reverse_key: FlowKey,
    /// The client tuple of a flow whose SNAT port a new SYN may take over.
    pub holder_key: FlowKey,
}

impl Packet {
    #[inline(always)]
    pub fn is_tcp_syn(&self) -> bool {
        self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }
}

/// Parse into `pkt`, which lives in a per-CPU scratch map rather than on the 512-byte stack.
/// An `Err` names why the packet is not balanced: passed to the kernel, or dropped when
/// [`Stat::is_malformed`].
#[inline(always)]
pub fn parse(ctx: &XdpContext, pkt: &mut Packet) -> Result<(), Stat> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Stat::PASS_TRUNCATED)?;
    // SAFETY: bounds checked by ptr_at.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut l3_offset = ETH_HLEN;
    if ether_type == ETH_P_8021Q {
        // The encapsulated ethertype follows the tag's 2-byte TCI.
        let inner: *const [u8; 2] = ptr_at(ctx, ETH_HLEN + 2).ok_or(Stat::PASS_TRUNCATED)?;
        ether_type = u16::from_be_bytes(unsafe { *inner });
        l3_offset += VLAN_HLEN;
    }
    // The whole frame (a multi-buffer frame's fragments included): what byte counters count,
    // and what the IP header's length may not exceed. A helper, because pointer arithmetic
    // on the packet end is refused.
    // SAFETY: the helper only reads the program's own context.
    let len = unsafe { bpf_xdp_get_buff_len(ctx.as_ptr().cast()) } as usize;
    let key = &mut pkt.key;
    zero(key);
    // The transport segment's length as the IP header gives it.
    let l4_len;
    let (l4_offset, is_v6) = match ether_type {
        ETH_P_IP => {
            let ip: *const Ipv4Hdr = ptr_at(ctx, l3_offset).ok_or(Stat::PASS_TRUNCATED)?;
            // SAFETY: bounds checked by ptr_at.
            let ip = unsafe { &*ip };
            let ihl = usize::from(ip.vihl & 0x0f);
            if ip.vihl >> 4 != 4 || ihl < 5 {
                return Err(Stat::PASS_TRUNCATED);
            }
            // Longer than the frame, or shorter than its own header: what the kernel's
            // ip_rcv drops too. (A frame longer than the packet is Ethernet padding.)
            let total = usize::from(u16::from_be_bytes(ip.tot_len));
            if total < ihl * 4 || l3_offset + total > len {
                return Err(Stat::DROP_IPV4_BAD_LENGTH);
            }
            // More-fragments flag or a non-zero offset: only the first fragment has ports,
            // and the kernel reassembles better than we could.
            if ip.frags[0] & 0x3f != 0 || ip.frags[1] != 0 {
                return Err(Stat::PASS_FRAGMENT);
            }
            key.proto = ip.proto;
            l4_len = total - ihl * 4;
            set_v4_mapped(&mut key.src, ip.src_addr);
            set_v4_mapped(&mut key.dst, ip.dst_addr);
            (l3_offset + ihl * 4, false)
        }
        ETH_P_IPV6 => {
            let ip: *const Ipv6Hdr = ptr_at(ctx, l3_offset).ok_or(Stat::PASS_TRUNCATED)?;
            // SAFETY: bounds checked by ptr_at.
            let ip = unsafe { &*ip };
            // The payload directly follows: lb balances no packet with extension headers.
            let payload = usize::from(u16::from_be_bytes(ip.payload_len));
            if l3_offset + IPV6_HLEN + payload > len {
                return Err(Stat::DROP_IPV6_BAD_LENGTH);
            }
            if ip.next_hdr == IPPROTO_FRAGMENT {
                return Err(Stat::PASS_FRAGMENT);
            }
            key.proto = ip.next_hdr;
            l4_len = payload;
            copy(&mut key.src, &ip.src_addr);
            copy(&mut key.dst, &ip.dst_addr);
            (l3_offset + IPV6_HLEN, true)
        }
        _ => return Err(Stat::PASS_NOT_IP),
    };
    let len = len as u64;
    let mut tcp_flags = 0;
    match key.proto {
        IPPROTO_TCP => {
            let tcp: *const TcpHdr = ptr_at(ctx, l4_offset).ok_or(Stat::PASS_TRUNCATED)?;
            // SAFETY: bounds checked by ptr_at.
            let tcp = unsafe { &*tcp };
            key.sport = u16::from_ne_bytes(tcp.source);
            key.dport = u16::from_ne_bytes(tcp.dest);
            // The offset and flags bytes are inside the 20 bytes just checked; reading
            // through the same pointer keeps the verifier's bounds proof.
            let raw = tcp as *const TcpHdr as *const u8;
            let data_offset = usize::from(unsafe { *raw.add(TCP_FLAGS_OFFSET - 1) } >> 4) * 4;
            tcp_flags = unsafe { *raw.add(TCP_FLAGS_OFFSET) };
            if data_offset < TCP_HLEN || data_offset > l4_len {
                return Err(Stat::DROP_TCP_BAD_OFFSET);
            }
            if !valid_tcp_flags(tcp_flags) {
                return Err(Stat::DROP_TCP_BAD_FLAGS);
            }
        }
        IPPROTO_UDP => {
            let udp: *const UdpHdr = ptr_at(ctx, l4_offset).ok_or(Stat::PASS_TRUNCATED)?;
            // SAFETY: bounds checked by ptr_at.
            let udp = unsafe { &*udp };
            key.sport = u16::from_ne_bytes(udp.src);
            key.dport = u16::from_ne_bytes(udp.dst);
            // Shorter than the payload is allowed (the kernel trims the rest), longer not.
            let udp_len = usize::from(u16::from_be_bytes(udp.len));
            if udp_len < UDP_HLEN || udp_len > l4_len {
                return Err(Stat::DROP_UDP_BAD_LENGTH);
            }
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            parse_icmp_error(ctx, pkt, l4_offset, is_v6)?;
            pkt.l3_offset = l3_offset;
            pkt.l4_offset = l4_offset;
            pkt.is_v6 = is_v6;
            pkt.tcp_flags = 0;
            pkt.len = len;
            return Ok(());
        }
        _ => return Err(Stat::PASS_NOT_TCP_UDP),
    }
    pkt.icmp = false;
    pkt.l3_offset = l3_offset;
    pkt.l4_offset = l4_offset;
    pkt.is_v6 = is_v6;
    pkt.tcp_flags = tcp_flags;
    pkt.len = len;
    Ok(())
}

/// An ICMP "destination unreachable" (including "fragmentation needed") or ICMPv6
/// "destination unreachable" / "packet too big" quoting a TCP or UDP packet. Other ICMP
/// (echo, and errors about anything else) is the kernel's.
#[inline(always)]
fn parse_icmp_error(
    ctx: &XdpContext,
    pkt: &mut Packet,
    icmp_offset: usize,
    is_v6: bool,
) -> Result<(), Stat> {
    let header: *const [u8; ICMP_HLEN] = ptr_at(ctx, icmp_offset).ok_or(Stat::PASS_TRUNCATED)?;
    // SAFETY: bounds checked by ptr_at.
    let icmp_type = unsafe { (*header)[0] };
    let inner_l3 = icmp_offset + ICMP_HLEN;
    let key = &mut pkt.key;
    let inner_l4;
    if is_v6 {
        if icmp_type != ICMPV6_DEST_UNREACH && icmp_type != ICMPV6_PKT_TOOBIG {
            return Err(Stat::PASS_NOT_TCP_UDP);
        }
        let ip: *const Ipv6Hdr = ptr_at(ctx, inner_l3).ok_or(Stat::PASS_TRUNCATED)?;
        // SAFETY: bounds checked by ptr_at.
        let ip = unsafe { &*ip };
        key.proto = ip.next_hdr;
        // Reversed: the quoted packet went the other way.
        copy(&mut key.src, &ip.dst_addr);
        copy(&mut key.dst, &ip.src_addr);
        inner_l4 = inner_l3 + IPV6_HLEN;
    } else {
        if icmp_type != ICMP_DEST_UNREACH {
            return Err(Stat::PASS_NOT_TCP_UDP);
        }
        let ip: *const Ipv4Hdr = ptr_at(ctx, inner_l3).ok_or(Stat::PASS_TRUNCATED)?;
        // SAFETY: bounds checked by ptr_at.
        let ip = unsafe { &*ip };
        let ihl = usize::from(ip.vihl & 0x0f);
        if ihl < 5 {
            return Err(Stat::PASS_TRUNCATED);
        }
        zero(key);
        key.proto = ip.proto;
        set_v4_mapped(&mut key.src, ip.dst_addr);
        set_v4_mapped(&mut key.dst, ip.src_addr);
        inner_l4 = inner_l3 + ihl * 4;
    }
    if key.proto != IPPROTO_TCP && key.proto != IPPROTO_UDP {
        return Err(Stat::PASS_NOT_TCP_UDP);
    }
    // Every ICMP error quotes at least the first 8 bytes of the transport header: the ports.
    let ports: *const [u8; 4] = ptr_at(ctx, inner_l4).ok_or(Stat::PASS_TRUNCATED)?;
    // SAFETY: bounds checked by ptr_at.
    let ports = unsafe { *ports };
    key.sport = u16::from_ne_bytes([ports[2], ports[3]]);
    key.dport = u16::from_ne_bytes([ports[0], ports[1]]);
    pkt.icmp = true;
    pkt.inner_l3_offset = inner_l3;
    pkt.inner_l4_offset = inner_l4;
    Ok(())
}
