//! rpcpin's own association with a server's endpoint mapper: one bind, then ept_map,
//! ept_lookup and ept_lookup_handle_free calls, each answer gathered from its fragments.
//! Every wait is bounded by the caller's timeout around the whole conversation.

use anyhow::{bail, Context};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::pdu_stream::PduReader;
use crate::wire::bind::{encode_bind, BindAck, ContextProposal, ContextResult};
use crate::wire::call::{encode_request, Response};
use crate::wire::epm::{
    encode_lookup_request, encode_map_query, opnum, LookupQuery, MapQuery, EPM, HANDLE_LEN,
};
use crate::wire::ndr::Syntax;
use crate::wire::{Endian, PacketType, SyntaxId, Uuid};

/// rpcpin's own fragments are small; this bounds what it accepts back.
pub(super) const MAX_FRAG: u16 = 5840;
/// How many towers rpcpin asks for: Windows asks for 4.
const MAX_TOWERS: u32 = 4;
/// The most fragments one answer may take: far more than a page of entries needs.
const MAX_FRAGMENTS: usize = 64;

/// An association with a server's endpoint mapper (NDR, little-endian requests).
pub(super) struct EpmClient {
    rd: PduReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    /// The last call's id: the bind's is 1, and so is the first request's, as Windows
    /// numbers them.
    call_id: u32,
}

/// An answer's stub and the byte order the server wrote it in.
pub(super) struct Answer {
    pub(super) stub: Vec<u8>,
    pub(super) endian: Endian,
}

impl EpmClient {
    /// Binds to the endpoint mapper on `stream`.
    pub(super) async fn bind(stream: TcpStream) -> anyhow::Result<EpmClient> {
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        let mut client = EpmClient {
            rd: PduReader::new(rd, usize::from(MAX_FRAG)),
            wr,
            call_id: 0,
        };
        let mut out = Vec::with_capacity(72);
        let ctx = [ContextProposal {
            id: 0,
            abstract_syntax: EPM,
            transfer_syntaxes: &[SyntaxId::NDR],
        }];
        encode_bind(&mut out, Endian::Little, 1, MAX_FRAG, &ctx)?;
        client.wr.write_all(&out).await?;
        let ack = client
            .rd
            .next()
            .await
            .context("reading the backend's bind_ack")?;
        match BindAck::from_pdu(ack.view()) {
            Ok(a) if a.results().next().map(|r| r.result) == Some(ContextResult::Acceptance) => {
                Ok(client)
            }
            Ok(_) => bail!("the backend's endpoint mapper refused rpcpin's bind"),
            Err(_) => bail!("the backend answered rpcpin's bind with a {}", ack.ptype()),
        }
    }

    /// ept_map for the towers of `tower` registered with `object` (at most 4).
    pub(super) async fn map(
        &mut self,
        object: Option<Uuid>,
        tower: &[u8],
    ) -> anyhow::Result<Answer> {
        let mut stub = Vec::with_capacity(64 + tower.len());
        let query = MapQuery {
            auth: false,
            object: Some(object.unwrap_or_default()),
            tower,
            sid: None,
            handle: &[0; HANDLE_LEN],
            max_towers: MAX_TOWERS,
        };
        encode_map_query(&mut stub, Endian::Little, Syntax::Ndr, &query);
        self.call(opnum::MAP, &stub, "ept_map").await
    }

    /// One page of ept_lookup over every entry: at most `max_ents`, from `handle` on.
    pub(super) async fn lookup(
        &mut self,
        handle: &[u8; HANDLE_LEN],
        max_ents: u32,
    ) -> anyhow::Result<Answer> {
        let mut stub = Vec::with_capacity(64);
        let query = LookupQuery {
            inquiry_type: crate::wire::epm::request::inquiry::ALL_ELTS,
            object: None,
            interface: None,
            vers_option: crate::wire::epm::request::vers_option::ALL,
            handle,
            max_ents,
        };
        encode_lookup_request(&mut stub, Endian::Little, Syntax::Ndr, &query);
        self.call(opnum::LOOKUP, &stub, "ept_lookup").await
    }

    /// ept_lookup_handle_free for `handle`, answer ignored.
    pub(super) async fn free(&mut self, handle: &[u8; HANDLE_LEN]) -> anyhow::Result<()> {
        self.call(opnum::LOOKUP_HANDLE_FREE, handle, "ept_lookup_handle_free")
            .await
            .map(drop)
    }

    /// Ends the association.
    pub(super) async fn close(mut self) {
        let _ = self.wr.shutdown().await;
    }

    /// Calls `op` with `stub` and gathers the answer's stub.
    async fn call(&mut self, op: u16, stub: &[u8], what: &str) -> anyhow::Result<Answer> {
        self.call_id += 1;
        let mut out = Vec::with_capacity(24 + stub.len());
        encode_request(&mut out, Endian::Little, self.call_id, 0, op, stub)?;
        self.wr.write_all(&out).await?;
        let mut answer = Vec::new();
        for fragment in 0..MAX_FRAGMENTS {
            let pdu = self
                .rd
                .next()
                .await
                .with_context(|| format!("reading the backend's {what} answer"))?;
            match pdu.ptype() {
                PacketType::Response if pdu.call_id() == self.call_id => {}
                PacketType::Fault => {
                    bail!("the backend's endpoint mapper answered {what} with a fault")
                }
                other => bail!("the backend answered {what} with a {other}"),
            }
            answer.extend_from_slice(Response::from_pdu(pdu.view())?.stub());
            if pdu.ends_call(fragment > 0) {
                let endian = pdu.endian();
                return Ok(Answer {
                    stub: answer,
                    endian,
                });
            }
        }
        bail!("the backend's {what} answer has more than {MAX_FRAGMENTS} fragments")
    }
}
