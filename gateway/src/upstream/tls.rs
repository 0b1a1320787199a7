//! TLS and mTLS to a backend's instances (`[backends.NAME.tls]`): rustls on
//! the aws-lc-rs provider, as at the edge, ALPN `h2`. Every connection to
//! the instances uses it: the one that carries calls, streams and health
//! checks ([`super::client`]), and reflection's ([`super::endpoint`]).
//!
//! The files are read with the rest of the snapshot, and watched with
//! routes.toml ([`BackendTls::files`], `reload::watch_targets`): a renewed
//! certificate, key or CA, written in place, renamed onto, or swapped in
//! with a Kubernetes Secret volume's `..data` symlink, reloads the whole
//! configuration through the same validate-then-swap path. A changed file
//! changes the backend's connection settings (they compare by the files'
//! contents), so the reload replaces the backend's endpoints with new ones
//! that connect with the new settings; the old connections are not cut:
//! calls already on them finish there, and each closes when its last call
//! ends, as when discovery removes an instance. An unreadable or mismatched
//! file refuses the reload at its key while the old settings keep serving.
//!
//! Which name an instance's certificate must carry: `server_name` when set,
//! for every instance, however it was found (static, DNS or Consul);
//! otherwise the host of the instance's own address. Instances found in a
//! registry are usually listed by IP and share one certificate name, so a
//! backend discovered through Consul wants `server_name`; without it the
//! certificate must name the IP the registry gives.

use std::hash::{Hash, Hasher};
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use toml::Spanned;

use crate::config::{BackendTlsConfig, ConfigError, LoadedFile};

/// A backend's TLS settings, compiled.
pub struct BackendTls {
    connector: tokio_rustls::TlsConnector,
    /// `server_name`: the name every instance's certificate must carry;
    /// else each endpoint's own host.
    server_name: Option<ServerName<'static>>,
    /// Of the settings and the files' contents: equal when nothing changed.
    fingerprint: u64,
    /// `ca_file`, `cert_file` and `key_file` as opened (relative to
    /// routes.toml's folder): what a reload re-reads, so what is watched.
    files: Vec<PathBuf>,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl PartialEq for BackendTls {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl Eq for BackendTls {}

impl BackendTls {
    /// `[backends.NAME.tls]`, its files read and checked; errors name the
    /// key and the file.
    pub fn load(
        file: &LoadedFile,
        name: &str,
        cfg: &Spanned<BackendTlsConfig>,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Arc<BackendTls>> {
        let c = cfg.get_ref();
        let at = |k: &str| format!("backends.{name}.tls.{k}");
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let before = errors.len();
        let mut files = Vec::new();
        let mut read = |key: &str, path: &Spanned<String>| -> Option<Vec<u8>> {
            let full = file.relative(path.get_ref());
            files.push(full.clone());
            match std::fs::read(&full) {
                Ok(bytes) => {
                    bytes.hash(&mut hasher);
                    Some(bytes)
                }
                Err(e) => {
                    errors.push(file.error(
                        path,
                        at(key),
                        format!("cannot read {}: {e}", full.display()),
                    ));
                    None
                }
            }
        };
        let ca = c
            .ca_file
            .as_ref()
            .and_then(|p| read("ca_file", p).map(|b| (p, b)));
        let cert = c
            .cert_file
            .as_ref()
            .and_then(|p| read("cert_file", p).map(|b| (p, b)));
        let key = c
            .key_file
            .as_ref()
            .and_then(|p| read("key_file", p).map(|b| (p, b)));
        if errors.len() > before {
            return None;
        }
        let mut roots = rustls::RootCertStore::empty();
        match &ca {
            Some((path, pem)) => {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
                    .filter_map(Result::ok)
                    .collect();
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    errors.push(file.error(
                        path,
                        at("ca_file"),
                        "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                    ));
                    return None;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the provider supports TLS 1.2 and 1.3")
            .with_root_certificates(roots);
        let mut config = match (&cert, &key) {
            (None, None) => builder.with_no_client_auth(),
            (Some((path, pem)), Some((key_path, key_pem))) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
                    .filter_map(Result::ok)
                    .collect();
                if chain.is_empty() {
                    errors.push(file.error(
                        path,
                        at("cert_file"),
                        "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                    ));
                    return None;
                }
                let Ok(private) = PrivateKeyDer::from_pem_slice(key_pem) else {
                    errors.push(file.error(
                        key_path,
                        at("key_file"),
                        "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
                    ));
                    return None;
                };
                // The pair must match: rustls would only find out at the
                // first handshake, and the backend would say little.
                if let Err(e) = rustls::sign::CertifiedKey::from_der(
                    chain.clone(),
                    private.clone_key(),
                    &provider,
                ) {
                    errors.push(file.error(
                        key_path,
                        at("key_file"),
                        format!("does not go with cert_file: {e}"),
                    ));
                    return None;
                }
                match builder.with_client_auth_cert(chain, private) {
                    Ok(c) => c,
                    Err(e) => {
                        errors.push(file.error(key_path, at("key_file"), e.to_string()));
                        return None;
                    }
                }
            }
            (Some((path, _)), None) | (None, Some((path, _))) => {
                errors.push(file.error(
                    path,
                    format!("backends.{name}.tls"),
                    "a client certificate needs both cert_file and key_file",
                ));
                return None;
            }
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        let server_name = match &c.server_name {
            Some(n) => match ServerName::try_from(n.get_ref().clone()) {
                Ok(s) => {
                    n.get_ref().hash(&mut hasher);
                    Some(s)
                }
                Err(e) => {
                    errors.push(file.error(n, at("server_name"), e.to_string()));
                    return None;
                }
            },
            None => None,
        };
        Some(Arc::new(BackendTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
            fingerprint: hasher.finish(),
            files,
        }))
    }

    /// The certificate, key and CA files the settings were read from.
    pub fn files(&self) -> impl Iterator<Item = &PathBuf> {
        self.files.iter()
    }

    /// The TLS handshake with the instance at `addr` (`host:port`) over
    /// `tcp`, checking its certificate against `server_name` or the host.
    pub async fn connect(&self, addr: &str, tcp: TcpStream) -> io::Result<Io> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => {
                let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                ServerName::try_from(host.to_owned())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
            }
        };
        let tls = self.connector.connect(name, tcp).await?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(io::Error::other(
                "the backend's TLS did not agree to HTTP/2 (ALPN h2)",
            ));
        }
        Ok(Io::Tls(Box::new(tls)))
    }
}

/// A connection to an instance: plaintext (h2c) or TLS.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
