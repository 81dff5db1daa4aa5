//! rpcpin's log events, captured as JSON objects for tests to wait on: the events that show
//! what happened (a connection closed, and why; a drain started) instead of a sleep.

use std::sync::{LazyLock, Once};

use serde_json::Value;
use tokio::sync::watch;

use super::{Conn, WAIT};

/// Every event logged in this process since [`capture`].
static EVENTS: LazyLock<watch::Sender<Vec<Value>>> = LazyLock::new(|| watch::channel(Vec::new()).0);

/// Sends this process's log events to [`EVENTS`] (once; later calls do nothing): rpcpin's
/// at debug and above (its per-event detail is at debug; [`lines_about`] tells the lines
/// of the default level apart), other crates' at info and above. A test that sets a
/// subscriber of its own on its thread keeps it.
pub fn capture() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,rpcpin=debug"))
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(Line::default)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
    });
}

/// One event's JSON line, parsed and published when the formatter is done with it.
#[derive(Default)]
struct Line(Vec<u8>);

impl std::io::Write for Line {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        let events: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON log line"))
            .collect();
        if !events.is_empty() {
            EVENTS.send_modify(|all| all.extend(events));
        }
    }
}

/// How many events were logged so far: where to start looking for those that follow.
pub fn count() -> usize {
    EVENTS.borrow().len()
}

/// The first event logged after the first `since` that `matches`, waiting for it
/// (bounded): panics naming `what`.
pub async fn wait_for(what: &str, since: usize, matches: impl Fn(&Value) -> bool) -> Value {
    let mut events = EVENTS.subscribe();
    let find = |all: &Vec<Value>| all.iter().skip(since).find(|e| matches(e)).cloned();
    let found = tokio::time::timeout(WAIT, events.wait_for(|all| find(all).is_some())).await;
    match found {
        Ok(Ok(all)) => find(&all).unwrap(),
        _ => panic!("no {what} logged within {WAIT:?}"),
    }
}

/// The `event` logged about the client connection `c` (in its `conn` span, or naming it,
/// as a refusal at accept does). Only events logged since it connected count: another
/// connection may have had its address before.
pub async fn about(c: &Conn, event: &str) -> Value {
    let peer = c.local_addr().to_string();
    wait_for(&format!("{event} for {peer}"), c.logged_before, |e| {
        e["event"] == event && (e["span"]["peer"] == peer.as_str() || e["peer"] == peer.as_str())
    })
    .await
}

/// Why rpcpin closed the connection `c`, as its `connection_closed` event says.
pub async fn closed_because(c: &Conn) -> String {
    let e = about(c, "connection_closed").await;
    e["reason"].as_str().expect("a reason").to_string()
}

/// The `event`s already logged about the client connection `c` (as [`about`] finds them),
/// without waiting: to count them once the connection is done with.
pub fn logged_about(c: &Conn, event: &str) -> Vec<Value> {
    let peer = c.local_addr().to_string();
    EVENTS
        .borrow()
        .iter()
        .skip(c.logged_before)
        .filter(|e| {
            e["event"] == event
                && (e["span"]["peer"] == peer.as_str() || e["peer"] == peer.as_str())
        })
        .cloned()
        .collect()
}

/// The lines logged about the client connection `c` at rpcpin's default level (`info`) and
/// above, without waiting: what a default configuration writes for it.
pub fn lines_about(c: &Conn) -> Vec<Value> {
    let peer = c.local_addr().to_string();
    EVENTS
        .borrow()
        .iter()
        .skip(c.logged_before)
        .filter(|e| e["level"] != "DEBUG" && e["level"] != "TRACE")
        .filter(|e| e["span"]["peer"] == peer.as_str() || e["peer"] == peer.as_str())
        .cloned()
        .collect()
}
