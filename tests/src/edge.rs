//! Helpers for the edge-security tests: real signing keys (RSA, P-256,
//! Ed25519) generated per test binary, token signing, a JWKS server and a
//! static page server on loopback, and a backend that counts its calls.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use gateway::example::{BoxFuture, DynamicServer};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use prost_reflect::{DynamicMessage, MapKey, MethodDescriptor, Value};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::metadata::KeyAndValueRef;
use tonic::{Request, Response};

use crate::{testing_pool, ECHO_SERVICE};

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A signing key with its public forms.
#[derive(Clone)]
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    /// The public key as a JWK (with `kid`, `alg`, `use`).
    pub jwk: serde_json::Value,
    /// The public key as PEM (SPKI, `PUBLIC KEY`).
    pub public_pem: String,
}

impl TestKey {
    /// A fresh RSA-2048 key (RS256).
    pub fn rsa(kid: &str) -> TestKey {
        let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .expect("RSA key generation");
        let pkcs8: Pkcs8V1Der<'_> = kp.as_der().expect("PKCS#8");
        let public = kp.public_key();
        let spki: PublicKeyX509Der<'_> = public.as_der().expect("SPKI");
        TestKey {
            kid: kid.into(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_pem(pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes())
                .expect("RSA encoding key"),
            jwk: json!({
                "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
                "n": b64url(public.modulus().big_endian_without_leading_zero()),
                "e": b64url(public.exponent().big_endian_without_leading_zero()),
            }),
            public_pem: pem("PUBLIC KEY", spki.as_ref()),
        }
    }

    /// A fresh P-256 key (ES256).
    pub fn ec(kid: &str) -> TestKey {
        let kp = aws_lc_rs::signature::EcdsaKeyPair::generate(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        )
        .expect("EC key generation");
        let pkcs8 = kp.to_pkcs8v1().expect("PKCS#8");
        let point = kp.public_key().as_ref().to_vec();
        assert_eq!((point.len(), point[0]), (65, 4), "uncompressed P-256 point");
        let spki: PublicKeyX509Der<'_> = kp.public_key().as_der().expect("SPKI");
        TestKey {
            kid: kid.into(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_pem(pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes())
                .expect("EC encoding key"),
            jwk: json!({
                "kty": "EC", "use": "sig", "alg": "ES256", "crv": "P-256", "kid": kid,
                "x": b64url(&point[1..33]), "y": b64url(&point[33..]),
            }),
            public_pem: pem("PUBLIC KEY", spki.as_ref()),
        }
    }

    /// A fresh Ed25519 key (EdDSA).
    pub fn ed25519(kid: &str) -> TestKey {
        let kp = aws_lc_rs::signature::Ed25519KeyPair::generate().expect("Ed25519 key generation");
        let pkcs8 = kp.to_pkcs8v1().expect("PKCS#8");
        let public = kp.public_key().as_ref().to_vec();
        let spki: PublicKeyX509Der<'_> = kp.public_key().as_der().expect("SPKI");
        TestKey {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_pem(pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes())
                .expect("Ed25519 encoding key"),
            jwk: json!({
                "kty": "OKP", "use": "sig", "alg": "EdDSA", "crv": "Ed25519", "kid": kid,
                "x": b64url(&public),
            }),
            public_pem: pem("PUBLIC KEY", spki.as_ref()),
        }
    }

    /// Signs `claims` with a header naming this key's kid and algorithm.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }

    /// Signs without a kid in the header.
    pub fn sign_without_kid(&self, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::new(self.alg), claims, &self.encoding).expect("sign")
    }
}

/// One RSA, one EC and one Ed25519 key per test binary (RSA generation
/// takes a moment; the keys are as real as any).
pub fn keys() -> &'static (TestKey, TestKey, TestKey) {
    static KEYS: OnceLock<(TestKey, TestKey, TestKey)> = OnceLock::new();
    KEYS.get_or_init(|| {
        (
            TestKey::rsa("rsa-1"),
            TestKey::ec("ec-1"),
            TestKey::ed25519("ed-1"),
        )
    })
}

/// Signs an HS256 token with `secret`.
pub fn sign_hs256(secret: &[u8], claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("sign")
}

/// `Bearer <token>` for `sub` from the issuer `https://hs.test`, signed
/// HS256 with `secret`, valid for a minute.
pub fn hs_bearer(secret: &str, sub: &str) -> String {
    format!(
        "Bearer {}",
        sign_hs256(
            secret.as_bytes(),
            &json!({"iss": "https://hs.test", "sub": sub, "exp": now() + 60})
        )
    )
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// A token body of the tests' issuer and audience, valid for 10 minutes.
pub fn claims(iss: &str, sub: &str) -> serde_json::Value {
    json!({"iss": iss, "aud": "gateway-tests", "sub": sub, "exp": now() + 600, "iat": now()})
}

/// Base64url of the three parts, for hand-made tokens.
pub fn raw_token(header: &serde_json::Value, payload: &serde_json::Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(payload.to_string().as_bytes()),
        b64url(sig)
    )
}

// ---------------------------------------------------------------------------
// A tiny HTTP/1.1 server for JWKS documents and browser pages
// ---------------------------------------------------------------------------

/// One page: status, headers, body.
type Page = (u16, Vec<(String, String)>, Vec<u8>);

/// What the tiny server answers: status, headers and body per path.
#[derive(Clone, Default)]
pub struct Pages {
    pages: Arc<Mutex<BTreeMap<String, Page>>>,
    hits: Arc<Mutex<BTreeMap<String, usize>>>,
    /// Bodies of POST requests, by path.
    posted: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    notify: Arc<tokio::sync::Notify>,
}

impl Pages {
    pub fn set(&self, path: &str, content_type: &str, extra: &[(&str, &str)], body: &[u8]) {
        let mut headers = vec![("content-type".to_owned(), content_type.to_owned())];
        headers.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        self.pages
            .lock()
            .expect("pages")
            .insert(path.to_owned(), (200, headers, body.to_vec()));
    }

    pub fn hits(&self, path: &str) -> usize {
        self.hits
            .lock()
            .expect("hits")
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Waits up to `limit` for a POST to `path`; returns its body.
    pub async fn wait_post(&self, path: &str, limit: Duration) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.notify.notified();
            if let Some(b) = self.posted.lock().expect("posted").get(path) {
                return Some(b.clone());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

/// Serves `pages` on an ephemeral loopback port; returns `http://127.0.0.1:port`.
pub async fn serve_pages(pages: Pages) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let pages = pages.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
                        .await
                    {
                        Ok(Ok(0)) | Err(_) | Ok(Err(_)) => return,
                        Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                    }
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break p;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let mut lines = head.split("\r\n");
                let request_line = lines.next().unwrap_or("");
                let mut parts = request_line.split(' ');
                let method = parts.next().unwrap_or("").to_owned();
                let path = parts
                    .next()
                    .unwrap_or("/")
                    .split('?')
                    .next()
                    .unwrap_or("/")
                    .to_owned();
                let length: usize = lines
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse().ok())
                    .unwrap_or(0);
                let mut body = buf[head_end + 4..].to_vec();
                while body.len() < length {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => body.extend_from_slice(&chunk[..n]),
                    }
                }
                *pages
                    .hits
                    .lock()
                    .expect("hits")
                    .entry(path.clone())
                    .or_default() += 1;
                if method == "POST" {
                    pages
                        .posted
                        .lock()
                        .expect("posted")
                        .insert(path.clone(), body);
                    pages.notify.notify_waiters();
                }
                let page = pages.pages.lock().expect("pages").get(&path).cloned();
                let (status, headers, body) =
                    page.unwrap_or((if method == "POST" { 204 } else { 404 }, vec![], vec![]));
                let mut out = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                let mut bytes = out.into_bytes();
                bytes.extend_from_slice(&body);
                let _ = stream.write_all(&bytes).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

/// A JWKS endpoint on loopback whose keys can be swapped mid-test.
pub struct Jwks {
    pub pages: Pages,
    /// The JWKS URL.
    pub url: String,
}

impl Jwks {
    pub async fn start(keys: &[&TestKey], cache_control: &str) -> Jwks {
        let pages = Pages::default();
        let base = serve_pages(pages.clone()).await;
        let jwks = Jwks {
            pages,
            url: format!("{base}/jwks.json"),
        };
        jwks.publish(keys, cache_control);
        jwks
    }

    /// Replaces the published keys.
    pub fn publish(&self, keys: &[&TestKey], cache_control: &str) {
        let doc = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
        self.pages.set(
            "/jwks.json",
            "application/json",
            &[("cache-control", cache_control)],
            doc.to_string().as_bytes(),
        );
    }

    /// Fetches of the document so far.
    pub fn fetches(&self) -> usize {
        self.pages.hits("/jwks.json")
    }
}

// ---------------------------------------------------------------------------
// A backend that counts calls
// ---------------------------------------------------------------------------

/// The Echo service, counting every call: `Meta` answers with the metadata
/// it received, every other method with its request.
pub fn counting_echo(calls: Arc<AtomicUsize>) -> DynamicServer {
    DynamicServer::new(
        &testing_pool(),
        &[ECHO_SERVICE],
        move |method: &MethodDescriptor, req: Request<DynamicMessage>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let method = method.clone();
            Box::pin(async move {
                match method.name() {
                    "Meta" => {
                        let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
                        for kv in req.metadata().iter() {
                            if let KeyAndValueRef::Ascii(k, v) = kv {
                                seen.entry(k.as_str().to_owned())
                                    .or_default()
                                    .push(v.to_str().unwrap_or("?").to_owned());
                            }
                        }
                        let mut reply = DynamicMessage::new(method.output());
                        let map = seen
                            .into_iter()
                            .map(|(k, v)| (MapKey::String(k), Value::String(v.join(","))))
                            .collect();
                        reply.set_field_by_name("metadata", Value::Map(map));
                        Ok(Response::new(reply))
                    }
                    "Sleep" => {
                        let millis = req
                            .get_ref()
                            .get_field_by_name("millis")
                            .and_then(|v| v.as_i64())
                            .unwrap_or(0);
                        tokio::time::sleep(Duration::from_millis(millis.max(0) as u64)).await;
                        Ok(Response::new(DynamicMessage::new(method.output())))
                    }
                    _ => Ok(Response::new(req.into_inner())),
                }
            }) as BoxFuture<_>
        },
    )
}

/// Starts a counting Echo backend; returns its address and the counter.
pub async fn counting_backend() -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let addr = crate::spawn_backend(counting_echo(calls.clone())).await;
    (addr, calls)
}

/// The routes most edge tests use, after a caller's sections. `{auth}` in
/// `routes_extra` lines is not special; each route block is plain TOML.
pub fn edge_config(sections: &str, routes: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
descriptors = "{{descriptors}}"
watch = false

[admin]
enabled = false

{sections}

[backends.echo]
endpoints = ["{{backend}}"]
services = ["testing.v1.Echo"]
timeout = "5s"

{routes}
"#
    )
}

// ---------------------------------------------------------------------------
// The gateway binary, for tests that read its log
// ---------------------------------------------------------------------------

/// `gateway serve` run as a process on a rendered routes.toml (its listener
/// on port 0), with every stderr line kept for the test to read.
pub struct LoggingGateway {
    child: tokio::process::Child,
    /// `host:port` of the REST listener, from the "listening on" line.
    pub addr: String,
    lines: Arc<Mutex<Vec<String>>>,
    config_path: std::path::PathBuf,
}

impl LoggingGateway {
    /// Starts the binary on `config` (`{backend}` and `{descriptors}`
    /// already replaced), with RUST_LOG unset so the config's log settings
    /// apply, and waits for it to listen.
    pub async fn start(config: &str) -> LoggingGateway {
        use tokio::io::AsyncBufReadExt as _;
        let path = crate::write_config(config);
        let mut child = tokio::process::Command::new(crate::gateway_bin())
            .args(["serve", "--config"])
            .arg(&path)
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn gateway");
        let mut reader = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        let kept = lines.clone();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            while let Ok(Some(line)) = reader.next_line().await {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || ".:[]".contains(*c))
                        .collect();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                kept.lock().expect("lines").push(line);
            }
        });
        let addr = match tokio::time::timeout(Duration::from_secs(20), rx).await {
            Ok(Ok(addr)) => addr,
            _ => panic!(
                "gateway did not report its address; stderr:\n{}",
                lines.lock().expect("lines").join("\n")
            ),
        };
        LoggingGateway {
            child,
            addr,
            lines,
            config_path: path,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every line logged so far, once one containing `needle` is there (and
    /// a moment more, for anything written just after it).
    pub async fn lines_after(&self, needle: &str) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let found = self
                .lines
                .lock()
                .expect("lines")
                .iter()
                .any(|l| l.contains(needle));
            if found {
                tokio::time::sleep(Duration::from_millis(300)).await;
                return self.lines.lock().expect("lines").clone();
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "no log line contains {needle:?}:\n{}",
                    self.lines.lock().expect("lines").join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for LoggingGateway {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        crate::remove_temp_parent(&self.config_path);
    }
}
