//! The relay with a pin's policy, cutting PDUs through, against the same policy fed whole
//! PDUs: a stream of allowed and refused calls (in fragments, and 65,535-byte ones), split
//! at every byte or in random chunks, must reach the backend and the client exactly as the
//! whole-PDU path passes it — nothing the policy refuses gets through, and the answers
//! come in call order.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{duplex, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

use super::CONFIG;
use crate::config::Config;
use crate::pdu_stream::PduReader;
use crate::proxy::generation::PinRuntime;
use crate::proxy::pin::{first_bind, FirstBind, PinPolicy};
use crate::proxy::relay::{Outbox, Policy, Relay, Relayed};
use crate::wire::bind::{
    encode_bind, encode_bind_ack, BindAckFields, ContextProposal, ContextResult, ResultEntry,
};
use crate::wire::call::{encode_fault, encode_request, encode_response, status};
use crate::wire::frame::next_pdu;
use crate::wire::pdu::flags;
use crate::wire::{Endian, PacketType, SyntaxId};

const E: Endian = Endian::Little;
const WHOLE: u8 = flags::FIRST_FRAG | flags::LAST_FRAG;
/// The stub that makes a request or a response 65,535 bytes long.
const BIG: usize = 65535 - 24;

/// The pin's interfaces: context 0 is nspi (every operation), context 1 samr (0, 1, 5).
fn pin() -> Arc<PinRuntime> {
    let config = Config::parse(CONFIG).expect("the sequence check's configuration");
    Arc::new(PinRuntime {
        config: config.pins[0].clone(),
        public_port: 6004,
    })
}

fn syntaxes() -> [SyntaxId; 2] {
    let pin = pin();
    [0, 1].map(|i| pin.config.interfaces[i].query_syntax())
}

fn bind() -> Vec<u8> {
    let transfer = [SyntaxId::NDR];
    let proposals: Vec<ContextProposal<'_>> = (0..)
        .zip(syntaxes())
        .map(|(id, abstract_syntax)| ContextProposal {
            id,
            abstract_syntax,
            transfer_syntaxes: &transfer,
        })
        .collect();
    let mut out = Vec::new();
    encode_bind(&mut out, E, 1, 5840, &proposals).expect("a bind");
    out
}

fn bind_ack() -> Vec<u8> {
    let accepted = ResultEntry {
        result: ContextResult::Acceptance,
        reason: 0,
        transfer_syntax: SyntaxId::NDR,
    };
    let fields = BindAckFields {
        ptype: PacketType::BindAck,
        endian: E,
        call_id: 1,
        max_xmit_frag: 5840,
        max_recv_frag: 5840,
        assoc_group_id: 0x1234,
        secondary_addr: b"49154\0",
        results: &[accepted, accepted],
    };
    let mut out = Vec::new();
    encode_bind_ack(&mut out, &fields).expect("a bind_ack");
    out
}

fn request(call_id: u32, ctx: u16, op: u16, frag: u8, stub: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let fill = vec![call_id as u8; stub];
    encode_request(&mut out, E, call_id, ctx, op, &fill).expect("a request");
    out[3] = frag;
    out
}

fn response(call_id: u32, frag: u8, stub: usize) -> Vec<u8> {
    let mut out = Vec::new();
    encode_response(&mut out, E, call_id, 0, &vec![0xa0 | call_id as u8; stub]).unwrap();
    out[3] = frag;
    out
}

fn fault(call_id: u32) -> Vec<u8> {
    let mut out = Vec::new();
    encode_fault(&mut out, E, call_id, 0, status::NCA_S_FAULT_OTHER).expect("a fault");
    out
}

/// A client's PDU, and whether the pin lets it through.
type Judged = (Vec<u8>, bool);

/// The client's PDUs after its bind, each with whether the pin lets it through, and the
/// backend's answers to those it gets, in call order; `big` adds 65,535-byte PDUs.
fn calls(big: bool) -> (Vec<Judged>, Vec<Vec<u8>>) {
    let large = if big { BIG } else { 40 };
    let client = vec![
        // nspi, any operation: allowed.
        (request(2, 0, 3, WHOLE, 100), true),
        // samr operation 2, in three fragments: refused on the first, the rest dropped.
        (request(3, 1, 2, flags::FIRST_FRAG, 30), false),
        (request(3, 1, 2, 0, large), false),
        (request(3, 1, 2, flags::LAST_FRAG, 7), false),
        // samr operation 5, in two fragments: allowed.
        (request(4, 1, 5, flags::FIRST_FRAG, large), true),
        (request(4, 1, 5, flags::LAST_FRAG, 9), true),
        // A context never bound: refused.
        (request(5, 7, 0, WHOLE, 12), false),
        // nspi in three fragments: allowed.
        (request(6, 0, 1, flags::FIRST_FRAG, 50), true),
        (request(6, 0, 1, 0, 0), true),
        (request(6, 0, 1, flags::LAST_FRAG, 60), true),
        // samr operation 9, one large fragment: refused.
        (request(7, 1, 9, WHOLE, large), false),
        // samr operation 1: allowed, with no stub at all.
        (request(8, 1, 1, WHOLE, 0), true),
    ];
    let backend = vec![
        response(2, flags::FIRST_FRAG, 70),
        response(2, flags::LAST_FRAG, 3),
        response(4, flags::FIRST_FRAG, large),
        response(4, flags::LAST_FRAG, 33),
        fault(6),
        response(8, WHOLE, 8),
    ];
    (client, backend)
}

fn policy() -> PinPolicy {
    let bind = bind();
    let mut buf = BytesMut::from(&bind[..]);
    let first = next_pdu(&mut buf, 65535).unwrap().unwrap();
    match first_bind(pin(), &first).unwrap() {
        FirstBind::Forward { policy, .. } => *policy,
        FirstBind::Refused(_) => panic!("the bind is refused"),
    }
}

/// What the whole-PDU path sends: the client's first answer (the bind_ack), what the
/// backend gets, and what the client gets after the bind_ack.
fn whole_path(client: &[Vec<u8>], backend: &[Vec<u8>]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut policy = policy();
    let mut pass = |bytes: &[u8], from_client: bool, to: &mut Vec<u8>, back: &mut Vec<u8>| {
        let mut buf = BytesMut::from(bytes);
        let pdu = next_pdu(&mut buf, 65535).unwrap().unwrap();
        let mut out = Outbox::default();
        match from_client {
            true => policy.request(pdu, &mut out).unwrap(),
            false => policy.answer(pdu, &mut out).unwrap(),
        }
        to.extend_from_slice(out.forwarded());
        out.reply.iter().for_each(|r| back.extend_from_slice(r));
    };
    let (mut ack, mut to_backend, mut to_client) = (Vec::new(), Vec::new(), Vec::new());
    pass(&bind_ack(), false, &mut ack, &mut Vec::new());
    for pdu in client {
        pass(pdu, true, &mut to_backend, &mut to_client);
    }
    let mut none = Vec::new();
    for pdu in backend {
        pass(pdu, false, &mut to_client, &mut none);
    }
    assert!(none.is_empty(), "the policy answered the backend");
    (ack, to_backend, to_client)
}

/// Writes `bytes` in the pieces `cuts` marks, letting the relay run after each.
async fn write_in(to: &mut (impl AsyncWrite + Unpin), bytes: &[u8], cuts: &[Range<usize>]) {
    for piece in cuts {
        to.write_all(&bytes[piece.clone()]).await.unwrap();
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }
}

/// Reads exactly `len` bytes, or fails the test after a while.
async fn read_len(
    from: &mut (impl tokio::io::AsyncRead + Unpin),
    len: usize,
    what: &str,
) -> Vec<u8> {
    let mut got = vec![0; len];
    tokio::time::timeout(Duration::from_secs(20), from.read_exact(&mut got))
        .await
        .unwrap_or_else(|_| panic!("{what}: fewer than {len} bytes came"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    got
}

/// A pin's relay after its bind, the bind_ack written in the pieces `cut` makes of it and
/// read as `ack`; returns the client's and the backend's ends.
async fn start(
    ack: &[u8],
    cut: impl Fn(usize) -> Vec<Range<usize>>,
) -> (DuplexStream, DuplexStream, JoinHandle<Relayed>) {
    let (client, mut client_far) = duplex(1 << 18);
    let (backend, mut backend_far) = duplex(1 << 18);
    let relay = Relay::new(
        PduReader::new(client, 65535),
        PduReader::new(backend, 65535),
        policy(),
        Duration::from_secs(60),
        0,
    );
    let relay = tokio::spawn(relay);
    let bind_ack = bind_ack();
    write_in(&mut backend_far, &bind_ack, &cut(bind_ack.len())).await;
    assert_eq!(read_len(&mut client_far, ack.len(), "bind_ack").await, ack);
    (client_far, backend_far, relay)
}

/// Relays `client` and `backend` (the bind_ack first), each written in the pieces `cut`
/// makes of it, and checks both receivers got exactly what the whole-PDU path sends.
async fn relay_matches(big: bool, cut: impl Fn(usize) -> Vec<Range<usize>>) {
    let (client_pdus, backend_pdus) = calls(big);
    let allowed: Vec<u8> = client_pdus
        .iter()
        .filter(|p| p.1)
        .flat_map(|p| p.0.clone())
        .collect();
    let client_pdus: Vec<Vec<u8>> = client_pdus.into_iter().map(|p| p.0).collect();
    let (ack, to_backend, to_client) = whole_path(&client_pdus, &backend_pdus);
    assert_eq!(
        to_backend, allowed,
        "the whole-PDU path forwards the allowed calls"
    );
    let (client_stream, backend_stream) = (client_pdus.concat(), backend_pdus.concat());

    let (mut client_far, mut backend_far, relay) = start(&ack, &cut).await;
    write_in(&mut client_far, &client_stream, &cut(client_stream.len())).await;
    let got = read_len(&mut backend_far, to_backend.len(), "backend").await;
    assert!(
        got == to_backend,
        "the backend got other bytes than the allowed calls"
    );
    write_in(
        &mut backend_far,
        &backend_stream,
        &cut(backend_stream.len()),
    )
    .await;
    let got = read_len(&mut client_far, to_client.len(), "client").await;
    assert!(got == to_client, "the client got other answers");
    // Nothing more either way: the client's half-close reaches the backend next.
    client_far.shutdown().await.unwrap();
    let mut rest = Vec::new();
    backend_far.read_to_end(&mut rest).await.unwrap();
    assert!(
        rest.is_empty(),
        "{} more bytes reached the backend",
        rest.len()
    );
    drop(backend_far);
    client_far.read_to_end(&mut rest).await.unwrap();
    assert!(
        rest.is_empty(),
        "{} more bytes reached the client",
        rest.len()
    );
    let done = relay.await.unwrap();
    assert_eq!(done.ended.unwrap(), "client closed");
}

/// The answers the client gets, as (type, call id): each call answered in call order.
#[test]
fn the_client_gets_every_answer_in_call_order() {
    let (client, backend) = calls(false);
    let client: Vec<Vec<u8>> = client.into_iter().map(|p| p.0).collect();
    let (_, _, to_client) = whole_path(&client, &backend);
    let mut buf = BytesMut::from(&to_client[..]);
    let mut got = Vec::new();
    while let Some(pdu) = next_pdu(&mut buf, 65535).unwrap() {
        got.push((pdu.ptype(), pdu.call_id()));
    }
    use PacketType::{Fault, Response};
    let want = [
        (Response, 2),
        (Response, 2),
        (Fault, 3),
        (Response, 4),
        (Response, 4),
        (Fault, 5),
        (Fault, 6),
        (Fault, 7),
        (Response, 8),
    ];
    assert_eq!(got, want);
}

#[tokio::test]
async fn split_at_every_byte() {
    let (client, backend) = calls(false);
    let longest = [
        client.iter().map(|p| p.0.len()).sum::<usize>(),
        backend.concat().len(),
    ];
    for at in 0..=longest[0].max(longest[1]) {
        relay_matches(false, |len| {
            let at = at.min(len);
            vec![0..at, at..len]
        })
        .await;
    }
}

#[tokio::test]
async fn one_byte_at_a_time() {
    relay_matches(false, |len| (0..len).map(|i| i..i + 1).collect()).await;
}

#[tokio::test]
async fn random_chunks_with_65535_byte_pdus() {
    for seed in 1..=12u64 {
        // Small pieces for some seeds, up to a few 64 KiB reads' worth for others.
        let most = [7, 300, 5000, 70000][seed as usize % 4];
        relay_matches(true, |len| {
            let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ len as u64;
            let mut cuts = Vec::new();
            let mut at = 0;
            while at < len {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let n = 1 + (state >> 33) as usize % most;
                cuts.push(at..(at + n).min(len));
                at += n;
            }
            cuts
        })
        .await;
    }
}

/// A call refused while the backend's answer to the one before is on its way (that call
/// already answered, as far as the call order knows: its head said it is the last
/// fragment) is answered after the last byte of that answer, not inside it.
#[tokio::test]
async fn an_answer_made_inside_a_passing_pdu_waits_for_its_end() {
    let allowed = request(2, 0, 3, WHOLE, 10);
    let refused = request(3, 1, 9, WHOLE, 10);
    let answer = response(2, WHOLE, BIG);
    // Enough of it to go on before the rest.
    const HALF: usize = 30000;
    let (ack, to_backend, to_client) = whole_path(&[allowed.clone(), refused.clone()], &[]);
    assert_eq!(to_backend, allowed);
    assert!(to_client.is_empty(), "the refusal waits behind call 2");
    let (_, _, fault) = whole_path(std::slice::from_ref(&refused), &[]);
    let whole = |len| std::iter::once(0..len).collect();
    let (mut client_far, mut backend_far, relay) = start(&ack, whole).await;
    client_far.write_all(&allowed).await.unwrap();
    assert_eq!(
        read_len(&mut backend_far, allowed.len(), "call 2").await,
        allowed
    );
    // The head of the answer, and some of its body: it passes, call 2 is answered.
    backend_far.write_all(&answer[..HALF]).await.unwrap();
    assert_eq!(
        read_len(&mut client_far, HALF, "the answer's head").await,
        answer[..HALF]
    );
    // Refused now, with nothing unanswered: answered at once, but after the answer.
    client_far.write_all(&refused).await.unwrap();
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
    backend_far.write_all(&answer[HALF..]).await.unwrap();
    let got = read_len(
        &mut client_far,
        answer.len() - HALF + fault.len(),
        "the rest",
    )
    .await;
    assert!(
        got[..answer.len() - HALF] == answer[HALF..],
        "the answer was cut into"
    );
    assert_eq!(got[answer.len() - HALF..], fault);
    drop(client_far);
    drop(backend_far);
    relay.await.unwrap().ended.unwrap();
}
