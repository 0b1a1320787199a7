//! Serving threads, one per worker: each runs a current-thread runtime of
//! its own, and a connection, once accepted, lives on one of them from its
//! first byte to its last, with the backend connections that thread opened
//! (see `upstream::client`'s lanes). This is the thread-per-core model of
//! Envoy and NGINX: a request's tasks, sockets and timers never cross a
//! thread, so there is no work stealing, no cross-thread wake-up and no
//! reactor shared between threads on the request path. On a multi-thread
//! tokio runtime the same gateway on two threads spent 1.4 times the CPU
//! per small GET of one thread (docs/performance.md).
//!
//! The process's main runtime keeps what is not a request: the accept loop,
//! the admin listener, discovery, health checks, reloads. The accept loop
//! hands each connection to the next serving thread in turn.
//!
//! Without [`start`] (one worker, and every in-process test) nothing here
//! is used: connections are spawned on the runtime that accepted them.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use tokio::runtime::Handle;

struct Workers {
    handles: Box<[Handle]>,
    next: AtomicUsize,
}

static WORKERS: OnceLock<Workers> = OnceLock::new();

thread_local! {
    /// The serving thread's number, on serving threads.
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Starts `n` serving threads (`gw-worker-0`, ..., short enough for
/// the 15 bytes Linux keeps of a thread name), once per process.
/// Each runs until the process exits.
pub fn start(n: usize) -> std::io::Result<()> {
    let mut handles = Vec::with_capacity(n);
    for index in 0..n {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        handles.push(rt.handle().clone());
        std::thread::Builder::new()
            .name(format!("gw-worker-{index}"))
            .spawn(move || {
                INDEX.with(|i| i.set(Some(index)));
                rt.block_on(std::future::pending::<()>());
            })?;
    }
    let _ = WORKERS.set(Workers {
        handles: handles.into_boxed_slice(),
        next: AtomicUsize::new(0),
    });
    Ok(())
}

/// How many serving threads there are; `None` when connections are served
/// on the runtime that accepts them.
pub fn count() -> Option<usize> {
    WORKERS.get().map(|w| w.handles.len())
}

/// The calling thread's number when it is a serving thread.
pub fn index() -> Option<usize> {
    INDEX.with(Cell::get)
}

/// The serving thread the next connection goes to (round robin: the
/// accept loop is one task, so turns alternate exactly).
pub fn next() -> Option<&'static Handle> {
    let w = WORKERS.get()?;
    let i = w.next.fetch_add(1, Ordering::Relaxed) % w.handles.len();
    Some(&w.handles[i])
}
