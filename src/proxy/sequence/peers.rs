//! The two peers of the sequence check: the client, and a model of a conforming backend.

use std::collections::VecDeque;

use bytes::BytesMut;

use crate::config::Pin;
use crate::epm_rewrite::carries_towers;
use crate::wire::bind::{
    encode_bind_ack, encode_bind_nak, reason, BindAckFields, BindRequest, ContextResult,
    ResultEntry,
};
use crate::wire::call::{encode_fault, encode_response, status, Request};
use crate::wire::epm::{encode_answer, opnum, Answer, EPM, EPT_S_NOT_REGISTERED};
use crate::wire::ndr::Syntax;
use crate::wire::pdu::flags;
use crate::wire::{Endian, PacketType, Pdu, SyntaxId};

pub(super) enum Listener {
    Pin(Pin),
    Epm,
}

impl Listener {
    pub(super) fn allows(&self, s: &SyntaxId) -> bool {
        match self {
            Listener::Pin(p) => p.allows(s),
            Listener::Epm => s.uuid == EPM.uuid && s.major == EPM.major,
        }
    }

    pub(super) fn allows_opnum(&self, s: &SyntaxId, op: u16) -> bool {
        match self {
            Listener::Pin(p) => p.allows_opnum(s, op),
            Listener::Epm => matches!(
                op,
                opnum::LOOKUP | opnum::MAP | opnum::LOOKUP_HANDLE_FREE | opnum::MAP_AUTH
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Bind,
    AlterContext,
    Request,
}

/// The client: its calls awaiting their answer, in the order it made them.
#[derive(Debug, Default)]
pub(super) struct Client {
    pub(super) next_call: u32,
    pub(super) calls: VecDeque<(u32, Kind)>,
    /// Requests whose first fragment is sent and last is not: call id, context, opnum.
    pub(super) open: Vec<(u32, u16, u16)>,
    /// Whether a fragment of the first call's answer came (a response in fragments).
    pub(super) answering: bool,
}

/// The backend: its contexts, and the calls it received and has not answered, in order.
#[derive(Debug, Default)]
pub(super) struct Server {
    /// Every context proposed to it: id, interface, and whether its acceptance was sent.
    pub(super) contexts: Vec<(u16, SyntaxId, bool)>,
    /// Calls received: id, what, and for requests the opnum and whether the last fragment
    /// came; for binds, the contexts proposed.
    pub(super) calls: VecDeque<ServerCall>,
    /// Answer PDUs being sent, one per step.
    pub(super) sending: VecDeque<Vec<u8>>,
}

#[derive(Debug)]
pub(super) struct ServerCall {
    pub(super) call_id: u32,
    pub(super) kind: Kind,
    pub(super) context: u16,
    pub(super) opnum: u16,
    pub(super) complete: bool,
    pub(super) proposed: Vec<(u16, SyntaxId)>,
}

impl Client {
    pub(super) fn new_call(&mut self, kind: Kind) -> u32 {
        self.next_call += 1;
        self.calls.push_back((self.next_call, kind));
        self.next_call
    }

    pub(super) fn receive(&mut self, pdu: &Pdu<BytesMut>) {
        let (ptype, call_id) = (pdu.ptype(), pdu.call_id());
        let Some(&(oldest, kind)) = self.calls.front() else {
            panic!("an answer ({ptype}, call {call_id}) with no call awaiting one");
        };
        assert_eq!(
            call_id, oldest,
            "{ptype} for call {call_id} came before the answer to call {oldest}: {:?}",
            self.calls
        );
        let fits = match kind {
            Kind::Bind => matches!(ptype, PacketType::BindAck | PacketType::BindNak),
            Kind::AlterContext => ptype == PacketType::AlterContextResp,
            Kind::Request => matches!(ptype, PacketType::Response | PacketType::Fault),
        };
        assert!(fits, "{ptype} answers call {call_id}, a {kind:?}");
        let ends = match ptype {
            PacketType::Response | PacketType::Fault => pdu.ends_call(self.answering),
            _ => true,
        };
        self.answering = !ends;
        if ends {
            self.calls.pop_front();
        }
    }
}

impl Server {
    pub(super) fn receive(&mut self, pdu: &Pdu<BytesMut>, listener: &Listener) {
        let call_id = pdu.call_id();
        match pdu.ptype() {
            PacketType::Bind | PacketType::AlterContext => {
                let bind = BindRequest::from_pdu(pdu.view()).expect("a forwarded bind parses");
                let mut proposed = Vec::new();
                for c in bind.contexts() {
                    let (id, s) = (c.id(), c.abstract_syntax());
                    assert!(listener.allows(&s), "{s} reached the backend");
                    match self.contexts.iter().find(|(i, ..)| *i == id) {
                        Some((_, t, _)) => assert_eq!(*t, s, "context {id} redefined"),
                        None => self.contexts.push((id, s, false)),
                    }
                    proposed.push((id, s));
                }
                let kind = if pdu.ptype() == PacketType::Bind {
                    Kind::Bind
                } else {
                    Kind::AlterContext
                };
                self.calls.push_back(ServerCall {
                    call_id,
                    kind,
                    context: 0,
                    opnum: 0,
                    complete: true,
                    proposed,
                });
            }
            PacketType::Request => {
                let req = Request::from_pdu(pdu.view()).expect("a forwarded request parses");
                let receiving = self
                    .calls
                    .iter_mut()
                    .find(|c| c.call_id == call_id && c.kind == Kind::Request && !c.complete);
                if let Some(call) = receiving {
                    assert_eq!(req.context_id(), call.context, "a fragment changed context");
                    call.complete = pdu.ends_call(true);
                    return;
                }
                assert!(
                    pdu.flags() & flags::FIRST_FRAG != 0 || pdu.ends_call(false),
                    "a later fragment of call {call_id}, which the backend never began"
                );
                let ctx = req.context_id();
                let Some(&(_, s, _)) = self.contexts.iter().find(|&&(i, _, ok)| i == ctx && ok)
                else {
                    panic!("call {call_id} on context {ctx}, which the backend has not accepted");
                };
                assert!(
                    listener.allows_opnum(&s, req.opnum()),
                    "operation {} of {s} reached the backend",
                    req.opnum()
                );
                self.calls.push_back(ServerCall {
                    call_id,
                    kind: Kind::Request,
                    context: ctx,
                    opnum: req.opnum(),
                    complete: pdu.ends_call(false),
                    proposed: Vec::new(),
                });
            }
            _ => {}
        }
    }

    /// The PDUs answering `call`: `choice` picks acceptances, a nak or a fault, and how
    /// many fragments a response has.
    pub(super) fn answer(
        &mut self,
        call: &ServerCall,
        choice: u8,
        endian: Endian,
        listener: &Listener,
    ) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        match call.kind {
            Kind::Bind | Kind::AlterContext => {
                if call.kind == Kind::Bind && choice % 16 == 0 {
                    encode_bind_nak(&mut out, endian, call.call_id, 0).expect("a nak");
                    return vec![out];
                }
                // Each context accepted unless its bit says otherwise; an acceptance takes
                // effect as the answer is sent, which is now (it is one PDU).
                let results: Vec<ResultEntry> = call
                    .proposed
                    .iter()
                    .enumerate()
                    .map(|(i, &(id, _))| match choice >> (i + 4) & 1 {
                        0 => {
                            for c in self.contexts.iter_mut().filter(|c| c.0 == id) {
                                c.2 = true;
                            }
                            ResultEntry {
                                result: ContextResult::Acceptance,
                                reason: 0,
                                transfer_syntax: SyntaxId::NDR,
                            }
                        }
                        _ => ResultEntry::rejected(reason::ABSTRACT_SYNTAX_NOT_SUPPORTED),
                    })
                    .collect();
                let fields = BindAckFields {
                    ptype: match call.kind {
                        Kind::Bind => PacketType::BindAck,
                        _ => PacketType::AlterContextResp,
                    },
                    endian,
                    call_id: call.call_id,
                    max_xmit_frag: 5840,
                    max_recv_frag: 5840,
                    assoc_group_id: 0x1234,
                    secondary_addr: b"49154\0",
                    results: &results,
                };
                encode_bind_ack(&mut out, &fields).expect("a bind_ack");
                vec![out]
            }
            Kind::Request if choice % 8 == 0 => {
                let fault = status::NCA_S_FAULT_OTHER;
                encode_fault(&mut out, endian, call.call_id, call.context, fault).expect("a fault");
                vec![out]
            }
            Kind::Request => {
                let mut stub = Vec::new();
                if matches!(listener, Listener::Epm) && carries_towers(call.opnum) {
                    let answer = Answer {
                        lookup: call.opnum == opnum::LOOKUP,
                        handle: &[0; 20],
                        max_count: 4,
                        entries: &[],
                        status: EPT_S_NOT_REGISTERED,
                    };
                    encode_answer(&mut stub, endian, Syntax::Ndr, &answer);
                } else {
                    stub.resize(40, choice);
                }
                // One to three fragments.
                let n = 1 + usize::from(choice / 8 % 3);
                let size = stub.len().div_ceil(n);
                let chunks: Vec<&[u8]> = stub.chunks(size).collect();
                chunks
                    .iter()
                    .enumerate()
                    .map(|(i, chunk)| {
                        let mut pdu = Vec::new();
                        encode_response(&mut pdu, endian, call.call_id, call.context, chunk)
                            .expect("a response");
                        let first = if i == 0 { flags::FIRST_FRAG } else { 0 };
                        let last = if i + 1 == chunks.len() {
                            flags::LAST_FRAG
                        } else {
                            0
                        };
                        pdu[3] = first | last;
                        pdu
                    })
                    .collect()
            }
        }
    }
}
