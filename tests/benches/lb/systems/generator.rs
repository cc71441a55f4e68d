//! The UDP packet path: XDP live frames from the client (BPF_PROG_TEST_RUN with
//! `BPF_F_TEST_XDP_LIVE_FRAMES` transmits every frame `bench_generate` returns XDP_TX for
//! out of the client's veth), and an XDP sink on each server's veth that counts and drops
//! them, so neither end costs the balancer's CPU anything or limits the rate.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::{AsFd as _, AsRawFd as _},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    maps::{Array, MapData, PerCpuArray},
    programs::XdpMode,
};
use lb_common::{
    maps::{
        BENCH_MODE_MANY_FLOWS, BenchTemplate, MAP_BENCH_COUNTER, MAP_BENCH_SINK,
        MAP_BENCH_TEMPLATE, PROG_BENCH_GENERATE, PROG_BENCH_SINK,
    },
    wire::{ETH_HLEN, IPV4_HLEN},
};
use lb_tests::{
    flood::mac_of,
    packets::{Frame, L4},
    topology::Topology,
    wait_until,
};
use lb_userspace::dataplane::Dataplane;

use super::rig::in_ns;

/// The first source address of the generated flows; many-flows mode adds 0..16 to it.
pub const FLOW_SOURCE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 16);

/// The bench programs, loaded once: the generator, and the sink attached to every server.
pub struct Packets {
    dataplane: Dataplane,
    client_ifindex: u32,
    client_mac: [u8; 6],
    lb_mac: [u8; 6],
}

impl Packets {
    pub fn new(topo: &Topology) -> Result<Packets> {
        // The smallest flow tables: this copy of the object never balances.
        let mut dataplane = Dataplane::load_with(1024)?;
        for name in [PROG_BENCH_GENERATE, PROG_BENCH_SINK] {
            dataplane.program(name)?.load()?;
        }
        for ns in &topo.servers {
            let sink = dataplane.program(PROG_BENCH_SINK)?;
            in_ns(ns, || {
                sink.attach("eth0", XdpMode::Driver)
                    .with_context(|| format!("attaching the sink in {}", ns.name))?;
                Ok(())
            })?;
        }
        let client_ifindex = in_ns(&topo.client, || Ok(nix::net::if_::if_nametoindex("eth0")?))?;
        Ok(Packets {
            dataplane,
            client_ifindex,
            client_mac: mac_of(&topo.client, "eth0")?,
            lb_mac: mac_of(&topo.lb, "eth-c")?,
        })
    }

    /// Frames the sinks have dropped so far, over all servers and CPUs.
    pub fn received(&mut self) -> Result<u64> {
        let map = self
            .dataplane
            .ebpf_mut()
            .map(MAP_BENCH_SINK)
            .context("sink map")?;
        let counts: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
        Ok(counts.get(&0, 0)?.iter().sum())
    }

    /// Wait until the sinks' count stops growing (the same for 50 ms): frames still in
    /// flight when the generator stops are counted.
    pub fn settled(&mut self) -> Result<u64> {
        let mut last = (self.received()?, Instant::now());
        wait_until(
            "the sinks' count to stop growing",
            Duration::from_secs(5),
            || {
                let now = self.received()?;
                if now != last.0 {
                    last = (now, Instant::now());
                }
                Ok((last.1.elapsed() >= Duration::from_millis(50)).then_some(now))
            },
        )
    }

    /// Set the frame every generated packet carries: UDP from [`FLOW_SOURCE`]:40000 to
    /// `target`, 60 bytes (the Ethernet minimum), no UDP checksum (the generator changes
    /// the ports); with `many_flows`, cycling through 1M source (address, port) tuples.
    pub fn set_flow(&mut self, target: SocketAddr, many_flows: bool) -> Result<()> {
        let mut frame = Frame {
            dst_mac: self.lb_mac,
            src_mac: self.client_mac,
            vlan: None,
            src: IpAddr::V4(FLOW_SOURCE),
            dst: target.ip(),
            sport: 40000,
            dport: target.port(),
            l4: L4::Udp,
        }
        .build(&[0u8; 18]);
        let udp_csum = ETH_HLEN + IPV4_HLEN + 6;
        frame[udp_csum..udp_csum + 2].fill(0);
        let mut template = BenchTemplate {
            mode: if many_flows { BENCH_MODE_MANY_FLOWS } else { 0 },
            _pad: 0,
            frame: [0; 64],
        };
        template.frame[..frame.len()].copy_from_slice(&frame);
        let ebpf = self.dataplane.ebpf_mut();
        let mut array: Array<&mut MapData, BenchTemplate> =
            Array::try_from(ebpf.map_mut(MAP_BENCH_TEMPLATE).context("template map")?)?;
        array.set(0, template, 0)?;
        let mut counter: PerCpuArray<&mut MapData, u32> =
            PerCpuArray::try_from(ebpf.map_mut(MAP_BENCH_COUNTER).context("counter map")?)?;
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
        let zeros = aya::maps::PerCpuValues::try_from(vec![0u32; cpus])?;
        counter.set(0, zeros, 0)?;
        Ok(())
    }

    /// Generate for `duration` from a thread in the client namespace (on the caller's CPU
    /// mask); returns how long it generated and how many frames it made.
    pub fn generate(&mut self, topo: &Topology, duration: Duration) -> Result<(Duration, u64)> {
        let fd = self
            .dataplane
            .program(PROG_BENCH_GENERATE)?
            .fd()?
            .as_fd()
            .as_raw_fd();
        let ifindex = self.client_ifindex;
        in_ns(&topo.client, move || {
            let mut frame = [0u8; 60];
            // The template overwrites it; only the length matters.
            frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            // Each call is bounded: 200k frames take well under a second.
            const CHUNK: u32 = 200_000;
            let start = Instant::now();
            let mut made = 0u64;
            while start.elapsed() < duration {
                live_frames(fd, &frame, ifindex, CHUNK)?;
                made += u64::from(CHUNK);
            }
            Ok((start.elapsed(), made))
        })
    }
}

/// One BPF_PROG_TEST_RUN in live-frames mode: `repeat` frames through the program, whose
/// XDP_TX sends them out of `ifindex` (aya's test_run has no flags, so the raw syscall).
fn live_frames(prog_fd: i32, frame: &[u8], ifindex: u32, repeat: u32) -> Result<()> {
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
    // The `test` member of union bpf_attr.
    #[repr(C, align(8))]
    #[derive(Default)]
    struct TestAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
    // egress_ifindex.
    let ctx: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
    let attr = TestAttr {
        prog_fd: prog_fd as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ctx_size_in: std::mem::size_of_val(&ctx) as u32,
        ctx_in: ctx.as_ptr() as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size: 64,
        ..Default::default()
    };
    // SAFETY: the attribute points at `frame` and `ctx`, both alive for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &attr as *const TestAttr,
            std::mem::size_of::<TestAttr>(),
        )
    };
    if rc != 0 {
        bail!(
            "BPF_PROG_TEST_RUN (live frames): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
