//! HTTP/3 beside HTTP/2 over TLS, both from this one Rust client (no Debian tool speaks
//! HTTP/3): `connections` connections, `streams` request loops on each, for a time; each
//! request's latency.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use bytes::{Buf as _, Bytes};

#[path = "../../../tests/common/h3_client.rs"]
#[expect(
    dead_code,
    reason = "the bench uses the client's connection, not its exchange()"
)]
pub mod h3_client;

#[derive(Clone, Copy)]
pub enum Protocol {
    H2,
    H3,
}

pub struct Outcome {
    pub requests: u64,
    pub bytes: u64,
    /// Microseconds, sorted.
    pub latencies: Vec<u64>,
    pub seconds: f64,
}

/// Call from the client's namespace.
pub fn run(
    protocol: Protocol,
    target: SocketAddr,
    path: &str,
    connections: usize,
    streams: usize,
    seconds: u64,
) -> Result<Outcome> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(load(
            protocol,
            target,
            path.to_string(),
            connections,
            streams,
            Duration::from_secs(seconds),
        ))
}

async fn load(
    protocol: Protocol,
    target: SocketAddr,
    path: String,
    connections: usize,
    streams: usize,
    length: Duration,
) -> Result<Outcome> {
    let uri: http::Uri = format!("https://{}{path}", target.ip()).parse()?;
    let mut loops = tokio::task::JoinSet::new();
    let mut keep = Vec::new();
    for _ in 0..connections {
        match protocol {
            Protocol::H3 => {
                let (endpoint, sender, drive) = h3_client::connect(target).await?;
                keep.push((Some(endpoint), drive));
                for _ in 0..streams {
                    let (mut sender, uri) = (sender.clone(), uri.clone());
                    loops.spawn(async move {
                        let mut tally = Tally::default();
                        let start = Instant::now();
                        while start.elapsed() < length {
                            let sent = Instant::now();
                            let request = http::Request::get(uri.clone()).body(())?;
                            let mut stream = sender.send_request(request).await?;
                            stream.finish().await?;
                            let response = stream.recv_response().await?;
                            anyhow::ensure!(response.status() == 200, "{}", response.status());
                            while let Some(chunk) = stream.recv_data().await? {
                                tally.bytes += chunk.remaining() as u64;
                            }
                            tally.latencies.push(sent.elapsed().as_micros() as u64);
                        }
                        anyhow::Ok(tally)
                    });
                }
            }
            Protocol::H2 => {
                let tcp = tokio::net::TcpStream::connect(target).await?;
                tcp.set_nodelay(true)?;
                let tls = tokio_rustls::TlsConnector::from(Arc::new(h3_client::tls_config(b"h2")?))
                    .connect("lb.test".try_into()?, tcp)
                    .await
                    .context("TLS handshake")?;
                let (sender, connection) = h2::client::handshake(tls).await?;
                let drive = tokio::spawn(async move {
                    let _ = connection.await;
                });
                keep.push((None, drive));
                for _ in 0..streams {
                    let (sender, uri) = (sender.clone(), uri.clone());
                    loops.spawn(async move {
                        let mut tally = Tally::default();
                        let start = Instant::now();
                        while start.elapsed() < length {
                            let sent = Instant::now();
                            let mut ready = sender.clone().ready().await?;
                            let request = http::Request::get(uri.clone()).body(())?;
                            let (response, _) = ready.send_request(request, true)?;
                            let response = response.await?;
                            anyhow::ensure!(response.status() == 200, "{}", response.status());
                            let mut body = response.into_body();
                            while let Some(chunk) = body.data().await {
                                let chunk: Bytes = chunk?;
                                tally.bytes += chunk.len() as u64;
                                let _ = body.flow_control().release_capacity(chunk.len());
                            }
                            tally.latencies.push(sent.elapsed().as_micros() as u64);
                        }
                        anyhow::Ok(tally)
                    });
                }
            }
        }
    }
    let start = Instant::now();
    let mut all = Tally::default();
    while let Some(done) = loops.join_next().await {
        let tally = done??;
        all.bytes += tally.bytes;
        all.latencies.extend(tally.latencies);
    }
    let seconds = start.elapsed().as_secs_f64();
    for (endpoint, drive) in keep {
        if let Some(endpoint) = endpoint {
            endpoint.close(0u32.into(), b"done");
        }
        drive.abort();
    }
    all.latencies.sort_unstable();
    Ok(Outcome {
        requests: all.latencies.len() as u64,
        bytes: all.bytes,
        latencies: all.latencies,
        seconds,
    })
}

#[derive(Default)]
struct Tally {
    bytes: u64,
    latencies: Vec<u64>,
}
