//! One direction of a relay: reads, judges and writes its PDUs, whole or cut through.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use anyhow::anyhow;
use bytes::{Buf, BytesMut};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::{Head, Outbox, Policy};
use crate::pdu_stream::{PduReader, ReadError};
use crate::wire::pdu::{head_of, HEAD_LEN};

/// Less of a PDU being cut through than this (and less than the rest of it) waits in the
/// read buffer for more: a PDU's head goes on without its tail, but a read that brings a
/// few segments is not worth a write of its own (small PDUs go on whole, in batches, as
/// before).
const CUT_MIN: usize = 16 * 1024;

/// One direction: what was read and judged but not yet written, and where it stands.
pub(super) struct Flow {
    /// Bytes for the receiver that are not written yet: one batch at a time, so nothing
    /// more is read while the receiver is slow.
    pub(super) pending: BytesMut,
    /// Answers the other direction's hook made for this direction's receiver.
    pub(super) replies: Vec<BytesMut>,
    /// Bytes written to the receiver, for the metrics.
    pub(super) counter: Option<Counter>,
    /// When the receiver last took bytes, or `pending` filled.
    pub(super) writing_since: Instant,
    /// The hook's error, reported once what it forwarded before it is written.
    failed: Option<anyhow::Error>,
    /// The sender closed between PDUs: pass the half-close on once `pending` is written.
    sender_closed: bool,
    /// Whether the half-close is passed on with a `shutdown`: the relay ends when the
    /// backend closes, and closing the client's socket then says it.
    pub(super) shutdown_on_close: bool,
    /// The half-close was passed on.
    pub(super) half_close_passed: bool,
    pub(super) moved: u64,
    /// The PDU being cut through: its bytes still to come (a fragment's length is a u16,
    /// and this fits in what the flags' padding leaves: the flow is no larger for it).
    cut: u16,
    /// Whether they are forwarded (or dropped, unseen).
    cut_forwarded: bool,
    /// The policy asked for the PDU at the front whole: it is not asked again.
    whole: bool,
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
            cut: 0,
            cut_forwarded: false,
            whole: false,
        }
    }
}

impl Flow {
    /// Moves what it can from `from` (the client when `from_client`) to `to`, through the
    /// policy; `Ready(Ok)` once the half-close is passed on.
    /// Replies for the sender go to `back`, the other direction's queue (dropped when there
    /// is none); while that queue is not empty nothing more is read, so a sender that does
    /// not read its answers is not answered without bound.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn poll<R, W, P>(
        &mut self,
        cx: &mut Context<'_>,
        (from, to): (&mut PduReader<R>, &mut PduReader<W>),
        policy: &mut P,
        from_client: bool,
        mut back: Option<&mut Vec<BytesMut>>,
        active: &mut Instant,
    ) -> Poll<anyhow::Result<()>>
    where
        R: AsyncRead + AsyncWrite + Unpin,
        W: AsyncRead + AsyncWrite + Unpin,
        P: Policy + ?Sized,
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
            // Answers go between PDUs, never inside one being cut through.
            if !self.replies.is_empty() && self.cut == 0 {
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
            if let Err(e) = self.judge(from, policy, from_client, &mut out) {
                self.failed = Some(e);
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
                Err(ReadError::Closed) if self.cut > 0 => {
                    return Poll::Ready(Err(anyhow!(
                        "closed by peer inside a PDU ({} bytes to come)",
                        self.cut
                    )))
                }
                Err(ReadError::Closed) => self.sender_closed = true,
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }

    /// Takes what `from` has buffered through the policy into `out`: the PDUs it needs
    /// whole once they are, the others as far as their bytes have come, each judged once
    /// on its head.
    fn judge<R, P>(
        &mut self,
        from: &mut PduReader<R>,
        policy: &mut P,
        from_client: bool,
        out: &mut Outbox,
    ) -> anyhow::Result<()>
    where
        R: AsyncRead + Unpin,
        P: Policy + ?Sized,
    {
        loop {
            if self.cut > 0 {
                if self.cut_forwarded && from.buffered_len() < usize::from(self.cut).min(CUT_MIN) {
                    // Too little of the PDU to be worth a write of its own: wait for more.
                    return Ok(());
                }
                let bytes = from.take(self.cut.into());
                if bytes.is_empty() {
                    return Ok(());
                }
                // At most `cut` bytes, taken just now.
                self.cut -= bytes.len() as u16;
                if self.cut_forwarded {
                    out.forward(bytes);
                }
                continue;
            }
            if !self.whole {
                let Some((frag_len, buffered)) = from.head()? else {
                    return Ok(());
                };
                let mut copy = [0; HEAD_LEN];
                let head = head_of(buffered, &mut copy)?;
                let verdict = if from_client {
                    policy.request_head(head, out)?
                } else {
                    policy.answer_head(head, out)?
                };
                match verdict {
                    Head::Whole => self.whole = true,
                    Head::Forward | Head::Drop => {
                        self.cut = u16::try_from(frag_len)?;
                        self.cut_forwarded = verdict == Head::Forward;
                    }
                }
                continue;
            }
            let Some(pdu) = from.buffered()? else {
                return Ok(());
            };
            self.whole = false;
            if from_client {
                policy.request(pdu, out)?;
            } else {
                policy.answer(pdu, out)?;
            }
        }
    }

    /// Makes `batch` the next bytes to write.
    fn stage(&mut self, batch: BytesMut) {
        self.pending = batch;
        self.writing_since = Instant::now();
    }
}
