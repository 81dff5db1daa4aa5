//! The endpoint mapper's requests as its server reads them (C706 appendix O, `ept.idl`), their
//! encoders, and the ept_lookup_handle_free answer.
//!
//! ```text
//! ept_map (opnum 3)                          ept_lookup (opnum 2)
//!   object: [ptr] uuid_t                       inquiry_type u32
//!     referent id (pointer); if not 0: uuid    object: [ptr] uuid_t, as for ept_map
//!   map_tower: [ptr] twr_t                     interface_id: [ptr] rpc_if_id_t
//!     referent id; if not 0: conformance         referent id; if not 0:
//!     (count), tower_length u32, octets          uuid, vers_major u16, vers_minor u16
//!   entry_handle  20 bytes                     vers_option u32
//!   max_towers    u32                          entry_handle 20 bytes
//!                                              max_ents u32
//! ept_map_auth (opnum 7): object and map_tower are [ref] (no referent id), and a
//!   [unique] SID follows map_tower: referent id; if not 0: conformance (count),
//!   revision u8, sub_authority_count u8, authority [6], sub_authority u32[count]
//! ept_lookup_handle_free (opnum 4): entry_handle 20 bytes; answer: entry_handle, status u32
//! ```
//!
//! Top-level pointers' referents follow the pointer at once (C706 §14.3.12.3). UUIDs are
//! 4-aligned with their first three fields in drep order; a context handle is 4-aligned.
//! C706 and DCE's `ept.idl` do not define opnum 7; its layout is Windows' (rpcss's
//! `ept_map_auth`, as its NDR format strings describe it): Samba does not implement it.
//! Bytes after the last parameter are ignored.

use ::uuid::Uuid;

use super::{opnum, HANDLE_LEN};
use crate::wire::ndr::{Cursor, Syntax, Writer};
use crate::wire::tower::Tower;
use crate::wire::{get_u16, uuid, Endian, Error, Result, SyntaxId};

/// Offsets inside the fixed-size parts of the requests.
mod field {
    /// `rpc_if_id_t` (C706 appendix O): the UUID, then two u16 versions in drep order.
    pub mod if_id {
        pub const VERS_MAJOR: usize = 16;
        pub const VERS_MINOR: usize = 18;
        pub const LEN: usize = 20;
    }
    /// A SID's fixed part (MS-DTYP 2.4.2.3), before its sub-authorities.
    pub mod sid {
        pub const SUB_AUTHORITY_COUNT: usize = 1;
        pub const LEN: usize = 8;
        /// `SID_MAX_SUB_AUTHORITIES`.
        pub const MAX_SUB_AUTHORITIES: usize = 15;
    }
}

/// `inquiry_type` values of ept_lookup (C706 appendix O).
pub mod inquiry {
    /// Every element (`rpc_c_ep_all_elts`).
    pub const ALL_ELTS: u32 = 0;
    /// Elements of the interface (`rpc_c_ep_match_by_if`).
    pub const MATCH_BY_IF: u32 = 1;
    /// Elements of the object (`rpc_c_ep_match_by_obj`).
    pub const MATCH_BY_OBJ: u32 = 2;
    /// Elements of both (`rpc_c_ep_match_by_both`).
    pub const MATCH_BY_BOTH: u32 = 3;
}

/// `vers_option` values of ept_lookup (C706 appendix O).
pub mod vers_option {
    /// Any version (`rpc_c_vers_all`).
    pub const ALL: u32 = 1;
    /// Same major, minor at least the one asked (`rpc_c_vers_compatible`).
    pub const COMPATIBLE: u32 = 2;
    /// Exactly the version asked (`rpc_c_vers_exact`).
    pub const EXACT: u32 = 3;
    /// Same major (`rpc_c_vers_major_only`).
    pub const MAJOR_ONLY: u32 = 4;
    /// Up to the version asked (`rpc_c_vers_upto`).
    pub const UPTO: u32 = 5;
}

/// A checked ept_map (opnum 3) or ept_map_auth (opnum 7) request.
#[derive(Debug, Clone)]
pub struct MapRequest<'a> {
    object: Option<Uuid>,
    tower: Tower<&'a [u8]>,
    sid: Option<&'a [u8]>,
    handle: &'a [u8; HANDLE_LEN],
    max_towers: u32,
}

impl<'a> MapRequest<'a> {
    /// Reads the request stub of `op` ([`opnum::MAP`] or [`opnum::MAP_AUTH`]; another opnum
    /// is [`Error::Unsupported`]). A null map tower, or one whose floors do not fit its
    /// octets, is an error.
    pub fn parse(stub: &'a [u8], endian: Endian, syntax: Syntax, op: u16) -> Result<Self> {
        let auth = match op {
            opnum::MAP => false,
            opnum::MAP_AUTH => true,
            _ => return Err(Error::Unsupported("ept opnum for a map request")),
        };
        let mut c = Cursor::new(stub, endian, syntax);
        let object = if auth {
            Some(read_uuid(&mut c, endian, "ept_map_auth object")?)
        } else {
            unique_uuid(&mut c, endian, "ept_map object")?
        };
        if !auth && c.pointer("ept_map map_tower pointer")? == 0 {
            return Err(Error::Malformed("ept_map null map_tower"));
        }
        let max = c.count("map_tower conformance")?;
        let len = c.u32("map_tower tower_length")? as usize;
        if len > max {
            return Err(Error::Malformed(
                "map_tower tower_length beyond its conformance",
            ));
        }
        let tower = Tower::new_checked(c.take(len, "map_tower octets")?)?;
        let sid = if auth { read_sid(&mut c)? } else { None };
        let handle = read_handle(&mut c)?;
        let max_towers = c.u32("ept_map max_towers")?;
        Ok(MapRequest {
            object,
            tower,
            sid,
            handle,
            max_towers,
        })
    }

    /// The object UUID; `None` for a null pointer (the nil UUID is `Some(Uuid::nil())`).
    pub fn object(&self) -> Option<Uuid> {
        self.object
    }

    /// The map tower: what the client asks for, with zeros where it leaves the port and
    /// address to the answer.
    pub fn tower(&self) -> &Tower<&'a [u8]> {
        &self.tower
    }

    /// ept_map_auth's SID as it lies in the stub (revision, count, authority, then the
    /// sub-authorities in the stub's byte order); `None` for ept_map or a null pointer.
    pub fn sid(&self) -> Option<&'a [u8]> {
        self.sid
    }

    /// The entry handle (all zeros on a first call).
    pub fn entry_handle(&self) -> &'a [u8; HANDLE_LEN] {
        self.handle
    }

    /// The most towers the client takes: the answer's array size.
    pub fn max_towers(&self) -> u32 {
        self.max_towers
    }
}

/// A checked ept_lookup (opnum 2) request.
#[derive(Debug, Clone)]
pub struct LookupRequest<'a> {
    inquiry_type: u32,
    object: Option<Uuid>,
    interface: Option<SyntaxId>,
    vers_option: u32,
    handle: &'a [u8; HANDLE_LEN],
    max_ents: u32,
}

impl<'a> LookupRequest<'a> {
    /// Reads an ept_lookup request stub.
    pub fn parse(stub: &'a [u8], endian: Endian, syntax: Syntax) -> Result<Self> {
        let mut c = Cursor::new(stub, endian, syntax);
        let inquiry_type = c.u32("ept_lookup inquiry_type")?;
        let object = unique_uuid(&mut c, endian, "ept_lookup object")?;
        let interface = if c.pointer("ept_lookup interface_id pointer")? == 0 {
            None
        } else {
            c.align(4)?;
            let b = c.take(field::if_id::LEN, "ept_lookup interface_id")?;
            Some(SyntaxId {
                uuid: uuid::from_wire(b, endian)?,
                major: get_u16(b, field::if_id::VERS_MAJOR, endian),
                minor: get_u16(b, field::if_id::VERS_MINOR, endian),
            })
        };
        let vers_option = c.u32("ept_lookup vers_option")?;
        let handle = read_handle(&mut c)?;
        let max_ents = c.u32("ept_lookup max_ents")?;
        Ok(LookupRequest {
            inquiry_type,
            object,
            interface,
            vers_option,
            handle,
            max_ents,
        })
    }

    /// What to match: one of [`inquiry`]'s values (others are the caller's to refuse).
    pub fn inquiry_type(&self) -> u32 {
        self.inquiry_type
    }

    /// The object UUID; `None` for a null pointer.
    pub fn object(&self) -> Option<Uuid> {
        self.object
    }

    /// The interface (`rpc_if_id_t`); `None` for a null pointer.
    pub fn interface(&self) -> Option<SyntaxId> {
        self.interface
    }

    /// How to match the interface's version: one of [`vers_option`]'s values.
    pub fn vers_option(&self) -> u32 {
        self.vers_option
    }

    /// The entry handle (all zeros on a first call).
    pub fn entry_handle(&self) -> &'a [u8; HANDLE_LEN] {
        self.handle
    }

    /// The most entries the client takes: the answer's array size.
    pub fn max_ents(&self) -> u32 {
        self.max_ents
    }
}

/// A checked ept_lookup_handle_free (opnum 4) request.
#[derive(Debug, Clone, Copy)]
pub struct HandleFreeRequest<'a> {
    handle: &'a [u8; HANDLE_LEN],
}

impl<'a> HandleFreeRequest<'a> {
    /// Reads an ept_lookup_handle_free request stub: the same in every syntax and byte
    /// order, which are taken for uniformity.
    pub fn parse(stub: &'a [u8], endian: Endian, syntax: Syntax) -> Result<Self> {
        let mut c = Cursor::new(stub, endian, syntax);
        Ok(HandleFreeRequest {
            handle: read_handle(&mut c)?,
        })
    }

    /// The handle to free.
    pub fn entry_handle(&self) -> &'a [u8; HANDLE_LEN] {
        self.handle
    }
}

/// Reads a `[ptr] uuid_t`: `None` for a null pointer.
fn unique_uuid(c: &mut Cursor<'_>, endian: Endian, what: &'static str) -> Result<Option<Uuid>> {
    if c.pointer(what)? == 0 {
        return Ok(None);
    }
    read_uuid(c, endian, what).map(Some)
}

/// Reads a 4-aligned UUID in drep order.
fn read_uuid(c: &mut Cursor<'_>, endian: Endian, what: &'static str) -> Result<Uuid> {
    c.align(4)?;
    uuid::from_wire(c.take(uuid::LEN, what)?, endian)
}

/// Reads a 4-aligned context handle.
fn read_handle<'a>(c: &mut Cursor<'a>) -> Result<&'a [u8; HANDLE_LEN]> {
    c.align(4)?;
    c.take(HANDLE_LEN, "ept entry_handle")?
        .first_chunk::<HANDLE_LEN>()
        .ok_or(Error::Truncated("ept entry_handle"))
}

/// Reads ept_map_auth's `[unique] PISID`.
fn read_sid<'a>(c: &mut Cursor<'a>) -> Result<Option<&'a [u8]>> {
    if c.pointer("ept_map_auth sid pointer")? == 0 {
        return Ok(None);
    }
    let n = c.count("ept_map_auth sid conformance")?;
    if n > field::sid::MAX_SUB_AUTHORITIES {
        return Err(Error::Malformed("ept_map_auth sid sub-authority count"));
    }
    // The sub-authorities follow the fixed part unpadded: it ends 4-aligned.
    let sid = c.take(field::sid::LEN + 4 * n, "ept_map_auth sid")?;
    if usize::from(sid[field::sid::SUB_AUTHORITY_COUNT]) != n {
        return Err(Error::Malformed("ept_map_auth sid sub-authority count"));
    }
    Ok(Some(sid))
}

/// An ept_map or ept_map_auth request to encode: [`MapRequest`]'s parts.
#[derive(Debug, Clone, Copy)]
pub struct MapQuery<'a> {
    /// ept_map_auth (opnum 7) rather than ept_map (opnum 3).
    pub auth: bool,
    /// The object UUID, `None` for a null pointer (ept_map_auth writes the nil UUID).
    pub object: Option<Uuid>,
    /// The map tower's octets.
    pub tower: &'a [u8],
    /// ept_map_auth's SID as [`MapRequest::sid`] gives it (ignored for ept_map). Its second
    /// byte is its sub-authority count: a SID of another length is written as the count says,
    /// cut or padded with zeros.
    pub sid: Option<&'a [u8]>,
    /// The entry handle.
    pub handle: &'a [u8; HANDLE_LEN],
    /// The most towers the client takes.
    pub max_towers: u32,
}

/// Appends an ept_map or ept_map_auth request stub, with referent ids 1, 2, … in order as
/// Windows numbers them.
pub fn encode_map_query(out: &mut Vec<u8>, endian: Endian, syntax: Syntax, q: &MapQuery<'_>) {
    let mut w = Writer::new(out, endian, syntax);
    let mut referent = 0;
    let mut next = || {
        referent += 1;
        referent
    };
    match (q.auth, q.object) {
        (true, object) => write_uuid(&mut w, &object.unwrap_or_default(), endian),
        (false, None) => w.pointer(0),
        (false, Some(object)) => {
            w.pointer(next());
            write_uuid(&mut w, &object, endian);
        }
    }
    if !q.auth {
        w.pointer(next());
    }
    w.count(q.tower.len());
    w.u32(q.tower.len() as u32);
    w.bytes(q.tower);
    if q.auth {
        match q.sid {
            None => w.pointer(0),
            Some(sid) => {
                w.pointer(next());
                let n = sid
                    .get(field::sid::SUB_AUTHORITY_COUNT)
                    .map_or(0, |&n| usize::from(n));
                w.count(n);
                let len = field::sid::LEN + 4 * n;
                let mut padded = sid[..sid.len().min(len)].to_vec();
                padded.resize(len, 0);
                w.bytes(&padded);
            }
        }
    }
    w.align(4);
    w.bytes(q.handle);
    w.u32(q.max_towers);
}

/// Appends an NDR ept_map request stub asking for the towers of `query` (a tower as built
/// by [`crate::wire::tower::encode_tcp_tower`]), with a nil object UUID as Windows sends.
pub fn encode_map_request(out: &mut Vec<u8>, endian: Endian, query: &[u8], max_towers: u32) {
    let q = MapQuery {
        auth: false,
        object: Some(Uuid::nil()),
        tower: query,
        sid: None,
        handle: &[0; HANDLE_LEN],
        max_towers,
    };
    encode_map_query(out, endian, Syntax::Ndr, &q);
}

/// An ept_lookup request to encode: [`LookupRequest`]'s parts.
#[derive(Debug, Clone, Copy)]
pub struct LookupQuery<'a> {
    /// What to match.
    pub inquiry_type: u32,
    /// The object UUID, `None` for a null pointer.
    pub object: Option<Uuid>,
    /// The interface, `None` for a null pointer.
    pub interface: Option<SyntaxId>,
    /// How to match the interface's version.
    pub vers_option: u32,
    /// The entry handle.
    pub handle: &'a [u8; HANDLE_LEN],
    /// The most entries the client takes.
    pub max_ents: u32,
}

/// Appends an ept_lookup request stub, with referent ids 1, 2 as Windows numbers them.
pub fn encode_lookup_request(
    out: &mut Vec<u8>,
    endian: Endian,
    syntax: Syntax,
    q: &LookupQuery<'_>,
) {
    let mut w = Writer::new(out, endian, syntax);
    w.u32(q.inquiry_type);
    let mut referent = 0;
    if let Some(object) = q.object {
        referent += 1;
        w.pointer(referent);
        write_uuid(&mut w, &object, endian);
    } else {
        w.pointer(0);
    }
    if let Some(interface) = q.interface {
        referent += 1;
        w.pointer(referent);
        write_uuid(&mut w, &interface.uuid, endian);
        w.bytes(&endian.u16_bytes(interface.major));
        w.bytes(&endian.u16_bytes(interface.minor));
    } else {
        w.pointer(0);
    }
    w.u32(q.vers_option);
    w.bytes(q.handle);
    w.u32(q.max_ents);
}

/// Appends an ept_lookup_handle_free answer stub: the handle (all zeros once freed) and
/// the status.
pub fn encode_handle_free_answer(
    out: &mut Vec<u8>,
    endian: Endian,
    syntax: Syntax,
    handle: &[u8; HANDLE_LEN],
    status: u32,
) {
    let mut w = Writer::new(out, endian, syntax);
    w.bytes(handle);
    w.u32(status);
}

/// Writes a 4-aligned UUID in drep order.
fn write_uuid(w: &mut Writer<'_>, u: &Uuid, endian: Endian) {
    let mut b = Vec::with_capacity(uuid::LEN);
    uuid::write(&mut b, u, endian);
    w.align(4);
    w.bytes(&b);
}
