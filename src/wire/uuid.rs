//! UUIDs and presentation syntax identifiers (C706 appendix A, §12.6.3.1 `p_syntax_id_t`).

use core::fmt;
use core::str::FromStr;

use super::{get_u16, get_u32, put_u32, Endian, Error, Result};

/// A DCE UUID, held in its canonical (string) byte order.
///
/// On the wire the first three fields follow the byte order of the context they appear in:
/// the PDU's drep inside NDR, always little endian inside a protocol tower.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// Length of a UUID on the wire.
    pub const LEN: usize = 16;

    /// Builds a UUID from a constant string; panics at compile time on a bad literal.
    pub const fn from_str_const(s: &str) -> Uuid {
        let s = s.as_bytes();
        let mut out = [0u8; 16];
        let mut i = 0;
        let mut o = 0;
        while i < s.len() {
            if s[i] == b'-' {
                i += 1;
                continue;
            }
            out[o] = (hex_val(s[i]) << 4) | hex_val(s[i + 1]);
            o += 1;
            i += 2;
        }
        assert!(o == 16, "a UUID has 16 bytes");
        Uuid(out)
    }

    /// Reads a UUID whose first three fields are in `endian` order.
    pub fn from_wire(bytes: &[u8], endian: Endian) -> Result<Uuid> {
        bytes
            .first_chunk::<16>()
            .map(|b| Self::read(b, endian))
            .ok_or(Error::Truncated("uuid"))
    }

    /// Reads a UUID from exactly 16 bytes: infallible.
    pub fn read(bytes: &[u8; 16], endian: Endian) -> Uuid {
        let mut out = [0u8; 16];
        out[0..4].copy_from_slice(&get_u32(bytes, 0, endian).to_be_bytes());
        out[4..6].copy_from_slice(&get_u16(bytes, 4, endian).to_be_bytes());
        out[6..8].copy_from_slice(&get_u16(bytes, 6, endian).to_be_bytes());
        out[8..16].copy_from_slice(&bytes[8..16]);
        Uuid(out)
    }

    /// The 16 wire bytes with the first three fields in `endian` order.
    pub fn to_wire(&self, endian: Endian) -> [u8; 16] {
        let mut out = self.0;
        if endian == Endian::Little {
            out[0..4].reverse();
            out[4..6].reverse();
            out[6..8].reverse();
        }
        out
    }
}

fn first16(bytes: &[u8; 20]) -> &[u8; 16] {
    let (head, _) = bytes
        .split_first_chunk::<16>()
        .unwrap_or_else(|| unreachable!());
    head
}

const fn hex_val(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => panic!("not a hex digit"),
    }
}

impl FromStr for Uuid {
    type Err = &'static str;

    fn from_str(s: &str) -> core::result::Result<Uuid, &'static str> {
        let b = s.as_bytes();
        let dashes = [8, 13, 18, 23];
        if b.len() != 36 || dashes.iter().any(|&d| b[d] != b'-') {
            return Err("expected the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx");
        }
        if !b
            .iter()
            .enumerate()
            .all(|(i, c)| dashes.contains(&i) || c.is_ascii_hexdigit())
        {
            return Err("a UUID holds only hexadecimal digits and dashes");
        }
        Ok(Uuid::from_str_const(s))
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
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

impl SyntaxId {
    /// Length of a `p_syntax_id_t` on the wire.
    pub const LEN: usize = 20;

    /// NDR 2.0, the classic transfer syntax.
    pub const NDR: SyntaxId = SyntaxId::new("8a885d04-1ceb-11c9-9fe8-08002b104860", 2, 0);
    /// NDR64 1.0 (MS-RPCE 2.2.5).
    pub const NDR64: SyntaxId = SyntaxId::new("71710533-beba-4937-8319-b5dbef9ccc36", 1, 0);

    /// A syntax from a constant UUID string.
    pub const fn new(uuid: &str, major: u16, minor: u16) -> SyntaxId {
        SyntaxId {
            uuid: Uuid::from_str_const(uuid),
            major,
            minor,
        }
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
        let version = get_u32(bytes, 16, endian);
        SyntaxId {
            uuid: Uuid::read(first16(bytes), endian),
            major: version as u16,
            minor: (version >> 16) as u16,
        }
    }

    /// Appends the `p_syntax_id_t` encoding in `endian` order.
    pub fn write(&self, out: &mut Vec<u8>, endian: Endian) {
        out.extend_from_slice(&self.uuid.to_wire(endian));
        let version = u32::from(self.major) | (u32::from(self.minor) << 16);
        put_u32(out, version, endian);
    }

    /// Whether this transfer syntax is the bind-time feature negotiation pseudo-syntax
    /// (MS-RPCE 3.3.1.5.3: UUID 6cb71c2c-9812-4540-xxxx-xxxxxxxxxxxx, the rest are flags).
    pub fn is_feature_negotiation(&self) -> bool {
        self.uuid.0[..8] == Uuid::from_str_const("6cb71c2c-9812-4540-0000-000000000000").0[..8]
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
    }

    #[test]
    fn uuid_parses_and_prints_canonically() {
        let s = "E1AF8308-5D1F-11C9-91A4-08002B14A0FA";
        let u: Uuid = s.parse().unwrap();
        assert_eq!(u.to_string(), s.to_ascii_lowercase());
        assert!("e1af8308-5d1f-11c9-91a4-08002b14a0f"
            .parse::<Uuid>()
            .is_err());
        assert!("e1af8308x5d1f-11c9-91a4-08002b14a0fa"
            .parse::<Uuid>()
            .is_err());
        assert!("g1af8308-5d1f-11c9-91a4-08002b14a0fa"
            .parse::<Uuid>()
            .is_err());
    }

    #[test]
    fn recognises_feature_negotiation() {
        let fneg = SyntaxId::new("6cb71c2c-9812-4540-0300-000000000000", 1, 0);
        assert!(fneg.is_feature_negotiation());
        assert!(!SyntaxId::NDR64.is_feature_negotiation());
    }
}
