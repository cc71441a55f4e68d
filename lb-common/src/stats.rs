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
    // Inconsistent packets, dropped before any flow is looked up or created.
    DROP_BAD_IP_LENGTH = 29, "drop_bad_ip_length";
    DROP_BAD_TCP_HEADER = 30, "drop_bad_tcp_header";
    DROP_BAD_TCP_FLAGS = 31, "drop_bad_tcp_flags";
    DROP_BAD_UDP_LENGTH = 32, "drop_bad_udp_length";
}

impl Stat {
    /// Whether parsing refuses the packet as inconsistent (it is dropped), rather than
    /// leaving it to the kernel.
    pub const fn is_malformed(self) -> bool {
        matches!(self.0, 29..=32)
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
}
