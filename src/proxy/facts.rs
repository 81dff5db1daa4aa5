//! What one connection's closing summary says beyond its bytes, duration and reason: the
//! facts its listener learned on the way (the interface, the backend port, the towers
//! rewritten, where endpoint-mapper answers came from), gathered in the connection's own
//! state rather than logged as they happen.

use crate::wire::SyntaxId;

/// The per-connection facts of the `connection_closed` summary. Each stays empty (or 0)
/// where it does not apply: a pin rewrites no tower, the endpoint mapper chooses no
/// interface.
#[derive(Debug, Default, Clone, Copy)]
pub struct Facts {
    /// A pin: the interface of the first context forwarded, which chose the backend port.
    pub interface: Option<SyntaxId>,
    /// The backend port relayed to: the interface's on a pin, the endpoint mapper's on 135.
    pub backend_port: Option<u16>,
    /// Towers rewritten in the endpoint mapper's answers on this connection.
    pub towers_rewritten: u32,
    /// Answer mode: answers given from the cache, and after a lookup at the server.
    pub answered: Option<(u32, u32)>,
    /// Answer mode: why this association was relayed to the server's endpoint mapper
    /// instead of answered.
    pub relayed: Option<&'static str>,
}
