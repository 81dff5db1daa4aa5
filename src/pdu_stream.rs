//! Reading PDUs from a socket, whole or head first, with every wait bounded.

use std::io;
use std::time::Duration;

use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::wire::frame::{next_pdu, next_pdu_head};
use crate::wire::Pdu;

/// Why a PDU could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed the connection between PDUs.
    #[error("closed by peer")]
    Closed,
    /// The peer closed the connection in the middle of a PDU.
    #[error("closed by peer inside a PDU ({0} bytes pending)")]
    Truncated(usize),
    /// The peer sent something that is not a valid PDU.
    #[error("bad pdu")]
    Wire(#[from] crate::wire::Error),
    /// The peer said nothing for too long.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Takes whole PDUs out of a byte stream.
///
/// `next` is cancel-safe: bytes read before a cancelled call stay buffered for the next one.
#[derive(Debug)]
pub struct PduReader<R> {
    inner: R,
    buf: BytesMut,
    max_frag: usize,
    /// Whether the last read brought more than [`STACK_READ`]: the peer is streaming, and
    /// reads go straight to a 64 KiB buffer.
    streaming: bool,
    /// Whether the last read brought a whole [`READ_CHUNK`]: the socket holds more than a
    /// chunk, and the next read may take [`BULK_READ`].
    bulk: bool,
}

/// How much a read asks for at a time: a whole 64 KiB fragment, or several small ones.
const READ_CHUNK: usize = 64 * 1024;
/// How much a read asks for while the last one filled a whole chunk: a bulk transfer
/// moves in fewer, larger reads and writes (docs/benchmarks.md, "Where the time goes"),
/// and only a connection that streams holds the larger buffer.
const BULK_READ: usize = 256 * 1024;
/// Below this much free room, a read first makes room.
const MIN_ROOM: usize = 4 * 1024;
/// What a read between PDUs takes onto the stack.
const STACK_READ: usize = 4 * 1024;

impl<R: AsyncRead + Unpin> PduReader<R> {
    /// A reader that refuses fragments longer than `max_frag`.
    pub fn new(inner: R, max_frag: usize) -> PduReader<R> {
        PduReader {
            inner,
            // Allocated when data arrives: a silent connection holds no buffer.
            buf: BytesMut::new(),
            max_frag,
            streaming: false,
            bulk: false,
        }
    }

    /// A reader that starts with `buffered`, bytes already read from `inner` (after a PROXY
    /// protocol header, say).
    pub fn with_buffered(inner: R, buffered: BytesMut, max_frag: usize) -> PduReader<R> {
        let mut r = PduReader::new(inner, max_frag);
        r.buf = buffered;
        r
    }

    /// The next whole PDU already read, its header checked, if there is one; never waits.
    pub fn buffered(&mut self) -> Result<Option<Pdu<BytesMut>>, ReadError> {
        Ok(next_pdu(&mut self.buf, self.max_frag)?)
    }

    /// `frag_length` of the PDU at the front of what is buffered, and what is buffered, once
    /// that PDU's header is checked and its head is there ([`next_pdu_head`]); never waits.
    pub fn head(&self) -> Result<Option<(usize, &[u8])>, ReadError> {
        let len = next_pdu_head(&self.buf, self.max_frag)?;
        Ok(len.map(|len| (len, &self.buf[..])))
    }

    /// How many bytes are buffered.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// Takes up to `n` buffered bytes off the front (none when none are there): the bytes
    /// of a PDU forwarded or dropped as they arrive.
    pub fn take(&mut self, n: usize) -> BytesMut {
        if n >= self.buf.len() {
            // As `next_pdu` does: taking the whole buffer leaves none behind.
            std::mem::take(&mut self.buf)
        } else {
            self.buf.split_to(n)
        }
    }

    /// The next whole PDU, its header checked.
    pub async fn next(&mut self) -> Result<Pdu<BytesMut>, ReadError> {
        loop {
            if let Some(pdu) = self.buffered()? {
                return Ok(pdu);
            }
            self.fill().await?;
        }
    }

    /// The next whole PDU, or [`ReadError::Timeout`] after `limit`.
    pub async fn next_within(&mut self, limit: Duration) -> Result<Pdu<BytesMut>, ReadError> {
        within(limit, self.next()).await
    }

    /// Puts `pdu`, taken by [`PduReader::next`], back in front of what is buffered: it is
    /// the next PDU read again.
    pub fn unread(&mut self, pdu: Pdu<BytesMut>) {
        let mut front = pdu.into_inner();
        front.unsplit(std::mem::take(&mut self.buf));
        self.buf = front;
    }

    /// The stream, to write to it.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Reads once: as much as is there, up to a 64 KiB chunk.
    pub async fn fill(&mut self) -> Result<(), ReadError> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Reads once, or registers for a wake-up when nothing is there.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ReadError>> {
        if self.buf.is_empty() && !self.streaming {
            // Between PDUs: read onto the stack and keep exactly what came (a handshake or
            // a call is a few hundred bytes), instead of a 64 KiB buffer per connection
            // whose touched pages the allocator keeps once freed.
            // Not zeroed: `ReadBuf` hands out only what the read filled.
            let mut stack = [const { MaybeUninit::<u8>::uninit() }; STACK_READ];
            let mut read = ReadBuf::uninit(&mut stack);
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut read))?;
            let got = read.filled();
            if got.is_empty() {
                return Poll::Ready(Err(ReadError::Closed));
            }
            self.streaming = got.len() == STACK_READ;
            if self.streaming {
                self.buf.reserve(READ_CHUNK);
                self.buf.extend_from_slice(got);
            } else {
                self.buf = BytesMut::from(got);
            }
            return Poll::Ready(Ok(()));
        }
        if self.buf.capacity() - self.buf.len() < MIN_ROOM {
            self.buf
                .reserve(if self.bulk { BULK_READ } else { READ_CHUNK });
        }
        // `read_buf` reads into the spare capacity; polling its future once is a plain
        // read, and dropping it loses nothing.
        let read = std::pin::pin!(self.inner.read_buf(&mut self.buf));
        match ready!(read.poll(cx))? {
            0 if self.buf.is_empty() => Poll::Ready(Err(ReadError::Closed)),
            0 => Poll::Ready(Err(ReadError::Truncated(self.buf.len()))),
            n => {
                // More than the stack holds came at once: go on reading in whole chunks.
                self.streaming = n >= STACK_READ;
                self.bulk = n >= READ_CHUNK;
                Poll::Ready(Ok(()))
            }
        }
    }
}

async fn within<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, ReadError>>,
) -> Result<T, ReadError> {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or(Err(ReadError::Timeout(limit)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPTURE: &[u8] = include_bytes!("../tests/data/mapi-epm-map-nspi.server.bin");

    #[tokio::test]
    async fn reads_pdus_split_across_reads() {
        let (mut tx, rx) = tokio::io::duplex(7);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for chunk in CAPTURE.chunks(5) {
                tx.write_all(chunk).await.unwrap();
            }
        });
        let mut r = PduReader::new(rx, 65535);
        assert_eq!(r.next().await.unwrap().frag_len(), 60);
        assert_eq!(r.next().await.unwrap().frag_len(), 152);
        assert!(matches!(r.next().await, Err(ReadError::Closed)));
    }

    #[tokio::test]
    async fn a_pdu_taken_as_it_arrives_after_its_head() {
        let (mut tx, rx) = tokio::io::duplex(7);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for chunk in CAPTURE.chunks(5) {
                tx.write_all(chunk).await.unwrap();
            }
        });
        let mut r = PduReader::new(rx, 65535);
        let (mut taken, mut lens) = (Vec::new(), Vec::new());
        loop {
            let len = match r.head().unwrap() {
                Some((len, buffered)) => {
                    assert!(
                        buffered.len() >= len.min(40),
                        "a head of {}",
                        buffered.len()
                    );
                    len
                }
                None => match r.fill().await {
                    Ok(()) => continue,
                    Err(ReadError::Closed) => break,
                    Err(e) => panic!("{e}"),
                },
            };
            lens.push(len);
            let mut left = len;
            while left > 0 {
                let bytes = r.take(left);
                left -= bytes.len();
                taken.extend_from_slice(&bytes);
                if left > 0 {
                    r.fill().await.unwrap();
                }
            }
        }
        assert_eq!(lens, [60, 152]);
        assert_eq!(taken, CAPTURE);
    }

    #[tokio::test]
    async fn reads_grow_while_the_socket_holds_more_than_a_chunk() {
        use tokio::io::AsyncWriteExt;
        // A sender far ahead: 1 MiB waiting. Each read's bytes are taken, as the relay
        // takes a PDU cut through, so every read starts from an empty buffer.
        let (mut tx, rx) = tokio::io::duplex(1 << 20);
        tx.write_all(&vec![0u8; 1 << 20]).await.unwrap();
        let mut r = PduReader::new(rx, 65535);
        let mut reads = Vec::new();
        for _ in 0..4 {
            r.fill().await.unwrap();
            reads.push(r.take(usize::MAX).len());
        }
        assert_eq!(reads, [STACK_READ, READ_CHUNK, BULK_READ, BULK_READ]);
    }

    #[tokio::test]
    async fn eof_inside_a_pdu_is_reported() {
        let mut r = PduReader::new(&CAPTURE[..70], 65535);
        r.next().await.unwrap();
        assert!(matches!(r.next().await, Err(ReadError::Truncated(10))));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_times_out() {
        let (_tx, rx) = tokio::io::duplex(64);
        let mut r = PduReader::new(rx, 65535);
        let limit = Duration::from_millis(20);
        let start = tokio::time::Instant::now();
        let got = r.next_within(limit).await;
        assert!(
            matches!(got, Err(ReadError::Timeout(d)) if d == limit),
            "{got:?}"
        );
        // Time is paused: the wait is exactly the limit.
        assert_eq!(start.elapsed(), limit);
    }
}
