//! Client certificates at the edge (mTLS, `[server.tls] client_ca`): who a
//! verified certificate names, and what a route does with it.
//!
//! rustls verifies the chain during the handshake (`edge::tls`); the
//! connection then reads the leaf once ([`ClientCert::from_der`]) and puts
//! the same [`PeerCert`] (an `Arc`) on each of its requests. Routes use it
//! three ways, all compiled into [`ClientCertPolicy`]:
//!
//! - as a credential, an alternative to a JWT or an API key
//!   (`credentials = ["client_cert"]`, like Kong's mtls-auth);
//! - as a requirement on top of the route's `auth` (`client_cert =
//!   "required"`: the certificate proves the calling service, a token the
//!   user it calls for);
//! - narrowed by an allow-list of SPIFFE IDs, names or subjects
//!   (`client_cert_allow`, Envoy RBAC's `authenticated.principal_name`).
//!
//! The parts a route forwards reach the backend as `x-client-cert-*`
//! metadata; whatever a client sends under those names is dropped first.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::tls::der::{expect, tlv, SEQUENCE};

/// What a verified client certificate says about its holder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCert {
    /// The subject as an RFC 4514 string (`CN=web,O=Example`).
    pub subject: String,
    /// DNS names of the `subjectAltName`.
    pub dns: Vec<String>,
    /// URI names of the `subjectAltName`, the SPIFFE ID among them.
    pub uris: Vec<String>,
    /// The first `spiffe://` URI name: the workload's SPIFFE ID (an SVID
    /// carries exactly one).
    pub spiffe_id: Option<String>,
    /// SHA-256 of the certificate's DER: Envoy's `Hash` in
    /// `x-forwarded-client-cert`.
    pub sha256: [u8; 32],
}

/// The verified client certificate of the connection a request came on: a
/// request extension, one allocation per connection.
#[derive(Debug, Clone)]
pub struct PeerCert(pub Arc<ClientCert>);

/// `subjectAltName`, 2.5.29.17.
const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];

impl ClientCert {
    /// Reads the subject and the DNS and URI names of a certificate (RFC
    /// 5280 4.1); rustls has verified it, so only the structure is walked.
    pub fn from_der(der: &[u8]) -> Result<ClientCert, &'static str> {
        let (cert, _) = expect(der, SEQUENCE)?;
        let (mut tbs, _) = expect(cert, SEQUENCE)?;
        if let Some((0xa0, _, rest)) = tlv(tbs) {
            tbs = rest;
        }
        let (_serial, tbs) = expect(tbs, 0x02)?;
        let (_signature, tbs) = expect(tbs, SEQUENCE)?;
        let (_issuer, tbs) = expect(tbs, SEQUENCE)?;
        let (_validity, tbs) = expect(tbs, SEQUENCE)?;
        let (subject, tbs) = expect(tbs, SEQUENCE)?;
        let (_spki, mut tbs) = expect(tbs, SEQUENCE)?;
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref());
        let mut out = ClientCert {
            subject: rfc4514(subject)?,
            sha256,
            ..ClientCert::default()
        };
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
                let ext = match tlv(ext) {
                    Some((0x01, _, rest)) => rest,
                    _ => ext,
                };
                let (value, _) = expect(ext, 0x04)?;
                let (mut names, _) = expect(value, SEQUENCE)?;
                while let Some((tag, name, rest)) = tlv(names) {
                    names = rest;
                    let text = || std::str::from_utf8(name).map_err(|_| "a name is not text");
                    match tag {
                        // dNSName [2] and uniformResourceIdentifier [6], IA5String
                        0x82 => out.dns.push(text()?.to_ascii_lowercase()),
                        0x86 => out.uris.push(text()?.to_owned()),
                        _ => {}
                    }
                }
            }
        }
        out.spiffe_id = out
            .uris
            .iter()
            .find(|u| u.len() > 9 && u[..9].eq_ignore_ascii_case("spiffe://"))
            .cloned();
        Ok(out)
    }
}

/// An X.501 Name as RFC 4514 writes it: the last RDN first, attributes by
/// their short names (dotted OIDs and `#hex` values for the rest),
/// specials escaped.
fn rfc4514(mut name: &[u8]) -> Result<String, &'static str> {
    let mut rdns = Vec::new();
    while !name.is_empty() {
        let (set, rest) = expect(name, 0x31)?;
        name = rest;
        let mut atvs = Vec::new();
        let mut set = set;
        while !set.is_empty() {
            let (atv, rest) = expect(set, SEQUENCE)?;
            set = rest;
            let (oid, atv) = expect(atv, 0x06)?;
            let (tag, value, _) = tlv(atv).ok_or("an attribute has no value")?;
            let key = match attribute_name(oid) {
                Some(k) => k.to_owned(),
                None => dotted(oid),
            };
            let value = match string_value(tag, value) {
                Some(v) if attribute_name(oid).is_some() => escape(&v),
                _ => {
                    // The whole DER element, as RFC 4514 2.4 has it.
                    let whole = &atv[..atv.len() - tlv(atv).map_or(0, |(_, _, r)| r.len())];
                    let hex: String = whole.iter().map(|b| format!("{b:02x}")).collect();
                    format!("#{hex}")
                }
            };
            atvs.push(format!("{key}={value}"));
        }
        rdns.push(atvs.join("+"));
    }
    rdns.reverse();
    Ok(rdns.join(","))
}

/// The short names RFC 4514 3 lists, and the few others certificates use.
fn attribute_name(oid: &[u8]) -> Option<&'static str> {
    Some(match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x05] => "serialNumber",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "ST",
        [0x55, 0x04, 0x09] => "STREET",
        [0x55, 0x04, 0x0a] => "O",
        [0x55, 0x04, 0x0b] => "OU",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID",
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "emailAddress",
        _ => return None,
    })
}

/// An OID in dotted-decimal form.
fn dotted(oid: &[u8]) -> String {
    let mut parts: Vec<u64> = Vec::new();
    let mut acc: u64 = 0;
    for &b in oid {
        acc = (acc << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if parts.is_empty() {
                let first = (acc / 40).min(2);
                parts.push(first);
                parts.push(acc - first * 40);
            } else {
                parts.push(acc);
            }
            acc = 0;
        }
    }
    parts
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// The text of a DirectoryString (or IA5String), None for other types.
fn string_value(tag: u8, value: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String
        0x0c | 0x13 | 0x16 => std::str::from_utf8(value).ok().map(str::to_owned),
        // TeletexString: Latin-1 in practice
        0x14 => Some(value.iter().map(|&b| char::from(b)).collect()),
        // BMPString: UTF-16BE
        0x1e if value.len().is_multiple_of(2) => {
            let units: Vec<u16> = value
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

impl ClientCert {
    /// One element of Envoy's `x-forwarded-client-cert`:
    /// `Hash=<hex>;Subject="<subject>";URI=<uri>;DNS=<name>`, a `URI=` and
    /// `DNS=` pair per name, values with `,`, `;`, `=` or `"` quoted.
    pub fn xfcc(&self) -> String {
        let mut out = String::from("Hash=");
        for b in self.sha256 {
            out.push_str(&format!("{b:02x}"));
        }
        out.push_str(";Subject=");
        out.push_str(&xfcc_quoted(&self.subject));
        for u in &self.uris {
            out.push_str(";URI=");
            out.push_str(&xfcc_value(u));
        }
        for d in &self.dns {
            out.push_str(";DNS=");
            out.push_str(&xfcc_value(d));
        }
        out
    }
}

/// A value quoted, `"` and `\` escaped.
fn xfcc_quoted(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A value as is, or quoted when it holds a separator.
fn xfcc_value(v: &str) -> String {
    if v.contains([',', ';', '=', '"']) {
        xfcc_quoted(v)
    } else {
        v.to_owned()
    }
}

/// RFC 4514 2.4: `,+"\<>;` escaped anywhere, `#` and space at the start,
/// space at the end, control characters as `\hh`.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\{b:02x}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// A part of the certificate a route may forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Subject,
    SpiffeId,
    Dns,
    Uri,
    /// All of it in Envoy's `x-forwarded-client-cert` form.
    Xfcc,
}

impl Part {
    pub fn as_str(self) -> &'static str {
        match self {
            Part::Subject => "subject",
            Part::SpiffeId => "spiffe_id",
            Part::Dns => "dns",
            Part::Uri => "uri",
            Part::Xfcc => "xfcc",
        }
    }

    pub fn parse(s: &str) -> Result<Part, String> {
        match s.trim() {
            "subject" => Ok(Part::Subject),
            "spiffe_id" => Ok(Part::SpiffeId),
            "dns" => Ok(Part::Dns),
            "uri" => Ok(Part::Uri),
            "xfcc" => Ok(Part::Xfcc),
            other => Err(format!(
                "\"{other}\" is not a part of a client certificate; use \"subject\", \"spiffe_id\", \"dns\", \"uri\" or \"xfcc\""
            )),
        }
    }

    /// The header the part travels in (`grpc-metadata-` makes it metadata).
    fn header(self) -> HeaderName {
        HeaderName::from_static(match self {
            Part::Subject => "grpc-metadata-x-client-cert-subject",
            Part::SpiffeId => "grpc-metadata-x-client-cert-spiffe-id",
            Part::Dns => "grpc-metadata-x-client-cert-dns",
            Part::Uri => "grpc-metadata-x-client-cert-uri",
            Part::Xfcc => "grpc-metadata-x-forwarded-client-cert",
        })
    }
}

/// The metadata prefix reserved for the client certificate: a client
/// cannot send `x-client-cert-subject` and have the backend believe it.
const PREFIX: &str = "x-client-cert-";
const METADATA_PREFIX: &str = "grpc-metadata-x-client-cert-";

/// Whether a request header claims to be the gateway's certificate metadata.
pub fn is_forged(name: &str) -> bool {
    name.starts_with(PREFIX)
        || name.starts_with(METADATA_PREFIX)
        || name == "x-forwarded-client-cert"
        || name == "grpc-metadata-x-forwarded-client-cert"
}

/// One `client_cert_allow` entry: the exact text, or a prefix before `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    prefix: bool,
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Pattern, String> {
        let (text, prefix) = match s.strip_suffix('*') {
            Some(p) => (p, true),
            None => (s, false),
        };
        if text.is_empty() {
            return Err("an empty entry would allow every certificate; leave client_cert_allow out for that".to_owned());
        }
        if text.contains('*') {
            return Err(format!(
                "\"{s}\": `*` may only end an entry (a prefix, e.g. \"spiffe://example.org/ns/web/*\")"
            ));
        }
        Ok(Pattern {
            text: text.to_owned(),
            prefix,
        })
    }

    /// The entry as written.
    pub fn text(&self) -> String {
        if self.prefix {
            format!("{}*", self.text)
        } else {
            self.text.clone()
        }
    }

    fn matches(&self, candidate: &str) -> bool {
        if self.prefix {
            candidate.starts_with(&self.text)
        } else {
            candidate == self.text
        }
    }
}

/// A route's use of the client certificate, compiled.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientCertPolicy {
    /// `client_cert = "required"`.
    pub required: bool,
    /// `client_cert_allow`; empty allows every verified certificate.
    pub allow: Vec<Pattern>,
    /// `forward_client_cert`.
    pub forward: Vec<Part>,
}

impl ClientCertPolicy {
    /// Whether the route looks at the certificate at all (its layer can
    /// step aside otherwise).
    pub fn active(&self) -> bool {
        self.required || !self.forward.is_empty()
    }

    /// Whether `c` is one the route accepts: any allow-list entry matches
    /// its SPIFFE ID, a URI or DNS name, or its subject.
    pub fn allows(&self, c: &ClientCert) -> bool {
        self.allow.is_empty()
            || self.allow.iter().any(|p| {
                c.uris.iter().any(|u| p.matches(u))
                    || c.dns.iter().any(|d| p.matches(d))
                    || p.matches(&c.subject)
            })
    }

    /// Puts the forwarded parts of `c` on the request as metadata. A value
    /// that cannot be a header (a control character in a subject) is left out.
    pub fn forward_into(&self, c: &ClientCert, headers: &mut HeaderMap) {
        for part in &self.forward {
            let value = match part {
                Part::Subject => Some(c.subject.clone()),
                Part::SpiffeId => c.spiffe_id.clone(),
                Part::Dns => (!c.dns.is_empty()).then(|| c.dns.join(",")),
                Part::Uri => (!c.uris.is_empty()).then(|| c.uris.join(",")),
                Part::Xfcc => Some(c.xfcc()),
            };
            if let Some(v) = value.and_then(|v| HeaderValue::try_from(v).ok()) {
                headers.insert(part.header(), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert() -> ClientCert {
        ClientCert {
            subject: "CN=web,O=Example".to_owned(),
            dns: vec!["web.internal".to_owned()],
            uris: vec!["spiffe://example.org/ns/web/sa/api".to_owned()],
            spiffe_id: Some("spiffe://example.org/ns/web/sa/api".to_owned()),
            sha256: [0; 32],
        }
    }

    #[test]
    fn allow_lists_match_spiffe_ids_names_and_subjects() {
        let policy = |entries: &[&str]| ClientCertPolicy {
            allow: entries.iter().map(|e| Pattern::parse(e).unwrap()).collect(),
            ..ClientCertPolicy::default()
        };
        assert!(policy(&[]).allows(&cert()));
        assert!(policy(&["spiffe://example.org/ns/web/*"]).allows(&cert()));
        assert!(!policy(&["spiffe://example.org/ns/db/*"]).allows(&cert()));
        assert!(policy(&["web.internal"]).allows(&cert()));
        assert!(!policy(&["web.intern"]).allows(&cert()));
        assert!(policy(&["CN=web,O=Example"]).allows(&cert()));
        assert!(Pattern::parse("*").is_err());
        assert!(Pattern::parse("spiffe://*/web").is_err());
    }

    #[test]
    fn forwarded_parts_become_metadata() {
        let policy = ClientCertPolicy {
            forward: vec![Part::Subject, Part::SpiffeId, Part::Dns],
            ..ClientCertPolicy::default()
        };
        let mut h = HeaderMap::new();
        policy.forward_into(&cert(), &mut h);
        assert_eq!(h["grpc-metadata-x-client-cert-subject"], "CN=web,O=Example");
        assert_eq!(
            h["grpc-metadata-x-client-cert-spiffe-id"],
            "spiffe://example.org/ns/web/sa/api"
        );
        assert_eq!(h["grpc-metadata-x-client-cert-dns"], "web.internal");
        assert!(!h.contains_key("grpc-metadata-x-client-cert-uri"));
        assert!(is_forged("x-client-cert-subject"));
        assert!(is_forged("grpc-metadata-x-client-cert-dns"));
        assert!(!is_forged("x-client-id"));
    }

    /// Made by `openssl req -x509 -multivalue-rdn -subj "/C=US/O=Example,
    /// Inc/OU=edge+CN=web" -addext "subjectAltName=DNS:web.internal,
    /// URI:spiffe://example.org/ns/web/sa/api,IP:10.0.0.1,email:a@b.c"`
    /// (a certificate only; its key was thrown away).
    const OPENSSL_CERT: &str = r"-----BEGIN CERTIFICATE-----
MIICHzCCAcWgAwIBAgIUGBqviQvEGRPW6jBRQdbOITF4VpkwCgYIKoZIzj0EAwIw
PzELMAkGA1UEBhMCVVMxFTATBgNVBAoMDEV4YW1wbGUsIEluYzEZMAoGA1UEAwwD
d2ViMAsGA1UECwwEZWRnZTAeFw0yNjEyMDcwMzEwMzBaFw0zNjEyMDQwMzEwMzBa
MD8xCzAJBgNVBAYTAlVTMRUwEwYDVQQKDAxFeGFtcGxlLCBJbmMxGTAKBgNVBAMM
A3dlYjALBgNVBAsMBGVkZ2UwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAT9+VgR
tTVVejbgxnLLwkN7vP3fO70biW2LsUug8DOwazDrxlDPYnGTVlXbu6I8Du/WgBCS
0OFvOVgVIdS/hpOMo4GeMIGbMB0GA1UdDgQWBBQ2kBne0ZMmGYZJuyaa0lG3cWfk
YjAfBgNVHSMEGDAWgBQ2kBne0ZMmGYZJuyaa0lG3cWfkYjAPBgNVHRMBAf8EBTAD
AQH/MEgGA1UdEQRBMD+CDHdlYi5pbnRlcm5hbIYic3BpZmZlOi8vZXhhbXBsZS5v
cmcvbnMvd2ViL3NhL2FwaYcECgAAAYEFYUBiLmMwCgYIKoZIzj0EAwIDSAAwRQIh
APMY5EF2iKuHvvcnKwqMpeT9hew1H1d1ntMuN0pRvoRGAiAHJb7zhz2CVSPdu0Sc
5jKrJwDPLwDAD29rMb78c29AXA==
-----END CERTIFICATE-----";

    #[test]
    fn an_openssl_certificate_is_read_like_openssl_prints_it() {
        use rustls::pki_types::pem::PemObject as _;
        let der =
            rustls::pki_types::CertificateDer::from_pem_slice(OPENSSL_CERT.as_bytes()).unwrap();
        let c = ClientCert::from_der(&der).unwrap();
        // `openssl x509 -subject -nameopt RFC2253` prints
        // `OU=edge+CN=web,O=Example\, Inc,C=US`: the values of a
        // multi-valued RDN come in their DER (sorted) order here, which RFC
        // 4514 leaves open.
        assert_eq!(c.subject, "CN=web+OU=edge,O=Example\\, Inc,C=US");
        assert_eq!(c.dns, ["web.internal"]);
        assert_eq!(c.uris, ["spiffe://example.org/ns/web/sa/api"]);
        assert_eq!(
            c.spiffe_id.as_deref(),
            Some("spiffe://example.org/ns/web/sa/api")
        );
        assert!(ClientCert::from_der(&der[..der.len() / 2]).is_err());
        // openssl x509 -noout -fingerprint -sha256, without the colons.
        let hash = "5dba1bf5660091dffe0a9ed198406e642ec8c0c82a5ca1025ea12410ef503221";
        assert_eq!(
            c.xfcc(),
            format!("Hash={hash};Subject=\"CN=web+OU=edge,O=Example\\\\, Inc,C=US\";URI=spiffe://example.org/ns/web/sa/api;DNS=web.internal")
        );
    }

    #[test]
    fn subjects_are_written_as_rfc_4514_has_them() {
        assert_eq!(escape("a,b"), "a\\,b");
        assert_eq!(escape(" #x "), "\\ #x\\ ");
        assert_eq!(escape("#x"), "\\#x");
        assert_eq!(
            dotted(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d]),
            "1.2.840.113549"
        );
        // C=US, O=Example, CN=web: printed last RDN first.
        let atv = |oid: &[u8], v: &str| {
            let mut inner = vec![0x06, oid.len() as u8];
            inner.extend_from_slice(oid);
            inner.extend_from_slice(&[0x0c, v.len() as u8]);
            inner.extend_from_slice(v.as_bytes());
            let mut seq = vec![SEQUENCE, inner.len() as u8];
            seq.extend(inner);
            let mut set = vec![0x31, seq.len() as u8];
            set.extend(seq);
            set
        };
        let mut name = atv(&[0x55, 4, 6], "US");
        name.extend(atv(&[0x55, 4, 10], "Example, Inc"));
        name.extend(atv(&[0x55, 4, 3], "web"));
        assert_eq!(rfc4514(&name).unwrap(), "CN=web,O=Example\\, Inc,C=US");
        let odd = atv(&[0x2b, 6, 1], "x");
        assert_eq!(rfc4514(&odd).unwrap(), "1.3.6.1=#0c0178");
    }
}
