//! From the serde form to a [`Config`], one section at a time: everything serde cannot check
//! (ranges, addresses, interface names, listeners that collide) with the key it is about.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use super::backends::{self, check_mode, check_none_looped};
use super::raw::{RawAdmin, RawConfig, RawEpm, RawLimits, RawLog, RawPin, RawProcess};
use super::{
    err, Admin, Backend, Config, ConfigError, Epm, Limits, Log, LogFormat, OtherTowers, Pin,
    Process, ProtectedAnswers,
};
use crate::interfaces::Interface;
use crate::wire::Uuid;

/// Checks `raw`. The sections go in a fixed order and each stops at its first error, so a
/// file with several mistakes always reports the same one first.
pub(super) fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let backend = backends::server("backend", raw.backend)?;
    let named = backends::named(raw.backends)?;
    let epm = epm(raw.epm)?;
    let pins = pins(raw.pin, &epm, &named)?;
    check_none_looped(&backend, &named, &epm)?;
    check_mode(&epm, &backend, &named, &pins)?;
    let admin = admin(raw.admin, &epm, &pins)?;
    Ok(Config {
        admin,
        backend,
        backends: named,
        epm,
        pins,
        log: log(raw.log),
        limits: limits(raw.limits)?,
        process: process(raw.process)?,
    })
}

fn epm(raw: RawEpm) -> Result<Epm, ConfigError> {
    let listen = parse_listen("epm.listen", &raw.listen)?;
    let advertise = raw
        .advertise
        .as_deref()
        .map(|a| {
            a.parse()
                .map_err(|_| err("epm.advertise", format!("{a:?} is not an IPv4 address")))
        })
        .transpose()?;
    Ok(Epm {
        mode: backends::mode(raw.mode.as_deref())?,
        listen,
        advertise,
        protected_answers: raw.protected_answers.unwrap_or(ProtectedAnswers::Fault),
        hide_unpinned: raw.hide_unpinned.unwrap_or(true),
        other_towers: raw.other_towers.unwrap_or(OtherTowers::Hide),
        proxy_protocol: raw.proxy_protocol,
    })
}

/// Which pin carries each interface version so far: a tower can point at one port only.
type Carried = HashMap<(Uuid, Option<(u16, u16)>), String>;

fn pins(
    raw: Vec<RawPin>,
    epm: &Epm,
    named: &BTreeMap<String, Backend>,
) -> Result<Vec<Pin>, ConfigError> {
    if raw.is_empty() {
        return Err(err("pin", "at least one [[pin]] is needed"));
    }
    let mut pins = Vec::with_capacity(raw.len());
    let mut carried = Carried::new();
    for (i, p) in raw.into_iter().enumerate() {
        let pin = pin(i, p, epm, named, &pins, &mut carried)?;
        pins.push(pin);
    }
    Ok(pins)
}

/// `pin[i]`, checked on its own and against `epm.listen`, the named backends and the pins
/// before it.
fn pin(
    i: usize,
    raw: RawPin,
    epm: &Epm,
    named: &BTreeMap<String, Backend>,
    earlier: &[Pin],
    carried: &mut Carried,
) -> Result<Pin, ConfigError> {
    let key = |k: &str| format!("pin[{i}].{k}");
    let name = pin_name(&key("name"), &raw.name, earlier)?;
    let listen = pin_listen(&key("listen"), &raw.listen, epm, earlier)?;
    let interfaces = pin_interfaces(i, &raw.interfaces, &name, carried)?;
    for (k, v) in [
        ("advertise_port", raw.advertise_port),
        ("backend_port", raw.backend_port),
    ] {
        if v == Some(0) {
            return Err(err(key(k), "must be a port number from 1 to 65535"));
        }
    }
    let opnums = pin_opnums(i, &raw.opnums, &interfaces)?;
    let backend = backends::pin_backend(i, raw.backend, named)?;
    Ok(Pin {
        backend,
        name,
        listen,
        interfaces,
        advertise_port: raw.advertise_port,
        backend_port: raw.backend_port,
        opnums,
        proxy_protocol: raw.proxy_protocol,
    })
}

fn pin_name(key: &str, raw: &str, earlier: &[Pin]) -> Result<String, ConfigError> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(err(key, "must not be empty"));
    }
    if earlier.iter().any(|p| p.name == name) {
        return Err(err(key, format!("{name:?} is used by another pin")));
    }
    Ok(name.to_string())
}

fn pin_listen(key: &str, raw: &str, epm: &Epm, earlier: &[Pin]) -> Result<SocketAddr, ConfigError> {
    let listen = parse_listen(key, raw)?;
    // Port 0 is a fresh ephemeral port at each bind: it never collides.
    if listen.port() != 0 {
        if listen == epm.listen {
            return Err(err(key, "is the same address as epm.listen"));
        }
        if earlier.iter().any(|p| p.listen == listen) {
            return Err(err(key, format!("{listen} is used by another pin")));
        }
    }
    Ok(listen)
}

/// `pin[i].interfaces`; an alias may stand for several interfaces.
fn pin_interfaces(
    i: usize,
    texts: &[String],
    pin: &str,
    carried: &mut Carried,
) -> Result<Vec<Interface>, ConfigError> {
    if texts.is_empty() {
        return Err(err(
            format!("pin[{i}].interfaces"),
            "must name at least one interface",
        ));
    }
    let mut interfaces = Vec::new();
    for (j, text) in texts.iter().enumerate() {
        let key = format!("pin[{i}].interfaces[{j}]");
        for iface in Interface::parse(text).map_err(|r| err(&key, r.to_string()))? {
            if iface.uuid == crate::wire::epm::EPM.uuid {
                return Err(err(
                    key,
                    "the endpoint mapper is served on epm.listen, not on a pin",
                ));
            }
            if let Some(other) = carried.insert((iface.uuid, iface.version), pin.to_string()) {
                return Err(err(
                    key,
                    format!("{iface} is already carried by pin {other:?}: a tower can only point at one port"),
                ));
            }
            interfaces.push(iface);
        }
    }
    Ok(interfaces)
}

/// `pin[i].opnums`: allow-lists, each for an interface the pin carries.
fn pin_opnums(
    i: usize,
    raw: &BTreeMap<String, Vec<u16>>,
    interfaces: &[Interface],
) -> Result<HashMap<Uuid, Vec<u16>>, ConfigError> {
    let mut opnums = HashMap::new();
    for (text, allowed) in raw {
        let key = format!("pin[{i}].opnums.{text}");
        for iface in Interface::parse(text).map_err(|r| err(&key, r.to_string()))? {
            if !interfaces.iter().any(|i| i.uuid == iface.uuid) {
                return Err(err(key, "names an interface this pin does not carry"));
            }
            opnums.insert(iface.uuid, allowed.clone());
        }
    }
    Ok(opnums)
}

fn parse_listen(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.trim().parse().map_err(|_| {
        err(
            key,
            format!("{text:?} is not an address:port such as \"0.0.0.0:135\""),
        )
    })
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
    Ok(Admin {
        listen,
        ready_window: duration(
            "admin.ready_window",
            raw.ready_window,
            Duration::from_secs(30),
        )?,
    })
}

fn log(raw: RawLog) -> Log {
    Log {
        format: raw.format.unwrap_or(LogFormat::Json),
        level: raw.level.unwrap_or_else(|| "info".to_string()),
    }
}

fn limits(raw: RawLimits) -> Result<Limits, ConfigError> {
    let d = Limits::default();
    let (max_fragment, max_reassembly) = buffer_sizes(&raw, &d)?;
    let max_connections = at_least_one(
        "limits.max_connections",
        raw.max_connections.unwrap_or(d.max_connections),
    )?;
    let max_connections_per_ip = at_least_one(
        "limits.max_connections_per_ip",
        raw.max_connections_per_ip
            .unwrap_or(d.max_connections_per_ip),
    )?;
    let dur = |key: &str, raw: Option<String>, default: Duration| {
        duration(&format!("limits.{key}"), raw, default)
    };
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

/// `limits.max_fragment` and `limits.max_reassembly`: a fragment must fit the 16-bit length
/// field, and a reassembled answer must hold at least one fragment.
fn buffer_sizes(raw: &RawLimits, d: &Limits) -> Result<(usize, usize), ConfigError> {
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
    Ok((max_fragment, max_reassembly))
}

fn at_least_one(key: &str, n: usize) -> Result<usize, ConfigError> {
    if n == 0 {
        return Err(err(key, "must be at least 1"));
    }
    Ok(n)
}

fn process(raw: RawProcess) -> Result<Process, ConfigError> {
    if raw.user.as_deref().is_some_and(|u| u.trim().is_empty()) {
        return Err(err("process.user", "must not be empty"));
    }
    Ok(Process { user: raw.user })
}

/// The duration at `key`, or `default` when the key is absent.
fn duration(key: &str, raw: Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    match raw {
        None => Ok(default),
        Some(text) => parse_duration(&text).map_err(|r| err(key, r)),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5 min").is_err());
    }

    #[test]
    fn the_longest_duration_is_1000_years_in_any_unit() {
        let longest = Ok(Duration::from_secs(1000 * 365 * 24 * 3600));
        assert_eq!(parse_duration("8760000h"), longest);
        assert_eq!(parse_duration("525600000m"), longest);
        assert_eq!(parse_duration("31536000000000ms"), longest);
        assert!(parse_duration("525600001m").is_err());
    }
}
