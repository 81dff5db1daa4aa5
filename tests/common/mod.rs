//! Helpers for the end-to-end tests: rpcpin in-process on port 0, backends that replay
//! real captured server bytes, test configurations and rpcpin's log events.

#![allow(dead_code)]

mod config;
pub mod logs;
pub mod proxy_header;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rpcpin::config::Config;
use rpcpin::daemon::{Control, Daemon};
use rpcpin::wire::frame::{next_pdu_len, MAX_FRAG_LEN};
use rpcpin::wire::Pdu;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

pub use config::TestConfig;

/// How long a test waits for anything it expects (an answer, a close, a log event, an
/// exit) before it fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub const NSPI_EPM_CLIENT: &[u8] = include_bytes!("../data/mapi-epm-map-nspi.client.bin");
pub const NSPI_EPM_SERVER: &[u8] = include_bytes!("../data/mapi-epm-map-nspi.server.bin");
pub const EMSMDB_EPM_CLIENT: &[u8] = include_bytes!("../data/mapi-epm-map-emsmdb.client.bin");
pub const EMSMDB_EPM_SERVER: &[u8] = include_bytes!("../data/mapi-epm-map-emsmdb.server.bin");
pub const NSPI_NTLM_CLIENT: &[u8] = include_bytes!("../data/mapi-nspi-ntlm-session.client.bin");
pub const NSPI_NTLM_SERVER: &[u8] = include_bytes!("../data/mapi-nspi-ntlm-session.server.bin");

/// Exchange's NSPI port and address in the capture, as they appear on the wire.
pub const EXCHANGE_NSPI_PORT: [u8; 2] = 4997u16.to_be_bytes();
pub const EXCHANGE_ADDR: [u8; 4] = [192, 168, 0, 2];

/// winreg 338cd001-2244-31f1-aaaa-900038001003 as it appears little endian in a bind.
pub const WINREG_LE: [u8; 16] = [
    0x01, 0xd0, 0x8c, 0x33, 0x44, 0x22, 0xf1, 0x31, 0xaa, 0xaa, 0x90, 0x00, 0x38, 0x00, 0x10, 0x03,
];
/// NSPI f5cc5a18-4264-101a-8c59-08002b2f8426 as it appears little endian in a bind.
pub const NSPI_LE: [u8; 16] = [
    0x18, 0x5a, 0xcc, 0xf5, 0x64, 0x42, 0x1a, 0x10, 0x8c, 0x59, 0x08, 0x00, 0x2b, 0x2f, 0x84, 0x26,
];

/// netlogon 12345678-1234-abcd-ef00-01234567cffb v1.0 as a little-endian `p_syntax_id_t`.
pub const NETLOGON_SYNTAX_LE: [u8; 20] = [
    0x78, 0x56, 0x34, 0x12, 0x34, 0x12, 0xcd, 0xab, 0xef, 0x00, 0x01, 0x23, 0x45, 0x67, 0xcf, 0xfb,
    1, 0, 0, 0,
];
/// The endpoint mapper e1af8308-5d1f-11c9-91a4-08002b14a0fa v3.0, the same way.
pub const EPM_SYNTAX_LE: [u8; 20] = [
    0x08, 0x83, 0xaf, 0xe1, 0x1f, 0x5d, 0xc9, 0x11, 0x91, 0xa4, 0x08, 0x00, 0x2b, 0x14, 0xa0, 0xfa,
    3, 0, 0, 0,
];

/// The length of the PDU at the front of `bytes` once they hold all of it, by the crate's
/// own framing; panics on bytes that are not DCE/RPC.
pub fn pdu_len(bytes: &[u8]) -> Option<usize> {
    next_pdu_len(bytes, MAX_FRAG_LEN).unwrap_or_else(|e| {
        let start = &bytes[..bytes.len().min(16)];
        panic!("not a DCE/RPC PDU ({e}): {start:02x?}")
    })
}

/// A whole PDU's frag_length, as its header says.
pub fn frag_len(pdu: &[u8]) -> usize {
    Pdu::new_checked(pdu).expect("a whole PDU").frag_len()
}

/// Splits a captured stream (either byte order) into its PDUs.
pub fn pdus(stream: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = stream;
    while let Some(len) = pdu_len(rest) {
        let (pdu, after) = rest.split_at(len);
        out.push(pdu);
        rest = after;
    }
    assert!(rest.is_empty(), "a capture ends inside a PDU");
    out
}

/// Replaces every occurrence of `from` in `bytes` with `to` (same length); returns how many.
pub fn replace(bytes: &mut [u8], from: &[u8], to: &[u8]) -> usize {
    assert_eq!(from.len(), to.len());
    let mut n = 0;
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            n += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    n
}

/// A TCP connection of a test, and the bytes read past the last whole PDU taken from it.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    read: Vec<u8>,
    /// How many log events there were before it connected.
    logged_before: usize,
}

impl Conn {
    /// Connects to `addr`, which must accept.
    pub async fn connect(addr: SocketAddr) -> Conn {
        Conn::try_connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"))
    }

    /// Connects to `addr`.
    pub async fn try_connect(addr: SocketAddr) -> io::Result<Conn> {
        let logged_before = logs::count();
        let stream = TcpStream::connect(addr).await?;
        Ok(Conn {
            logged_before,
            ..Conn::from(stream)
        })
    }

    /// The connection's own address: the peer rpcpin's log events name.
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().unwrap()
    }
}

impl From<TcpStream> for Conn {
    fn from(stream: TcpStream) -> Conn {
        Conn {
            stream,
            read: Vec::new(),
            logged_before: logs::count(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read.is_empty() {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let n = this.read.len().min(buf.remaining());
        buf.put_slice(&this.read[..n]);
        this.read.drain(..n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Reads one whole PDU, or `None` when the peer closes or says nothing for [`WAIT`].
pub async fn read_pdu(c: &mut Conn) -> Option<Vec<u8>> {
    let read = async {
        loop {
            if let Some(len) = pdu_len(&c.read) {
                return Some(c.read.drain(..len).collect());
            }
            match c.stream.read_buf(&mut c.read).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(WAIT, read).await.ok().flatten()
}

/// How many whole PDUs `bytes` starts with.
fn whole_pdus(mut bytes: &[u8]) -> usize {
    let mut n = 0;
    while let Some(len) = pdu_len(bytes) {
        bytes = &bytes[len..];
        n += 1;
    }
    n
}

/// Sends the PDUs of `stream` as a real client does: a call only once the binds and
/// alter_contexts sent before it are answered (rpcpin refuses a call on a context the
/// backend has not accepted yet); what precedes a call goes in one write. The answers waited
/// for stay unread, for the test to read. Stops early if the peer closes.
pub async fn send(c: &mut Conn, stream: &[u8]) {
    let (mut batch, mut binds) = (Vec::new(), 0);
    let mut rest = stream;
    while let Some(len) = pdu_len(rest) {
        let (pdu, tail) = rest.split_at(len);
        if pdu[2] == 0 && binds > 0 {
            c.stream.write_all(&batch).await.unwrap();
            batch.clear();
            let want = whole_pdus(&c.read) + binds;
            binds = 0;
            while whole_pdus(&c.read) < want {
                let read = tokio::time::timeout(WAIT, c.stream.read_buf(&mut c.read));
                match read.await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return,
                }
            }
        }
        if matches!(pdu[2], 11 | 14) {
            binds += 1;
        }
        batch.extend_from_slice(pdu);
        rest = tail;
    }
    batch.extend_from_slice(rest);
    c.stream.write_all(&batch).await.unwrap();
}

/// Reads until the peer closes (a reset counts as a close), bounded by [`WAIT`].
pub async fn read_to_end(c: &mut Conn) -> Vec<u8> {
    let mut out = std::mem::take(&mut c.read);
    let read = tokio::time::timeout(WAIT, c.stream.read_to_end(&mut out))
        .await
        .unwrap_or_else(|_| panic!("the peer did not close within {WAIT:?}"));
    match read {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("read: {e}"),
    }
    out
}

/// Asserts that a new client at `addr` sending `first` is not served: its connection is
/// refused or, when the listener is stopping but not yet closed, closed unanswered.
pub async fn assert_not_served(addr: SocketAddr, first: &[u8], what: &str) {
    let Ok(mut c) = Conn::try_connect(addr).await else {
        return;
    };
    if c.write_all(first).await.is_ok() {
        let answer = read_to_end(&mut c).await;
        assert!(answer.is_empty(), "{what}: answered {answer:02x?}");
    }
}

/// A backend that answers each PDU it receives with the next PDU of a script; PDUs of type
/// auth3 (16) get no answer, as on a real server. It records everything it received.
#[derive(Clone)]
pub struct Replay {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub received: Arc<Mutex<Vec<u8>>>,
}

impl Replay {
    /// Serves `script(connection_index)` to every connection, on 127.0.0.1.
    pub async fn start<F>(script: F) -> Replay
    where
        F: Fn(usize) -> Vec<Vec<u8>> + Send + Sync + 'static,
    {
        Replay::start_on("127.0.0.1:0", script).await
    }

    /// [`Replay::start`] listening on `listen` (`"[::1]:0"`).
    pub async fn start_on<F>(listen: &str, script: F) -> Replay
    where
        F: Fn(usize) -> Vec<Vec<u8>> + Send + Sync + 'static,
    {
        let listener = TcpListener::bind(listen).await.unwrap();
        let replay = Replay {
            addr: listener.local_addr().unwrap(),
            connections: Arc::new(AtomicUsize::new(0)),
            received: Arc::new(Mutex::new(Vec::new())),
        };
        let r = replay.clone();
        let script = Arc::new(script);
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let n = r.connections.fetch_add(1, Ordering::SeqCst);
                let answers = script(n);
                let received = r.received.clone();
                let mut s = Conn::from(s);
                tokio::spawn(async move {
                    let mut answers = answers.into_iter();
                    while let Some(pdu) = read_pdu(&mut s).await {
                        received.lock().unwrap().extend_from_slice(&pdu);
                        if pdu[2] == 16 {
                            continue;
                        }
                        match answers.next() {
                            Some(a) => s.write_all(&a).await.unwrap(),
                            None => break,
                        }
                    }
                });
            }
        });
        replay
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<u8> {
        self.received.lock().unwrap().clone()
    }
}

/// A backend EPM that sends NSPI clients to `port`, answering with Exchange's bytes.
pub async fn epm_pointing_at(ports: impl Fn(usize) -> u16 + Send + Sync + 'static) -> Replay {
    epm_on_pointing_at("127.0.0.1:0", ports).await
}

/// [`epm_pointing_at`] listening on `listen`.
pub async fn epm_on_pointing_at(
    listen: &str,
    ports: impl Fn(usize) -> u16 + Send + Sync + 'static,
) -> Replay {
    Replay::start_on(listen, move |n| {
        let mut answers: Vec<Vec<u8>> = pdus(NSPI_EPM_SERVER).iter().map(|p| p.to_vec()).collect();
        replace(
            &mut answers[1],
            &EXCHANGE_NSPI_PORT,
            &ports(n).to_be_bytes(),
        );
        answers
    })
    .await
}

/// An NSPI service that answers Outlook's NTLM session with Exchange's captured answers.
pub async fn nspi_service() -> Replay {
    nspi_service_on("127.0.0.1:0").await
}

/// [`nspi_service`] listening on `listen`.
pub async fn nspi_service_on(listen: &str) -> Replay {
    Replay::start_on(listen, |_| {
        pdus(NSPI_NTLM_SERVER).iter().map(|p| p.to_vec()).collect()
    })
    .await
}

/// rpcpin running in-process.
pub struct Running {
    pub epm: SocketAddr,
    pub pins: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// Which rpcpin of the test binary this is, in the `rpcpin` span of its own events.
    instance: u64,
    control: mpsc::Sender<Control>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Starts rpcpin with `config` (listening on port 0), its log events captured.
    pub async fn start(config: &TestConfig) -> Running {
        static INSTANCES: AtomicU64 = AtomicU64::new(0);
        logs::capture();
        let text = config.text();
        let config = Config::parse(&text).unwrap_or_else(|e| panic!("{e} in\n{text}"));
        let server = Daemon::bind(config).await.expect("bind");
        let (epm, pins, admin) = (server.epm_addr(), server.pin_addrs(), server.admin_addr());
        let (control, commands) = mpsc::channel(4);
        let instance = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("rpcpin", instance);
        let task = tokio::spawn(server.run(commands).instrument(span));
        Running {
            epm,
            pins,
            admin,
            instance,
            control,
            task,
        }
    }

    /// Applies a new configuration, as SIGHUP does.
    pub async fn reload(&self, config: &TestConfig) -> anyhow::Result<()> {
        let config = Config::parse(&config.text())?;
        let (done, applied) = oneshot::channel();
        self.control
            .send(Control::Reload(Ok(Box::new(config)), done))
            .await
            .expect("rpcpin runs");
        applied.await.expect("rpcpin answers")
    }

    /// Starts a graceful shutdown, as SIGTERM does (a second one, as a second signal does,
    /// closes every connection).
    pub async fn shutdown(&self) {
        self.control
            .send(Control::Shutdown)
            .await
            .expect("rpcpin runs");
    }

    /// The first `event` this rpcpin logged itself (not one of its connections), waiting
    /// for it.
    pub async fn logged(&self, event: &str) -> serde_json::Value {
        let instance = self.instance;
        logs::wait_for(&format!("{event} from rpcpin #{instance}"), 0, |e| {
            e["event"] == event
                && e["spans"].as_array().is_some_and(|spans| {
                    spans
                        .iter()
                        .any(|s| s["name"] == "rpcpin" && s["instance"] == instance)
                })
        })
        .await
    }

    /// Whether rpcpin has exited.
    pub fn finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for rpcpin to exit by itself (it must, within [`WAIT`]) and checks it exited
    /// cleanly.
    pub async fn exits(self, why: &str) {
        let run = tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap_or_else(|_| panic!("rpcpin did not exit within {WAIT:?} {why}"));
        run.unwrap().unwrap();
    }

    /// Closes everything now and waits for rpcpin to exit.
    pub async fn stop(self) {
        let _ = self.control.send(Control::Stop).await;
        self.task.await.unwrap().unwrap();
    }
}

/// `GET path` on the admin listener: the status code and the body.
pub async fn get(rpcpin: &Running, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(rpcpin.admin.expect("an admin listener"))
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: rpcpin\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut response))
        .await
        .expect("an answer")
        .unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

/// A port nothing listens on.
pub async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// An address nothing listens on, for configurations whose backend is never asked.
pub async fn closed_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], closed_port().await))
}
