//! Client certificates at the edge (`[server.tls] client_ca`) and the TLS
//! listener's bounds: handshakes refused without a good certificate
//! (`client_auth = "required"`), routes that need one (`client_cert`,
//! `credentials = ["client_cert"]`, `client_cert_allow`) under `"optional"`,
//! the identity forwarded as metadata and never taken from the client, the
//! CA bundle rotated and broken on disk, `gateway check`, session
//! resumption, the handshake timeout and cap, no plaintext on the TLS port,
//! and the plaintext listener for internal callers. Real peers: rustls,
//! curl and openssl; certificates made here with rcgen.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_tests::running::RunningGateway;
use gateway_tests::{
    check_error_body, echo_server, gateway_bin, http_client, render_config, spawn_backend,
    testing_descriptors, testing_pool, write_config, ECHO_CONFIG_BODY,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[path = "common/certs.rs"]
mod certs_made_here;
use certs_made_here::{Ca, Leaf};

const WEB_SPIFFE: &str = "spiffe://example.org/ns/web/sa/api";

/// Routes over the echo backend's `Meta` method (it answers with the
/// metadata it got), each using the client certificate differently.
const ROUTES: &str = r#"
# Needs a certificate on top of its (absent) auth; forwards every part.
[[routes]]
method = "GET"
path = "/v1/cert/meta"
grpc = "testing.v1.Echo/Meta"
client_cert = "required"
forward_client_cert = ["subject", "spiffe_id", "dns", "uri", "xfcc"]

# Only workloads of the web namespace.
[[routes]]
method = "GET"
path = "/v1/cert/web"
grpc = "testing.v1.Echo/Meta"
client_cert = "required"
client_cert_allow = ["spiffe://example.org/ns/web/*"]

# A certificate proves the caller, as a token would.
[[routes]]
method = "GET"
path = "/v1/cert/credential"
grpc = "testing.v1.Echo/Meta"
auth = "required"
credentials = ["client_cert"]
forward_client_cert = ["spiffe_id"]

# Asks nothing, forwards what there is.
[[routes]]
method = "GET"
path = "/v1/cert/open"
grpc = "testing.v1.Echo/Meta"
forward_client_cert = ["subject"]
"#;

/// A gateway whose listener trusts `ca` for client certificates.
struct Mtls {
    server_ca: Ca,
    ca: Ca,
    gw: RunningGateway,
    config: PathBuf,
}

impl Drop for Mtls {
    fn drop(&mut self) {
        gateway_tests::remove_temp_parent(&self.config);
    }
}

/// The echo config plus [`ROUTES`], with `[server.tls]` serving
/// `certs/server.pem` and `tls_extra`; returns routes.toml's path.
fn mtls_config(backend: &str, tls_extra: &str) -> PathBuf {
    let text = format!(
        "[server]\n{}\n{ROUTES}\n[server.tls]\ncertificates = [{{ cert = \"certs/server.pem\", key = \"certs/server.key\" }}]\n{tls_extra}\n",
        render_config(ECHO_CONFIG_BODY, backend, &testing_descriptors()),
    );
    let path = write_config(&text);
    std::fs::create_dir_all(certs(&path)).expect("certs folder");
    path
}

fn certs(config: &Path) -> PathBuf {
    config.parent().expect("config folder").join("certs")
}

/// Starts a gateway with `client_ca = "certs/clients.pem"` (a fresh CA)
/// and `tls_extra`.
async fn start(tls_extra: &str) -> Mtls {
    let backend = spawn_backend(echo_server(&testing_pool())).await;
    let config = mtls_config(
        &backend,
        &format!("client_ca = \"certs/clients.pem\"\n{tls_extra}"),
    );
    let server_ca = Ca::named("server CA");
    server_ca
        .leaf(&["a.test", "127.0.0.1"], 90)
        .write(&certs(&config), "server");
    let ca = Ca::named("clients CA");
    std::fs::write(certs(&config).join("clients.pem"), &ca.pem).unwrap();
    let gw = RunningGateway::start(&config).await;
    Mtls {
        server_ca,
        ca,
        gw,
        config,
    }
}

/// A client trusting `server_ca`, presenting `cert` if any.
fn client(
    server_ca: &Ca,
    cert: Option<&Leaf>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(server_ca.der.clone()))
        .expect("CA root");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)
    .expect("versions")
    .with_root_certificates(roots);
    let config = match cert {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(leaf.der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der.clone())),
            )
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// What one HTTPS/1.1 request got.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Value,
    resumed: bool,
}

/// `GET path` over a new connection (`Connection: close`) with `headers`.
/// Err when the handshake or the exchange fails (a refused certificate).
async fn get(
    c: &tokio_rustls::TlsConnector,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut tls = c
        .connect(ServerName::try_from("a.test").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let mut head = format!("GET {path} HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    // The server closes after the answer; some close without close_notify.
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut buf))
        .await
        .map_err(|_| "no answer within 10s".to_owned())?;
    if let Err(e) = read {
        if buf.is_empty() {
            return Err(format!("read: {e}"));
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no answer head: {text:?}"))?;
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status: {head}"))?;
    // Content-Length bodies only: the gateway's JSON answers.
    let body = serde_json::from_str(body).unwrap_or(Value::Null);
    Ok(Answer {
        status,
        body,
        resumed,
    })
}

#[track_caller]
fn assert_refusal(a: &Answer, status: u16, code: i32, contains: &str) {
    assert_eq!(a.status, status, "{a:?}");
    if let Err(e) = check_error_body(&a.body, code, contains) {
        panic!("{e}: {a:?}");
    }
}

fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--max-time",
            "10",
            "--noproxy",
            "*",
        ])
        .args(args)
        .output()
        .expect("run curl")
}

// curl and openssl block the test thread: the gateway runs on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_refuses_handshakes_without_a_certificate_of_the_ca() {
    let t = start("client_auth = \"required\"").await;
    let good = t.ca.client("web", &[], &[WEB_SPIFFE]);
    let stranger = Ca::named("another CA").client("web", &[], &[WEB_SPIFFE]);
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let none = get(
            &client(&t.server_ca, None, versions),
            &t.gw.rest,
            "/v1/echo",
            &[],
        )
        .await;
        assert!(none.is_err(), "no certificate: {none:?}");
        let other = get(
            &client(&t.server_ca, Some(&stranger), versions),
            &t.gw.rest,
            "/v1/echo",
            &[],
        )
        .await;
        assert!(other.is_err(), "another CA's certificate: {other:?}");
        let ok = get(
            &client(&t.server_ca, Some(&good), versions),
            &t.gw.rest,
            "/v1/echo",
            &[],
        )
        .await
        .expect("a good certificate");
        assert_eq!(ok.status, 200, "{ok:?}");
    }

    // curl and openssl, with and without the certificate.
    let dir = t.config.parent().unwrap();
    std::fs::write(dir.join("server-ca.pem"), &t.server_ca.pem).unwrap();
    good.write(dir, "good");
    let port = t.gw.rest.rsplit(':').next().unwrap();
    let url = format!("https://a.test:{port}/v1/cert/meta");
    let resolve = format!("a.test:{port}:127.0.0.1");
    let ca_file = dir.join("server-ca.pem");
    let (cert, key) = (dir.join("good.pem"), dir.join("good.key"));
    let common = ["--cacert", ca_file.to_str().unwrap(), "--resolve", &resolve];
    let with = curl(
        &[
            &common[..],
            &[
                "--cert",
                cert.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
                &url,
            ],
        ]
        .concat(),
    );
    let body: Value = serde_json::from_slice(&with.stdout).unwrap_or_else(|_| {
        panic!(
            "curl --cert: {}{}",
            String::from_utf8_lossy(&with.stdout),
            String::from_utf8_lossy(&with.stderr)
        )
    });
    assert_eq!(body["metadata"]["x-client-cert-spiffe-id"], WEB_SPIFFE);
    let without = curl(&[&common[..], &[&url]].concat());
    assert!(
        !without.status.success(),
        "curl without a certificate: {}",
        String::from_utf8_lossy(&without.stdout)
    );

    let mut openssl = Command::new("openssl")
        .args(["s_client", "-connect", &t.gw.rest, "-servername", "a.test"])
        .args(["-CAfile", ca_file.to_str().unwrap()])
        .args([
            "-cert",
            cert.to_str().unwrap(),
            "-key",
            key.to_str().unwrap(),
        ])
        .arg("-ign_eof")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run openssl");
    std::io::Write::write_all(
        openssl.stdin.as_mut().unwrap(),
        b"GET /v1/echo?string_field=s HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n",
    )
    .unwrap();
    let out = openssl.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("HTTP/1.1 200") && text.contains("Verify return code: 0 (ok)"),
        "openssl s_client -cert:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn optional_lets_clients_without_a_certificate_reach_routes_that_need_none() {
    let t = start("client_auth = \"optional\"").await;
    let anonymous = client(&t.server_ca, None, BOTH);
    let r = get(&anonymous, &t.gw.rest, "/v1/echo?string_field=s", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let r = get(&anonymous, &t.gw.rest, "/v1/cert/meta", &[])
        .await
        .unwrap();
    assert_refusal(&r, 401, 16, "this route needs a client certificate");
    let r = get(&anonymous, &t.gw.rest, "/v1/cert/credential", &[])
        .await
        .unwrap();
    assert_refusal(&r, 401, 16, "this route needs a client certificate");

    // A certificate of another CA is refused at the handshake even here.
    let stranger = Ca::named("another CA").client("web", &[], &[WEB_SPIFFE]);
    let r = get(
        &client(&t.server_ca, Some(&stranger), BOTH),
        &t.gw.rest,
        "/v1/echo?string_field=s",
        &[],
    )
    .await;
    assert!(r.is_err(), "{r:?}");

    let web = client(
        &t.server_ca,
        Some(&t.ca.client("web", &[], &[WEB_SPIFFE])),
        BOTH,
    );
    for path in ["/v1/cert/meta", "/v1/cert/web", "/v1/cert/credential"] {
        let r = get(&web, &t.gw.rest, path, &[]).await.unwrap();
        assert_eq!(r.status, 200, "{path}: {r:?}");
    }
    let r = get(&web, &t.gw.rest, "/v1/cert/credential", &[])
        .await
        .unwrap();
    assert_eq!(r.body["metadata"]["x-client-cert-spiffe-id"], WEB_SPIFFE);

    // Valid, but not of the web namespace: 403 where the allow-list applies.
    let db = client(
        &t.server_ca,
        Some(
            &t.ca
                .client("db", &[], &["spiffe://example.org/ns/db/sa/pg"]),
        ),
        BOTH,
    );
    let r = get(&db, &t.gw.rest, "/v1/cert/web", &[]).await.unwrap();
    assert_refusal(
        &r,
        403,
        7,
        "the client certificate (spiffe://example.org/ns/db/sa/pg) is not one this route allows",
    );
    let r = get(&db, &t.gw.rest, "/v1/cert/meta", &[]).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");

    // /admin/routes shows each route's use of the certificate.
    let v: Value = http_client()
        .get(t.gw.admin_url("/admin/routes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let route = |path: &str| {
        v["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["path"] == path)
            .unwrap_or_else(|| panic!("{path}: {v}"))["auth"]
            .clone()
    };
    let web = route("/v1/cert/web");
    assert_eq!(web["client_cert"]["required"], true, "{web}");
    assert_eq!(
        web["client_cert"]["allow"],
        serde_json::json!(["spiffe://example.org/ns/web/*"])
    );
    let credential = route("/v1/cert/credential");
    assert_eq!(
        credential["credentials"],
        serde_json::json!(["client_cert"])
    );
    assert_eq!(
        credential["client_cert"]["forward"],
        serde_json::json!(["spiffe_id"])
    );
}

#[tokio::test]
async fn the_identity_reaches_the_backend_and_forged_metadata_never_does() {
    let t = start("client_auth = \"optional\"").await;
    let leaf = t.ca.client(
        "web, \"edge\"",
        &["web.internal", "api.internal"],
        &[WEB_SPIFFE, "https://web.example.org/id"],
    );
    let c = client(&t.server_ca, Some(&leaf), BOTH);
    let forged = [
        ("x-client-cert-subject", "CN=admin"),
        (
            "grpc-metadata-x-client-cert-spiffe-id",
            "spiffe://evil/admin",
        ),
        ("grpc-metadata-x-client-cert-extra", "x"),
        ("x-forwarded-client-cert", "Hash=00;Subject=\"CN=admin\""),
    ];
    let r = get(&c, &t.gw.rest, "/v1/cert/meta", &forged).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let md = &r.body["metadata"];
    assert_eq!(
        md["x-client-cert-subject"], "CN=web\\, \\\"edge\\\",O=Gateway Tests",
        "{md}"
    );
    assert_eq!(md["x-client-cert-spiffe-id"], WEB_SPIFFE, "{md}");
    assert_eq!(md["x-client-cert-dns"], "web.internal,api.internal", "{md}");
    assert_eq!(
        md["x-client-cert-uri"],
        format!("{WEB_SPIFFE},https://web.example.org/id").as_str(),
        "{md}"
    );
    assert!(md.get("x-client-cert-extra").is_none(), "{md}");
    // Envoy's form, with the hash of the certificate the client presented.
    let hash: String = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &leaf.der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let subject = r#"Subject="CN=web\\, \\\"edge\\\",O=Gateway Tests""#;
    assert_eq!(
        md["x-forwarded-client-cert"],
        format!("Hash={hash};{subject};URI={WEB_SPIFFE};URI=https://web.example.org/id;DNS=web.internal;DNS=api.internal").as_str(),
        "{md}"
    );

    // Without a certificate, on a route that asks nothing: the forged
    // values are gone and nothing takes their place.
    let anonymous = client(&t.server_ca, None, BOTH);
    let r = get(&anonymous, &t.gw.rest, "/v1/cert/open", &forged)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let md = &r.body["metadata"];
    for k in [
        "x-client-cert-subject",
        "x-client-cert-spiffe-id",
        "x-client-cert-extra",
    ] {
        assert!(md.get(k).is_none(), "{k}: {md}");
    }
}

/// Waits until `ok` holds for a request with `c`, up to 10 s.
async fn wait_until(
    c: &tokio_rustls::TlsConnector,
    addr: &str,
    what: &str,
    ok: impl Fn(&Result<Answer, String>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(c, addr, "/v1/echo?string_field=s", &[]).await;
        if ok(&r) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: last {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_client_ca_rotated_on_disk_is_picked_up_without_restart() {
    let t = start("").await;
    let old = client(&t.server_ca, Some(&t.ca.client("old", &[], &[])), BOTH);
    let next_ca = Ca::named("next clients CA");
    let new = client(&t.server_ca, Some(&next_ca.client("new", &[], &[])), BOTH);
    assert!(get(&new, &t.gw.rest, "/v1/echo", &[]).await.is_err());
    // The new CA only: its clients get in, the old ones no longer.
    std::fs::write(certs(&t.config).join("clients.pem"), &next_ca.pem).unwrap();
    wait_until(
        &new,
        &t.gw.rest,
        "the new CA is not trusted",
        |r| matches!(r, Ok(a) if a.status == 200),
    )
    .await;
    assert!(get(&old, &t.gw.rest, "/v1/echo", &[]).await.is_err());
}

/// The last reload's error, as /admin/config shows it, once there is one.
async fn reload_error(gw: &RunningGateway) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: Value = http_client()
            .get(gw.admin_url("/admin/config"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(e) = v["last_reload"]["error"].as_str() {
            return e.to_owned();
        }
        assert!(Instant::now() < deadline, "no reload error: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_broken_client_ca_is_refused_and_the_old_one_keeps_serving() {
    let t = start("").await;
    let c = client(&t.server_ca, Some(&t.ca.client("web", &[], &[])), BOTH);
    let bundle = certs(&t.config).join("clients.pem");
    std::fs::write(&bundle, "-----BEGIN CERTIFICATE-----\nnot base64 at all\n").unwrap();
    let error = reload_error(&t.gw).await;
    let line = gateway_tests::line_of(&std::fs::read_to_string(&t.config).unwrap(), "client_ca = ");
    assert!(
        error.contains(&format!("routes.toml:{line}: server.tls.client_ca: "))
            && error.contains(&bundle.display().to_string())
            && error.contains("is not a valid PEM certificate bundle"),
        "{error}"
    );
    let r = get(&c, &t.gw.rest, "/v1/echo", &[]).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
}

fn check(config: &Path) -> (bool, String) {
    let out = Command::new(gateway_bin())
        .args(["check", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run gateway check");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn check_reports_a_broken_client_ca_and_routes_that_need_one() {
    let config = mtls_config(
        "127.0.0.1:1",
        "client_ca = \"certs/clients.pem\"\nclient_auth = \"sometimes\"",
    );
    Ca::new()
        .leaf(&["a.test"], 90)
        .write(&certs(&config), "server");
    std::fs::write(certs(&config).join("clients.pem"), "no certificate here\n").unwrap();
    let (ok, out) = check(&config);
    assert!(!ok, "{out}");
    let text = std::fs::read_to_string(&config).unwrap();
    let ca_line = gateway_tests::line_of(&text, "client_ca = ");
    let auth_line = gateway_tests::line_of(&text, "client_auth = ");
    assert!(
        out.contains(&format!("routes.toml:{ca_line}: server.tls.client_ca: "))
            && out.contains("clients.pem holds no certificate"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "routes.toml:{auth_line}: server.tls.client_auth: \"sometimes\" is not a client certificate mode"
        )),
        "{out}"
    );

    // Without client_ca, every route that uses a certificate is named.
    let bare = mtls_config("127.0.0.1:1", "");
    Ca::new()
        .leaf(&["a.test"], 90)
        .write(&certs(&bare), "server");
    let (ok, out) = check(&bare);
    assert!(!ok, "{out}");
    for key in [
        "client_cert: client certificates need [server.tls] client_ca",
        "client_cert_allow: client certificates need",
        "credentials: client certificates need",
        "forward_client_cert: client certificates need",
    ] {
        assert!(out.contains(key), "{key}: {out}");
    }
    gateway_tests::remove_temp_parent(&config);
    gateway_tests::remove_temp_parent(&bare);
}

// openssl blocks the test thread: the gateway runs on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_resumes_the_session() {
    let t = start("").await;
    let leaf = t.ca.client("web", &[], &[WEB_SPIFFE]);
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        // One client config: its resumption store is shared by both.
        let c = client(&t.server_ca, Some(&leaf), versions);
        let first = get(&c, &t.gw.rest, "/v1/cert/credential", &[])
            .await
            .unwrap();
        assert!(!first.resumed);
        let second = get(&c, &t.gw.rest, "/v1/cert/credential", &[])
            .await
            .unwrap();
        assert!(second.resumed, "{versions:?}: not resumed");
        // The resumed session still carries the client's identity.
        assert_eq!(second.status, 200, "{second:?}");
        assert_eq!(
            second.body["metadata"]["x-client-cert-spiffe-id"], WEB_SPIFFE,
            "{second:?}"
        );
    }

    // openssl s_client saving the session and offering it again.
    let dir = t.config.parent().unwrap();
    leaf.write(dir, "client");
    let session = dir.join("session.pem");
    for flag in ["-tls1_3", "-tls1_2"] {
        let _ = std::fs::remove_file(&session);
        let run = |sess: &str| {
            let mut child = Command::new("openssl")
                .args([
                    "s_client",
                    "-connect",
                    &t.gw.rest,
                    "-servername",
                    "a.test",
                    flag,
                ])
                .args(["-cert", dir.join("client.pem").to_str().unwrap()])
                .args(["-key", dir.join("client.key").to_str().unwrap()])
                .args([sess, session.to_str().unwrap(), "-ign_eof"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("run openssl");
            // A whole exchange, so TLS 1.3 tickets (sent after the
            // handshake) are read before the session is saved.
            std::io::Write::write_all(
                child.stdin.as_mut().unwrap(),
                b"GET /v1/cert/credential HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n",
            )
            .unwrap();
            let out = child.wait_with_output().unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let first = run("-sess_out");
        assert!(
            first.contains("\nNew, TLSv1.") && first.contains("HTTP/1.1 200"),
            "{flag}: {first}"
        );
        let second = run("-sess_in");
        assert!(
            second.contains("\nReused, TLSv1.") && second.contains("HTTP/1.1 200"),
            "{flag}: {second}"
        );
    }
}

#[tokio::test]
async fn plaintext_http_on_the_tls_port_gets_no_answer() {
    let t = start("client_auth = \"optional\"").await;
    let mut tcp = tokio::net::TcpStream::connect(&t.gw.rest).await.unwrap();
    tcp.write_all(b"GET /v1/echo?string_field=s HTTP/1.1\r\nhost: a.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut buf))
        .await
        .expect("the connection is closed");
    // Closed (perhaps after a TLS alert record, content type 21), never
    // an HTTP answer.
    assert!(
        !buf.starts_with(b"HTTP/"),
        "{read:?}: {:?}",
        String::from_utf8_lossy(&buf)
    );
    assert!(buf.is_empty() || buf[0] == 21, "{buf:?}");
}

#[tokio::test]
async fn a_stalled_handshake_is_closed_at_the_handshake_timeout() {
    let t = start("handshake_timeout = \"300ms\"").await;
    let mut tcp = tokio::net::TcpStream::connect(&t.gw.rest).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("the stalled connection is closed within 5 s");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn handshakes_over_the_cap_wait_for_a_slot() {
    let t = start("max_concurrent_handshakes = 1").await;
    let c = client(&t.server_ca, Some(&t.ca.client("web", &[], &[])), BOTH);
    // A client that connects and sends nothing holds the only slot.
    let stalled = tokio::net::TcpStream::connect(&t.gw.rest).await.unwrap();
    // Accepted (the listener has its slot) before the next one comes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waiting = tokio::time::timeout(
        Duration::from_millis(500),
        get(&c, &t.gw.rest, "/v1/echo", &[]),
    )
    .await;
    assert!(waiting.is_err(), "handshaken past the cap: {waiting:?}");
    // The slot is free once the stalled one leaves.
    drop(stalled);
    let r = tokio::time::timeout(Duration::from_secs(5), get(&c, &t.gw.rest, "/v1/echo", &[]))
        .await
        .expect("a handshake once the slot is free")
        .unwrap();
    assert_eq!(r.status, 200);
}

// curl blocks the test thread: the gateway runs as a child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_listen_serves_h2c_to_internal_callers() {
    let backend = spawn_backend(echo_server(&testing_pool())).await;
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let plain = free.local_addr().unwrap();
    drop(free);
    let config = mtls_config(
        &backend,
        &format!("client_ca = \"certs/clients.pem\"\nclient_auth = \"optional\"\nplaintext_listen = \"{plain}\""),
    );
    Ca::new()
        .leaf(&["a.test", "127.0.0.1"], 90)
        .write(&certs(&config), "server");
    std::fs::write(certs(&config).join("clients.pem"), Ca::new().pem).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, gateway_tests::binary::without_admin(&text)).unwrap();
    let (_child, _https) =
        gateway_tests::binary::spawn_listening(&["serve", "--config", config.to_str().unwrap()])
            .await;
    let out = curl(&[
        "--http2-prior-knowledge",
        "-w",
        "\n%{http_version} %{http_code}",
        &format!("http://{plain}/v1/echo?string_field=h2c"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with("\n2 200") && text.contains("\"stringField\":\"h2c\""),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No certificate on a plaintext connection: routes needing one refuse.
    let out = curl(&[
        "-w",
        "\n%{http_code}",
        &format!("http://{plain}/v1/cert/meta"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with("\n401") && text.contains("needs a client certificate"),
        "{text}"
    );
    gateway_tests::remove_temp_parent(&config);
}
