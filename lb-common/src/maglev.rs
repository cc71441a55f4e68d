//! Weighted Maglev table construction (Eisenbud et al., NSDI 2016), computed in userspace and
//! written to the kernel's selection table.
//!
//! Each server walks its own permutation of the slots (offset and skip from hashes of its
//! identity) and claims the next free slot on its turn. Weights are honoured by turns: each
//! round, a server earns `weight` credit, and spends `max_weight` credit per slot claimed, so a
//! server of weight w ends with about w/Σw of the slots. Because preferences depend only on a
//! server's identity, removing one server moves little more than its own slots.

use crate::hash::hash_bytes;

const OFFSET_SEED: u32 = 0x6c62_0001;
const SKIP_SEED: u32 = 0x6c62_0002;

/// One server as Maglev sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaglevServer {
    /// The value stored in the table's slots (the server id in the data plane).
    pub id: u32,
    /// Stable identity that drives the permutation (for example address and port bytes).
    pub identity: Vec<u8>,
    pub weight: u32,
}

pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u64;
    while d * d <= u64::from(n) {
        if u64::from(n) % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}

/// Build a table of `size` slots (a prime). Returns an empty table when no server has a
/// positive weight: the backend then has nothing to offer new flows.
pub fn build_table(servers: &[MaglevServer], size: u32) -> Vec<u32> {
    assert!(is_prime(size), "Maglev table size {size} must be prime");
    let live: Vec<&MaglevServer> = servers.iter().filter(|s| s.weight > 0).collect();
    let Some(max_weight) = live.iter().map(|s| u64::from(s.weight)).max() else {
        return Vec::new();
    };
    let m = u64::from(size);
    let offsets: Vec<u64> = live
        .iter()
        .map(|s| u64::from(hash_bytes(&s.identity, OFFSET_SEED)) % m)
        .collect();
    let skips: Vec<u64> = live
        .iter()
        .map(|s| u64::from(hash_bytes(&s.identity, SKIP_SEED)) % (m - 1) + 1)
        .collect();
    let mut next = vec![0u64; live.len()];
    let mut credit = vec![0u64; live.len()];
    let mut table = vec![u32::MAX; size as usize];
    let mut filled = 0u64;
    loop {
        for (i, server) in live.iter().enumerate() {
            credit[i] += u64::from(server.weight);
            while credit[i] >= max_weight {
                credit[i] -= max_weight;
                // The permutation covers every slot (m prime, 0 < skip < m), so a free slot
                // is always found while the table is not full.
                loop {
                    let slot = ((offsets[i] + next[i] * skips[i]) % m) as usize;
                    next[i] += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = server.id;
                        filled += 1;
                        break;
                    }
                }
                if filled == m {
                    return table;
                }
            }
        }
    }
}

/// Slots whose owner differs between two tables of the same size: what must be rewritten.
pub fn changed_slots(old: &[u32], new: &[u32]) -> Vec<u32> {
    (0..new.len())
        .filter(|&i| old.get(i) != Some(&new[i]))
        .map(|i| i as u32)
        .collect()
}

/// Count of slots per server id.
pub fn slot_counts(table: &[u32]) -> std::collections::BTreeMap<u32, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for &id in table {
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

/// A weighted round-robin sequence (smooth weighted round robin, as nginx does it): server
/// ids in an order where each id appears `weight / gcd` times and the heavy ones are spread
/// out, so any window of consecutive picks is close to the weights. Empty when no weight is
/// positive. The data plane walks it with a counter.
pub fn round_robin_sequence(servers: &[(u32, u32)]) -> Vec<u32> {
    let live: Vec<(u32, i64)> = servers
        .iter()
        .filter(|(_, w)| *w > 0)
        .map(|&(id, w)| (id, i64::from(w)))
        .collect();
    let gcd = live.iter().fold(0i64, |g, (_, w)| gcd(g, *w));
    if gcd == 0 {
        return Vec::new();
    }
    let weights: Vec<i64> = live.iter().map(|(_, w)| w / gcd).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; live.len()];
    (0..total)
        .map(|_| {
            for (c, w) in current.iter_mut().zip(&weights) {
                *c += w;
            }
            let best = (0..live.len())
                .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
                .expect("non-empty");
            current[best] -= total;
            live[best].0
        })
        .collect()
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(weights: &[u32]) -> Vec<MaglevServer> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| MaglevServer {
                id: i as u32,
                identity: format!("198.18.1.{i}:8080").into_bytes(),
                weight,
            })
            .collect()
    }

    #[test]
    fn round_robin_sequence_follows_weights_in_every_window() {
        let weights = [(0u32, 1u32), (1, 1), (2, 2), (3, 0)];
        let seq = round_robin_sequence(&weights);
        assert_eq!(
            seq.len(),
            4,
            "weights reduced by their gcd; weight 0 left out"
        );
        // Any 10,000 consecutive picks, starting anywhere: within 2 points of w/sum.
        for start in [0usize, 1, 3, 7] {
            let mut counts = [0usize; 4];
            for i in 0..10_000 {
                counts[seq[(start + i) % seq.len()] as usize] += 1;
            }
            for (id, expected) in [(0, 25.0), (1, 25.0), (2, 50.0), (3, 0.0)] {
                let share = counts[id] as f64 / 100.0;
                assert!((share - expected).abs() <= 2.0, "server {id}: {share}%");
            }
        }
        let big = round_robin_sequence(&(0..500).map(|i| (i, 1 + i % 100)).collect::<Vec<_>>());
        assert_eq!(big.len() as u32, (0..500).map(|i| 1 + i % 100).sum::<u32>());
        assert!(round_robin_sequence(&[(0, 0)]).is_empty());
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537));
        assert!(is_prime(251));
        assert!(!is_prime(65536));
        assert!(!is_prime(1));
    }

    #[test]
    fn every_slot_is_filled_and_shares_follow_weights() {
        let weights = [1, 1, 2];
        let table = build_table(&servers(&weights), 65537);
        assert!(table.iter().all(|&id| id < 3));
        let counts = slot_counts(&table);
        let total: u32 = weights.iter().sum();
        for (id, &w) in weights.iter().enumerate() {
            let share = counts[&(id as u32)] as f64 / 65537.0;
            let ideal = f64::from(w) / f64::from(total);
            assert!(
                (share - ideal).abs() < 0.005,
                "server {id}: {share} vs {ideal}"
            );
        }
    }

    #[test]
    fn zero_weight_servers_get_no_slots_and_all_zero_gives_empty_table() {
        let table = build_table(&servers(&[3, 0, 1]), 251);
        assert!(!table.contains(&1));
        assert!(build_table(&servers(&[0, 0]), 251).is_empty());
        assert!(build_table(&[], 251).is_empty());
    }

    #[test]
    fn five_hundred_servers_balance_within_a_few_percent() {
        let table = build_table(&servers(&[1; 500]), 65537);
        let counts = slot_counts(&table);
        assert_eq!(counts.len(), 500);
        let mean = 65537.0 / 500.0;
        let max = *counts.values().max().unwrap() as f64;
        assert!(max / mean < 1.05, "max/mean {}", max / mean);
    }

    #[test]
    fn removing_one_server_moves_about_its_share() {
        let all = servers(&[1; 10]);
        let before = build_table(&all, 65537);
        let after = build_table(&all[1..], 65537);
        let moved = changed_slots(&before, &after).len() as f64 / 65537.0;
        // Ideal is 1/N = 0.1 (server 0's slots); Maglev adds a little churn.
        assert!((0.099..0.12).contains(&moved), "moved {moved}");
        // Nothing moves *to* a server from another surviving server's ideal share by much.
        assert!(!after.contains(&0));
    }
}
