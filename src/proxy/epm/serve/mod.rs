//! Answer mode (`epm.mode = "answer"`): rpcpin is the endpoint mapper. It answers the bind
//! for endpoint-mapper contexts as a Windows endpoint mapper does, and ept_map, ept_map_auth,
//! ept_lookup and ept_lookup_handle_free from what the servers told it (`lookups`); the
//! servers' endpoint mappers never see a client. The gate, the context rules and the
//! refusals are the relay's (`super::gate`).

mod lookups;

use std::net::Ipv4Addr;
use std::sync::Arc;

use anyhow::{anyhow, bail};
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::debug;

use super::opnum_refusal;
use crate::metrics::metrics;
use crate::pdu_stream::{PduReader, ReadError};
use crate::proxy::gate::{
    unknown_context_fault, CallVerdict, Gate, RefusedCalls, Verdict, WhenNoneAllowed,
};
use crate::proxy::generation::Generation;
use crate::proxy::handshake::Summary;
use crate::proxy::small_map::SmallMap;
use crate::wire::bind::{
    encode_bind_ack, reason, BindAck, BindAckFields, BindRequest, ContextResult, ResultEntry,
};
use crate::wire::call::{
    encode_fault, encode_response, encode_response_fragments, Request, Response,
};
use crate::wire::epm::opnum;
use crate::wire::ndr::Syntax;
use crate::wire::pdu::flags;
use crate::wire::{PacketType, Pdu, SyntaxId};
use lookups::Cursors;

/// The largest fragment rpcpin sends or takes on its own associations, as Windows.
const MAX_FRAG: u16 = 5840;
/// Bind-time feature negotiation: keep the connection when a call is orphaned, which
/// rpcpin does (it keeps no state per call).
const KEEP_CONNECTION_ON_ORPHAN: u8 = 0x02;

/// An endpoint-mapper association rpcpin answers itself.
pub(super) struct Association {
    generation: Arc<Generation>,
    /// The address written into towers.
    advertise: Ipv4Addr,
    /// The port the client reached, as the bind_ack's secondary address names it.
    local_port: u16,
    gate: Gate,
    refused: RefusedCalls,
    /// The client's bind came.
    bound: bool,
    /// Each accepted context's transfer syntax.
    syntaxes: SmallMap<u16, Syntax>,
    /// The most a fragment rpcpin sends may hold: the client's max_recv_frag, at most 5840.
    max_xmit: u16,
    assoc_group_id: u32,
    /// The request being gathered: its call id, context, opnum and stub so far.
    gathering: Option<(u32, u16, u16, Vec<u8>)>,
    cursors: Cursors,
    /// Answers given from the cache and from a server lookup, for the closing summary.
    pub(super) from_cache: u32,
    pub(super) from_server: u32,
}

impl Association {
    /// A new association for a client that reached port `local_port`.
    pub(super) fn new(
        generation: Arc<Generation>,
        advertise: Ipv4Addr,
        local_port: u16,
    ) -> Association {
        Association {
            generation,
            advertise,
            local_port,
            gate: Gate::new(
                WhenNoneAllowed::Nak,
                "port 135 serves the endpoint mapper only",
            ),
            refused: RefusedCalls::default(),
            bound: false,
            syntaxes: SmallMap::default(),
            max_xmit: MAX_FRAG,
            assoc_group_id: next_assoc_group(),
            gathering: None,
            cursors: Cursors::default(),
            from_cache: 0,
            from_server: 0,
        }
    }

    /// Serves the association from its first PDU until the client closes it, goes silent
    /// for `limits.idle_timeout`, or breaks the protocol.
    pub(super) async fn serve(
        mut self,
        mut client: PduReader<TcpStream>,
        first: Pdu<BytesMut>,
    ) -> Summary {
        let idle = self.generation.config.limits.idle_timeout;
        let (mut from_client, mut to_client) = (0, 0);
        let mut next = Some(first);
        let ended = loop {
            let pdu = match next.take() {
                Some(pdu) => pdu,
                None => match client.next_within(idle).await {
                    Ok(pdu) => pdu,
                    Err(ReadError::Closed) => break Ok("client closed"),
                    Err(e) => break Err(anyhow!(e)),
                },
            };
            from_client += pdu.frag_len() as u64;
            let mut answers = Vec::new();
            if let Err(e) = self.judge(pdu, &mut answers).await {
                break Err(e);
            }
            let mut refused_bind = false;
            for answer in &answers {
                refused_bind |= answer[2] == u8::from(PacketType::BindNak);
                let written = tokio::time::timeout(idle, client.get_mut().write_all(answer)).await;
                match written {
                    Ok(Ok(())) => to_client += answer.len() as u64,
                    Ok(Err(e)) => return self.summary(from_client, to_client, Err(anyhow!(e))),
                    Err(_) => {
                        let e = anyhow!("the client did not read for {idle:?}");
                        return self.summary(from_client, to_client, Err(e));
                    }
                }
            }
            if refused_bind {
                break Ok("refused");
            }
        };
        let _ = client.get_mut().shutdown().await;
        self.summary(from_client, to_client, ended)
    }

    /// The association's closing summary, with where its answers came from (also logged
    /// at `debug` as `epm_answered`).
    fn summary(
        &self,
        from_client: u64,
        to_client: u64,
        ended: anyhow::Result<&'static str>,
    ) -> Summary {
        debug!(
            event = "epm_answered",
            from_cache = self.from_cache,
            from_server = self.from_server,
        );
        let mut s = Summary::new(from_client, to_client, ended);
        s.facts.answered = Some((self.from_cache, self.from_server));
        s
    }

    /// The answers to one PDU from the client.
    async fn judge(
        &mut self,
        pdu: Pdu<BytesMut>,
        answers: &mut Vec<BytesMut>,
    ) -> anyhow::Result<()> {
        match pdu.ptype() {
            PacketType::Bind | PacketType::AlterContext => {
                let bind = BindRequest::from_pdu(pdu.view())?;
                if pdu.ptype() == PacketType::Bind && self.bound {
                    bail!("a second bind on an established association");
                }
                self.bound = true;
                answers.push(self.bind(&bind)?);
            }
            PacketType::Request => {
                let req = Request::from_pdu(pdu.view())?;
                if let Some(answer) = self.request(&req).await? {
                    answers.extend(answer);
                }
            }
            // Nothing to answer: an authentication leg rpcpin does not take part in, a
            // cancel or an orphaned call (rpcpin answers each call at once).
            PacketType::Auth3 | PacketType::CoCancel | PacketType::Orphaned => {}
            other => bail!("a {other} from the client"),
        }
        Ok(())
    }

    /// rpcpin's bind_ack or alter_context_resp: the gate refuses what is not the endpoint
    /// mapper, and each endpoint-mapper context is answered as Windows answers it.
    fn bind(&mut self, bind: &BindRequest<'_>) -> anyhow::Result<BytesMut> {
        let forwarded = match self.gate.judge(bind, super::is_epm)? {
            Verdict::Answer(refusal) => return Ok(refusal),
            Verdict::Forward => None,
            Verdict::Filtered(copy) => Some(copy),
        };
        let kept = match &forwarded {
            Some(copy) => BindRequest::parse(copy)?,
            None => *bind,
        };
        if bind.pdu().ptype() == PacketType::Bind {
            self.max_xmit = bind.max_recv_frag().clamp(1024, MAX_FRAG);
        }
        let results = results(&kept);
        for (ctx, (_, syntax)) in kept.contexts().zip(&results) {
            if let Some(s) = syntax {
                self.syntaxes.insert(ctx.id(), *s);
            }
        }
        let p = kept.pdu();
        let results: Vec<ResultEntry> = results.into_iter().map(|(r, _)| r).collect();
        let secondary = format!("{}\0", self.local_port);
        let mut out = Vec::with_capacity(64 + 24 * results.len());
        encode_bind_ack(
            &mut out,
            &BindAckFields {
                ptype: match p.ptype() {
                    PacketType::AlterContext => PacketType::AlterContextResp,
                    _ => PacketType::BindAck,
                },
                endian: p.endian(),
                call_id: p.call_id(),
                max_xmit_frag: self.max_xmit,
                max_recv_frag: MAX_FRAG,
                assoc_group_id: self.assoc_group_id,
                // An alter_context_resp names no port (MS-RPCE 2.2.2.4), as Windows sends it.
                secondary_addr: match p.ptype() {
                    PacketType::AlterContext => b"",
                    _ => secondary.as_bytes(),
                },
                results: &results,
            },
        )?;
        // The gate learns the acceptances and puts its refusals back in their places.
        let ack = BindAck::parse(&out)?;
        Ok(self
            .gate
            .splice(&ack)?
            .unwrap_or_else(|| BytesMut::from(&out[..])))
    }

    /// rpcpin's answer to a request fragment: none until its last fragment, then the
    /// response (in fragments the client takes) or a fault.
    async fn request(&mut self, req: &Request<'_>) -> anyhow::Result<Option<Vec<BytesMut>>> {
        let p = *req.pdu();
        let (call_id, ctx, op) = (p.call_id(), req.context_id(), req.opnum());
        let usable = self.gate.usable(ctx).is_some();
        match self
            .refused
            .judge(req, || !usable || opnum_refusal(op).is_some())?
        {
            CallVerdict::Forward => {}
            CallVerdict::Refuse if !usable => return Ok(Some(vec![unknown_context_fault(req)?])),
            CallVerdict::Refuse => return Ok(Some(vec![super::refusal_fault(req)?])),
            CallVerdict::Drop => return Ok(None),
        }
        let in_progress = self.gathering.as_ref().is_some_and(|g| g.0 == call_id);
        let fragment = p.flags() & (flags::FIRST_FRAG | flags::LAST_FRAG);
        if !in_progress && fragment == flags::LAST_FRAG {
            bail!("the last fragment of call {call_id}, whose first fragment never came");
        }
        let max = self.generation.config.limits.max_reassembly;
        let gathering = match self.gathering.take() {
            Some(g) if g.0 == call_id => g,
            _ => (call_id, ctx, op, Vec::new()),
        };
        let (_, ctx, op, mut stub) = gathering;
        stub.extend_from_slice(&p.as_bytes()[req.stub_range()]);
        if stub.len() > max {
            bail!("a request larger than limits.max_reassembly ({max} bytes)");
        }
        if !p.ends_call(in_progress) {
            self.gathering = Some((call_id, ctx, op, stub));
            return Ok(None);
        }
        let syntax = self.syntaxes.get(&ctx).copied().unwrap_or(Syntax::Ndr);
        let endian = p.endian();
        let answer = match op {
            opnum::MAP | opnum::MAP_AUTH => self.map(&stub, endian, syntax, op).await,
            opnum::LOOKUP => self.lookup(&stub, endian, syntax).await,
            _ => self.handle_free(&stub, endian, syntax),
        };
        let answer = match answer {
            Ok(stub) => stub,
            Err(fault) => {
                let mut pdu = Vec::with_capacity(32);
                encode_fault(&mut pdu, endian, call_id, ctx, fault)?;
                return Ok(Some(vec![BytesMut::from(&pdu[..])]));
            }
        };
        // The response's header, written once and repeated in each fragment; the stub's
        // chunks keep 8-byte alignment.
        let mut template = Vec::with_capacity(24);
        encode_response(&mut template, endian, call_id, ctx, &[])?;
        let per_fragment = (usize::from(self.max_xmit) - 24) & !7;
        let pdus = encode_response_fragments(&Response::parse(&template)?, &answer, per_fragment);
        Ok(Some(vec![BytesMut::from(&pdus[..])]))
    }
}

/// Each context's result as a Windows endpoint mapper gives it, with the transfer syntax
/// an accepted one uses: NDR64 when any context offers it (a context offering only NDR is
/// then rejected, proposed_transfer_syntaxes_not_supported), else NDR; a feature
/// negotiation context gets negotiate_ack with the features rpcpin supports among those
/// offered.
fn results(bind: &BindRequest<'_>) -> Vec<(ResultEntry, Option<Syntax>)> {
    let offers = |ts: &SyntaxId| {
        bind.contexts()
            .any(|c| c.transfer_syntaxes().any(|t| t == *ts))
    };
    let wanted = if offers(&SyntaxId::NDR64) {
        (SyntaxId::NDR64, Syntax::Ndr64)
    } else {
        (SyntaxId::NDR, Syntax::Ndr)
    };
    bind.contexts()
        .map(|c| {
            if let Some(f) = c.transfer_syntaxes().find(|t| t.is_feature_negotiation()) {
                let offered = f.uuid.as_bytes()[8];
                let entry = ResultEntry {
                    result: ContextResult::NegotiateAck,
                    reason: u16::from(offered & KEEP_CONNECTION_ON_ORPHAN),
                    transfer_syntax: ResultEntry::rejected(0).transfer_syntax,
                };
                return (entry, None);
            }
            if c.transfer_syntaxes().any(|t| t == wanted.0) {
                let entry = ResultEntry {
                    result: ContextResult::Acceptance,
                    reason: 0,
                    transfer_syntax: wanted.0,
                };
                return (entry, Some(wanted.1));
            }
            let rejected = ResultEntry::rejected(reason::PROPOSED_TRANSFER_SYNTAXES_NOT_SUPPORTED);
            (rejected, None)
        })
        .collect()
}

/// An association group id of rpcpin's own, different for each association.
fn next_assoc_group() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0x1_0000);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Counts an answer by where it came from.
fn count(source: crate::epm_cache::Source) {
    let source = match source {
        crate::epm_cache::Source::Cache => "cache",
        crate::epm_cache::Source::Server => "server",
    };
    metrics()
        .epm_answers
        .get_or_create(&crate::metrics::SourceLabels { source })
        .inc();
}
