//! lb-common's flow lifecycle: TCP state transitions for any state and flags (a FIN or RST
//! closes, closing is final, the server's SYN-ACK moves a new flow to SYN_RECV and only the
//! client's ACK establishes, at once in DSR mode), and expiry monotone in time and in the
//! timeouts, including timeouts taken from the config's durations.

use std::time::Duration;

use lb_common::{
    flow::{Timeouts, is_half_open, next_tcp_state},
    maps::{FLOW_CLOSING, FLOW_ESTABLISHED, FLOW_SYN_RECV, FLOW_SYN_SEEN, FLOW_UDP},
    wire::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};
use lb_userspace::config::DataplaneConfig;

use super::support::Input;

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let from_config = input.bool();
    let timeouts = if from_config {
        config_timeouts(&mut input)
    } else {
        Timeouts {
            syn_ns: input.u64(),
            established_ns: input.u64(),
            closing_ns: input.u64(),
            udp_ns: input.u64(),
        }
    };
    // Longer (or equal) timeouts in every state.
    let longer = Timeouts {
        syn_ns: timeouts.syn_ns.saturating_add(input.u32().into()),
        established_ns: timeouts.established_ns.saturating_add(input.u32().into()),
        closing_ns: timeouts.closing_ns.saturating_add(input.u32().into()),
        udp_ns: timeouts.udp_ns.saturating_add(input.u32().into()),
    };
    // Any state byte, valid or not: nothing may panic.
    let mut state = match input.u8() {
        0..=127 => FLOW_SYN_SEEN,
        b => b,
    };
    let dsr = input.bool();
    let mut last_seen = input.u64() >> 1;
    let mut now = last_seen;
    while !input.is_empty() {
        let flags = input.u8();
        let from_server = input.bool();
        let step = u64::from(input.u32());
        let next = next_tcp_state(state, flags, from_server, dsr);
        let syn_ack = flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK;
        let plain_ack = flags & (TCP_SYN | TCP_ACK) == TCP_ACK;
        if flags & (TCP_FIN | TCP_RST) != 0 {
            assert_eq!(next, FLOW_CLOSING, "a FIN or RST closes");
        } else if from_server && state == FLOW_SYN_SEEN && syn_ack {
            assert_eq!(
                next, FLOW_SYN_RECV,
                "the server's SYN-ACK does not establish"
            );
        } else if !from_server
            && plain_ack
            && (state == FLOW_SYN_RECV || (dsr && state == FLOW_SYN_SEEN))
        {
            assert_eq!(next, FLOW_ESTABLISHED, "the client's ACK establishes");
        } else {
            assert_eq!(next, state, "nothing else changes the state");
        }
        if next == FLOW_ESTABLISHED && state != FLOW_ESTABLISHED {
            assert!(!from_server, "only the client establishes");
        }
        if state == FLOW_CLOSING {
            assert_eq!(next, FLOW_CLOSING, "closing is final");
        }
        if state == FLOW_ESTABLISHED {
            assert_ne!(next, FLOW_SYN_SEEN, "no way back to SYN_SEEN");
        }
        if state == FLOW_ESTABLISHED || state == FLOW_CLOSING {
            assert!(!is_half_open(next), "no way back into the handshake");
        }
        const TCP_STATES: [u8; 4] = [FLOW_SYN_SEEN, FLOW_SYN_RECV, FLOW_ESTABLISHED, FLOW_CLOSING];
        if TCP_STATES.contains(&state) {
            assert!(TCP_STATES.contains(&next), "a TCP state became {next}");
        }
        state = next;
        // A packet refreshes the flow: never expired at the moment it was seen.
        last_seen = now;
        assert!(
            !timeouts.expired(state, last_seen, now),
            "expired when seen"
        );
        now = now.saturating_add(step);
        check_expiry(&timeouts, &longer, state, last_seen, now, step);
        // UDP flows follow the same rules with their own timeout.
        check_expiry(&timeouts, &longer, FLOW_UDP, last_seen, now, step);
    }
}

fn check_expiry(t: &Timeouts, longer: &Timeouts, state: u8, last: u64, now: u64, step: u64) {
    let expired = t.expired(state, last, now);
    // Monotone in time: once expired, later too; never before the timeout has passed.
    if expired {
        assert!(
            t.expired(state, last, now.saturating_add(step)),
            "un-expired later"
        );
    }
    assert_eq!(
        expired,
        now.saturating_sub(last) > t.for_state(state),
        "expiry is idle time past the state's timeout"
    );
    // Monotone in the timeouts: a longer one never expires first.
    if longer.expired(state, last, now) {
        assert!(expired, "a longer timeout expired first");
    }
    // A clock that went backwards (now < last) never expires a flow.
    assert!(
        !t.expired(state, now, last.min(now)),
        "expired by a past time"
    );
}

/// Timeouts as the daemon derives them from `[dataplane]` durations (nanoseconds, at most
/// u64::MAX); longer durations never give shorter timeouts.
fn config_timeouts(input: &mut Input) -> Timeouts {
    let mut duration = || {
        Duration::new(
            input.u64() >> (input.u8() % 64),
            input.u32() % 1_000_000_000,
        )
    };
    let mut config = DataplaneConfig {
        tcp_syn_timeout: duration(),
        tcp_established_timeout: duration(),
        tcp_closing_timeout: duration(),
        udp_timeout: duration(),
        ..DataplaneConfig::default()
    };
    let timeouts = config.timeouts();
    for (field, ns) in [
        (&config.tcp_syn_timeout, timeouts.syn_ns),
        (&config.tcp_established_timeout, timeouts.established_ns),
        (&config.tcp_closing_timeout, timeouts.closing_ns),
        (&config.udp_timeout, timeouts.udp_ns),
    ] {
        assert_eq!(
            u128::from(ns),
            field.as_nanos().min(u128::from(u64::MAX)),
            "{field:?} is {ns} ns"
        );
    }
    config.tcp_established_timeout +=
        Duration::from_secs(1).min(Duration::MAX - config.tcp_established_timeout);
    assert!(config.timeouts().established_ns >= timeouts.established_ns);
    timeouts
}
