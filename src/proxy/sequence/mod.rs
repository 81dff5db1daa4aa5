//! A sequence check of the listeners' policies, for the unit tests and the `policy_sequence`
//! fuzz target: bytes choose a random interleaving of a client's binds, alter_contexts and
//! requests (whole, or in fragments, in either byte order) with a backend's answers (bind
//! acceptances and rejections, bind_naks, responses in fragments, faults), which pass
//! through a pin's or the endpoint mapper's policy as the relay would pass them (head
//! first: `relay::pass_whole`).
//!
//! The backend is a model of a conforming server that answers its calls in the order it
//! received them. [`check`] panics when:
//! - a request reaches the backend on a context the backend has not accepted (in an answer
//!   the policy saw);
//! - a bind or alter_context reaches the backend with an interface the listener refuses,
//!   or redefining a context it already has;
//! - a call the listener refuses reaches the backend, or a fragment of a call it never
//!   began;
//! - the client gets an answer out of call order, of the wrong kind, or for no call;
//! - once the client has finished its calls and the backend has answered everything, a
//!   call of the client is still unanswered.
//!
//! A policy may end the connection (an error) at any point; what happened until then must
//! still hold.

use std::net::Ipv4Addr;
use std::sync::Arc;

use bytes::BytesMut;

mod peers;
#[cfg(test)]
mod relayed;

use super::epm::EpmPolicy;
use super::generation::{Generation, PinRuntime};
use super::pin::{first_bind, FirstBind};
use super::relay::{pass_whole, Outbox, Policy};
use crate::config::Config;
use crate::epm_rewrite::Table;
use crate::wire::bind::{encode_bind, ContextProposal};
use crate::wire::call::encode_request;
use crate::wire::epm::EPM;
use crate::wire::frame::next_pdu;
use crate::wire::pdu::flags;
use crate::wire::{Endian, PacketType, SyntaxId};
use peers::{Client, Kind, Listener, Server};

/// The listeners' configuration: a pin for the directory and samr (samr's operations 0, 1
/// and 5 only).
const CONFIG: &str = r#"
[backend]
host = "127.0.0.1"
[epm]
listen = "127.0.0.1:0"
[[pin]]
name = "p"
listen = "127.0.0.1:0"
interfaces = ["nspi", "samr"]
opnums = { samr = [0, 1, 5] }
"#;

/// winreg 1.0, which neither listener lets through.
const WINREG: SyntaxId = SyntaxId::new(uuid::uuid!("338cd001-2244-31f1-aaaa-900038001003"), 1, 0);

/// Runs the sequence `data` describes; panics when an invariant breaks.
pub fn check(data: &[u8]) {
    let mut input = Input(data);
    let config = Config::parse(CONFIG).expect("the sequence check's configuration");
    let pin = config.pins[0].clone();
    let listener = if input.byte() & 1 == 0 {
        Listener::Pin(pin.clone())
    } else {
        Listener::Epm
    };
    let mut run = Run {
        endian: if input.byte() & 1 == 0 {
            Endian::Little
        } else {
            Endian::Big
        },
        pool: match &listener {
            Listener::Pin(p) => {
                let mut pool: Vec<SyntaxId> =
                    p.interfaces.iter().map(|i| i.query_syntax()).collect();
                pool.extend([WINREG, EPM]);
                pool
            }
            Listener::Epm => vec![EPM, pin.interfaces[0].query_syntax(), WINREG],
        },
        listener,
        client: Client::default(),
        server: Server::default(),
    };
    let mut policy = match run.start(&mut input, config) {
        Some(policy) => policy,
        None => return,
    };
    while let Some(op) = input.next() {
        if run.step(op, &mut input, policy.as_mut()).is_err() {
            return;
        }
    }
    // The client finishes its calls, the backend answers everything: nothing is lost.
    if run.finish(policy.as_mut()).is_err() {
        return;
    }
    assert!(
        run.client.calls.is_empty(),
        "calls never answered: {:?}",
        run.client.calls
    );
}

/// The bytes that choose the sequence; 0 once they run out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn next(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn byte(&mut self) -> u8 {
        self.next().unwrap_or(0)
    }
}

struct Run {
    listener: Listener,
    endian: Endian,
    /// The interfaces the client proposes.
    pool: Vec<SyntaxId>,
    client: Client,
    server: Server,
}

/// The policy ended the connection.
struct Ended;

impl Run {
    /// The connection's start: the pin's handshake on a first bind, or the endpoint
    /// mapper's policy. `None` when the connection ends there.
    fn start(&mut self, input: &mut Input<'_>, config: Config) -> Option<Box<dyn Policy>> {
        match &self.listener {
            Listener::Pin(pin) => {
                let pin = pin.clone();
                let bind = self.bind(input, PacketType::Bind);
                let mut buf = BytesMut::from(&bind[..]);
                let first = next_pdu(&mut buf, 65535).ok()??;
                let pin = Arc::new(PinRuntime {
                    config: pin,
                    public_port: 6004,
                });
                match first_bind(pin, &first).ok()? {
                    FirstBind::Refused(answer) => {
                        self.client_receives(&answer);
                        None
                    }
                    FirstBind::Forward { bind, policy, .. } => {
                        self.backend_receives(&bind);
                        Some(policy)
                    }
                }
            }
            Listener::Epm => {
                let table = Table::from_pins(config.pins.iter().map(|p| (p, 6004)));
                let generation = Generation::new(config, table);
                let policy = EpmPolicy::new(Arc::new(generation), Ipv4Addr::new(192, 0, 2, 1));
                Some(Box::new(policy))
            }
        }
    }

    /// One step: the client sends something, or the backend sends a PDU.
    fn step(
        &mut self,
        op: u8,
        input: &mut Input<'_>,
        policy: &mut dyn Policy,
    ) -> Result<(), Ended> {
        let pdu = match op % 8 {
            0 => {
                let kind = match (&self.listener, input.byte() % 4) {
                    // A second bind: a protocol violation on a pin.
                    (_, 0) => PacketType::Bind,
                    _ => PacketType::AlterContext,
                };
                Some(self.bind(input, kind))
            }
            1 | 2 => self.request(input, flags::FIRST_FRAG | flags::LAST_FRAG),
            3 => self.request(input, flags::FIRST_FRAG),
            4 => self.request(input, 0),
            5 => self.request(input, flags::LAST_FRAG),
            _ => return self.backend_sends(input, policy),
        };
        let Some(pdu) = pdu else { return Ok(()) };
        self.client_sends(&pdu, policy)
    }

    /// Finishes every open call, then lets the backend answer everything.
    fn finish(&mut self, policy: &mut dyn Policy) -> Result<(), Ended> {
        let mut none = Input(&[]);
        while !self.client.open.is_empty() {
            if let Some(pdu) = self.request(&mut none, flags::LAST_FRAG) {
                self.client_sends(&pdu, policy)?;
            }
        }
        while !self.server.calls.is_empty() || !self.server.sending.is_empty() {
            self.backend_sends(&mut none, policy)?;
        }
        Ok(())
    }

    /// A bind or alter_context of one to three contexts, each a random id and interface.
    fn bind(&mut self, input: &mut Input<'_>, ptype: PacketType) -> Vec<u8> {
        let n = 1 + usize::from(input.byte() % 3);
        let syntaxes: Vec<(u16, SyntaxId)> = (0..n)
            .map(|_| {
                let b = input.byte();
                (
                    u16::from(b % 4),
                    self.pool[usize::from(b >> 2) % self.pool.len()],
                )
            })
            .collect();
        let transfer = [SyntaxId::NDR];
        let proposals: Vec<ContextProposal<'_>> = syntaxes
            .iter()
            .map(|&(id, abstract_syntax)| ContextProposal {
                id,
                abstract_syntax,
                transfer_syntaxes: &transfer,
            })
            .collect();
        let call_id = self.client.new_call(if ptype == PacketType::Bind {
            Kind::Bind
        } else {
            Kind::AlterContext
        });
        let mut out = Vec::new();
        encode_bind(&mut out, self.endian, call_id, 5840, &proposals).expect("a small bind");
        out[2] = u8::from(ptype);
        out
    }

    /// A request fragment with `frag` flags: a new call for a first fragment or a whole
    /// one (flags both, or a legacy call with neither), else the next fragment of an open
    /// call (none when there is none).
    fn request(&mut self, input: &mut Input<'_>, frag: u8) -> Option<Vec<u8>> {
        let b = input.byte();
        let open = !self.client.open.is_empty() && frag & flags::FIRST_FRAG == 0;
        let legacy_whole = frag == 0 && (self.client.open.is_empty() || b & 0x80 != 0);
        let (call_id, ctx, op, flags) = if frag & flags::FIRST_FRAG != 0 || legacy_whole {
            let ctx = u16::from(b % 5);
            let op = u16::from(input.byte() % 8);
            let call_id = self.client.new_call(Kind::Request);
            if frag == flags::FIRST_FRAG {
                self.client.open.push((call_id, ctx, op));
            }
            (call_id, ctx, op, frag)
        } else if open {
            let i = usize::from(b) % self.client.open.len();
            let (call_id, ctx, op) = self.client.open[i];
            if frag & flags::LAST_FRAG != 0 {
                self.client.open.swap_remove(i);
            }
            (call_id, ctx, op, frag)
        } else {
            return None;
        };
        let mut out = Vec::new();
        encode_request(&mut out, self.endian, call_id, ctx, op, &[b; 12]).expect("a request");
        out[3] = flags;
        Some(out)
    }

    fn client_sends(&mut self, pdu: &[u8], policy: &mut dyn Policy) -> Result<(), Ended> {
        let mut buf = BytesMut::from(pdu);
        let pdu = next_pdu(&mut buf, 65535)
            .expect("the client's own PDU")
            .expect("whole");
        let mut out = Outbox::default();
        let result = pass_whole(policy, true, pdu, &mut out);
        self.backend_receives(out.forwarded());
        for answer in &out.reply {
            self.client_receives(answer);
        }
        result.map_err(|_| Ended)
    }

    /// The backend sends the next PDU of its answer to its oldest call, once that call has
    /// come whole; nothing when there is none.
    fn backend_sends(
        &mut self,
        input: &mut Input<'_>,
        policy: &mut dyn Policy,
    ) -> Result<(), Ended> {
        if self.server.sending.is_empty() {
            let ready = self.server.calls.front().is_some_and(|c| c.complete);
            if !ready {
                return Ok(());
            }
            let call = self.server.calls.pop_front().expect("a call");
            let choice = input.byte();
            let answer = self
                .server
                .answer(&call, choice, self.endian, &self.listener);
            self.server.sending.extend(answer);
        }
        let Some(pdu) = self.server.sending.pop_front() else {
            return Ok(());
        };
        let mut buf = BytesMut::from(&pdu[..]);
        let pdu = next_pdu(&mut buf, 65535)
            .expect("the backend's own PDU")
            .expect("whole");
        let mut out = Outbox::default();
        let result = pass_whole(policy, false, pdu, &mut out);
        assert!(out.reply.is_empty(), "a policy answered the backend");
        self.client_receives(out.forwarded());
        result.map_err(|_| Ended)
    }

    /// What the backend receives, checked against what the listener may let through.
    fn backend_receives(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let mut buf = BytesMut::from(bytes);
            let pdu = next_pdu(&mut buf, 65535)
                .expect("a policy forwarded a malformed PDU")
                .expect("a policy forwarded part of a PDU");
            bytes = &bytes[pdu.frag_len()..];
            self.server.receive(&pdu, &self.listener);
        }
    }

    /// What the client receives: answers in the order of its calls.
    fn client_receives(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let mut buf = BytesMut::from(bytes);
            let pdu = next_pdu(&mut buf, 65535)
                .expect("a malformed PDU for the client")
                .expect("part of a PDU for the client");
            bytes = &bytes[pdu.frag_len()..];
            self.client.receive(&pdu);
        }
    }
}

#[cfg(test)]
mod tests {
    /// A small pseudo-random generator (xorshift), so the run is the same every time.
    fn bytes(seed: &mut u64, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                (*seed >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn random_sequences_keep_the_invariants() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..4000 {
            let len = 8 + usize::from(bytes(&mut seed, 1)[0] % 96);
            let data = bytes(&mut seed, len);
            super::check(&data);
        }
    }
}
