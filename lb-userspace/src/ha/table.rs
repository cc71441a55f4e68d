//! What the peer knows: a digest per flow and stickiness entry last sent to it or received
//! from it, so each scan sends only what changed, and an entry that just arrived from the
//! peer is never echoed back. And the translation of the peer's ids into ours.

use std::{
    collections::{HashMap, HashSet},
    hash::BuildHasher as _,
};

use lb_common::{
    flow::Timeouts,
    maps::{FlowKey, NatEntry, StickyEntry, StickyKey},
};

use super::wire::{WireFlow, WireNames, WireSticky};
use crate::dataplane::Names;

/// A flow is re-sent when nothing else changed but its last packet moved into a later
/// period of this length (its state's timeout / 4, at least a second): the peer's copy
/// then never expires more than a quarter of a timeout before this node's.
const MIN_REFRESH_NS: u64 = 1_000_000_000;

/// Digests of what the peer holds, keyed by a hash of the entry's key (a collision only
/// costs a resend or a skipped one until the entry changes again).
#[derive(Default)]
pub struct Shadow {
    hasher: foldhash::fast::RandomState,
    flows: HashMap<u64, u64>,
    sticky: HashMap<u64, u64>,
}

fn refresh_period(state: u8, timeouts: &Timeouts) -> u64 {
    (timeouts.for_state(state) / 4).max(MIN_REFRESH_NS)
}

impl Shadow {
    fn hash(&self, key: &impl std::hash::Hash) -> u64 {
        self.hasher.hash_one(key)
    }

    /// This node's flow as a digest: what a receiver must learn again when it changes.
    fn flow_digest(&self, entry: &NatEntry, timeouts: &Timeouts) -> u64 {
        self.hasher.hash_one((
            (entry.src, entry.dst, entry.sport, entry.dport),
            (entry.server_id, entry.state, entry.flags),
            entry.last_seen_ns / refresh_period(entry.state, timeouts),
        ))
    }

    fn sticky_digest(&self, entry: &StickyEntry) -> u64 {
        self.hasher
            .hash_one((entry.server_id, entry.last_seen_ns / MIN_REFRESH_NS))
    }

    /// Whether the peer lacks this flow as it is now; if so it is recorded as sent.
    pub fn flow_changed(&mut self, key: &FlowKey, entry: &NatEntry, timeouts: &Timeouts) -> bool {
        let (k, d) = (self.hash(key), self.flow_digest(entry, timeouts));
        self.flows.insert(k, d) != Some(d)
    }

    /// Record a flow the peer sent, as written here, so it is not sent back.
    pub fn flow_known(&mut self, key: &FlowKey, entry: &NatEntry, timeouts: &Timeouts) {
        let (k, d) = (self.hash(key), self.flow_digest(entry, timeouts));
        self.flows.insert(k, d);
    }

    /// Forget a flow recorded as sent whose send did not happen.
    pub fn flow_unsent(&mut self, key: &FlowKey) {
        let k = self.hash(key);
        self.flows.remove(&k);
    }

    pub fn sticky_changed(&mut self, key: &StickyKey, entry: &StickyEntry) -> bool {
        let (k, d) = (self.hash(key), self.sticky_digest(entry));
        self.sticky.insert(k, d) != Some(d)
    }

    pub fn sticky_known(&mut self, key: &StickyKey, entry: &StickyEntry) {
        let (k, d) = (self.hash(key), self.sticky_digest(entry));
        self.sticky.insert(k, d);
    }

    /// Keep only the digests of entries a scan saw (`live`, by key hash): the shadow stays
    /// the size of the tables as flows expire.
    pub fn trim(&mut self, live_flows: &HashSet<u64>, live_sticky: &HashSet<u64>) {
        self.flows.retain(|k, _| live_flows.contains(k));
        self.sticky.retain(|k, _| live_sticky.contains(k));
    }

    pub fn key_hash(&self, key: &impl std::hash::Hash) -> u64 {
        self.hash(key)
    }

    pub fn len(&self) -> (usize, usize) {
        (self.flows.len(), self.sticky.len())
    }
}

/// The peer's ids as ours, by name: frontend and backend names, and servers by backend,
/// address and port.
#[derive(Debug, Default)]
pub struct IdMap {
    frontends: HashMap<u32, u32>,
    backends: HashMap<u32, u32>,
    servers: HashMap<u32, u32>,
}

impl IdMap {
    pub fn new(peer: &WireNames, local: &Names) -> IdMap {
        let invert = |m: &HashMap<u32, String>| -> HashMap<String, u32> {
            m.iter().map(|(id, n)| (n.clone(), *id)).collect()
        };
        let (frontends, backends) = (invert(&local.frontends), invert(&local.backends));
        let servers: HashMap<_, u32> = local
            .servers
            .iter()
            .map(|(id, key)| (key.clone(), *id))
            .collect();
        IdMap {
            frontends: peer
                .frontends
                .iter()
                .filter_map(|(id, n)| Some((*id, *frontends.get(n)?)))
                .collect(),
            backends: peer
                .backends
                .iter()
                .filter_map(|(id, n)| Some((*id, *backends.get(n)?)))
                .collect(),
            servers: peer
                .servers
                .iter()
                .filter_map(|(id, b, a, p)| Some((*id, *servers.get(&(b.clone(), *a, *p))?)))
                .collect(),
        }
    }

    /// The flow as this node tracks it, last seen `age` before `now_ns`; `None` when one of
    /// its names is unknown here (the configs differ).
    pub fn flow(&self, f: &WireFlow, now_ns: u64) -> Option<NatEntry> {
        let frontend = u16::try_from(*self.frontends.get(&u32::from(f.entry.frontend_id))?).ok()?;
        let backend = u16::try_from(*self.backends.get(&u32::from(f.entry.backend_id))?).ok()?;
        Some(NatEntry {
            server_id: *self.servers.get(&f.entry.server_id)?,
            frontend_id: frontend,
            backend_id: backend,
            last_seen_ns: now_ns.saturating_sub(u64::from(f.age_ms) * 1_000_000),
            ..f.entry
        })
    }

    pub fn sticky(&self, s: &WireSticky, now_ns: u64) -> Option<(StickyKey, StickyEntry)> {
        Some((
            StickyKey {
                backend_id: *self.backends.get(&s.backend)?,
                addr: s.addr,
            },
            StickyEntry {
                server_id: *self.servers.get(&s.server)?,
                _pad: 0,
                last_seen_ns: now_ns.saturating_sub(u64::from(s.age_ms) * 1_000_000),
            },
        ))
    }
}

/// How long ago `last_seen_ns` was, in milliseconds (saturating).
pub fn age_ms(last_seen_ns: u64, now_ns: u64) -> u32 {
    u32::try_from(now_ns.saturating_sub(last_seen_ns) / 1_000_000).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeouts() -> Timeouts {
        Timeouts {
            syn_ns: 10_000_000_000,
            established_ns: 3_600_000_000_000,
            closing_ns: 10_000_000_000,
            udp_ns: 30_000_000_000,
        }
    }

    fn entry(state: u8, last_seen_ns: u64) -> NatEntry {
        NatEntry {
            server_id: 3,
            state,
            last_seen_ns,
            ..NatEntry::default()
        }
    }

    #[test]
    fn a_flow_is_sent_once_until_it_changes_or_its_refresh_period_passes() {
        use lb_common::maps::{FLOW_CLOSING, FLOW_UDP};
        let t = timeouts();
        let mut shadow = Shadow::default();
        let key = FlowKey::default();
        let s = 1_000_000_000;
        assert!(shadow.flow_changed(&key, &entry(FLOW_UDP, 100 * s), &t));
        assert!(!shadow.flow_changed(&key, &entry(FLOW_UDP, 100 * s), &t));
        // UDP's 30 s timeout refreshes every 7.5 s: 101 s is in the same period as 100 s.
        assert!(!shadow.flow_changed(&key, &entry(FLOW_UDP, 101 * s), &t));
        assert!(shadow.flow_changed(&key, &entry(FLOW_UDP, 106 * s), &t));
        assert!(shadow.flow_changed(&key, &entry(FLOW_CLOSING, 106 * s), &t));
        // What arrived from the peer is not sent back.
        let other = FlowKey {
            sport: 1,
            ..FlowKey::default()
        };
        shadow.flow_known(&other, &entry(FLOW_UDP, 5 * s), &t);
        assert!(!shadow.flow_changed(&other, &entry(FLOW_UDP, 5 * s), &t));
        shadow.flow_unsent(&other);
        assert!(shadow.flow_changed(&other, &entry(FLOW_UDP, 5 * s), &t));
    }

    #[test]
    fn peer_ids_map_to_local_ones_by_name_and_unknown_names_are_refused() {
        let addr = "198.18.11.2".parse().unwrap();
        let peer = WireNames {
            frontends: vec![(4, "web".into()), (5, "gone".into())],
            backends: vec![(6, "pool".into())],
            servers: vec![(9, "pool".into(), addr, 80)],
        };
        let local = Names {
            frontends: [(1, "web".to_string())].into(),
            backends: [(2, "pool".to_string())].into(),
            servers: [(3, ("pool".to_string(), addr, 80))].into(),
        };
        let map = IdMap::new(&peer, &local);
        let mut f = WireFlow {
            key: FlowKey::default(),
            entry: NatEntry {
                server_id: 9,
                frontend_id: 4,
                backend_id: 6,
                ..NatEntry::default()
            },
            age_ms: 1500,
        };
        let e = map.flow(&f, 10_000_000_000).unwrap();
        assert_eq!((e.server_id, e.frontend_id, e.backend_id), (3, 1, 2));
        assert_eq!(e.last_seen_ns, 8_500_000_000);
        f.entry.frontend_id = 5;
        assert!(map.flow(&f, 0).is_none(), "a frontend this node lacks");
        let s = WireSticky {
            backend: 6,
            addr: [1; 16],
            server: 9,
            age_ms: 0,
        };
        let (k, v) = map.sticky(&s, 5).unwrap();
        assert_eq!((k.backend_id, v.server_id, v.last_seen_ns), (2, 3, 5));
    }
}
