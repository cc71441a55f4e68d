//! `lb doctor [--config F]`: preflight checks of the host, each problem with its fix. The
//! host alone: kernel, BTF, memlock. With a config: the BPF filesystem at `pin_path`, native
//! XDP on each interface, what DSR needs of the servers, and each server's next hop.

use std::{collections::BTreeSet, net::IpAddr, path::Path};

use crate::{
    config::{Config, Forwarding, XdpAttach},
    dataplane::{self, Dataplane},
};

/// The oldest kernel lb supports: managed neighbour entries (5.16) keep servers' next hops
/// resolved for XDP.
const MIN_KERNEL: (u32, u32) = (5, 16);

/// One check's outcome.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Works, with a caveat.
    Warn,
    /// lb will not work as configured.
    Fail,
}

#[derive(Debug)]
pub struct Check {
    pub verdict: Verdict,
    pub what: String,
    pub fix: Option<String>,
}

fn ok(what: impl Into<String>) -> Check {
    Check {
        verdict: Verdict::Ok,
        what: what.into(),
        fix: None,
    }
}

fn problem(verdict: Verdict, what: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        verdict,
        what: what.into(),
        fix: Some(fix.into()),
    }
}

/// Every check, in order.
pub fn run(config: Option<&Config>) -> Vec<Check> {
    let mut checks = vec![kernel(), btf(), memlock()];
    if let Some(config) = config {
        checks.push(bpffs(&config.dataplane.pin_path));
        checks.extend(interfaces(config));
        checks.extend(dsr(config));
        checks.extend(neighbours(config));
    }
    checks
}

/// The checks as lines: `ok`, `warn` or `FAIL`, the finding, and the fix beneath.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let tag = match c.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        };
        out += &format!("{tag} {}\n", c.what);
        if let Some(fix) = &c.fix {
            out += &format!("     fix: {fix}\n");
        }
    }
    let failed = checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
    let warned = checks.iter().filter(|c| c.verdict == Verdict::Warn).count();
    out += &format!(
        "{} checks: {failed} failed, {warned} warnings\n",
        checks.len()
    );
    out
}

fn kernel_version() -> Option<(u32, u32, String)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let release = release.trim().to_string();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor, release))
}

fn kernel() -> Check {
    match kernel_version() {
        Some((major, minor, release)) if (major, minor) >= MIN_KERNEL => {
            ok(format!("kernel {release} (lb needs 5.16 or later)"))
        }
        Some((_, _, release)) => problem(
            Verdict::Fail,
            format!("kernel {release} is older than 5.16"),
            "run a kernel of 5.16 or later (Debian 12's is 6.1)",
        ),
        None => problem(
            Verdict::Warn,
            "cannot read the kernel version (/proc/sys/kernel/osrelease)",
            "check that /proc is mounted",
        ),
    }
}

fn btf() -> Check {
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        ok("kernel BTF at /sys/kernel/btf/vmlinux")
    } else {
        problem(
            Verdict::Fail,
            "no kernel BTF (/sys/kernel/btf/vmlinux)",
            "run a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian's and Ubuntu's are)",
        )
    }
}

fn memlock() -> Check {
    // Since 5.11 BPF memory is charged to the cgroup, not to RLIMIT_MEMLOCK.
    if kernel_version().is_some_and(|(major, minor, _)| (major, minor) >= (5, 11)) {
        return ok("memlock: not a limit for BPF maps on this kernel (cgroup accounting)");
    }
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK) {
        Ok((soft, _)) if soft == libc::RLIM_INFINITY => ok("memlock: unlimited"),
        Ok((soft, _)) => problem(
            Verdict::Warn,
            format!("memlock limit {soft} bytes may be too small for the maps"),
            "set LimitMEMLOCK=infinity in the unit (the package's has it), or ulimit -l unlimited",
        ),
        Err(e) => problem(
            Verdict::Warn,
            format!("cannot read the memlock limit: {e}"),
            "ulimit -l",
        ),
    }
}

fn bpffs(pin_path: &Path) -> Check {
    if dataplane::on_bpffs(pin_path) {
        ok(format!(
            "{} is on a BPF filesystem: a restart keeps every flow",
            pin_path.display()
        ))
    } else {
        problem(
            Verdict::Fail,
            format!(
                "{} ([dataplane] pin_path) is not on a BPF filesystem: a restart would lose every tracked flow",
                pin_path.display()
            ),
            "mount -t bpf bpffs /sys/fs/bpf (lb run mounts one itself when it runs in the host's mount namespace), or set pin_path to a BPF filesystem",
        )
    }
}

/// Native XDP on each interface: what is attached now, else a trial attach of the pass-only
/// program in native mode.
fn interfaces(config: &Config) -> Vec<Check> {
    let names: BTreeSet<String> = config.interfaces().into_iter().collect();
    let mut trial: Option<Result<Dataplane, String>> = None;
    let mut checks = Vec::new();
    for iface in names {
        let wanted = config.dataplane.xdp_mode_of(&iface);
        if nix::net::if_::if_nametoindex(iface.as_str()).is_err() {
            checks.push(problem(
                Verdict::Fail,
                format!("interface {iface} (frontends[].interfaces) does not exist"),
                "name an interface `ip link` shows",
            ));
            continue;
        }
        let now = dataplane::xdp_mode::attached(&iface).unwrap_or("unknown");
        let native = match now {
            "native" | "offload" => {
                checks.push(ok(format!("{iface}: XDP attached in {now} mode")));
                continue;
            }
            "generic" => false,
            _ => {
                let dp = trial.get_or_insert_with(|| {
                    Dataplane::load_with(1024).map_err(|e| format!("{e:#}"))
                });
                match dp {
                    Ok(dp) => {
                        let attached =
                            dp.attach(lb_common::maps::PROG_PASS, &iface, XdpAttach::Native);
                        let _ = dp.detach(lb_common::maps::PROG_PASS, &iface);
                        attached.is_ok()
                    }
                    Err(e) => {
                        checks.push(problem(
                            Verdict::Fail,
                            format!("cannot load the XDP program to try {iface}: {e}"),
                            "run lb doctor as root on a kernel with BPF",
                        ));
                        continue;
                    }
                }
            }
        };
        checks.push(match (native, wanted) {
            (true, _) => ok(format!("{iface}: native XDP works")),
            (false, XdpAttach::Generic) => ok(format!(
                "{iface}: generic XDP only, as xdp_mode = \"generic\" asks"
            )),
            (false, XdpAttach::Native) => problem(
                Verdict::Fail,
                format!("{iface}: native XDP is not available, and xdp_mode = \"native\" refuses generic"),
                format!("use a NIC whose driver has native XDP, or set [dataplane] xdp_modes = {{ {iface} = \"generic\" }} (slower)"),
            ),
            (false, XdpAttach::Auto) => problem(
                Verdict::Fail,
                format!("{iface}: native XDP is not available; lb would fall back to generic (skb) mode, several times slower"),
                format!("use a NIC whose driver has native XDP, or accept it with [dataplane] xdp_modes = {{ {iface} = \"generic\" }}"),
            ),
        });
    }
    checks
}

/// DSR delivers packets addressed to the VIP: each server must hold the VIP on a loopback
/// and not answer ARP for it. That is the servers' setting; lb can only remind.
fn dsr(config: &Config) -> Vec<Check> {
    config
        .frontends
        .iter()
        .filter(|f| f.forwarding == Forwarding::Dsr)
        .map(|f| {
            problem(
                Verdict::Warn,
                format!(
                    "frontend {} forwards with DSR: its servers answer from the VIP {} themselves",
                    f.name, f.address
                ),
                format!(
                    "on each server: ip addr add {}/32 dev lo; sysctl net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2",
                    f.address
                ),
            )
        })
        .collect()
}

/// Each server's next hop: routed, and its neighbour entry not failed.
fn neighbours(config: &Config) -> Vec<Check> {
    let servers: BTreeSet<IpAddr> = config
        .backends
        .iter()
        .flat_map(|b| b.resolved_servers(&config.computers))
        .map(|s| s.address)
        .collect();
    let servers: Vec<IpAddr> = servers.into_iter().collect();
    let hops = match dataplane::neighbours::next_hops(&servers) {
        Ok(h) => h,
        Err(e) => {
            return vec![problem(
                Verdict::Warn,
                format!("cannot read routes and neighbours: {e:#}"),
                "run lb doctor as root",
            )];
        }
    };
    hops.into_iter()
        .map(|(server, hop)| match hop {
            None => problem(
                Verdict::Fail,
                format!("server {server}: no route"),
                format!("add a route towards {server} (ip route add ...)"),
            ),
            Some(h) => match h.state.as_deref() {
                Some("failed" | "incomplete") => problem(
                    Verdict::Fail,
                    format!(
                        "server {server}: next hop {} (ifindex {}) does not answer ARP/NDP ({})",
                        h.next_hop,
                        h.oif,
                        h.state.as_deref().unwrap_or_default()
                    ),
                    format!("check that {} is up on that link (ping it)", h.next_hop),
                ),
                None => problem(
                    Verdict::Warn,
                    format!("server {server}: next hop {} not resolved yet", h.next_hop),
                    format!(
                        "ping {}; lb run keeps it resolved (a managed neighbour entry)",
                        h.next_hop
                    ),
                ),
                Some(state) => ok(format!("server {server}: next hop {} {state}", h.next_hop)),
            },
        })
        .collect()
}
