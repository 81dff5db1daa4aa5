//! A read cursor over an NDR or NDR64 octet stream (C706 ch. 14, MS-RPCE 2.2.5).
//!
//! It only walks: its purpose is to find where things are, so that rewrites can be done in
//! place through views. Alignment is relative to the start of the stub, as NDR requires.

use super::{get_u32, get_u64, put_u32, put_u64, Endian, Error, Result};

/// The transfer syntax of a presentation context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// NDR 2.0: 4-byte conformance counts, offsets and referent ids.
    Ndr,
    /// NDR64 1.0: those are 8 bytes wide, with 8-byte alignment.
    Ndr64,
}

impl Syntax {
    /// The transfer syntax a bind_ack accepted, if it is one rpcpin can walk.
    pub fn from_transfer_syntax(ts: &super::SyntaxId) -> Option<Syntax> {
        if *ts == super::SyntaxId::NDR {
            Some(Syntax::Ndr)
        } else if *ts == super::SyntaxId::NDR64 {
            Some(Syntax::Ndr64)
        } else {
            None
        }
    }

    /// The width, and alignment, of conformance counts, offsets and referent ids: 4 bytes
    /// in NDR, 8 in NDR64.
    pub fn word_len(self) -> usize {
        match self {
            Syntax::Ndr => 4,
            Syntax::Ndr64 => 8,
        }
    }
}

/// A cursor over a stub.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    endian: Endian,
    syntax: Syntax,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `stub`.
    pub fn new(stub: &'a [u8], endian: Endian, syntax: Syntax) -> Cursor<'a> {
        Cursor {
            buf: stub,
            pos: 0,
            endian,
            syntax,
        }
    }

    /// The current offset from the start of the stub.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes left after the cursor.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The transfer syntax being walked.
    pub fn syntax(&self) -> Syntax {
        self.syntax
    }

    /// Skips padding up to the next multiple of `n` (a power of two).
    pub fn align(&mut self, n: usize) -> Result<()> {
        let aligned = (self.pos + n - 1) & !(n - 1);
        self.seek(aligned)
    }

    /// Skips `n` bytes.
    pub fn skip(&mut self, n: usize, what: &'static str) -> Result<()> {
        self.take(n, what).map(|_| ())
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(Error::Truncated(what))?;
        let bytes = self.buf.get(self.pos..end).ok_or(Error::Truncated(what))?;
        self.pos = end;
        Ok(bytes)
    }

    fn seek(&mut self, to: usize) -> Result<()> {
        if to > self.buf.len() {
            return Err(Error::Truncated("alignment padding"));
        }
        self.pos = to;
        Ok(())
    }

    /// An aligned `u32` in drep order.
    pub fn u32(&mut self, what: &'static str) -> Result<u32> {
        self.align(4)?;
        let b = self.take(4, what)?;
        Ok(get_u32(b, 0, self.endian))
    }

    /// An aligned `u64` in drep order.
    pub fn u64(&mut self, what: &'static str) -> Result<u64> {
        self.align(8)?;
        let b = self.take(8, what)?;
        Ok(get_u64(b, 0, self.endian))
    }

    /// A conformance count, offset or actual count: 4 bytes in NDR, 8 in NDR64.
    pub fn count(&mut self, what: &'static str) -> Result<usize> {
        let v = match self.syntax {
            Syntax::Ndr => u64::from(self.u32(what)?),
            Syntax::Ndr64 => self.u64(what)?,
        };
        usize::try_from(v).map_err(|_| Error::Malformed(what))
    }

    /// A referent id (0 is a null pointer): 4 bytes in NDR, 8 in NDR64.
    pub fn pointer(&mut self, what: &'static str) -> Result<u64> {
        match self.syntax {
            Syntax::Ndr => self.u32(what).map(u64::from),
            Syntax::Ndr64 => self.u64(what),
        }
    }
}

/// Appends NDR or NDR64 to a buffer; alignment is relative to where the stub started.
#[derive(Debug)]
pub struct Writer<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
    endian: Endian,
    syntax: Syntax,
}

impl<'a> Writer<'a> {
    /// A writer whose stub starts at the end of `out`.
    pub fn new(out: &'a mut Vec<u8>, endian: Endian, syntax: Syntax) -> Writer<'a> {
        let start = out.len();
        Writer {
            out,
            start,
            endian,
            syntax,
        }
    }

    /// Pads with zeros to the next multiple of `n` (a power of two).
    pub fn align(&mut self, n: usize) {
        let len = self.out.len() - self.start;
        let aligned = (len + n - 1) & !(n - 1);
        self.out.resize(self.start + aligned, 0);
    }

    /// Raw bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.out.extend_from_slice(b);
    }

    /// An aligned `u32` in drep order.
    pub fn u32(&mut self, v: u32) {
        self.align(4);
        put_u32(self.out, v, self.endian);
    }

    /// A conformance count, offset or actual count (4 or 8 bytes by syntax).
    pub fn count(&mut self, v: usize) {
        self.word(v as u64);
    }

    /// A referent id (4 or 8 bytes by syntax).
    pub fn pointer(&mut self, referent: u64) {
        self.word(referent);
    }

    /// A count, offset or referent id in the syntax's word length.
    fn word(&mut self, v: u64) {
        match self.syntax {
            Syntax::Ndr => self.u32(v as u32),
            Syntax::Ndr64 => {
                self.align(8);
                put_u64(self.out, v, self.endian);
            }
        }
    }

    /// The transfer syntax being written.
    pub fn syntax(&self) -> Syntax {
        self.syntax
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_follow_drep_and_alignment() {
        let bytes = [
            1, 0xaa, 0xaa, 0xaa, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3,
        ];
        let mut c = Cursor::new(&bytes, Endian::Big, Syntax::Ndr64);
        c.skip(1, "byte").unwrap();
        assert_eq!(c.u32("u32").unwrap(), 2);
        assert_eq!(c.count("count").unwrap(), 0);
        assert_eq!(c.position(), 16);
        assert_eq!(c.u32("u32").unwrap(), 3);
        assert_eq!(c.u32("end"), Err(Error::Truncated("end")));

        let mut c = Cursor::new(&bytes[4..], Endian::Little, Syntax::Ndr);
        assert_eq!(c.pointer("ptr").unwrap(), 0x0200_0000);
    }

    #[test]
    fn ndr64_counts_are_eight_bytes() {
        let bytes = [5, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        let mut c = Cursor::new(&bytes, Endian::Little, Syntax::Ndr64);
        assert_eq!(c.count("n").unwrap(), 5);
        assert_eq!(c.pointer("p").unwrap(), 1);
        let mut c = Cursor::new(&bytes, Endian::Little, Syntax::Ndr);
        assert_eq!(c.count("n").unwrap(), 5);
        assert_eq!(c.count("n").unwrap(), 0);
    }

    #[test]
    fn hostile_lengths_do_not_overflow() {
        let mut c = Cursor::new(&[0; 4], Endian::Little, Syntax::Ndr);
        assert_eq!(c.take(usize::MAX, "huge"), Err(Error::Truncated("huge")));
        c.skip(3, "x").unwrap();
        assert_eq!(c.align(8), Err(Error::Truncated("alignment padding")));
    }
}
