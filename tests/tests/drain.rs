//! Graceful shutdown under load: keep-alive clients are told to move to
//! another instance during `server.shutdown_delay` (HTTP/1.1
//! `Connection: close`, HTTP/2 GOAWAY) and lose no request, and requests
//! still running at `server.drain_timeout` are answered, logged and counted.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway::example::{bookstore, BoxFuture, DynamicServer};
use gateway_tests::running::RunningGateway;
use gateway_tests::{bookstore_pool, gateway_bin, http_client, spawn_backend, temp_dir};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost_reflect::{DynamicMessage, MethodDescriptor, Value};
use serde_json::Value as Json;
use tonic::{Request, Response};

/// The shelf whose GetShelf never answers in time: a request held in flight.
const SLOW_SHELF: i64 = 99;

/// A bookstore whose GetShelf answers at once, except for [`SLOW_SHELF`].
fn bookstore_backend() -> DynamicServer {
    DynamicServer::new(
        &bookstore_pool(),
        &[bookstore::SERVICE],
        |m: &MethodDescriptor, req: Request<DynamicMessage>| {
            let shelf = req
                .get_ref()
                .get_field_by_name("shelf")
                .and_then(|v| v.as_i64())
                .unwrap_or(0);
            let mut reply = DynamicMessage::new(m.output());
            reply.set_field_by_name("id", Value::I64(shelf));
            Box::pin(async move {
                if shelf == SLOW_SHELF {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                Ok(Response::new(reply))
            }) as BoxFuture<_>
        },
    )
}

/// A folder with the bookstore descriptors and a routes.toml.
fn config_dir(tag: &str, backend: &str, server: &str, extra: &str) -> PathBuf {
    let dir = temp_dir(tag);
    let descriptors = dir.join("descriptors");
    std::fs::create_dir_all(&descriptors).unwrap();
    std::fs::copy(
        gateway_tests::repo_root().join("descriptors/bookstore.proto"),
        descriptors.join("bookstore.proto"),
    )
    .unwrap();
    let config = dir.join("routes.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
descriptors = "descriptors"
watch = false
{server}

[backends.bookstore]
endpoints = ["{backend}"]
services = ["example.bookstore.v1.Bookstore"]
timeout = "60s"

[[routes]]
method = "GET"
path = "/v1/shelves/{{shelf}}"
grpc = "example.bookstore.v1.Bookstore/GetShelf"
{extra}"#
        ),
    )
    .unwrap();
    config
}

/// How a client left the instance that was shutting down.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Left {
    /// An HTTP/1.1 answer said `Connection: close`.
    ConnectionClose,
    /// The HTTP/2 connection ended after a GOAWAY, or refused a stream above
    /// the GOAWAY's last stream id (never processed).
    GoAway,
    /// The connection was closed under it without being told.
    Closed,
}

#[derive(Debug, Default)]
struct ClientRun {
    /// Requests answered 200 with the right body, by each instance.
    ok_first: u64,
    ok_second: u64,
    /// Requests sent that got no answer or a wrong one.
    failed: Vec<String>,
    /// When (after the signal) and how the client moved to the second one.
    moved: Option<(Duration, Left)>,
}

/// One keep-alive client sending steadily, as through a load balancer that
/// stopped routing to `first` when its readiness went false: it stays on its
/// connection to `first` until told (or forced) to leave, then reconnects to
/// `second`. A connection refused or closed before the request was sent is
/// no loss (the request was never sent); a request sent and not answered is.
struct Client {
    h2: bool,
    first: String,
    second: String,
    signalled: tokio::sync::watch::Receiver<Option<Instant>>,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    async fn connect(h2: bool, addr: &str) -> std::io::Result<Sender> {
        let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await?);
        let err = |e: hyper::Error| std::io::Error::other(e);
        Ok(if h2 {
            let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(err)?;
            tokio::spawn(conn);
            Sender::H2(tx)
        } else {
            let (tx, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(err)?;
            tokio::spawn(conn);
            Sender::H1(tx)
        })
    }

    /// False when the connection is known to be closed: nothing was sent.
    async fn ready(&mut self) -> bool {
        match self {
            Sender::H1(tx) => tx.ready().await.is_ok(),
            Sender::H2(tx) => !tx.is_closed() && tx.ready().await.is_ok(),
        }
    }

    async fn send(
        &mut self,
        req: http::Request<Empty<Bytes>>,
    ) -> hyper::Result<http::Response<hyper::body::Incoming>> {
        match self {
            Sender::H1(tx) => tx.send_request(req).await,
            Sender::H2(tx) => tx.send_request(req).await,
        }
    }
}

/// A request the client knows was never processed: hyper did not send it,
/// or the server's GOAWAY refused its stream.
fn never_processed(e: &hyper::Error) -> bool {
    if e.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.is_remote());
        }
        source = s.source();
    }
    false
}

impl Client {
    async fn run(self, until: Instant) -> ClientRun {
        let mut out = ClientRun::default();
        let mut on_first = true;
        let mut sender: Option<Sender> = None;
        let mut n = 0u64;
        while Instant::now() < until {
            let target = if on_first { &self.first } else { &self.second };
            if sender.is_none() {
                match Sender::connect(self.h2, target).await {
                    Ok(s) => sender = Some(s),
                    Err(e) if on_first => {
                        // Refused: the listener has closed; nothing was sent.
                        self.leave(&mut out, &mut on_first, Left::Closed);
                        let _ = e;
                        continue;
                    }
                    Err(e) => {
                        out.failed.push(format!("connect to {target}: {e}"));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
            }
            let tx = sender.as_mut().expect("connected above");
            if !tx.ready().await {
                sender = None;
                let how = if self.h2 { Left::GoAway } else { Left::Closed };
                self.leave(&mut out, &mut on_first, how);
                continue;
            }
            n += 1;
            let shelf = 1 + n % 50;
            let req = http::Request::get(format!("http://{target}/v1/shelves/{shelf}"))
                .header(http::header::HOST, target.as_str())
                .body(Empty::new())
                .unwrap();
            match tx.send(req).await {
                Ok(resp) => {
                    let close = resp
                        .headers()
                        .get(http::header::CONNECTION)
                        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                    let status = resp.status();
                    match resp.into_body().collect().await {
                        Ok(body) => {
                            let body: Json =
                                serde_json::from_slice(&body.to_bytes()).unwrap_or(Json::Null);
                            if status == 200
                                && body["id"].as_str().and_then(|id| id.parse().ok()) == Some(shelf)
                            {
                                if on_first {
                                    out.ok_first += 1;
                                } else {
                                    out.ok_second += 1;
                                }
                            } else {
                                out.failed.push(format!("{status} {body}"));
                            }
                        }
                        Err(e) => out.failed.push(format!("body from {target}: {e}")),
                    }
                    if close {
                        sender = None;
                        self.leave(&mut out, &mut on_first, Left::ConnectionClose);
                    }
                }
                Err(e) if on_first && never_processed(&e) => {
                    sender = None;
                    let how = if self.h2 { Left::GoAway } else { Left::Closed };
                    self.leave(&mut out, &mut on_first, how);
                }
                Err(e) => {
                    sender = None;
                    out.failed.push(format!("request to {target}: {e:?}"));
                }
            }
            // Steady, not flat out: the machine running the tests is small.
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        out
    }

    fn leave(&self, out: &mut ClientRun, on_first: &mut bool, how: Left) {
        if !*on_first {
            return;
        }
        *on_first = false;
        let since = (*self.signalled.borrow())
            .map(|at| at.elapsed())
            .unwrap_or_default();
        out.moved = Some((since, how));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_clients_are_told_to_move_during_shutdown_delay_and_lose_no_request() {
    let backend = spawn_backend(bookstore_backend()).await;
    let delay = Duration::from_millis(1500);
    let first_cfg = config_dir(
        "drain-first",
        &backend,
        "shutdown_delay = \"1500ms\"\ndrain_timeout = \"5s\"",
        "",
    );
    let second_cfg = config_dir("drain-second", &backend, "", "");
    let mut first = RunningGateway::start(&first_cfg).await;
    let second = RunningGateway::start(&second_cfg).await;

    let (signal_tx, signalled) = tokio::sync::watch::channel(None);
    // Clients run through the delay and past the listener's close.
    let until = Instant::now() + Duration::from_millis(300) + delay + Duration::from_millis(700);
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..6 {
        let client = Client {
            h2: i % 3 == 2,
            first: first.rest.clone(),
            second: second.rest.clone(),
            signalled: signalled.clone(),
        };
        clients.spawn(async move { (client.h2, client.run(until).await) });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal_tx.send_replace(Some(Instant::now()));
    first.stop.take().unwrap().send(()).unwrap();

    let mut runs = Vec::new();
    while let Some(done) = clients.join_next().await {
        runs.push(done.unwrap());
    }
    let result = tokio::time::timeout(Duration::from_secs(5), &mut first.done)
        .await
        .expect("the first instance drains")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");

    let total: u64 = runs.iter().map(|(_, r)| r.ok_first + r.ok_second).sum();
    let failed: Vec<&String> = runs.iter().flat_map(|(_, r)| &r.failed).collect();
    for (h2, r) in &runs {
        eprintln!(
            "{} client: {} answered by the first instance, {} by the second, {} failed, moved {:?}",
            if *h2 { "HTTP/2" } else { "HTTP/1.1" },
            r.ok_first,
            r.ok_second,
            r.failed.len(),
            r.moved
        );
    }
    eprintln!("{total} requests answered, {} failed", failed.len());
    assert!(
        failed.is_empty(),
        "{} requests failed: {failed:?}",
        failed.len()
    );
    for (h2, r) in &runs {
        assert!(r.ok_first > 0 && r.ok_second > 0, "{r:?}");
        let (after, how) = r.moved.expect("every client moved");
        // Told well before the listener closed, not by its closing.
        let told = if *h2 {
            Left::GoAway
        } else {
            Left::ConnectionClose
        };
        assert_eq!(how, told, "{r:?}");
        assert!(after < delay / 3, "moved {after:?} after the signal: {r:?}");
    }
}

/// The `gateway_http_drain_aborted_total` sample for `route`, or 0.
async fn drain_aborted(gw: &RunningGateway, route: &str) -> f64 {
    let text = gw.metrics_text().await;
    let series = format!("gateway_http_drain_aborted_total{{route=\"{route}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map(|v| v.parse().unwrap())
        .unwrap_or(0.0)
}

async fn get(url: &str) -> (u16, Json) {
    let resp = http_client().get(url).send().await.expect("an answer");
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap_or_default();
    (status, serde_json::from_slice(&body).unwrap_or(Json::Null))
}

const CUT_MESSAGE: &str =
    "the gateway is shutting down and the request was still running when server.drain_timeout passed";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_running_at_drain_timeout_are_answered_503_and_counted() {
    let backend = spawn_backend(bookstore_backend()).await;
    let cfg = config_dir(
        "drain-cut",
        &backend,
        "shutdown_delay = \"100ms\"\ndrain_timeout = \"400ms\"",
        // Its own route, so no other test's count mixes in.
        "\n[[routes]]\nmethod = \"GET\"\npath = \"/v1/cut/{shelf}\"\ngrpc = \"example.bookstore.v1.Bookstore/GetShelf\"\n",
    );
    let mut gw = RunningGateway::start(&cfg).await;
    let route = "/v1/cut/{shelf}";
    let before = drain_aborted(&gw, route).await;
    let slow = [1, 2].map(|_| tokio::spawn(get_owned(gw.url(&format!("/v1/cut/{SLOW_SHELF}")))));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let signalled = Instant::now();
    gw.stop.take().unwrap().send(()).unwrap();
    for call in slow {
        let (status, body) = call.await.unwrap();
        assert_eq!(status, 503, "{body}");
        assert_eq!(
            body,
            serde_json::json!({"code": 14, "message": CUT_MESSAGE, "details": []})
        );
    }
    let cut_after = signalled.elapsed();
    assert!(
        cut_after >= Duration::from_millis(500),
        "cut {cut_after:?} after the signal, before delay + drain"
    );
    let result = tokio::time::timeout(Duration::from_secs(5), &mut gw.done)
        .await
        .expect("run() returns after the cut")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(drain_aborted(&gw, route).await - before, 2.0);
}

async fn get_owned(url: String) -> (u16, Json) {
    get(&url).await
}

/// Starts the binary on `config` with JSON logs; returns the child, its
/// REST address and its log lines.
fn spawn_binary(
    config: &Path,
) -> (
    std::process::Child,
    String,
    std::sync::mpsc::Receiver<String>,
) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(config).unwrap().replacen(
        "[server]\n",
        &format!("[server]\nlisten = \"127.0.0.1:{port}\"\n"),
        1,
    ) + "\n[admin]\nenabled = false\n\n[telemetry]\nlog_format = \"json\"\n";
    std::fs::write(config, text).unwrap();
    let mut child = Command::new(gateway_bin())
        .args(["serve", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, format!("127.0.0.1:{port}"), rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_logs_each_request_cut_at_drain_timeout() {
    let backend = spawn_backend(bookstore_backend()).await;
    let cfg = config_dir(
        "drain-cut-log",
        &backend,
        "shutdown_delay = \"100ms\"\ndrain_timeout = \"300ms\"",
        "",
    );
    let (mut child, addr, lines) = spawn_binary(&cfg);
    let start = Instant::now();
    while get_status(&format!("http://{addr}/v1/shelves/1")).await != Some(200) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "gateway did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let slow = tokio::spawn(
        http_client()
            .get(format!("http://{addr}/v1/shelves/{SLOW_SHELF}"))
            .header("x-request-id", "cut-at-drain-1")
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let resp = slow.await.unwrap().expect("an answer, not a reset");
    assert_eq!(resp.status(), 503);
    let body: Json = resp.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"code": 14, "message": CUT_MESSAGE, "details": []})
    );

    let mut access = None;
    let mut all = Vec::new();
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(5)) {
        all.push(line.clone());
        let Ok(fields) = serde_json::from_str::<Json>(&line) else {
            continue;
        };
        if fields["request_id"] == "cut-at-drain-1" {
            access = Some(fields);
            break;
        }
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    let access = access
        .unwrap_or_else(|| panic!("no access line for the cut request in:\n{}", all.join("\n")));
    assert_eq!(access["target"], "access");
    assert_eq!(access["message"], "request cut at drain timeout");
    assert_eq!(access["http.status"], 503);
    // No backend answer: the call was abandoned.
    assert_eq!(access["grpc.code"], -1);
    assert_eq!(access["route"], "/v1/shelves/{shelf}");
    assert_eq!(
        access["grpc.method"],
        "example.bookstore.v1.Bookstore/GetShelf"
    );
}

async fn get_status(url: &str) -> Option<u16> {
    http_client()
        .get(url)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}
