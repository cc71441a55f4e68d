//! The daemon at a full connection table (issue 14): LB_CONNTRACK and LB_SNAT are filled
//! with established flows through the pinned maps, then the daemon's steady CPU (over a
//! whole collection cycle, and its busiest second), the time its incremental collector
//! takes to see the whole table, and how soon a SIGHUP, an API PUT and a SIGTERM take
//! effect are measured.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::MapData;
use lb_common::maps::{
    ENTRY_COUNTED, FLOW_ESTABLISHED, FlowKey, MAP_CONNTRACK, MAP_SNAT, NatEntry, v4_mapped,
};
use lb_tests::{
    netns::{NetNs, sh},
    topology::{Topology, start_logged},
    traffic::{metric, scrape_metrics},
};
use lb_userspace::dataplane::{batch::BatchMap, monotonic_now_ns, pin_dir};

use crate::{Row, systems::Settings};

const METRICS: ([u8; 4], u16) = ([198, 18, 0, 1], 9100);
const API: ([u8; 4], u16) = ([127, 0, 0, 1], 8081);
/// Each of SIGHUP, PUT and SIGTERM is timed this many times (SIGTERM once per run).
const REPEATS: usize = 5;

/// A scratch BPF filesystem, unmounted and removed on drop.
struct Bpffs(PathBuf);

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = sh(&["umount", self.0.to_str().unwrap_or_default()]);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(settings: &Settings) -> Result<Vec<Row>> {
    let flows: u32 = if settings.quick { 50_000 } else { 1_000_000 };
    let id = std::process::id();
    let topo = Topology::new(&format!("lbsc{id}"), 3)?;
    let dir = std::env::temp_dir().join(format!("lbsc{id}"));
    std::fs::create_dir_all(&dir)?;
    let bpffs = Bpffs(dir.join("bpffs"));
    std::fs::create_dir_all(&bpffs.0)?;
    sh(&[
        "mount",
        "-t",
        "bpf",
        "bpf",
        bpffs.0.to_str().context("path")?,
    ])?;
    let result = measure(&topo, settings, &dir, &bpffs.0, flows);
    drop(topo);
    drop(bpffs);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure(
    topo: &Topology,
    settings: &Settings,
    dir: &Path,
    bpffs: &Path,
    flows: u32,
) -> Result<Vec<Row>> {
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, "rw secret-rw\n")?;
    let pins = bpffs.join("lb");
    // A table of 2^21: 1M flows fill half, well clear of LRU eviction.
    let config = format!(
        "{demo}\n[[lbs]]\nid = \"42\"\nname = \"edge\"\n\n[api]\nlisten = \"127.0.0.1:8081\"\n\
         token_file = \"{tokens}\"\n\n[metrics]\nlisten = \"198.18.0.1:9100\"\n\n\
         [dataplane]\nconntrack_size = {size}\npin_path = \"{pins}\"\n",
        demo = lb_userspace::DEFAULT_DEMO_CONFIG,
        tokens = tokens.display(),
        size = 1u32 << 21,
        pins = pins.display(),
    );
    let path = dir.join("lb.toml");
    std::fs::write(&path, &config)?;
    let (pid, log) = start_logged(
        &topo.lb,
        &settings.lb_bin,
        &["run", "--config", path.to_str().context("path")?],
    )?;

    // The daemon's own floor, before the table fills.
    let (idle, _) = cpu_percent(
        pid,
        Duration::from_secs(if settings.quick { 2 } else { 10 }),
    )?;
    eprintln!("bench: scale: daemon at {idle:.1} % of a core with an empty table");
    let filled = Instant::now();
    fill(&pin_dir(&pins), flows)?;
    eprintln!(
        "bench: scale: {flows} flows written in {:.2} s",
        filled.elapsed().as_secs_f64()
    );
    // One whole cycle of the collector: several ticks at 1M.
    let cycle = cycle_time(&topo.lb, u64::from(flows))?;
    eprintln!("bench: scale: one collection cycle over {flows} flows took {cycle:.1} s");

    // A whole cycle at least: its flow-table ticks cost less than its reverse-table ones.
    let window = if settings.quick {
        3
    } else {
        (cycle.ceil() as u64).max(10)
    };
    let (cpu, peak) = cpu_percent(pid, Duration::from_secs(window))?;
    eprintln!(
        "bench: scale: daemon at {cpu:.1} % of a core over {window} s, {peak:.1} % in its busiest second"
    );

    // SIGHUP: the config file's weight toggled, until the daemon logs the reload.
    let mut hups = Vec::new();
    for i in 0..REPEATS {
        let (from, to) = if i % 2 == 0 {
            ("2 }", "3 }")
        } else {
            ("3 }", "2 }")
        };
        let text = std::fs::read_to_string(&path)?;
        let edited = text.replacen(&format!("weight = {from}"), &format!("weight = {to}"), 1);
        if edited == text {
            bail!("no weight to edit in the config");
        }
        std::fs::write(&path, edited)?;
        let before = count(&log, "config reloaded");
        let sent = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGHUP,
        )?;
        while count(&log, "config reloaded") <= before {
            if sent.elapsed() > Duration::from_secs(10) {
                bail!("no reload within 10 s of SIGHUP");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        hups.push(sent.elapsed().as_secs_f64() * 1000.0);
    }

    // PUT: a backend's weights, answered once applied.
    let mut puts = Vec::new();
    for i in 0..REPEATS {
        let body = format!(
            r#"{{"name": "demo-servers", "mode": "tcp", "balancing_method": "maglev", "port": 8080,
            "servers": {{"type": "addresses", "addresses": [{{"address": "198.18.11.2"}},
            {{"address": "198.18.12.2"}}, {{"address": "198.18.13.2", "weight": {}}}]}}}}"#,
            4 + i % 2
        );
        let took = topo
            .lb
            .run(move || put("/v1/lbs/42/backends/demo-servers", &body))?
            .join()
            .map_err(|_| anyhow::anyhow!("API thread panicked"))??;
        puts.push(took.as_secs_f64() * 1000.0);
    }

    // SIGTERM: until the process is gone (or a zombie its parent has not reaped yet).
    let sent = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    while !exited(pid) {
        if sent.elapsed() > Duration::from_secs(10) {
            bail!("still running 10 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let term = sent.elapsed().as_secs_f64() * 1000.0;
    eprintln!("bench: scale: SIGHUP {hups:.1?} ms, PUT {puts:.1?} ms, SIGTERM {term:.1} ms");
    Ok(vec![
        Row::new("scale-flows", "lb", f64::from(flows), "flows"),
        Row::new("scale-daemon-cpu-empty", "lb", idle, "% core"),
        Row::new("scale-daemon-cpu", "lb", cpu, "% core"),
        Row::new("scale-daemon-cpu-peak-1s", "lb", peak, "% core"),
        Row::new("scale-gc-cycle", "lb", cycle, "s"),
        Row::new("scale-sighup-applied", "lb", median(&mut hups), "ms"),
        Row::new("scale-api-put", "lb", median(&mut puts), "ms"),
        Row::new("scale-sigterm-exit", "lb", term, "ms"),
    ])
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn count(log: &lb_tests::topology::Log, needle: &str) -> usize {
    log.lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

/// `flows` established TCP flows, each with its reverse entry, through the pinned maps.
fn fill(pins: &Path, flows: u32) -> Result<()> {
    let open = |name: &str| -> Result<BatchMap<FlowKey, NatEntry>> {
        let path = pins.join(name);
        BatchMap::new(MapData::from_pin(&path).with_context(|| format!("{}", path.display()))?)
    };
    let (conntrack, snat) = (open(MAP_CONNTRACK)?, open(MAP_SNAT)?);
    let now = monotonic_now_ns();
    let vip = v4_mapped([198, 18, 100, 1]);
    let (mut keys, mut values, mut rkeys, mut rvalues) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..flows {
        // Unique per flow: the client address (and for the reverse key the SNAT address)
        // from the high bits, the port from the low 16.
        let hi = (i >> 16) as u8;
        let port = ((i & 0xffff) as u16).to_be();
        let key = FlowKey {
            src: v4_mapped([198, 18, 64 + hi, 2]),
            dst: vip,
            sport: port,
            dport: 80u16.to_be(),
            proto: 6,
            _pad: [0; 3],
        };
        let entry = NatEntry {
            src: v4_mapped([198, 18, 2, 1 + hi]),
            dst: v4_mapped([198, 18, 11 + (hi % 3), 2]),
            sport: port,
            dport: 8080u16.to_be(),
            server_id: 0,
            last_seen_ns: now,
            frontend_id: 0,
            backend_id: 0,
            state: FLOW_ESTABLISHED,
            flags: ENTRY_COUNTED,
            _pad: 0,
        };
        // The reply's key, naming the flow back (so the collector finds it its own).
        let rkey = entry.reply_key(6);
        let rentry = NatEntry {
            src: key.dst,
            dst: key.src,
            sport: key.dport,
            dport: key.sport,
            ..entry
        };
        keys.push(key);
        values.push(entry);
        rkeys.push(rkey);
        rvalues.push(rentry);
    }
    snat.update(&rkeys, &rvalues)?;
    conntrack.update(&keys, &values)?;
    // Both tables hold every flow: no key collided, nothing was evicted.
    for (name, mut map) in [(MAP_CONNTRACK, conntrack), (MAP_SNAT, snat)] {
        let (mut k, mut v) = (Vec::new(), Vec::new());
        let mut cursor = lb_userspace::dataplane::batch::Cursor::Start;
        map.lookup(&mut cursor, usize::MAX, &mut k, &mut v)?;
        if k.len() != flows as usize {
            bail!("{name} holds {} entries, not {flows}", k.len());
        }
    }
    Ok(())
}

/// The metrics' `lb_conntrack_entries` and `lb_conntrack_gc_cycles_total`.
fn gc_metrics() -> Result<(f64, f64)> {
    let text = scrape_metrics(METRICS.into())?;
    Ok((
        metric(&text, "lb_conntrack_entries").unwrap_or(0.0),
        metric(&text, "lb_conntrack_gc_cycles_total").unwrap_or(0.0),
    ))
}

/// The seconds one whole cycle of the collector takes, timed from the end of the first
/// cycle that completes after `fill` (which may have started mid-fill) to the end of the
/// next, which must see all `flows`.
fn cycle_time(lb: &NetNs, flows: u64) -> Result<f64> {
    lb.run(move || -> Result<f64> {
        let start = Instant::now();
        let wait_past = |cycles: f64| -> Result<(f64, Instant)> {
            loop {
                if let Ok((entries, now)) = gc_metrics()
                    && now > cycles
                {
                    return Ok((entries, Instant::now()));
                }
                if start.elapsed() > Duration::from_secs(180) {
                    bail!("no collection cycle past {cycles} within 180 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        let (_, first) = wait_past(gc_metrics()?.1)?;
        let (entries, next) = wait_past(gc_metrics()?.1)?;
        if entries < flows as f64 {
            bail!("a whole cycle saw {entries} of {flows} flows");
        }
        Ok((next - first).as_secs_f64())
    })?
    .join()
    .map_err(|_| anyhow::anyhow!("metrics thread panicked"))?
}

/// CPU time of every thread `pid` has run, dead ones included, in ns. The process CPU
/// clock counts scheduler runtime in ns; /proc/PID/stat's ticks are 10 ms, which rounds an
/// idle daemon's few hundred µs a second to zero.
fn cpu_ns(pid: u32) -> Result<u64> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `clock` is a valid out-pointer; the call only reads `pid`.
    let err = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) };
    if err != 0 {
        bail!(
            "clock_getcpuclockid({pid}): {}",
            std::io::Error::from_raw_os_error(err)
        );
    }
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid out-pointer and `clock` came from clock_getcpuclockid.
    if unsafe { libc::clock_gettime(clock, &mut now) } != 0 {
        return Err(std::io::Error::last_os_error()).context("clock_gettime");
    }
    Ok(now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64)
}

/// The daemon's CPU (% of a core) over `window`, and its busiest second.
fn cpu_percent(pid: u32, window: Duration) -> Result<(f64, f64)> {
    let (t0, at) = (cpu_ns(pid)?, Instant::now());
    let (mut last, mut peak) = (t0, 0.0f64);
    while at.elapsed() < window {
        let second = Instant::now();
        std::thread::sleep(Duration::from_secs(1));
        let now = cpu_ns(pid)?;
        peak = peak.max(100.0 * (now - last) as f64 / 1e9 / second.elapsed().as_secs_f64());
        last = now;
    }
    let used = (last - t0) as f64 / 1e9;
    Ok((100.0 * used / at.elapsed().as_secs_f64(), peak))
}

fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// One authorised PUT; returns how long until the whole answer (it comes once applied).
fn put(path: &str, body: &str) -> Result<Duration> {
    let started = Instant::now();
    let mut conn = TcpStream::connect(SocketAddr::from(API))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        conn,
        "PUT {path} HTTP/1.1\r\nHost: lb\r\nAuthorization: Bearer secret-rw\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    let took = started.elapsed();
    if !answer.starts_with("HTTP/1.1 200") {
        bail!("PUT answered {}", answer.lines().next().unwrap_or(""));
    }
    Ok(took)
}
