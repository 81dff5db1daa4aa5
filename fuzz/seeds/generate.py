#!/usr/bin/env python3
"""Writes the hand-built seeds under fuzz/seeds/<target>/ (committed; scripts/fuzz.sh copies
them into the corpora next to seeds cut from tests/data, and never runs this).

They cover what the captures and tests/data/impacket do not: big-endian NDR64, null tower
pointers, towers that are not TCP or have odd floors, the versioned lsarpc pin, answers cut
into fragments with auth verifiers, bind_nak, and big-endian bind/alter_context PDUs.

    /path/to/venv/bin/python fuzz/seeds/generate.py   # impacket only checks the encodings

Selector bytes (see the targets' docs):
  framing:      sel (low nibble: number of chunk-size bytes; high nibble: fragment bound),
                chunk sizes, stream
  bind:         n, n bytes of secondary address, PDU
  epm_rewrite:  sel (bit 0 lookup, bit 1 NDR64, bit 2 big endian, bit 3 auth, bit 4 hide
                unpinned, bit 5 ept_map_auth, bit 6 keep other towers), chunk-1, stub
  epm_server:   sel (bits 0-1: 0 ept_map, 1 ept_map_auth, 2 ept_lookup, 3
                ept_lookup_handle_free; bit 2 NDR64; bit 3 big endian), request stub
  proxy_protocol: no selector: a PROXY protocol v1/v2 header (HAProxy's proxy-protocol.txt),
                then the first bytes of a bind PDU
"""
import os
import socket
import struct
import uuid as uuidlib

HERE = os.path.dirname(os.path.abspath(__file__))
NDR = ("8a885d04-1ceb-11c9-9fe8-08002b104860", 2, 0)
NDR64 = ("71710533-beba-4937-8319-b5dbef9ccc36", 1, 0)
EPM = ("e1af8308-5d1f-11c9-91a4-08002b14a0fa", 3, 0)
NSPI = ("f5cc5a18-4264-101a-8c59-08002b2f8426", 56, 0)
EMSMDB = ("a4f1db00-ca47-1067-b31f-00dd010662da", 0, 81)
SAMR = ("12345778-1234-abcd-ef00-0123456789ac", 1, 0)
LSARPC = ("12345778-1234-abcd-ef00-0123456789ab", 0, 0)
LSARPC_1 = ("12345778-1234-abcd-ef00-0123456789ab", 1, 0)  # not matched by lsarpc@0.0
RFR = ("1544f5e0-613c-11d1-93df-00c04fd7bd09", 1, 0)
TCP, HTTP, IP, NCACN = 0x07, 0x1F, 0x09, 0x0B


def uuid_bytes(s, big):
    u = uuidlib.UUID(s)
    return u.bytes if big else u.bytes_le


def tower(iface, port, addr, proto=TCP, floors=5):
    """Tower octets: always little-endian counts, port and address in network order."""
    def uuid_floor(s):
        return (struct.pack("<H", 19) + b"\x0d" + uuid_bytes(s[0], False)
                + struct.pack("<H", s[1]) + struct.pack("<HH", 2, s[2]))
    fl = [uuid_floor(iface), uuid_floor(NDR),
          b"\x01\x00\x0b\x02\x00\x00\x00",
          b"\x01\x00" + bytes([proto]) + b"\x02\x00" + struct.pack(">H", port),
          b"\x01\x00\x09\x04\x00" + socket.inet_aton(addr)]
    return struct.pack("<H", floors) + b"".join(fl[:floors])


class W:
    """An NDR / NDR64 writer; alignment is relative to the start of the stub."""

    def __init__(self, big, ndr64):
        self.b = bytearray()
        self.e = ">" if big else "<"
        self.w = 8 if ndr64 else 4

    def align(self, n):
        while len(self.b) % n:
            self.b.append(0)

    def u32(self, v):
        self.align(4)
        self.b += struct.pack(self.e + "I", v)

    def count(self, v):
        self.align(self.w)
        self.b += struct.pack(self.e + ("Q" if self.w == 8 else "I"), v)

    ptr = count

    def raw(self, data):
        self.b += data

    def deferred_tower(self, octets):
        self.count(len(octets))
        self.u32(len(octets))
        self.raw(octets)


HANDLE = b"\x00" * 4 + bytes(range(1, 17))


def uuid_ndr(w, s, big):
    """A UUID inside NDR: 4-aligned, its first three fields in the stub's byte order."""
    w.align(4)
    w.raw(uuid_bytes(s, big))


def map_request(octets, obj=None, big=False, ndr64=False, auth=False, sid=None, max_towers=4):
    """ept_map (opnum 3) or ept_map_auth (opnum 7: object and map_tower [ref], then a
    [unique] SID: (revision, sub-authorities))."""
    w = W(big, ndr64)
    if auth:
        uuid_ndr(w, obj or "00000000-0000-0000-0000-000000000000", big)
    else:
        w.ptr(1 if obj else 0)
        if obj:
            uuid_ndr(w, obj, big)
        w.ptr(2)
    w.deferred_tower(octets)
    if auth:
        w.ptr(3 if sid else 0)
        if sid:
            rev, subs = sid
            w.count(len(subs))
            w.raw(bytes([rev, len(subs)]) + b"\x00" * 5 + b"\x05")
            for a in subs:
                w.u32(a)
    w.align(4)
    w.raw(HANDLE)
    w.u32(max_towers)
    return bytes(w.b)


def lookup_request(iface, obj=None, big=False, ndr64=False, inquiry=1, vers=1, max_ents=500):
    """ept_lookup (opnum 2); iface: (uuid, major, minor) or None."""
    w = W(big, ndr64)
    w.u32(inquiry)
    w.ptr(1 if obj else 0)
    if obj:
        uuid_ndr(w, obj, big)
    w.ptr(2 if iface else 0)
    if iface:
        uuid_ndr(w, iface[0], big)
        w.raw(struct.pack(w.e + "HH", iface[1], iface[2]))
    w.u32(vers)
    w.align(4)
    w.raw(HANDLE)
    w.u32(max_ents)
    return bytes(w.b)


def map_answer(towers, big=False, ndr64=False, status=0):
    """towers: octets, or None for a null pointer."""
    w = W(big, ndr64)
    w.raw(HANDLE)
    w.u32(len(towers))
    w.count(len(towers)); w.count(0); w.count(len(towers))
    for i, t in enumerate(towers):
        w.ptr(0 if t is None else 0x20000 + 4 * i)
    for t in towers:
        if t is not None:
            w.deferred_tower(t)
    w.u32(status)
    return bytes(w.b)


def lookup_answer(entries, big=False, ndr64=False, status=0):
    """entries: (tower octets or None, annotation bytes)."""
    w = W(big, ndr64)
    w.raw(HANDLE)
    w.u32(len(entries))
    w.count(len(entries)); w.count(0); w.count(len(entries))
    for i, (t, ann) in enumerate(entries):
        w.align(w.w)
        w.raw(bytes(16))
        w.ptr(0 if t is None else 0x30000 + 4 * i)
        w.count(0); w.count(len(ann)); w.raw(ann)
    for t, _ in entries:
        if t is not None:
            w.deferred_tower(t)
    w.u32(status)
    return bytes(w.b)


def check_with_impacket(stub, lookup, ndr64, towers):
    """impacket must decode a little-endian stub to the same towers, and re-encode it to as
    many bytes (it fills alignment padding with its own bytes)."""
    try:
        from impacket.dcerpc.v5 import epm
    except ImportError:
        return
    cls = epm.ept_lookupResponse if lookup else epm.ept_mapResponse
    r = cls(isNDR64=ndr64)
    r.fromString(stub)
    def octets(p):
        return b"".join(p["tower_octet_string"]) if p.fields["ReferentID"] else None
    if lookup:
        got = [octets(e.fields["tower"]) for e in r["entries"]]
        assert [b"".join(e["annotation"]) for e in r["entries"]] == [a for _, a in LOOKUP_ENTRIES]
    else:
        got = list(map(octets, r["ITowers"]))
    assert got == towers, (cls.__name__, ndr64)
    assert len(r.getData()) == len(stub), (cls.__name__, ndr64)


MAP_TOWERS = [
    tower(NSPI, 49154, "10.0.0.5"),
    None,
    tower(LSARPC, 49155, "10.0.0.5"),
    tower(LSARPC_1, 49156, "10.0.0.5"),
    tower(NSPI, 6002, "10.0.0.5", proto=HTTP),
    tower(SAMR, 49157, "10.0.0.5", floors=4),
    tower(EMSMDB, 49160, "0.0.0.0"),
    tower(RFR, 49161, "10.0.0.5"),
]
LOOKUP_ENTRIES = [
    (tower(SAMR, 49153, "10.0.0.6"), b"SAM\x00"),
    (None, b""),
    (tower(EMSMDB, 1032, "192.168.0.2"), b"Exchange store\x00"),
    (tower(LSARPC, 49155, "10.0.0.6"), b"x" * 63 + b"\x00"),
]


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def pdu(ptype, body, big=False, flags=3, call_id=1, auth=b""):
    """A PDU; `auth` is (pad, auth_value): padding, an 8-byte sec_trailer and the value."""
    e = ">" if big else "<"
    tail = b""
    auth_len = 0
    if auth:
        pad, value = auth
        tail = b"\xa5" * pad + bytes([10, 6, pad, 0, 0, 0, 0, 0]) + value
        auth_len = len(value)
    frag = 16 + len(body) + len(tail)
    drep = b"\x00\x00\x00\x00" if big else b"\x10\x00\x00\x00"
    return (bytes([5, 0, ptype, flags]) + drep + struct.pack(e + "HHI", frag, auth_len, call_id)
            + body + tail)


def syntax(s, big):
    e = ">" if big else "<"
    return uuid_bytes(s[0], big) + struct.pack(e + "HH", s[1], s[2])


def bind(contexts, big=False, ptype=11):
    e = ">" if big else "<"
    b = struct.pack(e + "HHI", 4280, 4280, 0) + bytes([len(contexts), 0, 0, 0])
    for i, (abstract, transfers) in enumerate(contexts):
        b += struct.pack(e + "H", i) + bytes([len(transfers), 0]) + syntax(abstract, big)
        b += b"".join(syntax(t, big) for t in transfers)
    return pdu(ptype, b, big)


def bind_ack(addr, results, big=False, ptype=12, auth=b""):
    e = ">" if big else "<"
    b = struct.pack(e + "HHIH", 4280, 4280, 0x1234, len(addr)) + addr
    while (16 + len(b)) % 4:
        b += b"\x00"
    b += bytes([len(results), 0, 0, 0])
    for result, reason, ts in results:
        b += struct.pack(e + "HH", result, reason) + syntax(ts, big)
    return pdu(ptype, b, big, auth=auth)


def bind_nak(reason, big=False):
    e = ">" if big else "<"
    return pdu(13, struct.pack(e + "H", reason) + b"\x01\x05\x00\x00", big)


def response(stub, big=False, flags=3, call_id=1):
    e = ">" if big else "<"
    return pdu(2, struct.pack(e + "IHBB", len(stub), 0, 0, 0) + stub, big, flags, call_id)


def main():
    # epm_rewrite
    for ndr64 in (False, True):
        for big in (False, True):
            m = map_answer(MAP_TOWERS, big, ndr64)
            l = lookup_answer(LOOKUP_ENTRIES, big, ndr64)
            if not big:
                check_with_impacket(m, False, ndr64, MAP_TOWERS)
                check_with_impacket(l, True, ndr64, [t for t, _ in LOOKUP_ENTRIES])
            sel = (2 if ndr64 else 0) | (4 if big else 0)
            kind = ("ndr64" if ndr64 else "ndr") + ("-be" if big else "-le")
            write("epm_rewrite", f"map-{kind}", bytes([sel, 0xff]) + m)
            write("epm_rewrite", f"lookup-{kind}", bytes([sel | 1, 0x0c]) + l)
            write("epm_rewrite", f"map-{kind}-hide", bytes([sel | 0x10, 0x20]) + m)
            write("epm_rewrite", f"lookup-{kind}-hide", bytes([sel | 0x11, 0xff]) + l)
    # Cut small, with auth verifiers; ept_map_auth hiding all; a not-registered answer.
    write("epm_rewrite", "map-ndr-le-auth-chunk5",
          bytes([8, 4]) + map_answer(MAP_TOWERS[:3]))
    write("epm_rewrite", "map-auth-ndr-le-hide-all",
          bytes([0x30, 0x40]) + map_answer([tower(RFR, 49161, "10.0.0.5"), None]))
    write("epm_rewrite", "map-not-registered-ndr64-be",
          bytes([6, 0xff]) + map_answer([], True, True, status=0x16C9A0D6))

    # epm_server
    query = tower(NSPI, 135, "0.0.0.0")
    for ndr64 in (False, True):
        for big in (False, True):
            sel = (4 if ndr64 else 0) | (8 if big else 0)
            kind = ("ndr64" if ndr64 else "ndr") + ("-be" if big else "-le")
            write("epm_server", f"map-{kind}",
                  bytes([sel]) + map_request(query, EPM[0], big, ndr64))
            write("epm_server", f"map-null-object-{kind}",
                  bytes([sel]) + map_request(tower(SAMR, 0, "0.0.0.0"), None, big, ndr64))
            write("epm_server", f"map-auth-{kind}", bytes([sel | 1]) + map_request(
                query, None, big, ndr64, auth=True, sid=(1, [21, 1, 2, 3, 500])))
            write("epm_server", f"map-auth-no-sid-{kind}",
                  bytes([sel | 1]) + map_request(query, None, big, ndr64, auth=True))
            write("epm_server", f"lookup-{kind}",
                  bytes([sel | 2]) + lookup_request(NSPI, EPM[0], big, ndr64))
            write("epm_server", f"lookup-all-{kind}",
                  bytes([sel | 2]) + lookup_request(None, None, big, ndr64, inquiry=0))
    write("epm_server", "map-http-ndr-le", b"\x00" + map_request(tower(NSPI, 0, "0.0.0.0", HTTP)))
    write("epm_server", "map-3-floors-ndr-le", b"\x00" + map_request(tower(SAMR, 0, "0.0.0.0", floors=3)))
    write("epm_server", "handle-free", b"\x03" + HANDLE)

    # bind
    ndr_ack = [(0, 0, NDR)]
    three = [(2, 2, ("00000000-0000-0000-0000-000000000000", 0, 0)), (0, 0, NDR64),
             (3, 3, ("6cb71c2c-9812-4540-0300-000000000000", 1, 0))]
    write("bind", "bind-be-2ctx", b"\x00" + bind([(EPM, [NDR, NDR64]), (SAMR, [NDR])], big=True))
    write("bind", "alter-context-le", b"\x00" + bind([(LSARPC, [NDR64])], ptype=14))
    write("bind", "bind-ack-be-ndr64", b"\x06" + b"49153\x00" + bind_ack(b"135\x00", three, big=True))
    write("bind", "bind-ack-empty-addr", b"\x05" + b"6004\x00" + bind_ack(b"", ndr_ack))
    write("bind", "alter-context-resp-auth", b"\x01" + b"7"
          + bind_ack(b"", ndr_ack, ptype=15, auth=(0, bytes(range(32)))))
    write("bind", "bind-ack-auth-be", b"\x00" + bind_ack(b"49999\x00", ndr_ack, big=True,
                                                          auth=(0, b"\x01" * 16)))
    write("bind", "bind-nak-le", b"\x00" + bind_nak(4))
    write("bind", "bind-nak-be", b"\x00" + bind_nak(1, big=True))

    # framing: one stream of several big-endian PDUs, a fragmented answer, in chunks of 1, 7, 3.
    m = map_answer(MAP_TOWERS[:2], True)
    stream = (bind_ack(b"135\x00", ndr_ack, big=True)
              + response(m[:40], True, flags=1, call_id=2)
              + response(m[40:], True, flags=0, call_id=2)
              + pdu(3, struct.pack(">IHBBII", 0, 0, 0, 0, 0x1C010002, 0), True, call_id=3)
              + bind_nak(0, big=True))
    write("framing", "be-stream-chunked", bytes([3, 0, 6, 2]) + stream)
    write("framing", "le-nak-bounded", bytes([0x10]) + bind_nak(0) + response(b"\x00" * 40))
    write("framing", "auth-response", bytes([0])
          + pdu(2, struct.pack("<IHBB", 4, 0, 0, 0) + b"\x01\x02\x03\x04", auth=(4, b"\x00" * 16))
          + pdu(0, struct.pack("<IHH", 0, 0, 3) + bytes(16) + b"stub", flags=0x83))

    proxy_protocol_seeds()


# PROXY protocol (proxy-protocol.txt): the v2 signature, its TLV types and the SSL TLV's flags.
PP2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
PP2_ALPN, PP2_AUTHORITY, PP2_CRC32C, PP2_NOOP, PP2_UNIQUE_ID = 0x01, 0x02, 0x03, 0x04, 0x05
PP2_SSL, PP2_SSL_VERSION, PP2_SSL_CN, PP2_SSL_CIPHER = 0x20, 0x21, 0x22, 0x23
PP2_CLIENT_SSL, PP2_CLIENT_CERT_CONN = 0x01, 0x02
# What a bind PDU starts with: what follows the header on the stream.
RPC_START = b"\x05\x00\x0b\x03\x10\x00\x00\x00"


def crc32c(data):
    """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as PP2_TYPE_CRC32C carries."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def tlv(kind, value):
    return bytes([kind]) + struct.pack(">H", len(value)) + value


def pp2(ver_cmd, fam, addrs, tlvs=b"", crc=False):
    """A v2 header: signature, version/command, family/transport, length, addresses, TLVs.
    With `crc`, a CRC32C TLV goes last, computed over the header with its value zeroed."""
    body = addrs + tlvs + (tlv(PP2_CRC32C, bytes(4)) if crc else b"")
    h = PP2_SIG + bytes([ver_cmd, fam]) + struct.pack(">H", len(body)) + body
    if crc:
        h = h[:-4] + struct.pack(">I", crc32c(h))
    return h


def pp2_inet(src, dst, sport, dport):
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack(">HH", sport, dport)


def pp2_inet6(src, dst, sport, dport):
    return (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
            + struct.pack(">HH", sport, dport))


def proxy_protocol_seeds():
    assert crc32c(b"123456789") == 0xE3069283
    w = lambda name, header: write("proxy_protocol", name, header + RPC_START)
    # v1: the spec's examples, and its longest line (107 bytes with the CRLF).
    w("v1-tcp4", b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n")
    w("v1-tcp6", b"PROXY TCP6 2001:db8::1 2001:db8:0:1::7 49152 135\r\n")
    w("v1-unknown", b"PROXY UNKNOWN\r\n")
    longest = ("PROXY UNKNOWN " + ":".join(["ffff"] * 8) + " " + ":".join(["ffff"] * 8)
               + " 65535 65535\r\n").encode()
    assert len(longest) == 107
    w("v1-unknown-longest", longest)
    w("v1-tcp6-longest", longest.replace(b"UNKNOWN", b"TCP6"))
    # v2: TCP over IPv4 and IPv6, LOCAL, PROXY UNSPEC, UDP, UNIX.
    v4 = pp2_inet("198.51.100.22", "203.0.113.7", 35646, 135)
    v6 = pp2_inet6("2001:db8::22", "2001:db8::7", 35646, 49667)
    w("v2-tcp4", pp2(0x21, 0x11, v4))
    w("v2-tcp6", pp2(0x21, 0x21, v6))
    w("v2-local", pp2(0x20, 0x00, b""))
    w("v2-local-tcp4", pp2(0x20, 0x11, v4))
    w("v2-proxy-unspec", pp2(0x21, 0x00, b""))
    w("v2-udp4", pp2(0x21, 0x12, v4))
    w("v2-unix-stream", pp2(0x21, 0x31, b"/run/client".ljust(108, b"\0")
                            + b"/run/rpcpin".ljust(108, b"\0")))
    # v2 with TLVs: ALPN, authority, unique ID, an SSL TLV with its sub-TLVs, NOOP padding,
    # and a CRC32C over the whole header.
    ssl = tlv(PP2_SSL, bytes([PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN]) + struct.pack(">I", 0)
              + tlv(PP2_SSL_VERSION, b"TLSv1.3") + tlv(PP2_SSL_CN, b"client.example")
              + tlv(PP2_SSL_CIPHER, b"TLS_AES_256_GCM_SHA384"))
    tlvs = (tlv(PP2_ALPN, b"h2") + tlv(PP2_AUTHORITY, b"rpc.example.com")
            + tlv(PP2_UNIQUE_ID, bytes(range(16))) + ssl + tlv(PP2_NOOP, bytes(3)))
    w("v2-tcp4-tlvs-crc", pp2(0x21, 0x11, v4, tlvs, crc=True))
    w("v2-tcp6-tlvs", pp2(0x21, 0x21, v6, tlvs))
    # The longest v2 header rpcpin takes (proxy_protocol::V2_MAX, 536 bytes), one byte more,
    # and a PROXY header whose addresses are cut short.
    pad = lambda n: tlv(PP2_NOOP, bytes(n - 3))
    w("v2-tcp4-longest", pp2(0x21, 0x11, v4, pad(520 - 12)))
    w("v2-tcp4-too-long", pp2(0x21, 0x11, v4, pad(521 - 12)))
    w("v2-tcp6-truncated", pp2(0x21, 0x21, v6[:20]))


if __name__ == "__main__":
    main()
