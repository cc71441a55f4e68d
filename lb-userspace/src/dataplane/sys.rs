//! Raw kernel interfaces aya does not wrap: batch map updates, the BPF filesystem, pins
//! and the data plane's clock.

use std::{os::unix::fs::MetadataExt as _, path::Path};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::Ebpf;

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

/// The conventional place of the BPF filesystem, where systemd and Cilium mount it.
const BPFFS_HOME: &str = "/sys/fs/bpf";

/// Mount a BPF filesystem for pins under `base` when none is there (as Cilium does): at
/// /sys/fs/bpf for a path beneath it (sysfs cannot hold a directory of ours), else at
/// `base` itself, created if need be. Returns where it mounted.
pub fn mount_bpffs_for(base: &Path) -> Result<std::path::PathBuf> {
    // A mount in a namespace of lb's own (`ip netns exec`, `unshare -m`) ends with lb:
    // no restart safety, so none is made.
    let ns = |pid: &str| std::fs::metadata(format!("/proc/{pid}/ns/mnt")).map(|m| m.ino());
    if let (Ok(own), Ok(init)) = (ns("self"), ns("1"))
        && own != init
    {
        bail!(
            "lb runs in a mount namespace of its own, where a BPF filesystem would vanish when lb exits; mount one on the host (mount -t bpf bpffs /sys/fs/bpf) and bind it in, or set [dataplane] pin_path to one"
        );
    }
    let point = if base.starts_with(BPFFS_HOME) {
        std::path::PathBuf::from(BPFFS_HOME)
    } else {
        std::fs::create_dir_all(base)
            .map_err(|e| anyhow!("creating {} for a BPF filesystem: {e}", base.display()))?;
        base.to_path_buf()
    };
    nix::mount::mount(
        Some("bpffs"),
        &point,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| anyhow!("mount -t bpf bpffs {}: {e}", point.display()))?;
    Ok(point)
}

pub(super) fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
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

/// The clock of entry timestamps: XDP reads it coarse (`bpf_ktime_get_coarse_ns`), at most a
/// tick behind this.
pub fn monotonic_now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

/// Write `keys[i] = values[i]` into a u32 array map with one BPF_MAP_UPDATE_BATCH syscall
/// (Linux 5.6+) instead of one syscall per slot: a whole 65537-slot table in about 3 ms
/// instead of 40. aya 0.14 has no batch operations.
pub(super) fn update_batch(map: &aya::maps::Map, keys: &[u32], values: &[u32]) -> Result<()> {
    let aya::maps::Map::Array(data) = map else {
        anyhow::bail!("batch updates are for array maps");
    };
    super::batch::update(data, keys, values)
}
