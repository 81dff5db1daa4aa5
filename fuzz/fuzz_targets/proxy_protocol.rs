//! PROXY protocol v1/v2 headers (`proxy_protocol::parse`), read the way `accept_proxied`
//! reads them: parse the buffer, and while it says `Ok(None)` read more, up to `V2_MAX` bytes.
//!
//! Invariants:
//! - over the prefixes of the input, `parse` says `Ok(None)` and then, from the first prefix
//!   it decides on, always the same thing (the same header or the same error): a reader sees
//!   the same result however the bytes arrive, and bytes after a header never change it;
//! - it decides by `V2_MAX` bytes (v1: by its 107-byte line), so the reader never gives up on
//!   a header still coming;
//! - a header is decided exactly at its end: `len` bytes, within the input; a v1 line ends at
//!   its first CRLF, a v2 header is 16 bytes plus its length field;
//! - a v2 PROXY header over TCP4/TCP6 gives the addresses and ports its bytes hold, LOCAL and
//!   other families none; a v1 TCP4/TCP6 header written back as a line parses to the same
//!   addresses, and so do those addresses written as a v2 header with the input's TLVs.
//!
//! Input: the stream's first bytes.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use rpcpin::proxy_protocol::{parse, Error, Header, V2_MAX};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_MAX: usize = 107;

type Parsed = Result<Option<Header>, Error>;

fuzz_target!(|data: &[u8]| {
    let whole = parse(data);

    // Every prefix, as a reader growing its buffer a byte at a time would see it. Past
    // V2_MAX bytes the result is decided, so the prefixes stop there.
    let mut decided: Option<(usize, Parsed)> = None;
    for k in 0..=data.len().min(V2_MAX) {
        let r = parse(&data[..k]);
        match &decided {
            None if r == Ok(None) => {}
            None => decided = Some((k, r)),
            Some((at, first)) => assert_eq!(&r, first, "decided at {at}, differs at {k}"),
        }
    }
    let Some((at, first)) = decided else {
        assert!(data.len() < V2_MAX, "undecided at {} bytes", data.len());
        assert_eq!(whole, Ok(None));
        if data.starts_with(b"PROXY ") {
            assert!(data.len() < V1_MAX, "v1 undecided at {} bytes", data.len());
        }
        return;
    };
    assert_eq!(
        whole, first,
        "the whole input and its prefix of {at} bytes differ"
    );

    match whole {
        Ok(Some(h)) => {
            assert_eq!(h.len, at, "a header is decided exactly at its end");
            assert!(h.len <= data.len() && h.len <= V2_MAX);
            let header = &data[..h.len];
            if header.starts_with(b"PROXY ") {
                check_v1(header, &h);
            } else {
                assert!(
                    header.starts_with(V2_SIGNATURE),
                    "a header without a signature"
                );
                check_v2(header, &h);
            }
        }
        Ok(None) => unreachable!(),
        Err(Error::Missing) => {
            // Refused as soon as the input cannot start a header.
            assert!(!V2_SIGNATURE.starts_with(&data[..at]) && !b"PROXY ".starts_with(&data[..at]));
            assert!(
                V2_SIGNATURE.starts_with(&data[..at - 1]) || b"PROXY ".starts_with(&data[..at - 1])
            );
        }
        Err(Error::Malformed(_)) => {
            assert!(data.starts_with(b"PROXY ") || data.starts_with(V2_SIGNATURE));
            if data.starts_with(b"PROXY ") {
                assert!(at <= V1_MAX);
            }
        }
    }
});

/// A v1 line: ends at its first CRLF, and its addresses survive writing it back.
fn check_v1(line: &[u8], h: &Header) {
    assert!(line.len() <= V1_MAX, "v1 line of {} bytes", line.len());
    assert!(line.ends_with(b"\r\n"));
    assert!(!line[..line.len() - 1].windows(2).any(|w| w == b"\r\n"));
    let Some((src, dst)) = h.addrs else {
        assert!(line.starts_with(b"PROXY UNKNOWN"));
        return;
    };
    let proto = match (src.ip(), dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => "TCP4",
        (IpAddr::V6(_), IpAddr::V6(_)) => "TCP6",
        _ => panic!("v1 addresses of two families: {src} {dst}"),
    };
    assert!(line.starts_with(format!("PROXY {proto} ").as_bytes()));
    let again = format!(
        "PROXY {proto} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    );
    // Written canonically (shortest IPv6 form, ports without leading zeros or `+`) the line
    // may still differ in length; it is checked only when it fits in a v1 line.
    if again.len() <= V1_MAX {
        let h2 = parse(again.as_bytes())
            .expect("a written v1 line parses")
            .expect("complete");
        assert_eq!(h2.len, again.len());
        assert_eq!(h2.addrs, h.addrs, "{again:?}");
    }
    check_v2_roundtrip(src, dst, &[]);
}

/// A v2 header: its length field, and its addresses taken from its bytes.
fn check_v2(header: &[u8], h: &Header) {
    assert!(header.len() >= 16);
    assert_eq!(
        h.len,
        16 + usize::from(u16::from_be_bytes([header[14], header[15]]))
    );
    let (ver_cmd, family) = (header[12], header[13]);
    assert_eq!(ver_cmd >> 4, 2, "v2 version");
    let a = &header[16..];
    let expect = match (ver_cmd & 0x0f, family) {
        (0, _) => None,
        (1, 0x11) => {
            assert!(a.len() >= 12, "TCP4 with {} bytes of addresses", a.len());
            let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(a[o], a[o + 1], a[o + 2], a[o + 3]));
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            Some((
                SocketAddr::new(ip(0), port(8)),
                SocketAddr::new(ip(4), port(10)),
            ))
        }
        (1, 0x21) => {
            assert!(a.len() >= 36, "TCP6 with {} bytes of addresses", a.len());
            let ip = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&a[o..o + 16]);
                IpAddr::V6(Ipv6Addr::from(b))
            };
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            Some((
                SocketAddr::new(ip(0), port(32)),
                SocketAddr::new(ip(16), port(34)),
            ))
        }
        (1, f) => {
            // proxy-protocol.txt §2.2: families above AF_UNIX and transports above DGRAM
            // must be rejected.
            assert!(f >> 4 <= 3 && f & 0x0f <= 2, "family {f:#04x} accepted");
            None
        }
        (c, _) => panic!("v2 command {c} accepted"),
    };
    assert_eq!(h.addrs, expect);
    if let Some((src, dst)) = h.addrs {
        let tlvs = match family {
            0x11 => &a[12..],
            _ => &a[36..],
        };
        check_v2_roundtrip(src, dst, tlvs);
    }
}

/// `src` and `dst` written as a v2 PROXY header followed by `tlvs` parse back to themselves.
fn check_v2_roundtrip(src: SocketAddr, dst: SocketAddr, tlvs: &[u8]) {
    let mut b = V2_SIGNATURE.to_vec();
    let mut addrs = Vec::new();
    let family = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            addrs.extend_from_slice(&s.octets());
            addrs.extend_from_slice(&d.octets());
            0x11
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            addrs.extend_from_slice(&s.octets());
            addrs.extend_from_slice(&d.octets());
            0x21
        }
        _ => unreachable!(),
    };
    addrs.extend_from_slice(&src.port().to_be_bytes());
    addrs.extend_from_slice(&dst.port().to_be_bytes());
    addrs.extend_from_slice(tlvs);
    b.extend_from_slice(&[0x21, family]);
    b.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    b.extend_from_slice(&addrs);
    assert!(b.len() <= V2_MAX);
    b.extend_from_slice(b"\x05\x00\x0b\x03");
    let h = parse(&b)
        .expect("a written v2 header parses")
        .expect("complete");
    assert_eq!(h.len, b.len() - 4);
    assert_eq!(h.addrs, Some((src, dst)));
}
