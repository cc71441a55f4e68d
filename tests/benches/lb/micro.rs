//! Microbenchmarks of the real XDP object through BPF_PROG_TEST_RUN, in ns/packet, beside two
//! baselines measured in the same run: XDP_DROP at once, and parse + XDP_TX. Each figure is
//! the median of five repetitions after a warm-up, with their min and max beside it.
//!
//! `repeat` reruns the same buffer, so paths that rewrite the frame run under `bench_restore`,
//! which writes the original headers back (and, for new flows, a fresh source) before
//! tail-calling the balancer. The wrapper's own cost is measured with an empty jump slot and
//! subtracted.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context as _, Result};
use aya::{
    maps::{Array, MapData, ProgramArray},
    programs::{TestRun, TestRunOptions, Xdp},
};
use lb_common::{
    maps::{
        BENCH_MODE_NEW_FLOW, BenchTemplate, CONNTRACK_ENTRIES, FLOW_ESTABLISHED, FlowKey,
        MAP_BENCH_JUMP, MAP_BENCH_TEMPLATE, MAP_CONNTRACK, MAP_SNAT, NatEntry, PROG_BENCH_DROP,
        PROG_BENCH_FLOOR_INSERT, PROG_BENCH_FLOOR_INSERTS, PROG_BENCH_FLOOR_LOOKUPS,
        PROG_BENCH_PARSE_TX, PROG_BENCH_RESTORE, PROG_LB,
    },
    wire::{IPPROTO_TCP, TCP_ACK, TCP_SYN},
};
use lb_tests::{
    fixture::{CLIENT_MAC, CLIENT_SIDE_MAC, SERVER_MAC, SERVER_SIDE_MAC, fixture_namespace},
    packets::{Frame, L4, TCP_SYN_ACK},
};
use lb_userspace::{config::Config, dataplane::Dataplane};

use crate::Row;

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
const VIP_DSR: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const SNAT: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);

struct Bench {
    dataplane: Dataplane,
    ctx: Vec<u8>,
}

impl Bench {
    /// Average ns per run of `prog` over `repeat` runs of `frame`.
    fn time(&mut self, prog: &str, frame: &[u8], repeat: u32) -> Result<f64> {
        let mut ctx = self.ctx.clone();
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 256];
        let xdp: &mut Xdp = self.dataplane.program(prog)?;
        let result = xdp.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat,
            ..Default::default()
        })?;
        // The kernel reports the mean duration of one run.
        Ok(result.duration.as_nanos() as f64)
    }

    fn set_template(&mut self, frame: &[u8], mode: u32) -> Result<()> {
        let mut template = BenchTemplate {
            mode,
            _pad: 0,
            frame: [0; 64],
        };
        template.frame[..frame.len().min(64)].copy_from_slice(&frame[..frame.len().min(64)]);
        let map = self
            .dataplane
            .ebpf_mut()
            .map_mut(MAP_BENCH_TEMPLATE)
            .context("template map")?;
        let mut array: Array<&mut MapData, BenchTemplate> = Array::try_from(map)?;
        array.set(0, template, 0)?;
        Ok(())
    }

    fn set_jump(&mut self, to_balancer: bool) -> Result<()> {
        let fd = self.dataplane.program(PROG_LB)?.fd()?.try_clone()?;
        let map = self
            .dataplane
            .ebpf_mut()
            .map_mut(MAP_BENCH_JUMP)
            .context("jump map")?;
        let mut jump = ProgramArray::try_from(map)?;
        if to_balancer {
            jump.set(0, &fd, 0)?;
        } else {
            let _ = jump.clear_index(&0);
        }
        Ok(())
    }
}

/// Repetitions of every timing; the rows give their median, and min and max beside it.
const REPS: usize = 5;

/// Median, min and max of `REPS` timings, after one warm-up run.
fn spread(mut time: impl FnMut() -> Result<f64>) -> Result<[f64; 3]> {
    time()?;
    let mut runs = (0..REPS).map(|_| time()).collect::<Result<Vec<f64>>>()?;
    runs.sort_by(f64::total_cmp);
    Ok([runs[REPS / 2], runs[0], runs[REPS - 1]])
}

/// The micro bench's config: the NAT frontend of [`crate::large_backend_config`], and a DSR
/// frontend on a second VIP to the same 500 servers.
fn config() -> String {
    let mut toml = crate::large_backend_config(500, "\"fxc\", \"fxs\"");
    toml.push_str(
        r#"
[[frontends]]
name = "bench-dsr"
mode = "tcp"
address = "198.18.100.2"
binds = [{ port = 80 }]
default_backend = "bench-dsr"
interfaces = ["fxc", "fxs"]
forwarding = "dsr"

[[backends]]
name = "bench-dsr"
mode = "tcp"
balancing_method = "maglev"
port = 80
servers = { type = "addresses", addresses = [{ address = "198.18.128.1" }, { address = "198.18.128.2" }, { address = "198.18.128.3" }] }
"#,
    );
    toml
}

/// Empty both flow tables, so each new-flow repetition inserts into the same state.
fn clear_flows(b: &mut Bench) -> Result<()> {
    for name in [MAP_CONNTRACK, MAP_SNAT] {
        let map = b.dataplane.ebpf_mut().map_mut(name).context("flow table")?;
        let mut table: aya::maps::HashMap<&mut MapData, FlowKey, NatEntry> =
            aya::maps::HashMap::try_from(map)?;
        let keys: Vec<FlowKey> = table.keys().filter_map(Result::ok).collect();
        for key in &keys {
            let _ = table.remove(key);
        }
    }
    Ok(())
}

/// The client-side entry of the bench client's flow to `vip`:80.
fn tracked(b: &mut Bench, vip: Ipv4Addr) -> Result<NatEntry> {
    let map = b.dataplane.ebpf_mut().map(MAP_CONNTRACK).context("ct")?;
    let ct: aya::maps::HashMap<&MapData, FlowKey, NatEntry> = aya::maps::HashMap::try_from(map)?;
    let key = FlowKey {
        src: lb_userspace::dataplane::plan::addr16(IpAddr::V4(CLIENT)),
        dst: lb_userspace::dataplane::plan::addr16(IpAddr::V4(vip)),
        sport: 40000u16.to_be(),
        dport: 80u16.to_be(),
        proto: IPPROTO_TCP,
        _pad: [0; 3],
    };
    Ok(ct.get(&key, 0)?)
}

fn flow_state(b: &mut Bench, vip: Ipv4Addr) -> Result<u8> {
    Ok(tracked(b, vip)?.state)
}

pub fn run(quick: bool) -> Result<Vec<Row>> {
    let repeat: u32 = if quick { 20_000 } else { 1_000_000 };
    // Each new-flow run adds a flow to the tables; all repetitions stay inside their capacity.
    let new_flow_repeat: u32 = if quick { 5_000 } else { 100_000 };
    let ns = fixture_namespace(&format!("lbbench{}", std::process::id()))?;
    let handle = ns.run(move || -> Result<Vec<Row>> {
        let mut dataplane = Dataplane::load()?;
        for name in [
            PROG_BENCH_DROP,
            PROG_BENCH_PARSE_TX,
            PROG_BENCH_RESTORE,
            PROG_BENCH_FLOOR_LOOKUPS,
            PROG_BENCH_FLOOR_INSERTS,
            PROG_BENCH_FLOOR_INSERT,
        ] {
            dataplane.program(name)?.load()?;
        }
        let fxc = nix::net::if_::if_nametoindex("fxc")?;
        let fxs = nix::net::if_::if_nametoindex("fxs")?;
        dataplane.add_tx_port(fxc)?;
        dataplane.add_tx_port(fxs)?;
        let config = Config::parse("bench.toml", &config()).map_err(|e| anyhow::anyhow!("{e}"))?;
        dataplane.apply_config(&config)?;
        let ctx_for = |ifindex: u32| -> Vec<u8> {
            [0u32, 0, 0, ifindex, 0, 0]
                .iter()
                .flat_map(|w| w.to_ne_bytes())
                .collect()
        };
        let mut b = Bench {
            dataplane,
            ctx: ctx_for(fxc),
        };

        let client = |dst: Ipv4Addr, dport: u16, flags: u8| {
            Frame {
                dst_mac: CLIENT_SIDE_MAC,
                src_mac: CLIENT_MAC,
                vlan: None,
                src: IpAddr::V4(CLIENT),
                dst: IpAddr::V4(dst),
                sport: 40000,
                dport,
                l4: L4::Tcp { flags },
            }
            .build(b"")
        };
        let syn = client(VIP, 80, TCP_SYN);
        let ack = client(VIP, 80, TCP_ACK);
        let dsr_syn = client(VIP_DSR, 80, TCP_SYN);
        let dsr_ack = client(VIP_DSR, 80, TCP_ACK);
        let non_vip = client(Ipv4Addr::new(198, 18, 0, 1), 22, TCP_SYN);

        let drop = spread(|| b.time(PROG_BENCH_DROP, &syn, repeat))?;
        let parse_tx = spread(|| b.time(PROG_BENCH_PARSE_TX, &syn, repeat))?;
        let pass = spread(|| b.time(PROG_LB, &non_vip, repeat))?;

        // The wrapper alone, in both modes (its median is subtracted).
        b.set_jump(false)?;
        b.set_template(&syn, 0)?;
        let wrapper = spread(|| b.time(PROG_BENCH_RESTORE, &syn, repeat))?;
        b.set_template(&syn, BENCH_MODE_NEW_FLOW)?;
        let wrapper_new = spread(|| b.time(PROG_BENCH_RESTORE, &syn, repeat))?;

        b.set_jump(true)?;
        let minus =
            |[median, min, max]: [f64; 3], base: f64| [median - base, min - base, max - base];
        // Every repetition inserts into empty tables (the scale group times a full one).
        let new_flows = |b: &mut Bench, frame: &[u8]| {
            spread(|| {
                clear_flows(b)?;
                b.time(PROG_BENCH_RESTORE, frame, new_flow_repeat)
            })
        };
        let new_flow = minus(new_flows(&mut b, &syn)?, wrapper_new[0]);
        b.set_template(&dsr_syn, BENCH_MODE_NEW_FLOW)?;
        let new_flow_dsr = minus(new_flows(&mut b, &dsr_syn)?, wrapper_new[0]);
        // What no new flow avoids: the inserts alone, into the same empty tables.
        let floor = |b: &mut Bench, prog: &str| {
            spread(|| {
                clear_flows(b)?;
                b.time(prog, &syn, new_flow_repeat)
            })
        };
        let floor_inserts = floor(&mut b, PROG_BENCH_FLOOR_INSERTS)?;
        let floor_insert = floor(&mut b, PROG_BENCH_FLOOR_INSERT)?;
        // New flows into full tables: each insert evicts the least recently used entry.
        clear_flows(&mut b)?;
        b.time(PROG_BENCH_FLOOR_INSERTS, &syn, CONNTRACK_ENTRIES)?;
        let full_flows = |b: &mut Bench, frame: &[u8]| {
            spread(|| b.time(PROG_BENCH_RESTORE, frame, new_flow_repeat))
        };
        let new_flow_dsr_full = minus(full_flows(&mut b, &dsr_syn)?, wrapper_new[0]);
        b.set_template(&syn, BENCH_MODE_NEW_FLOW)?;
        let new_flow_full = minus(full_flows(&mut b, &syn)?, wrapper_new[0]);
        clear_flows(&mut b)?;

        // The plain SYN opens the flow the rest time; the server's SYN-ACK and the client's
        // ACK complete its handshake, then every run is an ACK of an established flow.
        b.set_template(&syn, 0)?;
        b.time(PROG_BENCH_RESTORE, &syn, 1)?;
        let (snat_port, server) = {
            let entry = tracked(&mut b, VIP)?;
            let d = entry.dst;
            (
                u16::from_be(entry.sport),
                Ipv4Addr::new(d[12], d[13], d[14], d[15]),
            )
        };
        let reply = |flags: u8| {
            Frame {
                dst_mac: SERVER_SIDE_MAC,
                src_mac: SERVER_MAC,
                vlan: None,
                src: IpAddr::V4(server),
                dst: IpAddr::V4(SNAT),
                sport: 8080,
                dport: snat_port,
                l4: L4::Tcp { flags },
            }
            .build(b"")
        };
        let client_ctx = b.ctx.clone();
        b.ctx = ctx_for(fxs);
        b.set_template(&reply(TCP_SYN_ACK), 0)?;
        b.time(PROG_BENCH_RESTORE, &reply(TCP_SYN_ACK), 1)?;
        b.ctx = client_ctx.clone();
        b.set_template(&ack, 0)?;
        let established = minus(
            spread(|| b.time(PROG_BENCH_RESTORE, &ack, repeat))?,
            wrapper[0],
        );
        let floor_lookups = spread(|| b.time(PROG_BENCH_FLOOR_LOOKUPS, &ack, repeat))?;
        b.set_template(&dsr_syn, 0)?;
        b.time(PROG_BENCH_RESTORE, &dsr_syn, 1)?;
        b.set_template(&dsr_ack, 0)?;
        let established_dsr = minus(
            spread(|| b.time(PROG_BENCH_RESTORE, &dsr_ack, repeat))?,
            wrapper[0],
        );

        // The server's data ACKs on the established flow, to its SNAT port.
        b.ctx = ctx_for(fxs);
        b.set_template(&reply(TCP_ACK), 0)?;
        let nat_reply = minus(
            spread(|| b.time(PROG_BENCH_RESTORE, &reply(TCP_ACK), repeat))?,
            wrapper[0],
        );
        let state = flow_state(&mut b, VIP)?;
        anyhow::ensure!(
            state == FLOW_ESTABLISHED && flow_state(&mut b, VIP_DSR)? == FLOW_ESTABLISHED,
            "the timed ACKs did not belong to established flows"
        );
        let stats = b.dataplane.stats()?;
        let count = |label: &str| {
            stats
                .iter()
                .find(|(l, _)| *l == label)
                .map_or(0, |(_, v)| *v)
        };
        let timed = (REPS as u64 + 1) * u64::from(repeat);
        anyhow::ensure!(
            count("flow_new") >= 2 * (REPS as u64 + 1) * u64::from(new_flow_repeat)
                && count("drop_snat_exhausted") == 0
                && count("nat_reply") >= timed
                && count("nat_forward") >= timed
                && count("dsr_forward") >= timed,
            "the timed runs did not take the paths they claim: {stats:?}"
        );

        let mut rows = Vec::new();
        let push =
            |rows: &mut Vec<Row>, workload: &str, system: &str, [median, min, max]: [f64; 3]| {
                rows.push(Row::new(workload, system, median, "ns/packet"));
                rows.push(Row::new(
                    workload,
                    &format!("{system}:min"),
                    min,
                    "ns/packet",
                ));
                rows.push(Row::new(
                    workload,
                    &format!("{system}:max"),
                    max,
                    "ns/packet",
                ));
            };
        push(&mut rows, "micro-baseline", "xdp-drop", drop);
        push(&mut rows, "micro-baseline", "parse-tx", parse_tx);
        push(&mut rows, "micro-baseline", "restore-wrapper", wrapper);
        for (workload, system, value) in [
            ("micro-new-flow-syn", "lb-nat", new_flow),
            ("micro-new-flow-syn", "lb-dsr", new_flow_dsr),
            ("micro-new-flow-syn-1m-flows", "lb-nat", new_flow_full),
            ("micro-new-flow-syn-1m-flows", "lb-dsr", new_flow_dsr_full),
            ("micro-floor", "two-inserts", floor_inserts),
            ("micro-floor", "one-insert", floor_insert),
            ("micro-floor", "two-lookups", floor_lookups),
            ("micro-established", "lb-nat", established),
            ("micro-established", "lb-dsr", established_dsr),
            ("micro-nat-reply", "lb-nat", nat_reply),
            ("micro-non-vip-pass", "lb-nat", pass),
        ] {
            push(&mut rows, workload, system, value);
            rows.push(Row::new(
                workload,
                &format!("ratio:{system}/xdp-drop"),
                value[0] / drop[0],
                "x",
            ));
            rows.push(Row::new(
                workload,
                &format!("ratio:{system}/parse-tx"),
                value[0] / parse_tx[0],
                "x",
            ));
        }
        Ok(rows)
    })?;
    let mut rows = handle
        .join()
        .map_err(|_| anyhow::anyhow!("microbenchmark thread panicked"))??;
    drop(ns);
    rows.extend(snat_concurrent_flows()?);
    Ok(rows)
}

/// Frontends of the SNAT capacity bench: each sends to one server (port 8080) through its
/// own SNAT addresses, with the default `snat_ports` (1024-65535).
const SNAT_CAPACITY_CONFIG: &str = r#"
[[frontends]]
name = "snat-1"
mode = "tcp"
address = "198.18.100.5"
binds = [{ port = 53, protocol = "udp" }]
default_backend = "snat-1"
interfaces = ["fxc", "fxs"]
snat_address = "198.18.2.1"

[[frontends]]
name = "snat-4"
mode = "tcp"
address = "198.18.100.6"
binds = [{ port = 53, protocol = "udp" }]
default_backend = "snat-4"
interfaces = ["fxc", "fxs"]
snat_addresses = ["198.18.2.11", "198.18.2.12", "198.18.2.13", "198.18.2.14"]

[[backends]]
name = "snat-1"
mode = "tcp"
balancing_method = "maglev"
port = 8080
servers = { type = "addresses", addresses = [{ address = "198.18.128.1" }] }

[[backends]]
name = "snat-4"
mode = "tcp"
balancing_method = "maglev"
port = 8080
servers = { type = "addresses", addresses = [{ address = "198.18.128.2" }] }
"#;

/// SNAT failures among the last this many new flows that count as "1 % failing".
const FAILING_WINDOW: usize = 1000;

/// Concurrent flows to one server port before SNAT exhaustion: new flows from distinct
/// clients (one BPF_PROG_TEST_RUN each, none ever closed) to a frontend with one server,
/// until the first is dropped as `drop_snat_exhausted`, and on until 1 % of the last 1000
/// are. UDP, so that no port is given back meanwhile (a SYN takes over the port of a
/// handshake idle for `SYN_RECLAIM_NS`, which a longer run would reach); a TCP flow's port
/// search is the same. Deterministic: the flows' hash decides every try.
fn snat_concurrent_flows() -> Result<Vec<Row>> {
    let ns = fixture_namespace(&format!("lbsnat{}", std::process::id()))?;
    let handle = ns.run(move || -> Result<Vec<Row>> {
        let mut dataplane = Dataplane::load()?;
        let fxc = nix::net::if_::if_nametoindex("fxc")?;
        let fxs = nix::net::if_::if_nametoindex("fxs")?;
        dataplane.add_tx_port(fxc)?;
        dataplane.add_tx_port(fxs)?;
        let config = Config::parse("snat-bench.toml", SNAT_CAPACITY_CONFIG)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        dataplane.apply_config(&config)?;
        let ctx: Vec<u8> = [0u32, 0, 0, fxc, 0, 0]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        let mut rows = Vec::new();
        for (system, vip, addresses) in [
            ("1-address", Ipv4Addr::new(198, 18, 100, 5), 1u64),
            ("4-addresses", Ipv4Addr::new(198, 18, 100, 6), 4),
        ] {
            let pairs = addresses
                * u64::from(
                    lb_common::maps::DEFAULT_SNAT_PORT_MAX
                        - lb_common::maps::DEFAULT_SNAT_PORT_MIN
                        + 1,
                );
            let (mut open, mut first, mut window) = (0u64, None, std::collections::VecDeque::new());
            let mut failing = None;
            let mut failed = 0u64;
            let mut out = vec![0u8; 256];
            for i in 0..pairs * 2 {
                let frame = Frame {
                    dst_mac: CLIENT_SIDE_MAC,
                    src_mac: CLIENT_MAC,
                    vlan: None,
                    src: IpAddr::V4(Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8)),
                    dst: IpAddr::V4(vip),
                    sport: 1024 + (i >> 16) as u16,
                    dport: 53,
                    l4: L4::Udp,
                }
                .build(b"x");
                let mut ctx = ctx.clone();
                ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
                let xdp: &mut Xdp = dataplane.program(PROG_LB)?;
                let verdict = xdp
                    .test_run(TestRunOptions {
                        data_in: Some(&frame),
                        data_out: Some(&mut out),
                        ctx_in: Some(&ctx),
                        ..Default::default()
                    })?
                    .return_value;
                let ok = match verdict {
                    4 => true,  // XDP_REDIRECT: towards the server
                    1 => false, // XDP_DROP
                    v => anyhow::bail!("verdict {v} for new flow {i} of {system}"),
                };
                if ok {
                    open += 1;
                } else {
                    failed += 1;
                    first.get_or_insert(open);
                }
                window.push_back(ok);
                if window.len() > FAILING_WINDOW {
                    window.pop_front();
                }
                if window.len() == FAILING_WINDOW
                    && window.iter().filter(|ok| !**ok).count() * 100 >= FAILING_WINDOW
                {
                    failing = Some(open);
                    break;
                }
            }
            let frontend = if addresses == 1 { 0 } else { 1 };
            let dropped = dataplane.frontend_stats(frontend)?.drop_snat_exhausted;
            anyhow::ensure!(
                dropped == failed,
                "{system}: {failed} flows failed, {dropped} counted as SNAT exhaustion"
            );
            let (Some(first), Some(failing)) = (first, failing) else {
                anyhow::bail!("{system}: {open} flows open and no exhaustion");
            };
            eprintln!(
                "snat-concurrent-flows {system}: first exhaustion at {first} flows open, 1 % of new flows failing at {failing}, of {pairs} (address, port) pairs"
            );
            rows.push(Row::new("snat-concurrent-flows", system, first as f64, "flows"));
            rows.push(Row::new(
                "snat-concurrent-flows",
                &format!("{system}:1%-failing"),
                failing as f64,
                "flows",
            ));
            rows.push(Row::new(
                "snat-concurrent-flows",
                &format!("{system}:pairs"),
                pairs as f64,
                "flows",
            ));
            // The flows stay: the next system's server and SNAT addresses are its own.
        }
        Ok(rows)
    })?;
    let rows = handle
        .join()
        .map_err(|_| anyhow::anyhow!("SNAT capacity thread panicked"))??;
    drop(ns);
    Ok(rows)
}
