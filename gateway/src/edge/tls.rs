//! TLS termination on the REST listener (`[server.tls]`).
//!
//! The certificates are read with the rest of the snapshot, so a reload
//! re-reads them and a bad pair is refused with a `file:line: key:` error
//! while the old snapshot (and its certificates) keeps serving. Each
//! snapshot carries its own rustls `ServerConfig`: the accept loop takes the
//! current one for every new connection, and a connection keeps the
//! certificate it was handshaken with.
//!
//! rustls on the aws-lc-rs provider (the one jsonwebtoken already uses),
//! TLS 1.2 and 1.3 only, rustls's default cipher suites, ALPN `h2` then
//! `http/1.1` so clients get HTTP/2 on the same port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::{ConfigError, LoadedFile, TlsCertificateConfig};

/// Certificate authorities renew a month ahead (Let's Encrypt at 30 days
/// left); a certificate still in place two weeks before it ends has missed
/// its renewal, and two weeks leaves time to find out why.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// `[server.tls]` checked and compiled: what the listener hands each new
/// connection, and what was loaded (for metrics, warnings and the watcher).
pub struct Tls {
    acceptor: TlsAcceptor,
    pub certificates: Vec<LoadedCertificate>,
    /// `redirect_http`: where the plaintext redirecting listener listens.
    pub redirect_http: Option<SocketAddr>,
    /// `plaintext_listen`: where the plaintext listener for internal
    /// callers listens.
    pub plaintext_listen: Option<SocketAddr>,
    /// `client_ca`, when client certificates are asked for.
    pub client_ca: Option<LoadedClientCa>,
    /// `handshake_timeout`.
    pub handshake_timeout: Duration,
    /// `max_concurrent_handshakes` (read at start).
    pub max_concurrent_handshakes: usize,
}

/// `client_ca` as loaded.
#[derive(Debug, Clone)]
pub struct LoadedClientCa {
    pub path: PathBuf,
    /// Certificates in the bundle.
    pub count: usize,
    /// `client_auth = "required"`.
    pub required: bool,
}

/// What the accept loop needs for one TLS connection.
#[derive(Clone)]
pub struct Handshake {
    pub acceptor: TlsAcceptor,
    /// `handshake_timeout`.
    pub timeout: Duration,
    /// `max_concurrent_handshakes`.
    pub max_concurrent: usize,
}

/// `handshake_timeout`'s default: see its doc comment in the config.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// `max_concurrent_handshakes`'s default: see its doc comment in the config.
pub const DEFAULT_MAX_CONCURRENT_HANDSHAKES: usize = 256;
/// TLS 1.2 sessions kept for resumption by session id (TLS 1.3 and TLS 1.2
/// clients that take tickets resume with a ticket and need no entry). About
/// 200 bytes each, so the cache stays under a megabyte; the oldest go first.
const SESSION_CACHE_ENTRIES: usize = 4096;

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("certificates", &self.certificates)
            .finish()
    }
}

/// One certificate/key pair as loaded.
#[derive(Debug, Clone)]
pub struct LoadedCertificate {
    /// The metric label: the certificate's first DNS name, or its file name
    /// when it has none. A label per configured pair, so the set is bounded.
    pub name: String,
    /// The certificate's DNS names (`subjectAltName`), wildcards included.
    pub dns_names: Vec<String>,
    /// The end of its validity (`notAfter`), seconds since the Unix epoch.
    pub not_after: i64,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl Tls {
    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// The acceptor and the handshake bounds for a new connection.
    pub fn handshake(&self) -> Handshake {
        Handshake {
            acceptor: self.acceptor.clone(),
            timeout: self.handshake_timeout,
            max_concurrent: self.max_concurrent_handshakes,
        }
    }

    /// The files a reload re-reads: watched with routes.toml.
    pub fn files(&self) -> impl Iterator<Item = &PathBuf> {
        self.certificates
            .iter()
            .flat_map(|c| [&c.cert_path, &c.key_path])
            .chain(self.client_ca.iter().map(|c| &c.path))
    }

    /// Appends `gateway_tls_certificate_expiry_seconds` for each
    /// certificate to a `/metrics` answer.
    pub fn render(&self, out: &mut String) {
        use crate::telemetry::metrics::{sample, TLS_CERTIFICATE_EXPIRY};
        out.push_str("# HELP ");
        out.push_str(TLS_CERTIFICATE_EXPIRY);
        out.push_str(" When each certificate of the listener expires (notAfter, Unix time), by its first DNS name\n# TYPE ");
        out.push_str(TLS_CERTIFICATE_EXPIRY);
        out.push_str(" gauge\n");
        for c in &self.certificates {
            sample(
                out,
                TLS_CERTIFICATE_EXPIRY,
                &[("name", &c.name)],
                c.not_after as f64,
            );
        }
    }
}

/// Reads and checks `[server.tls]`: every pair parses, its key matches its
/// certificate, and it has not expired. Problems go to `errors` (each naming
/// the file and what is wrong); certificates that expire within
/// [`EXPIRY_WARNING`] go to `warnings`. None when TLS is off or anything failed.
pub fn build(
    file: &LoadedFile,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<ConfigError>,
) -> Option<Arc<Tls>> {
    let tls = file.config.server.tls.as_ref()?;
    let redirect_http = match &tls.get_ref().redirect_http {
        Some(a) => match file.address(a, "server.tls.redirect_http") {
            Ok(a) => Some(a),
            Err(e) => {
                errors.push(e);
                None
            }
        },
        None => None,
    };
    let plaintext_listen = match &tls.get_ref().plaintext_listen {
        Some(a) => match file.address(a, "server.tls.plaintext_listen") {
            Ok(a) => Some(a),
            Err(e) => {
                errors.push(e);
                None
            }
        },
        None => None,
    };
    let handshake_timeout = file.duration(
        &tls.get_ref().handshake_timeout,
        "server.tls.handshake_timeout",
        DEFAULT_HANDSHAKE_TIMEOUT,
        errors,
    );
    let max_concurrent_handshakes = match &tls.get_ref().max_concurrent_handshakes {
        Some(n) if *n.get_ref() == 0 => {
            errors.push(file.error(
                n,
                "server.tls.max_concurrent_handshakes",
                "must be at least 1",
            ));
            DEFAULT_MAX_CONCURRENT_HANDSHAKES
        }
        Some(n) => *n.get_ref(),
        None => DEFAULT_MAX_CONCURRENT_HANDSHAKES,
    };
    let errors_before = errors.len();
    let client_ca = load_client_ca(file, tls.get_ref(), errors);
    let client_ca_failed = errors.len() > errors_before;
    let pairs = &tls.get_ref().certificates;
    if pairs.is_empty() {
        errors.push(file.error(
            tls,
            "server.tls.certificates",
            "no certificate: add a pair, e.g. certificates = [{ cert = \"tls/cert.pem\", key = \"tls/key.pem\" }], or remove [server.tls] to serve plaintext",
        ));
        return None;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut loaded = Vec::new();
    let mut failed = false;
    for (i, pair) in pairs.iter().enumerate() {
        match load_pair(file, i, pair.get_ref(), &provider, now, warnings) {
            Ok(l) => loaded.push(l),
            Err(e) => {
                errors.push(e);
                failed = true;
            }
        }
    }
    if failed
        || client_ca_failed
        || tls.get_ref().redirect_http.is_some() && redirect_http.is_none()
        || tls.get_ref().plaintext_listen.is_some() && plaintext_listen.is_none()
    {
        return None;
    }
    // One series per pair: a name another pair already uses as its label
    // gets its file's name after it.
    for i in 1..loaded.len() {
        if loaded[..i].iter().any(|(c, _)| c.name == loaded[i].0.name) {
            let c = &mut loaded[i].0;
            c.name = format!("{} ({})", c.name, c.cert_path.display());
        }
    }
    let mut resolver = ByName {
        exact: HashMap::new(),
        wildcard: HashMap::new(),
        default: loaded[0].1.clone(),
    };
    for (cert, key) in &loaded {
        for name in &cert.dns_names {
            // The first pair that names a host serves it.
            match name.strip_prefix("*.") {
                Some(parent) => resolver.wildcard.entry(parent.to_owned()),
                None => resolver.exact.entry(name.clone()),
            }
            .or_insert_with(|| key.clone());
        }
    }
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the aws-lc-rs provider supports TLS 1.2 and 1.3");
    let builder = match &client_ca {
        Some((loaded, roots)) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.clone(),
                provider,
            );
            let verifier = if loaded.required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            match verifier.build() {
                Ok(v) => builder.with_client_cert_verifier(v),
                Err(e) => {
                    let at = tls.get_ref().client_ca.as_ref().expect("loaded from it");
                    errors.push(file.error(
                        at,
                        "server.tls.client_ca",
                        format!("cannot verify clients with {}: {e}", loaded.path.display()),
                    ));
                    return None;
                }
            }
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Resumption spares a returning client the full handshake (its
    // signature and key exchange): TLS 1.3 tickets, and TLS 1.2 tickets or
    // session ids. Each snapshot starts new ticket keys (rotated every 6
    // hours by rustls, the previous key still accepted) and an empty cache:
    // a reload that drops a client CA must not leave sessions made under
    // it resumable.
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    match rustls::crypto::aws_lc_rs::Ticketer::new() {
        Ok(t) => config.ticketer = t,
        // Only when the system's random source fails: full handshakes.
        Err(e) => tracing::warn!(error = %e, "no TLS session tickets"),
    }
    Some(Arc::new(Tls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        certificates: loaded.into_iter().map(|(c, _)| c).collect(),
        redirect_http,
        plaintext_listen,
        client_ca: client_ca.map(|(c, _)| c),
        handshake_timeout,
        max_concurrent_handshakes,
    }))
}

/// Reads `client_ca` and `client_auth`: the bundle must hold at least one
/// certificate rustls takes as a trust anchor.
fn load_client_ca(
    file: &LoadedFile,
    tls: &crate::config::TlsConfig,
    errors: &mut Vec<ConfigError>,
) -> Option<(LoadedClientCa, Arc<rustls::RootCertStore>)> {
    let required = match &tls.client_auth {
        Some(m) => match m.get_ref().trim() {
            "required" => true,
            "optional" => false,
            other => {
                errors.push(file.error(
                    m,
                    "server.tls.client_auth",
                    format!("\"{other}\" is not a client certificate mode; use \"required\" or \"optional\""),
                ));
                true
            }
        },
        None => true,
    };
    let Some(at) = &tls.client_ca else {
        if let Some(m) = &tls.client_auth {
            errors.push(file.error(
                m,
                "server.tls.client_auth",
                "client_auth needs client_ca: name the PEM bundle of the authorities client certificates chain to",
            ));
        }
        return None;
    };
    let path = file.relative(at.get_ref());
    let error = |m: String| file.error(at, "server.tls.client_ca", m);
    let pem = match std::fs::read(&path) {
        Ok(p) => p,
        Err(e) => {
            errors.push(error(format!("cannot read {}: {e}", path.display())));
            return None;
        }
    };
    let certs = match CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>() {
        Ok(c) => c,
        Err(e) => {
            errors.push(error(format!(
                "{} is not a valid PEM certificate bundle: {e}",
                path.display()
            )));
            return None;
        }
    };
    if certs.is_empty() {
        errors.push(error(format!(
            "{} holds no certificate (no -----BEGIN CERTIFICATE----- block)",
            path.display()
        )));
        return None;
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, c) in certs.iter().enumerate() {
        if let Err(e) = roots.add(c.clone()) {
            errors.push(error(format!(
                "certificate {} of {} is not a usable certificate authority: {e}",
                i + 1,
                path.display()
            )));
            return None;
        }
    }
    Some((
        LoadedClientCa {
            path,
            count: certs.len(),
            required,
        },
        Arc::new(roots),
    ))
}

/// Serves `redirect_http`: every request gets a 308 to the same host, path
/// and query over https on `https_port` (308, not 301: the method and body
/// are kept). A request without a host gets a 400.
pub async fn serve_redirect(
    listener: tokio::net::TcpListener,
    https_port: u16,
) -> std::io::Result<()> {
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| async move {
        match https_location(&req, https_port) {
            Some(location) => http::Response::builder()
                .status(http::StatusCode::PERMANENT_REDIRECT)
                .header(http::header::LOCATION, location)
                .body(axum::body::Body::empty())
                .expect("a valid redirect"),
            None => crate::error::Error::BadRequest(
                "the request names no host (Host header) to redirect to over https".to_owned(),
            )
            .into_response(),
        }
    });
    axum::serve(listener, app).await
}

/// `https://host[:port]/path?query` for a plaintext request.
fn https_location(req: &axum::extract::Request, https_port: u16) -> Option<http::HeaderValue> {
    let authority = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .or_else(|| req.uri().authority().cloned())?;
    let host = authority.host();
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let location = if https_port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{https_port}{path}")
    };
    http::HeaderValue::try_from(location).ok()
}

/// Reads one pair; the error points at its `cert` (or `key`) line.
fn load_pair(
    file: &LoadedFile,
    i: usize,
    pair: &TlsCertificateConfig,
    provider: &CryptoProvider,
    now: i64,
    warnings: &mut Vec<ConfigError>,
) -> Result<(LoadedCertificate, Arc<CertifiedKey>), ConfigError> {
    let cert_key = format!("server.tls.certificates[{i}].cert");
    let key_key = format!("server.tls.certificates[{i}].key");
    let cert_path = file.relative(pair.cert.get_ref());
    let key_path = file.relative(pair.key.get_ref());
    let cert_error = |m: String| file.error(&pair.cert, &cert_key, m);
    let key_error = |m: String| file.error(&pair.key, &key_key, m);

    let pem = std::fs::read(&cert_path)
        .map_err(|e| cert_error(format!("cannot read {}: {e}", cert_path.display())))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            cert_error(format!(
                "{} is not a valid PEM certificate file: {e}",
                cert_path.display()
            ))
        })?;
    let Some(leaf) = chain.first() else {
        return Err(cert_error(format!(
            "{} holds no certificate (no -----BEGIN CERTIFICATE----- block)",
            cert_path.display()
        )));
    };
    let info = leaf_info(leaf).map_err(|what| {
        cert_error(format!(
            "{}: the first certificate does not parse as X.509 ({what})",
            cert_path.display()
        ))
    })?;
    let pem = std::fs::read(&key_path)
        .map_err(|e| key_error(format!("cannot read {}: {e}", key_path.display())))?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        key_error(format!(
            "{} holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
            key_path.display()
        ))
    })?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => key_error(format!(
            "the private key in {} does not match the certificate in {}; they are not a pair",
            key_path.display(),
            cert_path.display()
        )),
        e => key_error(format!(
            "cannot use the key in {} with the certificate in {}: {e}",
            key_path.display(),
            cert_path.display()
        )),
    })?;
    let expires = format_time(info.not_after);
    if info.not_after <= now {
        return Err(cert_error(format!(
            "the certificate in {} expired at {expires}; renew it",
            cert_path.display()
        )));
    }
    if info.not_after - now < EXPIRY_WARNING.as_secs() as i64 {
        warnings.push(cert_error(format!(
            "the certificate in {} expires at {expires}, in less than 14 days; renew it",
            cert_path.display()
        )));
    }
    let name = info.dns_names.first().cloned().unwrap_or_else(|| {
        cert_path
            .file_name()
            .map_or_else(|| cert_key.clone(), |n| n.to_string_lossy().into_owned())
    });
    Ok((
        LoadedCertificate {
            name,
            dns_names: info.dns_names,
            not_after: info.not_after,
            cert_path,
            key_path,
        },
        Arc::new(certified),
    ))
}

/// Picks the certificate for a client's SNI name: an exact DNS name first,
/// then a wildcard one label up (`*.example.com` serves `a.example.com`, not
/// `a.b.example.com` nor `example.com`, as RFC 6125 has it); the first pair
/// for no name or an unknown one.
#[derive(Debug)]
struct ByName {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl ByName {
    fn pick(&self, name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = name else {
            return &self.default;
        };
        // rustls hands over the name lowercased and without a trailing dot.
        if let Some(k) = self.exact.get(name) {
            return k;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
    }
}

impl ResolvesServerCert for ByName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()).clone())
    }
}

/// What the gateway reads from a certificate itself.
struct LeafInfo {
    not_after: i64,
    dns_names: Vec<String>,
}

/// The DER reading the gateway needs from certificates (its own and its
/// clients'): tag, length, contents.
pub(crate) mod der {
    /// The DER element at the start of `input`: (tag, contents, the rest).
    pub(crate) fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&len, rest) = rest.split_first()?;
        let (len, rest) = if len < 0x80 {
            (len as usize, rest)
        } else {
            let n = (len & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }

    /// The element at the start of `input` when its tag is `tag`.
    pub(crate) fn expect(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), &'static str> {
        match tlv(input) {
            Some((t, body, rest)) if t == tag => Ok((body, rest)),
            _ => Err("unexpected DER structure"),
        }
    }

    pub(crate) const SEQUENCE: u8 = 0x30;
}

use der::{expect, tlv, SEQUENCE};

/// `subjectAltName`, 2.5.29.17.
const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];

/// `notAfter` and the DNS names of a certificate (RFC 5280 4.1): the
/// handful of fields the gateway needs, walked directly rather than adding an
/// X.509 library for them (rustls checks the rest at handshake time).
fn leaf_info(der: &[u8]) -> Result<LeafInfo, &'static str> {
    let (cert, _) = expect(der, SEQUENCE)?;
    let (mut tbs, _) = expect(cert, SEQUENCE)?;
    // version [0] EXPLICIT, optional
    if let Some((0xa0, _, rest)) = tlv(tbs) {
        tbs = rest;
    }
    let (_serial, tbs) = expect(tbs, 0x02)?;
    let (_signature, tbs) = expect(tbs, SEQUENCE)?;
    let (_issuer, tbs) = expect(tbs, SEQUENCE)?;
    let (validity, tbs) = expect(tbs, SEQUENCE)?;
    let (_subject, tbs) = expect(tbs, SEQUENCE)?;
    let (_spki, mut tbs) = expect(tbs, SEQUENCE)?;
    let (_, _not_before, validity) = tlv(validity).ok_or("no notBefore")?;
    let (tag, not_after, _) = tlv(validity).ok_or("no notAfter")?;
    let not_after = parse_time(tag, not_after).ok_or("notAfter is not a valid time")?;
    let mut dns_names = Vec::new();
    // issuerUniqueID [1], subjectUniqueID [2], extensions [3]
    while let Some((tag, body, rest)) = tlv(tbs) {
        tbs = rest;
        if tag != 0xa3 {
            continue;
        }
        let (mut exts, _) = expect(body, SEQUENCE)?;
        while !exts.is_empty() {
            let (ext, rest) = expect(exts, SEQUENCE)?;
            exts = rest;
            let (oid, ext) = expect(ext, 0x06)?;
            if oid != SAN_OID {
                continue;
            }
            // critical BOOLEAN DEFAULT FALSE
            let ext = match tlv(ext) {
                Some((0x01, _, rest)) => rest,
                _ => ext,
            };
            let (value, _) = expect(ext, 0x04)?;
            let (mut names, _) = expect(value, SEQUENCE)?;
            while let Some((tag, name, rest)) = tlv(names) {
                names = rest;
                // dNSName [2] IMPLICIT IA5String
                if tag == 0x82 {
                    let name = std::str::from_utf8(name).map_err(|_| "a DNS name is not text")?;
                    dns_names.push(name.trim_end_matches('.').to_ascii_lowercase());
                }
            }
        }
    }
    Ok(LeafInfo {
        not_after,
        dns_names,
    })
}

/// UTCTime (`YYMMDDHHMMSSZ`, years 1950 to 2049) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`), as RFC 5280 4.1.2.5 allows them, in Unix seconds.
fn parse_time(tag: u8, text: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if text.len() == 12 => {
            let yy: i64 = text[..2].parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &text[2..])
        }
        0x18 if text.len() == 14 => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    let field = |i: usize| rest.get(i..i + 2)?.parse::<i64>().ok();
    let (month, day, h, m, s) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2027-01-31 12:00:00 UTC`, for messages.
fn format_time(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // The inverse of days_from_civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_convert_both_ways() {
        assert_eq!(parse_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(parse_time(0x18, b"20000301000000Z"), Some(951_868_800));
        assert_eq!(parse_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(format_time(951_868_800), "2000-03-01 00:00:00 UTC");
        assert_eq!(format_time(2_524_607_999), "2049-12-31 23:59:59 UTC");
        assert_eq!(parse_time(0x17, b"701301000000Z"), None);
    }

    #[test]
    fn redirects_keep_host_path_and_query() {
        let at = |host: &str, uri: &str, port: u16| {
            let req = http::Request::builder()
                .uri(uri)
                .header(http::header::HOST, host)
                .body(axum::body::Body::empty())
                .unwrap();
            https_location(&req, port).map(|l| l.to_str().unwrap().to_owned())
        };
        assert_eq!(
            at("api.test:8081", "/v1/a?b=c", 8443).as_deref(),
            Some("https://api.test:8443/v1/a?b=c")
        );
        assert_eq!(
            at("api.test", "/", 443).as_deref(),
            Some("https://api.test/")
        );
        assert_eq!(
            at("[::1]:80", "/x", 8443).as_deref(),
            Some("https://[::1]:8443/x")
        );
        assert_eq!(at("not a host", "/x", 443), None);
    }

    #[test]
    fn wildcards_match_one_label() {
        let k = |n: &str| {
            Arc::new(CertifiedKey::new(
                vec![CertificateDer::from(n.as_bytes().to_vec())],
                Arc::new(NoKey),
            ))
        };
        let by = ByName {
            exact: [("api.example.com".to_owned(), k("api"))].into(),
            wildcard: [("example.com".to_owned(), k("wild"))].into(),
            default: k("default"),
        };
        let served = |name: Option<&str>| by.pick(name).cert[0].as_ref().to_vec();
        assert_eq!(served(Some("api.example.com")), b"api");
        assert_eq!(served(Some("www.example.com")), b"wild");
        assert_eq!(served(Some("a.b.example.com")), b"default");
        assert_eq!(served(Some("example.com")), b"default");
        assert_eq!(served(None), b"default");
    }

    #[derive(Debug)]
    struct NoKey;

    impl rustls::sign::SigningKey for NoKey {
        fn choose_scheme(
            &self,
            _: &[rustls::SignatureScheme],
        ) -> Option<Box<dyn rustls::sign::Signer>> {
            None
        }
        fn algorithm(&self) -> rustls::SignatureAlgorithm {
            rustls::SignatureAlgorithm::ECDSA
        }
    }
}
