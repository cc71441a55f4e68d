//! The kernel side as userspace sees it: loading the embedded XDP object, attaching it,
//! writing plans into its maps (double-buffered tables, only changed slots), and the
//! connection-tracking garbage collector.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{Xdp, XdpMode},
};
use lb_common::{
    flow::Timeouts,
    maps::{
        BackendInfo, ENTRY_COUNTED, ENTRY_DSR, FlowKey, FrontendInfo, FrontendKey,
        MAP_BACKEND_SERVERS, MAP_BACKENDS, MAP_CONNTRACK, MAP_FRONTEND_STATS, MAP_FRONTENDS,
        MAP_RING, MAP_SERVER_ACTIVE, MAP_SERVER_STATS, MAP_SERVERS, MAP_SNAT, MAP_STATS,
        MAP_TX_PORTS, NatEntry, PROG_LB, PROG_PASS, ServerInfo, TrafficStats,
    },
    stats::Stat,
};
use tracing::{debug, info, warn};

use crate::{
    config::Config,
    plan::{BackendPlan, Ids, Plan},
};

/// The XDP object built by build.rs from lb-ebpf.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// Kernel memory per tracked flow: a client-side and a server-side hash entry, each a
/// 40-byte key, a 56-byte value and about 64 bytes of htab element overhead.
pub const BYTES_PER_FLOW: u64 = 2 * (40 + 56 + 64);

/// What the maps hold for one backend, so updates write only what changes.
#[derive(Default)]
struct BackendState {
    info: BackendInfo,
    tables: [Vec<u32>; 2],
    lists: [Vec<u32>; 2],
}

pub struct Dataplane {
    ebpf: Ebpf,
    ids: Ids,
    backends: HashMap<u32, BackendState>,
    /// Servers as last written, by id.
    servers: HashMap<u32, ServerInfo>,
    frontends: Vec<FrontendKey>,
    managed_neighbours: HashSet<std::net::IpAddr>,
    links: HashMap<(String, String), aya::programs::xdp::XdpLinkId>,
    /// Where maps and links are pinned, if anywhere.
    pins: Option<std::path::PathBuf>,
}

/// The pin directory for a base path: one subdirectory per map layout version, so a daemon
/// never re-attaches to maps of another layout.
pub fn pin_dir(base: &Path) -> std::path::PathBuf {
    base.join(format!("v{}", lb_common::maps::LAYOUT_VERSION))
}

/// Is `path` (or its nearest existing ancestor) on a BPF filesystem?
pub fn on_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let existing = path.ancestors().find(|p| p.exists());
    existing
        .and_then(|p| nix::sys::statfs::statfs(p).ok())
        .is_some_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// A reverse entry younger than this is never an orphan: its flow's entry may be about to
/// be inserted.
const ORPHAN_GRACE_NS: u64 = 2_000_000_000;

/// Frontend and server names behind the ids.
#[derive(Debug, Default)]
pub struct Inventory {
    pub frontends: Vec<(u32, String)>,
    pub servers: Vec<InventoryServer>,
}

#[derive(Debug)]
pub struct InventoryServer {
    pub id: u32,
    pub backend: String,
    pub address: std::net::IpAddr,
    pub weight: u32,
    /// Still in its backend (a removed server keeps its id and counters).
    pub present: bool,
}

/// What one garbage-collection pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub flows: usize,
    pub expired: usize,
    pub orphans: usize,
    /// Open flows per server id after reconciliation.
    pub active: HashMap<u32, u64>,
    /// Open flows per frontend id.
    pub active_per_frontend: HashMap<u32, u64>,
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow!("map {name} is missing from the XDP object"))
}

/// Delete a pin directory (links and maps); the kernel objects go away once no process or
/// attachment holds them.
pub fn remove_pins(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("removing pins in {}", dir.display()))?;
    }
    Ok(())
}

/// `bpf_ktime_get_ns`'s clock, for comparing with entry timestamps.
pub fn monotonic_now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

impl Dataplane {
    /// Load (verify) both programs with the default table sizes; nothing is attached yet.
    pub fn load() -> Result<Self> {
        Self::load_with(lb_common::maps::CONNTRACK_ENTRIES)
    }

    /// Load with room for `conntrack_size` tracked flows.
    pub fn load_with(conntrack_size: u32) -> Result<Self> {
        Self::load_pinned(conntrack_size, None)
    }

    /// Load with maps pinned under `pins` (see [`pin_dir`]): maps already pinned there
    /// (by an earlier daemon of the same layout version) are reused with their contents,
    /// others are created and pinned, and links pinned there are taken over by `attach`.
    pub fn load_pinned(conntrack_size: u32, pins: Option<&Path>) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(MAP_CONNTRACK, conntrack_size)
            .map_max_entries(MAP_SNAT, conntrack_size);
        if let Some(dir) = pins {
            std::fs::create_dir_all(dir.join("links"))
                .with_context(|| format!("creating the pin directory {}", dir.display()))?;
            for name in lb_common::maps::PINNED_MAPS {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .context("loading the embedded XDP object")?;
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
            ids: Ids::default(),
            backends: HashMap::new(),
            servers: HashMap::new(),
            frontends: Vec::new(),
            managed_neighbours: HashSet::new(),
            links: HashMap::new(),
            pins: pins.map(Path::to_path_buf),
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
    /// With pinning, a link an earlier daemon pinned for `iface` is taken over (its program
    /// replaced atomically, so no packet misses XDP), and a new link is pinned.
    pub fn attach(&mut self, prog: &str, iface: &str) -> Result<XdpMode> {
        let link_pin = self.pins.as_ref().map(|d| d.join("links").join(iface));
        if let Some(pin) = link_pin.as_ref().filter(|p| p.exists()) {
            let pinned = aya::programs::links::PinnedLink::from_pin(pin)
                .with_context(|| format!("opening the pinned link {}", pin.display()))?;
            let link =
                aya::programs::xdp::XdpLink::try_from(aya::programs::links::FdLink::from(pinned))?;
            let id = self.program(prog)?.attach_to_link(link)?;
            self.links.insert((prog.to_string(), iface.to_string()), id);
            info!(%iface, "took over the pinned XDP link");
            return Ok(XdpMode::Driver);
        }
        let xdp = self.program(prog)?;
        let (link, mode) = match xdp.attach(iface, XdpMode::Driver) {
            Ok(link) => (link, XdpMode::Driver),
            Err(native) => {
                warn!(%iface, error = %native, "native XDP failed; falling back to generic (slower) mode");
                let link = xdp.attach(iface, XdpMode::Skb).with_context(|| {
                    format!("attaching XDP to {iface}: is the interface name right?")
                })?;
                (link, XdpMode::Skb)
            }
        };
        let link = match link_pin {
            // Pinned, the link (and XDP) outlives this process.
            Some(pin) => {
                let xdp = self.program(prog)?;
                let owned = xdp.take_link(link)?;
                let fd_link = aya::programs::links::FdLink::try_from(owned)?;
                let pinned = fd_link.pin(&pin)?;
                xdp.attach_to_link(aya::programs::xdp::XdpLink::try_from(
                    aya::programs::links::FdLink::from(pinned),
                )?)?
            }
            None => link,
        };
        self.links
            .insert((prog.to_string(), iface.to_string()), link);
        Ok(mode)
    }

    /// Remove every pin: links (detaching XDP once this process lets go) and maps.
    pub fn unpin_all(&self) -> Result<()> {
        if let Some(dir) = &self.pins {
            remove_pins(dir)?;
        }
        Ok(())
    }

    /// Detach `prog` from `iface` (a no-op if it is not attached there).
    pub fn detach(&mut self, prog: &str, iface: &str) -> Result<()> {
        if let Some(link) = self.links.remove(&(prog.to_string(), iface.to_string())) {
            self.program(prog)?.detach(link)?;
        }
        Ok(())
    }

    /// Interfaces `prog` is attached to.
    pub fn attached(&self, prog: &str) -> Vec<String> {
        self.links
            .keys()
            .filter(|(p, _)| p == prog)
            .map(|(_, iface)| iface.clone())
            .collect()
    }

    /// Allow XDP_REDIRECT out of `ifindex`.
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<()> {
        let mut ports = DevMapHash::try_from(self.map(MAP_TX_PORTS)?)?;
        ports.insert(ifindex, ifindex, None, 0)?;
        Ok(())
    }

    fn map(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        map_mut(&mut self.ebpf, name)
    }

    fn map_ref(&self, name: &str) -> Result<&aya::maps::Map> {
        self.ebpf
            .map(name)
            .ok_or_else(|| anyhow!("map {name} is missing from the XDP object"))
    }

    /// Plan a validated config with this data plane's stable ids and apply it.
    pub fn apply_config(&mut self, config: &Config) -> Result<usize> {
        self.apply_config_with_health(config, &|_, _| true)
    }

    /// As [`Dataplane::apply_config`], with servers that fail their health check planned
    /// with weight 0.
    pub fn apply_config_with_health(
        &mut self,
        config: &Config,
        up: &dyn Fn(&str, std::net::IpAddr) -> bool,
    ) -> Result<usize> {
        let plan = Plan::from_config(config, &mut self.ids, up)?;
        let written = self.apply(&plan)?;
        // XDP's FIB lookups need every server's next hop resolved, and kept resolved; once
        // managed, the kernel keeps it so, so only new servers need it.
        let new: Vec<std::net::IpAddr> = config
            .backends
            .iter()
            .flat_map(|b| b.resolved_servers(&config.computers))
            .map(|s| s.address)
            .filter(|a| self.managed_neighbours.insert(*a))
            .collect();
        if !new.is_empty()
            && let Err(e) = crate::neighbours::manage(&new)
        {
            warn!(error = %e, "could not manage server neighbours; first packets of new flows may take the slow path");
        }
        Ok(written)
    }

    /// Write a plan: servers, then each backend's inactive half and the flip to it, then
    /// frontends, so nothing is visible before what it points at. Servers that left are
    /// marked absent (their flows continue; nothing new is sent to them). Returns how many
    /// table and list slots were written.
    pub fn apply(&mut self, plan: &Plan) -> Result<usize> {
        {
            let mut servers: Array<&mut MapData, ServerInfo> =
                Array::try_from(map_mut(&mut self.ebpf, MAP_SERVERS)?)?;
            for (id, server) in &plan.servers {
                if self.servers.get(id) != Some(server) {
                    servers.set(*id, server, 0)?;
                }
            }
            let present: HashMap<u32, ServerInfo> = plan.servers.iter().copied().collect();
            for (gone, info) in self
                .servers
                .iter()
                .filter(|(id, _)| !present.contains_key(id))
            {
                // Absent: no new flows; tracked flows keep their own copy of the address.
                servers.set(*gone, ServerInfo { flags: 0, ..*info }, 0)?;
            }
            self.servers = present;
        }
        let mut written = 0;
        for backend in &plan.backends {
            written += self.set_backend(backend)?;
        }
        let mut frontends: BpfHashMap<&mut MapData, FrontendKey, FrontendInfo> =
            BpfHashMap::try_from(self.ebpf.map_mut(MAP_FRONTENDS).context(MAP_FRONTENDS)?)?;
        for (key, value) in &plan.frontends {
            frontends.insert(key, value, 0)?;
        }
        // The map's own keys, not just what this process wrote: a frontend removed from
        // the config while the daemon was stopped is still in a pinned map.
        let stale: Vec<FrontendKey> = frontends
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !plan.frontends.iter().any(|(n, _)| n == k))
            .collect();
        for key in &stale {
            frontends.remove(key)?;
        }
        self.frontends = plan.frontends.iter().map(|(k, _)| *k).collect();
        Ok(written)
    }

    /// Fill the backend's inactive half (only slots that differ from what that half holds),
    /// record its sizes, then flip `active` to it: a reader sees the old half or the new
    /// one, never a mix.
    fn set_backend(&mut self, plan: &BackendPlan) -> Result<usize> {
        let mut state = self.backends.remove(&plan.id).unwrap_or_default();
        let is_new = state.info == BackendInfo::default() && state.tables[0].is_empty();
        let half = if is_new {
            0
        } else {
            1 - (state.info.active & 1)
        };
        // A new backend fills both halves (one batch syscall each), so every later change
        // writes only a difference.
        let halves: &[u32] = if is_new {
            &[0, 1]
        } else {
            std::slice::from_ref(&half)
        };
        let mut written = 0;
        for &fill in halves {
            let f = fill as usize;
            {
                let base = BackendInfo::ring_base(plan.id, fill);
                let slots = lb_common::maglev::changed_slots(&state.tables[f], &plan.table);
                let keys: Vec<u32> = slots.iter().map(|slot| base + slot).collect();
                let values: Vec<u32> = slots.iter().map(|&s| plan.table[s as usize]).collect();
                update_batch(self.map(MAP_RING)?, &keys, &values)?;
                written += keys.len();
            }
            {
                let mut list: Array<&mut MapData, u32> =
                    Array::try_from(self.map(MAP_BACKEND_SERVERS)?)?;
                let base = BackendInfo::list_base(plan.id, fill);
                for slot in lb_common::maglev::changed_slots(&state.lists[f], &plan.servers) {
                    list.set(base + slot, plan.servers[slot as usize], 0)?;
                    written += 1;
                }
            }
            state.tables[f] = plan.table.clone();
            state.lists[f] = plan.servers.clone();
        }
        let mut backends: Array<&mut MapData, BackendInfo> =
            Array::try_from(self.map(MAP_BACKENDS)?)?;
        // Sizes of the new half first, with the old half still live...
        let mut info = state.info;
        for &fill in halves {
            info.ring_size[fill as usize] = plan.table.len() as u32;
            info.server_count[fill as usize] = plan.servers.len() as u32;
        }
        if is_new {
            info.method = plan.method;
            info.sticky_ttl_s = plan.sticky_ttl_s;
        }
        backends.set(plan.id, info, 0)?;
        // ...then the flip, which is the only field (with method and TTL) that changes.
        info.active = half;
        info.method = plan.method;
        info.sticky_ttl_s = plan.sticky_ttl_s;
        backends.set(plan.id, info, 0)?;
        state.info = info;
        info!(backend = %plan.name, half, slots = plan.table.len(), servers = plan.servers.len(), written, "backend updated");
        self.backends.insert(plan.id, state);
        Ok(written)
    }

    /// Remove flows idle past their state's timeout (and reverse entries whose flow is
    /// gone), then set every server's open-flow count from what remains, so the counts the
    /// data plane keeps can never drift.
    pub fn gc(&mut self, now_ns: u64, timeouts: &Timeouts) -> Result<GcReport> {
        let mut report = GcReport::default();
        let flows: Vec<(FlowKey, NatEntry)> = {
            let ct: BpfHashMap<&MapData, FlowKey, NatEntry> =
                BpfHashMap::try_from(self.map_ref(MAP_CONNTRACK)?)?;
            ct.iter().filter_map(|r| r.ok()).collect()
        };
        report.flows = flows.len();
        let mut expired = Vec::new();
        for (key, entry) in &flows {
            if timeouts.expired(entry.state, entry.last_seen_ns, now_ns) {
                expired.push((*key, *entry));
            } else if entry.flags & ENTRY_COUNTED != 0 {
                *report.active.entry(entry.server_id).or_default() += 1;
                *report
                    .active_per_frontend
                    .entry(u32::from(entry.frontend_id))
                    .or_default() += 1;
            }
        }
        {
            let mut ct: BpfHashMap<&mut MapData, FlowKey, NatEntry> =
                BpfHashMap::try_from(self.ebpf.map_mut(MAP_CONNTRACK).context(MAP_CONNTRACK)?)?;
            for (key, _) in &expired {
                let _ = ct.remove(key);
            }
        }
        let reverse: Vec<(FlowKey, NatEntry)> = {
            let snat: BpfHashMap<&MapData, FlowKey, NatEntry> =
                BpfHashMap::try_from(self.map_ref(MAP_SNAT)?)?;
            snat.iter().filter_map(|r| r.ok()).collect()
        };
        // A reverse entry is an orphan when its flow is gone (LRU eviction) now, not in the
        // snapshot above (a flow may have opened since), and it is older than a grace period
        // (the data plane inserts it just before the flow's own entry).
        let orphans: Vec<FlowKey> = {
            let ct: BpfHashMap<&MapData, FlowKey, NatEntry> =
                BpfHashMap::try_from(self.map_ref(MAP_CONNTRACK)?)?;
            reverse
                .iter()
                .filter(|(key, entry)| {
                    now_ns.saturating_sub(entry.last_seen_ns) > ORPHAN_GRACE_NS
                        && ct.get(&entry.reply_key(key.proto), 0).is_err()
                })
                .map(|(key, _)| *key)
                .collect()
        };
        {
            let mut snat: BpfHashMap<&mut MapData, FlowKey, NatEntry> =
                BpfHashMap::try_from(map_mut(&mut self.ebpf, MAP_SNAT)?)?;
            for (key, entry) in &expired {
                if entry.flags & ENTRY_DSR == 0 {
                    let _ = snat.remove(&entry.reply_key(key.proto));
                }
            }
            for key in &orphans {
                let _ = snat.remove(key);
            }
        }
        report.expired = expired.len();
        report.orphans = orphans.len();
        let mut active: Array<&mut MapData, u64> =
            Array::try_from(map_mut(&mut self.ebpf, MAP_SERVER_ACTIVE)?)?;
        for id in self.servers.keys() {
            active.set(*id, report.active.get(id).copied().unwrap_or(0), 0)?;
        }
        if report.expired > 0 || report.orphans > 0 {
            debug!(
                flows = report.flows,
                expired = report.expired,
                orphans = report.orphans,
                "conntrack gc"
            );
        }
        Ok(report)
    }

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

    /// Names and addresses behind the ids, for metrics and status.
    pub fn inventory(&self) -> Inventory {
        let servers = self
            .ids
            .servers()
            .map(|((backend, address, _port), id)| {
                let info = self.servers.get(&id);
                InventoryServer {
                    id,
                    backend: backend.clone(),
                    address: *address,
                    weight: info.map_or(0, |s| s.weight),
                    present: info.is_some(),
                }
            })
            .collect();
        Inventory {
            frontends: self
                .ids
                .frontends()
                .map(|(name, id)| (id, name.clone()))
                .collect(),
            servers,
        }
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

/// Write `keys[i] = values[i]` into a u32 array map with one BPF_MAP_UPDATE_BATCH syscall
/// (Linux 5.6+) instead of one syscall per slot: a whole 65537-slot table in about 3 ms
/// instead of 40. aya 0.14 has no batch operations.
fn update_batch(map: &aya::maps::Map, keys: &[u32], values: &[u32]) -> Result<()> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    anyhow::ensure!(
        keys.len() == values.len(),
        "keys and values differ in length"
    );
    if keys.is_empty() {
        return Ok(());
    }
    let aya::maps::Map::Array(data) = map else {
        anyhow::bail!("batch updates are for array maps");
    };
    /// `union bpf_attr`'s `batch` member (include/uapi/linux/bpf.h).
    #[repr(C)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: data.fd().as_fd().as_raw_fd() as u32,
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: attr points at live slices of `count` u32 keys and values, the map's key and
    // value sizes; the kernel reads them and writes back only `count`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &mut attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_MAP_UPDATE_BATCH");
    }
    anyhow::ensure!(
        attr.count as usize == keys.len(),
        "BPF_MAP_UPDATE_BATCH wrote {} of {} slots",
        attr.count,
        keys.len()
    );
    Ok(())
}
