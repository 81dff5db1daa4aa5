//! A gathered ept_map, ept_map_auth or ept_lookup answer: rewritten (or replaced by a
//! fault when that cannot be done safely), what it hid logged, and the pins' port cache
//! refreshed from it.

use anyhow::bail;
use bytes::BytesMut;
use tracing::{debug, warn};

use super::EpmPolicy;
use crate::config::{OtherTowers, ProtectedAnswers};
use crate::epm_rewrite::{rewrite_call, OtherTower, Rewritten, Rules};
use crate::interfaces::alias_of;
use crate::metrics::metrics;
use crate::proxy::generation::Generation;
use crate::proxy::relay::Outbox;
use crate::wire::call::{encode_fault, status};
use crate::wire::epm::opnum;
use crate::wire::ndr::Syntax;
use crate::wire::tower::protocol;
use crate::wire::SyntaxId;

/// Why entries are missing from an answer.
const HIDDEN: &str = "entries of interfaces no pin carries removed from the answer";

/// Why towers of a pinned interface are missing from an answer.
const OTHER_TOWERS: &str =
    "towers other than ncacn_ip_tcp of a pinned interface removed from the answer";

/// An auth level at which the verifier covers the stub (C706 §13.1.2.1: packet, integrity,
/// privacy): a rewrite would break it.
const AUTH_LEVEL_PKT: u8 = 4;

impl EpmPolicy {
    /// Rewrites a whole gathered answer, or replaces it with a fault when it cannot be
    /// rewritten safely: a tower pointing at an unreachable internal port must never reach
    /// the client as a success.
    pub(super) fn finish_call(
        &mut self,
        call_id: u32,
        ctx: u16,
        op: u16,
        syntax: Option<Syntax>,
        out: &mut Outbox,
    ) -> anyhow::Result<()> {
        let mut frags = self.pending.remove(&call_id).unwrap_or_default();
        self.pending_len -= frags.iter().map(|f| f.frag_len()).sum::<usize>();
        let Some(first) = frags.first() else {
            return Ok(());
        };
        let endian = first.endian();
        let levels: Vec<u8> = frags
            .iter()
            .filter_map(|f| f.auth_trailer().map(|(_, level, _)| level))
            .collect();
        let config = &self.generation.config;
        let rules = Rules {
            table: &self.generation.table,
            advertise: self.advertise,
            hide_unpinned: config.epm.hide_unpinned,
            hide_other_towers: config.epm.other_towers == OtherTowers::Hide,
        };
        let outcome = match syntax {
            None => Err("the context's transfer syntax is not NDR or NDR64"),
            Some(s) => rewrite_call(&mut frags, op, s, rules, config.limits.max_reassembly)
                .map_err(|_| "the answer does not parse"),
        };
        let refusal = match outcome {
            Ok(done) if done.rewritten.is_empty() && !done.removed() => None,
            // A verifier covers the stub, or the answer carries one that re-encoding drops.
            Ok(done)
                if levels.iter().any(|&l| l >= AUTH_LEVEL_PKT)
                    || (done.removed() && !levels.is_empty()) =>
            {
                let reason = "the answer is integrity-protected and needs a rewrite";
                if config.epm.protected_answers == ProtectedAnswers::Close {
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
                refresh_pins(&self.generation, op, &done.rewritten);
                metrics()
                    .towers_rewritten
                    .inc_by(done.rewritten.len() as u64);
                let n = u32::try_from(done.rewritten.len()).unwrap_or(u32::MAX);
                self.facts.towers_rewritten = self.facts.towers_rewritten.saturating_add(n);
                for r in &done.rewritten {
                    debug!(
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
                if let Some(reencoded) = done.reencoded {
                    log_hidden(&done.hidden, call_id, op);
                    log_other_towers(&done.other_towers, call_id, op);
                    out.forward(BytesMut::from(&reencoded[..]));
                    return Ok(());
                }
                None
            }
            Err(why) => Some(why),
        };
        match refusal {
            None => frags.into_iter().for_each(|f| out.forward(f.into_inner())),
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
                out.forward(BytesMut::from(&fault[..]));
            }
        }
        Ok(())
    }
}

/// Logs the entries an answer lost to `epm.hide_unpinned`: one `refused` event (and one
/// count) per interface and version, with how many of its entries were removed; entries
/// whose tower names no interface share one event with interface `-`.
fn log_hidden(hidden: &[Option<SyntaxId>], call_id: u32, op: u16) {
    for (interface, entries) in tally(hidden) {
        let (uuid, alias, version) = match interface {
            Some(i) => (
                i.uuid.to_string(),
                alias_of(&i.uuid).unwrap_or("-"),
                format!("{}.{}", i.major, i.minor),
            ),
            None => ("-".to_string(), "-", "-".to_string()),
        };
        warn!(
            event = "refused",
            policy = "hide_unpinned",
            interface = %uuid,
            alias,
            version = %version,
            call_id,
            opnum = op,
            entries,
            reason = HIDDEN,
        );
        metrics().refused("hide_unpinned", HIDDEN);
    }
}

/// Logs the towers an answer lost to `epm.other_towers`, as `log_hidden` does, with their
/// protocol: one `refused` event (and one count) per interface, version and protocol.
fn log_other_towers(hidden: &[OtherTower], call_id: u32, op: u16) {
    for (tower, entries) in tally(hidden) {
        let i = tower.interface;
        let protocol = match tower.protocol {
            Some(p) => protocol::sequence(p).map_or_else(|| format!("0x{p:02x}"), String::from),
            None => "-".to_string(),
        };
        warn!(
            event = "refused",
            policy = "other_towers",
            interface = %i.uuid,
            alias = alias_of(&i.uuid).unwrap_or("-"),
            version = %format_args!("{}.{}", i.major, i.minor),
            protocol = %protocol,
            call_id,
            opnum = op,
            entries,
            reason = OTHER_TOWERS,
        );
        metrics().refused("other_towers", OTHER_TOWERS);
    }
}

/// Each distinct item of `items`, in order of first appearance, and how often it occurs.
fn tally<T: PartialEq + Copy>(items: &[T]) -> Vec<(T, usize)> {
    let mut seen: Vec<(T, usize)> = Vec::new();
    for h in items {
        match seen.iter_mut().find(|(s, _)| s == h) {
            Some((_, n)) => *n += 1,
            None => seen.push((*h, 1)),
        }
    }
    seen
}

/// Refreshes the pins' port cache from an ept_map answer about to be relayed: the backend's
/// endpoint mapper just named each interface's port (the first ncacn_ip_tcp tower of each,
/// as the backend had it), so the next pin connection for it goes there without resolving.
/// Each port goes into the cache of its pin's own server, and only when that server is the
/// one relayed to (`[backend]`'s: in relay mode every pin's is); a port another server
/// named says nothing of the pin's. ept_lookup answers are left out: they list
/// registrations, not the endpoint a client is sent to.
fn refresh_pins(generation: &Generation, op: u16, rewritten: &[Rewritten]) {
    if !matches!(op, opnum::MAP | opnum::MAP_AUTH) {
        return;
    }
    let relayed = generation.resolver().backend();
    for (i, r) in rewritten.iter().enumerate() {
        let server = generation.resolver_of_pin_named(&r.pin);
        if server.backend().same_server(relayed)
            && !rewritten[..i].iter().any(|e| e.interface == r.interface)
        {
            server.learned(r.interface, r.backend_port);
        }
    }
}
