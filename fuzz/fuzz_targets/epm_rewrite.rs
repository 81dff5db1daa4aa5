//! Tower rewriting in ept_map / ept_lookup answers, on a whole stub and across fragments.
//!
//! Input: `sel`, `chunk`, then the response stub.
//!   sel bit 0: 0 = ept_map (opnum 3), 1 = ept_lookup (opnum 2)
//!   sel bit 1: 0 = NDR, 1 = NDR64
//!   sel bit 2: 0 = little endian, 1 = big endian
//!   sel bit 3: each fragment also carries an auth verifier (pad, sec_trailer, 16 bytes)
//!   chunk: stub bytes per fragment, minus one (1..=256)
#![no_main]

use std::net::Ipv4Addr;
use std::ops::Range;

use libfuzzer_sys::fuzz_target;
use rpcpin::interfaces::Interface;
use rpcpin::rewrite::{rewrite_call, rewrite_stub, Rewritten, Table, Target};
use rpcpin::wire::epm::{opnum, walk_lookup_response, walk_map_response};
use rpcpin::wire::header::flags;
use rpcpin::wire::ndr::Syntax;
use rpcpin::wire::tower::Tower;
use rpcpin::wire::{Endian, Result};

const ADVERTISE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const MAX_STUB: usize = 1 << 20;
const AUTH_LEN: usize = 16;

fn table() -> Table {
    let pins = [
        ("nspi", "directory", 6004),
        ("emsmdb", "store", 6001),
        ("samr", "sam", 6005),
        // A versioned entry: lsarpc 0.0 only.
        ("12345778-1234-abcd-ef00-0123456789ab@0.0", "lsa", 6006),
    ];
    let mut entries = Vec::new();
    for (text, name, port) in pins {
        for interface in Interface::parse(text).unwrap() {
            entries.push(Target {
                interface,
                pin: name.to_string(),
                port,
            });
        }
    }
    Table::new(entries)
}

fuzz_target!(|data: &[u8]| {
    let [sel, chunk, stub @ ..] = data else {
        return;
    };
    let op = if sel & 1 == 0 { opnum::MAP } else { opnum::LOOKUP };
    let syntax = if sel & 2 == 0 { Syntax::Ndr } else { Syntax::Ndr64 };
    let endian = if sel & 4 == 0 { Endian::Little } else { Endian::Big };
    let with_auth = sel & 8 != 0;
    let chunk = usize::from(*chunk) + 1;
    let table = table();

    // An empty table changes nothing.
    let mut s = stub.to_vec();
    let r = rewrite_stub(&mut s, endian, op, syntax, &Table::default(), ADVERTISE);
    assert_eq!(s, stub, "empty table changed the stub");
    if let Ok(done) = &r {
        assert!(done.is_empty());
    }

    // The real table.
    let mut once = stub.to_vec();
    let r1 = rewrite_stub(&mut once, endian, op, syntax, &table, ADVERTISE);
    assert_eq!(once.len(), stub.len());
    let walk = walk(stub, endian, op, syntax);
    assert_eq!(r1.is_ok(), walk.is_ok());
    match &r1 {
        Err(e) => {
            assert_eq!(Err(*e), walk.map(|_| ()));
            assert_eq!(once, stub, "a failed rewrite changed bytes");
        }
        Ok(done) => check_changes(stub, &once, &walk.unwrap(), done, &table),
    }

    // Idempotent: a second pass changes no byte.
    let mut twice = once.clone();
    let r2 = rewrite_stub(&mut twice, endian, op, syntax, &table, ADVERTISE);
    assert_eq!(twice, once, "rewriting twice changed more bytes");
    assert_eq!(r1.is_ok(), r2.is_ok());
    if let (Ok(a), Ok(b)) = (&r1, &r2) {
        assert_eq!(a.len(), b.len());
    }

    // Across fragments: the same bytes, and nothing outside the stubs moves.
    let Some(mut frags) = fragments(stub, endian, chunk, with_auth) else {
        return;
    };
    let before = frags.clone();
    let r3 = rewrite_call(&mut frags, op, syntax, &table, ADVERTISE, MAX_STUB);
    assert_eq!(frags.len(), before.len());
    let mut gathered = Vec::with_capacity(stub.len());
    for (f, b) in frags.iter().zip(&before) {
        assert_eq!(f.len(), b.len(), "a fragment's length changed");
        let r = stub_range_of(b, with_auth);
        assert_eq!(f[..r.start], b[..r.start], "a fragment's header changed");
        assert_eq!(f[r.end..], b[r.end..], "a fragment's padding or auth verifier changed");
        gathered.extend_from_slice(&f[r]);
    }
    assert_eq!(gathered, once, "rewrite_call and rewrite_stub disagree");
    match (&r1, &r3) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("rewrite_stub {r1:?} but rewrite_call {r3:?}"),
    }

    // An empty table changes no fragment.
    let mut frags = before.clone();
    let _ = rewrite_call(&mut frags, op, syntax, &Table::default(), ADVERTISE, MAX_STUB);
    assert_eq!(frags, before);
});

fn walk(stub: &[u8], endian: Endian, op: u16, syntax: Syntax) -> Result<Vec<Range<usize>>> {
    let w = if op == opnum::MAP {
        walk_map_response(stub, endian, syntax)?
    } else {
        walk_lookup_response(stub, endian, syntax)?
    };
    let mut last = 0;
    for t in &w.towers {
        assert!(t.start >= last && t.start <= t.end && t.end <= stub.len(), "{t:?}");
        last = t.end;
    }
    Ok(w.towers)
}

/// Every changed byte lies in the port or address of a pinned ncacn_ip_tcp tower, and every
/// such tower now points at its pin's port and the advertised address.
fn check_changes(
    before: &[u8],
    after: &[u8],
    towers: &[Range<usize>],
    done: &[Rewritten],
    table: &Table,
) {
    let mut allowed = vec![false; before.len()];
    let mut expected = before.to_vec();
    let mut n = 0;
    for range in towers {
        let Ok(t) = Tower::new_checked(&before[range.clone()]) else {
            continue;
        };
        let (Some(port), Some(ip)) = (t.tcp_port_range(), t.ipv4_range()) else {
            continue;
        };
        for i in port.clone().chain(ip.clone()) {
            allowed[range.start + i] = true;
        }
        if !t.is_ncacn_ip_tcp() {
            continue;
        }
        let Some(interface) = t.interface() else {
            continue;
        };
        let Some(target) = table.target(&interface) else {
            continue;
        };
        let d = &done[n];
        n += 1;
        assert_eq!(d.interface, interface);
        assert_eq!(d.public_port, target.port);
        assert_eq!(Some(d.backend_port), t.tcp_port());
        assert_eq!(Some(d.backend_addr), t.ipv4());
        assert_eq!(d.advertised, ADVERTISE);
        expected[range.start + port.start..range.start + port.end]
            .copy_from_slice(&target.port.to_be_bytes());
        expected[range.start + ip.start..range.start + ip.end].copy_from_slice(&ADVERTISE.octets());
    }
    assert_eq!(n, done.len(), "rewritten towers: {done:?}");
    for i in 0..before.len() {
        if before[i] != after[i] {
            assert!(allowed[i], "byte {i} changed outside any tower's port or address");
        }
    }
    assert_eq!(after, expected);
}

/// Response PDUs carrying `stub` in pieces of `chunk` bytes.
fn fragments(stub: &[u8], endian: Endian, chunk: usize, with_auth: bool) -> Option<Vec<Vec<u8>>> {
    let pieces: Vec<&[u8]> = if stub.is_empty() {
        vec![&[][..]]
    } else {
        stub.chunks(chunk).collect()
    };
    let n = pieces.len();
    let mut left = stub.len();
    let mut out = Vec::with_capacity(n);
    for (i, piece) in pieces.into_iter().enumerate() {
        let mut f = Vec::with_capacity(24 + piece.len() + 8 + AUTH_LEN + 3);
        let fl = if i == 0 { flags::FIRST_FRAG } else { 0 } | if i == n - 1 { flags::LAST_FRAG } else { 0 };
        f.extend_from_slice(&[5, 0, 2, fl]);
        f.extend_from_slice(&endian.drep());
        f.extend_from_slice(&[0, 0]); // frag_length, below
        f.extend_from_slice(&u16s(if with_auth { AUTH_LEN as u16 } else { 0 }, endian));
        f.extend_from_slice(&u32s(7, endian)); // call_id
        f.extend_from_slice(&u32s(left as u32, endian)); // alloc_hint
        f.extend_from_slice(&[0, 0, 0, 0]); // p_cont_id 0, cancel_count, reserved
        f.extend_from_slice(piece);
        left -= piece.len();
        if with_auth {
            let pad = piece.len().wrapping_neg() & 3;
            f.extend(std::iter::repeat_n(0xa5, pad));
            f.extend_from_slice(&[10, 6, pad as u8, 0, 0, 0, 0, 0]);
            f.extend(std::iter::repeat_n(0x5a, AUTH_LEN));
        }
        let len = u16::try_from(f.len()).ok()?;
        f[8..10].copy_from_slice(&u16s(len, endian));
        out.push(f);
    }
    Some(out)
}

fn stub_range_of(frag: &[u8], with_auth: bool) -> Range<usize> {
    if !with_auth {
        return 24..frag.len();
    }
    let trailer = frag.len() - AUTH_LEN - 8;
    let pad = usize::from(frag[trailer + 2]);
    24..trailer - pad
}

fn u16s(v: u16, e: Endian) -> [u8; 2] {
    match e {
        Endian::Little => v.to_le_bytes(),
        Endian::Big => v.to_be_bytes(),
    }
}

fn u32s(v: u32, e: Endian) -> [u8; 4] {
    match e {
        Endian::Little => v.to_le_bytes(),
        Endian::Big => v.to_be_bytes(),
    }
}
