//! The REST listener: the gateway's shared state, serving, and the
//! graceful shutdown; each request goes through [`crate::pipeline`].

use std::future::Future;
use std::sync::Arc;

pub use crate::state::Gateway;

/// After the drain timeout, how long the 503s of the requests cut get to be
/// written before the process exits: they are ready at once, so this only
/// bounds a client that stopped reading (and streamed answers, whose head
/// is already sent and which are cut without an answer).
const CUT_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// The REST listener's service: the request pipeline (see
/// [`crate::pipeline`]) over this gateway's snapshots.
pub fn app(gateway: Arc<Gateway>) -> App {
    crate::pipeline::app(
        gateway.snapshots(),
        gateway.drain_cut(),
        crate::telemetry::AccessLayer {
            log: gateway.snapshot().access_log,
            propagators: gateway.snapshot().propagators,
        },
    )
}

/// The service [`app`] returns.
pub type App = crate::pipeline::App;

/// The listener's settings from the current snapshot, read per connection.
fn listener_limits(
    gw: &Arc<Gateway>,
) -> impl Fn() -> crate::edge::limits::Limits + Send + Sync + 'static {
    let gw = gw.clone();
    move || gw.snapshot().edge.limits.clone()
}

/// The TLS acceptor of each new connection: the current snapshot's. The
/// listener's mode is set at start: a reload that removes `[server.tls]`
/// keeps the last certificates serving, and one that adds it takes effect
/// at the next restart (reload warns).
fn listener_tls(
    gw: &Arc<Gateway>,
) -> impl Fn() -> Option<crate::edge::tls::Handshake> + Send + Sync + 'static {
    let gw = gw.clone();
    let last = std::sync::Mutex::new(gw.snapshot().tls.clone());
    move || {
        let mut last = last.lock().expect("the lock is never poisoned");
        let tls = last.as_ref()?;
        let current = gw.snapshot().tls.clone();
        match current {
            Some(now) if !Arc::ptr_eq(&now, tls) => {
                *last = Some(now.clone());
                Some(now.handshake())
            }
            _ => Some(tls.handshake()),
        }
    }
}

/// Serves until `shutdown` resolves, then lets in-flight requests finish.
/// For tests and embedding; the binary uses [`run`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    gateway.set_ready(true);
    let limits = listener_limits(&gateway);
    let drain = crate::edge::conn::Drain::new();
    let tls = listener_tls(&gateway);
    crate::edge::conn::serve(listener, app(gateway), limits, tls, drain, shutdown).await
}

/// The whole lifecycle: serve REST (and admin, if given) until `signal`,
/// then drain in the order load balancers need: readiness goes false, the
/// listener keeps accepting for `shutdown_delay` while telling keep-alive
/// clients to reconnect elsewhere (`Connection: close`, GOAWAY), then
/// closes, and in-flight requests get `drain_timeout` to finish; those still
/// running are answered 503, logged and counted.
pub async fn run(
    listener: tokio::net::TcpListener,
    admin: Option<tokio::net::TcpListener>,
    gateway: Arc<Gateway>,
    signal: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_with(listener, None, admin, gateway, signal).await
}

/// [`run`], with `[server.tls] plaintext_listen`'s listener when there is
/// one: the same routes over plaintext HTTP/1.1 and h2c for internal
/// callers (no TLS, so no client certificate: routes that need one answer
/// 401 there), drained and closed with the main listener.
pub async fn run_with(
    listener: tokio::net::TcpListener,
    plaintext: Option<tokio::net::TcpListener>,
    admin: Option<tokio::net::TcpListener>,
    gateway: Arc<Gateway>,
    signal: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Some(admin) = admin {
        let app = crate::admin::app(gateway.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(admin, app).await {
                tracing::error!(error = %e, "admin listener failed");
            }
        });
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let drain = crate::edge::conn::Drain::new();
    let main = tokio::spawn(crate::edge::conn::serve(
        listener,
        app(gateway.clone()),
        listener_limits(&gateway),
        listener_tls(&gateway),
        drain.clone(),
        stopped(stop_rx.clone()),
    ));
    let plain = plaintext.map(|plain| {
        tokio::spawn(crate::edge::conn::serve(
            plain,
            app(gateway.clone()),
            listener_limits(&gateway),
            || None,
            drain.clone(),
            stopped(stop_rx.clone()),
        ))
    });
    // Done when both listeners have closed and drained.
    let mut server = tokio::spawn(async move {
        let main = main.await.map_err(std::io::Error::other)?;
        if let Some(plain) = plain {
            plain.await.map_err(std::io::Error::other)??;
        }
        main
    });
    gateway.set_ready(true);
    signal.await;
    let snap = gateway.snapshot();
    gateway.set_ready(false);
    drain.start();
    tracing::info!(
        delay_ms = snap.shutdown_delay.as_millis() as u64,
        drain_ms = snap.drain_timeout.as_millis() as u64,
        "shutting down: readiness is false; still accepting during the delay"
    );
    tokio::time::sleep(snap.shutdown_delay).await;
    let _ = stop_tx.send(true);
    match tokio::time::timeout(snap.drain_timeout, &mut server).await {
        Ok(Ok(result)) => {
            tracing::info!("drained; exiting");
            result
        }
        Ok(Err(join)) => Err(std::io::Error::other(join)),
        Err(_) => {
            tracing::warn!(
                requests = crate::telemetry::access::in_flight(),
                "drain timeout passed; answering the requests still running with 503 and closing"
            );
            gateway.cut_in_flight();
            let _ = tokio::time::timeout(CUT_GRACE, &mut server).await;
            Ok(())
        }
    }
}
