//! Moving PDUs from one socket to another, one direction at a time, with a hook that sees
//! every PDU before it is forwarded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use super::io::{PduReader, ReadError};

/// When a connection last moved a PDU in either direction, so that one silent direction
/// does not count as idle while the other is busy.
#[derive(Debug)]
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    idle: Duration,
}

impl Activity {
    /// A connection that is active now and may be idle for `idle`.
    fn new(idle: Duration) -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            idle,
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// What the hook wants done with a PDU: the PDUs to forward (zero, the same one, or several
/// gathered ones) go in `forward`, answers to the sender in `reply`.
#[derive(Debug, Default)]
pub struct Outbox {
    /// PDUs to write to the receiving side.
    pub forward: Vec<BytesMut>,
    /// PDUs to send back to the sender, through the other direction's writer.
    pub reply: Vec<BytesMut>,
}

/// Answers one direction makes for its sender, handed to the other direction's writer.
/// Rare (a refused alter_context or call), so nothing is allocated until there is one.
#[derive(Debug, Default)]
struct Replies {
    queue: std::sync::Mutex<Vec<BytesMut>>,
    ready: Notify,
}

impl Replies {
    fn push(&self, answers: impl IntoIterator<Item = BytesMut>) {
        super::lock(&self.queue).extend(answers);
        self.ready.notify_one();
    }

    fn take(&self) -> Vec<BytesMut> {
        std::mem::take(&mut *super::lock(&self.queue))
    }
}

/// One direction of a relay: reads what the sender has sent, lets `inspect` decide on each
/// whole PDU, and writes what it forwards to `to` — all the PDUs of one read in one write
/// when they lie side by side in the read buffer, as they do unless rewritten. Answers the
/// other direction made for this side's receiver (`injected`) are written between reads,
/// and this side's own answers go to `replies`. `moved` counts the bytes written to `to`.
/// Ends with `Ok` when the sending side closes between PDUs.
async fn pump<R, W, F>(
    from: &mut PduReader<R>,
    to: &mut W,
    activity: &Activity,
    moved: &AtomicU64,
    replies: Option<&Replies>,
    injected: Option<&Replies>,
    mut inspect: F,
) -> anyhow::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    F: FnMut(BytesMut, &mut Outbox) -> anyhow::Result<()>,
{
    let mut out = Outbox::default();
    loop {
        // Whatever was forwarded before a PDU that ends the connection still goes out.
        let inspected = inspect_buffered(from, &mut inspect, &mut out);
        if !out.forward.is_empty() {
            activity.touch();
            let batch = join(out.forward.drain(..));
            write(to, &batch, activity.idle).await?;
            moved.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        if !out.reply.is_empty() {
            replies
                .context("a reply with no way back to the sender")?
                .push(out.reply.drain(..));
        }
        inspected?;
        tokio::select! {
            read = from.fill_within(activity.idle) => match read {
                Ok(()) => {}
                Err(ReadError::Closed) => {
                    // Pass the half-close on: the receiver may still answer what it got.
                    let _ = to.shutdown().await;
                    return Ok(());
                }
                Err(ReadError::Timeout(_)) if activity.idle_for() < activity.idle => {}
                Err(ReadError::Timeout(t)) => return Err(anyhow!("idle for {t:?}")),
                Err(e) => return Err(e.into()),
            },
            () = ready(injected) => {
                let answers = join(injected.map(Replies::take).unwrap_or_default());
                write(to, &answers, activity.idle).await?;
                moved.fetch_add(answers.len() as u64, Ordering::Relaxed);
            }
        }
    }
}

/// Lets `inspect` decide on every whole PDU already read.
fn inspect_buffered<R, F>(
    from: &mut PduReader<R>,
    inspect: &mut F,
    out: &mut Outbox,
) -> anyhow::Result<()>
where
    R: AsyncRead + Unpin,
    F: FnMut(BytesMut, &mut Outbox) -> anyhow::Result<()>,
{
    while let Some(pdu) = from.buffered()? {
        inspect(pdu, out)?;
    }
    Ok(())
}

/// Joins PDUs into one buffer: free when they lie side by side in the same allocation,
/// a copy otherwise.
fn join(pdus: impl IntoIterator<Item = BytesMut>) -> BytesMut {
    let mut pdus = pdus.into_iter();
    let mut all = pdus.next().unwrap_or_default();
    for pdu in pdus {
        all.unsplit(pdu);
    }
    all
}

/// One direction of a connection: where PDUs come from, where they go, and the byte count.
pub struct Leg<'a, R, W> {
    /// The sending side.
    pub from: &'a mut PduReader<R>,
    /// The receiving side.
    pub to: &'a mut W,
    /// Bytes written to `to`.
    pub moved: &'a AtomicU64,
}

/// Relays PDUs both ways until the backend closes, or the client closes and the backend
/// has answered what it got (the half-close is passed on), or either side fails.
/// `requests` sees each client PDU (its replies go back to the client between the
/// backend's PDUs); `answers` sees each backend PDU. Returns how the connection ended,
/// naming the direction of an error.
pub async fn both_ways<R1, W1, R2, W2, Q, A>(
    up: Leg<'_, R1, W1>,
    down: Leg<'_, R2, W2>,
    idle: Duration,
    requests: Q,
    answers: A,
) -> anyhow::Result<&'static str>
where
    R1: AsyncRead + Unpin,
    W1: AsyncWrite + Unpin,
    R2: AsyncRead + Unpin,
    W2: AsyncWrite + Unpin,
    Q: FnMut(BytesMut, &mut Outbox) -> anyhow::Result<()>,
    A: FnMut(BytesMut, &mut Outbox) -> anyhow::Result<()>,
{
    let activity = Activity::new(idle);
    let replies = Replies::default();
    let up = pump(
        up.from,
        up.to,
        &activity,
        up.moved,
        Some(&replies),
        None,
        requests,
    );
    let down = pump(
        down.from,
        down.to,
        &activity,
        down.moved,
        None,
        Some(&replies),
        answers,
    );
    tokio::pin!(up, down);
    tokio::select! {
        r = &mut up => match r {
            // The client is done sending; what the backend still answers reaches it.
            Ok(()) => (&mut down).await.map(|()| "client closed").context("backend → client"),
            Err(e) => Err(e.context("client → backend")),
        },
        r = &mut down => r.map(|()| "backend closed").context("backend → client"),
    }
}

async fn ready(replies: Option<&Replies>) {
    match replies {
        Some(r) => r.ready.notified().await,
        None => std::future::pending().await,
    }
}

async fn write<W: AsyncWrite + Unpin>(
    to: &mut W,
    bytes: &[u8],
    limit: Duration,
) -> anyhow::Result<()> {
    tokio::time::timeout(limit, to.write_all(bytes))
        .await
        .map_err(|_| anyhow!("peer did not read for {limit:?}"))?
        .context("write failed")
}
