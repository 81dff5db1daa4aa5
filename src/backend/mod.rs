//! The backends: connecting to one, and asking its endpoint mapper where an interface lives
//! (rpcpin's only RPC of its own); and the servers a configuration uses, one [`Resolver`]
//! each (`Backends`). The pins, `/readyz` and `rpcpin resolve` use them.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tokio::net::TcpStream;

use crate::config::{Backend, Config, Host, Limits, Pin};
use crate::metrics::{metrics, BackendLabels};
use crate::wire::epm::{walk_lookup_response, walk_map_response, HANDLE_LEN};
use crate::wire::ndr::Syntax;
use crate::wire::tower::{encode_tcp_tower, Tower};
use crate::wire::{uuid, Endian, SyntaxId, Uuid};
use epm_client::EpmClient;

mod epm_client;

/// How many entries rpcpin asks for per ept_lookup page: small, as Samba pages normally
/// only below the size of its table.
const LOOKUP_PAGE: u32 = 16;
/// The most entries rpcpin gathers from one server's endpoint mapper.
const MAX_LOOKUP_ENTRIES: usize = 1024;

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
        self.bounded(self.query_unbounded(interface)).await
    }

    /// Connects to the backend at `port`: at its address, or trying each address its name
    /// resolves to.
    pub async fn connect(&self, port: u16, timeout: Duration) -> anyhow::Result<TcpStream> {
        let at = self.backend.at(port);
        let connected = tokio::time::timeout(timeout, async {
            let addrs = match &self.backend.host {
                Host::Ip(ip) => vec![SocketAddr::new(*ip, port)],
                Host::Name(name) => tokio::net::lookup_host((name.as_str(), port))
                    .await
                    .with_context(|| format!("cannot resolve backend host {name:?}"))?
                    .collect(),
            };
            let mut last = None;
            for addr in addrs {
                match TcpStream::connect(addr).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = Some((addr, e)),
                }
            }
            Err(match last {
                Some((addr, e)) => anyhow!(e).context(format!("cannot connect to backend {addr}")),
                None => anyhow!(
                    "backend host {:?} has no address",
                    self.backend.host.to_string()
                ),
            })
        })
        .await
        .map_err(|_| anyhow!("connecting to backend {at} took longer than {timeout:?}"))
        .and_then(|r| r);
        if connected.is_err() {
            metrics()
                .backend_connect_failures
                .get_or_create(&self.labels())
                .inc();
        }
        connected
    }

    /// Every ncacn_ip_tcp endpoint the server's endpoint mapper has for what the map tower
    /// `tower` asks (its interface `interface`), registered with `object`: the question a
    /// client asked rpcpin's endpoint mapper, put to the server.
    pub async fn map(
        &self,
        object: Option<Uuid>,
        tower: &[u8],
        interface: SyntaxId,
    ) -> anyhow::Result<Vec<Endpoint>> {
        let started = Instant::now();
        let endpoints = self
            .bounded(async {
                let mut client = self.epm_client().await?;
                let answer = client.map(object, tower).await?;
                *lock(&self.answered) = Some(Instant::now());
                client.close().await;
                endpoints(&answer.stub, answer.endian, interface)
            })
            .await;
        metrics()
            .backend_resolution_seconds
            .get_or_create(&self.labels())
            .observe(started.elapsed().as_secs_f64());
        endpoints
    }

    /// Every entry of the server's endpoint mapper, paged through with ept_lookup (at most
    /// `MAX_LOOKUP_ENTRIES`).
    pub async fn lookup_all(&self) -> anyhow::Result<Vec<LookupEntry>> {
        self.bounded(async {
            let mut client = self.epm_client().await?;
            let mut entries = Vec::new();
            let mut handle = [0; HANDLE_LEN];
            loop {
                let answer = client.lookup(&handle, LOOKUP_PAGE).await?;
                let walk = walk_lookup_response(&answer.stub, answer.endian, Syntax::Ndr)?;
                let stub = &answer.stub;
                for e in &walk.entries {
                    let (Some(object), Some(annotation), Some(tower)) =
                        (&e.object, &e.annotation, e.tower)
                    else {
                        continue;
                    };
                    let Ok(bytes) = <&[u8; 16]>::try_from(&stub[object.clone()]) else {
                        continue;
                    };
                    let object = uuid::read(bytes, answer.endian);
                    entries.push(LookupEntry {
                        object,
                        annotation: stub[annotation.clone()].to_vec(),
                        tower: stub[walk.towers[tower].clone()].to_vec(),
                    });
                }
                handle.copy_from_slice(&stub[walk.handle.clone()]);
                let more = walk.status == 0 && handle != [0; HANDLE_LEN];
                if !more || entries.len() >= MAX_LOOKUP_ENTRIES {
                    break;
                }
            }
            if handle != [0; HANDLE_LEN] {
                let _ = client.free(&handle).await;
            }
            *lock(&self.answered) = Some(Instant::now());
            client.close().await;
            entries.truncate(MAX_LOOKUP_ENTRIES);
            Ok(entries)
        })
        .await
    }

    async fn query_unbounded(&self, interface: SyntaxId) -> anyhow::Result<Vec<Endpoint>> {
        let mut query = Vec::with_capacity(80);
        encode_tcp_tower(&mut query, interface, 0, Ipv4Addr::UNSPECIFIED);
        let mut client = self.epm_client().await?;
        let answer = client.map(Some(Uuid::nil()), &query).await?;
        *lock(&self.answered) = Some(Instant::now());
        client.close().await;
        endpoints(&answer.stub, answer.endian, interface)
    }

    /// A bound association with the server's endpoint mapper.
    async fn epm_client(&self) -> anyhow::Result<EpmClient> {
        let stream = self.connect(self.backend.epm_port, self.timeout).await?;
        EpmClient::bind(stream).await
    }

    /// `work`, given at most `limits.resolve_timeout`.
    async fn bounded<T>(
        &self,
        work: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| {
                anyhow!(
                    "the backend's endpoint mapper did not answer within {:?}",
                    self.timeout
                )
            })?
    }
}

/// One entry of a server's endpoint mapper, as ept_lookup gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupEntry {
    /// The object UUID it is registered with (nil for most).
    pub object: Uuid,
    /// The annotation's characters, NUL included when the server sent it.
    pub annotation: Vec<u8>,
    /// The tower's octets.
    pub tower: Vec<u8>,
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
