//! Picking an endpoint for one attempt. Lock-free: a shared counter for the
//! rotating policies, per-thread randomness for the others, and the
//! precomputed ring or weight sums of the [`EndpointSet`].
//!
//! Every policy picks among endpoints in rotation (see [`Rotation`]) that
//! this request has not tried yet; when all of those were tried, it picks
//! among the ones in rotation again. When a policy's choice is out of
//! rotation, its share goes to the others evenly, not to the next one in
//! the list (which would double that neighbour's load).
//!
//! When no endpoint is in rotation at all, the pick is among all of them
//! (Envoy's "panic" mode): a backend whose instances are all ejected or all
//! failing health checks is more likely to answer than a refusal is, and the
//! registry still vouches for every one of them.

use std::cell::Cell;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::{HeaderMap, HeaderName};
use tonic::metadata::MetadataMap;

use super::endpoint::{Endpoint, HEALTH_NOT_SERVING};
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

/// Which endpoints of a set are in rotation at one instant: not failing
/// active health checks, and not ejected, except that ejections beyond
/// `max_ejection_percent` of the set do not count. Ejection checks the cap,
/// but the set can shrink afterwards (discovery removed the others) or the
/// cap change on a reload; the ejections that end soonest are the ones
/// lifted, so the cap holds whenever a pick is made.
pub(crate) struct Rotation<'a> {
    set: &'a EndpointSet,
    now: u64,
    max_ejection_percent: u32,
    /// Computed on the first ejected endpoint met (none: nothing to compute
    /// on the common path): the largest `(ejected_until, index)` of an
    /// ejection the cap lifts, `None` when the cap lifts none.
    lifted: Cell<Option<Option<(u64, usize)>>>,
}

impl<'a> Rotation<'a> {
    pub(crate) fn new(set: &'a EndpointSet, now: u64, max_ejection_percent: u32) -> Rotation<'a> {
        Rotation {
            set,
            now,
            max_ejection_percent,
            lifted: Cell::new(None),
        }
    }

    pub(crate) fn contains(&self, i: usize) -> bool {
        let st = &self.set.endpoints[i].state;
        if st.health.load(Ordering::Relaxed) == HEALTH_NOT_SERVING {
            return false;
        }
        let until = st.ejected_until.load(Ordering::Relaxed);
        self.now >= until || self.lifted_key().is_some_and(|last| (until, i) <= last)
    }

    /// Whether the cap lifts this endpoint's ejection (it is ejected, and in rotation anyway).
    pub(crate) fn ejection_lifted(&self, i: usize) -> bool {
        let until = self.set.endpoints[i]
            .state
            .ejected_until
            .load(Ordering::Relaxed);
        self.now < until && self.lifted_key().is_some_and(|last| (until, i) <= last)
    }

    /// Whether no endpoint is in rotation (and a pick is in panic mode).
    pub(crate) fn is_empty(&self) -> bool {
        !(0..self.set.len()).any(|i| self.contains(i))
    }

    fn lifted_key(&self) -> Option<(u64, usize)> {
        if let Some(known) = self.lifted.get() {
            return known;
        }
        // Rare (ejections are in force): allocating here is fine.
        let mut ejected: Vec<(u64, usize)> = self
            .set
            .endpoints
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let until = e.state.ejected_until.load(Ordering::Relaxed);
                (until > self.now).then_some((until, i))
            })
            .collect();
        let allowed = self.set.len() * self.max_ejection_percent as usize / 100;
        let excess = ejected.len().saturating_sub(allowed);
        let key = (excess > 0).then(|| *ejected.select_nth_unstable(excess - 1).1);
        self.lifted.set(Some(key));
        key
    }
}

/// An endpoint for one attempt.
pub(crate) struct Picked {
    pub(crate) endpoint: Arc<Endpoint>,
    /// No endpoint was in rotation: picked among all of them.
    pub(crate) panic: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Balancer {
    pub(crate) policy: Policy,
    max_ejection_percent: u32,
    next: AtomicUsize,
}

impl Balancer {
    pub(crate) fn new(policy: Policy, max_ejection_percent: u32) -> Balancer {
        Balancer {
            policy,
            max_ejection_percent,
            next: AtomicUsize::new(0),
        }
    }

    /// Picks for one attempt. `tried` holds the endpoints this request used
    /// already (as `Arc::as_ptr` addresses); `key` is the consistent-hash
    /// key, if any. `None` only for an empty set.
    pub(crate) fn pick(
        &self,
        set: &EndpointSet,
        key: Option<u64>,
        tried: &[usize],
        now: u64,
    ) -> Option<Picked> {
        if set.is_empty() {
            return None;
        }
        let rotation = Rotation::new(set, now, self.max_ejection_percent);
        let untried = |i: usize| !tried.contains(&(Arc::as_ptr(&set.endpoints[i]) as usize));
        let fresh = |i: usize| rotation.contains(i) && untried(i);
        let any = |i: usize| rotation.contains(i);
        let found = |i: usize, panic: bool| Picked {
            endpoint: set.endpoints[i].clone(),
            panic,
        };
        // One turn per pick, however many filters it takes: a pick that
        // advanced the counter twice would always land on the same parity.
        let turn = match self.policy {
            Policy::RoundRobin | Policy::Weighted | Policy::ConsistentHash => {
                self.next.fetch_add(1, Ordering::Relaxed)
            }
            Policy::Random | Policy::LeastRequest => 0,
        };
        let with = |ok: &dyn Fn(usize) -> bool| self.pick_with(set, key, turn, ok);
        let in_rotation = if tried.is_empty() {
            with(&any)
        } else {
            with(&fresh).or_else(|| with(&any))
        };
        if let Some(i) = in_rotation {
            return Some(found(i, false));
        }
        with(&untried)
            .or_else(|| with(&|_| true))
            .map(|i| found(i, true))
    }

    /// One policy's choice among the endpoints `ok` allows; `turn` is this
    /// pick's position in the rotating policies' sequence.
    fn pick_with(
        &self,
        set: &EndpointSet,
        key: Option<u64>,
        turn: usize,
        ok: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = set.len();
        // The policy's choice if it may be used, else an even share of the
        // others: the `turn`-th of those that may, counted round.
        let or_spread = |choice: usize, turn: usize| {
            if ok(choice) {
                Some(choice)
            } else {
                nth_allowed(n, turn, ok)
            }
        };
        let random = || or_spread(rng::below(n), rng::next_u64() as usize);
        // A full round of `n` turns takes each slot once, so a slot that is
        // out hands its turns to the others in order, round after round.
        let round_robin = || or_spread(turn % n, turn / n);
        match self.policy {
            Policy::RoundRobin => round_robin(),
            Policy::Random => random(),
            Policy::LeastRequest => {
                let a = random()?;
                if n == 1 {
                    return Some(a);
                }
                let b = random()?;
                let load = |i: usize| set.endpoints[i].in_flight();
                Some(if load(b) < load(a) { b } else { a })
            }
            Policy::Weighted => {
                let total = *set.cumulative.last()?;
                let point = ((turn as f64 * GOLDEN).fract() * total as f64) as u64;
                let start = set.cumulative.partition_point(|&cum| cum <= point);
                let choice = start.min(n - 1);
                if ok(choice) {
                    Some(choice)
                } else {
                    weighted_allowed(set, ok)
                }
            }
            Policy::ConsistentHash => match key {
                // The ring's next point: an endpoint's many points spread
                // its keys over all the others.
                Some(key) if !set.ring.is_empty() => {
                    let ring = &set.ring;
                    let start = ring.partition_point(|&(p, _)| p < key);
                    (0..ring.len())
                        .map(|k| ring[(start + k) % ring.len()].1 as usize)
                        .find(|&i| ok(i))
                }
                _ => round_robin(),
            },
        }
    }
}

/// The `turn % m`-th of the `m` endpoints `ok` allows, if any.
fn nth_allowed(n: usize, turn: usize, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
    let m = (0..n).filter(|&i| ok(i)).count();
    if m == 0 {
        return None;
    }
    (0..n).filter(|&i| ok(i)).nth(turn % m)
}

/// One of the endpoints `ok` allows, in proportion to their weights.
fn weighted_allowed(set: &EndpointSet, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
    let total: u64 = (0..set.len())
        .filter(|&i| ok(i))
        .map(|i| u64::from(set.weights[i]))
        .sum();
    if total == 0 {
        return None;
    }
    let mut point = rng::next_u64() % total;
    for i in (0..set.len()).filter(|&i| ok(i)) {
        let w = u64::from(set.weights[i]);
        if point < w {
            return Some(i);
        }
        point -= w;
    }
    None
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
            SourceKind::new("test"),
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
            let ep = b.pick(set, key(i), &[], 0).unwrap().endpoint;
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
        let b = Balancer::new(Policy::RoundRobin, 50);
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
            let b = Balancer::new(policy, 50);
            for _ in 0..20 {
                let first = b.pick(&set, None, &[], 0).unwrap().endpoint;
                let second = b
                    .pick(&set, None, &[Arc::as_ptr(&first) as usize], 0)
                    .unwrap()
                    .endpoint;
                assert_ne!(first.addr, second.addr, "{policy:?}");
            }
        }
        // With one endpoint left, the retry uses it again.
        let b = Balancer::new(Policy::RoundRobin, 50);
        set.endpoints[1]
            .state
            .ejected_until
            .store(u64::MAX, Ordering::Relaxed);
        let first = b.pick(&set, None, &[], 0).unwrap().endpoint;
        let again = b
            .pick(&set, None, &[Arc::as_ptr(&first) as usize], 0)
            .unwrap()
            .endpoint;
        assert_eq!(first.addr, again.addr);
    }

    #[tokio::test]
    async fn weighted_follows_the_weights() {
        let p = pool(&[("127.0.0.1:1", 1), ("127.0.0.1:2", 3)], false);
        let set = p.current();
        let b = Balancer::new(Policy::Weighted, 50);
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
        let b = Balancer::new(Policy::LeastRequest, 50);
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
        let b = Balancer::new(Policy::ConsistentHash, 50);
        let keys = 10_000;
        let mut moved = 0;
        for k in 0..keys {
            let key = Some(rng::stable_hash(format!("user-{k}").as_bytes()));
            let a = b.pick(&four.current(), key, &[], 0).unwrap().endpoint;
            let c = b.pick(&five.current(), key, &[], 0).unwrap().endpoint;
            // Same key, same set: same endpoint.
            let again = b.pick(&four.current(), key, &[], 0).unwrap().endpoint;
            assert_eq!(a.addr, again.addr);
            if a.addr != c.addr {
                assert_eq!(c.addr, "127.0.0.1:5", "a key moved between old endpoints");
                moved += 1;
            }
        }
        let share = moved as f64 / keys as f64;
        assert!((0.12..0.28).contains(&share), "moved {share}");
    }

    #[tokio::test]
    async fn an_ejected_endpoints_share_is_spread_evenly() {
        let p = pool(
            &[
                ("127.0.0.1:1", 1),
                ("127.0.0.1:2", 1),
                ("127.0.0.1:3", 1),
                ("127.0.0.1:4", 1),
            ],
            false,
        );
        let set = p.current();
        set.endpoints[1]
            .state
            .ejected_until
            .store(u64::MAX, Ordering::Relaxed);
        for policy in [Policy::RoundRobin, Policy::Random, Policy::Weighted] {
            let b = Balancer::new(policy, 50);
            let c = counts(&b, &set, 6000, |_| None);
            assert_eq!(c.get("127.0.0.1:2"), None, "{policy:?}: {c:?}");
            for addr in ["127.0.0.1:1", "127.0.0.1:3", "127.0.0.1:4"] {
                let share = c[addr] as f64 / 6000.0;
                assert!((share - 1.0 / 3.0).abs() < 0.03, "{policy:?}: {c:?}");
            }
        }
        // Round robin is exact: 2,000 each, not 1,500 / 3,000 / 1,500.
        let b = Balancer::new(Policy::RoundRobin, 50);
        let c = counts(&b, &set, 6000, |_| None);
        assert!(c.values().all(|&n| n == 2000), "{c:?}");
    }

    #[tokio::test]
    async fn ejections_beyond_the_cap_are_lifted_soonest_ending_first() {
        let p = pool(
            &[("127.0.0.1:1", 1), ("127.0.0.1:2", 1), ("127.0.0.1:3", 1)],
            false,
        );
        let set = p.current();
        // Two of three ejected, as after the set shrank: the cap (50% of 3
        // is 1) lifts the one whose ejection ends first.
        set.endpoints[0]
            .state
            .ejected_until
            .store(5_000, Ordering::Relaxed);
        set.endpoints[1]
            .state
            .ejected_until
            .store(9_000, Ordering::Relaxed);
        let r = Rotation::new(&set, 1_000, 50);
        assert!(r.contains(0) && r.ejection_lifted(0));
        assert!(!r.contains(1));
        assert!(r.contains(2) && !r.ejection_lifted(2));
        // With 100% allowed, both stay out.
        let r = Rotation::new(&set, 1_000, 100);
        assert!(!r.contains(0) && !r.contains(1));
    }

    #[tokio::test]
    async fn with_nothing_in_rotation_the_pick_panics_to_all_endpoints() {
        let p = pool(&[("127.0.0.1:1", 1), ("127.0.0.1:2", 1)], false);
        let set = p.current();
        for ep in &set.endpoints {
            ep.state.ejected_until.store(u64::MAX, Ordering::Relaxed);
        }
        let b = Balancer::new(Policy::RoundRobin, 100);
        assert!(Rotation::new(&set, 0, 100).is_empty());
        let first = b.pick(&set, None, &[], 0).unwrap();
        assert!(first.panic);
        // A retry still goes to the other one.
        let second = b
            .pick(&set, None, &[Arc::as_ptr(&first.endpoint) as usize], 0)
            .unwrap();
        assert!(second.panic);
        assert_ne!(first.endpoint.addr, second.endpoint.addr);
        // Panic-mode picks still take turns.
        let c = counts(&b, &set, 100, |_| None);
        assert!(c.values().all(|&n| n == 50), "{c:?}");
        // Back in rotation: no panic.
        set.endpoints[0]
            .state
            .ejected_until
            .store(0, Ordering::Relaxed);
        assert!(!b.pick(&set, None, &[], 0).unwrap().panic);
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
