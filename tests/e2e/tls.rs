//! TLS: `wss://` with a certificate chain and key from files or from app
//! properties (PEM or base64 PEM), client-certificate verification, and
//! startup errors that name the bad file.

use base64::Engine as _;
use wsflow_tests::pki::Pki;
use wsflow_tests::{TestServer, programs};

fn manifest(properties: &str, tls: &str) -> String {
    format!(
        r#"
[app]
name = "secure"

[properties]
{properties}

[flows.echo]
component = "{}"

[[triggers]]
port = 0

[triggers.tls]
{tls}

[[triggers.handlers]]
path = "/echo"
flow = "echo"
"#,
        programs::EXAMPLE_ECHO
    )
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
    let tls = format!(
        "cert = \"{}\"\nkey = \"{}\"",
        pki.file("server.pem"),
        pki.file("server.key")
    );
    let server = TestServer::start(&manifest("", &tls)).await;
    assert_echo_over_tls(&server, &pki, false).await;
}

#[tokio::test]
async fn takes_pem_text_and_base64_pem_from_properties() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let base64 = base64::engine::general_purpose::STANDARD;
    let properties = format!(
        "CERT = '''{}'''\nKEY = \"{}\"\nTLS_ON = \"true\"",
        pki.server_chain_pem,
        base64.encode(&pki.server_key_pem)
    );
    let tls = "enabled = \"${TLS_ON}\"\ncert = \"${CERT}\"\nkey = \"${KEY}\"";
    let server = TestServer::start(&manifest(&properties, tls)).await;
    assert_echo_over_tls(&server, &pki, false).await;
}

#[tokio::test]
async fn client_certificates_are_required_when_a_client_ca_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let tls = format!(
        "cert = \"{}\"\nkey = \"{}\"\nclient_ca = [\"{}\"]",
        pki.file("server.pem"),
        pki.file("server.key"),
        pki.file("ca.pem")
    );
    let server = TestServer::start(&manifest("", &tls)).await;
    let url = server.endpoints()[0].url();
    assert!(
        pki.connect(&url, false).await.is_err(),
        "a client without a certificate must be refused"
    );
    assert_echo_over_tls(&server, &pki, true).await;
}

#[tokio::test]
async fn disabled_tls_serves_plain_ws() {
    let tls = "enabled = false\ncert = \"nowhere.pem\"";
    let server = TestServer::start(&manifest("", tls)).await;
    assert!(server.endpoints()[0].url().starts_with("ws://"));
}

#[tokio::test]
async fn a_bad_certificate_file_is_a_startup_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let tls = format!(
        "cert = \"{}\"\nkey = \"{}\"",
        garbage.display(),
        pki.file("server.key")
    );
    let error = TestServer::try_start(&manifest("", &tls))
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

    let tls = format!(
        "cert = \"{}\"\nkey = \"{}\"",
        pki.file("server.pem"),
        pki.file("server.pem")
    );
    let error = TestServer::try_start(&manifest("", &tls))
        .await
        .err()
        .unwrap();
    let message = format!("{error:#}");
    assert!(message.contains("key: file "), "{message}");
    assert!(
        message.contains("holds no usable PEM private key"),
        "{message}"
    );

    let tls = "cert = \"missing.pem\"\nkey = \"missing.key\"";
    let error = TestServer::try_start(&manifest("", tls))
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
