//! Endpoint-mapper resolutions per second: 64 concurrent clients, each one in a loop of
//! connect, bind to the endpoint mapper, ept_map for the bench interface, close. Every
//! answer's tower is checked: the service port direct and through HAProxy, the pin's port
//! through rpcpin (which rewrites it). A fourth path is rpcpin in answer mode (it answers
//! ept_map itself from a cache of its own lookups at the server); after the rounds its
//! /metrics tell how many lookups it made and where its answers came from.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::ensure;
use rpcpin::wire::epm::EPM;
use tokio::io::AsyncWriteExt;

use super::{args, measure, secs, Plan};
use crate::dcerpc;
use crate::harness::{fetch_metrics, metric, Env, Layout, Path, Stack};
use crate::report::{Cmp, Goal, Row, Section};

/// Concurrent clients, as the issue says.
pub const CLIENTS: usize = 64;
/// rpcpin's `limits.resolve_cache`, left at its default in the answer-mode configuration.
const RESOLVE_CACHE: Duration = Duration::from_secs(30);
/// The ept_map questions the load asks rpcpin in answer mode: one interface, one version,
/// one transfer syntax, so one cache entry.
const MAP_KEYS: u64 = 1;

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
    /// Every resolution that succeeded, warm-up and the calls finishing after the window
    /// included: what the proxy answered.
    all: u64,
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
                        t.all += u64::from(r.is_ok());
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
        "n={} rate={:.1} errors={} all={}",
        t.done,
        t.done as f64 / a.secs,
        t.errors,
        t.all
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
    let paths = Path::EPTMAP;
    let mut stack = Stack::start(env, &layout, &paths)?;
    let mut rate = Row::new("ept_map resolutions");
    let mut answered = 0.0;
    for round in 0..plan.eptmap.rounds {
        for path in Path::rotation(&paths, round) {
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
            if path == Path::RpcpinAnswer {
                answered += f.f64("all").unwrap_or(f64::NAN);
            }
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
    let uptime = stack.uptime();
    let metrics = fetch_metrics(env.ports.answer_admin);
    stack.stop(env, "eptmap")?;

    let mut s = Section::new(
        &format!("ept_map resolutions, {CLIENTS} concurrent clients"),
        "per second, higher is better",
        &paths,
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
        "rpcpin and rpcpin-warn relay the endpoint mapper, at the default log level (info: one line per connection) and at warn".into(),
        "rpcpin-answer: a third rpcpin, `epm.mode = \"answer\"`, at the default log level: it answers ept_map itself from its cache of its own lookups at the server (`limits.resolve_cache` 30 s, the default); the client checks that the tower carries its pin's port".into(),
    ];
    match metrics {
        Ok(text) => answer_metrics(env, &mut s, &text, uptime, answered),
        Err(e) => env
            .failures
            .push(format!("eptmap: rpcpin-answer's /metrics: {e:#}")),
    }
    s.goals
        .push(Goal::new("ept_map rate", Path::Haproxy, Cmp::AtLeast, 1.10).on(&rate));
    s.goals.push(
        Goal::new("ept_map rate", Path::Direct, Cmp::AtLeast, 0.5)
            .stretch()
            .on(&rate),
    );
    s.goals.push(
        Goal::new("ept_map rate", Path::Haproxy, Cmp::AtLeast, 1.8)
            .of(Path::RpcpinAnswer)
            .on(&rate),
    );
    s.goals.push(
        Goal::new("ept_map rate", Path::Direct, Cmp::AtLeast, 0.85)
            .of(Path::RpcpinAnswer)
            .on(&rate),
    );
    s.rows = vec![rate];
    Ok(s)
}

/// What rpcpin in answer mode says of its work after the rounds: its lookups at the server
/// against the bound of the issue, and its answers by source against what the clients got.
fn answer_metrics(env: &mut Env, s: &mut Section, text: &str, uptime: Duration, answered: f64) {
    let lookups = metric(text, "rpcpin_epm_server_lookups_total", &[]);
    let cache = metric(text, "rpcpin_epm_answers_total", &[("source", "cache")]).unwrap_or(0.0);
    let server = metric(text, "rpcpin_epm_answers_total", &[("source", "server")]).unwrap_or(0.0);
    let Some(lookups) = lookups else {
        env.failures
            .push("eptmap: no rpcpin_epm_server_lookups_total in rpcpin-answer's /metrics".into());
        return;
    };
    let per_backend: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("rpcpin_epm_server_lookups_total{"))
        .map(|l| format!("`{l}`"))
        .collect();
    let t = uptime.as_secs_f64();
    let rc = RESOLVE_CACHE.as_secs_f64();
    let windows = t / rc;
    // The first lookup, then one per resolve_cache: an entry in use is refreshed in its last
    // fifth, and the refreshed entry lives from the old one's expiry, so refreshes come at
    // ⅘, 1⅘, 2⅘ … of resolve_cache.
    let bound = MAP_KEYS * (1 + ((t + rc * 0.2) / rc).floor() as u64);
    s.notes.push(format!(
        "rpcpin-answer's /metrics after {t:.0} s up ({windows:.2} × resolve_cache): server lookups {lookups:.0} ({}), answers from cache {cache:.0}, from server {server:.0}; the clients completed {answered:.0} ept_maps through it",
        per_backend.join(", ")
    ));
    s.checks.push((
        format!(
            "rpcpin-answer: {lookups:.0} server lookup(s) for {MAP_KEYS} pinned interface in {t:.0} s ≤ {bound} (the first, then one per resolve_cache of {rc:.0} s, each refreshed in its last fifth)"
        ),
        lookups <= bound as f64,
    ));
    let counted = cache + server == answered;
    s.checks.push((
        format!(
            "rpcpin-answer: answers counted ({:.0}) = ept_maps the clients completed ({answered:.0})",
            cache + server
        ),
        counted,
    ));
    // Not a goal but the path's proof of working: rpcpin answered every ept_map itself.
    if !counted {
        env.failures.push(format!(
            "eptmap via rpcpin-answer: rpcpin counted {:.0} answers for {answered:.0} ept_maps",
            cache + server
        ));
    }
}
