//! TLS: `wss://` with a certificate chain and key from files or from app
//! properties (PEM or base64 PEM), client-certificate verification, and
//! startup errors that name the bad file.

use base64::Engine as _;
use toml::{Table, toml};
use wsflow_tests::pki::Pki;
use wsflow_tests::{Manifest, TestServer, Trigger, programs, table};

/// App `secure` with `properties`, serving the echo example at `/echo` on
/// a trigger with the `[triggers.tls]` settings `tls`.
fn manifest(properties: Table, tls: Table) -> Manifest {
    Manifest::app("secure")
        .properties(properties)
        .flow("echo", programs::EXAMPLE_ECHO)
        .trigger(
            Trigger::on_port(0)
                .with(table([("tls", tls.into())]))
                .handler(toml! { path = "/echo" flow = "echo" }),
        )
}

/// `[triggers.tls]` with a chain and key from files.
fn tls_files(cert: &str, key: &str) -> Table {
    table([("cert", cert.into()), ("key", key.into())])
}

async fn assert_echo_over_tls(server: &TestServer, pki: &Pki, with_client_cert: bool) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let url = server.endpoints()[0].url();
    assert!(url.starts_with("wss://"), "{url}");
    let mut client = pki.connect(&url, with_client_cert).await.unwrap();
    client.send(Message::text("secret")).await.unwrap();
    let reply = client.next().await.unwrap().unwrap();
    assert_eq!(reply, Message::text("secret"));
}

#[tokio::test]
async fn serves_wss_with_a_certificate_chain_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let tls = tls_files(&pki.file("server.pem"), &pki.file("server.key"));
    let server = TestServer::start(&manifest(Table::new(), tls)).await;
    assert_echo_over_tls(&server, &pki, false).await;
}

#[tokio::test]
async fn takes_pem_text_and_base64_pem_from_properties() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let base64 = base64::engine::general_purpose::STANDARD;
    let properties = table([
        ("CERT", pki.server_chain_pem.clone().into()),
        ("KEY", base64.encode(&pki.server_key_pem).into()),
        ("TLS_ON", "true".into()),
    ]);
    let tls = toml! { enabled = "${TLS_ON}" cert = "${CERT}" key = "${KEY}" };
    let server = TestServer::start(&manifest(properties, tls)).await;
    assert_echo_over_tls(&server, &pki, false).await;
}

#[tokio::test]
async fn client_certificates_are_required_when_a_client_ca_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let mut tls = tls_files(&pki.file("server.pem"), &pki.file("server.key"));
    tls.insert("client_ca".into(), vec![pki.file("ca.pem")].into());
    let server = TestServer::start(&manifest(Table::new(), tls)).await;
    let url = server.endpoints()[0].url();
    assert!(
        pki.connect(&url, false).await.is_err(),
        "a client without a certificate must be refused"
    );
    assert_echo_over_tls(&server, &pki, true).await;
}

#[tokio::test]
async fn disabled_tls_serves_plain_ws() {
    let tls = toml! { enabled = false cert = "nowhere.pem" };
    let server = TestServer::start(&manifest(Table::new(), tls)).await;
    assert!(server.endpoints()[0].url().starts_with("ws://"));
}

#[tokio::test]
async fn a_bad_certificate_file_is_a_startup_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let tls = tls_files(&garbage.display().to_string(), &pki.file("server.key"));
    let error = TestServer::try_start(&manifest(Table::new(), tls))
        .await
        .err()
        .unwrap();
    let message = format!("{error:#}");
    assert!(
        message.contains(&format!(
            "triggers[0].tls: cert: file {}: holds no PEM certificate",
            garbage.display()
        )),
        "{message}"
    );

    let tls = tls_files(&pki.file("server.pem"), &pki.file("server.pem"));
    let error = TestServer::try_start(&manifest(Table::new(), tls))
        .await
        .err()
        .unwrap();
    let message = format!("{error:#}");
    assert!(message.contains("key: file "), "{message}");
    assert!(
        message.contains("holds no usable PEM private key"),
        "{message}"
    );

    let tls = tls_files("missing.pem", "missing.key");
    let error = TestServer::try_start(&manifest(Table::new(), tls))
        .await
        .err()
        .unwrap();
    let message = format!("{error:#}");
    assert!(
        message.contains("triggers[0].tls.cert: cannot read "),
        "{message}"
    );
    assert!(message.contains("missing.pem"), "{message}");
}
