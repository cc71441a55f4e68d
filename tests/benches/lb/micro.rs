//! Microbenchmarks of the real XDP object through BPF_PROG_TEST_RUN, in ns/packet, beside two
//! baselines measured in the same run: XDP_DROP at once, and parse + XDP_TX.
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
        BENCH_MODE_NEW_FLOW, BenchTemplate, MAP_BENCH_JUMP, MAP_BENCH_TEMPLATE, PROG_BENCH_DROP,
        PROG_BENCH_PARSE_TX, PROG_BENCH_RESTORE, PROG_LB,
    },
    wire::{IPPROTO_TCP, TCP_SYN},
};
use lb_tests::{
    fixture::{CLIENT_MAC, CLIENT_SIDE_MAC, SERVER_MAC, SERVER_SIDE_MAC, fixture_namespace},
    packets::{Frame, L4, TCP_SYN_ACK},
};
use lb_userspace::{config::Config, dataplane::Dataplane};

use crate::Row;

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
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

pub fn run(quick: bool) -> Result<Vec<Row>> {
    let repeat: u32 = if quick { 20_000 } else { 1_000_000 };
    // Each new-flow run adds a flow to the tables; keep well inside their capacity.
    let new_flow_repeat: u32 = if quick { 20_000 } else { 200_000 };
    let ns = fixture_namespace(&format!("lbbench{}", std::process::id()))?;
    let handle = ns.run(move || -> Result<Vec<Row>> {
        let mut dataplane = Dataplane::load()?;
        for name in [PROG_BENCH_DROP, PROG_BENCH_PARSE_TX, PROG_BENCH_RESTORE] {
            dataplane.program(name)?.load()?;
        }
        let fxc = nix::net::if_::if_nametoindex("fxc")?;
        let fxs = nix::net::if_::if_nametoindex("fxs")?;
        dataplane.add_tx_port(fxc)?;
        dataplane.add_tx_port(fxs)?;
        let config = Config::parse(
            "bench.toml",
            &crate::large_backend_config(500, "\"fxc\", \"fxs\""),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
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

        let syn = Frame {
            dst_mac: CLIENT_SIDE_MAC,
            src_mac: CLIENT_MAC,
            vlan: None,
            src: IpAddr::V4(CLIENT),
            dst: IpAddr::V4(VIP),
            sport: 40000,
            dport: 80,
            l4: L4::Tcp { flags: TCP_SYN },
        }
        .build(b"");
        let non_vip = Frame {
            dst_mac: CLIENT_SIDE_MAC,
            src_mac: CLIENT_MAC,
            vlan: None,
            src: IpAddr::V4(CLIENT),
            dst: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
            sport: 40000,
            dport: 22,
            l4: L4::Tcp { flags: TCP_SYN },
        }
        .build(b"");

        let drop = b.time(PROG_BENCH_DROP, &syn, repeat)?;
        let parse_tx = b.time(PROG_BENCH_PARSE_TX, &syn, repeat)?;
        let pass = b.time(PROG_LB, &non_vip, repeat)?;

        // The wrapper alone, in both modes.
        b.set_jump(false)?;
        b.set_template(&syn, 0)?;
        let wrapper = b.time(PROG_BENCH_RESTORE, &syn, repeat)?;
        b.set_template(&syn, BENCH_MODE_NEW_FLOW)?;
        let wrapper_new = b.time(PROG_BENCH_RESTORE, &syn, repeat)?;

        b.set_jump(true)?;
        let new_flow = b.time(PROG_BENCH_RESTORE, &syn, new_flow_repeat)? - wrapper_new;
        // The plain SYN, now tracked: every run follows the established entry.
        b.set_template(&syn, 0)?;
        b.time(PROG_BENCH_RESTORE, &syn, 1)?;
        let established = b.time(PROG_BENCH_RESTORE, &syn, repeat)? - wrapper;

        // A server's reply to the tracked flow's SNAT port.
        let snat_port = {
            let map = b
                .dataplane
                .ebpf_mut()
                .map(lb_common::maps::MAP_CONNTRACK)
                .context("ct")?;
            let ct: aya::maps::HashMap<
                &MapData,
                lb_common::maps::FlowKey,
                lb_common::maps::NatEntry,
            > = aya::maps::HashMap::try_from(map)?;
            let key = lb_common::maps::FlowKey {
                src: lb_userspace::dataplane::plan::addr16(IpAddr::V4(CLIENT)),
                dst: lb_userspace::dataplane::plan::addr16(IpAddr::V4(VIP)),
                sport: 40000u16.to_be(),
                dport: 80u16.to_be(),
                proto: IPPROTO_TCP,
                _pad: [0; 3],
            };
            let entry = ct.get(&key, 0)?;
            (u16::from_be(entry.sport), entry.dst)
        };
        let server = Ipv4Addr::new(
            snat_port.1[12],
            snat_port.1[13],
            snat_port.1[14],
            snat_port.1[15],
        );
        let reply = Frame {
            dst_mac: SERVER_SIDE_MAC,
            src_mac: SERVER_MAC,
            vlan: None,
            src: IpAddr::V4(server),
            dst: IpAddr::V4(SNAT),
            sport: 8080,
            dport: snat_port.0,
            l4: L4::Tcp { flags: TCP_SYN_ACK },
        }
        .build(b"");
        b.ctx = ctx_for(fxs);
        b.set_template(&reply, 0)?;
        let nat_reply = b.time(PROG_BENCH_RESTORE, &reply, repeat)? - wrapper;
        let stats = b.dataplane.stats()?;
        let count = |label: &str| {
            stats
                .iter()
                .find(|(l, _)| *l == label)
                .map_or(0, |(_, v)| *v)
        };
        anyhow::ensure!(
            count("flow_new") >= u64::from(new_flow_repeat)
                && count("nat_reply") >= u64::from(repeat),
            "the timed runs did not take the paths they claim: {stats:?}"
        );

        let mut rows = Vec::new();
        let ns_row = |workload: &str, system: &str, value: f64| {
            Row::new(workload, system, value, "ns/packet")
        };
        rows.push(ns_row("micro-baseline", "xdp-drop", drop));
        rows.push(ns_row("micro-baseline", "parse-tx", parse_tx));
        rows.push(ns_row("micro-baseline", "restore-wrapper", wrapper));
        for (workload, value) in [
            ("micro-new-flow-syn", new_flow),
            ("micro-established", established),
            ("micro-nat-reply", nat_reply),
            ("micro-non-vip-pass", pass),
        ] {
            rows.push(ns_row(workload, "lb-nat", value));
            rows.push(Row::new(
                workload,
                "ratio:lb-nat/xdp-drop",
                value / drop,
                "x",
            ));
            rows.push(Row::new(
                workload,
                "ratio:lb-nat/parse-tx",
                value / parse_tx,
                "x",
            ));
        }
        Ok(rows)
    })?;
    let rows = handle
        .join()
        .map_err(|_| anyhow::anyhow!("microbenchmark thread panicked"))??;
    drop(ns);
    Ok(rows)
}
