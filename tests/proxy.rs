//! End to end: rpcpin in-process on port 0 between a client and backends that replay the
//! real Outlook ↔ Exchange bytes of mapi.pcap.

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::AsyncWriteExt;

/// Sends Outlook's captured EPM bytes through rpcpin and returns what came back.
async fn outlook_ept_map(epm: SocketAddr, client: &[u8]) -> Vec<u8> {
    let mut s = Conn::connect(epm).await;
    send(&mut s, client).await;
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
    let rpcpin =
        Running::start(&TestConfig::new(backend.addr).pin("directory", ["nspi", "rfr"])).await;
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
        let server = include_bytes!("data/samba-be-map-samr.server.bin");
        pdus(server).iter().map(|p| p.to_vec()).collect()
    })
    .await;
    let rpcpin = Running::start(&TestConfig::new(backend.addr).pin("lsad", ["samr"])).await;
    let mut s = Conn::connect(rpcpin.epm).await;
    send(&mut s, client).await;
    let mut got = vec![0u8; server.len()];
    tokio::io::AsyncReadExt::read_exact(&mut s, &mut got)
        .await
        .unwrap();

    let mut expected = server.to_vec();
    let pin_port = rpcpin.pins[0].port();
    assert_eq!(
        replace(
            &mut expected,
            &49153u16.to_be_bytes(),
            &pin_port.to_be_bytes()
        ),
        1
    );
    assert_eq!(replace(&mut expected, &[127, 0, 0, 3], &[127, 0, 0, 1]), 1);
    assert_eq!(got, expected);
    rpcpin.stop().await;
}

#[tokio::test]
async fn legacy_answer_without_fragment_flags_is_a_whole_call() {
    // NT4 sent unfragmented PDUs with both fragment flags clear (ISA 2000 broke on them).
    let mut answers: Vec<Vec<u8>> = pdus(NSPI_EPM_SERVER).iter().map(|p| p.to_vec()).collect();
    answers[1][3] = 0;
    let legacy = answers.clone();
    let backend = Replay::start(move |_| legacy.clone()).await;
    let rpcpin = Running::start(&TestConfig::new(backend.addr).pin("directory", ["nspi"])).await;

    let got = outlook_ept_map(rpcpin.epm, NSPI_EPM_CLIENT).await;
    let mut expected = answers.concat();
    replace(
        &mut expected,
        &EXCHANGE_NSPI_PORT,
        &rpcpin.pins[0].port().to_be_bytes(),
    );
    replace(&mut expected, &EXCHANGE_ADDR, &[127, 0, 0, 1]);
    assert_eq!(got, expected);
    rpcpin.stop().await;
}

#[tokio::test]
async fn configured_advertise_address_goes_into_towers() {
    let backend =
        Replay::start(|_| pdus(EMSMDB_EPM_SERVER).iter().map(|p| p.to_vec()).collect()).await;
    let config = TestConfig::new(backend.addr)
        .pin("store", ["emsmdb"])
        .set("epm.advertise", "203.0.113.10")
        .set("pin[0].advertise_port", 34567);
    let rpcpin = Running::start(&config).await;

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
async fn hides_an_unpinned_interface_unless_told_not_to() {
    let backend =
        Replay::start(|_| pdus(EMSMDB_EPM_SERVER).iter().map(|p| p.to_vec()).collect()).await;
    let config = TestConfig::new(backend.addr).pin("directory", ["nspi"]);
    let shown = Running::start(&config.clone().set("epm.hide_unpinned", false)).await;
    let got = outlook_ept_map(shown.epm, EMSMDB_EPM_CLIENT).await;
    assert_eq!(got, EMSMDB_EPM_SERVER, "hiding off: untouched");
    shown.stop().await;

    // By default, EMSMDB (pinned nowhere) is not registered, and the tower is gone:
    // handle (20), num_towers 0, max 4, offset 0, actual 0, status.
    let hidden = Running::start(&config).await;
    let got = outlook_ept_map(hidden.epm, EMSMDB_EPM_CLIENT).await;
    let answer = &got[60..];
    assert_eq!(answer[..8], EMSMDB_EPM_SERVER[60..68]);
    // Header and fixed fields (24), the entry handle (20), five integers (20).
    assert_eq!(frag_len(answer), 64);
    let stub = &answer[24..];
    assert_eq!(
        stub[..20],
        EMSMDB_EPM_SERVER[84..104],
        "the entry handle is kept"
    );
    let ints: Vec<u32> = stub[20..]
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(ints, [0, 4, 0, 0, 0x16c9_a0d6]);
    hidden.stop().await;
}

/// rpcpin with an NSPI pin, a backend EPM that points at the NSPI service, and that service.
async fn nspi_pin() -> (Replay, Replay, Running) {
    let service = nspi_service().await;
    let port = service.addr.port();
    let epm = epm_pointing_at(move |_| port).await;
    let rpcpin = Running::start(&TestConfig::new(epm.addr).pin("directory", ["nspi"])).await;
    (service, epm, rpcpin)
}

#[tokio::test]
async fn relays_an_ntlm_session_byte_for_byte_to_the_resolved_port() {
    let (service, epm, rpcpin) = nspi_pin().await;

    // Bind and auth3 in one write (rpcpin must keep what follows the bind), then the call
    // once the bind_ack is in.
    let mut s = Conn::connect(rpcpin.pins[0]).await;
    send(&mut s, NSPI_NTLM_CLIENT).await;
    let ack = read_pdu(&mut s).await.expect("a bind_ack");
    let response = read_pdu(&mut s).await.expect("a response");
    let server = pdus(NSPI_NTLM_SERVER);
    // The bind_ack's secondary address "4997\0" (the backend's port) became the pin's port;
    // what follows it (results, NTLM challenge) is Exchange's, byte for byte.
    let public = format!("{}\0", rpcpin.pins[0].port());
    assert_eq!(
        frag_len(&ack),
        (26 + public.len()).next_multiple_of(4) + server[0].len() - 32,
        "frag_length: header and fields, the new address and its padding, Exchange's tail"
    );
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
    let (service, epm, rpcpin) = nspi_pin().await;

    let mut bind = pdus(NSPI_NTLM_CLIENT)[0].to_vec();
    assert_eq!(replace(&mut bind, &NSPI_LE, &WINREG_LE), 1);
    let mut s = Conn::connect(rpcpin.pins[0]).await;
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
    let (service, _epm, rpcpin) = nspi_pin().await;

    let client = pdus(NSPI_NTLM_CLIENT);
    let mut s = Conn::connect(rpcpin.pins[0]).await;
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
    let rpcpin = Running::start(&TestConfig::new(epm.addr).pin("directory", ["nspi"])).await;

    let mut s = Conn::connect(rpcpin.pins[0]).await;
    s.write_all(pdus(NSPI_NTLM_CLIENT)[0]).await.unwrap();
    assert_eq!(read_pdu(&mut s).await.unwrap()[2], 12, "a bind_ack");
    assert_eq!(service.connections(), 1);
    assert_eq!(epm.connections(), 2);
    rpcpin.stop().await;
}

/// What a server that does not offer the interface answers a bind with `call_id` (the
/// port now belongs to another interface): a bind_ack rejecting each of `contexts` as
/// abstract_syntax_not_supported, or a bind_nak.
fn refusing_answer(nak: bool, call_id: u32, contexts: usize) -> Vec<u8> {
    use rpcpin::wire::bind::{
        encode_bind_ack, encode_bind_nak, nak_reason, reason, BindAckFields, ResultEntry,
    };
    use rpcpin::wire::{Endian, PacketType};
    let mut out = Vec::new();
    if nak {
        encode_bind_nak(&mut out, Endian::Little, call_id, nak_reason::NOT_SPECIFIED).unwrap();
        return out;
    }
    let results = vec![ResultEntry::rejected(reason::ABSTRACT_SYNTAX_NOT_SUPPORTED); contexts];
    let fields = BindAckFields {
        ptype: PacketType::BindAck,
        endian: Endian::Little,
        call_id,
        max_xmit_frag: 5840,
        max_recv_frag: 5840,
        assoc_group_id: 0x1234,
        secondary_addr: b"49999\0",
        results: &results,
    };
    encode_bind_ack(&mut out, &fields).unwrap();
    out
}

/// The stale-port case: the backend's endpoint mapper first named `stale` (a server that
/// now refuses the interface), then the NSPI service. Returns (stale server, service, EPM,
/// rpcpin).
async fn moved_interface(nak: bool) -> (Replay, Replay, Replay, Running) {
    let bind = pdus(NSPI_NTLM_CLIENT)[0];
    let call_id = u32::from_le_bytes(bind[12..16].try_into().unwrap());
    let contexts = rpcpin::wire::bind::BindRequest::parse(bind)
        .unwrap()
        .contexts()
        .count();
    let stale = Replay::start(move |_| vec![refusing_answer(nak, call_id, contexts)]).await;
    let service = nspi_service().await;
    let (old, new) = (stale.addr.port(), service.addr.port());
    let epm = epm_pointing_at(move |n| if n == 0 { old } else { new }).await;
    let rpcpin = Running::start(&TestConfig::new(epm.addr).pin("directory", ["nspi"])).await;
    (stale, service, epm, rpcpin)
}

async fn cached_stale_port_is_resolved_again(nak: bool) {
    let (stale, service, epm, rpcpin) = moved_interface(nak).await;
    let bind = pdus(NSPI_NTLM_CLIENT)[0];

    // A fresh resolution is not retried: the client gets the server's refusal.
    let mut first = Conn::connect(rpcpin.pins[0]).await;
    first.write_all(bind).await.unwrap();
    let answer = read_pdu(&mut first).await.unwrap();
    assert_eq!(answer[2], if nak { 13 } else { 12 }, "{answer:02x?}");
    assert_eq!((stale.connections(), epm.connections()), (1, 1));

    // The cached port now refuses the interface: rpcpin resolves again and binds to the
    // service, and the client sees only the service's bind_ack.
    let mut second = Conn::connect(rpcpin.pins[0]).await;
    second.write_all(bind).await.unwrap();
    let ack = read_pdu(&mut second).await.unwrap();
    let server = pdus(NSPI_NTLM_SERVER);
    assert_eq!(ack[2], 12, "a bind_ack");
    let tail = server[0].len() - 32;
    assert_eq!(
        ack[ack.len() - tail..],
        server[0][32..],
        "the service's results"
    );
    let public = format!("{}\0", rpcpin.pins[0].port());
    assert_eq!(
        &ack[26..26 + public.len()],
        public.as_bytes(),
        "the pin's port"
    );
    assert_eq!(
        (
            stale.connections(),
            epm.connections(),
            service.connections()
        ),
        (2, 2, 1)
    );
    assert_eq!(service.received(), bind, "the bind, sent once more");
    let event = logs::about(&second, "backend_port_stale").await;
    assert_eq!(event["old_port"], stale.addr.port());
    assert_eq!(event["new_port"], service.addr.port());
    assert_eq!(logs::logged_about(&second, "backend_port_stale").len(), 1);
    assert_eq!(logs::logged_about(&first, "backend_port_stale").len(), 0);
    rpcpin.stop().await;
}

#[tokio::test]
async fn a_cached_port_whose_server_rejects_every_context_is_resolved_again() {
    cached_stale_port_is_resolved_again(false).await;
}

#[tokio::test]
async fn a_cached_port_whose_server_answers_bind_nak_is_resolved_again() {
    cached_stale_port_is_resolved_again(true).await;
}

#[tokio::test]
async fn an_ept_map_answer_relayed_on_135_refreshes_the_pins_cache() {
    let old = nspi_service().await;
    let new = nspi_service().await;
    let (a, b) = (old.addr.port(), new.addr.port());
    // rpcpin's own resolution finds the old port; the client's ept_map, later, the new one.
    let epm = epm_pointing_at(move |n| if n == 0 { a } else { b }).await;
    let rpcpin = Running::start(&TestConfig::new(epm.addr).pin("directory", ["nspi"])).await;
    let bind = pdus(NSPI_NTLM_CLIENT)[0];

    let mut s = Conn::connect(rpcpin.pins[0]).await;
    s.write_all(bind).await.unwrap();
    assert_eq!(read_pdu(&mut s).await.unwrap()[2], 12);
    assert_eq!((old.connections(), epm.connections()), (1, 1));

    outlook_ept_map(rpcpin.epm, NSPI_EPM_CLIENT).await;
    assert_eq!(epm.connections(), 2);

    // The pin goes where the relayed answer said, without asking the endpoint mapper.
    let mut s = Conn::connect(rpcpin.pins[0]).await;
    s.write_all(bind).await.unwrap();
    assert_eq!(read_pdu(&mut s).await.unwrap()[2], 12);
    assert_eq!((old.connections(), new.connections()), (1, 1));
    assert_eq!(epm.connections(), 2);
    let resolved = logs::about(&s, "backend_resolved").await;
    assert_eq!(resolved["backend_port"], b);
    assert_eq!(resolved["cached"], true);
    rpcpin.stop().await;
}

#[tokio::test]
async fn backend_down_gets_the_client_a_bind_nak() {
    let dead = closed_port().await;
    let config = TestConfig::new(closed_addr().await)
        .pin("directory", ["nspi"])
        .set("pin[0].backend_port", u32::from(dead));
    let rpcpin = Running::start(&config).await;

    let mut s = Conn::connect(rpcpin.pins[0]).await;
    s.write_all(pdus(NSPI_NTLM_CLIENT)[0]).await.unwrap();
    let answer = read_to_end(&mut s).await;
    assert_eq!(answer[2], 13, "a bind_nak: {answer:02x?}");
    rpcpin.stop().await;
}

/// Ten clients that connect and say nothing to each of rpcpin's listeners.
async fn silent_clients(rpcpin: &Running) -> Vec<Conn> {
    let mut silent = Vec::new();
    for addr in [rpcpin.epm, rpcpin.pins[0]].iter().cycle().take(20) {
        silent.push(Conn::connect(*addr).await);
    }
    silent
}

#[tokio::test]
async fn silent_clients_are_closed_and_do_not_block_others() {
    let backend =
        Replay::start(|_| pdus(NSPI_EPM_SERVER).iter().map(|p| p.to_vec()).collect()).await;
    let config = TestConfig::new(backend.addr)
        .pin("directory", ["nspi"])
        .section("limits");

    // Silent clients whose handshake may take an hour, far beyond any wait of the test:
    // a real client is served meanwhile.
    let patient = Running::start(&config.clone().set("limits.handshake_timeout", "1h")).await;
    let silent = silent_clients(&patient).await;
    let got = outlook_ept_map(patient.epm, NSPI_EPM_CLIENT).await;
    assert_eq!(got.len(), NSPI_EPM_SERVER.len());
    // They were waiting all along: stopping rpcpin is what closes them.
    patient.stop().await;
    for s in &silent {
        let why = logs::closed_because(s).await;
        assert_eq!(why, "rpcpin shutting down");
    }

    // With a short handshake timeout, the timeout closes them.
    let strict = Running::start(&config.set("limits.handshake_timeout", "300ms")).await;
    for mut s in silent_clients(&strict).await {
        assert!(read_to_end(&mut s).await.is_empty());
        let why = logs::closed_because(&s).await;
        assert!(why.ends_with("timed out after 300ms"), "{why}");
    }
    // No silent client cost a backend connection: only the real client's.
    assert_eq!(backend.connections(), 1);
    strict.stop().await;
}

/// A little-endian response PDU around `stub`, built by hand: the 16-byte header, then
/// alloc_hint, p_cont_id, cancel count and reserved.
fn response(call_id: u32, ctx: u16, flags: u8, stub: &[u8]) -> Vec<u8> {
    let len = (24 + stub.len()) as u16;
    let mut p = vec![5, 0, 2, flags, 0x10, 0, 0, 0];
    p.extend_from_slice(&len.to_le_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&call_id.to_le_bytes());
    p.extend_from_slice(&(stub.len() as u32).to_le_bytes());
    p.extend_from_slice(&ctx.to_le_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(stub);
    p
}

/// Outlook's ept_map request with another call id and context id.
fn request(call_id: u32, ctx: u16) -> Vec<u8> {
    let mut r = pdus(NSPI_EPM_CLIENT)[1].to_vec();
    r[12..16].copy_from_slice(&call_id.to_le_bytes());
    r[20..22].copy_from_slice(&ctx.to_le_bytes());
    r
}

fn impacket_vector(name: &str) -> (Vec<u8>, Vec<u8>) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/impacket/");
    (
        std::fs::read(format!("{dir}{name}.in.bin")).unwrap(),
        std::fs::read(format!("{dir}{name}.out.bin")).unwrap(),
    )
}

/// Pins as `tests/data/impacket/generate.py` expects them.
fn impacket_config(backend: SocketAddr) -> TestConfig {
    TestConfig::new(backend)
        .pin("directory", ["nspi"])
        .pin("store", ["emsmdb"])
        .set("epm.advertise", "203.0.113.10")
        // Unpinned entries and other towers stay, so that impacket's expected answers are
        // the judge.
        .set("epm.hide_unpinned", false)
        .set("epm.other_towers", "keep")
        .set("pin[0].advertise_port", 6004)
        .set("pin[1].advertise_port", 6001)
}

#[tokio::test]
async fn walks_each_answer_in_the_transfer_syntax_its_context_negotiated() {
    // Windows' three-context bind (NDR, NDR64, feature negotiation) and the server's answer
    // rejecting NDR and accepting NDR64 on context 1 (dce_rpc_netlogon.pcapng).
    // Its interface (netlogon) is swapped for the endpoint mapper's, which port 135 serves.
    let mut bind = pdus(include_bytes!("data/netlogon-ndr64.client.bin"))[0].to_vec();
    assert_eq!(replace(&mut bind, &NETLOGON_SYNTAX_LE, &EPM_SYNTAX_LE), 3);
    let ack = pdus(include_bytes!("data/netlogon-ndr64.server.bin"))[0].to_vec();
    let (ndr64_in, ndr64_out) = impacket_vector("map-ndr64");
    let (ack2, answer) = (ack.clone(), response(3, 1, 3, &ndr64_in));
    let backend =
        Replay::start(move |_| vec![ack2.clone(), answer.clone(), response(4, 0, 3, &ndr64_in)])
            .await;
    let rpcpin = Running::start(&impacket_config(backend.addr)).await;

    let mut s = Conn::connect(rpcpin.epm).await;
    s.write_all(&bind).await.unwrap();
    assert_eq!(read_pdu(&mut s).await.unwrap(), ack);
    // A call on the NDR64 context: its answer is walked as NDR64 and rewritten.
    s.write_all(&request(3, 1)).await.unwrap();
    assert_eq!(
        read_pdu(&mut s).await.unwrap(),
        response(3, 1, 3, &ndr64_out)
    );
    // The same NDR64 bytes on a context that was never accepted cannot be walked: a fault.
    s.write_all(&request(4, 0)).await.unwrap();
    let fault = read_pdu(&mut s).await.unwrap();
    assert_eq!((fault[2], fault[12]), (3, 4), "a fault for call 4");
    rpcpin.stop().await;
}

#[tokio::test]
async fn pipelined_calls_answered_out_of_order_in_fragments() {
    let handshake = pdus(NSPI_EPM_SERVER)[0].to_vec();
    let (map_in, map_out) = impacket_vector("map-ndr");
    let (lookup_in, lookup_out) = impacket_vector("lookup-ndr");
    // Call 3 (ept_map) and call 4 (ept_lookup, opnum 2) are both outstanding; the backend
    // answers 4 then 3, each in three fragments cut through towers (flags first, none, last).
    let fragments = |call: u32, stub: &[u8], cut: usize| {
        let (a, b) = stub.split_at(cut);
        let (b, c) = b.split_at(cut.min(b.len()));
        [
            response(call, 0, 1, a),
            response(call, 0, 0, b),
            response(call, 0, 2, c),
        ]
    };
    let mut answers = Vec::new();
    answers.extend(fragments(4, &lookup_in, 101).concat());
    answers.extend(fragments(3, &map_in, 77).concat());
    let backend =
        Replay::start(move |_| vec![handshake.clone(), Vec::new(), answers.clone()]).await;
    let rpcpin = Running::start(&impacket_config(backend.addr)).await;

    let mut lookup = request(4, 0);
    lookup[22] = 2; // opnum: the stub is not read by the backend here
    let mut s = Conn::connect(rpcpin.epm).await;
    s.write_all(pdus(NSPI_EPM_CLIENT)[0]).await.unwrap();
    read_pdu(&mut s).await.unwrap();
    s.write_all(&[request(3, 0), lookup].concat())
        .await
        .unwrap();

    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(read_pdu(&mut s).await.unwrap());
    }
    let stub = |frags: &[Vec<u8>]| {
        frags
            .iter()
            .flat_map(|f| f[24..].to_vec())
            .collect::<Vec<u8>>()
    };
    assert!(got[..3].iter().all(|f| f[12] == 4) && got[3..].iter().all(|f| f[12] == 3));
    assert_eq!(stub(&got[..3]), lookup_out);
    assert_eq!(stub(&got[3..]), map_out);
    // Fragment sizes and flags are as the backend sent them.
    let sent = [fragments(4, &lookup_in, 101), fragments(3, &map_in, 77)].concat();
    for (g, s) in got.iter().zip(&sent) {
        assert_eq!(g[..24], s[..24]);
    }
    rpcpin.stop().await;
}

/// Exchange's NSPI answer with an 8-byte sec_trailer at `level` and a 16-byte verifier.
fn signed_answer(level: u8) -> Vec<Vec<u8>> {
    signed(NSPI_EPM_SERVER, level)
}

/// The bind_ack and answer of `server`, the answer with an 8-byte sec_trailer at `level` and
/// a 16-byte verifier.
fn signed(server: &[u8], level: u8) -> Vec<Vec<u8>> {
    let mut answers: Vec<Vec<u8>> = pdus(server).iter().map(|p| p.to_vec()).collect();
    let a = &mut answers[1];
    a.extend_from_slice(&[10, level, 0, 0, 0, 0, 0, 0]); // NTLM, level, no padding
    a.extend_from_slice(&[0x5a; 16]);
    let len = a.len() as u16;
    a[8..10].copy_from_slice(&len.to_le_bytes());
    a[10..12].copy_from_slice(&16u16.to_le_bytes());
    answers
}

#[tokio::test]
async fn integrity_protected_answer_needing_a_rewrite_becomes_a_fault() {
    for (level, pinned, rewritable) in [
        (5, true, false),
        (6, true, false),
        (2, true, true),
        (6, false, true),
    ] {
        let answers = signed_answer(level);
        let sent = answers.clone();
        let backend = Replay::start(move |_| sent.clone()).await;
        let iface = if pinned { "nspi" } else { "emsmdb" };
        let config = TestConfig::new(backend.addr)
            .pin("p", [iface])
            .set("epm.hide_unpinned", false);
        let rpcpin = Running::start(&config).await;
        let got = outlook_ept_map(rpcpin.epm, NSPI_EPM_CLIENT).await;
        let answer = &got[60..];
        if !rewritable {
            // A fault for the call instead of a success naming the internal port 4997.
            assert_eq!(
                (answer[2], answer[12]),
                (3, 1),
                "level {level}: {answer:02x?}"
            );
            assert_eq!(&answer[24..28], &5u32.to_le_bytes(), "access denied");
        } else if pinned {
            // Level connect: the verifier does not cover the stub, so it is rewritten.
            assert_eq!(answer.len(), answers[1].len());
            assert_ne!(answer, &answers[1][..]);
        } else {
            assert_eq!(
                answer,
                &answers[1][..],
                "nothing to rewrite: passed untouched"
            );
        }
        rpcpin.stop().await;
    }
}

/// Exchange's ept_lookup answer with a connect-level verifier (which does not cover the
/// stub): hiding NSPI's ncacn_http tower would re-encode it and drop the verifier, so the
/// call gets a fault, as for a hidden unpinned entry; with `other_towers = "keep"` nothing
/// needs a rewrite and the answer passes untouched.
#[tokio::test]
async fn a_protected_answer_losing_other_towers_becomes_a_fault() {
    for keep in [false, true] {
        let answers = signed(include_bytes!("data/mapi-epm-lookup.server.bin"), 2);
        let sent = answers.clone();
        let backend = Replay::start(move |_| sent.clone()).await;
        let mut config = TestConfig::new(backend.addr)
            .pin("p", ["nspi", "emsmdb"])
            .set("epm.hide_unpinned", false);
        if keep {
            config = config.set("epm.other_towers", "keep");
        }
        let rpcpin = Running::start(&config).await;
        let mut s = Conn::connect(rpcpin.epm).await;
        send(&mut s, include_bytes!("data/mapi-epm-lookup.client.bin")).await;
        read_pdu(&mut s).await.unwrap();
        let answer = read_pdu(&mut s).await.unwrap();
        if keep {
            assert_eq!(answer, answers[1], "nothing to rewrite: passed untouched");
        } else {
            assert_eq!(answer[2], 3, "a fault: {answer:02x?}");
            assert_eq!(&answer[24..28], &5u32.to_le_bytes(), "access denied");
        }
        rpcpin.stop().await;
    }
}

#[tokio::test]
async fn protected_answers_close_policy_closes_the_connection() {
    let answers = signed_answer(6);
    let backend = Replay::start(move |_| answers.clone()).await;
    let config = TestConfig::new(backend.addr)
        .pin("p", ["nspi"])
        .set("epm.protected_answers", "close");
    let rpcpin = Running::start(&config).await;
    let mut s = Conn::connect(rpcpin.epm).await;
    send(&mut s, NSPI_EPM_CLIENT).await;
    let got = read_to_end(&mut s).await;
    assert_eq!(
        got,
        pdus(NSPI_EPM_SERVER)[0],
        "only the bind_ack, then the close"
    );
    rpcpin.stop().await;
}

#[tokio::test]
async fn an_answer_beyond_the_reassembly_bound_closes_the_connection() {
    // Exchange's NSPI answer padded to 2 KiB of stub and cut into 600-byte fragments: each
    // within limits.max_fragment, together beyond limits.max_reassembly.
    let mut stub = pdus(NSPI_EPM_SERVER)[1][24..].to_vec();
    stub.resize(2048, 0);
    let frags: Vec<u8> = stub
        .chunks(600)
        .enumerate()
        .flat_map(|(i, part)| {
            let last = (i + 1) * 600 >= stub.len();
            response(1, 0, u8::from(i == 0) | if last { 2 } else { 0 }, part)
        })
        .collect();
    let bind_ack = pdus(NSPI_EPM_SERVER)[0].to_vec();
    let backend = Replay::start(move |_| vec![bind_ack.clone(), frags.clone()]).await;
    let config = TestConfig::new(backend.addr)
        .pin("d", ["nspi"])
        .section("limits")
        .set("limits.max_fragment", 1024)
        .set("limits.max_reassembly", 1500);
    let rpcpin = Running::start(&config).await;
    let mut s = Conn::connect(rpcpin.epm).await;
    send(&mut s, NSPI_EPM_CLIENT).await;
    let got = read_to_end(&mut s).await;
    // Only the bind_ack: the answer was never forwarded, in part or whole.
    assert_eq!(got, pdus(NSPI_EPM_SERVER)[0]);
    rpcpin.stop().await;
}

#[tokio::test]
async fn a_client_that_half_closes_still_gets_its_answer() {
    let (_service, _epm, rpcpin) = nspi_pin().await;
    let mut s = Conn::connect(rpcpin.pins[0]).await;
    send(&mut s, NSPI_NTLM_CLIENT).await;
    // Everything sent: shut the sending side, as a client that has no more requests may.
    s.shutdown().await.unwrap();
    let got = read_to_end(&mut s).await;
    let server = pdus(NSPI_NTLM_SERVER);
    // The bind_ack (its secondary address rewritten), then the answer, whole.
    assert_eq!(got[2], 12);
    assert!(got.ends_with(server[1]), "{got:02x?}");
    rpcpin.stop().await;
}
