//! Certificates generated for TLS tests: a CA, a server certificate for
//! `localhost`/`127.0.0.1` signed by it, and a client certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;

/// PEM text of a test PKI, also written to files in `dir`.
pub struct Pki {
    pub ca_pem: String,
    /// The server certificate followed by the CA: a chain.
    pub server_chain_pem: String,
    pub server_key_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
    pub dir: PathBuf,
}

impl Pki {
    pub fn generate(dir: &Path) -> Self {
        let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "wsflow test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

        let server_key = KeyPair::generate().unwrap();
        let server_params =
            CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        let server_cert = server_params.signed_by(&server_key, &ca).unwrap();

        let client_key = KeyPair::generate().unwrap();
        let mut client_params = CertificateParams::new(vec!["client".into()]).unwrap();
        client_params
            .distinguished_name
            .push(DnType::CommonName, "test client");
        let client_cert = client_params.signed_by(&client_key, &ca).unwrap();

        let pki = Self {
            ca_pem: ca.pem(),
            server_chain_pem: format!("{}{}", server_cert.pem(), ca.pem()),
            server_key_pem: server_key.serialize_pem(),
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
            dir: dir.to_path_buf(),
        };
        std::fs::write(dir.join("ca.pem"), &pki.ca_pem).unwrap();
        std::fs::write(dir.join("server.pem"), &pki.server_chain_pem).unwrap();
        std::fs::write(dir.join("server.key"), &pki.server_key_pem).unwrap();
        pki
    }

    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn client_config(&self, with_client_cert: bool) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        if with_client_cert {
            let certs = CertificateDer::pem_slice_iter(self.client_cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(self.client_key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(certs, key).unwrap()
        } else {
            builder.with_no_client_auth()
        }
    }

    /// Open a `wss://` connection to `url` (host 127.0.0.1) trusting the
    /// test CA; `Err` carries the TLS or WebSocket failure.
    pub async fn connect(
        &self,
        url: &str,
        with_client_cert: bool,
    ) -> Result<WebSocketStream<TlsStream<TcpStream>>, String> {
        let addr = url
            .strip_prefix("wss://")
            .and_then(|rest| rest.split('/').next())
            .expect("a wss:// URL");
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let connector =
            tokio_rustls::TlsConnector::from(Arc::new(self.client_config(with_client_cert)));
        let name = ServerName::try_from("localhost").unwrap();
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (ws, _) = tokio_tungstenite::client_async(url, tls)
            .await
            .map_err(|e| e.to_string())?;
        Ok(ws)
    }
}
