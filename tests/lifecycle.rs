//! The admin endpoints, configuration reload and graceful drain, in-process.

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::AsyncWriteExt;

/// `config` with an admin listener.
fn with_admin(config: TestConfig) -> TestConfig {
    config
        .section("admin")
        .set("admin.listen", "127.0.0.1:0")
        .set("admin.ready_window", "1s")
}

/// An NSPI session through the pin: bind, auth3 and a call, answered with Exchange's bytes.
async fn nspi_session(pin: SocketAddr) -> Vec<u8> {
    let mut s = Conn::connect(pin).await;
    send(&mut s, NSPI_NTLM_CLIENT).await;
    read_pdu(&mut s).await.expect("a bind_ack");
    read_pdu(&mut s).await.expect("a response")
}

#[tokio::test]
async fn metrics_health_and_readiness() {
    let service = nspi_service().await;
    let port = service.addr.port();
    let epm = epm_pointing_at(move |_| port).await;
    let config = TestConfig::new(epm.addr).pin("lifecycle-metrics", ["nspi"]);
    let rpcpin = Running::start(&with_admin(config)).await;

    assert_eq!(get(&rpcpin, "/healthz").await, (200, "ok\n".into()));
    // Nothing asked the backend yet: /readyz asks it itself.
    assert_eq!(get(&rpcpin, "/readyz").await, (200, "ready\n".into()));
    assert_eq!(
        epm.connections(),
        1,
        "one probe of the backend's endpoint mapper"
    );
    assert_eq!(get(&rpcpin, "/nope").await.0, 404);

    let response = nspi_session(rpcpin.pins[0]).await;
    assert_eq!(response, pdus(NSPI_NTLM_SERVER)[1]);
    // A bind refused on the pin.
    let mut bind = pdus(NSPI_NTLM_CLIENT)[0].to_vec();
    replace(&mut bind, &NSPI_LE, &WINREG_LE);
    let mut s = Conn::connect(rpcpin.pins[0]).await;
    s.write_all(&bind).await.unwrap();
    read_to_end(&mut s).await;

    let (status, metrics) = get(&rpcpin, "/metrics").await;
    assert_eq!(status, 200);
    let pin = "listener=\"lifecycle-metrics\"";
    let from_client = NSPI_NTLM_CLIENT.len();
    for line in [
        format!("rpcpin_connections_total{{{pin}}} 2"),
        format!(
            "rpcpin_bytes_total{{{pin},direction=\"from_client\"}} {}",
            from_client + bind.len()
        ),
        "rpcpin_binds_total{alias=\"winreg\",result=\"refused\"}".to_string(),
        "rpcpin_binds_total{alias=\"nspi\",result=\"accepted\"}".to_string(),
        "rpcpin_backend_resolutions_total{result=\"ok\",cached=\"false\",backend=\"default\"}"
            .to_string(),
        "rpcpin_refusals_total{policy=\"interface\",reason=\"interface not carried by this pin\"}"
            .to_string(),
        "rpcpin_backend_resolution_seconds_count{backend=\"default\"}".to_string(),
    ] {
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
    rpcpin.stop().await;
}

#[tokio::test]
async fn readiness_fails_when_the_backend_is_down() {
    let config = TestConfig::new(closed_addr().await).pin("lifecycle-down", ["nspi"]);
    let rpcpin = Running::start(&with_admin(config)).await;
    let (status, body) = get(&rpcpin, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.starts_with("not ready"), "{body}");
    assert_eq!(get(&rpcpin, "/healthz").await.0, 200);
    rpcpin.stop().await;
}

/// rpcpin with an NSPI pin (and an admin listener) whose drain lasts `drain_timeout`, and
/// a session through it, mid-conversation: its bind answered, its call not yet sent.
async fn draining_setup(name: &str, drain_timeout: &str) -> (Running, Conn, Replay, Replay) {
    let service = nspi_service().await;
    let port = service.addr.port();
    let epm = epm_pointing_at(move |_| port).await;
    let config = TestConfig::new(epm.addr)
        .pin(name, ["nspi"])
        .section("limits")
        .set("limits.drain_timeout", drain_timeout);
    let rpcpin = Running::start(&with_admin(config)).await;
    let mut s = Conn::connect(rpcpin.pins[0]).await;
    s.write_all(pdus(NSPI_NTLM_CLIENT)[0]).await.unwrap();
    read_pdu(&mut s).await.expect("a bind_ack");
    (rpcpin, s, service, epm)
}

#[tokio::test]
async fn shutdown_drains_established_connections_then_closes_the_rest() {
    // A drain longer than the test: what ends it is a second signal.
    let (rpcpin, mut s, _service, _epm) = draining_setup("drain", "1h").await;
    let client = pdus(NSPI_NTLM_CLIENT);

    rpcpin.shutdown().await;
    let draining = rpcpin.logged("draining").await;
    assert_eq!(draining["connections"], 1, "{draining}");
    // No new clients, and load balancers are told so.
    assert_not_served(rpcpin.pins[0], client[0], "a new client while draining").await;
    assert_eq!(get(&rpcpin, "/readyz").await, (503, "draining\n".into()));
    // The established session goes on.
    s.write_all(&NSPI_NTLM_CLIENT[client[0].len()..])
        .await
        .unwrap();
    assert_eq!(
        read_pdu(&mut s).await.expect("a response"),
        pdus(NSPI_NTLM_SERVER)[1]
    );
    assert!(!rpcpin.finished());
    // A second signal closes what is left, and rpcpin exits.
    rpcpin.shutdown().await;
    assert!(read_to_end(&mut s).await.is_empty());
    assert_eq!(logs::closed_because(&s).await, "rpcpin shutting down");
    rpcpin.exits("after a second signal").await;
}

#[tokio::test]
async fn the_drain_timeout_closes_what_is_left() {
    let (rpcpin, mut s, _service, _epm) = draining_setup("drain-timeout", "300ms").await;
    rpcpin.shutdown().await;
    let draining = rpcpin.logged("draining").await;
    assert_eq!(draining["drain_timeout_s"], 0.3, "{draining}");
    // Nothing else ends the drain: no second signal, and the session stays open.
    assert!(read_to_end(&mut s).await.is_empty());
    assert_eq!(logs::closed_because(&s).await, "rpcpin shutting down");
    rpcpin.exits("after the drain timeout").await;
}

#[tokio::test]
async fn shutdown_ends_as_soon_as_the_last_connection_closes() {
    // A drain longer than the test: what ends it is the last connection closing.
    let (rpcpin, mut s, _service, _epm) = draining_setup("drain-fast", "1h").await;
    rpcpin.shutdown().await;
    rpcpin.logged("draining").await;
    // The session is still served while rpcpin drains...
    s.write_all(&NSPI_NTLM_CLIENT[pdus(NSPI_NTLM_CLIENT)[0].len()..])
        .await
        .unwrap();
    assert_eq!(
        read_pdu(&mut s).await.expect("a response"),
        pdus(NSPI_NTLM_SERVER)[1]
    );
    assert!(!rpcpin.finished(), "a connection is still open");
    // ...and once it closes, rpcpin exits.
    drop(s);
    rpcpin.exits("once drained").await;
}

#[tokio::test]
async fn reload_adds_changes_and_removes_pins_without_dropping_connections() {
    let service = nspi_service().await;
    let port = service.addr.port();
    let epm = epm_pointing_at(move |_| port).await;
    // Fixed ports, so that a reload can keep or drop a listener by its address.
    let (a, b) = (closed_port().await, closed_port().await);
    let (a, b) = (
        SocketAddr::from(([127, 0, 0, 1], a)),
        SocketAddr::from(([127, 0, 0, 1], b)),
    );
    let base = TestConfig::new(epm.addr);
    let first = base.clone().pin_at("one", a, ["nspi"]);
    let rpcpin = Running::start(&first).await;
    let pin_a = rpcpin.pins[0];

    // A session established before the reload.
    let mut before = Conn::connect(pin_a).await;
    let client = pdus(NSPI_NTLM_CLIENT);
    before.write_all(client[0]).await.unwrap();
    read_pdu(&mut before).await.expect("a bind_ack");

    // The pin on `a` now carries another interface only, and a new pin on `b` carries NSPI.
    let second = base
        .clone()
        .pin_at("one", a, ["emsmdb"])
        .pin_at("two", b, ["nspi"]);
    rpcpin.reload(&second).await.expect("reloaded");
    let pin_b = b;
    assert_eq!(nspi_session(pin_b).await, pdus(NSPI_NTLM_SERVER)[1]);
    // `a` now refuses NSPI binds...
    let mut s = Conn::connect(pin_a).await;
    s.write_all(client[0]).await.unwrap();
    let refusal = read_to_end(&mut s).await;
    assert_eq!(refusal[2], 12, "a bind_ack");
    assert!(
        refusal.len() < 80 && service.connections() == 2,
        "rejected without the backend"
    );
    // ...but the session bound before the reload goes on.
    before
        .write_all(&NSPI_NTLM_CLIENT[client[0].len()..])
        .await
        .unwrap();
    assert_eq!(
        read_pdu(&mut before).await.expect("a response"),
        pdus(NSPI_NTLM_SERVER)[1]
    );

    // An invalid configuration (the new pin's port taken by the EPM) changes nothing.
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let third = base.pin_at("three", taken.local_addr().unwrap(), ["nspi"]);
    let e = rpcpin.reload(&third).await.expect_err("the port is in use");
    assert!(format!("{e:#}").contains("pin[0].listen"), "{e:#}");
    assert_eq!(nspi_session(pin_b).await, pdus(NSPI_NTLM_SERVER)[1]);

    // Dropping pin "two" closes its listener.
    rpcpin.reload(&first).await.expect("reloaded");
    assert_not_served(pin_b, client[0], "pin two, dropped").await;
    assert_eq!(nspi_session(pin_a).await, pdus(NSPI_NTLM_SERVER)[1]);
    rpcpin.stop().await;
}
