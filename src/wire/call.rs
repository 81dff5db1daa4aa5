//! request, response and fault: the PDUs that carry calls (C706 §12.6.4.9–§12.6.4.10,
//! §12.6.4.7).
//!
//! ```text
//! request                      response                     fault
//!  16 alloc_hint u32            16 alloc_hint u32            16 alloc_hint u32
//!  20 p_cont_id  u16            20 p_cont_id  u16            20 p_cont_id u16
//!  22 opnum      u16            22 cancel_count u8, rsvd     22 cancel_count u8, rsvd
//!  24 [object uuid, if flag]    24 stub ...                  24 status u32, reserved u32
//!  .. stub ...
//! ```
//!
//! The stub ends where the auth verifier's padding begins (`auth_pad_length`, C706 §13.2.6.1).

use core::ops::Range;

use super::pdu::{finish_pdu, flags, write_header, write_header_like};
use super::{get_u16, put_u16, put_u32, EncodeError, Endian, Error, PacketType, Pdu, Result, Uuid};

/// Offsets of the fields rpcpin reads after the common header: request (C706 §12.6.4.9) and
/// response (§12.6.4.10); the encoders write the rest in the order of the diagram above.
mod field {
    /// Both: `p_cont_id`.
    pub const CONTEXT_ID: usize = 20;
    /// request: the operation number.
    pub const OPNUM: usize = 22;
    /// request with `PFC_OBJECT_UUID`: the object UUID, before the stub.
    pub const OBJECT: usize = 24;
    /// response, and request without object: the stub.
    pub const STUB: usize = 24;
}

/// A checked request PDU.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pdu: Pdu<&'a [u8]>,
    stub: Range<usize>,
}

impl<'a> Request<'a> {
    /// Checks a whole request PDU.
    pub fn parse(bytes: &'a [u8]) -> Result<Request<'a>> {
        Request::from_pdu(Pdu::new_checked(bytes)?)
    }

    /// Checks that a PDU whose header is checked is a request, and its fixed fields.
    pub fn from_pdu(pdu: Pdu<&'a [u8]>) -> Result<Request<'a>> {
        if pdu.ptype() != PacketType::Request {
            return Err(Error::Unsupported("pdu type (expected request)"));
        }
        let stub_at = if pdu.flags() & flags::OBJECT_UUID != 0 {
            field::OBJECT + super::uuid::LEN
        } else {
            field::STUB
        };
        let stub = stub_range(&pdu, stub_at)?;
        Ok(Request { pdu, stub })
    }

    /// The PDU itself.
    pub fn pdu(&self) -> &Pdu<&'a [u8]> {
        &self.pdu
    }

    /// The presentation context the call uses.
    pub fn context_id(&self) -> u16 {
        get_u16(self.pdu.into_inner(), field::CONTEXT_ID, self.pdu.endian())
    }

    /// The operation number within the interface.
    pub fn opnum(&self) -> u16 {
        get_u16(self.pdu.into_inner(), field::OPNUM, self.pdu.endian())
    }

    /// The object UUID, when the request carries one.
    pub fn object(&self) -> Option<Uuid> {
        (self.pdu.flags() & flags::OBJECT_UUID != 0)
            .then(|| {
                super::uuid::from_wire(&self.pdu.into_inner()[field::OBJECT..], self.pdu.endian())
                    .ok()
            })
            .flatten()
    }

    /// Where the stub lies in the PDU.
    pub fn stub_range(&self) -> Range<usize> {
        self.stub.clone()
    }
}

/// A checked response PDU.
#[derive(Debug, Clone, Copy)]
pub struct Response<'a> {
    pdu: Pdu<&'a [u8]>,
    /// Where the stub ends: before the auth verifier's padding.
    stub_end: usize,
}

impl<'a> Response<'a> {
    /// Checks a whole response PDU.
    pub fn parse(bytes: &'a [u8]) -> Result<Response<'a>> {
        Response::from_pdu(Pdu::new_checked(bytes)?)
    }

    /// Checks that a PDU whose header is checked is a response, and its fixed fields.
    pub fn from_pdu(pdu: Pdu<&'a [u8]>) -> Result<Response<'a>> {
        if pdu.ptype() != PacketType::Response {
            return Err(Error::Unsupported("pdu type (expected response)"));
        }
        let stub_end = stub_range(&pdu, field::STUB)?.end;
        Ok(Response { pdu, stub_end })
    }

    /// Where the stub lies in the PDU.
    pub fn stub_range(&self) -> Range<usize> {
        field::STUB..self.stub_end
    }

    /// The stub.
    pub fn stub(&self) -> &'a [u8] {
        &self.pdu.into_inner()[self.stub_range()]
    }

    /// The PDU itself.
    pub fn pdu(&self) -> &Pdu<&'a [u8]> {
        &self.pdu
    }

    /// The presentation context of the call.
    pub fn context_id(&self) -> u16 {
        get_u16(self.pdu.into_inner(), field::CONTEXT_ID, self.pdu.endian())
    }
}

/// Where the stub of the response PDU in `bytes` lies: checks the PDU first.
pub fn response_stub_range(bytes: &[u8]) -> Result<Range<usize>> {
    stub_range(&Pdu::new_checked(bytes)?, field::STUB)
}

fn stub_range(pdu: &Pdu<&[u8]>, start: usize) -> Result<Range<usize>> {
    let end = pdu.body_end();
    if end < start {
        return Err(Error::Truncated("call pdu fixed fields"));
    }
    let pad = pdu.auth_trailer().map_or(0, |(_, _, pad)| pad as usize);
    if end - start < pad {
        return Err(Error::Malformed("auth_pad_length beyond the stub"));
    }
    Ok(start..end - pad)
}

/// Appends a fault PDU with `status` for the given call.
pub fn encode_fault(
    out: &mut Vec<u8>,
    endian: Endian,
    call_id: u32,
    context_id: u16,
    status: u32,
) -> Result<(), EncodeError> {
    let mut body = [0; 8]; // status, reserved
    body[..4].copy_from_slice(&endian.u32_bytes(status));
    let f = flags::FIRST_FRAG | flags::LAST_FRAG | flags::DID_NOT_EXECUTE;
    let call = Call {
        ptype: PacketType::Fault,
        flags: f,
        endian,
        call_id,
        context_id,
    };
    call.encode(out, 0, 0, &body)
}

/// Appends a single-fragment request carrying `stub`.
pub fn encode_request(
    out: &mut Vec<u8>,
    endian: Endian,
    call_id: u32,
    context_id: u16,
    opnum: u16,
    stub: &[u8],
) -> Result<(), EncodeError> {
    let f = flags::FIRST_FRAG | flags::LAST_FRAG;
    let call = Call {
        ptype: PacketType::Request,
        flags: f,
        endian,
        call_id,
        context_id,
    };
    let hint = EncodeError::fit("stub", stub.len(), u32::MAX)?;
    call.encode(out, hint, opnum, stub)
}

/// The most stub one response fragment without auth verifier carries.
pub const MAX_RESPONSE_STUB: usize = super::frame::MAX_FRAG_LEN - field::STUB;

/// Appends one fragment of a response to the call `template` answers, without auth
/// verifier: the template's minor version, byte order, call id, flags other than the
/// fragment flags, context id and cancel count; `frag_flags`' [`flags::FIRST_FRAG`] and
/// [`flags::LAST_FRAG`]; `alloc_hint`; and `stub`.
pub fn encode_response_fragment(
    out: &mut Vec<u8>,
    template: &Response<'_>,
    frag_flags: u8,
    alloc_hint: u32,
    stub: &[u8],
) -> Result<(), EncodeError> {
    let t = template.pdu();
    let fragment = flags::FIRST_FRAG | flags::LAST_FRAG;
    let start = out.len();
    write_header_like(
        out,
        t,
        PacketType::Response,
        t.flags() & !fragment | frag_flags & fragment,
    );
    put_u32(out, alloc_hint, t.endian());
    // p_cont_id, cancel_count and the reserved byte.
    out.extend_from_slice(&t.as_bytes()[field::CONTEXT_ID..field::STUB]);
    out.extend_from_slice(stub);
    finish_pdu(&mut out[start..], t.endian())
}

/// Cuts `stub` into the response PDUs of the call `template` answers (as
/// [`encode_response_fragment`] writes each), each carrying at most `per_fragment` stub bytes
/// (and no more than a fragment holds), with alloc_hint what is left of the stub.
pub fn encode_response_fragments(
    template: &Response<'_>,
    stub: &[u8],
    per_fragment: usize,
) -> Vec<u8> {
    let per_fragment = per_fragment.clamp(1, MAX_RESPONSE_STUB);
    let mut out = Vec::with_capacity(stub.len() + 24 * (stub.len() / per_fragment + 1));
    let chunks: Vec<&[u8]> = if stub.is_empty() {
        vec![stub]
    } else {
        stub.chunks(per_fragment).collect()
    };
    let n = chunks.len();
    let mut remaining = stub.len();
    for (i, chunk) in chunks.into_iter().enumerate() {
        let mut f = 0;
        if i == 0 {
            f |= flags::FIRST_FRAG;
        }
        if i == n - 1 {
            f |= flags::LAST_FRAG;
        }
        // Cannot fail: a chunk of at most MAX_RESPONSE_STUB bytes fits a fragment, and the
        // callers' stubs are far below 4 GiB.
        encode_response_fragment(&mut out, template, f, remaining as u32, chunk)
            .unwrap_or_else(|_| unreachable!());
        remaining -= chunk.len();
    }
    out
}

/// Appends a single-fragment response carrying `stub`.
pub fn encode_response(
    out: &mut Vec<u8>,
    endian: Endian,
    call_id: u32,
    context_id: u16,
    stub: &[u8],
) -> Result<(), EncodeError> {
    let f = flags::FIRST_FRAG | flags::LAST_FRAG;
    let call = Call {
        ptype: PacketType::Response,
        flags: f,
        endian,
        call_id,
        context_id,
    };
    let hint = EncodeError::fit("stub", stub.len(), u32::MAX)?;
    // After the context id: cancel_count and a reserved byte, both 0.
    call.encode(out, hint, 0, stub)
}

/// The header fields of a call PDU rpcpin writes itself.
struct Call {
    ptype: PacketType,
    flags: u8,
    endian: Endian,
    call_id: u32,
    context_id: u16,
}

impl Call {
    /// Appends the PDU: header, `alloc_hint`, `p_cont_id`, the u16 after it (a request's
    /// opnum; a response's or fault's cancel_count and reserved byte), then `body`.
    fn encode(
        &self,
        out: &mut Vec<u8>,
        alloc_hint: u32,
        after_context: u16,
        body: &[u8],
    ) -> Result<(), EncodeError> {
        let (start, e) = (out.len(), self.endian);
        write_header(out, self.ptype, self.flags, e, self.call_id);
        put_u32(out, alloc_hint, e);
        put_u16(out, self.context_id, e);
        put_u16(out, after_context, e);
        out.extend_from_slice(body);
        finish_pdu(&mut out[start..], e)
    }
}

/// Well-known `nca_status` codes for faults (C706 appendix E, MS-RPCE 2.2.2.11).
pub mod status {
    /// The operation number is not valid for the interface.
    pub const NCA_S_OP_RNG_ERROR: u32 = 0x1c01_0002;
    /// The call names a presentation context (interface) the server does not know.
    pub const NCA_S_UNK_IF: u32 = 0x1c01_0003;
    /// The call was refused by policy.
    pub const NCA_S_FAULT_ACCESS_DENIED: u32 = 0x0000_0005;
    /// The server could not process the call.
    pub const NCA_S_FAULT_OTHER: u32 = 0x0000_06be;
    /// The stub received bad data.
    pub const RPC_S_PROTOCOL_ERROR: u32 = 0x1c01_000b;
    /// A context handle the server does not hold (`nca_s_fault_context_mismatch`).
    pub const NCA_S_FAULT_CONTEXT_MISMATCH: u32 = 0x1c00_001a;
    /// The stub did not unmarshal (`nca_s_fault_ndr`, MS-RPCE 3.1.1.5.5, as Windows).
    pub const NCA_S_FAULT_NDR: u32 = 0x0000_06f7;
}

#[cfg(test)]
mod tests {
    use super::*;

    const NSPI_CLIENT: &[u8] = include_bytes!("../../tests/data/mapi-epm-map-nspi.client.bin");
    const NSPI_SERVER: &[u8] = include_bytes!("../../tests/data/mapi-epm-map-nspi.server.bin");

    #[test]
    fn parses_outlooks_ept_map_request() {
        let req = Request::parse(&NSPI_CLIENT[72..]).unwrap();
        assert_eq!(req.opnum(), 3);
        assert_eq!(req.context_id(), 0);
        assert_eq!(req.object(), None);
        assert_eq!(req.stub_range(), 24..156);
    }

    #[test]
    fn parses_exchanges_ept_map_response() {
        let resp = Response::parse(&NSPI_SERVER[60..]).unwrap();
        assert_eq!(resp.pdu().call_id(), 1);
        assert_eq!(resp.context_id(), 0);
        assert_eq!(response_stub_range(&NSPI_SERVER[60..]).unwrap(), 24..152);
    }

    #[test]
    fn a_fragment_like_exchanges_response_is_that_response() {
        let original = &NSPI_SERVER[60..];
        let resp = Response::from_pdu(Pdu::new_checked(original).unwrap()).unwrap();
        assert_eq!(resp.stub_range(), 24..152);
        let stub = resp.stub();
        let mut out = Vec::new();
        let whole = flags::FIRST_FRAG | flags::LAST_FRAG;
        encode_response_fragment(&mut out, &resp, whole, stub.len() as u32, stub).unwrap();
        assert_eq!(out, original);
        // A middle fragment: no fragment flag, what is left as alloc_hint, the same call.
        out.clear();
        encode_response_fragment(&mut out, &resp, 0, 7, &stub[..8]).unwrap();
        let mid = Response::parse(&out).unwrap();
        assert_eq!((mid.pdu().flags(), mid.pdu().call_id()), (0, 1));
        assert_eq!((mid.context_id(), mid.stub()), (0, &stub[..8]));
        assert_eq!(out[16..20], [7, 0, 0, 0]);
    }

    #[test]
    fn encoded_request_matches_outlooks() {
        let original = &NSPI_CLIENT[72..];
        let mut out = Vec::new();
        encode_request(&mut out, Endian::Little, 1, 0, 3, &original[24..]).unwrap();
        // Outlook's alloc_hint (0x84) is the stub length too.
        assert_eq!(out, original);
    }

    #[test]
    fn encoded_response_matches_exchanges() {
        let original = &NSPI_SERVER[60..];
        let mut out = Vec::new();
        encode_response(&mut out, Endian::Little, 1, 0, &original[24..]).unwrap();
        assert_eq!(out, original);
    }

    #[test]
    fn fault_round_trips() {
        let mut out = Vec::new();
        encode_fault(&mut out, Endian::Big, 9, 1, status::NCA_S_OP_RNG_ERROR).unwrap();
        let pdu = Pdu::new_checked(&out[..]).unwrap();
        assert_eq!(pdu.ptype(), PacketType::Fault);
        assert_eq!(pdu.frag_len(), 32);
        assert_eq!(&out[24..28], &[0x1c, 0x01, 0x00, 0x02]);
    }

    #[test]
    fn auth_padding_beyond_stub_is_an_error() {
        // A response with an 8-byte sec_trailer that claims 200 bytes of padding.
        let mut pdu = NSPI_SERVER[60..].to_vec();
        pdu[10] = 0; // auth_len 0 -> set below
        let frag = pdu.len() + 8 + 16;
        pdu.extend_from_slice(&[10, 6, 200, 0, 0, 0, 0, 0]);
        pdu.extend_from_slice(&[0; 16]);
        pdu[8] = frag as u8;
        pdu[9] = (frag >> 8) as u8;
        pdu[10] = 16;
        assert_eq!(
            response_stub_range(&pdu),
            Err(Error::Malformed("auth_pad_length beyond the stub"))
        );
    }
}
