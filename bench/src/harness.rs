//! The processes of a run: the backend, HAProxy, rpcpin and the load generator, each started
//! under `taskset` on the CPUs a load's layout names, and what the run needs to know about
//! them (addresses, RSS, their logs).

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path as FsPath, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

use crate::dcerpc::BENCH_UUID;

/// The ways a client reaches the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Path {
    /// Straight to the backend.
    Direct,
    /// Through HAProxy in TCP mode with forced splice.
    Haproxy,
    /// Through rpcpin (its endpoint mapper in relay mode), at its default log level, info,
    /// as users run it.
    Rpcpin,
    /// The same rpcpin at log level warn, for comparison: the loads where logging costs
    /// something (many short connections) run it.
    RpcpinWarn,
    /// Through a second rpcpin whose endpoint mapper answers itself (`epm.mode = "answer"`):
    /// only the endpoint-mapper load runs it, since the mode changes port 135 alone.
    RpcpinAnswer,
}

impl Path {
    /// The paths of every load, in table order.
    pub const ALL: [Path; 3] = [Path::Direct, Path::Haproxy, Path::Rpcpin];
    /// The paths of the loads of many connections, where a log line per connection counts:
    /// every load's, and rpcpin at warn.
    pub const LOGGED: [Path; 4] = [Path::Direct, Path::Haproxy, Path::Rpcpin, Path::RpcpinWarn];
    /// The paths of the endpoint-mapper load: the logged ones, and rpcpin in answer mode.
    pub const EPTMAP: [Path; 5] = [
        Path::Direct,
        Path::Haproxy,
        Path::Rpcpin,
        Path::RpcpinWarn,
        Path::RpcpinAnswer,
    ];
    /// How many paths there are (table columns).
    pub const COUNT: usize = 5;
    /// The proxies of the logged loads.
    pub const PROXIES: [Path; 3] = [Path::Haproxy, Path::Rpcpin, Path::RpcpinWarn];

    /// The paths of round `round`, rotated so that no path always runs first.
    pub fn rotation(paths: &[Path], round: usize) -> Vec<Path> {
        let mut v = paths.to_vec();
        v.rotate_left(round % paths.len());
        v
    }

    /// As tables and logs name it.
    pub fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Haproxy => "haproxy",
            Path::Rpcpin => "rpcpin",
            Path::RpcpinWarn => "rpcpin-warn",
            Path::RpcpinAnswer => "rpcpin-answer",
        }
    }

    /// The column index of this path in result tables.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The loopback ports of a run.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub backend_svc: u16,
    pub backend_epm: u16,
    pub haproxy_svc: u16,
    pub haproxy_epm: u16,
    pub rpcpin_svc: u16,
    pub rpcpin_epm: u16,
    pub warn_svc: u16,
    pub warn_epm: u16,
    /// rpcpin in answer mode: its pin, its endpoint mapper and its admin listener.
    pub answer_svc: u16,
    pub answer_epm: u16,
    pub answer_admin: u16,
}

impl Ports {
    /// Eleven free ports from `base` up (below the ephemeral range, so that the thousands of
    /// client connections of a run never take one).
    pub fn pick(base: u16) -> anyhow::Result<Ports> {
        let mut free = (base..base.saturating_add(200))
            .filter(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        let mut next = || free.next().context("no free port near --base-port");
        Ok(Ports {
            backend_svc: next()?,
            backend_epm: next()?,
            haproxy_svc: next()?,
            haproxy_epm: next()?,
            rpcpin_svc: next()?,
            rpcpin_epm: next()?,
            warn_svc: next()?,
            warn_epm: next()?,
            answer_svc: next()?,
            answer_epm: next()?,
            answer_admin: next()?,
        })
    }

    /// The service (bench interface) port of a path.
    pub fn svc_port(&self, path: Path) -> u16 {
        match path {
            Path::Direct => self.backend_svc,
            Path::Haproxy => self.haproxy_svc,
            Path::Rpcpin => self.rpcpin_svc,
            Path::RpcpinWarn => self.warn_svc,
            Path::RpcpinAnswer => self.answer_svc,
        }
    }

    /// The endpoint-mapper port of a path.
    pub fn epm_port(&self, path: Path) -> u16 {
        match path {
            Path::Direct => self.backend_epm,
            Path::Haproxy => self.haproxy_epm,
            Path::Rpcpin => self.rpcpin_epm,
            Path::RpcpinWarn => self.warn_epm,
            Path::RpcpinAnswer => self.answer_epm,
        }
    }

    /// The service address of a path.
    pub fn svc(&self, path: Path) -> String {
        format!("127.0.0.1:{}", self.svc_port(path))
    }

    /// The endpoint-mapper address of a path.
    pub fn epm(&self, path: Path) -> String {
        format!("127.0.0.1:{}", self.epm_port(path))
    }

    /// The port an ept_map answer must carry on a path: rpcpin points it at its pin.
    pub fn tower_port(&self, path: Path) -> u16 {
        match path {
            Path::Direct | Path::Haproxy => self.backend_svc,
            rpcpin => self.svc_port(rpcpin),
        }
    }
}

/// A CPU list for `taskset -c`, or no pinning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cpus(pub Option<String>);

impl Cpus {
    /// How many CPUs the list names (all of them when unpinned).
    pub fn count(&self) -> usize {
        match &self.0 {
            None => online_cpus(),
            Some(list) => list
                .split(',')
                .map(|part| match part.split_once('-') {
                    Some((a, b)) => {
                        b.parse::<usize>().unwrap_or(0) + 1 - a.parse::<usize>().unwrap_or(0)
                    }
                    None => 1,
                })
                .sum(),
        }
    }

    /// The command that runs `program` on these CPUs.
    fn command(&self, program: &FsPath) -> Command {
        match &self.0 {
            None => Command::new(program),
            Some(list) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(list).arg(program);
                c
            }
        }
    }
}

impl fmt::Display for Cpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("any CPU"),
            Some(l) if l.contains([',', '-']) => write!(f, "CPUs {l}"),
            Some(l) => write!(f, "CPU {l}"),
        }
    }
}

/// Where a load's processes run.
#[derive(Debug, Clone)]
pub struct Layout {
    pub client: Cpus,
    pub proxy: Cpus,
    pub backend: Cpus,
}

impl Layout {
    /// Client, proxy and backend on one CPU.
    pub fn one_cpu(cpu: usize) -> Layout {
        Layout::shared(&[cpu])
    }

    /// Client, proxy and backend all sharing the CPUs `cpus` (once each).
    pub fn shared(cpus: &[usize]) -> Layout {
        let mut cpus = cpus.to_vec();
        cpus.sort_unstable();
        cpus.dedup();
        let list: Vec<String> = cpus.iter().map(usize::to_string).collect();
        let c = Cpus(Some(list.join(",")));
        Layout {
            client: c.clone(),
            proxy: c.clone(),
            backend: c,
        }
    }

    /// The proxy on one CPU, client and backend on another.
    pub fn proxy_apart(proxy: usize, rest: usize) -> Layout {
        let r = Cpus(Some(rest.to_string()));
        Layout {
            client: r.clone(),
            proxy: Cpus(Some(proxy.to_string())),
            backend: r,
        }
    }

    /// How many threads each proxy gets: one per CPU it may use.
    pub fn proxy_threads(&self) -> usize {
        self.proxy.count().max(1)
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.client == self.proxy && self.proxy == self.backend {
            return write!(
                f,
                "client, proxy and backend all on {} (taskset); {} proxy thread(s)",
                self.client,
                self.proxy_threads()
            );
        }
        write!(
            f,
            "client on {}, proxy on {} with {} thread(s), backend on {} (taskset)",
            self.client,
            self.proxy,
            self.proxy_threads(),
            self.backend
        )
    }
}

/// CPUs online on this machine.
pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// What every process of a run needs: programs, a scratch directory, ports.
pub struct Env {
    /// This program (the backend and the load generator are its subcommands).
    pub exe: PathBuf,
    pub rpcpin: PathBuf,
    pub haproxy: PathBuf,
    /// Configurations and logs.
    pub dir: PathBuf,
    pub ports: Ports,
    /// Notable lines from the processes' logs, gathered as they stop.
    pub messages: Vec<String>,
    /// Measurements that failed: a path that did not work.
    pub failures: Vec<String>,
}

/// A long-running child process whose output goes to a log file.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
    /// Logs at level info (rpcpin's default): its info lines are counted by event, not kept.
    info: bool,
}

impl Proc {
    fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> anyhow::Result<Proc> {
        let out = File::create(&log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Proc {
            name,
            child,
            log,
            info: false,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); its log {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log)
            );
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL if it lingers.
    fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tail(log: &FsPath) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The backend and the proxies a load runs against.
pub struct Stack {
    backend: Proc,
    proxies: Vec<(Path, Proc)>,
    /// When every port listened.
    started: Instant,
}

impl Stack {
    /// Starts the backend and the proxies `paths` need, on the layout's CPUs, and waits
    /// until every port listens. The backend gets one thread per CPU the layout gives it.
    pub fn start(env: &Env, layout: &Layout, paths: &[Path]) -> anyhow::Result<Stack> {
        let p = env.ports;
        let mut cmd = layout.backend.command(&env.exe);
        cmd.args(["backend", "--svc-port"])
            .arg(p.backend_svc.to_string())
            .arg("--epm-port")
            .arg(p.backend_epm.to_string())
            .arg("--threads")
            .arg(layout.backend.count().to_string());
        let backend = Proc::spawn("backend", cmd, env.dir.join("backend.log"))?;
        let mut listening = vec![p.backend_svc, p.backend_epm];
        let threads = layout.proxy_threads();

        let mut proxies = Vec::new();
        for &path in paths.iter().filter(|&&path| path != Path::Direct) {
            let name = path.to_string();
            let cfg = env.dir.join(format!("{name}.conf"));
            let mut cmd = if path == Path::Haproxy {
                fs::write(&cfg, haproxy_config(&p, threads))?;
                let mut cmd = layout.proxy.command(&env.haproxy);
                cmd.arg("-f").arg(&cfg).arg("-db");
                cmd
            } else {
                fs::write(&cfg, rpcpin_config(&p, path))?;
                let mut cmd = layout.proxy.command(&env.rpcpin);
                cmd.arg("run")
                    .arg("--config")
                    .arg(&cfg)
                    .env("TOKIO_WORKER_THREADS", threads.to_string())
                    .env_remove("RUST_LOG");
                cmd
            };
            cmd.current_dir(&env.dir);
            listening.extend([p.svc_port(path), p.epm_port(path)]);
            if path == Path::RpcpinAnswer {
                listening.push(p.answer_admin);
            }
            let mut proc = Proc::spawn(path.name(), cmd, env.dir.join(format!("{name}.log")))?;
            // rpcpin at its default level logs a line per connection: counted, not kept.
            proc.info = matches!(path, Path::Rpcpin | Path::RpcpinAnswer);
            proxies.push((path, proc));
        }
        let mut stack = Stack {
            backend,
            proxies,
            started: Instant::now(),
        };
        stack.wait_listening(&listening)?;
        stack.started = Instant::now();
        Ok(stack)
    }

    /// Waits for the ports to listen, without connecting (a probe connection would be a
    /// client that never binds, and rpcpin rightly logs those).
    fn wait_listening(&mut self, ports: &[u16]) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.check_alive()?;
            let open = listening_ports()?;
            if ports.iter().all(|p| open.contains(p)) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "ports {ports:?} not listening after 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The proxy process of a path (`None` for direct).
    pub fn proxy_pid(&self, path: Path) -> Option<u32> {
        self.proxies
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, proc)| proc.pid())
    }

    /// How long the stack has been listening.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Fails when any process of the stack has died.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.backend.check_alive()?;
        for (_, p) in &mut self.proxies {
            p.check_alive()?;
        }
        Ok(())
    }

    /// Stops every process and keeps the notable lines of their logs.
    pub fn stop(mut self, env: &mut Env, load: &str) -> anyhow::Result<()> {
        let alive = self.check_alive();
        let procs =
            std::iter::once(&mut self.backend).chain(self.proxies.iter_mut().map(|(_, p)| p));
        for p in procs {
            p.stop();
            let text = fs::read_to_string(&p.log).unwrap_or_default();
            let mut info_events: Vec<(String, usize)> = Vec::new();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                if p.info && line.contains(r#""level":"INFO""#) {
                    let event = json_string(line, "event").unwrap_or("-").to_string();
                    match info_events.iter_mut().find(|(e, _)| *e == event) {
                        Some((_, n)) => *n += 1,
                        None => info_events.push((event, 1)),
                    }
                    continue;
                }
                env.messages
                    .push(format!("[{load}] {}: {}", p.name, line.trim()));
            }
            if !info_events.is_empty() {
                let counts: Vec<String> = info_events
                    .iter()
                    .map(|(e, n)| format!("{e} × {n}"))
                    .collect();
                env.messages.push(format!(
                    "[{load}] {}: at level info (counted by event): {}",
                    p.name,
                    counts.join(", ")
                ));
            }
        }
        alive
    }
}

/// Ports in LISTEN state on 127.0.0.1, from /proc/net/tcp.
fn listening_ports() -> anyhow::Result<Vec<u16>> {
    let text = fs::read_to_string("/proc/net/tcp")?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (addr, port) = f.get(1)?.split_once(':')?;
            (addr == "0100007F" && f.get(3) == Some(&"0A"))
                .then(|| u16::from_str_radix(port, 16).ok())
                .flatten()
        })
        .collect())
}

/// HAProxy as an operator would deploy it in front of an RPC server: TCP mode, forced
/// kernel splicing both ways, a frontend per port.
fn haproxy_config(p: &Ports, threads: usize) -> String {
    format!(
        "\
global
    nbthread {threads}
    # 9,000 proxied connections need 18,000 descriptors; the hard limit is 20,000.
    maxconn 9700
    maxpipes 256
    ulimit-n 20000

defaults
    mode tcp
    maxconn 9700
    option splice-auto
    option splice-request
    option splice-response
    timeout connect 5s
    timeout client 15m
    timeout server 15m

frontend bench_svc
    bind 127.0.0.1:{hs}
    default_backend bench_svc

frontend bench_epm
    bind 127.0.0.1:{he}
    default_backend bench_epm

backend bench_svc
    server svc 127.0.0.1:{bs}

backend bench_epm
    server epm 127.0.0.1:{be}
",
        hs = p.haproxy_svc,
        he = p.haproxy_epm,
        bs = p.backend_svc,
        be = p.backend_epm,
    )
}

/// rpcpin with one pin for the bench interface and its endpoint-mapper listener, on the
/// ports of `path`:
/// - `Rpcpin`: relaying the endpoint mapper, at the default log level (info);
/// - `RpcpinWarn`: the same at level warn;
/// - `RpcpinAnswer`: answering the endpoint mapper itself, at the default level, with its
///   admin listener for /metrics.
fn rpcpin_config(p: &Ports, path: Path) -> String {
    let (mode, level, admin) = match path {
        Path::RpcpinWarn => ("relay", "level = \"warn\"\n", String::new()),
        Path::RpcpinAnswer => (
            "answer",
            "",
            format!("\n[admin]\nlisten = \"127.0.0.1:{}\"\n", p.answer_admin),
        ),
        _ => ("relay", "", String::new()),
    };
    format!(
        "\
[backend]
host = \"127.0.0.1\"
epm_port = {be}

[[pin]]
name = \"bench\"
listen = \"127.0.0.1:{pin_port}\"
interfaces = [\"{BENCH_UUID}\"]
backend_port = {bs}

[limits]
max_connections = 20000
max_connections_per_ip = 20000

[log]
format = \"json\"
{level}
[epm]
listen = \"127.0.0.1:{epm_port}\"
mode = \"{mode}\"
{admin}",
        be = p.backend_epm,
        bs = p.backend_svc,
        pin_port = p.svc_port(path),
        epm_port = p.epm_port(path),
    )
}

/// The string value of `"key":"…"` in a JSON log line (no escapes in the values looked for).
fn json_string<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

/// The body of `GET /metrics` on an admin listener.
pub fn fetch_metrics(port: u16) -> anyhow::Result<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("no HTTP header in the admin listener's answer")?;
    ensure!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "GET /metrics: {}",
        head.lines().next().unwrap_or("")
    );
    Ok(body.to_string())
}

/// The value of a Prometheus sample: `name` with exactly the `labels` given (`k="v"` pairs,
/// as rendered), or the sum over label sets when `labels` is empty.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, l) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        let have = |k: &str, v: &str| l.split(',').any(|kv| kv == format!("{k}=\"{v}\""));
        if labels.iter().all(|(k, v)| have(k, v)) {
            let v: f64 = value.parse().ok()?;
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Resident set size of a process, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

/// The `key=value` fields of a load generator's result line.
#[derive(Debug, Default, Clone)]
pub struct Fields(HashMap<String, String>);

impl Fields {
    pub fn parse(line: &str) -> Fields {
        Fields(
            line.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    pub fn f64(&self, key: &str) -> anyhow::Result<f64> {
        self.0
            .get(key)
            .with_context(|| format!("no {key} in the load generator's answer"))?
            .parse()
            .with_context(|| format!("{key} is not a number"))
    }
}

/// The load generator, running on the layout's client CPUs.
pub struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Client {
    /// Starts `rpcpin-bench client <args>`.
    pub fn spawn(env: &Env, layout: &Layout, args: &[String]) -> anyhow::Result<Client> {
        let mut cmd = layout.client.command(&env.exe);
        cmd.arg("client")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().context("starting the load generator")?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        Ok(Client {
            child,
            stdin,
            stdout,
        })
    }

    /// Runs the load generator to the end and returns its result line.
    pub fn run(env: &Env, layout: &Layout, args: &[String]) -> anyhow::Result<Fields> {
        let mut c = Client::spawn(env, layout, args)?;
        drop(c.stdin.take());
        let line = c.line()?;
        c.finish()?;
        Ok(Fields::parse(&line))
    }

    /// The next line the load generator prints.
    pub fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let status = self.child.wait()?;
            bail!("the load generator ended ({status}) without an answer");
        }
        Ok(line.trim().to_string())
    }

    /// Sends the load generator a line (the interactive loads take orders).
    pub fn say(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for the load generator to exit successfully.
    pub fn finish(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        let status = self.child.wait()?;
        ensure!(status.success(), "the load generator failed ({status})");
        Ok(())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
