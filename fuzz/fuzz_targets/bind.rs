//! bind / alter_context, bind_ack / alter_context_resp and bind_nak parsing, and the
//! re-encodings a pin applies: the bind_ack secondary-address rewrite, dropping contexts from
//! a bind (`encode_keeping`) and splicing results into a bind_ack (`encode_with_results`).
//!
//! Input: `n`, then `n` bytes of secondary address (their bits also choose which contexts
//! or results to keep), then a PDU.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rpcpin::wire::bind::{
    encode_bind, encode_bind_ack, reason, BindAck, BindAckFields, BindNak, BindRequest,
    ContextProposal, ResultEntry,
};
use rpcpin::wire::pdu::HEADER_LEN;
use rpcpin::wire::{EncodeError, PacketType, SyntaxId};

/// Junk already in the output buffer: encoders append and must leave it alone.
const PREFIX: &[u8] = b"\xaa\xbb\xcc";

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n).min(rest.len());
    let (addr, pdu) = rest.split_at(n);
    check_bind(pdu, addr);
    check_bind_ack(pdu, addr);
    check_bind_nak(pdu);
});

/// The `i`th bit of `bits` (1 beyond its end).
fn bit(bits: &[u8], i: usize) -> bool {
    bits.get(i / 8).is_none_or(|b| b >> (i % 8) & 1 == 1)
}

fn check_bind(bytes: &[u8], bits: &[u8]) {
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

    let original = p.as_bytes();
    let contexts_end = 28
        + contexts
            .iter()
            .map(|(_, _, ts)| 24 + 20 * ts.len())
            .sum::<usize>();
    assert!(contexts_end <= p.body_end());

    // Keeping every context reproduces the PDU; a wrong number of flags is refused.
    let mut out = PREFIX.to_vec();
    bind.encode_keeping(&vec![true; contexts.len()], &mut out)
        .expect("keeping every context");
    assert_eq!(&out[..PREFIX.len()], PREFIX);
    assert_eq!(&out[PREFIX.len()..], original, "keeping every context changed the PDU");
    assert!(bind.encode_keeping(&vec![true; contexts.len() + 1], &mut out).is_err());

    // Keeping some: those contexts, in order, and every other byte as it was.
    let keep: Vec<bool> = (0..contexts.len()).map(|i| bit(bits, i)).collect();
    let mut out = PREFIX.to_vec();
    bind.encode_keeping(&keep, &mut out).expect("keeping some contexts");
    let enc = &out[PREFIX.len()..];
    let kept = BindRequest::parse(enc).expect("a bind with contexts dropped parses");
    let want: Vec<_> = contexts
        .iter()
        .zip(&keep)
        .filter(|(_, &k)| k)
        .map(|(c, _)| c.clone())
        .collect();
    let got: Vec<_> = kept
        .contexts()
        .map(|c| (c.id(), c.abstract_syntax(), c.transfer_syntaxes().collect::<Vec<_>>()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(kept.pdu().frag_len(), enc.len());
    assert_eq!(kept.pdu().auth_len(), p.auth_len());
    assert_eq!(kept.pdu().auth_trailer(), p.auth_trailer());
    assert_eq!(enc[..8], original[..8]);
    assert_eq!(enc[10..HEADER_LEN + 8], original[10..HEADER_LEN + 8]);
    assert_eq!(usize::from(enc[HEADER_LEN + 8]), want.len());
    assert_eq!(enc[HEADER_LEN + 9..28], original[HEADER_LEN + 9..28]);
    let tail = &original[contexts_end..];
    assert!(enc.len() >= tail.len());
    assert_eq!(&enc[enc.len() - tail.len()..], tail, "bytes after the contexts changed");

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
        Err(EncodeError::TooLarge { .. }) => {}
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
        Err(EncodeError::TooLarge { .. }) if new_len > usize::from(u16::MAX) => return,
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

    // Splicing the same results reproduces the PDU; others parse back, the rest unmoved.
    let mut out = PREFIX.to_vec();
    ack.encode_with_results(&results, &mut out).expect("the same results");
    assert_eq!(&out[PREFIX.len()..], original, "splicing the same results changed the PDU");
    let mut spliced: Vec<ResultEntry> = results
        .iter()
        .enumerate()
        .filter(|(i, _)| bit(addr, *i))
        .map(|(_, r)| *r)
        .collect();
    if spliced.len() < 255 && !bit(addr, 255) {
        spliced.push(ResultEntry::rejected(reason::ABSTRACT_SYNTAX_NOT_SUPPORTED));
    }
    let mut out = PREFIX.to_vec();
    ack.encode_with_results(&spliced, &mut out).expect("splicing results");
    let enc = &out[PREFIX.len()..];
    let again = BindAck::parse(enc).expect("a bind_ack with spliced results parses");
    assert_eq!(again.results().collect::<Vec<_>>(), spliced);
    assert_eq!(again.secondary_addr(), sec);
    assert_eq!(again.pdu().frag_len(), enc.len());
    assert_eq!(again.pdu().auth_len(), p.auth_len());
    assert_eq!(again.pdu().auth_trailer(), p.auth_trailer());
    assert_eq!(enc[..8], original[..8]);
    assert_eq!(enc[10..results_at], original[10..results_at]);
    let after = results_at + 4 + 24 * results.len();
    let rest = &original[after..];
    assert_eq!(enc.len(), results_at + 4 + 24 * spliced.len() + rest.len());
    assert_eq!(&enc[enc.len() - rest.len()..], rest, "bytes after the results changed");

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
        Err(EncodeError::TooLarge { .. }) => {}
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
