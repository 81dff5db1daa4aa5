//! The DCE/RPC connection-oriented wire format (C706 ch. 12, MS-RPCE 2.2), sans IO.
//!
//! Everything here works on borrowed byte buffers: checked views with getters and in-place
//! setters, a cursor that walks NDR to find byte ranges, and a few small encoders for the PDUs
//! rpcpin has to originate itself (bind_ack/bind_nak refusals, its own ept_map query).
//! Integers are read and written in one place, [`Endian`]'s; each file that reads fixed
//! offsets keeps them in a private `field` table beside the spec section it follows.
//!
//! Contract: a view's `new_checked` validates every length its accessors rely on, so no
//! accessor of a checked view can panic, whatever bytes the network sent. A [`Pdu`] is
//! checked once — by `new_checked`, or by [`frame::next_pdu`] as it cuts it off a stream —
//! and the views of its body (`BindRequest::from_pdu`, `Response::from_pdu`, …) take the
//! checked `Pdu` and check only their own fields. Bad bytes from a peer are an [`Error`];
//! an encoder asked to write what its fields cannot hold returns an [`EncodeError`].

pub mod bind;
pub mod call;
mod endian;
pub mod epm;
pub mod frame;
pub mod ndr;
pub mod pdu;
pub mod tower;
pub mod uuid;

pub use self::uuid::{SyntaxId, Uuid};
/// Writes a [`Uuid`] constant: `uuid!("e1af8308-5d1f-11c9-91a4-08002b14a0fa")`.
pub use ::uuid::uuid;
pub use endian::Endian;
pub(crate) use endian::{get_u16, get_u32, get_u64, put_u16, put_u32, put_u64, set_u16};
pub use pdu::{PacketType, Pdu, HEADER_LEN};

/// What can be wrong with bytes a peer sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer ends before the named structure does.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// A field holds a value the format does not allow.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// A well-formed PDU that rpcpin does not handle.
    #[error("unsupported {0}")]
    Unsupported(&'static str),
    /// A length beyond the configured bound.
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
}

/// A caller's mistake in what it asked an encoder to write: never caused by a peer's bytes,
/// which are [`Error`]'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A length or count does not fit the field that carries it.
    #[error("{what} of {len} does not fit its field (at most {max})")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its length or count.
        len: usize,
        /// The most the field holds.
        max: usize,
    },
    /// The arguments do not match the PDU being re-encoded.
    #[error("{given} {what} given for {expected}")]
    Mismatch {
        /// What was given.
        what: &'static str,
        /// How many were given.
        given: usize,
        /// How many the PDU needs.
        expected: usize,
    },
}

impl EncodeError {
    /// `len` as the integer type `T` of the field that carries it.
    pub(crate) fn fit<T: TryFrom<usize> + Into<u64> + Copy>(
        what: &'static str,
        len: usize,
        max: T,
    ) -> core::result::Result<T, EncodeError> {
        T::try_from(len).map_err(|_| EncodeError::TooLarge {
            what,
            len,
            max: usize::try_from(max.into()).unwrap_or(usize::MAX),
        })
    }
}

/// Result alias for the wire layer.
pub type Result<T, E = Error> = core::result::Result<T, E>;

#[cfg(test)]
pub(crate) mod test_util {
    /// Bytes from a hex string; whitespace is ignored.
    pub fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The first PDU of a captured little-endian stream.
    pub fn first_pdu(stream: &[u8]) -> &[u8] {
        &stream[..usize::from(u16::from_le_bytes([stream[8], stream[9]]))]
    }
}
