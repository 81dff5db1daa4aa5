//! bind_nak: a bind refused as a whole (C706 §12.6.4.5).

use super::answer::align4;
use crate::wire::pdu::{finish_pdu, write_header};
use crate::wire::{get_u16, put_u16, EncodeError, Endian, Error, PacketType, Pdu, Result};

/// Offsets of bind_nak's fields after the common header (C706 §12.6.4.5).
mod field {
    /// `provider_reject_reason` u16; then the protocol versions supported.
    pub const REASON: usize = 16;
}

/// `p_reject_reason_t` values carried by bind_nak (C706 §12.6.3.1).
pub mod nak_reason {
    /// No reason given.
    pub const NOT_SPECIFIED: u16 = 0;
    /// The server is too busy.
    pub const TEMPORARY_CONGESTION: u16 = 1;
    /// A resource limit was reached.
    pub const LOCAL_LIMIT_EXCEEDED: u16 = 2;
    /// The protocol version is not supported.
    pub const PROTOCOL_VERSION_NOT_SUPPORTED: u16 = 4;
}

/// Appends a bind_nak offering protocol version 5.0.
pub fn encode_bind_nak(
    out: &mut Vec<u8>,
    endian: Endian,
    call_id: u32,
    reason: u16,
) -> Result<(), EncodeError> {
    let start = out.len();
    let flags = crate::wire::pdu::flags::FIRST_FRAG | crate::wire::pdu::flags::LAST_FRAG;
    write_header(out, PacketType::BindNak, flags, endian, call_id);
    put_u16(out, reason, endian);
    out.extend_from_slice(&[1, 5, 0]);
    out.resize(start + align4(out.len() - start), 0);
    finish_pdu(&mut out[start..], endian)
}

/// A checked bind_nak PDU.
#[derive(Debug, Clone, Copy)]
pub struct BindNak<'a> {
    pdu: Pdu<&'a [u8]>,
}

impl<'a> BindNak<'a> {
    /// Checks a whole bind_nak PDU (the reason is all rpcpin reads of it).
    pub fn parse(bytes: &'a [u8]) -> Result<BindNak<'a>> {
        BindNak::from_pdu(Pdu::new_checked(bytes)?)
    }

    /// Checks that a PDU whose header is checked is a bind_nak with a reason.
    pub fn from_pdu(pdu: Pdu<&'a [u8]>) -> Result<BindNak<'a>> {
        if pdu.ptype() != PacketType::BindNak {
            return Err(Error::Unsupported("pdu type (expected bind_nak)"));
        }
        if pdu.body_end() < field::REASON + 2 {
            return Err(Error::Truncated("bind_nak body"));
        }
        Ok(BindNak { pdu })
    }

    /// The PDU itself.
    pub fn pdu(&self) -> &Pdu<&'a [u8]> {
        &self.pdu
    }

    /// Why the bind was refused (`p_reject_reason_t`).
    pub fn reason(&self) -> u16 {
        get_u16(self.pdu.into_inner(), field::REASON, self.pdu.endian())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::hex;

    #[test]
    fn encodes_a_bind_nak() {
        let mut out = Vec::new();
        encode_bind_nak(&mut out, Endian::Little, 3, nak_reason::NOT_SPECIFIED).unwrap();
        assert_eq!(
            out,
            hex("05000d03 10000000 18000000 03000000 0000 01 0500 000000")
        );
    }

    #[test]
    fn reads_the_reason_back() {
        let mut out = Vec::new();
        encode_bind_nak(&mut out, Endian::Big, 9, nak_reason::TEMPORARY_CONGESTION).unwrap();
        let nak = BindNak::parse(&out).unwrap();
        assert_eq!((nak.pdu().call_id(), nak.reason()), (9, 1));
        assert_eq!(
            BindNak::parse(&out[..16]).err(),
            Some(Error::Truncated("pdu"))
        );
    }
}
