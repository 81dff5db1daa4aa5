//! rpcpin's benchmark harness: the same loads, interleaved, direct to a backend, through
//! HAProxy in TCP mode, and through rpcpin; medians, ratios and the issue's goals.
//!
//! ```text
//! rpcpin-bench run [--smoke]          # what scripts/bench.sh runs
//! rpcpin-bench backend …              # the DCE/RPC backend (started by `run`)
//! rpcpin-bench client <load> …        # a load generator (started by `run`)
//! ```

mod backend;
mod dcerpc;
mod harness;
mod loads;
mod report;

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};

use harness::{Env, Ports};
use loads::Plan;
use report::Section;

#[derive(Parser)]
#[command(about = "Benchmark rpcpin against HAProxy (TCP mode, splice) and a direct connection")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every load on every path and print the tables and goals.
    Run(RunArgs),
    /// The DCE/RPC backend: the bench interface and an endpoint mapper.
    Backend {
        #[arg(long)]
        svc_port: u16,
        #[arg(long)]
        epm_port: u16,
        /// Threads, each accepting on both ports.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// A load generator.
    #[command(subcommand)]
    Client(ClientLoad),
}

#[derive(Subcommand)]
enum ClientLoad {
    Bulk(loads::bulk::Args),
    Aggregate(loads::aggregate::Args),
    Latency(loads::latency::Args),
    Eptmap(loads::eptmap::Args),
    Idle(loads::idle::Args),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Each load for a fraction of a second; exit 0 when every path worked (CI).
    #[arg(long)]
    smoke: bool,
    /// Interleaved rounds for every load (default: 5 for bulk, aggregate and idle, 7 for latency and
    /// ept_map).
    #[arg(long)]
    rounds: Option<usize>,
    /// Only these loads (comma-separated: bulk, aggregate, latency, eptmap, idle).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The rpcpin binary.
    #[arg(long, default_value = "target/release/rpcpin")]
    rpcpin: PathBuf,
    /// The haproxy binary.
    #[arg(long, default_value = "haproxy")]
    haproxy: PathBuf,
    /// The first loopback port to try; eleven are used.
    #[arg(long, default_value_t = 17100)]
    base_port: u16,
    /// The command to print as the way to reproduce the run.
    #[arg(long, default_value = "scripts/bench.sh")]
    command: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::Backend {
            svc_port,
            epm_port,
            threads,
        } => backend::run(svc_port, epm_port, threads).map(|()| true),
        Cmd::Client(load) => match load {
            ClientLoad::Bulk(a) => loads::bulk::client(a),
            ClientLoad::Aggregate(a) => loads::aggregate::client(a),
            ClientLoad::Latency(a) => loads::latency::client(a),
            ClientLoad::Eptmap(a) => loads::eptmap::client(a),
            ClientLoad::Idle(a) => loads::idle::client(a),
        }
        .map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("rpcpin-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The whole run; `Ok(false)` when a path did not work.
fn run(a: RunArgs) -> anyhow::Result<bool> {
    let started = Instant::now();
    let plan = if a.smoke {
        Plan::smoke()
    } else {
        Plan::full(a.rounds)
    };
    let fds = raise_fd_limit()?;
    let needed = plan.idle_counts.iter().max().copied().unwrap_or(0) * 2 + 100;
    anyhow::ensure!(
        fds >= needed as u64,
        "{} idle connections need {needed} file descriptors in the proxy; the limit is {fds}",
        plan.idle_counts.iter().max().unwrap_or(&0)
    );
    let rpcpin = std::fs::canonicalize(&a.rpcpin)
        .with_context(|| format!("no rpcpin binary at {}", a.rpcpin.display()))?;
    let dir = std::env::temp_dir().join(format!("rpcpin-bench.{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut env = Env {
        exe: std::env::current_exe()?,
        rpcpin,
        haproxy: a.haproxy.clone(),
        dir: dir.clone(),
        ports: Ports::pick(a.base_port)?,
        messages: Vec::new(),
        failures: Vec::new(),
    };
    let wanted = |load: &str| a.only.is_empty() || a.only.iter().any(|o| o == load);

    println!("{}", header(&env, &a, &plan, fds));
    let mut sections: Vec<Section> = Vec::new();
    let mut emit = |s: Section| {
        println!("{}", s.render());
        sections.push(s);
    };
    if wanted("bulk") {
        eprintln!("rpcpin-bench: bulk …");
        emit(loads::bulk::run(&mut env, &plan)?);
    }
    if wanted("aggregate") {
        eprintln!("rpcpin-bench: aggregate bulk …");
        emit(loads::aggregate::run(&mut env, &plan)?);
    }
    if wanted("latency") {
        eprintln!("rpcpin-bench: latency …");
        emit(loads::latency::run(&mut env, &plan)?);
    }
    if wanted("eptmap") {
        eprintln!("rpcpin-bench: ept_map …");
        emit(loads::eptmap::run(&mut env, &plan)?);
    }
    if wanted("idle") {
        eprintln!("rpcpin-bench: idle connections …");
        let (memory, accept) = loads::idle::run(&mut env, &plan)?;
        emit(memory);
        emit(accept);
    }

    if plan.smoke {
        println!(
            "### Goals (smoke: samples too short to judge anything; listed to check the report)\n"
        );
    } else {
        println!("### Goals (ratios from this run)\n");
    }
    for s in &sections {
        for g in &s.goals {
            println!("    {}", g.line());
        }
        for (what, held) in &s.checks {
            println!("    {:<4} {what}", if *held { "PASS" } else { "MISS" });
        }
    }
    println!();
    print_messages(&env.messages);
    let _ = std::fs::remove_dir_all(&dir);
    let ok = env.failures.is_empty();
    if ok {
        println!(
            "Every path worked. Total time {:.0} s.",
            started.elapsed().as_secs_f64()
        );
    } else {
        println!("FAILED paths:");
        for f in &env.failures {
            println!("- {f}");
        }
    }
    Ok(ok)
}

/// The machine, the versions, the command and the date.
fn header(env: &Env, a: &RunArgs, plan: &Plan, fds: u64) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or("unknown", |m| m.trim_start_matches([' ', '\t', ':']));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let first_line = |cmd: &mut Command| {
        cmd.output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().map(str::to_string))
            .unwrap_or_else(|| "unknown".into())
    };
    let date = first_line(Command::new("date").arg("-u"));
    let rpcpin = first_line(Command::new(&env.rpcpin).arg("--version"));
    let haproxy = first_line(Command::new(&env.haproxy).arg("-v"));
    let command = if plan.smoke {
        format!("{} --smoke", a.command)
    } else {
        a.command.clone()
    };
    format!(
        "## rpcpin benchmark{}\n\n\
         - date: {date}\n\
         - machine: {} CPUs, {model}, kernel {}, {:.0} GiB RAM\n\
         - rpcpin: {rpcpin}; HAProxy: {haproxy}\n\
         - command: `{command}`\n\
         - open files limit: {fds}; ports from {} on 127.0.0.1\n\n\
         Every load runs all its paths back to back in each round, rounds interleaved, in fresh \
         processes pinned with taskset as each table says. Values are medians over rounds; a ratio \
         is the median over rounds of that round's ratio (which cancels the machine's drift \
         between rounds); spread is (max − min) / median of the noisiest path.\n",
        if plan.smoke {
            " (smoke: not a measurement)"
        } else {
            ""
        },
        harness::online_cpus(),
        kernel.trim(),
        mem_gib(),
        env.ports.backend_svc,
    )
}

fn mem_gib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0)
}

/// What the processes logged (rpcpin logs at warn; rpcpin in answer mode at info, its info
/// lines counted by event), each distinct line once with a count.
fn print_messages(messages: &[String]) {
    let mut seen: Vec<(&str, usize)> = Vec::new();
    for m in messages {
        match seen.iter_mut().find(|(s, _)| *s == m) {
            Some((_, n)) => *n += 1,
            None => seen.push((m, 1)),
        }
    }
    if seen.is_empty() {
        println!("Process logs: nothing logged by the backend, HAProxy or rpcpin.\n");
        return;
    }
    println!(
        "Process logs (rpcpin and rpcpin-answer log at info: their info lines are counted by event; every other line once):\n"
    );
    for (m, n) in seen.iter().take(40) {
        let m: String = m.chars().take(400).collect();
        println!("    {n:>4} × {m}");
    }
    if seen.len() > 40 {
        println!("    … {} more distinct lines", seen.len() - 40);
    }
    println!();
}

/// Raises the soft open-files limit to the hard one (children inherit it); returns it.
fn raise_fd_limit() -> anyhow::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit we own.
    unsafe {
        anyhow::ensure!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0,
            "getrlimit failed"
        );
        lim.rlim_cur = lim.rlim_max;
        anyhow::ensure!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0,
            "setrlimit failed"
        );
    }
    Ok(lim.rlim_cur)
}
