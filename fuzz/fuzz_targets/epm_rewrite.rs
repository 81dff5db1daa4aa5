//! Tower rewriting in ept_map / ept_lookup answers, on a whole stub and across fragments.
//!
//! Input: `sel`, `chunk`, then the response stub.
//!   sel bit 0: 0 = ept_map (opnum 3, or ept_map_auth 7 with bit 5), 1 = ept_lookup (opnum 2)
//!   sel bit 1: 0 = NDR, 1 = NDR64
//!   sel bit 2: 0 = little endian, 1 = big endian
//!   sel bit 3: each fragment also carries an auth verifier (pad, sec_trailer, 16 bytes)
//!   sel bit 4: hide_unpinned (entries of unpinned interfaces are removed: re-encoding)
//!   sel bit 5: ept_map_auth instead of ept_map
//!   sel bit 6: keep the towers of pinned interfaces other than ncacn_ip_tcp (other_towers)
//!   chunk: stub bytes per fragment, minus one (1..=256)
#![no_main]

use std::net::Ipv4Addr;
use std::ops::Range;

use libfuzzer_sys::fuzz_target;
use rpcpin::interfaces::Interface;
use rpcpin::epm_rewrite::{rewrite_call, rewrite_stub, Changes, Rules, Table, Target};
use rpcpin::wire::epm::{opnum, walk_lookup_response, walk_map_response, Walk, EPT_S_NOT_REGISTERED};
use rpcpin::wire::frame::{next_pdu_len, MAX_FRAG_LEN};
use rpcpin::wire::pdu::flags;
use rpcpin::wire::ndr::Syntax;
use rpcpin::wire::call::Response;
use rpcpin::wire::tower::Tower;
use rpcpin::wire::{Endian, PacketType, Pdu, Result};

const ADVERTISE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const MAX_STUB: usize = 1 << 20;
const AUTH_LEN: usize = 16;
const CALL_ID: u32 = 7;

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

struct Case {
    op: u16,
    syntax: Syntax,
    endian: Endian,
    hide: bool,
    hide_other: bool,
}

impl Case {
    fn lookup(&self) -> bool {
        self.op == opnum::LOOKUP
    }

    fn walk(&self, stub: &[u8]) -> Result<Walk> {
        let w = if self.lookup() {
            walk_lookup_response(stub, self.endian, self.syntax)?
        } else {
            walk_map_response(stub, self.endian, self.syntax)?
        };
        let mut last = 0;
        for t in &w.towers {
            assert!(t.start >= last && t.start <= t.end && t.end <= stub.len(), "{t:?}");
            last = t.end;
        }
        let mut next = 0;
        for e in &w.entries {
            if let Some(i) = e.tower {
                assert_eq!(i, next, "tower indices in order");
                next += 1;
            }
        }
        assert_eq!(next, w.towers.len());
        Ok(w)
    }

    fn rewrite(&self, stub: &mut [u8], table: &Table) -> Result<Changes> {
        let rules = Rules {
            table,
            advertise: ADVERTISE,
            hide_unpinned: self.hide,
            hide_other_towers: self.hide_other,
        };
        rewrite_stub(stub, self.endian, self.op, self.syntax, rules)
    }
}

fuzz_target!(|data: &[u8]| {
    let [sel, chunk, stub @ ..] = data else {
        return;
    };
    let case = Case {
        op: match (sel & 1, sel & 0x20) {
            (1, _) => opnum::LOOKUP,
            (_, 0) => opnum::MAP,
            _ => opnum::MAP_AUTH,
        },
        syntax: if sel & 2 == 0 { Syntax::Ndr } else { Syntax::Ndr64 },
        endian: if sel & 4 == 0 { Endian::Little } else { Endian::Big },
        hide: sel & 0x10 != 0,
        hide_other: sel & 0x40 == 0,
    };
    let with_auth = sel & 8 != 0;
    let chunk = usize::from(*chunk) + 1;
    let table = table();

    // An empty table changes no byte in place, and rewrites nothing.
    let mut s = stub.to_vec();
    let r = case.rewrite(&mut s, &Table::default());
    assert_eq!(s, stub, "empty table changed the stub");
    if let Ok(done) = &r {
        assert!(done.rewritten.is_empty());
        if !case.hide {
            assert_eq!(*done, Changes::default());
        }
    }

    // The real table.
    let mut once = stub.to_vec();
    let r1 = case.rewrite(&mut once, &table);
    assert_eq!(once.len(), stub.len());
    let walk = case.walk(stub);
    assert_eq!(r1.is_ok(), walk.is_ok());
    let done = match &r1 {
        Err(e) => {
            assert_eq!(Err(*e), walk.map(|_| ()));
            assert_eq!(once, stub, "a failed rewrite changed bytes");
            None
        }
        Ok(done) => {
            check_stub(&case, stub, &once, &walk.unwrap(), done, &table);
            Some(done)
        }
    };

    // Idempotent: a second pass over the answer as rewritten (re-encoded, if it was) changes
    // no byte and hides nothing more.
    if let Some(done) = done {
        let mut again = done.reencoded.clone().unwrap_or_else(|| once.clone());
        let before = again.clone();
        let d2 = case.rewrite(&mut again, &table).expect("a rewritten answer walks");
        assert_eq!(again, before, "rewriting twice changed more bytes");
        assert!(d2.hidden.is_empty() && d2.other_towers.is_empty());
        assert_eq!(d2.reencoded, None);
        assert_eq!(d2.rewritten.len(), done.rewritten.len());
    }

    // Across fragments: the same result, and no fragment changes length or header.
    let Some(mut frags) = fragments(stub, case.endian, chunk, with_auth) else {
        return;
    };
    let before = frags.clone();
    let rules = Rules {
        table: &table,
        advertise: ADVERTISE,
        hide_unpinned: case.hide,
        hide_other_towers: case.hide_other,
    };
    let r3 = rewrite_call(&mut checked(&mut frags), case.op, case.syntax, rules, MAX_STUB);
    assert_eq!(frags.len(), before.len());
    let mut gathered = Vec::with_capacity(stub.len());
    let mut largest = 0;
    for (f, b) in frags.iter().zip(&before) {
        assert_eq!(f.len(), b.len(), "a fragment's length changed");
        let r = stub_range_of(b, with_auth);
        largest = largest.max(r.len());
        assert_eq!(f[..r.start], b[..r.start], "a fragment's header changed");
        assert_eq!(f[r.end..], b[r.end..], "a fragment's padding or auth verifier changed");
        gathered.extend_from_slice(&f[r]);
    }
    match (&r1, r3) {
        (Ok(a), Ok(mut b)) => {
            let pdus = b.reencoded.take();
            assert_eq!(a.rewritten, b.rewritten);
            assert_eq!(a.hidden, b.hidden);
            assert_eq!(a.other_towers, b.other_towers);
            assert_eq!(a.reencoded.is_some(), pdus.is_some());
            match (&a.reencoded, pdus) {
                (Some(new_stub), Some(pdus)) => {
                    check_refragmented(&case, &pdus, new_stub, largest.max(8));
                }
                _ => assert_eq!(gathered, once, "rewrite_call and rewrite_stub disagree"),
            }
        }
        (Err(a), Err(b)) => {
            assert_eq!(*a, b);
            assert_eq!(frags, before, "a failed rewrite_call changed bytes");
        }
        (a, b) => panic!("rewrite_stub {a:?} but rewrite_call {b:?}"),
    }

    // An empty table changes no fragment.
    let mut frags = before.clone();
    let rules = Rules {
        table: &Table::default(),
        ..rules
    };
    let _ = rewrite_call(&mut checked(&mut frags), case.op, case.syntax, rules, MAX_STUB);
    assert_eq!(frags, before);
});

/// Checks a successful `rewrite_stub`: only the port and IPv4 bytes of towers changed in
/// place, exactly the pinned ncacn_ip_tcp towers point at their pin and the advertised
/// address, and a re-encoded answer holds exactly the entries that should stay.
fn check_stub(case: &Case, before: &[u8], after: &[u8], walk: &Walk, done: &Changes, table: &Table) {
    let mut allowed = vec![false; before.len()];
    let mut expected = before.to_vec();
    let mut n = 0;
    let mut hidden_other = 0;
    let mut kept = Vec::new();
    for entry in &walk.entries {
        let range = entry.tower.map(|i| walk.towers[i].clone());
        let tower = range.as_ref().and_then(|r| Tower::new_checked(&before[r.clone()]).ok());
        let target = tower
            .as_ref()
            .and_then(|t| t.interface())
            .and_then(|i| table.target(&i));
        if let (Some(t), Some(r)) = (&tower, &range) {
            if let (Some(port), Some(ip)) = (t.tcp_port_range(), t.ipv4_range()) {
                for i in port.chain(ip) {
                    allowed[r.start + i] = true;
                }
            }
        }
        let (Some(t), Some(range), Some(target)) = (tower, range, target) else {
            if !case.hide {
                kept.push(entry);
            }
            continue;
        };
        if !t.is_ncacn_ip_tcp() {
            if case.hide_other {
                let d = &done.other_towers[hidden_other];
                hidden_other += 1;
                assert_eq!((Some(d.interface), d.protocol), (t.interface(), t.protocol(3)));
            } else {
                kept.push(entry);
            }
            continue;
        }
        kept.push(entry);
        let (port, ip) = (t.tcp_port_range().unwrap(), t.ipv4_range().unwrap());
        let d = &done.rewritten[n];
        n += 1;
        assert_eq!(Some(d.interface), t.interface());
        assert_eq!(d.public_port, target.port);
        assert_eq!(d.pin, target.pin);
        assert_eq!(Some(d.backend_port), t.tcp_port());
        assert_eq!(Some(d.backend_addr), t.ipv4());
        assert_eq!(d.advertised, ADVERTISE);
        expected[range.start + port.start..range.start + port.end]
            .copy_from_slice(&target.port.to_be_bytes());
        expected[range.start + ip.start..range.start + ip.end].copy_from_slice(&ADVERTISE.octets());
    }
    assert_eq!(n, done.rewritten.len(), "rewritten towers: {:?}", done.rewritten);
    for i in 0..before.len() {
        if before[i] != after[i] {
            assert!(allowed[i], "byte {i} changed outside any tower's port or address");
        }
    }
    assert_eq!(after, expected);

    let hidden = walk.entries.len() - kept.len();
    assert_eq!(done.other_towers.len(), hidden_other);
    assert_eq!(done.hidden.len() + hidden_other, hidden);
    let Some(new) = &done.reencoded else {
        assert_eq!(hidden, 0, "entries hidden without re-encoding");
        return;
    };
    assert!((case.hide || case.hide_other) && hidden > 0, "re-encoded with nothing hidden");
    // The re-encoded answer: the kept entries, as patched, in order; the same handle, max
    // count and status (ept_map left with nothing: ept_s_not_registered).
    let w = case.walk(new).expect("a re-encoded answer walks");
    assert_eq!(new[w.handle.clone()], after[walk.handle.clone()]);
    assert_eq!(w.max_count, walk.max_count);
    let status = if walk.status == 0 && kept.is_empty() && !case.lookup() {
        EPT_S_NOT_REGISTERED
    } else {
        walk.status
    };
    assert_eq!(w.status, status);
    assert_eq!(w.entries.len(), kept.len());
    for (e, k) in w.entries.iter().zip(&kept) {
        let bytes = |r: &Option<Range<usize>>, buf: &[u8]| r.clone().map(|r| buf[r].to_vec());
        let tower = |e: &rpcpin::wire::epm::Entry, w: &Walk, buf: &[u8]| {
            e.tower.map(|i| buf[w.towers[i].clone()].to_vec())
        };
        assert_eq!(tower(e, &w, new), tower(k, walk, after));
        if case.lookup() {
            assert_eq!(bytes(&e.object, new), bytes(&k.object, after));
            assert_eq!(bytes(&e.annotation, new), bytes(&k.annotation, after));
        }
    }
}

/// The whole PDUs `rewrite_call` built for a re-encoded answer carry `stub`, each at most
/// `per_fragment` stub bytes, flagged first to last, with the original call id and drep.
fn check_refragmented(case: &Case, pdus: &[u8], stub: &[u8], per_fragment: usize) {
    let mut rest = pdus;
    let mut gathered = Vec::new();
    let mut i = 0;
    while !rest.is_empty() {
        let len = next_pdu_len(rest, MAX_FRAG_LEN)
            .expect("re-encoded fragments frame")
            .expect("re-encoded fragments are whole");
        let pdu = &rest[..len];
        let resp = Response::parse(pdu).expect("a re-encoded fragment is a response");
        let p: Pdu<&[u8]> = *resp.pdu();
        assert_eq!(p.ptype(), PacketType::Response);
        assert_eq!(p.endian(), case.endian);
        assert_eq!(p.call_id(), CALL_ID);
        assert_eq!(p.auth_len(), 0);
        assert_eq!(resp.context_id(), 0);
        rest = &rest[len..];
        assert_eq!(p.flags() & flags::FIRST_FRAG != 0, i == 0, "first flag");
        assert_eq!(p.flags() & flags::LAST_FRAG != 0, rest.is_empty(), "last flag");
        let body = &pdu[24..];
        assert!(body.len() <= per_fragment, "{} > {per_fragment}", body.len());
        assert!(!body.is_empty() || (i == 0 && rest.is_empty()), "empty fragment");
        let hint = case.endian.u32_from([pdu[16], pdu[17], pdu[18], pdu[19]]);
        assert_eq!(hint as usize, stub.len() - gathered.len(), "alloc_hint");
        gathered.extend_from_slice(body);
        i += 1;
    }
    assert_eq!(gathered, stub, "re-encoded fragments carry another stub");
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
        let fl = if i == 0 { flags::FIRST_FRAG } else { 0 }
            | if i == n - 1 { flags::LAST_FRAG } else { 0 };
        f.extend_from_slice(&[5, 0, 2, fl]);
        f.extend_from_slice(&endian.drep());
        f.extend_from_slice(&[0, 0]); // frag_length, below
        f.extend_from_slice(&endian.u16_bytes(if with_auth { AUTH_LEN as u16 } else { 0 }));
        f.extend_from_slice(&endian.u32_bytes(CALL_ID));
        f.extend_from_slice(&endian.u32_bytes(left as u32)); // alloc_hint
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
        f[8..10].copy_from_slice(&endian.u16_bytes(len));
        out.push(f);
    }
    Some(out)
}

/// Checked views over `frags`, as rpcpin's reader hands PDUs out.
fn checked(frags: &mut [Vec<u8>]) -> Vec<Pdu<&mut [u8]>> {
    frags
        .iter_mut()
        .map(|f| Pdu::new_checked(&mut f[..]).expect("a built fragment is a PDU"))
        .collect()
}

fn stub_range_of(frag: &[u8], with_auth: bool) -> Range<usize> {
    if !with_auth {
        return 24..frag.len();
    }
    let trailer = frag.len() - AUTH_LEN - 8;
    let pad = usize::from(frag[trailer + 2]);
    24..trailer - pad
}
