//! rpcpin as a whole: the proxy, and the admin listener beside it.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::info;

use crate::admin;
use crate::config::Config;
pub use crate::proxy::Control;
use crate::proxy::Server;

/// The proxy and the admin listener, bound and not yet serving.
#[derive(Debug)]
pub struct Daemon {
    server: Server,
    admin: Option<TcpListener>,
}

impl Daemon {
    /// Binds every listener: the admin listener, the EPM listener and each pin's.
    pub async fn bind(config: Config) -> anyhow::Result<Daemon> {
        let admin = match config.admin.listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on admin.listen {addr}"))?,
            ),
            None => None,
        };
        let server = Server::bind(config).await?;
        Ok(Daemon { server, admin })
    }

    /// The EPM listener's address.
    pub fn epm_addr(&self) -> SocketAddr {
        self.server.epm_addr()
    }

    /// Each pin listener's address, in configuration order.
    pub fn pin_addrs(&self) -> Vec<SocketAddr> {
        self.server.pin_addrs()
    }

    /// The admin listener's address, when there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until told to stop through `control` (see [`Server::run`]); the admin
    /// listener serves until the proxy is done.
    pub async fn run(self, control: mpsc::Receiver<Control>) -> anyhow::Result<()> {
        let admin = self.admin.map(|listener| {
            if let Ok(addr) = listener.local_addr() {
                info!(event = "listening", listener = "admin", addr = %addr);
            }
            tokio::spawn(admin::serve(listener, self.server.readiness()))
        });
        let served = self.server.run(control).await;
        if let Some(admin) = admin {
            admin.abort();
        }
        served
    }
}
