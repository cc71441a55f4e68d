//! The kernel side as userspace sees it. This file loads the embedded XDP object, pins its
//! maps and attaches it; `plan` turns a config into what the maps hold, `write` writes it
//! (double-buffered tables, only changed slots), `gc` expires flows, `counters` reads the
//! per-CPU counters, `flows` reads and writes tracked flows in bulk (HA sync), `neighbours` keeps servers' next hops resolved, and `sys` holds the
//! raw syscalls aya does not wrap.

pub mod batch;
mod counters;
mod flows;
mod gc;
pub mod neighbours;
pub mod plan;
mod routing;
mod sys;
mod write;
pub mod xdp_mode;

use std::{
    collections::{HashMap, HashSet},
    path::Path,
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::DevMapHash,
    programs::{Xdp, XdpMode},
};
use lb_common::maps::{
    FrontendKey, MAP_CONNTRACK, MAP_SNAT, MAP_TX_PORTS, PROG_LB, PROG_PASS, ServerInfo,
};
use tracing::{info, warn};

pub use flows::{FlowTables, Names, reverse_of};
pub use gc::{Collector, GcReport, SLICE};
use plan::Ids;
pub use plan::Retired;
pub use routing::{EgressGeneration, follow_routing_changes};
use sys::map_mut;
pub use sys::{monotonic_now_ns, mount_bpffs_for, on_bpffs, pin_dir, remove_pins};
use write::BackendState;

/// The XDP object built by build.rs from lb-ebpf.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// The first 12 hex digits of the embedded XDP object's SHA-256: which data plane a binary
/// carries (`lb --version`, `lb_build_info`).
pub fn ebpf_object_hash() -> String {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        ring::digest::digest(&ring::digest::SHA256, EBPF_OBJECT)
            .as_ref()
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect()
    })
    .clone()
}

/// Kernel memory per tracked flow: a client-side and a server-side hash entry, each a
/// 40-byte key, a 56-byte value and about 64 bytes of htab element overhead.
pub const BYTES_PER_FLOW: u64 = 2 * (40 + 56 + 64);

pub struct Dataplane {
    ebpf: Ebpf,
    ids: Ids,
    backends: HashMap<u32, BackendState>,
    /// Servers as last written, by id.
    servers: HashMap<u32, ServerInfo>,
    frontends: Vec<FrontendKey>,
    /// SNAT ports per backend id and SNAT address, as last planned ([`plan::Plan::snat_pools`]).
    snat_pools: HashMap<u32, HashMap<lb_common::maps::Addr, u32>>,
    managed_neighbours: HashSet<std::net::IpAddr>,
    links: HashMap<(String, String), aya::programs::xdp::XdpLinkId>,
    /// The mode the kernel reports for each interface attached.
    xdp_modes: std::collections::BTreeMap<String, &'static str>,
    /// Where maps and links are pinned, if anywhere.
    pins: Option<std::path::PathBuf>,
    /// Whether the maps were pinned by an earlier daemon and taken over with their contents.
    took_over: bool,
}

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
    /// SNAT addresses its backend's flows may come from, each with how many ports it has
    /// towards the server's port (per protocol).
    pub snat_pools: Vec<(std::net::IpAddr, u32)>,
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
        let took_over = pins.is_some_and(|dir| dir.join(lb_common::maps::MAP_SERVERS).exists());
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
            snat_pools: HashMap::new(),
            managed_neighbours: HashSet::new(),
            links: HashMap::new(),
            xdp_modes: Default::default(),
            pins: pins.map(Path::to_path_buf),
            took_over,
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
    /// Attach `prog` to `iface` in the mode `wanted` allows (or take over its pinned link);
    /// returns the mode the kernel reports afterwards.
    pub fn attach(
        &mut self,
        prog: &str,
        iface: &str,
        wanted: crate::config::XdpAttach,
    ) -> Result<&'static str> {
        let link_pin = self.pins.as_ref().map(|d| d.join("links").join(iface));
        if let Some(pin) = link_pin.as_ref().filter(|p| p.exists()) {
            let pinned = aya::programs::links::PinnedLink::from_pin(pin)
                .with_context(|| format!("opening the pinned link {}", pin.display()))?;
            let link =
                aya::programs::xdp::XdpLink::try_from(aya::programs::links::FdLink::from(pinned))?;
            let id = self.program(prog)?.attach_to_link(link)?;
            self.links.insert((prog.to_string(), iface.to_string()), id);
            let mode = self.record_mode(iface);
            info!(%iface, mode, "took over the pinned XDP link");
            if wanted == crate::config::XdpAttach::Native && mode != "native" {
                warn!(%iface, mode, "the pinned link is not native but xdp_mode = \"native\": `lb stop` and `lb run` attach afresh");
            }
            return Ok(mode);
        }
        let xdp = self.program(prog)?;
        let mut failures = Vec::new();
        let mut link = None;
        for &mode in xdp_mode::attempts(wanted) {
            match xdp.attach(iface, mode) {
                Ok(l) => {
                    link = Some(l);
                    break;
                }
                Err(e) => {
                    if mode == XdpMode::Driver && wanted == crate::config::XdpAttach::Auto {
                        warn!(%iface, error = %e, "native XDP failed; falling back to generic (slower) mode (xdp_mode = \"native\" fails instead)");
                    }
                    failures.push(format!("{mode:?}: {e}"));
                }
            }
        }
        let Some(link) = link else {
            anyhow::bail!(
                "attaching XDP to {iface} (xdp_mode = \"{wanted}\") failed: {}; is the interface name right, and does its driver support native XDP (`lb doctor`)?",
                failures.join("; ")
            );
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
        Ok(self.record_mode(iface))
    }

    /// Ask the kernel which mode `iface`'s XDP runs in, and remember it for status and
    /// metrics.
    fn record_mode(&mut self, iface: &str) -> &'static str {
        let mode = xdp_mode::attached(iface).unwrap_or_else(|e| {
            warn!(%iface, error = %format!("{e:#}"), "cannot read the attached XDP mode");
            "unknown"
        });
        self.xdp_modes.insert(iface.to_string(), mode);
        mode
    }

    /// The XDP mode of each interface attached, as the kernel reported it.
    pub fn xdp_modes(&self) -> &std::collections::BTreeMap<String, &'static str> {
        &self.xdp_modes
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
            self.xdp_modes.remove(iface);
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

    pub(crate) fn map_ref(&self, name: &str) -> Result<&aya::maps::Map> {
        self.ebpf
            .map(name)
            .ok_or_else(|| anyhow!("map {name} is missing from the XDP object"))
    }

    /// With maps taken over from an earlier daemon, the health it last wrote for each
    /// server present in them, by (address, port): false for one failing its check. Empty
    /// on a fresh start.
    pub fn pinned_health(&self) -> Result<HashMap<(std::net::IpAddr, u16), bool>> {
        use lb_common::maps::{MAP_SERVERS, MAX_SERVERS, SERVER_CHECK_DOWN, SERVER_PRESENT};
        let mut health = HashMap::new();
        if !self.took_over {
            return Ok(health);
        }
        let servers: aya::maps::Array<&aya::maps::MapData, ServerInfo> =
            aya::maps::Array::try_from(self.map_ref(MAP_SERVERS)?)?;
        for id in 0..MAX_SERVERS {
            let info = servers.get(&id, 0)?;
            if info.flags & SERVER_PRESENT == 0 {
                continue;
            }
            let addr = std::net::Ipv6Addr::from(info.addr);
            let ip = addr
                .to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(addr), std::net::IpAddr::V4);
            health.insert(
                (ip, u16::from_be(info.port)),
                info.flags & SERVER_CHECK_DOWN == 0,
            );
        }
        Ok(health)
    }

    /// The ids of the servers the config has now.
    pub fn server_ids(&self) -> Vec<u32> {
        self.servers.keys().copied().collect()
    }

    /// Names and addresses behind the ids, for metrics and status.
    pub fn inventory(&self) -> Inventory {
        let servers = self
            .ids
            .servers
            .iter()
            .map(|((backend, address, _port), id)| {
                let info = self.servers.get(&id);
                let mut snat_pools: Vec<(std::net::IpAddr, u32)> = self
                    .ids
                    .backends
                    .get(backend)
                    .and_then(|b| self.snat_pools.get(&b))
                    .into_iter()
                    .flatten()
                    .map(|(addr, ports)| (plan::ip_of(addr), *ports))
                    .collect();
                snat_pools.sort_unstable();
                InventoryServer {
                    id,
                    backend: backend.clone(),
                    address: *address,
                    weight: info.map_or(0, |s| s.weight),
                    present: info.is_some(),
                    snat_pools,
                }
            })
            .collect();
        Inventory {
            frontends: self
                .ids
                .frontends
                .iter()
                .map(|(name, id)| (id, name.clone()))
                .collect(),
            servers,
        }
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}
