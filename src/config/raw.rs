//! The configuration file as TOML has it: the serde form, before any value is checked.
//! Unknown keys are refused here, so a misspelt key is an error and not a silent default.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{err, ConfigError, LogFormat, OtherTowers, ProtectedAnswers};

/// Reads `text` into the serde form.
pub(super) fn parse(text: &str) -> Result<RawConfig, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let key = e
            .span()
            .map_or_else(|| "(file)".to_string(), |s| key_at(text, s.start));
        err(key, e.message().to_string())
    })
}

/// Names the line a TOML error points at, for errors that serde reports without a path.
fn key_at(text: &str, offset: usize) -> String {
    // Counted on bytes: an offset that is not a character boundary cannot panic.
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let content = text.lines().nth(line - 1).unwrap_or("").trim();
    format!("line {line} ({content})")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) backend: RawBackend,
    #[serde(default)]
    pub(super) backends: BTreeMap<String, RawBackend>,
    pub(super) epm: RawEpm,
    #[serde(default)]
    pub(super) pin: Vec<RawPin>,
    #[serde(default)]
    pub(super) log: RawLog,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) process: RawProcess,
    #[serde(default)]
    pub(super) admin: RawAdmin,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<String>,
    pub(super) ready_window: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProcess {
    pub(super) user: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub(super) host: String,
    #[serde(default = "default_epm_port")]
    pub(super) epm_port: u16,
}

fn default_epm_port() -> u16 {
    135
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEpm {
    pub(super) listen: String,
    /// Read as text, so that a wrong value is an error naming `epm.mode`.
    pub(super) mode: Option<String>,
    pub(super) advertise: Option<String>,
    pub(super) protected_answers: Option<ProtectedAnswers>,
    pub(super) hide_unpinned: Option<bool>,
    pub(super) other_towers: Option<OtherTowers>,
    #[serde(default)]
    pub(super) proxy_protocol: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPin {
    pub(super) name: String,
    pub(super) listen: String,
    pub(super) interfaces: Vec<String>,
    pub(super) advertise_port: Option<u16>,
    pub(super) backend_port: Option<u16>,
    pub(super) backend: Option<String>,
    #[serde(default)]
    pub(super) opnums: BTreeMap<String, Vec<u16>>,
    #[serde(default)]
    pub(super) proxy_protocol: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) format: Option<LogFormat>,
    pub(super) level: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) handshake_timeout: Option<String>,
    pub(super) idle_timeout: Option<String>,
    pub(super) connect_timeout: Option<String>,
    pub(super) resolve_timeout: Option<String>,
    pub(super) resolve_cache: Option<String>,
    pub(super) max_fragment: Option<usize>,
    pub(super) max_reassembly: Option<usize>,
    pub(super) max_connections: Option<usize>,
    pub(super) max_connections_per_ip: Option<usize>,
    pub(super) keepalive: Option<String>,
    pub(super) drain_timeout: Option<String>,
}
