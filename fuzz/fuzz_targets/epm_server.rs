//! The endpoint mapper's server side: reading a client's request, and answering it.
//!
//! Input: `sel`, then the request stub.
//!   sel bits 0-1: 0 = ept_map (opnum 3), 1 = ept_map_auth (7), 2 = ept_lookup (2),
//!                 3 = ept_lookup_handle_free (4)
//!   sel bit 2: 0 = NDR, 1 = NDR64
//!   sel bit 3: 0 = little endian, 1 = big endian
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use rpcpin::wire::epm::{
    answer_tower, encode_answer, encode_handle_free_answer, encode_lookup_request,
    encode_map_query, opnum, walk_lookup_response, walk_map_response, Answer, EntryRef,
    HandleFreeRequest, LookupQuery, LookupRequest, MapQuery, MapRequest, TowerKey, Walk,
    HANDLE_LEN,
};
use rpcpin::wire::ndr::Syntax;
use rpcpin::wire::tower::{encode_tcp_tower, Tower};
use rpcpin::wire::{uuid, Endian, SyntaxId};

const MAX_STUB: usize = 1 << 16;
const PORT: u16 = 6004;
const ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const STATUS: u32 = 0x16c9_a0d6;
const ANNOTATION: &[u8] = b"rpcpin\0";

fuzz_target!(|data: &[u8]| {
    let Some((&sel, stub)) = data.split_first() else {
        return;
    };
    if stub.len() > MAX_STUB {
        return;
    }
    let syntax = if sel & 4 != 0 { Syntax::Ndr64 } else { Syntax::Ndr };
    let endian = if sel & 8 != 0 { Endian::Big } else { Endian::Little };
    match sel & 3 {
        0 => map(stub, endian, syntax, opnum::MAP),
        1 => map(stub, endian, syntax, opnum::MAP_AUTH),
        2 => lookup(stub, endian, syntax),
        _ => handle_free(stub, endian, syntax),
    }
});

fn map(stub: &[u8], endian: Endian, syntax: Syntax, op: u16) {
    let Ok(req) = MapRequest::parse(stub, endian, syntax, op) else {
        return;
    };
    let auth = op == opnum::MAP_AUTH;
    assert!(!auth || req.object().is_some(), "ept_map_auth's object is [ref]");
    assert!(auth || req.sid().is_none());

    // The parsed parts, encoded again, read back to themselves.
    let q = MapQuery {
        auth,
        object: req.object(),
        tower: req.tower().as_bytes(),
        sid: req.sid(),
        handle: req.entry_handle(),
        max_towers: req.max_towers(),
    };
    let mut again = Vec::new();
    encode_map_query(&mut again, endian, syntax, &q);
    let back = MapRequest::parse(&again, endian, syntax, op).expect("re-encoded request parses");
    assert_eq!(back.object(), req.object());
    assert_eq!(back.tower().as_bytes(), req.tower().as_bytes());
    assert_eq!(back.sid(), req.sid());
    assert_eq!(back.entry_handle(), req.entry_handle());
    assert_eq!(back.max_towers(), req.max_towers());
    assert!(again.len() <= stub.len(), "the encoding is no longer than the input");

    let key = TowerKey::of(req.tower());
    let answer = answer_tower(req.tower(), PORT, ADDR);
    assert_eq!(answer.is_ok(), req.tower().is_ncacn_ip_tcp());
    let tower = match answer {
        Ok(tower) => {
            // Only the port and address change: the key stays, the values read back.
            assert_eq!(tower.len(), req.tower().as_bytes().len());
            let t = Tower::new_checked(&tower[..]).expect("answer tower is a tower");
            assert_eq!((t.tcp_port(), t.ipv4()), (Some(PORT), Some(ADDR)));
            assert!(t.is_ncacn_ip_tcp());
            assert_eq!(TowerKey::of(&t), key);
            if let Ok(k) = key {
                assert!(k.is_ncacn_ip_tcp());
            }
            tower
        }
        Err(_) => req.tower().as_bytes().to_vec(),
    };

    // An answer holding the tower (and a null pointer) walks back to it.
    let entries = [
        EntryRef {
            object: &[],
            annotation: &[],
            tower: Some(&tower),
        },
        EntryRef {
            object: &[],
            annotation: &[],
            tower: None,
        },
    ];
    let a = Answer {
        lookup: false,
        handle: req.entry_handle(),
        max_count: req.max_towers() as usize,
        entries: &entries,
        status: STATUS,
    };
    let mut out = Vec::new();
    encode_answer(&mut out, endian, syntax, &a);
    let walk = walk_map_response(&out, endian, syntax).expect("own answer walks");
    check_walk(&walk, &out, &a);
}

fn lookup(stub: &[u8], endian: Endian, syntax: Syntax) {
    let Ok(req) = LookupRequest::parse(stub, endian, syntax) else {
        return;
    };
    let q = LookupQuery {
        inquiry_type: req.inquiry_type(),
        object: req.object(),
        interface: req.interface(),
        vers_option: req.vers_option(),
        handle: req.entry_handle(),
        max_ents: req.max_ents(),
    };
    let mut again = Vec::new();
    encode_lookup_request(&mut again, endian, syntax, &q);
    let back = LookupRequest::parse(&again, endian, syntax).expect("re-encoded request parses");
    assert_eq!(back.inquiry_type(), req.inquiry_type());
    assert_eq!(back.object(), req.object());
    assert_eq!(back.interface(), req.interface());
    assert_eq!(back.vers_option(), req.vers_option());
    assert_eq!(back.entry_handle(), req.entry_handle());
    assert_eq!(back.max_ents(), req.max_ents());

    // An answer with an entry for the interface asked about walks back to it.
    let interface = req.interface().unwrap_or(SyntaxId::NDR);
    let mut tower = Vec::new();
    encode_tcp_tower(&mut tower, interface, PORT, ADDR);
    let mut object = Vec::new();
    uuid::write(&mut object, &req.object().unwrap_or_default(), endian);
    let entries = [
        EntryRef {
            object: &object,
            annotation: ANNOTATION,
            tower: Some(&tower),
        },
        EntryRef {
            object: &object,
            annotation: &[],
            tower: None,
        },
    ];
    let a = Answer {
        lookup: true,
        handle: req.entry_handle(),
        max_count: req.max_ents() as usize,
        entries: &entries,
        status: 0,
    };
    let mut out = Vec::new();
    encode_answer(&mut out, endian, syntax, &a);
    let walk = walk_lookup_response(&out, endian, syntax).expect("own answer walks");
    check_walk(&walk, &out, &a);
    let t = Tower::new_checked(&out[walk.towers[0].clone()]).expect("a tower");
    assert_eq!(t.interface(), Some(interface));
    for (e, w) in a.entries.iter().zip(&walk.entries) {
        assert_eq!(&out[w.object.clone().expect("lookup entry")], e.object);
        assert_eq!(&out[w.annotation.clone().expect("lookup entry")], e.annotation);
    }
}

fn handle_free(stub: &[u8], endian: Endian, syntax: Syntax) {
    let parsed = HandleFreeRequest::parse(stub, endian, syntax);
    assert_eq!(parsed.is_ok(), stub.len() >= HANDLE_LEN);
    let Ok(req) = parsed else {
        return;
    };
    assert_eq!(&req.entry_handle()[..], &stub[..HANDLE_LEN]);
    let mut out = Vec::new();
    encode_handle_free_answer(&mut out, endian, syntax, req.entry_handle(), STATUS);
    assert_eq!(&out[..HANDLE_LEN], &stub[..HANDLE_LEN]);
    assert_eq!(out[HANDLE_LEN..], endian.u32_bytes(STATUS));
}

/// A walk of an answer rpcpin encoded gives back its parts.
fn check_walk(walk: &Walk, out: &[u8], a: &Answer<'_>) {
    assert_eq!(&out[walk.handle.clone()], a.handle);
    assert_eq!(walk.max_count, a.max_count.max(a.entries.len()));
    assert_eq!(walk.status, a.status);
    assert_eq!(walk.entries.len(), a.entries.len());
    let towers: Vec<&[u8]> = a.entries.iter().filter_map(|e| e.tower).collect();
    assert_eq!(walk.towers.len(), towers.len());
    for (range, tower) in walk.towers.iter().zip(towers) {
        assert_eq!(&out[range.clone()], tower);
    }
    for (w, e) in walk.entries.iter().zip(a.entries) {
        assert_eq!(w.tower.is_some(), e.tower.is_some());
    }
}
