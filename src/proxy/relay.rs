//! Moving PDUs from one socket to another, one direction at a time, with a hook that sees
//! every PDU before it is forwarded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

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

/// One direction of a relay: reads PDUs from `from`, lets `inspect` decide, and writes what
/// it forwards to `to`. PDUs that arrive on `injected` (answers the other direction made
/// for this side's receiver) are written to `to` between PDUs. `moved` counts the bytes
/// written to `to`. Ends with `Ok` when the sending side closes between PDUs.
async fn pump<R, W, F>(
    from: &mut PduReader<R>,
    to: &mut W,
    activity: &Activity,
    moved: &AtomicU64,
    replies: Option<&mpsc::Sender<BytesMut>>,
    mut injected: Option<&mut mpsc::Receiver<BytesMut>>,
    mut inspect: F,
) -> anyhow::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    F: FnMut(BytesMut, &mut Outbox) -> anyhow::Result<()>,
{
    let mut out = Outbox::default();
    loop {
        let pdu = tokio::select! {
            read = from.next_within(activity.idle) => match read {
                Ok(pdu) => pdu,
                Err(ReadError::Closed) => {
                    // Pass the half-close on: the receiver may still answer what it got.
                    let _ = to.shutdown().await;
                    return Ok(());
                }
                Err(ReadError::Timeout(_)) if activity.idle_for() < activity.idle => continue,
                Err(ReadError::Timeout(t)) => return Err(anyhow!("idle for {t:?}")),
                Err(e) => return Err(e.into()),
            },
            Some(answer) = recv(&mut injected) => {
                write(to, &answer, activity.idle).await?;
                moved.fetch_add(answer.len() as u64, Ordering::Relaxed);
                continue;
            }
        };
        activity.touch();
        inspect(pdu, &mut out)?;
        for pdu in out.forward.drain(..) {
            write(to, &pdu, activity.idle).await?;
            moved.fetch_add(pdu.len() as u64, Ordering::Relaxed);
        }
        for answer in out.reply.drain(..) {
            let tx = replies.context("a reply with no way back to the sender")?;
            tx.send(answer)
                .await
                .map_err(|_| anyhow!("the other direction has ended"))?;
        }
    }
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
    let (reply_tx, mut reply_rx) = mpsc::channel(4);
    let up = pump(
        up.from,
        up.to,
        &activity,
        up.moved,
        Some(&reply_tx),
        None,
        requests,
    );
    let down = pump(
        down.from,
        down.to,
        &activity,
        down.moved,
        None,
        Some(&mut reply_rx),
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

async fn recv(rx: &mut Option<&mut mpsc::Receiver<BytesMut>>) -> Option<BytesMut> {
    match rx {
        Some(rx) => rx.recv().await,
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
