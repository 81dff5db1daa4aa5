//! Several servers: a pin with `pin.backend` resolves and connects at its own server's
//! endpoint mapper, never at `[backend]`'s; the relay on 135 refreshes the cache of the
//! pin's own server; `/readyz` judges every server.

mod common;

use common::*;
use tokio::io::AsyncWriteExt;
use toml::Table;

/// `config` with `[backends.b]` at `epm`'s address, in `mode`.
fn with_b(config: TestConfig, epm: std::net::SocketAddr, mode: &str) -> TestConfig {
    let mut b = Table::new();
    b.insert("host".into(), epm.ip().to_string().into());
    b.insert("epm_port".into(), i64::from(epm.port()).into());
    config
        .set("epm.mode", mode)
        .section("backends")
        .set("backends.b", b)
}

/// A bind through `pin`, answered: the connection it was made on.
async fn bound(pin: std::net::SocketAddr) -> Conn {
    let mut s = Conn::connect(pin).await;
    s.write_all(pdus(NSPI_NTLM_CLIENT)[0]).await.unwrap();
    assert_eq!(
        read_pdu(&mut s).await.expect("an answer")[2],
        12,
        "a bind_ack"
    );
    s
}

#[tokio::test]
async fn a_pin_resolves_and_connects_at_its_own_server() {
    let service = nspi_service().await;
    let port = service.addr.port();
    let default = epm_pointing_at(|_| 1).await;
    let b = epm_pointing_at(move |_| port).await;
    let config = with_b(TestConfig::new(default.addr), b.addr, "answer")
        .pin("directory", ["nspi"])
        .set("pin[0].backend", "b");
    let rpcpin = Running::start(&config).await;

    let s = bound(rpcpin.pins[0]).await;
    let resolved = logs::about(&s, "backend_resolved").await;
    assert_eq!(resolved["backend"], "b");
    assert_eq!(resolved["backend_port"], port);
    assert_eq!(
        (
            b.connections(),
            default.connections(),
            service.connections()
        ),
        (1, 0, 1),
        "b's endpoint mapper asked, [backend]'s never"
    );
    rpcpin.stop().await;
}

#[tokio::test]
async fn the_relay_refreshes_the_cache_of_the_pins_own_server() {
    let service = nspi_service().await;
    let port = service.addr.port();
    let epm = epm_pointing_at(move |_| port).await;
    // Relay mode: b is [backend]'s server under another name, with a cache of its own.
    let config = with_b(TestConfig::new(epm.addr), epm.addr, "relay")
        .pin("directory", ["nspi"])
        .set("pin[0].backend", "b");
    let rpcpin = Running::start(&config).await;

    let mut c = Conn::connect(rpcpin.epm).await;
    send(&mut c, NSPI_EPM_CLIENT).await;
    for _ in 0..2 {
        read_pdu(&mut c).await.expect("an answer");
    }
    assert_eq!(epm.connections(), 1);

    let s = bound(rpcpin.pins[0]).await;
    let resolved = logs::about(&s, "backend_resolved").await;
    assert_eq!(resolved["backend"], "b");
    assert_eq!(
        resolved["cached"], true,
        "b's cache learned the relayed port"
    );
    assert_eq!(epm.connections(), 1, "no resolution of its own");
    rpcpin.stop().await;
}

#[tokio::test]
async fn in_answer_mode_135_asks_the_pins_own_server_and_teaches_the_pin_its_port() {
    let service = nspi_service().await;
    let port = service.addr.port();
    let default = epm_pointing_at(|_| 1).await;
    let b = epm_pointing_at(move |_| port).await;
    let config = with_b(TestConfig::new(default.addr), b.addr, "answer")
        .pin("directory", ["nspi"])
        .set("pin[0].backend", "b");
    let rpcpin = Running::start(&config).await;

    // rpcpin answers 135 itself, from its lookup at b, NSPI's server; [backend] (whose
    // endpoint mapper would say port 1) is not asked.
    let mut c = Conn::connect(rpcpin.epm).await;
    send(&mut c, NSPI_EPM_CLIENT).await;
    for _ in 0..2 {
        read_pdu(&mut c).await.expect("an answer");
    }
    assert_eq!((default.connections(), b.connections()), (0, 1));

    // The pin connects to the port that lookup found, from the cache.
    let s = bound(rpcpin.pins[0]).await;
    let resolved = logs::about(&s, "backend_resolved").await;
    assert_eq!(resolved["backend"], "b");
    assert_eq!(resolved["cached"], true);
    assert_eq!(resolved["backend_port"], port);
    assert_eq!((b.connections(), service.connections()), (1, 1));
    rpcpin.stop().await;
}

#[tokio::test]
async fn readiness_names_each_server() {
    let default = epm_pointing_at(|_| 1).await;
    let down = closed_addr().await;
    let config = with_b(TestConfig::new(default.addr), down, "answer")
        .pin("directory", ["nspi"])
        .set("pin[0].backend", "b")
        .section("admin")
        .set("admin.listen", "127.0.0.1:0");
    let rpcpin = Running::start(&config).await;

    let (status, body) = get(&rpcpin, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 3, "{body}");
    assert_eq!(lines[0], "not ready");
    assert_eq!(
        lines[1],
        format!("backend default ({}): ready", default.addr)
    );
    let b = format!("backend b ({down}): not ready: its endpoint mapper did not answer (");
    assert!(lines[2].starts_with(&b), "{body}");
    rpcpin.stop().await;
}
