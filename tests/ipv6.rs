//! IPv6: a backend named by a bracketed IPv6 literal is reached; an IPv6 client's towers
//! carry the pin's port and 0.0.0.0 (a tower has no IPv6 floor), or `epm.advertise`; a
//! dual-stack `[::]` listener serves IPv4 clients as IPv4 ones; logs and `/readyz` print
//! `[addr]:port`; the per-address limit counts an IPv6 client per /64.

mod common;

use std::net::{Ipv4Addr, SocketAddr};

use common::proxy_header::proxy_v2;
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

#[tokio::test]
async fn behind_a_proxy_an_ipv6_client_counts_per_64_and_a_mapped_one_as_ipv4() {
    let backend = epm_pointing_at(|_| 1).await;
    let config = TestConfig::new(backend.addr)
        .pin("directory", ["nspi"])
        .set("epm.proxy_protocol", true)
        .section("limits")
        .set("limits.max_connections_per_ip", 1);
    let rpcpin = Running::start(&config).await;
    let since = logs::count();
    // A connection from `src` (PROXY v2 to a balancer's address of the same family): its
    // bind answered, or nothing, as the per-address limit says.
    let from = |src: &str| {
        let src: SocketAddr = src.parse().unwrap();
        let vip: SocketAddr = if src.is_ipv6() {
            "[2001:db8::135]:135".parse().unwrap()
        } else {
            "203.0.113.7:135".parse().unwrap()
        };
        async move {
            let mut c = Conn::connect(rpcpin.epm).await;
            c.write_all(&proxy_v2(src, vip)).await.unwrap();
            c.write_all(pdus(NSPI_EPM_CLIENT)[0]).await.unwrap();
            let answered = read_pdu(&mut c).await.is_some();
            (c, answered)
        }
    };
    let refused = |client: &'static str| {
        logs::wait_for("a refusal", since, move |e| {
            e["event"] == "refused" && e["client"] == client
        })
    };

    let (_a, answered) = from("[2001:db8:1:2::10]:40000").await;
    assert!(answered, "the first of its /64");
    let (_, answered) = from("[2001:db8:1:2:aaaa::20]:40001").await;
    assert!(!answered, "another address of the same /64");
    let e = refused("2001:db8:1:2::/64").await;
    assert_eq!(e["policy"], "max_connections_per_ip");
    let (_c, answered) = from("[2001:db8:1:3::10]:40002").await;
    assert!(answered, "the next /64");

    // An IPv4-mapped client is the IPv4 client it is: counted, and named, as such.
    let (mut d, answered) = from("[::ffff:198.51.100.22]:40003").await;
    assert!(answered);
    let (_, answered) = from("198.51.100.22:40004").await;
    assert!(!answered, "the same IPv4 client");
    refused("198.51.100.22").await;
    d.shutdown().await.unwrap();
    logs::wait_for("the mapped client's summary", since, |e| {
        e["event"] == "connection_closed" && e["span"]["client"] == "198.51.100.22:40003"
    })
    .await;
    rpcpin.stop().await;
}

#[tokio::test]
async fn readiness_names_an_ipv6_server_as_addr_and_port_in_brackets() {
    let default = epm_pointing_at(|_| 1).await;
    let b = epm_on_pointing_at("[::1]:0", |_| 1).await;
    let mut server = toml::Table::new();
    server.insert("host".into(), "::1".into());
    server.insert("epm_port".into(), i64::from(b.addr.port()).into());
    let config = TestConfig::new(default.addr)
        .set("epm.mode", "answer")
        .section("backends")
        .set("backends.b", server)
        .pin("directory", ["nspi"])
        .set("pin[0].backend", "b")
        .section("admin")
        .set("admin.listen", "[::1]:0");
    let rpcpin = Running::start(&config).await;
    let (status, body) = get(&rpcpin, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let want = format!("backend b ([::1]:{}): ready", b.addr.port());
    assert!(
        body.lines().any(|l| l == want),
        "{want:?} missing from:\n{body}"
    );
    rpcpin.stop().await;
}
