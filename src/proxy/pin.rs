//! A pin listener: lets through only the pin's interfaces (and, where configured, only some
//! of their operations), finds the backend's current port for the interface, and relays.

use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{info, warn};

use super::gate::{
    unknown_context_fault, CallVerdict, Gate, RefusedCalls, Verdict, WhenNoneAllowed,
};
use super::generation::{Generation, PinRuntime};
use super::handshake::{Client, Opened, Summary};
use super::relay::{Outbox, Policy};
use crate::backend::Resolver;
use crate::interfaces::alias_of;
use crate::metrics::{metrics, ResolutionLabels};
use crate::pdu_stream::PduReader;
use crate::wire::bind::{encode_bind_nak, nak_reason, reason, BindAck, BindRequest, ContextResult};
use crate::wire::call::{encode_fault, status, Request};
use crate::wire::{PacketType, Pdu, SyntaxId};

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
    let mut gate = Gate::new(
        WhenNoneAllowed::RejectEach,
        "interface not carried by this pin",
    );
    let mut client = PduReader::with_buffered(client.stream, client.buffered, limits.max_fragment);
    let first = client
        .next_within(limits.handshake_timeout)
        .await
        .context("waiting for the client's bind")?;
    let from_client = first.frag_len() as u64;
    if first.ptype() != PacketType::Bind {
        bail!("the client's first PDU is not a bind");
    }
    let bind = BindRequest::from_pdu(first.view())?;
    let filtered = match gate.judge(&bind, |s| pin.config.allows(s))? {
        Verdict::Forward => None,
        Verdict::Filtered(copy) => Some(copy),
        Verdict::Answer(answer) => {
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
    };
    // The contexts forwarded name interfaces of this pin; the first chooses the backend port.
    let mut forwarded = bind
        .contexts()
        .map(|c| c.abstract_syntax())
        .filter(|s| pin.config.allows(s));
    let Some(interface) = forwarded.next() else {
        bail!("the client's bind proposes no presentation context");
    };
    let contexts = 1 + forwarded.count();
    let (backend, cached) = match connect(generation, &pin, interface).await {
        Ok(b) => b,
        Err(e) => {
            let mut nak = Vec::with_capacity(24);
            let p = bind.pdu();
            encode_bind_nak(
                &mut nak,
                p.endian(),
                p.call_id(),
                nak_reason::TEMPORARY_CONGESTION,
            )?;
            let client = client.get_mut();
            let _ = client.write_all(&nak).await;
            let _ = client.shutdown().await;
            return Err(e);
        }
    };
    super::socket::tune(&backend, limits);
    info!(
        event = "bind_accepted",
        interface = %interface.uuid,
        alias = alias_of(&interface.uuid).unwrap_or("-"),
        version = %format_args!("{}.{}", interface.major, interface.minor),
        contexts,
    );

    let forwarded = filtered.as_deref().unwrap_or(first.as_bytes());
    let backend = forward_bind(generation, interface, backend, cached, forwarded).await?;
    let policy = PinPolicy {
        pin,
        gate,
        refused: RefusedCalls::default(),
    };
    Ok(Opened::relay(client, backend, policy, limits, from_client))
}

/// Connects to the backend port of `interface`: the pin's fixed port, or the one the
/// backend's endpoint mapper gives, resolved again once if the cached one fails. Returns the
/// port too when it came from the cache.
async fn connect(
    generation: &Generation,
    pin: &PinRuntime,
    interface: SyntaxId,
) -> anyhow::Result<(TcpStream, Option<u16>)> {
    let timeout = generation.config.limits.connect_timeout;
    let resolver = &generation.resolver;
    if let Some(port) = pin.config.backend_port {
        return Ok((resolver.connect(port, timeout).await?, None));
    }
    for attempt in 0..2 {
        let (port, cached) = resolve(resolver, interface).await?;
        match resolver.connect(port, timeout).await {
            Ok(s) => return Ok((s, cached.then_some(port))),
            Err(e) if attempt == 0 => {
                warn!(event = "backend_connect_failed", backend_port = port, error = %format!("{e:#}"), retry = true);
                resolver.forget(&interface);
            }
            Err(e) => return Err(e),
        }
    }
    Err(anyhow!("unreachable: the loop returns"))
}

/// The backend port of `interface` (and whether it came from the cache), counted and logged.
async fn resolve(resolver: &Resolver, interface: SyntaxId) -> anyhow::Result<(u16, bool)> {
    let started = std::time::Instant::now();
    let resolved = resolver.port(interface).await;
    let (result, cached) = match &resolved {
        Ok((_, true)) => ("ok", "true"),
        Ok((_, false)) => ("ok", "false"),
        Err(_) => ("error", "false"),
    };
    metrics()
        .backend_resolutions
        .get_or_create(&ResolutionLabels { result, cached })
        .inc();
    let (port, cached) =
        resolved.with_context(|| format!("resolving {interface} at the backend"))?;
    info!(
        event = "backend_resolved",
        interface = %interface.uuid,
        alias = alias_of(&interface.uuid).unwrap_or("-"),
        backend_port = port,
        cached,
        elapsed_us = started.elapsed().as_micros() as u64,
    );
    Ok((port, cached))
}

/// Forwards the client's bind to `backend`. When the port came from the cache (`cached`),
/// reads the backend's answer first (waiting at most `limits.resolve_timeout`): if it
/// refuses the interface (a bind_nak, or every context rejected as
/// abstract_syntax_not_supported), the cached port is stale — the server moved the
/// interface, and another took its port — so the interface is resolved again and the bind
/// sent once more to the new port. The answer read, or the new connection's, goes to the
/// relay and its policy as any other.
async fn forward_bind(
    generation: &Generation,
    interface: SyntaxId,
    backend: TcpStream,
    cached: Option<u16>,
    bind: &[u8],
) -> anyhow::Result<PduReader<TcpStream>> {
    let limits = &generation.config.limits;
    let mut backend = PduReader::new(backend, limits.max_fragment);
    backend
        .get_mut()
        .write_all(bind)
        .await
        .context("forwarding the bind to the backend")?;
    let Some(old_port) = cached else {
        return Ok(backend);
    };
    // No answer in time, or none at all: the relay takes the connection as it is (the
    // reader keeps what it read).
    let Ok(answer) = backend.next_within(limits.resolve_timeout).await else {
        return Ok(backend);
    };
    if !refuses_interface(&answer) {
        backend.unread(answer);
        return Ok(backend);
    }
    let resolver = &generation.resolver;
    resolver.forget(&interface);
    let moved = async {
        let (port, _) = resolve(resolver, interface).await?;
        if port == old_port {
            bail!("the backend's endpoint mapper still names port {port}");
        }
        Ok((port, resolver.connect(port, limits.connect_timeout).await?))
    };
    let (new_port, stream) = match moved.await {
        Ok(moved) => moved,
        Err(e) => {
            warn!(
                event = "backend_port_stale",
                interface = %interface.uuid,
                alias = alias_of(&interface.uuid).unwrap_or("-"),
                old_port,
                answer = %answer.ptype(),
                retry = false,
                error = %format!("{e:#}"),
            );
            backend.unread(answer);
            return Ok(backend);
        }
    };
    warn!(
        event = "backend_port_stale",
        interface = %interface.uuid,
        alias = alias_of(&interface.uuid).unwrap_or("-"),
        old_port,
        new_port,
        answer = %answer.ptype(),
        retry = true,
    );
    super::socket::tune(&stream, limits);
    let mut backend = PduReader::new(stream, limits.max_fragment);
    backend
        .get_mut()
        .write_all(bind)
        .await
        .context("forwarding the bind to the backend again")?;
    Ok(backend)
}

/// Whether the backend's answer to a bind says the interface is not served on this port: a
/// bind_nak, or a bind_ack accepting no context and rejecting at least one as
/// abstract_syntax_not_supported (the others being such rejections too, or negotiate_acks
/// of bind-time feature negotiation).
fn refuses_interface(answer: &Pdu<BytesMut>) -> bool {
    match answer.ptype() {
        PacketType::BindNak => true,
        PacketType::BindAck => BindAck::from_pdu(answer.view()).is_ok_and(|ack| {
            let mut unsupported = false;
            let all = ack.results().all(|r| match r.result {
                ContextResult::ProviderRejection
                    if r.reason == reason::ABSTRACT_SYNTAX_NOT_SUPPORTED =>
                {
                    unsupported = true;
                    true
                }
                ContextResult::NegotiateAck => true,
                _ => false,
            });
            all && unsupported
        }),
        _ => false,
    }
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
}

impl Policy for PinPolicy {
    fn request(&mut self, pdu: Pdu<BytesMut>, out: &mut Outbox) -> anyhow::Result<()> {
        match pdu.ptype() {
            PacketType::AlterContext => {
                let bind = BindRequest::from_pdu(pdu.view())?;
                match self.gate.judge(&bind, |s| self.pin.config.allows(s))? {
                    Verdict::Forward => out.forward(pdu.into_inner()),
                    Verdict::Filtered(copy) => out.forward(copy),
                    Verdict::Answer(answer) => out.reply.push(answer),
                }
            }
            PacketType::Bind => bail!("a second bind on an established association"),
            PacketType::Request => {
                let req = Request::from_pdu(pdu.view())?;
                let interface = self.gate.usable(req.context_id());
                let allowed = |i: &SyntaxId| self.pin.config.allows_opnum(i, req.opnum());
                match self
                    .refused
                    .judge(&req, || interface.is_none_or(|i| !allowed(&i)))?
                {
                    CallVerdict::Forward => out.forward(pdu.into_inner()),
                    CallVerdict::Refuse => {
                        let Some(i) = interface else {
                            out.reply.push(unknown_context_fault(&req)?);
                            return Ok(());
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
                        out.reply.push(BytesMut::from(&fault[..]));
                    }
                    CallVerdict::Drop => {}
                }
            }
            _ => out.forward(pdu.into_inner()),
        }
        Ok(())
    }

    fn answer(&mut self, pdu: Pdu<BytesMut>, out: &mut Outbox) -> anyhow::Result<()> {
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
    use super::{public_secondary_addr, refuses_interface};
    use crate::wire::bind::{encode_bind_ack, encode_bind_nak, reason, BindAckFields};
    use crate::wire::bind::{ContextResult, ResultEntry};
    use crate::wire::{Endian, PacketType, SyntaxId};

    /// A bind_ack with `results`, read back as the reader hands it over.
    fn ack(results: &[ResultEntry]) -> crate::wire::Pdu<bytes::BytesMut> {
        let mut out = Vec::new();
        let fields = BindAckFields {
            ptype: PacketType::BindAck,
            endian: Endian::Little,
            call_id: 1,
            max_xmit_frag: 5840,
            max_recv_frag: 5840,
            assoc_group_id: 1,
            secondary_addr: b"49152\0",
            results,
        };
        encode_bind_ack(&mut out, &fields).unwrap();
        let mut buf = bytes::BytesMut::from(&out[..]);
        crate::wire::frame::next_pdu(&mut buf, 5840)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn a_refused_interface_is_a_nak_or_no_context_accepted_and_one_unsupported() {
        let unsupported = ResultEntry::rejected(reason::ABSTRACT_SYNTAX_NOT_SUPPORTED);
        let other = ResultEntry::rejected(reason::PROPOSED_TRANSFER_SYNTAXES_NOT_SUPPORTED);
        let btfn = ResultEntry {
            result: ContextResult::NegotiateAck,
            reason: 3,
            transfer_syntax: SyntaxId::NDR,
        };
        let accepted = ResultEntry {
            result: ContextResult::Acceptance,
            reason: 0,
            transfer_syntax: SyntaxId::NDR,
        };
        assert!(refuses_interface(&ack(&[unsupported])));
        assert!(refuses_interface(&ack(&[unsupported, btfn])));
        assert!(!refuses_interface(&ack(&[unsupported, accepted])));
        assert!(!refuses_interface(&ack(&[other])));
        assert!(!refuses_interface(&ack(&[unsupported, other])));
        assert!(!refuses_interface(&ack(&[btfn])));
        assert!(!refuses_interface(&ack(&[])));
        let mut nak = Vec::new();
        encode_bind_nak(&mut nak, Endian::Little, 1, 0).unwrap();
        let mut buf = bytes::BytesMut::from(&nak[..]);
        let nak = crate::wire::frame::next_pdu(&mut buf, 5840)
            .unwrap()
            .unwrap();
        assert!(refuses_interface(&nak));
    }

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
