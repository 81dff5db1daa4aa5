//! Moving PDUs between a client and a backend, both directions in one future, with a
//! policy that sees every PDU before it is forwarded.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use anyhow::anyhow;
use bytes::{Buf, BytesMut};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use super::facts::Facts;
use crate::pdu_stream::{PduReader, ReadError};
use crate::wire::Pdu;

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

/// What a listener does with the PDUs of an established connection; each comes with its
/// header checked once, by the reader.
pub trait Policy {
    /// Decides on a PDU from the client.
    fn request(&mut self, pdu: Pdu<BytesMut>, out: &mut Outbox) -> anyhow::Result<()>;
    /// Decides on a PDU from the backend.
    fn answer(&mut self, pdu: Pdu<BytesMut>, out: &mut Outbox) -> anyhow::Result<()>;
    /// What the policy learned about the connection, for its closing summary.
    fn facts(&self) -> Facts {
        Facts::default()
    }
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
/// stay silent for `idle`. The policy sees every PDU; its replies go back to the sender
/// between the other side's PDUs.
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
        let up = Flow {
            moved: forwarded,
            shutdown_on_close: true,
            ..Flow::default()
        };
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

/// One direction: what was read and judged but not yet written, and where it stands.
struct Flow {
    /// Bytes for the receiver that are not written yet: one batch at a time, so nothing
    /// more is read while the receiver is slow.
    pending: BytesMut,
    /// Answers the other direction's hook made for this direction's receiver.
    replies: Vec<BytesMut>,
    /// Bytes written to the receiver, for the metrics.
    counter: Option<Counter>,
    /// When the receiver last took bytes, or `pending` filled.
    writing_since: Instant,
    /// The hook's error, reported once what it forwarded before it is written.
    failed: Option<anyhow::Error>,
    /// The sender closed between PDUs: pass the half-close on once `pending` is written.
    sender_closed: bool,
    /// Whether the half-close is passed on with a `shutdown`: the relay ends when the
    /// backend closes, and closing the client's socket then says it.
    shutdown_on_close: bool,
    /// The half-close was passed on.
    half_close_passed: bool,
    moved: u64,
}

impl Default for Flow {
    fn default() -> Flow {
        Flow {
            pending: BytesMut::new(),
            replies: Vec::new(),
            counter: None,
            writing_since: Instant::now(),
            failed: None,
            sender_closed: false,
            shutdown_on_close: false,
            half_close_passed: false,
            moved: 0,
        }
    }
}

impl Flow {
    /// Moves what it can from `from` to `to`; `Ready(Ok)` once the half-close is passed on.
    /// Replies for the sender go to `back`, the other direction's queue (dropped when there
    /// is none); while that queue is not empty nothing more is read, so a sender that does
    /// not read its answers is not answered without bound.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        (from, to): (&mut PduReader<R>, &mut PduReader<W>),
        mut inspect: impl FnMut(Pdu<BytesMut>, &mut Outbox) -> anyhow::Result<()>,
        mut back: Option<&mut Vec<BytesMut>>,
        active: &mut Instant,
    ) -> Poll<anyhow::Result<()>>
    where
        R: AsyncRead + AsyncWrite + Unpin,
        W: AsyncRead + AsyncWrite + Unpin,
    {
        loop {
            if !self.pending.is_empty() {
                let n = ready!(Pin::new(to.get_mut()).poll_write(cx, &self.pending))
                    .map_err(|e| anyhow!(e).context("write failed"))?;
                if n == 0 {
                    return Poll::Ready(Err(anyhow!("the receiver closed")));
                }
                self.pending.advance(n);
                if self.pending.is_empty() {
                    // Let go of the read buffer it was cut from.
                    self.pending = BytesMut::new();
                }
                self.moved += n as u64;
                if let Some(c) = &self.counter {
                    c.inc_by(n as u64);
                }
                *active = Instant::now();
                self.writing_since = *active;
                continue;
            }
            if !self.replies.is_empty() {
                let mut replies = Outbox::default();
                self.replies.drain(..).for_each(|r| replies.forward(r));
                self.stage(replies.forward);
                continue;
            }
            if let Some(e) = self.failed.take() {
                return Poll::Ready(Err(e));
            }
            if self.sender_closed {
                if self.shutdown_on_close {
                    // The receiver may still answer what it got.
                    let _ = ready!(Pin::new(to.get_mut()).poll_shutdown(cx));
                }
                self.half_close_passed = true;
                return Poll::Ready(Ok(()));
            }
            let mut out = Outbox::default();
            while let Some(pdu) = from.buffered().transpose() {
                if let Err(e) = pdu
                    .map_err(anyhow::Error::from)
                    .and_then(|pdu| inspect(pdu, &mut out))
                {
                    self.failed = Some(e);
                    break;
                }
            }
            let waiting = match back.as_deref_mut() {
                Some(back) => {
                    back.append(&mut out.reply);
                    !back.is_empty()
                }
                None => false,
            };
            if !out.forward.is_empty() {
                self.stage(out.forward);
                continue;
            }
            if self.failed.is_some() {
                continue;
            }
            if waiting {
                // Read on once the sender has taken its answers.
                return Poll::Pending;
            }
            match ready!(from.poll_fill(cx)) {
                Ok(()) => *active = Instant::now(),
                Err(ReadError::Closed) => self.sender_closed = true,
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }

    /// Makes `batch` the next bytes to write.
    fn stage(&mut self, batch: BytesMut) {
        self.pending = batch;
        self.writing_since = Instant::now();
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
                |pdu, out| policy.request(pdu, out),
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
            |pdu, out| policy.answer(pdu, out),
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
mod tests {
    use super::*;
    use crate::wire::call::encode_request;
    use crate::wire::Endian;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// Forwards everything.
    struct Pass;

    impl Policy for Pass {
        fn request(&mut self, pdu: Pdu<BytesMut>, out: &mut Outbox) -> anyhow::Result<()> {
            out.forward(pdu.into_inner());
            Ok(())
        }
        fn answer(&mut self, pdu: Pdu<BytesMut>, out: &mut Outbox) -> anyhow::Result<()> {
            out.forward(pdu.into_inner());
            Ok(())
        }
    }

    fn request(stub_len: usize) -> Vec<u8> {
        let mut pdu = Vec::new();
        encode_request(&mut pdu, Endian::Little, 1, 0, 0, &vec![7; stub_len]).unwrap();
        pdu
    }

    /// A relay between two in-memory pipes of `capacity` bytes; returns the far ends.
    fn relay(
        idle: Duration,
        capacity: usize,
    ) -> (DuplexStream, DuplexStream, tokio::task::JoinHandle<Relayed>) {
        let (client, client_far) = duplex(capacity);
        let (backend, backend_far) = duplex(capacity);
        let relay = Relay::new(
            PduReader::new(client, 65535),
            PduReader::new(backend, 65535),
            Pass,
            idle,
            0,
        );
        (client_far, backend_far, tokio::spawn(relay))
    }

    /// `future` has not finished after `before`, and has finished `after` later; time is
    /// paused, so both are exact.
    async fn ends_between<F: Future + Unpin>(
        mut future: F,
        before: Duration,
        after: Duration,
    ) -> F::Output {
        assert!(
            tokio::time::timeout(before, &mut future).await.is_err(),
            "ended before {before:?}"
        );
        tokio::time::timeout(after, future)
            .await
            .unwrap_or_else(|_| panic!("still running {after:?} later"))
    }

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn one_busy_direction_keeps_the_connection_alive() {
        let idle = Duration::from_millis(200);
        let (mut client, mut backend, relay) = relay(idle, 1 << 16);
        let pdu = request(16);
        let mut got = vec![0; pdu.len()];
        // Eight PDUs, each just within `idle` of the one before: 8 × 199 ms in all. Time is
        // paused: each sleep lets exactly 199 ms pass, the relay's timer running meanwhile.
        for _ in 0..8 {
            tokio::time::sleep(idle - MS).await;
            client.write_all(&pdu).await.unwrap();
            backend.read_exact(&mut got).await.unwrap();
            assert_eq!(got, pdu);
        }
        assert!(!relay.is_finished(), "closed while the client was sending");
        drop(client);
        drop(backend);
        let done = relay.await.unwrap();
        assert_eq!(done.ended.unwrap(), "client closed");
        assert_eq!(done.from_client, 8 * pdu.len() as u64);
    }

    #[tokio::test(start_paused = true)]
    async fn a_receiver_that_does_not_read_ends_the_relay() {
        let idle = Duration::from_millis(200);
        let (mut client, _backend, relay) = relay(idle, 64);
        // More than the pipe holds; the backend never reads.
        let pdu = request(4000);
        client.write_all(&pdu).await.unwrap();
        // The last byte moved now: the relay ends `idle` later, not before.
        let done = ends_between(relay, idle - MS, 2 * MS).await.unwrap();
        let e = format!("{:#}", done.ended.unwrap_err());
        assert!(e.contains("the backend did not read for 200ms"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn silence_both_ways_ends_the_relay() {
        let idle = Duration::from_millis(100);
        let (_client, _backend, relay) = relay(idle, 64);
        let done = ends_between(relay, idle - MS, 2 * MS).await.unwrap();
        let e = format!("{:#}", done.ended.unwrap_err());
        assert!(e.contains("idle for 100ms"), "{e}");
    }
}
