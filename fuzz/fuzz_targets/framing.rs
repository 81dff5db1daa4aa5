//! Framing: a byte stream cut into PDUs whole and in input-chosen chunks must give the same
//! PDUs; every whole PDU must pass `Pdu::new_checked`, and its accessors must agree with its
//! bytes (ptype, flags, frag_len, auth_len, call_id, body, body_end, auth_trailer, ends_call),
//! as must `Request::parse`, `Response::parse` and `response_stub_range`.
//!
//! Input: `sel`, then `sel & 0x0f` chunk-size bytes (chunk = byte + 1; none: 1 byte at a time),
//! then the stream. `sel >> 4` bounds the fragment size: 0 is `MAX_FRAG_LEN`, else `n * 32`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rpcpin::wire::frame::{next_pdu_len, MAX_FRAG_LEN};
use rpcpin::wire::pdu::{flags, HEADER_LEN, SEC_TRAILER_LEN};
use rpcpin::wire::call::{response_stub_range, Request, Response};
use rpcpin::wire::{Endian, Error, PacketType, Pdu};

/// How a stream ends: cleanly between PDUs or mid-PDU (`Ok(leftover bytes)`), or on an error.
type End = Result<usize, Error>;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(sel & 0x0f).min(rest.len());
    let (sizes, stream) = rest.split_at(n);
    let max_frag = match sel >> 4 {
        0 => MAX_FRAG_LEN,
        k => usize::from(k) * 32,
    };

    let (whole_lens, whole_end) = split_whole(stream, max_frag);
    let (chunk_lens, chunk_end) = split_chunked(stream, sizes, max_frag);
    assert_eq!(whole_lens, chunk_lens, "PDU lengths differ, whole vs chunked");
    assert_eq!(whole_end, chunk_end, "stream ends differently, whole vs chunked");

    let mut at = 0;
    for &len in &whole_lens {
        assert!((HEADER_LEN..=max_frag).contains(&len), "len {len}");
        // The PDU alone, and the PDU followed by the rest of the stream.
        check_pdu(&stream[at..at + len], len);
        check_pdu(&stream[at..], len);
        at += len;
    }
    match whole_end {
        Ok(left) => assert_eq!(at + left, stream.len()),
        Err(_) => assert!(at < stream.len()),
    }
});

fn split_whole(stream: &[u8], max_frag: usize) -> (Vec<usize>, End) {
    let mut lens = Vec::new();
    let mut at = 0;
    loop {
        match next_pdu_len(&stream[at..], max_frag) {
            Ok(Some(len)) => {
                assert!(len <= stream.len() - at);
                lens.push(len);
                at += len;
            }
            Ok(None) => return (lens, Ok(stream.len() - at)),
            Err(e) => return (lens, Err(e)),
        }
    }
}

fn split_chunked(stream: &[u8], sizes: &[u8], max_frag: usize) -> (Vec<usize>, End) {
    let mut lens = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < stream.len() {
        let size = sizes.get(i % sizes.len().max(1)).map_or(1, |&s| usize::from(s) + 1);
        i += 1;
        let end = (at + size).min(stream.len());
        buf.extend_from_slice(&stream[at..end]);
        at = end;
        loop {
            match next_pdu_len(&buf, max_frag) {
                Ok(Some(len)) => {
                    assert!(len <= buf.len());
                    lens.push(len);
                    buf.drain(..len);
                }
                Ok(None) => break,
                Err(e) => return (lens, Err(e)),
            }
        }
    }
    (lens, Ok(buf.len()))
}

fn check_pdu(bytes: &[u8], len: usize) {
    let pdu = Pdu::new_checked(bytes).expect("a PDU next_pdu_len framed must pass new_checked");
    let ptype = pdu.ptype();
    let f = pdu.flags();
    assert_eq!(f, bytes[3]);
    assert_eq!(u8::from(ptype), bytes[2]);
    let endian = pdu.endian();
    assert_eq!(endian, Endian::from_drep(pdu.drep()));
    assert_eq!(pdu.frag_len(), len);
    assert_eq!(pdu.as_bytes(), &bytes[..len]);
    let auth_len = pdu.auth_len();
    let _ = pdu.call_id();
    let body_end = pdu.body_end();
    assert!((HEADER_LEN..=len).contains(&body_end));
    let body = pdu.body();
    assert_eq!(body.len(), body_end - HEADER_LEN);
    match pdu.auth_trailer() {
        None => assert_eq!(auth_len, 0),
        Some(t) => {
            assert!(auth_len > 0);
            assert_eq!(body_end + SEC_TRAILER_LEN + auth_len, len);
            assert_eq!(t, (bytes[body_end], bytes[body_end + 1], bytes[body_end + 2]));
        }
    }
    // LAST_FRAG ends a call; neither flag ends one only when none is in progress (NT4).
    let last = f & flags::LAST_FRAG != 0;
    let neither = f & (flags::FIRST_FRAG | flags::LAST_FRAG) == 0;
    assert_eq!(pdu.ends_call(true), last);
    assert_eq!(pdu.ends_call(false), last || neither);
    let _ = format!("{ptype}");

    // A copy with frag_length set to what it already is must be the same bytes.
    let mut copy = bytes[..len].to_vec();
    let mut view = Pdu::new_checked(&mut copy[..]).unwrap();
    view.set_frag_len(len as u16);
    assert_eq!(view.as_bytes_mut().len(), len);
    assert_eq!(copy, &bytes[..len]);

    match Request::parse(bytes) {
        Ok(req) => {
            assert_eq!(ptype, PacketType::Request);
            let _ = (req.context_id(), req.opnum());
            let object = req.object();
            let fixed = if f & flags::OBJECT_UUID != 0 { 24 } else { 8 };
            if fixed == 8 {
                assert!(object.is_none());
            }
            let r = req.stub_range();
            assert_eq!(r.start, HEADER_LEN + fixed);
            assert!(r.start <= r.end && r.end <= body_end);
            assert_eq!(req.pdu().frag_len(), len);
        }
        Err(e) => {
            if ptype != PacketType::Request {
                assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
            }
        }
    }

    let range = response_stub_range(bytes);
    if let Ok(r) = &range {
        assert_eq!(r.start, HEADER_LEN + 8);
        assert!(r.start <= r.end && r.end <= body_end);
        let pad = pdu.auth_trailer().map_or(0, |t| usize::from(t.2));
        assert_eq!(r.end + pad, body_end);
    }
    match Response::parse(bytes) {
        Ok(resp) => {
            assert_eq!(ptype, PacketType::Response);
            assert!(range.is_ok());
            let _ = resp.context_id();
            assert_eq!(resp.pdu().frag_len(), len);
        }
        Err(e) => {
            if ptype == PacketType::Response {
                assert_eq!(Err(e), range, "Response::parse and response_stub_range disagree");
            } else {
                assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
            }
        }
    }
}
