//! bind / alter_context and their answers bind_ack / alter_context_resp / bind_nak
//! (C706 §12.6.4.3–§12.6.4.5, MS-RPCE 2.2.2.x): the client's side in [`request`], the
//! server's in [`answer`] and, for a bind refused as a whole, [`nak`].
//!
//! ```text
//! bind, alter_context                 bind_ack, alter_context_resp
//!  16 max_xmit_frag  u16               16 max_xmit_frag  u16
//!  18 max_recv_frag  u16               18 max_recv_frag  u16
//!  20 assoc_group_id u32               20 assoc_group_id u32
//!  24 n_context_elem u8, 3 reserved    24 sec_addr_len u16, sec_addr, pad to 4
//!  28 p_cont_elem_t[n]:                 .. n_results u8, 3 reserved
//!       p_cont_id u16                   .. p_result_t[n]:
//!       n_transfer_syn u8, reserved          result u16, reason u16,
//!       abstract_syntax (20)                 transfer_syntax (20)
//!       transfer_syntaxes (20 each)
//! ```

pub mod answer;
pub mod nak;
pub mod request;

pub use answer::{encode_bind_ack, reason, BindAck, BindAckFields, ContextResult, ResultEntry};
pub use nak::{encode_bind_nak, nak_reason, BindNak};
pub use request::{encode_bind, BindRequest, ContextProposal, PresContext};

use super::{Endian, SyntaxId};

fn syntax_at(bytes: &[u8], at: usize, endian: Endian) -> SyntaxId {
    // Callers only pass offsets their checked constructor has validated.
    SyntaxId::from_wire(&bytes[at..], endian).unwrap_or_else(|_| unreachable!())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{PacketType, Pdu};

    #[test]
    fn parses_every_bind_and_answer_of_the_captures() {
        let streams: [&[u8]; 6] = [
            include_bytes!("../../../tests/data/win7-drsuapi.client.bin"),
            include_bytes!("../../../tests/data/win7-drsuapi.server.bin"),
            include_bytes!("../../../tests/data/dcom-ntlm-alter-context.client.bin"),
            include_bytes!("../../../tests/data/dcom-ntlm-alter-context.server.bin"),
            include_bytes!("../../../tests/data/dcom-kerberos-135.client.bin"),
            include_bytes!("../../../tests/data/dcom-kerberos-135.server.bin"),
        ];
        let (mut binds, mut acks) = (0, 0);
        for stream in streams {
            let mut rest = stream;
            while !rest.is_empty() {
                let len = crate::wire::frame::next_pdu_len(rest, 65535)
                    .unwrap()
                    .unwrap();
                let pdu = Pdu::new_checked(&rest[..len]).unwrap();
                match pdu.ptype() {
                    PacketType::Bind | PacketType::AlterContext => {
                        let b = BindRequest::from_pdu(pdu).unwrap();
                        assert!(b.contexts().count() >= 1);
                        binds += 1;
                    }
                    PacketType::BindAck | PacketType::AlterContextResp => {
                        BindAck::from_pdu(pdu).unwrap().results().for_each(drop);
                        acks += 1;
                    }
                    _ => {}
                }
                rest = &rest[len..];
            }
        }
        assert_eq!((binds, acks), (7, 6));
    }
}
