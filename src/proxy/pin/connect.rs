//! Reaching the backend for a pin, at the pin's own server (`pin.backend`, or `[backend]`):
//! the interface's current port (the pin's fixed one, or that server's endpoint mapper's
//! answer, cached per server), and the bind forwarded there, sent once more to a new port
//! when the server moved the interface since the cache learned it.

use anyhow::{anyhow, bail, Context};
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::backend::Resolver;
use crate::interfaces::alias_of;
use crate::metrics::{metrics, ResolutionLabels};
use crate::pdu_stream::PduReader;
use crate::proxy::generation::{Generation, PinRuntime};
use crate::wire::bind::{reason, BindAck, ContextResult};
use crate::wire::{PacketType, Pdu, SyntaxId};

/// Connects to the backend port of `interface` on the pin's server: the pin's fixed port, or
/// the one that server's endpoint mapper gives, resolved again once if the cached one fails.
/// Returns the port too when it came from the cache.
pub(super) async fn connect(
    generation: &Generation,
    pin: &PinRuntime,
    interface: SyntaxId,
) -> anyhow::Result<(TcpStream, Option<u16>)> {
    let timeout = generation.config.limits.connect_timeout;
    let resolver = generation.resolver_of(&pin.config);
    if let Some(port) = pin.config.backend_port {
        return Ok((resolver.connect(port, timeout).await?, None));
    }
    for attempt in 0..2 {
        let (port, cached) = resolve(resolver, interface).await?;
        match resolver.connect(port, timeout).await {
            Ok(s) => return Ok((s, cached.then_some(port))),
            Err(e) if attempt == 0 => {
                warn!(event = "backend_connect_failed", backend = resolver.name(), backend_port = port, error = %format!("{e:#}"), retry = true);
                generation.forget(resolver, &interface);
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
    let backend = resolver.name().to_string();
    metrics()
        .backend_resolutions
        .get_or_create(&ResolutionLabels {
            result,
            cached,
            backend,
        })
        .inc();
    let (port, cached) = resolved.with_context(|| {
        format!(
            "resolving {interface} at the backend {} ({})",
            resolver.name(),
            resolver.backend()
        )
    })?;
    debug!(
        event = "backend_resolved",
        backend = resolver.name(),
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
/// relay and its policy as any other. `resolver` is the pin's server's.
pub(super) async fn forward_bind(
    generation: &Generation,
    resolver: &Resolver,
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
    generation.forget(resolver, &interface);
    let moved = async {
        let (port, _) = resolve(resolver, interface).await?;
        if port == old_port {
            bail!("the backend's endpoint mapper still names port {port}");
        }
        Ok((port, resolver.connect(port, limits.connect_timeout).await?))
    };
    let moved = moved.await;
    let (new_port, error) = match &moved {
        Ok((port, _)) => (Some(*port), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    warn!(
        event = "backend_port_stale",
        backend = resolver.name(),
        interface = %interface.uuid,
        alias = alias_of(&interface.uuid).unwrap_or("-"),
        old_port,
        new_port,
        answer = %answer.ptype(),
        retry = moved.is_ok(),
        error,
    );
    let Ok((_, stream)) = moved else {
        backend.unread(answer);
        return Ok(backend);
    };
    crate::proxy::socket::tune(&stream, limits);
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

#[cfg(test)]
mod tests {
    use super::refuses_interface;
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
}
