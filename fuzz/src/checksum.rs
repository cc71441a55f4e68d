//! lb-common's incremental checksum (RFC 1624) against recomputation from scratch: a
//! header with arbitrary 16- and 32-bit rewrites (the IPv4 header), and a NAT rewrite of a
//! TCP/UDP segment over IPv4 or IPv6 (pseudo-header addresses and ports, the two deltas
//! combined with `plus` as the data plane does), with UDP's "no checksum" rule.

use lb_common::checksum::{CsumDelta, checksum, pseudo_header_sum};

use super::support::Input;

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    if input.bool() {
        header_rewrites(input);
    } else {
        nat_rewrite(input);
    }
}

/// A checksum is only defined up to the sign of zero: a sum of all-zero words is 0xffff
/// computed from scratch, and 0x0000 incrementally; both verify.
fn same_checksum(incremental: [u8; 2], recomputed: [u8; 2], words_all_zero: bool) -> bool {
    incremental == recomputed
        || (words_all_zero && [incremental, recomputed] == [[0, 0], [0xff, 0xff]])
}

/// A header of up to 60 bytes (even length) whose checksum field is at an even offset; a
/// series of rewrites of 2-byte and 4-byte fields at even offsets elsewhere.
fn header_rewrites(mut input: Input) {
    let len = (usize::from(input.u8()) % 30 + 2) * 2;
    let mut header = input.bytes(len).to_vec();
    header.resize(len, 0);
    let at = usize::from(input.u8()) % (len / 2) * 2;
    header[at..at + 2].copy_from_slice(&[0, 0]);
    let field = checksum(0, &header);
    header[at..at + 2].copy_from_slice(&field);
    let mut delta = CsumDelta::new();
    for _ in 0..16 {
        if input.is_empty() {
            break;
        }
        let kind = input.u8();
        let offset = usize::from(kind >> 1) % (len / 2) * 2;
        let wide = kind & 1 == 1 && offset + 4 <= len;
        let width = if wide { 4 } else { 2 };
        // Never the checksum field itself.
        if offset < at + 2 && at < offset + width {
            continue;
        }
        let new = input.array::<4>();
        let old = &header[offset..offset + width];
        if wide {
            delta.word32(
                u32::from_ne_bytes(old.try_into().expect("4 bytes")),
                u32::from_ne_bytes(new),
            );
        } else {
            delta.word(
                u16::from_ne_bytes(old.try_into().expect("2 bytes")),
                u16::from_ne_bytes([new[0], new[1]]),
            );
        }
        header[offset..offset + width].copy_from_slice(&new[..width]);
    }
    let incremental = delta.apply(field);
    header[at..at + 2].copy_from_slice(&[0, 0]);
    let recomputed = checksum(0, &header);
    let all_zero = header.iter().all(|&b| b == 0);
    assert!(
        same_checksum(incremental, recomputed, all_zero),
        "incremental {incremental:02x?} != recomputed {recomputed:02x?} for {header:02x?}"
    );
    // And the header with it verifies: its words sum to 0xffff (or it is all zero).
    header[at..at + 2].copy_from_slice(&incremental);
    let verify = checksum(0, &header);
    assert!(
        verify == [0, 0] || all_zero,
        "the rewritten header does not verify: {header:02x?}"
    );
}

/// A TCP or UDP segment over IPv4 or IPv6 whose addresses and ports are rewritten.
fn nat_rewrite(mut input: Input) {
    let flags = input.u8();
    let (v6, udp) = (flags & 1 == 1, flags & 2 == 2);
    let proto = if udp { 17 } else { 6 };
    let csum_at = if udp { 6 } else { 16 };
    let header_len = if udp { 8 } else { 20 };
    let addr_len = if v6 { 16 } else { 4 };
    let src = input.bytes(addr_len).to_vec();
    let dst = input.bytes(addr_len).to_vec();
    let (mut src, mut dst) = (src, dst);
    src.resize(addr_len, 0);
    dst.resize(addr_len, 0);
    let (new_src, new_dst) = (input.array::<16>(), input.array::<16>());
    let (new_sport, new_dport) = (input.array::<2>(), input.array::<2>());
    let payload_len = usize::from(input.u8());
    let mut segment = input.bytes(header_len + payload_len).to_vec();
    segment.resize(header_len + payload_len, 0);
    segment[csum_at..csum_at + 2].copy_from_slice(&[0, 0]);
    let l4_len = segment.len() as u32;
    // UDP over IPv4 may carry no checksum (0); otherwise a computed 0 is sent as 0xffff.
    let no_udp_checksum = udp && !v6 && flags & 4 == 4;
    let original = if no_udp_checksum {
        [0, 0]
    } else {
        let c = checksum(pseudo_header_sum(&src, &dst, proto, l4_len), &segment);
        if udp && c == [0, 0] { [0xff, 0xff] } else { c }
    };
    segment[csum_at..csum_at + 2].copy_from_slice(&original);

    // The data plane's way: one delta for the addresses (shared with the IPv4 header), one
    // for the ports, combined.
    let mut addresses = CsumDelta::new();
    if v6 {
        let (s, d): ([u8; 16], [u8; 16]) = (to_array(&src), to_array(&dst));
        addresses.bytes(&s, &new_src);
        addresses.bytes(&d, &new_dst);
    } else {
        let (s, d): ([u8; 4], [u8; 4]) = (to_array(&src), to_array(&dst));
        addresses.bytes(&s, &to_array(&new_src[..4]));
        addresses.bytes(&d, &to_array(&new_dst[..4]));
    }
    let mut ports = CsumDelta::new();
    ports.word(
        u16::from_ne_bytes([segment[0], segment[1]]),
        u16::from_ne_bytes(new_sport),
    );
    ports.word(
        u16::from_ne_bytes([segment[2], segment[3]]),
        u16::from_ne_bytes(new_dport),
    );
    let delta = addresses.plus(ports);
    let incremental = if udp {
        delta.apply_udp(original)
    } else {
        delta.apply(original)
    };

    let (src, dst) = (&new_src[..addr_len], &new_dst[..addr_len]);
    segment[0..2].copy_from_slice(&new_sport);
    segment[2..4].copy_from_slice(&new_dport);
    segment[csum_at..csum_at + 2].copy_from_slice(&[0, 0]);
    if no_udp_checksum {
        assert_eq!(incremental, [0, 0], "a UDP packet without checksum got one");
        return;
    }
    let sum = pseudo_header_sum(src, dst, proto, l4_len);
    let mut recomputed = checksum(sum, &segment);
    if udp && recomputed == [0, 0] {
        recomputed = [0xff, 0xff];
    }
    // The pseudo-header always holds the protocol and length, so its words never sum to 0.
    assert!(
        same_checksum(incremental, recomputed, false),
        "v6={v6} udp={udp}: incremental {incremental:02x?} != recomputed {recomputed:02x?}"
    );
    segment[csum_at..csum_at + 2].copy_from_slice(&incremental);
    assert_eq!(
        checksum(sum, &segment),
        [0, 0],
        "v6={v6} udp={udp}: the rewritten segment does not verify"
    );
}

fn to_array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    bytes.try_into().expect("sized")
}
