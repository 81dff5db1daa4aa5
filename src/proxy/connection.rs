//! The accept loop and one connection's life: admission, the PROXY protocol header, the
//! listener's handshake, the relay, and the closing log event.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use bytes::BytesMut;
use prometheus_client::metrics::counter::Counter;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::field::display;
use tracing::{info, info_span, warn, Instrument};

use super::generation::{Bound, Generation, Listening, Role};
use super::handshake::{Client, Opened, Summary};
use super::limits::{Admission, Admitted};
use super::relay::Policy;
use super::{epm, pin};
use crate::config::Limits;
use crate::interfaces::alias_of;
use crate::metrics::{metrics, ListenerMetrics};
use crate::proxy_protocol;

/// What every listener's accept loop shares.
#[derive(Debug, Clone)]
pub(super) struct Accepting {
    /// The generation new connections are served under.
    pub(super) current: watch::Receiver<Arc<Generation>>,
    /// Turns true when every connection must end.
    pub(super) stop: watch::Receiver<bool>,
    pub(super) admission: Arc<Admission>,
}

impl Accepting {
    /// Starts serving a newly bound listener.
    pub(super) fn start(&self, bound: Bound) -> anyhow::Result<Listening> {
        let listener = bound.listener.context("a new listener is bound")?;
        let local = listener.local_addr()?;
        info!(event = "listening", listener = bound.role.name(), addr = %local);
        let (role, role_rx) = watch::channel(bound.role);
        let task = tokio::spawn(self.clone().accept_loop(listener, role_rx));
        Ok(Listening {
            local,
            role,
            task: task.abort_handle(),
        })
    }

    /// Accepts clients until aborted, one task each. Errors are logged inside each task.
    async fn accept_loop(self, listener: TcpListener, role: watch::Receiver<Role>) {
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
            let peer = canonical(peer);
            let role = role.borrow().clone();
            // Over the limit: close at once, without spending a task on it.
            let Some(admitted) = self.admission.admit(peer, role.name()) else {
                continue;
            };
            let generation = self.current.borrow().clone();
            if counted.name != role.name() {
                counted = metrics().listener(role.name());
            }
            counted.connections.inc();
            counted.open.inc();
            let span = info_span!(
                "conn",
                peer = %peer,
                listener = %local.map_or_else(String::new, |a| a.to_string()),
                pin = role.name(),
                client = tracing::field::Empty,
            );
            let accepted = Accepted {
                generation,
                role,
                counters: counted.clone(),
                admission: self.admission.clone(),
                _admitted: admitted,
            };
            let connection = run(stream, peer, reached, accepted, self.stop.clone());
            tokio::spawn(connection.instrument(span));
        }
    }
}

/// What a connection was accepted under, and its place in the count of open connections.
///
/// The connection's task owns it once and lends it to the handshake (a future that moves
/// a value keeps room for it in each future it passes through: the task stays small).
struct Accepted {
    generation: Arc<Generation>,
    role: Role,
    counters: ListenerMetrics,
    admission: Arc<Admission>,
    _admitted: Admitted,
}

/// Serves one connection until it ends or `stop` turns true, then logs how it ended (a
/// connection refused by the per-address limit logs nothing more than its rate-limited
/// `refused` event). `reached` is the address the client reached, when the listener's own
/// address says it.
async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    reached: Option<SocketAddr>,
    accepted: Accepted,
    mut stop: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let served = tokio::select! {
        r = serve(stream, peer, reached, &accepted) => r,
        _ = stop.wait_for(|&s| s) => Ok(Some(Summary::ended("rpcpin shutting down"))),
    };
    accepted.counters.open.dec();
    let duration_ms = started.elapsed().as_millis() as u64;
    let Some(s) = served.unwrap_or_else(|e| Some(Summary::failed(e))) else {
        return;
    };
    log_closed(&s, duration_ms);
}

/// Logs the connection's summary, its one line at `info` (`warn` when it ended on an
/// error): the span names the peer, the listener and the pin; the event, what the
/// listener learned, the bytes each way, the duration and the reason.
fn log_closed(s: &Summary, duration_ms: u64) {
    let f = &s.facts;
    let interface = f.interface.map(|i| display(i.uuid));
    let alias = f.interface.map(|i| alias_of(&i.uuid).unwrap_or("-"));
    let (from_cache, from_server) = f.answered.unzip();
    macro_rules! closed {
        ($level:ident) => {
            $level!(
                event = "connection_closed",
                interface,
                alias,
                backend_port = f.backend_port,
                towers_rewritten = f.towers_rewritten,
                from_cache,
                from_server,
                relayed = f.relayed,
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

/// The PROXY header when expected, the per-address limit, the listener's handshake, then
/// the relay. `None`: refused by the per-address limit.
async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    reached: Option<SocketAddr>,
    accepted: &Accepted,
) -> anyhow::Result<Option<Summary>> {
    let generation = &accepted.generation;
    let client = if accepted.role.proxy_protocol(&generation.config) {
        Box::pin(accept_proxied(stream, peer, &generation.config.limits)).await?
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
    // Over the per-address limit: closed, and only the `refused` event (at most once a
    // minute per address) says so.
    let max_per_ip = generation.config.limits.max_connections_per_ip;
    let Some(_slot) = accepted.admission.per_ip(max_per_ip, client.peer.ip()) else {
        return Ok(None);
    };
    let counters = &accepted.counters;
    let bytes = (counters.from_client.clone(), counters.to_client.clone());
    Ok(Some(match &accepted.role {
        Role::Pin(p) => {
            let opened = Box::pin(pin::open(client, generation, p.clone())).await?;
            finish(opened, bytes).await
        }
        Role::Epm => {
            let opened = Box::pin(epm::open(client, generation.clone())).await?;
            finish(opened, bytes).await
        }
    }))
}

/// Relays an opened connection, counting its bytes (from the client, to the client).
async fn finish<P: Policy + Unpin>(
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
    let (peer, local) = header
        .addrs
        .map_or((peer, local), |(p, l)| (canonical(p), l));
    tracing::Span::current().record("client", tracing::field::display(peer));
    Ok(Client {
        stream,
        peer,
        local,
        buffered,
    })
}

/// An IPv4 client named by an IPv4-mapped IPv6 address (a client of a dual-stack `[::]`
/// listener, or a PROXY header's) by its IPv4 address, in logs and limits alike.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}
