#!/usr/bin/env python3
"""Bind to interfaces on a TCP port and check whether the bind is accepted.

Two ways of binding, both unauthenticated (a bind needs no credentials, and
the pin decision is taken on the bind alone):

  impacket (default): one presentation context per call, through impacket's
      DCERPC runtime. A refusal surfaces as DCERPCException naming the
      bind_ack's result; "reject" requires provider_rejection with reason
      abstract_syntax_not_supported.

  --raw: one bind PDU built here, with one context per interface named
      (comma separated), sent over a plain socket; the bind_ack's result list
      is decoded here. "reject" requires that no context is accepted and that
      every context for an interface listed in --refused is
      provider_rejection / abstract_syntax_not_supported. (Samba itself would
      reject a foreign interface's context but accept the others, so "no
      context accepted" is what tells a proxy refusal from a forwarded bind.)

Exit 0 when the outcome matches --expect, 1 when it does not, 2 on errors.
"""

import argparse
import socket
import struct
import sys

from impacket.dcerpc.v5 import transport
from impacket.dcerpc.v5.rpcrt import DCERPCException
from impacket.uuid import string_to_bin, uuidtup_to_bin

from epm_towers import INTERFACES, NDR

BIND, BIND_ACK, BIND_NAK = 11, 12, 13
RESULTS = {0: "acceptance", 1: "user_rejection", 2: "provider_rejection"}
REASONS = {0: "reason_not_specified", 1: "abstract_syntax_not_supported",
           2: "proposed_transfer_syntaxes_not_supported", 3: "local_limit_exceeded"}


def impacket_bind(host, port, name, timeout):
    """Returns (accepted, text)."""
    uuid, major, minor = INTERFACES[name]
    rpc = transport.DCERPCTransportFactory("ncacn_ip_tcp:%s[%d]" % (host, port))
    rpc.set_connect_timeout(timeout)
    dce = rpc.get_dce_rpc()
    dce.connect()
    try:
        dce.bind(uuidtup_to_bin((uuid, "%d.%d" % (major, minor))))
    except DCERPCException as e:
        return False, str(e)
    finally:
        dce.disconnect()
    return True, "bind accepted"


def raw_bind_pdu(names):
    """A little-endian bind PDU with one NDR presentation context per interface."""
    ctxs = b""
    for ctx_id, name in enumerate(names):
        uuid, major, minor = INTERFACES[name]
        ctxs += struct.pack("<HBB", ctx_id, 1, 0)
        ctxs += string_to_bin(uuid) + struct.pack("<HH", major, minor)
        ctxs += string_to_bin(NDR[0]) + struct.pack("<HH", NDR[1], NDR[2])
    body = struct.pack("<HHI", 4280, 4280, 0) + struct.pack("<BBH", len(names), 0, 0) + ctxs
    header = struct.pack("<BBBB4sHHI", 5, 0, BIND, 0x03, b"\x10\x00\x00\x00",
                         16 + len(body), 0, 1)
    return header + body


def recv_pdu(sock):
    """One whole PDU (header's frag_length), or b'' when the peer closed first."""
    buf = b""
    while len(buf) < 16 or len(buf) < struct.unpack_from("<H", buf, 8)[0]:
        chunk = sock.recv(65536)
        if not chunk:
            return b""
        buf += chunk
    return buf


def raw_bind(host, port, names, timeout):
    """Returns (ptype, [(result, reason)], secondary address) or (None, [], None)
    if the peer closed."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(raw_bind_pdu(names))
        pdu = recv_pdu(s)
    if not pdu:
        return None, [], None
    ptype = pdu[2]
    if pdu[4] & 0x10 == 0:
        raise ValueError("big-endian reply not handled")
    if ptype != BIND_ACK:
        return ptype, [], None
    off = 16 + 8                                   # max_xmit, max_recv, assoc_group
    (sec_len,) = struct.unpack_from("<H", pdu, off)
    # port_any_t: the server's port as a NUL-terminated string.
    sec_addr = pdu[off + 2: off + 2 + sec_len].rstrip(b"\0").decode("ascii", "replace")
    off += 2 + sec_len
    off += (-off) % 4                              # p_result_list is 4-aligned
    n_results = pdu[off]
    off += 4
    results = []
    for _ in range(n_results):
        results.append(struct.unpack_from("<HH", pdu, off))
        off += 4 + 20                              # result, reason, transfer syntax
    return ptype, results, sec_addr


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("ifaces", help="interface name, or comma-separated names with --raw")
    ap.add_argument("--expect", choices=["accept", "reject"], required=True)
    ap.add_argument("--raw", action="store_true", help="one hand-built bind, several contexts")
    ap.add_argument("--refused", default="", help="with --raw: interfaces whose context "
                    "must be provider_rejection/abstract_syntax_not_supported")
    ap.add_argument("--secaddr-not", type=int, metavar="PORT", help="with --raw: the "
                    "bind_ack's secondary address must not be this port")
    ap.add_argument("--timeout", type=float, default=10)
    args = ap.parse_args()
    names = args.ifaces.split(",")
    for n in names + [r for r in args.refused.split(",") if r]:
        if n not in INTERFACES:
            ap.error("unknown interface %s" % n)

    try:
        if not args.raw:
            accepted, text = impacket_bind(args.host, args.port, names[0], args.timeout)
            print("bind %s at %s:%d: %s" % (names[0], args.host, args.port, text))
            if args.expect == "accept":
                return 0 if accepted else 1
            return 0 if (not accepted and "provider_rejection" in text
                         and "abstract_syntax_not_supported" in text) else 1

        ptype, results, sec_addr = raw_bind(args.host, args.port, names, args.timeout)
    except Exception as e:  # noqa: BLE001 - cannot connect, malformed reply, ...
        print("ERROR: bind %s at %s:%d: %s" % (args.ifaces, args.host, args.port, e))
        return 2

    if ptype is None:
        print("raw bind %s at %s:%d: connection closed without a reply"
              % (args.ifaces, args.host, args.port))
        return 1
    if ptype != BIND_ACK:
        print("raw bind %s at %s:%d: reply PDU type %d (not bind_ack)"
              % (args.ifaces, args.host, args.port, ptype))
        return 1
    ok = len(results) == len(names)
    print("raw bind %s at %s:%d: bind_ack secondary address %r"
          % (args.ifaces, args.host, args.port, sec_addr))
    if args.secaddr_not is not None and sec_addr == str(args.secaddr_not):
        print("  MISMATCH: secondary address discloses port %d" % args.secaddr_not)
        ok = False
    for name, (result, reason) in zip(names, results):
        print("raw bind %s at %s:%d: context %s: %s / %s" % (
            args.ifaces, args.host, args.port, name,
            RESULTS.get(result, result), REASONS.get(reason, reason)))
    accepted = [n for n, (res, _) in zip(names, results) if res == 0]
    if args.expect == "accept":
        return 0 if ok and len(accepted) == len(names) else 1
    refused = set(r for r in args.refused.split(",") if r)
    for name, (result, reason) in zip(names, results):
        if name in refused and (result, reason) != (2, 1):
            ok = False
    return 0 if ok and not accepted else 1


if __name__ == "__main__":
    sys.exit(main())
