#!/usr/bin/env python3
"""Builds ept_map and ept_lookup answer stubs with impacket's NDR and NDR64 encoders.

For each vector, <name>.in.bin is what a backend would send and <name>.out.bin is the same
answer built again by impacket with the towers a correct rewrite produces, so rpcpin's output
is judged by an encoder nobody here wrote. The map-mixed vectors give the pinned NSPI
ncacn_ip_tcp, ncacn_http and ncacn_np towers: their .out.bin is the answer with only the
ncacn_ip_tcp tower, rewritten (epm.other_towers = "hide", the default); the others keep every
entry (hiding off). Regenerate with:

    target/interop-venv/bin/python tests/data/impacket/generate.py   # tests/interop/install-deps.sh

The Rust test (src/epm_rewrite/mod.rs, `impacket_vectors`) pins nspi -> 6004 and
emsmdb -> 6001 and advertises 203.0.113.10.
"""
import os
import random
import socket
import struct

from impacket.dcerpc.v5 import epm
from impacket.uuid import string_to_bin

HERE = os.path.dirname(os.path.abspath(__file__))
NDR = ("8a885d04-1ceb-11c9-9fe8-08002b104860", 2, 0)
NSPI = ("f5cc5a18-4264-101a-8c59-08002b2f8426", 56, 0)
EMSMDB = ("a4f1db00-ca47-1067-b31f-00dd010662da", 0, 81)
SAMR = ("12345778-1234-abcd-ef00-0123456789ac", 1, 0)
RFR = ("1544f5e0-613c-11d1-93df-00c04fd7bd09", 1, 0)
BACKEND = "10.0.0.5"
PUBLIC = "203.0.113.10"
PINS = {NSPI[0]: 6004, EMSMDB[0]: 6001}
TCP, HTTP, NP = 0x07, 0x1F, 0x0F


def tower(iface, port, addr, proto=0x07):
    """An ncacn_ip_tcp tower (proto 0x07), an ncacn_http one (0x1f), or an ncacn_np one (0x0f:
    port is the pipe name, addr the NetBIOS host, both NUL-terminated as Windows writes them)."""
    i = epm.EPMRPCInterface()
    i["InterfaceUUID"] = string_to_bin(iface[0])
    i["MajorVersion"], i["MinorVersion"] = iface[1], iface[2]
    d = epm.EPMRPCDataRepresentation()
    d["DataRepUuid"] = string_to_bin(NDR[0])
    d["MajorVersion"], d["MinorVersion"] = NDR[1], NDR[2]
    p = epm.EPMProtocolIdentifier()
    p["ProtIdentifier"] = 0x0B
    if proto == NP:
        top = floor(NP, port.encode() + b"\x00") + floor(0x11, addr.encode() + b"\x00")
    else:
        port_floor = epm.EPMPortAddr()
        port_floor["PortIdentifier"] = proto
        port_floor["IpPort"] = port
        h = epm.EPMHostAddr()
        h["Ip4addr"] = socket.inet_aton(addr)
        top = port_floor.getData() + h.getData()
    t = epm.EPMTower()
    t["NumberOfFloors"] = 5
    t["Floors"] = i.getData() + d.getData() + p.getData() + top
    return t.getData()


def floor(protocol, rhs):
    """One tower floor with a one-byte lhs (the protocol id)."""
    return struct.pack("<HBH", 1, protocol, len(rhs)) + rhs


def rewritten(spec):
    """The tower a correct rewrite yields: pinned ncacn_ip_tcp towers point at rpcpin."""
    iface, port, addr, proto = spec
    if proto == 0x07 and iface[0] in PINS:
        return tower(iface, PINS[iface[0]], PUBLIC, proto)
    return tower(*spec)


def twr_p(octets, ndr64):
    t = epm.twr_p_t(isNDR64=ndr64)
    t["tower_length"] = len(octets)
    t["tower_octet_string"] = octets
    return t


def map_answer(towers, ndr64, status=0):
    r = epm.ept_mapResponse(isNDR64=ndr64)
    r["num_towers"] = len(towers)
    r["ITowers"] = [twr_p(t, ndr64) for t in towers]
    r["status"] = status
    return r.getData()


def lookup_answer(entries, ndr64):
    r = epm.ept_lookupResponse(isNDR64=ndr64)
    r["num_ents"] = len(entries)
    items = []
    for octets, annotation in entries:
        e = epm.ept_entry_t(isNDR64=ndr64)
        e["object"] = b"\x00" * 16
        e["tower"] = twr_p(octets, ndr64)
        e["annotation"] = annotation
        items.append(e)
    r["entries"] = items
    r["status"] = 0
    return r.getData()


MAP_TOWERS = [
    (NSPI, 49154, BACKEND, TCP),   # pinned: rewritten
    (RFR, 49155, BACKEND, TCP),    # not pinned: untouched
    (NSPI, 6002, BACKEND, HTTP),   # ncacn_http: untouched
    (EMSMDB, 49160, BACKEND, TCP), # pinned to the other port
]
LOOKUP_ENTRIES = [
    ((NSPI, 49154, BACKEND, TCP), b"MS Exchange Directory NSP Interface\x00"),
    ((SAMR, 49153, BACKEND, TCP), b""),
    ((EMSMDB, 49160, BACKEND, TCP), b"x\x00"),
    ((NSPI, 6002, BACKEND, HTTP), b"abc\x00"),
    ((EMSMDB, 49161, "0.0.0.0", TCP), b"Exchange store\x00"),
]
# The pinned NSPI over three protocols: only the ncacn_ip_tcp tower may reach a client.
MIXED_TOWERS = [
    (NSPI, 6002, BACKEND, HTTP),
    (NSPI, 49154, BACKEND, TCP),
    (NSPI, "\\PIPE\\nspi", "EXCH01", NP),
]


def build(make, specs, ndr64, *extra):
    # impacket draws referent ids at random: the same seed gives both answers the same ids.
    random.seed(135)
    return make(specs, ndr64, *extra)


def write(name, before, after, rewrites):
    with open(os.path.join(HERE, name + ".in.bin"), "wb") as f:
        f.write(before)
    with open(os.path.join(HERE, name + ".out.bin"), "wb") as f:
        f.write(after)
    manifest.append(f"{name} {rewrites}")


manifest = []
for ndr64, suffix in ((False, "ndr"), (True, "ndr64")):
    write(
        f"map-{suffix}",
        build(map_answer, [tower(*t) for t in MAP_TOWERS], ndr64),
        build(map_answer, [rewritten(t) for t in MAP_TOWERS], ndr64),
        2,
    )
    write(
        f"lookup-{suffix}",
        build(lookup_answer, [(tower(*t), a) for t, a in LOOKUP_ENTRIES], ndr64),
        build(lookup_answer, [(rewritten(t), a) for t, a in LOOKUP_ENTRIES], ndr64),
        3,
    )
    write(
        f"map-mixed-{suffix}",
        build(map_answer, [tower(*t) for t in MIXED_TOWERS], ndr64),
        build(map_answer, [rewritten(t) for t in MIXED_TOWERS if t[3] == TCP], ndr64),
        1,
    )
    empty = build(map_answer, [], ndr64, 0x16C9A0D6)
    write(f"map-not-registered-{suffix}", empty, empty, 0)

with open(os.path.join(HERE, "manifest.txt"), "w") as f:
    f.write("\n".join(manifest) + "\n")
