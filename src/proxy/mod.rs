//! The proxy: listeners, one task per connection, limits, shutdown.
//!
//! [`Server::bind`] opens every listener first, so that a port already in use is reported
//! before anything runs; [`Server::run`] then serves until its shutdown future completes.

mod epm;
mod gate;
mod io;
mod pin;
pub mod privileges;
mod relay;
pub mod resolver;

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::{info, info_span, warn, Instrument};

use crate::config::{Config, Limits, Pin};
use crate::proxy_protocol;
use crate::rewrite::{Table, Target};
use resolver::Resolver;

/// State every connection of a server shares.
#[derive(Debug)]
pub(crate) struct Shared {
    config: Config,
    table: Table,
    resolver: Resolver,
    /// Open client connections, bounded by `limits.max_connections`.
    connections: Arc<Semaphore>,
    /// Open client connections per source address, bounded by `limits.max_connections_per_ip`.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// A pin as it runs: its configuration and the port clients are sent to.
#[derive(Debug)]
pub(crate) struct PinRuntime {
    config: Pin,
    /// The port clients are sent to: `advertise_port`, or the bound listen port.
    public_port: u16,
}

/// An accepted client connection.
#[derive(Debug)]
pub(crate) struct Client {
    stream: TcpStream,
    /// The client: the TCP peer, or the one a PROXY protocol header names.
    peer: SocketAddr,
    /// The address the client connected to: ours, or the one a PROXY header names.
    local: SocketAddr,
    /// Bytes read past a PROXY protocol header.
    buffered: BytesMut,
}

/// A connection after its handshake: ready to relay, or already done with.
///
/// The handshake runs in a boxed future of its own, and the relay that follows is boxed
/// too: the handshake's futures (the backend resolution, the timeouts) are large and
/// short-lived, and a connection that relays for hours should hold the relay's state
/// alone, once (an `async fn` keeps room for every value it moves across an `.await`).
pub(crate) enum Opened<P> {
    /// Relay with this policy.
    Relay(Box<relay::Relay<TcpStream, TcpStream, P>>),
    /// The connection ended in its handshake (a refusal).
    Done(Summary),
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
        let epm = listen(config.epm.listen, &config.limits)
            .with_context(|| format!("cannot listen on epm.listen {}", config.epm.listen))?;
        let mut pins = Vec::new();
        let mut targets = Vec::new();
        for (i, pin) in config.pins.iter().enumerate() {
            let listener = listen(pin.listen, &config.limits)
                .with_context(|| format!("cannot listen on pin[{i}].listen {}", pin.listen))?;
            let port = pin.advertise_port.unwrap_or(listener.local_addr()?.port());
            targets.extend(pin.interfaces.iter().map(|&interface| Target {
                interface,
                pin: pin.name.clone(),
                port,
            }));
            let runtime = PinRuntime {
                config: pin.clone(),
                public_port: port,
            };
            pins.push((Arc::new(runtime), listener));
        }
        let shared = Shared {
            resolver: Resolver::new(config.backend.clone(), &config.limits),
            table: Table::new(targets),
            connections: Arc::new(Semaphore::new(config.limits.max_connections)),
            per_ip: Mutex::new(HashMap::new()),
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
    let name = pin
        .as_ref()
        .map_or("epm", |p| p.config.name.as_str())
        .to_string();
    let proxied = pin.as_ref().map_or(shared.config.epm.proxy_protocol, |p| {
        p.config.proxy_protocol
    });
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors or similar: back off instead of spinning.
                warn!(event = "accept_failed", error = %e);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Over the limit: close at once, without spending a task on it.
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            warn!(
                event = "refused",
                policy = "max_connections",
                peer = %peer,
                pin = %name,
                reason = "limits.max_connections reached",
            );
            continue;
        };
        let span = info_span!(
            "conn",
            peer = %peer,
            listener = %local.map_or_else(String::new, |a| a.to_string()),
            pin = %name,
            client = tracing::field::Empty,
        );
        let (shared, pin, mut stop) = (shared.clone(), pin.clone(), stop.clone());
        tokio::spawn(
            async move {
                let started = Instant::now();
                let served = tokio::select! {
                    r = serve(stream, peer, proxied, &shared, pin, permit) => r,
                    _ = stop.wait_for(|&s| s) => Ok(Summary::ended("rpcpin shutting down")),
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
    peer: SocketAddr,
    proxied: bool,
    shared: &Arc<Shared>,
    pin: Option<Arc<PinRuntime>>,
    _permit: OwnedSemaphorePermit,
) -> anyhow::Result<Summary> {
    let client = Box::pin(accept_client(stream, peer, proxied, &shared.config.limits)).await?;
    // Over the per-address limit: the `refused` event says why; closing is not an error.
    let Some(_slot) = PerIp::take(shared, client.peer.ip()) else {
        return Ok(Summary::ended("refused: limits.max_connections_per_ip"));
    };
    let summary = match pin {
        Some(pin) => match Box::pin(pin::open(client, shared, pin)).await? {
            Opened::Relay(relay) => relay.await.into(),
            Opened::Done(summary) => summary,
        },
        None => match Box::pin(epm::open(client, shared.clone())).await? {
            Opened::Relay(relay) => relay.await.into(),
            Opened::Done(summary) => summary,
        },
    };
    Ok(summary)
}

/// Reads the PROXY protocol header when the listener expects one, within the handshake
/// timeout, and names the real client in the connection's span.
async fn accept_client(
    mut stream: TcpStream,
    peer: SocketAddr,
    proxied: bool,
    limits: &Limits,
) -> anyhow::Result<Client> {
    let local = stream.local_addr()?;
    let mut buffered = BytesMut::new();
    if !proxied {
        return Ok(Client {
            stream,
            peer,
            local,
            buffered,
        });
    }
    let header = tokio::time::timeout(limits.handshake_timeout, async {
        loop {
            if let Some(h) = proxy_protocol::parse(&buffered)? {
                return anyhow::Ok(h);
            }
            if buffered.len() >= proxy_protocol::V2_MAX
                || stream.read_buf(&mut buffered).await? == 0
            {
                return Err(anyhow!("closed before a complete PROXY protocol header"));
            }
        }
    })
    .await
    .map_err(|_| {
        anyhow!(
            "no PROXY protocol header within {:?}",
            limits.handshake_timeout
        )
    })??;
    let _ = buffered.split_to(header.len);
    let (peer, local) = header.addrs.unwrap_or((peer, local));
    tracing::Span::current().record("client", tracing::field::display(peer));
    Ok(Client {
        stream,
        peer,
        local,
        buffered,
    })
}

/// One connection's place in the per-address count; released on drop.
struct PerIp<'a> {
    shared: &'a Shared,
    ip: IpAddr,
}

impl<'a> PerIp<'a> {
    fn take(shared: &'a Shared, ip: IpAddr) -> Option<PerIp<'a>> {
        let max = shared.config.limits.max_connections_per_ip;
        let mut counts = lock(&shared.per_ip);
        let n = counts.entry(ip).or_insert(0);
        if *n >= max {
            warn!(
                event = "refused",
                policy = "max_connections_per_ip",
                client = %ip,
                reason = "limits.max_connections_per_ip reached",
            );
            return None;
        }
        *n += 1;
        Some(PerIp { shared, ip })
    }
}

impl Drop for PerIp<'_> {
    fn drop(&mut self) {
        let mut counts = lock(&self.shared.per_ip);
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// A listening socket whose accept queue can hold a burst of clients (tokio's default
/// backlog of 128 drops the rest of a burst, and they retry a second later; the kernel caps
/// it at `net.core.somaxconn`). Accepted sockets inherit its options, so they are set once
/// here rather than on every connection.
fn listen(addr: SocketAddr, limits: &Limits) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    tune(&socket, limits);
    socket.bind(addr)?;
    let backlog = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    socket.listen(backlog.min(65_535))
}

/// Socket options for both legs of a connection: no Nagle delay (RPC is request/response),
/// and TCP keepalive so that a peer that vanished is noticed.
pub(crate) fn tune(socket: &impl std::os::fd::AsFd, limits: &Limits) {
    let socket = socket2::SockRef::from(socket);
    let _ = socket.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(limits.keepalive)
        .with_interval(limits.keepalive / 4 + Duration::from_secs(1))
        .with_retries(4);
    let _ = socket.set_tcp_keepalive(&keepalive);
}

/// Locks a mutex whose data a panic elsewhere cannot leave half-updated.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl From<relay::Relayed> for Summary {
    fn from(r: relay::Relayed) -> Summary {
        Summary::new(r.from_client, r.to_client, r.ended)
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
    /// From byte counts and how the connection ended.
    fn new(from_client: u64, to_client: u64, ended: anyhow::Result<&'static str>) -> Summary {
        Summary {
            from_client,
            to_client,
            clean: ended.is_ok(),
            reason: match ended {
                Ok(r) => Cow::Borrowed(r),
                Err(e) => Cow::Owned(format!("{e:#}")),
            },
        }
    }

    /// A connection that failed before relaying anything.
    fn failed(e: anyhow::Error) -> Summary {
        Summary::new(0, 0, Err(e))
    }

    /// A connection rpcpin ended on purpose before relaying anything.
    fn ended(reason: &'static str) -> Summary {
        Summary::new(0, 0, Ok(reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_inherit_the_listeners_options() {
        let limits = Limits::default();
        let listener = listen("127.0.0.1:0".parse().unwrap(), &limits).unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap());
        let sock = socket2::SockRef::from(&accepted);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.keepalive_time().unwrap(), limits.keepalive);
    }
}
