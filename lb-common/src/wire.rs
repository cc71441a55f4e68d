//! Wire-format numbers: ethertypes, IP protocol numbers, header lengths, TCP flags and ICMP
//! types, as the XDP program parses and writes them and as the host-side fixtures build
//! frames. One definition each, so the two sides cannot drift apart.

// Ethertypes (host byte order).
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;

// IP protocol numbers (IPv4 `proto`, IPv6 `next_hdr`, and `FlowKey::proto`).
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// The IPv6 fragment extension header.
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_ICMPV6: u8 = 58;

// Header lengths in bytes (IPv4 and TCP: without options).
pub const ETH_HLEN: usize = 14;
/// One 802.1Q tag: TPID and TCI.
pub const VLAN_HLEN: usize = 4;
pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const TCP_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;
/// Type, code, checksum and the 4-byte rest of header.
pub const ICMP_HLEN: usize = 8;

// Field offsets inside the transport header.
/// The TCP flags byte.
pub const TCP_FLAGS_OFFSET: usize = 13;
pub const TCP_CHECKSUM_OFFSET: usize = 16;
pub const UDP_CHECKSUM_OFFSET: usize = 6;

// TCP flags (the byte at `TCP_FLAGS_OFFSET`).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

// ICMP and ICMPv6 types.
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_PKT_TOOBIG: u8 = 2;
