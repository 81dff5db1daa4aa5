//! IPv6: a backend named by a bracketed IPv6 literal is reached; an IPv6 client's towers
//! carry the pin's port and 0.0.0.0 (a tower has no IPv6 floor), or `epm.advertise`; a
//! dual-stack `[::]` listener serves IPv4 clients as IPv4 ones; logs print `[addr]:port`.

mod common;

use std::net::{Ipv4Addr, SocketAddr};

use common::*;
use rpcpin::wire::epm::walk_map_response;
use rpcpin::wire::ndr::Syntax;
use rpcpin::wire::tower::Tower;
use rpcpin::wire::Endian;
use tokio::io::AsyncWriteExt;

/// rpcpin in answer mode on `listen` (epm and one NSPI pin), in front of an endpoint
/// mapper and an NSPI service on [::1], named `host` in `backend.host`.
async fn on_ipv6_backend(host: &str, listen: &str) -> (Running, Replay, Replay) {
    let service = nspi_service_on("[::1]:0").await;
    let port = service.addr.port();
    let epm = epm_on_pointing_at("[::1]:0", move |_| port).await;
    let config = TestConfig::new(epm.addr)
        .set("backend.host", host)
        .set("epm.mode", "answer")
        .set("epm.listen", format!("{listen}:0"))
        .pin_at(
            "directory",
            format!("{listen}:0").parse().unwrap(),
            ["nspi"],
        );
    (Running::start(&config).await, epm, service)
}

/// Outlook's ept_map for NSPI at `epm`: the answer's tower, as (port, IPv4 address), and
/// the connection it was asked on, closed by the client.
async fn ept_map(epm: SocketAddr) -> ((u16, Ipv4Addr), Conn) {
    let mut c = Conn::connect(epm).await;
    send(&mut c, NSPI_EPM_CLIENT).await;
    read_pdu(&mut c).await.expect("a bind_ack");
    let answer = read_pdu(&mut c).await.expect("an ept_map answer");
    c.shutdown().await.unwrap();
    let stub = &answer[24..];
    let walk = walk_map_response(stub, Endian::Little, Syntax::Ndr).unwrap();
    let t = Tower::new_checked(&stub[walk.towers[0].clone()]).unwrap();
    ((t.tcp_port().unwrap(), t.ipv4().unwrap()), c)
}

#[tokio::test]
async fn a_backend_named_by_a_bracketed_ipv6_literal_is_reached() {
    let (rpcpin, epm, service) = on_ipv6_backend("[::1]", "[::1]").await;
    let pin = rpcpin.pins[0];
    assert!(pin.is_ipv6());

    // An IPv6 client: the pin's port, and 0.0.0.0 where a tower's IPv4 address goes.
    let (tower, c) = ept_map(rpcpin.epm).await;
    assert_eq!(tower, (pin.port(), Ipv4Addr::UNSPECIFIED));
    assert_eq!(epm.connections(), 1, "rpcpin's lookup at [::1]");
    let closed = logs::about(&c, "connection_closed").await;
    let peer = c.local_addr().to_string();
    assert!(peer.starts_with("[::1]:"), "{peer}");
    assert_eq!(closed["span"]["listener"], rpcpin.epm.to_string());
    assert!(closed["span"]["listener"]
        .as_str()
        .unwrap()
        .starts_with("[::1]:"));

    // Through the pin to the NSPI service on [::1].
    let mut s = Conn::connect(pin).await;
    s.write_all(pdus(NSPI_NTLM_CLIENT)[0]).await.unwrap();
    let ack = read_pdu(&mut s).await.expect("an answer");
    assert_eq!(ack[2], 12, "a bind_ack");
    let resolved = logs::about(&s, "backend_resolved").await;
    assert_eq!(resolved["backend_port"], service.addr.port());
    assert_eq!(service.connections(), 1);
    rpcpin.stop().await;
}

#[tokio::test]
async fn an_ipv6_client_gets_epm_advertise_when_it_is_set() {
    let service = nspi_service_on("[::1]:0").await;
    let port = service.addr.port();
    let epm = epm_on_pointing_at("[::1]:0", move |_| port).await;
    let config = TestConfig::new(epm.addr)
        .set("backend.host", "::1")
        .set("epm.mode", "answer")
        .set("epm.listen", "[::1]:0")
        .set("epm.advertise", "203.0.113.10")
        .pin_at("directory", "[::1]:0".parse().unwrap(), ["nspi"]);
    let rpcpin = Running::start(&config).await;
    let (tower, _) = ept_map(rpcpin.epm).await;
    assert_eq!(
        tower,
        (rpcpin.pins[0].port(), Ipv4Addr::new(203, 0, 113, 10))
    );
    rpcpin.stop().await;
}

#[tokio::test]
async fn a_dual_stack_listener_serves_ipv4_clients_as_ipv4() {
    let (rpcpin, _epm, _service) = on_ipv6_backend("::1", "[::]").await;
    let port = rpcpin.epm.port();

    // An IPv4 client: the address it reached, in IPv4, and logged as itself (not as
    // ::ffff:127.0.0.1).
    let (tower, c) = ept_map(SocketAddr::from(([127, 0, 0, 1], port))).await;
    assert_eq!(tower, (rpcpin.pins[0].port(), Ipv4Addr::LOCALHOST));
    let closed = logs::about(&c, "connection_closed").await;
    assert_eq!(closed["span"]["peer"], c.local_addr().to_string());
    assert!(c.local_addr().is_ipv4());

    // An IPv6 client of the same listener.
    let (tower, _) = ept_map(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))).await;
    assert_eq!(tower, (rpcpin.pins[0].port(), Ipv4Addr::UNSPECIFIED));
    rpcpin.stop().await;
}
