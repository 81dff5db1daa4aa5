//! The endpoint mapper's server side against captured requests and answers: Outlook and
//! Exchange (`mapi-epm-*`), rpcclient and a big-endian Samba (`samba-be-map-samr`), and
//! impacket's NDR and NDR64 answers (`impacket/*.in.bin`).

use core::net::Ipv4Addr;

use ::uuid::{uuid, Uuid};

use super::*;
use crate::wire::call::{Request, Response};
use crate::wire::frame::next_pdu_len;
use crate::wire::ndr::Syntax;
use crate::wire::tower::Tower;
use crate::wire::{Endian, Error};

const NSPI: SyntaxId = SyntaxId::new(uuid!("f5cc5a18-4264-101a-8c59-08002b2f8426"), 56, 0);
const EMSMDB: SyntaxId = SyntaxId::new(uuid!("a4f1db00-ca47-1067-b31f-00dd010662da"), 0, 81);
const SAMR: SyntaxId = SyntaxId::new(uuid!("12345778-1234-abcd-ef00-0123456789ac"), 1, 0);
const EXCHANGE: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);

/// Splits a captured stream into its PDUs.
fn pdus(mut stream: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some(len) = next_pdu_len(stream, 65_535).unwrap() {
        let (pdu, rest) = stream.split_at(len);
        out.push(pdu);
        stream = rest;
    }
    assert!(stream.is_empty());
    out
}

/// The stub, byte order and opnum of the request of a client stream (bind, then request).
fn request(client: &[u8]) -> (&[u8], Endian, u16) {
    let pdu = pdus(client)[1];
    let r = Request::parse(pdu).unwrap();
    (&pdu[r.stub_range()], r.pdu().endian(), r.opnum())
}

/// The stub and byte order of the answer of a server stream (bind_ack, then response).
fn answer(server: &[u8]) -> (&[u8], Endian) {
    let r = Response::parse(pdus(server)[1]).unwrap();
    (r.stub(), r.pdu().endian())
}

/// The offsets at which two byte strings of the same length differ.
fn diff(a: &[u8], b: &[u8]) -> Vec<usize> {
    assert_eq!(a.len(), b.len());
    (0..a.len()).filter(|&i| a[i] != b[i]).collect()
}

const NSPI_CLIENT: &[u8] = include_bytes!("../../../tests/data/mapi-epm-map-nspi.client.bin");
const NSPI_SERVER: &[u8] = include_bytes!("../../../tests/data/mapi-epm-map-nspi.server.bin");
const EMSMDB_CLIENT: &[u8] = include_bytes!("../../../tests/data/mapi-epm-map-emsmdb.client.bin");
const EMSMDB_SERVER: &[u8] = include_bytes!("../../../tests/data/mapi-epm-map-emsmdb.server.bin");
const SAMBA_CLIENT: &[u8] = include_bytes!("../../../tests/data/samba-be-map-samr.client.bin");
const SAMBA_SERVER: &[u8] = include_bytes!("../../../tests/data/samba-be-map-samr.server.bin");
const LOOKUP_CLIENT: &[u8] = include_bytes!("../../../tests/data/mapi-epm-lookup.client.bin");
const LOOKUP_SERVER: &[u8] = include_bytes!("../../../tests/data/mapi-epm-lookup.server.bin");

/// One captured ept_map exchange and what it holds.
struct MapCase {
    client: &'static [u8],
    server: &'static [u8],
    object: Option<Uuid>,
    interface: SyntaxId,
    query_port: u16,
    max_towers: u32,
    port: u16,
    addr: Ipv4Addr,
    /// Offsets where rpcpin's encoding of the answer differs from the captured one.
    differ: &'static [usize],
}

const MAP_CASES: [MapCase; 3] = [
    MapCase {
        client: NSPI_CLIENT,
        server: NSPI_SERVER,
        object: Some(Uuid::nil()),
        interface: NSPI,
        query_port: 135,
        max_towers: 4,
        port: 4997,
        addr: EXCHANGE,
        // The tower's referent id (Exchange's 3, rpcpin's 0x00020004).
        differ: &[36, 38],
    },
    MapCase {
        client: EMSMDB_CLIENT,
        server: EMSMDB_SERVER,
        object: Some(Uuid::nil()),
        interface: EMSMDB,
        query_port: 135,
        max_towers: 4,
        port: 1032,
        addr: EXCHANGE,
        // The referent id, and the padding byte after the 75-byte tower: Exchange's is 0x08.
        differ: &[36, 38, 123],
    },
    MapCase {
        client: SAMBA_CLIENT,
        server: SAMBA_SERVER,
        object: None,
        interface: SAMR,
        query_port: 0,
        max_towers: 1,
        port: 49153,
        addr: Ipv4Addr::new(127, 0, 0, 3),
        // Samba's referent id is 2 (big endian: 00 00 00 02), rpcpin's 00 02 00 04.
        differ: &[37, 39],
    },
];

#[test]
fn reads_captured_ept_map_requests() {
    for case in &MAP_CASES {
        let (stub, endian, op) = request(case.client);
        assert_eq!(op, opnum::MAP);
        let req = MapRequest::parse(stub, endian, Syntax::Ndr, op).unwrap();
        assert_eq!(req.object(), case.object);
        assert_eq!(req.max_towers(), case.max_towers);
        assert_eq!(req.entry_handle(), &[0; HANDLE_LEN]);
        assert_eq!(req.sid(), None);
        let key = TowerKey::of(req.tower()).unwrap();
        assert_eq!(key.interface, case.interface);
        assert_eq!(key.transfer_syntax, SyntaxId::NDR);
        assert!(key.is_ncacn_ip_tcp());
        assert_eq!(req.tower().tcp_port(), Some(case.query_port));
        assert_eq!(req.tower().ipv4(), Some(Ipv4Addr::UNSPECIFIED));

        // Encoding the parsed parts gives the client's bytes back, padding included.
        let mut again = Vec::new();
        let q = MapQuery {
            auth: false,
            object: req.object(),
            tower: req.tower().as_bytes(),
            sid: None,
            handle: req.entry_handle(),
            max_towers: req.max_towers(),
        };
        encode_map_query(&mut again, endian, Syntax::Ndr, &q);
        assert_eq!(again, stub);

        // No cut of the stub parses.
        for cut in 0..stub.len() {
            assert!(MapRequest::parse(&stub[..cut], endian, Syntax::Ndr, op).is_err());
        }
    }
}

#[test]
fn encodes_captured_ept_map_answers() {
    for case in &MAP_CASES {
        let (req_stub, req_endian, op) = request(case.client);
        let req = MapRequest::parse(req_stub, req_endian, Syntax::Ndr, op).unwrap();
        let (captured, endian) = answer(case.server);
        let walk = walk_map_response(captured, endian, Syntax::Ndr).unwrap();

        // The tower the server returned is the client's, with the port and address set.
        let tower = answer_tower(req.tower(), case.port, case.addr).unwrap();
        assert_eq!(tower, captured[walk.towers[0].clone()]);

        let mut out = Vec::new();
        let entries = [EntryRef {
            object: &[],
            annotation: &[],
            tower: Some(&tower),
        }];
        let a = Answer {
            lookup: false,
            handle: &captured[walk.handle.clone()],
            max_count: req.max_towers() as usize,
            entries: &entries,
            status: 0,
        };
        encode_answer(&mut out, endian, Syntax::Ndr, &a);
        assert_eq!(diff(&out, captured), case.differ);
        let t = Tower::new_checked(&captured[walk.towers[0].clone()]).unwrap();
        assert_eq!((t.tcp_port(), t.ipv4()), (Some(case.port), Some(case.addr)));
    }
}

#[test]
fn reads_and_answers_outlooks_ept_lookup() {
    let (stub, endian, op) = request(LOOKUP_CLIENT);
    assert_eq!(op, opnum::LOOKUP);
    let req = LookupRequest::parse(stub, endian, Syntax::Ndr).unwrap();
    assert_eq!(req.inquiry_type(), request::inquiry::MATCH_BY_IF);
    // Outlook sends a non-null object pointer to uninitialised bytes: "4997]" in UTF-16.
    assert_eq!(
        req.object(),
        Some(uuid!("00390034-0039-0037-5d00-000000000000"))
    );
    assert_eq!(req.interface(), Some(NSPI));
    assert_eq!(req.vers_option(), request::vers_option::ALL);
    assert_eq!(req.entry_handle(), &[0; HANDLE_LEN]);
    assert_eq!(req.max_ents(), 1);
    let mut again = Vec::new();
    let q = LookupQuery {
        inquiry_type: req.inquiry_type(),
        object: req.object(),
        interface: req.interface(),
        vers_option: req.vers_option(),
        handle: req.entry_handle(),
        max_ents: req.max_ents(),
    };
    encode_lookup_request(&mut again, endian, Syntax::Ndr, &q);
    assert_eq!(again, stub);
    for cut in 0..stub.len() {
        assert!(LookupRequest::parse(&stub[..cut], endian, Syntax::Ndr).is_err());
    }

    let (captured, endian) = answer(LOOKUP_SERVER);
    let walk = walk_lookup_response(captured, endian, Syntax::Ndr).unwrap();
    let e = &walk.entries[0];
    let annotation = &captured[e.annotation.clone().unwrap()];
    assert_eq!(annotation, b"MS Exchange Directory NSP Interface\0");
    let entries = [EntryRef {
        object: &captured[e.object.clone().unwrap()],
        annotation,
        tower: Some(&captured[walk.towers[0].clone()]),
    }];
    let a = Answer {
        lookup: true,
        handle: &captured[walk.handle.clone()],
        max_count: req.max_ents() as usize,
        entries: &entries,
        status: 0,
    };
    let mut out = Vec::new();
    encode_answer(&mut out, endian, Syntax::Ndr, &a);
    // Only the tower's referent id differs (Exchange's 3, rpcpin's 0x00020004).
    assert_eq!(diff(&out, captured), [52, 54]);
}

#[test]
fn lookup_handle_free() {
    let handle: [u8; HANDLE_LEN] = core::array::from_fn(|i| i as u8);
    for endian in [Endian::Little, Endian::Big] {
        for syntax in [Syntax::Ndr, Syntax::Ndr64] {
            let req = HandleFreeRequest::parse(&handle, endian, syntax).unwrap();
            assert_eq!(req.entry_handle(), &handle);
            assert!(HandleFreeRequest::parse(&handle[..19], endian, syntax).is_err());
            let mut out = Vec::new();
            encode_handle_free_answer(&mut out, endian, syntax, &[0; HANDLE_LEN], 7);
            let mut expected = vec![0; HANDLE_LEN];
            expected.extend_from_slice(&endian.u32_bytes(7));
            assert_eq!(out, expected);
        }
    }
}

#[test]
fn requests_round_trip_in_every_syntax_and_byte_order() {
    let (stub, endian, op) = request(NSPI_CLIENT);
    let req = MapRequest::parse(stub, endian, Syntax::Ndr, op).unwrap();
    let handle = [9; HANDLE_LEN];
    let sid = [1, 2, 0, 0, 0, 0, 0, 5, 32, 0, 0, 0, 0x20, 2, 0, 0];
    for endian in [Endian::Little, Endian::Big] {
        for syntax in [Syntax::Ndr, Syntax::Ndr64] {
            for (auth, object, sid) in [
                (false, None, None),
                (false, Some(Uuid::nil()), None),
                (true, Some(NSPI.uuid), Some(&sid[..])),
                (true, Some(NSPI.uuid), None),
            ] {
                let q = MapQuery {
                    auth,
                    object,
                    tower: req.tower().as_bytes(),
                    sid,
                    handle: &handle,
                    max_towers: 3,
                };
                let mut out = Vec::new();
                encode_map_query(&mut out, endian, syntax, &q);
                let op = if auth { opnum::MAP_AUTH } else { opnum::MAP };
                let back = MapRequest::parse(&out, endian, syntax, op).unwrap();
                assert_eq!(back.object(), object);
                assert_eq!(back.tower().as_bytes(), req.tower().as_bytes());
                assert_eq!(back.sid(), sid);
                assert_eq!((back.entry_handle(), back.max_towers()), (&handle, 3));
            }
            let q = LookupQuery {
                inquiry_type: 3,
                object: Some(NSPI.uuid),
                interface: Some(EMSMDB),
                vers_option: 5,
                handle: &handle,
                max_ents: 500,
            };
            let mut out = Vec::new();
            encode_lookup_request(&mut out, endian, syntax, &q);
            let back = LookupRequest::parse(&out, endian, syntax).unwrap();
            assert_eq!(back.object(), Some(NSPI.uuid));
            assert_eq!(back.interface(), Some(EMSMDB));
            assert_eq!((back.inquiry_type(), back.vers_option()), (3, 5));
            assert_eq!((back.entry_handle(), back.max_ents()), (&handle, 500));
        }
    }
}

#[test]
fn refuses_other_opnums_and_null_map_towers() {
    let (stub, endian, _) = request(SAMBA_CLIENT);
    assert_eq!(
        MapRequest::parse(stub, endian, Syntax::Ndr, opnum::LOOKUP).err(),
        Some(Error::Unsupported("ept opnum for a map request"))
    );
    let mut s = stub.to_vec();
    s[4] = 0; // the map tower's referent id
    assert_eq!(
        MapRequest::parse(&s, endian, Syntax::Ndr, opnum::MAP).err(),
        Some(Error::Malformed("ept_map null map_tower"))
    );
    let mut s = stub.to_vec();
    s[8] = 0x4a; // conformance below tower_length
    assert_eq!(
        MapRequest::parse(&s, endian, Syntax::Ndr, opnum::MAP).err(),
        Some(Error::Malformed(
            "map_tower tower_length beyond its conformance"
        ))
    );
}

/// impacket's answers: `(name, lookup, syntax)`.
const IMPACKET: [(&str, &[u8], bool, Syntax); 8] = [
    (
        "map-ndr",
        include_bytes!("../../../tests/data/impacket/map-ndr.in.bin"),
        false,
        Syntax::Ndr,
    ),
    (
        "map-ndr64",
        include_bytes!("../../../tests/data/impacket/map-ndr64.in.bin"),
        false,
        Syntax::Ndr64,
    ),
    (
        "lookup-ndr",
        include_bytes!("../../../tests/data/impacket/lookup-ndr.in.bin"),
        true,
        Syntax::Ndr,
    ),
    (
        "lookup-ndr64",
        include_bytes!("../../../tests/data/impacket/lookup-ndr64.in.bin"),
        true,
        Syntax::Ndr64,
    ),
    (
        "map-mixed-ndr",
        include_bytes!("../../../tests/data/impacket/map-mixed-ndr.in.bin"),
        false,
        Syntax::Ndr,
    ),
    (
        "map-mixed-ndr64",
        include_bytes!("../../../tests/data/impacket/map-mixed-ndr64.in.bin"),
        false,
        Syntax::Ndr64,
    ),
    (
        "map-not-registered-ndr",
        include_bytes!("../../../tests/data/impacket/map-not-registered-ndr.in.bin"),
        false,
        Syntax::Ndr,
    ),
    (
        "map-not-registered-ndr64",
        include_bytes!("../../../tests/data/impacket/map-not-registered-ndr64.in.bin"),
        false,
        Syntax::Ndr64,
    ),
];

#[test]
fn encodes_impackets_answers() {
    for (name, captured, lookup, syntax) in IMPACKET {
        let walk = if lookup {
            walk_lookup_response(captured, Endian::Little, syntax)
        } else {
            walk_map_response(captured, Endian::Little, syntax)
        }
        .unwrap();
        let entries: Vec<EntryRef<'_>> = walk
            .entries
            .iter()
            .map(|e| EntryRef {
                object: e.object.clone().map_or(&[][..], |r| &captured[r]),
                annotation: e.annotation.clone().map_or(&[][..], |r| &captured[r]),
                tower: e.tower.map(|i| &captured[walk.towers[i].clone()]),
            })
            .collect();
        let a = Answer {
            lookup,
            handle: &captured[walk.handle.clone()],
            max_count: walk.max_count,
            entries: &entries,
            status: walk.status,
        };
        let mut out = Vec::new();
        encode_answer(&mut out, Endian::Little, syntax, &a);
        let differ = diff(&out, captured);
        let (referents, padding) = explained(&walk, lookup, syntax, &out);
        let unexplained: Vec<usize> = differ
            .iter()
            .copied()
            .filter(|i| !referents.contains(i) && !padding.contains(i))
            .collect();
        assert_eq!(unexplained, Vec::<usize>::new(), "{name}: {differ:?}");
        // impacket numbers its referents at random, and pads with garbage.
        assert_eq!(differ.is_empty(), walk.entries.is_empty(), "{name}");
    }
}

/// Where the referent ids of an answer's non-null towers lie, and the padding after each
/// tower and annotation that `out`, rpcpin's encoding, fills with zeros.
fn explained(walk: &Walk, lookup: bool, syntax: Syntax, out: &[u8]) -> (Vec<usize>, Vec<usize>) {
    let w = syntax.word_len();
    let align = |n: usize| (n + w - 1) & !(w - 1);
    let mut referents = Vec::new();
    for (i, e) in walk.entries.iter().enumerate() {
        let at = if lookup {
            align(e.object.clone().unwrap().end)
        } else {
            align(HANDLE_LEN + 4) + 3 * w + i * w
        };
        if e.tower.is_some() {
            referents.extend(at..at + w);
        }
    }
    let ends = walk.towers.iter().map(|t| t.end).chain(
        walk.entries
            .iter()
            .filter_map(|e| e.annotation.clone().map(|a| a.end)),
    );
    let padding = ends
        .flat_map(|end| end..align(end))
        .filter(|&i| out.get(i) == Some(&0))
        .collect();
    (referents, padding)
}

#[test]
fn reads_the_python_built_ndr64_and_big_endian_requests() {
    // fuzz/seeds/generate.py writes these with its own NDR writer: a selector byte, then the
    // stub. No capture holds an NDR64 or big-endian request.
    const SEEDS: [(&[u8], Syntax, Endian); 3] = [
        (
            include_bytes!("../../../fuzz/seeds/epm_server/map-auth-ndr64-le"),
            Syntax::Ndr64,
            Endian::Little,
        ),
        (
            include_bytes!("../../../fuzz/seeds/epm_server/map-auth-ndr-be"),
            Syntax::Ndr,
            Endian::Big,
        ),
        (
            include_bytes!("../../../fuzz/seeds/epm_server/map-auth-ndr64-be"),
            Syntax::Ndr64,
            Endian::Big,
        ),
    ];
    for (seed, syntax, endian) in SEEDS {
        let req = MapRequest::parse(&seed[1..], endian, syntax, opnum::MAP_AUTH).unwrap();
        assert_eq!(req.object(), Some(Uuid::nil()));
        assert_eq!(TowerKey::of(req.tower()).unwrap().interface, NSPI);
        let sid = req.sid().unwrap();
        assert_eq!(&sid[..8], &[1, 5, 0, 0, 0, 0, 0, 5]);
        assert_eq!(sid.len(), 8 + 4 * 5);
        assert_eq!(req.max_towers(), 4);
    }
    let seed = include_bytes!("../../../fuzz/seeds/epm_server/lookup-ndr64-be");
    let req = LookupRequest::parse(&seed[1..], Endian::Big, Syntax::Ndr64).unwrap();
    assert_eq!(
        (req.object(), req.interface()),
        (Some(EPM.uuid), Some(NSPI))
    );
    assert_eq!(req.max_ents(), 500);
}
