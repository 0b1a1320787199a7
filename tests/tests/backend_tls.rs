//! TLS and mTLS to backends (`[backends.NAME.tls]`): tonic-served test
//! backends behind rustls with certificates made at test time (rcgen); the
//! gateway's calls verify the backend's certificate, present a client
//! certificate where the backend requires one, and are refused (503, naming
//! the cause) when the certificate does not verify. Bad files are refused
//! at their key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gateway::snapshot::Snapshot;
use gateway_tests::{echo_server, testing_descriptors, testing_pool, TestGateway};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate authority, and certificates it signed, as PEM.
struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Pki {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// (certificate, key) for `name`.
    fn issue(&self, name: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// The Echo backend behind TLS with a certificate for `localhost` from
/// `pki`; with `clients`, it requires a client certificate that CA signed.
async fn tls_backend(pki: &Pki, clients: Option<&Pki>) -> String {
    let (cert, key) = pki.issue("localhost");
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca.ca_pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = echo_server(&testing_pool());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, server) = (acceptor.clone(), server.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    server.serve_connection(tls).await;
                }
            });
        }
    });
    addr
}

fn tempdir() -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "gateway-backend-tls-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// routes.toml for the Echo backend at `{backend}` with `tls`, the files
/// it names written into `dir` first.
fn config(tls: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
descriptors = "{{descriptors}}"
routes_from_annotations = false

[backends.echo]
endpoints = ["{{backend}}"]
services = ["testing.v1.Echo"]
timeout = "5s"
health_check = {{ interval = "200ms" }}
tls = {tls}

[[routes]]
method = "GET"
path = "/v1/echo"
grpc = "testing.v1.Echo/Echo"
"#
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    gateway_tests::toml_path(&path)
}

#[tokio::test]
async fn calls_reach_a_backend_over_tls() {
    let pki = Pki::new("backend CA");
    let backend = tls_backend(&pki, None).await;
    let dir = tempdir();
    let ca = write(&dir, "ca.pem", &pki.ca_pem);
    let tls = format!(r#"{{ ca_file = "{ca}", server_name = "localhost" }}"#);
    let gw = TestGateway::start_with(&config(&tls), &backend, &testing_descriptors()).await;
    for i in 0..3 {
        let r = gw.get(&format!("/v1/echo?stringField=tls{i}")).await;
        assert_eq!(r.ok()["stringField"], format!("tls{i}"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_mtls_backend_takes_calls_only_with_the_client_certificate() {
    let servers = Pki::new("backend CA");
    let clients = Pki::new("gateway client CA");
    let backend = tls_backend(&servers, Some(&clients)).await;
    let dir = tempdir();
    let ca = write(&dir, "ca.pem", &servers.ca_pem);
    // Without a client certificate the backend refuses the handshake.
    let tls = format!(r#"{{ ca_file = "{ca}", server_name = "localhost" }}"#);
    let gw = TestGateway::start_with(&config(&tls), &backend, &testing_descriptors()).await;
    gw.get("/v1/echo?stringField=x")
        .await
        .assert_error(503, 14, "");
    // With one its CA signed, the calls go through.
    let (cert, key) = clients.issue("gateway");
    let cert = write(&dir, "client.pem", &cert);
    let key = write(&dir, "client.key", &key);
    let tls = format!(
        r#"{{ ca_file = "{ca}", server_name = "localhost", cert_file = "{cert}", key_file = "{key}" }}"#
    );
    let gw = TestGateway::start_with(&config(&tls), &backend, &testing_descriptors()).await;
    let r = gw.get("/v1/echo?stringField=mtls").await;
    assert_eq!(r.ok()["stringField"], "mtls");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_backend_whose_certificate_does_not_verify_is_unavailable_and_says_why() {
    let pki = Pki::new("backend CA");
    let other = Pki::new("some other CA");
    let backend = tls_backend(&pki, None).await;
    let dir = tempdir();
    let ca = write(&dir, "ca.pem", &other.ca_pem);
    let tls = format!(r#"{{ ca_file = "{ca}", server_name = "localhost" }}"#);
    let gw = TestGateway::start_with(&config(&tls), &backend, &testing_descriptors()).await;
    let r = gw.get("/v1/echo?stringField=x").await;
    r.assert_error(503, 14, "certificate");
    // A plaintext gateway config against the TLS backend fails too.
    let plain = config("{}").replace("tls = {}\n", "");
    let gw = TestGateway::start_with(&plain, &backend, &testing_descriptors()).await;
    gw.get("/v1/echo?stringField=x")
        .await
        .assert_error(503, 14, "");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bad_tls_files_are_refused_at_their_keys() {
    let pki = Pki::new("CA");
    let (cert, _) = pki.issue("gateway");
    let (_, other_key) = pki.issue("someone else");
    let dir = tempdir();
    let missing = gateway_tests::toml_path(&dir.join("missing.pem"));
    let not_pem = write(&dir, "not.pem", "hello");
    let cert = write(&dir, "client.pem", &cert);
    let key = write(&dir, "other.key", &other_key);
    for (tls, expected) in [
        (
            format!(r#"{{ ca_file = "{missing}" }}"#),
            "backends.echo.tls.ca_file: cannot read",
        ),
        (
            format!(r#"{{ ca_file = "{not_pem}" }}"#),
            "backends.echo.tls.ca_file: holds no PEM certificate",
        ),
        (
            format!(r#"{{ cert_file = "{cert}", key_file = "{key}" }}"#),
            "backends.echo.tls.key_file: does not go with cert_file",
        ),
        (
            format!(r#"{{ cert_file = "{cert}" }}"#),
            "needs both cert_file and key_file",
        ),
    ] {
        let text = config(&tls).replace("{backend}", "127.0.0.1:1").replace(
            "{descriptors}",
            &gateway_tests::toml_path(&testing_descriptors()),
        );
        let path = gateway_tests::write_config(&text);
        let errors = match Snapshot::load(&path) {
            Ok(_) => panic!("{tls} loaded"),
            Err(e) => e.to_string(),
        };
        assert!(errors.contains(expected), "{expected:?} not in:\n{errors}");
        assert!(errors.contains("routes.toml:"), "{errors}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
