//! Who the client is, by address: the TCP peer, or the address a trusted
//! proxy in front of the gateway says it forwarded for.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;

/// The client address the edge settled on (after trusted proxies), in the
/// request's extensions for later stages (consistent hashing on `client_ip`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// An IP network, `10.0.0.0/8` or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("\"{s}\" is not an IP address or CIDR (e.g. \"10.0.0.0/8\")"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("\"{s}\": prefix length must be 0..={max}")),
            },
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, what a dual-stack socket
/// reports) count as the IPv4 address, so one client has one key.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// IPv6 clients are counted by their /64 by default: the smallest network a
/// site or subscriber is given (RFC 6177), inside which a host picks new
/// privacy addresses (RFC 8981) freely. Keyed per /128, one host would get
/// a fresh bucket per address.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// What rate limits count a client address as: an IPv4 address whole, an
/// IPv6 address cut to its first `ipv6_prefix` bits.
pub fn rate_limit_key(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(ipv6_prefix.min(128)))
                .unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
        v4 => v4,
    }
}

/// Which header a trusted proxy writes the client's address into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedHeader {
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=...`.
    Forwarded,
}

/// How the client address is found.
#[derive(Debug, Clone, Default)]
pub struct ClientIpPolicy {
    pub trusted: Vec<Cidr>,
    pub header: ForwardedHeader,
}

impl ClientIpPolicy {
    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }

    /// The client's address: the peer, unless the peer is a trusted proxy;
    /// then the forwarding header is read from the right (the hop nearest
    /// the gateway) and the first address not itself a trusted proxy wins.
    /// Entries left of it were written by the client and are not believed.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusted(peer) {
            return peer;
        }
        let mut hops: Vec<IpAddr> = Vec::new();
        let name = match self.header {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        };
        for value in headers.get_all(name) {
            let Ok(text) = value.to_str() else {
                // Unreadable: believe nothing from this header.
                return peer;
            };
            for item in text.split(',') {
                let parsed = match self.header {
                    ForwardedHeader::XForwardedFor => parse_addr(item),
                    ForwardedHeader::Forwarded => item
                        .split(';')
                        .filter_map(|kv| kv.split_once('='))
                        .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                        .and_then(|(_, v)| parse_addr(v)),
                };
                match parsed {
                    Some(ip) => hops.push(canonical(ip)),
                    // An unparsable hop (`unknown`, an obfuscated id) ends
                    // what can be known: everything left of it is untrusted.
                    None => hops.clear(),
                }
            }
        }
        let mut client = peer;
        for hop in hops.iter().rev() {
            client = *hop;
            if !self.trusted(*hop) {
                break;
            }
        }
        client
    }
}

/// `1.2.3.4`, `1.2.3.4:80`, `"[2001:db8::1]:80"`, `2001:db8::1`.
fn parse_addr(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    let inner = s.strip_prefix('[')?;
    let end = inner.find(']')?;
    inner[..end].parse().ok()
}

/// The policy of the client-address layer: settles [`ClientIp`] (trusted
/// proxies applied) for every request, for the layers and stages below
/// (rate limits by address, consistent hashing) and the access log.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResolveClient;

impl<S, R> tower::Service<http::Request<axum::body::Body>>
    for super::layer::Policed<S, ResolveClient, R>
where
    R: super::layer::RouteView,
    S: super::layer::Inner,
{
    type Response = http::Response<axum::body::Body>;
    type Error = std::convert::Infallible;
    type Future = super::layer::OnResponse<S::Future, Option<ClientIp>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<axum::body::Body>) -> Self::Future {
        let client = req.extensions().get::<R>().map(|view| {
            let peer = req
                .extensions()
                .get::<axum::extract::ConnectInfo<SocketAddr>>()
                .map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |p| p.0.ip());
            ClientIp(view.context().edge.client_ip.resolve(peer, req.headers()))
        });
        if let Some(c) = client {
            req.extensions_mut().insert(c);
        }
        super::layer::OnResponse::inner(self.inner.call(req), client)
    }
}

/// The access log names the client by the settled address.
impl super::layer::Annotate for ClientIp {
    fn annotate(self, resp: &mut http::Response<axum::body::Body>) {
        super::layer::info(resp).client = Some(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn policy(trusted: &[&str], header: ForwardedHeader) -> ClientIpPolicy {
        ClientIpPolicy {
            trusted: trusted.iter().map(|c| Cidr::parse(c).unwrap()).collect(),
            header,
        }
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let p = policy(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        let h = headers(&[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(
            p.resolve("192.0.2.7".parse().unwrap(), &h),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn trusted_chain_is_walked_from_the_right() {
        let p = policy(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        // The client forged "6.6.6.6"; the first proxy appended the real one.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.1.2.3")]);
        assert_eq!(
            p.resolve("10.0.0.1".parse().unwrap(), &h),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn forwarded_header_for_parameter_is_read() {
        let p = policy(&["127.0.0.1"], ForwardedHeader::Forwarded);
        let h = headers(&[(
            "forwarded",
            "for=198.51.100.1;proto=https, for=\"[2001:db8::5]:4711\"",
        )]);
        assert_eq!(
            p.resolve("127.0.0.1".parse().unwrap(), &h),
            "2001:db8::5".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn mapped_ipv6_counts_as_ipv4() {
        let c = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(c.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn rate_limit_key_cuts_ipv6_to_the_prefix_and_keeps_ipv4_whole() {
        let key = |ip: &str, prefix| rate_limit_key(ip.parse().unwrap(), prefix).to_string();
        assert_eq!(key("2001:db8:1:2:aaaa::1", 64), "2001:db8:1:2::");
        assert_eq!(
            key("2001:db8:1:2:ffff:ffff:ffff:ffff", 64),
            "2001:db8:1:2::"
        );
        assert_eq!(key("2001:db8:1:2:aaaa::1", 48), "2001:db8:1::");
        assert_eq!(key("2001:db8:1:2:aaaa::1", 128), "2001:db8:1:2:aaaa::1");
        assert_eq!(key("2001:db8:1:2:aaaa::1", 0), "::");
        assert_eq!(key("192.0.2.7", 64), "192.0.2.7");
        // A dual-stack socket's mapped IPv4 is the IPv4 address, not a /64.
        assert_eq!(key("::ffff:192.0.2.7", 64), "192.0.2.7");
    }
}
