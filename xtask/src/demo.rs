//! `cargo xtask run` with no arguments: the demo. Builds the topology, starts name servers
//! and lb with the embedded config, drives real TCP connections from the client namespace,
//! prints per-server shares every second and a summary line at the end.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use lb_tests::{
    topology::{SERVER_PORT, Topology, VIP, VIP_TCP_PORT, lb_binary},
    traffic::{Tally, tcp_session},
};

const DEMO_CONFIG: &str = include_str!("../../examples/demo.toml");
const WORKERS: usize = 4;
const EXCHANGES: usize = 3;

pub fn run(duration: u64) -> Result<()> {
    crate::cargo(&["build", "-p", "lb-userspace"])?;
    let lb = lb_binary()?;
    let stop = Arc::new(AtomicBool::new(false));
    let on_signal = stop.clone();
    ctrlc::set_handler(move || on_signal.store(true, Ordering::Relaxed))
        .context("installing the Ctrl-C handler")?;

    // Dropping the topology removes every namespace, whatever happens below.
    let topo = Topology::new("lbdemo", 3)?;
    topo.start_peers(&lb)?;
    let _servers = topo.start_name_servers(SERVER_PORT)?;
    let config = std::env::temp_dir().join(format!("lbdemo-{}.toml", std::process::id()));
    std::fs::write(&config, DEMO_CONFIG)?;
    let started = topo.start_lb(&lb, &config);
    let _ = std::fs::remove_file(&config);
    started?;
    println!(
        "demo: client -> {VIP}:{VIP_TCP_PORT} through lb (XDP full NAT) -> 3 servers weighted 1:1:2, for {duration} s (Ctrl-C stops)"
    );

    let tally = Arc::new(Mutex::new(Tally::default()));
    let target: SocketAddr = (VIP, VIP_TCP_PORT).into();
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (stop, tally) = (stop.clone(), tally.clone());
        workers.push(topo.client.run(move || {
            while !stop.load(Ordering::Relaxed) {
                let result = tcp_session(target, EXCHANGES);
                tally.lock().unwrap().record(result);
            }
        })?);
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs(duration);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        // Kept: pacing of the once-a-second progress line, not a wait for anything.
        std::thread::sleep(Duration::from_secs(1));
        let t = tally.lock().unwrap().clone();
        println!("t={:>3}s {}", start.elapsed().as_secs(), t.summary());
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let t = tally.lock().unwrap().clone();
    for e in &t.errors {
        eprintln!("demo: a connection failed: {e}");
    }
    println!("summary: {}", t.summary());
    Ok(())
}
