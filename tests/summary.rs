//! A connection's cost in the log at the default level (`info`): one line, its
//! `connection_closed` summary, carrying what the per-event detail (at `debug`) says.

mod common;

use common::*;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// The one line logged at `info` and above about `c`, once it is closed: its summary.
async fn only_line(c: &Conn) -> Value {
    let summary = logs::about(c, "connection_closed").await;
    let lines = logs::lines_about(c);
    let events: Vec<&Value> = lines.iter().map(|e| &e["event"]).collect();
    assert_eq!(lines.len(), 1, "one line at info, not {events:?}");
    assert_eq!(summary["level"], "INFO", "{summary}");
    for key in [
        "bytes_from_client",
        "bytes_to_client",
        "duration_ms",
        "reason",
    ] {
        assert!(!summary[key].is_null(), "{key} missing from {summary}");
    }
    let peer = c.local_addr().to_string();
    assert_eq!(summary["span"]["peer"], peer.as_str(), "{summary}");
    assert!(summary["span"]["listener"].is_string(), "{summary}");
    summary
}

#[tokio::test]
async fn a_pin_connection_logs_one_summary_line() {
    let service = nspi_service().await;
    let port = service.addr.port();
    let epm = epm_pointing_at(move |_| port).await;
    let rpcpin = Running::start(&TestConfig::new(epm.addr).pin("directory", ["nspi"])).await;
    let mut s = Conn::connect(rpcpin.pins[0]).await;
    send(&mut s, NSPI_NTLM_CLIENT).await;
    read_pdu(&mut s).await.expect("a bind_ack");
    read_pdu(&mut s).await.expect("a response");
    s.shutdown().await.unwrap();
    read_to_end(&mut s).await;
    let summary = only_line(&s).await;
    assert_eq!(summary["span"]["pin"], "directory", "{summary}");
    assert_eq!(summary["alias"], "nspi", "{summary}");
    assert_eq!(
        summary["interface"], "f5cc5a18-4264-101a-8c59-08002b2f8426",
        "{summary}"
    );
    assert_eq!(summary["backend_port"], port, "{summary}");
    assert_eq!(summary["towers_rewritten"], 0, "{summary}");
    assert_eq!(
        summary["bytes_from_client"],
        NSPI_NTLM_CLIENT.len(),
        "{summary}"
    );
    assert_eq!(
        summary["bytes_to_client"],
        NSPI_NTLM_SERVER.len(),
        "{summary}"
    );
    // The detail is still there, a level down.
    for event in ["backend_resolved", "bind_accepted"] {
        let detail = logs::about(&s, event).await;
        assert_eq!(detail["level"], "DEBUG", "{detail}");
    }
    rpcpin.stop().await;
}

#[tokio::test]
async fn an_endpoint_mapper_relay_logs_one_summary_line() {
    let backend =
        Replay::start(|_| pdus(NSPI_EPM_SERVER).iter().map(|p| p.to_vec()).collect()).await;
    let rpcpin = Running::start(&TestConfig::new(backend.addr).pin("directory", ["nspi"])).await;
    let mut s = Conn::connect(rpcpin.epm).await;
    send(&mut s, NSPI_EPM_CLIENT).await;
    read_pdu(&mut s).await.expect("a bind_ack");
    read_pdu(&mut s).await.expect("an ept_map answer");
    s.shutdown().await.unwrap();
    read_to_end(&mut s).await;
    let summary = only_line(&s).await;
    assert_eq!(summary["span"]["pin"], "epm", "{summary}");
    assert_eq!(summary["towers_rewritten"], 1, "{summary}");
    assert_eq!(summary["backend_port"], backend.addr.port(), "{summary}");
    assert!(summary["interface"].is_null(), "{summary}");
    assert!(summary["from_cache"].is_null(), "{summary}");
    let detail = logs::about(&s, "tower_rewritten").await;
    assert_eq!(detail["level"], "DEBUG", "{detail}");
    rpcpin.stop().await;
}

#[tokio::test]
async fn an_answered_endpoint_mapper_association_logs_one_summary_line() {
    let backend =
        Replay::start(|_| pdus(NSPI_EPM_SERVER).iter().map(|p| p.to_vec()).collect()).await;
    let config = TestConfig::new(backend.addr)
        .set("epm.mode", "answer")
        .pin("directory", ["nspi"]);
    let rpcpin = Running::start(&config).await;
    let mut s = Conn::connect(rpcpin.epm).await;
    send(&mut s, NSPI_EPM_CLIENT).await;
    read_pdu(&mut s).await.expect("a bind_ack");
    read_pdu(&mut s).await.expect("an ept_map answer");
    s.shutdown().await.unwrap();
    read_to_end(&mut s).await;
    let summary = only_line(&s).await;
    assert_eq!(summary["span"]["pin"], "epm", "{summary}");
    assert_eq!(
        (
            summary["from_cache"].as_u64(),
            summary["from_server"].as_u64()
        ),
        (Some(0), Some(1)),
        "{summary}"
    );
    assert_eq!(summary["reason"], "client closed", "{summary}");
    let detail = logs::about(&s, "epm_answered").await;
    assert_eq!(detail["level"], "DEBUG", "{detail}");
    rpcpin.stop().await;
}
