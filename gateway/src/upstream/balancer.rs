//! Picking an endpoint for one attempt. Lock-free: a shared counter for the
//! rotating policies, per-thread randomness for the others, and the
//! precomputed ring or weight sums of the [`EndpointSet`].
//!
//! Every policy picks among endpoints in rotation (not ejected, not failing
//! health checks) that this request has not tried yet; when all of those
//! were tried, it picks among the ones in rotation again.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::{HeaderMap, HeaderName};
use tonic::metadata::MetadataMap;

use super::endpoint::Endpoint;
use super::pool::EndpointSet;
use super::rng;

/// How a backend spreads calls over its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    #[default]
    RoundRobin,
    Random,
    /// Power of two choices: two random endpoints, the one with fewer calls in flight.
    LeastRequest,
    /// In proportion to each endpoint's weight (Consul's `Weights`).
    Weighted,
    /// The same key goes to the same endpoint; see [`HashKey`].
    ConsistentHash,
}

impl Policy {
    pub const NAMES: &'static str = "round_robin, random, least_request, weighted, consistent_hash";

    pub fn parse(s: &str) -> Option<Policy> {
        Some(match s {
            "round_robin" => Policy::RoundRobin,
            "random" => Policy::Random,
            "least_request" => Policy::LeastRequest,
            "weighted" => Policy::Weighted,
            "consistent_hash" => Policy::ConsistentHash,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::Random => "random",
            Policy::LeastRequest => "least_request",
            Policy::Weighted => "weighted",
            Policy::ConsistentHash => "consistent_hash",
        }
    }
}

/// What `consistent_hash` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// A request header; requests without it are spread round robin.
    Header(HeaderName),
    /// A JWT claim, read from the gRPC metadata `x-jwt-<claim>`: the edge's
    /// JWT layer sets it from a verified token for the claims a route
    /// forwards, and drops any a client sends. Without it (no token, or the
    /// claim not forwarded) the client IP is used.
    Claim {
        claim: String,
        /// `x-jwt-<claim>`, precomputed.
        metadata_key: String,
    },
    /// The client's address (see [`client_ip`](super::client_ip)).
    ClientIp,
}

impl HashKey {
    pub fn claim(claim: &str) -> HashKey {
        HashKey::Claim {
            claim: claim.to_owned(),
            metadata_key: format!("x-jwt-{}", claim.to_ascii_lowercase()),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            HashKey::Header(h) => format!("header {h}"),
            HashKey::Claim { claim, .. } => format!("claim {claim}"),
            HashKey::ClientIp => "client ip".into(),
        }
    }

    /// The request's hash, if it has the key.
    pub(crate) fn hash(
        &self,
        headers: &HeaderMap,
        metadata: &MetadataMap,
        client_ip: Option<IpAddr>,
    ) -> Option<u64> {
        let ip = || {
            client_ip.map(|ip| match ip {
                IpAddr::V4(v4) => rng::stable_hash(&v4.octets()),
                IpAddr::V6(v6) => rng::stable_hash(&v6.octets()),
            })
        };
        match self {
            HashKey::Header(h) => headers.get(h).map(|v| rng::stable_hash(v.as_bytes())),
            HashKey::Claim { metadata_key, .. } => metadata
                .get(metadata_key.as_str())
                .map(|v| rng::stable_hash(v.as_bytes()))
                .or_else(ip),
            HashKey::ClientIp => ip(),
        }
    }
}

/// The 1/φ Weyl sequence: consecutive counters land far apart in [0, 1),
/// so the weighted policy interleaves endpoints instead of sending bursts.
const GOLDEN: f64 = 0.618_033_988_749_894_9;

#[derive(Debug, Default)]
pub(crate) struct Balancer {
    pub(crate) policy: Policy,
    next: AtomicUsize,
}

impl Balancer {
    pub(crate) fn new(policy: Policy) -> Balancer {
        Balancer {
            policy,
            next: AtomicUsize::new(0),
        }
    }

    /// Picks for one attempt. `tried` holds the endpoints this request used
    /// already (as `Arc::as_ptr` addresses); `key` is the consistent-hash key, if any.
    pub(crate) fn pick(
        &self,
        set: &EndpointSet,
        key: Option<u64>,
        tried: &[usize],
        now: u64,
    ) -> Option<Arc<Endpoint>> {
        if set.is_empty() {
            return None;
        }
        let fresh = |i: usize| {
            let ep = &set.endpoints[i];
            ep.available(now) && !tried.contains(&(Arc::as_ptr(ep) as usize))
        };
        let any = |i: usize| set.endpoints[i].available(now);
        self.pick_with(set, key, &fresh)
            .or_else(|| self.pick_with(set, key, &any))
            .map(|i| set.endpoints[i].clone())
    }

    fn pick_with(
        &self,
        set: &EndpointSet,
        key: Option<u64>,
        ok: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = set.len();
        let scan = |start: usize| (0..n).map(|k| (start + k) % n).find(|&i| ok(i));
        match self.policy {
            Policy::RoundRobin => scan(self.next.fetch_add(1, Ordering::Relaxed)),
            Policy::Random => scan(rng::below(n)),
            Policy::LeastRequest => {
                let a = scan(rng::below(n))?;
                if n == 1 {
                    return Some(a);
                }
                let b = scan(rng::below(n))?;
                let load = |i: usize| set.endpoints[i].in_flight();
                Some(if load(b) < load(a) { b } else { a })
            }
            Policy::Weighted => {
                let total = *set.cumulative.last()?;
                let c = self.next.fetch_add(1, Ordering::Relaxed);
                let point = ((c as f64 * GOLDEN).fract() * total as f64) as u64;
                let start = set.cumulative.partition_point(|&cum| cum <= point);
                scan(start.min(n - 1))
            }
            Policy::ConsistentHash => match key {
                Some(key) if !set.ring.is_empty() => {
                    let ring = &set.ring;
                    let start = ring.partition_point(|&(p, _)| p < key);
                    (0..ring.len())
                        .map(|k| ring[(start + k) % ring.len()].1 as usize)
                        .find(|&i| ok(i))
                }
                _ => scan(self.next.fetch_add(1, Ordering::Relaxed)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{Sink as _, Target};
    use crate::upstream::pool::{Pool, SourceKind};
    use std::collections::HashMap;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    fn pool(addrs: &[(&str, u32)], ring: bool) -> Pool {
        let pool = Pool::new(
            "b",
            SourceKind::Consul,
            "t".into(),
            None,
            Duration::from_secs(1),
            ring,
        );
        pool.shared.update(
            addrs
                .iter()
                .map(|(a, w)| Target {
                    addr: (*a).into(),
                    weight: *w,
                    label: None,
                })
                .collect(),
            None,
        );
        pool
    }

    fn counts(
        b: &Balancer,
        set: &EndpointSet,
        n: usize,
        key: impl Fn(usize) -> Option<u64>,
    ) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for i in 0..n {
            let ep = b.pick(set, key(i), &[], 0).unwrap();
            *out.entry(ep.addr.clone()).or_default() += 1;
        }
        out
    }

    #[tokio::test]
    async fn round_robin_takes_turns_and_skips_ejected() {
        let p = pool(
            &[("127.0.0.1:1", 1), ("127.0.0.1:2", 1), ("127.0.0.1:3", 1)],
            false,
        );
        let set = p.current();
        let b = Balancer::new(Policy::RoundRobin);
        let c = counts(&b, &set, 300, |_| None);
        assert!(c.values().all(|&n| n == 100), "{c:?}");
        set.endpoints[1]
            .state
            .ejected_until
            .store(u64::MAX, Ordering::Relaxed);
        let c = counts(&b, &set, 300, |_| None);
        assert_eq!(c.get("127.0.0.1:2"), None, "{c:?}");
    }

    #[tokio::test]
    async fn a_retry_goes_to_another_endpoint() {
        let p = pool(&[("127.0.0.1:1", 1), ("127.0.0.1:2", 1)], false);
        let set = p.current();
        for policy in [
            Policy::RoundRobin,
            Policy::Random,
            Policy::LeastRequest,
            Policy::Weighted,
        ] {
            let b = Balancer::new(policy);
            for _ in 0..20 {
                let first = b.pick(&set, None, &[], 0).unwrap();
                let second = b
                    .pick(&set, None, &[Arc::as_ptr(&first) as usize], 0)
                    .unwrap();
                assert_ne!(first.addr, second.addr, "{policy:?}");
            }
        }
        // With one endpoint left, the retry uses it again.
        let b = Balancer::new(Policy::RoundRobin);
        set.endpoints[1]
            .state
            .ejected_until
            .store(u64::MAX, Ordering::Relaxed);
        let first = b.pick(&set, None, &[], 0).unwrap();
        let again = b
            .pick(&set, None, &[Arc::as_ptr(&first) as usize], 0)
            .unwrap();
        assert_eq!(first.addr, again.addr);
    }

    #[tokio::test]
    async fn weighted_follows_the_weights() {
        let p = pool(&[("127.0.0.1:1", 1), ("127.0.0.1:2", 3)], false);
        let set = p.current();
        let b = Balancer::new(Policy::Weighted);
        let c = counts(&b, &set, 4000, |_| None);
        let heavy = c["127.0.0.1:2"] as f64 / 4000.0;
        assert!((heavy - 0.75).abs() < 0.02, "{c:?}");
    }

    #[tokio::test]
    async fn least_request_avoids_the_busy_endpoint() {
        let p = pool(&[("127.0.0.1:1", 1), ("127.0.0.1:2", 1)], false);
        let set = p.current();
        set.endpoints[0]
            .state
            .in_flight
            .store(50, Ordering::Relaxed);
        let b = Balancer::new(Policy::LeastRequest);
        let c = counts(&b, &set, 1000, |_| None);
        // Only a draw of the busy one twice picks it: about a quarter.
        assert!(c.get("127.0.0.1:1").copied().unwrap_or(0) < 350, "{c:?}");
    }

    #[tokio::test]
    async fn consistent_hash_moves_about_one_nth_of_keys() {
        let addrs: Vec<String> = (1..=5).map(|i| format!("127.0.0.1:{i}")).collect();
        let with = |n: usize| {
            let list: Vec<(&str, u32)> = addrs[..n].iter().map(|a| (a.as_str(), 1)).collect();
            pool(&list, true)
        };
        let four = with(4);
        let five = with(5);
        let b = Balancer::new(Policy::ConsistentHash);
        let keys = 10_000;
        let mut moved = 0;
        for k in 0..keys {
            let key = Some(rng::stable_hash(format!("user-{k}").as_bytes()));
            let a = b.pick(&four.current(), key, &[], 0).unwrap();
            let c = b.pick(&five.current(), key, &[], 0).unwrap();
            // Same key, same set: same endpoint.
            assert_eq!(a.addr, b.pick(&four.current(), key, &[], 0).unwrap().addr);
            if a.addr != c.addr {
                assert_eq!(c.addr, "127.0.0.1:5", "a key moved between old endpoints");
                moved += 1;
            }
        }
        let share = moved as f64 / keys as f64;
        assert!((0.12..0.28).contains(&share), "moved {share}");
    }

    #[test]
    fn claim_falls_back_to_client_ip() {
        let key = HashKey::claim("sub");
        let headers = HeaderMap::new();
        let mut md = MetadataMap::new();
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let by_ip = key.hash(&headers, &md, Some(ip));
        assert_eq!(by_ip, HashKey::ClientIp.hash(&headers, &md, Some(ip)));
        md.insert("x-jwt-sub", "alice".parse().unwrap());
        assert_ne!(key.hash(&headers, &md, Some(ip)), by_ip);
        assert_eq!(
            key.hash(&headers, &md, None),
            Some(rng::stable_hash(b"alice"))
        );
    }
}
