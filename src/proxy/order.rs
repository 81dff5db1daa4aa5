//! Answers in call order: an answer rpcpin makes itself (a refused bind's, a refused call's
//! fault) waits behind the backend's answers to the calls the client made before it, so a
//! client that pipelines its calls never sees them answered out of order.
//!
//! A policy tells [`CallOrder`] of every client PDU it forwards and every backend PDU it
//! passes on; its own answers go through [`CallOrder::reply`], which sends them at once when
//! nothing earlier is unanswered, and otherwise holds them until the backend's answer that
//! they follow has been passed on, then sends them right after it, in the same batch.
//!
//! The wait is bounded as every wait on the backend is: by `limits.idle_timeout`, and by
//! the number of answers held.

use std::collections::VecDeque;

use anyhow::bail;
use bytes::BytesMut;

use super::relay::Outbox;
use super::small_map::SmallMap;
use crate::wire::pdu::flags;
use crate::wire::{PacketType, Pdu};

/// More calls than this forwarded and not answered on one connection is not a real client.
const MAX_AWAITED: usize = 256;
/// More of rpcpin's own answers than this waiting behind the backend's is not a real
/// client (each stands for a refused bind or call pipelined behind an unanswered one).
const MAX_HELD: usize = 16;

/// The calls forwarded to the backend that it has not answered yet, in the order they were
/// forwarded, and rpcpin's own answers waiting behind them.
#[derive(Debug, Default)]
pub(super) struct CallOrder {
    /// Each unanswered call by call id: when it was forwarded, and whether a fragment of its
    /// answer went by (so a fragment with neither flag is a middle one).
    awaited: SmallMap<u32, Awaited>,
    /// The forwarding number the next call gets.
    next: u64,
    /// rpcpin's answers in the order it made them, each with the forwarding number of the
    /// first call after it: it goes once no earlier call is unanswered.
    held: VecDeque<(u64, BytesMut)>,
}

#[derive(Debug, Clone, Copy)]
struct Awaited {
    seq: u64,
    answering: bool,
}

impl CallOrder {
    /// Notes a client PDU forwarded to the backend: a bind, an alter_context or a call (its
    /// first fragment; `maybe` calls have no answer) now awaits its answer; an orphaned call
    /// never gets one.
    pub(super) fn forwarded<B: AsRef<[u8]>>(&mut self, pdu: &Pdu<B>) -> anyhow::Result<()> {
        let call_id = pdu.call_id();
        match pdu.ptype() {
            PacketType::Bind | PacketType::AlterContext => {}
            PacketType::Request if pdu.flags() & flags::MAYBE == 0 => {}
            PacketType::Orphaned => {
                self.awaited.remove(&call_id);
                return Ok(());
            }
            _ => return Ok(()),
        }
        if self.awaited.contains(&call_id) {
            // A later fragment of a call already awaited.
            return Ok(());
        }
        if self.awaited.len() >= MAX_AWAITED {
            bail!("more than {MAX_AWAITED} calls awaiting the backend's answer");
        }
        let seq = self.next;
        self.next += 1;
        let answering = false;
        self.awaited.insert(call_id, Awaited { seq, answering });
        Ok(())
    }

    /// Sends `answer`, rpcpin's own, to the client: now when the backend has answered every
    /// call forwarded before it, otherwise right after the last of those answers.
    pub(super) fn reply(&mut self, answer: BytesMut, out: &mut Outbox) -> anyhow::Result<()> {
        if self.awaited.is_empty() {
            out.reply.push(answer);
            return Ok(());
        }
        if self.held.len() >= MAX_HELD {
            bail!("more than {MAX_HELD} answers waiting behind the backend's");
        }
        self.held.push_back((self.next, answer));
        Ok(())
    }

    /// Notes a backend PDU on its way to the client: the call it ends the answer to is
    /// answered. The policy then passes it on and calls [`CallOrder::release`].
    pub(super) fn passing<B: AsRef<[u8]>>(&mut self, pdu: &Pdu<B>) {
        let call_id = pdu.call_id();
        let Some(call) = self.awaited.get_mut(&call_id) else {
            return;
        };
        let ends = match pdu.ptype() {
            PacketType::BindAck | PacketType::AlterContextResp | PacketType::BindNak => true,
            PacketType::Response | PacketType::Fault => {
                let ends = pdu.ends_call(call.answering);
                call.answering = true;
                ends
            }
            _ => false,
        };
        if !ends {
            return;
        }
        self.awaited.remove(&call_id);
    }

    /// Whether answers of rpcpin's wait behind the backend's: the backend's next answer is
    /// then passed whole, with those it releases after it.
    pub(super) fn holds_answers(&self) -> bool {
        !self.held.is_empty()
    }

    /// Sends, after what the policy forwarded so far, rpcpin's answers that no longer wait
    /// on any unanswered call.
    pub(super) fn release(&mut self, out: &mut Outbox) {
        if self.held.is_empty() {
            return;
        }
        let oldest = self
            .awaited
            .values()
            .map(|a| a.seq)
            .min()
            .unwrap_or(u64::MAX);
        while self.held.front().is_some_and(|(after, _)| *after <= oldest) {
            if let Some((_, answer)) = self.held.pop_front() {
                out.forward(answer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::call::{encode_request, encode_response};
    use crate::wire::Endian;

    fn pdu(encode: impl FnOnce(&mut Vec<u8>), frag: u8) -> Pdu<BytesMut> {
        let mut out = Vec::new();
        encode(&mut out);
        out[3] = frag;
        let mut buf = BytesMut::from(&out[..]);
        crate::wire::frame::next_pdu(&mut buf, 5840)
            .unwrap()
            .unwrap()
    }

    fn request(call_id: u32, frag: u8) -> Pdu<BytesMut> {
        let e =
            |out: &mut Vec<u8>| encode_request(out, Endian::Little, call_id, 0, 0, &[]).unwrap();
        pdu(e, frag)
    }

    fn response(call_id: u32, frag: u8) -> Pdu<BytesMut> {
        let e = |out: &mut Vec<u8>| encode_response(out, Endian::Little, call_id, 0, &[]).unwrap();
        pdu(e, frag)
    }

    /// Passes a backend PDU as a policy does; returns what went to the client after it.
    fn pass(order: &mut CallOrder, answer: Pdu<BytesMut>) -> Vec<u8> {
        let mut out = Outbox::default();
        order.passing(&answer);
        order.release(&mut out);
        out.forwarded().to_vec()
    }

    const WHOLE: u8 = flags::FIRST_FRAG | flags::LAST_FRAG;

    #[test]
    fn an_answer_waits_for_every_earlier_call_in_whatever_order_they_are_answered() {
        let mut order = CallOrder::default();
        let mut out = Outbox::default();
        order
            .reply(BytesMut::from(&b"first"[..]), &mut out)
            .unwrap();
        assert_eq!(
            out.reply,
            [&b"first"[..]],
            "nothing to wait for: sent at once"
        );
        // Calls 1 and 2 (in two fragments) forwarded, then an answer of rpcpin's, then
        // call 3 and another answer; a `maybe` call expects no answer.
        order.forwarded(&request(1, WHOLE)).unwrap();
        order.forwarded(&request(2, flags::FIRST_FRAG)).unwrap();
        order.forwarded(&request(2, flags::LAST_FRAG)).unwrap();
        order.forwarded(&request(9, WHOLE | flags::MAYBE)).unwrap();
        let mut out = Outbox::default();
        order
            .reply(BytesMut::from(&b"after 2"[..]), &mut out)
            .unwrap();
        order.forwarded(&request(3, WHOLE)).unwrap();
        order
            .reply(BytesMut::from(&b"after 3"[..]), &mut out)
            .unwrap();
        assert!(out.reply.is_empty(), "held");
        // The backend answers 2 first (concurrent multiplexing), in two fragments, then 1.
        assert!(pass(&mut order, response(2, flags::FIRST_FRAG)).is_empty());
        assert!(pass(&mut order, response(2, flags::LAST_FRAG)).is_empty());
        assert_eq!(pass(&mut order, response(1, WHOLE)), b"after 2");
        assert_eq!(pass(&mut order, response(3, WHOLE)), b"after 3");
    }
}
