//! Active health checks with the standard gRPC health protocol
//! (`grpc.health.v1.Health/Check`, <https://github.com/grpc/grpc/blob/master/doc/health-checking.md>).
//!
//! Every `interval` each endpoint is asked about `service`; SERVING is a
//! pass, anything else (another status, an error, no answer within
//! `timeout`) a failure. `unhealthy_threshold` failures in a row take an
//! endpoint out of rotation and `healthy_threshold` passes bring it back.
//! An endpoint that just joined is checked at once; until then it is in
//! rotation (the registry vouched for it), and its first failure takes it
//! out. Registry and checks combine: an endpoint must pass both, since the
//! registry's view decides whether it is in the set at all.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use tokio::task::JoinSet;

use super::endpoint::{Endpoint, HEALTH_NOT_SERVING, HEALTH_SERVING, HEALTH_UNKNOWN};
use super::pool::PoolShared;

/// Frequent enough to notice a failure within seconds, rare enough to cost
/// nothing (Envoy and Consul's own gRPC checks use intervals of this order).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// A health check answers from memory; a second means trouble.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Two passes in a row before sending traffic back.
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
/// Three failures in a row before taking an instance out (one lost packet is not an outage).
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckSpec {
    pub interval: Duration,
    pub timeout: Duration,
    /// Sent as `HealthCheckRequest.service`; "" is the whole server.
    pub service: String,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheckSpec {
    fn default() -> Self {
        HealthCheckSpec {
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            service: String::new(),
            healthy_threshold: DEFAULT_HEALTHY_THRESHOLD,
            unhealthy_threshold: DEFAULT_UNHEALTHY_THRESHOLD,
        }
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    /// 0 UNKNOWN, 1 SERVING, 2 NOT_SERVING, 3 SERVICE_UNKNOWN.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

const SERVING: i32 = 1;

/// One check: Ok(()) when SERVING, else why not. It goes over the
/// connections that carry the endpoint's traffic (each of them, see
/// `Client::call_each`), so an instance whose traffic connection is broken
/// fails its checks even if it still accepts new connections.
pub async fn check(ep: &Endpoint, service: &str, timeout: Duration) -> Result<(), String> {
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    let reply = ep
        .call_each(
            PathAndQuery::from_static("/grpc.health.v1.Health/Check"),
            Bytes::from(prost::Message::encode_to_vec(&request)),
            timeout,
        )
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    let reply = <HealthCheckResponse as prost::Message>::decode(reply.into_inner())
        .map_err(|e| format!("the answer is not a HealthCheckResponse: {e}"))?;
    match reply.status {
        SERVING => Ok(()),
        2 => Err("NOT_SERVING".to_owned()),
        3 => Err(format!("SERVICE_UNKNOWN (no service \"{service}\")")),
        other => Err(format!("status {other}")),
    }
}

/// Applies one result to the endpoint's state, with the thresholds.
pub(crate) fn apply(
    ep: &Endpoint,
    result: &Result<(), String>,
    spec: &HealthCheckSpec,
    backend: &str,
) {
    let st = &ep.state;
    let health = st.health.load(Ordering::Relaxed);
    match result {
        Ok(()) => {
            st.check_failures.store(0, Ordering::Relaxed);
            let ok = st.check_successes.fetch_add(1, Ordering::Relaxed) + 1;
            let back = match health {
                HEALTH_UNKNOWN => true,
                HEALTH_NOT_SERVING => ok >= spec.healthy_threshold,
                _ => false,
            };
            if back {
                st.health.store(HEALTH_SERVING, Ordering::Relaxed);
                if health == HEALTH_NOT_SERVING {
                    tracing::info!(backend, upstream.addr = %ep.addr, "endpoint passes health checks again");
                }
            }
        }
        Err(why) => {
            st.check_successes.store(0, Ordering::Relaxed);
            let failed = st.check_failures.fetch_add(1, Ordering::Relaxed) + 1;
            let out = match health {
                HEALTH_UNKNOWN => true,
                HEALTH_SERVING => failed >= spec.unhealthy_threshold,
                _ => false,
            };
            if out {
                st.health.store(HEALTH_NOT_SERVING, Ordering::Relaxed);
                tracing::warn!(backend, upstream.addr = %ep.addr, error = %why, failures = failed, "endpoint fails health checks; out of rotation");
            }
        }
    }
}

/// Checks the pool's endpoints until the task is aborted: all of them every
/// `interval`, and new ones as soon as they join.
pub(crate) async fn run(pool: Arc<PoolShared>, spec: HealthCheckSpec) {
    let mut changed = pool.changed.subscribe();
    let mut next_round = tokio::time::Instant::now();
    loop {
        let full = tokio::time::Instant::now() >= next_round;
        let set = pool.set.load_full();
        let mut checks = JoinSet::new();
        for ep in &set.endpoints {
            if full || ep.state.health.load(Ordering::Relaxed) == HEALTH_UNKNOWN {
                let ep = ep.clone();
                let service = spec.service.clone();
                let timeout = spec.timeout;
                checks.spawn(async move {
                    let r = check(&ep, &service, timeout).await;
                    (ep, r)
                });
            }
        }
        drop(set);
        while let Some(done) = checks.join_next().await {
            if let Ok((ep, result)) = done {
                apply(&ep, &result, &spec, &pool.backend);
            }
        }
        if full {
            next_round = tokio::time::Instant::now() + spec.interval;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next_round) => {}
            r = changed.changed() => if r.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep() -> Endpoint {
        Endpoint::new("127.0.0.1:1", None, Duration::from_secs(1)).unwrap()
    }

    #[tokio::test]
    async fn thresholds_take_an_endpoint_out_and_bring_it_back() {
        let spec = HealthCheckSpec::default();
        let e = ep();
        let fail = Err("NOT_SERVING".to_owned());
        apply(&e, &Ok(()), &spec, "b");
        assert!(!e.failing_checks());
        apply(&e, &fail, &spec, "b");
        apply(&e, &fail, &spec, "b");
        assert!(
            !e.failing_checks(),
            "two failures are below the threshold of three"
        );
        apply(&e, &fail, &spec, "b");
        assert!(e.failing_checks());
        apply(&e, &Ok(()), &spec, "b");
        assert!(e.failing_checks(), "one pass is below the threshold of two");
        apply(&e, &Ok(()), &spec, "b");
        assert!(!e.failing_checks());
    }

    #[tokio::test]
    async fn a_new_endpoint_that_fails_its_first_check_is_out_at_once() {
        let e = ep();
        apply(&e, &Err("refused".into()), &HealthCheckSpec::default(), "b");
        assert!(e.failing_checks());
    }
}
