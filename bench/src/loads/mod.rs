//! The loads. Each module holds both halves of one load: `client`, the load generator that
//! runs in its own pinned process and prints one `key=value` result line, and `run`, which
//! starts the processes, interleaves the paths round by round and builds the result table.

pub mod aggregate;
pub mod bulk;
pub mod eptmap;
pub mod idle;
pub mod latency;

use std::time::Duration;

use crate::harness::{Client, Env, Fields, Layout, Path};

/// How often and how long one load samples each path.
#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    /// Interleaved rounds; tables show the median.
    pub rounds: usize,
    /// Measured time per sample (unused by the idle load, which counts connections).
    pub secs: Duration,
}

/// How long and how often each load runs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `--smoke`: a fraction of a second per load, to check that every path works.
    pub smoke: bool,
    pub bulk: Sampling,
    pub aggregate: Sampling,
    pub latency: Sampling,
    pub eptmap: Sampling,
    pub idle: Sampling,
    /// Unmeasured time before each sample.
    pub warmup: Duration,
    /// Connection counts for the idle-memory and accept loads.
    pub idle_counts: Vec<usize>,
    /// The CPU that client, proxy and backend share for bulk and latency (the aggregate
    /// load shares it and `other_cpu`).
    pub shared_cpu: usize,
    /// Where the proxy runs alone for ept_map and idle connections (and the other CPU).
    pub proxy_cpu: usize,
    pub other_cpu: usize,
}

impl Plan {
    /// The full run: every goal measured, in about three minutes. The cheap loads get more
    /// rounds (ept_map and p99 are the noisiest); `rounds` overrides every load's count.
    pub fn full(rounds: Option<usize>) -> Plan {
        let (shared_cpu, proxy_cpu, other_cpu) = cpus();
        let sampling = |default: usize, ms: u64| Sampling {
            rounds: rounds.unwrap_or(default).max(1),
            secs: Duration::from_millis(ms),
        };
        Plan {
            smoke: false,
            bulk: sampling(5, 1000),
            aggregate: sampling(5, 1000),
            latency: sampling(7, 1000),
            eptmap: sampling(7, 1000),
            idle: sampling(5, 0),
            warmup: Duration::from_millis(250),
            idle_counts: vec![1000, 9000],
            shared_cpu,
            proxy_cpu,
            other_cpu,
        }
    }

    /// The CI smoke: every load and path once, briefly.
    pub fn smoke() -> Plan {
        let once = Sampling {
            rounds: 1,
            secs: Duration::from_millis(200),
        };
        Plan {
            smoke: true,
            bulk: once,
            aggregate: once,
            latency: once,
            eptmap: once,
            idle: once,
            warmup: Duration::from_millis(50),
            idle_counts: vec![50, 200],
            ..Plan::full(None)
        }
    }
}

/// The CPUs loads are pinned to: on a machine with two or more, the last one is shared by
/// the one-CPU loads and holds the proxy in the others; the one before it holds client and
/// backend there. On one CPU everything shares it.
fn cpus() -> (usize, usize, usize) {
    let n = crate::harness::online_cpus();
    let last = n.saturating_sub(1);
    (last, last, last.saturating_sub(1))
}

/// Runs the load generator once for `path`; a failure is recorded in `env` (so that the
/// other paths still run) and gives `None`.
pub fn measure(
    env: &mut Env,
    layout: &Layout,
    load: &str,
    path: Path,
    args: Vec<String>,
) -> Option<Fields> {
    match Client::run(env, layout, &args) {
        Ok(f) => Some(f),
        Err(e) => {
            env.failures.push(format!("{load} via {path}: {e:#}"));
            None
        }
    }
}

/// Formats a duration for a command line, in seconds.
pub fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

/// The load generator's command line: `load --key value …`.
pub fn args(load: &str, pairs: &[(&str, String)]) -> Vec<String> {
    let mut v = vec![load.to_string()];
    for (k, val) in pairs {
        v.push(format!("--{k}"));
        v.push(val.clone());
    }
    v
}
