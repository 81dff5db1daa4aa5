//! Configuration generations: what one configuration needs at run time (its listeners,
//! the rewrite table, the backends), and how a reload replaces it for new connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use super::socket::listen;
use crate::backend::{Backends, Resolver};
use crate::config::{Config, Pin};
use crate::epm_cache::EpmAnswers;
use crate::epm_rewrite::Table;
use crate::metrics::{metrics, ReloadLabels};
use crate::wire::SyntaxId;

/// One generation of the configuration, and what is built from it. A connection keeps the
/// generation it was accepted under; a reload makes a new one for the connections after it.
#[derive(Debug)]
pub(super) struct Generation {
    pub(super) config: Config,
    /// Where the towers of pinned interfaces point.
    pub(super) table: Table,
    /// The servers in use, each with its endpoint-mapper client and cache.
    backends: Backends,
    /// The servers' endpoint-mapper answers, for answer mode.
    epm_answers: EpmAnswers,
}

impl Generation {
    /// The generation of `config`, its rewrite table built: a resolver (and cache) per
    /// server in use. A reload makes new ones, so a changed server starts with no cache.
    pub(super) fn new(config: Config, table: Table) -> Generation {
        Generation {
            backends: Backends::new(&config),
            epm_answers: EpmAnswers::new(&config.limits),
            table,
            config,
        }
    }

    /// `[backend]`'s resolver: the endpoint-mapper listener relays to it.
    pub(super) fn resolver(&self) -> &Arc<Resolver> {
        self.backends.default_server()
    }

    /// The resolver of the server `pin` resolves and connects at (`pin.backend`, or
    /// `[backend]`).
    pub(super) fn resolver_of(&self, pin: &Pin) -> &Arc<Resolver> {
        self.backends.of(pin)
    }

    /// The resolver of the server of the pin named `pin`; `[backend]`'s when no pin has
    /// that name.
    pub(super) fn resolver_of_pin_named(&self, pin: &str) -> &Arc<Resolver> {
        match self.config.pins.iter().find(|p| p.name == pin) {
            Some(p) => self.resolver_of(p),
            None => self.resolver(),
        }
    }

    /// Every server in use, `[backend]`'s first.
    pub(super) fn backends(&self) -> &Backends {
        &self.backends
    }

    /// Forgets what `resolver`'s server was known to serve `interface` on, after a connect
    /// to it failed or the server refused the interface there: the pins' cached port and
    /// answer mode's kept answers for the interface.
    pub(super) fn forget(&self, resolver: &Resolver, interface: &SyntaxId) {
        resolver.forget(interface);
        let uuid = interface.uuid;
        self.epm_answers
            .maps
            .forget(|(_, key)| key.interface.uuid == uuid);
    }

    /// The servers' endpoint-mapper answers kept for answer mode.
    pub(super) fn epm_answers(&self) -> &EpmAnswers {
        &self.epm_answers
    }
}

/// A pin as it runs: its configuration and the port clients are sent to.
#[derive(Debug)]
pub(super) struct PinRuntime {
    pub(super) config: Pin,
    /// The port clients are sent to: `advertise_port`, or the bound listen port.
    pub(super) public_port: u16,
}

/// What a listener serves.
#[derive(Debug, Clone)]
pub(super) enum Role {
    Epm,
    Pin(Arc<PinRuntime>),
}

impl Role {
    /// `epm` or the pin's name, as logs and metrics name the listener.
    pub(super) fn name(&self) -> &str {
        match self {
            Role::Epm => "epm",
            Role::Pin(p) => &p.config.name,
        }
    }

    /// Whether its connections start with a PROXY protocol header.
    pub(super) fn proxy_protocol(&self, config: &Config) -> bool {
        match self {
            Role::Epm => config.epm.proxy_protocol,
            Role::Pin(p) => p.config.proxy_protocol,
        }
    }
}

/// A listener bound for a configuration, not yet serving.
#[derive(Debug)]
pub(super) struct Bound {
    /// The address the configuration names (port 0 included).
    pub(super) configured: SocketAddr,
    pub(super) role: Role,
    /// `None` when the listener already runs (a reload that keeps it).
    pub(super) listener: Option<TcpListener>,
}

/// A listener that is serving.
#[derive(Debug)]
pub(super) struct Listening {
    /// The bound address.
    pub(super) local: SocketAddr,
    /// The role its next connections get.
    pub(super) role: watch::Sender<Role>,
    pub(super) task: tokio::task::AbortHandle,
}

/// Builds a configuration's generation: binds every listener not already running (those
/// in `running`, by configured address, with their bound address), works out each pin's
/// public port, and the rewrite table. Nothing is bound when an error is returned.
pub(super) fn build(
    config: Config,
    running: &HashMap<SocketAddr, SocketAddr>,
) -> anyhow::Result<(Generation, Vec<Bound>)> {
    let bind = |addr: SocketAddr, key: &str| -> anyhow::Result<(Option<TcpListener>, u16)> {
        if let Some(local) = running.get(&addr).filter(|_| addr.port() != 0) {
            return Ok((None, local.port()));
        }
        let l = listen(addr, &config.limits)
            .with_context(|| format!("cannot listen on {key} {addr}"))?;
        let port = l.local_addr()?.port();
        Ok((Some(l), port))
    };
    let (epm, _) = bind(config.epm.listen, "epm.listen")?;
    let mut bound = vec![Bound {
        configured: config.epm.listen,
        role: Role::Epm,
        listener: epm,
    }];
    for (i, pin) in config.pins.iter().enumerate() {
        let (listener, port) = bind(pin.listen, &format!("pin[{i}].listen"))?;
        let runtime = PinRuntime {
            config: pin.clone(),
            public_port: pin.advertise_port.unwrap_or(port),
        };
        bound.push(Bound {
            configured: pin.listen,
            role: Role::Pin(Arc::new(runtime)),
            listener,
        });
    }
    let table = Table::from_pins(bound.iter().filter_map(|b| match &b.role {
        Role::Pin(p) => Some((&p.config, p.public_port)),
        Role::Epm => None,
    }));
    Ok((Generation::new(config, table), bound))
}

/// Applies `config` to new connections: listeners it no longer names stop (their
/// connections go on), new ones start through `start`, and those it keeps serve their new
/// role.
pub(super) fn reload(
    config: Config,
    current: &watch::Sender<Arc<Generation>>,
    running: &mut HashMap<SocketAddr, Listening>,
    start: &impl Fn(Bound) -> anyhow::Result<Listening>,
) -> anyhow::Result<()> {
    warn_about_restart_only_keys(&config, &current.borrow().config);
    let locals = running.iter().map(|(c, l)| (*c, l.local)).collect();
    let (generation, bound) = build(config, &locals)?;
    let keep: Vec<SocketAddr> = bound.iter().map(|b| b.configured).collect();
    running.retain(|addr, l| {
        let kept = keep.contains(addr) && addr.port() != 0;
        if !kept {
            info!(event = "stopped_listening", listener = l.role.borrow().name(), addr = %addr);
            l.task.abort();
        }
        kept
    });
    for b in bound {
        match (running.get(&b.configured), b.listener.is_some()) {
            (Some(l), false) => {
                let _ = l.role.send(b.role);
            }
            _ => {
                let configured = b.configured;
                running.insert(configured, start(b)?);
            }
        }
    }
    current.send_replace(Arc::new(generation));
    Ok(())
}

/// Says which changed keys a reload cannot apply.
fn warn_about_restart_only_keys(new: &Config, old: &Config) {
    for (key, changed) in [
        ("admin.listen", new.admin.listen != old.admin.listen),
        (
            "limits.max_connections",
            new.limits.max_connections != old.limits.max_connections,
        ),
        ("process.user", new.process.user != old.process.user),
        ("log.format", new.log.format != old.log.format),
    ] {
        if changed {
            warn!(
                event = "reload_partial",
                key,
                reason = "takes effect at the next start"
            );
        }
    }
}

/// Logs and counts the outcome of a reload.
pub(super) fn report_reload(result: &anyhow::Result<()>) {
    match result {
        Ok(()) => info!(event = "reloaded"),
        Err(e) => warn!(event = "reload_failed", error = %format!("{e:#}")),
    }
    let result = if result.is_ok() { "ok" } else { "error" };
    metrics()
        .reloads
        .get_or_create(&ReloadLabels { result })
        .inc();
}
