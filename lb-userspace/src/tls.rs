//! TLS configurations, shared by the health checks and the proxy: the server side of TLS
//! binds, verifying and non-verifying clients.

use std::{path::Path, sync::Arc};

use anyhow::{Context as _, Result};

/// TLS termination from a PEM file holding the certificate chain and its private key.
pub fn acceptor(path: &Path) -> Result<tokio_rustls::TlsAcceptor> {
    let mut config = server_config(path)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// QUIC's TLS for an HTTP/3 bind: the same certificate, TLS 1.3 only, ALPN "h3".
pub fn quic_server_config(path: &Path) -> Result<quinn::crypto::rustls::QuicServerConfig> {
    let mut config = server_config(path)?;
    config.alpn_protocols = vec![b"h3".to_vec()];
    config.max_early_data_size = 0;
    quinn::crypto::rustls::QuicServerConfig::try_from(config)
        .with_context(|| format!("ssl_certificate {path:?}: not usable for QUIC"))
}

fn server_config(path: &Path) -> Result<rustls::ServerConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("ssl_certificate {path:?}"))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("ssl_certificate {path:?}: bad certificate"))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "ssl_certificate {path:?} holds no certificate"
    );
    let key = PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("ssl_certificate {path:?}: no private key in the file"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| format!("ssl_certificate {path:?}"))?;
    Ok(config)
}

/// Root certificates for `tls_verify`: the file's CAs, or the system's.
pub fn client_config(verify: bool, ca: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    if !verify {
        return Ok(insecure_client_config());
    }
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| anyhow::anyhow!("tls_ca {path:?}: {e}"))?
            {
                roots.add(cert.map_err(|e| anyhow::anyhow!("tls_ca {path:?}: {e}"))?)?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A rustls client that accepts any certificate; the handshake signatures are still checked.
pub fn insecure_client_config() -> Arc<rustls::ClientConfig> {
    use rustls::{
        DigitallySignedStruct, SignatureScheme,
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        pki_types::{CertificateDer, ServerName, UnixTime},
    };
    #[derive(Debug)]
    struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);
    impl ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Arc::new(config)
}
