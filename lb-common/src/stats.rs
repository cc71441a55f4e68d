//! Per-CPU counters: every verdict, and the reason behind every pass and drop.

/// Index into the per-CPU stats array. A plain `u32` newtype, not an enum, so any value read
/// back from the map is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat(pub u32);

macro_rules! stats {
    ($($name:ident = $idx:literal, $label:literal;)*) => {
        impl Stat {
            $(pub const $name: Stat = Stat($idx);)*
            /// Every counter with its metric label, in index order.
            pub const ALL: &'static [(Stat, &'static str)] = &[$((Stat::$name, $label)),*];
        }
        pub const STAT_COUNT: u32 = [$($idx),*].len() as u32;
    };
}

stats! {
    // Verdicts.
    VERDICT_PASS = 0, "verdict_pass";
    VERDICT_DROP = 1, "verdict_drop";
    VERDICT_TX = 2, "verdict_tx";
    VERDICT_REDIRECT = 3, "verdict_redirect";
    VERDICT_ABORTED = 4, "verdict_aborted";
    // Why a packet was passed to the kernel.
    PASS_NOT_IP = 5, "pass_not_ip";
    PASS_NOT_TCP_UDP = 6, "pass_not_tcp_udp";
    PASS_FRAGMENT = 7, "pass_fragment";
    PASS_NOT_VIP = 8, "pass_not_vip";
    PASS_USERSPACE_FRONTEND = 9, "pass_userspace_frontend";
    PASS_TRUNCATED = 10, "pass_truncated";
    PASS_FIB_MISS = 11, "pass_fib_miss";
    PASS_NO_TX_PORT = 12, "pass_no_tx_port";
    // Why a packet was dropped.
    DROP_NO_SERVER = 13, "drop_no_server";
    DROP_SNAT_EXHAUSTED = 14, "drop_snat_exhausted";
    DROP_TCP_NO_FLOW = 15, "drop_tcp_no_flow";
    DROP_MAP_ERROR = 16, "drop_map_error";
    // What happened to balanced traffic.
    FLOW_NEW = 17, "flow_new";
    NAT_FORWARD = 18, "nat_forward";
    NAT_REPLY = 19, "nat_reply";
    DROP_ALL_SERVERS_FULL = 20, "drop_all_servers_full";
    DSR_FORWARD = 21, "dsr_forward";
    STICKY_HIT = 22, "sticky_hit";
    FLOW_CLOSED = 23, "flow_closed";
    FLOW_REOPENED = 24, "flow_reopened";
    ICMP_TRANSLATED = 25, "icmp_translated";
    PASS_ICMP_NO_FLOW = 26, "pass_icmp_no_flow";
    // A flow to a DOWN server whose backend says on_down = "reset".
    FLOW_RESET_SENT = 27, "flow_reset_sent";
    FLOW_RESET_REBALANCED = 28, "flow_reset_rebalanced";
    // Inconsistent packets, dropped before any lookup (`Stat::is_malformed`).
    DROP_IPV4_BAD_LENGTH = 29, "drop_ipv4_bad_length";
    DROP_IPV6_BAD_LENGTH = 30, "drop_ipv6_bad_length";
    DROP_TCP_BAD_OFFSET = 31, "drop_tcp_bad_offset";
    DROP_TCP_BAD_FLAGS = 32, "drop_tcp_bad_flags";
    DROP_UDP_BAD_LENGTH = 33, "drop_udp_bad_length";
    // A TCP flow still in its handshake gave its SNAT port up to a new SYN.
    FLOW_SYN_RECLAIMED = 34, "flow_syn_reclaimed";
    // Egress missed the per-CPU cache (first packet, routing change, or TTL) and asked the FIB.
    EGRESS_FIB_LOOKUP = 35, "egress_fib_lookup";
    // A SYN reused a closed TCP flow's tuple while its server takes no new flows (drained,
    // DOWN or removed): the old flow was forgotten and the SYN balanced afresh.
    FLOW_REOPEN_REBALANCED = 36, "flow_reopen_rebalanced";
    // A mid-stream TCP packet with no flow to a DSR frontend with dsr_stateless_fallback:
    // balanced by the maglev table and tracked as established.
    FLOW_STATELESS_FALLBACK = 37, "flow_stateless_fallback";
}

/// What a counter counts, by its label's prefix: metrics keep the kinds apart, since every
/// packet gets exactly one verdict while a pass or a drop also counts its reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatKind {
    /// The XDP action returned (`verdict_*`): these sum to the packets seen.
    Verdict,
    /// Why a packet was passed to the kernel (`pass_*`).
    PassReason,
    /// Why a packet was dropped (`drop_*`).
    DropReason,
    /// What happened to balanced traffic (the rest): flows opened, NAT, sticky hits, ...
    Event,
}

impl StatKind {
    /// The kind of the counter labelled `label`, and the label without its kind's prefix.
    pub fn of(label: &str) -> (StatKind, &str) {
        for (prefix, kind) in [
            ("verdict_", StatKind::Verdict),
            ("pass_", StatKind::PassReason),
            ("drop_", StatKind::DropReason),
        ] {
            if let Some(rest) = label.strip_prefix(prefix) {
                return (kind, rest);
            }
        }
        (StatKind::Event, label)
    }

    /// The metric family (without `_total`) and label key the daemon exports this kind as.
    pub const fn metric(self) -> (&'static str, &'static str) {
        match self {
            StatKind::Verdict => ("lb_xdp_verdicts", "verdict"),
            StatKind::PassReason => ("lb_xdp_pass_reasons", "reason"),
            StatKind::DropReason => ("lb_xdp_drop_reasons", "reason"),
            StatKind::Event => ("lb_xdp_events", "event"),
        }
    }
}

/// The sample the counter labelled `label` (`flow_new`) is exported as:
/// `lb_xdp_events_total{event="flow_new"}`.
#[cfg(not(target_arch = "bpf"))]
pub fn metric_sample(label: &str) -> std::string::String {
    let (kind, name) = StatKind::of(label);
    let (family, key) = kind.metric();
    std::format!("{family}_total{{{key}=\"{name}\"}}")
}

impl Stat {
    /// The parser's reasons for dropping a packet rather than passing it: headers that
    /// contradict each other or the frame (an IPv4 total length beyond the frame or below its
    /// header, an IPv6 payload beyond the frame, a TCP data offset below 5 or past the
    /// segment, flags no TCP sends, a UDP length below 8 or past the IP payload). The
    /// kernel's own input path drops the IP-level ones as well.
    pub const fn is_malformed(self) -> bool {
        matches!(
            self,
            Stat::DROP_IPV4_BAD_LENGTH
                | Stat::DROP_IPV6_BAD_LENGTH
                | Stat::DROP_TCP_BAD_OFFSET
                | Stat::DROP_TCP_BAD_FLAGS
                | Stat::DROP_UDP_BAD_LENGTH
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_dense_and_labels_unique() {
        for (i, (stat, _)) in Stat::ALL.iter().enumerate() {
            assert_eq!(stat.0 as usize, i);
        }
        let mut labels: Vec<_> = Stat::ALL.iter().map(|(_, l)| *l).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len() as u32, STAT_COUNT);
    }

    #[test]
    fn kinds_split_verdicts_from_reasons() {
        let verdicts: Vec<_> = Stat::ALL
            .iter()
            .filter(|(_, l)| StatKind::of(l).0 == StatKind::Verdict)
            .map(|(_, l)| StatKind::of(l).1)
            .collect();
        assert_eq!(verdicts, ["pass", "drop", "tx", "redirect", "aborted"]);
        assert_eq!(
            StatKind::of("pass_not_vip"),
            (StatKind::PassReason, "not_vip")
        );
        assert_eq!(
            StatKind::of("drop_no_server"),
            (StatKind::DropReason, "no_server")
        );
        assert_eq!(StatKind::of("flow_new"), (StatKind::Event, "flow_new"));
        assert_eq!(
            metric_sample("verdict_tx"),
            "lb_xdp_verdicts_total{verdict=\"tx\"}"
        );
        assert_eq!(
            metric_sample("drop_no_server"),
            "lb_xdp_drop_reasons_total{reason=\"no_server\"}"
        );
    }

    #[test]
    fn malformed_reasons_are_drops_and_nothing_else_is() {
        for (stat, label) in Stat::ALL {
            assert_eq!(
                stat.is_malformed(),
                label.starts_with("drop_") && label.contains("_bad_"),
                "{label}"
            );
        }
    }
}
