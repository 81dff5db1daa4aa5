//! Taking whole PDUs out of a TCP byte stream.
//!
//! A stream may deliver a PDU split at any byte, or several PDUs at once. [`next_pdu_len`]
//! answers "how long is the PDU at the front of this buffer", or "need more bytes" while the
//! buffer holds less than a whole PDU: a partial PDU is not an error. [`next_pdu`] cuts that
//! PDU off a reader's buffer as a checked [`Pdu`], so that nothing checks its header again.
//! [`next_pdu_head`] answers as soon as the PDU's head is there, for a relay that forwards
//! the rest as it arrives.

use bytes::BytesMut;

use super::pdu::{check_header, HEAD_LEN};
use super::{Error, Pdu, Result};

/// The largest fragment any peer may send: `frag_length` is a u16.
pub const MAX_FRAG_LEN: usize = u16::MAX as usize;

/// Length of the whole PDU at the front of `buf`, or `None` while more bytes are needed.
///
/// Fails as soon as the header is wrong or announces more than `max_frag` bytes, so that a
/// hostile peer cannot make the caller buffer without bound.
pub fn next_pdu_len(buf: &[u8], max_frag: usize) -> Result<Option<usize>> {
    Ok(checked_len(buf, max_frag)?.filter(|&len| buf.len() >= len))
}

/// Length of the PDU at the front of `buf` once its header is checked (as [`next_pdu_len`]
/// checks it) and its head is there: its first [`HEAD_LEN`] bytes, or all of a shorter PDU.
/// `None` while more bytes are needed.
pub fn next_pdu_head(buf: &[u8], max_frag: usize) -> Result<Option<usize>> {
    Ok(checked_len(buf, max_frag)?.filter(|&len| buf.len() >= len.min(HEAD_LEN)))
}

/// `frag_length` of the PDU at the front of `buf`, its header checked, once the header is
/// there.
fn checked_len(buf: &[u8], max_frag: usize) -> Result<Option<usize>> {
    if buf.len() < super::HEADER_LEN {
        // Reject a non-DCE/RPC stream on its first byte rather than after 16.
        if let Some(&v) = buf.first() {
            if v != 5 {
                return Err(Error::Malformed("rpc version (expected 5)"));
            }
        }
        return Ok(None);
    }
    let frag_len = check_header(buf)?;
    if frag_len > max_frag {
        return Err(Error::TooLarge {
            what: "fragment",
            len: frag_len,
            max: max_frag,
        });
    }
    Ok(Some(frag_len))
}

/// Cuts the whole PDU at the front of `buf` off it, checked, or `None` while more bytes are
/// needed; fails as [`next_pdu_len`] does.
pub fn next_pdu(buf: &mut BytesMut, max_frag: usize) -> Result<Option<Pdu<BytesMut>>> {
    let Some(len) = next_pdu_len(buf, max_frag)? else {
        return Ok(None);
    };
    // A PDU that is the whole buffer (a handshake's PDU, a call) is taken as it is:
    // splitting it would make it a shared buffer, which costs an allocation.
    let bytes = if len == buf.len() {
        std::mem::take(buf)
    } else {
        buf.split_to(len)
    };
    Ok(Some(Pdu::framed(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPTURE: &[u8] = include_bytes!("../../tests/data/mapi-epm-map-nspi.server.bin");

    #[test]
    fn splits_a_stream_at_every_byte() {
        // The server side of a capture holds a bind_ack then a response: feed it one byte at a
        // time and check that exactly those two PDUs come out.
        let mut buf = Vec::new();
        let mut lens = Vec::new();
        for &b in CAPTURE {
            buf.push(b);
            while let Some(len) = next_pdu_len(&buf, MAX_FRAG_LEN).unwrap() {
                lens.push(len);
                buf.drain(..len);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(lens, vec![60, 152]);
    }

    #[test]
    fn several_pdus_in_one_read() {
        assert_eq!(next_pdu_len(CAPTURE, MAX_FRAG_LEN), Ok(Some(60)));
        assert_eq!(next_pdu_len(&CAPTURE[60..], MAX_FRAG_LEN), Ok(Some(152)));
    }

    #[test]
    fn cuts_checked_pdus_off_a_buffer() {
        let mut buf = BytesMut::from(&CAPTURE[..70]);
        let first = next_pdu(&mut buf, MAX_FRAG_LEN).unwrap().unwrap();
        assert_eq!((first.frag_len(), first.call_id()), (60, 1));
        assert_eq!(first.into_inner(), CAPTURE[..60]);
        assert!(matches!(next_pdu(&mut buf, MAX_FRAG_LEN), Ok(None)));
        buf.extend_from_slice(&CAPTURE[70..]);
        let second = next_pdu(&mut buf, MAX_FRAG_LEN).unwrap().unwrap();
        assert_eq!(second.as_bytes(), &CAPTURE[60..]);
        assert!(buf.is_empty());
    }

    #[test]
    fn a_head_is_there_before_its_pdu() {
        use crate::wire::pdu::head_of;
        // The bind_ack of the capture, 60 bytes: its head is its first 40.
        assert_eq!(next_pdu_head(&CAPTURE[..39], MAX_FRAG_LEN), Ok(None));
        assert_eq!(next_pdu_head(&CAPTURE[..40], MAX_FRAG_LEN), Ok(Some(60)));
        let mut copy = [0; HEAD_LEN];
        let head = head_of(&CAPTURE[..40], &mut copy).unwrap();
        assert_eq!((head.frag_len(), head.call_id()), (40, 1));
        assert_eq!(head.as_bytes()[12..], CAPTURE[12..40]);
        assert!(next_pdu_head(&CAPTURE[..40], 59).is_err());
    }

    #[test]
    fn bounds_the_fragment_size() {
        assert_eq!(
            next_pdu_len(CAPTURE, 59),
            Err(Error::TooLarge {
                what: "fragment",
                len: 60,
                max: 59
            })
        );
    }

    #[test]
    fn rejects_a_foreign_protocol_on_its_first_byte() {
        assert!(next_pdu_len(b"G", MAX_FRAG_LEN).is_err());
        assert_eq!(next_pdu_len(b"", MAX_FRAG_LEN), Ok(None));
        assert_eq!(next_pdu_len(&[5, 0, 11], MAX_FRAG_LEN), Ok(None));
    }
}
