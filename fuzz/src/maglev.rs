//! lb-common's weighted Maglev table (and the round-robin sequence beside it): every slot
//! holds a server of positive weight, each server's share is within the bounds its credit
//! scheme guarantees, the build is deterministic, and servers of weight 0 change nothing.

use lb_common::maglev::{MaglevServer, build_table, is_prime, round_robin_sequence, slot_counts};

use super::support::Input;

/// The largest table lb builds (`options.table_size`).
const MAX_SIZE: u32 = 65537;

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    // Mostly small tables (fast), any prime up to MAX_SIZE now and then.
    let wanted = match input.u8() {
        0..=254 => u32::from(input.u16()) % 1024,
        _ => u32::from(input.u16()) % MAX_SIZE + u32::from(input.u8()),
    };
    let size = (wanted.max(2)..=MAX_SIZE)
        .find(|&n| is_prime(n))
        .unwrap_or(MAX_SIZE);
    let count = usize::from(input.u8()) % 65;
    let mut servers = Vec::with_capacity(count);
    for id in 0..count as u32 {
        let weight = u32::from(input.u8());
        let identity_len = usize::from(input.u8() % 20);
        servers.push(MaglevServer {
            id,
            identity: input.bytes(identity_len).to_vec(),
            weight,
        });
    }

    let table = build_table(&servers, size);
    let live: Vec<&MaglevServer> = servers.iter().filter(|s| s.weight > 0).collect();
    if live.is_empty() {
        assert!(table.is_empty(), "no live server, yet a table");
    } else {
        assert_eq!(table.len(), size as usize, "the table has `size` slots");
        let counts = slot_counts(&table);
        for id in counts.keys() {
            assert!(
                live.iter().any(|s| s.id == *id),
                "slot owned by {id}, not a server of positive weight"
            );
        }
        // Each round a server earns `weight` credit and spends `max_weight` per slot, so
        // after r rounds it holds floor(r w / W) slots, and the last round is partial:
        // ideal - 2 <= count <= ideal + 1 + n w / sum.
        let total: f64 = live.iter().map(|s| f64::from(s.weight)).sum();
        let n = live.len() as f64;
        for s in &live {
            let count = counts.get(&s.id).copied().unwrap_or(0) as f64;
            let w = f64::from(s.weight);
            let ideal = f64::from(size) * w / total;
            let (low, high) = (ideal - 2.0, ideal + 1.0 + n * w / total);
            assert!(
                (low - 1e-6..=high + 1e-6).contains(&count),
                "server {} (weight {}) has {count} of {size} slots, outside {low:.2}..{high:.2}",
                s.id,
                s.weight
            );
        }
    }
    assert_eq!(build_table(&servers, size), table, "not deterministic");
    let positive: Vec<MaglevServer> = live.iter().map(|s| (*s).clone()).collect();
    assert_eq!(
        build_table(&positive, size),
        table,
        "servers of weight 0 changed the table"
    );

    // The round-robin sequence: each id weight/gcd times, nothing else.
    let pairs: Vec<(u32, u32)> = servers.iter().map(|s| (s.id, s.weight)).collect();
    let sequence = round_robin_sequence(&pairs);
    let gcd = live.iter().fold(0, |g, s| gcd(g, s.weight));
    let counts = slot_counts(&sequence);
    for s in &servers {
        let expected = if s.weight == 0 { 0 } else { s.weight / gcd };
        assert_eq!(
            counts.get(&s.id).copied().unwrap_or(0),
            expected as usize,
            "round robin: server {} of weight {} (gcd {gcd})",
            s.id,
            s.weight
        );
    }
    assert_eq!(
        sequence.len(),
        live.iter()
            .map(|s| (s.weight / gcd.max(1)) as usize)
            .sum::<usize>()
    );
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}
