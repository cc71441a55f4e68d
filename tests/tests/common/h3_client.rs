//! A small HTTP/3 client (quinn + h3) for the proxy's HTTP/3 binds: requests in turn on one
//! QUIC connection. It does not verify the server's certificate (the tests' are
//! self-signed); what it tests is the proxying.

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context as _, Result};
use bytes::{Buf as _, Bytes};

pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    pub trailers: Option<http::HeaderMap>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Send each request in turn over one connection to `target`; call from the client's
/// namespace.
pub fn exchange(target: SocketAddr, requests: Vec<http::Request<Bytes>>) -> Result<Vec<Answer>> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(target, requests))
}

/// A TLS 1.3 client config that offers `alpn` and accepts any certificate.
pub fn tls_config(alpn: &[u8]) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate))
        .with_no_client_auth();
    crypto.alpn_protocols = vec![alpn.to_vec()];
    Ok(crypto)
}

pub type Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// An HTTP/3 connection to `target`: its endpoint (close it when done), a request sender
/// (clone it for concurrent streams), and the task driving the connection.
pub async fn connect(
    target: SocketAddr,
) -> Result<(quinn::Endpoint, Sender, tokio::task::JoinHandle<()>)> {
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls_config(b"h3")?)?;
    let local: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let mut endpoint = quinn::Endpoint::client(local)?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let connection = endpoint
        .connect(target, "lb.test")?
        .await
        .context("QUIC handshake")?;
    let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(connection))
        .await
        .context("HTTP/3 setup")?;
    let drive = tokio::spawn(async move {
        let _ = driver.wait_idle().await;
    });
    Ok((endpoint, sender, drive))
}

async fn run(target: SocketAddr, requests: Vec<http::Request<Bytes>>) -> Result<Vec<Answer>> {
    let (endpoint, mut sender, drive) = connect(target).await?;
    let mut answers = Vec::new();
    for request in requests {
        let (parts, body) = request.into_parts();
        let mut stream = sender
            .send_request(http::Request::from_parts(parts, ()))
            .await
            .context("sending a request")?;
        if !body.is_empty() {
            // In pieces, as a client streams a large body.
            for piece in body.chunks(64 * 1024) {
                stream.send_data(Bytes::copy_from_slice(piece)).await?;
            }
        }
        stream.finish().await?;
        let response = stream.recv_response().await.context("the response")?;
        let mut body = Vec::new();
        while let Some(mut chunk) = stream.recv_data().await? {
            while chunk.has_remaining() {
                let piece = chunk.chunk();
                body.extend_from_slice(piece);
                let n = piece.len();
                chunk.advance(n);
            }
        }
        let trailers = stream.recv_trailers().await.context("the trailers")?;
        answers.push(Answer {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body,
            trailers,
        });
    }
    drop(sender);
    endpoint.close(0u32.into(), b"done");
    drive.abort();
    Ok(answers)
}

#[derive(Debug)]
struct AnyCertificate;

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
