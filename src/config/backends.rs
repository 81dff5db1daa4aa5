//! The RPC servers: `[backend]`, the `[backends.NAME]` beside it, which pin uses which
//! (`pin.backend`), and what `epm.mode` allows of them.
//!
//! A named backend takes the same keys as `[backend]`, `host` and `epm_port`, and nothing
//! else: the timeouts and the cache (`[limits]`) stay the same for every server.

use std::collections::BTreeMap;

use super::raw::RawBackend;
use super::{err, Backend, ConfigError, Epm, EpmMode, Host, Pin, DEFAULT_BACKEND};

/// `[backend]`, or `[backends.NAME]` when `key` is `backends.NAME`.
pub(super) fn server(key: &str, raw: RawBackend) -> Result<Backend, ConfigError> {
    let host = raw.host.trim();
    if host.is_empty() {
        return Err(err(
            format!("{key}.host"),
            "must name the RPC server (IP address or DNS name)",
        ));
    }
    let host = Host::parse(host).map_err(|reason| err(format!("{key}.host"), reason))?;
    if raw.epm_port == 0 {
        return Err(err(
            format!("{key}.epm_port"),
            "must be a port number from 1 to 65535",
        ));
    }
    Ok(Backend {
        host,
        epm_port: raw.epm_port,
    })
}

/// Every `[backends.NAME]`, by name.
pub(super) fn named(
    raw: BTreeMap<String, RawBackend>,
) -> Result<BTreeMap<String, Backend>, ConfigError> {
    let mut named = BTreeMap::new();
    for (name, b) in raw {
        let key = table_key(&name);
        check_name(&key, &name)?;
        if name == DEFAULT_BACKEND {
            return Err(err(
                key,
                format!("{DEFAULT_BACKEND:?} is the name of [backend]: choose another"),
            ));
        }
        let backend = server(&key, b)?;
        named.insert(name, backend);
    }
    Ok(named)
}

/// `backends.NAME`, with the name quoted when it is not a plain name.
fn table_key(name: &str) -> String {
    if is_plain(name) {
        format!("backends.{name}")
    } else {
        format!("backends.{name:?}")
    }
}

/// Whether `name` is a plain name: letters, digits, `-` and `_`, at least one.
fn is_plain(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(err(key, "must not be empty"));
    }
    if !is_plain(name) {
        return Err(err(
            key,
            format!("{name:?} is not a plain name: letters, digits, '-' and '_' only"),
        ));
    }
    Ok(())
}

/// `epm.mode`.
pub(super) fn mode(raw: Option<&str>) -> Result<EpmMode, ConfigError> {
    match raw {
        Some("relay") => Ok(EpmMode::Relay),
        None | Some("answer") => Ok(EpmMode::Answer),
        Some(other) => Err(err(
            "epm.mode",
            format!("{other:?} is not \"relay\" or \"answer\""),
        )),
    }
}

/// `pin[i].backend`: a plain name that a `[backends.NAME]` defines.
pub(super) fn pin_backend(
    i: usize,
    raw: Option<String>,
    named: &BTreeMap<String, Backend>,
) -> Result<Option<String>, ConfigError> {
    let Some(name) = raw else {
        return Ok(None);
    };
    let key = format!("pin[{i}].backend");
    check_name(&key, &name)?;
    if !named.contains_key(&name) {
        return Err(err(
            key,
            format!("{name:?} names no server: there is no [backends.{name}]"),
        ));
    }
    Ok(Some(name))
}

/// What `epm.mode` allows: relay mode relays every client of the endpoint-mapper listener
/// to one server, so every pin must use that one; answer mode answers for unpinned
/// interfaces itself, `ept_s_not_registered`, so they cannot be shown.
pub(super) fn check_mode(
    epm: &Epm,
    backend: &Backend,
    named: &BTreeMap<String, Backend>,
    pins: &[Pin],
) -> Result<(), ConfigError> {
    match epm.mode {
        EpmMode::Answer if !epm.hide_unpinned => Err(err(
            "epm.hide_unpinned",
            "cannot be false in answer mode (epm.mode = \"answer\"): rpcpin answers \
             ept_s_not_registered for every interface no pin carries",
        )),
        EpmMode::Answer => Ok(()),
        EpmMode::Relay => {
            for (i, pin) in pins.iter().enumerate() {
                let Some((name, other)) =
                    pin.backend.as_deref().and_then(|n| named.get_key_value(n))
                else {
                    continue;
                };
                if !other.same_server(backend) {
                    return Err(err(
                        format!("pin[{i}].backend"),
                        format!(
                            "relay mode allows one server only: backends.{name} ({other}) is \
                             not [backend] ({backend}); several servers need \
                             epm.mode = \"answer\""
                        ),
                    ));
                }
            }
            Ok(())
        }
    }
}

/// Refuses a server that is rpcpin's own endpoint-mapper listener: every connection would
/// loop back into rpcpin. `key` is `backend` or `backends.NAME`.
fn check_not_looped(key: &str, backend: &Backend, epm: &Epm) -> Result<(), ConfigError> {
    let Host::Ip(host) = backend.host else {
        return Ok(());
    };
    let same_ip =
        host == epm.listen.ip() || (epm.listen.ip().is_unspecified() && host.is_loopback());
    if same_ip && backend.epm_port == epm.listen.port() {
        return Err(err(
            format!("{key}.host"),
            format!("{backend} is rpcpin's own epm.listen: connections would loop"),
        ));
    }
    Ok(())
}

/// Every server checked against rpcpin's own listener, `[backend]` first.
pub(super) fn check_none_looped(
    backend: &Backend,
    named: &BTreeMap<String, Backend>,
    epm: &Epm,
) -> Result<(), ConfigError> {
    check_not_looped("backend", backend, epm)?;
    for (name, b) in named {
        check_not_looped(&format!("backends.{name}"), b, epm)?;
    }
    Ok(())
}
