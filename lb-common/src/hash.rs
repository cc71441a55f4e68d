//! Flow hashing: MurmurHash3 (x86, 32-bit) over the 5-tuple. The same function runs in the
//! kernel (to pick a table slot) and on the host (in tests and tools), so both agree.

use crate::maps::FlowKey;

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline(always)]
fn mix_word(h: u32, w: u32) -> u32 {
    let k = w.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(mut h: u32, len: u32) -> u32 {
    h ^= len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
fn word(b: &[u8; 16], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Hash of a flow's 5-tuple. Bounded, loop-free, so the verifier accepts it.
#[inline(always)]
pub fn flow_hash(k: &FlowKey, seed: u32) -> u32 {
    let mut h = seed;
    h = mix_word(h, word(&k.src, 0));
    h = mix_word(h, word(&k.src, 4));
    h = mix_word(h, word(&k.src, 8));
    h = mix_word(h, word(&k.src, 12));
    h = mix_word(h, word(&k.dst, 0));
    h = mix_word(h, word(&k.dst, 4));
    h = mix_word(h, word(&k.dst, 8));
    h = mix_word(h, word(&k.dst, 12));
    h = mix_word(h, (u32::from(k.sport) << 16) | u32::from(k.dport));
    h = mix_word(h, u32::from(k.proto));
    finish(h, 37)
}

/// MurmurHash3 of arbitrary bytes (host side: Maglev permutations from server identities).
pub fn hash_bytes(data: &[u8], seed: u32) -> u32 {
    let mut h = seed;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        h = mix_word(h, u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut tail = [0u8; 4];
        tail[..rest.len()].copy_from_slice(rest);
        let k = u32::from_le_bytes(tail)
            .wrapping_mul(C1)
            .rotate_left(15)
            .wrapping_mul(C2);
        h ^= k;
    }
    finish(h, data.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{maps::v4_mapped, wire::IPPROTO_TCP};

    #[test]
    fn matches_reference_murmur3_vectors() {
        // Published MurmurHash3_x86_32 test vectors.
        assert_eq!(hash_bytes(b"", 0), 0);
        assert_eq!(hash_bytes(b"", 1), 0x514e_28b7);
        assert_eq!(hash_bytes(b"hello", 0), 0x248b_fa47);
        assert_eq!(hash_bytes(b"Hello, world!", 1234), 0xfaf6_cdb3);
    }

    fn key(client_port: u16) -> FlowKey {
        FlowKey {
            src: v4_mapped([198, 18, 0, 2]),
            dst: v4_mapped([198, 18, 100, 1]),
            sport: client_port.to_be(),
            dport: 80u16.to_be(),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        }
    }

    #[test]
    fn flow_hash_is_deterministic_and_tuple_sensitive() {
        assert_eq!(flow_hash(&key(40000), 7), flow_hash(&key(40000), 7));
        assert_ne!(flow_hash(&key(40000), 7), flow_hash(&key(40001), 7));
        assert_ne!(flow_hash(&key(40000), 7), flow_hash(&key(40000), 8));
    }

    #[test]
    fn flow_hash_spreads_sequential_ports_evenly() {
        // Clients open connections from consecutive ports; buckets must still fill evenly.
        let buckets = 16usize;
        let n = 64_000u32;
        let mut counts = vec![0u32; buckets];
        for p in 0..n {
            counts[(flow_hash(&key(1024 + p as u16), 0) as usize) % buckets] += 1;
        }
        let mean = n / buckets as u32;
        for c in counts {
            assert!(c.abs_diff(mean) < mean / 20, "bucket {c} vs mean {mean}");
        }
    }
}
