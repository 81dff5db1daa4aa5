//! Bulk throughput after a real bind: request PDUs streamed to the backend (upload) or
//! response PDUs streamed from it (download), 5,840 or 65,535 bytes each, one PDU per
//! write or many in 1 MiB writes, measured in bytes per second at the client.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::ensure;

use super::{args, measure, secs, Plan, Sampling};
use crate::dcerpc::{self, Conn, Framer};
use crate::harness::{Env, Layout, Path, Stack};
use crate::report::{Cmp, Goal, Row, Section};

/// The two fragment sizes the issue names: Windows' usual 5,840 and the largest possible.
pub const SIZES: [usize; 2] = [5840, 65535];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Direction {
    /// Client to backend (request PDUs).
    Up,
    /// Backend to client (response PDUs).
    Down,
}

impl Direction {
    /// As the load generator's `--dir` takes it.
    fn arg(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }

    /// As the result table names it.
    fn label(self) -> &'static str {
        match self {
            Direction::Up => "upload",
            Direction::Down => "download",
        }
    }
}

/// How the sending side writes: what a proxy's reads see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// Every PDU in a write of its own, as an RPC runtime sends its fragments.
    Pdu,
    /// Back-to-back PDUs in 1 MiB writes: a proxy reads many at once, and a PDU's head and
    /// tail in different reads.
    Stream,
}

impl Shape {
    /// Both, in table order.
    pub const ALL: [Shape; 2] = [Shape::Pdu, Shape::Stream];

    /// As the load generator's `--shape` takes it.
    pub fn arg(self) -> &'static str {
        match self {
            Shape::Pdu => "pdu",
            Shape::Stream => "stream",
        }
    }

    /// As the result table names it.
    pub fn label(self) -> &'static str {
        match self {
            Shape::Pdu => "one per write",
            Shape::Stream => "1 MiB writes",
        }
    }

    /// About how many bytes the sender writes at once.
    fn write_len(self, frag_len: usize) -> usize {
        match self {
            Shape::Pdu => frag_len,
            Shape::Stream => 1 << 20,
        }
    }
}

/// What one connection moves: which way, in which PDUs, written how.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Transfer {
    #[arg(long, value_enum)]
    pub dir: Direction,
    /// frag_length of every PDU.
    #[arg(long)]
    pub size: usize,
    #[arg(long, value_enum)]
    pub shape: Shape,
}

impl Transfer {
    /// The load generator's arguments for this transfer.
    pub fn args(&self) -> [(&'static str, String); 3] {
        [
            ("dir", self.dir.arg().into()),
            ("size", self.size.to_string()),
            ("shape", self.shape.arg().into()),
        ]
    }

    /// As the result table names it.
    pub fn label(&self) -> String {
        format!(
            "{}, {}-byte PDUs, {}",
            self.dir.label(),
            self.size,
            self.shape.label()
        )
    }

    /// Binds on `addr`, then moves PDUs one way as fast as the path goes; what moved inside
    /// `window`: bytes, seconds and whole PDUs.
    pub fn run(&self, addr: &str, window: Window) -> anyhow::Result<(u64, f64, u64)> {
        let mut conn = Conn::bind(addr)?;
        let write = self.shape.write_len(self.size);
        match self.dir {
            Direction::Up => upload(&mut conn, self.size, write, window),
            Direction::Down => download(&mut conn, self.size, write, window),
        }
    }

    /// Every direction, size and shape, in table order.
    fn all() -> Vec<Transfer> {
        let mut v = Vec::new();
        for shape in Shape::ALL {
            for dir in [Direction::Up, Direction::Down] {
                v.extend(SIZES.map(|size| Transfer { dir, size, shape }));
            }
        }
        v
    }
}

/// The load generator's arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    addr: String,
    #[command(flatten)]
    transfer: Transfer,
    /// Measured seconds.
    #[arg(long)]
    secs: f64,
    /// Unmeasured seconds first.
    #[arg(long)]
    warmup: f64,
}

/// Load generator: one connection, one bind, then PDUs one way as fast as the path goes.
pub fn client(a: Args) -> anyhow::Result<()> {
    let window = Window::new(Instant::now(), a.warmup, a.secs);
    let (bytes, elapsed, pdus) = a.transfer.run(&a.addr, window)?;
    println!(
        "bytes={bytes} secs={elapsed:.4} pdus={pdus} rate={:.2}",
        bytes as f64 / elapsed / 1e6
    );
    Ok(())
}

/// A measurement window after a warm-up: counts what happens inside it.
pub struct Window {
    start: Instant,
    warmup: Duration,
    length: Duration,
    from: Option<Instant>,
    bytes: u64,
}

impl Window {
    /// A window that opens `warmup` seconds after `start` and lasts `secs` seconds.
    pub fn new(start: Instant, warmup: f64, secs: f64) -> Window {
        Window {
            start,
            warmup: Duration::from_secs_f64(warmup),
            length: Duration::from_secs_f64(secs),
            from: None,
            bytes: 0,
        }
    }

    /// Records `n` bytes moved just now; `Some(elapsed)` once the window is over.
    fn moved(&mut self, n: usize) -> Option<f64> {
        let now = Instant::now();
        match self.from {
            None if now - self.start >= self.warmup => self.from = Some(now),
            None => {}
            Some(from) => {
                self.bytes += n as u64;
                if now - from >= self.length {
                    return Some((now - from).as_secs_f64());
                }
            }
        }
        None
    }
}

fn upload(
    conn: &mut Conn,
    size: usize,
    write: usize,
    mut w: Window,
) -> anyhow::Result<(u64, f64, u64)> {
    let mut batch = dcerpc::sink_batch(size, write);
    let mut call_id = 2;
    let mut pdus = 0;
    loop {
        dcerpc::renumber(&mut batch, size, &mut call_id);
        conn.stream.write_all(&batch)?;
        pdus += (batch.len() / size) as u64;
        if let Some(elapsed) = w.moved(batch.len()) {
            return Ok((w.bytes, elapsed, pdus));
        }
    }
}

fn download(
    conn: &mut Conn,
    size: usize,
    write: usize,
    mut w: Window,
) -> anyhow::Result<(u64, f64, u64)> {
    conn.stream
        .write_all(&dcerpc::source_request(size, write))?;
    let mut framer = Framer::default();
    framer.feed(conn.leftover())?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = conn.stream.read(&mut buf)?;
        ensure!(n > 0, "the path closed the download");
        framer.feed(&buf[..n])?;
        if let Some(elapsed) = w.moved(n) {
            ensure!(framer.pdus > 0, "no whole PDU arrived");
            finish_download(conn, &mut buf)?;
            return Ok((w.bytes, elapsed, framer.pdus));
        }
    }
}

/// Ends a download the polite way: the client closes its side and reads what is still in
/// flight until the path closes, so that nobody writes into a reset connection.
fn finish_download(conn: &mut Conn, buf: &mut [u8]) -> anyhow::Result<()> {
    conn.stream.shutdown(std::net::Shutdown::Write)?;
    conn.stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    while conn.stream.read(buf)? > 0 {}
    Ok(())
}

/// Runs `load` (bulk, or aggregate with `extra` arguments) for each of `cases` on every path,
/// interleaved, on a stack of its own on `layout`: a row of MB/s per case.
pub(super) fn rates(
    env: &mut Env,
    plan: &Plan,
    sampling: Sampling,
    layout: &Layout,
    load: &str,
    cases: &[Transfer],
    extra: &[(&'static str, String)],
) -> anyhow::Result<Vec<Row>> {
    let mut stack = Stack::start(env, layout, &Path::ALL)?;
    let mut rows: Vec<Row> = cases.iter().map(|t| Row::new(t.label())).collect();
    for round in 0..sampling.rounds {
        for (i, transfer) in cases.iter().enumerate() {
            for path in Path::rotation(&Path::ALL, round + i) {
                let mut pairs = vec![("addr", env.ports.svc(path))];
                pairs.extend(transfer.args());
                pairs.extend(extra.iter().cloned());
                pairs.extend([("secs", secs(sampling.secs)), ("warmup", secs(plan.warmup))]);
                let args = args(load, &pairs);
                if let Some(f) = measure(env, layout, load, path, args) {
                    if let Ok(rate) = f.f64("rate") {
                        rows[i].add(round, path, rate);
                    }
                }
            }
        }
        stack.check_alive()?;
    }
    stack.stop(env, load)?;
    Ok(rows)
}

/// Runs every direction, size and shape on every path, interleaved, with client, proxy and
/// backend sharing one CPU.
pub fn run(env: &mut Env, plan: &Plan) -> anyhow::Result<Section> {
    let layout = Layout::one_cpu(plan.shared_cpu);
    let rows = rates(env, plan, plan.bulk, &layout, "bulk", &Transfer::all(), &[])?;

    let mut s = Section::new(
        "Bulk throughput after a bind",
        "MB/s, higher is better",
        &Path::ALL,
        0,
    );
    s.notes = vec![
        format!("{layout}"),
        format!(
            "median of {} interleaved rounds, {} s measured after {} s warm-up per sample; one connection, MB = 10^6 bytes at the client",
            plan.bulk.rounds,
            secs(plan.bulk.secs),
            secs(plan.warmup)
        ),
        "HAProxy: mode tcp, option splice-auto + splice-request + splice-response (forced kernel splice)".into(),
    ];
    for row in &rows {
        s.goals.push(
            Goal::new(
                format!("bulk {}", row.case),
                Path::Haproxy,
                Cmp::AtLeast,
                1.20,
            )
            .on(row),
        );
        s.goals.push(
            Goal::new(
                format!("bulk {}", row.case),
                Path::Direct,
                Cmp::AtLeast,
                0.6,
            )
            .stretch()
            .on(row),
        );
    }
    s.rows = rows;
    Ok(s)
}
