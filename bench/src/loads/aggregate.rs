//! Aggregate bulk throughput: 64 connections at once, each moving PDUs one way in 1 MiB
//! writes, with client, proxy and backend sharing both CPUs and the proxy running two
//! threads (rpcpin two workers, HAProxy `nbthread 2`).

use std::time::Instant;

use anyhow::ensure;

use super::bulk::{rates, Direction, Shape, Transfer, Window, SIZES};
use super::{secs, Plan};
use crate::harness::{Env, Layout, Path};
use crate::report::{Cmp, Goal, Section};

/// Connections at once.
pub const CONNECTIONS: usize = 64;

/// The load generator's arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    addr: String,
    #[command(flatten)]
    transfer: Transfer,
    /// Connections, each on a thread of its own.
    #[arg(long, default_value_t = CONNECTIONS)]
    conns: usize,
    /// Measured seconds.
    #[arg(long)]
    secs: f64,
    /// Unmeasured seconds first.
    #[arg(long)]
    warmup: f64,
}

/// Load generator: `conns` connections, each bound and moving PDUs one way, all measured in
/// the same window; the rate is the sum of theirs.
pub fn client(a: Args) -> anyhow::Result<()> {
    let start = Instant::now();
    let threads: Vec<_> = (0..a.conns)
        .map(|_| {
            let (addr, transfer) = (a.addr.clone(), a.transfer);
            let window = Window::new(start, a.warmup, a.secs);
            std::thread::spawn(move || transfer.run(&addr, window))
        })
        .collect();
    let (mut bytes, mut rate, mut errors) = (0, 0.0, 0);
    for t in threads {
        match t.join() {
            Ok(Ok((b, secs, _))) => {
                bytes += b;
                rate += b as f64 / secs / 1e6;
            }
            Ok(Err(e)) => {
                if errors == 0 {
                    eprintln!("aggregate: first failed connection: {e:#}");
                }
                errors += 1;
            }
            Err(_) => errors += 1,
        }
    }
    ensure!(errors == 0, "{errors} of {} connections failed", a.conns);
    println!("bytes={bytes} conns={} rate={rate:.2}", a.conns);
    Ok(())
}

/// Runs both directions and sizes on every path, interleaved, everything on both CPUs.
pub fn run(env: &mut Env, plan: &Plan) -> anyhow::Result<Section> {
    let layout = Layout::shared(&[plan.other_cpu, plan.shared_cpu]);
    let cases: Vec<Transfer> = [Direction::Up, Direction::Down]
        .into_iter()
        .flat_map(|dir| {
            SIZES.map(|size| Transfer {
                dir,
                size,
                shape: Shape::Stream,
            })
        })
        .collect();
    let conns = [("conns", CONNECTIONS.to_string())];
    let rows = rates(
        env,
        plan,
        plan.aggregate,
        &layout,
        "aggregate",
        &cases,
        &conns,
    )?;

    let mut s = Section::new(
        &format!("Aggregate bulk throughput, {CONNECTIONS} connections"),
        "MB/s, higher is better",
        &Path::ALL,
        0,
    );
    s.notes = vec![
        format!("{layout}; the backend runs a thread per CPU"),
        format!(
            "{CONNECTIONS} connections at once, each bound, then moving PDUs one way in 1 MiB writes; the sum of their rates over {} s after {} s warm-up; median of {} interleaved rounds",
            secs(plan.aggregate.secs),
            secs(plan.warmup),
            plan.aggregate.rounds
        ),
    ];
    for row in &rows {
        s.goals.push(
            Goal::new(
                format!("aggregate {}", row.case),
                Path::Haproxy,
                Cmp::AtLeast,
                1.10,
            )
            .on(row),
        );
    }
    s.rows = rows;
    Ok(s)
}
