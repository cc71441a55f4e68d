//! Flow lifecycle: the TCP state a tracked flow is in, and when it expires; and which TCP
//! flag combinations a real TCP sends at all.

use crate::{
    maps::{
        ENTRY_ESTABLISHED, FLOW_CLOSING, FLOW_ESTABLISHED, FLOW_SYN_RECV, FLOW_SYN_SEEN, FLOW_UDP,
    },
    wire::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// The state after a TCP packet with `flags`, sent by the client (`from_server` false) or the
/// server. A FIN or RST from either side closes. The server's SYN-ACK moves a new flow to
/// SYN_RECV, and only the client's ACK after it establishes: a spoofed SYN, whose source
/// never answers, stays in the handshake (with its short timeout). In DSR mode (`dsr`) lb
/// never sees the server, so the client's first ACK establishes.
#[inline(always)]
pub const fn next_tcp_state(state: u8, flags: u8, from_server: bool, dsr: bool) -> u8 {
    if flags & (TCP_FIN | TCP_RST) != 0 {
        FLOW_CLOSING
    } else if from_server {
        if state == FLOW_SYN_SEEN && flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
            FLOW_SYN_RECV
        } else {
            state
        }
    } else if flags & (TCP_SYN | TCP_ACK) == TCP_ACK
        && (state == FLOW_SYN_RECV || (dsr && state == FLOW_SYN_SEEN))
    {
        FLOW_ESTABLISHED
    } else {
        state
    }
}

/// A TCP flow whose handshake the client has not completed.
#[inline(always)]
pub const fn is_half_open(state: u8) -> bool {
    state == FLOW_SYN_SEEN || state == FLOW_SYN_RECV
}

/// A TCP flow (`state`, `flags` of its client-side entry) that never completed its
/// handshake: still in it, or closed from it. Such a flow may give its SNAT port up.
#[inline(always)]
pub const fn never_established(state: u8, flags: u8) -> bool {
    flags & ENTRY_ESTABLISHED == 0 && (is_half_open(state) || state == FLOW_CLOSING)
}

/// The TCP flags lb looks at: FIN, SYN, RST, ACK and URG (PSH, ECE and CWR go with any).
const TCP_FLAGS_CHECKED: u8 = 0x37;
/// Bit `f` is set for each combination `f` of the checked flags that a TCP stack sends: the
/// table of Linux's nf_conntrack (`tcp_valid_flags`). SYN+FIN, SYN+RST, FIN without ACK, no
/// flags at all and the rest are scans or attacks.
const TCP_VALID_FLAGS: u64 = {
    const URG: u8 = 0x20;
    let valid = [
        TCP_SYN,
        TCP_SYN | URG,
        TCP_SYN | TCP_ACK,
        TCP_RST,
        TCP_RST | TCP_ACK,
        TCP_FIN | TCP_ACK,
        TCP_FIN | TCP_ACK | URG,
        TCP_ACK,
        TCP_ACK | URG,
    ];
    let mut bits = 0u64;
    let mut i = 0;
    while i < valid.len() {
        bits |= 1 << valid[i];
        i += 1;
    }
    bits
};

/// Whether a TCP segment with this flags byte is one a TCP stack sends.
#[inline(always)]
pub const fn valid_tcp_flags(flags: u8) -> bool {
    TCP_VALID_FLAGS & (1 << (flags & TCP_FLAGS_CHECKED)) != 0
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
            FLOW_SYN_SEEN | FLOW_SYN_RECV => self.syn_ns,
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

    #[test]
    fn handshake_data_and_close() {
        let s = FLOW_SYN_SEEN;
        let client = |s, f| next_tcp_state(s, f, false, false);
        let server = |s, f| next_tcp_state(s, f, true, false);
        assert_eq!(client(s, TCP_SYN), FLOW_SYN_SEEN, "SYN retransmit");
        assert_eq!(
            client(s, TCP_ACK),
            FLOW_SYN_SEEN,
            "a client ACK before the server answered establishes nothing"
        );
        let s = server(s, TCP_SYN | TCP_ACK);
        assert_eq!(s, FLOW_SYN_RECV, "the server's SYN-ACK does not establish");
        assert_eq!(server(s, TCP_SYN | TCP_ACK), FLOW_SYN_RECV, "SYN-ACK again");
        assert_eq!(client(s, TCP_SYN), FLOW_SYN_RECV);
        let s = client(s, TCP_ACK);
        assert_eq!(s, FLOW_ESTABLISHED, "the client's ACK establishes");
        assert_eq!(client(s, TCP_ACK), FLOW_ESTABLISHED);
        assert_eq!(server(s, TCP_ACK), FLOW_ESTABLISHED);
        assert_eq!(client(s, TCP_ACK | TCP_FIN), FLOW_CLOSING);
        assert_eq!(server(s, TCP_RST), FLOW_CLOSING);
        assert_eq!(server(FLOW_CLOSING, TCP_ACK), FLOW_CLOSING);
        assert_eq!(client(FLOW_CLOSING, TCP_ACK), FLOW_CLOSING);
        assert_eq!(
            server(FLOW_SYN_SEEN, TCP_RST | TCP_ACK),
            FLOW_CLOSING,
            "refused"
        );
        assert_eq!(server(FLOW_SYN_SEEN, TCP_ACK), FLOW_SYN_SEEN);
    }

    #[test]
    fn dsr_flows_establish_on_the_clients_ack() {
        let s = next_tcp_state(FLOW_SYN_SEEN, TCP_SYN, false, true);
        assert_eq!(s, FLOW_SYN_SEEN);
        assert_eq!(next_tcp_state(s, TCP_ACK, false, true), FLOW_ESTABLISHED);
    }

    #[test]
    fn half_open_states() {
        assert!(is_half_open(FLOW_SYN_SEEN) && is_half_open(FLOW_SYN_RECV));
        assert!(!is_half_open(FLOW_ESTABLISHED) && !is_half_open(FLOW_CLOSING));
        assert!(!is_half_open(FLOW_UDP));
        assert!(never_established(FLOW_SYN_RECV, 0));
        assert!(
            never_established(FLOW_CLOSING, 0),
            "a handshake the server reset"
        );
        assert!(!never_established(FLOW_CLOSING, ENTRY_ESTABLISHED));
        assert!(!never_established(FLOW_ESTABLISHED, ENTRY_ESTABLISHED));
        assert!(!never_established(FLOW_UDP, 0));
    }

    #[test]
    fn only_flag_combinations_a_tcp_sends_are_valid() {
        const PSH: u8 = 0x08;
        const URG: u8 = 0x20;
        const ECE_CWR: u8 = 0xc0;
        for ok in [
            TCP_SYN,
            TCP_SYN | TCP_ACK,
            TCP_SYN | ECE_CWR,
            TCP_SYN | TCP_ACK | 0x40,
            TCP_ACK,
            TCP_ACK | PSH,
            TCP_ACK | PSH | URG,
            TCP_FIN | TCP_ACK,
            TCP_FIN | TCP_ACK | PSH,
            TCP_RST,
            TCP_RST | TCP_ACK,
        ] {
            assert!(valid_tcp_flags(ok), "{ok:#04x} is valid");
        }
        for bad in [
            0,
            PSH,
            TCP_FIN,
            TCP_SYN | TCP_FIN,
            TCP_SYN | TCP_FIN | TCP_ACK,
            TCP_SYN | TCP_RST,
            TCP_FIN | TCP_RST | TCP_ACK,
            TCP_FIN | PSH | URG,
            0xff,
        ] {
            assert!(!valid_tcp_flags(bad), "{bad:#04x} is not valid");
        }
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
        assert!(!t.expired(FLOW_SYN_RECV, 1000, 1010));
        assert!(t.expired(FLOW_SYN_RECV, 1000, 1011));
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
