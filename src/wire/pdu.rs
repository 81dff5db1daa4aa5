//! The 16-byte common header of every connection-oriented PDU (C706 §12.6.3.1).

use core::fmt;

use super::{get_u16, get_u32, put_u32, set_u16, EncodeError, Endian, Error, Result};

/// Offsets of the common header's fields (C706 §12.6.3.1).
mod field {
    use core::ops::Range;
    pub const VERSION: usize = 0;
    pub const VERSION_MINOR: usize = 1;
    pub const PTYPE: usize = 2;
    pub const FLAGS: usize = 3;
    pub const DREP: Range<usize> = 4..8;
    pub const FRAG_LEN: usize = 8;
    pub const AUTH_LEN: usize = 10;
    pub const CALL_ID: usize = 12;

    /// Within the `sec_trailer` that precedes an auth verifier (C706 §13.2.6.1).
    pub mod sec_trailer {
        pub const AUTH_TYPE: usize = 0;
        pub const AUTH_LEVEL: usize = 1;
        pub const AUTH_PAD_LEN: usize = 2;
    }
}

/// Length of the common header.
pub const HEADER_LEN: usize = 16;

/// Length of the `sec_trailer` that precedes an auth verifier (C706 §13.2.6.1).
pub const SEC_TRAILER_LEN: usize = 8;

/// `pfc_flags` bits (C706 §12.6.3.1, MS-RPCE 2.2.2.3).
pub mod flags {
    /// First fragment of a call.
    pub const FIRST_FRAG: u8 = 0x01;
    /// Last fragment of a call.
    pub const LAST_FRAG: u8 = 0x02;
    /// Bind/alter_context: the client supports concurrent multiplexing; elsewhere, cancel pending.
    pub const PENDING_CANCEL: u8 = 0x04;
    /// MS-RPCE: header signing is supported (bind), or reserved.
    pub const SUPPORT_HEADER_SIGN: u8 = 0x04;
    /// Concurrent multiplexing.
    pub const CONC_MPX: u8 = 0x10;
    /// The call did not execute (fault).
    pub const DID_NOT_EXECUTE: u8 = 0x20;
    /// `maybe` call semantics.
    pub const MAYBE: u8 = 0x40;
    /// A request carries an object UUID after its fixed fields.
    pub const OBJECT_UUID: u8 = 0x80;
}

/// The PDU type (C706 §12.6.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    /// A call's request.
    Request,
    /// A call's response.
    Response,
    /// A call failed.
    Fault,
    /// Association set-up.
    Bind,
    /// Bind accepted (possibly with some contexts rejected).
    BindAck,
    /// Bind refused as a whole.
    BindNak,
    /// Adds or changes presentation contexts on an association.
    AlterContext,
    /// Answer to an alter_context.
    AlterContextResp,
    /// Third leg of an authentication handshake (MS-RPCE 2.2.2.10).
    Auth3,
    /// Server asks the client to shut the association down.
    Shutdown,
    /// Cancel of an outstanding call.
    CoCancel,
    /// Client abandons a call.
    Orphaned,
    /// Any other value, kept so it can be logged and refused.
    Unknown(u8),
}

impl From<u8> for PacketType {
    fn from(value: u8) -> PacketType {
        match value {
            0 => PacketType::Request,
            2 => PacketType::Response,
            3 => PacketType::Fault,
            11 => PacketType::Bind,
            12 => PacketType::BindAck,
            13 => PacketType::BindNak,
            14 => PacketType::AlterContext,
            15 => PacketType::AlterContextResp,
            16 => PacketType::Auth3,
            17 => PacketType::Shutdown,
            18 => PacketType::CoCancel,
            19 => PacketType::Orphaned,
            other => PacketType::Unknown(other),
        }
    }
}

impl From<PacketType> for u8 {
    fn from(value: PacketType) -> u8 {
        match value {
            PacketType::Request => 0,
            PacketType::Response => 2,
            PacketType::Fault => 3,
            PacketType::Bind => 11,
            PacketType::BindAck => 12,
            PacketType::BindNak => 13,
            PacketType::AlterContext => 14,
            PacketType::AlterContextResp => 15,
            PacketType::Auth3 => 16,
            PacketType::Shutdown => 17,
            PacketType::CoCancel => 18,
            PacketType::Orphaned => 19,
            PacketType::Unknown(other) => other,
        }
    }
}

impl fmt::Display for PacketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PacketType::Unknown(v) => write!(f, "unknown({v})"),
            other => write!(f, "{}", format!("{other:?}").to_ascii_lowercase()),
        }
    }
}

/// A checked view over one whole PDU: the header plus `frag_length - 16` body bytes.
#[derive(Debug, Clone, Copy)]
pub struct Pdu<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Pdu<T> {
    /// Validates the header (version 5.0/5.1, `frag_length` within the buffer and large
    /// enough for the header and any auth verifier) so that no accessor can panic.
    pub fn new_checked(buffer: T) -> Result<Pdu<T>> {
        let pdu = Pdu { buffer };
        pdu.check()?;
        Ok(pdu)
    }

    /// A view over `buffer`, whose first 16 bytes [`check_header`] has passed and which
    /// holds exactly `frag_length` bytes: how [`super::frame::next_pdu`] hands out the PDU it
    /// framed without checking the header twice.
    pub(super) fn framed(buffer: T) -> Pdu<T> {
        debug_assert!(Pdu {
            buffer: buffer.as_ref()
        }
        .check()
        .is_ok());
        Pdu { buffer }
    }

    fn check(&self) -> Result<()> {
        let buf = self.buffer.as_ref();
        check_header(buf)?;
        let frag_len = get_u16(buf, field::FRAG_LEN, endian_of(buf)) as usize;
        if buf.len() < frag_len {
            return Err(Error::Truncated("pdu"));
        }
        Ok(())
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The same checked PDU, borrowed and cut to its `frag_length` bytes: what the views'
    /// `from_pdu` take, so that the header is not checked again.
    pub fn view(&self) -> Pdu<&[u8]> {
        Pdu {
            buffer: self.as_bytes(),
        }
    }

    /// The PDU's bytes (exactly `frag_length` of them).
    pub fn as_bytes(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.frag_len()]
    }

    /// The minor version: 0 or 1.
    pub fn minor_version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION_MINOR]
    }

    /// The PDU type.
    pub fn ptype(&self) -> PacketType {
        PacketType::from(self.buffer.as_ref()[field::PTYPE])
    }

    /// The `pfc_flags` byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The data representation label.
    pub fn drep(&self) -> [u8; 4] {
        drep_of(self.buffer.as_ref())
    }

    /// The byte order of the header's integers and the NDR body.
    pub fn endian(&self) -> Endian {
        endian_of(self.buffer.as_ref())
    }

    /// Total length of this fragment.
    pub fn frag_len(&self) -> usize {
        get_u16(self.buffer.as_ref(), field::FRAG_LEN, self.endian()) as usize
    }

    /// Length of the auth verifier's credentials (not counting the 8-byte `sec_trailer`).
    pub fn auth_len(&self) -> usize {
        get_u16(self.buffer.as_ref(), field::AUTH_LEN, self.endian()) as usize
    }

    /// The call identifier.
    pub fn call_id(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::CALL_ID, self.endian())
    }

    /// Whether this fragment ends its call. Both fragment flags clear means a middle
    /// fragment of a call in progress, or a whole call from a legacy (NT4) peer: only the
    /// caller knows whether earlier fragments of this call were seen.
    pub fn ends_call(&self, call_in_progress: bool) -> bool {
        let f = self.flags() & (flags::FIRST_FRAG | flags::LAST_FRAG);
        f & flags::LAST_FRAG != 0 || (f == 0 && !call_in_progress)
    }

    /// The bytes after the header and before the auth verifier (if any).
    pub fn body(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.body_end()]
    }

    /// End offset of the body: the start of the `sec_trailer` when there is one.
    pub fn body_end(&self) -> usize {
        let auth = self.auth_len();
        if auth == 0 {
            self.frag_len()
        } else {
            // check_header guarantees this does not underflow below the header.
            self.frag_len() - auth - SEC_TRAILER_LEN
        }
    }

    /// The `sec_trailer` fields `(auth_type, auth_level, auth_pad_length)`, when present.
    pub fn auth_trailer(&self) -> Option<(u8, u8, u8)> {
        if self.auth_len() == 0 {
            return None;
        }
        use field::sec_trailer as f;
        let t = &self.buffer.as_ref()[self.body_end()..];
        Some((t[f::AUTH_TYPE], t[f::AUTH_LEVEL], t[f::AUTH_PAD_LEN]))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Pdu<T> {
    /// The PDU's bytes, writable.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        let len = self.frag_len();
        &mut self.buffer.as_mut()[..len]
    }

    /// Sets `frag_length` (only encoders that resize a PDU use this).
    pub fn set_frag_len(&mut self, len: u16) {
        let endian = self.endian();
        set_u16(self.buffer.as_mut(), field::FRAG_LEN, len, endian);
    }
}

/// The drep of the header at the front of `buf`; the caller has checked it holds one.
fn drep_of(buf: &[u8]) -> [u8; 4] {
    let mut drep = [0; 4];
    drep.copy_from_slice(&buf[field::DREP]);
    drep
}

fn endian_of(buf: &[u8]) -> Endian {
    Endian::from_drep(drep_of(buf))
}

/// How much of a PDU [`head_of`] keeps: the common header and a call's fixed fields (a
/// request's context id and opnum, and its object UUID when it carries one).
pub const HEAD_LEN: usize = 40;

/// The head of the PDU at the front of `buf`, as a PDU of its own copied into `copy`: its
/// first bytes, no further than [`HEAD_LEN`] nor than where its body ends, with
/// `frag_length` set to their count and no auth verifier. Its type, flags, call id and
/// fixed fields are the PDU's; what lies beyond (the rest of the body, the verifier) is not
/// there to read. `buf` holds at least `min(frag_length, HEAD_LEN)` bytes.
pub fn head_of<'a>(buf: &[u8], copy: &'a mut [u8; HEAD_LEN]) -> Result<Pdu<&'a [u8]>> {
    let frag_len = check_header(buf)?;
    let endian = endian_of(buf);
    let auth_len = get_u16(buf, field::AUTH_LEN, endian) as usize;
    // check_header guarantees this does not underflow below the header.
    let body_end = match auth_len {
        0 => frag_len,
        _ => frag_len - auth_len - SEC_TRAILER_LEN,
    };
    let len = body_end.min(HEAD_LEN);
    let Some(head) = buf.get(..len) else {
        return Err(Error::Truncated("pdu head"));
    };
    copy[..len].copy_from_slice(head);
    set_u16(copy, field::FRAG_LEN, len as u16, endian);
    set_u16(copy, field::AUTH_LEN, 0, endian);
    Ok(Pdu::framed(&copy[..len]))
}

/// Checks the 16 header bytes alone: version, minor version, and that `frag_length` leaves
/// room for the header and for the auth verifier that `auth_length` announces.
/// Returns `frag_length`.
pub fn check_header(buf: &[u8]) -> Result<usize> {
    if buf.len() < HEADER_LEN {
        return Err(Error::Truncated("pdu header"));
    }
    if buf[field::VERSION] != 5 {
        return Err(Error::Malformed("rpc version (expected 5)"));
    }
    if buf[field::VERSION_MINOR] > 1 {
        return Err(Error::Malformed("rpc minor version (expected 0 or 1)"));
    }
    let endian = endian_of(buf);
    let frag_len = get_u16(buf, field::FRAG_LEN, endian) as usize;
    let auth_len = get_u16(buf, field::AUTH_LEN, endian) as usize;
    if frag_len < HEADER_LEN {
        return Err(Error::Malformed("frag_length shorter than the header"));
    }
    if auth_len > 0 && HEADER_LEN + SEC_TRAILER_LEN + auth_len > frag_len {
        return Err(Error::Malformed("auth_length beyond frag_length"));
    }
    Ok(frag_len)
}

/// Appends a 16-byte header; `frag_length` is written as 0 for the caller to fix up.
pub fn write_header(out: &mut Vec<u8>, ptype: PacketType, flags: u8, endian: Endian, call_id: u32) {
    out.extend_from_slice(&[5, 0, ptype.into(), flags]);
    out.extend_from_slice(&endian.drep());
    out.extend_from_slice(&[0, 0, 0, 0]); // frag_length, auth_length
    put_u32(out, call_id, endian);
}

/// Appends a 16-byte header for another PDU of the call `template` belongs to: its minor
/// version, byte order and call id; `frag_length` is written as 0 for the caller to fix up.
pub fn write_header_like<T: AsRef<[u8]>>(
    out: &mut Vec<u8>,
    template: &Pdu<T>,
    ptype: PacketType,
    flags: u8,
) {
    let start = out.len();
    write_header(out, ptype, flags, template.endian(), template.call_id());
    out[start + field::VERSION_MINOR] = template.minor_version();
}

/// Writes the final `frag_length` into a PDU built with [`write_header`].
pub fn finish_pdu(out: &mut [u8], endian: Endian) -> Result<(), EncodeError> {
    let len = EncodeError::fit("encoded pdu", out.len(), u16::MAX)?;
    set_u16(out, field::FRAG_LEN, len, endian);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::hex;

    // The bind_ack of the NSPI ept_map exchange in mapi.pcap.
    const BIND_ACK: &str = "05000c03100000003c00000001000000d016d016e5c8000004003133350000000100\
                            000000000000045d888aeb1cc9119fe808002b10486002000000";

    #[test]
    fn test_deconstruct() {
        let bytes = hex(BIND_ACK);
        let pdu = Pdu::new_checked(&bytes[..]).unwrap();
        assert_eq!(pdu.ptype(), PacketType::BindAck);
        assert_eq!(pdu.flags(), flags::FIRST_FRAG | flags::LAST_FRAG);
        assert_eq!(pdu.endian(), Endian::Little);
        assert_eq!(pdu.frag_len(), 60);
        assert_eq!(pdu.auth_len(), 0);
        assert_eq!(pdu.call_id(), 1);
        assert_eq!(pdu.body().len(), 44);
        assert_eq!(pdu.auth_trailer(), None);
    }

    #[test]
    fn test_construct_big_endian() {
        let mut out = Vec::new();
        write_header(&mut out, PacketType::Fault, 3, Endian::Big, 0x01020304);
        out.extend_from_slice(&[0; 8]);
        finish_pdu(&mut out, Endian::Big).unwrap();
        assert_eq!(hex("05000303 00000000 00180000 01020304"), out[..16]);
        let pdu = Pdu::new_checked(&out[..]).unwrap();
        assert_eq!(pdu.frag_len(), 24);
        assert_eq!(pdu.call_id(), 0x01020304);
    }

    #[test]
    fn rejects_bad_headers() {
        let good = hex(BIND_ACK);
        let mut v4 = good.clone();
        v4[0] = 4;
        assert_eq!(
            check_header(&v4),
            Err(Error::Malformed("rpc version (expected 5)"))
        );
        let mut minor = good.clone();
        minor[1] = 2;
        assert!(check_header(&minor).is_err());
        let mut short = good.clone();
        short[8] = 15;
        assert_eq!(
            check_header(&short),
            Err(Error::Malformed("frag_length shorter than the header"))
        );
        let mut auth = good.clone();
        auth[10] = 0x30; // 48 + 8 + 16 > 60
        assert_eq!(
            check_header(&auth),
            Err(Error::Malformed("auth_length beyond frag_length"))
        );
        assert_eq!(
            Pdu::new_checked(&good[..59]).err(),
            Some(Error::Truncated("pdu"))
        );
        assert_eq!(
            check_header(&good[..15]),
            Err(Error::Truncated("pdu header"))
        );
    }

    #[test]
    fn pdu_without_fragment_flags_is_a_whole_call_unless_one_is_in_progress() {
        let mut bytes = hex(BIND_ACK);
        bytes[3] = 0;
        let pdu = Pdu::new_checked(&bytes[..]).unwrap();
        assert!(pdu.ends_call(false), "legacy whole call");
        assert!(!pdu.ends_call(true), "middle fragment");
        bytes[3] = flags::FIRST_FRAG;
        assert!(!Pdu::new_checked(&bytes[..]).unwrap().ends_call(false));
        bytes[3] = flags::LAST_FRAG;
        assert!(Pdu::new_checked(&bytes[..]).unwrap().ends_call(true));
    }
}
