//! Answer mode (`epm.mode = "answer"`): rpcpin answers the endpoint mapper itself, from
//! what the server's endpoint mapper told its own lookups; clients never reach the server's.

mod common;

use common::*;
use rpcpin::wire::bind::{encode_bind, BindAck, ContextProposal, ContextResult};
use rpcpin::wire::call::{encode_request, encode_response, Response};
use rpcpin::wire::epm::request::{inquiry, vers_option};
use rpcpin::wire::epm::{
    encode_lookup_request, encode_map_query, opnum, walk_lookup_response, walk_map_response,
    LookupQuery, MapQuery, EPM, EPT_S_NOT_REGISTERED, HANDLE_LEN,
};
use rpcpin::wire::ndr::Syntax;
use rpcpin::wire::tower::{encode_tcp_tower, Tower};
use rpcpin::wire::{uuid, Endian, SyntaxId};
use tokio::io::AsyncWriteExt;

const NSPI: SyntaxId = SyntaxId::new(uuid!("f5cc5a18-4264-101a-8c59-08002b2f8426"), 56, 0);

/// A server's endpoint mapper answering every connection with Exchange's captured bind_ack
/// and NSPI ept_map answer (port 4997 at 192.168.0.2).
async fn exchange_epm() -> Replay {
    Replay::start(|_| pdus(NSPI_EPM_SERVER).iter().map(|p| p.to_vec()).collect()).await
}

fn answer_mode(backend: &Replay, pins: &[(&str, &[&str])]) -> TestConfig {
    let mut config = TestConfig::new(backend.addr).set("epm.mode", "answer");
    for (name, interfaces) in pins {
        config = config.pin(name, interfaces.iter().copied());
    }
    config
}

#[tokio::test]
async fn outlooks_ept_map_gets_exchanges_answer_pointing_at_the_pin() {
    let backend = exchange_epm().await;
    let rpcpin = Running::start(&answer_mode(&backend, &[("directory", &["nspi"])])).await;
    let pin_port = rpcpin.pins[0].port();
    let mut s = Conn::connect(rpcpin.epm).await;
    send(&mut s, NSPI_EPM_CLIENT).await;
    let ack = read_pdu(&mut s).await.expect("a bind_ack");
    let got = read_pdu(&mut s).await.expect("an ept_map answer");

    // The bind_ack: Outlook's fragment sizes, rpcpin's own port as secondary address, NDR.
    let ack = BindAck::parse(&ack).unwrap();
    assert_eq!(ack.pdu().ptype(), rpcpin::wire::PacketType::BindAck);
    assert_eq!(
        ack.secondary_addr(),
        format!("{}\0", rpcpin.epm.port()).as_bytes()
    );
    let results: Vec<_> = ack.results().collect();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].result, ContextResult::Acceptance);
    assert_eq!(results[0].transfer_syntax, SyntaxId::NDR);

    // The answer: Exchange's, byte for byte, with the pin's port and rpcpin's address...
    let mut expected = pdus(NSPI_EPM_SERVER)[1].to_vec();
    assert_eq!(
        replace(&mut expected, &EXCHANGE_NSPI_PORT, &pin_port.to_be_bytes()),
        1
    );
    assert_eq!(replace(&mut expected, &EXCHANGE_ADDR, &[127, 0, 0, 1]), 1);
    assert_eq!(got.len(), expected.len());
    // ...except the tower pointer's referent id (Exchange numbers it 3, rpcpin 0x00020004):
    // header 24 bytes, entry handle 20, num_towers 4, max, offset and actual counts 12.
    let differ: Vec<usize> = (0..got.len()).filter(|&i| got[i] != expected[i]).collect();
    assert_eq!(differ, [24 + 36, 24 + 38], "{got:02x?}\n{expected:02x?}");
    // rpcpin asked the server once, its own question for what Outlook asked: NSPI 56.0
    // over NDR and ncacn_ip_tcp, nil object. Outlook's tower names port 135 (0x0087 in
    // floor 4), rpcpin's 0; nothing else differs.
    assert_eq!(backend.connections(), 1);
    let asked = backend.received();
    let asked = pdus(&asked);
    assert_eq!(
        (asked.len(), asked[1][2], asked[1][22]),
        (2, 0, 3),
        "a bind and an ept_map"
    );
    let mut want = pdus(NSPI_EPM_CLIENT)[1][24..].to_vec();
    let port_floor = [0x07, 0x02, 0x00, 0x00, 0x87];
    assert_eq!(replace(&mut want, &port_floor, &[0x07, 0x02, 0, 0, 0]), 1);
    assert_eq!(&asked[1][24..], &want[..]);
    rpcpin.stop().await;
}

#[tokio::test]
async fn later_clients_are_answered_from_the_cache() {
    let backend = exchange_epm().await;
    let rpcpin = Running::start(&answer_mode(&backend, &[("directory", &["nspi"])])).await;
    let mut answers = Vec::new();
    for client in 0..3 {
        let mut s = Conn::connect(rpcpin.epm).await;
        send(&mut s, NSPI_EPM_CLIENT).await;
        read_pdu(&mut s).await.expect("a bind_ack");
        answers.push(read_pdu(&mut s).await.expect("an ept_map answer"));
        s.shutdown().await.unwrap();
        // Each connection's summary says where its answer came from.
        let summary = logs::about(&s, "connection_closed").await;
        let sources = (
            summary["from_server"].as_u64(),
            summary["from_cache"].as_u64(),
        );
        let want = if client == 0 { (1, 0) } else { (0, 1) };
        assert_eq!(
            sources,
            (Some(want.0), Some(want.1)),
            "client {client}: {summary}"
        );
    }
    assert!(answers.iter().all(|a| *a == answers[0]));
    assert_eq!(backend.connections(), 1, "one lookup at the server");
    rpcpin.stop().await;
}

#[tokio::test]
async fn an_unpinned_interface_is_not_registered_and_never_asked() {
    let backend = exchange_epm().await;
    let rpcpin = Running::start(&answer_mode(&backend, &[("lsad", &["samr"])])).await;
    let mut s = Conn::connect(rpcpin.epm).await;
    send(&mut s, NSPI_EPM_CLIENT).await;
    read_pdu(&mut s).await.expect("a bind_ack");
    let answer = read_pdu(&mut s).await.expect("an ept_map answer");
    let stub = Response::parse(&answer).unwrap().stub().to_vec();
    let walk = walk_map_response(&stub, Endian::Little, Syntax::Ndr).unwrap();
    assert_eq!((walk.status, walk.towers.len()), (EPT_S_NOT_REGISTERED, 0));
    let refused = logs::about(&s, "refused").await;
    assert_eq!(refused["policy"], "hide_unpinned", "{refused}");
    assert_eq!(refused["alias"], "nspi", "{refused}");
    assert_eq!(
        backend.connections(),
        0,
        "the server's endpoint mapper never contacted"
    );
    rpcpin.stop().await;
}

#[tokio::test]
async fn a_bind_for_another_interface_is_refused_without_a_server() {
    let backend = exchange_epm().await;
    let rpcpin = Running::start(&answer_mode(&backend, &[("directory", &["nspi"])])).await;
    let mut bind = pdus(NSPI_EPM_CLIENT)[0].to_vec();
    assert_eq!(replace(&mut bind, &EPM_SYNTAX_LE[..16], &WINREG_LE), 1);
    let mut s = Conn::connect(rpcpin.epm).await;
    s.write_all(&bind).await.unwrap();
    let nak = read_pdu(&mut s).await.expect("an answer");
    assert_eq!(nak[2], 13, "a bind_nak");
    assert!(read_to_end(&mut s).await.is_empty(), "closed");
    assert_eq!(backend.connections(), 0);
    rpcpin.stop().await;
}

/// A bind for the endpoint mapper offering NDR on context 0 and NDR64 on context 1, as
/// Windows binds.
fn ndr_and_ndr64_bind() -> Vec<u8> {
    let contexts = [
        ContextProposal {
            id: 0,
            abstract_syntax: EPM,
            transfer_syntaxes: &[SyntaxId::NDR],
        },
        ContextProposal {
            id: 1,
            abstract_syntax: EPM,
            transfer_syntaxes: &[SyntaxId::NDR64],
        },
    ];
    let mut out = Vec::new();
    encode_bind(&mut out, Endian::Little, 1, 5840, &contexts).unwrap();
    out
}

#[tokio::test]
async fn ndr64_is_chosen_as_windows_chooses_it_and_answers_are_ndr64() {
    let backend = exchange_epm().await;
    let rpcpin = Running::start(&answer_mode(&backend, &[("directory", &["nspi"])])).await;
    let mut s = Conn::connect(rpcpin.epm).await;
    s.write_all(&ndr_and_ndr64_bind()).await.unwrap();
    let ack = read_pdu(&mut s).await.expect("a bind_ack");
    let results: Vec<_> = BindAck::parse(&ack).unwrap().results().collect();
    assert_eq!(results[0].result, ContextResult::ProviderRejection);
    assert_eq!(
        results[0].reason, 2,
        "proposed transfer syntaxes not supported"
    );
    assert_eq!(
        (results[1].result, results[1].transfer_syntax),
        (ContextResult::Acceptance, SyntaxId::NDR64)
    );
    // ept_map for NSPI in NDR64 on context 1.
    let mut tower = Vec::new();
    encode_tcp_tower(&mut tower, NSPI, 0, std::net::Ipv4Addr::UNSPECIFIED);
    let mut stub = Vec::new();
    let query = MapQuery {
        auth: false,
        object: None,
        tower: &tower,
        sid: None,
        handle: &[0; HANDLE_LEN],
        max_towers: 4,
    };
    encode_map_query(&mut stub, Endian::Little, Syntax::Ndr64, &query);
    let mut req = Vec::new();
    encode_request(&mut req, Endian::Little, 2, 1, opnum::MAP, &stub).unwrap();
    s.write_all(&req).await.unwrap();
    let answer = read_pdu(&mut s).await.expect("an answer");
    let stub = Response::parse(&answer).unwrap().stub().to_vec();
    let walk = walk_map_response(&stub, Endian::Little, Syntax::Ndr64).unwrap();
    assert_eq!((walk.status, walk.towers.len()), (0, 1));
    let t = Tower::new_checked(&stub[walk.towers[0].clone()]).unwrap();
    assert_eq!(t.tcp_port(), Some(rpcpin.pins[0].port()));
    assert_eq!(t.interface(), Some(NSPI));
    rpcpin.stop().await;
}

/// A server's endpoint mapper whose table impacket wrote (tests/data/impacket): NSPI and
/// EMSMDB (twice) over ncacn_ip_tcp, samr, and NSPI over ncacn_http.
async fn impacket_epm() -> Replay {
    Replay::start(|_| {
        let table = include_bytes!("data/impacket/lookup-ndr.in.bin");
        let mut lookup = Vec::new();
        encode_response(&mut lookup, Endian::Little, 1, 0, table).unwrap();
        vec![pdus(NSPI_EPM_SERVER)[0].to_vec(), lookup]
    })
    .await
}

/// An ept_lookup of every entry, at most `max_ents`, from `handle`.
fn lookup(call_id: u32, handle: &[u8; HANDLE_LEN], max_ents: u32) -> Vec<u8> {
    let mut stub = Vec::new();
    let query = LookupQuery {
        inquiry_type: inquiry::ALL_ELTS,
        object: None,
        interface: None,
        vers_option: vers_option::ALL,
        handle,
        max_ents,
    };
    encode_lookup_request(&mut stub, Endian::Little, Syntax::Ndr, &query);
    let mut req = Vec::new();
    encode_request(&mut req, Endian::Little, call_id, 0, opnum::LOOKUP, &stub).unwrap();
    req
}

#[tokio::test]
async fn ept_lookup_pages_through_the_pinned_entries_with_rpcpins_handles() {
    let backend = impacket_epm().await;
    let pins: &[(&str, &[&str])] = &[("directory", &["nspi"]), ("store", &["emsmdb"])];
    let rpcpin = Running::start(&answer_mode(&backend, pins)).await;
    let ports = [rpcpin.pins[0].port(), rpcpin.pins[1].port()];
    let mut s = Conn::connect(rpcpin.epm).await;
    s.write_all(pdus(NSPI_EPM_CLIENT)[0]).await.unwrap();
    read_pdu(&mut s).await.expect("a bind_ack");
    let mut handle = [0; HANDLE_LEN];
    let mut seen = Vec::new();
    for call in 1..=4u32 {
        s.write_all(&lookup(call, &handle, 1)).await.unwrap();
        let answer = read_pdu(&mut s).await.expect("an ept_lookup answer");
        let stub = Response::parse(&answer).unwrap().stub().to_vec();
        let walk = walk_lookup_response(&stub, Endian::Little, Syntax::Ndr).unwrap();
        assert_eq!((walk.status, walk.towers.len()), (0, 1), "call {call}");
        handle.copy_from_slice(&stub[walk.handle.clone()]);
        let t = Tower::new_checked(&stub[walk.towers[0].clone()]).unwrap();
        let annotation = &stub[walk.entries[0].annotation.clone().unwrap()];
        let interface = t.interface().unwrap().uuid;
        seen.push((
            interface,
            t.tcp_port().unwrap(),
            t.ipv4().unwrap(),
            annotation.to_vec(),
        ));
        // A handle while entries are left, none with the last.
        if handle == [0; HANDLE_LEN] {
            break;
        }
    }
    // NSPI and both EMSMDB entries, each at its pin and rpcpin's address; samr (no pin) and
    // NSPI over ncacn_http are not answered.
    let local = std::net::Ipv4Addr::LOCALHOST;
    assert_eq!(
        seen,
        [
            (
                NSPI.uuid,
                ports[0],
                local,
                b"MS Exchange Directory NSP Interface\0".to_vec()
            ),
            (
                uuid!("a4f1db00-ca47-1067-b31f-00dd010662da"),
                ports[1],
                local,
                b"x\0".to_vec()
            ),
            (
                uuid!("a4f1db00-ca47-1067-b31f-00dd010662da"),
                ports[1],
                local,
                b"Exchange store\0".to_vec()
            ),
        ]
    );
    // A walk left half-way is closed with ept_lookup_handle_free; its handle then leads
    // nowhere.
    s.write_all(&lookup(5, &[0; HANDLE_LEN], 1)).await.unwrap();
    let answer = read_pdu(&mut s).await.expect("an ept_lookup answer");
    let stub = Response::parse(&answer).unwrap().stub().to_vec();
    let walk = walk_lookup_response(&stub, Endian::Little, Syntax::Ndr).unwrap();
    let open: [u8; HANDLE_LEN] = stub[walk.handle.clone()].try_into().unwrap();
    assert_ne!(open, [0; HANDLE_LEN]);
    let mut free = Vec::new();
    encode_request(
        &mut free,
        Endian::Little,
        6,
        0,
        opnum::LOOKUP_HANDLE_FREE,
        &open,
    )
    .unwrap();
    s.write_all(&free).await.unwrap();
    let answer = read_pdu(&mut s)
        .await
        .expect("an ept_lookup_handle_free answer");
    assert_eq!(
        Response::parse(&answer).unwrap().stub(),
        [0; HANDLE_LEN + 4]
    );
    // The freed handle is one rpcpin no longer holds: the fault Samba's runtime gives,
    // nca_s_fault_context_mismatch; freeing it again too.
    s.write_all(&lookup(7, &open, 1)).await.unwrap();
    let fault = read_pdu(&mut s).await.expect("an answer");
    assert_eq!(
        (fault[2], &fault[24..28]),
        (3, &0x1c00_001au32.to_le_bytes()[..])
    );
    let mut free = Vec::new();
    encode_request(
        &mut free,
        Endian::Little,
        8,
        0,
        opnum::LOOKUP_HANDLE_FREE,
        &open,
    )
    .unwrap();
    s.write_all(&free).await.unwrap();
    let fault = read_pdu(&mut s).await.expect("an answer");
    assert_eq!(
        (fault[2], &fault[24..28]),
        (3, &0x1c00_001au32.to_le_bytes()[..])
    );
    assert_eq!(backend.connections(), 1, "one gathering at the server");
    rpcpin.stop().await;
}

#[tokio::test]
async fn an_authenticated_association_is_relayed_to_the_server() {
    let backend = exchange_epm().await;
    let rpcpin = Running::start(&answer_mode(&backend, &[("directory", &["nspi"])])).await;
    // Outlook's bind with an NTLM negotiate at connect level (auth_level 2), as Windows
    // binds when the endpoint mapper requires authentication.
    let mut bind = pdus(NSPI_EPM_CLIENT)[0].to_vec();
    let token = b"NTLMSSP\0\x01\0\0\0\x07\x82\x08\xa2";
    bind.extend_from_slice(&[10, 2, 0, 0, 0, 0, 0, 0]);
    bind.extend_from_slice(token);
    let frag_len = bind.len() as u16;
    bind[8..10].copy_from_slice(&frag_len.to_le_bytes());
    bind[10..12].copy_from_slice(&(token.len() as u16).to_le_bytes());
    let client = [&bind[..], pdus(NSPI_EPM_CLIENT)[1]].concat();
    let mut s = Conn::connect(rpcpin.epm).await;
    send(&mut s, &client).await;
    // The server's own bind_ack, and its answer rewritten as in relay mode.
    assert_eq!(read_pdu(&mut s).await.unwrap(), pdus(NSPI_EPM_SERVER)[0]);
    let answer = read_pdu(&mut s).await.expect("an ept_map answer");
    let mut expected = pdus(NSPI_EPM_SERVER)[1].to_vec();
    let pin_port = rpcpin.pins[0].port().to_be_bytes();
    assert_eq!(replace(&mut expected, &EXCHANGE_NSPI_PORT, &pin_port), 1);
    assert_eq!(replace(&mut expected, &EXCHANGE_ADDR, &[127, 0, 0, 1]), 1);
    assert_eq!(answer, expected);
    assert_eq!(
        backend.received(),
        client,
        "the client's own bytes reached the server"
    );
    let relayed = logs::about(&s, "epm_relayed").await;
    assert_eq!(relayed["reason"], "authenticated bind", "{relayed}");
    rpcpin.stop().await;
}

#[tokio::test]
async fn each_pin_is_answered_from_its_own_server() {
    // Server 1 has NSPI at 4997 (Exchange's answer); server 2 answers the same bytes, so
    // which one was asked is told by who received a request.
    let one = exchange_epm().await;
    let two = exchange_epm().await;
    let mut server = toml::Table::new();
    server.insert("host".into(), two.addr.ip().to_string().into());
    server.insert("epm_port".into(), i64::from(two.addr.port()).into());
    let config = answer_mode(&one, &[("directory", &["nspi"]), ("store", &["emsmdb"])])
        .section("backends")
        .set("backends.two", server)
        .set("pin[0].backend", "two");
    let rpcpin = Running::start(&config).await;
    let mut s = Conn::connect(rpcpin.epm).await;
    send(&mut s, NSPI_EPM_CLIENT).await;
    read_pdu(&mut s).await.expect("a bind_ack");
    let answer = read_pdu(&mut s).await.expect("an ept_map answer");
    let stub = Response::parse(&answer).unwrap().stub().to_vec();
    let walk = walk_map_response(&stub, Endian::Little, Syntax::Ndr).unwrap();
    let t = Tower::new_checked(&stub[walk.towers[0].clone()]).unwrap();
    assert_eq!(t.tcp_port(), Some(rpcpin.pins[0].port()));
    assert_eq!(
        (one.connections(), two.connections()),
        (0, 1),
        "NSPI's pin names server two"
    );
    rpcpin.stop().await;
}

#[tokio::test]
async fn a_port_that_fails_the_pin_is_looked_up_again_for_the_next_client() {
    // The server's endpoint mapper first names a port where nothing listens (the server
    // restarted), then the directory's real one.
    let service = nspi_service().await;
    let (dead, live) = (closed_port().await, service.addr.port());
    let backend = epm_pointing_at(move |n| if n == 0 { dead } else { live }).await;
    let rpcpin = Running::start(&answer_mode(&backend, &[("directory", &["nspi"])])).await;
    let lookup = || async {
        let mut s = Conn::connect(rpcpin.epm).await;
        send(&mut s, NSPI_EPM_CLIENT).await;
        read_pdu(&mut s).await.expect("a bind_ack");
        read_pdu(&mut s).await.expect("an ept_map answer");
    };
    lookup().await;
    assert_eq!(backend.connections(), 1);
    // The pin tries the dead port it learned, forgets it, and resolves again.
    let mut s = Conn::connect(rpcpin.pins[0]).await;
    s.write_all(pdus(NSPI_NTLM_CLIENT)[0]).await.unwrap();
    assert_eq!(read_pdu(&mut s).await.expect("a bind_ack")[2], 12);
    assert_eq!(backend.connections(), 2);
    // What 135 kept for NSPI went with it: the next client's answer is looked up anew.
    lookup().await;
    assert_eq!(backend.connections(), 3);
    rpcpin.stop().await;
}

#[tokio::test]
async fn outlooks_emsmdb_ept_map_gets_exchanges_answer_pointing_at_the_pin() {
    let backend =
        Replay::start(|_| pdus(EMSMDB_EPM_SERVER).iter().map(|p| p.to_vec()).collect()).await;
    let rpcpin = Running::start(&answer_mode(&backend, &[("store", &["emsmdb"])])).await;
    let pin_port = rpcpin.pins[0].port();
    let mut s = Conn::connect(rpcpin.epm).await;
    send(&mut s, EMSMDB_EPM_CLIENT).await;
    read_pdu(&mut s).await.expect("a bind_ack");
    let got = read_pdu(&mut s).await.expect("an ept_map answer");
    // Exchange's answer (the store at TCP 1032 on 192.168.0.2), port and address rewritten.
    let mut expected = pdus(EMSMDB_EPM_SERVER)[1].to_vec();
    assert_eq!(
        replace(
            &mut expected,
            &1032u16.to_be_bytes(),
            &pin_port.to_be_bytes()
        ),
        1
    );
    assert_eq!(replace(&mut expected, &EXCHANGE_ADDR, &[127, 0, 0, 1]), 1);
    assert_eq!(got.len(), expected.len());
    // Beyond the referent id (as for NSPI), the padding byte after the 75-byte tower:
    // Exchange leaves 0x08 there, rpcpin writes zero.
    let differ: Vec<usize> = (0..got.len()).filter(|&i| got[i] != expected[i]).collect();
    assert_eq!(
        differ,
        [24 + 36, 24 + 38, 24 + 123],
        "{got:02x?}\n{expected:02x?}"
    );
    assert_eq!((expected[24 + 123], got[24 + 123]), (0x08, 0));
    rpcpin.stop().await;
}
