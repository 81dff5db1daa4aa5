//! The configuration file (DESIGN.md §4): parsing kept apart from validation, and every
//! error naming the key it is about.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::interfaces::Interface;

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The key, as a path (`pin[1].interfaces[0]`).
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

impl std::error::Error for ConfigError {}

fn err(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        reason: reason.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    backend: RawBackend,
    epm: RawEpm,
    #[serde(default)]
    pin: Vec<RawPin>,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    process: RawProcess,
    #[serde(default)]
    admin: RawAdmin,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
    ready_window: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProcess {
    user: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    host: String,
    #[serde(default = "default_epm_port")]
    epm_port: u16,
}

fn default_epm_port() -> u16 {
    135
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEpm {
    listen: String,
    advertise: Option<String>,
    protected_answers: Option<ProtectedAnswers>,
    hide_unpinned: Option<bool>,
    #[serde(default)]
    proxy_protocol: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPin {
    name: String,
    listen: String,
    interfaces: Vec<String>,
    advertise_port: Option<u16>,
    backend_port: Option<u16>,
    #[serde(default)]
    opnums: std::collections::BTreeMap<String, Vec<u16>>,
    #[serde(default)]
    proxy_protocol: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<LogFormat>,
    level: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    handshake_timeout: Option<String>,
    idle_timeout: Option<String>,
    connect_timeout: Option<String>,
    resolve_timeout: Option<String>,
    resolve_cache: Option<String>,
    max_fragment: Option<usize>,
    max_reassembly: Option<usize>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    keepalive: Option<String>,
    drain_timeout: Option<String>,
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
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let key = e
                .span()
                .map_or_else(|| "(file)".to_string(), |s| key_at(text, s.start));
            err(key, e.message().to_string())
        })?;
        validate(raw)
    }
}

/// Names the line a TOML error points at, for errors that serde reports without a path.
fn key_at(text: &str, offset: usize) -> String {
    let line = text[..offset.min(text.len())].matches('\n').count() + 1;
    let content = text.lines().nth(line - 1).unwrap_or("").trim();
    format!("line {line} ({content})")
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

/// Parses `"250ms"`, `"10s"`, `"15m"` or `"1h"`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as \"10s\""))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{text:?} needs a unit: ms, s, m or h")),
    };
    if d.is_zero() {
        return Err("must be longer than zero".to_string());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::SyntaxId;

    const MINIMAL: &str = r#"
[backend]
host = "10.0.0.5"
[epm]
listen = "0.0.0.0:135"
[[pin]]
name = "directory"
listen = "0.0.0.0:6004"
interfaces = ["nspi", "rfr"]
[[pin]]
name = "store"
listen = "0.0.0.0:6001"
interfaces = ["emsmdb", "async_emsmdb"]
"#;

    fn with(extra: &str) -> Result<Config, ConfigError> {
        Config::parse(&format!("{MINIMAL}{extra}"))
    }

    #[test]
    fn minimal_config_takes_the_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.backend.epm_port, 135);
        assert_eq!(c.epm.advertise, None);
        assert_eq!(c.pins.len(), 2);
        assert_eq!(c.pins[0].interfaces.len(), 2);
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.limits.handshake_timeout, Duration::from_secs(10));
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(String, &str)] = &[
            (MINIMAL.replace("nspi\"", "nspy\""), "pin[0].interfaces[0]"),
            (
                MINIMAL.replace("0.0.0.0:6001", "0.0.0.0:6004"),
                "pin[1].listen",
            ),
            (MINIMAL.replace("\"store\"", "\"directory\""), "pin[1].name"),
            (
                MINIMAL.replace("\"emsmdb\"", "\"nspi\""),
                "pin[1].interfaces[0]",
            ),
            (MINIMAL.replace("0.0.0.0:135", "0.0.0.0"), "epm.listen"),
            (MINIMAL.replace("10.0.0.5", ""), "backend.host"),
            (MINIMAL.replace("10.0.0.5", "127.0.0.1"), "backend.host"),
            (
                MINIMAL.replace("\"rfr\"", "\"epm\""),
                "pin[0].interfaces[1]",
            ),
        ];
        for (text, key) in cases {
            let e = Config::parse(text).unwrap_err();
            assert_eq!(e.key, *key, "{e}");
        }
        assert_eq!(with("[epm2]\n").unwrap_err().key, "line 14 ([epm2])");
        assert!(
            with("[limits]\nidle_timeout = \"10\"\n").unwrap_err().key == "limits.idle_timeout"
        );
        assert!(with("[log]\nformat = \"xml\"\n")
            .unwrap_err()
            .reason
            .contains("unknown variant"));
        let e = Config::parse(
            &MINIMAL
                .replace("advertise", "x")
                .replace("[epm]", "[epm]\nadvertise = \"::1\""),
        )
        .unwrap_err();
        assert_eq!(e.key, "epm.advertise");
    }

    #[test]
    fn opnum_lists_name_interfaces_of_their_pin() {
        let c = with("").unwrap();
        assert!(c.pins[0].opnums.is_empty());
        let text = MINIMAL.replace(
            "interfaces = [\"nspi\", \"rfr\"]",
            "interfaces = [\"nspi\", \"rfr\"]\nopnums = { nspi = [0, 1], \"1544f5e0-613c-11d1-93df-00c04fd7bd09\" = [0] }",
        );
        let c = Config::parse(&text).unwrap();
        let nspi = SyntaxId::new(::uuid::uuid!("f5cc5a18-4264-101a-8c59-08002b2f8426"), 56, 0);
        let rfr = SyntaxId::new(::uuid::uuid!("1544f5e0-613c-11d1-93df-00c04fd7bd09"), 1, 0);
        assert!(c.pins[0].allows_opnum(&nspi, 1) && !c.pins[0].allows_opnum(&nspi, 2));
        assert!(c.pins[0].allows_opnum(&rfr, 0) && !c.pins[0].allows_opnum(&rfr, 1));
        assert!(
            c.pins[1].allows_opnum(&SyntaxId { major: 0, ..nspi }, 99),
            "no list: all"
        );
        let e = Config::parse(&text.replace("nspi = [0, 1]", "emsmdb = [0]")).unwrap_err();
        assert_eq!(e.key, "pin[0].opnums.emsmdb");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = Config::parse(
            &MINIMAL
                .replace("epm_port", "x")
                .replace("[backend]", "[backend]\nport = 1"),
        )
        .unwrap_err();
        assert!(e.reason.contains("unknown field `port`"), "{e}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5 min").is_err());
    }
}
