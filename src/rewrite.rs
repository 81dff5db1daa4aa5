//! Rewriting the towers of an endpoint-mapper response, in place, across fragments.
//!
//! A response may span several fragments and a tower may straddle a boundary. The stub is
//! gathered into one bounded buffer only to walk it and patch it; the patched bytes are then
//! put back where they came from. Every rewrite keeps every length, so `frag_length`,
//! alignment and offsets do not change, and a rewrite that changes nothing changes no byte.

use std::net::Ipv4Addr;

use crate::interfaces::Interface;
use crate::wire::epm::{opnum, walk_lookup_response, walk_map_response};
use crate::wire::ndr::Syntax;
use crate::wire::pdu::response_stub_range;
use crate::wire::tower::Tower;
use crate::wire::{Endian, Error, Result, SyntaxId};

/// Where towers of the pinned interfaces must point.
#[derive(Debug, Clone, Default)]
pub struct Table {
    entries: Vec<Target>,
}

/// One pinned interface and where clients must go for it.
#[derive(Debug, Clone)]
pub struct Target {
    /// The interface.
    pub interface: Interface,
    /// The pin's name, for logs.
    pub pin: String,
    /// The port clients are sent to.
    pub port: u16,
}

impl Table {
    /// A table from its entries.
    pub fn new(entries: Vec<Target>) -> Table {
        Table { entries }
    }

    /// Where `interface` is pinned, if it is.
    pub fn target(&self, interface: &SyntaxId) -> Option<&Target> {
        self.entries.iter().find(|t| t.interface.matches(interface))
    }
}

/// One tower that was rewritten, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// The tower's interface.
    pub interface: SyntaxId,
    /// The pin it was sent to.
    pub pin: String,
    /// The backend's port, as the tower had it.
    pub backend_port: u16,
    /// The port written instead.
    pub public_port: u16,
    /// The backend's address, as the tower had it.
    pub backend_addr: Ipv4Addr,
    /// The address written instead.
    pub advertised: Ipv4Addr,
}

/// Whether a call's response carries towers rpcpin rewrites.
pub fn carries_towers(op: u16) -> bool {
    matches!(op, opnum::MAP | opnum::LOOKUP)
}

/// Rewrites, in place, every ncacn_ip_tcp tower of a pinned interface in the response
/// fragments of one ept_map or ept_lookup call.
///
/// `fragments` are whole response PDUs of one call, in order. The stub they carry is at most
/// `max_stub` bytes. Towers of unpinned interfaces and towers of other protocols
/// (ncacn_http, named pipes) are left as they are.
pub fn rewrite_call<F: AsMut<[u8]> + AsRef<[u8]>>(
    fragments: &mut [F],
    op: u16,
    syntax: Syntax,
    table: &Table,
    advertise: Ipv4Addr,
    max_stub: usize,
) -> Result<Vec<Rewritten>> {
    let Some(first) = fragments.first() else {
        return Ok(Vec::new());
    };
    let endian = crate::wire::Pdu::new_checked(first.as_ref())?.endian();
    let mut stub = Vec::new();
    for f in fragments.iter() {
        let r = response_stub_range(f.as_ref())?;
        if stub.len() + r.len() > max_stub {
            return Err(Error::TooLarge {
                what: "reassembled response",
                len: stub.len() + r.len(),
                max: max_stub,
            });
        }
        stub.extend_from_slice(&f.as_ref()[r]);
    }
    let done = rewrite_stub(&mut stub, endian, op, syntax, table, advertise)?;
    if !done.is_empty() {
        let mut at = 0;
        for f in fragments.iter_mut() {
            let r = response_stub_range(f.as_ref())?;
            let len = r.len();
            f.as_mut()[r].copy_from_slice(&stub[at..at + len]);
            at += len;
        }
    }
    Ok(done)
}

/// Rewrites the towers of one reassembled stub in place.
pub fn rewrite_stub(
    stub: &mut [u8],
    endian: Endian,
    op: u16,
    syntax: Syntax,
    table: &Table,
    advertise: Ipv4Addr,
) -> Result<Vec<Rewritten>> {
    let walk = match op {
        opnum::MAP => walk_map_response(stub, endian, syntax)?,
        opnum::LOOKUP => walk_lookup_response(stub, endian, syntax)?,
        _ => return Ok(Vec::new()),
    };
    let mut done = Vec::new();
    for range in walk.towers {
        // A tower that does not parse is not one rpcpin can point anywhere: leave it.
        let Ok(mut tower) = Tower::new_checked(&mut stub[range]) else {
            continue;
        };
        if !tower.is_ncacn_ip_tcp() {
            continue;
        }
        let Some(interface) = tower.interface() else {
            continue;
        };
        let Some(target) = table.target(&interface) else {
            continue;
        };
        let (Some(backend_port), Some(backend_addr)) = (tower.tcp_port(), tower.ipv4()) else {
            continue;
        };
        tower.set_tcp_port(target.port);
        tower.set_ipv4(advertise);
        done.push(Rewritten {
            interface,
            pin: target.pin.clone(),
            backend_port,
            public_port: target.port,
            backend_addr,
            advertised: advertise,
        });
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::header::flags;

    const NSPI_SERVER: &[u8] = include_bytes!("../tests/data/mapi-epm-map-nspi.server.bin");
    const EMSMDB_SERVER: &[u8] = include_bytes!("../tests/data/mapi-epm-map-emsmdb.server.bin");
    const LOOKUP_SERVER: &[u8] = include_bytes!("../tests/data/mapi-epm-lookup.server.bin");
    const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

    fn exchange_table() -> Table {
        let pin = |alias: &str, name: &str, port| Target {
            interface: Interface::parse(alias).unwrap()[0],
            pin: name.into(),
            port,
        };
        Table::new(vec![
            pin("nspi", "directory", 6004),
            pin("emsmdb", "store", 6001),
        ])
    }

    fn changed(a: &[u8], b: &[u8]) -> Vec<usize> {
        (0..a.len()).filter(|&i| a[i] != b[i]).collect()
    }

    #[test]
    fn rewrites_exchanges_nspi_answer() {
        let original = &NSPI_SERVER[60..];
        let mut frags = [original.to_vec()];
        let done = rewrite_call(
            &mut frags,
            opnum::MAP,
            Syntax::Ndr,
            &exchange_table(),
            PUBLIC,
            1 << 20,
        )
        .unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].backend_port, 4997);
        assert_eq!(done[0].public_port, 6004);
        assert_eq!(done[0].backend_addr, Ipv4Addr::new(192, 168, 0, 2));
        // Only the port (2 bytes) and the address (4 bytes) of the tower changed.
        let offs = changed(original, &frags[0]);
        assert_eq!(offs.len(), 6, "{offs:?}");
        assert_eq!(&frags[0][offs[0]..offs[0] + 2], &6004u16.to_be_bytes());
        assert_eq!(&frags[0][offs[2]..offs[2] + 4], &PUBLIC.octets());
    }

    #[test]
    fn rewrites_exchanges_emsmdb_answer() {
        let mut frags = [EMSMDB_SERVER[60..].to_vec()];
        let done = rewrite_call(
            &mut frags,
            opnum::MAP,
            Syntax::Ndr,
            &exchange_table(),
            PUBLIC,
            1 << 20,
        )
        .unwrap();
        assert_eq!((done[0].backend_port, done[0].public_port), (1032, 6001));
        assert_eq!(done[0].pin, "store");
    }

    #[test]
    fn unpinned_interface_is_untouched() {
        let original = NSPI_SERVER[60..].to_vec();
        let mut frags = [original.clone()];
        let table = Table::new(vec![exchange_table().entries[1].clone()]);
        let done =
            rewrite_call(&mut frags, opnum::MAP, Syntax::Ndr, &table, PUBLIC, 1 << 20).unwrap();
        assert!(done.is_empty());
        assert_eq!(frags[0], original);
    }

    #[test]
    fn http_tower_of_a_lookup_is_untouched() {
        let original = LOOKUP_SERVER[60..].to_vec();
        let mut frags = [original.clone()];
        let done = rewrite_call(
            &mut frags,
            opnum::LOOKUP,
            Syntax::Ndr,
            &exchange_table(),
            PUBLIC,
            1 << 20,
        )
        .unwrap();
        assert!(done.is_empty());
        assert_eq!(frags[0], original);
    }

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
        let mut expected = [single.clone()];
        rewrite_call(
            &mut expected,
            opnum::MAP,
            Syntax::Ndr,
            &exchange_table(),
            PUBLIC,
            1 << 20,
        )
        .unwrap();
        // Every split point, so that the port and the address fall across boundaries too.
        for chunk in 1..single.len() - 24 {
            let mut frags = fragment(&single, chunk);
            let lens: Vec<usize> = frags.iter().map(Vec::len).collect();
            let done = rewrite_call(
                &mut frags,
                opnum::MAP,
                Syntax::Ndr,
                &exchange_table(),
                PUBLIC,
                1 << 20,
            )
            .unwrap();
            assert_eq!(done.len(), 1, "chunk {chunk}");
            assert_eq!(frags.iter().map(Vec::len).collect::<Vec<_>>(), lens);
            let stub: Vec<u8> = frags.iter().flat_map(|f| f[24..].to_vec()).collect();
            assert_eq!(stub, expected[0][24..], "chunk {chunk}");
        }
    }

    /// ept_map and ept_lookup answers in NDR and NDR64 built by impacket, and the answers
    /// impacket builds with the towers a correct rewrite yields (tests/data/impacket).
    #[test]
    fn impacket_vectors() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/impacket/");
        let manifest = std::fs::read_to_string(format!("{dir}manifest.txt")).unwrap();
        let table = Table::new(vec![
            exchange_table().entries[0].clone(),
            exchange_table().entries[1].clone(),
        ]);
        let mut seen = 0;
        for line in manifest.lines() {
            let (name, rewrites) = line.split_once(' ').unwrap();
            let input = std::fs::read(format!("{dir}{name}.in.bin")).unwrap();
            let expected = std::fs::read(format!("{dir}{name}.out.bin")).unwrap();
            let op = if name.starts_with("lookup") {
                opnum::LOOKUP
            } else {
                opnum::MAP
            };
            let syntax = if name.ends_with("ndr64") {
                Syntax::Ndr64
            } else {
                Syntax::Ndr
            };
            let mut stub = input.clone();
            let done = rewrite_stub(&mut stub, Endian::Little, op, syntax, &table, PUBLIC).unwrap();
            assert_eq!(done.len(), rewrites.parse::<usize>().unwrap(), "{name}");
            assert_eq!(stub, expected, "{name}");
            // Walking NDR64 as NDR (or the reverse) must not silently produce a rewrite.
            let wrong = if syntax == Syntax::Ndr {
                Syntax::Ndr64
            } else {
                Syntax::Ndr
            };
            let mut again = input.clone();
            if let Ok(d) = rewrite_stub(&mut again, Endian::Little, op, wrong, &table, PUBLIC) {
                assert!(
                    d.is_empty() || again != expected,
                    "{name} walked as {wrong:?}"
                );
            }
            seen += 1;
        }
        assert_eq!(seen, 6);
    }

    #[test]
    fn reassembly_is_bounded() {
        let mut frags = fragment(&NSPI_SERVER[60..], 16);
        let r = rewrite_call(
            &mut frags,
            opnum::MAP,
            Syntax::Ndr,
            &exchange_table(),
            PUBLIC,
            100,
        );
        assert!(matches!(r, Err(Error::TooLarge { .. })));
    }
}
