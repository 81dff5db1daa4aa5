//! Byte order, and the one place integers are read from and written to the wire.
//!
//! Every integer of a PDU's header and of its NDR stub follows the byte order the PDU's
//! drep announces (C706 §12.6.3.1, §14.1); inside a protocol tower, counts and lengths are
//! always little endian and the port and address big endian (C706 appendix L), which is
//! [`Endian::Little`] and [`Endian::Big`] passed explicitly. [`Endian`]'s methods turn
//! integers into bytes and back; the helpers beside them read at an offset, append to an
//! encoder's output, or patch a field in place.

/// Byte order of every integer that follows drep (C706 §14.1: `drep[0]` bit 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endian {
    /// `drep[0] & 0x10 != 0`.
    Little,
    /// `drep[0] & 0x10 == 0`.
    Big,
}

impl Endian {
    /// The byte order a drep announces.
    pub fn from_drep(drep: [u8; 4]) -> Endian {
        if drep[0] & 0x10 != 0 {
            Endian::Little
        } else {
            Endian::Big
        }
    }

    /// The drep rpcpin writes for this byte order: ASCII, IEEE floats.
    pub fn drep(self) -> [u8; 4] {
        match self {
            Endian::Little => [0x10, 0, 0, 0],
            Endian::Big => [0x00, 0, 0, 0],
        }
    }

    /// `v` as two bytes in this order.
    pub const fn u16_bytes(self, v: u16) -> [u8; 2] {
        match self {
            Endian::Little => v.to_le_bytes(),
            Endian::Big => v.to_be_bytes(),
        }
    }

    /// `v` as four bytes in this order.
    pub const fn u32_bytes(self, v: u32) -> [u8; 4] {
        match self {
            Endian::Little => v.to_le_bytes(),
            Endian::Big => v.to_be_bytes(),
        }
    }

    /// `v` as eight bytes in this order.
    pub const fn u64_bytes(self, v: u64) -> [u8; 8] {
        match self {
            Endian::Little => v.to_le_bytes(),
            Endian::Big => v.to_be_bytes(),
        }
    }

    /// The `u16` two bytes in this order hold.
    pub const fn u16_from(self, b: [u8; 2]) -> u16 {
        match self {
            Endian::Little => u16::from_le_bytes(b),
            Endian::Big => u16::from_be_bytes(b),
        }
    }

    /// The `u32` four bytes in this order hold.
    pub const fn u32_from(self, b: [u8; 4]) -> u32 {
        match self {
            Endian::Little => u32::from_le_bytes(b),
            Endian::Big => u32::from_be_bytes(b),
        }
    }

    /// The `u64` eight bytes in this order hold.
    pub const fn u64_from(self, b: [u8; 8]) -> u64 {
        match self {
            Endian::Little => u64::from_le_bytes(b),
            Endian::Big => u64::from_be_bytes(b),
        }
    }
}

/// The `N` bytes at `at`; the caller has checked the bounds.
fn array<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    let mut b = [0; N];
    b.copy_from_slice(&buf[at..at + N]);
    b
}

/// Reads a `u16` at `at`; the caller has checked the bounds.
pub(crate) fn get_u16(buf: &[u8], at: usize, endian: Endian) -> u16 {
    endian.u16_from(array(buf, at))
}

/// Reads a `u32` at `at`; the caller has checked the bounds.
pub(crate) fn get_u32(buf: &[u8], at: usize, endian: Endian) -> u32 {
    endian.u32_from(array(buf, at))
}

/// Reads a `u64` at `at`; the caller has checked the bounds.
pub(crate) fn get_u64(buf: &[u8], at: usize, endian: Endian) -> u64 {
    endian.u64_from(array(buf, at))
}

/// Appends a `u16`.
pub(crate) fn put_u16(out: &mut Vec<u8>, v: u16, endian: Endian) {
    out.extend_from_slice(&endian.u16_bytes(v));
}

/// Appends a `u32`.
pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32, endian: Endian) {
    out.extend_from_slice(&endian.u32_bytes(v));
}

/// Appends a `u64`.
pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64, endian: Endian) {
    out.extend_from_slice(&endian.u64_bytes(v));
}

/// Overwrites the `u16` at `at`; the caller has checked the bounds.
pub(crate) fn set_u16(buf: &mut [u8], at: usize, v: u16, endian: Endian) {
    buf[at..at + 2].copy_from_slice(&endian.u16_bytes(v));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_orders_round_trip() {
        for e in [Endian::Little, Endian::Big] {
            let mut out = Vec::new();
            put_u16(&mut out, 0x0102, e);
            put_u32(&mut out, 0x0304_0506, e);
            put_u64(&mut out, 0x0708_090a_0b0c_0d0e, e);
            assert_eq!(get_u16(&out, 0, e), 0x0102);
            assert_eq!(get_u32(&out, 2, e), 0x0304_0506);
            assert_eq!(get_u64(&out, 6, e), 0x0708_090a_0b0c_0d0e);
            set_u16(&mut out, 0, 0xfffe, e);
            assert_eq!(get_u16(&out, 0, e), 0xfffe);
        }
        assert_eq!(Endian::Little.u32_bytes(1), [1, 0, 0, 0]);
        assert_eq!(Endian::Big.u32_bytes(1), [0, 0, 0, 1]);
        assert_eq!(Endian::from_drep(Endian::Big.drep()), Endian::Big);
        assert_eq!(Endian::from_drep(Endian::Little.drep()), Endian::Little);
    }
}
