//! Request/response latency: one bound connection, one 128-byte-stub echo call at a time,
//! every round trip timed at the client.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::ensure;
use rpcpin::wire::{PacketType, Pdu};

use super::{args, measure, secs, Plan};
use crate::dcerpc::{self, op, Conn, RESPONSE_OVERHEAD};
use crate::harness::{Env, Layout, Path, Stack};
use crate::report::{quantile, Cmp, Goal, Row, Section};

/// The stub size the issue names.
pub const STUB: usize = 128;

/// The load generator's arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    addr: String,
    #[arg(long, default_value_t = STUB)]
    stub: usize,
    #[arg(long)]
    secs: f64,
    #[arg(long)]
    warmup: f64,
}

/// Load generator: echo calls back to back; prints p50, p99 and the mean in µs.
pub fn client(a: Args) -> anyhow::Result<()> {
    let mut conn = Conn::bind(&a.addr)?;
    let stub = vec![0xa5; a.stub];
    let mut call_id = 2u32;
    let mut call = |conn: &mut Conn| -> anyhow::Result<()> {
        let req = dcerpc::request(call_id, op::ECHO, &stub);
        call_id = call_id.wrapping_add(1);
        conn.stream.write_all(&req)?;
        let pdu = conn.next_pdu()?;
        let p = Pdu::new_checked(pdu)?;
        ensure!(
            p.ptype() == PacketType::Response,
            "expected a response, got {:?}",
            p.ptype()
        );
        ensure!(
            pdu.len() == RESPONSE_OVERHEAD + a.stub,
            "response of {} bytes",
            pdu.len()
        );
        Ok(())
    };
    let warm_end = Instant::now() + Duration::from_secs_f64(a.warmup);
    while Instant::now() < warm_end {
        call(&mut conn)?;
    }
    let mut samples: Vec<u64> = Vec::with_capacity(200_000);
    let start = Instant::now();
    let length = Duration::from_secs_f64(a.secs);
    while start.elapsed() < length {
        let t = Instant::now();
        call(&mut conn)?;
        samples.push(t.elapsed().as_nanos() as u64);
    }
    samples.sort_unstable();
    let mean = samples.iter().sum::<u64>() as f64 / samples.len().max(1) as f64;
    println!(
        "n={} p50_us={:.2} p99_us={:.2} mean_us={:.2}",
        samples.len(),
        quantile(&samples, 0.50) as f64 / 1e3,
        quantile(&samples, 0.99) as f64 / 1e3,
        mean / 1e3
    );
    Ok(())
}

/// Runs the echo load on every path, interleaved, with client, proxy and backend sharing
/// one CPU.
pub fn run(env: &mut Env, plan: &Plan) -> anyhow::Result<Section> {
    let layout = Layout::one_cpu(plan.shared_cpu);
    let mut stack = Stack::start(env, &layout, &Path::ALL)?;
    let mut p50 = Row::new("p50");
    let mut p99 = Row::new("p99");
    for round in 0..plan.latency.rounds {
        for path in Path::rotation(&Path::ALL, round) {
            let args = args(
                "latency",
                &[
                    ("addr", env.ports.svc(path)),
                    ("secs", secs(plan.latency.secs)),
                    ("warmup", secs(plan.warmup)),
                ],
            );
            if let Some(f) = measure(env, &layout, "latency", path, args) {
                if let (Ok(a), Ok(b)) = (f.f64("p50_us"), f.f64("p99_us")) {
                    p50.add(round, path, a);
                    p99.add(round, path, b);
                }
            }
        }
        stack.check_alive()?;
    }
    stack.stop(env, "latency")?;

    let mut s = Section::new(
        &format!("Request/response latency, {STUB}-byte stubs"),
        "µs, lower is better",
        &Path::ALL,
        1,
    );
    s.notes = vec![
        format!("{layout}"),
        format!(
            "one bound connection, one echo call at a time for {} s after {} s warm-up; p50 and p99 of every call of a sample, median of {} interleaved rounds",
            secs(plan.latency.secs),
            secs(plan.warmup),
            plan.latency.rounds
        ),
    ];
    s.goals
        .push(Goal::new("latency p50", Path::Haproxy, Cmp::AtMost, 1.00).on(&p50));
    s.goals
        .push(Goal::new("latency p99", Path::Haproxy, Cmp::AtMost, 1.10).on(&p99));
    s.rows = vec![p50, p99];
    Ok(s)
}
