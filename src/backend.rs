//! The backends: connecting to one, and asking its endpoint mapper where an interface lives
//! (rpcpin's only RPC of its own); and the servers a configuration uses, one [`Resolver`]
//! each (`Backends`). The pins, `/readyz` and `rpcpin resolve` use them.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::config::{Backend, Config, Limits, Pin};
use crate::metrics::{metrics, BackendLabels};
use crate::pdu_stream::PduReader;
use crate::wire::bind::{encode_bind, BindAck, ContextProposal, ContextResult};
use crate::wire::call::{encode_request, Response};
use crate::wire::epm::{encode_map_request, opnum, walk_map_response, EPM};
use crate::wire::ndr::Syntax;
use crate::wire::tower::{encode_tcp_tower, Tower};
use crate::wire::{Endian, PacketType, SyntaxId};

/// How many towers rpcpin asks for: Windows asks for 4.
const MAX_TOWERS: u32 = 4;
/// rpcpin's own fragments are small; this bounds what it accepts back.
const MAX_FRAG: u16 = 5840;

/// One ncacn_ip_tcp endpoint the backend's endpoint mapper returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// The interface the tower names.
    pub interface: SyntaxId,
    /// Its TCP port.
    pub port: u16,
    /// The address in the tower (often the server's own, sometimes 0.0.0.0).
    pub addr: Ipv4Addr,
}

/// Resolves interfaces to backend ports through one server's endpoint mapper, and keeps
/// each answer for a short while.
#[derive(Debug)]
pub struct Resolver {
    /// `default` (`[backend]`) or the NAME of `[backends.NAME]`, for logs and metrics.
    name: String,
    backend: Backend,
    timeout: Duration,
    ttl: Duration,
    cache: Mutex<HashMap<SyntaxId, (u16, Instant)>>,
    /// When the endpoint mapper last answered an ept_map, whatever it said.
    answered: Mutex<Option<Instant>>,
}

impl Resolver {
    /// A resolver for `backend`, which logs and metrics call `name`. Its per-server series
    /// are exported from now on, at zero, so that a rate over them sees the first failure.
    pub fn new(name: &str, backend: Backend, limits: &Limits) -> Resolver {
        let labels = BackendLabels {
            backend: name.to_string(),
        };
        let _ = metrics().backend_resolution_seconds.get_or_create(&labels);
        let _ = metrics().backend_connect_failures.get_or_create(&labels);
        Resolver {
            name: name.to_string(),
            backend,
            timeout: limits.resolve_timeout,
            ttl: limits.resolve_cache,
            cache: Mutex::new(HashMap::new()),
            answered: Mutex::new(None),
        }
    }

    /// The backend's RPC host name or address, as configured.
    pub fn host(&self) -> &str {
        &self.backend.host
    }

    /// The server's name: `default` (`[backend]`) or the NAME of `[backends.NAME]`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server as configured: its host and endpoint-mapper port.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    fn labels(&self) -> BackendLabels {
        BackendLabels {
            backend: self.name.clone(),
        }
    }

    /// The backend port of `interface`, from the cache when fresh. Returns whether it came
    /// from the cache.
    pub async fn port(&self, interface: SyntaxId) -> anyhow::Result<(u16, bool)> {
        if let Some(&(port, at)) = self.cache().get(&interface) {
            if at.elapsed() < self.ttl {
                return Ok((port, true));
            }
        }
        let started = Instant::now();
        let endpoints = self.query(interface).await;
        metrics()
            .backend_resolution_seconds
            .get_or_create(&self.labels())
            .observe(started.elapsed().as_secs_f64());
        let port = endpoints?.first().map(|e| e.port).ok_or_else(|| {
            anyhow!("the backend's endpoint mapper returned no ncacn_ip_tcp tower")
        })?;
        self.cache().insert(interface, (port, Instant::now()));
        Ok((port, false))
    }

    /// When the backend's endpoint mapper last answered an ept_map.
    pub fn last_answer(&self) -> Option<Instant> {
        *lock(&self.answered)
    }

    /// Forgets the cached port of `interface` (after a connect to it failed, or its server
    /// refused the interface).
    pub fn forget(&self, interface: &SyntaxId) {
        self.cache().remove(interface);
    }

    /// Records `port` as the backend port of `interface`, fresh from now: what the backend's
    /// endpoint mapper just told a client (an ept_map answer relayed on port 135).
    pub fn learned(&self, interface: SyntaxId, port: u16) {
        self.cache().insert(interface, (port, Instant::now()));
    }

    fn cache(&self) -> MutexGuard<'_, HashMap<SyntaxId, (u16, Instant)>> {
        lock(&self.cache)
    }

    /// Every ncacn_ip_tcp endpoint the backend's endpoint mapper has for `interface`.
    pub async fn query(&self, interface: SyntaxId) -> anyhow::Result<Vec<Endpoint>> {
        tokio::time::timeout(self.timeout, self.query_unbounded(interface))
            .await
            .map_err(|_| {
                anyhow!(
                    "the backend's endpoint mapper did not answer within {:?}",
                    self.timeout
                )
            })?
    }

    /// Connects to the backend at `port`, trying each address its name resolves to.
    pub async fn connect(&self, port: u16, timeout: Duration) -> anyhow::Result<TcpStream> {
        let host = self.backend.host.as_str();
        let connected = tokio::time::timeout(timeout, async {
            let mut last = None;
            for addr in tokio::net::lookup_host((host, port))
                .await
                .with_context(|| format!("cannot resolve backend host {host:?}"))?
            {
                match TcpStream::connect(addr).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = Some((addr, e)),
                }
            }
            Err(match last {
                Some((addr, e)) => anyhow!(e).context(format!("cannot connect to backend {addr}")),
                None => anyhow!("backend host {host:?} has no address"),
            })
        })
        .await
        .map_err(|_| anyhow!("connecting to backend {host}:{port} took longer than {timeout:?}"))
        .and_then(|r| r);
        if connected.is_err() {
            metrics()
                .backend_connect_failures
                .get_or_create(&self.labels())
                .inc();
        }
        connected
    }

    async fn query_unbounded(&self, interface: SyntaxId) -> anyhow::Result<Vec<Endpoint>> {
        let stream = self.connect(self.backend.epm_port, self.timeout).await?;
        let _ = stream.set_nodelay(true);
        let (rd, mut wr) = stream.into_split();
        let mut rd = PduReader::new(rd, usize::from(MAX_FRAG));
        let endian = Endian::Little;

        let mut out = Vec::with_capacity(256);
        let ctx = [ContextProposal {
            id: 0,
            abstract_syntax: EPM,
            transfer_syntaxes: &[SyntaxId::NDR],
        }];
        encode_bind(&mut out, endian, 1, MAX_FRAG, &ctx)?;
        wr.write_all(&out).await?;
        let ack = rd.next().await.context("reading the backend's bind_ack")?;
        match BindAck::from_pdu(ack.view()) {
            Ok(a) if a.results().next().map(|r| r.result) == Some(ContextResult::Acceptance) => {}
            Ok(_) => bail!("the backend's endpoint mapper refused rpcpin's bind"),
            Err(_) => bail!("the backend answered rpcpin's bind with a {}", ack.ptype()),
        }

        let mut query = Vec::with_capacity(80);
        encode_tcp_tower(&mut query, interface, 0, Ipv4Addr::UNSPECIFIED);
        let mut stub = Vec::with_capacity(160);
        encode_map_request(&mut stub, endian, &query, MAX_TOWERS);
        out.clear();
        encode_request(&mut out, endian, 2, 0, opnum::MAP, &stub)?;
        wr.write_all(&out).await?;

        // The answer may come in several fragments: gather its stub (bounded by MAX_FRAG
        // per fragment and a few fragments, far more than 4 towers need).
        let mut answer = Vec::new();
        for fragment in 0..16 {
            let pdu = rd
                .next()
                .await
                .context("reading the backend's ept_map answer")?;
            match pdu.ptype() {
                PacketType::Response => {}
                PacketType::Fault => {
                    bail!("the backend's endpoint mapper answered ept_map with a fault")
                }
                other => bail!("the backend answered ept_map with a {other}"),
            }
            answer.extend_from_slice(Response::from_pdu(pdu.view())?.stub());
            if pdu.ends_call(fragment > 0) {
                *lock(&self.answered) = Some(Instant::now());
                let _ = wr.shutdown().await;
                return endpoints(&answer, pdu.endian(), interface);
            }
        }
        bail!("the backend's ept_map answer has too many fragments")
    }
}

/// The servers a configuration uses, each with its own [`Resolver`] and so its own cache:
/// `[backend]`'s, named `default`, and one per `[backends.NAME]` a pin names
/// ([`Config::servers`]).
#[derive(Debug, Clone)]
pub struct Backends {
    /// `[backend]`'s first.
    servers: Vec<Arc<Resolver>>,
}

impl Backends {
    /// A resolver for each server `config` uses.
    pub fn new(config: &Config) -> Backends {
        let servers = config
            .servers()
            .into_iter()
            .map(|(name, b)| Arc::new(Resolver::new(name, b.clone(), &config.limits)))
            .collect();
        Backends { servers }
    }

    /// `[backend]`'s: the endpoint-mapper listener relays to it, and pins without
    /// `pin.backend` use it.
    pub fn default_server(&self) -> &Arc<Resolver> {
        &self.servers[0]
    }

    /// The server `pin` resolves and connects at: `pin.backend`'s, or `[backend]`'s.
    pub fn of(&self, pin: &Pin) -> &Arc<Resolver> {
        pin.backend
            .as_deref()
            .and_then(|name| self.servers.iter().find(|s| s.name == name))
            .unwrap_or(self.default_server())
    }

    /// Every server in use, `[backend]`'s first.
    pub fn all(&self) -> &[Arc<Resolver>] {
        &self.servers
    }
}

fn endpoints(stub: &[u8], endian: Endian, interface: SyntaxId) -> anyhow::Result<Vec<Endpoint>> {
    let walk = walk_map_response(stub, endian, Syntax::Ndr)?;
    if walk.status == crate::wire::epm::EPT_S_NOT_REGISTERED {
        bail!(
            "the backend's endpoint mapper has no endpoint for {interface} (ept_s_not_registered)"
        );
    }
    if walk.status != 0 {
        bail!(
            "the backend's endpoint mapper answered status {:#010x}",
            walk.status
        );
    }
    Ok(walk
        .towers
        .into_iter()
        .filter_map(|r| {
            let t = Tower::new_checked(&stub[r]).ok()?;
            let found = t.interface()?;
            if !t.is_ncacn_ip_tcp() || found.uuid != interface.uuid {
                return None;
            }
            Some(Endpoint {
                interface: found,
                port: t.tcp_port()?,
                addr: t.ipv4()?,
            })
        })
        .collect())
}

/// Locks a mutex whose data a panic elsewhere cannot leave half-updated.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
