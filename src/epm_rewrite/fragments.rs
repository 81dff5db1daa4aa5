//! Gathering the stub of an answer from its fragments and putting it back: a tower may
//! straddle a fragment boundary, so the stub is reassembled (bounded) to walk it, and the
//! patched bytes go back where they came from; an answer with entries removed is cut into
//! new fragments.

use super::{rewrite_stub, Changes, Rules};
use crate::wire::call::{encode_response_fragments, Response};
use crate::wire::ndr::Syntax;
use crate::wire::{Error, Pdu, Result};

/// Rewrites the answer carried by the response fragments of one ept_map or ept_lookup call.
///
/// `fragments` are whole response PDUs of one call, in order, their headers checked,
/// carrying at most `max_stub` bytes of stub. When towers only need patching, the patched
/// stub is put back into the fragments where it came from (a tower may straddle a boundary)
/// and every length stays as it was. When entries are hidden, the answer is re-encoded and
/// cut into new fragments no larger than the backend's largest, returned in
/// `Changes::reencoded` as whole PDUs joined together (the caller forwards them instead).
pub fn rewrite_call<F: AsMut<[u8]> + AsRef<[u8]>>(
    fragments: &mut [Pdu<F>],
    op: u16,
    syntax: Syntax,
    rules: Rules<'_>,
    max_stub: usize,
) -> Result<Changes> {
    let Some(first) = fragments.first() else {
        return Ok(Changes::default());
    };
    let endian = first.endian();
    let mut stub = Vec::new();
    let mut largest = 0;
    for f in fragments.iter() {
        let part = Response::from_pdu(f.view())?.stub();
        largest = largest.max(part.len());
        if stub.len() + part.len() > max_stub {
            return Err(Error::TooLarge {
                what: "reassembled response",
                len: stub.len() + part.len(),
                max: max_stub,
            });
        }
        stub.extend_from_slice(part);
    }
    let mut done = rewrite_stub(&mut stub, endian, op, syntax, rules)?;
    if let Some(new_stub) = done.reencoded.take() {
        let template = Response::from_pdu(first.view())?;
        done.reencoded = Some(encode_response_fragments(
            &template,
            &new_stub,
            largest.max(8),
        ));
    } else if !done.rewritten.is_empty() {
        let mut at = 0;
        for f in fragments.iter_mut() {
            let r = Response::from_pdu(f.view())?.stub_range();
            let len = r.len();
            f.as_bytes_mut()[r].copy_from_slice(&stub[at..at + len]);
            at += len;
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::*;
    use crate::interfaces::Interface;
    use crate::wire::epm::{opnum, walk_lookup_response, walk_map_response};
    use crate::wire::pdu::flags;
    use crate::wire::tower::Tower;
    use crate::wire::Endian;

    /// Splits one single-fragment response into fragments of `chunk` stub bytes each.
    fn fragment(pdu: &[u8], chunk: usize) -> Vec<Vec<u8>> {
        let stub = &pdu[24..];
        let n = stub.chunks(chunk).count();
        stub.chunks(chunk)
            .enumerate()
            .map(|(i, part)| {
                let mut f = pdu[..24].to_vec();
                f[3] = if i == 0 { flags::FIRST_FRAG } else { 0 }
                    | if i == n - 1 { flags::LAST_FRAG } else { 0 };
                f.extend_from_slice(part);
                let len = f.len() as u16;
                f[8..10].copy_from_slice(&len.to_le_bytes());
                f
            })
            .collect()
    }

    #[test]
    fn patches_a_tower_that_straddles_fragments() {
        let single = NSPI_SERVER[60..].to_vec();
        let table = exchange_table();
        let mut expected = [single.clone()];
        rewrite_in(&mut expected, opnum::MAP, &table, true);
        // Every split point, so that the port and the address fall across boundaries too.
        for chunk in 1..single.len() - 24 {
            let mut frags = fragment(&single, chunk);
            let lens: Vec<usize> = frags.iter().map(Vec::len).collect();
            let done = rewrite_in(&mut frags, opnum::MAP, &table, true);
            assert_eq!(done.rewritten.len(), 1, "chunk {chunk}");
            assert_eq!(frags.iter().map(Vec::len).collect::<Vec<_>>(), lens);
            let stub: Vec<u8> = frags.iter().flat_map(|f| f[24..].to_vec()).collect();
            assert_eq!(stub, expected[0][24..], "chunk {chunk}");
        }
    }

    #[test]
    fn hidden_entries_are_refragmented_within_the_backends_fragment_size() {
        let (input, _) = vector("lookup-ndr");
        let mut pdu = NSPI_SERVER[60..84].to_vec();
        pdu.extend_from_slice(&input);
        let len = pdu.len() as u16;
        pdu[8..10].copy_from_slice(&len.to_le_bytes());
        let table = exchange_table();
        let mut frags = fragment(&pdu, 100);
        let done = rewrite_in(&mut frags, opnum::LOOKUP, &table, true);
        // samr (unpinned) and nspi's ncacn_http tower are removed; nspi tcp, emsmdb twice remain.
        let n = (
            done.hidden.len(),
            done.other_towers.len(),
            done.rewritten.len(),
        );
        assert_eq!(n, (1, 1, 3));
        let samr = Interface::parse("samr").unwrap()[0];
        assert_eq!(
            done.hidden[0].map(|i| i.uuid),
            Some(samr.uuid),
            "samr named"
        );
        let out = done.reencoded.unwrap();
        let mut stub = Vec::new();
        let mut rest = &out[..];
        let mut n = 0;
        while !rest.is_empty() {
            let p = Pdu::new_checked(rest).unwrap();
            assert!(p.frag_len() - 24 <= 100);
            assert_eq!(p.flags() & 1 != 0, n == 0);
            stub.extend_from_slice(&rest[24..p.frag_len()]);
            n += 1;
            rest = &rest[p.frag_len()..];
        }
        assert!(Pdu::new_checked(&out[out.len() - 124..]).is_err() || n > 1);
        let walk = walk_lookup_response(&stub, Endian::Little, Syntax::Ndr).unwrap();
        assert_eq!(walk.entries.len(), 3);
        let ports: Vec<u16> = walk
            .towers
            .iter()
            .filter_map(|r| Tower::new_checked(&stub[r.clone()]).ok()?.tcp_port())
            .collect();
        assert_eq!(ports, [6004, 6001, 6001]);
    }

    /// impacket's ept_map answers for the pinned NSPI over ncacn_http, ncacn_ip_tcp and
    /// ncacn_np, in 40-byte fragments: only the ncacn_ip_tcp tower is left, rewritten, as in
    /// the answer impacket builds with that tower alone (tests/data/impacket, map-mixed).
    #[test]
    fn other_towers_of_a_pinned_interface_are_hidden() {
        let table = exchange_table();
        for (name, syntax) in [
            ("map-mixed-ndr", Syntax::Ndr),
            ("map-mixed-ndr64", Syntax::Ndr64),
        ] {
            let (input, expected) = vector(name);
            let mut frags = fragment(&[&NSPI_SERVER[60..84], &input[..]].concat(), 40);
            let rules = rules(&table, true);
            let done = rewrite_call(&mut checked(&mut frags), opnum::MAP, syntax, rules, MAX);
            let done = done.unwrap();
            let hidden: Vec<_> = done.other_towers.iter().map(|t| t.protocol).collect();
            assert_eq!(hidden, [Some(0x1f), Some(0x0f)], "{name}");
            assert_eq!(done.rewritten.len(), 1, "{name}");
            let (out, mut stub) = (done.reencoded.unwrap(), Vec::new());
            let mut rest = &out[..];
            while !rest.is_empty() {
                let n = Pdu::new_checked(rest).unwrap().frag_len();
                stub.extend_from_slice(&rest[24..n]);
                rest = &rest[n..];
            }
            let towers = |stub: &[u8]| {
                let w = walk_map_response(stub, Endian::Little, syntax).unwrap();
                let t: Vec<_> = w.towers.iter().map(|r| stub[r.clone()].to_vec()).collect();
                (w.status, t)
            };
            assert_eq!(towers(&stub), towers(&expected), "{name}");
        }
    }

    #[test]
    fn reassembly_is_bounded() {
        let mut frags = fragment(&NSPI_SERVER[60..], 16);
        let table = exchange_table();
        let r = rewrite_call(
            &mut checked(&mut frags),
            opnum::MAP,
            Syntax::Ndr,
            rules(&table, true),
            100,
        );
        assert!(matches!(r, Err(Error::TooLarge { .. })));
    }
}
