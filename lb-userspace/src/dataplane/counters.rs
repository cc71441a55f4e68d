//! Reading the data plane's per-CPU counters and open-flow counts.

use anyhow::Result;
use aya::maps::{Array, MapData, PerCpuArray};
use lb_common::{
    maps::{MAP_FRONTEND_STATS, MAP_SERVER_ACTIVE, MAP_SERVER_STATS, MAP_STATS, TrafficStats},
    stats::Stat,
};

use super::Dataplane;

impl Dataplane {
    /// Every counter, summed over CPUs.
    pub fn stats(&self) -> Result<Vec<(&'static str, u64)>> {
        let stats: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(self.map_ref(MAP_STATS)?)?;
        Stat::ALL
            .iter()
            .map(|(stat, label)| Ok((*label, stats.get(&stat.0, 0)?.iter().sum())))
            .collect()
    }

    fn traffic(&self, map: &str, id: u32) -> Result<TrafficStats> {
        let stats: PerCpuArray<&MapData, TrafficStats> = PerCpuArray::try_from(self.map_ref(map)?)?;
        let mut total = TrafficStats::default();
        for s in stats.get(&id, 0)?.iter() {
            total.packets_in += s.packets_in;
            total.bytes_in += s.bytes_in;
            total.packets_out += s.packets_out;
            total.bytes_out += s.bytes_out;
            total.new_flows += s.new_flows;
            total.drop_no_server += s.drop_no_server;
            total.drop_snat_exhausted += s.drop_snat_exhausted;
            total.drop_other += s.drop_other;
        }
        Ok(total)
    }

    /// A server's traffic, summed over CPUs.
    pub fn server_stats(&self, server_id: u32) -> Result<TrafficStats> {
        self.traffic(MAP_SERVER_STATS, server_id)
    }

    /// A frontend's traffic and drops, summed over CPUs.
    pub fn frontend_stats(&self, frontend_id: u32) -> Result<TrafficStats> {
        self.traffic(MAP_FRONTEND_STATS, frontend_id)
    }

    /// A server's open flows as the data plane counts them.
    pub fn server_active(&self, server_id: u32) -> Result<u64> {
        let active: Array<&MapData, u64> = Array::try_from(self.map_ref(MAP_SERVER_ACTIVE)?)?;
        Ok(active.get(&server_id, 0)?)
    }
}
