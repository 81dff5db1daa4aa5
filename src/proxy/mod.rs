//! The proxy: listeners, one task per connection, shutdown.
//!
//! [`Server::bind`] opens every listener first, so that a port already in use is reported
//! before anything runs; [`Server::run`] then serves until its shutdown future completes.

mod epm;
pub mod io;
mod pin;
pub mod relay;
pub mod resolver;

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{info, info_span, warn, Instrument};

use crate::config::{Config, Pin};
use crate::rewrite::{Table, Target};
use resolver::Resolver;

/// State every connection of a server shares.
#[derive(Debug)]
pub(crate) struct Shared {
    config: Config,
    table: Table,
    resolver: Resolver,
}

/// A pin as it runs: its configuration and the port it was bound to.
#[derive(Debug)]
pub(crate) struct PinRuntime {
    config: Pin,
    backend_port: Option<u16>,
    /// The port clients are sent to: `advertise_port`, or the bound listen port.
    public_port: u16,
}

/// A server whose listeners are bound.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    epm: TcpListener,
    pins: Vec<(Arc<PinRuntime>, TcpListener)>,
}

impl Server {
    /// Binds the EPM listener and every pin listener.
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        let epm = TcpListener::bind(config.epm.listen)
            .await
            .with_context(|| format!("cannot listen on epm.listen {}", config.epm.listen))?;
        let mut pins = Vec::new();
        let mut targets = Vec::new();
        for (i, pin) in config.pins.iter().enumerate() {
            let listener = TcpListener::bind(pin.listen)
                .await
                .with_context(|| format!("cannot listen on pin[{i}].listen {}", pin.listen))?;
            let port = pin.advertise_port.unwrap_or(listener.local_addr()?.port());
            targets.extend(pin.interfaces.iter().map(|&interface| Target {
                interface,
                pin: pin.name.clone(),
                port,
            }));
            let runtime = PinRuntime {
                config: pin.clone(),
                backend_port: pin.backend_port,
                public_port: port,
            };
            pins.push((Arc::new(runtime), listener));
        }
        let shared = Shared {
            resolver: Resolver::new(config.backend.clone(), &config.limits),
            table: Table::new(targets),
            config,
        };
        Ok(Server {
            shared: Arc::new(shared),
            epm,
            pins,
        })
    }

    /// The EPM listener's address.
    pub fn epm_addr(&self) -> SocketAddr {
        self.epm
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Each pin listener's address, in configuration order.
    pub fn pin_addrs(&self) -> Vec<SocketAddr> {
        self.pins
            .iter()
            .map(|(_, l)| l.local_addr().expect("a bound listener has an address"))
            .collect()
    }

    /// Serves until `shutdown` completes, then closes every connection.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut loops = tokio::task::JoinSet::new();
        let shared = self.shared.clone();
        info!(
            event = "listening",
            listener = "epm",
            addr = %self.epm_addr(),
            backend = %format_args!("{}:{}", shared.config.backend.host, shared.config.backend.epm_port),
        );
        loops.spawn(accept_loop(self.epm, shared.clone(), None, stop_rx.clone()));
        for (pin, listener) in self.pins {
            info!(
                event = "listening",
                listener = "pin",
                pin = %pin.config.name,
                addr = %listener.local_addr()?,
                interfaces = %pin.config.interfaces.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            );
            loops.spawn(accept_loop(
                listener,
                shared.clone(),
                Some(pin),
                stop_rx.clone(),
            ));
        }
        shutdown.await;
        info!(event = "shutdown");
        let _ = stop_tx.send(true);
        loops.shutdown().await;
        Ok(())
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    pin: Option<Arc<PinRuntime>>,
    stop: watch::Receiver<bool>,
) {
    let local = listener.local_addr().ok();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors or similar: back off instead of spinning.
                warn!(event = "accept_failed", error = %e);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let span = info_span!(
            "conn",
            peer = %peer,
            listener = %local.map_or_else(String::new, |a| a.to_string()),
            pin = pin.as_ref().map_or("epm", |p| p.config.name.as_str()),
        );
        let (shared, pin, mut stop) = (shared.clone(), pin.clone(), stop.clone());
        tokio::spawn(
            async move {
                let started = Instant::now();
                let _ = stream.set_nodelay(true);
                let served = tokio::select! {
                    r = serve(stream, &shared, pin.as_deref()) => r,
                    _ = stop.wait_for(|&s| s) => Ok(Summary::shutdown()),
                };
                let duration_ms = started.elapsed().as_millis() as u64;
                let s = served.unwrap_or_else(Summary::failed);
                macro_rules! closed {
                    ($level:ident) => {
                        $level!(
                            event = "connection_closed",
                            bytes_from_client = s.from_client,
                            bytes_to_client = s.to_client,
                            duration_ms,
                            reason = %s.reason,
                        )
                    };
                }
                if s.clean {
                    closed!(info)
                } else {
                    closed!(warn)
                }
            }
            .instrument(span),
        );
    }
}

async fn serve(
    stream: TcpStream,
    shared: &Shared,
    pin: Option<&PinRuntime>,
) -> anyhow::Result<Summary> {
    match pin {
        Some(pin) => pin::serve(stream, shared, pin).await,
        None => epm::serve(stream, shared).await,
    }
}

/// How a connection ended, for its closing log event.
#[derive(Debug)]
pub(crate) struct Summary {
    from_client: u64,
    to_client: u64,
    reason: Cow<'static, str>,
    /// Whether the connection ended the way connections do (a peer closed, a refusal
    /// rpcpin meant, shutdown) rather than on an error.
    clean: bool,
}

impl Summary {
    /// From the relay's byte counters and how it ended.
    fn new(
        from_client: &AtomicU64,
        to_client: &AtomicU64,
        ended: anyhow::Result<&'static str>,
    ) -> Summary {
        Summary {
            from_client: from_client.load(Ordering::Relaxed),
            to_client: to_client.load(Ordering::Relaxed),
            clean: ended.is_ok(),
            reason: match ended {
                Ok(r) => Cow::Borrowed(r),
                Err(e) => Cow::Owned(format!("{e:#}")),
            },
        }
    }

    /// A connection that failed before relaying anything.
    fn failed(e: anyhow::Error) -> Summary {
        Summary::new(&AtomicU64::new(0), &AtomicU64::new(0), Err(e))
    }

    fn shutdown() -> Summary {
        Summary::new(
            &AtomicU64::new(0),
            &AtomicU64::new(0),
            Ok("rpcpin shutting down"),
        )
    }
}
