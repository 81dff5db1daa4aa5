//! The command line (README.md, "Command line"): `run`, `check`, `resolve`, `interfaces`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::backend::Backends;
use crate::config::{Config, LogFormat};
use crate::daemon::{Control, Daemon};
use crate::interfaces::KNOWN;
use crate::log_writer::{self, Guard};
use crate::metrics::metrics;

/// An endpoint-mapper-aware MS-RPC proxy: clients reach RPC services that live on dynamic
/// ports through port 135 and a few fixed ("pinned") ports.
#[derive(Debug, Parser)]
#[command(name = "rpcpin", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy in the foreground until SIGINT or SIGTERM.
    Run {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate the configuration and print the effective pins; exits non-zero on error.
    Check {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Ask each pin's server's endpoint mapper where its interfaces live; print a table.
    Resolve {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// List the interface aliases a pin's `interfaces` may name: alias, UUID, version, what.
    Interfaces,
}

impl Cli {
    /// Runs the chosen command.
    pub fn execute(self) -> ExitCode {
        let result = match self.command {
            Command::Run { config } => run(config),
            Command::Check { config } => check(config),
            Command::Resolve { config } => resolve(config),
            Command::Interfaces => interfaces(),
        };
        match result {
            Ok(code) => code,
            Err(e) => {
                eprintln!("rpcpin: error: {e:#}");
                ExitCode::FAILURE
            }
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(path: PathBuf) -> anyhow::Result<ExitCode> {
    let config = Config::load(&path)?;
    let (log_level, log_guard) = init_logging(config.log.format, &config.log.level)?;
    let user = config.process.user.clone();
    let ran = runtime()?.block_on(async {
        let daemon = Daemon::bind(config).await?;
        if let Some(user) = user {
            crate::privileges::drop_to(&user)?;
        }
        let signals = Signals::register()?;
        let (control, commands) = mpsc::channel(4);
        tokio::spawn(signals.serve(path, control, log_level));
        daemon.run(commands).await
    });
    // Every line logged until now is written before the process exits.
    drop(log_guard);
    ran?;
    Ok(ExitCode::SUCCESS)
}

fn check(path: PathBuf) -> anyhow::Result<ExitCode> {
    let config = Config::load(&path)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}: valid", path.display())?;
    writeln!(out, "backend  {}", config.backend)?;
    for (name, b) in &config.backends {
        let used = config.pins.iter().any(|p| p.backend.as_ref() == Some(name));
        let unused = if used { "" } else { "  (no pin uses it)" };
        writeln!(out, "backends.{name}  {b}{unused}")?;
    }
    let advertise = config.epm.advertise.map_or_else(
        || "the address each client connected to".to_string(),
        |a| a.to_string(),
    );
    writeln!(
        out,
        "epm      listen {}  advertise {}  mode {}",
        config.epm.listen,
        advertise,
        config.epm.mode.as_str()
    )?;
    if let Some(admin) = config.admin.listen {
        writeln!(
            out,
            "admin    listen {admin}  (/metrics, /healthz, /readyz)"
        )?;
    }
    for pin in &config.pins {
        let public = pin.advertise_port.map_or_else(
            || format!("{} (listen port)", pin.listen.port()),
            |p| p.to_string(),
        );
        let backend = pin.backend_port.map_or_else(
            || "resolved through the backend's endpoint mapper".to_string(),
            |p| format!("fixed {p}"),
        );
        let (server, at) = config.backend_of(pin);
        writeln!(
            out,
            "pin {:?}  listen {}  public port {public}  backend port {backend}  server {server} ({at})",
            pin.name, pin.listen
        )?;
        for i in &pin.interfaces {
            let what = KNOWN
                .iter()
                .find(|k| k.syntax.uuid == i.uuid)
                .map_or("", |k| k.description);
            let version = i.version.map_or("any version".to_string(), |(a, b)| {
                format!("{a}.{b} or older minor")
            });
            writeln!(
                out,
                "    {:<18} {}  {:<28} {}",
                i.alias.unwrap_or("-"),
                i.uuid,
                version,
                what
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per UUID an alias names, in columns split by spaces (the description last):
/// what an operator looks up, and what `tests/interop/check_aliases.py` reads.
fn interfaces() -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<18} {:<36} {:<7} DESCRIPTION",
        "ALIAS", "UUID", "VERSION"
    )?;
    for k in KNOWN {
        let version = format!("{}.{}", k.syntax.major, k.syntax.minor);
        writeln!(
            out,
            "{:<18} {:<36} {version:<7} {}",
            k.alias, k.syntax.uuid, k.description
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn resolve(path: PathBuf) -> anyhow::Result<ExitCode> {
    let config = Config::load(&path)?;
    let backends = Backends::new(&config);
    let mut failed = false;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<12} {:<14} {:<36} {:<7} {:<12} {:<15} {:<11} SERVER",
        "PIN", "INTERFACE", "UUID", "VERSION", "BACKEND PORT", "TOWER ADDRESS", "PUBLIC PORT"
    )?;
    let rt = runtime()?;
    for pin in &config.pins {
        let public = pin.advertise_port.unwrap_or(pin.listen.port());
        let resolver = backends.of(pin);
        let server = format!("{} ({})", resolver.name(), resolver.backend());
        for i in &pin.interfaces {
            let q = i.query_syntax();
            let alias = i.alias.unwrap_or("-");
            let version = format!("{}.{}", q.major, q.minor);
            match rt.block_on(resolver.query(q)) {
                Ok(endpoints) if !endpoints.is_empty() => {
                    for e in endpoints {
                        writeln!(
                            out,
                            "{:<12} {alias:<14} {:<36} {version:<7} {:<12} {:<15} {public:<11} {server}",
                            pin.name, i.uuid, e.port, e.addr
                        )?;
                    }
                }
                Ok(_) => {
                    failed = true;
                    writeln!(
                        out,
                        "{:<12} {alias:<14} {:<36} {version:<7} no ncacn_ip_tcp endpoint at {server}",
                        pin.name, i.uuid
                    )?;
                }
                Err(e) => {
                    failed = true;
                    writeln!(
                        out,
                        "{:<12} {alias:<14} {:<36} {version:<7} error at {server}: {e:#}",
                        pin.name, i.uuid
                    )?;
                }
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Changes the log level of a running process.
pub type LogLevel = reload::Handle<EnvFilter, Registry>;

/// Sets up the global subscriber, writing to stderr off the logging thread (`log_writer`:
/// lines a slow consumer cannot take are dropped and counted); `RUST_LOG` overrides the
/// configured level. Returns the handle that changes the level on a reload, and the guard
/// that writes out the queued lines when dropped: keep it until exit.
pub fn init_logging(format: LogFormat, level: &str) -> anyhow::Result<(LogLevel, Guard)> {
    let (filter, handle) = reload::Layer::new(log_filter(level)?);
    let stderr = std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr());
    let dropped = metrics().log_lines_dropped.clone();
    let (writer, guard) = log_writer::non_blocking(stderr, log_writer::QUEUE_LINES, dropped)
        .context("cannot start the log's writer thread")?;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        LogFormat::Json => registry
            .with(
                fmt.json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
        LogFormat::Text => registry.with(fmt).try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))?;
    Ok((handle, guard))
}

/// The filter for `level`, unless `RUST_LOG` sets one.
fn log_filter(level: &str) -> anyhow::Result<EnvFilter> {
    EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .map_err(|e| anyhow::anyhow!("log.level {level:?}: {e}"))
}

/// The signals rpcpin acts on. They are registered before anything listens (or says so),
/// so that a signal sent then is handled rather than given its default action, which for
/// SIGHUP is to exit.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn register() -> anyhow::Result<Signals> {
        let handler = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("cannot handle {name}"))
        };
        Ok(Signals {
            term: handler(SignalKind::terminate(), "SIGTERM")?,
            int: handler(SignalKind::interrupt(), "SIGINT")?,
            hup: handler(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// Turns signals into [`Control`]s: SIGTERM or SIGINT drains (a second one closes
    /// everything), SIGHUP reloads `path`: a file that does not load keeps the configuration
    /// running, and says why.
    async fn serve(mut self, path: PathBuf, control: mpsc::Sender<Control>, log_level: LogLevel) {
        let mut stopping = false;
        loop {
            tokio::select! {
                _ = self.int.recv() => {}
                _ = self.term.recv() => {}
                _ = self.hup.recv() => {
                    reload(&path, &control, &log_level).await;
                    continue;
                }
            }
            let command = if stopping {
                Control::Stop
            } else {
                Control::Shutdown
            };
            stopping = true;
            if control.send(command).await.is_err() {
                return;
            }
        }
    }
}

/// Loads `path` and hands it to the proxy, which applies it (or reports why not); the log
/// level changes once the configuration is applied.
async fn reload(path: &std::path::Path, control: &mpsc::Sender<Control>, log_level: &LogLevel) {
    let loaded = Config::load(path).and_then(|c| {
        let filter = log_filter(&c.log.level)?;
        Ok((c, filter))
    });
    let (config, filter) = match loaded {
        Ok((c, filter)) => (Ok(Box::new(c)), Some(filter)),
        Err(e) => (Err(e), None),
    };
    let (done, applied) = oneshot::channel();
    if control.send(Control::Reload(config, done)).await.is_err() {
        return;
    }
    if let (Ok(Ok(())), Some(filter)) = (applied.await, filter) {
        if let Err(e) = log_level.reload(filter) {
            tracing::warn!(event = "reload_partial", key = "log.level", reason = %e);
        }
    }
}
