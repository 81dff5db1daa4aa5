//! The endpoint-mapper listener: relays a client's EPM association to the backend's,
//! lets through only the endpoint mapper and its lookup operations, and rewrites (or hides)
//! the towers in its ept_map and ept_lookup answers (`answer`: rewriting a gathered answer,
//! and what it logs).

mod answer;
mod serve;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tracing::warn;

use super::facts::Facts;
use super::gate::{
    unknown_context_fault, CallVerdict, Gate, RefusedCalls, Verdict, WhenNoneAllowed,
};
use super::generation::Generation;
use super::handshake::{Client, Opened, Summary};
use super::order::CallOrder;
use super::relay::{Outbox, Policy};
use super::small_map::SmallMap;
use crate::config::EpmMode;
use crate::epm_rewrite::carries_towers;
use crate::metrics::metrics;
use crate::pdu_stream::PduReader;
use crate::wire::bind::{BindAck, BindRequest, ContextResult};
use crate::wire::call::{encode_fault, status, Request, Response};
use crate::wire::epm::{opnum, EPM};
use crate::wire::ndr::Syntax;
use crate::wire::{PacketType, Pdu, SyntaxId};

/// More outstanding calls than this on one EPM association is not a real client.
const MAX_OUTSTANDING: usize = 64;

/// The endpoint-mapper operations a client may call through rpcpin, and the fault status
/// for those it may not. Lookups pass (ept_map_auth answers like ept_map and is rewritten
/// the same way); registration and management never reach the backend; ept_inq_object is
/// refused too: no RPC runtime needs it to find an endpoint, and it discloses the server's
/// endpoint-mapper object.
fn opnum_refusal(op: u16) -> Option<(u32, &'static str)> {
    match op {
        opnum::LOOKUP | opnum::MAP | opnum::LOOKUP_HANDLE_FREE | opnum::MAP_AUTH => None,
        opnum::INSERT | opnum::DELETE | opnum::MGMT_DELETE => Some((
            status::NCA_S_FAULT_ACCESS_DENIED,
            "endpoint-mapper management",
        )),
        opnum::INQ_OBJECT => Some((
            status::NCA_S_FAULT_ACCESS_DENIED,
            "ept_inq_object is not served",
        )),
        _ => Some((
            status::NCA_S_OP_RNG_ERROR,
            "unknown endpoint-mapper operation",
        )),
    }
}

/// What the client side has announced that the backend's answers refer to.
#[derive(Debug, Default)]
struct Association {
    /// Contexts forwarded in a bind or alter_context, by its call id.
    proposed: SmallMap<u32, Vec<u16>>,
    /// Accepted contexts and their transfer syntax (`None`: one rpcpin cannot walk).
    contexts: SmallMap<u16, Option<Syntax>>,
    /// Outstanding calls, by call id.
    calls: SmallMap<u32, Call>,
}

/// A call the client made whose answer has not ended yet.
#[derive(Debug, Clone, Copy)]
struct Call {
    context: u16,
    opnum: u16,
    /// Whether a fragment of the answer has been seen (so a PDU with neither fragment flag
    /// is a middle fragment, not a legacy whole call).
    answering: bool,
}

/// Reads the client's first PDU and, unless it is refused, connects to the backend's
/// endpoint mapper and forwards it; the relay that follows is [`EpmPolicy`]'s.
pub(super) async fn open(
    client: Client,
    generation: Arc<Generation>,
) -> anyhow::Result<Opened<EpmPolicy>> {
    let limits = &generation.config.limits;
    let advertise = advertise_for(&client, generation.config.epm.advertise);
    let local_port = client.local.port();
    let mut client = PduReader::with_buffered(client.stream, client.buffered, limits.max_fragment);
    // A client that says nothing never costs a backend connection.
    let first = client
        .next_within(limits.handshake_timeout)
        .await
        .context("waiting for the client's first PDU")?;
    let mut relayed = None;
    if generation.config.epm.mode == EpmMode::Answer {
        // rpcpin cannot answer an authenticated bind (it holds no credentials): that
        // association alone is relayed.
        if first.ptype() == PacketType::Bind && first.auth_len() > 0 {
            tracing::debug!(event = "epm_relayed", reason = "authenticated bind");
            relayed = Some("authenticated bind");
        } else {
            let association = serve::Association::new(generation.clone(), advertise, local_port);
            return Ok(Opened::Done(association.serve(client, first).await));
        }
    }
    let mut policy = EpmPolicy::new(generation.clone(), advertise);
    policy.facts.relayed = relayed;
    let from_client = first.frag_len() as u64;
    let mut out = Outbox::default();
    policy.request(first, &mut out)?;
    if out.forwarded().is_empty() {
        // Refused before anything reached the backend, which is never contacted.
        let client = client.get_mut();
        let mut to_client = 0;
        for answer in &out.reply {
            client
                .write_all(answer)
                .await
                .context("sending the refusal")?;
            to_client += answer.len() as u64;
        }
        let _ = client.shutdown().await;
        return Ok(Opened::Done(Summary::new(
            from_client,
            to_client,
            Ok("refused"),
        )));
    }

    // The relay's server is always `[backend]` (relay mode allows no other).
    let server = generation.resolver();
    let backend = server
        .connect(server.backend().epm_port, limits.connect_timeout)
        .await?;
    super::socket::tune(&backend, limits);
    policy.facts.backend_port = Some(server.backend().epm_port);
    let mut backend = PduReader::new(backend, limits.max_fragment);
    backend
        .get_mut()
        .write_all(out.forwarded())
        .await
        .context("writing to the backend")?;
    Ok(Opened::relay(client, backend, policy, limits, from_client))
}

/// Whether a context names the endpoint mapper.
fn is_epm(s: &SyntaxId) -> bool {
    s.uuid == EPM.uuid && s.major == EPM.major
}

/// The address to write into towers: configured, or the one the client reached us on.
fn advertise_for(client: &Client, configured: Option<Ipv4Addr>) -> Ipv4Addr {
    if let Some(a) = configured {
        return a;
    }
    match client.local.ip().to_canonical() {
        IpAddr::V4(v4) => v4,
        // An IPv6 client needs `[epm] advertise`; never leak the backend's address.
        IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    }
}

/// The endpoint mapper's policy on an association. Client to backend: the gate for binds,
/// calls only on contexts the backend accepted, the opnum policy for calls, and a record of
/// what later answers refer to. Backend to client: learns the accepted contexts, splices the
/// gate's refusals into bind answers, and rewrites (or hides) towers.
pub(super) struct EpmPolicy {
    generation: Arc<Generation>,
    /// The address written into towers.
    advertise: Ipv4Addr,
    gate: Gate,
    assoc: Association,
    refused: RefusedCalls,
    order: CallOrder,
    /// Fragments of tower-carrying answers, by call id, held until their last fragment.
    pending: SmallMap<u32, Vec<Pdu<BytesMut>>>,
    /// Their total size, bounded by `limits.max_reassembly`.
    pending_len: usize,
    /// The backend port and the towers rewritten, for the closing summary.
    facts: Facts,
}

impl Policy for EpmPolicy {
    fn request(&mut self, pdu: Pdu<BytesMut>, out: &mut Outbox) -> anyhow::Result<()> {
        let call_id = pdu.call_id();
        match pdu.ptype() {
            PacketType::Bind | PacketType::AlterContext => {
                let bind = BindRequest::from_pdu(pdu.view())?;
                let verdict = self.gate.judge(&bind, is_epm)?;
                if let Verdict::Answer(answer) = verdict {
                    return self.order.reply(answer, out);
                }
                // The contexts forwarded: those the gate let through.
                let ids = bind
                    .contexts()
                    .filter(|c| is_epm(&c.abstract_syntax()))
                    .map(|c| c.id())
                    .collect();
                let a = &mut self.assoc;
                if a.proposed.len() >= MAX_OUTSTANDING {
                    bail!("more than {MAX_OUTSTANDING} unanswered binds");
                }
                a.proposed.insert(call_id, ids);
                self.order.forwarded(&pdu)?;
                match verdict {
                    Verdict::Filtered(copy) => out.forward(copy),
                    _ => out.forward(pdu.into_inner()),
                }
            }
            PacketType::Request => {
                let req = Request::from_pdu(pdu.view())?;
                let usable = self.gate.usable(req.context_id()).is_some();
                match self
                    .refused
                    .judge(&req, || !usable || opnum_refusal(req.opnum()).is_some())?
                {
                    CallVerdict::Forward => {}
                    CallVerdict::Refuse if !usable => {
                        return self.order.reply(unknown_context_fault(&req)?, out);
                    }
                    CallVerdict::Refuse => return self.refuse(&req, out),
                    CallVerdict::Drop => return Ok(()),
                }
                let a = &mut self.assoc;
                if a.calls.len() >= MAX_OUTSTANDING {
                    bail!("more than {MAX_OUTSTANDING} outstanding calls");
                }
                // Later fragments of a request repeat its context and opnum.
                a.calls.get_or_insert_with(call_id, || Call {
                    context: req.context_id(),
                    opnum: req.opnum(),
                    answering: false,
                });
                self.order.forwarded(&pdu)?;
                out.forward(pdu.into_inner());
            }
            _ => {
                self.order.forwarded(&pdu)?;
                out.forward(pdu.into_inner());
            }
        }
        Ok(())
    }

    fn answer(&mut self, pdu: Pdu<BytesMut>, out: &mut Outbox) -> anyhow::Result<()> {
        self.order.passing(&pdu);
        self.pass(pdu, out)?;
        self.order.release(out);
        Ok(())
    }

    fn facts(&self) -> Facts {
        self.facts
    }
}

impl EpmPolicy {
    /// The policy of a new association, writing `advertise` into towers.
    pub(super) fn new(generation: Arc<Generation>, advertise: Ipv4Addr) -> EpmPolicy {
        EpmPolicy {
            generation,
            advertise,
            gate: Gate::new(
                WhenNoneAllowed::Nak,
                "port 135 serves the endpoint mapper only",
            ),
            assoc: Association::default(),
            refused: RefusedCalls::default(),
            order: CallOrder::default(),
            pending: SmallMap::default(),
            pending_len: 0,
            facts: Facts::default(),
        }
    }

    /// Passes a backend PDU on to the client: rewritten, once whole, when it answers a
    /// lookup.
    fn pass(&mut self, pdu: Pdu<BytesMut>, out: &mut Outbox) -> anyhow::Result<()> {
        let (ptype, call_id) = (pdu.ptype(), pdu.call_id());
        let a = &mut self.assoc;
        match ptype {
            PacketType::BindAck | PacketType::AlterContextResp => {
                let ack = BindAck::from_pdu(pdu.view())?;
                if let Some(proposed) = a.proposed.remove(&call_id) {
                    for (id, result) in proposed.iter().zip(ack.results()) {
                        if result.result == ContextResult::Acceptance {
                            let syntax = Syntax::from_transfer_syntax(&result.transfer_syntax);
                            a.contexts.insert(*id, syntax);
                        }
                    }
                }
                let spliced = self.gate.splice(&ack)?;
                out.forward(spliced.unwrap_or_else(|| pdu.into_inner()));
                return Ok(());
            }
            PacketType::Response => {
                let Some(call) = a.calls.get_mut(&call_id) else {
                    bail!("a response to call {call_id}, which the client never made");
                };
                let (ctx, op) = (call.context, call.opnum);
                let last = pdu.ends_call(call.answering);
                call.answering = true;
                if last {
                    a.calls.remove(&call_id);
                }
                if carries_towers(op) {
                    let syntax = a.contexts.get(&ctx).copied().flatten();
                    Response::from_pdu(pdu.view())?;
                    let max = self.generation.config.limits.max_reassembly;
                    self.pending_len += pdu.frag_len();
                    if self.pending_len > max {
                        bail!("endpoint-mapper answer larger than limits.max_reassembly ({max} bytes)");
                    }
                    self.pending.get_or_insert_with(call_id, Vec::new).push(pdu);
                    if last {
                        self.finish_call(call_id, ctx, op, syntax, out)?;
                    }
                    return Ok(());
                }
            }
            PacketType::Fault => {
                a.calls.remove(&call_id);
                a.proposed.remove(&call_id);
                self.gate.unanswered(call_id);
            }
            PacketType::BindNak => {
                a.proposed.remove(&call_id);
                self.gate.unanswered(call_id);
            }
            _ => {}
        }
        out.forward(pdu.into_inner());
        Ok(())
    }

    fn refuse(&mut self, req: &Request<'_>, out: &mut Outbox) -> anyhow::Result<()> {
        self.order.reply(refusal_fault(req)?, out)
    }
}

/// The fault answering a call to an endpoint-mapper operation that `opnum_refusal` refuses,
/// logged and counted as an `opnum` refusal.
fn refusal_fault(req: &Request<'_>) -> anyhow::Result<BytesMut> {
    let (fault, reason) = opnum_refusal(req.opnum()).unwrap_or((
        status::NCA_S_OP_RNG_ERROR,
        "unknown endpoint-mapper operation",
    ));
    warn!(
        event = "refused",
        policy = "opnum",
        interface = %EPM.uuid,
        alias = "epm",
        opnum = req.opnum(),
        call_id = req.pdu().call_id(),
        reason,
    );
    metrics().refused("opnum", reason);
    let p = req.pdu();
    let mut answer = Vec::with_capacity(32);
    encode_fault(
        &mut answer,
        p.endian(),
        p.call_id(),
        req.context_id(),
        fault,
    )?;
    Ok(BytesMut::from(&answer[..]))
}
