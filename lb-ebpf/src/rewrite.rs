//! The rewrite stage (full NAT): addresses and ports become the flow's rewrite, and the IPv4
//! header and TCP/UDP checksums are updated incrementally (RFC 1624), never recomputed.

use aya_ebpf::programs::XdpContext;
use lb_common::{checksum::CsumDelta, maps::NatEntry, wire::IPPROTO_TCP};
use network_types::{
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::parse::{Packet, ptr_at};

/// Rewrite addresses and ports to `nat`'s, updating the IPv4 and L4 checksums incrementally.
/// Addresses move as 32-bit words: byte-wise copies cost the verifier's 512-byte stack.
#[inline(never)]
pub fn apply(ctx: &XdpContext, pkt: &Packet, nat: &NatEntry) -> Option<()> {
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
