//! Rewriting the endpoint mapper's answers: the towers of ept_map, ept_map_auth and
//! ept_lookup answers, across fragments.
//!
//! A response may span several fragments and a tower may straddle a boundary. The stub is
//! gathered into one bounded buffer to walk it. Pointing a tower at its pin changes only
//! its port and address, so those are patched in place and put back where they came from:
//! `frag_length`, alignment and offsets stay as they were, and a rewrite that changes
//! nothing changes no byte. Hiding the entries of unpinned interfaces (`epm.hide_unpinned`,
//! on by default) or the towers of pinned interfaces other than ncacn_ip_tcp
//! (`epm.other_towers`, hidden by default) removes bytes, so such an answer is re-encoded and
//! cut into new fragments.

use std::net::Ipv4Addr;

use crate::config::Pin;
use crate::interfaces::Interface;
use crate::wire::epm::{
    encode_answer, opnum, walk_lookup_response, walk_map_response, Answer, EntryRef,
    EPT_S_NOT_REGISTERED,
};
use crate::wire::ndr::Syntax;
use crate::wire::tower::Tower;
use crate::wire::{Endian, Result, SyntaxId};

mod fragments;

pub use fragments::rewrite_call;

/// Where towers of the pinned interfaces must point.
#[derive(Debug, Clone, Default)]
pub struct Table {
    entries: Vec<Target>,
}

/// One pinned interface and where clients must go for it.
#[derive(Debug, Clone)]
pub struct Target {
    /// The interface.
    pub interface: Interface,
    /// The pin's name, for logs.
    pub pin: String,
    /// The port clients are sent to.
    pub port: u16,
}

impl Table {
    /// A table from its entries.
    pub fn new(entries: Vec<Target>) -> Table {
        Table { entries }
    }

    /// The table for `pins`, each with the port its clients are sent to.
    pub fn from_pins<'a>(pins: impl IntoIterator<Item = (&'a Pin, u16)>) -> Table {
        let entries = pins
            .into_iter()
            .flat_map(|(pin, port)| {
                pin.interfaces.iter().map(move |&interface| Target {
                    interface,
                    pin: pin.name.clone(),
                    port,
                })
            })
            .collect();
        Table { entries }
    }

    /// Where `interface` is pinned, if it is.
    pub fn target(&self, interface: &SyntaxId) -> Option<&Target> {
        self.entries.iter().find(|t| t.interface.matches(interface))
    }
}

/// One tower that was rewritten, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// The tower's interface.
    pub interface: SyntaxId,
    /// The pin it was sent to.
    pub pin: String,
    /// The backend's port, as the tower had it.
    pub backend_port: u16,
    /// The port written instead.
    pub public_port: u16,
    /// The backend's address, as the tower had it.
    pub backend_addr: Ipv4Addr,
    /// The address written instead.
    pub advertised: Ipv4Addr,
}

/// Whether a call's response carries towers rpcpin rewrites: ept_map, ept_map_auth (the
/// same answer) and ept_lookup.
pub fn carries_towers(op: u16) -> bool {
    matches!(op, opnum::MAP | opnum::MAP_AUTH | opnum::LOOKUP)
}

/// How answers are rewritten.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    /// Where pinned interfaces point.
    pub table: &'a Table,
    /// The IPv4 address written into rewritten towers.
    pub advertise: Ipv4Addr,
    /// Whether entries of interfaces no pin carries are removed from answers.
    pub hide_unpinned: bool,
    /// Whether towers of pinned interfaces other than ncacn_ip_tcp are removed from answers.
    pub hide_other_towers: bool,
}

/// A tower of a pinned interface that is not ncacn_ip_tcp, removed from an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtherTower {
    /// The tower's interface and version.
    pub interface: SyntaxId,
    /// Floor 4's protocol id (`wire::tower::protocol::sequence` names it), if it has one.
    pub protocol: Option<u8>,
}

/// What a rewrite did to one answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Each tower pointed at rpcpin.
    pub rewritten: Vec<Rewritten>,
    /// Each entry removed (a tower or an ept_lookup entry of an unpinned interface), in
    /// answer order: the interface and version its tower names, or `None` for an entry
    /// with no tower, or one that does not parse or names no interface.
    pub hidden: Vec<Option<SyntaxId>>,
    /// Each tower of a pinned interface other than ncacn_ip_tcp removed (`hide_other_towers`),
    /// in answer order.
    pub other_towers: Vec<OtherTower>,
    /// The re-encoded stub, when entries were removed; otherwise the stub was patched in place.
    pub reencoded: Option<Vec<u8>>,
}

impl Changes {
    /// Whether entries were removed from the answer (which is then re-encoded).
    pub fn removed(&self) -> bool {
        !self.hidden.is_empty() || !self.other_towers.is_empty()
    }
}

/// Rewrites the towers of one reassembled ept_map or ept_lookup answer stub.
///
/// Every ncacn_ip_tcp tower of a pinned interface gets the pin's port and the advertised
/// address, in place. With `hide_other_towers`, the entries of a pinned interface whose tower
/// is of another protocol (ncacn_http, ncadg_ip_udp, named pipes, NetBIOS) are removed;
/// without it they stay as they are. With `hide_unpinned`, entries whose tower names no
/// pinned interface are removed; without it they stay untouched. Removing entries
/// re-encodes the answer (an ept_map left with no tower answers `ept_s_not_registered`).
pub fn rewrite_stub(
    stub: &mut [u8],
    endian: Endian,
    op: u16,
    syntax: Syntax,
    rules: Rules<'_>,
) -> Result<Changes> {
    let lookup = op == opnum::LOOKUP;
    let walk = match op {
        opnum::MAP | opnum::MAP_AUTH => walk_map_response(stub, endian, syntax)?,
        opnum::LOOKUP => walk_lookup_response(stub, endian, syntax)?,
        _ => return Ok(Changes::default()),
    };
    let mut done = Changes::default();
    let mut visible = vec![true; walk.entries.len()];
    for (entry, keep) in walk.entries.iter().zip(visible.iter_mut()) {
        let tower = entry
            .tower
            .and_then(|i| Tower::new_checked(&mut stub[walk.towers[i].clone()]).ok());
        let interface = tower.as_ref().and_then(|t| t.interface());
        let pinned = interface.and_then(|i| Some((i, rules.table.target(&i)?)));
        match (tower, pinned) {
            (Some(tower), Some((interface, _)))
                if rules.hide_other_towers && !tower.is_ncacn_ip_tcp() =>
            {
                *keep = false;
                done.other_towers.push(OtherTower {
                    interface,
                    protocol: tower.protocol(3),
                });
            }
            (Some(mut tower), Some((_, target))) => {
                if let Some(r) = point_at(&mut tower, target, rules.advertise) {
                    done.rewritten.push(r);
                }
            }
            _ if rules.hide_unpinned => {
                *keep = false;
                done.hidden.push(interface);
            }
            _ => {}
        }
    }
    if done.removed() {
        let refs: Vec<EntryRef<'_>> = walk
            .entries
            .iter()
            .zip(&visible)
            .filter(|(_, &v)| v)
            .map(|(e, _)| EntryRef {
                object: e.object.clone().map_or(&[][..], |r| &stub[r]),
                annotation: e.annotation.clone().map_or(&[][..], |r| &stub[r]),
                tower: e.tower.map(|i| &stub[walk.towers[i].clone()]),
            })
            .collect();
        let status = match walk.status {
            0 if refs.is_empty() && !lookup => EPT_S_NOT_REGISTERED,
            s => s,
        };
        let mut out = Vec::with_capacity(stub.len());
        let answer = Answer {
            lookup,
            handle: &stub[walk.handle.clone()],
            max_count: walk.max_count,
            entries: &refs,
            status,
        };
        encode_answer(&mut out, endian, syntax, &answer);
        done.reencoded = Some(out);
    }
    Ok(done)
}

/// Points an ncacn_ip_tcp tower at its pin; other protocols are left alone.
fn point_at(
    tower: &mut Tower<&mut [u8]>,
    target: &Target,
    advertise: Ipv4Addr,
) -> Option<Rewritten> {
    if !tower.is_ncacn_ip_tcp() {
        return None;
    }
    let (interface, backend_port, backend_addr) =
        (tower.interface()?, tower.tcp_port()?, tower.ipv4()?);
    tower.set_tcp_port(target.port);
    tower.set_ipv4(advertise);
    Some(Rewritten {
        interface,
        pin: target.pin.clone(),
        backend_port,
        public_port: target.port,
        backend_addr,
        advertised: advertise,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Pdu;

    pub(super) const NSPI_SERVER: &[u8] =
        include_bytes!("../../tests/data/mapi-epm-map-nspi.server.bin");
    pub(super) const EMSMDB_SERVER: &[u8] =
        include_bytes!("../../tests/data/mapi-epm-map-emsmdb.server.bin");
    pub(super) const LOOKUP_SERVER: &[u8] =
        include_bytes!("../../tests/data/mapi-epm-lookup.server.bin");
    pub(super) const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    pub(super) const MAX: usize = 1 << 20;

    pub(super) fn target(alias: &str, pin: &str, port: u16) -> Target {
        Target {
            interface: Interface::parse(alias).unwrap()[0],
            pin: pin.into(),
            port,
        }
    }

    pub(super) fn exchange_table() -> Table {
        Table::new(vec![
            target("nspi", "directory", 6004),
            target("emsmdb", "store", 6001),
        ])
    }

    /// The rules for `table`; towers other than ncacn_ip_tcp are hidden, as by default.
    pub(super) fn rules(table: &Table, hide_unpinned: bool) -> Rules<'_> {
        Rules {
            table,
            advertise: PUBLIC,
            hide_unpinned,
            hide_other_towers: true,
        }
    }

    /// Rewrites NDR `frags` as one call with the Exchange table.
    pub(super) fn rewrite(frags: &mut [Vec<u8>], op: u16, hide: bool) -> Changes {
        rewrite_in(frags, op, &exchange_table(), hide)
    }

    /// Rewrites NDR `frags` as one call with `table`.
    pub(super) fn rewrite_in(frags: &mut [Vec<u8>], op: u16, table: &Table, hide: bool) -> Changes {
        let mut pdus = checked(frags);
        rewrite_call(&mut pdus, op, Syntax::Ndr, rules(table, hide), MAX).unwrap()
    }

    /// Checked views over `frags`, as the reader hands them out.
    pub(super) fn checked(frags: &mut [Vec<u8>]) -> Vec<Pdu<&mut [u8]>> {
        frags
            .iter_mut()
            .map(|f| Pdu::new_checked(&mut f[..]).unwrap())
            .collect()
    }

    pub(super) fn changed(a: &[u8], b: &[u8]) -> Vec<usize> {
        (0..a.len()).filter(|&i| a[i] != b[i]).collect()
    }

    pub(super) fn vector(name: &str) -> (Vec<u8>, Vec<u8>) {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/impacket/");
        (
            std::fs::read(format!("{dir}{name}.in.bin")).unwrap(),
            std::fs::read(format!("{dir}{name}.out.bin")).unwrap(),
        )
    }

    #[test]
    fn rewrites_exchanges_nspi_answer() {
        let original = &NSPI_SERVER[60..];
        let mut frags = [original.to_vec()];
        let done = rewrite(&mut frags, opnum::MAP, true);
        assert_eq!(
            (done.rewritten.len(), done.hidden.len(), done.reencoded),
            (1, 0, None)
        );
        let r = &done.rewritten[0];
        assert_eq!((r.backend_port, r.public_port), (4997, 6004));
        assert_eq!(r.backend_addr, Ipv4Addr::new(192, 168, 0, 2));
        // Only the port (2 bytes) and the address (4 bytes) of the tower changed.
        let offs = changed(original, &frags[0]);
        assert_eq!(offs.len(), 6, "{offs:?}");
        assert_eq!(&frags[0][offs[0]..offs[0] + 2], &6004u16.to_be_bytes());
        assert_eq!(&frags[0][offs[2]..offs[2] + 4], &PUBLIC.octets());
    }

    #[test]
    fn rewrites_exchanges_emsmdb_answer() {
        let mut frags = [EMSMDB_SERVER[60..].to_vec()];
        let done = rewrite(&mut frags, opnum::MAP, true);
        let r = &done.rewritten[0];
        assert_eq!(
            (r.backend_port, r.public_port, r.pin.as_str()),
            (1032, 6001, "store")
        );
    }

    #[test]
    fn ept_map_auth_is_rewritten_like_ept_map() {
        let mut frags = [NSPI_SERVER[60..].to_vec()];
        let done = rewrite(&mut frags, opnum::MAP_AUTH, true);
        assert_eq!(done.rewritten.len(), 1);
        assert!(carries_towers(opnum::MAP_AUTH) && !carries_towers(opnum::LOOKUP_HANDLE_FREE));
    }

    #[test]
    fn unpinned_interface_is_untouched_unless_hidden() {
        let original = NSPI_SERVER[60..].to_vec();
        let table = Table::new(vec![target("emsmdb", "store", 6001)]);
        let mut frags = [original.clone()];
        let done = rewrite_in(&mut frags, opnum::MAP, &table, false);
        assert_eq!(done, Changes::default());
        assert_eq!(frags[0], original);

        // Hidden: the answer is re-encoded as "not registered" with no tower, in one
        // fragment with Exchange's call id and context.
        let done = rewrite_in(&mut frags, opnum::MAP, &table, true);
        let nspi = Interface::parse("nspi").unwrap()[0];
        // The hidden entry is named by its tower's interface and version.
        let named = done
            .hidden
            .iter()
            .map(|h| h.map(|i| (i.uuid, i.major, i.minor)));
        assert_eq!(named.collect::<Vec<_>>(), [Some((nspi.uuid, 56, 0))]);
        assert_eq!(done.rewritten.len(), 0);
        let pdus = done.reencoded.unwrap();
        let p = Pdu::new_checked(&pdus[..]).unwrap();
        assert_eq!(
            (p.frag_len(), p.call_id(), p.flags() & 3),
            (pdus.len(), 1, 3)
        );
        let stub = &pdus[24..];
        let walk = walk_map_response(stub, Endian::Little, Syntax::Ndr).unwrap();
        assert_eq!(
            (walk.status, walk.towers.len(), walk.max_count),
            (EPT_S_NOT_REGISTERED, 0, 4)
        );
        assert_eq!(stub[..20], original[24..44], "the entry handle is kept");
    }

    /// Exchange's ept_lookup answer holds NSPI's ncacn_http tower (192.168.0.2 inside):
    /// hidden by default, the answer re-encoded without it.
    #[test]
    fn http_tower_of_a_pinned_interface_is_hidden() {
        let original = LOOKUP_SERVER[60..].to_vec();
        let stub = &original[24..];
        let before = walk_lookup_response(stub, Endian::Little, Syntax::Ndr).unwrap();
        let mut frags = [original.clone()];
        let done = rewrite(&mut frags, opnum::LOOKUP, true);
        let nspi = Interface::parse("nspi").unwrap()[0];
        let hidden = done
            .other_towers
            .iter()
            .map(|t| (t.interface.uuid, t.protocol));
        assert_eq!(hidden.collect::<Vec<_>>(), [(nspi.uuid, Some(0x1f))]);
        assert_eq!((done.rewritten.len(), done.hidden.len()), (0, 0));
        assert_eq!(
            frags[0], original,
            "the fragments are left, the re-encoded answer is sent"
        );
        let pdus = done.reencoded.unwrap();
        let walk = walk_lookup_response(&pdus[24..], Endian::Little, Syntax::Ndr).unwrap();
        assert_eq!(walk.status, before.status);
        assert_eq!(walk.entries.len() + 1, before.entries.len());
        for t in &walk.towers {
            assert!(!pdus[24..][t.clone()]
                .windows(4)
                .any(|w| w == [192, 168, 0, 2]));
        }
    }

    /// With `epm.other_towers = "keep"` the ncacn_http tower passes untouched.
    #[test]
    fn http_tower_of_a_pinned_interface_is_kept_on_request() {
        let original = LOOKUP_SERVER[60..].to_vec();
        let mut frags = [original.clone()];
        let table = exchange_table();
        let keep = Rules {
            hide_other_towers: false,
            ..rules(&table, true)
        };
        let done = rewrite_call(
            &mut checked(&mut frags),
            opnum::LOOKUP,
            Syntax::Ndr,
            keep,
            MAX,
        );
        assert_eq!(done.unwrap(), Changes::default());
        assert_eq!(frags[0], original);
    }

    /// ept_map and ept_lookup answers in NDR and NDR64 built by impacket, and the answers
    /// impacket builds with the towers a correct rewrite yields (tests/data/impacket).
    #[test]
    fn impacket_vectors() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/impacket/");
        let manifest = std::fs::read_to_string(format!("{dir}manifest.txt")).unwrap();
        let table = exchange_table();
        let mut seen = 0;
        for line in manifest.lines() {
            let (name, rewrites) = line.split_once(' ').unwrap();
            if name.starts_with("map-mixed") {
                continue; // hidden towers: fragments.rs judges these
            }
            let (input, expected) = vector(name);
            let op = if name.starts_with("lookup") {
                opnum::LOOKUP
            } else {
                opnum::MAP
            };
            let syntax = if name.ends_with("ndr64") {
                Syntax::Ndr64
            } else {
                Syntax::Ndr
            };
            let mut stub = input.clone();
            // Every entry stays (hiding off) so that impacket's answer is the judge.
            let keep = Rules {
                hide_other_towers: false,
                ..rules(&table, false)
            };
            let done = rewrite_stub(&mut stub, Endian::Little, op, syntax, keep).unwrap();
            assert_eq!(
                done.rewritten.len(),
                rewrites.parse::<usize>().unwrap(),
                "{name}"
            );
            assert_eq!(stub, expected, "{name}");
            // Walking NDR64 as NDR (or the reverse) must not silently produce a rewrite.
            let wrong = if syntax == Syntax::Ndr {
                Syntax::Ndr64
            } else {
                Syntax::Ndr
            };
            let mut again = input.clone();
            if let Ok(d) = rewrite_stub(&mut again, Endian::Little, op, wrong, keep) {
                assert!(
                    d.rewritten.is_empty() || again != expected,
                    "{name} walked as {wrong:?}"
                );
            }
            seen += 1;
        }
        assert_eq!(seen, 6);
    }
}
