//! The server's side: bind_ack and alter_context_resp (C706 §12.6.4.4, §12.6.4.2), the
//! splices a pin applies to them, and the refusals rpcpin sends (bind_nak is in
//! [`super::nak`]).

use super::syntax_at;
use crate::wire::pdu::{finish_pdu, write_header};
use crate::wire::{
    get_u16, get_u32, put_u16, put_u32, EncodeError, Endian, Error, PacketType, Pdu, Result,
    SyntaxId,
};

/// Offsets of bind_ack and alter_context_resp's fields after the common header (C706
/// §12.6.4.4, §12.6.4.2) and of their result list (`p_result_list_t`, §12.6.3.1), which
/// starts at the first 4-aligned offset after the secondary address.
mod field {
    pub const MAX_XMIT_FRAG: usize = 16;
    pub const MAX_RECV_FRAG: usize = 18;
    pub const ASSOC_GROUP_ID: usize = 20;
    /// `sec_addr_len` u16: the length of the secondary address, its NUL included if sent.
    pub const SEC_ADDR_LEN: usize = 24;
    pub const SEC_ADDR: usize = 26;

    /// Within the result list.
    pub mod list {
        /// `n_results` u8, then 3 reserved bytes.
        pub const N_RESULTS: usize = 0;
        pub const RESULTS: usize = 4;
    }

    /// Within one `p_result_t`.
    pub mod result {
        pub const RESULT: usize = 0;
        pub const REASON: usize = 2;
        pub const TRANSFER_SYNTAX: usize = 4;
        pub const LEN: usize = 24;
    }
}

const RESULT_LEN: usize = field::result::LEN;

/// `p_cont_def_result_t` (C706 §12.6.3.1, MS-RPCE 2.2.2.4 adds negotiate_ack).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextResult {
    /// The context is accepted with the returned transfer syntax.
    Acceptance,
    /// Refused by the server application.
    UserRejection,
    /// Refused by the runtime (or by rpcpin).
    ProviderRejection,
    /// Answer to a bind-time feature negotiation context.
    NegotiateAck,
    /// Any other value.
    Unknown(u16),
}

impl From<u16> for ContextResult {
    fn from(v: u16) -> ContextResult {
        match v {
            0 => ContextResult::Acceptance,
            1 => ContextResult::UserRejection,
            2 => ContextResult::ProviderRejection,
            3 => ContextResult::NegotiateAck,
            other => ContextResult::Unknown(other),
        }
    }
}

impl From<ContextResult> for u16 {
    fn from(v: ContextResult) -> u16 {
        match v {
            ContextResult::Acceptance => 0,
            ContextResult::UserRejection => 1,
            ContextResult::ProviderRejection => 2,
            ContextResult::NegotiateAck => 3,
            ContextResult::Unknown(other) => other,
        }
    }
}

/// `p_provider_reason_t` values (C706 §12.6.3.1).
pub mod reason {
    /// No reason given.
    pub const NOT_SPECIFIED: u16 = 0;
    /// The interface is not offered here.
    pub const ABSTRACT_SYNTAX_NOT_SUPPORTED: u16 = 1;
    /// None of the proposed transfer syntaxes is supported.
    pub const PROPOSED_TRANSFER_SYNTAXES_NOT_SUPPORTED: u16 = 2;
    /// A resource limit was reached.
    pub const LOCAL_LIMIT_EXCEEDED: u16 = 3;
}

/// One entry of a bind_ack's result list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultEntry {
    /// Accepted, rejected, or negotiate_ack.
    pub result: ContextResult,
    /// Why, when rejected; the feature bits for negotiate_ack.
    pub reason: u16,
    /// The transfer syntax chosen (all zeros when rejected).
    pub transfer_syntax: SyntaxId,
}

impl ResultEntry {
    /// Appends the `p_result_t` encoding in `endian` order.
    fn write(&self, out: &mut Vec<u8>, endian: Endian) {
        put_u16(out, self.result.into(), endian);
        put_u16(out, self.reason, endian);
        self.transfer_syntax.write(out, endian);
    }

    /// A provider rejection for `reason`, with the all-zero syntax Windows sends.
    pub fn rejected(reason: u16) -> ResultEntry {
        ResultEntry {
            result: ContextResult::ProviderRejection,
            reason,
            transfer_syntax: SyntaxId {
                uuid: crate::wire::Uuid::nil(),
                major: 0,
                minor: 0,
            },
        }
    }
}

/// A checked bind_ack or alter_context_resp PDU.
#[derive(Debug, Clone, Copy)]
pub struct BindAck<'a> {
    pdu: Pdu<&'a [u8]>,
    results_at: usize,
    n_results: usize,
}

impl<'a> BindAck<'a> {
    /// Checks a whole bind_ack or alter_context_resp PDU, its result list included.
    pub fn parse(bytes: &'a [u8]) -> Result<BindAck<'a>> {
        BindAck::from_pdu(Pdu::new_checked(bytes)?)
    }

    /// Checks that a PDU whose header is checked is a bind_ack or alter_context_resp, and
    /// its result list.
    pub fn from_pdu(pdu: Pdu<&'a [u8]>) -> Result<BindAck<'a>> {
        let bytes = pdu.into_inner();
        if !matches!(
            pdu.ptype(),
            PacketType::BindAck | PacketType::AlterContextResp
        ) {
            return Err(Error::Unsupported(
                "pdu type (expected bind_ack or alter_context_resp)",
            ));
        }
        let end = pdu.body_end();
        if end < field::SEC_ADDR {
            return Err(Error::Truncated("bind_ack body"));
        }
        let sec_len = get_u16(bytes, field::SEC_ADDR_LEN, pdu.endian()) as usize;
        let results_at = align4(field::SEC_ADDR + sec_len);
        if results_at + field::list::RESULTS > end {
            return Err(Error::Truncated("bind_ack result list"));
        }
        let n_results = bytes[results_at + field::list::N_RESULTS] as usize;
        if results_at + field::list::RESULTS + n_results * RESULT_LEN > end {
            return Err(Error::Truncated("bind_ack results"));
        }
        Ok(BindAck {
            pdu,
            results_at,
            n_results,
        })
    }

    /// The PDU itself.
    pub fn pdu(&self) -> &Pdu<&'a [u8]> {
        &self.pdu
    }

    /// The largest fragment the server will send.
    pub fn max_xmit_frag(&self) -> u16 {
        get_u16(
            self.pdu.into_inner(),
            field::MAX_XMIT_FRAG,
            self.pdu.endian(),
        )
    }

    /// The largest fragment the server will accept.
    pub fn max_recv_frag(&self) -> u16 {
        get_u16(
            self.pdu.into_inner(),
            field::MAX_RECV_FRAG,
            self.pdu.endian(),
        )
    }

    /// The association group the server placed the connection in.
    pub fn assoc_group_id(&self) -> u32 {
        get_u32(
            self.pdu.into_inner(),
            field::ASSOC_GROUP_ID,
            self.pdu.endian(),
        )
    }

    /// The secondary address: the server's port as text, NUL included when sent.
    pub fn secondary_addr(&self) -> &'a [u8] {
        let bytes = self.pdu.into_inner();
        let len = get_u16(bytes, field::SEC_ADDR_LEN, self.pdu.endian()) as usize;
        &bytes[field::SEC_ADDR..field::SEC_ADDR + len]
    }

    /// Appends this PDU with its secondary address replaced by `addr`, every other byte
    /// (results, padding, auth verifier) as it was. The address's length may change, so
    /// `frag_length` and the padding after the address are recomputed; the results stay
    /// 4-aligned, and so does the auth trailer after them.
    pub fn encode_with_secondary_addr(
        &self,
        addr: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let bytes = self.pdu.as_bytes();
        let endian = self.pdu.endian();
        let start = out.len();
        if addr.len() == self.secondary_addr().len() {
            // Same length: patch in place, keeping even the padding's bytes.
            out.extend_from_slice(bytes);
            out[start + field::SEC_ADDR..][..addr.len()].copy_from_slice(addr);
            return Ok(());
        }
        let len = EncodeError::fit("secondary address", addr.len(), u16::MAX)?;
        out.extend_from_slice(&bytes[..field::SEC_ADDR_LEN]);
        put_u16(out, len, endian);
        out.extend_from_slice(addr);
        out.resize(start + align4(out.len() - start), 0);
        out.extend_from_slice(&bytes[self.results_at..]);
        finish_pdu(&mut out[start..], endian)
    }

    /// Appends this PDU with its result list replaced by `results`, every other byte
    /// (secondary address, auth verifier) as it was. Each result is 24 bytes, so the auth
    /// trailer stays aligned.
    pub fn encode_with_results(
        &self,
        results: &[ResultEntry],
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let bytes = self.pdu.as_bytes();
        let endian = self.pdu.endian();
        let n = EncodeError::fit("results", results.len(), u8::MAX)?;
        let start = out.len();
        let list = &bytes[self.results_at..];
        out.extend_from_slice(&bytes[..self.results_at]);
        out.push(n);
        out.extend_from_slice(&list[field::list::N_RESULTS + 1..field::list::RESULTS]);
        results.iter().for_each(|r| r.write(out, endian));
        out.extend_from_slice(&list[field::list::RESULTS + self.n_results * RESULT_LEN..]);
        finish_pdu(&mut out[start..], endian)
    }

    /// The results, one per proposed context and in the same order.
    pub fn results(&self) -> impl Iterator<Item = ResultEntry> + 'a {
        let bytes = self.pdu.into_inner();
        let endian = self.pdu.endian();
        let start = self.results_at + field::list::RESULTS;
        bytes[start..start + self.n_results * RESULT_LEN]
            .chunks_exact(RESULT_LEN)
            .map(move |r| ResultEntry {
                result: ContextResult::from(get_u16(r, field::result::RESULT, endian)),
                reason: get_u16(r, field::result::REASON, endian),
                transfer_syntax: syntax_at(r, field::result::TRANSFER_SYNTAX, endian),
            })
    }
}

pub(super) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// What rpcpin needs to say in a bind_ack or alter_context_resp of its own.
#[derive(Debug, Clone)]
pub struct BindAckFields<'a> {
    /// `BindAck` or `AlterContextResp`.
    pub ptype: PacketType,
    /// Byte order of the answer: the same as the request's.
    pub endian: Endian,
    /// The request's call id.
    pub call_id: u32,
    /// Largest fragment the sender will transmit.
    pub max_xmit_frag: u16,
    /// Largest fragment the sender will accept.
    pub max_recv_frag: u16,
    /// Association group.
    pub assoc_group_id: u32,
    /// Secondary address bytes (NUL included if wanted).
    pub secondary_addr: &'a [u8],
    /// One result per proposed context.
    pub results: &'a [ResultEntry],
}

/// Appends a bind_ack or alter_context_resp without auth verifier.
pub fn encode_bind_ack(out: &mut Vec<u8>, f: &BindAckFields<'_>) -> Result<(), EncodeError> {
    let start = out.len();
    let flags = crate::wire::pdu::flags::FIRST_FRAG | crate::wire::pdu::flags::LAST_FRAG;
    write_header(out, f.ptype, flags, f.endian, f.call_id);
    let e = f.endian;
    put_u16(out, f.max_xmit_frag, e);
    put_u16(out, f.max_recv_frag, e);
    put_u32(out, f.assoc_group_id, e);
    let sec_len = EncodeError::fit("secondary address", f.secondary_addr.len(), u16::MAX)?;
    put_u16(out, sec_len, e);
    out.extend_from_slice(f.secondary_addr);
    out.resize(start + align4(out.len() - start), 0);
    let n = EncodeError::fit("results", f.results.len(), u8::MAX)?;
    out.extend_from_slice(&[n, 0, 0, 0]);
    f.results.iter().for_each(|r| r.write(out, e));
    finish_pdu(&mut out[start..], e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::first_pdu;

    const NSPI_SERVER: &[u8] = include_bytes!("../../../tests/data/mapi-epm-map-nspi.server.bin");

    #[test]
    fn parses_exchanges_bind_ack() {
        let ack = BindAck::parse(&NSPI_SERVER[..60]).unwrap();
        assert_eq!(ack.secondary_addr(), b"135\0");
        assert_eq!((ack.max_xmit_frag(), ack.max_recv_frag()), (5840, 5840));
        assert_eq!(ack.assoc_group_id(), 0xc8e5);
        let results: Vec<_> = ack.results().collect();
        assert_eq!(
            results,
            [ResultEntry {
                result: ContextResult::Acceptance,
                reason: 0,
                transfer_syntax: SyntaxId::NDR
            }]
        );
    }

    #[test]
    fn parses_a_windows_ndr64_acceptance() {
        // dce_rpc_netlogon.pcapng: the server rejects NDR, accepts NDR64 and acknowledges
        // the bind-time feature negotiation.
        let server = include_bytes!("../../../tests/data/netlogon-ndr64.server.bin");
        let ack = BindAck::parse(first_pdu(server)).unwrap();
        let results: Vec<_> = ack.results().collect();
        assert_eq!(
            results.iter().map(|r| r.result).collect::<Vec<_>>(),
            [
                ContextResult::ProviderRejection,
                ContextResult::Acceptance,
                ContextResult::NegotiateAck
            ]
        );
        assert_eq!(results[1].transfer_syntax, SyntaxId::NDR64);
    }

    #[test]
    fn secondary_address_without_its_nul_in_band() {
        // bind-ack-no-inband-null.pcap: "ABC" with the length 3, padding after it.
        let server = include_bytes!("../../../tests/data/spoolss-no-inband-null.server.bin");
        let ack = BindAck::parse(first_pdu(server)).unwrap();
        assert_eq!(ack.secondary_addr(), b"ABC");
        assert_eq!(ack.results().count(), 1);
    }

    #[test]
    fn encodes_a_bind_ack_like_exchange() {
        let results = [ResultEntry {
            result: ContextResult::Acceptance,
            reason: 0,
            transfer_syntax: SyntaxId::NDR,
        }];
        let mut out = Vec::new();
        encode_bind_ack(
            &mut out,
            &BindAckFields {
                ptype: PacketType::BindAck,
                endian: Endian::Little,
                call_id: 1,
                max_xmit_frag: 5840,
                max_recv_frag: 5840,
                assoc_group_id: 0xc8e5,
                secondary_addr: b"135\0",
                results: &results,
            },
        )
        .unwrap();
        assert_eq!(out, NSPI_SERVER[..60]);
    }

    #[test]
    fn encodes_a_rejection_in_big_endian() {
        let results = [ResultEntry::rejected(reason::ABSTRACT_SYNTAX_NOT_SUPPORTED)];
        let mut out = Vec::new();
        let fields = BindAckFields {
            ptype: PacketType::AlterContextResp,
            endian: Endian::Big,
            call_id: 7,
            max_xmit_frag: 4280,
            max_recv_frag: 4280,
            assoc_group_id: 0,
            secondary_addr: b"",
            results: &results,
        };
        encode_bind_ack(&mut out, &fields).unwrap();
        let ack = BindAck::parse(&out).unwrap();
        assert_eq!(ack.pdu().ptype(), PacketType::AlterContextResp);
        assert_eq!(ack.pdu().call_id(), 7);
        assert_eq!(ack.secondary_addr(), b"");
        assert_eq!(ack.results().collect::<Vec<_>>(), results);
        // frag_length is big endian: 16 + 8 + 2 + pad 2 + 4 + 24 = 56.
        assert_eq!(&out[8..10], &[0, 56]);
    }

    #[test]
    fn replaces_the_secondary_address_keeping_the_rest() {
        // Exchange's NTLM bind_ack from mapi.pcap: "4997\0", then results and an NTLM challenge.
        let session = include_bytes!("../../../tests/data/mapi-nspi-ntlm-session.server.bin");
        let original = &session[..usize::from(u16::from_le_bytes([session[8], session[9]]))];
        let ack = BindAck::parse(original).unwrap();
        assert_eq!(ack.secondary_addr(), b"4997\0");
        let mut out = Vec::new();
        ack.encode_with_secondary_addr(b"6004\0", &mut out).unwrap();
        assert_eq!(out.len(), original.len());
        let changed: Vec<usize> = (0..out.len()).filter(|&i| out[i] != original[i]).collect();
        assert_eq!(changed, [26, 27, 28, 29], "only 4997 became 6004");

        // Shorter and longer addresses move what follows, re-padded to 4.
        for addr in [&b"135\0"[..], b"65535", b"", b"1"] {
            out.clear();
            ack.encode_with_secondary_addr(addr, &mut out).unwrap();
            let again = BindAck::parse(&out).unwrap();
            assert_eq!(again.secondary_addr(), addr);
            assert_eq!(
                again.results().collect::<Vec<_>>(),
                ack.results().collect::<Vec<_>>()
            );
            assert_eq!(again.pdu().auth_len(), ack.pdu().auth_len());
            let tail = original.len() - ack.results_at;
            assert_eq!(out[out.len() - tail..], original[ack.results_at..]);
            assert_eq!(again.pdu().frag_len(), out.len());
        }
    }

    #[test]
    fn splices_results_keeping_the_auth_verifier() {
        // The answer to Windows' three-context netlogon bind (dce_rpc_netlogon.pcapng).
        let server = include_bytes!("../../../tests/data/netlogon-ndr64.server.bin");
        let ack = BindAck::parse(first_pdu(server)).unwrap();
        let all: Vec<ResultEntry> = ack.results().collect();
        let mut out = Vec::new();
        ack.encode_with_results(&all, &mut out).unwrap();
        assert_eq!(out, first_pdu(server), "the same results change nothing");
        out.clear();
        let fewer = [
            all[1],
            ResultEntry::rejected(reason::ABSTRACT_SYNTAX_NOT_SUPPORTED),
        ];
        ack.encode_with_results(&fewer, &mut out).unwrap();
        let again = BindAck::parse(&out).unwrap();
        assert_eq!(again.results().collect::<Vec<_>>(), fewer);
        assert_eq!(again.secondary_addr(), ack.secondary_addr());
        assert_eq!(out.len(), first_pdu(server).len() - 24);
    }

    #[test]
    fn refuses_what_its_fields_cannot_hold() {
        let ack = BindAck::parse(&NSPI_SERVER[..60]).unwrap();
        let mut out = Vec::new();
        let many = vec![ResultEntry::rejected(reason::NOT_SPECIFIED); 256];
        assert_eq!(
            ack.encode_with_results(&many, &mut out),
            Err(EncodeError::TooLarge {
                what: "results",
                len: 256,
                max: 255
            })
        );
        let long = vec![b'1'; 65_530];
        assert_eq!(
            ack.encode_with_secondary_addr(&long, &mut out),
            Err(EncodeError::TooLarge {
                what: "encoded pdu",
                len: 65_584,
                max: 65_535
            })
        );
    }
}
