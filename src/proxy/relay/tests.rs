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

/// Forwards everything, judged on its head: every PDU is cut through.
struct CutThrough;

impl Policy for CutThrough {
    fn request(&mut self, _: Pdu<BytesMut>, _: &mut Outbox) -> anyhow::Result<()> {
        unreachable!("judged on its head")
    }
    fn answer(&mut self, _: Pdu<BytesMut>, _: &mut Outbox) -> anyhow::Result<()> {
        unreachable!("judged on its head")
    }
    fn request_head(&mut self, _: Pdu<&[u8]>, _: &mut Outbox) -> anyhow::Result<Head> {
        Ok(Head::Forward)
    }
    fn answer_head(&mut self, _: Pdu<&[u8]>, _: &mut Outbox) -> anyhow::Result<Head> {
        Ok(Head::Forward)
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

#[tokio::test(start_paused = true)]
async fn a_pdu_goes_on_before_its_tail_and_a_close_inside_it_is_an_error() {
    let (client, mut client_far) = duplex(1 << 17);
    let (backend, mut backend_far) = duplex(1 << 17);
    let relay = Relay::new(
        PduReader::new(client, 65535),
        PduReader::new(backend, 65535),
        CutThrough,
        Duration::from_secs(60),
        0,
    );
    let relay = tokio::spawn(relay);
    let pdu = request(40000);
    // Its head and 20,000 bytes: they go on without waiting for the rest.
    client_far.write_all(&pdu[..20000]).await.unwrap();
    let mut got = vec![0; 20000];
    backend_far.read_exact(&mut got).await.unwrap();
    assert!(got == pdu[..20000]);
    // The client closes inside the PDU: not a half-close between PDUs.
    drop(client_far);
    let done = relay.await.unwrap();
    let e = format!("{:#}", done.ended.unwrap_err());
    assert!(e.contains("inside a PDU (20024 bytes to come)"), "{e}");
    assert_eq!(done.from_client, 20000);
}
