//! The endpoint-mapper listener: relays a client's EPM association to the backend's and
//! rewrites the towers in its ept_map and ept_lookup answers.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use anyhow::{bail, Context};
use bytes::BytesMut;
use tokio::net::TcpStream;
use tracing::{info, warn};

use super::io::PduReader;
use super::relay::{pump, Activity, End, Outbox};
use super::{Shared, Summary};
use crate::config::ProtectedAnswers;
use crate::interfaces::alias_of;
use crate::rewrite::{carries_towers, rewrite_call};
use crate::wire::bind::{BindAck, BindRequest, ContextResult};
use crate::wire::ndr::Syntax;
use crate::wire::pdu::{encode_fault, status, Request, Response};
use crate::wire::{PacketType, Pdu, SyntaxId};

/// More outstanding calls than this on one EPM association is not a real client.
const MAX_OUTSTANDING: usize = 64;

/// An auth level at which the verifier covers the stub (C706 §13.1.2.1: packet, integrity,
/// privacy): a rewrite would break it.
const AUTH_LEVEL_PKT: u8 = 4;

/// What the client side has announced that the backend's answers refer to.
#[derive(Debug, Default)]
struct Association {
    /// Contexts proposed in a bind or alter_context, by its call id.
    proposed: HashMap<u32, Vec<(u16, Vec<SyntaxId>)>>,
    /// Accepted contexts and their transfer syntax (`None`: one rpcpin cannot walk).
    contexts: HashMap<u16, Option<Syntax>>,
    /// Outstanding calls, by call id.
    calls: HashMap<u32, Call>,
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

/// Serves one client of the EPM listener.
pub(crate) async fn serve(client: TcpStream, shared: &Shared) -> anyhow::Result<Summary> {
    let limits = &shared.config.limits;
    let advertise = advertise_for(&client, shared.config.epm.advertise);
    let (client_rd, mut client_wr) = client.into_split();
    let mut client_rd = PduReader::new(client_rd, limits.max_fragment);
    // A client that says nothing never costs a backend connection.
    let first = client_rd
        .next_within(limits.handshake_timeout)
        .await
        .context("waiting for the client's first PDU")?;

    let backend = shared
        .resolver
        .connect(shared.config.backend.epm_port, limits.connect_timeout)
        .await?;
    let _ = backend.set_nodelay(true);
    let (backend_rd, mut backend_wr) = backend.into_split();
    let mut backend_rd = PduReader::new(backend_rd, limits.max_fragment);

    let assoc = Mutex::new(Association::default());
    let activity = Activity::new(limits.idle_timeout);
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));

    // The first PDU goes the same way as every later one.
    let mut out = Outbox::default();
    note_client_pdu(&assoc, first, &mut out)?;
    for pdu in out.forward.drain(..) {
        use tokio::io::AsyncWriteExt;
        backend_wr
            .write_all(&pdu)
            .await
            .context("writing to the backend")?;
        up.fetch_add(pdu.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    let mut answers = Answers {
        assoc: &assoc,
        pending: HashMap::new(),
        pending_len: 0,
        shared,
        advertise,
    };
    let ended = tokio::select! {
        r = pump(&mut client_rd, &mut backend_wr, &activity, &up, None, None,
                 |pdu, out| note_client_pdu(&assoc, pdu, out)) => r.map(|End::Closed| "client closed").context("client → backend"),
        r = pump(&mut backend_rd, &mut client_wr, &activity, &down, None, None,
                 |pdu, out| answers.handle(pdu, out)) => r.map(|End::Closed| "backend closed").context("backend → client"),
    };
    Ok(Summary::new(&up, &down, ended))
}

/// The address to write into towers: configured, or the one the client reached us on.
fn advertise_for(client: &TcpStream, configured: Option<Ipv4Addr>) -> Ipv4Addr {
    if let Some(a) = configured {
        return a;
    }
    match client.local_addr().map(|a| a.ip().to_canonical()) {
        Ok(IpAddr::V4(v4)) => v4,
        // An IPv6 client needs `[epm] advertise`; never leak the backend's address.
        _ => Ipv4Addr::UNSPECIFIED,
    }
}

/// Records what a client PDU tells about later answers, then forwards it.
fn note_client_pdu(
    assoc: &Mutex<Association>,
    pdu: BytesMut,
    out: &mut Outbox,
) -> anyhow::Result<()> {
    let p = Pdu::new_checked(&pdu[..])?;
    let mut a = assoc.lock().unwrap_or_else(|e| e.into_inner());
    match p.ptype() {
        PacketType::Bind | PacketType::AlterContext => {
            let bind = BindRequest::parse(&pdu)?;
            let contexts = bind
                .contexts()
                .map(|c| (c.id(), c.transfer_syntaxes().collect()))
                .collect();
            if a.proposed.len() >= MAX_OUTSTANDING {
                bail!("more than {MAX_OUTSTANDING} unanswered binds");
            }
            a.proposed.insert(p.call_id(), contexts);
        }
        PacketType::Request => {
            let req = Request::parse(&pdu)?;
            if a.calls.len() >= MAX_OUTSTANDING {
                bail!("more than {MAX_OUTSTANDING} outstanding calls");
            }
            // Later fragments of a request repeat its context and opnum.
            a.calls.entry(p.call_id()).or_insert(Call {
                context: req.context_id(),
                opnum: req.opnum(),
                answering: false,
            });
        }
        _ => {}
    }
    drop(a);
    out.forward.push(pdu);
    Ok(())
}

/// The backend-to-client direction: learns the accepted contexts and rewrites towers.
struct Answers<'a> {
    assoc: &'a Mutex<Association>,
    /// Fragments of tower-carrying answers, by call id, held until their last fragment.
    pending: HashMap<u32, Vec<BytesMut>>,
    /// Their total size, bounded by `limits.max_reassembly`.
    pending_len: usize,
    shared: &'a Shared,
    advertise: Ipv4Addr,
}

impl Answers<'_> {
    fn handle(&mut self, pdu: BytesMut, out: &mut Outbox) -> anyhow::Result<()> {
        let p = Pdu::new_checked(&pdu[..])?;
        let (ptype, call_id) = (p.ptype(), p.call_id());
        let mut a = self.assoc.lock().unwrap_or_else(|e| e.into_inner());
        match ptype {
            PacketType::BindAck | PacketType::AlterContextResp => {
                if let Some(proposed) = a.proposed.remove(&call_id) {
                    let ack = BindAck::parse(&pdu)?;
                    for ((id, _), result) in proposed.iter().zip(ack.results()) {
                        if result.result == ContextResult::Acceptance {
                            let syntax = Syntax::from_transfer_syntax(&result.transfer_syntax);
                            a.contexts.insert(*id, syntax);
                        }
                    }
                }
            }
            PacketType::Response => {
                let Some(call) = a.calls.get_mut(&call_id) else {
                    bail!("a response to call {call_id}, which the client never made");
                };
                let (ctx, op) = (call.context, call.opnum);
                let last = p.ends_call(call.answering);
                call.answering = true;
                if last {
                    a.calls.remove(&call_id);
                }
                if carries_towers(op) {
                    let syntax = a.contexts.get(&ctx).copied().flatten();
                    drop(a);
                    Response::parse(&pdu)?;
                    self.pending_len += pdu.len();
                    if self.pending_len > self.shared.config.limits.max_reassembly {
                        bail!(
                            "endpoint-mapper answer larger than limits.max_reassembly ({} bytes)",
                            self.shared.config.limits.max_reassembly
                        );
                    }
                    self.pending.entry(call_id).or_default().push(pdu);
                    if last {
                        self.finish_call(call_id, ctx, op, syntax, out)?;
                    }
                    return Ok(());
                }
            }
            PacketType::Fault => {
                a.calls.remove(&call_id);
            }
            _ => {}
        }
        out.forward.push(pdu);
        Ok(())
    }

    /// Rewrites a whole gathered answer, or replaces it with a fault when it cannot be
    /// rewritten safely: a tower pointing at an unreachable internal port must never reach
    /// the client as a success.
    fn finish_call(
        &mut self,
        call_id: u32,
        ctx: u16,
        op: u16,
        syntax: Option<Syntax>,
        out: &mut Outbox,
    ) -> anyhow::Result<()> {
        let mut frags = self.pending.remove(&call_id).unwrap_or_default();
        self.pending_len -= frags.iter().map(|f| f.len()).sum::<usize>();
        let Some(first) = frags.first() else {
            return Ok(());
        };
        let endian = Pdu::new_checked(&first[..])?.endian();
        let protected = frags.iter().any(|f| {
            Pdu::new_checked(&f[..])
                .ok()
                .and_then(|p| p.auth_trailer())
                .is_some_and(|(_, level, _)| level >= AUTH_LEVEL_PKT)
        });
        let max = self.shared.config.limits.max_reassembly;
        let outcome = match syntax {
            None => Err("the context's transfer syntax is not NDR or NDR64"),
            Some(s) => rewrite_call(&mut frags, op, s, &self.shared.table, self.advertise, max)
                .map_err(|_| "the answer does not parse"),
        };
        let refusal = match outcome {
            Ok(done) if done.is_empty() => None,
            Ok(_) if protected => {
                let reason = "the answer is integrity-protected and needs a rewrite";
                if self.shared.config.epm.protected_answers == ProtectedAnswers::Close {
                    warn!(
                        event = "epm_answer_refused",
                        call_id,
                        opnum = op,
                        reason,
                        action = "close"
                    );
                    bail!("{reason}");
                }
                Some(reason)
            }
            Ok(done) => {
                for r in &done {
                    info!(
                        event = "tower_rewritten",
                        call_id,
                        interface = %r.interface.uuid,
                        alias = alias_of(&r.interface.uuid).unwrap_or("-"),
                        pin = %r.pin,
                        backend_port = r.backend_port,
                        public_port = r.public_port,
                        backend_addr = %r.backend_addr,
                        advertised = %r.advertised,
                    );
                }
                None
            }
            Err(why) => Some(why),
        };
        match refusal {
            None => out.forward.extend(frags),
            Some(reason) => {
                warn!(
                    event = "epm_answer_refused",
                    call_id,
                    opnum = op,
                    reason,
                    action = "fault"
                );
                let mut fault = Vec::with_capacity(32);
                encode_fault(
                    &mut fault,
                    endian,
                    call_id,
                    ctx,
                    status::NCA_S_FAULT_ACCESS_DENIED,
                )?;
                out.forward.push(BytesMut::from(&fault[..]));
            }
        }
        Ok(())
    }
}
