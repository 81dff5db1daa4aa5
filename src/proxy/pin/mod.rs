//! A pin listener: lets through only the pin's interfaces (and, where configured, only some
//! of their operations), finds the backend's current port for the interface (`connect`),
//! and relays.

mod connect;

use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tracing::{debug, warn};

use super::facts::Facts;
use super::gate::{
    unknown_context_fault, CallVerdict, Gate, RefusedCalls, Verdict, WhenNoneAllowed,
};
use super::generation::{Generation, PinRuntime};
use super::handshake::{Client, Opened, Summary};
use super::order::CallOrder;
use super::relay::{Head, Outbox, Policy};
use crate::interfaces::alias_of;
use crate::metrics::metrics;
use crate::pdu_stream::PduReader;
use crate::wire::bind::{encode_bind_nak, nak_reason, BindAck, BindRequest};
use crate::wire::call::{encode_fault, status, Request};
use crate::wire::{PacketType, Pdu, SyntaxId};
use connect::{connect, forward_bind};

/// Why a call is refused on a pin.
const OPNUM_REFUSED: &str = "operation not in this pin's opnums list";

/// Takes the client's bind through the gate, connects to the backend and forwards the
/// bind; the relay that follows is [`PinPolicy`]'s.
pub(super) async fn open(
    client: Client,
    generation: &Generation,
    pin: Arc<PinRuntime>,
) -> anyhow::Result<Opened<PinPolicy>> {
    let limits = &generation.config.limits;
    let mut client = PduReader::with_buffered(client.stream, client.buffered, limits.max_fragment);
    let first = client
        .next_within(limits.handshake_timeout)
        .await
        .context("waiting for the client's bind")?;
    let from_client = first.frag_len() as u64;
    let (bind, interface, contexts, policy) = match first_bind(pin, &first)? {
        FirstBind::Refused(answer) => {
            let client = client.get_mut();
            client
                .write_all(&answer)
                .await
                .context("sending the refusal")?;
            let _ = client.shutdown().await;
            let to_client = answer.len() as u64;
            return Ok(Opened::Done(Summary::new(
                from_client,
                to_client,
                Ok("bind refused"),
            )));
        }
        FirstBind::Forward {
            bind,
            interface,
            contexts,
            policy,
        } => (bind, interface, contexts, policy),
    };
    let (backend, cached) = match connect(generation, &policy.pin, interface).await {
        Ok(b) => b,
        Err(e) => {
            let mut nak = Vec::with_capacity(24);
            encode_bind_nak(
                &mut nak,
                first.endian(),
                first.call_id(),
                nak_reason::TEMPORARY_CONGESTION,
            )?;
            let client = client.get_mut();
            let _ = client.write_all(&nak).await;
            let _ = client.shutdown().await;
            return Err(e);
        }
    };
    super::socket::tune(&backend, limits);
    debug!(
        event = "bind_accepted",
        interface = %interface.uuid,
        alias = alias_of(&interface.uuid).unwrap_or("-"),
        version = %format_args!("{}.{}", interface.major, interface.minor),
        contexts,
    );
    let resolver = generation.resolver_of(&policy.pin.config);
    let mut backend = forward_bind(generation, resolver, interface, backend, cached, &bind).await?;
    let mut policy = policy;
    policy.facts.backend_port = backend.get_mut().peer_addr().ok().map(|a| a.port());
    Ok(Opened::relay(client, backend, *policy, limits, from_client))
}

/// What a pin makes of a client's first PDU, before any backend is contacted.
pub(super) enum FirstBind {
    /// The bind is refused: send this answer and end the connection.
    Refused(BytesMut),
    /// Forward `bind` (the client's, or a copy without the refused contexts, `contexts` of
    /// them); `interface`, the first context forwarded, chooses the backend port; `policy`
    /// takes the relay on.
    Forward {
        bind: BytesMut,
        interface: SyntaxId,
        contexts: usize,
        policy: Box<PinPolicy>,
    },
}

/// Takes the client's first PDU, which must be a bind, through the pin's gate.
pub(super) fn first_bind(pin: Arc<PinRuntime>, first: &Pdu<BytesMut>) -> anyhow::Result<FirstBind> {
    let mut gate = Gate::new(
        WhenNoneAllowed::RejectEach,
        "interface not carried by this pin",
    );
    if first.ptype() != PacketType::Bind {
        bail!("the client's first PDU is not a bind");
    }
    let bind = BindRequest::from_pdu(first.view())?;
    let filtered = match gate.judge(&bind, |s| pin.config.allows(s))? {
        Verdict::Forward => None,
        Verdict::Filtered(copy) => Some(copy),
        Verdict::Answer(answer) => return Ok(FirstBind::Refused(answer)),
    };
    let mut forwarded = bind
        .contexts()
        .map(|c| c.abstract_syntax())
        .filter(|s| pin.config.allows(s));
    let Some(interface) = forwarded.next() else {
        bail!("the client's bind proposes no presentation context");
    };
    let contexts = 1 + forwarded.count();
    let mut order = CallOrder::default();
    order.forwarded(first)?;
    let bind = filtered.unwrap_or_else(|| BytesMut::from(first.as_bytes()));
    let policy = Box::new(PinPolicy {
        pin,
        gate,
        refused: RefusedCalls::default(),
        order,
        facts: Facts {
            interface: Some(interface),
            ..Facts::default()
        },
    });
    Ok(FirstBind::Forward {
        bind,
        interface,
        contexts,
        policy,
    })
}

/// A pin's policy on an established association: alter_context goes through the gate, a
/// call must be on a context the backend accepted and allowed by the pin's opnum list, a
/// second bind is a protocol violation; the backend's bind answers get the gate's refusals
/// spliced in and its secondary address (the backend's port as text, which discloses it)
/// replaced by the pin's public port.
pub(super) struct PinPolicy {
    pin: Arc<PinRuntime>,
    gate: Gate,
    refused: RefusedCalls,
    order: CallOrder,
    /// The interface chosen, and the backend port once connected.
    facts: Facts,
}

impl Policy for PinPolicy {
    fn request(&mut self, pdu: Pdu<BytesMut>, out: &mut Outbox) -> anyhow::Result<()> {
        match pdu.ptype() {
            PacketType::AlterContext => {
                let bind = BindRequest::from_pdu(pdu.view())?;
                let verdict = self.gate.judge(&bind, |s| self.pin.config.allows(s))?;
                if !matches!(verdict, Verdict::Answer(_)) {
                    self.order.forwarded(&pdu)?;
                }
                match verdict {
                    Verdict::Forward => out.forward(pdu.into_inner()),
                    Verdict::Filtered(copy) => out.forward(copy),
                    Verdict::Answer(answer) => self.order.reply(answer, out)?,
                }
            }
            PacketType::Bind => bail!("a second bind on an established association"),
            PacketType::Request => {
                let forward = self.call(&Request::from_pdu(pdu.view())?, out)?;
                if forward {
                    out.forward(pdu.into_inner());
                }
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

    /// A request is judged on its head (every fragment repeats the context and opnum), and
    /// forwarded or dropped as it arrives; binds and the rest are judged whole.
    fn request_head(&mut self, head: Pdu<&[u8]>, out: &mut Outbox) -> anyhow::Result<Head> {
        if head.ptype() != PacketType::Request {
            return Ok(Head::Whole);
        }
        match self.call(&Request::from_pdu(head)?, out)? {
            true => Ok(Head::Forward),
            false => Ok(Head::Drop),
        }
    }

    /// A response or a fault is passed on as it arrives, its header noted by the call
    /// order; bind answers are spliced and rewritten whole, and so is the answer that
    /// answers of rpcpin's wait behind (they go right after its last byte).
    fn answer_head(&mut self, head: Pdu<&[u8]>, _: &mut Outbox) -> anyhow::Result<Head> {
        let cut = matches!(head.ptype(), PacketType::Response | PacketType::Fault);
        if !cut || self.order.holds_answers() {
            return Ok(Head::Whole);
        }
        self.order.passing(&head);
        if head.ptype() == PacketType::Fault {
            self.gate.unanswered(head.call_id());
        }
        Ok(Head::Forward)
    }

    fn facts(&self) -> Facts {
        self.facts
    }
}

impl PinPolicy {
    /// Judges a call's fragment on its context and opnum: `true` when it is forwarded
    /// (noted by the call order), `false` when it is refused (answered with a fault, in
    /// call order) or dropped (a later fragment of a refused call).
    fn call(&mut self, req: &Request<'_>, out: &mut Outbox) -> anyhow::Result<bool> {
        let interface = self.gate.usable(req.context_id());
        let allowed = |i: &SyntaxId| self.pin.config.allows_opnum(i, req.opnum());
        match self
            .refused
            .judge(req, || interface.is_none_or(|i| !allowed(&i)))?
        {
            CallVerdict::Forward => {
                self.order.forwarded(req.pdu())?;
                Ok(true)
            }
            CallVerdict::Refuse => {
                let Some(i) = interface else {
                    self.order.reply(unknown_context_fault(req)?, out)?;
                    return Ok(false);
                };
                warn!(
                    event = "refused",
                    policy = "opnum",
                    interface = %i.uuid,
                    alias = alias_of(&i.uuid).unwrap_or("-"),
                    opnum = req.opnum(),
                    call_id = req.pdu().call_id(),
                    reason = OPNUM_REFUSED,
                );
                metrics().refused("opnum", OPNUM_REFUSED);
                let p = req.pdu();
                let mut fault = Vec::with_capacity(32);
                let denied = status::NCA_S_FAULT_ACCESS_DENIED;
                encode_fault(
                    &mut fault,
                    p.endian(),
                    p.call_id(),
                    req.context_id(),
                    denied,
                )?;
                self.order.reply(BytesMut::from(&fault[..]), out)?;
                Ok(false)
            }
            CallVerdict::Drop => Ok(false),
        }
    }

    /// Passes a backend PDU on to the client.
    fn pass(&mut self, pdu: Pdu<BytesMut>, out: &mut Outbox) -> anyhow::Result<()> {
        if !matches!(
            pdu.ptype(),
            PacketType::BindAck | PacketType::AlterContextResp
        ) {
            if matches!(pdu.ptype(), PacketType::Fault | PacketType::BindNak) {
                self.gate.unanswered(pdu.call_id());
            }
            out.forward(pdu.into_inner());
            return Ok(());
        }
        let ack = BindAck::from_pdu(pdu.view())?;
        let spliced = self.gate.splice(&ack)?;
        // A spliced answer is a new PDU, read once more to find its secondary address.
        let ack = match &spliced {
            Some(bytes) => BindAck::parse(bytes)?,
            None => ack,
        };
        match public_secondary_addr(ack.secondary_addr(), self.pin.public_port) {
            Some(addr) => {
                let mut rewritten = Vec::with_capacity(ack.pdu().frag_len() + 8);
                ack.encode_with_secondary_addr(&addr, &mut rewritten)?;
                out.forward(BytesMut::from(&rewritten[..]));
            }
            None => out.forward(spliced.unwrap_or_else(|| pdu.into_inner())),
        }
        Ok(())
    }
}

/// The secondary address to send instead of `backend`, when `backend` is a port number
/// (with or without its NUL, kept as it was) other than `public_port`.
fn public_secondary_addr(backend: &[u8], public_port: u16) -> Option<Vec<u8>> {
    let (digits, nul) = match backend.split_last() {
        Some((0, rest)) => (rest, true),
        _ => (backend, false),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut public = public_port.to_string().into_bytes();
    if nul {
        public.push(0);
    }
    (public != backend).then_some(public)
}

#[cfg(test)]
mod tests {
    use super::public_secondary_addr;

    #[test]
    fn secondary_address_keeps_its_nul_convention() {
        assert_eq!(
            public_secondary_addr(b"49154\0", 6004),
            Some(b"6004\0".to_vec())
        );
        assert_eq!(
            public_secondary_addr(b"49154", 6004),
            Some(b"6004".to_vec())
        );
        assert_eq!(public_secondary_addr(b"6004\0", 6004), None);
        assert_eq!(public_secondary_addr(b"", 6004), None);
        assert_eq!(public_secondary_addr(b"\\PIPE\\lsass\0", 6004), None);
        assert_eq!(public_secondary_addr(b"\0", 6004), None);
    }
}
