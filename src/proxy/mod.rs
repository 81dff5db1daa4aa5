//! The proxy: listeners, one task per connection, limits, reload and shutdown.
//!
//! [`Server::bind`] opens every listener first, so that a port already in use is reported
//! before anything runs; [`Server::run`] then serves until told to stop through its
//! [`Control`] channel, applying new configurations to new connections on the way.

mod epm;
mod gate;
mod io;
mod pin;
pub mod privileges;
mod relay;
pub mod resolver;
mod small_map;

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use bytes::BytesMut;
use prometheus_client::metrics::counter::Counter;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tracing::{info, info_span, warn, Instrument};

use crate::config::{Config, Limits, Pin};
use crate::metrics::{metrics, ListenerMetrics, ReloadLabels};
use crate::proxy_protocol;
use crate::rewrite::{Table, Target};
use resolver::Resolver;

/// What outlives a configuration: the connection limits and the process's state.
#[derive(Debug)]
pub(crate) struct Process {
    /// Open client connections, bounded by `limits.max_connections` (as first configured).
    connections: Arc<Semaphore>,
    max_connections: u32,
    /// Open client connections per source address, bounded by `limits.max_connections_per_ip`.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Set on SIGTERM: `/readyz` fails, so that load balancers send no new clients.
    draining: AtomicBool,
}

impl Process {
    fn new(limits: &Limits) -> Process {
        let max = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
        Process {
            connections: Arc::new(Semaphore::new(max as usize)),
            max_connections: max,
            per_ip: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
        }
    }

    /// Client connections open now.
    fn open_connections(&self) -> usize {
        self.max_connections as usize - self.connections.available_permits()
    }

    /// Completes once no client connection is open.
    async fn all_closed(&self) {
        if let Ok(all) = self.connections.acquire_many(self.max_connections).await {
            drop(all);
        }
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// One generation of the configuration, and what is built from it. A connection keeps the
/// generation it was accepted under; a reload makes a new one for the connections after it.
#[derive(Debug)]
pub(crate) struct Shared {
    config: Config,
    table: Table,
    resolver: Resolver,
    process: Arc<Process>,
}

impl Shared {
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    pub(crate) fn process(&self) -> &Process {
        &self.process
    }
}

/// A pin as it runs: its configuration and the port clients are sent to.
#[derive(Debug)]
pub(crate) struct PinRuntime {
    config: Pin,
    /// The port clients are sent to: `advertise_port`, or the bound listen port.
    public_port: u16,
}

/// What a listener serves.
#[derive(Debug, Clone)]
enum Role {
    Epm,
    Pin(Arc<PinRuntime>),
}

impl Role {
    /// `epm` or the pin's name, as logs and metrics name the listener.
    fn name(&self) -> &str {
        match self {
            Role::Epm => "epm",
            Role::Pin(p) => &p.config.name,
        }
    }

    fn proxy_protocol(&self, config: &Config) -> bool {
        match self {
            Role::Epm => config.epm.proxy_protocol,
            Role::Pin(p) => p.config.proxy_protocol,
        }
    }
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

impl<P> Opened<P> {
    /// A connection to relay with `policy`, `from_client` bytes of its handshake already
    /// forwarded.
    fn relay(
        client: io::PduReader<TcpStream>,
        backend: io::PduReader<TcpStream>,
        policy: P,
        limits: &Limits,
        from_client: u64,
    ) -> Opened<P> {
        let relay = relay::Relay::new(client, backend, policy, limits.idle_timeout, from_client);
        Opened::Relay(Box::new(relay))
    }
}

/// What a running server is told to do.
#[derive(Debug)]
pub enum Control {
    /// Apply this configuration to new connections (SIGHUP); the answer says whether it
    /// was applied.
    Reload(Box<Config>, oneshot::Sender<anyhow::Result<()>>),
    /// Stop accepting and let established connections finish, for at most
    /// `limits.drain_timeout` (SIGTERM, SIGINT).
    Shutdown,
    /// Close everything now (a second signal).
    Stop,
}

/// A listener bound for a configuration, not yet serving.
#[derive(Debug)]
struct Bound {
    /// The address the configuration names (port 0 included).
    configured: SocketAddr,
    role: Role,
    /// `None` when the listener already runs (a reload that keeps it).
    listener: Option<TcpListener>,
}

/// A listener that is serving.
#[derive(Debug)]
struct Listening {
    /// The bound address.
    local: SocketAddr,
    role: watch::Sender<Role>,
    task: tokio::task::AbortHandle,
}

/// A server whose listeners are bound.
#[derive(Debug)]
pub struct Server {
    shared: Shared,
    bound: Vec<Bound>,
    admin: Option<TcpListener>,
}

impl Server {
    /// Binds the EPM listener, every pin listener and the admin listener.
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        let admin = match config.admin.listen {
            Some(addr) => Some(
                listen(addr, &config.limits)
                    .with_context(|| format!("cannot listen on admin.listen {addr}"))?,
            ),
            None => None,
        };
        let process = Arc::new(Process::new(&config.limits));
        let (shared, bound) = generation(config, &HashMap::new(), process)?;
        Ok(Server {
            shared,
            bound,
            admin,
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

    /// The admin listener's address, when there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    fn addr_of(&self, role: impl Fn(&Role) -> bool) -> Vec<SocketAddr> {
        self.bound
            .iter()
            .filter(|b| role(&b.role))
            .filter_map(|b| b.listener.as_ref()?.local_addr().ok())
            .collect()
    }

    /// Serves until told to stop (or every sender of `control` is gone, which is a
    /// shutdown).
    pub async fn run(self, mut control: mpsc::Receiver<Control>) -> anyhow::Result<()> {
        let process = self.shared.process.clone();
        let (current, current_rx) = watch::channel(Arc::new(self.shared));
        let (stop, stop_rx) = watch::channel(false);
        let start = |b: Bound| -> anyhow::Result<Listening> {
            let listener = b.listener.context("a new listener is bound")?;
            let local = listener.local_addr()?;
            info!(event = "listening", listener = b.role.name(), addr = %local);
            let (role, role_rx) = watch::channel(b.role);
            let task = tokio::spawn(accept_loop(
                listener,
                role_rx,
                current_rx.clone(),
                stop_rx.clone(),
                process.clone(),
            ));
            Ok(Listening {
                local,
                role,
                task: task.abort_handle(),
            })
        };
        let mut running = HashMap::new();
        for b in self.bound {
            running.insert(b.configured, start(b)?);
        }
        let admin = self.admin.map(|l| {
            if let Ok(addr) = l.local_addr() {
                info!(event = "listening", listener = "admin", addr = %addr);
            }
            tokio::spawn(crate::admin::serve(l, current_rx.clone()))
        });

        let stop_now = loop {
            match control.recv().await {
                Some(Control::Reload(config, done)) => {
                    let applied = reload(*config, &current, &mut running, &start);
                    report_reload(&applied);
                    let _ = done.send(applied);
                }
                Some(Control::Shutdown) | None => break false,
                Some(Control::Stop) => break true,
            }
        };

        // Stop accepting: the listeners close, and load balancers see /readyz fail.
        process.draining.store(true, Ordering::Relaxed);
        for l in running.values() {
            l.task.abort();
        }
        if !stop_now {
            let drain_timeout = current.borrow().config.limits.drain_timeout;
            info!(
                event = "draining",
                connections = process.open_connections(),
                drain_timeout_s = drain_timeout.as_secs_f64(),
            );
            let drained = async {
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
                () = process.all_closed() => {}
                () = tokio::time::sleep(drain_timeout) => {}
                () = drained => {}
            }
        }
        let left = process.open_connections();
        let _ = stop.send(true);
        // Let the connections told to stop log how they ended.
        let _ = tokio::time::timeout(Duration::from_secs(1), process.all_closed()).await;
        if let Some(admin) = admin {
            admin.abort();
        }
        info!(event = "shutdown", closed_connections = left);
        Ok(())
    }
}

/// Logs and counts the outcome of a reload.
pub fn report_reload(result: &anyhow::Result<()>) {
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

/// Builds a configuration's generation: binds every listener not already running (those
/// in `running`, by configured address, with their bound address), works out each pin's
/// public port, and the rewrite table. Nothing is bound when an error is returned.
fn generation(
    config: Config,
    running: &HashMap<SocketAddr, SocketAddr>,
    process: Arc<Process>,
) -> anyhow::Result<(Shared, Vec<Bound>)> {
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
    let mut targets = Vec::new();
    for (i, pin) in config.pins.iter().enumerate() {
        let (listener, port) = bind(pin.listen, &format!("pin[{i}].listen"))?;
        let public_port = pin.advertise_port.unwrap_or(port);
        targets.extend(pin.interfaces.iter().map(|&interface| Target {
            interface,
            pin: pin.name.clone(),
            port: public_port,
        }));
        let runtime = PinRuntime {
            config: pin.clone(),
            public_port,
        };
        bound.push(Bound {
            configured: pin.listen,
            role: Role::Pin(Arc::new(runtime)),
            listener,
        });
    }
    let shared = Shared {
        resolver: Resolver::new(config.backend.clone(), &config.limits),
        table: Table::new(targets),
        process,
        config,
    };
    Ok((shared, bound))
}

/// Applies `config` to new connections: listeners it no longer names stop (their
/// connections go on), new ones start, and those it keeps serve their new role.
fn reload(
    config: Config,
    current: &watch::Sender<Arc<Shared>>,
    running: &mut HashMap<SocketAddr, Listening>,
    start: &impl Fn(Bound) -> anyhow::Result<Listening>,
) -> anyhow::Result<()> {
    let old = current.borrow().clone();
    for (what, changed) in [
        (
            "admin.listen",
            config.admin.listen != old.config.admin.listen,
        ),
        (
            "limits.max_connections",
            config.limits.max_connections != old.config.limits.max_connections,
        ),
        (
            "process.user",
            config.process.user != old.config.process.user,
        ),
        ("log.format", config.log.format != old.config.log.format),
    ] {
        if changed {
            warn!(
                event = "reload_partial",
                key = what,
                reason = "takes effect at the next start"
            );
        }
    }
    let locals = running.iter().map(|(c, l)| (*c, l.local)).collect();
    let (shared, bound) = generation(config, &locals, old.process.clone())?;
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
    current.send_replace(Arc::new(shared));
    Ok(())
}
async fn accept_loop(
    listener: TcpListener,
    role: watch::Receiver<Role>,
    current: watch::Receiver<Arc<Shared>>,
    stop: watch::Receiver<bool>,
    process: Arc<Process>,
) {
    let local = listener.local_addr().ok();
    // The address clients reach: the listener's, unless it listens on every address.
    let reached = local.filter(|a| !a.ip().is_unspecified());
    let mut counted = metrics().listener(role.borrow().name());
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
        let role = role.borrow().clone();
        // Over the limit: close at once, without spending a task on it.
        let Ok(permit) = process.connections.clone().try_acquire_owned() else {
            let reason = "limits.max_connections reached";
            warn!(event = "refused", policy = "max_connections", peer = %peer, pin = role.name(), reason);
            metrics().refused("max_connections", reason);
            continue;
        };
        let shared = current.borrow().clone();
        if counted.name != role.name() {
            counted = metrics().listener(role.name());
        }
        counted.connections.inc();
        counted.open.inc();
        let counters = counted.clone();
        let span = info_span!(
            "conn",
            peer = %peer,
            listener = %local.map_or_else(String::new, |a| a.to_string()),
            pin = role.name(),
            client = tracing::field::Empty,
        );
        let mut stop = stop.clone();
        tokio::spawn(
            async move {
                let started = Instant::now();
                let served = tokio::select! {
                    r = serve(stream, peer, reached, &shared, role, &counters, permit) => r,
                    _ = stop.wait_for(|&s| s) => Ok(Summary::ended("rpcpin shutting down")),
                };
                counters.open.dec();
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
    reached: Option<SocketAddr>,
    shared: &Arc<Shared>,
    role: Role,
    counters: &ListenerMetrics,
    _permit: OwnedSemaphorePermit,
) -> anyhow::Result<Summary> {
    let client = if role.proxy_protocol(&shared.config) {
        Box::pin(accept_proxied(stream, peer, &shared.config.limits)).await?
    } else {
        let local = match reached {
            Some(a) => a,
            None => stream.local_addr()?,
        };
        Client {
            stream,
            peer,
            local,
            buffered: BytesMut::new(),
        }
    };
    // Over the per-address limit: the `refused` event says why; closing is not an error.
    let max_per_ip = shared.config.limits.max_connections_per_ip;
    let Some(_slot) = PerIp::take(&shared.process, max_per_ip, client.peer.ip()) else {
        return Ok(Summary::ended("refused: limits.max_connections_per_ip"));
    };
    let bytes = (counters.from_client.clone(), counters.to_client.clone());
    Ok(match role {
        Role::Pin(pin) => finish(Box::pin(pin::open(client, shared, pin)).await?, bytes).await,
        Role::Epm => finish(Box::pin(epm::open(client, shared.clone())).await?, bytes).await,
    })
}

/// Relays an opened connection, counting its bytes (from the client, to the client).
async fn finish<P: relay::Policy + Unpin>(
    opened: Opened<P>,
    (from_client, to_client): (Counter, Counter),
) -> Summary {
    match opened {
        Opened::Relay(mut relay) => {
            relay.count_into(from_client, to_client);
            relay.await.into()
        }
        Opened::Done(s) => {
            from_client.inc_by(s.from_client);
            to_client.inc_by(s.to_client);
            s
        }
    }
}

/// Reads a PROXY protocol header, within the handshake timeout, and names the real client
/// in the connection's span.
async fn accept_proxied(
    mut stream: TcpStream,
    peer: SocketAddr,
    limits: &Limits,
) -> anyhow::Result<Client> {
    let local = stream.local_addr()?;
    let mut buffered = BytesMut::new();
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
    process: &'a Process,
    ip: IpAddr,
}

impl<'a> PerIp<'a> {
    fn take(process: &'a Process, max: usize, ip: IpAddr) -> Option<PerIp<'a>> {
        let mut counts = lock(&process.per_ip);
        let n = counts.entry(ip).or_insert(0);
        if *n >= max {
            warn!(
                event = "refused",
                policy = "max_connections_per_ip",
                client = %ip,
                reason = "limits.max_connections_per_ip reached",
            );
            let reason = "limits.max_connections_per_ip reached";
            metrics().refused("max_connections_per_ip", reason);
            return None;
        }
        *n += 1;
        Some(PerIp { process, ip })
    }
}

impl Drop for PerIp<'_> {
    fn drop(&mut self) {
        let mut counts = lock(&self.process.per_ip);
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
