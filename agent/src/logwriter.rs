//! Where the agent's log lines go: standard error, with the audit lines of a busy moment
//! written together.
//!
//! Every private-key operation logs an audit line (`smime_agent::audit`). Written one by
//! one, each line is a `write` on the token worker that has just answered, on the request
//! path, and both workers queue on the same file (or wake journald) for it: at 8 clients
//! that cost about a tenth of the agent's ECDSA throughput (BENCHMARKS.md, round 4).
//!
//! So an audit line is appended to a buffer, and a background thread writes the buffer:
//! at once when the log has been quiet, otherwise at most every [`BATCH_DELAY`]. Every
//! other line is written at once by the thread that logs it, after whatever audit lines
//! are still waiting, so the lines keep their order. The buffer is bounded
//! ([`MAX_PENDING`]): past it, the thread that logs writes the lines itself.
//! [`LogWriter::flush`] writes what waits; the agent calls it before it exits. A process
//! killed with SIGKILL can lose the last [`BATCH_DELAY`] of audit lines.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

/// The log target of the audit lines, the only lines that are batched.
pub const AUDIT_TARGET: &str = "smime_agent::audit";
/// Under load, audit lines wait at most this long.
pub const BATCH_DELAY: Duration = Duration::from_millis(10);
/// Audit lines waiting beyond this many bytes are written by the thread that logs.
pub const MAX_PENDING: usize = 256 * 1024;
/// A batch buffer up to this size is kept for the next batch; a larger one is freed.
const KEEP_CAPACITY: usize = 64 * 1024;

/// A [`MakeWriter`] for `tracing_subscriber::fmt`: standard error, audit lines batched.
#[derive(Clone, Debug)]
pub struct LogWriter(Arc<Shared>);

struct Shared {
    pending: Mutex<Pending>,
    /// Tells the background thread that `pending` is no longer empty.
    kick: Condvar,
    /// Standard error (a buffer in the tests). Taken while `pending` is held, so batches
    /// go out in the order they were taken.
    out: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("pending_bytes", &self.lock().buf.len())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    /// The background thread waits on `kick`.
    idle: bool,
    /// The background thread runs.
    batched: bool,
}

impl LogWriter {
    /// A writer to standard error, with the thread that writes the batches (without
    /// it, when it cannot be started, every line is written at once).
    pub fn stderr() -> Self {
        Self::to(Box::new(io::stderr()))
    }

    /// The same, writing to `out` (a buffer in the tests).
    fn to(out: Box<dyn Write + Send>) -> Self {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            kick: Condvar::new(),
            out: Mutex::new(out),
        });
        let s = shared.clone();
        let started = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || s.batches())
            .is_ok();
        shared.lock().batched = started;
        Self(shared)
    }

    /// Writes the audit lines that are waiting.
    pub fn flush(&self) {
        self.0.write_out(self.0.lock(), &[]);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Nothing panics while holding it; a poisoned buffer is still a buffer.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes what waits, then `line`, to stderr. Takes `pending` (held by the caller)
    /// and then `out`, so whoever took lines first writes them first.
    fn write_out(&self, mut pending: MutexGuard<'_, Pending>, line: &[u8]) {
        let mut batch = std::mem::take(&mut pending.buf);
        batch.extend_from_slice(line);
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        drop(pending);
        if !batch.is_empty() {
            // Nowhere to report a failing stderr: the lines are dropped, as `eprintln!`
            // would drop them.
            let _ = out.write_all(&batch);
        }
        drop(out);
        batch.clear();
        let mut pending = self.lock();
        // Keep a batch's allocation for the next one, unless a burst made it large.
        if pending.buf.is_empty()
            && pending.buf.capacity() < batch.capacity()
            && batch.capacity() <= KEEP_CAPACITY
        {
            pending.buf = batch;
        }
    }

    /// The background thread: waits for audit lines, writes them at once after a quiet
    /// spell and otherwise at most every [`BATCH_DELAY`].
    fn batches(&self) {
        let mut last = Instant::now() - BATCH_DELAY;
        loop {
            let mut p = self.lock();
            while p.buf.is_empty() {
                p.idle = true;
                p = self.kick.wait(p).unwrap_or_else(|e| e.into_inner());
            }
            p.idle = false;
            let since = last.elapsed();
            if since < BATCH_DELAY {
                drop(p);
                std::thread::sleep(BATCH_DELAY - since);
                p = self.lock();
            }
            self.write_out(p, &[]);
            last = Instant::now();
        }
    }
}

/// One log line being written (`tracing_subscriber::fmt` writes each event with one
/// `write_all`).
#[derive(Debug)]
pub struct Line<'a> {
    shared: &'a Shared,
    audit: bool,
}

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut p = self.shared.lock();
        if self.audit && p.batched && p.buf.len() + buf.len() <= MAX_PENDING {
            let kick = p.buf.is_empty() && p.idle;
            p.buf.extend_from_slice(buf);
            drop(p);
            if kick {
                self.shared.kick.notify_one();
            }
        } else {
            self.shared.write_out(p, buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line {
            shared: &self.0,
            audit: false,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        Line {
            shared: &self.0,
            audit: meta.target() == AUDIT_TARGET && *meta.level() == tracing::Level::INFO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the writer wrote, shared with the test.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Buf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// Logs through `tracing_subscriber::fmt` with `w`, as the agent does.
    fn with_log(w: &LogWriter, f: impl FnOnce()) {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(w.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
    }

    fn wait_for(buf: &Buf, what: &str) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if buf.text().contains(what) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn a_lone_audit_line_is_written_soon_by_the_background_thread() {
        let buf = Buf::default();
        let w = LogWriter::to(Box::new(buf.clone()));
        with_log(&w, || tracing::info!(target: AUDIT_TARGET, n = 1, "audit"));
        assert!(wait_for(&buf, "n=1"), "never written: {:?}", buf.text());
    }

    #[test]
    fn audit_lines_wait_but_keep_their_place_before_other_lines() {
        let sink = Slow::default();
        let (buf, w) = (sink.0.clone(), LogWriter::to(Box::new(sink.clone())));
        with_log(&w, || {
            for n in 0..50 {
                tracing::info!(target: AUDIT_TARGET, n, "audit");
            }
            // An ordinary line is written at once, after the audit lines before it.
            tracing::warn!("after");
            let text = buf.text();
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 51, "{text}");
            for (n, line) in lines[..50].iter().enumerate() {
                assert!(line.ends_with(&format!("audit n={n}")), "line {n}: {line}");
            }
            assert!(lines[50].ends_with("after"), "{text}");
        });
        let writes = sink.1.lock().unwrap().len();
        assert!(writes < 10, "51 lines in {writes} writes: not batched");
    }

    #[test]
    fn flush_writes_what_waits() {
        let buf = Buf::default();
        let w = LogWriter::to(Box::new(buf.clone()));
        with_log(&w, || {
            for n in 0..20 {
                tracing::info!(target: AUDIT_TARGET, n, "audit");
            }
        });
        w.flush();
        assert_eq!(buf.text().lines().count(), 20, "{}", buf.text());
    }

    /// A sink that takes `.2` per write and remembers the size of each.
    #[derive(Clone, Default)]
    struct Slow(Buf, Arc<Mutex<Vec<usize>>>, Duration);

    impl Write for Slow {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            std::thread::sleep(self.2);
            self.1.lock().unwrap().push(b.len());
            self.0.write(b)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_slow_sink_bounds_the_batches_and_loses_nothing() {
        let slow = Slow(Buf::default(), Arc::default(), Duration::from_millis(5));
        let w = LogWriter::to(Box::new(slow.clone()));
        let filler = "x".repeat(1000);
        let lines = 3 * MAX_PENDING / 1000;
        with_log(&w, || {
            for n in 0..lines {
                tracing::info!(target: AUDIT_TARGET, n, "{filler}");
            }
        });
        w.flush();
        let text = slow.0.text();
        let got: Vec<&str> = text.lines().collect();
        assert_eq!(got.len(), lines);
        for (n, line) in got.iter().enumerate() {
            assert!(
                line.contains(&format!(" n={n} ")) || line.ends_with(&format!("n={n}")),
                "line {n}: {line:.80}"
            );
        }
        let sizes = slow.1.lock().unwrap().clone();
        let longest = got.iter().map(|l| l.len() + 1).max().unwrap();
        assert!(
            sizes.iter().all(|&s| s <= MAX_PENDING + longest),
            "a batch over the bound: {sizes:?}"
        );
    }
}
