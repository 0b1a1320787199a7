//! Retries under steady load: the per-try timeout and ejection of a slow
//! instance, transparent retries of requests that never reached an
//! instance, POSTs that may have been processed staying un-retried, and
//! one 504 message and one counter for every call that ran out of time.
//!
//! Each test runs several client tasks through the real gateway (in
//! process, over loopback) and asserts the count of failed requests; the
//! counts are printed for the record.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gateway::example::{BoxFuture, DynamicServer};
use gateway::server::Gateway;
use gateway::snapshot::Snapshot;
use gateway_tests::{
    http_client, spawn_backend, testing_descriptors, testing_pool, toml_path, write_config,
    ECHO_SERVICE,
};
use prost_reflect::{DynamicMessage, MethodDescriptor};
use tonic::{Code, Request, Response, Status};

/// An Echo instance that waits `delay` and then echoes, or answers `fail`.
async fn instance(delay: Duration, fail: Option<Code>) -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let server = DynamicServer::new(
        &testing_pool(),
        &[ECHO_SERVICE],
        move |_: &MethodDescriptor, req: Request<DynamicMessage>| {
            seen.fetch_add(1, Ordering::Relaxed);
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                match fail {
                    Some(code) => Err(Status::new(code, "the instance's own deadline passed")),
                    None => Ok(Response::new(req.into_inner())),
                }
            }) as BoxFuture<Result<Response<DynamicMessage>, Status>>
        },
    );
    (spawn_backend(server).await, calls)
}

/// How a raw HTTP/2 instance misbehaves.
#[derive(Clone, Copy)]
enum Misbehaviour {
    /// Accepts the connection and closes it before reading anything.
    CloseAtOnce,
    /// Answers every stream with RST_STREAM(REFUSED_STREAM).
    RefuseStreams,
    /// Sends GOAWAY with last stream id 0 at once: every stream the
    /// gateway opens is above it.
    GoAway,
    /// Reads one whole request, then dies (drops the connection unanswered).
    DieAfterReading,
}

/// A raw HTTP/2 instance; the counter counts connections (`CloseAtOnce`,
/// `GoAway`) or requests seen (the others).
async fn raw_instance(how: Misbehaviour) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                if let Misbehaviour::CloseAtOnce = how {
                    seen.fetch_add(1, Ordering::Relaxed);
                    drop(tcp);
                    return;
                }
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                match how {
                    Misbehaviour::GoAway => {
                        seen.fetch_add(1, Ordering::Relaxed);
                        conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                        while let Some(Ok(_)) = conn.accept().await {}
                    }
                    Misbehaviour::RefuseStreams => {
                        while let Some(Ok((_, mut respond))) = conn.accept().await {
                            seen.fetch_add(1, Ordering::Relaxed);
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                        }
                    }
                    Misbehaviour::DieAfterReading => {
                        if let Some(Ok((req, _respond))) = conn.accept().await {
                            let mut body = req.into_body();
                            let drain = async { while let Some(Ok(_)) = body.data().await {} };
                            tokio::select! {
                                () = drain => {},
                                _ = std::future::poll_fn(|cx| conn.poll_closed(cx)) => {},
                            }
                            seen.fetch_add(1, Ordering::Relaxed);
                        }
                        // Dropping `conn` closes the socket: the process died.
                    }
                    Misbehaviour::CloseAtOnce => unreachable!(),
                }
            });
        }
    });
    (addr, count)
}

struct TestGw {
    rest: SocketAddr,
    gw: Arc<Gateway>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestGw {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl TestGw {
    /// `backend` is the body of `[backends.echo]` after its timeouts.
    async fn start(backend: &str) -> TestGw {
        let config = format!(
            r#"[server]
listen = "127.0.0.1:0"
descriptors = "{descriptors}"

[backends.echo]
services = ["testing.v1.Echo"]
timeout = "1s"
connect_timeout = "500ms"
{backend}

[[routes]]
method = "GET"
path = "/v1/echo"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "POST"
path = "/v1/echo"
grpc = "testing.v1.Echo/Echo"
body = "*"
"#,
            descriptors = toml_path(&testing_descriptors()),
        );
        let path = write_config(&config);
        let snapshot = Snapshot::load(&path)
            .unwrap_or_else(|e| panic!("config does not load:\n{e}\n---\n{config}"));
        let gw = Gateway::new(snapshot);
        let rest = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let rest_addr = rest.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(gateway::server::serve(rest, gw.clone(), async move {
            let _ = rx.await;
        }));
        TestGw {
            rest: rest_addr,
            gw,
            stop: Some(tx),
        }
    }

    fn backend(&self) -> Arc<gateway::upstream::Backend> {
        self.gw.snapshot().backends["echo"].clone()
    }

    fn counter(&self, name: &str) -> u64 {
        let stats = self.backend().stats.snapshot();
        stats.into_iter().find(|(n, _)| *n == name).unwrap().1
    }

    fn state_of(&self, addr: &str) -> &'static str {
        let status = self.backend().status();
        status
            .endpoints
            .iter()
            .find(|e| e.address == addr)
            .unwrap()
            .state
    }

    /// `workers` clients sending `method /v1/echo` back to back for `length`;
    /// each failure as "status body".
    async fn load(&self, method: &str, workers: usize, length: Duration) -> (usize, Vec<String>) {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..workers)
            .map(|w| {
                let (stop, client) = (stop.clone(), http_client());
                let url = format!("http://{}/v1/echo", self.rest);
                let method: reqwest::Method = method.parse().unwrap();
                tokio::spawn(async move {
                    let (mut sent, mut failed) = (0, Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        sent += 1;
                        let body = format!(r#"{{"name": "w{w}-{sent}"}}"#);
                        let rb = client.request(method.clone(), &url);
                        let rb = if method == reqwest::Method::POST {
                            rb.header("content-type", "application/json").body(body)
                        } else {
                            rb
                        };
                        match rb.send().await {
                            Ok(r) if r.status() == 200 => {}
                            Ok(r) => failed.push(format!(
                                "{} {}",
                                r.status().as_u16(),
                                r.text().await.unwrap_or_default()
                            )),
                            Err(e) => failed.push(e.to_string()),
                        }
                    }
                    (sent, failed)
                })
            })
            .collect();
        tokio::time::sleep(length).await;
        stop.store(true, Ordering::Relaxed);
        let (mut sent, mut failed) = (0, Vec::new());
        for t in tasks {
            let (s, f) = t.await.unwrap();
            sent += s;
            failed.extend(f);
        }
        (sent, failed)
    }
}

fn endpoints(addrs: &[&str]) -> String {
    let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!("endpoints = [{}]", list.join(", "))
}

#[tokio::test]
async fn a_slow_instance_is_cut_by_the_per_try_timeout_retried_and_ejected() {
    let mut addrs = Vec::new();
    for _ in 0..3 {
        addrs.push(instance(Duration::ZERO, None).await.0);
    }
    // Answers well after the per-try timeout, within the 1 s deadline.
    let (slow, slow_calls) = instance(Duration::from_millis(800), None).await;
    addrs.push(slow.clone());
    let all: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let gw = TestGw::start(&format!(
        "{}\nretry = {{ per_try_timeout = \"150ms\" }}",
        endpoints(&all)
    ))
    .await;
    let (sent, failed) = gw.load("GET", 6, Duration::from_millis(1500)).await;
    println!(
        "per-try timeout: {sent} GETs, {} failed; slow instance called {} times, retries {}, ejections {}",
        failed.len(),
        slow_calls.load(Ordering::Relaxed),
        gw.counter("retries"),
        gw.counter("ejections"),
    );
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(sent > 100, "only {sent} requests");
    assert_eq!(gw.state_of(&slow), "ejected");
    // Five timed-out tries in a row eject it; a few more were under way.
    assert!(slow_calls.load(Ordering::Relaxed) < 12);
    assert_eq!(gw.counter("deadline_exceeded"), 0);
}

#[tokio::test]
async fn deadline_expiries_eject_a_slow_instance_and_share_one_message_and_counter() {
    let fast = instance(Duration::ZERO, None).await.0;
    // No per-try timeout: the 1 s deadline itself passes on the slow one.
    let (slow, slow_calls) = instance(Duration::from_millis(1500), None).await;
    let gw = TestGw::start(&endpoints(&[&fast, &slow])).await;
    let (sent, failed) = gw.load("GET", 4, Duration::from_millis(2500)).await;
    println!(
        "deadline without per-try timeout: {sent} GETs, {} failed (504), slow instance called {} times",
        failed.len(),
        slow_calls.load(Ordering::Relaxed),
    );
    let want = r#"504 {"code":4,"message":"backend \"echo\" did not answer within the deadline of 1s","details":[]}"#;
    // Every call that reached the slow one before its ejection timed out;
    // five in a row eject it, and the other clients' calls were under way.
    assert_eq!(failed.len(), slow_calls.load(Ordering::Relaxed));
    assert!((5..=8).contains(&failed.len()), "{failed:?}");
    assert!(failed.iter().all(|f| f == want), "{failed:?}");
    assert_eq!(gw.counter("deadline_exceeded"), failed.len() as u64);
    assert_eq!(gw.state_of(&slow), "ejected");

    // An instance answering DEADLINE_EXCEEDED itself: the same 504, the
    // same counter.
    let (own, own_calls) = instance(Duration::ZERO, Some(Code::DeadlineExceeded)).await;
    let gw = TestGw::start(&format!(
        // The breaker would open on these failures and answer 503 instead.
        "{}\noutlier_detection = {{ consecutive_failures = 0 }}\n\
         circuit_breaker = {{ min_requests = 1000000 }}",
        endpoints(&[&own])
    ))
    .await;
    let (sent, failed) = gw.load("GET", 4, Duration::from_millis(500)).await;
    println!(
        "backend's own DEADLINE_EXCEEDED: {sent} GETs, {} failed (504)",
        failed.len()
    );
    assert_eq!(failed.len(), sent);
    assert!(failed.iter().all(|f| f == want), "{:?}", &failed[..3]);
    assert_eq!(gw.counter("deadline_exceeded"), sent as u64);
    assert_eq!(own_calls.load(Ordering::Relaxed), sent, "not retried");
}

#[tokio::test]
async fn posts_never_sent_are_retried_on_another_instance_whatever_the_policy() {
    let (good_a, calls_a) = instance(Duration::ZERO, None).await;
    let (good_b, calls_b) = instance(Duration::ZERO, None).await;
    let (closing, closed) = raw_instance(Misbehaviour::CloseAtOnce).await;
    let (refusing, refused) = raw_instance(Misbehaviour::RefuseStreams).await;
    let (going, goaways) = raw_instance(Misbehaviour::GoAway).await;
    // Retries off and no ejection: only transparent retries can save a POST,
    // and the bad instances stay in rotation all along.
    let gw = TestGw::start(&format!(
        "{}\nretry = {{ attempts = 1 }}\noutlier_detection = {{ consecutive_failures = 0 }}",
        endpoints(&[&good_a, &closing, &refusing, &good_b, &going])
    ))
    .await;
    let (sent, failed) = gw.load("POST", 6, Duration::from_millis(1500)).await;
    let processed = calls_a.load(Ordering::Relaxed) + calls_b.load(Ordering::Relaxed);
    println!(
        "unsent POSTs: {sent} POSTs, {} failed; connections closed at once {}, streams refused {}, \
         connections sent GOAWAY {}; processed {processed}, retries {}",
        failed.len(),
        closed.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        goaways.load(Ordering::Relaxed),
        gw.counter("retries"),
    );
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(sent > 100, "only {sent} requests");
    assert_eq!(processed, sent, "each POST processed exactly once");
    for (what, n) in [
        ("closed", &closed),
        ("refused", &refused),
        ("goaway", &goaways),
    ] {
        assert!(
            n.load(Ordering::Relaxed) > 0,
            "no {what} instance was tried"
        );
    }
}

#[tokio::test]
async fn a_post_that_reached_an_instance_that_died_is_not_retried() {
    let (good, good_calls) = instance(Duration::ZERO, None).await;
    let (dying, died_with) = raw_instance(Misbehaviour::DieAfterReading).await;
    // Default retries: POSTs that may have been processed are not repeated.
    let gw = TestGw::start(&endpoints(&[&good, &dying])).await;
    let (sent, failed) = gw.load("POST", 4, Duration::from_millis(1000)).await;
    let reached = died_with.load(Ordering::Relaxed);
    println!(
        "POST to a dying instance: {sent} POSTs, {} failed (503); {reached} read by the dying instance",
        failed.len(),
    );
    // Every request the dying instance read failed (none went on to the
    // other instance), and so did those still unread in its socket: the
    // gateway cannot tell them apart. Five failures in a row eject it.
    assert!(reached >= 1, "{reached}");
    assert!(
        failed.len() >= reached && failed.len() <= 5 + 4,
        "{failed:?}"
    );
    assert_eq!(good_calls.load(Ordering::Relaxed), sent - failed.len());
    let want = format!(
        r#"503 {{"code":14,"message":"backend \"echo\" ({dying}): the connection to {dying} failed"#
    );
    assert!(failed.iter().all(|f| f.starts_with(&want)), "{failed:?}");
    assert_eq!(gw.state_of(&dying), "ejected");
}
