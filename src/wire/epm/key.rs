//! What an ept_map tower asks for, as a key two equivalent towers share, and the tower an
//! answer gives back for it.
//!
//! A map tower (C706 appendix L) names the interface (floor 1), the transfer syntax
//! (floor 2) and the protocol stack (floors 3 and up: `ncacn_ip_tcp` is 0x0b, 0x07, 0x09);
//! the right-hand sides of the protocol floors (the protocol's minor version, the port and
//! the address, zeros in a query) are what the answer fills in, so the key leaves them out.

use core::net::Ipv4Addr;

use crate::wire::tower::{protocol, Tower};
use crate::wire::{Error, Result, SyntaxId};

/// The most protocol floors a key holds: [`Tower`] reads five floors.
const MAX_PROTOCOLS: usize = 3;

/// What a map tower asks for: its interface, transfer syntax and protocol stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TowerKey {
    /// Floor 1: the interface and its version.
    pub interface: SyntaxId,
    /// Floor 2: the transfer syntax the client will bind with.
    pub transfer_syntax: SyntaxId,
    protocols: [u8; MAX_PROTOCOLS],
    n_protocols: u8,
}

impl TowerKey {
    /// The key of a tower of 3 to 5 floors whose first two are UUID floors. Other towers
    /// are [`Error::Malformed`] (floors 1 or 2 not UUID floors, fewer than 3 floors) or
    /// [`Error::Unsupported`] (more than 5): an endpoint mapper has nothing registered for
    /// them, and answers `ept_s_not_registered`.
    pub fn of<T: AsRef<[u8]>>(tower: &Tower<T>) -> Result<TowerKey> {
        let floors = tower.floor_count();
        if floors < 3 {
            return Err(Error::Malformed("map tower of fewer than 3 floors"));
        }
        if floors > 2 + MAX_PROTOCOLS {
            return Err(Error::Unsupported("map tower of more than 5 floors"));
        }
        let interface = tower
            .interface()
            .ok_or(Error::Malformed("map tower floor 1 (interface)"))?;
        let transfer_syntax = tower
            .transfer_syntax()
            .ok_or(Error::Malformed("map tower floor 2 (transfer syntax)"))?;
        let mut protocols = [0; MAX_PROTOCOLS];
        for (i, p) in protocols.iter_mut().enumerate().take(floors - 2) {
            *p = tower
                .protocol(i + 2)
                .ok_or(Error::Malformed("map tower protocol floor"))?;
        }
        Ok(TowerKey {
            interface,
            transfer_syntax,
            protocols,
            n_protocols: (floors - 2) as u8,
        })
    }

    /// The protocol ids of floors 3 and up, in order (see [`protocol`]).
    pub fn protocols(&self) -> &[u8] {
        &self.protocols[..usize::from(self.n_protocols)]
    }

    /// Whether the stack is `ncacn_ip_tcp`: connection-oriented RPC over TCP over IP.
    pub fn is_ncacn_ip_tcp(&self) -> bool {
        self.protocols() == [protocol::NCACN, protocol::TCP, protocol::IP]
    }
}

/// The tower an ept_map answer returns for an ncacn_ip_tcp map tower: the client's own
/// floors (the same interface and transfer-syntax floors, byte for byte), with `port` in
/// floor 4 and `addr` in floor 5, as Windows and Samba answer. Another tower is
/// [`Error::Unsupported`].
pub fn answer_tower<T: AsRef<[u8]>>(
    request: &Tower<T>,
    port: u16,
    addr: Ipv4Addr,
) -> Result<Vec<u8>> {
    if !request.is_ncacn_ip_tcp() {
        return Err(Error::Unsupported("map tower other than ncacn_ip_tcp"));
    }
    let mut octets = request.as_bytes().to_vec();
    let mut tower = Tower::new_checked(&mut octets[..])?;
    if !(tower.set_tcp_port(port) && tower.set_ipv4(addr)) {
        return Err(Error::Unsupported("map tower other than ncacn_ip_tcp"));
    }
    Ok(octets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::hex;
    use crate::wire::tower::encode_tcp_tower;
    use ::uuid::uuid;

    const SAMR: SyntaxId = SyntaxId::new(uuid!("12345778-1234-abcd-ef00-0123456789ac"), 1, 0);

    #[test]
    fn port_address_and_protocol_minor_are_not_part_of_the_key() {
        let mut a = Vec::new();
        encode_tcp_tower(&mut a, SAMR, 0, Ipv4Addr::UNSPECIFIED);
        let mut b = Vec::new();
        encode_tcp_tower(&mut b, SAMR, 135, Ipv4Addr::new(10, 0, 0, 1));
        // floor 3's rhs (the ncacn minor version) at offsets 57..59.
        b[57] = 1;
        let ka = TowerKey::of(&Tower::new_checked(&a[..]).unwrap()).unwrap();
        let kb = TowerKey::of(&Tower::new_checked(&b[..]).unwrap()).unwrap();
        assert_eq!(ka, kb);
        assert!(ka.is_ncacn_ip_tcp());
        assert_eq!(ka.interface, SAMR);
        assert_eq!(ka.transfer_syntax, SyntaxId::NDR);
        assert_eq!(ka.protocols(), [0x0b, 0x07, 0x09]);
        // Another interface version or transfer syntax is another key.
        b[21] = 2;
        let kb = TowerKey::of(&Tower::new_checked(&b[..]).unwrap()).unwrap();
        assert_ne!(ka, kb);
    }

    #[test]
    fn towers_without_uuid_floors_or_protocols_have_no_key() {
        // Two UUID floors only.
        let mut t = Vec::new();
        encode_tcp_tower(&mut t, SAMR, 0, Ipv4Addr::UNSPECIFIED);
        t[0] = 2;
        assert_eq!(
            TowerKey::of(&Tower::new_checked(&t[..]).unwrap()),
            Err(Error::Malformed("map tower of fewer than 3 floors"))
        );
        // One floor with a one-byte lhs, then the rest.
        let one = hex("0300 0100 0d 0000 0100 0b 0000 0100 07 0000");
        assert_eq!(
            TowerKey::of(&Tower::new_checked(&one[..]).unwrap()),
            Err(Error::Malformed("map tower floor 1 (interface)"))
        );
    }

    #[test]
    fn answer_tower_fills_in_port_and_address_only() {
        let mut query = Vec::new();
        encode_tcp_tower(&mut query, SAMR, 0, Ipv4Addr::UNSPECIFIED);
        let q = Tower::new_checked(&query[..]).unwrap();
        let a = answer_tower(&q, 49153, Ipv4Addr::new(127, 0, 0, 3)).unwrap();
        let mut expected = Vec::new();
        encode_tcp_tower(&mut expected, SAMR, 49153, Ipv4Addr::new(127, 0, 0, 3));
        assert_eq!(a, expected);
        let mut http = query.clone();
        http[61] = protocol::HTTP;
        let h = Tower::new_checked(&http[..]).unwrap();
        assert_eq!(
            answer_tower(&h, 1, Ipv4Addr::LOCALHOST),
            Err(Error::Unsupported("map tower other than ncacn_ip_tcp"))
        );
    }
}
