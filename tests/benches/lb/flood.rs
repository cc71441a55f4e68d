//! The SYN rate lb survives: spoofed SYNs (from sources that never answer) flood the VIP at
//! rising rates while 20 established connections stay open. A rate is survived when, after
//! it, every established connection still exchanges data with its server and a new
//! connection is served within 1 s of the flood's end (issue 13's acceptance). The row is
//! the highest SYN rate lb took (SYNs of new flows its XDP program counted, per second of
//! flooding) at a survived step.

use std::{
    net::{SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lb_tests::{
    flood::{SPOOFED_NET, SynFlood, mac_of},
    netns::NetNs,
    topology::{SERVER_PORT, Topology, VIP, VIP_TCP_PORT, nat_frontend_toml, server_addr},
    traffic::{LongConn, connect_by, exchange_all, metric, scrape_metrics},
    wait_until,
};

use crate::{Row, systems::Settings};

const ESTABLISHED: usize = 20;
const METRICS: ([u8; 4], u16) = ([198, 18, 0, 1], 9100);

pub fn run(settings: &Settings) -> Result<Vec<Row>> {
    let topo = Topology::new(&format!("lbfb{}", std::process::id()), 3)?;
    topo.start_peers(&settings.lb_bin)?;
    let _servers = topo.start_name_servers(SERVER_PORT)?;
    topo.lb
        .exec(&["ip", "route", "add", "blackhole", SPOOFED_NET])?;
    let addresses: Vec<String> = (0..3)
        .map(|i| format!("{{ address = \"{}\" }}", server_addr(i)))
        .collect();
    let config = format!(
        "{}\n[[backends]]\nname = \"flood\"\nmode = \"tcp\"\nbalancing_method = \"maglev\"\n\
         port = {SERVER_PORT}\nservers = {{ type = \"addresses\", addresses = [{}] }}\n\n\
         [metrics]\nlisten = \"198.18.0.1:9100\"\n\n[dataplane]\ngc_interval = \"200ms\"\n",
        nat_frontend_toml("flood", VIP_TCP_PORT, 3),
        addresses.join(", ")
    );
    let file = std::env::temp_dir().join(format!("lbfb-{}.toml", std::process::id()));
    std::fs::write(&file, config)?;
    let started = topo.start_lb(&settings.lb_bin, &file);
    let result = started.and_then(|_| measure(&topo, settings));
    let _ = std::fs::remove_file(&file);
    let rate = result?;
    Ok(vec![Row::new(
        "syn-flood-survived",
        "lb-nat",
        rate,
        "SYN/s",
    )])
}

/// Flood at each step's rate in turn (`None`: as fast as one sender thread can); returns
/// the highest SYN rate lb took at a step it survived, 0 if it survived none.
fn measure(topo: &Topology, settings: &Settings) -> Result<f64> {
    let steps: &[(Option<u64>, u64)] = if settings.quick {
        &[(Some(20_000), 1), (None, 1)]
    } else {
        &[
            (Some(10_000), 10),
            (Some(30_000), 10),
            (Some(100_000), 10),
            (None, 10),
        ]
    };
    let target: SocketAddr = (VIP, VIP_TCP_PORT).into();
    let mut conns = topo
        .client
        .run(move || {
            (0..ESTABLISHED)
                .map(|_| LongConn::open(None, target))
                .collect::<Result<Vec<_>>>()
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    let mut flood = SynFlood {
        ifname: "eth0".into(),
        src_mac: mac_of(&topo.client, "eth0")?,
        dst_mac: mac_of(&topo.lb, "eth-c")?,
        target: SocketAddrV4::new(VIP, VIP_TCP_PORT),
        first_source: 0,
    };
    let mut best = 0.0f64;
    let mut before = syns_counted(&topo.client)?;
    for &(rate, seconds) in steps {
        let sender = flood.clone();
        let sent = topo
            .client
            .run(move || sender.run(rate, Duration::from_secs(seconds)))?
            .join()
            .map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
        let ended = Instant::now();
        flood.first_source = sent.next_source;
        let fresh = connect_by(&topo.client, target, 1, ended + Duration::from_secs(1));
        let kept = exchange_all(&topo.client, conns);
        let after = syns_counted(&topo.client)?;
        let took = (after.syns() - before.syns()) / sent.elapsed.as_secs_f64();
        let (reclaimed, refused) = (
            after.reclaimed - before.reclaimed,
            after.exhausted - before.exhausted,
        );
        before = after;
        let offered = sent.packets as f64 / sent.elapsed.as_secs_f64();
        let label = rate.map_or("unthrottled".to_string(), |r| format!("{r}/s"));
        match (&fresh, kept) {
            (Ok(_), Ok(still)) => {
                eprintln!(
                    "bench: SYN flood {label}: sent {offered:.0}/s, lb took {took:.0}/s \
                     ({reclaimed} took an idle handshake's port, {refused} found no port); \
                     {ESTABLISHED} established connections intact, a new one served within 1 s"
                );
                best = best.max(took);
                conns = still;
            }
            (_, kept) => {
                eprintln!(
                    "bench: SYN flood {label}: sent {offered:.0}/s, lb took {took:.0}/s; not survived: \
                     new connection {:?}, established {:?}",
                    fresh.as_ref().err(),
                    kept.as_ref().err()
                );
                break;
            }
        }
    }
    Ok(best)
}

/// lb's XDP counters of new TCP flows.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Counted {
    new: f64,
    exhausted: f64,
    reclaimed: f64,
}

impl Counted {
    /// SYNs of new flows: opened, or refused for want of an SNAT port.
    fn syns(&self) -> f64 {
        self.new + self.exhausted
    }
}

/// lb's counters of new flows, once its metrics have stopped changing (the daemon renders
/// them every gc_interval).
fn syns_counted(client: &NetNs) -> Result<Counted> {
    let read = || -> Result<Counted> {
        let text = scrape_metrics(METRICS.into())?;
        let xdp = |counter: &str| metric(&text, &lb_common::stats::metric_sample(counter));
        let Some(new) = xdp("flow_new") else {
            bail!("no flow_new counter in the metrics yet");
        };
        Ok(Counted {
            new,
            exhausted: xdp("drop_snat_exhausted").unwrap_or(0.0),
            reclaimed: xdp("flow_syn_reclaimed").unwrap_or(0.0),
        })
    };
    client
        .run(move || {
            // The same values over three refreshes (gc_interval 200 ms): the counts are final.
            let mut last: Option<(Counted, Instant)> = None;
            wait_until(
                "lb's SYN counters to settle",
                Duration::from_secs(10),
                || {
                    let now = read()?;
                    match last {
                        Some((value, since)) if value == now => {
                            Ok((since.elapsed() >= Duration::from_millis(600)).then_some(now))
                        }
                        _ => {
                            last = Some((now, Instant::now()));
                            Ok(None)
                        }
                    }
                },
            )
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("metrics thread panicked"))?
        .context("reading lb's counters")
}
