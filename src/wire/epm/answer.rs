//! The ept_map and ept_lookup answers (C706 appendix O): walkers that find the towers inside
//! a response stub, and the encoder of an answer.
//!
//! ```text
//! ept_map response                          ept_lookup response
//!   entry_handle    20 bytes                  entry_handle 20 bytes
//!   num_towers      u32                       num_ents     u32
//!   towers: conformant varying array          entries: conformant varying array
//!     max, offset, actual  (count)              max, offset, actual (count)
//!     referent id [actual] (pointer)            ept_entry_t [actual]:
//!   each non-null tower, deferred:                object uuid 16, tower (pointer),
//!     conformance (count), tower_length u32,      annotation: offset, actual (count), chars
//!     octets[tower_length]                      each non-null tower, deferred (as for map)
//!   status          u32                       status u32
//! ```
//!
//! `count` and `pointer` are 4 bytes in NDR and 8 (8-aligned) in NDR64; see [`crate::wire::ndr`].

use core::ops::Range;

use super::{HANDLE_LEN, MAX_ANNOTATION};
use crate::wire::ndr::{Cursor, Syntax};
use crate::wire::{Endian, Error, Result};

/// Where the parts of an ept_map or ept_lookup response lie in its stub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walk {
    /// The entry handle.
    pub handle: Range<usize>,
    /// The array's maximum count (the `max_towers` or `max_ents` the client asked for).
    pub max_count: usize,
    /// One per array element, in order.
    pub entries: Vec<Entry>,
    /// The octets of each non-null tower, in order.
    pub towers: Vec<Range<usize>>,
    /// The call's status (0: success).
    pub status: u32,
}

/// One element of an answer: a tower pointer (ept_map), or an `ept_entry_t` (ept_lookup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The object UUID's 16 bytes (ept_lookup only).
    pub object: Option<Range<usize>>,
    /// The annotation's characters, NUL included when sent (ept_lookup only).
    pub annotation: Option<Range<usize>>,
    /// The index of its tower in [`Walk::towers`], or `None` for a null pointer.
    pub tower: Option<usize>,
}

/// Finds the towers of an ept_map response stub.
pub fn walk_map_response(stub: &[u8], endian: Endian, syntax: Syntax) -> Result<Walk> {
    let mut c = Cursor::new(stub, endian, syntax);
    c.skip(HANDLE_LEN, "ept_map entry_handle")?;
    let num = c.u32("ept_map num_towers")? as usize;
    let (max_count, referents) = array_header(&mut c, "ept_map towers")?;
    if referents > num {
        return Err(Error::Malformed("ept_map tower count beyond num_towers"));
    }
    let mut entries = Vec::with_capacity(referents.min(c.remaining() / syntax.word_len()));
    let mut non_null = 0;
    for _ in 0..referents {
        let tower = (c.pointer("ept_map tower pointer")? != 0).then(|| {
            non_null += 1;
            non_null - 1
        });
        entries.push(Entry {
            object: None,
            annotation: None,
            tower,
        });
    }
    finish(c, max_count, entries, "ept_map status")
}

/// Finds the towers of an ept_lookup response stub.
pub fn walk_lookup_response(stub: &[u8], endian: Endian, syntax: Syntax) -> Result<Walk> {
    let mut c = Cursor::new(stub, endian, syntax);
    c.skip(HANDLE_LEN, "ept_lookup entry_handle")?;
    let num = c.u32("ept_lookup num_ents")? as usize;
    let (max_count, n) = array_header(&mut c, "ept_lookup entries")?;
    if n > num {
        return Err(Error::Malformed("ept_lookup entry count beyond num_ents"));
    }
    let mut entries = Vec::with_capacity(n.min(c.remaining() / 24));
    let mut non_null = 0;
    for _ in 0..n {
        // A struct holding a pointer takes the pointer's alignment.
        c.align(syntax.word_len())?;
        let object = c.position()..c.position() + 16;
        c.skip(16, "ept_entry object")?;
        let tower = (c.pointer("ept_entry tower pointer")? != 0).then(|| {
            non_null += 1;
            non_null - 1
        });
        let _offset = c.count("ept_entry annotation offset")?;
        let len = c.count("ept_entry annotation length")?;
        if len > MAX_ANNOTATION {
            return Err(Error::Malformed("ept_entry annotation longer than 64"));
        }
        let annotation = c.position()..c.position() + len;
        c.skip(len, "ept_entry annotation")?;
        entries.push(Entry {
            object: Some(object),
            annotation: Some(annotation),
            tower,
        });
    }
    finish(c, max_count, entries, "ept_lookup status")
}

/// Reads the deferred towers and the status that end both answers.
fn finish(
    mut c: Cursor<'_>,
    max_count: usize,
    entries: Vec<Entry>,
    what: &'static str,
) -> Result<Walk> {
    let non_null = entries.iter().filter(|e| e.tower.is_some()).count();
    let towers = deferred_towers(&mut c, non_null)?;
    let status = c.u32(what)?;
    Ok(Walk {
        handle: 0..HANDLE_LEN,
        max_count,
        entries,
        towers,
        status,
    })
}

/// Reads a conformant varying array's header: its maximum and actual counts.
fn array_header(c: &mut Cursor<'_>, what: &'static str) -> Result<(usize, usize)> {
    let max = c.count(what)?;
    let offset = c.count(what)?;
    let actual = c.count(what)?;
    if offset != 0 || actual > max {
        return Err(Error::Malformed(what));
    }
    Ok((max, actual))
}

/// Reads `n` deferred `twr_t` pointees and returns where each one's octets lie.
fn deferred_towers(c: &mut Cursor<'_>, n: usize) -> Result<Vec<Range<usize>>> {
    // Each tower costs at least 8 bytes, so the stub's length bounds the allocation.
    let mut towers = Vec::with_capacity(n.min(c.remaining() / 8));
    for _ in 0..n {
        let max = c.count("tower conformance")?;
        let len = c.u32("tower_length")? as usize;
        if len > max {
            return Err(Error::Malformed("tower_length beyond its conformance"));
        }
        let start = c.position();
        c.skip(len, "tower octets")?;
        towers.push(start..start + len);
    }
    Ok(towers)
}

/// One element of an answer to encode.
#[derive(Debug, Clone, Copy)]
pub struct EntryRef<'a> {
    /// The object UUID's 16 wire bytes (ept_lookup only; ignored for ept_map).
    pub object: &'a [u8],
    /// The annotation's characters (ept_lookup only; ignored for ept_map).
    pub annotation: &'a [u8],
    /// The tower's octets, or `None` for a null pointer.
    pub tower: Option<&'a [u8]>,
}

/// An ept_map or ept_lookup answer to encode.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    /// ept_lookup (`true`) or ept_map.
    pub lookup: bool,
    /// The entry handle's 20 bytes.
    pub handle: &'a [u8],
    /// The array's maximum count (at least the number of entries is written).
    pub max_count: usize,
    /// The elements.
    pub entries: &'a [EntryRef<'a>],
    /// The call's status.
    pub status: u32,
}

/// Appends an answer stub in the given syntax and byte order: the layouts
/// [`walk_map_response`] and [`walk_lookup_response`] read.
pub fn encode_answer(out: &mut Vec<u8>, endian: Endian, syntax: Syntax, answer: &Answer<'_>) {
    let Answer {
        lookup,
        handle,
        max_count,
        entries,
        status,
    } = *answer;
    let mut w = crate::wire::ndr::Writer::new(out, endian, syntax);
    w.bytes(handle);
    w.u32(entries.len() as u32);
    w.count(max_count.max(entries.len()));
    w.count(0);
    w.count(entries.len());
    // Referent ids as MIDL numbers them; any non-zero value will do.
    let mut referent = 0x0002_0000u64;
    let mut next = || {
        referent += 4;
        referent
    };
    for e in entries {
        let pointer = e.tower.map_or(0, |_| next());
        if lookup {
            w.align(syntax.word_len());
            w.bytes(e.object);
            w.pointer(pointer);
            w.count(0);
            w.count(e.annotation.len());
            w.bytes(e.annotation);
        } else {
            w.pointer(pointer);
        }
    }
    for tower in entries.iter().filter_map(|e| e.tower) {
        w.count(tower.len());
        w.u32(tower.len() as u32);
        w.bytes(tower);
    }
    w.u32(status);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::call::response_stub_range;
    use crate::wire::tower::Tower;
    use crate::wire::SyntaxId;
    use ::uuid::uuid;
    use core::net::Ipv4Addr;

    const NSPI_SERVER: &[u8] = include_bytes!("../../../tests/data/mapi-epm-map-nspi.server.bin");
    const LOOKUP_SERVER: &[u8] = include_bytes!("../../../tests/data/mapi-epm-lookup.server.bin");
    const NSPI: SyntaxId = SyntaxId::new(uuid!("f5cc5a18-4264-101a-8c59-08002b2f8426"), 56, 0);

    fn stub(pdu: &[u8]) -> &[u8] {
        &pdu[response_stub_range(pdu).unwrap()]
    }

    #[test]
    fn walks_exchanges_ept_map_answer() {
        let stub = stub(&NSPI_SERVER[60..]);
        let walk = walk_map_response(stub, Endian::Little, Syntax::Ndr).unwrap();
        assert_eq!(walk.status, 0);
        assert_eq!(walk.towers.len(), 1);
        let t = Tower::new_checked(&stub[walk.towers[0].clone()]).unwrap();
        assert_eq!(t.interface(), Some(NSPI));
        assert_eq!(t.tcp_port(), Some(4997));
        assert_eq!(t.ipv4(), Some(Ipv4Addr::new(192, 168, 0, 2)));
    }

    #[test]
    fn walks_exchanges_ept_lookup_answer() {
        let stub = stub(&LOOKUP_SERVER[60..]);
        let walk = walk_lookup_response(stub, Endian::Little, Syntax::Ndr).unwrap();
        assert_eq!(walk.status, 0);
        assert_eq!(walk.towers.len(), 1);
        let t = Tower::new_checked(&stub[walk.towers[0].clone()]).unwrap();
        // Exchange's NSPI over ncacn_http on port 5000: not a TCP tower.
        assert_eq!(t.interface(), Some(NSPI));
        assert!(!t.is_ncacn_ip_tcp());
    }

    #[test]
    fn every_truncation_of_a_real_answer_is_an_error() {
        let stub = stub(&NSPI_SERVER[60..]);
        for cut in 0..stub.len() {
            assert!(walk_map_response(&stub[..cut], Endian::Little, Syntax::Ndr).is_err());
        }
        let stub = super::tests::stub(&LOOKUP_SERVER[60..]);
        for cut in 0..stub.len() {
            assert!(walk_lookup_response(&stub[..cut], Endian::Little, Syntax::Ndr).is_err());
        }
    }

    #[test]
    fn encoded_answers_walk_back_to_the_same_parts() {
        let map = stub(&NSPI_SERVER[60..]);
        let lookup = super::tests::stub(&LOOKUP_SERVER[60..]);
        for (answer, is_lookup) in [(map, false), (lookup, true)] {
            let walk = if is_lookup {
                walk_lookup_response(answer, Endian::Little, Syntax::Ndr)
            } else {
                walk_map_response(answer, Endian::Little, Syntax::Ndr)
            }
            .unwrap();
            let refs: Vec<EntryRef<'_>> = walk
                .entries
                .iter()
                .map(|e| EntryRef {
                    object: e.object.clone().map_or(&[][..], |r| &answer[r]),
                    annotation: e.annotation.clone().map_or(&[][..], |r| &answer[r]),
                    tower: e.tower.map(|i| &answer[walk.towers[i].clone()]),
                })
                .collect();
            for endian in [Endian::Little, Endian::Big] {
                for syntax in [Syntax::Ndr, Syntax::Ndr64] {
                    let mut out = Vec::new();
                    let a = Answer {
                        lookup: is_lookup,
                        handle: &answer[walk.handle.clone()],
                        max_count: walk.max_count,
                        entries: &refs,
                        status: 7,
                    };
                    encode_answer(&mut out, endian, syntax, &a);
                    let again = if is_lookup {
                        walk_lookup_response(&out, endian, syntax)
                    } else {
                        walk_map_response(&out, endian, syntax)
                    }
                    .unwrap();
                    assert_eq!(again.status, 7);
                    assert_eq!(again.max_count, walk.max_count);
                    assert_eq!(again.entries.len(), walk.entries.len());
                    for (a, b) in again.towers.iter().zip(&walk.towers) {
                        assert_eq!(out[a.clone()], answer[b.clone()]);
                    }
                    if endian == Endian::Little && syntax == Syntax::Ndr && !is_lookup {
                        // Exchange's own referent ids differ; everything else is the same.
                        assert_eq!(out.len(), answer.len());
                    }
                }
            }
        }
    }

    #[test]
    fn walks_an_answer_of_a_quarter_million_null_pointers() {
        // What a hostile endpoint mapper could send to fill limits.max_reassembly: the walk
        // must stay linear in the answer's size.
        let n = 65_536;
        let mut stub = vec![0u8; 20];
        for v in [n, n, 0, n] {
            stub.extend_from_slice(&(v as u32).to_le_bytes());
        }
        stub.resize(stub.len() + 4 * n + 4, 0);
        let walk = walk_map_response(&stub, Endian::Little, Syntax::Ndr).unwrap();
        assert_eq!((walk.entries.len(), walk.towers.len()), (n, 0));
    }

    #[test]
    fn rejects_inconsistent_counts() {
        let mut s = stub(&NSPI_SERVER[60..]).to_vec();
        // actual_count (offset 32) above max_count (offset 24).
        s[32] = 9;
        assert_eq!(
            walk_map_response(&s, Endian::Little, Syntax::Ndr),
            Err(Error::Malformed("ept_map towers"))
        );
        let mut s = stub(&NSPI_SERVER[60..]).to_vec();
        // tower_length (offset 44) beyond its conformance (offset 40).
        s[44] = 0x4c;
        assert_eq!(
            walk_map_response(&s, Endian::Little, Syntax::Ndr),
            Err(Error::Malformed("tower_length beyond its conformance"))
        );
    }
}
