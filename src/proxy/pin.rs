//! A pin listener: checks the client's bind against the pin, finds the backend's current
//! port for the interface, and relays.

use std::sync::atomic::AtomicU64;

use anyhow::{anyhow, bail, Context};
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::io::PduReader;
use super::relay::{pump, Activity, End, Outbox};
use super::{PinRuntime, Shared, Summary};
use crate::interfaces::alias_of;
use crate::wire::bind::{
    encode_bind_ack, encode_bind_nak, nak_reason, reason, BindAck, BindAckFields, BindRequest,
    ResultEntry,
};
use crate::wire::{PacketType, Pdu, SyntaxId};

/// Serves one client of a pin listener.
pub(crate) async fn serve(
    client: TcpStream,
    shared: &Shared,
    pin: &PinRuntime,
) -> anyhow::Result<Summary> {
    let limits = &shared.config.limits;
    let activity = Activity::new(limits.idle_timeout);
    let (client_rd, mut client_wr) = client.into_split();
    let mut client_rd = PduReader::new(client_rd, limits.max_fragment);
    let bind_pdu = client_rd
        .next_within(limits.handshake_timeout)
        .await
        .context("waiting for the client's bind")?;
    let bind =
        BindRequest::parse(&bind_pdu).context("the client's first PDU is not a valid bind")?;
    if bind.pdu().ptype() != PacketType::Bind {
        bail!("the client's first PDU is an alter_context, not a bind");
    }

    if let Some(answer) = refusal(&bind, pin)? {
        client_wr
            .write_all(&answer)
            .await
            .context("sending the refusal")?;
        let _ = client_wr.shutdown().await;
        let sent = AtomicU64::new(answer.len() as u64);
        let read = AtomicU64::new(bind_pdu.len() as u64);
        return Ok(Summary::new(&read, &sent, Ok("bind refused")));
    }
    // Every context names an interface of this pin; the first one chooses the backend port.
    let Some(interface) = bind.contexts().next().map(|c| c.abstract_syntax()) else {
        bail!("the client's bind proposes no presentation context");
    };
    let backend = match connect(shared, pin, interface).await {
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
            let _ = client_wr.write_all(&nak).await;
            let _ = client_wr.shutdown().await;
            return Err(e);
        }
    };
    info!(
        event = "bind_accepted",
        interface = %interface.uuid,
        alias = alias_of(&interface.uuid).unwrap_or("-"),
        version = %format_args!("{}.{}", interface.major, interface.minor),
        contexts = bind.contexts().count(),
    );

    let (backend_rd, mut backend_wr) = backend.into_split();
    let mut backend_rd = PduReader::new(backend_rd, limits.max_fragment);
    backend_wr
        .write_all(&bind_pdu)
        .await
        .context("forwarding the bind to the backend")?;
    let up = AtomicU64::new(bind_pdu.len() as u64);
    let down = AtomicU64::new(0);
    // Refusals of an alter_context travel back through the backend-to-client writer.
    let (reply_tx, mut reply_rx) = mpsc::channel(4);
    let ended = tokio::select! {
        r = pump(&mut client_rd, &mut backend_wr, &activity, &up, Some(&reply_tx), None,
                 |pdu, out| check_client_pdu(pin, pdu, out)) => r.map(|End::Closed| "client closed").context("client → backend"),
        r = pump(&mut backend_rd, &mut client_wr, &activity, &down, None, Some(&mut reply_rx),
                 |pdu, out| answer_to_client(pin, pdu, out)) => r.map(|End::Closed| "backend closed").context("backend → client"),
    };
    Ok(Summary::new(&up, &down, ended))
}

/// Connects to the backend port of `interface`: the pin's fixed port, or the one the
/// backend's endpoint mapper gives, resolved again once if the cached one fails.
async fn connect(
    shared: &Shared,
    pin: &PinRuntime,
    interface: SyntaxId,
) -> anyhow::Result<TcpStream> {
    let timeout = shared.config.limits.connect_timeout;
    let resolver = &shared.resolver;
    if let Some(port) = pin.backend_port {
        return resolver.connect(port, timeout).await;
    }
    for attempt in 0..2 {
        let started = std::time::Instant::now();
        let (port, cached) = resolver
            .port(interface)
            .await
            .with_context(|| format!("resolving {interface} at the backend"))?;
        info!(
            event = "backend_resolved",
            interface = %interface.uuid,
            alias = alias_of(&interface.uuid).unwrap_or("-"),
            backend_port = port,
            cached,
            elapsed_us = started.elapsed().as_micros() as u64,
        );
        match resolver.connect(port, timeout).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) if attempt == 0 => {
                warn!(event = "backend_connect_failed", backend_port = port, error = %e, retry = true);
                resolver.forget(&interface);
            }
            Err(e) => return Err(e),
        }
    }
    Err(anyhow!("unreachable: the loop returns"))
}

/// The answer that refuses a bind or alter_context, when one of its contexts names an
/// interface this pin does not carry. Logs each refused interface.
fn refusal(bind: &BindRequest<'_>, pin: &PinRuntime) -> anyhow::Result<Option<Vec<u8>>> {
    let mut refused = false;
    let results: Vec<ResultEntry> = bind
        .contexts()
        .map(|c| {
            let s = c.abstract_syntax();
            if pin.config.allows(&s) {
                ResultEntry::rejected(reason::NOT_SPECIFIED)
            } else {
                refused = true;
                warn!(
                    event = "bind_refused",
                    interface = %s.uuid,
                    alias = alias_of(&s.uuid).unwrap_or("-"),
                    version = %format_args!("{}.{}", s.major, s.minor),
                    context_id = c.id(),
                    kind = %bind.pdu().ptype(),
                    reason = "interface not carried by this pin",
                );
                ResultEntry::rejected(reason::ABSTRACT_SYNTAX_NOT_SUPPORTED)
            }
        })
        .collect();
    if !refused {
        return Ok(None);
    }
    let p = bind.pdu();
    let ptype = match p.ptype() {
        PacketType::AlterContext => PacketType::AlterContextResp,
        _ => PacketType::BindAck,
    };
    let mut out = Vec::with_capacity(32 + 24 * results.len());
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
    Ok(Some(out))
}

/// Checks what the client sends on an established association: an alter_context must name
/// interfaces of the pin too, and a second bind is a protocol violation.
fn check_client_pdu(pin: &PinRuntime, pdu: BytesMut, out: &mut Outbox) -> anyhow::Result<()> {
    match Pdu::new_checked(&pdu[..])?.ptype() {
        PacketType::AlterContext => {
            let alter = BindRequest::parse(&pdu)?;
            if let Some(answer) = refusal(&alter, pin)? {
                out.reply.push(BytesMut::from(&answer[..]));
                return Ok(());
            }
        }
        PacketType::Bind => bail!("a second bind on an established association"),
        _ => {}
    }
    out.forward.push(pdu);
    Ok(())
}

/// Forwards the backend's PDUs, with the secondary address of a bind_ack or
/// alter_context_resp (the backend's port as text, which discloses it) replaced by the
/// pin's public port.
fn answer_to_client(pin: &PinRuntime, pdu: BytesMut, out: &mut Outbox) -> anyhow::Result<()> {
    let ptype = Pdu::new_checked(&pdu[..])?.ptype();
    if matches!(ptype, PacketType::BindAck | PacketType::AlterContextResp) {
        let ack = BindAck::parse(&pdu)?;
        if let Some(addr) = public_secondary_addr(ack.secondary_addr(), pin.public_port) {
            let mut rewritten = Vec::with_capacity(pdu.len() + 8);
            ack.encode_with_secondary_addr(&addr, &mut rewritten)?;
            out.forward.push(BytesMut::from(&rewritten[..]));
            return Ok(());
        }
    }
    out.forward.push(pdu);
    Ok(())
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
