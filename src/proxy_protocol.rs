//! The PROXY protocol header (HAProxy's `proxy-protocol.txt`, versions 1 and 2), sans IO.
//!
//! Behind an L4 load balancer the TCP peer is the balancer; the header it sends first names
//! the real client and the address the client connected to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Offsets of the v2 header (proxy-protocol.txt §2.2) and of its address blocks.
mod field {
    /// The 4-bit version (2) and the 4-bit command (LOCAL 0, PROXY 1).
    pub const VER_CMD: usize = 12;
    /// The address family and transport (0x11 TCP over IPv4, 0x21 TCP over IPv6).
    pub const FAMILY: usize = 13;
    /// The length of what follows, big endian.
    pub const LEN: usize = 14;
    /// The addresses, then any TLVs.
    pub const ADDRS: usize = 16;

    /// Within the addresses of TCP over IPv4 (12 bytes); ports big endian.
    pub mod ipv4 {
        use core::ops::Range;
        pub const SRC_ADDR: Range<usize> = 0..4;
        pub const DST_ADDR: Range<usize> = 4..8;
        pub const SRC_PORT: usize = 8;
        pub const DST_PORT: usize = 10;
        pub const LEN: usize = 12;
    }

    /// Within the addresses of TCP over IPv6 (36 bytes); ports big endian.
    pub mod ipv6 {
        use core::ops::Range;
        pub const SRC_ADDR: Range<usize> = 0..16;
        pub const DST_ADDR: Range<usize> = 16..32;
        pub const SRC_PORT: usize = 32;
        pub const DST_PORT: usize = 34;
        pub const LEN: usize = 36;
    }
}

/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, CRLF included.
const V1_MAX: usize = 107;
/// The longest v2 header rpcpin accepts (addresses plus generous TLVs).
pub const V2_MAX: usize = 16 + 520;

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Bytes the header takes at the front of the stream.
    pub len: usize,
    /// `(client, destination)`, or `None` for a LOCAL/UNKNOWN connection (a health check):
    /// then the TCP peer stands for itself.
    pub addrs: Option<(SocketAddr, SocketAddr)>,
}

/// Why a header is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The stream does not start with a PROXY header.
    #[error("no PROXY protocol header")]
    Missing,
    /// The header is malformed.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
}

/// Parses the header at the front of `buf`: `Ok(None)` while more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<Header>, Error> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if n < V2_SIGNATURE.len() {
            Ok(None)
        } else {
            parse_v2(buf)
        };
    }
    let n = buf.len().min(6);
    if buf[..n] == b"PROXY "[..n] {
        return if n < 6 { Ok(None) } else { parse_v1(buf) };
    }
    Err(Error::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Option<Header>, Error> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(Error::Malformed("v1 line too long"))
        } else {
            Ok(None)
        };
    };
    if end + 2 > V1_MAX {
        return Err(Error::Malformed("v1 line too long"));
    }
    let line =
        std::str::from_utf8(&buf[6..end]).map_err(|_| Error::Malformed("v1 line is not text"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let len = end + 2;
    match fields.as_slice() {
        ["UNKNOWN", ..] => Ok(Some(Header { len, addrs: None })),
        [proto @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let ip = |s: &str| -> Result<IpAddr, Error> {
                let ip: IpAddr = s.parse().map_err(|_| Error::Malformed("v1 address"))?;
                match (*proto, ip) {
                    ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => Ok(ip),
                    _ => Err(Error::Malformed("v1 address family")),
                }
            };
            // Digits only, without leading zeros, as the specification writes them (Rust's
            // parser would also take "+80" and "0080").
            let port = |s: &str| {
                let canonical =
                    s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
                s.parse::<u16>()
                    .ok()
                    .filter(|_| canonical)
                    .ok_or(Error::Malformed("v1 port"))
            };
            Ok(Some(Header {
                len,
                addrs: Some((
                    SocketAddr::new(ip(src)?, port(sport)?),
                    SocketAddr::new(ip(dst)?, port(dport)?),
                )),
            }))
        }
        _ => Err(Error::Malformed("v1 fields")),
    }
}

fn parse_v2(buf: &[u8]) -> Result<Option<Header>, Error> {
    if buf.len() < field::ADDRS {
        return Ok(None);
    }
    let (ver_cmd, family) = (buf[field::VER_CMD], buf[field::FAMILY]);
    if ver_cmd >> 4 != 2 {
        return Err(Error::Malformed("v2 version"));
    }
    let len = field::ADDRS + be16(buf, field::LEN) as usize;
    if len > V2_MAX {
        return Err(Error::Malformed("v2 header too long"));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let a = &buf[field::ADDRS..len];
    let addrs = match (ver_cmd & 0x0f, family) {
        (0, _) => None, // LOCAL: a health check from the balancer itself
        (1, 0x11) if a.len() >= field::ipv4::LEN => {
            use field::ipv4 as f;
            let v4 = |r: core::ops::Range<usize>| {
                let mut o = [0u8; 4];
                o.copy_from_slice(&a[r]);
                IpAddr::V4(Ipv4Addr::from(o))
            };
            Some((
                SocketAddr::new(v4(f::SRC_ADDR), be16(a, f::SRC_PORT)),
                SocketAddr::new(v4(f::DST_ADDR), be16(a, f::DST_PORT)),
            ))
        }
        (1, 0x21) if a.len() >= field::ipv6::LEN => {
            use field::ipv6 as f;
            let v6 = |r: core::ops::Range<usize>| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&a[r]);
                IpAddr::V6(Ipv6Addr::from(o))
            };
            Some((
                SocketAddr::new(v6(f::SRC_ADDR), be16(a, f::SRC_PORT)),
                SocketAddr::new(v6(f::DST_ADDR), be16(a, f::DST_PORT)),
            ))
        }
        (1, 0x11 | 0x21) => return Err(Error::Malformed("v2 addresses truncated")),
        // Families above AF_UNIX and transports above DGRAM "must be rejected as invalid by
        // receivers" (§2.2); the LOCAL command ignores the family.
        (1, f) if f >> 4 > 3 || f & 0x0f > 2 => return Err(Error::Malformed("v2 family")),
        (1, _) => None, // UNSPEC, UDP or AF_UNIX: keep the TCP peer
        _ => return Err(Error::Malformed("v2 command")),
    };
    Ok(Some(Header { len, addrs }))
}

/// The big-endian u16 at `at`; the caller has checked the bounds.
fn be16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_tcp4_and_unknown() {
        let h = b"PROXY TCP4 198.51.100.22 203.0.113.7 35646 135\r\n\x05\x00\x0b";
        for cut in 0..h.len() - 3 {
            assert_eq!(parse(&h[..cut]), Ok(None), "cut {cut}");
        }
        let got = parse(h).unwrap().unwrap();
        assert_eq!(got.len, h.len() - 3);
        let (src, dst) = got.addrs.unwrap();
        assert_eq!(src, "198.51.100.22:35646".parse().unwrap());
        assert_eq!(dst, "203.0.113.7:135".parse().unwrap());
        let unknown = parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap();
        assert_eq!((unknown.len, unknown.addrs), (15, None));
        let v6 = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(v6.addrs.unwrap().0, "[2001:db8::1]:1".parse().unwrap());
    }

    #[test]
    fn v1_refuses_nonsense() {
        assert_eq!(parse(b"\x05\x00\x0b\x03"), Err(Error::Missing));
        assert!(parse(b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n").is_err());
        assert!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n").is_err());
        for port in ["+80", "080", "00", "8a", ""] {
            let line = format!("PROXY TCP4 1.2.3.4 5.6.7.8 {port} 135\r\n");
            assert!(parse(line.as_bytes()).is_err(), "{port:?}");
        }
        assert!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 0 135\r\n").is_ok());
        assert!(parse(&[b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat()).is_err());
    }

    #[test]
    fn v2_tcp4_local_and_bounds() {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[
            0x21, 0x11, 0, 12, 198, 51, 100, 22, 203, 0, 113, 7, 0x8b, 0x3e, 0, 135,
        ]);
        for cut in 0..h.len() {
            assert_eq!(parse(&h[..cut]), Ok(None), "cut {cut}");
        }
        let got = parse(&h).unwrap().unwrap();
        assert_eq!(got.len, 28);
        assert_eq!(got.addrs.unwrap().0, "198.51.100.22:35646".parse().unwrap());
        assert_eq!(got.addrs.unwrap().1, "203.0.113.7:135".parse().unwrap());
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(
            parse(&local),
            Ok(Some(Header {
                len: 16,
                addrs: None
            }))
        );
        let mut long = V2_SIGNATURE.to_vec();
        long.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&long), Err(Error::Malformed("v2 header too long")));
        // PROXY with an unassigned family or transport is refused; LOCAL ignores the family.
        for (ver_cmd, family, ok) in [
            (0x21, 0x41, false),
            (0x21, 0x13, false),
            (0x21, 0x31, true),
            (0x21, 0x12, true),
            (0x20, 0xff, true),
        ] {
            let mut h = V2_SIGNATURE.to_vec();
            h.extend_from_slice(&[ver_cmd, family, 0, 0]);
            let want = match ok {
                true => Ok(Some(Header {
                    len: 16,
                    addrs: None,
                })),
                false => Err(Error::Malformed("v2 family")),
            };
            assert_eq!(parse(&h), want, "{ver_cmd:#x} {family:#x}");
        }
        let mut short = V2_SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert!(parse(&short).is_err());
    }
}
