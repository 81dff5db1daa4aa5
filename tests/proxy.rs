//! End to end: rpcpin in-process on port 0 between a client and backends that replay the
//! real Outlook ↔ Exchange bytes of mapi.pcap.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Sends Outlook's captured EPM bytes through rpcpin and returns what came back.
async fn outlook_ept_map(epm: SocketAddr, client: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(epm).await.unwrap();
    s.write_all(client).await.unwrap();
    let mut out = Vec::new();
    for _ in 0..2 {
        out.extend(read_pdu(&mut s).await.expect("an answer"));
    }
    out
}

#[tokio::test]
async fn rewrites_exchanges_ept_map_answer_to_the_pinned_port_and_own_address() {
    let backend =
        Replay::start(|_| pdus(NSPI_EPM_SERVER).iter().map(|p| p.to_vec()).collect()).await;
    let rpcpin = Running::start(&config(
        backend.addr,
        &[("directory", "\"nspi\", \"rfr\"")],
        "",
    ))
    .await;
    let pin_port = rpcpin.pins[0].port();

    let got = outlook_ept_map(rpcpin.epm, NSPI_EPM_CLIENT).await;

    // Expected: Exchange's bytes with its port and address replaced, found by searching the
    // captured bytes rather than by rpcpin's own walker.
    let mut expected = NSPI_EPM_SERVER.to_vec();
    assert_eq!(
        replace(&mut expected, &EXCHANGE_NSPI_PORT, &pin_port.to_be_bytes()),
        1
    );
    assert_eq!(replace(&mut expected, &EXCHANGE_ADDR, &[127, 0, 0, 1]), 1);
    assert_eq!(got, expected);
    // The backend saw exactly what Outlook sent.
    assert_eq!(backend.received(), NSPI_EPM_CLIENT);
    rpcpin.stop().await;
}

#[tokio::test]
async fn rewrites_a_big_endian_answer_from_samba() {
    // rpcclient asked Samba (`rpc big endian = yes`) where samr lives: the header integers
    // and the NDR are big endian, the tower's lengths little endian, its port big endian.
    let server = include_bytes!("data/samba-be-map-samr.server.bin");
    let client = include_bytes!("data/samba-be-map-samr.client.bin");
    let backend = Replay::start(|_| {
        pdus_be(include_bytes!("data/samba-be-map-samr.server.bin"))
    })
    .await;
    let rpcpin = Running::start(&config(backend.addr, &[("lsad", "\"samr\"")], "")).await;
    let mut s = TcpStream::connect(rpcpin.epm).await.unwrap();
    s.write_all(client).await.unwrap();
    let mut got = vec![0u8; server.len()];
    tokio::io::AsyncReadExt::read_exact(&mut s, &mut got).await.unwrap();

    let mut expected = server.to_vec();
    let pin_port = rpcpin.pins[0].port();
    assert_eq!(replace(&mut expected, &49153u16.to_be_bytes(), &pin_port.to_be_bytes()), 1);
    assert_eq!(replace(&mut expected, &[127, 0, 0, 3], &[127, 0, 0, 1]), 1);
    assert_eq!(got, expected);
    rpcpin.stop().await;
}

/// Splits a big-endian stream into its PDUs.
fn pdus_be(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = stream;
    while rest.len() >= 16 {
        assert_eq!(rest[4] & 0x10, 0, "big endian");
        let len = u16::from_be_bytes([rest[8], rest[9]]) as usize;
        out.push(rest[..len].to_vec());
        rest = &rest[len..];
    }
    out
}

#[tokio::test]
async fn configured_advertise_address_goes_into_towers() {
    let backend =
        Replay::start(|_| pdus(EMSMDB_EPM_SERVER).iter().map(|p| p.to_vec()).collect()).await;
    let text = config(backend.addr, &[("store", "\"emsmdb\"")], "")
        .replace(
            "listen = \"127.0.0.1:0\"\n[[pin]]",
            "listen = \"127.0.0.1:0\"\nadvertise = \"203.0.113.10\"\n[[pin]]",
        )
        .replace(
            "interfaces = [\"emsmdb\"]",
            "interfaces = [\"emsmdb\"]\nadvertise_port = 34567",
        );
    let rpcpin = Running::start(&text).await;

    let got = outlook_ept_map(rpcpin.epm, EMSMDB_EPM_CLIENT).await;

    let mut expected = EMSMDB_EPM_SERVER.to_vec();
    assert_eq!(
        replace(
            &mut expected,
            &1032u16.to_be_bytes(),
            &34567u16.to_be_bytes()
        ),
        1
    );
    assert_eq!(
        replace(&mut expected, &EXCHANGE_ADDR, &[203, 0, 113, 10]),
        1
    );
    assert_eq!(got, expected);
    rpcpin.stop().await;
}

#[tokio::test]
async fn leaves_the_tower_of_an_unpinned_interface_alone() {
    let backend =
        Replay::start(|_| pdus(EMSMDB_EPM_SERVER).iter().map(|p| p.to_vec()).collect()).await;
    let rpcpin = Running::start(&config(backend.addr, &[("directory", "\"nspi\"")], "")).await;
    let got = outlook_ept_map(rpcpin.epm, EMSMDB_EPM_CLIENT).await;
    assert_eq!(got, EMSMDB_EPM_SERVER);
    rpcpin.stop().await;
}

/// A backend EPM that sends NSPI clients to `port`, answering with Exchange's bytes.
async fn epm_pointing_at(ports: impl Fn(usize) -> u16 + Send + Sync + 'static) -> Replay {
    Replay::start(move |n| {
        let mut answers: Vec<Vec<u8>> = pdus(NSPI_EPM_SERVER).iter().map(|p| p.to_vec()).collect();
        replace(
            &mut answers[1],
            &EXCHANGE_NSPI_PORT,
            &ports(n).to_be_bytes(),
        );
        answers
    })
    .await
}

/// An NSPI service that answers Outlook's NTLM session with Exchange's captured answers.
async fn nspi_service() -> Replay {
    Replay::start(|_| pdus(NSPI_NTLM_SERVER).iter().map(|p| p.to_vec()).collect()).await
}

#[tokio::test]
async fn relays_an_ntlm_session_byte_for_byte_to_the_resolved_port() {
    let service = nspi_service().await;
    let port = service.addr.port();
    let epm = epm_pointing_at(move |_| port).await;
    let rpcpin = Running::start(&config(epm.addr, &[("directory", "\"nspi\"")], "")).await;

    // Bind, auth3 and the first call in one write: rpcpin must keep what follows the bind.
    let mut s = TcpStream::connect(rpcpin.pins[0]).await.unwrap();
    s.write_all(NSPI_NTLM_CLIENT).await.unwrap();
    let ack = read_pdu(&mut s).await.expect("a bind_ack");
    let response = read_pdu(&mut s).await.expect("a response");
    let server = pdus(NSPI_NTLM_SERVER);
    // The bind_ack's secondary address "4997\0" (the backend's port) became the pin's port;
    // what follows it (results, NTLM challenge) is Exchange's, byte for byte.
    let public = format!("{}\0", rpcpin.pins[0].port());
    assert_eq!(usize::from(u16::from_le_bytes([ack[8], ack[9]])), ack.len());
    assert_eq!(
        usize::from(u16::from_le_bytes([ack[24], ack[25]])),
        public.len()
    );
    assert_eq!(&ack[26..26 + public.len()], public.as_bytes());
    assert_eq!(&server[0][26..31], b"4997\0");
    let tail = server[0].len() - 32;
    assert_eq!(ack[ack.len() - tail..], server[0][32..]);
    // The header and fixed fields are Exchange's, frag_length (8..10) aside.
    assert_eq!(
        (&ack[..8], &ack[10..24]),
        (&server[0][..8], &server[0][10..24])
    );
    assert_eq!(response, server[1]);
    assert_eq!(service.received(), NSPI_NTLM_CLIENT);
    assert_eq!(epm.connections(), 1);
    rpcpin.stop().await;
}

#[tokio::test]
async fn refuses_bind_to_unpinned_interface_without_touching_the_backend() {
    let service = nspi_service().await;
    let port = service.addr.port();
    let epm = epm_pointing_at(move |_| port).await;
    let rpcpin = Running::start(&config(epm.addr, &[("directory", "\"nspi\"")], "")).await;

    let mut bind = pdus(NSPI_NTLM_CLIENT)[0].to_vec();
    assert_eq!(replace(&mut bind, &NSPI_LE, &WINREG_LE), 1);
    let mut s = TcpStream::connect(rpcpin.pins[0]).await.unwrap();
    s.write_all(&bind).await.unwrap();
    let answer = read_to_end(&mut s).await;

    assert_eq!(answer[2], 12, "a bind_ack");
    assert_eq!(&answer[12..16], &bind[12..16], "for the bind's call id");
    // Header, fixed fields and an empty secondary address (28), the count (4), one result (24).
    assert_eq!(answer.len(), 56, "{answer:02x?}");
    assert_eq!(answer[28], 1, "one result");
    // result = provider_rejection (2), reason = abstract_syntax_not_supported (1).
    assert_eq!(&answer[32..36], &[2, 0, 1, 0]);
    assert_eq!((epm.connections(), service.connections()), (0, 0));
    rpcpin.stop().await;
}

#[tokio::test]
async fn refuses_alter_context_to_unpinned_interface_on_an_open_association() {
    let service = nspi_service().await;
    let port = service.addr.port();
    let epm = epm_pointing_at(move |_| port).await;
    let rpcpin = Running::start(&config(epm.addr, &[("directory", "\"nspi\"")], "")).await;

    let client = pdus(NSPI_NTLM_CLIENT);
    let mut s = TcpStream::connect(rpcpin.pins[0]).await.unwrap();
    s.write_all(client[0]).await.unwrap();
    let ack = read_pdu(&mut s).await.unwrap();
    assert_eq!(ack[2], 12, "a bind_ack");

    // The same bind, turned into an alter_context for winreg.
    let mut alter = client[0].to_vec();
    alter[2] = 14;
    alter[12] = 7;
    replace(&mut alter, &NSPI_LE, &WINREG_LE);
    s.write_all(&alter).await.unwrap();
    let answer = read_pdu(&mut s).await.unwrap();
    assert_eq!(answer[2], 15, "an alter_context_resp");
    assert_eq!(answer[12], 7);
    assert_eq!(&answer[answer.len() - 24..answer.len() - 20], &[2, 0, 1, 0]);

    // The association still works, and the backend never saw the alter_context.
    s.write_all(client[1]).await.unwrap();
    s.write_all(client[2]).await.unwrap();
    assert_eq!(read_pdu(&mut s).await.unwrap(), pdus(NSPI_NTLM_SERVER)[1]);
    let mut expected = client[0].to_vec();
    expected.extend_from_slice(client[1]);
    expected.extend_from_slice(client[2]);
    assert_eq!(service.received(), expected);
    rpcpin.stop().await;
}

#[tokio::test]
async fn resolves_again_when_the_cached_port_is_gone() {
    let service = nspi_service().await;
    let live = service.addr.port();
    let dead = closed_port().await;
    // The first answer names a port nothing listens on, as after a server restart.
    let epm = epm_pointing_at(move |n| if n == 0 { dead } else { live }).await;
    let rpcpin = Running::start(&config(epm.addr, &[("directory", "\"nspi\"")], "")).await;

    let mut s = TcpStream::connect(rpcpin.pins[0]).await.unwrap();
    s.write_all(pdus(NSPI_NTLM_CLIENT)[0]).await.unwrap();
    assert_eq!(read_pdu(&mut s).await.unwrap()[2], 12, "a bind_ack");
    assert_eq!(service.connections(), 1);
    assert_eq!(epm.connections(), 2);
    rpcpin.stop().await;
}

#[tokio::test]
async fn backend_down_gets_the_client_a_bind_nak() {
    let dead = closed_port().await;
    let epm_addr: SocketAddr = format!("127.0.0.1:{}", closed_port().await)
        .parse()
        .unwrap();
    let text = config(epm_addr, &[("directory", "\"nspi\"")], "").replace(
        "interfaces = [\"nspi\"]",
        &format!("interfaces = [\"nspi\"]\nbackend_port = {dead}"),
    );
    let rpcpin = Running::start(&text).await;

    let mut s = TcpStream::connect(rpcpin.pins[0]).await.unwrap();
    s.write_all(pdus(NSPI_NTLM_CLIENT)[0]).await.unwrap();
    let answer = read_to_end(&mut s).await;
    assert_eq!(answer[2], 13, "a bind_nak: {answer:02x?}");
    rpcpin.stop().await;
}

#[tokio::test]
async fn silent_clients_are_closed_and_do_not_block_others() {
    let backend =
        Replay::start(|_| pdus(NSPI_EPM_SERVER).iter().map(|p| p.to_vec()).collect()).await;
    let text = config(
        backend.addr,
        &[("directory", "\"nspi\"")],
        "[limits]\nhandshake_timeout = \"300ms\"\n",
    );
    let rpcpin = Running::start(&text).await;

    let started = Instant::now();
    let mut silent = Vec::new();
    for addr in [rpcpin.epm, rpcpin.pins[0]].iter().cycle().take(20) {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    // Meanwhile a real client is served at once.
    let got = outlook_ept_map(rpcpin.epm, NSPI_EPM_CLIENT).await;
    assert_eq!(got.len(), NSPI_EPM_SERVER.len());
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "served while the silent wait"
    );
    for mut s in silent {
        assert!(read_to_end(&mut s).await.is_empty());
    }
    assert!(started.elapsed() >= Duration::from_millis(300));
    // No silent client cost a backend connection.
    assert_eq!(backend.connections(), 1);
    rpcpin.stop().await;
}
