//! The backend every path ends at: an RPC server for the bench interface on one port and an
//! endpoint mapper on another, on one thread per CPU the load gives it.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::rc::Rc;

use anyhow::Context;
use rpcpin::wire::call::Request;
use rpcpin::wire::{PacketType, Pdu};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::dcerpc::{self, op, Framer, EPT_MAP};

/// What a listener serves.
struct Service {
    /// Its port, sent as the bind_ack's secondary address (as Windows does).
    secondary_addr: Vec<u8>,
    /// The endpoint mapper answers ept_map; the service port answers the bench operations.
    epm: bool,
    /// The prebuilt stub of every ept_map answer.
    ept_map_stub: Rc<Vec<u8>>,
}

/// Runs the backend until killed: `threads` threads, each with its own listeners on both
/// ports (SO_REUSEPORT spreads the connections over them).
pub fn run(svc_port: u16, epm_port: u16, threads: usize) -> anyhow::Result<()> {
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            // Bind in this thread, so that a port taken fails the start and not a worker.
            let listeners = (listen(svc_port), listen(epm_port));
            std::thread::spawn(move || serve_thread(svc_port, epm_port, listeners))
        })
        .collect();
    for w in workers {
        w.join()
            .map_err(|_| anyhow::anyhow!("a backend thread panicked"))??;
    }
    Ok(())
}

/// One thread of the backend: both listeners, every connection they accept.
fn serve_thread(
    svc_port: u16,
    epm_port: u16,
    (svc, epm): (
        anyhow::Result<std::net::TcpListener>,
        anyhow::Result<std::net::TcpListener>,
    ),
) -> anyhow::Result<()> {
    let (svc, epm) = (svc?, epm?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let stub = Rc::new(dcerpc::ept_map_answer_stub(svc_port));
        let service = |port: u16, epm| {
            Rc::new(Service {
                secondary_addr: format!("{port}\0").into_bytes(),
                epm,
                ept_map_stub: stub.clone(),
            })
        };
        let svc = TcpListener::from_std(svc)?;
        let epm = TcpListener::from_std(epm)?;
        tokio::task::spawn_local(accept(svc, service(svc_port, false)));
        accept(epm, service(epm_port, true)).await;
        Ok(())
    })
}

fn listen(port: u16) -> anyhow::Result<std::net::TcpListener> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())
        .with_context(|| format!("backend cannot listen on {addr}"))?;
    s.listen(4096)?;
    Ok(s.into())
}

async fn accept(listener: TcpListener, service: Rc<Service>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let service = service.clone();
                tokio::task::spawn_local(async move {
                    if let Err(e) = serve(stream, &service).await {
                        if !is_disconnect(&e) {
                            eprintln!("backend: connection failed: {e:#}");
                        }
                    }
                });
            }
            Err(e) => {
                eprintln!("backend: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// A peer going away mid-stream is how bulk downloads end.
fn is_disconnect(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>().is_some_and(|io| {
        matches!(
            io.kind(),
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
        )
    })
}

async fn serve(mut stream: TcpStream, service: &Service) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(2 * 65536);
    let mut out = Vec::with_capacity(1024);
    while let Some(len) = dcerpc::read_pdu(&mut stream, &mut buf).await? {
        let pdu = &buf[..len];
        out.clear();
        let p = Pdu::new_checked(pdu)?;
        match p.ptype() {
            PacketType::Bind => {
                out.extend(dcerpc::bind_ack_for(pdu, &service.secondary_addr)?);
            }
            PacketType::Request => {
                let req = Request::parse(pdu)?;
                let (endian, call_id) = (p.endian(), p.call_id());
                match (service.epm, req.opnum()) {
                    (true, EPT_MAP) => {
                        dcerpc::push_response(&mut out, endian, call_id, &service.ept_map_stub)
                    }
                    (false, op::ECHO) => {
                        dcerpc::push_response(&mut out, endian, call_id, &pdu[req.stub_range()])
                    }
                    (false, op::SINK) => {
                        buf.drain(..len);
                        return sink(stream, buf).await;
                    }
                    (false, op::SOURCE) => {
                        let (frag_len, write) = dcerpc::source_params(&req, pdu)?;
                        let batch = dcerpc::source_batch(endian, frag_len, write);
                        return source(stream, batch, frag_len).await;
                    }
                    (_, other) => anyhow::bail!("unexpected opnum {other}"),
                }
            }
            _ => {}
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
        }
        buf.drain(..len);
    }
    Ok(())
}

/// Bulk upload: reads and checks the framing of everything until the client closes.
async fn sink(mut stream: TcpStream, pending: Vec<u8>) -> anyhow::Result<()> {
    let mut framer = Framer::default();
    framer.feed(&pending)?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        framer.feed(&buf[..n])?;
    }
}

/// Bulk download: writes response PDUs as fast as the path takes them until the client
/// closes its side, then the rest of the PDU under way, so that the stream ends between
/// PDUs as a server's would.
async fn source(mut stream: TcpStream, batch: Vec<u8>, frag_len: usize) -> anyhow::Result<()> {
    let (mut rd, mut wr) = stream.split();
    let mut at = 0;
    let mut scratch = [0u8; 512];
    loop {
        // `write` and `read` are cancel-safe: the losing branch has moved no bytes.
        tokio::select! {
            n = wr.write(&batch[at..]) => at = (at + n?) % batch.len(),
            n = rd.read(&mut scratch) => {
                if n? == 0 {
                    let rest = (frag_len - at % frag_len) % frag_len;
                    wr.write_all(&batch[at..at + rest]).await?;
                    return Ok(());
                }
            }
        }
    }
}
