//! Many idle connections: how long N connections take to be accepted and bound, how much
//! resident memory each costs the proxy once bound and idle (RSS delta / N), and whether
//! every one still works afterwards (one echo call each).
//!
//! Every sample starts a fresh backend and proxy, so that memory a previous sample left in
//! an allocator's free lists is not counted as free.

use std::io::BufRead;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use rpcpin::wire::{PacketType, Pdu};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::{args, Plan};
use crate::dcerpc::{self, op, BENCH};
use crate::harness::{rss_kib, Client, Env, Layout, Path, Stack};
use crate::report::{Cmp, Goal, Row, Section};

/// Connection attempts in flight at once: a burst of clients, as after a server restart.
/// Under the backend's and HAProxy's listen backlog (4,096); over rpcpin's (128, tokio's
/// default), where a full accept queue drops SYNs and those clients retry a second later.
const PARALLEL: usize = 256;
/// Connections opened and closed before the baseline is read.
const WARMUP_CONNECTIONS: usize = 16;

/// The load generator's arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    addr: String,
    #[arg(long)]
    count: usize,
    #[arg(long, default_value_t = PARALLEL)]
    parallel: usize,
}

/// Load generator, driven line by line on stdin:
/// prints `warm` after a few throw-away connections; on `go` opens and binds `count`
/// connections and prints `bound n= errors= ms=`; on `check` makes one echo call on each
/// and prints `checked ok= errors=`, then closes them all.
pub fn client(a: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let warm = open_all(&a.addr, WARMUP_CONNECTIONS, a.parallel).await;
        ensure!(warm.1 == 0, "warm-up connections failed");
        drop(warm);
        tokio::time::sleep(Duration::from_millis(100)).await;
        println!("warm");
        wait_for("go")?;

        let started = Instant::now();
        let (conns, errors) = open_all(&a.addr, a.count, a.parallel).await;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        println!("bound n={} errors={errors} ms={ms:.1}", conns.len());
        wait_for("check")?;

        let (ok, errors) = echo_all(conns, a.parallel).await;
        println!("checked ok={ok} errors={errors}");
        Ok(())
    })
}

fn wait_for(word: &str) -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    ensure!(
        line.trim() == word,
        "expected {word:?} on stdin, got {line:?}"
    );
    Ok(())
}

/// Opens and binds `count` connections, `parallel` at a time; returns the bound ones and
/// how many failed.
async fn open_all(addr: &str, count: usize, parallel: usize) -> (Vec<TcpStream>, usize) {
    let gate = Rc::new(Semaphore::new(parallel));
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let (gate, addr) = (gate.clone(), addr.to_string());
            tokio::task::spawn_local(async move {
                let _permit = gate.acquire().await.expect("never closed");
                dcerpc::bind_async(&addr, BENCH).await.map(|(s, _)| s)
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(count);
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(s)) => conns.push(s),
            Ok(Err(e)) => {
                if errors == 0 {
                    eprintln!("idle: first failed connection: {e:#}");
                }
                errors += 1;
            }
            Err(_) => errors += 1,
        }
    }
    (conns, errors)
}

/// One echo call on every connection, `parallel` at a time; then every connection closes.
async fn echo_all(conns: Vec<TcpStream>, parallel: usize) -> (usize, usize) {
    let gate = Rc::new(Semaphore::new(parallel));
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut s| {
            let gate = gate.clone();
            tokio::task::spawn_local(async move {
                let _permit = gate.acquire().await.expect("never closed");
                let req = dcerpc::request(2, op::ECHO, &[7; 128]);
                s.write_all(&req).await?;
                let mut buf = Vec::with_capacity(256);
                let len = dcerpc::expect_pdu(&mut s, &mut buf).await?;
                let p = Pdu::new_checked(&buf[..len])?;
                ensure!(p.ptype() == PacketType::Response, "no response to the echo");
                anyhow::Ok(())
            })
        })
        .collect();
    let mut ok = 0;
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => {
                if errors == 0 {
                    eprintln!("idle: first failed echo: {e:#}");
                }
                errors += 1;
            }
            Err(_) => errors += 1,
        }
    }
    (ok, errors)
}

/// What one sample measured.
struct Sample {
    bound: usize,
    errors: usize,
    ms: f64,
    /// RSS delta per connection of the proxy, in KiB.
    kib_per_conn: Option<f64>,
    echoed: usize,
}

impl Sample {
    /// Every connection bound, still answered afterwards, and nothing failed.
    fn held(&self, count: usize) -> bool {
        self.bound == count && self.echoed == count && self.errors == 0
    }

    fn describe(&self) -> String {
        format!(
            "{} bound, {} answered an echo afterwards, {} errors",
            self.bound, self.echoed, self.errors
        )
    }
}

/// One sample: fresh processes, warm-up, baseline RSS, `count` connections, RSS again,
/// one echo on each.
fn sample(env: &mut Env, layout: &Layout, path: Path, count: usize) -> anyhow::Result<Sample> {
    let mut stack = Stack::start(env, layout, &[path])?;
    let pid = stack.proxy_pid(path);
    let args = args(
        "idle",
        &[("addr", env.ports.svc(path)), ("count", count.to_string())],
    );
    let result = (|| {
        let mut client = Client::spawn(env, layout, &args)?;
        ensure!(
            client.line()? == "warm",
            "the load generator did not warm up"
        );
        let before = pid.map(rss_kib).transpose()?;
        client.say("go")?;
        let bound = crate::harness::Fields::parse(&client.line()?);
        // Let the proxy finish relaying the last bind_acks before reading its RSS.
        std::thread::sleep(Duration::from_millis(300));
        let after = pid.map(rss_kib).transpose()?;
        client.say("check")?;
        let checked = crate::harness::Fields::parse(&client.line()?);
        client.finish()?;
        stack.check_alive()?;
        let n = bound.f64("n")? as usize;
        Ok(Sample {
            bound: n,
            errors: bound.f64("errors")? as usize + checked.f64("errors")? as usize,
            ms: bound.f64("ms")?,
            kib_per_conn: before
                .zip(after)
                .map(|(b, a)| (a as f64 - b as f64) / n.max(1) as f64),
            echoed: checked.f64("ok")? as usize,
        })
    })();
    stack.stop(env, "idle")?;
    result.context("idle connections")
}

/// Opens 1,000 and 9,000 idle connections (or the smoke's counts) on every path, fresh
/// processes each time, proxy on its own CPU.
pub fn run(env: &mut Env, plan: &Plan) -> anyhow::Result<(Section, Section)> {
    let layout = Layout::proxy_apart(plan.proxy_cpu, plan.other_cpu);
    let mut memory: Vec<Row> = Vec::new();
    let mut accept: Vec<Row> = Vec::new();
    // Whether each sample of the largest count held every connection, per proxy.
    let largest = plan.idle_counts.iter().max().copied().unwrap_or(0);
    let mut held: Vec<(Path, bool, String)> = Vec::new();
    for &count in &plan.idle_counts {
        let mut mem = Row::new(format!("{count} connections"));
        let mut time = Row::new(format!("{count} connections"));
        for round in 0..plan.idle.rounds {
            for path in Path::rotation(&Path::LOGGED, round) {
                let (fine, what) = match sample(env, &layout, path, count) {
                    Ok(s) => {
                        if let Some(k) = s.kib_per_conn {
                            mem.add(round, path, k);
                        }
                        if s.held(count) {
                            time.add(round, path, s.ms);
                        }
                        (s.held(count), s.describe())
                    }
                    Err(e) => (false, format!("{e:#}")),
                };
                if !fine {
                    env.failures
                        .push(format!("idle via {path}, {count} connections: {what}"));
                }
                if count == largest && path != Path::Direct {
                    held.push((path, fine, what));
                }
            }
        }
        memory.push(mem);
        accept.push(time);
    }

    let mut m = Section::new(
        "Memory per idle bound connection",
        "KiB of proxy RSS per connection, lower is better",
        &Path::PROXIES,
        2,
    );
    m.notes = vec![
        format!("{layout}"),
        format!(
            "fresh proxy and backend per sample; RSS (VmRSS) after {WARMUP_CONNECTIONS} throw-away connections, then after N connections each bound (bind → bind_ack relayed) and idle; (after − before) / N; median of {} interleaved rounds",
            plan.idle.rounds
        ),
        "kernel socket buffers are not in RSS and are the same for both proxies".into(),
    ];
    for row in &memory {
        m.goals.push(
            Goal::new(
                format!("idle memory per connection, {}", row.case),
                Path::Haproxy,
                Cmp::AtMost,
                0.80,
            )
            .on(row),
        );
    }
    m.rows = memory;

    let mut t = Section::new(
        "Time to accept and bind N connections",
        "ms, lower is better",
        &Path::LOGGED,
        0,
    );
    t.notes = vec![
        format!("{layout}"),
        format!(
            "from the first connect to the last bind_ack, {PARALLEL} connections in flight at a time; then every connection makes one echo call (the connections are held, not just opened); median of {} interleaved rounds",
            plan.idle.rounds
        ),
    ];
    for path in Path::PROXIES {
        let samples: Vec<&(Path, bool, String)> = held.iter().filter(|h| h.0 == path).collect();
        let fine = samples.iter().filter(|h| h.1).count();
        let shown = samples.iter().find(|h| !h.1).or(samples.first());
        let what = shown.map_or("no sample".to_string(), |h| h.2.clone());
        let all = fine == samples.len() && fine > 0;
        t.checks.push((
            format!(
                "{largest} concurrent connections held through {path} with no error in {fine} of {} samples ({}: {what})",
                samples.len(),
                if all { "each" } else { "worst" },
            ),
            all,
        ));
    }
    t.rows = accept;
    Ok((m, t))
}
