//! The log's writer: the thread that logs an event (a relay's, usually) hands the
//! formatted line to a bounded queue and goes on; a thread of its own writes the queue out.
//!
//! When the log's consumer is slow (a blocked pipe, a busy journald) and the queue is
//! full, a new line is dropped, never waited for, and counted (the metric
//! `rpcpin_log_lines_dropped_total`). The [`Guard`] that [`non_blocking`] returns writes
//! out what is queued when it is dropped, at exit.

use std::io::{self, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tracing_subscriber::fmt::MakeWriter;

/// How many lines may wait for the writer thread: about 3 MB of JSON lines, a few seconds
/// of a busy proxy's summaries.
pub const QUEUE_LINES: usize = 8192;

/// How long the writer thread lets lines gather after writing some: it writes them in one
/// go then, and the threads that log never wake it while it waits (one wake-up per batch,
/// not per line: a proxy closing 10,000 connections a second spent a sixth of its CPU
/// waking it). A line reaches the log at most this much later.
const BATCH_WAIT: Duration = Duration::from_millis(10);

/// How long the [`Guard`] waits at exit for the queued lines to be written.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// What the writer thread is handed.
enum Message {
    /// One formatted line (or a few, if one event wrote several).
    Line(Vec<u8>),
    /// Write out everything queued before this, flush, and say so.
    Flush(SyncSender<()>),
}

/// The subscriber's writer: queues lines for the writer thread, or drops and counts them.
#[derive(Debug, Clone)]
pub struct NonBlocking {
    queue: SyncSender<Message>,
    dropped: Counter,
}

/// Keeps the writer thread's lines: dropped at exit, it writes out what is queued (waiting
/// at most 2 seconds for a stuck consumer).
#[derive(Debug)]
pub struct Guard {
    queue: SyncSender<Message>,
    /// The writer thread. It is not joined: it runs as long as the subscriber's writer.
    _thread: JoinHandle<()>,
}

/// A writer that queues at most `capacity` lines for a thread writing them to `out`,
/// counting those it drops in `dropped`; and the guard that flushes it.
pub fn non_blocking<W: Write + Send + 'static>(
    out: W,
    capacity: usize,
    dropped: Counter,
) -> io::Result<(NonBlocking, Guard)> {
    let (queue, lines) = sync_channel(capacity);
    let thread = std::thread::Builder::new()
        .name("rpcpin-log".to_string())
        .spawn(move || write_out(out, &lines))?;
    let guard = Guard {
        queue: queue.clone(),
        _thread: thread,
    };
    Ok((NonBlocking { queue, dropped }, guard))
}

/// The writer thread: writes what is queued and flushes once the queue is empty, then lets
/// the next lines gather for [`BATCH_WAIT`], until every sender is gone. A write error
/// loses that line and no other.
fn write_out<W: Write>(mut out: W, lines: &Receiver<Message>) {
    while let Ok(first) = lines.recv() {
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Line(line) => {
                    let _ = out.write_all(&line);
                }
                Message::Flush(done) => {
                    let _ = out.flush();
                    let _ = done.send(());
                }
            }
            next = lines.try_recv().ok();
        }
        let _ = out.flush();
        std::thread::sleep(BATCH_WAIT);
    }
}

impl NonBlocking {
    /// Queues `line`, or drops and counts it when the queue is full.
    fn send(&self, line: Vec<u8>) {
        if self.queue.try_send(Message::Line(line)).is_err() {
            self.dropped.inc();
        }
    }
}

impl<'a> MakeWriter<'a> for NonBlocking {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            to: self,
            bytes: Vec::new(),
        }
    }
}

/// One event's line, gathered as the formatter writes it and queued when it is done.
#[derive(Debug)]
pub struct Line<'a> {
    to: &'a NonBlocking,
    bytes: Vec<u8>,
}

impl Write for Line<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.bytes.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if !self.bytes.is_empty() {
            self.to.send(std::mem::take(&mut self.bytes));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let deadline = Instant::now() + FLUSH_WAIT;
        let (done, flushed) = sync_channel(1);
        let mut flush = Message::Flush(done);
        // The queue may be full: wait for room, within the deadline.
        loop {
            match self.queue.try_send(flush) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    flush = m;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return,
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = flushed.recv_timeout(left);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{mpsc, Arc, Mutex};

    use super::*;

    /// A consumer that takes nothing until `go` says so, then keeps what it is given.
    struct Slow {
        go: Option<mpsc::Receiver<()>>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Slow {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if let Some(go) = self.go.take() {
                let _ = go.recv();
            }
            self.written.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn log(writer: &NonBlocking, n: usize) {
        for i in 0..n {
            let mut line = writer.make_writer();
            writeln!(line, "line {i}").unwrap();
        }
    }

    #[test]
    fn a_slow_consumer_costs_dropped_lines_not_waiting() {
        let (go, wait) = mpsc::channel();
        let written = Arc::new(Mutex::new(Vec::new()));
        let slow = Slow {
            go: Some(wait),
            written: written.clone(),
        };
        let dropped = Counter::default();
        let (writer, guard) = non_blocking(slow, 2, dropped.clone()).unwrap();
        let started = Instant::now();
        log(&writer, 100);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the logging thread waited for the consumer"
        );
        // At most two queued and one in the writer's hands; the rest dropped.
        assert!(dropped.get() >= 97, "{} dropped", dropped.get());
        go.send(()).unwrap();
        drop(guard);
        let lines = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert_eq!(lines.lines().count() as u64 + dropped.get(), 100, "{lines}");
        assert!(lines.starts_with("line 0\n"), "{lines}");
    }

    #[test]
    fn every_queued_line_is_written_at_exit() {
        let written = Arc::new(Mutex::new(Vec::new()));
        let consumer = Slow {
            go: None,
            written: written.clone(),
        };
        let dropped = Counter::default();
        let (writer, guard) = non_blocking(consumer, 64, dropped.clone()).unwrap();
        log(&writer, 50);
        drop(guard);
        let lines = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert_eq!(lines.lines().count(), 50, "{lines}");
        assert_eq!(dropped.get(), 0);
    }
}
