//! The endpoint mapper's calls (C706 appendix O, `ept_*`): walkers that
//! find the towers inside ept_map and ept_lookup responses, and the one request rpcpin
//! sends itself.
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
//! `count` and `pointer` are 4 bytes in NDR and 8 (8-aligned) in NDR64; see [`super::ndr`].

use core::ops::Range;

use super::ndr::{Cursor, Syntax};
use super::{Endian, Error, Result, SyntaxId};

/// The endpoint mapper interface, `ept` v3.0.
pub const EPM: SyntaxId = SyntaxId::new("e1af8308-5d1f-11c9-91a4-08002b14a0fa", 3, 0);

/// Operation numbers of the `ept` interface.
pub mod opnum {
    /// Registers endpoints (management).
    pub const INSERT: u16 = 0;
    /// Removes endpoints (management).
    pub const DELETE: u16 = 1;
    /// Enumerates the map.
    pub const LOOKUP: u16 = 2;
    /// Finds the towers of an interface.
    pub const MAP: u16 = 3;
    /// Frees an enumeration handle.
    pub const LOOKUP_HANDLE_FREE: u16 = 4;
    /// Asks for the object of an endpoint.
    pub const INQ_OBJECT: u16 = 5;
    /// Removes an endpoint by tower (management).
    pub const MGMT_DELETE: u16 = 6;
    /// ept_map with an authorisation check.
    pub const MAP_AUTH: u16 = 7;
}

/// `ept_s_not_registered`: no endpoint for the interface (C706 appendix N).
pub const EPT_S_NOT_REGISTERED: u32 = 0x16c9_a0d6;

/// Length of a context handle (`ept_lookup_handle_t`).
const HANDLE_LEN: usize = 20;
/// The largest annotation an `ept_entry_t` holds (`ept_max_annotation_size`).
const MAX_ANNOTATION: usize = 64;

/// Where the parts of an ept_map or ept_lookup response lie in its stub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walk {
    /// The octets of each non-null tower, in order.
    pub towers: Vec<Range<usize>>,
    /// The call's status (0: success).
    pub status: u32,
}

/// Finds the towers of an ept_map response stub.
pub fn walk_map_response(stub: &[u8], endian: Endian, syntax: Syntax) -> Result<Walk> {
    let mut c = Cursor::new(stub, endian, syntax);
    c.skip(HANDLE_LEN, "ept_map entry_handle")?;
    let num = c.u32("ept_map num_towers")? as usize;
    let referents = array_header(&mut c, "ept_map towers")?;
    if referents > num {
        return Err(Error::Malformed("ept_map tower count beyond num_towers"));
    }
    let mut non_null = 0;
    for _ in 0..referents {
        if c.pointer("ept_map tower pointer")? != 0 {
            non_null += 1;
        }
    }
    let towers = deferred_towers(&mut c, non_null)?;
    let status = c.u32("ept_map status")?;
    Ok(Walk { towers, status })
}

/// Finds the towers of an ept_lookup response stub.
pub fn walk_lookup_response(stub: &[u8], endian: Endian, syntax: Syntax) -> Result<Walk> {
    let mut c = Cursor::new(stub, endian, syntax);
    c.skip(HANDLE_LEN, "ept_lookup entry_handle")?;
    let num = c.u32("ept_lookup num_ents")? as usize;
    let entries = array_header(&mut c, "ept_lookup entries")?;
    if entries > num {
        return Err(Error::Malformed("ept_lookup entry count beyond num_ents"));
    }
    let mut non_null = 0;
    for _ in 0..entries {
        // A struct holding a pointer takes the pointer's alignment.
        c.align(syntax.wide())?;
        c.skip(16, "ept_entry object")?;
        if c.pointer("ept_entry tower pointer")? != 0 {
            non_null += 1;
        }
        let _offset = c.count("ept_entry annotation offset")?;
        let len = c.count("ept_entry annotation length")?;
        if len > MAX_ANNOTATION {
            return Err(Error::Malformed("ept_entry annotation longer than 64"));
        }
        c.skip(len, "ept_entry annotation")?;
    }
    let towers = deferred_towers(&mut c, non_null)?;
    let status = c.u32("ept_lookup status")?;
    Ok(Walk { towers, status })
}

/// Reads a conformant varying array's header and returns its actual count.
fn array_header(c: &mut Cursor<'_>, what: &'static str) -> Result<usize> {
    let max = c.count(what)?;
    let offset = c.count(what)?;
    let actual = c.count(what)?;
    if offset != 0 || actual > max {
        return Err(Error::Malformed(what));
    }
    Ok(actual)
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

/// Appends an NDR ept_map request stub asking for the towers of `query` (a tower as built
/// by [`super::tower::encode_tcp_tower`]), with a nil object UUID as Windows sends.
pub fn encode_map_request(out: &mut Vec<u8>, endian: Endian, query: &[u8], max_towers: u32) {
    let u32_ = |out: &mut Vec<u8>, v: u32| {
        out.extend_from_slice(&match endian {
            Endian::Little => v.to_le_bytes(),
            Endian::Big => v.to_be_bytes(),
        })
    };
    let start = out.len();
    u32_(out, 1); // object: referent id
    out.extend_from_slice(&[0; 16]); // nil UUID
    u32_(out, 2); // map_tower: referent id
    u32_(out, query.len() as u32); // conformance
    u32_(out, query.len() as u32); // tower_length
    out.extend_from_slice(query);
    out.resize(start + ((out.len() - start + 3) & !3), 0);
    out.extend_from_slice(&[0; HANDLE_LEN]); // entry_handle: none yet
    u32_(out, max_towers);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::pdu::{response_stub_range, Request};
    use crate::wire::tower::{encode_tcp_tower, Tower};
    use core::net::Ipv4Addr;

    const NSPI_CLIENT: &[u8] = include_bytes!("../../tests/data/mapi-epm-map-nspi.client.bin");
    const NSPI_SERVER: &[u8] = include_bytes!("../../tests/data/mapi-epm-map-nspi.server.bin");
    const LOOKUP_SERVER: &[u8] = include_bytes!("../../tests/data/mapi-epm-lookup.server.bin");
    const NSPI: SyntaxId = SyntaxId::new("f5cc5a18-4264-101a-8c59-08002b2f8426", 56, 0);

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
    fn encodes_outlooks_ept_map_request() {
        let req = Request::parse(&NSPI_CLIENT[72..]).unwrap();
        let original = &NSPI_CLIENT[72..][req.stub_range()];
        let mut query = Vec::new();
        encode_tcp_tower(&mut query, NSPI, 135, Ipv4Addr::UNSPECIFIED);
        let mut out = Vec::new();
        encode_map_request(&mut out, Endian::Little, &query, 4);
        assert_eq!(out, original);
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
