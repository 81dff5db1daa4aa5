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

#[tokio::test(flavor = "current_thread")]
async fn every_refusal_is_an_audit_event() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

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

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let refused: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["event"] == "refused").collect();
    assert_eq!(refused.len(), 3, "{text}");
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
}
