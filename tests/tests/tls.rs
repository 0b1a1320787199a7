//! TLS on the REST listener (`[server.tls]`): certificates chosen by SNI,
//! HTTP/2 by ALPN, TLS 1.2 and 1.3 only, certificates rotated on disk
//! without a failed request, bad certificates refused at reload and by
//! `gateway check`. Certificates are made here with rcgen; no key is
//! checked in.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_tests::running::RunningGateway;
use gateway_tests::{
    echo_server, gateway_bin, http_client, render_config, repo_root, spawn_backend,
    testing_descriptors, testing_pool, write_config, ECHO_CONFIG_BODY,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[path = "common/certs.rs"]
mod certs_made_here;
use certs_made_here::{Ca, Leaf};

/// The echo test config with `[server.tls]` naming `certs/<stem>.pem` and
/// `.key` for each stem, in a fresh folder; returns routes.toml's path.
fn tls_config(backend: &str, stems: &[&str]) -> PathBuf {
    tls_config_with(backend, stems, "")
}

/// As [`tls_config`], with more lines in `[server.tls]`.
fn tls_config_with(backend: &str, stems: &[&str], tls_extra: &str) -> PathBuf {
    let pairs: Vec<String> = stems
        .iter()
        .map(|s| format!("{{ cert = \"certs/{s}.pem\", key = \"certs/{s}.key\" }}"))
        .collect();
    let text = format!(
        "[server]\n{}\n[server.tls]\ncertificates = [{}]\n{tls_extra}\n",
        render_config(ECHO_CONFIG_BODY, backend, &testing_descriptors()),
        pairs.join(", ")
    );
    let path = write_config(&text);
    std::fs::create_dir_all(certs(&path)).expect("certs folder");
    path
}

fn certs(config: &Path) -> PathBuf {
    config.parent().expect("config folder").join("certs")
}

/// What one HTTPS request saw.
#[derive(Debug)]
struct Served {
    cert: Vec<u8>,
    version: rustls::ProtocolVersion,
    alpn: Option<Vec<u8>>,
    status: String,
}

/// A client that trusts `ca` and only speaks `versions`.
fn client(
    ca: &Ca,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.der.clone()))
        .expect("CA root");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One request over a new connection to `addr`, asking for `name` (an IP
/// address sends no SNI). With ALPN `h2` negotiated, no request is sent.
async fn fetch(
    connector: &tokio_rustls::TlsConnector,
    addr: &str,
    name: &str,
) -> Result<Served, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let server_name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (_, conn) = tls.get_ref();
    let cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .ok_or("no peer certificate")?;
    let version = conn.protocol_version().ok_or("no version")?;
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let mut status = String::new();
    if alpn.as_deref() != Some(b"h2") {
        tls.write_all(
            format!("GET /v1/echo?string_field=hi HTTP/1.1\r\nhost: {name}\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tls
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed before the answer".to_owned());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        status = String::from_utf8_lossy(&buf)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
    }
    Ok(Served {
        cert,
        version,
        alpn,
        status,
    })
}

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A gateway with certificates for `a.test` (also 127.0.0.1: the default)
/// and `*.b.test`.
struct TwoNames {
    ca: Ca,
    a: Leaf,
    b: Leaf,
    gw: RunningGateway,
    config: PathBuf,
}

impl Drop for TwoNames {
    fn drop(&mut self) {
        // The folder holds private keys, if only test ones.
        gateway_tests::remove_temp_parent(&self.config);
    }
}

async fn two_names() -> TwoNames {
    let backend = spawn_backend(echo_server(&testing_pool())).await;
    let config = tls_config(&backend, &["a", "b"]);
    let ca = Ca::new();
    let a = ca.leaf(&["a.test", "127.0.0.1"], 90);
    let b = ca.leaf(&["*.b.test"], 90);
    a.write(&certs(&config), "a");
    b.write(&certs(&config), "b");
    let gw = RunningGateway::start(&config).await;
    TwoNames {
        ca,
        a,
        b,
        gw,
        config,
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
async fn sni_selects_the_certificate_for_each_name() {
    let t = two_names().await;
    let c = client(&t.ca, BOTH, &[]);
    let a = fetch(&c, &t.gw.rest, "a.test").await.expect("a.test");
    assert_eq!(a.cert, t.a.der);
    assert!(a.status.starts_with("HTTP/1.1 200"), "{a:?}");
    let b = fetch(&c, &t.gw.rest, "www.b.test")
        .await
        .expect("www.b.test");
    assert_eq!(b.cert, t.b.der);
    assert!(b.status.starts_with("HTTP/1.1 200"), "{b:?}");
    // No SNI (an IP address): the first pair.
    let none = fetch(&c, &t.gw.rest, "127.0.0.1").await.expect("no SNI");
    assert_eq!(none.cert, t.a.der);

    // curl, verifying each name against the CA, on the one port.
    let ca_file = t.config.parent().unwrap().join("ca.pem");
    std::fs::write(&ca_file, &t.ca.pem).unwrap();
    let port = t.gw.rest.rsplit(':').next().unwrap();
    for host in ["a.test", "api.b.test"] {
        let out = curl(&[
            "--cacert",
            ca_file.to_str().unwrap(),
            "--resolve",
            &format!("{host}:{port}:127.0.0.1"),
            "-w",
            "%{http_code}",
            "-o",
            "/dev/null",
            &format!("https://{host}:{port}/v1/echo?string_field=x"),
        ]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "200",
            "{host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // One expiry gauge per certificate, labelled with its first DNS name.
    let metrics = http_client()
        .get(t.gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in ["a.test", "*.b.test"] {
        assert!(
            metrics.contains(&format!(
                "gateway_tls_certificate_expiry_seconds{{name=\"{name}\"}}"
            )),
            "{metrics}"
        );
    }
}

// curl and openssl block the test thread: the gateway runs on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_is_negotiated_by_alpn() {
    let t = two_names().await;
    let h2 = fetch(
        &client(&t.ca, BOTH, &[b"h2", b"http/1.1"]),
        &t.gw.rest,
        "a.test",
    )
    .await
    .unwrap();
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
    let h1 = fetch(&client(&t.ca, BOTH, &[b"http/1.1"]), &t.gw.rest, "a.test")
        .await
        .unwrap();
    assert_eq!(h1.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert!(h1.status.starts_with("HTTP/1.1 200"), "{h1:?}");

    let ca_file = t.config.parent().unwrap().join("ca.pem");
    std::fs::write(&ca_file, &t.ca.pem).unwrap();
    let port = t.gw.rest.rsplit(':').next().unwrap();
    let out = curl(&[
        "--http2",
        "--cacert",
        ca_file.to_str().unwrap(),
        "--resolve",
        &format!("a.test:{port}:127.0.0.1"),
        "-w",
        "%{http_version} %{http_code}",
        "-o",
        "/dev/null",
        &format!("https://a.test:{port}/v1/echo?string_field=x"),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2 200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// curl and openssl block the test thread: the gateway runs on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tls_1_2_and_1_3_are_spoken() {
    let t = two_names().await;
    let v13 = fetch(
        &client(&t.ca, &[&rustls::version::TLS13], &[]),
        &t.gw.rest,
        "a.test",
    )
    .await
    .unwrap();
    assert_eq!(v13.version, rustls::ProtocolVersion::TLSv1_3);
    let v12 = fetch(
        &client(&t.ca, &[&rustls::version::TLS12], &[]),
        &t.gw.rest,
        "a.test",
    )
    .await
    .unwrap();
    assert_eq!(v12.version, rustls::ProtocolVersion::TLSv1_2);
    assert!(v12.status.starts_with("HTTP/1.1 200"), "{v12:?}");

    // OpenSSL offering TLS 1.1 or 1.0 only (its own floor lowered so the
    // refusal is the gateway's).
    for (flag, ok) in [("-tls1_2", true), ("-tls1_1", false), ("-tls1", false)] {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &t.gw.rest, "-servername", "a.test"])
            .args([flag, "-cipher", "DEFAULT:@SECLEVEL=0"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run openssl");
        assert_eq!(
            out.status.success(),
            ok,
            "openssl {flag}:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Waits until `name` is served `der`, up to 10 s.
async fn wait_for_cert(c: &tokio_rustls::TlsConnector, addr: &str, name: &str, der: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = fetch(c, addr, name).await {
            if s.cert == der {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate is not served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_certificate_rotated_on_disk_is_served_without_failed_requests() {
    let t = two_names().await;
    let c = client(&t.ca, BOTH, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let load = {
        let (c, addr, stop, done) = (c.clone(), t.gw.rest.clone(), stop.clone(), done.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match fetch(&c, &addr, "a.test").await {
                    Ok(s) if s.status.starts_with("HTTP/1.1 200") => {}
                    other => failures.push(format!("{other:?}")),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            failures
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Renewed in place: the same two files rewritten.
    let renewed = t.ca.leaf(&["a.test", "127.0.0.1"], 90);
    renewed.write(&certs(&t.config), "a");
    wait_for_cert(&c, &t.gw.rest, "a.test", &renewed.der).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let failures = load.await.unwrap();
    assert!(failures.is_empty(), "failed requests: {failures:#?}");
    assert!(done.load(Ordering::Relaxed) > 10, "too few requests ran");
    // The other name kept its certificate.
    let b = fetch(&c, &t.gw.rest, "x.b.test").await.unwrap();
    assert_eq!(b.cert, t.b.der);
}

#[tokio::test]
async fn a_secret_volume_swap_is_picked_up() {
    // Kubernetes mounts a Secret as `tls.crt -> ..data/tls.crt`, `..data ->
    // ..<timestamp>`, and renews by pointing `..data` at a new folder.
    let backend = spawn_backend(echo_server(&testing_pool())).await;
    let config = tls_config(&backend, &["tls"]);
    let dir = certs(&config);
    let ca = Ca::new();
    let first = ca.leaf(&["a.test"], 90);
    std::fs::create_dir(dir.join("..v1")).unwrap();
    first.write(&dir.join("..v1"), "tls");
    std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
    for f in ["tls.pem", "tls.key"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f)).unwrap();
    }
    let gw = RunningGateway::start(&config).await;
    let c = client(&ca, BOTH, &[]);
    assert_eq!(fetch(&c, &gw.rest, "a.test").await.unwrap().cert, first.der);

    let second = ca.leaf(&["a.test"], 90);
    std::fs::create_dir(dir.join("..v2")).unwrap();
    second.write(&dir.join("..v2"), "tls");
    std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    wait_for_cert(&c, &gw.rest, "a.test", &second.der).await;
    drop(gw);
    gateway_tests::remove_temp_parent(&config);
}

/// The last reload's error, as /admin/config shows it, once there is one.
async fn reload_error(gw: &RunningGateway) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: serde_json::Value = http_client()
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
async fn a_broken_certificate_is_refused_and_the_old_one_keeps_serving() {
    let t = two_names().await;
    let c = client(&t.ca, BOTH, &[]);
    let cert_file = certs(&t.config).join("a.pem");
    std::fs::write(
        &cert_file,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n",
    )
    .unwrap();
    let error = reload_error(&t.gw).await;
    assert!(
        error.contains("server.tls.certificates[0].cert")
            && error.contains(&cert_file.display().to_string()),
        "{error}"
    );
    assert!(error.contains("routes.toml:"), "{error}");
    let served = fetch(&c, &t.gw.rest, "a.test").await.unwrap();
    assert_eq!(served.cert, t.a.der);
    assert!(served.status.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_key_that_does_not_match_is_refused_and_the_old_pair_keeps_serving() {
    let t = two_names().await;
    let c = client(&t.ca, BOTH, &[]);
    // b's key next to a's certificate.
    std::fs::write(certs(&t.config).join("a.key"), &t.b.key).unwrap();
    let error = reload_error(&t.gw).await;
    assert!(
        error.contains("server.tls.certificates[0].key") && error.contains("does not match"),
        "{error}"
    );
    let served = fetch(&c, &t.gw.rest, "a.test").await.unwrap();
    assert_eq!(served.cert, t.a.der);
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
fn check_refuses_a_mismatched_pair() {
    let config = tls_config("127.0.0.1:1", &["a", "b"]);
    let ca = Ca::new();
    let a = ca.leaf(&["a.test"], 90);
    let b = ca.leaf(&["b.test"], 90);
    a.write(&certs(&config), "a");
    std::fs::write(certs(&config).join("b.pem"), &b.cert).unwrap();
    std::fs::write(certs(&config).join("b.key"), &a.key).unwrap();
    let (ok, out) = check(&config);
    assert!(!ok, "{out}");
    let line = gateway_tests::line_of(&std::fs::read_to_string(&config).unwrap(), "certs/b.key");
    assert!(
        out.contains(&format!(
            "routes.toml:{line}: server.tls.certificates[1].key: the private key in"
        )) && out.contains("does not match the certificate in"),
        "{out}"
    );
    gateway_tests::remove_temp_parent(&config);
}

#[test]
fn check_refuses_an_expired_certificate_and_warns_of_one_near_its_end() {
    let config = tls_config("127.0.0.1:1", &["a"]);
    let ca = Ca::new();
    ca.leaf(&["a.test"], 5).write(&certs(&config), "a");
    let (ok, out) = check(&config);
    assert!(ok, "{out}");
    assert!(
        out.contains("warning: ")
            && out.contains("server.tls.certificates[0].cert")
            && out.contains("in less than 14 days"),
        "{out}"
    );
    assert!(out.contains("1 warning(s)"), "{out}");

    ca.leaf(&["a.test"], -1).write(&certs(&config), "a");
    let (ok, out) = check(&config);
    assert!(!ok, "{out}");
    assert!(out.contains("expired at"), "{out}");
    gateway_tests::remove_temp_parent(&config);
}

#[test]
fn a_missing_key_file_is_named() {
    let config = tls_config("127.0.0.1:1", &["a"]);
    Ca::new().leaf(&["a.test"], 90).write(&certs(&config), "a");
    std::fs::remove_file(certs(&config).join("a.key")).unwrap();
    let (ok, out) = check(&config);
    assert!(!ok, "{out}");
    assert!(
        out.contains("server.tls.certificates[0].key: cannot read") && out.contains("a.key"),
        "{out}"
    );
    gateway_tests::remove_temp_parent(&config);
}

#[tokio::test]
async fn the_tls_example_loads() {
    let example = repo_root().join("examples/tls/routes.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    let dir = gateway_tests::temp_dir("tls-example");
    // The example names the repository's descriptors folder relatively.
    let text = text.replace(
        "descriptors = \"../../descriptors\"",
        &format!(
            "descriptors = \"{}\"",
            gateway_tests::toml_path(&repo_root().join("descriptors"))
        ),
    );
    let config = dir.join("routes.toml");
    std::fs::write(&config, text).unwrap();
    let leaf = Ca::new().leaf(&["localhost"], 90);
    std::fs::write(dir.join("cert.pem"), &leaf.cert).unwrap();
    std::fs::write(dir.join("key.pem"), &leaf.key).unwrap();
    let snapshot = gateway::snapshot::Snapshot::load(&config)
        .unwrap_or_else(|e| panic!("the example does not load:\n{e}"));
    let tls = snapshot.tls.as_ref().expect("TLS is on");
    assert_eq!(tls.certificates[0].dns_names, ["localhost"]);
    gateway_tests::remove_temp_parent(&config);
}

#[tokio::test]
async fn redirect_http_answers_308_to_the_https_listener() {
    let backend = spawn_backend(echo_server(&testing_pool())).await;
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let plain = free.local_addr().unwrap();
    drop(free);
    let config = tls_config_with(&backend, &["a"], &format!("redirect_http = \"{plain}\""));
    let ca = Ca::new();
    let a = ca.leaf(&["a.test", "127.0.0.1"], 90);
    a.write(&certs(&config), "a");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, gateway_tests::binary::without_admin(&text)).unwrap();
    let (_child, https) =
        gateway_tests::binary::spawn_listening(&["serve", "--config", config.to_str().unwrap()])
            .await;
    let https_port = https.rsplit(':').next().unwrap();
    let reply = http_client()
        .post(format!("http://{plain}/v1/echo?string_field=x"))
        .header("host", "a.test")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 308);
    assert_eq!(
        reply.headers()["location"],
        format!("https://a.test:{https_port}/v1/echo?string_field=x").as_str()
    );
    // And the https side answers.
    let served = fetch(&client(&ca, BOTH, &[]), &https, "a.test")
        .await
        .unwrap();
    assert!(served.status.starts_with("HTTP/1.1 200"), "{served:?}");
    gateway_tests::remove_temp_parent(&config);
}
