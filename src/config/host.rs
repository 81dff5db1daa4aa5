//! Host-valued keys (`backend.host`, `backends.NAME.host`): an IP address, IPv6 with or
//! without brackets, or a DNS name; parsed once, here, so that `rpcpin check` and the
//! running proxy read them alike. And `host:port` as it is printed: IPv6 in brackets.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// An RPC server's host, as `backend.host` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// An address: connected to as it is.
    Ip(IpAddr),
    /// A DNS name: resolved at each connection.
    Name(String),
}

impl Host {
    /// Reads `text` (already trimmed): `10.0.0.5`, `fd00:135::2`, `[fd00:135::2]` or a DNS
    /// name. The error is the reason, for the caller to put after the key.
    pub fn parse(text: &str) -> Result<Host, String> {
        if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            return match inner.parse::<IpAddr>() {
                Ok(ip @ IpAddr::V6(_)) => Ok(Host::Ip(ip)),
                _ => Err(format!(
                    "{text:?}: brackets hold an IPv6 address only, as in \"[fd00::2]\""
                )),
            };
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Err(format!(
                "{text:?} has a port: write the host alone ({}) and the port in epm_port",
                Host::Ip(addr.ip())
            ));
        }
        if is_dns_name(text) {
            return Ok(Host::Name(text.to_string()));
        }
        Err(format!(
            "{text:?} is not an IP address (IPv6 with or without brackets) or a DNS name"
        ))
    }

    /// Whether `other` is the same host: the same address however written, or the same
    /// name without regard to case.
    pub fn same(&self, other: &Host) -> bool {
        match (self, other) {
            (Host::Ip(a), Host::Ip(b)) => a == b,
            (Host::Name(a), Host::Name(b)) => a.eq_ignore_ascii_case(b),
            _ => false,
        }
    }
}

/// The address alone (IPv6 without brackets), or the name.
impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => ip.fmt(f),
            Host::Name(n) => f.write_str(n),
        }
    }
}

/// `host:port` as rpcpin prints it everywhere: `10.0.0.5:135`, `[fd00::2]:135`,
/// `dc1.example.net:135`.
#[derive(Debug, Clone, Copy)]
pub struct HostPort<'a>(pub &'a Host, pub u16);

impl fmt::Display for HostPort<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Host::Ip(ip) => SocketAddr::new(*ip, self.1).fmt(f),
            Host::Name(n) => write!(f, "{n}:{}", self.1),
        }
    }
}

/// A DNS name: dot-separated labels of letters, digits, `-` and `_` (as in SRV names), each
/// 1 to 63 long, 253 at most in all; a final dot is allowed.
fn is_dns_name(text: &str) -> bool {
    let name = text.strip_suffix('.').unwrap_or(text);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Host {
        Host::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    #[test]
    fn ipv6_with_or_without_brackets_is_the_same_address() {
        let bare = ok("fd00:135::2");
        let bracketed = ok("[fd00:135::2]");
        assert_eq!(bare, bracketed);
        assert_eq!(bare, Host::Ip("fd00:135::2".parse().unwrap()));
        assert!(bare.same(&ok("[fd00:135:0::2]")));
        assert_eq!(ok("10.0.0.5"), Host::Ip("10.0.0.5".parse().unwrap()));
        assert_eq!(
            ok("DC1.example.net."),
            Host::Name("DC1.example.net.".into())
        );
        assert!(ok("DC1.example.net").same(&ok("dc1.EXAMPLE.net")));
        assert!(!ok("10.0.0.5").same(&ok("dc1")));
    }

    #[test]
    fn what_is_neither_an_address_nor_a_name_is_refused_with_the_reason() {
        for (text, reason) in [
            ("[10.0.0.5]", "brackets hold an IPv6 address only"),
            ("[dc1]", "brackets hold an IPv6 address only"),
            ("[fd00::2", "is not an IP address"),
            (
                "10.0.0.5:135",
                "has a port: write the host alone (10.0.0.5)",
            ),
            (
                "[fd00::2]:135",
                "has a port: write the host alone (fd00::2)",
            ),
            ("fd00::2::3", "is not an IP address"),
            ("dc1 .example", "is not an IP address"),
            ("dc1..example", "is not an IP address"),
            ("http://dc1", "is not an IP address"),
        ] {
            let e = Host::parse(text).expect_err(text);
            assert!(e.contains(reason), "{text:?}: {e}");
        }
    }

    #[test]
    fn host_and_port_print_ipv6_in_brackets() {
        let shown = |h: &str| HostPort(&ok(h), 135).to_string();
        assert_eq!(shown("[fd00:135::2]"), "[fd00:135::2]:135");
        assert_eq!(shown("fd00:135::2"), "[fd00:135::2]:135");
        assert_eq!(shown("10.0.0.5"), "10.0.0.5:135");
        assert_eq!(shown("dc1.example.net"), "dc1.example.net:135");
        assert_eq!(ok("[fd00:135::2]").to_string(), "fd00:135::2");
    }
}
