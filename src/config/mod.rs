//! The configuration file (README.md, "Configuration"): parsing kept apart from validation,
//! and every error naming the key it is about.
//!
//! This file holds the validated types; `raw` is the file as TOML has it (unknown keys
//! refused) and `validate` turns that into them, one section at a time.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::interfaces::Interface;
pub use host::{Host, HostPort};

mod backends;
mod host;
mod raw;
#[cfg(test)]
mod tests;
mod validate;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The RPC server behind rpcpin: the one the endpoint-mapper listener relays to, and
    /// every pin's unless the pin names another (`pin.backend`).
    pub backend: Backend,
    /// Other RPC servers, `[backends.NAME]`, by name; a pin names one with `pin.backend`.
    pub backends: BTreeMap<String, Backend>,
    /// The endpoint-mapper listener.
    pub epm: Epm,
    /// The pinned ports.
    pub pins: Vec<Pin>,
    /// Logging.
    pub log: Log,
    /// Timeouts and size bounds.
    pub limits: Limits,
    /// The process itself.
    pub process: Process,
    /// The admin listener: metrics and health checks.
    pub admin: Admin,
}

/// `[admin]`.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Where `/metrics`, `/healthz` and `/readyz` are served; off when absent.
    pub listen: Option<SocketAddr>,
    /// `/readyz` is ready when the backend's endpoint mapper answered within this long
    /// (otherwise it asks the backend itself).
    pub ready_window: Duration,
}

/// `[process]`.
#[derive(Debug, Clone, Default)]
pub struct Process {
    /// The user to switch to once every listener is bound (rpcpin must start as root).
    pub user: Option<String>,
}

/// `[backend]`, or one `[backends.NAME]`: both take the same keys, `host` and `epm_port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// IP address or DNS name of the RPC server.
    pub host: Host,
    /// Its endpoint mapper's port.
    pub epm_port: u16,
}

/// The name `[backend]` goes by in logs, metrics, `/readyz` and `rpcpin check`; no
/// `[backends.NAME]` may take it.
pub const DEFAULT_BACKEND: &str = "default";

impl Backend {
    /// Whether `other` is the same server: the same host (an address however written, a
    /// DNS name without regard to case) and the same endpoint-mapper port.
    pub fn same_server(&self, other: &Backend) -> bool {
        self.host.same(&other.host) && self.epm_port == other.epm_port
    }

    /// The server's `host:port` for `port`, IPv6 in brackets.
    pub fn at(&self, port: u16) -> HostPort<'_> {
        HostPort(&self.host, port)
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.at(self.epm_port).fmt(f)
    }
}

/// `[epm]`.
#[derive(Debug, Clone)]
pub struct Epm {
    /// Whether the endpoint mapper is the backend's, relayed, or rpcpin's own.
    pub mode: EpmMode,
    /// Where clients reach rpcpin's endpoint mapper.
    pub listen: SocketAddr,
    /// The IPv4 address written into returned towers; default: the local address of the
    /// client's connection.
    pub advertise: Option<Ipv4Addr>,
    /// What to do with an answer whose verifier covers the stub when it needs a rewrite.
    pub protected_answers: ProtectedAnswers,
    /// Whether interfaces no pin carries are hidden from ept_map and ept_lookup answers.
    pub hide_unpinned: bool,
    /// What happens to the towers of pinned interfaces other than ncacn_ip_tcp.
    pub other_towers: OtherTowers,
    /// Whether each connection starts with a PROXY protocol (v1 or v2) header.
    pub proxy_protocol: bool,
}

/// `epm.mode`: who answers the clients of the endpoint-mapper listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpmMode {
    /// The backend's endpoint mapper, relayed and its answers rewritten. One server only:
    /// the one every client of port 135 is relayed to.
    Relay,
    /// rpcpin itself, from its pins (the default); interfaces no pin carries answer
    /// `ept_s_not_registered`. Pins may then use several servers.
    Answer,
}

impl EpmMode {
    /// The value as the configuration writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            EpmMode::Relay => "relay",
            EpmMode::Answer => "answer",
        }
    }
}

/// `epm.protected_answers`: an ept_map or ept_lookup answer signed or sealed by the backend
/// (auth level packet, integrity or privacy) cannot be rewritten without breaking its
/// verifier. Either way the client never gets the internal port with a success status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtectedAnswers {
    /// Answer the call with a fault and keep the connection (the default).
    Fault,
    /// Close the client's connection.
    Close,
}

/// `epm.other_towers`: the towers of a pinned interface other than ncacn_ip_tcp
/// (ncacn_http, ncadg_ip_udp, ncacn_np, ncacn_nb, …) are not rewritten, carry the server's
/// internal address or name, and lead nowhere through rpcpin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OtherTowers {
    /// Remove them from ept_map and ept_lookup answers (the default).
    Hide,
    /// Leave them as the backend gave them, for diagnosis.
    Keep,
}

/// One `[[pin]]`.
#[derive(Debug, Clone)]
pub struct Pin {
    /// Free text for logs and metrics.
    pub name: String,
    /// The pinned port's listen address.
    pub listen: SocketAddr,
    /// The interfaces a client may bind to here.
    pub interfaces: Vec<Interface>,
    /// The port clients see, when a NAT in front translates it; default: the listen port.
    pub advertise_port: Option<u16>,
    /// A fixed backend port, skipping endpoint-mapper resolution.
    pub backend_port: Option<u16>,
    /// The `[backends.NAME]` this pin's interfaces live on; `None`: `[backend]`.
    pub backend: Option<String>,
    /// Per-interface opnum allow-lists; an interface without one allows every opnum.
    pub opnums: HashMap<crate::wire::Uuid, Vec<u16>>,
    /// Whether each connection starts with a PROXY protocol (v1 or v2) header.
    pub proxy_protocol: bool,
}

impl Pin {
    /// Whether a client may use `syntax` on this pin.
    pub fn allows(&self, syntax: &crate::wire::SyntaxId) -> bool {
        self.interfaces.iter().any(|i| i.matches(syntax))
    }

    /// Whether a client may call `opnum` of `interface` on this pin.
    pub fn allows_opnum(&self, interface: &crate::wire::SyntaxId, opnum: u16) -> bool {
        self.opnums
            .get(&interface.uuid)
            .is_none_or(|allowed| allowed.contains(&opnum))
    }
}

/// `[log]`.
#[derive(Debug, Clone)]
pub struct Log {
    /// Output format.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `rpcpin=debug`; `RUST_LOG` overrides it.
    pub level: String,
}

/// How log events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, for log shippers.
    Json,
    /// Human-readable lines.
    Text,
}

/// `[limits]`: every wait for a peer is bounded, and so is every buffer.
#[derive(Debug, Clone)]
pub struct Limits {
    /// How long a new client may take to send its first PDU.
    pub handshake_timeout: Duration,
    /// How long a connection may stay silent in both directions.
    pub idle_timeout: Duration,
    /// How long connecting to the backend may take.
    pub connect_timeout: Duration,
    /// How long a backend port resolution (connect, bind, ept_map) may take.
    pub resolve_timeout: Duration,
    /// How long a resolved backend port is reused.
    pub resolve_cache: Duration,
    /// The largest fragment accepted from either side.
    pub max_fragment: usize,
    /// The largest endpoint-mapper response reassembled for rewriting.
    pub max_reassembly: usize,
    /// The most client connections open at once, over all listeners.
    pub max_connections: usize,
    /// The most client connections open at once from one source address.
    pub max_connections_per_ip: usize,
    /// TCP keepalive idle time on both legs of every connection.
    pub keepalive: Duration,
    /// On SIGTERM or SIGINT, how long established connections may go on before they are
    /// closed.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(15 * 60),
            connect_timeout: Duration::from_secs(5),
            resolve_timeout: Duration::from_secs(5),
            resolve_cache: Duration::from_secs(30),
            max_fragment: crate::wire::frame::MAX_FRAG_LEN,
            max_reassembly: 1 << 20,
            max_connections: 10_000,
            max_connections_per_ip: 4000,
            keepalive: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// A configuration error: the key it is about and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    /// The key, as a path (`pin[1].interfaces[0]`).
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

fn err(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        reason: reason.into(),
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read configuration {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("invalid configuration {}", path.display()))
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        validate::validate(raw::parse(text)?)
    }

    /// The server `pin` resolves and connects at, with its name: `pin.backend`'s, or
    /// `[backend]` as [`DEFAULT_BACKEND`].
    pub fn backend_of(&self, pin: &Pin) -> (&str, &Backend) {
        pin.backend
            .as_deref()
            .and_then(|name| self.backends.get_key_value(name))
            .map_or((DEFAULT_BACKEND, &self.backend), |(n, b)| (n.as_str(), b))
    }

    /// The servers in use, each once with its name: `[backend]` first (the endpoint-mapper
    /// listener's, always in use), then each `[backends.NAME]` a pin names, in the order the
    /// pins first name them. A named backend no pin names is not in use; one that is the
    /// same server as `[backend]` is still a server of its own (its name, its cache).
    pub fn servers(&self) -> Vec<(&str, &Backend)> {
        let mut servers = vec![(DEFAULT_BACKEND, &self.backend)];
        for pin in &self.pins {
            let server = self.backend_of(pin);
            if !servers.iter().any(|(name, _)| *name == server.0) {
                servers.push(server);
            }
        }
        servers
    }
}
