//! The kernel side as userspace sees it: loading the embedded XDP object, attaching it, and
//! writing frontends, servers and selection tables into its maps.

use std::collections::HashMap;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{Array, DevMapHash, HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{Xdp, XdpMode},
};
use lb_common::{
    maps::{
        BackendInfo, FrontendInfo, FrontendKey, MAP_BACKENDS, MAP_FRONTENDS, MAP_RING, MAP_SERVERS,
        MAP_STATS, MAP_TX_PORTS, PROG_LB, PROG_PASS, RING_STRIDE, ServerInfo,
    },
    stats::Stat,
};
use tracing::{info, warn};

use crate::plan::Plan;

/// The XDP object built by build.rs from lb-ebpf.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

pub struct Dataplane {
    ebpf: Ebpf,
    /// Each backend's table as last written, so an update writes only the slots that change.
    rings: HashMap<u32, Vec<u32>>,
    frontends: Vec<FrontendKey>,
}

impl Dataplane {
    /// Load (verify) both programs; nothing is attached yet.
    pub fn load() -> Result<Self> {
        let mut ebpf = Ebpf::load(EBPF_OBJECT).context("loading the embedded XDP object")?;
        for name in [PROG_LB, PROG_PASS] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} is missing from the XDP object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("the kernel refused program {name}"))?;
        }
        Ok(Self {
            ebpf,
            rings: HashMap::new(),
            frontends: Vec::new(),
        })
    }

    pub fn program(&mut self, name: &str) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} is missing"))?
            .try_into()?)
    }

    /// Attach `prog` to `iface` in native mode, falling back to generic mode with a warning.
    pub fn attach(&mut self, prog: &str, iface: &str) -> Result<XdpMode> {
        let xdp = self.program(prog)?;
        match xdp.attach(iface, XdpMode::Driver) {
            Ok(_) => Ok(XdpMode::Driver),
            Err(native) => {
                warn!(%iface, error = %native, "native XDP failed; falling back to generic (slower) mode");
                xdp.attach(iface, XdpMode::Skb).with_context(|| {
                    format!("attaching XDP to {iface}: is the interface name right?")
                })?;
                Ok(XdpMode::Skb)
            }
        }
    }

    /// Allow XDP_REDIRECT out of `ifindex`.
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<()> {
        let mut ports = DevMapHash::try_from(self.map(MAP_TX_PORTS)?)?;
        ports.insert(ifindex, ifindex, None, 0)?;
        Ok(())
    }

    fn map(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} is missing from the XDP object"))
    }

    /// Write a whole plan: servers first, then tables, then frontends, so a frontend is never
    /// visible before the table it points at. Returns how many table slots were written.
    pub fn apply(&mut self, plan: &Plan) -> Result<usize> {
        {
            let mut servers: Array<&mut MapData, ServerInfo> =
                Array::try_from(self.map(MAP_SERVERS)?)?;
            for (id, server) in &plan.servers {
                servers.set(*id, server, 0)?;
            }
        }
        let mut written = 0;
        for (backend_id, table) in &plan.tables {
            written += self.set_table(*backend_id, table)?;
        }
        let mut frontends: BpfHashMap<&mut MapData, FrontendKey, FrontendInfo> =
            BpfHashMap::try_from(self.ebpf.map_mut(MAP_FRONTENDS).context(MAP_FRONTENDS)?)?;
        for (key, value) in &plan.frontends {
            frontends.insert(key, value, 0)?;
        }
        let stale: Vec<FrontendKey> = self
            .frontends
            .iter()
            .filter(|k| !plan.frontends.iter().any(|(n, _)| n == *k))
            .copied()
            .collect();
        for key in stale {
            frontends.remove(&key)?;
        }
        self.frontends = plan.frontends.iter().map(|(k, _)| *k).collect();
        Ok(written)
    }

    /// Write a backend's table, only the slots that differ from what is there.
    fn set_table(&mut self, backend_id: u32, table: &[u32]) -> Result<usize> {
        let old = self.rings.remove(&backend_id).unwrap_or_default();
        let changed = lb_common::maglev::changed_slots(&old, table);
        {
            let mut ring: Array<&mut MapData, u32> = Array::try_from(self.map(MAP_RING)?)?;
            let base = backend_id * RING_STRIDE;
            for &slot in &changed {
                ring.set(base + slot, table[slot as usize], 0)?;
            }
        }
        let mut backends: Array<&mut MapData, BackendInfo> =
            Array::try_from(self.map(MAP_BACKENDS)?)?;
        backends.set(
            backend_id,
            BackendInfo {
                ring_size: table.len() as u32,
                _pad: 0,
            },
            0,
        )?;
        info!(
            backend_id,
            slots = table.len(),
            written = changed.len(),
            "selection table updated"
        );
        self.rings.insert(backend_id, table.to_vec());
        Ok(changed.len())
    }

    /// Every counter, summed over CPUs.
    pub fn stats(&self) -> Result<Vec<(&'static str, u64)>> {
        let map = self.ebpf.map(MAP_STATS).context(MAP_STATS)?;
        let stats: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
        Stat::ALL
            .iter()
            .map(|(stat, label)| Ok((*label, stats.get(&stat.0, 0)?.iter().sum())))
            .collect()
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}
