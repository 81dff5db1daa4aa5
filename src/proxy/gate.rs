//! The interface gate: which presentation contexts of a client's bind or alter_context may
//! reach the backend, and rpcpin's own answer for those that may not.
//!
//! A bind that mixes allowed and refused contexts is forwarded with the refused ones removed,
//! and the backend's bind_ack gets a provider rejection spliced back in at each removed
//! context's place, so the client sees one result per context it proposed and the backend
//! never sees a refused interface.
//!
//! The gate also keeps the association's presentation contexts: each context id it
//! forwarded, with its interface, is usable only once the backend's bind_ack or
//! alter_context_resp accepted it. A call on any other context id never reaches the backend
//! (see [`Gate::usable`] and [`unknown_context_fault`]), and a forwarded context id is never
//! proposed again for another interface, so rpcpin's idea of a context's interface cannot
//! drift from the backend's.

use anyhow::bail;
use bytes::BytesMut;
use tracing::warn;

use super::small_map::SmallMap;
use crate::interfaces::alias_of;
use crate::metrics::{metrics, BindLabels};
use crate::wire::bind::{
    encode_bind_ack, encode_bind_nak, nak_reason, reason, BindAck, BindAckFields, BindRequest,
    ContextResult, ResultEntry,
};
use crate::wire::call::{encode_fault, status, Request};
use crate::wire::{PacketType, SyntaxId};

/// More binds awaiting their answer than this on one connection is not a real client.
const MAX_PENDING: usize = 16;
/// More presentation contexts than this on one connection is not a real client.
const MAX_CONTEXTS: usize = 256;

/// Why a call on a context id the backend has not accepted is refused.
const UNKNOWN_CONTEXT: &str = "no context with this id accepted by the backend";
/// Why a context id already forwarded for another interface is refused.
const REDEFINED: &str = "context id already bound to another interface";

/// How a bind with no acceptable context is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WhenNoneAllowed {
    /// A bind_ack rejecting every context (`abstract_syntax_not_supported`): clients report
    /// which interface is not offered.
    RejectEach,
    /// A bind_nak: nothing about the listener is disclosed.
    Nak,
}

/// What to do with a client's bind or alter_context.
#[derive(Debug)]
pub(super) enum Verdict {
    /// Forward it as it is: every context is allowed.
    Forward,
    /// Forward this copy of it, without the refused contexts.
    Filtered(BytesMut),
    /// Refuse it: send this answer to the client, forward nothing.
    Answer(BytesMut),
}

/// Per-connection gate state.
#[derive(Debug)]
pub(super) struct Gate {
    when_none: WhenNoneAllowed,
    /// Why a refused context is refused, for the audit log.
    why: &'static str,
    /// Binds forwarded with contexts removed, by call id: which contexts were kept.
    filtered: SmallMap<u32, Vec<bool>>,
    /// Each forwarded context id: the interface it was proposed for, and whether the
    /// backend accepted it.
    contexts: SmallMap<u16, Context>,
    /// Binds forwarded and not answered yet, by call id: the ids of the contexts forwarded,
    /// in their order (the order of the backend's results).
    proposed: SmallMap<u32, Vec<u16>>,
}

/// A presentation context the gate forwarded.
#[derive(Debug, Clone, Copy)]
struct Context {
    syntax: SyntaxId,
    accepted: bool,
}

impl Gate {
    /// A gate that answers `when_none` when no context is allowed, logging `why`.
    pub(super) fn new(when_none: WhenNoneAllowed, why: &'static str) -> Gate {
        Gate {
            when_none,
            why,
            filtered: SmallMap::default(),
            contexts: SmallMap::default(),
            proposed: SmallMap::default(),
        }
    }

    /// Judges a client's bind or alter_context, letting through the contexts for which
    /// `allows` is true and logging every refused one.
    pub(super) fn judge(
        &mut self,
        bind: &BindRequest<'_>,
        allows: impl Fn(&SyntaxId) -> bool,
    ) -> anyhow::Result<Verdict> {
        let proposals: Vec<(u16, SyntaxId)> = bind
            .contexts()
            .map(|c| (c.id(), c.abstract_syntax()))
            .collect();
        let keep: Vec<bool> = proposals
            .iter()
            .enumerate()
            .map(|(i, &(id, s))| {
                // A context id forwarded before, or earlier in this PDU, for another
                // interface: the backend would keep its old interface, or take the new one,
                // and rpcpin could no longer tell which.
                let redefined = self.contexts.get(&id).is_some_and(|c| c.syntax != s)
                    || proposals[..i].iter().any(|&(j, t)| j == id && t != s);
                let allowed = allows(&s);
                let ok = allowed && !redefined;
                let alias = alias_of(&s.uuid).unwrap_or("-");
                let result = if ok { "accepted" } else { "refused" };
                metrics()
                    .binds
                    .get_or_create(&BindLabels { alias, result })
                    .inc();
                let (policy, why) = match (allowed, redefined) {
                    (true, false) => return ok,
                    (false, _) => ("interface", self.why),
                    (true, true) => ("context", REDEFINED),
                };
                metrics().refused(policy, why);
                warn!(
                    event = "refused",
                    policy,
                    interface = %s.uuid,
                    alias,
                    version = %format_args!("{}.{}", s.major, s.minor),
                    context_id = id,
                    kind = %bind.pdu().ptype(),
                    reason = why,
                );
                ok
            })
            .collect();
        if keep.is_empty() {
            bail!("a {} without presentation contexts", bind.pdu().ptype());
        }
        if !keep.contains(&true) {
            return Ok(Verdict::Answer(self.refusal(bind)?));
        }
        if self.proposed.len() >= MAX_PENDING {
            bail!("more than {MAX_PENDING} unanswered binds");
        }
        let mut ids = Vec::with_capacity(keep.len());
        for (&(id, syntax), _) in proposals.iter().zip(&keep).filter(|(_, &k)| k) {
            if !self.contexts.contains(&id) {
                let accepted = false;
                self.contexts.insert(id, Context { syntax, accepted });
            }
            ids.push(id);
        }
        self.proposed.insert(bind.pdu().call_id(), ids);
        if self.contexts.len() > MAX_CONTEXTS {
            bail!("more than {MAX_CONTEXTS} presentation contexts");
        }
        if !keep.contains(&false) {
            return Ok(Verdict::Forward);
        }
        if self.filtered.len() >= MAX_PENDING {
            bail!("more than {MAX_PENDING} unanswered binds");
        }
        let mut out = Vec::with_capacity(bind.pdu().frag_len());
        bind.encode_keeping(&keep, &mut out)?;
        self.filtered.insert(bind.pdu().call_id(), keep);
        Ok(Verdict::Filtered(BytesMut::from(&out[..])))
    }

    /// Learns from the backend's answer to a bind or alter_context which of the contexts
    /// forwarded in it are accepted, and returns the answer with a rejection spliced back in
    /// for each context the gate removed from it; `None` when it removed none.
    pub(super) fn splice(&mut self, ack: &BindAck<'_>) -> anyhow::Result<Option<BytesMut>> {
        // The backend's results are in the order of the contexts it was sent: those the
        // gate forwarded, not those the client proposed.
        if let Some(ids) = self.proposed.remove(&ack.pdu().call_id()) {
            for (id, result) in ids.iter().zip(ack.results()) {
                if result.result == ContextResult::Acceptance {
                    if let Some(c) = self.contexts.get_mut(id) {
                        c.accepted = true;
                    }
                }
            }
        }
        let Some(keep) = self.filtered.remove(&ack.pdu().call_id()) else {
            return Ok(None);
        };
        let mut backend = ack.results();
        let refused = ResultEntry::rejected(reason::ABSTRACT_SYNTAX_NOT_SUPPORTED);
        let results: Vec<ResultEntry> = keep
            .iter()
            .map(|&k| {
                if k {
                    backend.next().unwrap_or(refused)
                } else {
                    refused
                }
            })
            .collect();
        let mut out = Vec::with_capacity(ack.pdu().frag_len() + 24 * results.len());
        ack.encode_with_results(&results, &mut out)?;
        Ok(Some(BytesMut::from(&out[..])))
    }

    /// The backend answered the bind or alter_context `call_id` with a fault or bind_nak:
    /// none of its contexts became usable.
    pub(super) fn unanswered(&mut self, call_id: u32) {
        self.proposed.remove(&call_id);
        self.filtered.remove(&call_id);
    }

    /// The interface of a context id the backend accepted; `None` for any other (never
    /// proposed, refused by the gate, rejected by the backend, or not answered yet: a call
    /// pipelined behind its bind is refused, as no real client sends one).
    pub(super) fn usable(&self, context_id: u16) -> Option<SyntaxId> {
        self.contexts
            .get(&context_id)
            .filter(|c| c.accepted)
            .map(|c| c.syntax)
    }

    fn refusal(&self, bind: &BindRequest<'_>) -> anyhow::Result<BytesMut> {
        let p = bind.pdu();
        let mut out = Vec::with_capacity(64);
        if p.ptype() == PacketType::Bind && self.when_none == WhenNoneAllowed::Nak {
            encode_bind_nak(&mut out, p.endian(), p.call_id(), nak_reason::NOT_SPECIFIED)?;
            return Ok(BytesMut::from(&out[..]));
        }
        let ptype = match p.ptype() {
            PacketType::AlterContext => PacketType::AlterContextResp,
            _ => PacketType::BindAck,
        };
        let results = vec![
            ResultEntry::rejected(reason::ABSTRACT_SYNTAX_NOT_SUPPORTED);
            bind.contexts().count()
        ];
        encode_bind_ack(
            &mut out,
            &BindAckFields {
                ptype,
                endian: p.endian(),
                call_id: p.call_id(),
                max_xmit_frag: bind.max_xmit_frag(),
                max_recv_frag: bind.max_recv_frag(),
                assoc_group_id: bind.assoc_group_id(),
                secondary_addr: b"",
                results: &results,
            },
        )?;
        Ok(BytesMut::from(&out[..]))
    }
}

/// rpcpin's answer to the first fragment of a call on a context id the backend has not
/// accepted ([`Gate::usable`]), logged and counted as a `context` refusal: what a server
/// answers a call on a context it does not know. As Samba's (librpc/rpc/dcesrv_core.c,
/// dcesrv_request: `dcesrv_fault_with_flags(call, DCERPC_NCA_S_UNKNOWN_IF,
/// DCERPC_PFC_FLAG_DID_NOT_EXECUTE)`, whose fault carries context id 0 when the call's
/// context is unknown): nca_s_unk_if, first and last fragment, did-not-execute, context 0.
pub(super) fn unknown_context_fault(req: &Request<'_>) -> anyhow::Result<BytesMut> {
    let p = req.pdu();
    warn!(
        event = "refused",
        policy = "context",
        context_id = req.context_id(),
        call_id = p.call_id(),
        opnum = req.opnum(),
        reason = UNKNOWN_CONTEXT,
    );
    metrics().refused("context", UNKNOWN_CONTEXT);
    let mut fault = Vec::with_capacity(32);
    encode_fault(&mut fault, p.endian(), p.call_id(), 0, status::NCA_S_UNK_IF)?;
    Ok(BytesMut::from(&fault[..]))
}

/// What to do with one request fragment under an operation policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CallVerdict {
    /// Forward it.
    Forward,
    /// The first fragment of a refused call: answer it with a fault, forward nothing.
    Refuse,
    /// A later fragment of a refused call: drop it.
    Drop,
}

/// Calls refused on their first fragment, whose later fragments must be dropped too.
#[derive(Debug, Default)]
pub(super) struct RefusedCalls(SmallMap<u32, ()>);

impl RefusedCalls {
    /// Judges a request fragment; `refuse` says whether the policy refuses the call (every
    /// fragment of a request repeats its context and opnum, so any fragment can answer it).
    pub(super) fn judge(
        &mut self,
        req: &Request<'_>,
        refuse: impl FnOnce() -> bool,
    ) -> anyhow::Result<CallVerdict> {
        let call_id = req.pdu().call_id();
        let in_progress = self.0.contains(&call_id);
        if !in_progress && !refuse() {
            return Ok(CallVerdict::Forward);
        }
        if req.pdu().ends_call(in_progress) {
            self.0.remove(&call_id);
        } else if self.0.len() < MAX_PENDING {
            self.0.insert(call_id, ());
        } else {
            bail!("more than {MAX_PENDING} refused calls in progress");
        }
        Ok(if in_progress {
            CallVerdict::Drop
        } else {
            CallVerdict::Refuse
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::bind::{encode_bind, ContextProposal};
    use crate::wire::{Endian, Uuid};

    fn iface(n: u8) -> SyntaxId {
        SyntaxId {
            uuid: Uuid::from_bytes([n; 16]),
            major: 1,
            minor: 0,
        }
    }

    fn bind(call_id: u32, contexts: &[(u16, SyntaxId)]) -> Vec<u8> {
        let proposals: Vec<ContextProposal> = contexts
            .iter()
            .map(|&(id, abstract_syntax)| ContextProposal {
                id,
                abstract_syntax,
                transfer_syntaxes: &[SyntaxId::NDR],
            })
            .collect();
        let mut out = Vec::new();
        encode_bind(&mut out, Endian::Little, call_id, 4280, &proposals).unwrap();
        out
    }

    fn ack(call_id: u32, accepted: &[bool]) -> Vec<u8> {
        let results: Vec<ResultEntry> = accepted
            .iter()
            .map(|&a| match a {
                true => ResultEntry {
                    result: ContextResult::Acceptance,
                    reason: 0,
                    transfer_syntax: SyntaxId::NDR,
                },
                false => ResultEntry::rejected(reason::ABSTRACT_SYNTAX_NOT_SUPPORTED),
            })
            .collect();
        let mut out = Vec::new();
        let fields = BindAckFields {
            ptype: PacketType::BindAck,
            endian: Endian::Little,
            call_id,
            max_xmit_frag: 4280,
            max_recv_frag: 4280,
            assoc_group_id: 1,
            secondary_addr: b"",
            results: &results,
        };
        encode_bind_ack(&mut out, &fields).unwrap();
        out
    }

    #[test]
    fn a_context_is_usable_once_the_backend_accepted_it_at_its_forwarded_place() {
        let mut gate = Gate::new(WhenNoneAllowed::RejectEach, "test");
        let allows = |s: &SyntaxId| s.uuid != iface(9).uuid;
        // Refused first, then two forwarded: the backend answers for those two only.
        let b = bind(1, &[(5, iface(9)), (0, iface(1)), (1, iface(2))]);
        let verdict = gate.judge(&BindRequest::parse(&b).unwrap(), allows);
        assert!(matches!(verdict, Ok(Verdict::Filtered(_))));
        assert_eq!(gate.usable(0), None, "not answered yet");
        let a = ack(1, &[true, false]);
        gate.splice(&BindAck::parse(&a).unwrap()).unwrap();
        assert_eq!(gate.usable(0), Some(iface(1)));
        assert_eq!(gate.usable(1), None, "rejected by the backend");
        assert_eq!(gate.usable(5), None, "refused by the gate");
        // Context 1 again, for another interface, and the same id twice in one PDU.
        for contexts in [&[(1, iface(3))][..], &[(2, iface(2)), (2, iface(3))][..]] {
            let b = bind(2, contexts);
            let verdict = gate.judge(&BindRequest::parse(&b).unwrap(), |_| true);
            assert!(!matches!(verdict, Ok(Verdict::Forward)), "{contexts:?}");
        }
    }
}
