//! Frames built byte by byte with correct checksums, for BPF_PROG_TEST_RUN fixtures and
//! benchmarks. Expected outputs are built with the same functions from the expected header
//! values, so a test compares whole frames.

use std::net::{IpAddr, Ipv4Addr};

use lb_common::{
    checksum::{checksum, pseudo_header_sum},
    wire::{
        ETH_HLEN, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
        IPPROTO_UDP, IPV4_HLEN, IPV6_HLEN, TCP_ACK, TCP_CHECKSUM_OFFSET, TCP_SYN,
        UDP_CHECKSUM_OFFSET, UDP_HLEN, VLAN_HLEN,
    },
};

pub const TCP_SYN_ACK: u8 = TCP_SYN | TCP_ACK;
/// Sequence and acknowledgement numbers of every TCP frame `Frame::build` makes.
pub const TEST_SEQ: u32 = 0x0102_0304;
pub const TEST_ACK: u32 = 0x0a0b_0c0d;

#[derive(Clone, Copy, Debug)]
pub enum L4 {
    Tcp { flags: u8 },
    Udp,
}

/// One frame's headers.
#[derive(Clone, Copy, Debug)]
pub struct Frame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub l4: L4,
}

impl Frame {
    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        let (proto, segment) = match self.l4 {
            L4::Tcp { flags } => (IPPROTO_TCP, self.tcp(flags, payload)),
            L4::Udp => (IPPROTO_UDP, self.udp(payload)),
        };
        let mut frame = Vec::new();
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        if let Some(tag) = self.vlan {
            frame.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
            frame.extend_from_slice(&tag.to_be_bytes());
        }
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
                frame.extend_from_slice(&ipv4_header(s, d, proto, 0x40, segment.len()));
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                frame.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                frame.extend_from_slice(&[0x60, 0, 0, 0]);
                frame.extend_from_slice(&(segment.len() as u16).to_be_bytes());
                frame.extend_from_slice(&[proto, 64]);
                frame.extend_from_slice(&s.octets());
                frame.extend_from_slice(&d.octets());
            }
            _ => panic!("mixed address families"),
        }
        frame.extend_from_slice(&segment);
        frame
    }

    fn pseudo(&self, proto: u8, len: usize) -> u64 {
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                pseudo_header_sum(&s.octets(), &d.octets(), proto, len as u32)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                pseudo_header_sum(&s.octets(), &d.octets(), proto, len as u32)
            }
            _ => panic!("mixed address families"),
        }
    }

    fn tcp(&self, flags: u8, payload: &[u8]) -> Vec<u8> {
        let ack = if flags & TCP_ACK != 0 { TEST_ACK } else { 0 };
        self.tcp_segment(flags, TEST_SEQ, ack, 64240, payload)
    }

    /// A frame whose TCP header has the given sequence and acknowledgement numbers and
    /// window (`build` uses [`TEST_SEQ`], [`TEST_ACK`] and 64240).
    pub fn build_tcp(&self, seq: u32, ack: u32, window: u16, payload: &[u8]) -> Vec<u8> {
        let L4::Tcp { flags } = self.l4 else {
            panic!("build_tcp on a UDP frame")
        };
        let mut frame = self.build(payload);
        let segment = self.tcp_segment(flags, seq, ack, window, payload);
        let start = frame.len() - segment.len();
        frame[start..].copy_from_slice(&segment);
        frame
    }

    fn tcp_segment(&self, flags: u8, seq: u32, ack: u32, window: u16, payload: &[u8]) -> Vec<u8> {
        let mut seg = Vec::new();
        seg.extend_from_slice(&self.sport.to_be_bytes());
        seg.extend_from_slice(&self.dport.to_be_bytes());
        seg.extend_from_slice(&seq.to_be_bytes());
        seg.extend_from_slice(&ack.to_be_bytes());
        seg.extend_from_slice(&[0x50, flags]);
        seg.extend_from_slice(&window.to_be_bytes());
        seg.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        seg.extend_from_slice(payload);
        let c = checksum(self.pseudo(IPPROTO_TCP, seg.len()), &seg);
        seg[TCP_CHECKSUM_OFFSET..TCP_CHECKSUM_OFFSET + 2].copy_from_slice(&c);
        seg
    }

    fn udp(&self, payload: &[u8]) -> Vec<u8> {
        let mut seg = Vec::new();
        seg.extend_from_slice(&self.sport.to_be_bytes());
        seg.extend_from_slice(&self.dport.to_be_bytes());
        seg.extend_from_slice(&((UDP_HLEN + payload.len()) as u16).to_be_bytes());
        seg.extend_from_slice(&[0, 0]);
        seg.extend_from_slice(payload);
        let mut c = checksum(self.pseudo(IPPROTO_UDP, seg.len()), &seg);
        if c == [0, 0] {
            c = [0xff, 0xff];
        }
        seg[UDP_CHECKSUM_OFFSET..UDP_CHECKSUM_OFFSET + 2].copy_from_slice(&c);
        seg
    }
}

/// A 20-byte IPv4 header (ID 0x1234, TTL 64) with its checksum; `flags` is the first
/// fragment byte (0x40: don't fragment).
fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, flags: u8, payload_len: usize) -> Vec<u8> {
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((IPV4_HLEN + payload_len) as u16).to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, flags, 0x00, 64, proto, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(0, &ip);
    ip[10..12].copy_from_slice(&c);
    ip
}

/// Verify the IPv4 header checksum and the TCP/UDP checksum of a built or rewritten frame.
pub fn checksums_valid(frame: &[u8]) -> bool {
    // The ethertype is the last two bytes of the Ethernet header (of the tag, if tagged).
    let mut off = ETH_HLEN - 2;
    let mut ethertype = u16::from_be_bytes([frame[off], frame[off + 1]]);
    if ethertype == ETH_P_8021Q {
        off += VLAN_HLEN;
        ethertype = u16::from_be_bytes([frame[off], frame[off + 1]]);
    }
    let l3 = off + 2;
    let (proto, l4, pseudo) = match ethertype {
        ETH_P_IP => {
            let ihl = usize::from(frame[l3] & 0xf) * 4;
            if checksum(0, &frame[l3..l3 + ihl]) != [0, 0] {
                return false;
            }
            let len = frame.len() - l3 - ihl;
            let p = pseudo_header_sum(
                &frame[l3 + 12..l3 + 16],
                &frame[l3 + 16..l3 + 20],
                frame[l3 + 9],
                len as u32,
            );
            (frame[l3 + 9], l3 + ihl, p)
        }
        ETH_P_IPV6 => {
            let len = frame.len() - l3 - IPV6_HLEN;
            let p = pseudo_header_sum(
                &frame[l3 + 8..l3 + 24],
                &frame[l3 + 24..l3 + 40],
                frame[l3 + 6],
                len as u32,
            );
            (frame[l3 + 6], l3 + IPV6_HLEN, p)
        }
        _ => return false,
    };
    let _ = proto;
    checksum(pseudo, &frame[l4..]) == [0, 0]
}

/// An ICMP (IPv4) or ICMPv6 error frame quoting `quoted` (an IP packet's first bytes), with
/// the outer IPv4 header built like [`Frame::build`]'s and correct checksums.
#[expect(
    clippy::too_many_arguments,
    reason = "every field of the frame is a test input"
)]
pub fn icmp_error(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    icmp_type: u8,
    code: u8,
    rest: u32,
    quoted: &[u8],
) -> Vec<u8> {
    let mut icmp = vec![icmp_type, code, 0, 0];
    icmp.extend_from_slice(&rest.to_be_bytes());
    icmp.extend_from_slice(quoted);
    let mut frame = Vec::new();
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&src_mac);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let c = checksum(0, &icmp);
            icmp[2..4].copy_from_slice(&c);
            frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
            frame.extend_from_slice(&ipv4_header(s, d, IPPROTO_ICMP, 0, icmp.len()));
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let c = checksum(
                pseudo_header_sum(&s.octets(), &d.octets(), IPPROTO_ICMPV6, icmp.len() as u32),
                &icmp,
            );
            icmp[2..4].copy_from_slice(&c);
            frame.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
            frame.extend_from_slice(&[0x60, 0, 0, 0]);
            frame.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
            frame.extend_from_slice(&[IPPROTO_ICMPV6, 64]);
            frame.extend_from_slice(&s.octets());
            frame.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed address families"),
    }
    frame.extend_from_slice(&icmp);
    frame
}
