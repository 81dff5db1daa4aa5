//! Every refusal is a structured audit event. In a test binary of its own: a thread-local
//! log subscriber shares tracing's callsite cache with every test of the same process.

mod common;

use common::*;
use tokio::io::AsyncWriteExt;

/// Outlook's ept_map request turned into ept_insert.
fn ept_insert(call_id: u32) -> Vec<u8> {
    let mut r = pdus(NSPI_EPM_CLIENT)[1].to_vec();
    r[12..16].copy_from_slice(&call_id.to_le_bytes());
    r[22..24].copy_from_slice(&0u16.to_le_bytes());
    r
}

/// Collects what the JSON logger writes.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Captures this thread's log events as JSON until the guard is dropped.
    fn start() -> (Captured, tracing::subscriber::DefaultGuard) {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(move || writer.clone())
            .finish();
        (captured, tracing::subscriber::set_default(subscriber))
    }

    /// The events captured so far, and their text.
    fn events(&self) -> (Vec<serde_json::Value>, String) {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        let events = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (events, text)
    }
}

#[tokio::test(flavor = "current_thread")]
async fn every_refusal_is_an_audit_event() {
    let (captured, _guard) = Captured::start();

    let backend =
        Replay::start(|_| pdus(NSPI_EPM_SERVER).iter().map(|p| p.to_vec()).collect()).await;
    let rpcpin = Running::start(&TestConfig::new(backend.addr).pin("p", ["nspi"])).await;
    let mut bind = pdus(NSPI_NTLM_CLIENT)[0].to_vec();
    replace(&mut bind, &NSPI_LE, &WINREG_LE);
    let mut s = Conn::connect(rpcpin.pins[0]).await;
    s.write_all(&bind).await.unwrap();
    read_to_end(&mut s).await;
    let mut s = Conn::connect(rpcpin.epm).await;
    send(&mut s, &[pdus(NSPI_EPM_CLIENT)[0], &ept_insert(2)].concat()).await;
    read_pdu(&mut s).await.unwrap();
    read_pdu(&mut s).await.unwrap();
    // ept_map on context 7, which the client never proposed.
    let mut unknown = pdus(NSPI_EPM_CLIENT)[1].to_vec();
    unknown[12] = 3;
    unknown[20] = 7;
    s.write_all(&unknown).await.unwrap();
    read_pdu(&mut s).await.unwrap();
    rpcpin.stop().await;

    // Exchange's answer names EMSMDB, which no pin carries: its entry is hidden.
    let backend =
        Replay::start(|_| pdus(EMSMDB_EPM_SERVER).iter().map(|p| p.to_vec()).collect()).await;
    let rpcpin = Running::start(&TestConfig::new(backend.addr).pin("p", ["nspi"])).await;
    let mut s = Conn::connect(rpcpin.epm).await;
    send(&mut s, EMSMDB_EPM_CLIENT).await;
    read_pdu(&mut s).await.unwrap();
    read_pdu(&mut s).await.unwrap();
    rpcpin.stop().await;

    let (events, text) = captured.events();
    let refused: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["event"] == "refused").collect();
    assert_eq!(refused.len(), 4, "{text}");
    let bind = refused[0];
    assert_eq!(
        (bind["level"].as_str(), bind["policy"].as_str()),
        (Some("WARN"), Some("interface"))
    );
    assert_eq!(bind["alias"], "winreg");
    assert_eq!(bind["interface"], "338cd001-2244-31f1-aaaa-900038001003");
    assert!(bind["span"]["peer"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(bind["span"]["pin"], "p");
    let op = refused[1];
    assert_eq!(
        (
            op["policy"].as_str(),
            op["opnum"].as_u64(),
            op["alias"].as_str()
        ),
        (Some("opnum"), Some(0), Some("epm"))
    );
    assert_eq!(op["span"]["pin"], "epm");
    let ctx = refused[2];
    assert_eq!(
        (
            ctx["level"].as_str(),
            ctx["policy"].as_str(),
            ctx["context_id"].as_u64(),
            ctx["call_id"].as_u64(),
            ctx["opnum"].as_u64(),
        ),
        (Some("WARN"), Some("context"), Some(7), Some(3), Some(3))
    );
    assert_eq!(
        ctx["reason"],
        "no context with this id accepted by the backend"
    );
    assert_eq!(ctx["span"]["pin"], "epm");
    let hidden = refused[3];
    assert_eq!(
        (
            hidden["policy"].as_str(),
            hidden["interface"].as_str(),
            hidden["alias"].as_str(),
            hidden["version"].as_str(),
            hidden["entries"].as_u64(),
        ),
        (
            Some("hide_unpinned"),
            Some("a4f1db00-ca47-1067-b31f-00dd010662da"),
            Some("emsmdb"),
            Some("0.81"),
            Some(1)
        ),
        "{hidden}"
    );
    assert_eq!(hidden["span"]["pin"], "epm");
}

/// Exchange's ept_lookup answer holds NSPI's ncacn_http tower: hidden by default, named in a
/// `refused` event with its protocol and counted; left alone with `other_towers = "keep"`.
#[tokio::test(flavor = "current_thread")]
async fn hidden_towers_of_a_pinned_interface_are_audit_events() {
    let (captured, _guard) = Captured::start();
    for keep in [false, true] {
        let server = include_bytes!("data/mapi-epm-lookup.server.bin");
        let backend = Replay::start(|_| pdus(server).iter().map(|p| p.to_vec()).collect()).await;
        let mut config = TestConfig::new(backend.addr).pin("p", ["nspi", "emsmdb"]);
        if keep {
            config = config.set("epm.other_towers", "keep");
        }
        let rpcpin = Running::start(&config).await;
        let mut s = Conn::connect(rpcpin.epm).await;
        send(&mut s, include_bytes!("data/mapi-epm-lookup.client.bin")).await;
        read_pdu(&mut s).await.unwrap();
        let answer = read_pdu(&mut s).await.unwrap();
        // 192.168.0.2, the server's inside address, is only in the ncacn_http tower.
        let inside = answer.windows(4).any(|w| w == [192, 168, 0, 2]);
        assert_eq!(inside, keep, "keep={keep}");
        rpcpin.stop().await;
    }
    let (events, text) = captured.events();
    let hidden: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "refused" && e["policy"] == "other_towers")
        .collect();
    assert_eq!(hidden.len(), 1, "{text}");
    let e = hidden[0];
    assert_eq!(
        (
            e["level"].as_str(),
            e["alias"].as_str(),
            e["version"].as_str(),
            e["protocol"].as_str(),
            e["entries"].as_u64(),
            e["opnum"].as_u64(),
        ),
        (
            Some("WARN"),
            Some("nspi"),
            Some("56.0"),
            Some("ncacn_http"),
            Some(1),
            Some(2)
        ),
        "{e}"
    );
    assert_eq!(e["interface"], "f5cc5a18-4264-101a-8c59-08002b2f8426");
    assert_eq!(e["span"]["pin"], "epm");
    assert_eq!(refusals_counted("other_towers"), 1);
}

/// `rpcpin_refusals_total` for `policy`, as /metrics shows it (this process's only refusals
/// of that policy are this test's).
fn refusals_counted(policy: &str) -> u64 {
    let start = format!("rpcpin_refusals_total{{policy=\"{policy}\",");
    rpcpin::metrics::metrics()
        .encode()
        .lines()
        .find(|l| l.starts_with(&start))
        .map_or(0, |l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

/// A connection refused at accept writes nothing but a `refused` event, at most once a
/// minute per address (the minute itself: `proxy::limits` unit tests); the metric counts
/// every refusal.
#[tokio::test(flavor = "current_thread")]
async fn refusals_at_accept_are_counted_each_and_logged_once_per_address() {
    let (captured, _guard) = Captured::start();
    let backend =
        Replay::start(|_| pdus(NSPI_EPM_SERVER).iter().map(|p| p.to_vec()).collect()).await;
    for (limit, policy) in [
        ("limits.max_connections_per_ip", "max_connections_per_ip"),
        ("limits.max_connections", "max_connections"),
    ] {
        let config = TestConfig::new(backend.addr)
            .pin("p", ["nspi"])
            .section("limits")
            .set(limit, 1);
        let rpcpin = Running::start(&config).await;
        let counted = refusals_counted(policy);
        let logged = captured.events().0.len();
        // One connection within the limit, answered; then three over it, each closed.
        let mut held = Conn::connect(rpcpin.epm).await;
        held.write_all(pdus(NSPI_EPM_CLIENT)[0]).await.unwrap();
        assert_eq!(read_pdu(&mut held).await.expect("a bind_ack")[2], 12);
        let mut refused = Vec::new();
        for _ in 0..3 {
            let mut over = Conn::connect(rpcpin.epm).await;
            assert!(read_to_end(&mut over).await.is_empty(), "{policy}: closed");
            refused.push(over.local_addr().to_string());
        }
        assert_eq!(
            refusals_counted(policy),
            counted + 3,
            "{policy}: each counted"
        );
        drop(held);
        rpcpin.stop().await;

        let (events, text) = captured.events();
        let events = &events[logged..];
        let lines: Vec<_> = events.iter().filter(|e| e["event"] == "refused").collect();
        assert_eq!(lines.len(), 1, "{policy}: one line for the address\n{text}");
        let line = lines[0];
        assert_eq!(
            (line["policy"].as_str(), line["refused_since_last"].as_u64()),
            (Some(policy), Some(0)),
            "{line}"
        );
        // Nothing else names a refused connection: no span, no connection_closed.
        let about_refused = |e: &&serde_json::Value| {
            refused
                .iter()
                .any(|p| e["span"]["peer"] == p.as_str() || e["peer"] == p.as_str())
        };
        let other: Vec<_> = events
            .iter()
            .filter(about_refused)
            .filter(|e| e["event"] != "refused")
            .collect();
        assert!(other.is_empty(), "{policy}: {other:?}");
        assert!(events.iter().any(|e| e["event"] == "connection_closed"));
    }
}
