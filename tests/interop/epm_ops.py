#!/usr/bin/env python3
"""Call endpoint-mapper operations on one association and check how each is answered.

One TCP connection, one unauthenticated bind to the endpoint mapper (e1af8308 v3.0), then
the operations named on the command line, in order, on that same association. The bind,
the requests and the answers are handled here byte by byte (C706 ch. 12), so the script
reports the PDU type that came back (2 = response, 3 = fault) and the fault's status as
they were on the wire; impacket only encodes the stubs (NDR) and decodes the answers'.

Operations (MS-RPCE 2.2.1.2 / C706 appendix O):

  insert          ept_insert (opnum 0): register a made-up interface at LAN_IP:4444
  delete          ept_delete (opnum 1): remove that same entry
  lookup          ept_lookup (opnum 2): every entry (RPC_C_EP_ALL_ELTS, max 500)
  map:IFACE       ept_map (opnum 3) for an interface of epm_towers.INTERFACES
  map1:IFACE      the same with max_towers 1
  lookup_handle_free   ept_lookup_handle_free (opnum 4) on a null handle
  inq_object      ept_inq_object (opnum 5)
  mgmt_delete     ept_mgmt_delete (opnum 6) for that same entry's tower
  lookup_pages:N  ept_lookup with max_ents N, continued with the entry handle each answer
                  returns until one returns a null handle (at most 100 calls)
  lookup_free:N   ept_lookup with max_ents N, then ept_lookup_handle_free on the handle it
                  returned (the walk left half-way), then ept_lookup with that freed handle

Each operation is written OP=EXPECT, EXPECT being one of

  fault:STATUS    a fault PDU with this status (0x5 = nca_s_fault_access_denied)
  not-fault:STATUS  any answer but that one: a response, or a fault with another status
  response        a response PDU (whatever status its stub carries)
  towers          (map only) a response with status 0 and at least one ncacn_ip_tcp tower
  not_registered  (map only) a response with status ept_s_not_registered and no tower
  towers_end      (map only) a response with status 0, exactly one ncacn_ip_tcp tower and
                  a null entry handle (nothing left to ask for)
  pages           (lookup_pages only) every answer a response with status 0 and at most N
                  entries, every one but the last with a non-null handle, the last with a
                  null one, at least two pages, no entry twice; the entries of all pages
                  together are judged as a lookup's (--only, --includes, --tcp-only, towers)
  freed           (lookup_free only) the first answer has N entries and a non-null handle;
                  ept_lookup_handle_free answers status 0 and a null handle; the lookup
                  with the freed handle is answered with the fault
                  nca_s_fault_context_mismatch (0x1c00001a), as Samba answers it
  entries         (lookup only) a response with at least one entry and status 0 or
                  ept_s_not_registered (Samba sends its whole list in one answer with the
                  latter, its way of saying "no more"; impacket's rpcdump.py takes that
                  status for a failure and shows nothing)

With --expect-ip, every ncacn_ip_tcp tower in a map or lookup answer must carry that
address; with --expect-port IFACE=PORT, every such tower for IFACE that port. With
--only, every entry of a lookup answer (whatever its protocol) must be for one of those
interfaces; with --includes, each of those must have an entry; with --tcp-only, every entry
must be an ncacn_ip_tcp tower (rpcpin hides a pinned interface's other towers).

Exit 0 when every answer matches, 1 when one does not, 2 on errors.
"""

import argparse
import socket
import struct
import sys

from impacket.dcerpc.v5 import epm
from impacket.dcerpc.v5.dtypes import NULL, PUUID, ULONG
from impacket.dcerpc.v5.ndr import NDRCALL, NDRUniConformantArray
from impacket.uuid import bin_to_string, string_to_bin

import bind_check
from epm_towers import (FLOOR_IP, FLOOR_RPC_CO, FLOOR_TCP, FLOOR_UUID, INTERFACES, NDR,
                        describe, map_tower, parse_tower)

REQUEST, RESPONSE, FAULT = 0, 2, 3
EPT_S_NOT_REGISTERED = 0x16C9A0D6
NCA_S_FAULT_CONTEXT_MISMATCH = 0x1C00001A
STATUS_NAMES = {
    0x00000000: "success",
    0x00000005: "nca_s_fault_access_denied",
    0x1C010002: "nca_s_op_rng_error",
    0x1C010003: "nca_s_unk_if",
    0x1C00001A: "nca_s_fault_context_mismatch",
    0x16C9A0D6: "ept_s_not_registered",
    0x000006D8: "ept_s_cant_perform_op",
}
# The entry insert/delete/mgmt_delete name: an interface nobody serves.
FAKE_IFACE = ("5ee0f1c2-6f1a-4b57-9d3e-7270636e7069", 1, 0)
FAKE_PORT = 4444


class ept_entry_t_conformant_array(NDRUniConformantArray):
    item = epm.ept_entry_t


class ept_insert(NDRCALL):
    opnum = 0
    structure = (
        ("num_ents", ULONG),
        ("entries", ept_entry_t_conformant_array),
        ("replace", ULONG),
    )


class ept_delete(NDRCALL):
    opnum = 1
    structure = (
        ("num_ents", ULONG),
        ("entries", ept_entry_t_conformant_array),
    )


class ept_lookup_handle_free(NDRCALL):
    opnum = 4
    structure = (("entry_handle", epm.ept_lookup_handle_t),)


class ept_lookup_handle_freeResponse(NDRCALL):
    structure = (
        ("entry_handle", epm.ept_lookup_handle_t),
        ("status", ULONG),
    )


class ept_inq_object(NDRCALL):
    opnum = 5
    structure = ()


class ept_mgmt_delete(NDRCALL):
    opnum = 6
    structure = (
        ("object_speced", ULONG),
        ("object", PUUID),
        ("tower", epm.twr_p_t),
    )


def status_name(status):
    return "0x%08x (%s)" % (status, STATUS_NAMES.get(status, "?"))


def fake_tower(lan_ip):
    """An ncacn_ip_tcp tower for FAKE_IFACE at lan_ip:FAKE_PORT."""
    def floor(lhs, rhs):
        return struct.pack("<H", len(lhs)) + lhs + struct.pack("<H", len(rhs)) + rhs

    uuid, major, minor = FAKE_IFACE
    floors = [
        floor(bytes([FLOOR_UUID]) + string_to_bin(uuid) + struct.pack("<H", major),
              struct.pack("<H", minor)),
        floor(bytes([FLOOR_UUID]) + string_to_bin(NDR[0]) + struct.pack("<H", NDR[1]),
              struct.pack("<H", NDR[2])),
        floor(bytes([FLOOR_RPC_CO]), struct.pack("<H", 0)),
        floor(bytes([FLOOR_TCP]), struct.pack(">H", FAKE_PORT)),
        floor(bytes([FLOOR_IP]), socket.inet_aton(lan_ip)),
    ]
    return struct.pack("<H", len(floors)) + b"".join(floors)


def set_tower(ptr, tower):
    ptr["tower_length"] = len(tower)
    ptr["tower_octet_string"] = tower


def fake_entries(lan_ip):
    entry = epm.ept_entry_t()
    entry["object"] = b"\0" * 16
    set_tower(entry["tower"], fake_tower(lan_ip))
    entry["annotation"] = list(b"rpcpin-interop\0")
    return [entry]


def build(op, lan_ip):
    """(opnum, stub bytes, response class or None) for one operation name."""
    if op == "insert":
        req = ept_insert()
        req["num_ents"] = 1
        req["entries"] = fake_entries(lan_ip)
        req["replace"] = 1
    elif op == "delete":
        req = ept_delete()
        req["num_ents"] = 1
        req["entries"] = fake_entries(lan_ip)
    elif op == "lookup":
        return 2, lookup_stub(500), epm.ept_lookupResponse
    elif op.startswith("lookup_pages:") or op.startswith("lookup_free:"):
        n = int(op.split(":", 1)[1])
        if n < 1:
            raise ValueError("max_ents must be at least 1")
        return 2, None, epm.ept_lookupResponse
    elif op.startswith("map:") or op.startswith("map1:"):
        uuid, major, minor = INTERFACES[op.split(":", 1)[1]]
        req = epm.ept_map()
        req["max_towers"] = 1 if op.startswith("map1:") else 4
        set_tower(req["map_tower"], map_tower(uuid, major, minor))
        req.fields["obj"].fields["ReferentID"] = 1
        req.fields["map_tower"].fields["ReferentID"] = 2
        return 3, req.getData(), epm.ept_mapResponse
    elif op == "lookup_handle_free":
        req = ept_lookup_handle_free()
        return 4, req.getData(), ept_lookup_handle_freeResponse
    elif op == "inq_object":
        return 5, b"", None
    elif op == "mgmt_delete":
        req = ept_mgmt_delete()
        req["object_speced"] = 0
        req["object"] = NULL
        set_tower(req["tower"], fake_tower(lan_ip))
    else:
        raise ValueError("unknown operation %s" % op)
    return req.opnum, req.getData(), None


def lookup_stub(max_ents, handle=None):
    """An ept_lookup for every entry, at most max_ents of them, continuing handle (20
    bytes) when given."""
    req = epm.ept_lookup()
    req["inquiry_type"] = epm.RPC_C_EP_ALL_ELTS
    req["object"] = NULL
    req["Ifid"] = NULL
    req["vers_option"] = epm.RPC_C_VERS_ALL
    if handle is not None:
        set_handle(req["entry_handle"], handle)
    req["max_ents"] = max_ents
    return req.getData()


def set_handle(field, handle):
    """Sets an ept_lookup_handle_t from its 20 bytes (attributes, then UUID)."""
    field["context_handle_attributes"] = struct.unpack("<I", handle[:4])[0]
    field["context_handle_uuid"] = handle[4:]


def handle_free_stub(handle):
    req = ept_lookup_handle_free()
    set_handle(req["entry_handle"], handle)
    return req.getData()


NULL_HANDLE = b"\0" * 20


class Calls:
    """Call ids on one association."""

    def __init__(self, sock, reader):
        self.sock, self.reader, self.next_id = sock, reader, 2

    def __call__(self, opnum, stub):
        self.next_id += 1
        return call(self.sock, self.reader, self.next_id - 1, opnum, stub)


def lookup_page(calls, max_ents, handle):
    """(status, handle bytes, entries, error) of one ept_lookup call."""
    ptype, fault, stub = calls(2, lookup_stub(max_ents, handle))
    if ptype != RESPONSE:
        return None, None, [], "PDU type %d%s" % (
            ptype, ", status %s" % status_name(fault) if ptype == FAULT else "")
    resp = epm.ept_lookupResponse(stub)
    return resp["status"], resp["entry_handle"].getData(), list(resp["entries"]), None


def judge_entries(entries, args):
    """Judges a lookup's entries (--only, --includes, --tcp-only, towers); prints them."""
    by_uuid = {v[0]: k for k, v in INTERFACES.items()}
    raws = [b"".join(e["tower"]["tower_octet_string"]) for e in entries]
    towers = [d for d in (describe(parse_tower(r)) for r in raws) if d is not None]
    names = set(by_uuid.get(u, u) for u in (entry_interface(e) for e in entries))
    names_ok = judge_names(names, len(entries), len(towers), args)
    return judge_towers(towers, args) and names_ok


def judge_names(names, n_entries, n_towers, args):
    """Judges a lookup's interface names and tower count (--only, --includes, --tcp-only)."""
    ok = True
    if args.only and names - set(args.only.split(",")):
        print("  MISMATCH: entries for %s, not in --only" % sorted(
            names - set(args.only.split(","))))
        ok = False
    if args.includes and set(args.includes.split(",")) - names:
        print("  MISMATCH: no entry for %s" % sorted(set(args.includes.split(",")) - names))
        ok = False
    if args.tcp_only and n_towers != n_entries:
        print("  MISMATCH: %d of %d entries are not ncacn_ip_tcp towers" % (
            n_entries - n_towers, n_entries))
        ok = False
    return ok


def judge_towers(towers, args):
    """Prints each tower and judges its address and port (--expect-ip, --expect-port)."""
    by_uuid = {v[0]: k for k, v in INTERFACES.items()}
    ok = True
    for uuid, major, minor, ip, port in towers:
        print("  TOWER %s %s v%d.%d ip=%s port=%d" % (by_uuid.get(uuid, "?"), uuid, major,
                                                     minor, ip, port))
        if args.expect_ip and ip != args.expect_ip:
            print("  MISMATCH: ip %s, expected %s" % (ip, args.expect_ip))
            ok = False
        want = args.ports.get(by_uuid.get(uuid))
        if want is not None and port != want:
            print("  MISMATCH: port %d, expected %d" % (port, want))
            ok = False
    return ok


def lookup_pages(calls, max_ents, expect, args):
    """ept_lookup paged through with max_ents; returns whether it went as `expect` says."""
    if expect != "pages":
        print("lookup_pages: unknown expectation %s" % expect)
        return False
    handle, seen, keys, pages, ok = None, [], set(), 0, True
    while pages < 100:
        status, handle, entries, err = lookup_page(calls, max_ents, handle)
        pages += 1
        if err:
            print("ept_lookup page %d: %s" % (pages, err))
            return False
        last = handle == NULL_HANDLE
        print("ept_lookup page %d (max_ents %d): status %s, %d entries, %s handle%s" % (
            pages, max_ents, status_name(status), len(entries), "null" if last else "non-null",
            "" if last else " " + handle[4:].hex()))
        if status != 0 or not 0 < len(entries) <= max_ents:
            print("  MISMATCH: expected status 0 and 1 to %d entries" % max_ents)
            ok = False
        for e in entries:
            obj = e["object"]
            obj = obj.getData() if hasattr(obj, "getData") else bytes(obj)
            key = (obj, b"".join(e["tower"]["tower_octet_string"]))
            if key in keys:
                print("  MISMATCH: an entry came twice")
                ok = False
            keys.add(key)
            seen.append(e)
        if last or not entries:
            break
    else:
        print("  MISMATCH: still a non-null handle after 100 pages")
        return False
    if handle != NULL_HANDLE:
        print("  MISMATCH: the last page's handle is not null")
        ok = False
    if pages < 2:
        print("  MISMATCH: one page only: max_ents %d did not page" % max_ents)
        ok = False
    print("%d page(s), %d entries in all" % (pages, len(seen)))
    return judge_entries(seen, args) and ok


def lookup_free(calls, max_ents, expect, args):
    """ept_lookup with max_ents, ept_lookup_handle_free on its handle, then the freed handle
    used again; returns whether it went as `expect` says."""
    if expect != "freed":
        print("lookup_free: unknown expectation %s" % expect)
        return False
    status, handle, entries, err = lookup_page(calls, max_ents, None)
    if err:
        print("ept_lookup: %s" % err)
        return False
    print("ept_lookup (max_ents %d): status %s, %d entries, handle %s" % (
        max_ents, status_name(status), len(entries), handle.hex()))
    if status != 0 or len(entries) != max_ents or handle == NULL_HANDLE:
        print("  MISMATCH: expected status 0, %d entries and a non-null handle" % max_ents)
        return False
    ptype, fault, stub = calls(4, handle_free_stub(handle))
    if ptype != RESPONSE:
        print("ept_lookup_handle_free: PDU type %d" % ptype)
        return False
    resp = ept_lookup_handle_freeResponse(stub)
    freed = resp["entry_handle"].getData()
    print("ept_lookup_handle_free: status %s, handle %s" % (status_name(resp["status"]),
                                                          freed.hex()))
    ok = True
    if resp["status"] != 0 or freed != NULL_HANDLE:
        print("  MISMATCH: expected status 0 and a null handle")
        ok = False
    # A handle the server no longer holds: the RPC runtime's fault, as Samba answers it.
    ptype, fault, _ = calls(2, lookup_stub(max_ents, handle))
    print("ept_lookup with the freed handle: PDU type %d%s" % (
        ptype, ", status %s" % status_name(fault) if ptype == FAULT else ""))
    if ptype != FAULT or fault != NCA_S_FAULT_CONTEXT_MISMATCH:
        print("  MISMATCH: expected a fault nca_s_fault_context_mismatch (0x1c00001a)")
        ok = False
    return ok


def request_pdu(call_id, opnum, stub):
    body = struct.pack("<IHH", len(stub), 0, opnum) + stub
    return struct.pack("<BBBB4sHHI", 5, 0, REQUEST, 0x03, b"\x10\x00\x00\x00",
                       16 + len(body), 0, call_id) + body


class PduReader:
    """Whole PDUs from a socket, keeping what one recv() read past the current one (an
    answer's fragments often arrive together)."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def next(self):
        """One whole PDU, or b'' when the peer closed first."""
        while len(self.buf) < 16 or len(self.buf) < struct.unpack_from("<H", self.buf, 8)[0]:
            chunk = self.sock.recv(65536)
            if not chunk:
                return b""
            self.buf += chunk
        n = struct.unpack_from("<H", self.buf, 8)[0]
        pdu, self.buf = self.buf[:n], self.buf[n:]
        return pdu


def call(sock, reader, call_id, opnum, stub):
    """(ptype, fault status or None, response stub) of one call; reassembles fragments."""
    sock.sendall(request_pdu(call_id, opnum, stub))
    out = b""
    while True:
        pdu = reader.next()
        if not pdu:
            raise ConnectionError("connection closed before the answer to call %d" % call_id)
        ptype, flags = pdu[2], pdu[3]
        if pdu[4] & 0x10 == 0:
            raise ValueError("big-endian answer not handled")
        (got_call,) = struct.unpack_from("<I", pdu, 12)
        if got_call != call_id:
            raise ValueError("answer to call %d while waiting for %d" % (got_call, call_id))
        if ptype == FAULT:
            return FAULT, struct.unpack_from("<I", pdu, 24)[0], b""
        if ptype != RESPONSE:
            return ptype, None, b""
        (frag_len, auth_len) = struct.unpack_from("<HH", pdu, 8)
        out += pdu[24: frag_len - (auth_len + 8 if auth_len else 0)]
        if flags & 0x02:  # PFC_LAST_FRAG
            return RESPONSE, None, out


def towers_of(resp, op):
    """The ncacn_ip_tcp towers of a map or lookup answer, described."""
    if op == "lookup":
        raws = [b"".join(e["tower"]["tower_octet_string"]) for e in resp["entries"]]
    else:
        raws = [b"".join(t["Data"]["tower_octet_string"]) for t in resp["ITowers"]]
    return [d for d in (describe(parse_tower(r)) for r in raws) if d is not None]


def entry_interface(entry):
    """The interface UUID (floor 1) of a lookup entry's tower, whatever its protocol."""
    floors = parse_tower(b"".join(entry["tower"]["tower_octet_string"]))
    return bin_to_string(floors[0][0][1:17]).lower()


def judge(op, expect, ptype, fault, stub, resp_cls, args):
    """Prints what came back; returns whether it is what `expect` says."""
    is_map = op.split(":")[0] in ("map", "map1")
    name = "ept_map" + (" (max_towers 1)" if op.startswith("map1:") else "") + \
        " %s" % op.split(":", 1)[1] if is_map else "ept_%s" % op
    if ptype == FAULT:
        print("%s: fault PDU (type 3), status %s" % (name, status_name(fault)))
        if expect.startswith("not-fault:"):
            return fault != int(expect[10:], 0)
        if not expect.startswith("fault:"):
            return False
        return fault == int(expect[6:], 0)
    if ptype != RESPONSE:
        print("%s: PDU type %d" % (name, ptype))
        return False
    status = struct.unpack_from("<I", stub, len(stub) - 4)[0] if len(stub) >= 4 else None
    line = "%s: response PDU (type 2), status %s" % (
        name, status_name(status) if status is not None else "-")
    towers, entries = [], []
    by_uuid = {v[0]: k for k, v in INTERFACES.items()}
    if resp_cls is not None:
        resp = resp_cls(stub)
        if op == "lookup" or is_map:
            towers = towers_of(resp, op)
            line += ", %d ncacn_ip_tcp tower(s)" % len(towers)
        if is_map:
            null_handle = resp["entry_handle"].getData() == NULL_HANDLE
            line += ", %s entry handle" % ("null" if null_handle else "non-null")
        if op == "lookup":
            entries = [entry_interface(e) for e in resp["entries"]]
            counts = {}
            for uuid in entries:
                counts[uuid] = counts.get(uuid, 0) + 1
            line += " in %d entries: %s" % (len(entries), ", ".join(
                "%s x%d" % (by_uuid.get(u, u), n) for u, n in counts.items()))
    print(line)
    ok = True
    if op == "lookup":
        names = set(by_uuid.get(u, u) for u in entries)
        ok = judge_names(names, len(entries), len(towers), args)
    ok = judge_towers(towers, args) and ok
    if expect == "response":
        return ok
    if expect == "towers":
        return ok and status == 0 and len(towers) > 0
    if expect == "towers_end":
        return ok and status == 0 and len(towers) == 1 and null_handle
    if expect == "not_registered":
        return status == EPT_S_NOT_REGISTERED and not towers
    if expect == "entries":
        return ok and status in (0, EPT_S_NOT_REGISTERED) and len(entries) > 0
    if expect.startswith("not-fault:"):
        return ok
    return False


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("host")
    ap.add_argument("ops", nargs="+", metavar="OP=EXPECT")
    ap.add_argument("--port", type=int, default=135)
    ap.add_argument("--lan-ip", default="10.135.0.2",
                    help="the address in the tower insert/delete/mgmt_delete name")
    ap.add_argument("--expect-ip", help="every ncacn_ip_tcp tower must carry this IPv4 address")
    ap.add_argument("--expect-port", action="append", default=[], metavar="IFACE=PORT",
                    help="every ncacn_ip_tcp tower for IFACE must carry PORT")
    ap.add_argument("--only", default="", metavar="IFACES",
                    help="lookup: entries only for these interfaces (comma separated)")
    ap.add_argument("--includes", default="", metavar="IFACES",
                    help="lookup: an entry for each of these interfaces (comma separated)")
    ap.add_argument("--tcp-only", action="store_true",
                    help="lookup: every entry is an ncacn_ip_tcp tower")
    ap.add_argument("--timeout", type=float, default=10)
    args = ap.parse_args()
    args.ports = {k: int(v) for k, v in (i.split("=", 1) for i in args.expect_port)}
    for n in [n for n in (args.only + "," + args.includes).split(",") if n] + list(args.ports):
        if n not in INTERFACES:
            ap.error("unknown interface %s" % n)
    plan = []
    for item in args.ops:
        op, sep, expect = item.partition("=")
        if not sep:
            ap.error("%s: expected OP=EXPECT" % item)
        try:
            plan.append((op, expect, build(op, args.lan_ip)))
        except (KeyError, ValueError) as e:
            ap.error("%s: %s" % (item, e))

    ok = True
    try:
        with socket.create_connection((args.host, args.port), timeout=args.timeout) as s:
            s.settimeout(args.timeout)
            reader = PduReader(s)
            s.sendall(bind_check.raw_bind_pdu(["epm"]))
            ack = reader.next()
            if not ack or ack[2] != bind_check.BIND_ACK:
                print("ERROR: EPM bind at %s:%d answered by PDU type %s" % (
                    args.host, args.port, ack[2] if ack else "none (closed)"))
                return 2
            print("EPM bind at %s:%d accepted" % (args.host, args.port))
            calls = Calls(s, reader)
            for op, expect, (opnum, stub, resp_cls) in plan:
                if op.startswith("lookup_pages:") or op.startswith("lookup_free:"):
                    walk = lookup_pages if op.startswith("lookup_pages:") else lookup_free
                    if not walk(calls, int(op.split(":", 1)[1]), expect, args):
                        print("  MISMATCH: expected %s" % expect)
                        ok = False
                    continue
                ptype, fault, resp_stub = calls(opnum, stub)
                if not judge(op, expect, ptype, fault, resp_stub, resp_cls, args):
                    print("  MISMATCH: expected %s" % expect)
                    ok = False
    except Exception as e:  # noqa: BLE001 - no connection, closed, malformed answer
        print("ERROR: %s:%d: %s" % (args.host, args.port, e))
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
