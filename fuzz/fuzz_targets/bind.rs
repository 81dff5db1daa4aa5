//! bind / alter_context, bind_ack / alter_context_resp and bind_nak parsing, and the
//! bind_ack secondary-address rewrite a pin applies to every bind_ack it forwards.
//!
//! Input: `n`, then `n` bytes of secondary address, then a PDU.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rpcpin::wire::bind::{
    encode_bind, encode_bind_ack, BindAck, BindAckFields, BindNak, BindRequest, ContextProposal,
    ResultEntry,
};
use rpcpin::wire::header::HEADER_LEN;
use rpcpin::wire::{Error, PacketType, SyntaxId};

/// Junk already in the output buffer: encoders append and must leave it alone.
const PREFIX: &[u8] = b"\xaa\xbb\xcc";

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n).min(rest.len());
    let (addr, pdu) = rest.split_at(n);
    check_bind(pdu);
    check_bind_ack(pdu, addr);
    check_bind_nak(pdu);
});

fn check_bind(bytes: &[u8]) {
    let bind = match BindRequest::parse(bytes) {
        Ok(b) => b,
        Err(_) => return,
    };
    let p = *bind.pdu();
    assert!(matches!(p.ptype(), PacketType::Bind | PacketType::AlterContext));
    let _ = (bind.max_xmit_frag(), bind.max_recv_frag(), bind.assoc_group_id());
    let mut contexts = Vec::new();
    for ctx in bind.contexts() {
        let ts: Vec<SyntaxId> = ctx.transfer_syntaxes().collect();
        assert!(!ts.is_empty(), "a checked context has a transfer syntax");
        contexts.push((ctx.id(), ctx.abstract_syntax(), ts));
    }
    assert_eq!(contexts.len(), usize::from(bytes[HEADER_LEN + 8]));

    // What rpcpin proposes itself must parse back to the same contexts.
    let proposals: Vec<ContextProposal<'_>> = contexts
        .iter()
        .map(|(id, a, ts)| ContextProposal {
            id: *id,
            abstract_syntax: *a,
            transfer_syntaxes: ts,
        })
        .collect();
    let mut out = PREFIX.to_vec();
    match encode_bind(&mut out, p.endian(), p.call_id(), bind.max_xmit_frag(), &proposals) {
        Ok(()) => {
            assert_eq!(&out[..PREFIX.len()], PREFIX);
            let again = BindRequest::parse(&out[PREFIX.len()..]).expect("own bind parses");
            assert_eq!(again.pdu().frag_len(), out.len() - PREFIX.len());
            assert_eq!(again.pdu().call_id(), p.call_id());
            let back: Vec<_> = again
                .contexts()
                .map(|c| (c.id(), c.abstract_syntax(), c.transfer_syntaxes().collect::<Vec<_>>()))
                .collect();
            assert_eq!(back, contexts);
        }
        Err(Error::TooLarge { .. }) => {}
        Err(e) => panic!("encode_bind: {e:?}"),
    }
}

fn check_bind_ack(bytes: &[u8], addr: &[u8]) {
    let ack = match BindAck::parse(bytes) {
        Ok(a) => a,
        Err(_) => return,
    };
    let p = *ack.pdu();
    assert!(matches!(p.ptype(), PacketType::BindAck | PacketType::AlterContextResp));
    let original = p.as_bytes();
    let _ = ack.assoc_group_id();
    let sec = ack.secondary_addr();
    let results: Vec<ResultEntry> = ack.results().collect();
    let results_at = align4(HEADER_LEN + 10 + sec.len());
    assert_eq!(results.len(), usize::from(original[results_at]));
    let tail = &original[results_at..];

    // Identity: the same address reproduces the PDU byte for byte.
    let mut out = PREFIX.to_vec();
    ack.encode_with_secondary_addr(sec, &mut out).expect("identity re-encode");
    assert_eq!(&out[..PREFIX.len()], PREFIX);
    assert_eq!(&out[PREFIX.len()..], original, "identity re-encode changed the PDU");

    // Another address: only the address, its padding and frag_length may change.
    let mut out = PREFIX.to_vec();
    let new_len = align4(HEADER_LEN + 10 + addr.len()) + tail.len();
    match ack.encode_with_secondary_addr(addr, &mut out) {
        Ok(()) => {}
        Err(Error::TooLarge { .. }) if new_len > usize::from(u16::MAX) => return,
        Err(e) => panic!("encode_with_secondary_addr({addr:02x?}): {e:?}"),
    }
    assert_eq!(&out[..PREFIX.len()], PREFIX);
    let enc = &out[PREFIX.len()..];
    let again = BindAck::parse(enc).expect("re-encoded bind_ack parses");
    assert_eq!(again.secondary_addr(), addr);
    assert_eq!(again.results().collect::<Vec<_>>(), results);
    assert_eq!(again.pdu().auth_len(), p.auth_len());
    assert_eq!(again.pdu().frag_len(), enc.len());
    assert_eq!(again.pdu().auth_trailer(), p.auth_trailer());
    assert_eq!(again.assoc_group_id(), ack.assoc_group_id());
    assert!(enc.len() >= tail.len());
    assert_eq!(&enc[enc.len() - tail.len()..], tail, "bytes after the results moved or changed");
    assert_eq!(enc.len(), if addr.len() == sec.len() { original.len() } else { new_len });
    // The header and fixed fields, frag_length aside.
    assert_eq!(enc[..8], original[..8]);
    assert_eq!(enc[10..HEADER_LEN + 8], original[10..HEADER_LEN + 8]);

    // What rpcpin sends itself: its own bind_ack carrying these results parses back.
    let mut own = PREFIX.to_vec();
    let fields = BindAckFields {
        ptype: p.ptype(),
        endian: p.endian(),
        call_id: p.call_id(),
        max_xmit_frag: 5840,
        max_recv_frag: 5840,
        assoc_group_id: ack.assoc_group_id(),
        secondary_addr: addr,
        results: &results,
    };
    match encode_bind_ack(&mut own, &fields) {
        Ok(()) => {
            let a = BindAck::parse(&own[PREFIX.len()..]).expect("own bind_ack parses");
            assert_eq!(a.secondary_addr(), addr);
            assert_eq!(a.results().collect::<Vec<_>>(), results);
            assert_eq!(a.pdu().frag_len(), own.len() - PREFIX.len());
        }
        Err(Error::TooLarge { .. }) => {}
        Err(e) => panic!("encode_bind_ack: {e:?}"),
    }
}

fn check_bind_nak(bytes: &[u8]) {
    if let Ok(nak) = BindNak::parse(bytes) {
        assert_eq!(nak.pdu().ptype(), PacketType::BindNak);
        let _ = nak.reason();
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}
