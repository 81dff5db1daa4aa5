//! Endpoint-mapper resolutions per second: 64 concurrent clients, each one in a loop of
//! connect, bind to the endpoint mapper, ept_map for the bench interface, close. Every
//! answer's tower is checked: the service port direct and through HAProxy, the pin's port
//! through rpcpin (which rewrites it).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::ensure;
use rpcpin::wire::epm::EPM;
use tokio::io::AsyncWriteExt;

use super::{args, measure, secs, Plan};
use crate::dcerpc;
use crate::harness::{Env, Layout, Path, Stack};
use crate::report::{Cmp, Goal, Row, Section};

/// Concurrent clients, as the issue says.
pub const CLIENTS: usize = 64;

/// The load generator's arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    addr: String,
    #[arg(long, default_value_t = CLIENTS)]
    clients: usize,
    /// The port every answer's tower must carry.
    #[arg(long)]
    expect_port: u16,
    #[arg(long)]
    secs: f64,
    #[arg(long)]
    warmup: f64,
}

#[derive(Default)]
struct Tally {
    done: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Load generator: resolutions completed inside the measured window, per second.
pub fn client(a: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let from = Instant::now() + Duration::from_secs_f64(a.warmup);
    let until = from + Duration::from_secs_f64(a.secs);
    let tally = Rc::new(RefCell::new(Tally::default()));
    let request = Rc::new(dcerpc::ept_map_request(2));
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let tasks: Vec<_> = (0..a.clients)
            .map(|_| {
                let (tally, request, addr) = (tally.clone(), request.clone(), a.addr.clone());
                tokio::task::spawn_local(async move {
                    while Instant::now() < until {
                        let r = resolve(&addr, &request, a.expect_port).await;
                        let now = Instant::now();
                        let mut t = tally.borrow_mut();
                        match r {
                            Ok(()) if now >= from && now < until => t.done += 1,
                            Ok(()) => {}
                            Err(e) => {
                                t.errors += 1;
                                t.first_error.get_or_insert(format!("{e:#}"));
                            }
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    });
    let t = tally.borrow();
    if let Some(e) = &t.first_error {
        eprintln!("eptmap: first error: {e}");
    }
    println!(
        "n={} rate={:.1} errors={}",
        t.done,
        t.done as f64 / a.secs,
        t.errors
    );
    Ok(())
}

/// One resolution: connect, bind, ept_map, check the tower, close.
async fn resolve(addr: &str, request: &[u8], expect_port: u16) -> anyhow::Result<()> {
    let (mut s, mut buf) = dcerpc::bind_async(addr, EPM).await?;
    s.write_all(request).await?;
    let len = dcerpc::expect_pdu(&mut s, &mut buf).await?;
    let port = dcerpc::ept_map_port(&buf[..len])?;
    ensure!(
        port == expect_port,
        "tower port {port}, expected {expect_port}"
    );
    Ok(())
}

/// Runs the resolution load on every path, interleaved, with the proxy on its own CPU.
pub fn run(env: &mut Env, plan: &Plan) -> anyhow::Result<Section> {
    let layout = Layout::proxy_apart(plan.proxy_cpu, plan.other_cpu);
    let mut stack = Stack::start(env, &layout, &Path::ALL)?;
    let mut rate = Row::new("ept_map resolutions");
    for round in 0..plan.eptmap.rounds {
        for path in Path::rotation(&Path::ALL, round) {
            let args = args(
                "eptmap",
                &[
                    ("addr", env.ports.epm(path)),
                    ("expect-port", env.ports.tower_port(path).to_string()),
                    ("secs", secs(plan.eptmap.secs)),
                    ("warmup", secs(plan.warmup)),
                ],
            );
            let Some(f) = measure(env, &layout, "eptmap", path, args) else {
                continue;
            };
            match (f.f64("rate"), f.f64("errors")) {
                (Ok(r), Ok(0.0)) => rate.add(round, path, r),
                (Ok(_), Ok(errors)) => env
                    .failures
                    .push(format!("eptmap via {path}: {errors} failed resolutions")),
                (Err(e), _) | (_, Err(e)) => env.failures.push(format!("eptmap via {path}: {e:#}")),
            }
        }
        stack.check_alive()?;
    }
    stack.stop(env, "eptmap")?;

    let mut s = Section::new(
        &format!("ept_map resolutions, {CLIENTS} concurrent clients"),
        "per second, higher is better",
        &Path::ALL,
        0,
    );
    s.notes = vec![
        format!("{layout}"),
        format!(
            "each client: connect, bind, ept_map, close, in a loop; {} s measured after {} s warm-up, median of {} interleaved rounds",
            secs(plan.eptmap.secs),
            secs(plan.warmup),
            plan.eptmap.rounds
        ),
        "HAProxy relays the endpoint mapper as plain TCP; rpcpin parses every answer and rewrites its tower (checked by the client)".into(),
    ];
    s.goals
        .push(Goal::new("ept_map rate", Path::Haproxy, Cmp::AtLeast, 1.0).on(&rate));
    s.goals.push(
        Goal::new("ept_map rate", Path::Direct, Cmp::AtLeast, 0.5)
            .stretch()
            .on(&rate),
    );
    s.rows = vec![rate];
    Ok(s)
}
