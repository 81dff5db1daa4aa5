//! What passes between the accept side and a listener's handshake: the accepted client,
//! and what the handshake makes of it.

use std::borrow::Cow;
use std::net::SocketAddr;

use bytes::BytesMut;
use tokio::net::TcpStream;

use super::facts::Facts;
use super::relay::{Relay, Relayed};
use crate::config::Limits;
use crate::pdu_stream::PduReader;

/// An accepted client connection.
#[derive(Debug)]
pub(super) struct Client {
    pub(super) stream: TcpStream,
    /// The client: the TCP peer, or the one a PROXY protocol header names.
    pub(super) peer: SocketAddr,
    /// The address the client connected to: ours, or the one a PROXY header names.
    pub(super) local: SocketAddr,
    /// Bytes read past a PROXY protocol header.
    pub(super) buffered: BytesMut,
}

/// A connection after its handshake: ready to relay, or already done with.
///
/// The handshake runs in a boxed future of its own, and the relay that follows is boxed
/// too: the handshake's futures (the backend resolution, the timeouts) are large and
/// short-lived, and a connection that relays for hours should hold the relay's state
/// alone, once (an `async fn` keeps room for every value it moves across an `.await`).
pub(super) enum Opened<P> {
    /// Relay with this policy.
    Relay(Box<Relay<TcpStream, TcpStream, P>>),
    /// The connection ended in its handshake (a refusal).
    Done(Summary),
}

impl<P> Opened<P> {
    /// A connection to relay with `policy`, `from_client` bytes of its handshake already
    /// forwarded.
    pub(super) fn relay(
        client: PduReader<TcpStream>,
        backend: PduReader<TcpStream>,
        policy: P,
        limits: &Limits,
        from_client: u64,
    ) -> Opened<P> {
        let relay = Relay::new(client, backend, policy, limits.idle_timeout, from_client);
        Opened::Relay(Box::new(relay))
    }
}

/// How a connection ended, for its closing log event (the connection's one line at
/// `info`).
#[derive(Debug)]
pub(super) struct Summary {
    pub(super) from_client: u64,
    pub(super) to_client: u64,
    pub(super) reason: Cow<'static, str>,
    /// Whether the connection ended the way connections do (a peer closed, a refusal
    /// rpcpin meant, shutdown) rather than on an error.
    pub(super) clean: bool,
    /// What the listener learned on the way.
    pub(super) facts: Facts,
}

impl Summary {
    /// From byte counts and how the connection ended.
    pub(super) fn new(
        from_client: u64,
        to_client: u64,
        ended: anyhow::Result<&'static str>,
    ) -> Summary {
        Summary {
            from_client,
            to_client,
            clean: ended.is_ok(),
            facts: Facts::default(),
            reason: match ended {
                Ok(r) => Cow::Borrowed(r),
                Err(e) => Cow::Owned(format!("{e:#}")),
            },
        }
    }

    /// A connection that failed before relaying anything.
    pub(super) fn failed(e: anyhow::Error) -> Summary {
        Summary::new(0, 0, Err(e))
    }

    /// A connection rpcpin ended on purpose before relaying anything.
    pub(super) fn ended(reason: &'static str) -> Summary {
        Summary::new(0, 0, Ok(reason))
    }
}

impl From<Relayed> for Summary {
    fn from(r: Relayed) -> Summary {
        let mut s = Summary::new(r.from_client, r.to_client, r.ended);
        s.facts = r.facts;
        s
    }
}
