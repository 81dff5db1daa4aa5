//! The proxy: listeners, one task per connection, limits, reload and shutdown.
//!
//! [`Server::bind`] opens every listener first, so that a port already in use is reported
//! before anything runs; [`Server::run`] then serves until told to stop through its
//! [`Control`] channel, applying new configurations to new connections on the way.
//!
//! Inside, in the order a connection meets them: `connection` accepts clients (within the
//! counts of `limits`) and runs each connection's life; `epm` and `pin` are the two kinds
//! of listener, whose bind decisions `gate` makes and whose PDUs `relay` moves;
//! `generation` is what one configuration builds and how a reload swaps it; `socket` sets
//! socket options.

mod connection;
mod epm;
mod facts;
mod gate;
mod generation;
mod handshake;
mod limits;
mod order;
mod pin;
mod relay;
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod sequence;
mod small_map;
mod socket;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::info;

use crate::admin::Readiness;
use crate::config::Config;
use connection::Accepting;
use generation::{report_reload, Bound, Generation, Role};
use limits::Admission;

/// What a running server is told to do.
#[derive(Debug)]
pub enum Control {
    /// Apply this configuration to new connections (SIGHUP), or report why it could not be
    /// loaded; the answer says whether it was applied.
    Reload(
        anyhow::Result<Box<Config>>,
        oneshot::Sender<anyhow::Result<()>>,
    ),
    /// Stop accepting and let established connections finish, for at most
    /// `limits.drain_timeout` (SIGTERM, SIGINT).
    Shutdown,
    /// Close everything now (a second signal).
    Stop,
}

/// A server whose listeners are bound.
#[derive(Debug)]
pub struct Server {
    generation: Generation,
    bound: Vec<Bound>,
    admission: Arc<Admission>,
    readiness: watch::Sender<Readiness>,
}

impl Server {
    /// Binds the EPM listener and every pin listener.
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        let admission = Arc::new(Admission::new(&config.limits));
        let (generation, bound) = generation::build(config, &HashMap::new())?;
        let (readiness, _) = watch::channel(readiness_of(&generation, false));
        Ok(Server {
            generation,
            bound,
            admission,
            readiness,
        })
    }

    /// The EPM listener's address.
    pub fn epm_addr(&self) -> SocketAddr {
        self.addr_of(|r| matches!(r, Role::Epm))[0]
    }

    /// Each pin listener's address, in configuration order.
    pub fn pin_addrs(&self) -> Vec<SocketAddr> {
        self.addr_of(|r| matches!(r, Role::Pin(_)))
    }

    fn addr_of(&self, role: impl Fn(&Role) -> bool) -> Vec<SocketAddr> {
        self.bound
            .iter()
            .filter(|b| role(&b.role))
            .filter_map(|b| b.listener.as_ref()?.local_addr().ok())
            .collect()
    }

    /// What `/readyz` needs, kept current through reloads and the drain.
    pub fn readiness(&self) -> watch::Receiver<Readiness> {
        self.readiness.subscribe()
    }

    /// Serves until told to stop (or every sender of `control` is gone, which is a
    /// shutdown).
    pub async fn run(self, mut control: mpsc::Receiver<Control>) -> anyhow::Result<()> {
        let Server {
            generation,
            bound,
            admission,
            readiness,
        } = self;
        let (current, current_rx) = watch::channel(Arc::new(generation));
        let (stop, stop_rx) = watch::channel(false);
        let accepting = Accepting {
            current: current_rx,
            stop: stop_rx,
            admission: admission.clone(),
        };
        let start = |b: Bound| accepting.start(b);
        let mut running = HashMap::new();
        for b in bound {
            running.insert(b.configured, start(b)?);
        }

        let stop_now = loop {
            match control.recv().await {
                Some(Control::Reload(config, done)) => {
                    let applied =
                        config.and_then(|c| generation::reload(*c, &current, &mut running, &start));
                    if applied.is_ok() {
                        readiness.send_replace(readiness_of(&current.borrow(), false));
                    }
                    report_reload(&applied);
                    let _ = done.send(applied);
                }
                Some(Control::Shutdown) | None => break false,
                Some(Control::Stop) => break true,
            }
        };

        // Stop accepting: the listeners close, and load balancers see /readyz fail.
        readiness.send_replace(readiness_of(&current.borrow(), true));
        for l in running.values() {
            l.task.abort();
        }
        if !stop_now {
            let drain_timeout = current.borrow().config.limits.drain_timeout;
            drain(&mut control, &admission, drain_timeout).await;
        }
        let left = admission.open_connections();
        let _ = stop.send(true);
        // Let the connections told to stop log how they ended.
        let _ = tokio::time::timeout(Duration::from_secs(1), admission.all_closed()).await;
        info!(event = "shutdown", closed_connections = left);
        Ok(())
    }
}

/// Waits until every connection is closed, `timeout` passed, or a second signal came;
/// refuses reloads meanwhile.
async fn drain(control: &mut mpsc::Receiver<Control>, admission: &Admission, timeout: Duration) {
    info!(
        event = "draining",
        connections = admission.open_connections(),
        drain_timeout_s = timeout.as_secs_f64(),
    );
    let second_signal = async {
        loop {
            match control.recv().await {
                Some(Control::Shutdown | Control::Stop) => return,
                Some(Control::Reload(_, done)) => {
                    let refused = Err(anyhow!("rpcpin is draining"));
                    report_reload(&refused);
                    let _ = done.send(refused);
                }
                None => std::future::pending::<()>().await,
            }
        }
    };
    tokio::select! {
        () = admission.all_closed() => {}
        () = tokio::time::sleep(timeout) => {}
        () = second_signal => {}
    }
}

fn readiness_of(generation: &Generation, draining: bool) -> Readiness {
    Readiness {
        draining,
        backends: generation.backends().clone(),
        window: generation.config.admin.ready_window,
    }
}
