//! TCP servers and the connection-rate client on tokio, one thread each: no thread per
//! connection, so what a connection costs the client and servers stays small and the
//! balancer's cost decides the figure.

use std::{
    net::SocketAddr,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use lb_tests::{netns::NetNs, topology::server_name};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpSocket, TcpStream},
};

/// Every server namespace answering each line on each of `ports` with its name (as
/// `lb_tests::traffic`'s name servers do); stops when dropped.
pub struct Servers {
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
}

pub fn start_servers(servers: &[NetNs], ports: &[u16]) -> Result<Servers> {
    let mut running = Servers {
        stops: Vec::new(),
        threads: Vec::new(),
    };
    for (i, ns) in servers.iter().enumerate() {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let ports = ports.to_vec();
        let name = format!("{}\n", server_name(i));
        running.threads.push(ns.run(move || {
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            rt.block_on(async move {
                let mut listeners = Vec::new();
                for port in ports {
                    let bound = (|| -> std::io::Result<_> {
                        let sock = TcpSocket::new_v4()?;
                        sock.set_reuseaddr(true)?;
                        sock.bind(([0, 0, 0, 0], port).into())?;
                        sock.listen(4096)
                    })();
                    match bound {
                        Ok(l) => listeners.push(l),
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.into()));
                            return;
                        }
                    }
                }
                let _ = ready_tx.send(Ok(()));
                for listener in listeners {
                    let name = name.clone();
                    tokio::spawn(async move {
                        while let Ok((conn, _)) = listener.accept().await {
                            tokio::spawn(answer(conn, name.clone()));
                        }
                    });
                }
                let _ = stop_rx.await;
            });
        })?);
        running.stops.push(stop_tx);
        ready_rx
            .recv()
            .context("a server thread exited before listening")?
            .with_context(|| format!("listening in {}", ns.name))?;
    }
    Ok(running)
}

/// Answer every line with `name` until the client closes.
async fn answer(conn: TcpStream, name: String) {
    let _ = conn.set_nodelay(true);
    let mut conn = BufReader::new(conn);
    let mut buf = [0u8; 512];
    loop {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                // One reply per line received.
                for _ in buf[..n].iter().filter(|b| **b == b'\n') {
                    if conn.get_mut().write_all(name.as_bytes()).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

pub struct Outcome {
    pub done: u64,
    pub failed: u64,
    pub elapsed: Duration,
}

/// Short TCP connections to `target` from one thread in `client`, `concurrency` at a
/// time, for `duration`: connect, one request and its answer, close.
pub fn connection_rate(
    client: &NetNs,
    target: SocketAddr,
    duration: Duration,
    concurrency: usize,
) -> Result<Outcome> {
    client
        .run(move || -> Result<Outcome> {
            runtime()?.block_on(async move {
                let start = Instant::now();
                let deadline = start + duration;
                let mut tasks = Vec::new();
                for _ in 0..concurrency {
                    tasks.push(tokio::spawn(async move {
                        let (mut done, mut failed) = (0u64, 0u64);
                        while Instant::now() < deadline {
                            match tokio::time::timeout(Duration::from_secs(3), session(target))
                                .await
                            {
                                Ok(Ok(())) => done += 1,
                                _ => failed += 1,
                            }
                        }
                        (done, failed)
                    }));
                }
                let (mut done, mut failed) = (0, 0);
                for t in tasks {
                    let (d, f) = t.await?;
                    done += d;
                    failed += f;
                }
                Ok(Outcome {
                    done,
                    failed,
                    elapsed: start.elapsed(),
                })
            })
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("connection-rate client panicked"))?
}

async fn session(target: SocketAddr) -> std::io::Result<()> {
    let mut conn = TcpStream::connect(target).await?;
    conn.set_nodelay(true)?;
    conn.write_all(b"request 0\n").await?;
    let mut buf = [0u8; 64];
    let mut got = 0;
    while !buf[..got].contains(&b'\n') {
        let n = conn.read(&mut buf[got..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    Ok(())
}
