//! The process's metrics, served in the Prometheus/OpenMetrics text format on the admin
//! listener's `/metrics`.
//!
//! One set per process (like its log): everything that counts reaches it through
//! [`metrics()`]. Counters are atomics; nothing here is on the per-PDU path except the
//! byte counters, which the relay bumps once per write.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A listener: `epm`, or the pin's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `epm` or the pin's name.
    pub listener: String,
}

/// A presentation context judged by a gate.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BindLabels {
    /// The interface's alias, or `-`.
    pub alias: &'static str,
    /// `accepted` or `refused`.
    pub result: &'static str,
}

/// A backend port resolution.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResolutionLabels {
    /// `ok` or `error`.
    pub result: &'static str,
    /// `true` when the port came from the cache.
    pub cached: &'static str,
    /// The server: `default` (`[backend]`) or the NAME of `[backends.NAME]`.
    pub backend: String,
}

/// One server: `default` (`[backend]`) or the NAME of `[backends.NAME]`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    /// The server's name.
    pub backend: String,
}

/// Where an endpoint-mapper answer came from, in answer mode.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// `cache`, or `server` (this client's lookup at the server, or one it waited for).
    pub source: &'static str,
}

/// A histogram per server.
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The buckets of `backend_resolution_seconds`: 0.5 ms to 1 s.
fn resolution_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 12))
}

/// Bytes one way on one listener's connections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    /// `epm` or the pin's name.
    pub listener: String,
    /// `from_client` or `to_client`.
    pub direction: &'static str,
}

/// A refusal, as the `refused` log event names it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// The policy that refused (`interface`, `opnum`, `hide_unpinned`, `max_connections`…).
    pub policy: &'static str,
    /// Why, in the log event's words.
    pub reason: &'static str,
}

/// A configuration reload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// The metrics of one listener's connections.
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    /// The listener's name (`epm` or the pin's).
    pub name: String,
    /// Connections accepted.
    pub connections: Counter,
    /// Connections open.
    pub open: Gauge,
    /// Bytes from the client.
    pub from_client: Counter,
    /// Bytes to the client.
    pub to_client: Counter,
}

/// Every metric rpcpin exports.
#[derive(Debug)]
pub struct Metrics {
    /// Open client connections.
    pub connections_open: Family<ListenerLabels, Gauge>,
    /// Client connections accepted.
    pub connections: Family<ListenerLabels, Counter>,
    /// Presentation contexts let through or refused by a gate.
    pub binds: Family<BindLabels, Counter>,
    /// ncacn_ip_tcp towers rewritten in endpoint-mapper answers.
    pub towers_rewritten: Counter,
    /// Backend port resolutions.
    pub backend_resolutions: Family<ResolutionLabels, Counter>,
    /// How long a server's endpoint mapper took to answer an (uncached) resolution.
    pub backend_resolution_seconds: HistogramFamily<BackendLabels>,
    /// Connections to a server that failed.
    pub backend_connect_failures: Family<BackendLabels, Counter>,
    /// Endpoint-mapper answers rpcpin gave itself (answer mode), by source.
    pub epm_answers: Family<SourceLabels, Counter>,
    /// Lookups rpcpin made at a server's endpoint mapper to answer clients, by server.
    pub epm_server_lookups: Family<BackendLabels, Counter>,
    /// Bytes relayed.
    pub bytes: Family<BytesLabels, Counter>,
    /// Refusals by policy and reason.
    pub refusals: Family<RefusalLabels, Counter>,
    /// Configuration reloads.
    pub reloads: Family<ReloadLabels, Counter>,
    /// Log lines dropped because the log's consumer was slow.
    pub log_lines_dropped: Counter,
    /// `limits.max_connections`, as the proxy started with it.
    pub max_connections: Gauge,
    registry: Registry,
}

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            connections_open: Family::default(),
            connections: Family::default(),
            binds: Family::default(),
            towers_rewritten: Counter::default(),
            backend_resolutions: Family::default(),
            backend_resolution_seconds: Family::new_with_constructor(resolution_buckets),
            backend_connect_failures: Family::default(),
            epm_answers: Family::default(),
            epm_server_lookups: Family::default(),
            bytes: Family::default(),
            refusals: Family::default(),
            reloads: Family::default(),
            log_lines_dropped: Counter::default(),
            max_connections: Gauge::default(),
            registry: Registry::with_prefix("rpcpin"),
        };
        let mut r = Registry::with_prefix("rpcpin");
        r.register(
            "connections_open",
            "Open client connections, by listener",
            m.connections_open.clone(),
        );
        r.register(
            "connections",
            "Client connections accepted, by listener",
            m.connections.clone(),
        );
        r.register(
            "binds",
            "Presentation contexts let through (accepted) or refused by rpcpin, by interface alias",
            m.binds.clone(),
        );
        r.register(
            "towers_rewritten",
            "ncacn_ip_tcp towers rewritten in endpoint-mapper answers",
            m.towers_rewritten.clone(),
        );
        r.register(
            "backend_resolutions",
            "Backend port resolutions for pin connections, by result, cache and server",
            m.backend_resolutions.clone(),
        );
        r.register(
            "backend_resolution_seconds",
            "Time for a server's endpoint mapper to answer an uncached resolution, by server",
            m.backend_resolution_seconds.clone(),
        );
        r.register(
            "backend_connect_failures",
            "Connections to a server that failed, by server",
            m.backend_connect_failures.clone(),
        );
        r.register(
            "epm_answers",
            "Endpoint-mapper answers rpcpin gave itself (epm.mode = answer), by source: cache or server",
            m.epm_answers.clone(),
        );
        r.register(
            "epm_server_lookups",
            "Lookups rpcpin made at a server's endpoint mapper to answer clients (answer mode), by server",
            m.epm_server_lookups.clone(),
        );
        r.register(
            "bytes",
            "Bytes relayed, by listener and direction",
            m.bytes.clone(),
        );
        r.register(
            "refusals",
            "Requests refused by a policy, by policy and reason",
            m.refusals.clone(),
        );
        r.register(
            "config_reloads",
            "Configuration reloads (SIGHUP), by result",
            m.reloads.clone(),
        );
        r.register(
            "log_lines_dropped",
            "Log lines dropped, not waited for, because the log's consumer was slow",
            m.log_lines_dropped.clone(),
        );
        r.register(
            "max_connections",
            "limits.max_connections as the process started with it (a reload cannot change it)",
            m.max_connections.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// Counts a refusal (next to its `refused` log event).
    pub fn refused(&self, policy: &'static str, reason: &'static str) {
        self.refusals
            .get_or_create(&RefusalLabels { policy, reason })
            .inc();
    }

    /// The metrics of one listener's connections, looked up once per listener rather
    /// than once per connection.
    pub fn listener(&self, name: &str) -> ListenerMetrics {
        let listener = ListenerLabels {
            listener: name.to_string(),
        };
        let bytes = |direction| {
            self.bytes
                .get_or_create(&BytesLabels {
                    listener: name.to_string(),
                    direction,
                })
                .clone()
        };
        ListenerMetrics {
            name: name.to_string(),
            connections: self.connections.get_or_create(&listener).clone(),
            open: self.connections_open.get_or_create(&listener).clone(),
            from_client: bytes("from_client"),
            to_client: bytes("to_client"),
        }
    }

    /// Everything, in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_family() {
        let m = Metrics::new();
        m.refused("opnum", "operation not in this pin's opnums list");
        m.towers_rewritten.inc_by(2);
        let default = BackendLabels {
            backend: "default".to_string(),
        };
        let _ = m.backend_resolution_seconds.get_or_create(&default);
        let _ = m.backend_connect_failures.get_or_create(&default);
        let text = m.encode();
        for name in [
            "rpcpin_connections_open",
            "rpcpin_towers_rewritten_total 2",
            "rpcpin_refusals_total{policy=\"opnum\",reason=\"operation not in this pin's opnums list\"} 1",
            "rpcpin_backend_resolution_seconds_bucket{le=\"0.0005\",backend=\"default\"} 0",
            "rpcpin_backend_connect_failures_total{backend=\"default\"} 0",
            "rpcpin_log_lines_dropped_total 0",
            "rpcpin_max_connections 0",
            "# EOF",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
