//! The interface gate: which presentation contexts of a client's bind or alter_context may
//! reach the backend, and rpcpin's own answer for those that may not.
//!
//! A bind that mixes allowed and refused contexts is forwarded with the refused ones removed,
//! and the backend's bind_ack gets a provider rejection spliced back in at each removed
//! context's place, so the client sees one result per context it proposed and the backend
//! never sees a refused interface.

use anyhow::bail;
use bytes::BytesMut;
use tracing::warn;

use super::small_map::SmallMap;
use crate::interfaces::alias_of;
use crate::metrics::{metrics, BindLabels};
use crate::wire::bind::{
    encode_bind_ack, encode_bind_nak, nak_reason, reason, BindAck, BindAckFields, BindRequest,
    ResultEntry,
};
use crate::wire::call::Request;
use crate::wire::{PacketType, SyntaxId};

/// More binds awaiting their answer than this on one connection is not a real client.
const MAX_PENDING: usize = 16;
/// More presentation contexts than this on one connection is not a real client.
const MAX_CONTEXTS: usize = 256;

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
    /// The interface each forwarded context id was proposed for.
    contexts: SmallMap<u16, SyntaxId>,
}

impl Gate {
    /// A gate that answers `when_none` when no context is allowed, logging `why`.
    pub(super) fn new(when_none: WhenNoneAllowed, why: &'static str) -> Gate {
        Gate {
            when_none,
            why,
            filtered: SmallMap::default(),
            contexts: SmallMap::default(),
        }
    }

    /// Judges a client's bind or alter_context, letting through the contexts for which
    /// `allows` is true and logging every refused one.
    pub(super) fn judge(
        &mut self,
        bind: &BindRequest<'_>,
        allows: impl Fn(&SyntaxId) -> bool,
    ) -> anyhow::Result<Verdict> {
        let keep: Vec<bool> = bind
            .contexts()
            .map(|c| {
                let s = c.abstract_syntax();
                let ok = allows(&s);
                let alias = alias_of(&s.uuid).unwrap_or("-");
                let result = if ok { "accepted" } else { "refused" };
                metrics()
                    .binds
                    .get_or_create(&BindLabels { alias, result })
                    .inc();
                if !ok {
                    metrics().refused("interface", self.why);
                    warn!(
                        event = "refused",
                        policy = "interface",
                        interface = %s.uuid,
                        alias,
                        version = %format_args!("{}.{}", s.major, s.minor),
                        context_id = c.id(),
                        kind = %bind.pdu().ptype(),
                        reason = self.why,
                    );
                }
                ok
            })
            .collect();
        if keep.is_empty() {
            bail!("a {} without presentation contexts", bind.pdu().ptype());
        }
        if !keep.contains(&true) {
            return Ok(Verdict::Answer(self.refusal(bind)?));
        }
        for (c, _) in bind.contexts().zip(&keep).filter(|(_, &k)| k) {
            self.contexts.insert(c.id(), c.abstract_syntax());
        }
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

    /// The backend's answer to a bind or alter_context with a rejection spliced back in for
    /// each context the gate removed from it; `None` when it removed none.
    pub(super) fn splice(&mut self, ack: &BindAck<'_>) -> anyhow::Result<Option<BytesMut>> {
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

    /// The interface a forwarded context id was proposed for.
    pub(super) fn interface_of(&self, context_id: u16) -> Option<SyntaxId> {
        self.contexts.get(&context_id).copied()
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
