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
/// The API and metrics listen on lb's client-side address, reachable from the client
/// namespace.
const API: &str = "198.18.0.1:8081";
const METRICS: &str = "198.18.0.1:9100";
/// The demo's read-write token: the API is reachable only inside its namespaces.
const TOKEN: &str = "demo";

/// The demo's config and token file, in a directory removed when the demo ends.
struct DemoFiles {
    dir: std::path::PathBuf,
    config: std::path::PathBuf,
}

impl DemoFiles {
    fn write() -> Result<DemoFiles> {
        let dir = std::env::temp_dir().join(format!("lbdemo-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let files = DemoFiles {
            config: dir.join("lb.toml"),
            dir,
        };
        let tokens = files.dir.join("tokens");
        std::fs::write(&tokens, format!("rw {TOKEN}\n"))?;
        std::fs::write(
            &files.config,
            format!(
                "{DEMO_CONFIG}\n[api]\nlisten = \"{API}\"\ntoken_file = \"{}\"\n\n[metrics]\nlisten = \"{METRICS}\"\n",
                tokens.display()
            ),
        )?;
        Ok(files)
    }
}

impl Drop for DemoFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
const WORKERS: usize = 4;
const EXCHANGES: usize = 3;

pub fn run(duration: u64) -> Result<()> {
    crate::cargo(&["build", "-p", "lb-userspace"])?;
    let lb = lb_binary()?;
    let stop = Arc::new(AtomicBool::new(false));
    let on_signal = stop.clone();
    ctrlc::set_handler(move || on_signal.store(true, Ordering::Relaxed))
        .context("installing the Ctrl-C handler")?;

    // The daemon watches its file: it stays until the daemon is gone (dropped after the
    // topology, which stops the daemon).
    let files = DemoFiles::write()?;
    // Dropping the topology removes every namespace, whatever happens below.
    let topo = Topology::new("lbdemo", 3)?;
    topo.start_peers(&lb)?;
    let _servers = topo.start_name_servers(SERVER_PORT)?;
    topo.start_lb(&lb, &files.config)?;
    println!(
        "demo: client -> {VIP}:{VIP_TCP_PORT} through lb (XDP full NAT) -> 3 servers weighted 1:1:2, for {duration} s (Ctrl-C stops)"
    );
    let lb_in_client = format!("ip netns exec {} {}", topo.client.name, lb.display());
    let api = format!("--api http://{API} --token {TOKEN}");
    println!("demo: while it runs, try (as root, in another terminal):");
    println!("  {lb_in_client} status {api}");
    println!("  {lb_in_client} servers demo-servers {api}");
    println!("  {lb_in_client} backends get demo-servers {api}");
    println!(
        "  ip netns exec {} curl -s http://{METRICS}/metrics | grep ^lb_server",
        topo.client.name
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
