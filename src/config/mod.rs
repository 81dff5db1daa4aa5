//! The configuration file (README.md, "Configuration"): parsing kept apart from validation,
//! and every error naming the key it is about.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::interfaces::Interface;
use raw::{RawAdmin, RawConfig, RawLimits};

mod raw;
#[cfg(test)]
mod tests;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The RPC server behind rpcpin.
    pub backend: Backend,
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

/// `[backend]`.
#[derive(Debug, Clone)]
pub struct Backend {
    /// IP address or DNS name of the RPC server.
    pub host: String,
    /// Its endpoint mapper's port.
    pub epm_port: u16,
}

/// `[epm]`.
#[derive(Debug, Clone)]
pub struct Epm {
    /// Where clients reach rpcpin's endpoint mapper.
    pub listen: SocketAddr,
    /// The IPv4 address written into returned towers; default: the local address of the
    /// client's connection.
    pub advertise: Option<Ipv4Addr>,
    /// What to do with an answer whose verifier covers the stub when it needs a rewrite.
    pub protected_answers: ProtectedAnswers,
    /// Whether interfaces no pin carries are hidden from ept_map and ept_lookup answers.
    pub hide_unpinned: bool,
    /// Whether each connection starts with a PROXY protocol (v1 or v2) header.
    pub proxy_protocol: bool,
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
            max_connections_per_ip: 256,
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
        validate(raw::parse(text)?)
    }
}

fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    if raw.backend.host.trim().is_empty() {
        return Err(err(
            "backend.host",
            "must name the RPC server (IP address or DNS name)",
        ));
    }
    if raw.backend.epm_port == 0 {
        return Err(err(
            "backend.epm_port",
            "must be a port number from 1 to 65535",
        ));
    }
    let backend = Backend {
        host: raw.backend.host.trim().to_string(),
        epm_port: raw.backend.epm_port,
    };
    let epm = Epm {
        listen: parse_listen("epm.listen", &raw.epm.listen)?,
        advertise: raw
            .epm
            .advertise
            .as_deref()
            .map(|a| {
                a.parse()
                    .map_err(|_| err("epm.advertise", format!("{a:?} is not an IPv4 address")))
            })
            .transpose()?,
        protected_answers: raw.epm.protected_answers.unwrap_or(ProtectedAnswers::Fault),
        hide_unpinned: raw.epm.hide_unpinned.unwrap_or(true),
        proxy_protocol: raw.epm.proxy_protocol,
    };
    if raw.pin.is_empty() {
        return Err(err("pin", "at least one [[pin]] is needed"));
    }
    let mut pins = Vec::with_capacity(raw.pin.len());
    let mut carried: HashMap<(crate::wire::Uuid, Option<(u16, u16)>), String> = HashMap::new();
    for (i, p) in raw.pin.into_iter().enumerate() {
        let key = |k: &str| format!("pin[{i}].{k}");
        let name = p.name.trim().to_string();
        if name.is_empty() {
            return Err(err(key("name"), "must not be empty"));
        }
        if pins.iter().any(|q: &Pin| q.name == name) {
            return Err(err(key("name"), format!("{name:?} is used by another pin")));
        }
        let listen = parse_listen(&key("listen"), &p.listen)?;
        if listen == epm.listen && listen.port() != 0 {
            return Err(err(key("listen"), "is the same address as epm.listen"));
        }
        if pins
            .iter()
            .any(|q: &Pin| q.listen == listen && listen.port() != 0)
        {
            return Err(err(
                key("listen"),
                format!("{listen} is used by another pin"),
            ));
        }
        if p.interfaces.is_empty() {
            return Err(err(key("interfaces"), "must name at least one interface"));
        }
        let mut interfaces = Vec::new();
        for (j, text) in p.interfaces.iter().enumerate() {
            let ikey = format!("pin[{i}].interfaces[{j}]");
            for iface in Interface::parse(text).map_err(|r| err(&ikey, r))? {
                if iface.uuid == crate::wire::epm::EPM.uuid {
                    return Err(err(
                        ikey,
                        "the endpoint mapper is served on epm.listen, not on a pin",
                    ));
                }
                if let Some(other) = carried.insert((iface.uuid, iface.version), name.clone()) {
                    return Err(err(
                        ikey,
                        format!("{iface} is already carried by pin {other:?}: a tower can only point at one port"),
                    ));
                }
                interfaces.push(iface);
            }
        }
        for (k, v) in [
            ("advertise_port", p.advertise_port),
            ("backend_port", p.backend_port),
        ] {
            if v == Some(0) {
                return Err(err(key(k), "must be a port number from 1 to 65535"));
            }
        }
        let mut opnums = HashMap::new();
        for (text, allowed) in &p.opnums {
            let okey = format!("pin[{i}].opnums.{text}");
            for iface in Interface::parse(text).map_err(|r| err(&okey, r))? {
                if !interfaces.iter().any(|i| i.uuid == iface.uuid) {
                    return Err(err(okey, "names an interface this pin does not carry"));
                }
                opnums.insert(iface.uuid, allowed.clone());
            }
        }
        pins.push(Pin {
            name,
            listen,
            interfaces,
            advertise_port: p.advertise_port,
            backend_port: p.backend_port,
            opnums,
            proxy_protocol: p.proxy_protocol,
        });
    }
    check_not_looped(&backend, &epm)?;
    let admin = admin(raw.admin, &epm, &pins)?;
    Ok(Config {
        admin,
        backend,
        epm,
        pins,
        log: Log {
            format: raw.log.format.unwrap_or(LogFormat::Json),
            level: raw.log.level.unwrap_or_else(|| "info".to_string()),
        },
        limits: limits(raw.limits)?,
        process: Process {
            user: match raw.process.user {
                Some(u) if u.trim().is_empty() => {
                    return Err(err("process.user", "must not be empty"))
                }
                u => u,
            },
        },
    })
}

fn parse_listen(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.trim().parse().map_err(|_| {
        err(
            key,
            format!("{text:?} is not an address:port such as \"0.0.0.0:135\""),
        )
    })
}

/// Refuses a backend that is rpcpin's own endpoint-mapper listener: every connection
/// would loop back into rpcpin.
fn check_not_looped(backend: &Backend, epm: &Epm) -> Result<(), ConfigError> {
    let Ok(host) = backend.host.parse::<IpAddr>() else {
        return Ok(());
    };
    let same_ip =
        host == epm.listen.ip() || (epm.listen.ip().is_unspecified() && host.is_loopback());
    if same_ip && backend.epm_port == epm.listen.port() {
        return Err(err(
            "backend.host",
            format!(
                "{host}:{} is rpcpin's own epm.listen: connections would loop",
                backend.epm_port
            ),
        ));
    }
    Ok(())
}

fn admin(raw: RawAdmin, epm: &Epm, pins: &[Pin]) -> Result<Admin, ConfigError> {
    let listen = raw
        .listen
        .as_deref()
        .map(|l| parse_listen("admin.listen", l))
        .transpose()?;
    if let Some(l) = listen.filter(|l| l.port() != 0) {
        if l == epm.listen || pins.iter().any(|p| p.listen == l) {
            return Err(err(
                "admin.listen",
                format!("{l} is used by another listener"),
            ));
        }
    }
    let ready_window = match raw.ready_window {
        None => Duration::from_secs(30),
        Some(text) => parse_duration(&text).map_err(|r| err("admin.ready_window", r))?,
    };
    Ok(Admin {
        listen,
        ready_window,
    })
}

fn limits(raw: RawLimits) -> Result<Limits, ConfigError> {
    let d = Limits::default();
    let dur = |key: &str, v: Option<String>, default: Duration| -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(text) => parse_duration(&text).map_err(|r| err(format!("limits.{key}"), r)),
        }
    };
    let max_fragment = raw.max_fragment.unwrap_or(d.max_fragment);
    if !(1024..=crate::wire::frame::MAX_FRAG_LEN).contains(&max_fragment) {
        return Err(err(
            "limits.max_fragment",
            "must be from 1024 to 65535 bytes",
        ));
    }
    let max_reassembly = raw.max_reassembly.unwrap_or(d.max_reassembly);
    if max_reassembly < max_fragment || max_reassembly > 64 << 20 {
        return Err(err(
            "limits.max_reassembly",
            "must be at least limits.max_fragment and at most 64 MiB",
        ));
    }
    let max_connections = raw.max_connections.unwrap_or(d.max_connections);
    if max_connections == 0 {
        return Err(err("limits.max_connections", "must be at least 1"));
    }
    let max_connections_per_ip = raw
        .max_connections_per_ip
        .unwrap_or(d.max_connections_per_ip);
    if max_connections_per_ip == 0 {
        return Err(err("limits.max_connections_per_ip", "must be at least 1"));
    }
    Ok(Limits {
        max_connections,
        max_connections_per_ip,
        keepalive: dur("keepalive", raw.keepalive, d.keepalive)?,
        drain_timeout: dur("drain_timeout", raw.drain_timeout, d.drain_timeout)?,
        handshake_timeout: dur(
            "handshake_timeout",
            raw.handshake_timeout,
            d.handshake_timeout,
        )?,
        idle_timeout: dur("idle_timeout", raw.idle_timeout, d.idle_timeout)?,
        connect_timeout: dur("connect_timeout", raw.connect_timeout, d.connect_timeout)?,
        resolve_timeout: dur("resolve_timeout", raw.resolve_timeout, d.resolve_timeout)?,
        resolve_cache: dur("resolve_cache", raw.resolve_cache, d.resolve_cache)?,
        max_fragment,
        max_reassembly,
    })
}

/// The longest duration accepted, 1000 years: far past any timeout anyone means, and small
/// enough that adding it to an `Instant` (the relay's idle deadline does) cannot overflow.
const MAX_DURATION: Duration = Duration::from_secs(8_760_000 * 3600);

/// Parses `"250ms"`, `"10s"`, `"15m"` or `"1h"`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let too_long = || format!("{text:?} is too long: at most 8760000h (1000 years)");
    let n: u64 = num.parse().map_err(|e: std::num::ParseIntError| {
        if *e.kind() == std::num::IntErrorKind::PosOverflow {
            too_long()
        } else {
            format!("{text:?} is not a duration such as \"10s\"")
        }
    })?;
    let d = match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => return Err(format!("{text:?} needs a unit: ms, s, m or h")),
    };
    let d = d.filter(|d| *d <= MAX_DURATION).ok_or_else(too_long)?;
    if d.is_zero() {
        return Err("must be longer than zero".to_string());
    }
    Ok(d)
}
