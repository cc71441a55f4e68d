//! The HA pair's flow sync, between two in-process data planes in a namespace of their own
//! (as `ha_sync`'s tests run them): the lag of changes at a steady 5,000 new flows a
//! second, the bulk transfer of a full table and its throughput. Failover times come from
//! the netns pair with keepalived (`failover`).

use std::{
    sync::{atomic::Ordering::Relaxed, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use lb_common::maps::FlowKey;
use lb_userspace::dataplane::monotonic_now_ns;

#[path = "../../tests/common/sync_nodes.rs"]
#[expect(
    dead_code,
    reason = "shared with the ha_sync tests, which use all of it"
)]
mod sync_nodes;
use sync_nodes::{A, B, CONFIG, Node, flows, node, pair_namespace};

use crate::Row;

/// What a user gets: `[ha] sync_interval`'s default.
const INTERVAL: Duration = Duration::from_millis(200);
const SECRET: &[u8] = b"the bench pair's shared secret";
const LAG: &str = "ha-sync-lag-5k-new-flows-per-s";

pub fn run(quick: bool, lb_bin: &std::path::Path) -> Result<Vec<Row>> {
    let ns = pair_namespace("habench")?;
    let mut rows = ns
        .run(move || measure(quick))?
        .join()
        .map_err(|_| anyhow::anyhow!("the ha bench panicked"))??;
    drop(ns);
    rows.extend(failover(quick, lb_bin)?);
    Ok(rows)
}

/// The pair rig with keepalived (VRRPv3, advert_int 100 ms): lb-a's links go down, and
/// the time from then to the first new connection through lb-b, and to the first answer
/// on a flow opened through lb-a (it exchanges every 10 ms). Then lb-a comes back; repeated.
fn failover(quick: bool, lb_bin: &std::path::Path) -> Result<Vec<Row>> {
    use lb_tests::{
        pair::{LongFlow, Node, Pair, PairOptions},
        traffic::LongConn,
    };
    let pair = Pair::start("hab-", lb_bin, PairOptions::default())?;
    let bound = pair.failover_bound();
    let (mut new_conn, mut old_flow) = (Vec::new(), Vec::new());
    for _ in 0..if quick { 1 } else { 5 } {
        pair.wait_master(Node::A, Duration::from_secs(20))?;
        let received = pair.ha_number(Node::B, "flows_received");
        let flow = LongFlow::open(
            &pair.client,
            pair.vip_tcp(),
            Duration::from_millis(10),
            Duration::from_secs(3),
        )?;
        flow.wait_exchanges(3, Duration::from_secs(5))?;
        // lb-b must hold the flow before lb-a fails (the sync interval).
        lb_tests::wait_until("lb-b holds the flow", Duration::from_secs(10), || {
            Ok((pair.ha_number(Node::B, "flows_received") > received).then_some(()))
        })?;
        let before = flow.stats().exchanges;
        let failed = Instant::now();
        pair.links_down(Node::A)?;
        let target = pair.vip_tcp();
        let connected = pair
            .client
            .run(move || {
                while failed.elapsed() < Duration::from_secs(10) {
                    if LongConn::open_within(None, target, Duration::from_millis(50)).is_ok() {
                        return Some(failed.elapsed());
                    }
                }
                None
            })?
            .join()
            .map_err(|_| anyhow::anyhow!("panicked"))?
            .context("no new connection within 10 s of the failure")?;
        new_conn.push(connected.as_secs_f64());
        let answered = lb_tests::wait_until("the old flow answers", bound * 4, || {
            Ok((flow.stats().exchanges > before + 1).then(|| failed.elapsed()))
        })
        .with_context(|| format!("{:?}", flow.stats()))?;
        old_flow.push(answered.as_secs_f64());
        flow.stop();
        pair.links_up(Node::A)?;
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(vec![
        Row::new(
            "ha-failover-new-connection",
            "lb+keepalived",
            median(&mut new_conn),
            "s",
        ),
        Row::new(
            "ha-failover-old-flow-answers",
            "lb+keepalived",
            median(&mut old_flow),
            "s",
        ),
    ])
}

fn measure(quick: bool) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let seconds = if quick { 2 } else { 10 };
    // Lag from an empty table, as a pair starts.
    let (a, b) = (
        node(CONFIG, 1 << 20, INTERVAL, A, B, SECRET),
        node(CONFIG, 1 << 20, INTERVAL, B, A, SECRET),
    );
    let (median, p99) = lag(&a, &b, seconds)?;
    rows.push(Row::new(LAG, "lb:median", median, "ms"));
    rows.push(Row::new(LAG, "lb:p99", p99, "ms"));
    a.shared.stop();
    b.shared.stop();
    // The next pair binds the same addresses.
    for node in [&a, &b] {
        anyhow::ensure!(
            node.shared.wait_listener_closed(Duration::from_secs(10)),
            "the first pair's sync listener did not close within 10 s"
        );
    }
    drop((a, b));

    // The bulk: A holds `n` flows when B starts; B is synced when A's bulk-done arrives.
    let n: u32 = if quick { 100_000 } else { 1_000_000 };
    let size = n + n / 4;
    let a = node(CONFIG, size, INTERVAL, A, B, SECRET);
    let (keys, entries) = flows(&a.dataplane.lock().expect("lock"), n, 1_000_000_000);
    a.dataplane
        .lock()
        .expect("lock")
        .flow_tables()?
        .write_flows(&keys, &entries)?;
    drop((keys, entries));
    let start = Instant::now();
    let b = node(CONFIG, size, INTERVAL, B, A, SECRET);
    lb_tests::wait_until("the bulk sync", Duration::from_secs(120), || {
        Ok((b.shared.stats.bulks_received.load(Relaxed) > 0).then_some(()))
    })?;
    let bulk = start.elapsed().as_secs_f64();
    let received = b.shared.stats.flows_received.load(Relaxed);
    anyhow::ensure!(
        received >= u64::from(n),
        "B received {received} of {n} flows"
    );
    rows.push(Row::new(
        "ha-bulk-sync",
        "lb",
        bulk,
        &format!("s for {n} flows"),
    ));
    rows.push(Row::new(
        "ha-sync-throughput",
        "lb",
        f64::from(n) / bulk,
        "flows/s",
    ));
    if !quick {
        // The same load over a table of a million flows: every scan reads them all.
        let (median, p99) = lag(&a, &b, seconds)?;
        let over = format!("{LAG}-over-1m-flows");
        rows.push(Row::new(&over, "lb:median", median, "ms"));
        rows.push(Row::new(&over, "lb:p99", p99, "ms"));
    }
    a.shared.stop();
    b.shared.stop();
    Ok(rows)
}

/// A opens 5,000 flows a second (250 every 50 ms) for `seconds`; for the last flow of each
/// batch, the time until B holds it. Median and p99, in ms.
fn lag(a: &Node, b: &Node, seconds: u32) -> Result<(f64, f64)> {
    let (tx, rx) = mpsc::channel::<(FlowKey, Instant)>();
    let writer = {
        let dataplane = a.dataplane.clone();
        std::thread::spawn(move || -> Result<()> {
            let tables = dataplane.lock().expect("lock").flow_tables()?;
            let mut next = Instant::now();
            for batch in 0..seconds * 20 {
                let (mut keys, mut entries) = flows(&dataplane.lock().expect("lock"), 250, 0);
                // New clients (198.19.200.0 and on) and SNAT addresses (198.18.3.0 and
                // on), outside the bulk's.
                let (hi, lo) = ((batch / 200) as u8, (batch % 200) as u8);
                for k in &mut keys {
                    k.src[12..].copy_from_slice(&[198, 19, 200 + hi, lo]);
                }
                for e in &mut entries {
                    e.last_seen_ns = monotonic_now_ns();
                    e.src[12..].copy_from_slice(&[198, 18, 3 + hi, lo]);
                }
                tables.write_flows(&keys, &entries)?;
                tx.send((*keys.last().expect("250 keys"), Instant::now()))?;
                next += Duration::from_millis(50);
                // The load's pace, not a wait for a condition.
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            Ok(())
        })
    };
    let b_tables = b.dataplane.lock().expect("lock").flow_tables()?;
    let mut lags = Vec::new();
    for (key, written) in rx {
        let lag = lb_tests::wait_until("a new flow on B", Duration::from_secs(30), || {
            Ok(b_tables.flow(&key).map(|_| written.elapsed()))
        })?;
        lags.push(lag.as_secs_f64() * 1e3);
    }
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer panicked"))??;
    lags.sort_by(f64::total_cmp);
    let p99 = lags[(lags.len() * 99 / 100).min(lags.len() - 1)];
    Ok((lags[lags.len() / 2], p99))
}
