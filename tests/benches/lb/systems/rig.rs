//! The rig around the systems: which CPU runs what, and what the balancer's CPU spent.
//!
//! The balancer (the lb namespace's NAPI threads, and lb's or HAProxy's processes) runs on
//! [`BALANCER_CPU`]; the generator, clients, servers and their NAPI threads on
//! [`OTHERS_CPU`]. A veth has a NAPI instance only with GRO or XDP on, and only a threaded
//! one runs in a thread we can pin and account, so every veth end gets GRO and threaded NAPI.

use std::{collections::BTreeSet, fs::File, time::Duration};

use anyhow::{Context as _, Result, bail};
use lb_tests::{netns::NetNs, topology::Topology, wait_until};

pub const BALANCER_CPU: usize = 1;
pub const OTHERS_CPU: usize = 0;

/// Pin `tid` (a thread, or a process's main thread) to `cpu`.
pub fn pin(tid: u32, cpu: usize) -> Result<()> {
    // SAFETY: a cpu_set_t on the stack, filled by the libc macros' equivalents.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(tid as i32, std::mem::size_of_val(&set), &set) != 0 {
            bail!(
                "pinning thread {tid} to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Pin the calling thread (and so every thread and process it starts later) to `cpu`;
/// returns the mask it had, for [`restore_affinity`].
pub fn pin_self(cpu: usize) -> Result<libc::cpu_set_t> {
    // SAFETY: as in `pin`; pid 0 is the calling thread.
    let old = unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, std::mem::size_of_val(&old), &mut old);
        old
    };
    pin(0, cpu)?;
    Ok(old)
}

pub fn restore_affinity(mask: &libc::cpu_set_t) {
    // SAFETY: a mask sched_getaffinity filled.
    unsafe {
        libc::sched_setaffinity(0, std::mem::size_of_val(mask), mask);
    }
}

/// Real-time priority of the NAPI threads (`chrt -f -p 50`): a NAPI thread preempts
/// whatever else is runnable on its CPU, so its ring does not overflow while a busy task
/// holds the CPU.
const NAPI_PRIORITY: i32 = 50;

/// SCHED_FIFO at `priority` for `tid` (0: the calling thread).
fn fifo(tid: u32, priority: i32) -> Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: plain syscall with a valid parameter struct.
    if unsafe { libc::sched_setscheduler(tid as i32, libc::SCHED_FIFO, &param) } != 0 {
        bail!(
            "chrt -f {priority} {tid}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Pin every thread of process `pid` to `cpu` (threads it starts later inherit it).
pub fn pin_process(pid: u32, cpu: usize) -> Result<()> {
    for tid in tasks(pid)? {
        pin(tid, cpu)?;
    }
    Ok(())
}

fn tasks(pid: u32) -> Result<Vec<u32>> {
    let mut tids = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("reading the threads of {pid}"))?
    {
        if let Some(tid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) {
            tids.push(tid);
        }
    }
    Ok(tids)
}

/// Time `tid` has spent on a CPU (the first field of its schedstat), in ns; 0 once gone.
fn on_cpu_ns(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Kernel threads named `napi/<ifname>-<id>`.
fn napi_threads(ifname: &str) -> BTreeSet<u32> {
    let prefix = format!("napi/{ifname}-");
    let mut found = BTreeSet::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim_end().starts_with(&prefix))
        {
            found.insert(pid);
        }
    }
    found
}

/// Turn on GRO and threaded NAPI on `ifname` in `ns` and return its NAPI thread. Names
/// repeat across namespaces (every peer has an `eth0`), so the thread is the one that
/// appears when threading is turned on, not merely one with the right name.
fn threaded_napi(ns: &NetNs, ifname: &str) -> Result<u32> {
    ns.exec(&["ethtool", "-K", ifname, "gro", "on"])?;
    let threaded = format!("/sys/class/net/{ifname}/threaded");
    let before = napi_threads(ifname);
    ns.exec(&["sh", "-c", &format!("echo 1 > {threaded}")])?;
    wait_until(
        &format!("the NAPI thread of {ifname} in {}", ns.name),
        Duration::from_secs(5),
        || {
            let new: Vec<u32> = napi_threads(ifname).difference(&before).copied().collect();
            match new.as_slice() {
                [] => Ok(None),
                [one] => Ok(Some(*one)),
                more => bail!("several new NAPI threads for {ifname}: {more:?}"),
            }
        },
    )
}

/// The NAPI threads of the topology, pinned: the lb namespace's on the balancer's CPU.
pub struct Rig {
    /// (interface, thread) of the lb namespace.
    pub balancer_napi: Vec<(String, u32)>,
}

impl Rig {
    pub fn new(topo: &Topology) -> Result<Rig> {
        let mut balancer_napi = Vec::new();
        let lb_ifs = std::iter::once("eth-c".to_string())
            .chain((1..=topo.servers.len()).map(|i| format!("s{i}")));
        for ifname in lb_ifs {
            let tid = threaded_napi(&topo.lb, &ifname)?;
            pin(tid, BALANCER_CPU)?;
            fifo(tid, NAPI_PRIORITY)?;
            balancer_napi.push((ifname, tid));
        }
        for ns in std::iter::once(&topo.client).chain(&topo.servers) {
            let tid = threaded_napi(ns, "eth0")?;
            pin(tid, OTHERS_CPU)?;
            fifo(tid, NAPI_PRIORITY)?;
        }
        Ok(Rig { balancer_napi })
    }

    /// Fail if a NAPI thread was replaced (a veth recreates it when GRO changes).
    pub fn check(&self) -> Result<()> {
        for (ifname, tid) in &self.balancer_napi {
            if !napi_threads(ifname).contains(tid) {
                bail!("the NAPI thread {tid} of {ifname} is gone; its figures would miss");
            }
        }
        Ok(())
    }

    /// A snapshot of the balancer's CPU time: its NAPI threads, and every thread of
    /// `processes` (lb's daemon or HAProxy).
    pub fn sample(&self, processes: &[u32]) -> Sample {
        let mut ns = 0;
        for (_, tid) in &self.balancer_napi {
            ns += on_cpu_ns(&format!("/proc/{tid}/schedstat"));
        }
        for pid in processes {
            for tid in tasks(*pid).unwrap_or_default() {
                ns += on_cpu_ns(&format!("/proc/{pid}/task/{tid}/schedstat"));
            }
        }
        Sample {
            balancer_ns: ns,
            net_rx: net_rx_per_cpu(),
            busy_ns: cpu_busy_ns(BALANCER_CPU),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Sample {
    pub balancer_ns: u64,
    /// NET_RX softirqs per CPU (/proc/softirqs).
    pub net_rx: Vec<u64>,
    /// The balancer CPU's busy time (/proc/stat), in ns.
    pub busy_ns: u64,
}

/// What happened between two samples.
#[derive(Clone, Debug)]
pub struct Spent {
    pub balancer_ns: u64,
    pub net_rx: Vec<u64>,
    pub busy_ns: u64,
}

impl Spent {
    pub fn between(before: &Sample, after: &Sample) -> Spent {
        Spent {
            balancer_ns: after.balancer_ns.saturating_sub(before.balancer_ns),
            net_rx: after
                .net_rx
                .iter()
                .zip(&before.net_rx)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
            busy_ns: after.busy_ns.saturating_sub(before.busy_ns),
        }
    }

    /// The balancer's share of its CPU's busy time, in percent: what else ran there.
    pub fn balancer_share(&self) -> f64 {
        100.0 * self.balancer_ns as f64 / self.busy_ns.max(1) as f64
    }
}

fn net_rx_per_cpu() -> Vec<u64> {
    std::fs::read_to_string("/proc/softirqs")
        .ok()
        .and_then(|text| {
            let line = text
                .lines()
                .find(|l| l.trim_start().starts_with("NET_RX:"))?;
            Some(
                line.split_whitespace()
                    .skip(1)
                    .filter_map(|v| v.parse().ok())
                    .collect(),
            )
        })
        .unwrap_or_default()
}

/// Busy time of `cpu` from /proc/stat: every field but idle and iowait, in ns.
fn cpu_busy_ns(cpu: usize) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let label = format!("cpu{cpu}");
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|text| {
            let line = text
                .lines()
                .find(|l| l.split_whitespace().next() == Some(label.as_str()))?;
            let fields: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal (guest time is inside user).
            let busy: u64 = fields
                .iter()
                .take(8)
                .enumerate()
                .filter(|(i, _)| *i != 3 && *i != 4)
                .map(|(_, v)| v)
                .sum();
            Some(busy * 1_000_000_000 / hz)
        })
        .unwrap_or(0)
}

/// Run `f` on a thread inside `ns` (sockets, interface names and XDP attachments are the
/// namespace's), borrowing from the caller.
pub fn in_ns<T: Send>(ns: &NetNs, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let file = File::open(format!("/run/netns/{}", ns.name))
        .with_context(|| format!("opening namespace {}", ns.name))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .context("entering the namespace")?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("a thread in {} panicked", ns.name))?
    })
}
