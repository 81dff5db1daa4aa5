//! The little DCE/RPC every load and the backend speak, built on rpcpin's wire layer.
//!
//! The bench interface has three operations, chosen by the client:
//!
//! | opnum | name   | the backend                                                          |
//! |-------|--------|----------------------------------------------------------------------|
//! | 0     | echo   | answers with a response carrying the same stub                       |
//! | 1     | sink   | answers nothing and discards every later byte (bulk upload)          |
//! | 2     | source | sends response PDUs of the `frag_length` in the stub until closed    |
//!
//! and the backend's endpoint mapper answers ept_map (opnum 3 of the EPM interface) with one
//! ncacn_ip_tcp tower for the bench interface pointing at the service port.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};

use anyhow::{bail, ensure, Context};
use rpcpin::wire::bind::{
    encode_bind, encode_bind_ack, reason, BindAck, BindAckFields, BindRequest, ContextProposal,
    ContextResult, ResultEntry,
};
use rpcpin::wire::call::{encode_request, encode_response, response_stub_range, Request};
use rpcpin::wire::epm::{encode_answer, encode_map_request, walk_map_response, Answer, EntryRef};
use rpcpin::wire::frame::{next_pdu_len, MAX_FRAG_LEN};
use rpcpin::wire::ndr::Syntax;
use rpcpin::wire::tower::{encode_tcp_tower, Tower};
use rpcpin::wire::{Endian, PacketType, Pdu, SyntaxId, HEADER_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The interface the backend serves and rpcpin pins.
pub const BENCH: SyntaxId = SyntaxId::new(
    rpcpin::wire::uuid!("5d2f6b1c-9a3e-4c7b-8e21-70b1e4c0a5d9"),
    1,
    0,
);
/// Its UUID as rpcpin's configuration takes it.
pub const BENCH_UUID: &str = "5d2f6b1c-9a3e-4c7b-8e21-70b1e4c0a5d9";

/// Bench interface operations.
pub mod op {
    /// Echo the stub back.
    pub const ECHO: u16 = 0;
    /// Discard everything from here on.
    pub const SINK: u16 = 1;
    /// Stream responses of the size in the stub.
    pub const SOURCE: u16 = 2;
}

/// ept_map's operation number on the endpoint mapper interface.
pub const EPT_MAP: u16 = rpcpin::wire::epm::opnum::MAP;

const LE: Endian = Endian::Little;
/// Request header (16) + alloc_hint, p_cont_id, opnum (8).
pub const REQUEST_OVERHEAD: usize = HEADER_LEN + 8;
/// Response header (16) + alloc_hint, p_cont_id, cancel_count, reserved (8).
pub const RESPONSE_OVERHEAD: usize = HEADER_LEN + 8;

/// A bind proposing `interface` over NDR, with 65,535-byte fragments both ways.
pub fn bind(interface: SyntaxId, call_id: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(72);
    let ctx = [ContextProposal {
        id: 0,
        abstract_syntax: interface,
        transfer_syntaxes: &[SyntaxId::NDR],
    }];
    encode_bind(&mut out, LE, call_id, MAX_FRAG_LEN as u16, &ctx).expect("a bind fits");
    out
}

/// The backend's answer to a bind: every context offering NDR is accepted with it.
pub fn bind_ack_for(bind: &[u8], secondary_addr: &[u8]) -> anyhow::Result<Vec<u8>> {
    let req = BindRequest::parse(bind)?;
    let results: Vec<ResultEntry> = req
        .contexts()
        .map(|c| {
            if c.transfer_syntaxes().any(|ts| ts == SyntaxId::NDR) {
                ResultEntry {
                    result: ContextResult::Acceptance,
                    reason: 0,
                    transfer_syntax: SyntaxId::NDR,
                }
            } else {
                ResultEntry::rejected(reason::PROPOSED_TRANSFER_SYNTAXES_NOT_SUPPORTED)
            }
        })
        .collect();
    let mut out = Vec::with_capacity(64);
    encode_bind_ack(
        &mut out,
        &BindAckFields {
            ptype: PacketType::BindAck,
            endian: req.pdu().endian(),
            call_id: req.pdu().call_id(),
            max_xmit_frag: MAX_FRAG_LEN as u16,
            max_recv_frag: MAX_FRAG_LEN as u16,
            assoc_group_id: 0x1234,
            secondary_addr,
            results: &results,
        },
    )?;
    Ok(out)
}

/// Checks that a bind_ack accepted the first context.
pub fn check_bind_ack(pdu: &[u8]) -> anyhow::Result<()> {
    let ack = BindAck::parse(pdu).context("expected a bind_ack")?;
    match ack.results().next() {
        Some(r) if r.result == ContextResult::Acceptance => Ok(()),
        other => bail!("bind not accepted: {other:?}"),
    }
}

/// A whole request PDU (first and last fragment) on context 0.
pub fn request(call_id: u32, opnum: u16, stub: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(REQUEST_OVERHEAD + stub.len());
    encode_request(&mut out, LE, call_id, 0, opnum, stub).expect("stub fits a fragment");
    out
}

/// Appends a whole response PDU (first and last fragment) on context 0.
pub fn push_response(out: &mut Vec<u8>, endian: Endian, call_id: u32, stub: &[u8]) {
    encode_response(out, endian, call_id, 0, stub).expect("stub fits a fragment");
}

/// `count` back-to-back PDUs of exactly `frag_len` bytes each, made by `one` from a stub
/// of the right size; call ids count up from 1.
fn batch(frag_len: usize, count: usize, one: impl Fn(&mut Vec<u8>, u32, &[u8])) -> Vec<u8> {
    assert!((REQUEST_OVERHEAD..=MAX_FRAG_LEN).contains(&frag_len));
    let stub = vec![0x5a; frag_len - REQUEST_OVERHEAD];
    let mut out = Vec::with_capacity(frag_len * count);
    for i in 0..count {
        one(&mut out, i as u32 + 1, &stub);
    }
    out
}

/// Request PDUs (opnum sink) for a bulk upload, enough for one write of about `write`
/// bytes (at least one PDU). The backend never answers them, so each is a `maybe` call
/// (PFC_MAYBE): a proxy that bounds the calls awaiting an answer (rpcpin does) must not
/// count them.
pub fn sink_batch(frag_len: usize, write: usize) -> Vec<u8> {
    batch(
        frag_len,
        pdus_per_write(frag_len, write),
        |out, id, stub| {
            let at = out.len();
            encode_request(out, LE, id, 0, op::SINK, stub).expect("fits");
            out[at + 3] |= rpcpin::wire::pdu::flags::MAYBE;
        },
    )
}

/// Response PDUs for a bulk download, enough for one write of about `write` bytes.
pub fn source_batch(endian: Endian, frag_len: usize, write: usize) -> Vec<u8> {
    batch(
        frag_len,
        pdus_per_write(frag_len, write),
        |out, id, stub| push_response(out, endian, id, stub),
    )
}

/// How many PDUs of `frag_len` bytes make one write of about `write` bytes: at least one.
fn pdus_per_write(frag_len: usize, write: usize) -> usize {
    (write / frag_len).max(1)
}

/// Gives every PDU of a batch of same-sized PDUs a new call id, as a real client would.
pub fn renumber(batch: &mut [u8], frag_len: usize, next_call_id: &mut u32) {
    for pdu in batch.chunks_exact_mut(frag_len) {
        pdu[12..16].copy_from_slice(&next_call_id.to_le_bytes());
        *next_call_id = next_call_id.wrapping_add(1);
    }
}

/// The largest write a source request may ask for.
pub const MAX_WRITE: usize = 4 << 20;

/// The request asking the backend to stream responses of `frag_len` bytes in writes of
/// about `write` bytes.
pub fn source_request(frag_len: usize, write: usize) -> Vec<u8> {
    let mut stub = (frag_len as u32).to_le_bytes().to_vec();
    stub.extend((write as u32).to_le_bytes());
    request(1, op::SOURCE, &stub)
}

/// The frag_len and write size a source request asks for.
pub fn source_params(req: &Request<'_>, pdu: &[u8]) -> anyhow::Result<(usize, usize)> {
    let stub = &pdu[req.stub_range()];
    ensure!(stub.len() >= 8, "source request without sizes");
    let word = |at: usize| u32::from_le_bytes(stub[at..at + 4].try_into().unwrap()) as usize;
    let (frag_len, write) = (word(0), word(4));
    ensure!(
        (RESPONSE_OVERHEAD..=MAX_FRAG_LEN).contains(&frag_len),
        "source size {frag_len} out of range"
    );
    ensure!(
        (1..=MAX_WRITE).contains(&write),
        "source write size {write} out of range"
    );
    Ok((frag_len, write))
}

/// The ept_map request a client sends for the bench interface.
pub fn ept_map_request(call_id: u32) -> Vec<u8> {
    let mut query = Vec::new();
    encode_tcp_tower(&mut query, BENCH, 0, Ipv4Addr::UNSPECIFIED);
    let mut stub = Vec::new();
    encode_map_request(&mut stub, LE, &query, 4);
    request(call_id, EPT_MAP, &stub)
}

/// The stub of the backend's ept_map answer: one tower, the bench interface at `port`.
pub fn ept_map_answer_stub(port: u16) -> Vec<u8> {
    let mut tower = Vec::new();
    encode_tcp_tower(&mut tower, BENCH, port, Ipv4Addr::LOCALHOST);
    let mut stub = Vec::new();
    let entries = [EntryRef {
        object: &[],
        annotation: &[],
        tower: Some(&tower),
    }];
    let answer = Answer {
        lookup: false,
        handle: &[0; 20],
        max_count: 4,
        entries: &entries,
        status: 0,
    };
    encode_answer(&mut stub, LE, Syntax::Ndr, &answer);
    stub
}

/// The TCP port in the first tower of an ept_map response PDU.
pub fn ept_map_port(pdu: &[u8]) -> anyhow::Result<u16> {
    let p = Pdu::new_checked(pdu)?;
    ensure!(
        p.ptype() == PacketType::Response,
        "expected a response, got {:?}",
        p.ptype()
    );
    let stub = &pdu[response_stub_range(pdu)?];
    let walk = walk_map_response(stub, p.endian(), Syntax::Ndr)?;
    ensure!(walk.status == 0, "ept_map status {:#x}", walk.status);
    let range = walk
        .towers
        .first()
        .context("ept_map answer without a tower")?;
    let tower = Tower::new_checked(&stub[range.clone()])?;
    ensure!(
        tower.interface() == Some(BENCH),
        "tower for another interface"
    );
    tower.tcp_port().context("tower without a TCP port")
}

/// A blocking client connection, for the one-connection loads (bulk, latency).
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Conn {
    /// Connects and binds to the bench interface.
    pub fn bind(addr: &str) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream,
            buf: vec![0; 2 * MAX_FRAG_LEN],
            start: 0,
            end: 0,
        };
        conn.stream.write_all(&bind(BENCH, 1))?;
        let ack = conn.next_pdu()?.to_vec();
        check_bind_ack(&ack)?;
        Ok(conn)
    }

    /// The next whole PDU; it borrows the connection's buffer.
    pub fn next_pdu(&mut self) -> anyhow::Result<&[u8]> {
        loop {
            if let Some(len) = next_pdu_len(&self.buf[self.start..self.end], MAX_FRAG_LEN)? {
                let pdu = &self.buf[self.start..self.start + len];
                self.start += len;
                return Ok(pdu);
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let n = self.stream.read(&mut self.buf[self.end..])?;
            if n == 0 {
                bail!("connection closed by the peer");
            }
            self.end += n;
        }
    }

    /// Bytes read past the last PDU returned.
    pub fn leftover(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
}

/// Reads one whole PDU from an async stream into `buf` (which may hold bytes already);
/// returns its length, the PDU being `buf[..len]`, or `None` when the peer closed the
/// connection between PDUs.
pub async fn read_pdu<R: AsyncReadExt + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> anyhow::Result<Option<usize>> {
    loop {
        if let Some(len) = next_pdu_len(buf, MAX_FRAG_LEN)? {
            return Ok(Some(len));
        }
        if r.read_buf(buf).await? == 0 {
            ensure!(buf.is_empty(), "connection closed inside a PDU");
            return Ok(None);
        }
    }
}

/// As [`read_pdu`], where the peer closing is an error.
pub async fn expect_pdu<R: AsyncReadExt + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> anyhow::Result<usize> {
    read_pdu(r, buf)
        .await?
        .context("connection closed by the peer")
}

/// Connects, binds to `interface` and waits for the accepting bind_ack.
pub async fn bind_async(
    addr: &str,
    interface: SyntaxId,
) -> anyhow::Result<(tokio::net::TcpStream, Vec<u8>)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(&bind(interface, 1)).await?;
    let mut buf = Vec::with_capacity(256);
    let len = expect_pdu(&mut s, &mut buf).await?;
    check_bind_ack(&buf[..len])?;
    buf.drain(..len);
    Ok((s, buf))
}

/// Walks a stream of PDUs chunk by chunk without copying it: checks each header and counts
/// whole PDUs. Used where a side only counts bytes (bulk), so that a relay that broke the
/// framing is noticed.
#[derive(Debug, Default)]
pub struct Framer {
    header: [u8; HEADER_LEN],
    have: usize,
    left_in_pdu: usize,
    /// Whole PDUs seen.
    pub pdus: u64,
}

impl Framer {
    /// Consumes one chunk of the stream.
    pub fn feed(&mut self, mut chunk: &[u8]) -> anyhow::Result<()> {
        while !chunk.is_empty() {
            if self.left_in_pdu > 0 {
                let n = self.left_in_pdu.min(chunk.len());
                self.left_in_pdu -= n;
                chunk = &chunk[n..];
                if self.left_in_pdu == 0 {
                    self.pdus += 1;
                }
                continue;
            }
            let n = (HEADER_LEN - self.have).min(chunk.len());
            self.header[self.have..self.have + n].copy_from_slice(&chunk[..n]);
            self.have += n;
            chunk = &chunk[n..];
            if self.have == HEADER_LEN {
                let len = rpcpin::wire::pdu::check_header(&self.header)?;
                self.have = 0;
                self.left_in_pdu = len - HEADER_LEN;
                if self.left_in_pdu == 0 {
                    self.pdus += 1;
                }
            }
        }
        Ok(())
    }
}
