//! Incremental Internet checksum update (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`).
//!
//! A NAT rewrite changes addresses and ports; the change is accumulated once into a
//! [`CsumDelta`] and applied to the IPv4 header checksum (addresses only) and to the TCP/UDP
//! checksum (pseudo-header addresses and ports). Words are read in memory order: the one's
//! complement sum is byte-order independent, so no swapping is needed.

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CsumDelta(u64);

impl CsumDelta {
    #[inline(always)]
    pub const fn new() -> Self {
        Self(0)
    }

    /// Account for a 16-bit field changing from `old` to `new` (both in memory order).
    #[inline(always)]
    pub fn word(&mut self, old: u16, new: u16) {
        self.0 += u64::from(!old) + u64::from(new);
    }

    /// Account for a 32-bit field changing. Summing 32-bit words and folding later equals
    /// summing their 16-bit halves, since 2^16 = 1 (mod 2^16 - 1).
    #[inline(always)]
    pub fn word32(&mut self, old: u32, new: u32) {
        self.0 += u64::from(!old) + u64::from(new);
    }

    /// Account for a field of `N` bytes (N a multiple of 4) changing from `old` to `new`.
    #[inline(always)]
    pub fn bytes<const N: usize>(&mut self, old: &[u8; N], new: &[u8; N]) {
        let mut i = 0;
        while i + 3 < N {
            self.word32(
                u32::from_ne_bytes([old[i], old[i + 1], old[i + 2], old[i + 3]]),
                u32::from_ne_bytes([new[i], new[i + 1], new[i + 2], new[i + 3]]),
            );
            i += 4;
        }
    }

    /// Add a 32-bit word (memory order) to a checksum computed from scratch.
    #[inline(always)]
    pub fn add32(&mut self, word: u32) {
        self.0 += u64::from(word);
    }

    /// The checksum field of data whose words were all [`CsumDelta::add32`]ed.
    #[inline(always)]
    pub fn finish(self) -> [u8; 2] {
        (!fold(self.0)).to_ne_bytes()
    }

    /// The combined change of two deltas.
    #[inline(always)]
    pub const fn plus(self, other: CsumDelta) -> CsumDelta {
        CsumDelta(self.0 + other.0)
    }

    /// Apply the delta to a checksum field as stored in the packet (memory order).
    #[inline(always)]
    pub fn apply(self, csum: [u8; 2]) -> [u8; 2] {
        let sum = u64::from(!u16::from_ne_bytes(csum)) + self.0;
        (!fold(sum)).to_ne_bytes()
    }

    /// Apply to a UDP checksum: 0 means "no checksum" on IPv4 and stays 0; a computed 0 is
    /// sent as 0xffff (RFC 768).
    #[inline(always)]
    pub fn apply_udp(self, csum: [u8; 2]) -> [u8; 2] {
        if csum == [0, 0] {
            return csum;
        }
        let out = self.apply(csum);
        if out == [0, 0] { [0xff, 0xff] } else { out }
    }
}

#[inline(always)]
fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Full Internet checksum of `data` with an initial sum (host side: tests and fixtures).
#[cfg(not(target_arch = "bpf"))]
pub fn checksum(initial: u64, data: &[u8]) -> [u8; 2] {
    let mut sum = initial;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(u16::from_ne_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(u16::from_ne_bytes([*last, 0]));
    }
    (!fold(sum)).to_ne_bytes()
}

/// The one's complement sum of a TCP/UDP pseudo-header, to seed [`checksum`].
#[cfg(not(target_arch = "bpf"))]
pub fn pseudo_header_sum(src: &[u8], dst: &[u8], proto: u8, l4_len: u32) -> u64 {
    let mut sum = 0u64;
    for c in src.chunks_exact(2).chain(dst.chunks_exact(2)) {
        sum += u64::from(u16::from_ne_bytes([c[0], c[1]]));
    }
    sum += u64::from(u16::from_ne_bytes([0, proto]));
    if l4_len > 0xffff {
        sum += u64::from(u16::from_ne_bytes(((l4_len >> 16) as u16).to_be_bytes()));
    }
    sum += u64::from(u16::from_ne_bytes((l4_len as u16).to_be_bytes()));
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real IPv4 header (from a capture) with its checksum zeroed at bytes 10..12.
    const IPV4: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn full_checksum_matches_known_header() {
        assert_eq!(checksum(0, &IPV4), [0xb8, 0x61]);
    }

    #[test]
    fn word_sum_from_scratch_matches_full_checksum() {
        let mut sum = CsumDelta::new();
        for w in IPV4.chunks(4) {
            sum.add32(u32::from_ne_bytes(w.try_into().unwrap()));
        }
        assert_eq!(sum.finish(), checksum(0, &IPV4));
    }

    #[test]
    fn incremental_update_equals_recomputation() {
        let mut hdr = IPV4;
        let full = checksum(0, &hdr);
        hdr[10..12].copy_from_slice(&full);
        let old_dst: [u8; 4] = hdr[16..20].try_into().unwrap();
        // Many rewrites, including ones that force carries and 0xffff words.
        for new_dst in [
            [198, 18, 11, 2],
            [255, 255, 255, 255],
            [0, 0, 0, 0],
            [1, 2, 3, 4],
        ] {
            let mut d = CsumDelta::new();
            d.bytes(&old_dst, &new_dst);
            let mut rewritten = hdr;
            rewritten[16..20].copy_from_slice(&new_dst);
            let incremental = d.apply([hdr[10], hdr[11]]);
            rewritten[10..12].copy_from_slice(&[0, 0]);
            assert_eq!(incremental, checksum(0, &rewritten), "dst {new_dst:?}");
        }
    }

    #[test]
    fn l4_update_over_pseudo_header_and_ports() {
        let src = [198u8, 18, 0, 2];
        let dst = [198u8, 18, 100, 1];
        let mut seg = vec![0x9c, 0x40, 0x00, 0x50, 0, 8, 0, 0]; // udp 40000 -> 80, len 8
        let c = checksum(pseudo_header_sum(&src, &dst, 17, 8), &seg);
        seg[6..8].copy_from_slice(&c);

        let (nsrc, ndst) = ([198u8, 18, 2, 1], [198u8, 18, 11, 2]);
        let (nsport, ndport) = (12345u16.to_be_bytes(), 8080u16.to_be_bytes());
        let mut d = CsumDelta::new();
        d.bytes(&src, &nsrc);
        d.bytes(&dst, &ndst);
        d.word(
            u16::from_ne_bytes([seg[0], seg[1]]),
            u16::from_ne_bytes(nsport),
        );
        d.word(
            u16::from_ne_bytes([seg[2], seg[3]]),
            u16::from_ne_bytes(ndport),
        );
        let incremental = d.apply_udp([seg[6], seg[7]]);

        let mut expect = seg.clone();
        expect[0..2].copy_from_slice(&nsport);
        expect[2..4].copy_from_slice(&ndport);
        expect[6..8].copy_from_slice(&[0, 0]);
        assert_eq!(
            incremental,
            checksum(pseudo_header_sum(&nsrc, &ndst, 17, 8), &expect)
        );
    }

    #[test]
    fn udp_zero_checksum_stays_zero() {
        let mut d = CsumDelta::new();
        d.word(1, 2);
        assert_eq!(d.apply_udp([0, 0]), [0, 0]);
    }
}
