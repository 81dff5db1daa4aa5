//! UUIDs and presentation syntax identifiers on the wire (C706 appendix A, §12.6.3.1
//! `p_syntax_id_t`).
//!
//! [`Uuid`] is the `uuid` crate's type, in its canonical (string) byte order; constants are
//! written with its `uuid!` macro. On the wire a UUID's first three fields follow the byte
//! order of the context they appear in: the PDU's drep inside NDR, always little endian
//! inside a protocol tower. [`read`], [`from_wire`] and [`write()`] convert.

use core::fmt;

pub use ::uuid::Uuid;

use super::{get_u16, get_u32, put_u16, put_u32, Endian, Error, Result};

/// Offsets of a UUID's fields (C706 appendix A) and of a `p_syntax_id_t`'s (§12.6.3.1).
mod field {
    use core::ops::Range;
    pub const TIME_LOW: usize = 0;
    pub const TIME_MID: usize = 4;
    pub const TIME_HI_AND_VERSION: usize = 6;
    /// `clock_seq_hi_and_reserved`, `clock_seq_low` and `node`: bytes, in no byte order.
    pub const CLOCK_SEQ_AND_NODE: Range<usize> = 8..16;
    /// After the syntax's UUID: major version in the low 16 bits, minor in the high.
    pub const SYNTAX_VERSION: usize = 16;
}

/// Length of a UUID on the wire.
pub const LEN: usize = 16;

/// Reads a UUID whose first three fields are in `endian` order.
pub fn from_wire(bytes: &[u8], endian: Endian) -> Result<Uuid> {
    bytes
        .first_chunk::<LEN>()
        .map(|b| read(b, endian))
        .ok_or(Error::Truncated("uuid"))
}

/// Reads a UUID from exactly 16 bytes: infallible.
pub fn read(bytes: &[u8; LEN], endian: Endian) -> Uuid {
    let mut tail = [0u8; 8];
    tail.copy_from_slice(&bytes[field::CLOCK_SEQ_AND_NODE]);
    Uuid::from_fields(
        get_u32(bytes, field::TIME_LOW, endian),
        get_u16(bytes, field::TIME_MID, endian),
        get_u16(bytes, field::TIME_HI_AND_VERSION, endian),
        &tail,
    )
}

/// Appends the 16 wire bytes of `uuid`, its first three fields in `endian` order.
pub fn write(out: &mut Vec<u8>, uuid: &Uuid, endian: Endian) {
    let (time_low, time_mid, time_hi, tail) = uuid.as_fields();
    put_u32(out, time_low, endian);
    put_u16(out, time_mid, endian);
    put_u16(out, time_hi, endian);
    out.extend_from_slice(tail);
}

/// An interface or transfer syntax: UUID plus version (`p_syntax_id_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SyntaxId {
    /// The interface or transfer syntax UUID.
    pub uuid: Uuid,
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
}

/// The bind-time feature negotiation pseudo-syntax: its first 8 bytes (MS-RPCE 3.3.1.5.3).
const FEATURE_NEGOTIATION: Uuid = ::uuid::uuid!("6cb71c2c-9812-4540-0000-000000000000");

impl SyntaxId {
    /// Length of a `p_syntax_id_t` on the wire.
    pub const LEN: usize = 20;

    /// NDR 2.0, the classic transfer syntax.
    pub const NDR: SyntaxId =
        SyntaxId::new(::uuid::uuid!("8a885d04-1ceb-11c9-9fe8-08002b104860"), 2, 0);
    /// NDR64 1.0 (MS-RPCE 2.2.5).
    pub const NDR64: SyntaxId =
        SyntaxId::new(::uuid::uuid!("71710533-beba-4937-8319-b5dbef9ccc36"), 1, 0);

    /// A syntax from its UUID and version.
    pub const fn new(uuid: Uuid, major: u16, minor: u16) -> SyntaxId {
        SyntaxId { uuid, major, minor }
    }

    /// Reads a `p_syntax_id_t`: the UUID then a u32 version, major in the low 16 bits.
    pub fn from_wire(bytes: &[u8], endian: Endian) -> Result<SyntaxId> {
        bytes
            .first_chunk::<20>()
            .map(|b| Self::read(b, endian))
            .ok_or(Error::Truncated("syntax id"))
    }

    /// Reads a `p_syntax_id_t` from exactly 20 bytes: infallible.
    pub fn read(bytes: &[u8; 20], endian: Endian) -> SyntaxId {
        let (uuid, _) = bytes
            .split_first_chunk::<LEN>()
            .unwrap_or_else(|| unreachable!("20 bytes hold 16"));
        let version = get_u32(bytes, field::SYNTAX_VERSION, endian);
        SyntaxId {
            uuid: read(uuid, endian),
            major: version as u16,
            minor: (version >> 16) as u16,
        }
    }

    /// Appends the `p_syntax_id_t` encoding in `endian` order.
    pub fn write(&self, out: &mut Vec<u8>, endian: Endian) {
        write(out, &self.uuid, endian);
        let version = u32::from(self.major) | (u32::from(self.minor) << 16);
        put_u32(out, version, endian);
    }

    /// Whether this transfer syntax is the bind-time feature negotiation pseudo-syntax
    /// (MS-RPCE 3.3.1.5.3: UUID 6cb71c2c-9812-4540-xxxx-xxxxxxxxxxxx, the rest are flags).
    pub fn is_feature_negotiation(&self) -> bool {
        self.uuid.as_bytes()[..8] == FEATURE_NEGOTIATION.as_bytes()[..8]
    }
}

impl fmt::Display for SyntaxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}.{}", self.uuid, self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::hex;

    #[test]
    fn uuid_round_trips_through_both_byte_orders() {
        let ndr = SyntaxId::NDR;
        // As in every little-endian bind of the captures.
        let le = hex("045d888aeb1cc9119fe808002b10486002000000");
        assert_eq!(SyntaxId::from_wire(&le, Endian::Little).unwrap(), ndr);
        let mut out = Vec::new();
        ndr.write(&mut out, Endian::Little);
        assert_eq!(out, le);
        out.clear();
        ndr.write(&mut out, Endian::Big);
        assert_eq!(SyntaxId::from_wire(&out, Endian::Big).unwrap(), ndr);
        assert_eq!(&out[..4], &[0x8a, 0x88, 0x5d, 0x04]);
        assert_eq!(
            from_wire(&le[..15], Endian::Little),
            Err(Error::Truncated("uuid"))
        );
    }

    #[test]
    fn uuid_prints_lowercase_hyphenated() {
        // As logs and `rpcpin check` show it, whatever case the configuration used.
        let u = ::uuid::uuid!("E1AF8308-5D1F-11C9-91A4-08002B14A0FA");
        assert_eq!(u.to_string(), "e1af8308-5d1f-11c9-91a4-08002b14a0fa");
        assert_eq!(format!("{u:?}"), "e1af8308-5d1f-11c9-91a4-08002b14a0fa");
        assert_eq!(
            SyntaxId::new(u, 3, 0).to_string(),
            "e1af8308-5d1f-11c9-91a4-08002b14a0fa@3.0"
        );
    }

    #[test]
    fn recognises_feature_negotiation() {
        let fneg = SyntaxId::new(::uuid::uuid!("6cb71c2c-9812-4540-0300-000000000000"), 1, 0);
        assert!(fneg.is_feature_negotiation());
        assert!(!SyntaxId::NDR64.is_feature_negotiation());
    }
}
