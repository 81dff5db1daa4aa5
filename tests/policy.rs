//! The policies that hold by default: port 135 speaks the endpoint mapper only, with its
//! lookup operations only; pins carry only their interfaces (and operations); connection
//! limits; PROXY protocol; an audit event for every refusal.

mod common;

use std::net::SocketAddr;

use common::proxy_header::proxy_v2;
use common::*;
use rpcpin::wire::Pdu;
use tokio::io::AsyncWriteExt;

fn epm_answers() -> Vec<Vec<u8>> {
    pdus(NSPI_EPM_SERVER).iter().map(|p| p.to_vec()).collect()
}

/// Outlook's EPM bind, then its ept_map request turned into another operation.
fn epm_call(op: u16, call_id: u32) -> Vec<u8> {
    let mut r = pdus(NSPI_EPM_CLIENT)[1].to_vec();
    r[12..16].copy_from_slice(&call_id.to_le_bytes());
    r[22..24].copy_from_slice(&op.to_le_bytes());
    r
}

#[tokio::test]
async fn port_135_refuses_dcom_activation_with_a_bind_nak_and_never_calls_the_backend() {
    let backend = Replay::start(|_| epm_answers()).await;
    let rpcpin = Running::start(&TestConfig::new(backend.addr).pin("p", ["nspi"])).await;
    // A real Windows bind to ISystemActivator on 135, Kerberos included (kerberos135_auth).
    let bind = pdus(include_bytes!("data/dcom-kerberos-135.client.bin"))[0].to_vec();
    let mut s = Conn::connect(rpcpin.epm).await;
    s.write_all(&bind).await.unwrap();
    let answer = read_to_end(&mut s).await;
    assert_eq!(
        (answer[2], answer[12]),
        (13, 8),
        "a bind_nak for call 8: {answer:02x?}"
    );
    assert_eq!(backend.connections(), 0);
    rpcpin.stop().await;
}

#[tokio::test]
async fn port_135_forwards_only_the_endpoint_mapper_context_of_a_mixed_bind() {
    let backend = Replay::start(|_| epm_answers()).await;
    let rpcpin = Running::start(&TestConfig::new(backend.addr).pin("p", ["nspi"])).await;
    // Outlook's EPM bind with a second context for ISystemActivator appended.
    let epm_bind = pdus(NSPI_EPM_CLIENT)[0];
    let mut bind = epm_bind.to_vec();
    let mut dcom = epm_bind[28..72].to_vec();
    dcom[0] = 1; // context id 1
    dcom[4..20].copy_from_slice(&[0xa0, 0x01, 0, 0, 0, 0, 0, 0, 0xc0, 0, 0, 0, 0, 0, 0, 0x46]);
    dcom[20..24].copy_from_slice(&[0, 0, 0, 0]);
    bind.extend_from_slice(&dcom);
    bind[24] = 2;
    let len = bind.len() as u16;
    bind[8..10].copy_from_slice(&len.to_le_bytes());

    let mut s = Conn::connect(rpcpin.epm).await;
    s.write_all(&bind).await.unwrap();
    let ack = read_pdu(&mut s).await.unwrap();
    // The backend saw Outlook's original one-context bind, byte for byte.
    assert_eq!(backend.received(), epm_bind);
    // The client sees two results: Exchange's acceptance, then rpcpin's rejection.
    let server_ack = pdus(NSPI_EPM_SERVER)[0];
    assert_eq!(ack.len(), server_ack.len() + 24);
    assert_eq!(ack[32], 2, "two results");
    assert_eq!(
        ack[36..60],
        server_ack[36..60],
        "Exchange's acceptance first"
    );
    assert_eq!(
        &ack[60..64],
        &[2, 0, 1, 0],
        "provider rejection, abstract syntax not supported"
    );
    rpcpin.stop().await;
}

#[tokio::test]
async fn endpoint_mapper_management_and_unknown_operations_are_refused() {
    let backend = Replay::start(|_| epm_answers()).await;
    let rpcpin = Running::start(&TestConfig::new(backend.addr).pin("p", ["nspi"])).await;
    let mut s = Conn::connect(rpcpin.epm).await;
    s.write_all(pdus(NSPI_EPM_CLIENT)[0]).await.unwrap();
    read_pdu(&mut s).await.unwrap();
    // ept_insert, ept_delete, ept_inq_object, ept_mgmt_delete, and an opnum that does not exist.
    for (call, op, status) in [
        (2, 0u16, 5u32),
        (3, 1, 5),
        (4, 5, 5),
        (5, 6, 5),
        (6, 42, 0x1c01_0002),
    ] {
        s.write_all(&epm_call(op, call)).await.unwrap();
        let fault = read_pdu(&mut s).await.unwrap();
        assert_eq!(
            (fault[2], fault[12]),
            (3, call as u8),
            "opnum {op}: {fault:02x?}"
        );
        assert_eq!(&fault[24..28], &status.to_le_bytes(), "opnum {op}");
    }
    // A refused call sent in two fragments: one fault, and its second fragment is dropped.
    let whole = epm_call(0, 8);
    let (head, stub) = whole.split_at(24);
    let (a, b) = stub.split_at(40);
    let fragment = |flags: u8, part: &[u8]| {
        let mut f = head.to_vec();
        f[3] = flags;
        f.extend_from_slice(part);
        let len = f.len() as u16;
        f[8..10].copy_from_slice(&len.to_le_bytes());
        f
    };
    s.write_all(&[fragment(1, a), fragment(2, b)].concat())
        .await
        .unwrap();
    let fault = read_pdu(&mut s).await.unwrap();
    assert_eq!((fault[2], fault[12]), (3, 8));
    // None of them reached the backend; an ept_map afterwards still does.
    assert_eq!(backend.received(), pdus(NSPI_EPM_CLIENT)[0]);
    // (Call id 1, which the captured answer carries.)
    s.write_all(&epm_call(3, 1)).await.unwrap();
    let answer = read_pdu(&mut s).await.unwrap();
    assert_eq!(answer[2], 2, "a response");
    rpcpin.stop().await;
}

#[tokio::test]
async fn pin_forwards_only_its_interfaces_from_a_mixed_bind() {
    let service =
        Replay::start(|_| pdus(NSPI_NTLM_SERVER).iter().map(|p| p.to_vec()).collect()).await;
    let config = TestConfig::new(closed_addr().await)
        .pin("d", ["nspi"])
        .set("pin[0].backend_port", u32::from(service.addr.port()));
    let rpcpin = Running::start(&config).await;
    // Outlook's NSPI bind with winreg proposed first, as context 5.
    let nspi_bind = pdus(NSPI_NTLM_CLIENT)[0];
    let mut bind = nspi_bind[..28].to_vec();
    let mut winreg = nspi_bind[28..72].to_vec();
    winreg[0] = 5;
    winreg[4..20].copy_from_slice(&WINREG_LE);
    bind.extend_from_slice(&winreg);
    bind.extend_from_slice(&nspi_bind[28..]);
    bind[24] = 2;
    let len = bind.len() as u16;
    bind[8..10].copy_from_slice(&len.to_le_bytes());

    let mut s = Conn::connect(rpcpin.pins[0]).await;
    s.write_all(&bind).await.unwrap();
    let ack = read_pdu(&mut s).await.unwrap();
    assert_eq!(
        service.received(),
        nspi_bind,
        "the backend saw only the NSPI context"
    );
    let auth_len = Pdu::new_checked(&ack[..]).unwrap().auth_len();
    let results = ack.len() - 24 * 2 - auth_len - 8;
    assert_eq!(ack[results - 4], 2, "two results");
    assert_eq!(
        &ack[results..results + 4],
        &[2, 0, 1, 0],
        "winreg rejected first"
    );
    assert_eq!(&ack[results + 24..results + 26], &[0, 0], "NSPI accepted");
    // The backend's one result is for context 0, the second the client proposed: a call on
    // context 5 gets rpcpin's fault, Outlook's call on context 0 the backend's answer.
    let client = pdus(NSPI_NTLM_CLIENT);
    let mut on_winreg = client[2].to_vec();
    on_winreg[12] = 9;
    on_winreg[20] = 5;
    s.write_all(&[client[1], &on_winreg].concat())
        .await
        .unwrap();
    assert_unknown_context_fault(&read_pdu(&mut s).await.unwrap(), 9);
    s.write_all(client[2]).await.unwrap();
    assert_eq!(read_pdu(&mut s).await.unwrap(), pdus(NSPI_NTLM_SERVER)[1]);
    assert_eq!(service.received(), client.concat());
    rpcpin.stop().await;
}

#[tokio::test]
async fn pin_opnum_list_refuses_other_operations() {
    let service =
        Replay::start(|_| pdus(NSPI_NTLM_SERVER).iter().map(|p| p.to_vec()).collect()).await;
    let mut opnums = toml::Table::new();
    opnums.insert("nspi".into(), vec![0, 1].into());
    let config = TestConfig::new(closed_addr().await)
        .pin("d", ["nspi"])
        .set("pin[0].backend_port", u32::from(service.addr.port()))
        .set("pin[0].opnums", opnums);
    let rpcpin = Running::start(&config).await;
    let client = pdus(NSPI_NTLM_CLIENT);
    let mut s = Conn::connect(rpcpin.pins[0]).await;
    s.write_all(&[client[0], client[1]].concat()).await.unwrap();
    read_pdu(&mut s).await.unwrap();
    // NspiBind is opnum 0: allowed. The same call as opnum 2 is not.
    let mut refused = client[2].to_vec();
    refused[22] = 2;
    refused[12] = 9;
    s.write_all(&refused).await.unwrap();
    let fault = read_pdu(&mut s).await.unwrap();
    assert_eq!((fault[2], fault[12]), (3, 9), "a fault for call 9");
    assert_eq!(&fault[24..28], &5u32.to_le_bytes(), "access denied");
    s.write_all(client[2]).await.unwrap();
    assert_eq!(read_pdu(&mut s).await.unwrap(), pdus(NSPI_NTLM_SERVER)[1]);
    assert_eq!(
        service.received(),
        client.concat(),
        "the refused call never reached the backend"
    );
    rpcpin.stop().await;
}

#[tokio::test]
async fn connection_limits_hold_in_total_and_per_address() {
    let backend = Replay::start(|_| epm_answers()).await;
    for (limit, allowed) in [("max_connections", 3), ("max_connections_per_ip", 2)] {
        let config = TestConfig::new(backend.addr)
            .pin("p", ["nspi"])
            .section("limits")
            .set(&format!("limits.{limit}"), allowed);
        let rpcpin = Running::start(&config).await;
        // Each within the limit is taken and has its bind answered, before the one over
        // the limit arrives.
        let mut open = Vec::new();
        for _ in 0..allowed {
            let mut s = Conn::connect(rpcpin.epm).await;
            s.write_all(pdus(NSPI_EPM_CLIENT)[0]).await.unwrap();
            assert_eq!(
                read_pdu(&mut s).await.expect("a bind_ack")[2],
                12,
                "{limit}"
            );
            open.push(s);
        }
        let mut over = Conn::connect(rpcpin.epm).await;
        assert!(
            read_to_end(&mut over).await.is_empty(),
            "{limit}: closed at once"
        );
        let refused = logs::about(&over, "refused").await;
        assert_eq!(refused["policy"], limit, "{refused}");
        // Those within the limit are served.
        open[0].write_all(pdus(NSPI_EPM_CLIENT)[1]).await.unwrap();
        assert_eq!(
            read_pdu(&mut open[0]).await.expect("a response")[2],
            2,
            "{limit}"
        );
        drop(open);
        rpcpin.stop().await;
    }
}

#[tokio::test]
async fn proxy_protocol_names_the_real_client_and_the_address_it_reached() {
    let backend = Replay::start(|_| epm_answers()).await;
    let config = TestConfig::new(backend.addr)
        .pin("directory", ["nspi"])
        .set("epm.proxy_protocol", true)
        .section("limits")
        .set("limits.max_connections_per_ip", 1);
    let rpcpin = Running::start(&config).await;
    let vip: SocketAddr = "203.0.113.7:135".parse().unwrap();

    // v2 and v1, from two different clients: the per-address limit of 1 counts each
    // real client, not the balancer's single address.
    let mut a = Conn::connect(rpcpin.epm).await;
    a.write_all(&proxy_v2("198.51.100.22:40000".parse().unwrap(), vip))
        .await
        .unwrap();
    let mut b = Conn::connect(rpcpin.epm).await;
    b.write_all(b"PROXY TCP4 198.51.100.23 203.0.113.7 40001 135\r\n")
        .await
        .unwrap();
    for s in [&mut a, &mut b] {
        send(s, NSPI_EPM_CLIENT).await;
        read_pdu(s).await.unwrap();
        let answer = read_pdu(s).await.unwrap();
        // The tower points at the address the client reached on the balancer.
        assert!(
            answer.windows(4).any(|w| w == [203, 0, 113, 7]),
            "{answer:02x?}"
        );
    }
    // A connection without the header is closed.
    let mut bare = Conn::connect(rpcpin.epm).await;
    bare.write_all(NSPI_EPM_CLIENT).await.unwrap();
    assert!(read_to_end(&mut bare).await.is_empty());
    rpcpin.stop().await;
}

#[tokio::test]
async fn idle_and_oversized_connections_are_closed() {
    let backend = Replay::start(|_| epm_answers()).await;
    let config = TestConfig::new(backend.addr)
        .pin("p", ["nspi"])
        .section("limits")
        .set("limits.idle_timeout", "300ms")
        .set("limits.max_fragment", 1024);
    let rpcpin = Running::start(&config).await;
    // Silent after its bind: closed once idle.
    let mut idle = Conn::connect(rpcpin.epm).await;
    idle.write_all(pdus(NSPI_EPM_CLIENT)[0]).await.unwrap();
    read_pdu(&mut idle).await.unwrap();
    assert!(read_to_end(&mut idle).await.is_empty());
    assert_eq!(logs::closed_because(&idle).await, "idle for 300ms");
    // A fragment announced larger than limits.max_fragment: closed before it is buffered.
    let mut big = Conn::connect(rpcpin.epm).await;
    let mut bind = pdus(NSPI_EPM_CLIENT)[0].to_vec();
    bind[8..10].copy_from_slice(&2000u16.to_le_bytes());
    big.write_all(&bind).await.unwrap();
    assert!(read_to_end(&mut big).await.is_empty());
    let why = logs::closed_because(&big).await;
    assert!(
        why.ends_with("fragment of 2000 bytes exceeds the limit of 1024"),
        "{why}"
    );
    assert_eq!(
        backend.connections(),
        1,
        "only the idle client reached the backend"
    );
    rpcpin.stop().await;
}

/// Outlook's NSPI bind (NTLM negotiate included) turned into an alter_context, call id
/// `call`, proposing the interface `uuid` at `version` as context `id`.
fn alter_context(call: u8, id: u8, uuid: [u8; 16], version: [u8; 4]) -> Vec<u8> {
    let mut a = pdus(NSPI_NTLM_CLIENT)[0].to_vec();
    a[2] = 14;
    a[12] = call;
    a[28] = id;
    a[32..48].copy_from_slice(&uuid);
    a[48..52].copy_from_slice(&version);
    a
}

/// `fault` is rpcpin's answer to call `call` on a context the backend never accepted: what
/// Samba answers, nca_s_unk_if, did-not-execute, context id 0.
fn assert_unknown_context_fault(fault: &[u8], call: u8) {
    assert_eq!(
        (fault[2], fault[3], fault[12]),
        (3, 0x23, call),
        "a fault for call {call}, first and last fragment, did not execute: {fault:02x?}"
    );
    assert_eq!(&fault[20..22], &[0, 0], "context id 0");
    assert_eq!(
        &fault[24..28],
        &0x1c01_0003u32.to_le_bytes(),
        "nca_s_unk_if"
    );
}

/// Two fragments of one request of call `call` on context `ctx`.
fn two_fragments(call: u32, ctx: u16) -> Vec<u8> {
    let mut out = Vec::new();
    for (flags, stub) in [(1u8, [1u8; 40]), (2, [2; 40])] {
        let start = out.len();
        rpcpin::wire::call::encode_request(
            &mut out,
            rpcpin::wire::Endian::Little,
            call,
            ctx,
            0,
            &stub,
        )
        .unwrap();
        out[start + 3] = flags;
    }
    out
}

#[tokio::test]
async fn pin_refuses_a_call_on_a_context_it_refused_and_drops_its_later_fragments() {
    let service = nspi_service().await;
    let config = TestConfig::new(closed_addr().await)
        .pin("d", ["nspi"])
        .set("pin[0].backend_port", u32::from(service.addr.port()));
    let rpcpin = Running::start(&config).await;
    let client = pdus(NSPI_NTLM_CLIENT);
    let mut s = Conn::connect(rpcpin.pins[0]).await;
    // The directory on context 0, accepted by the backend.
    s.write_all(&[client[0], client[1]].concat()).await.unwrap();
    assert_eq!(read_pdu(&mut s).await.unwrap()[2], 12, "a bind_ack");
    // winreg on context 1: refused by rpcpin, never forwarded.
    s.write_all(&alter_context(7, 1, WINREG_LE, [1, 0, 0, 0]))
        .await
        .unwrap();
    let resp = read_pdu(&mut s).await.unwrap();
    assert_eq!((resp[2], resp[12]), (15, 7), "an alter_context_resp");
    // A call on context 1 anyway: rpcpin's fault, as Samba's for an unknown context.
    let mut call = client[2].to_vec();
    call[12] = 9;
    call[20] = 1;
    s.write_all(&call).await.unwrap();
    assert_unknown_context_fault(&read_pdu(&mut s).await.unwrap(), 9);
    // In two fragments: one fault, the second fragment dropped.
    s.write_all(&two_fragments(10, 1)).await.unwrap();
    assert_unknown_context_fault(&read_pdu(&mut s).await.unwrap(), 10);
    // The directory's call on context 0 is served, and is the next answer the client gets.
    s.write_all(client[2]).await.unwrap();
    assert_eq!(read_pdu(&mut s).await.unwrap(), pdus(NSPI_NTLM_SERVER)[1]);
    assert_eq!(
        service.received(),
        client.concat(),
        "nothing on context 1 reached the backend"
    );
    let refused = logs::about(&s, "refused").await;
    assert_eq!(refused["policy"], "interface", "{refused}");
    rpcpin.stop().await;
}

#[tokio::test]
async fn pin_answers_pipelined_calls_in_call_order() {
    let service = nspi_service().await;
    let config = TestConfig::new(closed_addr().await)
        .pin("d", ["nspi"])
        .set("pin[0].backend_port", u32::from(service.addr.port()));
    let rpcpin = Running::start(&config).await;
    let client = pdus(NSPI_NTLM_CLIENT);
    let mut s = Conn::connect(rpcpin.pins[0]).await;
    // In one write: the bind (forwarded), winreg's alter_context (refused by rpcpin) and a
    // call on context 0, which the backend has not accepted yet (refused by rpcpin).
    let mut call = client[2].to_vec();
    call[12] = 9;
    let pipelined = [
        client[0],
        &alter_context(7, 1, WINREG_LE, [1, 0, 0, 0]),
        &call,
    ];
    s.write_all(&pipelined.concat()).await.unwrap();
    // rpcpin's two answers wait behind the backend's bind_ack.
    let ack = read_pdu(&mut s).await.unwrap();
    assert_eq!((ack[2], ack[12]), (12, client[0][12]), "the bind_ack first");
    let resp = read_pdu(&mut s).await.unwrap();
    assert_eq!((resp[2], resp[12]), (15, 7), "then the alter_context_resp");
    assert_unknown_context_fault(&read_pdu(&mut s).await.unwrap(), 9);
    assert_eq!(
        service.received(),
        client[0],
        "only the bind reached the backend"
    );
    rpcpin.stop().await;
}

#[tokio::test]
async fn pin_refuses_an_alter_context_that_redefines_a_context() {
    let service = nspi_service().await;
    let config = TestConfig::new(closed_addr().await)
        .pin("d", ["nspi", "emsmdb"])
        .set("pin[0].backend_port", u32::from(service.addr.port()));
    let rpcpin = Running::start(&config).await;
    let client = pdus(NSPI_NTLM_CLIENT);
    let mut s = Conn::connect(rpcpin.pins[0]).await;
    s.write_all(&[client[0], client[1]].concat()).await.unwrap();
    assert_eq!(read_pdu(&mut s).await.unwrap()[2], 12, "a bind_ack");
    // Context 0 again, for emsmdb 0.81 (which the pin carries) instead of the directory.
    let emsmdb = [
        0x00, 0xdb, 0xf1, 0xa4, 0x47, 0xca, 0x67, 0x10, 0xb3, 0x1f, 0x00, 0xdd, 0x01, 0x06, 0x62,
        0xda,
    ];
    s.write_all(&alter_context(7, 0, emsmdb, [0, 0, 81, 0]))
        .await
        .unwrap();
    let resp = read_pdu(&mut s).await.unwrap();
    assert_eq!((resp[2], resp[12]), (15, 7), "an alter_context_resp");
    assert_eq!(
        &resp[resp.len() - 24..][..4],
        &[2, 0, 1, 0],
        "one result, a provider rejection"
    );
    let refused = logs::about(&s, "refused").await;
    assert_eq!(
        (refused["policy"].as_str(), refused["context_id"].as_u64()),
        (Some("context"), Some(0)),
        "{refused}"
    );
    // Context 0 is still the directory's, at rpcpin as at the backend.
    s.write_all(client[2]).await.unwrap();
    assert_eq!(read_pdu(&mut s).await.unwrap(), pdus(NSPI_NTLM_SERVER)[1]);
    assert_eq!(service.received(), client.concat(), "never forwarded");
    rpcpin.stop().await;
}

#[tokio::test]
async fn port_135_refuses_calls_on_contexts_not_accepted_by_the_backend() {
    let backend = Replay::start(|_| epm_answers()).await;
    let rpcpin = Running::start(&TestConfig::new(backend.addr).pin("p", ["nspi"])).await;
    let mut s = Conn::connect(rpcpin.epm).await;
    // ept_map pipelined behind its bind: its context is not accepted yet.
    let (bind, map) = (pdus(NSPI_EPM_CLIENT)[0], pdus(NSPI_EPM_CLIENT)[1]);
    s.write_all(&[bind, map].concat()).await.unwrap();
    // The backend's bind_ack, then rpcpin's fault: answers in call order.
    assert_eq!(read_pdu(&mut s).await.unwrap()[2], 12, "a bind_ack first");
    assert_unknown_context_fault(&read_pdu(&mut s).await.unwrap(), 1);
    // winreg on context 1, refused by the gate; a call on it, whole or in fragments.
    s.write_all(&alter_context(7, 1, WINREG_LE, [1, 0, 0, 0]))
        .await
        .unwrap();
    let resp = read_pdu(&mut s).await.unwrap();
    assert_eq!((resp[2], resp[12]), (15, 7), "an alter_context_resp");
    let mut on_winreg = map.to_vec();
    on_winreg[12] = 9;
    on_winreg[20] = 1;
    s.write_all(&on_winreg).await.unwrap();
    assert_unknown_context_fault(&read_pdu(&mut s).await.unwrap(), 9);
    s.write_all(&two_fragments(10, 1)).await.unwrap();
    assert_unknown_context_fault(&read_pdu(&mut s).await.unwrap(), 10);
    // Once the bind is answered, ept_map on context 0 is served.
    s.write_all(map).await.unwrap();
    assert_eq!(read_pdu(&mut s).await.unwrap()[2], 2, "a response");
    assert_eq!(backend.received(), NSPI_EPM_CLIENT, "bind and one ept_map");
    let refused = logs::about(&s, "refused").await;
    assert_eq!(
        (refused["policy"].as_str(), refused["context_id"].as_u64()),
        (Some("context"), Some(0)),
        "{refused}"
    );
    rpcpin.stop().await;
}
