//! Socket set-up shared by the listeners and both legs of every connection.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::Limits;

/// A listening socket whose accept queue can hold a burst of clients (tokio's default
/// backlog of 128 drops the rest of a burst, and they retry a second later; the kernel caps
/// it at `net.core.somaxconn`). Accepted sockets inherit its options, so they are set once
/// here rather than on every connection.
///
/// An IPv6 listener is dual-stack (`IPV6_V6ONLY` off), whatever `net.ipv6.bindv6only`
/// says: `[::]:135` serves IPv4 clients too, as IPv4-mapped addresses.
pub(super) fn listen(addr: SocketAddr, limits: &Limits) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => {
            let socket = tokio::net::TcpSocket::new_v6()?;
            socket2::SockRef::from(&socket).set_only_v6(false)?;
            socket
        }
    };
    socket.set_reuseaddr(true)?;
    tune(&socket, limits);
    socket.bind(addr)?;
    let backlog = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    socket.listen(backlog.min(65_535))
}

/// Socket options for both legs of a connection: no Nagle delay (RPC is request/response),
/// and TCP keepalive so that a peer that vanished is noticed.
pub(super) fn tune(socket: &impl std::os::fd::AsFd, limits: &Limits) {
    let socket = socket2::SockRef::from(socket);
    let _ = socket.set_tcp_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(limits.keepalive)
        .with_interval(limits.keepalive / 4 + Duration::from_secs(1))
        .with_retries(4);
    let _ = socket.set_tcp_keepalive(&keepalive);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    #[tokio::test]
    async fn accepted_sockets_inherit_the_listeners_options() {
        let limits = Limits::default();
        let listener = listen("127.0.0.1:0".parse().unwrap(), &limits).unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap());
        let sock = socket2::SockRef::from(&accepted);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), limits.keepalive);
    }

    #[tokio::test]
    async fn an_ipv6_listener_on_every_address_serves_ipv4_clients_too() {
        let listener = listen("[::]:0".parse().unwrap(), &Limits::default()).unwrap();
        assert!(!socket2::SockRef::from(&listener).only_v6().unwrap());
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (_, peer) = listener.accept().await.unwrap();
        assert_eq!(peer.ip().to_canonical(), client.local_addr().unwrap().ip());
    }
}
