//! Moving PDUs between a client and a backend, both directions in one future (`flow`: one
//! direction), with a policy that judges every PDU before any of it is forwarded: on its
//! head, the rest then forwarded (or dropped) as it arrives, or whole when it asks.

mod flow;

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use anyhow::anyhow;
use bytes::BytesMut;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use super::facts::Facts;
use crate::pdu_stream::PduReader;
use crate::wire::Pdu;
use flow::Flow;

/// What a policy wants done with the PDUs it sees: those it forwards (none, the same, or
/// others) are gathered into one batch for the receiving side; answers for the sender go
/// in `reply`.
#[derive(Debug, Default)]
pub struct Outbox {
    /// The batch for the receiving side: PDUs cut side by side from one read buffer are
    /// joined back without copying.
    forward: BytesMut,
    /// PDUs to send back to the sender, between the PDUs the other side sends it.
    pub reply: Vec<BytesMut>,
}

impl Outbox {
    /// Adds `pdu` to the batch for the receiving side.
    pub fn forward(&mut self, pdu: BytesMut) {
        if self.forward.is_empty() {
            self.forward = pdu;
        } else {
            self.forward.unsplit(pdu);
        }
    }

    /// The batch so far.
    pub fn forwarded(&self) -> &[u8] {
        &self.forward
    }
}

/// What a policy makes of a PDU from its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// Wait for the whole PDU, and decide on it then.
    Whole,
    /// Forward it, header and body, as its bytes arrive.
    Forward,
    /// Drop it, header and body, as its bytes arrive.
    Drop,
}

/// What a listener does with the PDUs of an established connection; each comes with its
/// header checked once, by the reader.
///
/// A PDU is shown first by its head ([`crate::wire::pdu::head_of`]: the header and a call's
/// fixed fields), once, as soon as that is there. On [`Head::Forward`] or [`Head::Drop`] the
/// policy is done with it (it has noted what it needs, made the answers it makes) and never
/// sees the rest; on [`Head::Whole`], the default, it sees the whole PDU once it has come.
pub trait Policy {
    /// Decides on a PDU from the client.
    fn request(&mut self, pdu: Pdu<BytesMut>, out: &mut Outbox) -> anyhow::Result<()>;
    /// Decides on a PDU from the backend.
    fn answer(&mut self, pdu: Pdu<BytesMut>, out: &mut Outbox) -> anyhow::Result<()>;
    /// Decides on a PDU from the client from its head.
    fn request_head(&mut self, head: Pdu<&[u8]>, out: &mut Outbox) -> anyhow::Result<Head> {
        let _ = (head, out);
        Ok(Head::Whole)
    }
    /// Decides on a PDU from the backend from its head.
    fn answer_head(&mut self, head: Pdu<&[u8]>, out: &mut Outbox) -> anyhow::Result<Head> {
        let _ = (head, out);
        Ok(Head::Whole)
    }
    /// What the policy learned about the connection, for its closing summary.
    fn facts(&self) -> Facts {
        Facts::default()
    }
}

/// Passes a whole PDU (from the client when `from_client`) through `policy` as the relay
/// does, head first: for those who hold PDUs whole (the sequence check).
#[cfg(any(test, fuzzing))]
pub fn pass_whole<P: Policy + ?Sized>(
    policy: &mut P,
    from_client: bool,
    pdu: Pdu<BytesMut>,
    out: &mut Outbox,
) -> anyhow::Result<()> {
    use crate::wire::pdu::{head_of, HEAD_LEN};
    let mut copy = [0; HEAD_LEN];
    let head = head_of(pdu.as_bytes(), &mut copy)?;
    let verdict = match from_client {
        true => policy.request_head(head, out)?,
        false => policy.answer_head(head, out)?,
    };
    match (verdict, from_client) {
        (Head::Forward, _) => out.forward(pdu.into_inner()),
        (Head::Drop, _) => {}
        (Head::Whole, true) => policy.request(pdu, out)?,
        (Head::Whole, false) => policy.answer(pdu, out)?,
    }
    Ok(())
}

/// How a relay ended, and how many bytes went each way.
#[derive(Debug)]
pub struct Relayed {
    /// "client closed" or "backend closed", or the error, naming its direction.
    pub ended: anyhow::Result<&'static str>,
    /// Bytes from the client forwarded to the backend, the handshake included.
    pub from_client: u64,
    /// Bytes written to the client.
    pub to_client: u64,
    /// What the policy learned about the connection.
    pub facts: Facts,
}

/// Relays PDUs both ways until the backend closes, or the client closes and the backend
/// has answered what it got (the half-close is passed on), or either side fails or both
/// stay silent for `idle`. The policy sees every PDU, by its head or whole; a PDU it
/// judged on its head is forwarded (or dropped) as its bytes arrive, so a large PDU's head
/// does not wait for its tail. Its replies go back to the sender between the other side's
/// PDUs, never inside one.
///
/// A hand-written future rather than two `async` loops: a connection that waits holds its
/// two sockets, one timer and a few words per direction — no read buffer, and no write or
/// timeout futures (which made an idle connection three times larger).
pub struct Relay<C, B, P> {
    client: PduReader<C>,
    backend: PduReader<B>,
    policy: P,
    /// Client to backend.
    up: Flow,
    /// Backend to client.
    down: Flow,
    idle: Duration,
    /// One timer for the connection, moved only when it fires (not on every PDU).
    timer: Pin<Box<Sleep>>,
    /// When a byte last moved either way.
    active: Instant,
}

impl<C, B, P> Relay<C, B, P> {
    /// A relay between `client` and `backend`, after `forwarded` bytes of the client's
    /// handshake went to the backend.
    pub fn new(
        client: PduReader<C>,
        backend: PduReader<B>,
        policy: P,
        idle: Duration,
        forwarded: u64,
    ) -> Relay<C, B, P> {
        let mut up = Flow::default();
        up.moved = forwarded;
        up.shutdown_on_close = true;
        Relay {
            client,
            backend,
            policy,
            up,
            down: Flow::default(),
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            active: Instant::now(),
        }
    }
}

impl<C, B, P> Relay<C, B, P> {
    /// Counts the bytes relayed from now on (and those the handshake forwarded) in these
    /// counters too.
    pub fn count_into(&mut self, from_client: Counter, to_client: Counter) {
        from_client.inc_by(self.up.moved);
        self.up.counter = Some(from_client);
        self.down.counter = Some(to_client);
    }
}

impl<C, B, P> Future for Relay<C, B, P>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
    P: Policy + Unpin,
{
    type Output = Relayed;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Relayed> {
        let ended = ready!(self.poll_relay(cx));
        Poll::Ready(Relayed {
            ended,
            from_client: self.up.moved,
            to_client: self.down.moved,
            facts: self.policy.facts(),
        })
    }
}

impl<C, B, P> Relay<C, B, P>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
    P: Policy,
{
    fn poll_relay(&mut self, cx: &mut Context<'_>) -> Poll<anyhow::Result<&'static str>> {
        let r = self;
        let policy = &mut r.policy;
        if !r.up.half_close_passed {
            let up = r.up.poll(
                cx,
                (&mut r.client, &mut r.backend),
                policy,
                true,
                Some(&mut r.down.replies),
                &mut r.active,
            );
            if let Poll::Ready(Err(e)) = up {
                return Poll::Ready(Err(e.context("client → backend")));
            }
        }
        let up_waits_for_down = !r.down.replies.is_empty();
        let down = r.down.poll(
            cx,
            (&mut r.backend, &mut r.client),
            policy,
            false,
            // Once the backend's side is shut, answers made for it have nowhere to go.
            (!r.up.half_close_passed).then_some(&mut r.up.replies),
            &mut r.active,
        );
        match down {
            Poll::Ready(Ok(())) => {
                let closed = if r.up.half_close_passed {
                    "client closed"
                } else {
                    "backend closed"
                };
                return Poll::Ready(Ok(closed));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e.context("backend → client"))),
            Poll::Pending => {}
        }
        // Poll `up` again when `down` just made replies for it to write, or wrote the
        // replies `up` made and waits to read on after.
        let unblocked = up_waits_for_down && r.down.replies.is_empty();
        if !r.up.half_close_passed && (unblocked || !r.up.replies.is_empty()) {
            cx.waker().wake_by_ref();
        }
        r.poll_timer(cx)
    }

    /// Fails the relay when nothing moved either way for `idle`, or a receiver has not
    /// taken its bytes for `idle`; otherwise sets the timer for the next moment that could
    /// be true.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<anyhow::Result<&'static str>> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            let now = Instant::now();
            let stalled = [
                (&self.up.pending, self.up.writing_since, "backend"),
                (&self.down.pending, self.down.writing_since, "client"),
            ]
            .into_iter()
            .filter(|(pending, ..)| !pending.is_empty());
            let mut next = self.active + self.idle;
            for (_, since, receiver) in stalled {
                if now >= since + self.idle {
                    return Poll::Ready(Err(anyhow!(
                        "the {receiver} did not read for {:?}",
                        self.idle
                    )));
                }
                next = next.min(since + self.idle);
            }
            if now >= self.active + self.idle {
                return Poll::Ready(Err(anyhow!("idle for {:?}", self.idle)));
            }
            self.timer.as_mut().reset(next);
        }
    }
}

#[cfg(test)]
mod tests;
