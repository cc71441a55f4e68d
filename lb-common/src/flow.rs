//! Flow lifecycle: the TCP state a tracked flow is in, and when it expires.

use crate::{
    maps::{FLOW_CLOSING, FLOW_ESTABLISHED, FLOW_SYN_SEEN, FLOW_UDP},
    wire::{TCP_FIN, TCP_RST},
};

/// The state after a TCP packet with `flags`, sent by the client (`from_server` false) or the
/// server. A FIN or RST from either side closes; the server's first answer establishes.
#[inline(always)]
pub const fn next_tcp_state(state: u8, flags: u8, from_server: bool) -> u8 {
    if flags & (TCP_FIN | TCP_RST) != 0 {
        FLOW_CLOSING
    } else if from_server && state == FLOW_SYN_SEEN {
        FLOW_ESTABLISHED
    } else {
        state
    }
}

/// Idle time after which a flow in each state is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub syn_ns: u64,
    pub established_ns: u64,
    pub closing_ns: u64,
    pub udp_ns: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        const S: u64 = 1_000_000_000;
        Timeouts {
            syn_ns: 10 * S,
            established_ns: 3600 * S,
            closing_ns: 10 * S,
            udp_ns: 30 * S,
        }
    }
}

impl Timeouts {
    pub const fn for_state(&self, state: u8) -> u64 {
        match state {
            FLOW_SYN_SEEN => self.syn_ns,
            FLOW_ESTABLISHED => self.established_ns,
            FLOW_UDP => self.udp_ns,
            _ => self.closing_ns,
        }
    }

    /// Has a flow in `state`, last seen at `last_seen_ns`, been idle too long at `now_ns`?
    pub const fn expired(&self, state: u8, last_seen_ns: u64, now_ns: u64) -> bool {
        now_ns.saturating_sub(last_seen_ns) > self.for_state(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{TCP_ACK, TCP_SYN};

    #[test]
    fn handshake_data_and_close() {
        let s = FLOW_SYN_SEEN;
        assert_eq!(
            next_tcp_state(s, TCP_SYN, false),
            FLOW_SYN_SEEN,
            "SYN retransmit"
        );
        let s = next_tcp_state(s, TCP_SYN | TCP_ACK, true);
        assert_eq!(s, FLOW_ESTABLISHED);
        assert_eq!(next_tcp_state(s, TCP_ACK, false), FLOW_ESTABLISHED);
        assert_eq!(next_tcp_state(s, TCP_ACK | TCP_FIN, false), FLOW_CLOSING);
        assert_eq!(next_tcp_state(s, TCP_RST, true), FLOW_CLOSING);
        assert_eq!(next_tcp_state(FLOW_CLOSING, TCP_ACK, true), FLOW_CLOSING);
        assert_eq!(
            next_tcp_state(FLOW_SYN_SEEN, TCP_RST | TCP_ACK, true),
            FLOW_CLOSING,
            "refused"
        );
    }

    #[test]
    fn each_state_has_its_own_timeout() {
        let t = Timeouts {
            syn_ns: 10,
            established_ns: 100,
            closing_ns: 5,
            udp_ns: 30,
        };
        assert!(!t.expired(FLOW_SYN_SEEN, 1000, 1010));
        assert!(t.expired(FLOW_SYN_SEEN, 1000, 1011));
        assert!(!t.expired(FLOW_ESTABLISHED, 1000, 1100));
        assert!(t.expired(FLOW_ESTABLISHED, 1000, 1101));
        assert!(t.expired(FLOW_CLOSING, 1000, 1006));
        assert!(!t.expired(FLOW_UDP, 1000, 1030));
        assert!(t.expired(FLOW_UDP, 1000, 1031));
        assert!(
            !t.expired(FLOW_UDP, 2000, 1000),
            "a clock behind the entry never expires it"
        );
    }
}
