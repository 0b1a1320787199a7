//! Certificates made at run time (rcgen, no keys checked in) and gRPC
//! backends behind rustls, for the backend-TLS tests and the bench's HTTPS
//! scenarios. A [`TlsBackend`] can change its certificate and the client CA
//! it trusts while it runs, the way an instance restarted with renewed
//! certificates would.

use std::path::Path;
use std::sync::{Arc, Mutex};

use gateway::example::DynamicServer;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::task::AbortHandle;

/// A certificate authority, and certificates it signed, as PEM.
pub struct Pki {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA certificate");
        Pki {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// (certificate, key) as PEM for `names` (DNS names or IP addresses).
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, &names[0]);
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// The CA as a rustls root store.
    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c.expect("CA PEM")).expect("CA certificate");
        }
        roots
    }

    /// A rustls server config (ALPN as given) with a certificate for
    /// `names`; with `clients`, client certificates that CA signed are
    /// required.
    pub fn server_config(
        &self,
        names: &[&str],
        clients: Option<&Pki>,
        alpn: &[&[u8]],
    ) -> rustls::ServerConfig {
        let (cert, key) = self.issue(names);
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
            .map(|c| c.expect("certificate PEM"))
            .collect();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key PEM");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("TLS versions");
        let builder = match clients {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    ca.roots().into(),
                    provider,
                )
                .build()
                .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .expect("certificate and key");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

/// A gRPC server behind TLS (ALPN h2) on an ephemeral loopback port.
/// Dropping it closes the listener and every connection.
pub struct TlsBackend {
    /// `127.0.0.1:port`.
    pub addr: String,
    /// The names its certificates carry.
    names: Vec<String>,
    acceptor: Arc<Mutex<tokio_rustls::TlsAcceptor>>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    listener: AbortHandle,
}

impl TlsBackend {
    /// Serves `server` with a certificate for `localhost` and `127.0.0.1`
    /// from `pki` (tests reach it by name with `server_name`, and by its
    /// address without); with `clients`, only to clients whose certificate
    /// that CA signed.
    pub async fn start(server: DynamicServer, pki: &Pki, clients: Option<&Pki>) -> TlsBackend {
        Self::start_for(server, pki, clients, &["localhost", "127.0.0.1"]).await
    }

    /// [`start`](Self::start) with a certificate for `names` only.
    pub async fn start_for(
        server: DynamicServer,
        pki: &Pki,
        clients: Option<&Pki>,
        names: &[&str],
    ) -> TlsBackend {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let acceptor = Arc::new(Mutex::new(acceptor(pki, clients, &names)));
        let connections = Arc::new(Mutex::new(Vec::<AbortHandle>::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind TLS backend");
        let addr = listener.local_addr().expect("local addr").to_string();
        let task = tokio::spawn({
            let (acceptor, connections) = (acceptor.clone(), connections.clone());
            async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let acceptor = acceptor.lock().expect("acceptor").clone();
                    let server = server.clone();
                    let conn = tokio::spawn(async move {
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            server.serve_connection(tls).await;
                        }
                    });
                    let mut open = connections.lock().expect("connections");
                    open.retain(|c| !c.is_finished());
                    open.push(conn.abort_handle());
                }
            }
        });
        TlsBackend {
            addr,
            names,
            acceptor,
            connections,
            listener: task.abort_handle(),
        }
    }

    /// From now on, handshakes use a certificate from `pki` and require
    /// client certificates from `clients`; the connections open now are cut,
    /// as when the instance restarts with its renewed certificates.
    pub fn reconfigure(&self, pki: &Pki, clients: Option<&Pki>) {
        *self.acceptor.lock().expect("acceptor") = acceptor(pki, clients, &self.names);
        for c in self.connections.lock().expect("connections").drain(..) {
            c.abort();
        }
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.listener.abort();
        for c in self.connections.lock().expect("connections").drain(..) {
            c.abort();
        }
    }
}

fn acceptor(pki: &Pki, clients: Option<&Pki>, names: &[String]) -> tokio_rustls::TlsAcceptor {
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let config = pki.server_config(&names, clients, &[b"h2"]);
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Writes `text` to `dir/name` by rename, as a certificate renewal (or
/// `kubectl cp`) does, so the gateway never reads half a file; returns the
/// path as a TOML string.
pub fn write_atomically(dir: &Path, name: &str, text: &str) -> String {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write temporary file");
    std::fs::rename(&tmp, dir.join(name)).expect("rename into place");
    crate::toml_path(&dir.join(name))
}
