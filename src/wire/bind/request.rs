//! The client's side: bind and alter_context (C706 §12.6.4.3, §12.6.4.1), and the bind
//! rpcpin sends itself.

use super::syntax_at;
use crate::wire::pdu::{finish_pdu, write_header};
use crate::wire::{
    get_u16, get_u32, put_u16, put_u32, EncodeError, Endian, Error, PacketType, Pdu, Result,
    SyntaxId,
};

/// Offsets of bind and alter_context's fields after the common header (C706 §12.6.4.3,
/// §12.6.4.1), and of a `p_cont_elem_t`'s in the context list (§12.6.3.1).
mod field {
    pub const MAX_XMIT_FRAG: usize = 16;
    pub const MAX_RECV_FRAG: usize = 18;
    pub const ASSOC_GROUP_ID: usize = 20;
    /// `n_context_elem` u8, then 3 reserved bytes.
    pub const N_CONTEXTS: usize = 24;
    /// The first `p_cont_elem_t`.
    pub const CONTEXTS: usize = 28;

    /// Within one `p_cont_elem_t`.
    pub mod context {
        pub const ID: usize = 0;
        /// `n_transfer_syn` u8, then a reserved byte.
        pub const N_TRANSFER_SYNTAXES: usize = 2;
        pub const ABSTRACT_SYNTAX: usize = 4;
        /// `n_transfer_syn` syntax ids of 20 bytes each.
        pub const TRANSFER_SYNTAXES: usize = 24;
    }
}

/// A context element's length without its transfer syntaxes.
const CONTEXT_FIXED_LEN: usize = field::context::TRANSFER_SYNTAXES;

/// A checked bind or alter_context PDU.
#[derive(Debug, Clone, Copy)]
pub struct BindRequest<'a> {
    pdu: Pdu<&'a [u8]>,
    n_contexts: usize,
    /// Where the context list ends (the auth verifier's padding, if any, follows).
    contexts_end: usize,
}

impl<'a> BindRequest<'a> {
    /// Checks a whole bind or alter_context PDU, every context element included.
    pub fn parse(bytes: &'a [u8]) -> Result<BindRequest<'a>> {
        BindRequest::from_pdu(Pdu::new_checked(bytes)?)
    }

    /// Checks that a PDU whose header is checked is a bind or alter_context, and every
    /// context element.
    pub fn from_pdu(pdu: Pdu<&'a [u8]>) -> Result<BindRequest<'a>> {
        let bytes = pdu.into_inner();
        if !matches!(pdu.ptype(), PacketType::Bind | PacketType::AlterContext) {
            return Err(Error::Unsupported(
                "pdu type (expected bind or alter_context)",
            ));
        }
        let end = pdu.body_end();
        if end < field::CONTEXTS {
            return Err(Error::Truncated("bind body"));
        }
        let n_contexts = bytes[field::N_CONTEXTS] as usize;
        let mut at = field::CONTEXTS;
        for _ in 0..n_contexts {
            if at + CONTEXT_FIXED_LEN > end {
                return Err(Error::Truncated("presentation context"));
            }
            let n_syntaxes = bytes[at + field::context::N_TRANSFER_SYNTAXES] as usize;
            if n_syntaxes == 0 {
                return Err(Error::Malformed(
                    "presentation context without transfer syntax",
                ));
            }
            at += CONTEXT_FIXED_LEN + n_syntaxes * SyntaxId::LEN;
            if at > end {
                return Err(Error::Truncated("transfer syntaxes"));
            }
        }
        Ok(BindRequest {
            pdu,
            n_contexts,
            contexts_end: at,
        })
    }

    /// The PDU itself.
    pub fn pdu(&self) -> &Pdu<&'a [u8]> {
        &self.pdu
    }

    /// The largest fragment the client will send.
    pub fn max_xmit_frag(&self) -> u16 {
        get_u16(
            self.pdu.into_inner(),
            field::MAX_XMIT_FRAG,
            self.pdu.endian(),
        )
    }

    /// The largest fragment the client will accept.
    pub fn max_recv_frag(&self) -> u16 {
        get_u16(
            self.pdu.into_inner(),
            field::MAX_RECV_FRAG,
            self.pdu.endian(),
        )
    }

    /// The association group the client asks to join (0: a new one).
    pub fn assoc_group_id(&self) -> u32 {
        get_u32(
            self.pdu.into_inner(),
            field::ASSOC_GROUP_ID,
            self.pdu.endian(),
        )
    }

    /// The proposed presentation contexts, in order.
    pub fn contexts(&self) -> impl Iterator<Item = PresContext<'a>> + '_ {
        let bytes = self.pdu.into_inner();
        let endian = self.pdu.endian();
        let mut at = field::CONTEXTS;
        (0..self.n_contexts).map(move |_| {
            let n_syntaxes = bytes[at + field::context::N_TRANSFER_SYNTAXES] as usize;
            let len = CONTEXT_FIXED_LEN + n_syntaxes * SyntaxId::LEN;
            let ctx = PresContext {
                bytes: &bytes[at..at + len],
                endian,
            };
            at += len;
            ctx
        })
    }
}

impl BindRequest<'_> {
    /// Appends this PDU with only the contexts whose entry in `keep` is true (one entry per
    /// context, in order), every other byte (fixed fields, auth verifier) as it was. Every
    /// context element is a multiple of 4 bytes long, so the auth trailer stays aligned.
    pub fn encode_keeping(&self, keep: &[bool], out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if keep.len() != self.n_contexts {
            return Err(EncodeError::Mismatch {
                what: "keep flags",
                given: keep.len(),
                expected: self.n_contexts,
            });
        }
        let bytes = self.pdu.as_bytes();
        let start = out.len();
        out.extend_from_slice(&bytes[..field::N_CONTEXTS]);
        out.push(keep.iter().filter(|&&k| k).count() as u8);
        out.extend_from_slice(&bytes[field::N_CONTEXTS + 1..field::CONTEXTS]);
        for (ctx, _) in self.contexts().zip(keep).filter(|(_, &k)| k) {
            out.extend_from_slice(ctx.bytes);
        }
        out.extend_from_slice(&bytes[self.contexts_end..]);
        finish_pdu(&mut out[start..], self.pdu.endian())
    }
}

/// One proposed presentation context (`p_cont_elem_t`), checked by [`BindRequest::parse`].
#[derive(Debug, Clone, Copy)]
pub struct PresContext<'a> {
    bytes: &'a [u8],
    endian: Endian,
}

impl<'a> PresContext<'a> {
    /// The context id that requests will name.
    pub fn id(&self) -> u16 {
        get_u16(self.bytes, field::context::ID, self.endian)
    }

    /// The interface the client wants to call.
    pub fn abstract_syntax(&self) -> SyntaxId {
        syntax_at(self.bytes, field::context::ABSTRACT_SYNTAX, self.endian)
    }

    /// The transfer syntaxes offered for it, in the client's order of preference.
    pub fn transfer_syntaxes(&self) -> impl Iterator<Item = SyntaxId> + 'a {
        let endian = self.endian;
        self.bytes[field::context::TRANSFER_SYNTAXES..]
            .chunks_exact(SyntaxId::LEN)
            .map(move |c| syntax_at(c, 0, endian))
    }
}

/// A context to propose in a bind rpcpin sends itself.
#[derive(Debug, Clone, Copy)]
pub struct ContextProposal<'a> {
    /// Context id.
    pub id: u16,
    /// Interface.
    pub abstract_syntax: SyntaxId,
    /// Offered transfer syntaxes.
    pub transfer_syntaxes: &'a [SyntaxId],
}

/// Appends an unauthenticated bind.
pub fn encode_bind(
    out: &mut Vec<u8>,
    endian: Endian,
    call_id: u32,
    max_frag: u16,
    contexts: &[ContextProposal<'_>],
) -> Result<(), EncodeError> {
    let start = out.len();
    let flags = crate::wire::pdu::flags::FIRST_FRAG | crate::wire::pdu::flags::LAST_FRAG;
    write_header(out, PacketType::Bind, flags, endian, call_id);
    put_u16(out, max_frag, endian);
    put_u16(out, max_frag, endian);
    put_u32(out, 0, endian);
    let n = EncodeError::fit("contexts", contexts.len(), u8::MAX)?;
    out.extend_from_slice(&[n, 0, 0, 0]);
    for c in contexts {
        put_u16(out, c.id, endian);
        let n = EncodeError::fit("transfer syntaxes", c.transfer_syntaxes.len(), u8::MAX)?;
        out.extend_from_slice(&[n, 0]);
        c.abstract_syntax.write(out, endian);
        for ts in c.transfer_syntaxes {
            ts.write(out, endian);
        }
    }
    finish_pdu(&mut out[start..], endian)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::first_pdu;
    use ::uuid::uuid;

    const NSPI_CLIENT: &[u8] = include_bytes!("../../../tests/data/mapi-epm-map-nspi.client.bin");
    const EPM: SyntaxId = SyntaxId::new(uuid!("e1af8308-5d1f-11c9-91a4-08002b14a0fa"), 3, 0);

    #[test]
    fn parses_outlooks_epm_bind() {
        let bind = BindRequest::parse(&NSPI_CLIENT[..72]).unwrap();
        assert_eq!(bind.pdu().ptype(), PacketType::Bind);
        assert_eq!(bind.max_xmit_frag(), 5840);
        assert_eq!(bind.assoc_group_id(), 0);
        let ctx: Vec<_> = bind.contexts().collect();
        assert_eq!(ctx.len(), 1);
        assert_eq!(ctx[0].id(), 0);
        assert_eq!(ctx[0].abstract_syntax(), EPM);
        assert_eq!(
            ctx[0].transfer_syntaxes().collect::<Vec<_>>(),
            [SyntaxId::NDR]
        );
    }

    #[test]
    fn parses_a_windows_three_context_bind() {
        // dce_rpc_netlogon.pcapng: NDR, NDR64 and bind-time feature negotiation proposed.
        let client = include_bytes!("../../../tests/data/netlogon-ndr64.client.bin");
        let bind = BindRequest::parse(first_pdu(client)).unwrap();
        let netlogon = SyntaxId::new(uuid!("12345678-1234-abcd-ef00-01234567cffb"), 1, 0);
        let ctx: Vec<_> = bind.contexts().collect();
        assert_eq!(ctx.len(), 3);
        assert!(ctx.iter().all(|c| c.abstract_syntax() == netlogon));
        let offered: Vec<SyntaxId> = ctx.iter().flat_map(|c| c.transfer_syntaxes()).collect();
        assert_eq!(offered[..2], [SyntaxId::NDR, SyntaxId::NDR64]);
        assert!(offered[2].is_feature_negotiation());
    }

    #[test]
    fn drops_contexts_keeping_the_auth_verifier() {
        // Windows' three-context netlogon bind (dce_rpc_netlogon.pcapng).
        let client = include_bytes!("../../../tests/data/netlogon-ndr64.client.bin");
        let bind = BindRequest::parse(first_pdu(client)).unwrap();
        let mut out = Vec::new();
        bind.encode_keeping(&[true, false, true], &mut out).unwrap();
        let kept = BindRequest::parse(&out).unwrap();
        let ids: Vec<u16> = kept.contexts().map(|c| c.id()).collect();
        assert_eq!(ids, [0, 2]);
        assert_eq!(out.len(), first_pdu(client).len() - 44);
        assert_eq!(kept.pdu().auth_len(), bind.pdu().auth_len());
        out.clear();
        bind.encode_keeping(&[true; 3], &mut out).unwrap();
        assert_eq!(out, first_pdu(client), "keeping everything changes nothing");
        assert_eq!(
            bind.encode_keeping(&[true], &mut out),
            Err(EncodeError::Mismatch {
                what: "keep flags",
                given: 1,
                expected: 3
            })
        );
    }

    #[test]
    fn encoded_bind_parses_back_and_matches_outlook() {
        let mut out = Vec::new();
        let ctx = [ContextProposal {
            id: 0,
            abstract_syntax: EPM,
            transfer_syntaxes: &[SyntaxId::NDR],
        }];
        encode_bind(&mut out, Endian::Little, 1, 5840, &ctx).unwrap();
        assert_eq!(out, NSPI_CLIENT[..72]);
    }

    #[test]
    fn rejects_truncated_or_empty_contexts() {
        let bind = &NSPI_CLIENT[..72];
        for cut in [27, 40, 71] {
            let mut b = bind[..cut].to_vec();
            b[8] = cut as u8;
            assert!(BindRequest::parse(&b).is_err(), "cut at {cut}");
        }
        let mut zero = bind.to_vec();
        zero[30] = 0;
        assert_eq!(
            BindRequest::parse(&zero).err(),
            Some(Error::Malformed(
                "presentation context without transfer syntax"
            ))
        );
        let mut many = bind.to_vec();
        many[24] = 2;
        assert_eq!(
            BindRequest::parse(&many).err(),
            Some(Error::Truncated("presentation context"))
        );
    }
}
