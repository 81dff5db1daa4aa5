//! Protocol towers (`twr_t` octet strings, C706 appendix L).
//!
//! ```text
//! floor_count u16 LE
//! floor[i]: lhs_len u16 LE, lhs (protocol id, then data), rhs_len u16 LE, rhs
//!   floor 1: lhs 0x0d + interface UUID (LE) + major u16 LE; rhs minor u16 LE
//!   floor 2: lhs 0x0d + transfer syntax UUID + major;       rhs minor
//!   floor 3: lhs 0x0b (ncacn, connection-oriented RPC);     rhs minor version
//!   floor 4: lhs 0x07 (TCP);                                rhs port, big endian
//!   floor 5: lhs 0x09 (IP);                                 rhs IPv4 address, big endian
//! ```
//!
//! Whatever the PDU's drep, the counts and lengths inside a tower are little endian and the
//! port and address are in network order.

use core::net::Ipv4Addr;
use core::ops::Range;

use super::{get_u16, put_u16, set_u16, Endian, Error, Result, SyntaxId};

/// Protocol identifiers of the floors rpcpin looks at (C706 appendix I).
pub mod protocol {
    /// A UUID floor (interface or transfer syntax).
    pub const UUID: u8 = 0x0d;
    /// Connection-oriented RPC (ncacn).
    pub const NCACN: u8 = 0x0b;
    /// TCP port.
    pub const TCP: u8 = 0x07;
    /// IPv4 address.
    pub const IP: u8 = 0x09;
    /// HTTP port (ncacn_http, MS-RPCE 2.1.1.4).
    pub const HTTP: u8 = 0x1f;

    /// The protocol sequence a tower whose floor 4 has protocol id `floor4` stands for, as
    /// in a string binding (C706 appendix I, MS-RPCE 2.1.1): `ncacn_http`, `ncacn_np`, …
    pub fn sequence(floor4: u8) -> Option<&'static str> {
        Some(match floor4 {
            TCP => "ncacn_ip_tcp",
            0x08 => "ncadg_ip_udp",
            0x0c => "ncacn_spx",
            0x0e => "ncadg_ipx",
            0x0f => "ncacn_np",
            0x10 => "ncalrpc",
            0x12 => "ncacn_nb",
            HTTP => "ncacn_http",
            _ => return None,
        })
    }
}

/// Offsets in a tower and in a UUID floor (C706 appendix L); every count and length is a
/// little-endian u16.
mod field {
    /// `floor_count`.
    pub const FLOOR_COUNT: usize = 0;
    /// The first floor: `lhs_len`, lhs, `rhs_len`, rhs.
    pub const FLOORS: usize = 2;
    /// A floor side's length prefix.
    pub const SIDE_LEN: usize = 2;

    /// Within a UUID floor's lhs (19 bytes) and rhs (2 bytes).
    pub mod uuid_floor {
        use core::ops::Range;
        pub const PROTOCOL: usize = 0;
        /// Its first three fields little endian.
        pub const UUID: Range<usize> = 1..17;
        pub const MAJOR: usize = 17;
        pub const LHS_LEN: usize = 19;
        /// In the rhs.
        pub const MINOR: usize = 0;
        pub const RHS_LEN: usize = 2;
    }
}

/// The largest floor count rpcpin accepts: real towers have 5 or so.
const MAX_FLOORS: usize = 32;

/// A checked view over a tower's octets.
#[derive(Debug, Clone)]
pub struct Tower<T: AsRef<[u8]>> {
    buffer: T,
    /// `(lhs, rhs)` ranges of the first floors, as many as `n_floors`.
    floors: [(Range<usize>, Range<usize>); 5],
    n_floors: usize,
}

impl<T: AsRef<[u8]>> Tower<T> {
    /// Walks every floor, checking that each length fits inside the tower.
    pub fn new_checked(buffer: T) -> Result<Tower<T>> {
        let buf = buffer.as_ref();
        let count =
            le16(buf, field::FLOOR_COUNT).ok_or(Error::Truncated("tower floor count"))? as usize;
        if count > MAX_FLOORS {
            return Err(Error::Malformed("tower floor count"));
        }
        let mut floors: [(Range<usize>, Range<usize>); 5] = Default::default();
        let mut at = field::FLOORS;
        for i in 0..count {
            let lhs = side(buf, &mut at, "tower floor lhs")?;
            if lhs.is_empty() {
                return Err(Error::Malformed("empty tower floor lhs"));
            }
            let rhs = side(buf, &mut at, "tower floor rhs")?;
            if let Some(slot) = floors.get_mut(i) {
                *slot = (lhs, rhs);
            }
        }
        Ok(Tower {
            buffer,
            floors,
            n_floors: count.min(5),
        })
    }

    /// The tower's octets.
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// The number of floors.
    pub fn floor_count(&self) -> usize {
        le16(self.buffer.as_ref(), field::FLOOR_COUNT).unwrap_or(0) as usize
    }

    /// The protocol id of floor `i` (0-based), among the first five.
    pub fn protocol(&self, i: usize) -> Option<u8> {
        let (lhs, _) = self.floors[..self.n_floors].get(i)?;
        Some(self.buffer.as_ref()[lhs.start])
    }

    /// The interface of floor 1, when it is a UUID floor.
    pub fn interface(&self) -> Option<SyntaxId> {
        uuid_floor(self.buffer.as_ref(), self.floors[..self.n_floors].first()?)
    }

    /// The transfer syntax of floor 2, when it is a UUID floor.
    pub fn transfer_syntax(&self) -> Option<SyntaxId> {
        uuid_floor(self.buffer.as_ref(), self.floors[..self.n_floors].get(1)?)
    }

    /// Whether this is an ncacn_ip_tcp tower: RPC connection-oriented over TCP over IP.
    pub fn is_ncacn_ip_tcp(&self) -> bool {
        self.n_floors == 5
            && self.protocol(2) == Some(protocol::NCACN)
            && self.tcp_port_range().is_some()
            && self.ipv4_range().is_some()
    }

    /// Where the TCP port (floor 4's rhs) lies, when floor 4 is a 2-byte TCP floor.
    pub fn tcp_port_range(&self) -> Option<Range<usize>> {
        self.rhs_of(3, protocol::TCP, 2)
    }

    /// Where the IPv4 address (floor 5's rhs) lies, when floor 5 is a 4-byte IP floor.
    pub fn ipv4_range(&self) -> Option<Range<usize>> {
        self.rhs_of(4, protocol::IP, 4)
    }

    /// The TCP port, when there is a TCP floor.
    pub fn tcp_port(&self) -> Option<u16> {
        let r = self.tcp_port_range()?;
        Some(get_u16(self.buffer.as_ref(), r.start, Endian::Big))
    }

    /// The IPv4 address, when there is an IP floor.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        let r = self.ipv4_range()?;
        let b = &self.buffer.as_ref()[r];
        Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    }

    fn rhs_of(&self, floor: usize, proto: u8, len: usize) -> Option<Range<usize>> {
        let (_, rhs) = self.floors[..self.n_floors].get(floor)?;
        (self.protocol(floor) == Some(proto) && rhs.len() == len).then(|| rhs.clone())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Tower<T> {
    /// Overwrites the TCP port in place; `false` when there is no TCP floor.
    pub fn set_tcp_port(&mut self, port: u16) -> bool {
        match self.tcp_port_range() {
            Some(r) => {
                set_u16(self.buffer.as_mut(), r.start, port, Endian::Big);
                true
            }
            None => false,
        }
    }

    /// Overwrites the IPv4 address in place; `false` when there is no IP floor.
    pub fn set_ipv4(&mut self, addr: Ipv4Addr) -> bool {
        match self.ipv4_range() {
            Some(r) => {
                self.buffer.as_mut()[r].copy_from_slice(&addr.octets());
                true
            }
            None => false,
        }
    }
}

fn le16(buf: &[u8], at: usize) -> Option<u16> {
    buf.get(at..at + 2)?;
    Some(get_u16(buf, at, Endian::Little))
}

/// Reads one length-prefixed side of a floor and returns the range of its bytes.
fn side(buf: &[u8], at: &mut usize, what: &'static str) -> Result<Range<usize>> {
    let len = le16(buf, *at).ok_or(Error::Truncated(what))? as usize;
    let start = *at + field::SIDE_LEN;
    let end = start + len;
    if end > buf.len() {
        return Err(Error::Truncated(what));
    }
    *at = end;
    Ok(start..end)
}

fn uuid_floor(buf: &[u8], (lhs, rhs): &(Range<usize>, Range<usize>)) -> Option<SyntaxId> {
    let l = &buf[lhs.clone()];
    let r = &buf[rhs.clone()];
    use field::uuid_floor as f;
    if l.len() != f::LHS_LEN || l[f::PROTOCOL] != protocol::UUID || r.len() != f::RHS_LEN {
        return None;
    }
    Some(SyntaxId {
        uuid: super::uuid::from_wire(&l[f::UUID], Endian::Little).ok()?,
        major: get_u16(l, f::MAJOR, Endian::Little),
        minor: get_u16(r, f::MINOR, Endian::Little),
    })
}

/// Appends an ncacn_ip_tcp tower for `interface` over NDR, with the given port and address
/// (zeros in a query: "any").
pub fn encode_tcp_tower(out: &mut Vec<u8>, interface: SyntaxId, port: u16, addr: Ipv4Addr) {
    encode_tcp_tower_over(out, interface, SyntaxId::NDR, port, addr);
}

/// Appends an ncacn_ip_tcp tower for `interface` over `transfer_syntax`, with the given port
/// and address.
pub fn encode_tcp_tower_over(
    out: &mut Vec<u8>,
    interface: SyntaxId,
    transfer_syntax: SyntaxId,
    port: u16,
    addr: Ipv4Addr,
) {
    let floor_uuid = |out: &mut Vec<u8>, s: SyntaxId| {
        put_u16(out, field::uuid_floor::LHS_LEN as u16, Endian::Little);
        out.push(protocol::UUID);
        super::uuid::write(out, &s.uuid, Endian::Little);
        put_u16(out, s.major, Endian::Little);
        put_u16(out, field::uuid_floor::RHS_LEN as u16, Endian::Little);
        put_u16(out, s.minor, Endian::Little);
    };
    put_u16(out, 5, Endian::Little);
    floor_uuid(out, interface);
    floor_uuid(out, transfer_syntax);
    out.extend_from_slice(&[1, 0, protocol::NCACN, 2, 0, 0, 0]);
    out.extend_from_slice(&[1, 0, protocol::TCP, 2, 0]);
    put_u16(out, port, Endian::Big);
    out.extend_from_slice(&[1, 0, protocol::IP, 4, 0]);
    out.extend_from_slice(&addr.octets());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::hex;
    use ::uuid::uuid;

    // The NSPI tower Exchange returned in mapi.pcap: TCP 4997 at 192.168.0.2.
    const NSPI_TOWER: &str = "050013000d185accf564421a108c5908002b2f842638000200000013000d045d888a\
        eb1cc9119fe808002b10486002000200000001000b02000000010007020013850100090400c0a80002";
    const NSPI: SyntaxId = SyntaxId::new(uuid!("f5cc5a18-4264-101a-8c59-08002b2f8426"), 56, 0);

    #[test]
    fn test_deconstruct() {
        let bytes = hex(NSPI_TOWER);
        let t = Tower::new_checked(&bytes[..]).unwrap();
        assert_eq!(t.floor_count(), 5);
        assert_eq!(t.interface(), Some(NSPI));
        assert_eq!(t.transfer_syntax(), Some(SyntaxId::NDR));
        assert!(t.is_ncacn_ip_tcp());
        assert_eq!(t.tcp_port(), Some(4997));
        assert_eq!(t.ipv4(), Some(Ipv4Addr::new(192, 168, 0, 2)));
    }

    #[test]
    fn test_construct() {
        let mut out = Vec::new();
        encode_tcp_tower(&mut out, NSPI, 4997, Ipv4Addr::new(192, 168, 0, 2));
        assert_eq!(out, hex(NSPI_TOWER));
    }

    #[test]
    fn setters_change_only_port_and_address() {
        let original = hex(NSPI_TOWER);
        let mut bytes = original.clone();
        let mut t = Tower::new_checked(&mut bytes[..]).unwrap();
        assert!(t.set_tcp_port(6004));
        assert!(t.set_ipv4(Ipv4Addr::new(203, 0, 113, 10)));
        assert_eq!(t.tcp_port(), Some(6004));
        let changed: Vec<usize> = (0..original.len())
            .filter(|&i| original[i] != bytes[i])
            .collect();
        assert_eq!(changed, [64, 65, 71, 72, 73, 74]);
    }

    #[test]
    fn http_tower_is_not_tcp() {
        // The ncacn_http tower of the ept_lookup answer in mapi.pcap (port 5000).
        let mut bytes = hex(NSPI_TOWER);
        bytes[61] = protocol::HTTP;
        let mut t = Tower::new_checked(&mut bytes[..]).unwrap();
        assert!(!t.is_ncacn_ip_tcp());
        assert!(!t.set_tcp_port(1));
    }

    #[test]
    fn rejects_lengths_past_the_end() {
        let bytes = hex(NSPI_TOWER);
        for cut in 0..bytes.len() {
            assert!(Tower::new_checked(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = bytes.clone();
        huge[0] = 0xff;
        assert_eq!(
            Tower::new_checked(&huge[..]).err(),
            Some(Error::Malformed("tower floor count"))
        );
    }
}
