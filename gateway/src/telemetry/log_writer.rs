//! Access-log lines gathered in memory and written to stderr in batches,
//! when stderr is not a terminal: with the access log on, a write(2) per
//! request was about a tenth of the gateway's CPU per small GET in the
//! load bench. A batch goes out when it reaches [`BATCH_BYTES`], every
//! [`FLUSH_EVERY`] from a thread of its own, and at exit ([`flush`]); a
//! process killed outright loses at most that interval of access lines, as
//! Envoy's access logs (flushed every 10 s by default) do. Every other log
//! line is written at once, so warnings and errors keep their order with
//! what the process prints, and a terminal gets every line at once.

use std::io::{self, Write};
use std::sync::Mutex;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// A batch is written once it holds this much.
const BATCH_BYTES: usize = 32 * 1024;

/// Lines wait in memory at most about this long.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// The batch being gathered.
static BATCH: Gather = Gather::new();

/// Lines gathered into batches.
struct Gather(Mutex<Vec<u8>>);

impl Gather {
    const fn new() -> Gather {
        Gather(Mutex::new(Vec::new()))
    }

    /// Adds `line`; returns the batch to write out once it is full.
    fn push(&self, line: &[u8]) -> Option<Vec<u8>> {
        let mut b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        b.extend_from_slice(line);
        (b.len() >= BATCH_BYTES).then(|| std::mem::take(&mut *b))
    }

    /// Everything gathered so far, if anything.
    fn take(&self) -> Option<Vec<u8>> {
        let mut b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        (!b.is_empty()).then(|| std::mem::take(&mut *b))
    }
}

/// The subscriber's writer: stderr, the access log's lines batched.
#[derive(Clone, Copy)]
pub struct Batched;

impl Batched {
    /// Starts the thread that writes what has gathered every
    /// [`FLUSH_EVERY`].
    pub fn start() -> Batched {
        let _ = std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(|| loop {
                std::thread::sleep(FLUSH_EVERY);
                flush();
            });
        Batched
    }
}

/// Writes out what has gathered; called at exit too.
pub fn flush() {
    if let Some(all) = BATCH.take() {
        let _ = io::stderr().write_all(&all);
    }
}

impl<'a> MakeWriter<'a> for Batched {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line::Now(io::stderr())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line {
        if meta.target() == super::access::TARGET {
            Line::Batched
        } else {
            Line::Now(io::stderr())
        }
    }
}

/// One event's output (the formatter writes it whole in one call).
pub enum Line {
    Now(io::Stderr),
    Batched,
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Line::Now(stderr) => stderr.write(buf),
            Line::Batched => {
                // Written outside the lock: other threads keep gathering.
                if let Some(full) = BATCH.push(buf) {
                    io::stderr().write_all(&full)?;
                }
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Line::Now(stderr) => stderr.flush(),
            Line::Batched => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_gather_until_a_batch_is_full_then_go_out_whole() {
        let gather = Gather::new();
        assert_eq!(gather.push(b"one line\n"), None, "a line waits");
        let big = vec![b'x'; BATCH_BYTES];
        let out = gather.push(&big).expect("a full batch goes out");
        assert!(out.starts_with(b"one line\n"), "in the order written");
        assert_eq!(out.len(), 9 + BATCH_BYTES);
        assert_eq!(gather.take(), None, "nothing is left behind");
        gather.push(b"late\n");
        assert_eq!(
            gather.take().as_deref(),
            Some(&b"late\n"[..]),
            "a flush takes the rest"
        );
    }
}
