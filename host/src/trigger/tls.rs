//! TLS for a listener: the server certificate chain and key, and optional
//! client-certificate verification, from files or PEM text.

use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::manifest::spec::{PemSource, TlsSpec};

/// Build the rustls configuration of a `[triggers.tls]` table.
pub(super) fn server_config(spec: &TlsSpec) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = certificates(&spec.cert).context("cert")?;
    let key = private_key(&spec.key).context("key")?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("selecting TLS versions")?;
    let builder = if spec.client_ca.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for (i, ca) in spec.client_ca.iter().enumerate() {
            for cert in certificates(ca).with_context(|| format!("client_ca[{i}]"))? {
                roots
                    .add(cert)
                    .map_err(|error| anyhow!("client_ca[{i}]: {ca}: {error}"))?;
            }
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .context("client_ca: building the client certificate verifier")?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .context("the certificate and key do not form a usable pair")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn pem_bytes(source: &PemSource) -> anyhow::Result<Vec<u8>> {
    match source {
        PemSource::File(path) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
        }
        PemSource::Text(text) => Ok(text.clone().into_bytes()),
    }
}

fn certificates(source: &PemSource) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let bytes = pem_bytes(source)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| anyhow!("{source}: not valid PEM: {error}"))?;
    if certs.is_empty() {
        bail!("{source}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)");
    }
    Ok(certs)
}

fn private_key(source: &PemSource) -> anyhow::Result<PrivateKeyDer<'static>> {
    let bytes = pem_bytes(source)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|error| {
        anyhow!("{source}: holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {error}")
    })
}
