//! Consul's HTTP API as the gateway speaks it: one agent client shared by
//! service discovery (`/v1/health/service`, discovery/consul.rs) and the
//! configuration source (`/v1/kv`, config_source.rs), so the token, the
//! timeouts and the blocking-query rules are written once.
//!
//! Follows <https://developer.hashicorp.com/consul/api-docs/features/blocking>:
//! `index` from the previous answer's `X-Consul-Index` and a `wait` (Consul
//! caps it at 10 minutes and adds up to `wait/16` of jitter, so the HTTP
//! timeout is longer than both); the index is reset to 0 when it goes
//! backwards (a restored snapshot, a new cluster) and never sent below 1
//! otherwise. The ACL token goes in `X-Consul-Token`.
//!
//! consulrs is not used: it lacks the health endpoint and brings a second
//! HTTP and TLS stack. This is the project's reqwest client, with its rustls
//! stack: `https://` agents are verified against the system roots plus any
//! extra CA certificates given.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;

/// The local agent, where every Consul deployment runs one.
pub const DEFAULT_ADDRESS: &str = "http://127.0.0.1:8500";
/// The agent address variable Consul's own CLI reads; on Kubernetes it
/// carries the node's IP from the downward API (`http://$(HOST_IP):8500`).
pub const ADDRESS_ENV: &str = "CONSUL_HTTP_ADDR";

/// The agent a backend's `consul` table without `address` asks:
/// `CONSUL_HTTP_ADDR` when set (see [`normalize_address`]), else the local
/// agent.
pub fn default_address() -> String {
    match std::env::var(ADDRESS_ENV) {
        Ok(v) if !v.trim().is_empty() => normalize_address(&v),
        _ => DEFAULT_ADDRESS.to_owned(),
    }
}
/// The token variable Consul's own CLI reads.
pub const DEFAULT_TOKEN_ENV: &str = "CONSUL_HTTP_TOKEN";
/// A reachable agent answers a TCP connect in milliseconds; a few seconds
/// means it is down, and the caller's retry schedule takes over.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A non-blocking query is answered from the agent's state at once; 10 s
/// covers a busy agent without leaving a dead one hanging.
const QUICK_TIMEOUT: Duration = Duration::from_secs(10);
/// Above Consul's `wait + wait/16`: the network's share of a blocking query.
const BLOCKING_SLACK: Duration = Duration::from_secs(5);

/// Where the ACL token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// An environment variable, read once when the client is built.
    Env(String),
    /// A file, read before every query (tokens rendered by an agent rotate).
    File(PathBuf),
}

/// Why a query gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    #[error("cannot reach Consul at {address}: {reason}")]
    Unreachable { address: String, reason: String },
    /// `hint` says where this client's token is set.
    #[error("Consul refused the ACL token (403 {body}); {hint}")]
    Forbidden { body: String, hint: &'static str },
    #[error("Consul answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error(
        "Consul filtered every instance out by ACL: the token cannot read service \"{service}\""
    )]
    FilteredByAcl { service: String },
    #[error("Consul's answer is not usable: {0}")]
    BadReply(String),
    #[error("cannot read the Consul token: {0}")]
    Token(String),
}

impl ConsulError {
    /// Errors of one kind are one state for logging.
    pub fn kind(&self) -> &'static str {
        match self {
            ConsulError::Unreachable { .. } => "unreachable",
            ConsulError::Forbidden { .. } | ConsulError::FilteredByAcl { .. } => "acl",
            ConsulError::Status { .. } => "status",
            ConsulError::BadReply(_) => "bad reply",
            ConsulError::Token(_) => "token",
        }
    }
}

/// One answer with a 2xx or 404 status (404 is how KV says "no such key").
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// `X-Consul-Index`, when sent.
    pub index: Option<u64>,
    /// `X-Consul-Results-Filtered-By-ACLs: true`.
    pub filtered_by_acl: bool,
    pub body: Bytes,
}

/// How a client reaches one agent: address, TLS roots and token.
#[derive(Debug, Clone)]
pub struct Agent {
    http: reqwest::Client,
    address: String,
    token: TokenSource,
    /// Read once from the environment (a file is read per query).
    env_token: Option<String>,
    /// Where to set the token, for the 403 message.
    token_hint: &'static str,
}

impl Agent {
    /// `address` is `http(s)://host:port` without a trailing slash;
    /// `ca_pem` adds roots for an https agent.
    pub fn new(
        address: &str,
        ca_pem: Option<&[u8]>,
        token: TokenSource,
        token_hint: &'static str,
    ) -> Result<Agent, ConsulError> {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                ConsulError::Unreachable {
                    address: address.to_owned(),
                    reason: format!("bad CA file: {e}"),
                }
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| ConsulError::Unreachable {
            address: address.to_owned(),
            reason: e.to_string(),
        })?;
        let env_token = match &token {
            TokenSource::Env(var) => std::env::var(var).ok().filter(|t| !t.trim().is_empty()),
            TokenSource::File(_) => None,
        };
        Ok(Agent {
            http,
            address: address.to_owned(),
            token,
            env_token,
            token_hint,
        })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    fn token(&self) -> Result<Option<String>, ConsulError> {
        match &self.token {
            TokenSource::Env(_) => Ok(self.env_token.clone()),
            TokenSource::File(path) => std::fs::read_to_string(path)
                .map(|t| Some(t.trim().to_owned()).filter(|t| !t.is_empty()))
                .map_err(|e| ConsulError::Token(format!("{}: {e}", path.display()))),
        }
    }

    /// `GET {address}{path_and_query}`; `blocking` is the `wait` of a
    /// blocking query (the HTTP timeout is set above Consul's hold time).
    /// A 403 is [`ConsulError::Forbidden`]; other statuses but 2xx and 404
    /// are [`ConsulError::Status`].
    pub async fn get(
        &self,
        path_and_query: &str,
        blocking: Option<Duration>,
    ) -> Result<Reply, ConsulError> {
        let mut req = self
            .http
            .get(format!("{}{path_and_query}", self.address))
            // Consul holds a blocking query up to wait + wait/16; a little
            // more covers the network.
            .timeout(match blocking {
                Some(wait) => wait + wait / 16 + BLOCKING_SLACK,
                None => QUICK_TIMEOUT,
            });
        if let Some(token) = self.token()? {
            req = req.header("X-Consul-Token", token);
        }
        let resp = req.send().await.map_err(|e| ConsulError::Unreachable {
            address: self.address.clone(),
            reason: error_chain(&e),
        })?;
        let status = resp.status();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let index = header("X-Consul-Index").and_then(|v| v.trim().parse::<u64>().ok());
        let filtered_by_acl =
            header("X-Consul-Results-Filtered-By-ACLs").is_some_and(|v| v == "true");
        let body = resp.bytes().await.map_err(|e| ConsulError::Unreachable {
            address: self.address.clone(),
            reason: error_chain(&e),
        })?;
        if status == reqwest::StatusCode::FORBIDDEN {
            return Err(ConsulError::Forbidden {
                body: short(&body),
                hint: self.token_hint,
            });
        }
        if !status.is_success() && status != reqwest::StatusCode::NOT_FOUND {
            return Err(ConsulError::Status {
                status: status.as_u16(),
                body: short(&body),
            });
        }
        Ok(Reply {
            status: status.as_u16(),
            index,
            filtered_by_acl,
            body,
        })
    }
}

/// An agent address as Consul's CLI accepts it in `CONSUL_HTTP_ADDR`:
/// `host:port` without a scheme means `http://host:port`; a trailing slash
/// is dropped.
pub fn normalize_address(address: &str) -> String {
    let a = address.trim().trim_end_matches('/');
    if a.contains("://") {
        a.to_owned()
    } else {
        format!("http://{a}")
    }
}

/// A body cut to 200 characters, for error messages.
pub fn short(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// reqwest keeps the useful part ("Connection refused") in the source chain.
fn error_chain(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

/// The next index to send after an answer with `answered`, following
/// Consul's rules: reset to 0 when it went backwards, never below 1 otherwise.
pub fn next_index(previous: u64, answered: u64) -> u64 {
    if answered < previous {
        0
    } else {
        answered.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_resets_when_it_goes_backwards_and_never_drops_below_one() {
        assert_eq!(next_index(10, 12), 12);
        assert_eq!(next_index(10, 10), 10);
        assert_eq!(next_index(10, 3), 0);
        assert_eq!(next_index(0, 0), 1);
    }

    #[test]
    fn address_without_scheme_is_http() {
        assert_eq!(normalize_address("10.0.0.1:8500"), "http://10.0.0.1:8500");
        assert_eq!(
            normalize_address("https://consul.local:8501/"),
            "https://consul.local:8501"
        );
    }
}
